/**
 * Elementwise gradient rules against float64 finite differences (ONNX Runtime has double kernels for all of
 * them): tolerance 1e-6 relative, the default of gradCheck, since central differences with eps 1e-6 on smooth
 * float64 functions are accurate to about 1e-9. Shapes and broadcasting patterns (scalar, rank extension, size-1
 * dims on either side) are drawn from a seeded PRNG, 8 configurations per op. QNNX_GRAD_REPORT=1 prints the
 * largest relative error per op.
 */
import { after, describe, test } from 'node:test';
import { mulberry32 } from '../helpers/ort.js';
import { type CheckCase, type CheckInput, type CheckOptions, gradCheck } from './gradcheck.js';

const CONFIGS = 8;
const worst = new Map<string, number>();

async function check(label: string, c: CheckCase, o?: CheckOptions): Promise<void> {
  const r = await gradCheck(c, o);
  worst.set(label, Math.max(worst.get(label) ?? 0, ...Object.values(r)));
}

after(() => {
  if (process.env.QNNX_GRAD_REPORT) {
    for (const [op, e] of worst) console.log(`  ${op.padEnd(22)} max rel err ${e.toExponential(2)}`);
  }
});

/** Random shapes: an output shape S and, per input, S with leading dims dropped and some dims set to 1. */
function shapes(seed: number, inputs: number): { out: number[]; ins: number[][] } {
  const rnd = mulberry32(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));
  const out = Array.from({ length: int(1, 4) }, () => int(2, 4));
  const cfg = seed % CONFIGS;
  const ins = Array.from({ length: inputs }, (_, k) => {
    if (k === 0 && cfg % 2 === 0) return [...out]; // input 0 full-size in half the configurations
    if (k === 1 && cfg === 0) return []; // a scalar
    if (k === 1 && cfg === 1) return out.slice(1); // rank extension only
    return out.slice(int(0, out.length)).map((d) => (rnd() < 0.3 ? 1 : d));
  });
  return { out, ins };
}

function inputs(ins: number[][], lo = -1, hi = 1): CheckInput[] {
  return ins.map((dims, k) => ({ name: `x${k}`, dims, lo, hi }));
}

/** Values of magnitude in [0.2, 1] with random signs: away from 0 for Abs, Div and Reciprocal. */
function awayFromZero(dims: number[], seed: number): number[] {
  const rnd = mulberry32(seed);
  const n = dims.reduce((a, b) => a * b, 1);
  return Array.from({ length: n }, () => (rnd() < 0.5 ? -1 : 1) * (0.2 + 0.8 * rnd()));
}

describe('elementwise gradients (float64 finite differences, rel tol 1e-6)', () => {
  for (const op of ['Add', 'Sub', 'Mul']) {
    test(`${op} with broadcasting`, async () => {
      for (let s = 0; s < CONFIGS; s++) {
        const { ins } = shapes(100 + s, 2);
        await check(op, { op, inputs: inputs(ins), seed: s });
      }
    });
  }

  test('Div with broadcasting (divisor away from 0)', async () => {
    for (let s = 0; s < CONFIGS; s++) {
      const { ins } = shapes(200 + s, 2);
      const [a, b] = inputs(ins);
      await check('Div', { op: 'Div', inputs: [a, { ...b, values: awayFromZero(b.dims, s) }], seed: s });
    }
  });

  test('Pow: base and exponent, both broadcasting', async () => {
    for (let s = 0; s < CONFIGS; s++) {
      const { ins } = shapes(300 + s, 2);
      await check('Pow', {
        op: 'Pow',
        inputs: [
          { name: 'x', dims: ins[0], lo: 0.5, hi: 2 },
          { name: 'e', dims: ins[1], lo: -2, hi: 3 },
        ],
        seed: s,
      });
    }
  });

  test('Pow with a constant exponent (2, 1, 3, 0.5, -1.5, 0) and a float32 one', async () => {
    for (const [i, e] of [2, 1, 3, 0.5, -1.5, 0].entries()) {
      await check('Pow (constant e)', {
        op: 'Pow',
        inputs: [
          { name: 'x', dims: [2, 3], lo: 0.5, hi: 2 },
          { name: 'e', dims: [], values: [e], constant: true },
        ],
        seed: i,
      });
    }
    // A float32 exponent with a float64 base exercises the casts between their types.
    await check('Pow (f32 exponent)', {
      op: 'Pow',
      inputs: [
        { name: 'x', dims: [3, 2], lo: 0.5, hi: 2 },
        { name: 'e', dims: [2], lo: -1, hi: 2, grad: false, dtype: 'float32' },
      ],
    });
  });

  const unaries: [string, number, number][] = [
    ['Sqrt', 0.3, 2],
    ['Exp', -1, 1],
    ['Log', 0.3, 2],
    ['Neg', -1, 1],
    ['Identity', -1, 1],
  ];
  for (const [op, lo, hi] of unaries) {
    test(op, async () => {
      for (let s = 0; s < CONFIGS; s++) {
        const { out } = shapes(400 + s, 1);
        await check(op, { op, inputs: [{ name: 'x', dims: out, lo, hi }], seed: s });
      }
    });
  }

  for (const op of ['Abs', 'Reciprocal']) {
    test(`${op} (inputs away from 0)`, async () => {
      for (let s = 0; s < CONFIGS; s++) {
        const { out } = shapes(500 + s, 1);
        await check(op, { op, inputs: [{ name: 'x', dims: out, values: awayFromZero(out, s) }], seed: s });
      }
    });
  }

  test('Where: both branches broadcast, no gradient to the condition', async () => {
    for (let s = 0; s < CONFIGS; s++) {
      const { ins } = shapes(600 + s, 3);
      const rnd = mulberry32(s);
      const n = ins[2].reduce((a, b) => a * b, 1);
      // ins[2] is the condition's shape so that the condition broadcasts too in some configurations.
      await check('Where', {
        op: 'Where',
        inputs: [
          {
            name: 'c',
            dims: ins[2],
            dtype: 'bool',
            values: Array.from({ length: n }, () => (rnd() < 0.5 ? 1 : 0)),
          },
          { name: 'a', dims: ins[0] },
          { name: 'b', dims: ins[1] },
        ],
        seed: s,
      });
    }
  });

  test('Sum with three broadcasting inputs', async () => {
    for (let s = 0; s < CONFIGS; s++) {
      const { ins } = shapes(700 + s, 3);
      await check('Sum', { op: 'Sum', inputs: inputs(ins), seed: s });
    }
  });

  test('Mean with three broadcasting inputs (float32: no double kernel)', async () => {
    for (let s = 0; s < CONFIGS; s++) {
      const { ins } = shapes(750 + s, 3);
      // Mean is linear, so any step is exact but for the float32 rounding of the outputs (~6e-8·|y| per
      // element, summed over the broadcast copies); eps 0.1 makes that < 1e-5 of the derivative.
      const f32 = inputs(ins).map((i) => ({ ...i, dtype: 'float32' as const }));
      await check('Mean (f32)', { op: 'Mean', inputs: f32, seed: s }, { eps: 0.1, tol: 1e-4 });
    }
  });

  test('Min and Max with two or three broadcasting inputs (no ties)', async () => {
    for (const op of ['Min', 'Max']) {
      for (let s = 0; s < CONFIGS; s++) {
        const { ins } = shapes(800 + s, 2 + (s % 2));
        await check(op, { op, inputs: inputs(ins), seed: s });
      }
    }
  });

  test('Max splits the gradient evenly among ties', async () => {
    // b = a (b not differentiated): max(a ± eps, b) has central difference exactly 1/2 of dY, which is what
    // the even split gives a.
    const values = [0.5, -0.25, 1, 2];
    await check('Max (ties)', {
      op: 'Max',
      inputs: [
        { name: 'a', dims: [4], values },
        { name: 'b', dims: [4], values, grad: false },
      ],
    });
  });

  test('Expand: broadcasting to a constant shape, incl. rank extension and size-1 target dims', async () => {
    for (let s = 0; s < CONFIGS; s++) {
      const { out, ins } = shapes(900 + s, 2);
      // Expand's target may have 1s where x is larger: the output is the broadcast of both.
      let x = ins[1];
      const target = [...out];
      if (s % 3 === 0) {
        x = [...x.slice(0, -1), out[out.length - 1]];
        target[target.length - 1] = 1;
      }
      await check('Expand', {
        op: 'Expand',
        inputs: [
          { name: 'x', dims: x },
          { name: 'shape', dims: [target.length], dtype: 'int64', values: target, constant: true },
        ],
        seed: s,
      });
    }
  });

  test('Cast float32 → float64 and float64 → float64; CastLike', async () => {
    for (let s = 0; s < 4; s++) {
      const { out } = shapes(1000 + s, 1);
      // float32 input: eps 1e-3, the loss is linear in x, so the error is the rounding of x ± eps (the step
      // actually taken is used), about 1e-7 relative; 1e-5 leaves room.
      await check(
        'Cast f32→f64',
        { op: 'Cast', attrs: { to: 11 }, inputs: [{ name: 'x', dims: out, dtype: 'float32' }], seed: s },
        { tol: 1e-5 },
      );
      await check('Cast f64→f64', {
        op: 'Cast',
        attrs: { to: 11 },
        inputs: [{ name: 'x', dims: out }],
        seed: s,
      });
      await check(
        'CastLike f32→f64',
        {
          op: 'CastLike',
          opset: 18,
          inputs: [
            { name: 'x', dims: out, dtype: 'float32' },
            { name: 'like', dims: [1], values: [0], constant: true },
          ],
          seed: s,
        },
        { tol: 1e-5 },
      );
    }
  });
});
