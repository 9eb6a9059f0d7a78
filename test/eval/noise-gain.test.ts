import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { clsInput, detInput, MODELS } from '../../bench/assets/inputs.js';
import { measureNoiseGain, nextLevel, noiseSites } from '../../src/eval/noise-gain.js';
import { loadModel } from '../../src/io/model-file.js';
import { GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { cloneModel, Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { parseRangeMethod } from '../../src/quant/analyzers/index.js';
import { quantizeModel } from '../../src/quant/quantize.js';
import { calibrate, calibrationPlan } from '../../src/quant/sim/calibrate.js';
import { QuantSim } from '../../src/quant/sim/quantsim.js';
import { getTarget } from '../../src/quant/sim/targets.js';
import type { Feeds } from '../../src/runtime/session.js';
import { Session } from '../../src/runtime/session.js';
import { ppocrSkip } from '../helpers/ppocr.js';
import { mulberry32, normalSampler } from '../quant/synthetic.js';
import { assertQnnxError } from '../runtime/helpers.js';

const makeRunner = (m: Model) => Session.create(m);

const B = 64;
const K = 256;
const N = 64;

/**
 * y = x·W with iid N(0, 1) entries: relative noise on W or on x reaches y at the same SQNR (gain 0 dB).
 * With `c`, y = x·W − x·(c·W) through two MatMuls: the signal is (1 − c)·x·W but the two weights' errors are
 * independent, so the gain is 10·log10((1 + c²) / (1 − c)²) dB (22.6 dB for c = 0.9).
 */
function matmulModel(c?: number): Model {
  const z = normalSampler(mulberry32(11));
  const m = new Model();
  m.setOpset('', 13);
  const g = m.graph;
  g.inputs.push(valueInfo('x', DataType.FLOAT, [B, K]));
  g.outputs.push(valueInfo('y', DataType.FLOAT, [B, N]));
  const b = new GraphBuilder(g);
  const w = Float32Array.from({ length: K * N }, () => z());
  const xw = b.op('MatMul', ['x', b.floats('W', [K, N], w)]);
  if (c === undefined) b.node('Identity', [xw], { outputs: ['y'] });
  else {
    const xw2 = b.op('MatMul', [
      'x',
      b.floats(
        'W2',
        [K, N],
        w.map((v) => c * v),
      ),
    ]);
    b.node('Sub', [xw, xw2], { outputs: ['y'] });
  }
  return m;
}

function samples(n: number, seed: number): Feeds[] {
  const z = normalSampler(mulberry32(seed));
  return Array.from({ length: n }, () => ({
    x: { dtype: DataType.FLOAT, dims: [B, K], data: Float32Array.from({ length: B * K }, () => z()) },
  }));
}

async function calibrated(model: Model): Promise<QuantSim> {
  const sim = new QuantSim(model, { target: getTarget('ort-cpu') });
  sim.computeParameterEncodings();
  const method = parseRangeMethod('minmax');
  const plan = calibrationPlan(sim, method);
  const r = await Session.create(plan.model);
  await calibrate(sim, plan, r, samples(4, 1), { method });
  await r.release();
  sim.finalizeEncodings();
  return sim;
}

describe('noise gain (measureNoiseGain)', () => {
  test('x·W: noise at L dB on W gives an L dB output (gain 0); on x and x·W L − 3 dB, on all three L − 4.8 dB', async () => {
    const sim = await calibrated(matmulModel());
    assert.deepEqual(noiseSites(sim, 'weights'), ['W']);
    // the MatMul's input and its output (a graph output) are quantized
    assert.deepEqual(noiseSites(sim, 'activations'), ['x', 'MatMul_out']);
    const r = await measureNoiseGain(sim, samples(4, 2), {
      levelDb: 40,
      targetDb: 30,
      measureQuantized: true,
    });
    assert.equal(r.samples, 4);
    assert.equal(r.outputName, 'y');
    const [w, a, all] = r.entries;
    assert.equal(w!.site, 'weights');
    assert.equal(a!.site, 'activations');
    assert.equal(all!.site, 'all');
    // 16,384 output values: the estimate of the noise power is good to about ±0.1 dB
    assert.ok(Math.abs(w!.gainDb) < 0.3, `weights gain ${w!.gainDb}`);
    assert.ok(Math.abs(a!.gainDb - 3.01) < 0.3, `activations gain ${a!.gainDb}`);
    assert.ok(Math.abs(all!.gainDb - 4.77) < 0.3, `all gain ${all!.gainDb}`);
    // linear: the same gain 10 dB lower
    for (const e of r.entries)
      assert.ok(Math.abs(e.linearityDb!) < 0.3, `${e.site} linearity ${e.linearityDb}`);
    // for a 30 dB output every tensor needs 30 dB (34.8 dB when all three add noise)
    assert.ok(Math.abs(w!.levelForTargetDb! - 30) < 0.6, `weights level ${w!.levelForTargetDb}`);
    assert.ok(Math.abs(all!.levelForTargetDb! - 34.77) < 0.6, `all level ${all!.levelForTargetDb}`);
    assert.ok(Math.abs(all!.levelForTargetOutputDb! - 30) <= 0.5);
    // the real int8 quantizers: per-channel weights and per-tensor uint8 input, each around 40 dB on N(0, 1)
    for (const e of r.entries) {
      assert.ok(
        e.quantizedSqnrDb! > 25 && e.quantizedSqnrDb! < 50,
        `${e.site} quantized ${e.quantizedSqnrDb}`,
      );
      assert.ok(Math.abs(e.effectiveDb! - (e.quantizedSqnrDb! + e.gainDb)) < 1e-9);
    }
    // the sim's enabled flags are restored
    assert.ok([...sim.quantizers.values()].every((q) => q.enabled));
  });

  test('x·W − x·(0.9·W): 22.6 dB of weight-noise gain; 52.6 dB per weight needed for a 30 dB output', async () => {
    const sim = await calibrated(matmulModel(0.9));
    assert.deepEqual(noiseSites(sim, 'weights').sort(), ['W', 'W2']);
    const r = await measureNoiseGain(sim, samples(4, 2), { sites: ['weights'], levelDb: 50, targetDb: 30 });
    const expected = 10 * Math.log10((1 + 0.81) / 0.01);
    const [w] = r.entries;
    assert.ok(Math.abs(w!.gainDb - expected) < 0.3, `gain ${w!.gainDb} vs ${expected}`);
    assert.ok(Math.abs(w!.levelForTargetDb! - (30 + expected)) < 0.6, `level ${w!.levelForTargetDb}`);
  });

  test('bad input: a float model without the sim tensors, no samples, a bad level', async () => {
    const sim = await calibrated(matmulModel());
    const renamed = cloneModel(sim.model);
    const t = renamed.graph.initializer('W')!;
    renamed.graph.initializers.delete('W');
    t.name = 'W2';
    renamed.graph.addInitializer(t);
    renamed.graph.nodes[0]!.inputs[1] = 'W2';
    await assertQnnxError(
      () => measureNoiseGain(sim, samples(1, 2), { floatModel: renamed }),
      'E_USAGE',
      "tensor 'W' of the QuantSim is not in the float model",
    );
    await assertQnnxError(() => measureNoiseGain(sim, []), 'E_DATA', 'no samples');
    await assertQnnxError(
      () => measureNoiseGain(sim, samples(1, 2), { levelDb: -3 }),
      'E_USAGE',
      'noise level',
    );
  });

  test('nextLevel: secant steps until bracketed, then interpolation inside the bracket', () => {
    // one point, 10 dB short: step 10 dB (slope 1)
    assert.equal(nextLevel([[40, 20]], 30), 50);
    // slope 0.5 from two points below the target: 2x the shortfall, capped at 30 dB
    assert.equal(
      nextLevel(
        [
          [40, 10],
          [50, 15],
        ],
        30,
      ),
      80,
    );
    // bracketed: linear interpolation between the nearest points on each side
    assert.equal(
      nextLevel(
        [
          [40, 10],
          [50, 15],
          [80, 60],
        ],
        30,
      ),
      50 + 30 * (15 / 45),
    );
    // interpolation kept off the ends of the bracket
    assert.equal(
      nextLevel(
        [
          [50, 29.99],
          [60, 60],
        ],
        30,
      ),
      51,
    );
    // above the target from the start: step down
    assert.equal(nextLevel([[40, 45]], 30), 25);
  });
});

// Real third-party models (rendered inputs, as bench/noise-gain.ts): the gains BENCHMARKS.md reports.
const skipReal = ppocrSkip();

describe('noise gain of PP-OCR models (W8A8 placement)', { skip: skipReal }, () => {
  test('cls (MobileNetV3): about 20 dB of gain, about 56 dB per quantizer needed for 30 dB; plain int8 falls short', async () => {
    const calib = await Promise.all(Array.from({ length: 16 }, (_, i) => clsInput(i)));
    const held = await Promise.all(Array.from({ length: 16 }, (_, i) => clsInput(100 + i)));
    const { sim } = await quantizeModel(loadModel(MODELS.cls), calib, makeRunner, {});
    const r = await measureNoiseGain(sim, held, { sites: ['all'], targetDb: 30, measureQuantized: true });
    const [all] = r.entries;
    console.log(
      `PP-OCR cls: gain ${all!.gainDb.toFixed(1)} dB, ${all!.levelForTargetDb!.toFixed(1)} dB needed for 30 dB, ` +
        `int8 worth ${all!.effectiveDb!.toFixed(1)} dB`,
    );
    assert.ok(all!.gainDb > 15 && all!.gainDb < 26, `gain ${all!.gainDb}`);
    assert.ok(all!.levelForTargetDb! > 50 && all!.levelForTargetDb! < 61, `needed ${all!.levelForTargetDb}`);
    // plain min/max W8A8 (no bias correction) is worth 35-45 dB: 10-20 dB short of 30 dB at the output
    assert.ok(all!.effectiveDb! > 33 && all!.effectiveDb! < 46, `worth ${all!.effectiveDb}`);
    assert.ok(all!.levelForTargetDb! - all!.effectiveDb! > 5);
  });

  test('det (PP-LCNetV3) at 320×320: over 20 dB of gain; int8 is worth far less than 30 dB needs', async () => {
    const calib = await Promise.all([1, 2, 3].map((i) => detInput(i, 320, 320)));
    const held = await Promise.all([101, 102].map((i) => detInput(i, 320, 320)));
    const { sim } = await quantizeModel(loadModel(MODELS.det), calib, makeRunner, {});
    const r = await measureNoiseGain(sim, held, { sites: ['all'], targetDb: 30, measureQuantized: true });
    const [all] = r.entries;
    console.log(
      `PP-OCR det 320: gain ${all!.gainDb.toFixed(1)} dB, ${all!.levelForTargetDb!.toFixed(1)} dB needed for 30 dB, ` +
        `int8 worth ${all!.effectiveDb!.toFixed(1)} dB`,
    );
    assert.ok(all!.gainDb > 20, `gain ${all!.gainDb}`);
    assert.ok(
      all!.levelForTargetDb! - all!.effectiveDb! > 12,
      `${all!.levelForTargetDb} vs ${all!.effectiveDb}`,
    );
  });
});
