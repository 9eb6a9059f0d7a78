/**
 * Softmax bias correction (research note S08): the synthetic table (row sums and SQNR(P·V) before → after) and a
 * 1-layer two-head attention ONNX graph quantized W8A8 with an 8-bit [0, 1] softmax, run by ONNX Runtime.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import {
  correctSoftmaxBias,
  fixedSoftmaxEncoding,
  softmaxBiasExperiment,
} from '../../src/ptq/softmax-bias.js';
import { parseRangeMethod } from '../../src/quant/analyzers/index.js';
import { exportQdq } from '../../src/quant/export/qdq.js';
import { quantizeModel } from '../../src/quant/quantize.js';
import { calibrate, calibrationPlan } from '../../src/quant/sim/calibrate.js';
import { QuantSim } from '../../src/quant/sim/quantsim.js';
import { getTarget } from '../../src/quant/sim/targets.js';
import { type Feeds, Session } from '../../src/runtime/session.js';
import { attentionGraph, mulberry32, normalSampler } from '../quant/synthetic.js';

const f32 = (dims: number[], data: Float32Array) => ({ dtype: DataType.FLOAT, dims, data });
const makeRunner = (m: Model) => Session.create(m);

// A 1-layer, two-head attention graph (L = 256 keys) and its input samples.
const L = 256;
const D = 64;
const H = 2;
const _dh = D / H;
const build = (): Model => attentionGraph(L, D, H);
const m = build();
const sample = (seed: number): Feeds => {
  const zz = normalSampler(mulberry32(seed));
  return {
    x: f32(
      [1, L, D],
      Float32Array.from({ length: L * D }, () => zz()),
    ),
  };
};

const calib = [1, 2, 3, 4].map(sample);
const held = [11, 12, 13].map(sample);
let refOut: Float32Array[] | undefined;

/** SQNR (dB) of a quantized attention model's output against the float model's, over the held-out samples. */
async function heldOutSqnr(q: Model): Promise<number> {
  if (!refOut) {
    const ref = await Session.create(m);
    refOut = [];
    for (const f of held) refOut.push((await ref.run(f)).y.data as Float32Array);
    await ref.release();
  }
  const s = await Session.create(q);
  let sig2 = 0;
  let noise = 0;
  for (let i = 0; i < held.length; i++) {
    const out = (await s.run(held[i])).y.data as Float32Array;
    for (let j = 0; j < out.length; j++) {
      sig2 += refOut[i][j] ** 2;
      noise += (refOut[i][j] - out[j]) ** 2;
    }
  }
  await s.release();
  return 10 * Math.log10(sig2 / noise);
}

describe('softmax bias correction', () => {
  test('S08 table: mean Σp̂, corrected row sums and SQNR(P·V) before → after', () => {
    // keys, σ, mean Σp̂, SQNR before, SQNR after (research note S08, [C]).
    const table: [number, number, number, number, number][] = [
      [64, 3, 0.989, 38.4, 42.5],
      [256, 1, 0.946, 24.5, 31.7],
      [256, 3, 0.964, 29.1, 38.0],
      [1024, 1, 0.524, 6.4, 29.8],
      [1024, 3, 0.907, 20.9, 32.6],
    ];
    for (const [keys, sigma, sum, before, after] of table) {
      const r = softmaxBiasExperiment({ keys, sigma, seed: keys + sigma });
      console.log(
        `L=${keys} σ=${sigma}: Σp̂ ${r.meanSum.toFixed(3)} → ${r.correctedSum.toFixed(4)} (S08 ${sum}), ` +
          `p̂=0 ${r.fractionZero.toFixed(2)}, β ${r.betaLsb.toFixed(3)} LSB, ` +
          `SQNR ${r.sqnrBefore.toFixed(1)} → ${r.sqnrAfter.toFixed(1)} dB (S08 ${before} → ${after})`,
      );
      assert.ok(Math.abs(r.meanSum - sum) <= 0.01, `Σp̂ ${r.meanSum} vs ${sum}`);
      assert.ok(Math.abs(r.correctedSum - 1) <= 0.003, `corrected Σ ${r.correctedSum}`);
      const gain = r.sqnrAfter - r.sqnrBefore;
      assert.ok(
        Math.abs(gain - (after - before)) <= 1.5,
        `gain ${gain.toFixed(2)} vs ${(after - before).toFixed(1)}`,
      );
    }
  });

  test('attention graph (2 heads, L=256) W8A8 with an 8-bit [0, 1] softmax: ≥ 5 dB better', async () => {
    const quantize = async (correct: boolean) => {
      const model = build();
      const sim = new QuantSim(model, { target: getTarget('ort-cpu') });
      sim.computeParameterEncodings();
      const method = parseRangeMethod('minmax');
      const plan = calibrationPlan(sim, method);
      const r = await Session.create(plan.model);
      await calibrate(sim, plan, r, calib, { method });
      await r.release();
      // The S08 setting: the softmax output on the fixed range [0, 1] (s = 1/255).
      const sm = model.graph.nodes.find((n) => n.opType === 'Softmax')!.outputs[0];
      sim.setEncoding(sm, fixedSoftmaxEncoding(8));
      const rec = correct
        ? await correctSoftmaxBias(sim, calib, makeRunner, { perHead: true })
        : { pass: '', changed: false, details: {} };
      sim.finalizeEncodings();
      return { db: await heldOutSqnr(exportQdq(sim).model), rec };
    };
    const plain = await quantize(false);
    const corrected = await quantize(true);
    const c = (corrected.rec.details.corrected as { betaLsb: number[]; matmuls: string[] }[])[0];
    console.log(
      `attention W8A8, 8-bit softmax: SQNR ${plain.db.toFixed(1)} → ${corrected.db.toFixed(1)} dB, ` +
        `β per head ${c.betaLsb.map((v) => v.toFixed(3)).join(', ')} LSB`,
    );
    assert.deepEqual(c.matmuls, ['pv']);
    assert.equal(c.betaLsb.length, H);
    assert.ok(corrected.db - plain.db >= 5, `gain ${(corrected.db - plain.db).toFixed(2)} dB`);
  });

  test('quantizeModel with softmaxBias (qnnx quantize --softmax-bias): the pass runs after calibration', async () => {
    const sqnr = async (softmaxBias: boolean) => {
      const { model, report } = await quantizeModel(build(), calib, makeRunner, { softmaxBias });
      return { db: await heldOutSqnr(model), report };
    };
    const plain = await sqnr(false);
    const corrected = await sqnr(true);
    const rec = corrected.report.passes.find((p) => p.pass === 'softmax-bias-correction');
    assert.ok(rec?.changed, 'softmax bias correction recorded as a pass');
    assert.ok(corrected.report.timings.softmaxBias > 0);
    assert.equal(
      plain.report.passes.some((p) => p.pass === 'softmax-bias-correction'),
      false,
    );
    console.log(`quantizeModel softmaxBias: SQNR ${plain.db.toFixed(1)} → ${corrected.db.toFixed(1)} dB`);
    assert.ok(corrected.db - plain.db >= 3, `gain ${(corrected.db - plain.db).toFixed(2)} dB`);
  });
});
