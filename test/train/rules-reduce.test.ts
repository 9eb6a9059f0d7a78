/**
 * Reduce* gradient rules against float64 finite differences (ONNX Runtime has double kernels for all of them),
 * relative tolerance 1e-6: central differences with eps 1e-6 on smooth float64 functions are accurate to about
 * 1e-9. Shapes, axes (negative, empty = all), keepdims 0/1, noop_with_empty_axes and the axes' form (attribute
 * before opset 13 / 18, constant input, run-time input) are drawn from a seeded PRNG, 10 configurations per op.
 * ReduceMax/Min inputs are continuous random values (no ties) for the finite differences; the tie rule is checked
 * separately. QNNX_GRAD_REPORT=1 prints the largest relative error per op.
 */
import { after, describe, test } from 'node:test';
import { mulberry32 } from '../helpers/ort.js';
import { type CheckCase, type CheckInput, gradCheck } from './gradcheck.js';

const worst = new Map<string, number>();

async function check(label: string, c: CheckCase): Promise<void> {
  const r = await gradCheck(c);
  worst.set(label, Math.max(worst.get(label) ?? 0, ...Object.values(r)));
}

after(() => {
  if (process.env.QNNX_GRAD_REPORT) {
    for (const [op, e] of worst) console.log(`  ${op.padEnd(18)} max rel err ${e.toExponential(2)}`);
  }
});

/** The opset where axes became an input. */
const AXES_INPUT: Record<string, number> = { ReduceSum: 13 };

function configs(op: string, seedBase: number, lo: number, hi: number): { label: string; c: CheckCase }[] {
  const out: { label: string; c: CheckCase }[] = [];
  const inputOpset = AXES_INPUT[op] ?? 18;
  for (let s = 0; s < 10; s++) {
    const rnd = mulberry32(seedBase + s);
    const int = (a: number, b: number) => a + Math.floor(rnd() * (b - a + 1));
    const x = Array.from({ length: int(1, 4) }, () => int(1, 4));
    const r = x.length;
    // Config 0: no axes (all); 1: noop_with_empty_axes; 2: axes fed at run time; else a random subset.
    let axes: number[] | undefined = x.map((_, i) => i).filter(() => rnd() < 0.5);
    if (axes.length === 0) axes = [int(0, r - 1)];
    axes = axes.map((a) => (rnd() < 0.5 ? a - r : a));
    if (s === 0) axes = undefined;
    const keepdims = s % 2;
    const xin: CheckInput = { name: 'x', dims: x, lo, hi };
    let c: CheckCase;
    let label = op;
    if (s === 1) {
      const empty: CheckInput = { name: 'axes', dims: [0], dtype: 'int64', values: [], constant: true };
      c = { op, opset: 18, attrs: { keepdims, noop_with_empty_axes: 1 }, inputs: [xin, empty] };
      label = `${op} (noop)`;
    } else if (s === 2) {
      c = {
        op,
        opset: 18,
        attrs: { keepdims: 0 },
        inputs: [xin, { name: 'axes', dims: [axes!.length], dtype: 'int64', values: axes! }],
      };
      label = `${op} (run-time axes)`;
    } else if (s % 3 === 0) {
      c = { op, opset: inputOpset - 1, attrs: axes ? { keepdims, axes } : { keepdims }, inputs: [xin] };
    } else {
      const axesIn: CheckInput[] = axes
        ? [{ name: 'axes', dims: [axes.length], dtype: 'int64', values: axes, constant: true }]
        : [];
      c = { op, opset: inputOpset, attrs: { keepdims }, inputs: [xin, ...axesIn] };
    }
    out.push({ label, c: { ...c, seed: s } });
  }
  // noop_with_empty_axes with the axes input left out altogether: the identity too (as ONNX Runtime runs it).
  const x = { name: 'x', dims: [2, 3], lo, hi };
  out.push({
    label: `${op} (noop)`,
    c: { op, opset: 18, attrs: { keepdims: 0, noop_with_empty_axes: 1 }, inputs: [x] },
  });
  return out;
}

describe('reduce gradients (float64 finite differences, rel tol 1e-6)', () => {
  const ops: [string, number, number][] = [
    ['ReduceSum', -1, 1],
    ['ReduceMean', -1, 1],
    ['ReduceSumSquare', -1, 1],
    ['ReduceL1', 0.1, 1], // |x| is smooth away from 0
    ['ReduceL2', -1, 1],
    ['ReduceLogSumExp', -2, 2],
    ['ReduceLogSum', 0.5, 2],
    ['ReduceMax', -1, 1],
    ['ReduceMin', -1, 1],
  ];
  for (const [i, [op, lo, hi]] of ops.entries()) {
    test(`${op}: axes as attribute / input / run-time input, keepdims 0 and 1, noop, negative axes`, async () => {
      for (const { label, c } of configs(op, 1000 * (i + 1), lo, hi)) await check(label, c);
    });
  }

  test('ReduceMax / ReduceMin split the gradient evenly among ties', async () => {
    // Each row's extremum appears twice. Moving one tied element by ±eps changes the result only on one side,
    // so its central difference is exactly 1/2 of dY: what the even split gives each of the two.
    for (const op of ['ReduceMax', 'ReduceMin']) {
      await check(`${op} (ties)`, {
        op,
        opset: 13,
        attrs: { axes: [1], keepdims: 0 },
        inputs: [
          {
            name: 'x',
            dims: [2, 3],
            values: op === 'ReduceMax' ? [1, 3, 3, 2, 2, -1] : [-1, 0, -1, 2, 2, 5],
          },
        ],
      });
    }
  });
});
