import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { readNpy } from '../../src/data/index.js';
import { compareModels, evaluateModel } from '../../src/eval/compare.js';
import { DataType } from '../../src/onnx/dtype.js';
import { type Feeds, type Runner, Session, type ValueMeta } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';
import { assertQnnxError } from '../runtime/helpers.js';
import { FLOAT_ACCURACY, IMAGES, MODEL, perturbedModel, testImages, testLabels } from './helpers.js';

describe('compareModels on Fashion-MNIST (1000 bundled test images)', () => {
  let a: Session;
  let b: Session;
  let noisy: Session;
  let labels: BigInt64Array;
  before(async () => {
    a = await Session.create(MODEL);
    b = await Session.create(MODEL);
    // Weights + Gaussian noise of 5 % of each weight tensor's RMS.
    noisy = await Session.create(perturbedModel(0.05), { name: 'noisy' });
    labels = await testLabels();
  });
  after(async () => {
    await Promise.all([a.release(), b.release(), noisy.release()]);
  });

  test('the model against itself: SQNR +Infinity, accuracy 92.1 % for both, full agreement', async () => {
    let calls = 0;
    const r = await compareModels(a, b, await testImages(), {
      labels,
      onProgress: (done, total) => {
        calls++;
        assert.equal(total, 1000);
        assert.equal(done, calls);
      },
    });
    assert.equal(r.samples, 1000);
    assert.equal(calls, 1000);
    assert.deepEqual(Object.keys(r.outputs), ['logits']);
    const m = r.outputs.logits!;
    assert.equal(m.sqnrDb, Number.POSITIVE_INFINITY);
    assert.equal(m.mse, 0);
    assert.equal(m.maxAbs, 0);
    assert.equal(m.count, 10_000);
    assert.deepEqual(m.dims, [1, 10]);
    // examples/fashion-mnist/README.md: 921/1000 for torch and for ONNX Runtime.
    assert.equal(r.accuracy, FLOAT_ACCURACY);
    assert.equal(r.referenceAccuracy, FLOAT_ACCURACY);
    assert.deepEqual(r.accuracyDetail?.candidate, { accuracy: 0.921, correct: 921, total: 1000, k: 1 });
    assert.equal(r.agreement, 1);
    assert.equal(r.scoreOutput, 'logits');
    assert.equal(r.latencyMs.runs, 1000);
    assert.equal(r.referenceLatencyMs.runs, 1000);
    assert.ok(r.latencyMs.median > 0 && r.latencyMs.median < 50, `${r.latencyMs.median} ms`);
  });

  test('against a copy with noisy weights: finite SQNR, equal to a direct float64 computation', async () => {
    const r = await compareModels(a, noisy, await testImages(), { labels });
    const m = r.outputs.logits!;
    assert.ok(Number.isFinite(m.sqnrDb) && m.sqnrDb > 0, `${m.sqnrDb}`);
    assert.ok(m.mse > 0 && m.maxAbs > 0);
    // Independent check: both models on the whole batch [1000,1,28,28] at once, SQNR summed here in float64.
    // Batched and per-sample runs differ only by ORT's float32 summation order (~1e-6 relative on the logits),
    // against a weight noise that changes them by ~1e-2: the SQNRs agree to well within 0.01 dB.
    const batch = new Map([['input', await readNpy(IMAGES)]]);
    const x = (await a.run(batch)).logits!.data as Float32Array;
    const y = (await noisy.run(batch)).logits!.data as Float32Array;
    let s = 0;
    let e = 0;
    for (let i = 0; i < x.length; i++) {
      s += x[i]! * x[i]!;
      e += (x[i]! - y[i]!) ** 2;
    }
    const direct = 10 * Math.log10(s / e);
    assert.ok(Math.abs(m.sqnrDb - direct) < 0.01, `${m.sqnrDb} vs ${direct}`);
    assert.equal(r.referenceAccuracy, FLOAT_ACCURACY);
    assert.ok(r.agreement! < 1 && r.agreement! > 0.9, `agreement ${r.agreement}`);
    assert.ok(Math.abs(r.accuracy! - FLOAT_ACCURACY) < 0.05, `accuracy ${r.accuracy}`);
    console.log(
      `noisy weights (5 % RMS): SQNR ${m.sqnrDb.toFixed(2)} dB (batched ${direct.toFixed(2)}), accuracy ` +
        `${r.accuracy} vs ${r.referenceAccuracy}, agreement ${r.agreement}`,
    );
  });

  test('evaluateModel: accuracy 92.1 % and latency of one model', async () => {
    const r = await evaluateModel(a, await testImages(), { labels, warmup: 2 });
    assert.equal(r.samples, 1000);
    assert.equal(r.accuracy, FLOAT_ACCURACY);
    assert.equal(r.accuracyDetail?.correct, 921);
    assert.equal(r.latencyMs.runs, 1000);
    const none = await evaluateModel(a, await testImages(10));
    assert.equal(none.accuracy, undefined);
    assert.equal(none.samples, 10);
  });

  test('labels count mismatch, output not found, limit with extra labels', async () => {
    await assertQnnxError(
      async () => compareModels(a, b, await testImages(), { labels: labels.subarray(0, 500) }),
      'E_DATA',
      'labels count mismatch',
      '500 labels for 1000 samples',
    );
    const more = BigInt64Array.from([...labels, 0n]);
    await assertQnnxError(
      async () => compareModels(a, b, await testImages(), { labels: more }),
      'E_DATA',
      'labels count mismatch',
      '1001 labels',
      '1000 rows',
    );
    await assertQnnxError(
      async () => compareModels(a, b, await testImages(), { outputName: 'probs' }),
      'E_USAGE',
      "output 'probs' not found",
      "'logits'",
    );
    await assertQnnxError(
      async () => evaluateModel(a, await testImages(), { outputName: 'probs' }),
      'E_USAGE',
      "output 'probs' not found",
    );
    await assertQnnxError(
      async () => evaluateModel(a, await testImages(100), { labels }),
      'E_DATA',
      'labels count mismatch',
    );
    const r = await evaluateModel(a, await testImages(), { labels, limit: 100, allowExtraLabels: true });
    assert.equal(r.samples, 100);
    assert.equal(r.accuracyDetail?.total, 100);
  });
});

/** A runner that returns fixed outputs and records the order of calls. */
function fakeRunner(name: string, outputs: Record<string, HostTensor>, log: string[]): Runner {
  const meta: ValueMeta[] = Object.entries(outputs).map(([n, t]) => ({
    name: n,
    isTensor: true,
    dtype: t.dtype,
    shape: t.dims,
  }));
  return {
    name,
    inputs: [{ name: 'x', isTensor: true, dtype: DataType.FLOAT, shape: [1] }],
    outputs: meta,
    async run(_feeds: Feeds, names?: readonly string[]) {
      log.push(name);
      const out: Record<string, HostTensor> = {};
      for (const n of names ?? Object.keys(outputs)) out[n] = outputs[n]!;
      return out;
    },
  };
}

const f32 = (dims: number[], values: number[]): HostTensor => ({
  dtype: DataType.FLOAT,
  dims,
  data: Float32Array.from(values),
});
const samples = (n: number): Feeds[] => Array.from({ length: n }, () => ({ x: f32([1], [0]) }));

describe('compareModels with scripted runners', () => {
  test('timing alternates which runner goes first; warmup runs come before', async () => {
    const log: string[] = [];
    const ref = fakeRunner('ref', { y: f32([1, 2], [1, 0]) }, log);
    const cand = fakeRunner('cand', { y: f32([1, 2], [1, 0]) }, log);
    await compareModels(ref, cand, samples(4), { warmup: 1 });
    assert.deepEqual(log, ['ref', 'cand', 'ref', 'cand', 'cand', 'ref', 'ref', 'cand', 'cand', 'ref']);
  });

  test('outputs are paired by name, else by position; dims must agree', async () => {
    const log: string[] = [];
    const ref = fakeRunner('ref', { a: f32([2], [3, 4]), b: f32([1], [1]) }, log);
    const renamed = fakeRunner('cand', { p: f32([2], [3, 4]), q: f32([1], [2]) }, log);
    const r = await compareModels(ref, renamed, samples(2), { warmup: 0 });
    assert.deepEqual(Object.keys(r.outputs), ['a', 'b']);
    assert.equal(r.outputs.a!.candidateName, 'p');
    assert.equal(r.outputs.a!.sqnrDb, Number.POSITIVE_INFINITY);
    assert.equal(r.outputs.b!.sqnrDb, 0); // signal 1, noise 1
    assert.equal(r.agreement, 1, 'score output a: one row of two classes');
    const wrong = fakeRunner('cand', { a: f32([1, 2], [3, 4]) }, log);
    await assertQnnxError(
      () => compareModels(ref, wrong, samples(1)),
      'E_SHAPE',
      "sample 0: output 'a' has dims [2]",
      '[1, 2] in the candidate',
    );
    const unrelated = fakeRunner('cand', { z: f32([1], [0]) }, log);
    await assertQnnxError(() => compareModels(ref, unrelated, samples(1)), 'E_USAGE', 'share no output');
    await assertQnnxError(() => compareModels(ref, ref, []), 'E_DATA', 'no samples');
  });
});
