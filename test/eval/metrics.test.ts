import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  AccuracyAccumulator,
  AgreementAccumulator,
  accuracy,
  argmaxRows,
  ErrorAccumulator,
  errorMetrics,
  inTopK,
  LatencyAccumulator,
  sqnrDb,
  tensorValues,
  toLabelArray,
} from '../../src/eval/metrics.js';
import { DataType } from '../../src/onnx/dtype.js';
import { toFloat16Array } from '../../src/onnx/formats.js';
import type { HostTensor } from '../../src/tensor.js';
import { assertQnnxError } from '../runtime/helpers.js';
import { gaussian } from './helpers.js';

const f32 = (dims: number[], values: number[]): HostTensor => ({
  dtype: DataType.FLOAT,
  dims,
  data: Float32Array.from(values),
});

describe('error metrics', () => {
  test('match a hand computation', () => {
    // x = [1, 2, 3, 4], y = [1, 2, 3, 5]: Σx² = 30, Σ(x−y)² = 1, Σxy = 34, Σy² = 39. All values are small
    // integers, so every sum is exact in float64 and only the final log10/sqrt round (1 ulp).
    const m = errorMetrics([1, 2, 3, 4], [1, 2, 3, 5]);
    assert.equal(m.count, 4);
    assert.equal(m.sqnrDb, 10 * Math.log10(30));
    assert.ok(Math.abs(m.sqnrDb - 14.771212547196624) < 1e-12);
    assert.equal(m.mse, 0.25);
    assert.equal(m.maxAbs, 1);
    assert.equal(m.meanAbs, 0.25);
    assert.equal(m.cosine, 34 / Math.sqrt(30 * 39));
  });

  test('identical values: SQNR +Infinity, zero errors, cosine 1', () => {
    const x = Float32Array.from([0.5, -2, 3.25, 0]);
    const m = errorMetrics(x, Float32Array.from(x));
    assert.equal(m.sqnrDb, Number.POSITIVE_INFINITY);
    assert.equal(m.mse, 0);
    assert.equal(m.maxAbs, 0);
    assert.equal(m.meanAbs, 0);
    assert.equal(m.cosine, 1);
  });

  test('edge cases: zero reference, both zero, NaN', () => {
    assert.equal(errorMetrics([0, 0], [0, 1]).sqnrDb, Number.NEGATIVE_INFINITY);
    assert.equal(errorMetrics([0, 0], [0, 1]).cosine, 0);
    const zero = errorMetrics([0, 0], [0, 0]);
    assert.equal(zero.sqnrDb, Number.POSITIVE_INFINITY);
    assert.equal(zero.cosine, 1);
    const nan = errorMetrics([1, 2], [1, Number.NaN]);
    assert.ok(Number.isNaN(nan.sqnrDb) && Number.isNaN(nan.mse) && Number.isNaN(nan.maxAbs));
    assert.equal(sqnrDb(1, 0.1), 10);
    assert.throws(() => errorMetrics([1, 2], [1]), /cannot compare 2 reference values with 1/);
  });

  test('SQNR of a sine plus alternating noise of known power', () => {
    // x = sin over 1000 whole periods: Σx²/n = 1/2 (A = 1); noise ±0.01 alternating: power 1e-4.
    // Expected 10·log10(0.5 / 1e-4) = 36.9897 dB. y is stored in float32, so its rounding (≤ 6e-8 absolute)
    // perturbs the noise power by < 2e-5 relative (< 1e-4 dB); 1e-3 dB is safe.
    const n = 100_000;
    const x = new Float32Array(n);
    const y = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      x[i] = Math.sin((2 * Math.PI * i) / 100);
      y[i] = x[i]! + (i % 2 ? 0.01 : -0.01);
    }
    const m = errorMetrics(x, y);
    let sx = 0;
    for (const v of x) sx += v * v;
    assert.ok(Math.abs(sx / n - 0.5) < 1e-6, 'the float32 sine has power 1/2');
    assert.ok(Math.abs(m.sqnrDb - 10 * Math.log10(0.5 / 1e-4)) < 1e-3, `${m.sqnrDb}`);
    assert.ok(Math.abs(m.mse - 1e-4) < 1e-8);
    assert.ok(Math.abs(m.maxAbs - 0.01) < 1e-7);
  });

  test('SQNR of a signal plus Gaussian noise of known variance', () => {
    // Signal N(0, 1), noise N(0, 0.05²): SQNR = 10·log10(1 / 0.0025) = 26.0206 dB. With n = 200 000 the
    // estimated powers have relative standard error sqrt(2/n) = 0.32 %, i.e. 0.014 dB each; 0.1 dB is > 4 sigma.
    const g = gaussian(7);
    const n = 200_000;
    const x = new Float64Array(n);
    const y = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      x[i] = g();
      y[i] = x[i]! + 0.05 * g();
    }
    const m = errorMetrics(x, y);
    assert.ok(Math.abs(m.sqnrDb - 26.0206) < 0.1, `${m.sqnrDb}`);
  });

  test('float64 accumulation: exact against an integer reference where a float32 sum is far off', () => {
    // Values are multiples of 2^-10 (k/1024, |k| < 2^15), so every square is exact in float64 and the sums of
    // 200 000 of them stay below 2^53 · 2^-20: the float64 sums are exact and must equal the BigInt reference.
    const n = 200_000;
    const u = gaussian(3);
    const kx = new Int32Array(n);
    const kd = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      kx[i] = Math.max(-32767, Math.min(32767, Math.round(8000 * u())));
      kd[i] = Math.round(20 * u());
    }
    const x = Float32Array.from(kx, (k) => k / 1024);
    const y = Float32Array.from(kx, (k, i) => (k + kd[i]!) / 1024);
    let sx2 = 0n;
    let se2 = 0n;
    let sae = 0n;
    for (let i = 0; i < n; i++) {
      sx2 += BigInt(kx[i]!) ** 2n;
      se2 += BigInt(kd[i]!) ** 2n;
      sae += BigInt(Math.abs(kd[i]!));
    }
    const acc = new ErrorAccumulator();
    for (let i = 0; i < n; i += 4096) acc.add(x.subarray(i, i + 4096), y.subarray(i, i + 4096));
    const m = acc.result();
    assert.equal(m.count, n);
    assert.equal(m.mse, Number(se2) / 2 ** 20 / n);
    assert.equal(m.meanAbs, Number(sae) / 1024 / n);
    assert.equal(m.sqnrDb, 10 * Math.log10(Number(sx2) / Number(se2)));
    // The same sum accumulated in float32 loses digits (measured: 5e-5 relative); float64 has it exactly.
    let f = 0;
    for (const v of x) f = Math.fround(f + Math.fround(v * v));
    const exact = Number(sx2) / 2 ** 20;
    assert.ok(Math.abs(f - exact) / exact > 1e-5, `float32 sum ${f} vs exact ${exact}`);
  });

  test('streaming over chunks equals one pass', () => {
    const g = gaussian(11);
    const x = Float64Array.from({ length: 10_000 }, () => g());
    const y = x.map((v) => v + 0.1 * g());
    const whole = errorMetrics(x, y);
    const acc = new ErrorAccumulator();
    for (let i = 0; i < x.length; i += 777) acc.add(x.subarray(i, i + 777), y.subarray(i, i + 777));
    const parts = acc.result();
    // Only the order of float64 additions differs: relative differences ~1e-15; 1e-12 is generous.
    for (const k of ['sqnrDb', 'mse', 'meanAbs', 'cosine'] as const) {
      assert.ok(Math.abs(parts[k] - whole[k]) <= 1e-12 * Math.abs(whole[k]), k);
    }
    assert.equal(parts.maxAbs, whole.maxAbs);
  });
});

describe('tensor values', () => {
  test('float16 decoded, int64 converted, strings refused', () => {
    const h: HostTensor = {
      dtype: DataType.FLOAT16,
      dims: [3],
      data: toFloat16Array(Float32Array.of(1.5, -2, 0.25)),
    };
    assert.deepEqual(Array.from(tensorValues(h)), [1.5, -2, 0.25]);
    const l: HostTensor = { dtype: DataType.INT64, dims: [2], data: BigInt64Array.of(7n, -3n) };
    assert.deepEqual(Array.from(tensorValues(l)), [7, -3]);
    const s: HostTensor = { dtype: DataType.STRING, dims: [1], data: [new Uint8Array([65])] };
    assert.throws(() => tensorValues(s, 'output'), /output is string/);
  });
});

describe('top-1 accuracy and agreement', () => {
  // 3 rows of 4 classes: argmax 2, 0 (tie between 0 and 3: the first wins), 1.
  const scores = f32([3, 4], [0.1, 0.2, 0.9, 0.3, 0.7, 0.1, 0.1, 0.7, -1, 5, 4, 0]);

  test('argmax per row, first index on ties', () => {
    assert.deepEqual([...argmaxRows(scores)], [2, 0, 1]);
  });

  test('accuracy against labels of any integer array type', () => {
    const r = accuracy(scores, [2, 3, 1]);
    assert.deepEqual(r, { accuracy: 2 / 3, correct: 2, total: 3, k: 1 });
    assert.equal(accuracy(scores, BigInt64Array.of(2n, 0n, 1n)).accuracy, 1);
    assert.equal(accuracy(scores, Int32Array.of(0, 1, 2)).accuracy, 0);
  });

  test('top-k ranks by value, ties by index (a stable descending sort)', () => {
    // row 1 = [0.7, 0.1, 0.1, 0.7]: ranking 0, 3, 1, 2
    const v = scores.data as Float32Array;
    assert.equal(inTopK(v, 1, 4, 3, 1), false);
    assert.equal(inTopK(v, 1, 4, 3, 2), true);
    assert.equal(inTopK(v, 1, 4, 1, 2), false);
    assert.equal(inTopK(v, 1, 4, 1, 3), true);
    assert.equal(inTopK(v, 1, 4, 2, 3), false);
    assert.equal(inTopK(v, 1, 4, 9, 4), false, 'a label outside the classes is never correct');
    assert.equal(accuracy(scores, [3, 3, 2], 2).correct, 3);
  });

  test('per timestep for [N, T, C] outputs', () => {
    // N=2, T=3, C=2: rows (n, t) in row-major order
    const t = f32([2, 3, 2], [1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0]);
    assert.deepEqual([...argmaxRows(t)], [0, 1, 0, 1, 1, 0]);
    const acc = new AccuracyAccumulator([0, 1, 0, 1, 1, 1]);
    acc.add(t);
    assert.deepEqual(acc.finish(), { accuracy: 5 / 6, correct: 5, total: 6, k: 1 });
  });

  test('labels are consumed across samples; count mismatches are E_DATA', async () => {
    const acc = new AccuracyAccumulator([2, 0, 1, 1]);
    acc.add(f32([1, 4], [0, 0, 1, 0]), 0);
    acc.add(f32([2, 4], [1, 0, 0, 0, 0, 1, 0, 0]), 1);
    assert.equal(acc.consumed, 3);
    await assertQnnxError(() => acc.finish(), 'E_DATA', 'labels count mismatch', '4 labels', '3 rows');
    assert.deepEqual(acc.finish(true), { accuracy: 1, correct: 3, total: 3, k: 1 });
    await assertQnnxError(() => acc.add(f32([2, 4], [0, 1, 0, 0, 0, 1, 0, 0]), 2), 'E_DATA', 'at sample 2');
    await assertQnnxError(() => toLabelArray([1, 2.5]), 'E_DATA', 'entry 1 is 2.5');
    await assertQnnxError(() => new AccuracyAccumulator([1], 0), 'E_USAGE', 'k >= 1');
  });

  test('agreement between two outputs', () => {
    const other = f32([3, 4], [0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0]); // argmax 2, 3, 2
    const a = new AgreementAccumulator();
    a.add(scores, other);
    a.add(scores, scores);
    assert.deepEqual(a.result(), { accuracy: 4 / 6, correct: 4, total: 6, k: 1 });
    assert.throws(() => a.add(scores, f32([4, 3], new Array(12).fill(0))), /dims \[3, 4\] and \[4, 3\]/);
  });
});

describe('latency statistics', () => {
  test('exact median, mean, p90 for small counts (numpy linear interpolation)', () => {
    const l = new LatencyAccumulator();
    for (const v of [5, 1, 4, 2, 3]) l.add(v);
    assert.deepEqual(l.result(), { runs: 5, median: 3, mean: 3, min: 1, max: 5, p90: 4.6 });
    l.add(10);
    assert.equal(l.result().median, 3.5);
    assert.ok(Number.isNaN(new LatencyAccumulator().result().median));
  });

  test('past 4096 runs the median comes from the histogram, within 0.1 %', () => {
    // 10 000 runs of 0.01, 0.02, ..., 100 ms in a shuffled order; numpy's median is 50.005, p90 90.0091.
    const l = new LatencyAccumulator();
    const u = gaussian(5);
    const values = Array.from({ length: 10_000 }, (_, i) => (i + 1) / 100);
    for (let i = values.length - 1; i > 0; i--) {
      const j = Math.floor(Math.abs(u() * 1e6)) % (i + 1);
      [values[i], values[j]] = [values[j]!, values[i]!];
    }
    for (const v of values) l.add(v);
    const r = l.result();
    assert.equal(r.runs, 10_000);
    assert.ok(Math.abs(r.mean - 50.005) < 1e-9);
    assert.equal(r.min, 0.01);
    assert.equal(r.max, 100);
    assert.ok(Math.abs(r.median / 50.005 - 1) < 1e-3, `${r.median}`);
    assert.ok(Math.abs(r.p90 / 90.0091 - 1) < 1e-3, `${r.p90}`);
  });
});
