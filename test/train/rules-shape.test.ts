/**
 * Data-movement gradient rules against finite differences. These ops are linear in x, so central differences
 * are exact up to rounding: float64 (ONNX Runtime has double kernels for all but Resize) is checked at the
 * default 1e-6 relative tolerance; Resize runs in float32 with eps 0.1 (exact for a linear map) and a 1e-5
 * tolerance for the float32 rounding of outputs and of the MatMuls. Shapes, axes, slice bounds, indices and pads
 * are drawn from a seeded PRNG, 8 or more configurations per op, across the opsets where the rules differ.
 * QNNX_GRAD_REPORT=1 prints the largest relative error per op.
 */
import { after, describe, test } from 'node:test';
import { mulberry32 } from '../helpers/ort.js';
import { type CheckCase, type CheckOptions, gradCheck } from './gradcheck.js';

const worst = new Map<string, number>();

async function check(label: string, c: CheckCase, o?: CheckOptions): Promise<void> {
  const r = await gradCheck(c, o);
  worst.set(label, Math.max(worst.get(label) ?? 0, ...Object.values(r)));
}

after(() => {
  if (process.env.QNNX_GRAD_REPORT) {
    for (const [op, e] of worst) console.log(`  ${op.padEnd(26)} max rel err ${e.toExponential(2)}`);
  }
});

function rng(seed: number) {
  const rnd = mulberry32(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
  const shape = (rankLo: number, rankHi: number, lo = 1, hi = 4) =>
    Array.from({ length: int(rankLo, rankHi) }, () => int(lo, hi));
  const shuffle = <T>(xs: T[]): T[] => {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = Math.floor(rnd() * (i + 1));
      [xs[i], xs[j]] = [xs[j], xs[i]];
    }
    return xs;
  };
  return { rnd, int, pick, shape, shuffle };
}

const i64 = (name: string, values: number[], dims = [values.length]) => ({
  name,
  dims,
  dtype: 'int64' as const,
  values,
  constant: true,
});

describe('shape gradients (float64 finite differences, rel tol 1e-6; Resize float32)', () => {
  test('Flatten: any axis, negative included', async () => {
    for (let s = 0; s < 8; s++) {
      const { int, shape } = rng(10 + s);
      const x = shape(1, 4);
      await check('Flatten', {
        op: 'Flatten',
        attrs: { axis: int(-x.length, x.length) },
        inputs: [{ name: 'x', dims: x }],
      });
    }
  });

  test('Reshape: -1 and 0 in the target', async () => {
    for (let s = 0; s < 8; s++) {
      const { int, shuffle } = rng(20 + s);
      const factors = shuffle(Array.from({ length: int(2, 4) }, () => int(1, 4)));
      const x = [factors[0] * factors[1], ...factors.slice(2)];
      let t = [...factors];
      if (s % 4 === 0)
        t = [0, x.slice(1).reduce((p, q) => p * q, 1)]; // 0 copies x's dim 0 (allowzero = 0)
      else if (s % 2) t[int(0, t.length - 1)] = -1;
      await check('Reshape', { op: 'Reshape', inputs: [{ name: 'x', dims: x }, i64('shape', t)] });
    }
  });

  test('Squeeze and Unsqueeze: axes as attribute (opset 11) and input (13, 18), negative axes', async () => {
    for (let s = 0; s < 8; s++) {
      const { int, rnd, shuffle } = rng(30 + s);
      const opset = [11, 13, 18][s % 3];
      const base = Array.from({ length: int(1, 3) }, () => int(2, 4));
      const rank = base.length + int(1, 2);
      const ones = shuffle(Array.from({ length: rank }, (_, i) => i))
        .slice(0, rank - base.length)
        .sort((a, b) => a - b);
      const full: number[] = [];
      let k = 0;
      for (let i = 0; i < rank; i++) full.push(ones.includes(i) ? 1 : base[k++]);
      const axes = ones.map((a) => (rnd() < 0.5 ? a - rank : a));
      const sq: CheckCase =
        opset < 13
          ? { op: 'Squeeze', opset, attrs: { axes }, inputs: [{ name: 'x', dims: full }] }
          : { op: 'Squeeze', opset, inputs: [{ name: 'x', dims: full }, i64('axes', axes)] };
      await check('Squeeze', sq);
      const un: CheckCase =
        opset < 13
          ? { op: 'Unsqueeze', opset, attrs: { axes }, inputs: [{ name: 'x', dims: base }] }
          : { op: 'Unsqueeze', opset, inputs: [{ name: 'x', dims: base }, i64('axes', axes)] };
      await check('Unsqueeze', un);
    }
    // Squeeze with no axes removes every size-1 dim.
    await check('Squeeze', { op: 'Squeeze', inputs: [{ name: 'x', dims: [1, 3, 1, 2] }] });
  });

  test('Transpose: random permutations and the default (reversed)', async () => {
    for (let s = 0; s < 8; s++) {
      const { shape, shuffle } = rng(40 + s);
      const x = shape(1, 5, 2, 4);
      const perm = shuffle(x.map((_, i) => i));
      await check('Transpose', {
        op: 'Transpose',
        attrs: s === 0 ? {} : { perm },
        inputs: [{ name: 'x', dims: x }],
      });
    }
  });

  test('Concat: 2 or 3 inputs, any axis, opset 11 (split attribute) and 18 (input)', async () => {
    for (let s = 0; s < 8; s++) {
      const { int, shape } = rng(50 + s);
      const x = shape(1, 4, 1, 3);
      const a = int(0, x.length - 1);
      const inputs = Array.from({ length: 2 + (s % 2) }, (_, k) => ({
        name: `x${k}`,
        dims: x.map((d, i) => (i === a ? int(1, 4) : d)),
      }));
      const axis = s % 3 === 0 ? a - x.length : a;
      await check('Concat', { op: 'Concat', opset: s < 4 ? 11 : 18, attrs: { axis }, inputs });
    }
  });

  test('Split: sizes as attribute (11) and input (13), num_outputs (18), unused outputs get zeros', async () => {
    for (let s = 0; s < 8; s++) {
      const { int, shape } = rng(60 + s);
      const x = shape(1, 3, 2, 3);
      const a = int(0, x.length - 1);
      const n = int(2, 3);
      const sizes = Array.from({ length: n }, () => int(1, 3));
      x[a] = sizes.reduce((p, q) => p + q, 0);
      const axis = s % 2 ? a - x.length : a;
      // Only the first `used` outputs enter the loss; the rest have no gradient.
      const used = s % 3 === 2 ? n - 1 : n;
      const base = { op: 'Split', outputs: used, declaredOutputs: n };
      if (s < 3) {
        await check('Split', {
          ...base,
          opset: 11,
          attrs: { axis, split: sizes },
          inputs: [{ name: 'x', dims: x }],
        });
      } else if (s < 6) {
        await check('Split', {
          ...base,
          opset: 13,
          attrs: { axis },
          inputs: [{ name: 'x', dims: x }, i64('split', sizes)],
        });
      } else {
        // num_outputs: chunks of ceil(dim / n), the last one smaller (but not empty).
        const chunk = int(2, 3);
        x[a] = n * chunk - int(0, chunk - 1);
        await check('Split', {
          ...base,
          opset: 18,
          attrs: { axis, num_outputs: n },
          inputs: [{ name: 'x', dims: x }],
        });
      }
    }
  });

  test('Slice: steps 1, 2, 3, -1, -2 with clamped starts/ends, negative axes, opsets 9, 13 and 18', async () => {
    for (let s = 0; s < 12; s++) {
      const { int, pick, shape, shuffle, rnd } = rng(70 + s);
      const x = shape(1, 4, 2, 6);
      const axes = shuffle(x.map((_, i) => i)).slice(0, int(1, x.length));
      const opset = s === 0 || s === 1 ? 9 : s % 2 ? 13 : 18;
      const starts: number[] = [];
      const ends: number[] = [];
      const steps: number[] = [];
      for (const a of axes) {
        const d = x[a];
        const step = opset < 10 || s % 4 === 0 ? 1 : pick([1, 2, 3, -1, -2]);
        // Bounds beyond the dim (clamped), negative ones, and the int64 extremes of "to the end".
        for (;;) {
          const big = step > 0 ? 2 ** 62 : -(2 ** 62);
          const st = rnd() < 0.15 ? (step > 0 ? -d - 3 : d + 3) : int(-d, d - 1);
          const en = rnd() < 0.25 ? big : int(-d - 1, d + 1);
          const norm = (v: number) => (v < 0 ? v + d : v);
          const lo = step > 0 ? Math.min(Math.max(norm(st), 0), d) : Math.min(Math.max(norm(st), 0), d - 1);
          const hi = step > 0 ? Math.min(Math.max(norm(en), 0), d) : Math.min(Math.max(norm(en), -1), d - 1);
          if (Math.ceil((hi - lo) / step) > 0) {
            starts.push(st);
            ends.push(en);
            steps.push(step);
            break;
          }
        }
      }
      const ax = axes.map((a) => (s % 3 === 0 ? a - x.length : a));
      if (opset < 10) {
        await check('Slice (attrs, opset 9)', {
          op: 'Slice',
          opset,
          attrs: { starts, ends, axes: ax },
          inputs: [{ name: 'x', dims: x }],
        });
        continue;
      }
      const label = steps.every((v) => v === 1) ? 'Slice (step 1: Pad)' : 'Slice (steps: iota)';
      await check(label, {
        op: 'Slice',
        opset,
        inputs: [
          { name: 'x', dims: x },
          i64('starts', starts),
          i64('ends', ends),
          i64('axes', ax),
          i64('steps', steps),
        ],
      });
    }
  });

  test('Slice with starts computed at run time (iota trick on a dynamic Slice)', async () => {
    await check('Slice (dynamic)', {
      op: 'Slice',
      inputs: [
        { name: 'x', dims: [4, 5] },
        { name: 'starts', dims: [2], dtype: 'int64', values: [1, -1] },
        { name: 'ends', dims: [2], dtype: 'int64', values: [4, -6] },
        { name: 'axes', dims: [2], dtype: 'int64', values: [0, 1] },
        { name: 'steps', dims: [2], dtype: 'int64', values: [2, -2] },
      ],
    });
  });

  test('Gather: any axis, repeated and negative indices, scalar and 2-D indices (opset 18: ScatterND; 13: iota)', async () => {
    for (let s = 0; s < 10; s++) {
      const { int, shape } = rng(80 + s);
      const x = shape(1, 3, 2, 5);
      const a = int(0, x.length - 1);
      const d = x[a];
      const idxDims = s % 4 === 0 ? [] : s % 4 === 1 ? [int(2, 3), int(1, 3)] : [int(1, 6)];
      const n = idxDims.reduce((p, q) => p * q, 1);
      // Repeats and negatives: values in [-d, d-1].
      const values = Array.from({ length: n }, () => int(-d, d - 1));
      await check(s % 2 ? 'Gather (opset 13, iota)' : 'Gather (ScatterND)', {
        op: 'Gather',
        opset: s % 2 ? 13 : 18,
        attrs: { axis: s % 3 === 0 ? a - x.length : a },
        inputs: [
          { name: 'x', dims: x },
          { name: 'i', dims: idxDims, dtype: 'int64', values },
        ],
      });
    }
  });

  test('GatherElements: repeated and negative indices (opset 18 and 13)', async () => {
    for (let s = 0; s < 8; s++) {
      const { int, shape } = rng(90 + s);
      const x = shape(1, 3, 2, 4);
      const a = int(0, x.length - 1);
      const idx = x.map((d, i) => (i === a ? int(1, 5) : int(1, d)));
      const n = idx.reduce((p, q) => p * q, 1);
      await check('GatherElements', {
        op: 'GatherElements',
        opset: s % 2 ? 13 : 18,
        attrs: { axis: a },
        inputs: [
          { name: 'x', dims: x },
          {
            name: 'i',
            dims: idx,
            dtype: 'int64',
            values: Array.from({ length: n }, () => int(-x[a], x[a] - 1)),
          },
        ],
      });
    }
  });

  test('Pad constant: positive and negative pads, the padding value, axes input (18), attribute form (10)', async () => {
    for (let s = 0; s < 8; s++) {
      const { int, shape } = rng(100 + s);
      const x = shape(1, 4, 2, 4);
      const r = x.length;
      // Negative pads crop; keep at least one element per axis.
      const pads = Array.from({ length: 2 * r }, () => int(-1, 2));
      for (let i = 0; i < r; i++) while (x[i] + pads[i] + pads[i + r] < 1) pads[i]++;
      if (s === 0) {
        await check('Pad constant (opset 10)', {
          op: 'Pad',
          opset: 10,
          attrs: { pads, value: 0.5 },
          inputs: [{ name: 'x', dims: x }],
        });
      } else if (s < 5) {
        await check('Pad constant', {
          op: 'Pad',
          opset: s % 2 ? 13 : 18,
          inputs: [{ name: 'x', dims: x }, i64('pads', pads), { name: 'v', dims: [] }],
        });
      } else {
        const axes = [r - 1, ...(r > 1 ? [-r] : [])];
        const ap = [int(0, 2), ...(r > 1 ? [int(0, 2)] : []), int(0, 2), ...(r > 1 ? [int(-1, 1)] : [])];
        await check('Pad constant (axes)', {
          op: 'Pad',
          opset: 18,
          inputs: [
            { name: 'x', dims: x.map((d) => d + 1) },
            i64('pads', ap),
            { name: 'v', dims: [] },
            i64('axes', axes),
          ],
        });
      }
    }
  });

  test('Pad reflect / edge / wrap (iota trick; opset 13 one-hot fallback)', async () => {
    for (let s = 0; s < 10; s++) {
      const { int, shape } = rng(110 + s);
      const mode = (['reflect', 'edge', 'wrap'] as const)[s % 3];
      const x = shape(1, 3, 3, 5);
      const r = x.length;
      // reflect needs pads < dim; wrap (opset 19) pads ≤ dim.
      const pads = Array.from({ length: 2 * r }, (_, i) => int(0, Math.min(2, x[i % r] - 1)));
      const opset = mode === 'wrap' ? 19 : s === 1 || s === 4 ? 13 : 18;
      await check(`Pad ${mode}`, {
        op: 'Pad',
        opset,
        attrs: { mode },
        inputs: [{ name: 'x', dims: x }, i64('pads', pads)],
      });
    }
  });

  test('Tile: constant repeats (reshape-sum) and run-time repeats (iota)', async () => {
    for (let s = 0; s < 8; s++) {
      const { int, shape } = rng(120 + s);
      const x = shape(1, 3, 1, 3);
      const repeats = x.map(() => int(1, 3));
      const dynamic = s >= 6;
      await check(dynamic ? 'Tile (dynamic)' : 'Tile', {
        op: 'Tile',
        opset: s === 7 ? 13 : 18,
        inputs: [
          { name: 'x', dims: x },
          { ...i64('repeats', repeats), constant: !dynamic },
        ],
      });
    }
  });

  test('DepthToSpace (DCR, CRD) and SpaceToDepth', async () => {
    for (let s = 0; s < 8; s++) {
      const { int } = rng(130 + s);
      const b = int(1, 3);
      const n = int(1, 2);
      if (s % 3 === 2) {
        const x = [n, int(1, 2), b * int(1, 2), b * int(1, 3)];
        await check('SpaceToDepth', {
          op: 'SpaceToDepth',
          attrs: { blocksize: b },
          inputs: [{ name: 'x', dims: x }],
        });
      } else {
        const mode = s % 3 ? 'CRD' : 'DCR';
        const x = [n, b * b * int(1, 2), int(1, 3), int(1, 3)];
        await check(`DepthToSpace ${mode}`, {
          op: 'DepthToSpace',
          attrs: { blocksize: b, mode },
          inputs: [{ name: 'x', dims: x }],
        });
      }
    }
  });

  describe('Resize (float32: no double kernel; linear in x, eps 0.1, tol 1e-5)', () => {
    const opts: CheckOptions = { eps: 0.1, tol: 1e-5 };
    const f32 = (name: string, dims: number[]) => ({ name, dims, dtype: 'float32' as const });
    const floats = (name: string, values: number[]) => ({
      name,
      dims: [values.length],
      dtype: 'float32' as const,
      values,
      constant: true,
    });
    const modes: Record<string, number | string>[] = [
      { mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor' },
      { mode: 'nearest', coordinate_transformation_mode: 'half_pixel', nearest_mode: 'round_prefer_floor' },
      { mode: 'nearest', coordinate_transformation_mode: 'align_corners', nearest_mode: 'round_prefer_ceil' },
      { mode: 'linear', coordinate_transformation_mode: 'half_pixel' },
      { mode: 'linear', coordinate_transformation_mode: 'align_corners' },
      { mode: 'linear', coordinate_transformation_mode: 'pytorch_half_pixel' },
      { mode: 'linear', coordinate_transformation_mode: 'asymmetric' },
      {
        mode: 'cubic',
        coordinate_transformation_mode: 'half_pixel',
        cubic_coeff_a: -0.5,
        exclude_outside: 1,
      },
    ];
    test('scales (up, down, non-integer) and sizes, every coordinate mode', async () => {
      for (const [s, attrs] of modes.entries()) {
        const { int, pick } = rng(140 + s);
        const x = [int(1, 2), int(1, 2), int(2, 5), int(2, 5)];
        const sh = pick([0.5, 1, 1.5, 2, 3]);
        const sw = pick([0.6, 2, 2.5, 3]);
        const label = `Resize ${attrs.mode}`;
        await check(
          label,
          {
            op: 'Resize',
            opset: 13,
            attrs,
            inputs: [f32('x', x), floats('roi', []), floats('scales', [1, 1, sh, sw])],
          },
          opts,
        );
        const sizes = [x[0], x[1], int(1, 7), int(1, 7)];
        await check(
          label,
          {
            op: 'Resize',
            opset: 11,
            attrs,
            inputs: [f32('x', x), floats('roi', []), floats('scales', []), i64('sizes', sizes)],
          },
          opts,
        );
      }
    });
    test('tf_crop_and_resize with a roi, antialias and axes (opset 18), 3-D nearest, opset 10', async () => {
      await check(
        'Resize crop',
        {
          op: 'Resize',
          opset: 13,
          attrs: {
            mode: 'linear',
            coordinate_transformation_mode: 'tf_crop_and_resize',
            extrapolation_value: 0.25,
          },
          // Sizes, not scales: shape inference leaves tf_crop_and_resize outputs with scales unknown.
          inputs: [
            f32('x', [1, 2, 4, 5]),
            floats('roi', [0, 0, -0.1, 0.2, 1, 1, 0.8, 1.3]),
            floats('scales', []),
            i64('sizes', [1, 2, 5, 4]),
          ],
        },
        opts,
      );
      await check(
        'Resize antialias',
        {
          op: 'Resize',
          opset: 18,
          attrs: { mode: 'linear', antialias: 1 },
          inputs: [f32('x', [1, 2, 7, 6]), floats('roi', []), floats('scales', [1, 1, 0.5, 0.4])],
        },
        opts,
      );
      await check(
        'Resize axes',
        {
          op: 'Resize',
          opset: 18,
          attrs: { mode: 'cubic', axes: [3, -2] },
          inputs: [f32('x', [2, 1, 3, 4]), floats('roi', []), floats('scales', [1.5, 2])],
        },
        opts,
      );
      await check(
        'Resize axes',
        {
          op: 'Resize',
          opset: 18,
          attrs: { mode: 'linear', axes: [2] },
          inputs: [
            f32('x', [1, 2, 3, 4]),
            floats('roi', []),
            { name: 'scales', dims: [0], dtype: 'float32' as const, values: [], constant: true },
            i64('sizes', [5]),
          ],
        },
        opts,
      );
      await check(
        'Resize 3-D nearest',
        {
          op: 'Resize',
          opset: 13,
          attrs: { mode: 'nearest' },
          inputs: [f32('x', [2, 3, 4]), floats('roi', []), floats('scales', [1, 2, 0.75])],
        },
        opts,
      );
      await check(
        'Resize opset 10',
        {
          op: 'Resize',
          opset: 10,
          attrs: { mode: 'linear' },
          inputs: [f32('x', [1, 1, 3, 4]), floats('scales', [1, 1, 2, 1.5])],
        },
        opts,
      );
    });
  });
});
