/**
 * AdaRound: the S13 acceptance test 4 (a synthetic correlated Linear), the two gradient engines against each
 * other, the export path (AdaRound's integers are what the QDQ file holds), W4A8 on the bundled Fashion-MNIST
 * CNN against nearest rounding, and int4 weights on PP-OCRv4 rec (rendered text lines) against nearest rounding.
 * Iteration counts are small here (lr 1e-2 or 2e-2); the full defaults (10k/15k iterations, lr 1e-3) are for the
 * benchmark.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { openDataSource } from '../../src/data/index.js';
import { loadModel } from '../../src/io/model-file.js';
import { GraphBuilder, makeAttribute, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { unpackSubByte } from '../../src/onnx/formats.js';
import { adaround, adaroundLayer, type LayerProblem } from '../../src/ptq/adaround.js';
import { parseRangeMethod } from '../../src/quant/analyzers/index.js';
import { encodingFromRange, groupRanges, scaleDimsFor } from '../../src/quant/encoding.js';
import { exportQdq, requiredOpset } from '../../src/quant/export/qdq.js';
import { buildSim, prepareModel, quantizeModel } from '../../src/quant/quantize.js';
import { quantize } from '../../src/quant/quantizer.js';
import { type Granularity, intScheme } from '../../src/quant/scheme.js';
import { calibrate, calibrationPlan } from '../../src/quant/sim/calibrate.js';
import { QuantSim } from '../../src/quant/sim/quantsim.js';
import { getTarget } from '../../src/quant/sim/targets.js';
import { Session } from '../../src/runtime/session.js';
import { Rng } from '../../src/train/builder/prng.js';
import { accuracyPct } from './fashion.js';
import { CALIB_LINES, EVAL_LINES, REC, recLines, recOutputs, recScore, recSkip } from './rec-lines.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const EX = path.join(ROOT, 'examples', 'fashion-mnist');
/** Float top-1 accuracy on the 1000 bundled test images, in percent. */
const FLOAT_ACC = 92.1;

function encodingFor(
  w: Float32Array,
  dims: number[],
  bits: number,
  granularity: Granularity,
  narrow = false,
) {
  const scheme = intScheme(bits, { narrow, granularity });
  const { min, max } = groupRanges(w, dims, granularity);
  return encodingFromRange(scheme, min, max, scaleDimsFor(dims, granularity));
}

describe('AdaRound on one layer', () => {
  test('S13 test 4: Linear(256→128), 4-bit per-channel, correlated inputs: MSE ≤ 0.45x nearest, all h in {0,1}', async () => {
    const rng = new Rng(1);
    const [K, O, N] = [256, 128, 2048];
    // x = z·C with z ~ N(0, I) and C a random mixing matrix: strongly correlated input features
    const C = Float64Array.from({ length: K * K }, () => rng.normal() / Math.sqrt(K));
    const X = new Float32Array(N * K);
    const z = new Float64Array(K);
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) z[k] = rng.normal();
      for (let j = 0; j < K; j++) {
        let a = 0;
        for (let k = 0; k < K; k++) a += z[k] * C[k * K + j];
        X[n * K + j] = a;
      }
    }
    // PyTorch's default Linear init, U(−1/√K, 1/√K)
    const W = Float32Array.from({ length: O * K }, () => rng.uniform(-1 / 16, 1 / 16));
    const B = Float32Array.from({ length: O }, () => rng.uniform(-1 / 16, 1 / 16));
    const T = new Float32Array(N * O);
    for (let n = 0; n < N; n++)
      for (let o = 0; o < O; o++) {
        let a = B[o];
        for (let k = 0; k < K; k++) a += X[n * K + k] * W[o * K + k];
        T[n * O + o] = a;
      }
    const encoding = encodingFor(W, [O, K], 4, { kind: 'channel', axis: 0 });
    const r = await adaroundLayer(
      {
        opType: 'Gemm',
        attributes: [makeAttribute('transB', 1)],
        weight: { dims: [O, K], data: W },
        bias: { dims: [O], data: B },
        encoding,
        x: { data: X, dims: [N, K], samples: N },
        target: { data: T, dims: [N, O], samples: N },
      },
      { iterations: 3000, learningRate: 1e-2 },
    );
    const ratio = r.mseAdaRound / r.mseNearest;
    console.log(
      `S13 test 4: MSE nearest ${r.mseNearest.toExponential(3)}, AdaRound ${r.mseAdaRound.toExponential(3)} ` +
        `(${ratio.toFixed(3)}x; paper 0.42x), ${(100 * r.changed).toFixed(1)} % rounded differently, ` +
        `${(100 * r.undecided).toFixed(2)} % undecided, engine ${r.engine}, ${r.seconds.toFixed(1)} s`,
    );
    assert.ok(ratio <= 0.45, `MSE ratio ${ratio}`);
    assert.equal(r.fellBack, false);
    assert.equal(r.undecided, 0);
    assert.ok(r.changed > 0.1 && r.changed < 0.25, `changed ${r.changed}`);
    assert.equal(r.mismatches, 0);
    // the returned W̃ is exactly s·q and quantizes back to q
    const back = quantize(r.weight, [O, K], encoding);
    assert.deepEqual(Array.from(back), Array.from(r.q));
  });

  test("engines 'gram' and 'sampled' (every row in the batch) agree on a strided, padded, grouped Conv", async () => {
    const rng = new Rng(7);
    const [N, C, H, Wd, O, G] = [6, 4, 9, 7, 6, 2];
    const dims = [O, C / G, 3, 3];
    const w = Float32Array.from({ length: O * (C / G) * 9 }, () => rng.normal() * 0.3);
    const bias = Float32Array.from({ length: O }, () => rng.normal() * 0.1);
    const x = Float32Array.from({ length: N * C * H * Wd }, () => rng.normal());
    const attributes = [
      makeAttribute('group', G),
      makeAttribute('strides', [2, 1]),
      makeAttribute('pads', [1, 0, 1, 2]),
      makeAttribute('kernel_shape', [3, 3]),
    ];
    // the float target from ONNX Runtime itself, with a perturbed input playing x̃
    const m = new Model();
    const b = new GraphBuilder(m.graph);
    m.graph.inputs.push(valueInfo('x', DataType.FLOAT, [N, C, H, Wd]));
    const y = b.node('Conv', ['x', b.floats('w', dims, w), b.floats('b', [O], bias)], {
      attrs: Object.fromEntries(attributes.map((a) => [a.name, a])),
    }).outputs[0];
    m.graph.outputs.push(valueInfo(y, DataType.FLOAT));
    const s = await Session.create(m);
    const t = (await s.run({ x: { dtype: DataType.FLOAT, dims: [N, C, H, Wd], data: x } }))[y];
    await s.release();
    const xt = x.map((v) => v + 0.05 * rng.normal());
    const p: LayerProblem = {
      opType: 'Conv',
      attributes,
      weight: { dims, data: w },
      bias: { dims: [O], data: bias },
      encoding: encodingFor(w, dims, 3, { kind: 'channel', axis: 0 }, true),
      x: { data: xt, dims: [N, C, H, Wd], samples: N },
      target: { data: t.data as Float32Array, dims: t.dims, samples: N },
    };
    const opts = { iterations: 200, learningRate: 1e-2, batchSize: N };
    const gram = await adaroundLayer(p, { ...opts, engine: 'gram' });
    const sampled = await adaroundLayer(p, { ...opts, engine: 'sampled' });
    assert.equal(gram.engine, 'gram');
    assert.equal(sampled.engine, 'sampled');
    assert.ok(Math.abs(gram.mseNearest - sampled.mseNearest) <= 1e-6 * sampled.mseNearest);
    assert.ok(gram.mseAdaRound < gram.mseNearest, `${gram.mseAdaRound} vs ${gram.mseNearest}`);
    // same gradients up to float32 summation order: the same rounding almost everywhere
    let differ = 0;
    for (let i = 0; i < gram.q.length; i++) if (gram.q[i] !== sampled.q[i]) differ++;
    assert.ok(differ <= 2, `${differ} of ${gram.q.length} roundings differ`);
    assert.ok(Math.abs(gram.mseAdaRound - sampled.mseAdaRound) <= 0.02 * sampled.mseAdaRound);
  });

  test('a learned rounding worse than nearest falls back to nearest rounding (per layer)', async () => {
    // Adam with lr 10 saturates every V after one step at the sign of the first gradient, which at the soft start
    // (h = fractional part, W̃ = W) is noise from the perturbed input: an essentially random up/down rounding,
    // far worse than nearest. The fallback must return nearest rounding and report what happened.
    const rng = new Rng(5);
    const [K, O, N] = [32, 16, 256];
    const w = Float32Array.from({ length: O * K }, () => rng.normal() / Math.sqrt(K));
    const x = Float32Array.from({ length: N * K }, () => rng.normal());
    const t = new Float32Array(N * O);
    for (let n = 0; n < N; n++)
      for (let o = 0; o < O; o++) {
        let a = 0;
        for (let k = 0; k < K; k++) a += x[n * K + k] * w[o * K + k];
        t[n * O + o] = a;
      }
    const encoding = encodingFor(w, [O, K], 4, { kind: 'channel', axis: 0 }, true);
    const p: LayerProblem = {
      opType: 'Gemm',
      attributes: [makeAttribute('transB', 1)],
      weight: { dims: [O, K], data: w },
      encoding,
      x: { data: x.map((v) => v + 0.1 * rng.normal()), dims: [N, K], samples: N },
      target: { data: t, dims: [N, O], samples: N },
    };
    const opts = { iterations: 5, learningRate: 10 };
    const raw = await adaroundLayer(p, { ...opts, fallback: false });
    assert.equal(raw.fellBack, false);
    assert.equal(raw.mseAdaRound, raw.mseLearned);
    assert.ok(raw.mseLearned > 1.5 * raw.mseNearest, `${raw.mseLearned} vs ${raw.mseNearest}`);
    const r = await adaroundLayer(p, opts);
    assert.equal(r.fellBack, true);
    assert.equal(r.mseLearned, raw.mseLearned);
    assert.equal(r.mseAdaRound, r.mseNearest);
    assert.equal(r.changed, 0);
    assert.equal(r.mismatches, 0);
    // nearest rounding exactly: the quantizer's own integers, and W̃ = s·q
    assert.deepEqual(Array.from(r.q), Array.from(quantize(w, [O, K], encoding)));
    assert.deepEqual(Array.from(quantize(r.weight, [O, K], encoding)), Array.from(r.q));
  });
});

const makeRunner = (m: Model) => Session.create(m, { graphOptimizationLevel: 'all' });

/** quantizeModel's steps with AdaRound between the weight encodings and calibration (where it is wired). */
async function w4a8(withAdaRound: boolean) {
  const model = loadModel(path.join(EX, 'model.onnx'));
  const options = { preset: 'w4a8' as const };
  prepareModel(model, requiredOpset(buildSim(model, options)));
  const sim = buildSim(model, options);
  sim.computeParameterEncodings();
  const data = await openDataSource(path.join(EX, 'calib'), { inputName: 'input' });
  const report = withAdaRound
    ? await adaround(sim, data, makeRunner, { iterations: 300, learningRate: 1e-2 })
    : undefined;
  const method = parseRangeMethod('minmax');
  const plan = calibrationPlan(sim, method);
  const runner = await makeRunner(plan.model);
  const t0 = performance.now();
  await calibrate(sim, plan, runner, data, { method });
  const calibSeconds = (performance.now() - t0) / 1000;
  await runner.release();
  sim.finalizeEncodings();
  return { sim, report, calibSeconds, exported: exportQdq(sim).model };
}

describe('quantizeModel: bias correction after AdaRound', () => {
  test('corrects (W − W̃)·E[x] with the float weights kept aside (it used to find nothing to correct)', async () => {
    const calib = await openDataSource(path.join(EX, 'calib'), { inputName: 'input', limit: 64 });
    const ada = { iterations: 60, learningRate: 1e-2 };
    const run = (options: Parameters<typeof quantizeModel>[3]) =>
      quantizeModel(loadModel(path.join(EX, 'model.onnx')), calib, makeRunner, {
        preset: 'w4a8',
        ...options,
      });
    const plain = await run({});
    const rounded = await run({ adaround: ada });
    const corrected = await run({ adaround: ada, biasCorrection: 'empirical' });
    const bc = corrected.report.passes.find((p) => p.pass === 'bias-correction')!;
    assert.equal(bc.details.corrected, 4);
    const layers = bc.details.layers as { node: string; maxShift: number }[];
    for (const l of layers) assert.ok(l.maxShift > 0, `${l.node}: shift ${l.maxShift}`);
    // The first Conv reads the image (one channel): its correction is Σ_k (W − W̃)[o, k] · mean(x).
    const conv = plain.sim.model.graph.nodes.find((n) => n.opType === 'Conv')!;
    const w = plain.sim.model.graph.initializer(conv.inputs[1]!)!;
    const wt = corrected.sim.model.graph.initializer(conv.inputs[1]!)!.data as Float32Array;
    // AdaRound is seeded: the same W̃ with and without bias correction
    assert.deepEqual(
      Array.from(wt),
      Array.from(rounded.sim.model.graph.initializer(conv.inputs[1]!)!.data as Float32Array),
    );
    let sum = 0;
    let n = 0;
    for await (const f of calib) {
      const x = f.get('input')!.data as Float32Array;
      for (const v of x) sum += v;
      n += x.length;
    }
    const mean = sum / n;
    const b0 = rounded.sim.model.graph.initializer(conv.inputs[2]!)!.data as Float32Array;
    const b1 = corrected.sim.model.graph.initializer(conv.inputs[2]!)!.data as Float32Array;
    const O = w.dims[0]!;
    const per = w.size / O;
    const wf = w.data as Float32Array;
    for (let o = 0; o < O; o++) {
      let d = 0;
      for (let k = 0; k < per; k++) d += wf[o * per + k]! - wt[o * per + k]!;
      const want = d * mean;
      assert.ok(
        Math.abs(b1[o]! - b0[o]! - want) < 1e-5 + 1e-3 * Math.abs(want),
        `channel ${o}: ${b1[o]! - b0[o]!} vs ${want}`,
      );
    }
    console.log(
      `W4A8 FMNIST, AdaRound (60 iterations, 64 images): ${await accuracyPct(rounded.model)} %, ` +
        `+ bias correction ${await accuracyPct(corrected.model)} % (float ${FLOAT_ACC} %)`,
    );
  });
});

describe('AdaRound on the Fashion-MNIST CNN, W4A8 (int4 per-channel weights, uint8 activations)', () => {
  test('accuracy within 1 point of float (nearest rounding: reported); the file holds the AdaRounded integers', async () => {
    const nearest = await w4a8(false);
    const ada = await w4a8(true);
    const accNearest = await accuracyPct(nearest.exported);
    const acc = await accuracyPct(ada.exported);
    const r = ada.report!;
    for (const l of r.layers) {
      console.log(
        `  ${l.node}: MSE ${l.mseNearest.toExponential(2)} -> ${l.mseAdaRound.toExponential(2)} ` +
          `(${(l.mseAdaRound / l.mseNearest).toFixed(2)}x), ${(100 * l.changed).toFixed(1)} % changed, ` +
          `${l.engine}, ${l.seconds.toFixed(1)} s`,
      );
    }
    console.log(
      `W4A8 FMNIST: float ${FLOAT_ACC} %, nearest ${accNearest} %, AdaRound ${acc} % (${r.layers.length} ` +
        `layers, ${r.samples} samples, ${r.seconds.toFixed(1)} s; calibration ${ada.calibSeconds.toFixed(2)} s)`,
    );
    assert.equal(r.layers.length, 4);
    assert.equal(r.samples, 256);
    assert.ok(acc >= FLOAT_ACC - 1, `AdaRound accuracy ${acc} %`);
    for (const l of r.layers) {
      assert.equal(l.mismatches, 0);
      assert.ok(l.mseAdaRound < l.mseNearest, `${l.node}: ${l.mseAdaRound} vs ${l.mseNearest}`);
    }
    // The exported int4 weights are quantize(W̃): the same integers AdaRound chose.
    const g = ada.exported.graph;
    for (const l of r.layers) {
      const q = ada.sim.quantizers.get(l.weight)!;
      const w = ada.sim.model.graph.initializer(l.weight)!;
      const want = quantize(w.data as Float32Array, w.dims, q.encoding!);
      const dq = g.nodes.find(
        (n) => n.opType === 'DequantizeLinear' && n.inputs[0].startsWith(`${l.weight}_quantized`),
      )!;
      const t = g.initializer(dq.inputs[0])!;
      assert.equal(t.dtype, DataType.INT4);
      assert.deepEqual(Array.from(unpackSubByte(t.data as Uint8Array, t.size, 4, true)), Array.from(want));
    }
  });
});

describe('AdaRound on PP-OCRv4 rec, int4 per-channel weights (weights only, float activations)', () => {
  test('output SQNR and per-timestep top-1 agreement with float, 8 lines: AdaRound well above nearest', {
    skip: recSkip(),
  }, async () => {
    const calib = await recLines(CALIB_LINES);
    const evalSet = await recLines(EVAL_LINES);
    const ref = await recOutputs(loadModel(REC), evalSet);
    const quantized = async (withAdaRound: boolean) => {
      const model = loadModel(REC);
      prepareModel(model, 21);
      const sim = new QuantSim(model, {
        target: getTarget('ort-cpu'),
        weights: { bits: 4, signed: true, symmetry: 'symmetric', narrow: true, granularity: 'channel' },
        weightOnly: true,
      });
      sim.computeParameterEncodings();
      const r = withAdaRound
        ? await adaround(sim, calib, makeRunner, { iterations: 50, learningRate: 2e-2 })
        : undefined;
      sim.finalizeEncodings();
      return { ...recScore(ref, await recOutputs(exportQdq(sim).model, evalSet)), report: r };
    };
    const nearest = await quantized(false);
    const ada = await quantized(true);
    const fmt = (r: { sqnr: number; agreement: number }) =>
      `${r.sqnr.toFixed(2)} dB, ${r.agreement.toFixed(1)} %`;
    console.log(
      `PP-OCRv4 rec W4 on ${EVAL_LINES.length} lines (${ref[0].dims[1]} steps each): nearest ${fmt(nearest)}; ` +
        `AdaRound (50 iterations, ${CALIB_LINES.length} calibration lines) ${fmt(ada)} ` +
        `(${ada.report!.seconds.toFixed(1)} s, ${ada.report!.layers.length} layers)`,
    );
    assert.equal(ada.report!.layers.length, 47);
    assert.ok(ada.sqnr > nearest.sqnr + 4, `SQNR ${ada.sqnr} vs ${nearest.sqnr}`);
    assert.ok(ada.agreement > nearest.agreement + 20, `agreement ${ada.agreement} vs ${nearest.agreement}`);
  });
});
