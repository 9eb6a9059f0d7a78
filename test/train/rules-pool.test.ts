/**
 * Pooling gradient rules against central finite differences (test/train/gradcheck.ts) on seeded random 1-D, 2-D
 * and 3-D geometries: kernels 1-3, strides 1-3, dilations 1-2, asymmetric pads, auto_pad, ceil_mode,
 * count_include_pad, overlapping windows.
 *
 * Tolerances. MaxPool has float64 kernels: eps 1e-6, tol 1e-6 (the loss is piecewise linear and random inputs
 * keep every maximum more than eps ahead of the runner-up, so central differences are exact up to
 * 1e-16·|L|/eps ≈ 1e-10). GlobalMaxPool is float32 only and uses exactly representable inputs (see there). AveragePool and GlobalAveragePool exist in float32 only; they are linear, so a
 * central difference is exact for any step and eps 0.5 is used: the only error is float32 rounding of the loss
 * difference (≈ 6e-8·Σ|y·R| over the outputs the element touches, divided by 2·eps) and of the analytic gradient
 * (a few ulps), ≲ 1e-6 relative; tol 1e-4 leaves two orders of margin.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { mulberry32 } from '../helpers/ort.js';
import { type CheckCase, gradCheck } from './gradcheck.js';

const F64 = { eps: 1e-6, tol: 1e-6 };
const F32 = { eps: 0.5, tol: 1e-4 };
const CONFIGS = 10;

function randInt(rnd: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rnd() * (hi - lo + 1));
}

interface Geometry {
  dims: number[];
  attrs: NonNullable<CheckCase['attrs']>;
  label: string;
}

/** A random pooling geometry; i selects the number of spatial axes and the auto_pad mode deterministically. */
function geometry(rnd: () => number, i: number, withDilations: boolean): Geometry {
  const n = [2, 1, 2, 3, 2][i % 5];
  const kernel = Array.from({ length: n }, () => randInt(rnd, 1, 3));
  if (Math.max(...kernel) === 1) kernel[0] = 2;
  const strides = Array.from({ length: n }, () => randInt(rnd, 1, 3));
  const dilations = Array.from({ length: n }, () => (withDilations && rnd() < 0.4 ? 2 : 1));
  const dk = kernel.map((k, j) => (k - 1) * dilations[j] + 1);
  const pads = [...kernel.map((k) => randInt(rnd, 0, k - 1)), ...kernel.map((k) => randInt(rnd, 0, k - 1))];
  const x = dk.map((d) => randInt(rnd, d, d + (n === 3 ? 2 : 5)));
  const dims = [randInt(rnd, 1, 2), randInt(rnd, 1, 3), ...x];
  const autoPad = ['NOTSET', 'NOTSET', 'NOTSET', 'SAME_UPPER', 'NOTSET', 'SAME_LOWER', 'NOTSET', 'VALID'][
    i % 8
  ];
  const attrs: NonNullable<CheckCase['attrs']> = { kernel_shape: kernel, strides };
  if (dilations.some((d) => d !== 1)) attrs.dilations = dilations;
  if (autoPad === 'NOTSET') attrs.pads = pads;
  else attrs.auto_pad = autoPad;
  // SAME pads are computed from the undilated kernel by ONNX Runtime's pools: keep dilation 1 there.
  if (autoPad.startsWith('SAME')) delete attrs.dilations;
  attrs.ceil_mode = rnd() < 0.5 ? 1 : 0;
  const label = `x${JSON.stringify(dims)} k${kernel} s${strides} d${dilations} ${autoPad === 'NOTSET' ? `p${pads}` : autoPad} ceil${attrs.ceil_mode}`;
  return { dims, attrs, label };
}

describe('pool gradient rules', () => {
  test('MaxPool: 1-3-D, strides, pads, dilations, ceil_mode, auto_pad (float64, opset 18)', async (t) => {
    const rnd = mulberry32(5);
    let worst = 0;
    for (let i = 0; i < CONFIGS; i++) {
      const g = geometry(rnd, i, true);
      const r = await gradCheck(
        { op: 'MaxPool', opset: 18, attrs: g.attrs, inputs: [{ name: 'x', dims: g.dims }], seed: 50 + i },
        F64,
      );
      worst = Math.max(worst, r.x);
    }
    t.diagnostic(`MaxPool: max relative error ${worst.toExponential(2)}`);
  });

  test('MaxPool at opset 13: non-overlapping windows without reduction; overlapping refused, and opset 10', async (t) => {
    const r = await gradCheck(
      {
        op: 'MaxPool',
        opset: 13,
        attrs: { kernel_shape: [2, 2], strides: [2, 3], pads: [1, 0, 0, 1] },
        inputs: [{ name: 'x', dims: [2, 3, 5, 7] }],
      },
      F64,
    );
    t.diagnostic(`MaxPool opset 13: relative error ${r.x.toExponential(2)}`);
    await assert.rejects(
      gradCheck({
        op: 'MaxPool',
        opset: 13,
        attrs: { kernel_shape: [3, 3], strides: [2, 2] },
        inputs: [{ name: 'x', dims: [1, 1, 5, 5] }],
      }),
      (e: Error & { code?: string }) => e.code === 'E_GRADIENT' && /opset ≥ 16/.test(e.message),
    );
    await assert.rejects(
      gradCheck({
        op: 'MaxPool',
        opset: 10,
        attrs: { kernel_shape: [2, 2], strides: [2, 2] },
        inputs: [{ name: 'x', dims: [1, 1, 4, 4] }],
      }),
      (e: Error & { code?: string }) => e.code === 'E_GRADIENT' && /opset ≥ 11/.test(e.message),
    );
  });

  test('AveragePool: count_include_pad 0/1, ceil_mode, pads, strides, dilations, auto_pad (float32, opsets 10/19)', async (t) => {
    const rnd = mulberry32(7);
    let worst = 0;
    for (let i = 0; i < CONFIGS; i++) {
      const g = geometry(rnd, i, true);
      g.attrs.count_include_pad = i % 2;
      // Every fifth configuration runs at opset 10 (ceil_mode exists, dilations do not yet).
      const opset = i % 5 === 4 ? 10 : 19;
      if (opset < 19) delete g.attrs.dilations;
      const r = await gradCheck(
        {
          op: 'AveragePool',
          opset,
          attrs: g.attrs,
          inputs: [{ name: 'x', dims: g.dims, dtype: 'float32' }],
          seed: 70 + i,
        },
        F32,
      );
      worst = Math.max(worst, r.x);
    }
    t.diagnostic(`AveragePool: max relative error ${worst.toExponential(2)}`);
  });

  test('GlobalAveragePool, 1-3-D (float32)', async (t) => {
    const rnd = mulberry32(9);
    let worst = 0;
    for (let i = 0; i < 8; i++) {
      const dims = [
        randInt(rnd, 1, 3),
        randInt(rnd, 1, 4),
        ...Array.from({ length: 1 + (i % 3) }, () => randInt(rnd, 1, 5)),
      ];
      const r = await gradCheck(
        { op: 'GlobalAveragePool', opset: 13, inputs: [{ name: 'x', dims, dtype: 'float32' }], seed: 90 + i },
        F32,
      );
      worst = Math.max(worst, r.x);
    }
    t.diagnostic(`GlobalAveragePool: max relative error ${worst.toExponential(2)}`);
  });

  // GlobalMaxPool has no float64 kernel. Inputs are distinct multiples of 1/8 in random order and eps is 1/64:
  // x ± eps is exact in float32 and no maximum changes place, so the central difference is exact.
  test('GlobalMaxPool, 1-3-D (float32, exact inputs)', async (t) => {
    const rnd = mulberry32(10);
    let worst = 0;
    for (let i = 0; i < 8; i++) {
      const dims = [
        randInt(rnd, 1, 3),
        randInt(rnd, 1, 4),
        ...Array.from({ length: 1 + (i % 3) }, () => randInt(rnd, 1, 5)),
      ];
      const n = dims.reduce((a, d) => a * d, 1);
      const values = Array.from({ length: n }, (_, j) => (j - n / 2) / 8);
      for (let j = n - 1; j > 0; j--) {
        const k = Math.floor(rnd() * (j + 1));
        [values[j], values[k]] = [values[k], values[j]];
      }
      const r = await gradCheck(
        {
          op: 'GlobalMaxPool',
          opset: 13,
          inputs: [{ name: 'x', dims, dtype: 'float32', values }],
          seed: 100 + i,
        },
        { eps: 1 / 64, tol: 1e-6 },
      );
      worst = Math.max(worst, r.x);
    }
    t.diagnostic(`GlobalMaxPool: max relative error ${worst.toExponential(2)}`);
  });
});
