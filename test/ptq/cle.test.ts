/**
 * Cross-layer equalization (research note S13 C, acceptance test 2): Linear(32→64)-ReLU-Linear(64→16) with row
 * scales 10^U(−2, 1), built as ONNX, quantized per-tensor by QuantSim and run by ONNX Runtime. Also the BatchNorm
 * statistics capture, depthwise-separable chains, high-bias absorption and Relu6 handling.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { floatAttr, GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { foldBatchNorm } from '../../src/ir/passes/index.js';
import { DataType } from '../../src/onnx/dtype.js';
import { collectBnStats, equalizeCrossLayer, measureActivationRanges } from '../../src/ptq/cle.js';
import { exportQdq } from '../../src/quant/export/qdq.js';
import { sqnrDb } from '../../src/quant/quantizer.js';
import { QuantSim } from '../../src/quant/sim/quantsim.js';
import { getTarget } from '../../src/quant/sim/targets.js';
import { Session } from '../../src/runtime/session.js';
import { mulberry32, normalSampler } from '../quant/synthetic.js';

const f32 = (dims: number[], data: Float32Array) => ({ dtype: DataType.FLOAT, dims, data });

/** The S13 network: W1 rows N(0, 1/32)·10^U(−2, 1), W2 N(0, 1/64), small biases; opset 21 (sub-8-bit DQ). */
function s13Network(seed: number): { model: Model; w1: Float32Array; w2: Float32Array } {
  const rng = mulberry32(seed);
  const z = normalSampler(rng);
  const w1 = new Float32Array(64 * 32);
  for (let i = 0; i < 64; i++) {
    const s = 10 ** (-2 + 3 * rng());
    for (let j = 0; j < 32; j++) w1[i * 32 + j] = (s * z()) / Math.sqrt(32);
  }
  const w2 = Float32Array.from({ length: 16 * 64 }, () => z() / Math.sqrt(64));
  const b1 = Float32Array.from({ length: 64 }, () => 0.1 * z());
  const b2 = Float32Array.from({ length: 16 }, () => 0.1 * z());
  const m = new Model();
  m.setOpset('', 21);
  const g = m.graph;
  g.inputs.push(valueInfo('x', DataType.FLOAT, ['N', 32]));
  g.outputs.push(valueInfo('y', DataType.FLOAT, ['N', 16]));
  const b = new GraphBuilder(g);
  const h = b.op('Gemm', ['x', b.floats('W1', [64, 32], w1), b.floats('B1', [64], b1)], { transB: 1 }, 'fc1');
  const r = b.op('Relu', [h], undefined, 'relu');
  b.node('Gemm', [r, b.floats('W2', [16, 64], w2), b.floats('B2', [16], b2)], {
    outputs: ['y'],
    attrs: { transB: 1 },
    name: 'fc2',
  });
  return { model: m, w1, w2 };
}

function inputs(n: number, seed: number): Float32Array {
  const z = normalSampler(mulberry32(seed));
  return Float32Array.from({ length: n * 32 }, () => z());
}

async function run(m: Model, x: Float32Array, dims: number[]): Promise<Float32Array> {
  const s = await Session.create(m);
  try {
    const out = await s.run({ [m.graph.inputs[0].name]: f32(dims, x) });
    return out[m.graph.outputs[0].name].data as Float32Array;
  } finally {
    await s.release();
  }
}

/** Output SQNR of the model with per-tensor weights of `bits` (weights only) against the float model. */
async function weightOnlySqnr(m: Model, bits: number, x: Float32Array, dims: number[]): Promise<number> {
  const sim = new QuantSim(m, {
    target: getTarget('ort-cpu'),
    weights: { bits, granularity: 'tensor' },
    weightOnly: true,
  });
  sim.computeParameterEncodings();
  sim.finalizeEncodings();
  const q = exportQdq(sim).model;
  return sqnrDb(await run(m, x, dims), await run(q, x, dims));
}

function rowMax(w: Float32Array, rows: number, cols: number): Float64Array {
  const r = new Float64Array(rows);
  for (let i = 0; i < rows; i++)
    for (let j = 0; j < cols; j++) r[i] = Math.max(r[i], Math.abs(w[i * cols + j]));
  return r;
}

function colMax(w: Float32Array, rows: number, cols: number): Float64Array {
  const r = new Float64Array(cols);
  for (let i = 0; i < rows; i++)
    for (let j = 0; j < cols; j++) r[j] = Math.max(r[j], Math.abs(w[i * cols + j]));
  return r;
}

describe('cross-layer equalization', () => {
  test('S13 network: float equivalence, equal ranges, per-tensor SQNR before → after', async () => {
    const N = 2000;
    const x = inputs(N, 11);
    const dims = [N, 32];
    const targets: Record<number, [number, number]> = { 8: [33.1, 39.9], 6: [21.8, 28.1], 4: [10.6, 15.0] };
    const sums: Record<number, [number, number]> = { 8: [0, 0], 6: [0, 0], 4: [0, 0] };
    const seeds = [1, 2, 3, 4];
    for (const seed of seeds) {
      const { model, w1, w2 } = s13Network(seed);
      const before: Record<number, number> = {};
      for (const bits of [8, 6, 4]) before[bits] = await weightOnlySqnr(model, bits, x, dims);
      const ref = await run(model, x, dims);
      const rec = equalizeCrossLayer(model);
      assert.equal((rec.details.pairs as unknown[]).length, 1);
      const out = await run(model, x, dims);
      let maxRel = 0;
      let scale = 0;
      for (let i = 0; i < ref.length; i++) scale = Math.max(scale, Math.abs(ref[i]));
      for (let i = 0; i < ref.length; i++) maxRel = Math.max(maxRel, Math.abs(out[i] - ref[i]) / scale);
      assert.ok(maxRel <= 1e-5, `float outputs moved by ${maxRel}`);
      // Both ranges become √(r1·r2).
      const r1 = rowMax(w1, 64, 32);
      const r2 = colMax(w2, 16, 64);
      const n1 = rowMax(model.graph.initializer('W1')!.data as Float32Array, 64, 32);
      const n2 = colMax(model.graph.initializer('W2')!.data as Float32Array, 16, 64);
      for (let i = 0; i < 64; i++) {
        const e = Math.sqrt(r1[i] * r2[i]);
        assert.ok(Math.abs(n1[i] - e) <= 1e-5 * e && Math.abs(n2[i] - e) <= 1e-5 * e, `channel ${i}`);
      }
      for (const bits of [8, 6, 4]) {
        const after = await weightOnlySqnr(model, bits, x, dims);
        sums[bits][0] += before[bits];
        sums[bits][1] += after;
      }
    }
    for (const bits of [8, 6, 4]) {
      const [b, a] = sums[bits].map((v) => v / seeds.length);
      const [tb, ta] = targets[bits];
      console.log(`W${bits} per-tensor SQNR ${b.toFixed(1)} → ${a.toFixed(1)} dB (S13: ${tb} → ${ta})`);
      assert.ok(Math.abs(b - tb) <= 1.5, `W${bits} before ${b.toFixed(2)} vs ${tb}`);
      assert.ok(Math.abs(a - ta) <= 1.5, `W${bits} after ${a.toFixed(2)} vs ${ta}`);
    }
  });

  test('Conv → DWConv → Conv chain with BatchNorm: pairwise iteration converges, float unchanged', async () => {
    const rng = mulberry32(5);
    const z = normalSampler(rng);
    const C = 8;
    const m = new Model();
    m.setOpset('', 13);
    const g = m.graph;
    g.inputs.push(valueInfo('x', DataType.FLOAT, [1, 4, 10, 10]));
    g.outputs.push(valueInfo('y', DataType.FLOAT, [1, 6, 10, 10]));
    const b = new GraphBuilder(g);
    const scaled = (n: number, per: number) => {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i += per) {
        const s = 10 ** (-1.5 + 2.5 * rng());
        for (let k = 0; k < per; k++) out[i + k] = s * z() * 0.3;
      }
      return out;
    };
    const bn = (x: string, c: number, name: string) =>
      b.op(
        'BatchNormalization',
        [
          x,
          b.floats(
            `${name}_g`,
            [c],
            Array.from({ length: c }, () => 0.5 + rng()),
          ),
          b.floats(
            `${name}_b`,
            [c],
            Array.from({ length: c }, () => 2 * z() + 1),
          ),
          b.floats(
            `${name}_m`,
            [c],
            Array.from({ length: c }, () => 0.2 * z()),
          ),
          b.floats(
            `${name}_v`,
            [c],
            Array.from({ length: c }, () => 0.5 + rng()),
          ),
        ],
        undefined,
        name,
      );
    let t = b.op('Conv', ['x', b.floats('w1', [C, 4, 1, 1], scaled(C * 4, 4))], undefined, 'pw1');
    t = b.op('Relu', [bn(t, C, 'bn1')]);
    t = b.op(
      'Conv',
      [t, b.floats('w2', [C, 1, 3, 3], scaled(C * 9, 9))],
      { group: C, pads: [1, 1, 1, 1] },
      'dw',
    );
    t = b.op('Relu', [bn(t, C, 'bn2')]);
    t = b.op('Conv', [t, b.floats('w3', [6, C, 1, 1], scaled(6 * C, C))], undefined, 'pw2');
    b.node('Identity', [bn(t, 6, 'bn3')], { outputs: ['y'] });
    const x = Float32Array.from({ length: 400 }, () => z());
    const ref = await run(m, x, [1, 4, 10, 10]);
    const stats = collectBnStats(m);
    assert.deepEqual([...stats.keys()].sort(), ['dw', 'pw1', 'pw2']);
    foldBatchNorm(m);
    const rec = equalizeCrossLayer(m, { bnStats: stats, highBiasAbsorption: false });
    assert.equal((rec.details.pairs as unknown[]).length, 2);
    assert.ok((rec.details.rounds as number) > 1 && (rec.details.lastMaxScaleChange as number) <= 1e-6);
    const out = await run(m, x, [1, 4, 10, 10]);
    let scale = 0;
    let err = 0;
    for (let i = 0; i < ref.length; i++) {
      scale = Math.max(scale, Math.abs(ref[i]));
      err = Math.max(err, Math.abs(out[i] - ref[i]));
    }
    assert.ok(err <= 1e-5 * scale, `max error ${err} (scale ${scale})`);
    // Converged: per channel, the three ranges are equal (DW rows, pointwise rows/columns).
    const w1 = m.graph.initializer(m.graph.nodes.find((n) => n.name === 'pw1')!.inputs[1])!
      .data as Float32Array;
    const w2 = m.graph.initializer(m.graph.nodes.find((n) => n.name === 'dw')!.inputs[1])!
      .data as Float32Array;
    const w3 = m.graph.initializer(m.graph.nodes.find((n) => n.name === 'pw2')!.inputs[1])!
      .data as Float32Array;
    const r1 = rowMax(w1, C, 4);
    const r2 = rowMax(w2, C, 9);
    const r3 = colMax(w3, 6, C);
    for (let i = 0; i < C; i++) {
      assert.ok(
        Math.abs(r1[i] - r2[i]) <= 1e-4 * r2[i] && Math.abs(r3[i] - r2[i]) <= 1e-4 * r2[i],
        `ch ${i}`,
      );
    }
    // Statistics follow the scaling: the first layer's β/γ ratio is unchanged.
    const st = stats.get('pw1')!;
    assert.equal(st.beta.length, C);
  });

  test('high-bias absorption moves max(0, β − 3γ) into the next layer (unpadded)', async () => {
    const m = new Model();
    m.setOpset('', 13);
    const g = m.graph;
    g.inputs.push(valueInfo('x', DataType.FLOAT, [1, 2, 4, 4]));
    g.outputs.push(valueInfo('y', DataType.FLOAT, [1, 3, 4, 4]));
    const b = new GraphBuilder(g);
    let t = b.op('Conv', ['x', b.floats('w1', [2, 2, 1, 1], [1, 0, 0, 1])], undefined, 'c1');
    t = b.op(
      'BatchNormalization',
      [
        t,
        b.floats('g', [2], [0.1, 1]),
        b.floats('bb', [2], [5, 0.5]),
        b.floats('m', [2], [0, 0]),
        b.floats('v', [2], [1, 1]),
      ],
      { epsilon: floatAttr('epsilon', 0) },
      'bn',
    );
    t = b.op('Relu', [t]);
    b.node('Conv', [t, b.floats('w2', [3, 2, 1, 1], [1, 2, 3, 4, 5, 6])], { outputs: ['y'], name: 'c2' });
    const stats = collectBnStats(m);
    foldBatchNorm(m);
    const x = new Float32Array(32).fill(0.3);
    const ref = await run(m, x, [1, 2, 4, 4]);
    const rec = equalizeCrossLayer(m, { bnStats: stats });
    const abs = rec.details.highBiasAbsorbed as { channels: number; total: number }[];
    assert.equal(abs.length, 1);
    assert.equal(abs[0].channels, 1); // channel 0: β − 3γ = 5 − 0.3 > 0; channel 1: 0.5 − 3 < 0
    const out = await run(m, x, [1, 2, 4, 4]);
    for (let i = 0; i < ref.length; i++)
      assert.ok(Math.abs(out[i] - ref[i]) <= 1e-5 * Math.abs(ref[i]) + 1e-6);
    assert.ok(stats.get('c1')!.beta[0] - 3 * stats.get('c1')!.gamma[0] < 1e-9);
  });

  test('Relu6 pairs are skipped by default and replaced by Relu on request', () => {
    const make = () => {
      const m = new Model();
      m.setOpset('', 13);
      const g = m.graph;
      g.inputs.push(valueInfo('x', DataType.FLOAT, ['N', 4]));
      g.outputs.push(valueInfo('y', DataType.FLOAT, ['N', 4]));
      const b = new GraphBuilder(g);
      const h = b.op(
        'Gemm',
        ['x', b.floats('W1', [4, 4], [1, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0.1, 0, 0, 0, 0, 1])],
        {
          transB: 1,
        },
      );
      const r = b.op('Clip', [h, b.floats('lo', [], [0]), b.floats('hi', [], [6])]);
      b.node('Gemm', [r, b.floats('W2', [4, 4], Array(16).fill(0.5))], {
        outputs: ['y'],
        attrs: { transB: 1 },
      });
      return m;
    };
    const a = make();
    const ra = equalizeCrossLayer(a);
    assert.equal(ra.changed, false);
    assert.match(JSON.stringify(ra.details.skipped), /not scale-equivariant/);
    const c = make();
    const rc = equalizeCrossLayer(c, { relu6: 'replace' });
    assert.equal(rc.changed, true);
    assert.equal(rc.details.clipReplacedByRelu, 1);
    assert.ok(
      c.graph.nodes.some((n) => n.opType === 'Relu') && !c.graph.nodes.some((n) => n.opType === 'Clip'),
    );
  });

  test('MatMul + Add layers (rank-3 activations), plain and activation-aware: float unchanged', async () => {
    const z = normalSampler(mulberry32(41));
    const build = () => {
      const m = new Model();
      m.setOpset('', 13);
      const g = m.graph;
      g.inputs.push(valueInfo('x', DataType.FLOAT, [2, 5, 16]));
      g.outputs.push(valueInfo('y', DataType.FLOAT, [2, 5, 8]));
      const b = new GraphBuilder(g);
      const rz = normalSampler(mulberry32(42));
      const w1 = Float32Array.from({ length: 16 * 32 }, (_, i) => rz() * 10 ** ((i % 32) / 16 - 1));
      let t = b.op('MatMul', ['x', b.floats('W1', [16, 32], w1)]);
      t = b.op('Add', [
        t,
        b.floats(
          'B1',
          [32],
          Array.from({ length: 32 }, () => rz()),
        ),
      ]);
      t = b.op('Relu', [t]);
      t = b.op('MatMul', [
        t,
        b.floats(
          'W2',
          [32, 8],
          Array.from({ length: 256 }, () => rz()),
        ),
      ]);
      b.node('Add', [t, b.floats('B2', [8], Array(8).fill(0.5))], { outputs: ['y'] });
      return m;
    };
    const x = Float32Array.from({ length: 160 }, () => z());
    const feeds = [{ x: f32([2, 5, 16], x) }];
    for (const aware of [false, true]) {
      const m = build();
      const ref = await run(m, x, [2, 5, 16]);
      const activationRanges = aware
        ? await measureActivationRanges(m, feeds, (mm) => Session.create(mm))
        : undefined;
      if (aware) assert.equal(activationRanges?.size, 1);
      const rec = equalizeCrossLayer(m, { activationRanges });
      assert.equal((rec.details.pairs as unknown[]).length, 1);
      const out = await run(m, x, [2, 5, 16]);
      for (let i = 0; i < ref.length; i++)
        assert.ok(Math.abs(out[i] - ref[i]) <= 1e-4 * (1 + Math.abs(ref[i])));
    }
  });
});
