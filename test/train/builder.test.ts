/**
 * The model builder: every layer's ONNX runs in ONNX Runtime and matches a float64 TypeScript reference (or a
 * PyTorch fixture), the initialisation follows PyTorch's formulas, and spec errors are one clear E_USAGE message
 * naming the layer.
 *
 * Tolerance: ORT computes in float32; the references run in float64 on the same float32 inputs and weights. Sums
 * of at most a few hundred products give relative errors around 1e-7; the bound 1e-5 of max |reference| leaves
 * room for transcendental functions (Erf, Tanh, Exp) and float32 accumulation order.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { readNpy } from '../../src/data/index.js';
import { isQnnxError } from '../../src/errors.js';
import { modelToBytes } from '../../src/io/model-file.js';
import type { Model } from '../../src/ir/model.js';
import {
  attention,
  avgPool,
  batchNorm,
  buildFromSpec,
  conv2d,
  dense,
  dropout,
  embedding,
  FASHION_MNIST_SPEC,
  flatten,
  gelu,
  globalAvgPool,
  hardSwish,
  type LayerSpec,
  layerNorm,
  leakyRelu,
  maxPool,
  parseBuilderSpec,
  parseBuilderSpecText,
  positionEmbedding,
  Rng,
  relu,
  reshape,
  residual,
  sequential,
  sigmoid,
  tanh,
  transpose,
} from '../../src/train/builder/index.js';
import { ort, runModel } from '../helpers/ort.js';

const TOL = 1e-5;
const FIXTURES = 'test/fixtures/torch-grad';

type Arr = ArrayLike<number>;

function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => r.normal(0, scale));
}

function relErr(got: Arr, want: Arr): number {
  assert.equal(got.length, want.length, 'element count');
  let m = 0;
  let d = 0;
  for (let i = 0; i < want.length; i++) {
    m = Math.max(m, Math.abs(want[i]));
    d = Math.max(d, Math.abs(got[i] - want[i]));
  }
  return d / Math.max(m, 1e-30);
}

function assertClose(got: Arr, want: Arr, what: string, tol = TOL): void {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${what}: max |ORT - reference| / max |reference| = ${e.toExponential(2)} > ${tol}`);
}

function param(model: Model, name: string): Float32Array {
  const t = model.graph.initializer(name);
  assert.ok(t, `initializer '${name}'`);
  return t.data as Float32Array;
}

async function runBuilt(model: Model, x: Float32Array | BigInt64Array, dims: number[]): Promise<ort.Tensor> {
  const t =
    x instanceof BigInt64Array ? new ort.Tensor('int64', x, dims) : new ort.Tensor('float32', x, dims);
  const out = await runModel(modelToBytes(model), { input: t });
  return out.logits;
}

/** Builds a one-layer model, runs it on random input, returns the model, input and ORT output. */
async function one(layer: LayerSpec, sample: number[], n = 2, seed = 1) {
  const built = sequential(sample, [layer], { seed: 7 });
  const size = n * sample.reduce((a, d) => a * d, 1);
  const x = randn(size, seed);
  return { built, model: built.model, x, run: () => runBuilt(built.model, x, [n, ...sample]) };
}

// ---------------------------------------------------------------------------------------------------------------
// float64 references (NCHW, batch included)
// ---------------------------------------------------------------------------------------------------------------

function conv2dRef(
  x: Arr,
  [n, c, h, w]: number[],
  wt: Arr,
  [k, cg, kh, kw]: number[],
  bias: Arr | undefined,
  s: [number, number],
  p: [number, number, number, number],
  d: [number, number],
  g: number,
): { y: Float64Array; dims: number[] } {
  const oh = Math.floor((h + p[0] + p[2] - d[0] * (kh - 1) - 1) / s[0]) + 1;
  const ow = Math.floor((w + p[1] + p[3] - d[1] * (kw - 1) - 1) / s[1]) + 1;
  const y = new Float64Array(n * k * oh * ow);
  const kg = k / g;
  for (let b = 0; b < n; b++)
    for (let o = 0; o < k; o++) {
      const grp = Math.floor(o / kg);
      for (let i = 0; i < oh; i++)
        for (let j = 0; j < ow; j++) {
          let acc = bias ? bias[o] : 0;
          for (let ci = 0; ci < cg; ci++)
            for (let u = 0; u < kh; u++)
              for (let v = 0; v < kw; v++) {
                const yy = i * s[0] - p[0] + u * d[0];
                const xx = j * s[1] - p[1] + v * d[1];
                if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                const cin = grp * cg + ci;
                acc += x[((b * c + cin) * h + yy) * w + xx] * wt[((o * cg + ci) * kh + u) * kw + v];
              }
          y[((b * k + o) * oh + i) * ow + j] = acc;
        }
    }
  return { y, dims: [n, k, oh, ow] };
}

function poolRef(
  kind: 'max' | 'avg',
  x: Arr,
  [n, c, h, w]: number[],
  k: [number, number],
  s: [number, number],
  p: [number, number],
  countIncludePad: boolean,
  oh: number,
  ow: number,
): Float64Array {
  const y = new Float64Array(n * c * oh * ow);
  for (let b = 0; b < n; b++)
    for (let ch = 0; ch < c; ch++)
      for (let i = 0; i < oh; i++)
        for (let j = 0; j < ow; j++) {
          let m = -Infinity;
          let sum = 0;
          let cnt = 0;
          let padded = 0;
          for (let u = 0; u < k[0]; u++)
            for (let v = 0; v < k[1]; v++) {
              const yy = i * s[0] - p[0] + u;
              const xx = j * s[1] - p[1] + v;
              // Windows may run past the padded input in ceil mode; those cells never count.
              if (yy < -p[0] || yy >= h + p[0] || xx < -p[1] || xx >= w + p[1]) continue;
              padded++;
              if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
              const val = x[((b * c + ch) * h + yy) * w + xx];
              m = Math.max(m, val);
              sum += val;
              cnt++;
            }
          y[((b * c + ch) * oh + i) * ow + j] = kind === 'max' ? m : sum / (countIncludePad ? padded : cnt);
        }
  return y;
}

/** y = x·Wᵀ + b over the last axis; x [rows, in], W [out, in]. */
function linearRef(
  x: Arr,
  rows: number,
  inF: number,
  wt: Arr,
  bias: Arr | undefined,
  outF: number,
): Float64Array {
  const y = new Float64Array(rows * outF);
  for (let r = 0; r < rows; r++)
    for (let o = 0; o < outF; o++) {
      let acc = bias ? bias[o] : 0;
      for (let i = 0; i < inF; i++) acc += x[r * inF + i] * wt[o * inF + i];
      y[r * outF + o] = acc;
    }
  return y;
}

function layerNormRef(x: Arr, rows: number, d: number, g: Arr, b: Arr, eps: number): Float64Array {
  const y = new Float64Array(rows * d);
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    for (let i = 0; i < d; i++) mean += x[r * d + i];
    mean /= d;
    let v = 0;
    for (let i = 0; i < d; i++) v += (x[r * d + i] - mean) ** 2;
    v /= d;
    for (let i = 0; i < d; i++) y[r * d + i] = ((x[r * d + i] - mean) / Math.sqrt(v + eps)) * g[i] + b[i];
  }
  return y;
}

/** erf by its Maclaurin series / continued fraction (|error| < 1e-15 in double for the values used here). */
function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 3) {
    let sum = 0;
    let term = ax;
    for (let k = 0; k < 200; k++) {
      const t = term / (2 * k + 1);
      sum += t;
      term *= (-ax * ax) / (k + 1);
      if (Math.abs(t) < 1e-17) break;
    }
    return Math.sign(x) * ((2 / Math.sqrt(Math.PI)) * sum);
  }
  // erfc continued fraction for large |x|.
  let f = 0;
  for (let k = 60; k >= 1; k--) f = k / 2 / (ax + f);
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / (ax + f);
  return Math.sign(x) * (1 - erfc);
}

const geluExact = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));
const geluTanh = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));

function attentionRef(
  x: Arr,
  n: number,
  t: number,
  d: number,
  heads: number,
  w: (name: string) => Arr,
  o: { causal?: boolean; eps?: number; gelu?: (v: number) => number; mlp: number },
): Float64Array {
  const eps = o.eps ?? 1e-5;
  const rows = n * t;
  const dh = d / heads;
  const h1 = layerNormRef(x, rows, d, w('norm1.weight'), w('norm1.bias'), eps);
  const q = linearRef(h1, rows, d, w('q_proj.weight'), w('q_proj.bias'), d);
  const k = linearRef(h1, rows, d, w('k_proj.weight'), w('k_proj.bias'), d);
  const v = linearRef(h1, rows, d, w('v_proj.weight'), w('v_proj.bias'), d);
  const mixed = new Float64Array(rows * d);
  for (let b = 0; b < n; b++)
    for (let hh = 0; hh < heads; hh++)
      for (let i = 0; i < t; i++) {
        const scores = new Float64Array(t);
        let m = -Infinity;
        for (let j = 0; j < t; j++) {
          let s = 0;
          for (let e = 0; e < dh; e++)
            s += q[(b * t + i) * d + hh * dh + e] * k[(b * t + j) * d + hh * dh + e];
          s /= Math.sqrt(dh);
          if (o.causal && j > i) s = -Infinity;
          scores[j] = s;
          m = Math.max(m, s);
        }
        let z = 0;
        for (let j = 0; j < t; j++) {
          scores[j] = Math.exp(scores[j] - m);
          z += scores[j];
        }
        for (let e = 0; e < dh; e++) {
          let acc = 0;
          for (let j = 0; j < t; j++) acc += (scores[j] / z) * v[(b * t + j) * d + hh * dh + e];
          mixed[(b * t + i) * d + hh * dh + e] = acc;
        }
      }
  const attn = linearRef(mixed, rows, d, w('out_proj.weight'), w('out_proj.bias'), d);
  const x1 = Float64Array.from(x, (val, i) => val + attn[i]);
  const h2 = layerNormRef(x1, rows, d, w('norm2.weight'), w('norm2.bias'), eps);
  const f1 = linearRef(h2, rows, d, w('linear1.weight'), w('linear1.bias'), o.mlp).map(o.gelu ?? geluExact);
  const f2 = linearRef(f1, rows, o.mlp, w('linear2.weight'), w('linear2.bias'), d);
  return Float64Array.from(x1, (val, i) => val + f2[i]);
}

// ---------------------------------------------------------------------------------------------------------------

describe('builder layers run in ONNX Runtime and match float64 references', () => {
  const convCases: { name: string; o: Parameters<typeof conv2d>[0]; sample: number[]; pads: number[] }[] = [
    { name: '3x3 pad 1', o: { filters: 4, kernel: 3, padding: 1 }, sample: [3, 7, 7], pads: [1, 1, 1, 1] },
    {
      name: 'stride 2, groups 2, no bias',
      o: { filters: 6, kernel: 3, stride: 2, padding: 1, groups: 2, bias: false },
      sample: [4, 9, 8],
      pads: [1, 1, 1, 1],
    },
    {
      name: "[3, 2] kernel, dilation 2, padding 'same'",
      o: { filters: 3, kernel: [3, 2], dilation: 2, padding: 'same' },
      sample: [2, 6, 7],
      pads: [2, 1, 2, 1],
    },
    {
      name: 'depthwise, [top, left, bottom, right] padding',
      o: { filters: 3, kernel: 3, groups: 3, padding: [0, 1, 2, 1], stride: [1, 2] },
      sample: [3, 5, 6],
      pads: [0, 1, 2, 1],
    },
  ];
  for (const c of convCases) {
    test(`conv2d ${c.name}`, async () => {
      const { model, x, run, built } = await one(conv2d(c.o), c.sample);
      const wt = param(model, '0.weight');
      const wd = model.graph.initializer('0.weight')!.dims;
      const bias = c.o.bias === false ? undefined : param(model, '0.bias');
      assert.equal(model.graph.initializer('0.bias') === undefined, c.o.bias === false);
      const pair = (v: number | [number, number] | undefined, f: number): [number, number] =>
        v === undefined ? [f, f] : typeof v === 'number' ? [v, v] : v;
      const ref = conv2dRef(
        x,
        [2, ...c.sample],
        wt,
        wd,
        bias,
        pair(c.o.stride, 1),
        c.pads as [number, number, number, number],
        pair(c.o.dilation, 1),
        c.o.groups ?? 1,
      );
      const y = await run();
      assert.deepEqual(y.dims, ref.dims);
      assert.deepEqual([2, ...built.outputShape], ref.dims, 'static output shape');
      assertClose(y.data as Float32Array, ref.y, 'conv2d');
    });
  }

  test('dense on [F] (Gemm) and on [T, F] (rows folded into one Gemm)', async () => {
    for (const sample of [[5], [3, 5]]) {
      const { model, x, run, built } = await one(dense({ units: 4 }), sample);
      const y = await run();
      const rows = (2 * x.length) / (2 * 5);
      const ref = linearRef(x, rows, 5, param(model, '0.weight'), param(model, '0.bias'), 4);
      assert.deepEqual(y.dims, [2, ...sample.slice(0, -1), 4]);
      assert.deepEqual(built.outputShape, [...sample.slice(0, -1), 4]);
      assertClose(y.data as Float32Array, ref, `dense ${JSON.stringify(sample)}`);
    }
    const nb = sequential([5], [dense({ units: 2, bias: false })]);
    assert.equal(nb.model.graph.initializer('0.bias'), undefined);
    assert.deepEqual(
      nb.params.map((p) => p.name),
      ['0.weight'],
    );
  });

  test('batchNorm (inference: running statistics) on [C, H, W] and [C]', async () => {
    for (const sample of [[3, 4, 5], [6]]) {
      const c = sample[0];
      const { model, x, run, built } = await one(batchNorm({ epsilon: 1e-3 }), sample);
      assert.deepEqual(
        built.params.map((p) => `${p.name}:${p.kind}`),
        ['0.weight:parameter', '0.bias:parameter', '0.running_mean:buffer', '0.running_var:buffer'],
      );
      const g = param(model, '0.weight');
      const b = param(model, '0.bias');
      const mean = param(model, '0.running_mean');
      const v = param(model, '0.running_var');
      assert.ok(g.every((e) => e === 1) && b.every((e) => e === 0) && mean.every((e) => e === 0));
      assert.ok(v.every((e) => e === 1));
      g.set(randn(c, 11));
      b.set(randn(c, 12));
      mean.set(randn(c, 13));
      v.set(randn(c, 14).map((e) => 0.5 + Math.abs(e)));
      const inner = sample.slice(1).reduce((a, d) => a * d, 1);
      const ref = Float64Array.from(x, (val, i) => {
        const ch = Math.floor(i / inner) % c;
        return ((val - mean[ch]) / Math.sqrt(v[ch] + Math.fround(1e-3))) * g[ch] + b[ch];
      });
      assertClose((await run()).data as Float32Array, ref, `batchNorm ${JSON.stringify(sample)}`);
    }
  });

  test('layerNorm over the last axis', async () => {
    const { model, x, run } = await one(layerNorm(), [3, 6]);
    const g = param(model, '0.weight');
    const b = param(model, '0.bias');
    g.set(randn(6, 21));
    b.set(randn(6, 22));
    assertClose((await run()).data as Float32Array, layerNormRef(x, 6, 6, g, b, 1e-5), 'layerNorm');
  });

  const activations: [string, LayerSpec, (v: number) => number][] = [
    ['relu', relu(), (v) => Math.max(v, 0)],
    ['leakyRelu (default alpha 0.01)', leakyRelu(), (v) => (v > 0 ? v : 0.01 * v)],
    ['leakyRelu alpha 0.2', leakyRelu({ alpha: 0.2 }), (v) => (v > 0 ? v : 0.2 * v)],
    ['sigmoid', sigmoid(), (v) => 1 / (1 + Math.exp(-v))],
    ['tanh', tanh(), Math.tanh],
    ['gelu (exact, erf)', gelu(), geluExact],
    ['gelu (tanh approximation)', gelu({ approximate: 'tanh' }), geluTanh],
    ['hardSwish', hardSwish(), (v) => (v * Math.min(Math.max(v + 3, 0), 6)) / 6],
    ['dropout (identity in the inference model)', dropout({ rate: 0.5 }), (v) => v],
  ];
  for (const [name, layer, f] of activations) {
    test(name, async () => {
      const { x, run } = await one(layer, [4, 5], 3);
      for (let i = 0; i < x.length; i++) x[i] *= 3; // cover the ±3 knees of hardSwish
      assertClose((await run()).data as Float32Array, Float64Array.from(x, f), name);
    });
  }

  const poolCases: {
    name: string;
    layer: LayerSpec;
    kind: 'max' | 'avg';
    k: number[];
    s: number[];
    p: number[];
    cip: boolean;
    out: number[];
  }[] = [
    {
      name: 'maxPool 2',
      layer: maxPool({ kernel: 2 }),
      kind: 'max',
      k: [2, 2],
      s: [2, 2],
      p: [0, 0],
      cip: true,
      out: [3, 3],
    },
    {
      name: 'maxPool 3 stride 2 pad 1 ceil',
      layer: maxPool({ kernel: 3, stride: 2, padding: 1, ceil: true }),
      kind: 'max',
      k: [3, 3],
      s: [2, 2],
      p: [1, 1],
      cip: true,
      out: [4, 4],
    },
    {
      name: 'avgPool 2',
      layer: avgPool({ kernel: 2 }),
      kind: 'avg',
      k: [2, 2],
      s: [2, 2],
      p: [0, 0],
      cip: true,
      out: [3, 3],
    },
    {
      name: 'avgPool [3, 2] pad 1 counting padding (PyTorch default)',
      layer: avgPool({ kernel: [3, 2], stride: 1, padding: 1 }),
      kind: 'avg',
      k: [3, 2],
      s: [1, 1],
      p: [1, 1],
      cip: true,
      out: [6, 8],
    },
    {
      name: 'avgPool 3 pad 1 not counting padding',
      layer: avgPool({ kernel: 3, stride: 2, padding: 1, countIncludePad: false }),
      kind: 'avg',
      k: [3, 3],
      s: [2, 2],
      p: [1, 1],
      cip: false,
      out: [3, 4],
    },
  ];
  for (const c of poolCases) {
    test(c.name, async () => {
      const sample = [2, 6, 7];
      const { x, run, built } = await one(c.layer, sample);
      assert.deepEqual(built.outputShape, [2, ...c.out]);
      const ref = poolRef(
        c.kind,
        x,
        [2, ...sample],
        c.k as [number, number],
        c.s as [number, number],
        c.p as [number, number],
        c.cip,
        c.out[0],
        c.out[1],
      );
      const y = await run();
      assert.deepEqual(y.dims, [2, 2, ...c.out]);
      assertClose(y.data as Float32Array, ref, c.name);
    });
  }

  test('globalAvgPool ([C] by default, [C, 1, 1] with keepDims) and flatten', async () => {
    const { x, run } = await one(globalAvgPool(), [3, 4, 5]);
    const ref = new Float64Array(6);
    for (let i = 0; i < x.length; i++) ref[Math.floor(i / 20)] += x[i] / 20;
    const y = await run();
    assert.deepEqual(y.dims, [2, 3]);
    assertClose(y.data as Float32Array, ref, 'globalAvgPool');
    const kept = await one(globalAvgPool({ keepDims: true }), [3, 4, 5]);
    assert.deepEqual((await kept.run()).dims, [2, 3, 1, 1]);
    const f = await one(flatten(), [3, 4, 5]);
    const fy = await f.run();
    assert.deepEqual(fy.dims, [2, 60]);
    assert.deepEqual(Array.from(fy.data as Float32Array), Array.from(f.x));
  });

  test('reshape and transpose keep the batch axis', async () => {
    const r = await one(reshape({ shape: [4, -1] }), [2, 3, 4]);
    const ry = await r.run();
    assert.deepEqual(ry.dims, [2, 4, 6]);
    assert.deepEqual(Array.from(ry.data as Float32Array), Array.from(r.x));
    const t = await one(transpose({ perm: [1, 0] }), [3, 4]);
    const ty = await t.run();
    assert.deepEqual(ty.dims, [2, 4, 3]);
    const ref = new Float64Array(24);
    for (let b = 0; b < 2; b++)
      for (let i = 0; i < 3; i++)
        for (let j = 0; j < 4; j++) ref[b * 12 + j * 3 + i] = t.x[b * 12 + i * 4 + j];
    assertClose(ty.data as Float32Array, ref, 'transpose');
  });

  test('embedding (Gather on int64 token ids), positionEmbedding, residual', async () => {
    const built = sequential(
      [5],
      [embedding({ vocab: 7, dim: 3 }), positionEmbedding(), residual([dense({ units: 3 }), tanh()])],
      {
        inputType: 'int64',
        seed: 3,
      },
    );
    assert.deepEqual(
      built.params.map((p) => p.name),
      ['0.weight', '1.weight', '2.0.weight', '2.0.bias'],
    );
    assert.deepEqual(
      built.layers.map((l) => `${l.where}:${l.type}:${l.name}`),
      [
        'layers[0]:embedding:0',
        'layers[1]:positionEmbedding:1',
        'layers[2]:residual:2',
        'layers[2].layers[0]:dense:2.0',
        'layers[2].layers[1]:tanh:2.1',
      ],
    );
    const m = built.model;
    const ids = BigInt64Array.from([0, 6, 3, 3, 1, 2, 5, 4, 0, 6], BigInt);
    const y = await runBuilt(m, ids, [2, 5]);
    assert.deepEqual(y.dims, [2, 5, 3]);
    const emb = param(m, '0.weight');
    const pos = param(m, '1.weight');
    const e = Float64Array.from(
      { length: 30 },
      (_, i) => emb[Number(ids[Math.floor(i / 3)]) * 3 + (i % 3)] + pos[i % 15],
    );
    const f = linearRef(e, 10, 3, param(m, '2.0.weight'), param(m, '2.0.bias'), 3).map(Math.tanh);
    assertClose(
      y.data as Float32Array,
      Float64Array.from(e, (v, i) => v + f[i]),
      'embedding + position + residual',
    );
  });

  test('attention block matches torch.nn.TransformerEncoderLayer (norm_first, GELU) from the torch fixture', async () => {
    const dir = join(FIXTURES, 'attention');
    const x = (await readNpy(join(dir, 'x.npy'))).data as Float32Array;
    const want = (await readNpy(join(dir, 'y.npy'))).data as Float64Array;
    const built = sequential([5, 8], [attention({ heads: 2, mlpDim: 16 })]);
    const names = readdirSync(dir).filter((f) => f.startsWith('0.'));
    assert.equal(names.length, 16);
    for (const f of names)
      param(built.model, f.slice(0, -4)).set((await readNpy(join(dir, f))).data as Float32Array);
    assert.deepEqual(built.params.map((p) => p.name).sort(), names.map((f) => f.slice(0, -4)).sort());
    const y = await runBuilt(built.model, x, [2, 5, 8]);
    assert.deepEqual(y.dims, [2, 5, 8]);
    assertClose(y.data as Float32Array, want, 'attention vs torch');
  });

  test('attention block, causal, 4 heads, tanh GELU, against the TypeScript reference', async () => {
    const built = sequential([6, 8], [attention({ heads: 4, mlpRatio: 2, causal: true, gelu: 'tanh' })], {
      seed: 5,
    });
    const m = built.model;
    for (const p of built.params)
      if (p.name.endsWith('.bias') || p.name.includes('norm'))
        param(m, p.name).set(randn(p.dims[0], p.dims[0] + p.name.length, 0.3));
    const x = randn(2 * 6 * 8, 9);
    const y = await runBuilt(m, x, [2, 6, 8]);
    const ref = attentionRef(x, 2, 6, 8, 4, (n) => param(m, `0.${n}`), {
      causal: true,
      gelu: geluTanh,
      mlp: 16,
    });
    assertClose(y.data as Float32Array, ref, 'causal attention');
  });

  test('the torch oracle CNN with torch weights gives torch logits (eval mode)', async () => {
    const meta = JSON.parse((await import('node:fs')).readFileSync(join(FIXTURES, 'model.json'), 'utf8'));
    const built = buildFromSpec(parseBuilderSpec(meta.spec));
    for (const name of [...meta.parameters, ...meta.buffers]) {
      const src = (await readNpy(join(FIXTURES, 'initial', `${name}.npy`))).data as Float32Array;
      const dst = param(built.model, name);
      assert.equal(dst.length, src.length, name);
      dst.set(src);
    }
    assert.deepEqual(built.params.map((p) => p.name).sort(), [...meta.parameters, ...meta.buffers].sort());
    const x = (await readNpy(join(FIXTURES, 'batch', 'x.npy'))).data as Float32Array;
    const want = (await readNpy(join(FIXTURES, 'logits_eval.npy'))).data as Float64Array;
    const y = await runBuilt(built.model, x, [8, 1, 10, 10]);
    assertClose(y.data as Float32Array, want, 'logits vs torch');
  });
});

describe('initialisation', () => {
  test("'torch' follows PyTorch's kaiming_uniform(a=√5): U(±1/√fan_in) for weights and biases", () => {
    const b = sequential([16, 9, 9], [conv2d({ filters: 64, kernel: 3 }), flatten(), dense({ units: 200 })]);
    const check = (name: string, fanIn: number) => {
      const w = param(b.model, name);
      const bound = 1 / Math.sqrt(fanIn);
      const max = w.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
      // The largest of ≥ 64 draws lies in the top 10 % of the range with probability > 0.998 (fixed seed here).
      assert.ok(max <= bound && max > 0.9 * bound, `${name}: max |w| ${max} vs bound ${bound}`);
      const std = Math.sqrt(w.reduce((a, v) => a + v * v, 0) / w.length);
      // A uniform on [-b, b] has std b/√3; with ≥ 64 values the sample std is within 15 %.
      assert.ok(Math.abs(std / (bound / Math.sqrt(3)) - 1) < 0.15, `${name}: std ${std}`);
    };
    check('0.weight', 16 * 9);
    check('0.bias', 16 * 9);
    check('2.weight', 64 * 7 * 7);
    check('2.bias', 64 * 7 * 7);
  });

  test("'he' is N(0, 2/fan_in) with zero biases; 'xavier' is U(±√(6/(fan_in+fan_out)))", () => {
    const he = sequential([100], [dense({ units: 300 })], { init: 'he' });
    const w = param(he.model, '0.weight');
    const std = Math.sqrt(w.reduce((a, v) => a + v * v, 0) / w.length);
    assert.ok(Math.abs(std / Math.sqrt(2 / 100) - 1) < 0.03, `he std ${std}`);
    assert.ok(param(he.model, '0.bias').every((v) => v === 0));
    const xa = sequential([100], [dense({ units: 300 })], { init: 'xavier' });
    const bound = Math.sqrt(6 / 400);
    const max = param(xa.model, '0.weight').reduce((a, v) => Math.max(a, Math.abs(v)), 0);
    assert.ok(max <= bound && max > 0.99 * bound, `xavier max ${max}`);
  });

  test('seeded: the same seed gives the same weights, another seed other weights; per-name streams', () => {
    const spec = FASHION_MNIST_SPEC;
    const a = buildFromSpec(parseBuilderSpec(spec), { seed: 1 });
    const b = buildFromSpec(parseBuilderSpec(spec), { seed: 1 });
    const c = buildFromSpec(parseBuilderSpec(spec), { seed: 2 });
    assert.deepEqual(param(a.model, '9.weight'), param(b.model, '9.weight'));
    assert.notDeepEqual(param(a.model, '9.weight'), param(c.model, '9.weight'));
    // Removing the first layers does not change the initial values of a layer that keeps its name.
    const tail = sequential([3136], [dense({ units: 128, name: '9' })], { seed: 1 });
    assert.deepEqual(param(tail.model, '9.weight'), param(a.model, '9.weight'));
    // The spec's own seed wins over the override.
    const own = buildFromSpec(parseBuilderSpec({ ...spec, seed: 2 }), { seed: 1 });
    assert.deepEqual(param(own.model, '9.weight'), param(c.model, '9.weight'));
  });

  test('the Fashion-MNIST example: shapes, parameter count, ONNX opset 18, spec kept in metadata', () => {
    const b = buildFromSpec(parseBuilderSpec(FASHION_MNIST_SPEC));
    assert.equal(b.paramCount, 320 + 64 + 18496 + 128 + 401536 + 1290);
    assert.deepEqual(b.outputShape, [10]);
    assert.equal(b.model.opset(''), 18);
    assert.equal(b.model.graph.inputs[0].name, 'input');
    assert.equal(b.model.graph.outputs[0].name, 'logits');
    const meta = b.model.metadataProps?.find((e) => e.key === 'qnnx.builder_spec');
    assert.ok(meta && JSON.parse(meta.value!).layers.length === 12);
    assert.deepEqual(
      b.layers.map((l) => l.outputShape.join('x')),
      [
        '32x28x28',
        '32x28x28',
        '32x28x28',
        '32x14x14',
        '64x14x14',
        '64x14x14',
        '64x14x14',
        '64x7x7',
        '3136',
        '128',
        '128',
        '10',
      ],
    );
  });
});

describe('builder spec errors: one E_USAGE line naming the layer', () => {
  const base = { input: [1, 8, 8] };
  const cases: [string, unknown, RegExp][] = [
    [
      'unknown layer',
      { ...base, layers: ['relu', { conv3d: { filters: 2 } }] },
      /^spec\.json: layers\[1\]: unknown layer 'conv3d' \(known: conv2d, dense, /,
    ],
    [
      'unknown layer name as a string',
      { ...base, layers: ['flatten', 'softmaxx'] },
      /^spec\.json: layers\[1\]: unknown layer 'softmaxx'/,
    ],
    [
      'missing required option',
      { ...base, layers: [{ conv2d: { kernel: 3 } }] },
      /^spec\.json: layers\[0\] \(conv2d\): 'filters' is required \(a positive integer\)$/,
    ],
    [
      'wrong option type',
      { ...base, layers: [{ conv2d: { filters: 2, kernel: '3' } }] },
      /^spec\.json: layers\[0\] \(conv2d\): 'kernel' must be a positive integer or \[h, w\], got "3"$/,
    ],
    [
      'unknown option',
      { ...base, layers: ['flatten', { dense: { units: 4, unit: 3 } }] },
      /^spec\.json: layers\[1\] \(dense\): unknown option 'unit' \(known: units, bias, name\)$/,
    ],
    [
      'two keys in a layer',
      { ...base, layers: [{ relu: {}, tanh: {} }] },
      /^spec\.json: layers\[0\]: a layer is an object with exactly one key/,
    ],
    [
      'shape mismatch: dense after conv',
      { ...base, layers: [{ conv2d: { filters: 2, kernel: 3 } }, { dense: { units: 3 } }] },
      /^spec\.json: layers\[1\] \(dense\): needs an input of 1 or 2 dims per sample, got \[2, 6, 6\] \(add \{"flatten": \{\}\} before it\)$/,
    ],
    [
      'kernel larger than the input',
      { ...base, layers: [{ maxPool: { kernel: 9 } }] },
      /^spec\.json: layers\[0\] \(maxPool\): kernel \[9, 9\] does not fit the input \[1, 8, 8\]$/,
    ],
    [
      'groups do not divide',
      { ...base, layers: [{ conv2d: { filters: 3, kernel: 1, groups: 2 } }] },
      /layers\[0\] \(conv2d\): groups 2 must divide/,
    ],
    [
      'heads do not divide the width',
      { input: [4, 6], layers: [{ attention: { heads: 4 } }] },
      /layers\[0\] \(attention\): heads \(4\) must divide the width D = 6/,
    ],
    [
      'nested residual error',
      { input: [4], layers: [{ residual: { layers: ['relu', { dense: {} }] } }] },
      /^spec\.json: layers\[0\]\.layers\[1\] \(dense\): 'units' is required/,
    ],
    [
      'residual changing the shape',
      { input: [4], layers: [{ residual: { layers: [{ dense: { units: 3 } }] } }] },
      /^spec\.json: layers\[0\] \(residual\): the inner layers change the shape \[4\] to \[3\]$/,
    ],
    [
      'embedding on float input',
      { input: [4], layers: [{ embedding: { vocab: 3, dim: 2 } }] },
      /layers\[0\] \(embedding\): needs int64 token ids/,
    ],
    [
      "'same' padding with stride 2",
      { ...base, layers: [{ conv2d: { filters: 2, kernel: 3, stride: 2, padding: 'same' } }] },
      /layers\[0\] \(conv2d\): padding 'same' needs stride 1/,
    ],
    ['missing input', { layers: ['relu'] }, /^spec\.json: "input" must be the per-sample shape/],
    ['empty layers', { ...base, layers: [] }, /^spec\.json: "layers" must be a non-empty list/],
    [
      'unknown top-level key',
      { ...base, layers: ['relu'], optimizer: 'adam' },
      /^spec\.json: unknown key 'optimizer'/,
    ],
    [
      'bad init',
      { ...base, layers: ['relu'], init: 'glorot' },
      /^spec\.json: "init" must be one of torch, he, xavier/,
    ],
    [
      'duplicate names',
      { input: [4], layers: [{ dense: { units: 4, name: 'fc' } }, { dense: { units: 4, name: 'fc' } }] },
      /layers\[1\] \(dense\): the name 'fc' is already used/,
    ],
  ];
  for (const [name, spec, re] of cases) {
    test(name, () => {
      assert.throws(
        () => buildFromSpec(parseBuilderSpec(spec, 'spec.json'), { file: 'spec.json' }),
        (e: unknown) => {
          assert.ok(isQnnxError(e), String(e));
          assert.equal(e.code, 'E_USAGE');
          assert.ok(!e.message.includes('\n'), 'one line');
          assert.match(e.message, re);
          return true;
        },
      );
    });
  }

  test('invalid JSON', () => {
    assert.throws(
      () => parseBuilderSpecText('{"input": [1, 2', 'bad.json'),
      (e: unknown) => isQnnxError(e) && e.code === 'E_USAGE' && /^bad\.json: not valid JSON/.test(e.message),
    );
  });

  test('the TypeScript API reports the same errors', () => {
    assert.throws(
      () => sequential([1, 8, 8], [conv2d({ filters: 2, kernel: 3 }), dense({ units: 3 })]),
      /^QnnxError: layers\[1\] \(dense\): needs an input of 1 or 2 dims per sample/,
    );
    assert.throws(
      () => sequential([1, 8, 8], [{ type: 'conv2d', filters: 0, kernel: 3 }]),
      /layers\[0\] \(conv2d\): 'filters' must be a positive integer, got 0/,
    );
  });
});
