/**
 * The autodiff engine on small multi-node graphs: gradients that meet, x·x, parameters the loss does not reach,
 * integer values that end the dependence, the errors, dead branches, and a 3-layer MLP whose whole-network
 * gradient is compared with float64 central differences (eps 1e-6, relative tolerance 1e-6: the network is
 * smooth at the sampled point, so the differences are accurate to about 1e-9).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { modelToBytes } from '../../src/io/model-file.js';
import { type AttrInput, GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { addGradients } from '../../src/train/autodiff/engine.js';
import { mulberry32 } from '../helpers/ort.js';

const SO: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 1, logSeverityLevel: 3 };

/** A float64 graph under construction; inputs get random values in [-1, 1) unless given. */
class Net {
  readonly model = new Model();
  readonly b: GraphBuilder;
  readonly feeds: Record<string, ort.Tensor> = {};
  private readonly rnd: () => number;

  constructor(seed = 1) {
    this.model.irVersion = 10;
    this.model.opsetImports = [{ domain: '', version: 18 }];
    this.model.graph.name = 'engine';
    this.b = new GraphBuilder(this.model.graph);
    this.rnd = mulberry32(seed);
  }

  input(name: string, dims: number[], values?: number[]): string {
    const n = dims.reduce((a, d) => a * d, 1);
    const v = values ?? Array.from({ length: n }, () => 2 * this.rnd() - 1);
    this.model.graph.inputs.push(valueInfo(name, DataType.DOUBLE, dims));
    this.b.reserve(name);
    this.feeds[name] = new ort.Tensor('float64', Float64Array.from(v), dims);
    return name;
  }

  constant(dims: number[], values: number[]): string {
    return this.b.initializer('c', DataType.DOUBLE, dims, Float64Array.from(values));
  }

  op(opType: string, inputs: string[], attrs?: Record<string, AttrInput>, name?: string): string {
    return this.b.op(opType, inputs, attrs, name);
  }

  /** Makes `value` the graph output 'loss'. */
  loss(value: string): void {
    this.b.node('Identity', [value], { outputs: ['loss'] });
    this.model.graph.outputs.push(valueInfo('loss', DataType.DOUBLE, []));
  }

  async run(bytes: Uint8Array, names?: string[]): Promise<Record<string, ort.Tensor>> {
    const s = await ort.InferenceSession.create(bytes, SO);
    try {
      return names ? await s.run(this.feeds, names) : await s.run(this.feeds);
    } finally {
      await s.release();
    }
  }

  /** Adds gradients for `wrt` as outputs `<p>__grad` and runs them. */
  async gradients(wrt: string[]): Promise<{ grads: Record<string, Float64Array>; nodes: number }> {
    const { gradients, nodes } = addGradients(this.model, { loss: 'loss', wrt });
    for (const p of wrt) {
      this.b.node('Identity', [gradients.get(p)!], { outputs: [`${p}__grad`] });
      this.model.graph.outputs.push(valueInfo(`${p}__grad`, DataType.DOUBLE));
    }
    const out = await this.run(modelToBytes(this.model));
    const grads: Record<string, Float64Array> = {};
    for (const p of wrt) {
      grads[p] = out[`${p}__grad`].data as Float64Array;
      assert.deepEqual(out[`${p}__grad`].dims, this.feeds[p].dims, `gradient of ${p} has the shape of ${p}`);
    }
    return { grads, nodes };
  }

  /** Analytic gradients against central differences of the forward graph; returns max relative error per input. */
  async check(wrt: string[], tol = 1e-6): Promise<Record<string, number>> {
    const forward = modelToBytes(this.model);
    const { grads } = await this.gradients(wrt);
    const s = await ort.InferenceSession.create(forward, SO);
    const lossAt = async () => Number(((await s.run(this.feeds, ['loss'])).loss.data as Float64Array)[0]);
    const errors: Record<string, number> = {};
    try {
      for (const p of wrt) {
        const data = this.feeds[p].data as Float64Array;
        const eps = 1e-6;
        let maxDiff = 0;
        let maxNum = 0;
        for (let i = 0; i < data.length; i++) {
          const v = data[i];
          data[i] = v + eps;
          const lp = await lossAt();
          data[i] = v - eps;
          const lm = await lossAt();
          data[i] = v;
          const num = (lp - lm) / (2 * eps);
          maxNum = Math.max(maxNum, Math.abs(num));
          maxDiff = Math.max(maxDiff, Math.abs(num - grads[p][i]));
        }
        errors[p] = maxDiff / Math.max(maxNum, 1e-12);
        assert.ok(errors[p] <= tol, `d loss / d ${p}: relative error ${errors[p].toExponential(2)} > ${tol}`);
      }
    } finally {
      await s.release();
    }
    return errors;
  }
}

const sum = (n: Net, x: string) => n.op('ReduceSum', [x], { keepdims: 0 });

function assertGradientError(f: () => unknown, pattern: RegExp): void {
  assert.throws(f, (e: unknown) => {
    const err = e as { code?: string; message?: string };
    assert.equal(err.code, 'E_GRADIENT');
    assert.match(err.message ?? '', pattern);
    return true;
  });
}

describe('autodiff engine', () => {
  test('gradients that meet: a value used by three consumers', async () => {
    const n = new Net(1);
    const x = n.input('x', [3, 4]);
    const w = n.input('w', [4]);
    const h = n.op('Mul', [x, w]);
    const a = n.op('Add', [h, n.op('Exp', [h])]);
    n.loss(sum(n, n.op('Mul', [a, h])));
    await n.check([x, w]);
  });

  test('x·x: the same value twice in one node gets both contributions', async () => {
    const n = new Net(2);
    const x = n.input('x', [2, 3]);
    const r = n.constant([2, 3], [1, -2, 0.5, 3, -1, 0.25]);
    n.loss(sum(n, n.op('Mul', [n.op('Mul', [x, x]), r])));
    const xv = n.feeds.x.data as Float64Array;
    const { grads } = await n.gradients([x]);
    const rv = [1, -2, 0.5, 3, -1, 0.25];
    for (const [i, g] of grads.x.entries()) {
      assert.ok(Math.abs(g - 2 * xv[i] * rv[i]) < 1e-15, `d/dx ${g} vs ${2 * xv[i] * rv[i]}`);
    }
  });

  test('a parameter the loss does not reach gets a zero gradient of its shape', async () => {
    const n = new Net(3);
    const x = n.input('x', [2, 3]);
    const unused = n.input('unused', [4, 1]);
    const side = n.input('side', [3]);
    n.b.node('Exp', [side], { outputs: ['aux'] });
    n.model.graph.outputs.push(valueInfo('aux', DataType.DOUBLE));
    n.loss(sum(n, n.op('Exp', [x])));
    const { grads } = await n.gradients([x, unused, side]);
    // (−0 counts as 0.)
    assert.ok(grads.unused.length === 4 && grads.unused.every((v) => v === 0), `${grads.unused}`);
    assert.ok(grads.side.length === 3 && grads.side.every((v) => v === 0), `${grads.side}`);
  });

  test('integer values end the dependence: Shape feeding a Reshape, a Cast to int64, a comparison', async () => {
    const n = new Net(4);
    const x = n.input('x', [2, 3]);
    const w = n.input('w', [3]);
    const h = n.op('Mul', [x, w]);
    const flat = n.op('Reshape', [h, n.op('Shape', [n.op('Reshape', [h, n.b.int64s('s', [1], [-1])])])]);
    const ints = n.op(
      'Cast',
      [n.op('Cast', [n.op('Mul', [flat, n.constant([], [4])])], { to: DataType.INT64 })],
      {
        to: DataType.DOUBLE,
      },
    );
    const pos = n.op('Where', [n.op('Greater', [flat, n.constant([], [0])]), flat, n.op('Neg', [flat])]);
    n.loss(sum(n, n.op('Add', [n.op('Mul', [pos, flat]), ints])));
    await n.check([x, w]);
  });

  test('an op without a rule on the path: E_GRADIENT naming the op and the node', () => {
    const n = new Net(5);
    n.model.opsetImports.push({ domain: 'com.example', version: 1 });
    const x = n.input('x', [3]);
    const y = n.b.node('Mystery', [n.op('Exp', [x])], { domain: 'com.example', name: 'mystery' }).outputs[0];
    n.loss(sum(n, y));
    assertGradientError(
      () => addGradients(n.model, { loss: 'loss', wrt: [x] }),
      /'mystery'.*com\.example::Mystery/,
    );
  });

  test('a loss that does not depend on the parameters: E_GRADIENT', () => {
    const n = new Net(6);
    const x = n.input('x', [3]);
    const w = n.input('w', [3]);
    n.b.node('Exp', [w], { outputs: ['aux'] });
    n.loss(sum(n, n.op('Exp', [x])));
    assertGradientError(() => addGradients(n.model, { loss: 'loss', wrt: [w] }), /does not depend/);
    assertGradientError(() => addGradients(n.model, { loss: 'nowhere', wrt: [w] }), /not a value/);
  });

  test('dead branches are not differentiated', async () => {
    const n = new Net(7);
    n.model.opsetImports.push({ domain: 'com.example', version: 1 });
    const x = n.input('x', [2, 3]);
    const p = n.input('p', [3]);
    // Depends on p but does not reach the loss (and has no rule: it must not be looked at).
    n.b.node('Mystery', [n.op('Exp', [p], undefined, 'dead_exp')], {
      domain: 'com.example',
      name: 'mystery',
      outputs: ['aux'],
    });
    n.model.graph.outputs.push(valueInfo('aux', DataType.DOUBLE));
    // Reaches the loss but does not depend on p.
    const free = n.op('Sqrt', [n.op('Exp', [x], undefined, 'free_exp')], undefined, 'free_sqrt');
    const y = n.op('Mul', [x, p], undefined, 'mul');
    n.loss(n.op('ReduceSum', [n.op('Add', [y, free], undefined, 'add')], { keepdims: 0 }, 'sum'));
    const before = n.model.graph.nodes.length;
    const { nodes } = addGradients(n.model, { loss: 'loss', wrt: [p] });
    // Mul, Add, ReduceSum and the Identity naming the loss.
    assert.equal(nodes, 4);
    const added = n.model.graph.nodes.slice(before).map((node) => node.name);
    for (const dead of ['dead_exp', 'mystery', 'free_exp', 'free_sqrt']) {
      assert.ok(
        !added.some((a) => a.startsWith(`${dead}_grad`)),
        `no gradient nodes for ${dead}: ${added.join(', ')}`,
      );
    }
    assert.ok(added.some((a) => a.startsWith('mul_grad')));
  });

  test('a 3-layer MLP (MatMul, Add, Relu, Softmax, Log, ReduceMean): whole-network gradient vs finite differences', async () => {
    const n = new Net(8);
    const batch = 5;
    const x = n.input('x', [batch, 4]);
    const init = (name: string, dims: number[], scale: number) => {
      const rnd = mulberry32(name.length * 31 + dims[0]);
      const count = dims.reduce((a, d) => a * d, 1);
      return n.input(
        name,
        dims,
        Array.from({ length: count }, () => scale * (2 * rnd() - 1)),
      );
    };
    const params = [
      init('W1', [4, 6], 0.8),
      init('b1', [6], 0.3),
      init('W2', [6, 5], 0.6),
      init('b2', [5], 0.3),
      init('W3', [5, 3], 0.8),
      init('b3', [3], 0.3),
    ];
    const [W1, b1, W2, b2, W3, b3] = params;
    const dense = (h: string, W: string, b: string) => n.op('Add', [n.op('MatMul', [h, W]), b]);
    const h1 = n.op('Relu', [dense(x, W1, b1)]);
    const h2 = n.op('Relu', [dense(h1, W2, b2)]);
    const probs = n.op('Softmax', [dense(h2, W3, b3)], { axis: -1 });
    const labels = [0, 2, 1, 2, 0];
    const onehot = n.constant(
      [batch, 3],
      labels.flatMap((l) => [0, 1, 2].map((c) => (c === l ? 1 : 0))),
    );
    const logLik = n.op(
      'ReduceSum',
      [n.op('Mul', [onehot, n.op('Log', [probs])]), n.b.int64s('ax', [1], [1])],
      {
        keepdims: 0,
      },
    );
    n.loss(n.op('Neg', [n.op('ReduceMean', [logLik], { keepdims: 0 })]));
    const errors = await n.check([...params, x]);
    if (process.env.QNNX_GRAD_REPORT) console.log('  MLP max rel err', errors);
  });
});
