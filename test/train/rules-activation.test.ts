/**
 * Activation gradient rules against central finite differences (test/train/gradcheck.ts), 8 seeded random
 * configurations (rank, shape, attributes, axis) per op.
 *
 * Tolerances. Ops with float64 kernels in ONNX Runtime (Relu, LeakyRelu, Sigmoid, Tanh, Clip, Softmax,
 * LogSoftmax) run in float64 with eps 1e-6: the truncation error of a central difference is O(eps²) and the
 * rounding error O(1e-16/eps) = O(1e-10), so 1e-6 relative leaves a wide margin. The others (Erf, Gelu, Elu,
 * Selu, Celu, Softplus, Softsign, ThresholdedRelu, HardSigmoid, HardSwish, PRelu) have float32 kernels only. For
 * them eps is 1e-2: the perturbation changes one output element, so the loss difference carries one float32
 * rounding of that element (≈ 6e-8·|y|·|R| ≤ 3e-7), i.e. ≈ 1.5e-5 after dividing by 2·eps, plus the truncation
 * term eps²·|f'''|/6 ≈ 2e-5; tol 2e-4 is ten times that. Inputs are kept at least 0.05 away from kinks (0 for
 * the ReLU family, ±3 for HardSwish, the HardSigmoid corners, Clip bounds, the ThresholdedRelu threshold), where
 * a finite difference straddling the kink would be meaningless.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { modelToBytes } from '../../src/io/model-file.js';
import { floatAttr, GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { addGradients } from '../../src/train/autodiff/engine.js';
import { mulberry32, ort, runModel } from '../helpers/ort.js';
import { type CheckCase, type CheckOptions, gradCheck } from './gradcheck.js';

const F64: CheckOptions = { eps: 1e-6, tol: 1e-6 };
const F32: CheckOptions = { eps: 1e-2, tol: 2e-4 };
const CONFIGS = 8;

function randInt(rnd: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rnd() * (hi - lo + 1));
}

function randDims(rnd: () => number, minRank = 1, maxRank = 4): number[] {
  return Array.from({ length: randInt(rnd, minRank, maxRank) }, () => randInt(rnd, 1, 5));
}

/** n values in [lo, hi) at least `gap` away from every kink. */
function values(
  rnd: () => number,
  n: number,
  lo: number,
  hi: number,
  kinks: number[] = [],
  gap = 0.05,
): number[] {
  const out: number[] = [];
  while (out.length < n) {
    const v = lo + (hi - lo) * rnd();
    if (kinks.every((k) => Math.abs(v - k) >= gap)) out.push(v);
  }
  return out;
}

const count = (dims: number[]) => dims.reduce((a, d) => a * d, 1);

/** Runs `make` for CONFIGS seeds, checks each, and reports the largest relative error seen. */
async function sweep(
  t: { diagnostic(msg: string): void },
  name: string,
  seed: number,
  make: (rnd: () => number, i: number) => { c: CheckCase; o: CheckOptions },
): Promise<void> {
  const rnd = mulberry32(seed);
  let worst = 0;
  for (let i = 0; i < CONFIGS; i++) {
    const { c, o } = make(rnd, i);
    const r = await gradCheck({ seed: seed + i, ...c }, o);
    worst = Math.max(worst, ...Object.values(r));
  }
  t.diagnostic(`${name}: max relative error ${worst.toExponential(2)}`);
}

/** A unary elementwise op on one random input. */
function unaryCase(
  op: string,
  dtype: 'float64' | 'float32',
  opts: { lo?: number; hi?: number; kinks?: number[]; attrs?: Record<string, unknown>; opset?: number } = {},
) {
  return (rnd: () => number) => {
    const dims = randDims(rnd);
    const v = values(rnd, count(dims), opts.lo ?? -3, opts.hi ?? 3, opts.kinks ?? []);
    // One element in [0.2, 0.8], where every op here has a slope of order 1, so that the relative error is not
    // taken against a tiny maximum when a small tensor happens to sit where the slope vanishes (Gelu near −0.75,
    // Erf in its tails).
    v[0] = values(rnd, 1, 0.2, 0.8, opts.kinks ?? [])[0];
    return {
      c: {
        op,
        opset: opts.opset,
        attrs: opts.attrs as CheckCase['attrs'],
        inputs: [{ name: 'x', dims, dtype, values: v }],
      },
      o: dtype === 'float64' ? F64 : F32,
    };
  };
}

describe('activation gradient rules', () => {
  test('Relu (float64)', (t) => sweep(t, 'Relu', 100, unaryCase('Relu', 'float64', { kinks: [0] })));

  test('LeakyRelu with random alpha (float64)', (t) =>
    sweep(t, 'LeakyRelu', 200, (rnd) => {
      const alpha = 0.01 + 0.5 * rnd();
      return unaryCase('LeakyRelu', 'float64', { kinks: [0], attrs: { alpha: floatAttr('alpha', alpha) } })(
        rnd,
      );
    }));

  test('Sigmoid (float64)', (t) =>
    sweep(t, 'Sigmoid', 300, unaryCase('Sigmoid', 'float64', { lo: -5, hi: 5 })));

  test('Tanh (float64)', (t) => sweep(t, 'Tanh', 400, unaryCase('Tanh', 'float64')));

  test('HardSigmoid with random alpha/beta (float32: no float64 kernel)', (t) =>
    sweep(t, 'HardSigmoid', 500, (rnd) => {
      const alpha = 0.1 + 0.4 * rnd();
      const beta = 0.2 + 0.6 * rnd();
      // Corners where αx + β = 0 or 1.
      const kinks = [-beta / alpha, (1 - beta) / alpha];
      return unaryCase('HardSigmoid', 'float32', {
        lo: -6,
        hi: 6,
        kinks,
        attrs: { alpha: floatAttr('alpha', alpha), beta: floatAttr('beta', beta) },
      })(rnd);
    }));

  test('HardSwish (float32: no float64 kernel)', (t) =>
    sweep(
      t,
      'HardSwish',
      600,
      unaryCase('HardSwish', 'float32', { lo: -5, hi: 5, kinks: [-3, 3], opset: 14 }),
    ));

  test('Clip, min/max as inputs (opset 13, float64), gradients for x, min and max', (t) =>
    sweep(t, 'Clip', 700, (rnd, i) => {
      const dims = randDims(rnd);
      const lo = -1.5 + rnd();
      const hi = 0.5 + rnd();
      const x = values(rnd, count(dims), -3, 3, [lo, hi]);
      const inputs: CheckCase['inputs'] = [{ name: 'x', dims, values: x }];
      inputs.push({ name: 'min', dims: [], values: [lo] });
      // Half the configurations clip from below only.
      if (i % 2 === 0) inputs.push({ name: 'max', dims: [], values: [hi] });
      return { c: { op: 'Clip', opset: 13, inputs }, o: F64 };
    }));

  // gradcheck.ts builds its loss with Range (opset 11), so the attribute form of Clip (Clip-6, used up to opset 10) is checked
  // exactly instead: L = Σ Clip(x)·R has dL/dx = R inside [min, max] and 0 outside, with no rounding at all.
  test('Clip, min/max as attributes (opset 10, float32): exact mask', async () => {
    const rnd = mulberry32(750);
    for (let i = 0; i < CONFIGS; i++) {
      const dims = randDims(rnd);
      const n = count(dims);
      const lo = -1.5 + rnd();
      const hi = 0.5 + rnd();
      const x = Float32Array.from(values(rnd, n, -3, 3, [lo, hi]));
      const r = Float32Array.from({ length: n }, () => rnd() - 0.5);
      const m = new Model();
      m.opsetImports = [{ domain: '', version: 10 }];
      const b = new GraphBuilder(m.graph);
      m.graph.inputs.push(valueInfo('x', DataType.FLOAT, dims));
      b.reserve('x');
      const y = b.op('Clip', ['x'], { min: floatAttr('min', lo), max: floatAttr('max', hi) }, 'clip');
      const w = b.floats('r', dims, r);
      b.node('ReduceSum', [b.op('Mul', [y, w])], { outputs: ['loss'], attrs: { keepdims: 0 } });
      m.graph.outputs.push(valueInfo('loss', DataType.FLOAT, []));
      const { gradients } = addGradients(m, { loss: 'loss', wrt: ['x'] });
      b.node('Identity', [gradients.get('x')!], { outputs: ['dx'] });
      m.graph.outputs.push(valueInfo('dx', DataType.FLOAT, dims));
      const out = await runModel(modelToBytes(m), { x: new ort.Tensor('float32', x, dims) });
      const dx = out.dx.data as Float32Array;
      for (let j = 0; j < n; j++) assert.equal(dx[j], x[j] >= lo && x[j] <= hi ? r[j] : 0, `element ${j}`);
    }
  });

  test('Erf (float32: no float64 kernel)', (t) =>
    sweep(t, 'Erf', 800, unaryCase('Erf', 'float32', { opset: 13 })));

  test('Gelu exact and tanh (opset 20, float32: no float64 kernel)', (t) =>
    sweep(t, 'Gelu', 900, (rnd, i) =>
      unaryCase('Gelu', 'float32', {
        lo: -4,
        hi: 4,
        opset: 20,
        attrs: { approximate: i % 2 ? 'tanh' : 'none' },
      })(rnd),
    ));

  test('Gelu with an unknown approximation is refused with E_GRADIENT', async () => {
    await assert.rejects(
      gradCheck({
        op: 'Gelu',
        opset: 20,
        attrs: { approximate: 'fast' },
        inputs: [{ name: 'x', dims: [3], dtype: 'float32' }],
      }),
      (e: Error & { code?: string }) =>
        e.code === 'E_GRADIENT' && /Gelu/.test(e.message) && /'op'/.test(e.message),
    );
  });

  for (const op of ['Softmax', 'LogSoftmax']) {
    test(`${op}, random axis (opset 13, float64)`, (t) =>
      sweep(t, op, op === 'Softmax' ? 1000 : 1100, (rnd) => {
        const dims = randDims(rnd, 1, 4);
        const axis = randInt(rnd, -dims.length, dims.length - 1);
        return {
          c: { op, opset: 13, attrs: { axis }, inputs: [{ name: 'x', dims, lo: -3, hi: 3 }] },
          o: F64,
        };
      }));

    test(`${op}, opset 11 coerced-2-D semantics (float64)`, (t) =>
      sweep(t, `${op}-11`, op === 'Softmax' ? 1200 : 1300, (rnd) => {
        const dims = randDims(rnd, 2, 4);
        const axis = randInt(rnd, 0, dims.length - 1);
        return {
          c: { op, opset: 11, attrs: { axis }, inputs: [{ name: 'x', dims, lo: -3, hi: 3 }] },
          o: F64,
        };
      }));
  }

  test('Elu with random alpha (float32)', (t) =>
    sweep(t, 'Elu', 1400, (rnd) =>
      unaryCase('Elu', 'float32', { kinks: [0], attrs: { alpha: floatAttr('alpha', 0.2 + 1.5 * rnd()) } })(
        rnd,
      ),
    ));

  test('Selu (float32)', (t) => sweep(t, 'Selu', 1500, unaryCase('Selu', 'float32', { kinks: [0] })));

  test('Celu with random alpha (float32)', (t) =>
    sweep(t, 'Celu', 1550, (rnd) =>
      unaryCase('Celu', 'float32', {
        opset: 13,
        kinks: [0],
        attrs: { alpha: floatAttr('alpha', 0.5 + 1.5 * rnd()) },
      })(rnd),
    ));

  test('Softplus (float32)', (t) => sweep(t, 'Softplus', 1600, unaryCase('Softplus', 'float32')));

  // |f'''| reaches 24 near 0, so a smaller eps keeps the truncation term below 1e-4.
  test('Softsign (float32)', (t) =>
    sweep(t, 'Softsign', 1650, (rnd) => {
      const r = unaryCase('Softsign', 'float32', { kinks: [0] })(rnd);
      return { c: r.c, o: { ...F32, eps: 3e-3 } };
    }));

  test('ThresholdedRelu (float32)', (t) =>
    sweep(t, 'ThresholdedRelu', 1680, (rnd) => {
      const alpha = 2 * rnd() - 0.5;
      return unaryCase('ThresholdedRelu', 'float32', {
        opset: 13,
        kinks: [alpha],
        attrs: { alpha: floatAttr('alpha', alpha) },
      })(rnd);
    }));

  test('PRelu with a broadcast slope, gradients for x and slope (float32)', (t) =>
    sweep(t, 'PRelu', 1700, (rnd) => {
      const dims = randDims(rnd, 2, 4);
      // Slope: a random suffix of x's shape with random axes set to 1 (unidirectional broadcast).
      const r = randInt(rnd, 1, dims.length);
      const slope = dims.slice(dims.length - r).map((d) => (rnd() < 0.5 ? 1 : d));
      return {
        c: {
          op: 'PRelu',
          opset: 16,
          inputs: [
            { name: 'x', dims, dtype: 'float32', values: values(rnd, count(dims), -3, 3, [0]) },
            { name: 'slope', dims: slope, dtype: 'float32', lo: -0.5, hi: 0.5 },
          ],
        },
        // Piecewise linear: any step that cannot cross 0 (inputs stay 0.05 away) is exact up to rounding, and
        // a larger one divides the float32 rounding of x ± eps by more.
        o: { ...F32, eps: 0.04 },
      };
    }));
});
