/**
 * Finite-difference gradient checks for gradient rules. A one-node model y = op(inputs) gets a loss
 * L = Σ_k Σ Cast(y_k, double) · R_k with fixed random weights R_k, so every output element matters; the analytic
 * gradients come from addGradients run in ONNX Runtime, the numeric ones from central differences of L, also
 * run in ONNX Runtime. Float64 inputs use eps 1e-6 (ops with float64 kernels); float32 inputs a larger eps.
 */
import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { modelToBytes } from '../../src/io/model-file.js';
import { type AttrInput, GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { inferTypes } from '../../src/ir/passes/shape-inference.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType } from '../../src/onnx/dtype.js';
import { addGradients } from '../../src/train/autodiff/engine.js';
import { mulberry32 } from '../helpers/ort.js';

export interface CheckInput {
  name: string;
  dims: number[];
  /** 'float64' (default), 'float32', or 'int64' / 'bool' (not differentiated). */
  dtype?: 'float64' | 'float32' | 'int64' | 'bool';
  /** An initializer instead of a graph input, so shape inference sees its values (shapes, axes, pads, scales). */
  constant?: boolean;
  /** Values; random in [lo, hi) when omitted. */
  values?: ArrayLike<number>;
  lo?: number;
  hi?: number;
  /** Differentiate with respect to this input (default true for float inputs). */
  grad?: boolean;
}

export interface CheckCase {
  op: string;
  domain?: string;
  inputs: CheckInput[];
  attrs?: Record<string, AttrInput>;
  /** Number of outputs that take part in the loss (default 1). */
  outputs?: number;
  /** Total outputs the node declares (default = outputs). */
  declaredOutputs?: number;
  opset?: number;
  seed?: number;
}

export interface CheckOptions {
  /** Finite-difference step (default 1e-6 for float64, 1e-3 for float32). */
  eps?: number;
  /** Maximum relative error allowed: max|analytic − numeric| / max|numeric| (default 1e-6 f64, 2e-3 f32). */
  tol?: number;
  /** Elements checked per input (random subset; default all up to 64). */
  maxElements?: number;
}

const SO: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: 1,
  logSeverityLevel: 3,
  graphOptimizationLevel: 'disabled',
};

function buildForward(c: CheckCase, rnd: () => number): { model: Model; feeds: Record<string, ort.Tensor> } {
  const m = new Model();
  m.irVersion = 10;
  m.opsetImports = [{ domain: '', version: c.opset ?? 18 }];
  if (c.domain) m.opsetImports.push({ domain: c.domain, version: 1 });
  const g = m.graph;
  g.name = 'gradcheck';
  const b = new GraphBuilder(g);
  const feeds: Record<string, ort.Tensor> = {};
  for (const inp of c.inputs) {
    const dt = inp.dtype ?? 'float64';
    const n = inp.dims.reduce((a, d) => a * d, 1);
    const lo = inp.lo ?? -1;
    const hi = inp.hi ?? 1;
    const vals = inp.values ?? Array.from({ length: n }, () => lo + (hi - lo) * rnd());
    const type =
      dt === 'float64'
        ? DataType.DOUBLE
        : dt === 'float32'
          ? DataType.FLOAT
          : dt === 'bool'
            ? DataType.BOOL
            : DataType.INT64;
    const data =
      dt === 'float64'
        ? Float64Array.from(vals)
        : dt === 'float32'
          ? Float32Array.from(vals)
          : dt === 'bool'
            ? Uint8Array.from(vals, (v) => (v ? 1 : 0))
            : BigInt64Array.from(Array.from(vals, (v) => BigInt(v)));
    b.reserve(inp.name);
    if (inp.constant) {
      g.addInitializer(new Tensor(inp.name, type, inp.dims, data));
      continue;
    }
    g.inputs.push(valueInfo(inp.name, type, inp.dims));
    feeds[inp.name] = new ort.Tensor(dt, data, inp.dims);
  }
  const nOut = c.outputs ?? 1;
  const node = b.node(
    c.op,
    c.inputs.map((i) => i.name),
    {
      outputs: c.declaredOutputs ?? nOut,
      attrs: c.attrs,
      domain: c.domain,
      name: 'op',
    },
  );
  const terms: string[] = [];
  const opset = c.opset ?? 18;
  // Range (opset 11) is missing below opset 11: there R is a constant, sized by shape inference.
  const types =
    opset < 11
      ? inferTypes(m, {
          inputShapes: Object.fromEntries(c.inputs.filter((i) => !i.constant).map((i) => [i.name, i.dims])),
        })
      : undefined;
  for (let k = 0; k < nOut; k++) {
    const y = node.outputs[k];
    const yd = b.op('Cast', [y], { to: DataType.DOUBLE });
    // R_k has y's shape, known only after inference: use a random-but-fixed function of y's index instead:
    // R = sin(1 + 0.7·i) over the flattened output, built from Range so no shape is needed up front.
    const flat = b.op('Reshape', [yd, b.int64s('flat_shape', [1], [-1])]);
    const ys = types?.get(y)?.shape;
    let r: string;
    if (ys?.every((d) => typeof d === 'number')) {
      const n = (ys as number[]).reduce((a, d) => a * d, 1);
      const weights = Float64Array.from({ length: n }, (_, i) => Math.sin(1 + (0.7 + 0.13 * k) * i));
      r = b.initializer('r', DataType.DOUBLE, [n], weights);
    } else {
      const count = b.op('Shape', [flat]);
      const countScalar =
        opset >= 13
          ? b.op('Squeeze', [count, b.int64s('sq_axes', [1], [0])])
          : b.op('Squeeze', [count], { axes: [0] });
      const idx = b.op('Range', [b.int64s('zero', [], [0]), countScalar, b.int64s('one', [], [1])]);
      const idxd = b.op('Cast', [idx], { to: DataType.DOUBLE });
      r = b.op('Sin', [
        b.op('Add', [
          b.op('Mul', [idxd, b.initializer('k07', DataType.DOUBLE, [], Float64Array.of(0.7 + 0.13 * k))]),
          b.initializer('k1', DataType.DOUBLE, [], Float64Array.of(1)),
        ]),
      ]);
    }
    terms.push(b.op('ReduceSum', [b.op('Mul', [flat, r])], { keepdims: 0 }));
  }
  const loss = terms.length === 1 ? terms[0] : b.op('Sum', terms);
  b.node('Identity', [loss], { outputs: ['loss'] });
  g.outputs.push(valueInfo('loss', DataType.DOUBLE, []));
  return { model: m, feeds };
}

async function lossOf(session: ort.InferenceSession, feeds: Record<string, ort.Tensor>): Promise<number> {
  const out = await session.run(feeds, ['loss']);
  return Number((out.loss.data as Float64Array)[0]);
}

/** Runs the check and asserts the tolerance; returns the relative error per differentiated input. */
export async function gradCheck(c: CheckCase, o: CheckOptions = {}): Promise<Record<string, number>> {
  const rnd = mulberry32(c.seed ?? 1234);
  const { model, feeds } = buildForward(c, rnd);
  const forwardBytes = modelToBytes(model);
  const isFloat = (i: CheckInput) => (i.dtype ?? 'float64').startsWith('float');
  const wrt = c.inputs.filter((i) => isFloat(i) && !i.constant && i.grad !== false).map((i) => i.name);
  const shapes = Object.fromEntries(c.inputs.filter((i) => !i.constant).map((i) => [i.name, i.dims]));
  const { gradients } = addGradients(model, { loss: 'loss', wrt, inputShapes: shapes });
  for (const p of wrt) {
    const inp = c.inputs.find((i) => i.name === p)!;
    const type = (inp.dtype ?? 'float64') === 'float64' ? DataType.DOUBLE : DataType.FLOAT;
    const gname = gradients.get(p)!;
    const out = `${p}__grad`;
    new GraphBuilder(model.graph).node('Identity', [gname], { outputs: [out] });
    model.graph.outputs.push(valueInfo(out, type, inp.dims));
  }
  const gradSession = await ort.InferenceSession.create(modelToBytes(model), SO);
  const analytic = await gradSession.run(feeds);
  await gradSession.release();
  const fwd = await ort.InferenceSession.create(forwardBytes, SO);
  const result: Record<string, number> = {};
  try {
    for (const p of wrt) {
      const inp = c.inputs.find((i) => i.name === p)!;
      const f64 = (inp.dtype ?? 'float64') === 'float64';
      const eps = o.eps ?? (f64 ? 1e-6 : 1e-3);
      const tol = o.tol ?? (f64 ? 1e-6 : 2e-3);
      const data = feeds[p].data as Float64Array | Float32Array;
      const a = analytic[`${p}__grad`].data as Float64Array | Float32Array;
      assert.equal(
        a.length,
        data.length,
        `gradient of ${p} has ${a.length} elements, input has ${data.length}`,
      );
      const max = o.maxElements ?? 64;
      const idx = Array.from({ length: data.length }, (_, i) => i);
      for (let i = idx.length - 1; i > 0; i--) {
        const j = Math.floor(rnd() * (i + 1));
        [idx[i], idx[j]] = [idx[j], idx[i]];
      }
      let maxDiff = 0;
      let maxNum = 0;
      for (const i of idx.slice(0, max)) {
        const v = data[i];
        data[i] = v + eps;
        const xp = data[i]; // float32 storage rounds the step: divide by the step actually taken
        const lp = await lossOf(fwd, feeds);
        data[i] = v - eps;
        const xm = data[i];
        const lm = await lossOf(fwd, feeds);
        data[i] = v;
        const num = (lp - lm) / (xp - xm);
        maxNum = Math.max(maxNum, Math.abs(num));
        maxDiff = Math.max(maxDiff, Math.abs(num - a[i]));
      }
      const rel = maxDiff / Math.max(maxNum, 1e-12);
      result[p] = rel;
      assert.ok(
        rel <= tol,
        `${c.op}: d loss / d ${p}: relative error ${rel.toExponential(2)} > ${tol} (max |numeric| ${maxNum.toExponential(2)})`,
      );
    }
  } finally {
    await fwd.release();
  }
  return result;
}
