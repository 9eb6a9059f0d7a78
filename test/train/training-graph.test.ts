/**
 * The training graph: a small CNN (Conv + BatchNorm + Relu + MaxPool + Gemm) takes SGD steps that lower the loss;
 * BatchNorm's running statistics follow PyTorch (momentum 0.1, unbiased batch variance), checked against a
 * float64 reference on the batch's actual BatchNorm input (tapped from the forward model); the graph's interface
 * (inputs, outputs, pruning); dropout masks; fake quant with a learned scale; and a measurement of the per-step
 * cost of copying the fed-back outputs (printed, not asserted: timings vary on a shared machine).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { floatAttr, GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { Session } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';
import { FAKE_QUANT_DOMAIN, insertFakeQuant } from '../../src/train/fake-quant.js';
import { buildTrainingGraph, type TrainingGraph } from '../../src/train/training-graph.js';
import { mulberry32 } from '../helpers/ort.js';

const B = 8;

function randn(rnd: () => number, n: number, scale: number): Float32Array {
  return Float32Array.from({ length: n }, () => (rnd() * 2 - 1) * scale);
}

/** Conv(1→4, 3x3, pad 1) → BN → Relu → MaxPool 2 → Flatten → Gemm(64→10). */
function cnn(seed = 1): Model {
  const rnd = mulberry32(seed);
  const m = new Model();
  m.opsetImports = [{ domain: '', version: 18 }];
  const g = m.graph;
  g.name = 'cnn';
  const b = new GraphBuilder(g);
  g.inputs.push(valueInfo('input', DataType.FLOAT, ['N', 1, 8, 8]));
  b.initializer('conv.weight', DataType.FLOAT, [4, 1, 3, 3], randn(rnd, 36, 1 / 3));
  b.initializer('conv.bias', DataType.FLOAT, [4], randn(rnd, 4, 1 / 3));
  b.initializer('bn.weight', DataType.FLOAT, [4], Float32Array.from([1, 1.2, 0.8, 1]));
  b.initializer('bn.bias', DataType.FLOAT, [4], Float32Array.from([0, 0.1, -0.1, 0.2]));
  b.initializer('bn.running_mean', DataType.FLOAT, [4], Float32Array.from([0.1, 0, -0.2, 0.05]));
  b.initializer('bn.running_var', DataType.FLOAT, [4], Float32Array.from([1, 0.5, 2, 1.5]));
  b.initializer('fc.weight', DataType.FLOAT, [10, 64], randn(rnd, 640, 1 / 8));
  b.initializer('fc.bias', DataType.FLOAT, [10], randn(rnd, 10, 1 / 8));
  b.node('Conv', ['input', 'conv.weight', 'conv.bias'], {
    outputs: ['conv_out'],
    attrs: { kernel_shape: [3, 3], pads: [1, 1, 1, 1] },
    name: 'conv',
  });
  b.node('BatchNormalization', ['conv_out', 'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var'], {
    outputs: ['bn_out'],
    attrs: { epsilon: floatAttr('epsilon', 1e-5), momentum: floatAttr('momentum', 0.9) },
    name: 'bn',
  });
  b.node('Relu', ['bn_out'], { outputs: ['relu_out'] });
  b.node('MaxPool', ['relu_out'], {
    outputs: ['pool_out'],
    attrs: { kernel_shape: [2, 2], strides: [2, 2] },
  });
  b.node('Flatten', ['pool_out'], { outputs: ['flat'], attrs: { axis: 1 } });
  b.node('Gemm', ['flat', 'fc.weight', 'fc.bias'], { outputs: ['logits'], attrs: { transB: 1 } });
  g.outputs.push(valueInfo('logits', DataType.FLOAT, ['N', 10]));
  return m;
}

function batch(seed: number): { x: Float32Array; y: BigInt64Array } {
  const rnd = mulberry32(seed);
  return {
    x: Float32Array.from({ length: B * 64 }, () => rnd() * 2 - 0.5),
    y: BigInt64Array.from({ length: B }, () => BigInt(Math.floor(rnd() * 10))),
  };
}

async function step(
  s: Session,
  tg: TrainingGraph,
  state: Map<string, HostTensor>,
  x: HostTensor,
  y: HostTensor,
  t: number,
  lr: number,
  extra: Record<string, HostTensor> = {},
): Promise<number> {
  const feeds: Record<string, HostTensor> = { [tg.input]: x, [tg.target]: y, ...extra };
  for (const [k, v] of Object.entries(tg.optimizer.stepScalars(t, lr)))
    if (s.inputNames.includes(k)) feeds[k] = v;
  for (const f of tg.feedback) feeds[f.input] = state.get(f.input)!;
  const out = await s.run(feeds, tg.fetches);
  for (const f of tg.feedback) state.set(f.input, out[f.output]);
  return Number(out[tg.loss].data[0]);
}

describe('training graph', () => {
  test('small CNN: interface, loss decreases, BatchNorm statistics as PyTorch', async () => {
    const model = cnn();
    const tg = buildTrainingGraph(model, {
      optimizer: { kind: 'sgd', lr: 0.1, momentum: 0.9 },
      batchShape: [B, 1, 8, 8],
    });
    // Interface.
    assert.deepEqual(tg.params, ['conv.weight', 'conv.bias', 'bn.weight', 'bn.bias', 'fc.weight', 'fc.bias']);
    assert.deepEqual(tg.buffers, ['bn.running_mean', 'bn.running_var']);
    const g = tg.model.graph;
    const outs = g.outputs.map((o) => o.name);
    assert.equal(outs[0], 'loss');
    assert.ok(!outs.includes('logits'), 'the model output is not exposed');
    assert.ok(outs.includes('conv.weight.next') && outs.includes('bn.running_var.next'));
    assert.ok(outs.includes('conv.weight.momentum_buffer.next'));
    assert.equal(outs.length, 1 + 6 + 2 + 6);
    const ins = g.inputs.map((i) => i.name);
    for (const n of [
      'input',
      'target',
      'conv.weight',
      'bn.running_mean',
      'fc.bias.momentum_buffer',
      'opt.lr',
    ]) {
      assert.ok(ins.includes(n), `input ${n}`);
    }
    assert.ok(!g.initializers.has('conv.weight'), 'parameters are inputs, not initializers');
    assert.ok(g.nodes.every((n) => n.domain === ''));
    // Every node feeds an output (pruned).
    const consumed = new Set([...g.nodes.flatMap((n) => n.inputs), ...outs]);
    for (const n of g.nodes)
      assert.ok(
        n.outputs.some((o) => consumed.has(o)),
        `dead node ${n.name}`,
      );
    // The original model is untouched.
    assert.ok(model.graph.initializers.has('conv.weight'));
    assert.equal(
      model.graph.nodes.find((n) => n.opType === 'BatchNormalization')!.attr('training_mode'),
      undefined,
    );

    const { x, y } = batch(5);
    const xt: HostTensor = { dtype: DataType.FLOAT, dims: [B, 1, 8, 8], data: x };
    const yt: HostTensor = { dtype: DataType.INT64, dims: [B], data: y };
    // The BatchNorm input on this batch, from the forward model (the conv does not depend on BN's mode).
    const fwd = await Session.create(model, { taps: ['conv_out'] });
    const convOut = (await fwd.run({ input: xt }, ['conv_out'])).conv_out.data as Float32Array;
    await fwd.release();

    const s = await Session.create(tg.model);
    const state = tg.initialState();
    const rm0 = Float64Array.from(state.get('bn.running_mean')!.data as Float32Array);
    const rv0 = Float64Array.from(state.get('bn.running_var')!.data as Float32Array);
    const fed = new Map(state);
    const fedCopy = new Map([...state].map(([k, t]) => [k, Float32Array.from(t.data as Float32Array)]));
    const losses: number[] = [];
    try {
      losses.push(await step(s, tg, state, xt, yt, 1, 0.1));
      // Inputs are zero-copy: the step must not write into the arrays it was fed (ORT's BatchNormalization
      // would, through its aliased running-statistic outputs).
      for (const [k, t] of fed) assert.deepEqual(t.data, fedCopy.get(k), `fed '${k}' was modified`);
      // PyTorch: running = (1 − 0.1)·running + 0.1·batch, batch variance unbiased (M = 8·8·8 values/channel).
      const M = B * 64;
      const rm = state.get('bn.running_mean')!.data as Float32Array;
      const rv = state.get('bn.running_var')!.data as Float32Array;
      for (let c = 0; c < 4; c++) {
        let mean = 0;
        for (let n = 0; n < B; n++) for (let i = 0; i < 64; i++) mean += convOut[(n * 4 + c) * 64 + i];
        mean /= M;
        let ss = 0;
        for (let n = 0; n < B; n++)
          for (let i = 0; i < 64; i++) ss += (convOut[(n * 4 + c) * 64 + i] - mean) ** 2;
        const wantMean = 0.9 * rm0[c] + 0.1 * mean;
        const wantVar = 0.9 * rv0[c] + (0.1 * ss) / (M - 1);
        // float32 reductions over 512 values: 1e-6 relative (absolute for the mean, which can be near 0).
        assert.ok(
          Math.abs(rm[c] - wantMean) <= 1e-6 * Math.max(1, Math.abs(wantMean)),
          `mean ${c}: ${rm[c]} vs ${wantMean}`,
        );
        assert.ok(Math.abs(rv[c] - wantVar) <= 1e-6 * wantVar, `var ${c}: ${rv[c]} vs ${wantVar}`);
      }
      for (let k = 2; k <= 5; k++) losses.push(await step(s, tg, state, xt, yt, k, 0.1));
    } finally {
      await s.release();
    }
    assert.ok(losses[1] < losses[0], `loss ${losses.join(' → ')}`);
    assert.ok(losses[4] < 0.7 * losses[0], `loss ${losses.join(' → ')}`);
  });

  test('trainable: defaults, lists, predicates, refusals', async () => {
    const model = cnn();
    const opts = { optimizer: { kind: 'sgd' as const, lr: 0.1 }, batchShape: [B, 1, 8, 8] };
    const frozen = buildTrainingGraph(model, { ...opts, trainable: ['fc.weight', 'fc.bias'] });
    assert.deepEqual(frozen.params, ['fc.weight', 'fc.bias']);
    // Frozen features: no gradient through the conv, statistics still updated (PyTorch train() mode).
    assert.deepEqual(frozen.buffers, ['bn.running_mean', 'bn.running_var']);
    assert.ok(frozen.stats.trainingNodes < buildTrainingGraph(model, opts).stats.trainingNodes);
    // The BatchNorm off the gradient path still runs in training mode (and the graph loads and runs).
    const s = await Session.create(frozen.model);
    const state = frozen.initialState();
    const { x, y } = batch(3);
    const l = await step(
      s,
      frozen,
      state,
      { dtype: DataType.FLOAT, dims: [B, 1, 8, 8], data: x },
      { dtype: DataType.INT64, dims: [B], data: y },
      1,
      0.1,
    );
    await s.release();
    assert.ok(Number.isFinite(l));
    assert.notDeepEqual(state.get('bn.running_var')!.data, frozen.initialState().get('bn.running_var')!.data);
    const pred = buildTrainingGraph(model, { ...opts, trainable: (n) => n.startsWith('bn.') });
    assert.deepEqual(pred.params, ['bn.weight', 'bn.bias']);
    assert.throws(
      () => buildTrainingGraph(model, { ...opts, trainable: ['bn.running_mean'] }),
      /running statistic/,
    );
    assert.throws(() => buildTrainingGraph(model, { ...opts, trainable: ['nope'] }), /not an initializer/);
  });

  test('dropout becomes x·mask with the mask fed per step', async () => {
    const m = new Model();
    m.opsetImports = [{ domain: '', version: 18 }];
    const b = new GraphBuilder(m.graph);
    const rnd = mulberry32(3);
    m.graph.inputs.push(valueInfo('x', DataType.FLOAT, ['N', 16]));
    b.initializer('w', DataType.FLOAT, [16, 4], randn(rnd, 64, 0.5));
    b.initializer('ratio', DataType.FLOAT, [], Float32Array.of(0.25));
    b.node('Dropout', ['x', 'ratio'], { outputs: ['xd'] });
    b.node('MatMul', ['xd', 'w'], { outputs: ['y'] });
    m.graph.outputs.push(valueInfo('y', DataType.FLOAT, ['N', 4]));
    const tg = buildTrainingGraph(m, {
      optimizer: { kind: 'sgd', lr: 0.1 },
      loss: { kind: 'mse' },
      batchShape: [2, 16],
    });
    assert.equal(tg.dropout.length, 1);
    assert.deepEqual(tg.dropout[0].dims, [2, 16]);
    assert.equal(tg.dropout[0].ratio, 0.25);
    assert.deepEqual(tg.params, ['w']);
    assert.ok(!tg.model.graph.nodes.some((n) => n.opType === 'Dropout'));
    // With a mask of all zeros nothing reaches w: its gradient is 0 and w stays as it was.
    const s = await Session.create(tg.model);
    const state = tg.initialState();
    const w0 = Float32Array.from(state.get('w')!.data as Float32Array);
    const mask = (v: number): HostTensor => ({
      dtype: DataType.FLOAT,
      dims: [2, 16],
      data: new Float32Array(32).fill(v),
    });
    const x: HostTensor = { dtype: DataType.FLOAT, dims: [2, 16], data: randn(rnd, 32, 1) };
    const t: HostTensor = { dtype: DataType.FLOAT, dims: [2, 4], data: randn(rnd, 8, 1) };
    await step(s, tg, state, x, t, 1, 0.1, { [tg.dropout[0].input]: mask(0) });
    assert.deepEqual(state.get('w')!.data, w0);
    await step(s, tg, state, x, t, 2, 0.1, { [tg.dropout[0].input]: mask(1 / 0.75) });
    assert.notDeepEqual(state.get('w')!.data, w0);
    await s.release();
  });

  test('fake quant with LSQ: lowered, its scale trains by default', async () => {
    const m = cnn();
    insertFakeQuant(m, 'fc.weight', { scale: 0.01, qmin: -8, qmax: 7, grad: 'lsq' });
    insertFakeQuant(m, 'relu_out', { scale: 0.05, qmin: 0, qmax: 255, grad: 'ste' });
    const tg = buildTrainingGraph(m, { optimizer: { kind: 'adam', lr: 1e-3 }, batchShape: [B, 1, 8, 8] });
    assert.ok(tg.params.includes('fc.weight_fq_scale'), tg.params.join(','));
    assert.ok(!tg.params.includes('relu_out_fq_scale'), 'STE does not learn its scale');
    assert.ok(!tg.model.graph.nodes.some((n) => n.domain === FAKE_QUANT_DOMAIN));
    assert.ok(!tg.model.graph.nodes.some((n) => n.opType === 'QuantizeLinear'));
    const s = await Session.create(tg.model);
    const state = tg.initialState();
    const { x, y } = batch(9);
    const xt: HostTensor = { dtype: DataType.FLOAT, dims: [B, 1, 8, 8], data: x };
    const yt: HostTensor = { dtype: DataType.INT64, dims: [B], data: y };
    const l0 = await step(s, tg, state, xt, yt, 1, 1e-3);
    assert.ok(Number.isFinite(l0));
    const sc = Number(state.get('fc.weight_fq_scale')!.data[0]);
    assert.notEqual(sc, 0.01);
    assert.ok(Math.abs(sc - 0.01) < 2e-3, `scale moved by about lr: ${sc}`);
    await s.release();
  });

  test('per-step cost of the fed-back outputs (MLP 784-256-128-10, Adam, batch 64)', async () => {
    const rnd = mulberry32(8);
    const m = new Model();
    m.opsetImports = [{ domain: '', version: 18 }];
    const b = new GraphBuilder(m.graph);
    m.graph.inputs.push(valueInfo('x', DataType.FLOAT, ['N', 784]));
    const sizes = [784, 256, 128, 10];
    let h = 'x';
    for (let l = 0; l < 3; l++) {
      const w = b.initializer(
        `w${l}`,
        DataType.FLOAT,
        [sizes[l], sizes[l + 1]],
        randn(rnd, sizes[l] * sizes[l + 1], 1 / Math.sqrt(sizes[l])),
      );
      const bias = b.initializer(`b${l}`, DataType.FLOAT, [sizes[l + 1]], new Float32Array(sizes[l + 1]));
      h = b.op('Add', [b.op('MatMul', [h, w]), bias]);
      if (l < 2) h = b.op('Relu', [h]);
    }
    b.node('Identity', [h], { outputs: ['logits'] });
    m.graph.outputs.push(valueInfo('logits', DataType.FLOAT, ['N', 10]));
    const tg = buildTrainingGraph(m, { optimizer: { kind: 'adam', lr: 1e-3 }, batchShape: [64, 784] });
    const s = await Session.create(tg.model);
    const state = tg.initialState();
    const feeds: Record<string, HostTensor> = {
      x: { dtype: DataType.FLOAT, dims: [64, 784], data: randn(rnd, 64 * 784, 1) },
      [tg.target]: {
        dtype: DataType.INT64,
        dims: [64],
        data: BigInt64Array.from({ length: 64 }, (_, i) => BigInt(i % 10)),
      },
      ...tg.optimizer.stepScalars(1, 1e-3),
    };
    for (const f of tg.feedback) feeds[f.input] = state.get(f.input)!;
    // Interleaved runs, minimum of each: the least disturbed run on a shared machine.
    let all = Infinity;
    let lossOnly = Infinity;
    for (let i = 0; i < 150; i++) {
      let t0 = performance.now();
      await s.run(feeds, tg.fetches);
      all = Math.min(all, performance.now() - t0);
      t0 = performance.now();
      await s.run(feeds, [tg.loss]);
      lossOnly = Math.min(lossOnly, performance.now() - t0);
    }
    await s.release();
    const mb = tg.stats.feedbackBytes / 2 ** 20;
    console.log(
      `  MLP ${tg.stats.paramElements} params, Adam: ${tg.stats.trainingNodes} nodes; step ${all.toFixed(2)} ms fetching ` +
        `${mb.toFixed(2)} MiB of params+state, ${lossOnly.toFixed(2)} ms fetching the loss only ` +
        `(copy cost ≈ ${(all - lossOnly).toFixed(2)} ms, ${(((all - lossOnly) / all) * 100).toFixed(0)} %)`,
    );
    assert.equal(tg.stats.feedbackBytes, 3 * 4 * tg.stats.paramElements);
  });
});
