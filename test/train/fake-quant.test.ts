/**
 * qnnx::FakeQuant: the lowering to float ops against our quantizer (bit-exact: same float32 division, round half
 * to even, clamp and float32 product), and the pluggable gradient rules (STE, LSQ, MAD, a custom one) against
 * their formulas computed in float64 and against float64 finite differences of the true (lowered) forward.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { roundHalfEven } from '../../src/onnx/formats.js';
import type { Encoding } from '../../src/quant/encoding.js';
import { fakeQuantize } from '../../src/quant/quantizer.js';
import { intRange, intScheme } from '../../src/quant/scheme.js';
import { Session } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';
import { addGradients } from '../../src/train/autodiff/engine.js';
import { registerFakeQuantGradient } from '../../src/train/autodiff/rules/fake-quant.js';
import {
  declareFakeQuantTypes,
  FAKE_QUANT_DOMAIN,
  fakeQuantSpecFromEncoding,
  insertFakeQuant,
  lowerFakeQuant,
} from '../../src/train/fake-quant.js';
import { mulberry32 } from '../helpers/ort.js';

const f32 = (dims: number[], data: ArrayLike<number>): HostTensor => ({
  dtype: DataType.FLOAT,
  dims,
  data: Float32Array.from(data),
});
const f64 = (dims: number[], data: ArrayLike<number>): HostTensor => ({
  dtype: DataType.DOUBLE,
  dims,
  data: Float64Array.from(data),
});

function identityModel(dims: number[]): Model {
  const m = new Model();
  m.opsetImports = [{ domain: '', version: 18 }];
  m.graph.name = 'fq';
  m.graph.inputs.push(valueInfo('x', DataType.FLOAT, dims));
  new GraphBuilder(m.graph).node('Identity', ['x'], { outputs: ['y'] });
  m.graph.outputs.push(valueInfo('y', DataType.FLOAT, dims));
  return m;
}

/** Values in grid units: random, exact ties k + 0.5, far outside the grid on both sides. */
function gridValues(
  n: number,
  scale: (i: number) => number,
  zp: (i: number) => number,
  qmin0: number,
  qmax0: number,
  seed: number,
): Float32Array {
  const rnd = mulberry32(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const s = scale(i);
    const qmin = qmin0 - zp(i);
    const qmax = qmax0 - zp(i);
    const r = rnd();
    if (r < 0.3)
      x[i] = (Math.floor(qmin + rnd() * (qmax - qmin)) + 0.5) * s; // ties (exact when s is 2^k)
    else if (r < 0.4) x[i] = (qmax + 1 + rnd() * 50) * s;
    else if (r < 0.5) x[i] = (qmin - 1 - rnd() * 50) * s;
    else x[i] = (qmin - 3 + rnd() * (qmax - qmin + 6)) * s;
  }
  return x;
}

async function runLowered(m: Model, feeds: Record<string, HostTensor>, out: string[]) {
  const s = await Session.create(m);
  try {
    return await s.run(feeds, out);
  } finally {
    await s.release();
  }
}

describe('FakeQuant lowering', () => {
  const cases: { label: string; enc: Encoding; dims: number[] }[] = [
    {
      label: 'int8 per-tensor, power-of-two scale (exact ties)',
      enc: {
        scheme: intScheme(8),
        scale: Float32Array.of(0.125),
        zeroPoint: Int32Array.of(0),
        scaleDims: [],
      },
      dims: [4, 50],
    },
    {
      label: 'uint8 asymmetric per-tensor, zero point 37',
      enc: {
        scheme: intScheme(8, { signed: false, symmetry: 'asymmetric' }),
        scale: Float32Array.of(0.0123),
        zeroPoint: Int32Array.of(37),
        scaleDims: [],
      },
      dims: [3, 7, 11],
    },
    {
      label: 'int4 narrow per-channel axis 0 (weights)',
      enc: {
        scheme: intScheme(4, { narrow: true, granularity: { kind: 'channel', axis: 0 } }),
        scale: Float32Array.of(0.5, 0.03, 0.25, 1.7),
        zeroPoint: Int32Array.of(0, 0, 0, 0),
        scaleDims: [4],
      },
      dims: [4, 3, 3, 3],
    },
    {
      label: 'uint8 per-channel axis 1 with zero points',
      enc: {
        scheme: intScheme(8, {
          signed: false,
          symmetry: 'asymmetric',
          granularity: { kind: 'channel', axis: 1 },
        }),
        scale: Float32Array.of(0.0625, 0.011, 0.2),
        zeroPoint: Int32Array.of(128, 3, 250),
        scaleDims: [3],
      },
      dims: [2, 3, 5, 4],
    },
  ];
  for (const [k, c] of cases.entries()) {
    test(`${c.label}: lowered graph equals fakeQuantize bit for bit`, async () => {
      const m = identityModel(c.dims);
      insertFakeQuant(m, 'x', fakeQuantSpecFromEncoding(c.enc));
      assert.ok(m.graph.nodes.some((n) => n.domain === FAKE_QUANT_DOMAIN));
      const rec = lowerFakeQuant(m);
      assert.equal(rec.details.lowered, 1);
      const ops = m.graph.nodes.map((n) => n.opType);
      assert.ok(!ops.includes('QuantizeLinear') && !ops.includes('DequantizeLinear'), ops.join(','));
      assert.ok(m.graph.nodes.every((n) => n.domain === ''));
      assert.equal(m.opset(FAKE_QUANT_DOMAIN), undefined);
      const n = c.dims.reduce((a, d) => a * d, 1);
      const g = c.enc.scheme.granularity;
      let inner = 1;
      if (g.kind === 'channel') for (let i = g.axis + 1; i < c.dims.length; i++) inner *= c.dims[i];
      const group = (i: number) => (g.kind === 'channel' ? Math.floor(i / inner) % c.dims[g.axis] : 0);
      const { qmin, qmax } = intRange(c.enc.scheme.bits, c.enc.scheme.signed, c.enc.scheme.narrow);
      const x = gridValues(
        n,
        (i) => c.enc.scale[group(i)],
        (i) => c.enc.zeroPoint[group(i)],
        qmin,
        qmax,
        100 + k,
      );
      const out = await runLowered(m, { x: f32(c.dims, x) }, ['y']);
      const want = fakeQuantize(x, c.dims, c.enc);
      const got = out.y.data as Float32Array;
      let mismatches = 0;
      for (let i = 0; i < n; i++) if (!Object.is(got[i], want[i])) mismatches++;
      assert.equal(mismatches, 0, `${mismatches} of ${n} values differ from fakeQuantize`);
    });
  }
});

interface GradCase {
  grad: string;
  dims: number[];
  scale: number[];
  zp: number[];
  qmin: number;
  qmax: number;
  axis?: number;
  dtype: DataType.FLOAT | DataType.DOUBLE;
  gradScale?: number;
}

/** y = FakeQuant(x, scale, zp); loss = Σ y·R. Scale is a graph input so that it can be differentiated. */
function gradModel(c: GradCase, r: ArrayLike<number>): Model {
  const m = new Model();
  m.opsetImports = [
    { domain: '', version: 18 },
    { domain: FAKE_QUANT_DOMAIN, version: 1 },
  ];
  m.graph.name = 'fq_grad';
  const b = new GraphBuilder(m.graph);
  const sdims = c.axis === undefined ? [] : [c.scale.length];
  m.graph.inputs.push(valueInfo('x', c.dtype, c.dims), valueInfo('scale', c.dtype, sdims));
  const arr = (v: ArrayLike<number>) =>
    c.dtype === DataType.DOUBLE ? Float64Array.from(v) : Float32Array.from(v);
  const zp = b.initializer('zp', c.dtype, sdims, arr(c.zp));
  const rr = b.initializer('R', c.dtype, c.dims, arr(r));
  const attrs: Record<string, number | string> = { qmin: c.qmin, qmax: c.qmax, grad: c.grad };
  if (c.axis !== undefined) attrs.axis = c.axis;
  const fq = b.node('FakeQuant', ['x', 'scale', zp], { domain: FAKE_QUANT_DOMAIN, attrs, outputs: ['y'] });
  if (c.gradScale !== undefined) {
    fq.attributes.push({ name: 'grad_scale', type: 1, value: c.gradScale });
  }
  const prod = b.op('Mul', ['y', rr]);
  b.node('ReduceSum', [prod], { outputs: ['loss'], attrs: { keepdims: 0 } });
  m.graph.outputs.push(valueInfo('loss', c.dtype, []));
  return m;
}

interface Formula {
  dx: Float64Array;
  ds: Float64Array;
  /** Σ over inside elements of R·v, per scale (the part of LSQ's gradient that finite differences do not see). */
  insideRv: Float64Array;
}

function formulas(c: GradCase, x: ArrayLike<number>, r: ArrayLike<number>): Formula {
  const n = x.length;
  let inner = 1;
  if (c.axis !== undefined) for (let i = c.axis + 1; i < c.dims.length; i++) inner *= c.dims[i];
  const groups = c.scale.length;
  const grp = (i: number) => (c.axis === undefined ? 0 : Math.floor(i / inner) % c.dims[c.axis]);
  const dx = new Float64Array(n);
  const ds = new Float64Array(groups);
  const insideRv = new Float64Array(groups);
  const N = n / groups;
  const gs = c.gradScale ?? 1 / Math.sqrt(N * c.qmax);
  for (let i = 0; i < n; i++) {
    const k = grp(i);
    const s = c.scale[k];
    const lo = c.qmin - c.zp[k];
    const hi = c.qmax - c.zp[k];
    const v = c.dtype === DataType.FLOAT ? Math.fround(x[i] / s) : x[i] / s;
    const below = v < lo;
    const above = v > hi;
    const inside = !below && !above;
    if (c.grad === 'mad')
      dx[i] =
        r[i] * (inside ? 1 : above ? Math.abs(hi * s) / Math.abs(x[i]) : Math.abs(lo * s) / Math.abs(x[i]));
    else dx[i] = inside ? r[i] : 0;
    ds[k] += gs * r[i] * (inside ? roundHalfEven(v) - v : below ? lo : hi);
    if (inside) insideRv[k] += r[i] * v;
  }
  return { dx, ds, insideRv };
}

async function analytic(c: GradCase, x: ArrayLike<number>, r: ArrayLike<number>) {
  const m = gradModel(c, r);
  const shapes = { x: c.dims, scale: c.axis === undefined ? [] : [c.scale.length] };
  declareFakeQuantTypes(m, shapes);
  const { gradients } = addGradients(m, { loss: 'loss', wrt: ['x', 'scale'], inputShapes: shapes });
  const b = new GraphBuilder(m.graph);
  b.node('Identity', [gradients.get('x')!], { outputs: ['dx'] });
  b.node('Identity', [gradients.get('scale')!], { outputs: ['ds'] });
  m.graph.outputs.push(valueInfo('dx', c.dtype, c.dims), valueInfo('ds', c.dtype, shapes.scale));
  lowerFakeQuant(m, shapes);
  const mk = c.dtype === DataType.DOUBLE ? f64 : f32;
  const out = await runLowered(m, { x: mk(c.dims, x), scale: mk(shapes.scale, c.scale) }, [
    'loss',
    'dx',
    'ds',
  ]);
  return { dx: out.dx.data as Float32Array, ds: out.ds.data as Float32Array, m };
}

/** Values as a plain array with −0 read as 0 (the masks multiply negative gradients by 0). */
function plain(a: ArrayLike<number>): number[] {
  return Array.from(a, (v) => v + 0);
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    s = Math.max(s, Math.abs(b[i]));
  }
  return d / Math.max(s, 1e-30);
}

/** Inputs whose v = x/s is at least 0.1 from a rounding tie and from the clipping edges. */
function safeValues(c: GradCase, seed: number): { x: Float64Array; r: Float64Array } {
  const rnd = mulberry32(seed);
  const n = c.dims.reduce((a, d) => a * d, 1);
  let inner = 1;
  if (c.axis !== undefined) for (let i = c.axis + 1; i < c.dims.length; i++) inner *= c.dims[i];
  const x = new Float64Array(n);
  const r = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const k = c.axis === undefined ? 0 : Math.floor(i / inner) % c.dims[c.axis];
    const lo = c.qmin - c.zp[k];
    const hi = c.qmax - c.zp[k];
    let v: number;
    do v = lo - 6 + rnd() * (hi - lo + 12);
    while (
      Math.abs(v - Math.floor(v) - 0.5) < 0.1 ||
      Math.abs(v - lo) < 0.1 ||
      Math.abs(v - hi) < 0.1 ||
      Math.abs(v) < 0.1
    );
    x[i] = Math.fround(v * c.scale[k]);
    r[i] = Math.fround(rnd() * 2 - 1);
  }
  return { x, r };
}

describe('FakeQuant gradients', () => {
  const base: Omit<GradCase, 'grad'>[] = [
    { dims: [6, 20], scale: [0.05], zp: [0], qmin: -8, qmax: 7, dtype: DataType.FLOAT },
    { dims: [5, 24], scale: [0.02], zp: [9], qmin: 0, qmax: 15, dtype: DataType.FLOAT },
    {
      dims: [3, 4, 2, 5],
      scale: [0.1, 0.03, 0.4, 0.07],
      zp: [0, 2, -1, 0],
      qmin: -8,
      qmax: 7,
      axis: 1,
      dtype: DataType.FLOAT,
    },
  ];
  for (const grad of ['ste', 'lsq', 'mad']) {
    for (const [k, b] of base.entries()) {
      test(`${grad}, case ${k} (${b.axis === undefined ? 'per-tensor' : 'per-channel'}, zp ${b.zp.join('/')}): matches the formulas`, async () => {
        const c: GradCase = { ...b, grad };
        const { x, r } = safeValues(c, 7 + k);
        const got = await analytic(c, x, r);
        const want = formulas(c, Float32Array.from(x), Float32Array.from(r));
        // dx: products of float32 R with 1/0 (STE, LSQ) are exact; MAD divides in float32: 1e-6 relative.
        if (grad === 'mad')
          assert.ok(relErr(got.dx, want.dx) < 1e-6, `dx rel err ${relErr(got.dx, want.dx)}`);
        else assert.deepEqual(plain(got.dx), plain(want.dx));
        if (grad === 'lsq') {
          // float32 sums of ~100 terms against float64: 1e-5 relative.
          assert.ok(relErr(got.ds, want.ds) < 1e-5, `ds ${Array.from(got.ds)} vs ${Array.from(want.ds)}`);
        } else {
          // STE and MAD do not learn the scale: the engine's zero gradient.
          assert.deepEqual(
            plain(got.ds),
            plain(got.ds).map(() => 0),
          );
        }
      });
    }
  }

  for (const [k, b] of base.entries()) {
    test(`lsq vs float64 finite differences of the true forward, case ${k}`, async () => {
      // Away from rounding boundaries the true forward is s·(clamped integer): dL/ds by central differences
      // equals LSQ's raw gradient plus Σ_inside R·v (the straight-through part that FD cannot see), and dL/dx = 0.
      const c: GradCase = { ...b, grad: 'lsq', dtype: DataType.DOUBLE, gradScale: 1 };
      const { x, r } = safeValues(c, 21 + k);
      const got = await analytic(c, x, r);
      const f = formulas(c, x, r);
      // Forward model only (for FD): the same graph without gradients.
      const m = gradModel(c, r);
      lowerFakeQuant(m, { x: c.dims });
      const s = await Session.create(m);
      const sdims = c.axis === undefined ? [] : [c.scale.length];
      try {
        const loss = async (scale: number[]) =>
          Number((await s.run({ x: f64(c.dims, x), scale: f64(sdims, scale) }, ['loss'])).loss.data[0]);
        for (let g = 0; g < c.scale.length; g++) {
          const eps = 1e-7 * c.scale[g];
          const up = [...c.scale];
          const dn = [...c.scale];
          up[g] += eps;
          dn[g] -= eps;
          const fd = ((await loss(up)) - (await loss(dn))) / (2 * eps);
          const lsqPlus = got.ds[g] + f.insideRv[g];
          // float64 FD with eps 1e-7·s: about 1e-8 relative.
          assert.ok(
            Math.abs(fd - lsqPlus) <= 1e-6 * Math.max(1, Math.abs(fd)),
            `scale ${g}: FD ${fd} vs ${lsqPlus}`,
          );
        }
        // dL/dx by FD is 0 everywhere away from ties; STE agrees on the clipped elements.
        for (let i = 0; i < x.length; i += 7) {
          if (f.dx[i] !== 0) continue;
          const xp = Float64Array.from(x);
          xp[i] += 1e-9;
          const xm = Float64Array.from(x);
          xm[i] -= 1e-9;
          const l1 = Number(
            (await s.run({ x: f64(c.dims, xp), scale: f64(sdims, c.scale) }, ['loss'])).loss.data[0],
          );
          const l0 = Number(
            (await s.run({ x: f64(c.dims, xm), scale: f64(sdims, c.scale) }, ['loss'])).loss.data[0],
          );
          assert.equal(l1, l0);
          assert.ok(got.dx[i] === 0);
        }
      } finally {
        await s.release();
      }
    });
  }

  test('LSQ default gradient scale is 1/sqrt(N·qmax)', async () => {
    const c: GradCase = { ...base[0], grad: 'lsq' };
    const { x, r } = safeValues(c, 3);
    const dflt = await analytic(c, x, r);
    const raw = await analytic({ ...c, gradScale: 1 }, x, r);
    const g = 1 / Math.sqrt(120 * 7);
    assert.ok(Math.abs(dflt.ds[0] - raw.ds[0] * g) <= 1e-6 * Math.abs(raw.ds[0] * g));
  });

  test('a registered custom rule is used by nodes that name it; unknown names are refused', async () => {
    registerFakeQuantGradient('half-ste', (g) => ({
      x: g.op('Mul', [g.op('Mul', [g.dy, g.inside()]), g.constant(0.5)]),
    }));
    const c: GradCase = { ...base[0], grad: 'half-ste' };
    const { x, r } = safeValues(c, 5);
    const got = await analytic(c, x, r);
    const want = formulas({ ...c, grad: 'ste' }, Float32Array.from(x), Float32Array.from(r));
    assert.deepEqual(plain(got.dx), plain(want.dx.map((v) => v * 0.5)));
    await assert.rejects(analytic({ ...c, grad: 'nope' }, x, r), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'E_GRADIENT');
      assert.match(e.message, /unknown fake-quant gradient 'nope' \(registered: .*lsq.*\)/);
      return true;
    });
  });
});
