/**
 * Evaluation metrics as streaming accumulators: each `add` folds one sample in, `result` reads the totals, and
 * memory stays flat however many samples pass through (no outputs are kept).
 *
 * - ErrorAccumulator: reference vs candidate values of one output: SQNR, MSE, max and mean absolute error,
 *   cosine similarity. Sums are float64 (a float32 sum of a million squared errors loses digits).
 * - AccuracyAccumulator: top-k accuracy of a class-score output against integer labels.
 * - AgreementAccumulator: how often two models pick the same top-1 class.
 * - LatencyAccumulator: per-run wall times; median exact up to 4096 runs, then from a log histogram.
 *
 * Class scores are read along the last axis: an output of dims [N, C] holds N rows, [N, T, C] holds N*T rows
 * (one per timestep, labels then have N*T entries in row-major order), [C] holds one row.
 */
import { QnnxError } from '../errors.js';
import { DataType, dataTypeName } from '../onnx/dtype.js';
import { decodeToFloat32 } from '../onnx/formats.js';
import { elementCount, type HostTensor } from '../tensor.js';

/** Error metrics of a candidate against a reference over all elements seen. */
export interface ErrorMetrics {
  /** Elements compared. */
  count: number;
  /** 10·log10(Σx² / Σ(x−y)²) in dB; +Infinity when identical; -Infinity when the reference is all zeros and the candidate is not. */
  sqnrDb: number;
  /** Mean squared error Σ(x−y)²/n. */
  mse: number;
  /** Largest |x−y|. */
  maxAbs: number;
  /** Mean |x−y|. */
  meanAbs: number;
  /** Σxy / sqrt(Σx²·Σy²); 1 when both are all zeros, 0 when only one is. */
  cosine: number;
}

/** SQNR in dB from a signal power and a noise power (any common normalization). */
export function sqnrDb(signal: number, noise: number): number {
  if (noise === 0) return Number.POSITIVE_INFINITY;
  if (signal === 0) return Number.NEGATIVE_INFINITY;
  return 10 * Math.log10(signal / noise);
}

/** Streaming reference-vs-candidate error metrics. NaN in either input propagates into every metric. */
export class ErrorAccumulator {
  private n = 0;
  private sx2 = 0;
  private sy2 = 0;
  private sxy = 0;
  private se2 = 0;
  private sae = 0;
  private max = 0;

  add(reference: ArrayLike<number>, candidate: ArrayLike<number>): void {
    if (reference.length !== candidate.length) {
      throw new QnnxError(
        'E_SHAPE',
        `cannot compare ${reference.length} reference values with ${candidate.length} candidate values`,
      );
    }
    let sx2 = 0;
    let sy2 = 0;
    let sxy = 0;
    let se2 = 0;
    let sae = 0;
    let max = this.max;
    for (let i = 0; i < reference.length; i++) {
      const x = reference[i];
      const y = candidate[i];
      const d = x - y;
      const a = Math.abs(d);
      sx2 += x * x;
      sy2 += y * y;
      sxy += x * y;
      se2 += d * d;
      sae += a;
      if (!(a <= max)) max = a; // NaN sticks
    }
    this.n += reference.length;
    this.sx2 += sx2;
    this.sy2 += sy2;
    this.sxy += sxy;
    this.se2 += se2;
    this.sae += sae;
    this.max = max;
  }

  get count(): number {
    return this.n;
  }

  result(): ErrorMetrics {
    const n = this.n;
    let cosine: number;
    if (this.sx2 === 0 && this.sy2 === 0) cosine = 1;
    else if (this.sx2 === 0 || this.sy2 === 0) cosine = 0;
    else cosine = this.sxy / Math.sqrt(this.sx2 * this.sy2);
    return {
      count: n,
      sqnrDb: Number.isNaN(this.se2) || Number.isNaN(this.sx2) ? Number.NaN : sqnrDb(this.sx2, this.se2),
      mse: n ? this.se2 / n : 0,
      maxAbs: this.max,
      meanAbs: n ? this.sae / n : 0,
      cosine,
    };
  }
}

/** One-shot error metrics of two arrays. */
export function errorMetrics(reference: ArrayLike<number>, candidate: ArrayLike<number>): ErrorMetrics {
  const acc = new ErrorAccumulator();
  acc.add(reference, candidate);
  return acc.result();
}

/**
 * The elements of a numeric tensor as numbers: float32/float64 and ≤32-bit integer storage as it is, int64 and
 * uint64 converted with Number(), float16/bfloat16/float8/4-bit types decoded. Strings and complex types are
 * refused (E_DTYPE).
 */
export function tensorValues(t: HostTensor, what = 'tensor'): ArrayLike<number> {
  const n = elementCount(t.dims);
  switch (t.dtype) {
    case DataType.FLOAT:
    case DataType.DOUBLE:
    case DataType.INT8:
    case DataType.UINT8:
    case DataType.INT16:
    case DataType.INT32:
    case DataType.UINT32:
    case DataType.UINT16:
    case DataType.BOOL:
      return t.data as ArrayLike<number>;
    case DataType.INT64:
    case DataType.UINT64: {
      const src = t.data as BigInt64Array | BigUint64Array;
      const out = new Float64Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = Number(src[i]);
      return out;
    }
    default:
      try {
        return decodeToFloat32(t.dtype, t.data, n);
      } catch (e) {
        throw new QnnxError(
          'E_DTYPE',
          `${what} is ${dataTypeName(t.dtype)}, which has no numeric values to compare`,
          {
            dtype: dataTypeName(t.dtype),
          },
          { cause: e },
        );
      }
  }
}

/** Labels: one integer class per output row. */
export type Labels = Int32Array | BigInt64Array | ArrayLike<number> | ArrayLike<bigint>;

/** Labels as an Int32Array (a copy unless already one). Refuses non-integers and values outside int32. */
export function toLabelArray(labels: Labels, what = 'labels'): Int32Array {
  if (labels instanceof Int32Array) return labels;
  const out = new Int32Array(labels.length);
  for (let i = 0; i < labels.length; i++) {
    const v = labels[i];
    const x = typeof v === 'bigint' ? Number(v) : v;
    if (!Number.isInteger(x) || x < -(2 ** 31) || x >= 2 ** 31) {
      throw new QnnxError('E_DATA', `${what}: entry ${i} is ${String(v)}, not an integer class index`, {
        index: i,
      });
    }
    out[i] = x;
  }
  return out;
}

/** Rows and classes of a class-score output (classes along the last axis). */
export function scoreRows(dims: readonly number[]): { rows: number; classes: number } {
  if (dims.length === 0) return { rows: 1, classes: 1 };
  const classes = dims[dims.length - 1]!;
  return { rows: classes === 0 ? 0 : elementCount(dims) / classes, classes };
}

/** Index of the largest value in row `r` (the first one on ties; NaN never wins). */
export function argmaxRow(values: ArrayLike<number>, r: number, classes: number): number {
  const base = r * classes;
  let best = 0;
  let bestValue = values[base];
  for (let c = 1; c < classes; c++) {
    const v = values[base + c];
    if (v > bestValue || (Number.isNaN(bestValue) && !Number.isNaN(v))) {
      best = c;
      bestValue = v;
    }
  }
  return best;
}

/** Top-1 class of each row of a class-score output. */
export function argmaxRows(t: HostTensor): Int32Array {
  const values = tensorValues(t, 'output');
  const { rows, classes } = scoreRows(t.dims);
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) out[r] = argmaxRow(values, r, classes);
  return out;
}

/**
 * Whether `label` is among the top `k` classes of row `r`, ranking by value and, on ties, by index (a stable
 * descending sort): for k = 1 exactly `argmaxRow(...) === label`.
 */
export function inTopK(
  values: ArrayLike<number>,
  r: number,
  classes: number,
  label: number,
  k: number,
): boolean {
  if (label < 0 || label >= classes) return false;
  if (k === 1) return argmaxRow(values, r, classes) === label;
  const base = r * classes;
  const v = values[base + label];
  if (Number.isNaN(v)) return false;
  let ahead = 0;
  for (let c = 0; c < classes; c++) {
    const u = values[base + c];
    if (u > v || (u === v && c < label)) ahead++;
  }
  return ahead < k;
}

/** Accuracy result: fraction in [0, 1] and the counts it comes from. */
export interface AccuracyResult {
  accuracy: number;
  correct: number;
  total: number;
  k: number;
}

/**
 * Streaming top-k accuracy. Labels are consumed in order, one per output row; `add` throws E_DATA when the
 * outputs have more rows than there are labels, and `finish` when labels are left over (unless allowed).
 */
export class AccuracyAccumulator {
  private readonly labels: Int32Array;
  private readonly k: number;
  private used = 0;
  private correct = 0;

  constructor(labels: Labels, k = 1) {
    if (!Number.isInteger(k) || k < 1) throw new QnnxError('E_USAGE', `top-k needs k >= 1, got ${k}`);
    this.labels = toLabelArray(labels);
    this.k = k;
  }

  /** Labels consumed so far. */
  get consumed(): number {
    return this.used;
  }

  get labelCount(): number {
    return this.labels.length;
  }

  /** Scores one output; `sample` names the sample in messages. */
  add(output: HostTensor, sample?: number): void {
    const values = tensorValues(output, 'output');
    const { rows, classes } = scoreRows(output.dims);
    if (this.used + rows > this.labels.length) {
      const where = sample === undefined ? '' : ` at sample ${sample}`;
      throw new QnnxError(
        'E_DATA',
        `labels count mismatch: ${this.labels.length} labels, but the output has more rows${where} ` +
          `(${this.used} rows before it, ${rows} in it; one label per row of dims [${output.dims.join(', ')}] ` +
          'minus the last axis)',
        { labels: this.labels.length },
      );
    }
    for (let r = 0; r < rows; r++) {
      if (inTopK(values, r, classes, this.labels[this.used + r]!, this.k)) this.correct++;
    }
    this.used += rows;
  }

  /** The accuracy; throws E_DATA when labels were left unused and `allowExtraLabels` is not set. */
  finish(allowExtraLabels = false): AccuracyResult {
    if (!allowExtraLabels && this.used !== this.labels.length) {
      throw new QnnxError(
        'E_DATA',
        `labels count mismatch: ${this.labels.length} labels, but the outputs had ${this.used} rows ` +
          '(one label per output row)',
        { labels: this.labels.length, rows: this.used },
      );
    }
    return this.result();
  }

  result(): AccuracyResult {
    return {
      accuracy: this.used ? this.correct / this.used : Number.NaN,
      correct: this.correct,
      total: this.used,
      k: this.k,
    };
  }
}

/** One-shot top-k accuracy of a class-score tensor against labels (all labels must be used). */
export function accuracy(output: HostTensor, labels: Labels, k = 1): AccuracyResult {
  const acc = new AccuracyAccumulator(labels, k);
  acc.add(output);
  return acc.finish();
}

/** Streaming top-1 agreement between two models' class-score outputs (same dims per sample). */
export class AgreementAccumulator {
  private agree = 0;
  private rows = 0;

  add(reference: HostTensor, candidate: HostTensor): void {
    if (!sameDims(reference.dims, candidate.dims)) {
      throw new QnnxError(
        'E_SHAPE',
        `cannot compare top-1 classes of dims [${reference.dims.join(', ')}] and [${candidate.dims.join(', ')}]`,
      );
    }
    const a = tensorValues(reference, 'reference output');
    const b = tensorValues(candidate, 'candidate output');
    const { rows, classes } = scoreRows(reference.dims);
    for (let r = 0; r < rows; r++) if (argmaxRow(a, r, classes) === argmaxRow(b, r, classes)) this.agree++;
    this.rows += rows;
  }

  result(): AccuracyResult {
    return {
      accuracy: this.rows ? this.agree / this.rows : Number.NaN,
      correct: this.agree,
      total: this.rows,
      k: 1,
    };
  }
}

export function sameDims(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Latency statistics in milliseconds. */
export interface LatencyStats {
  runs: number;
  median: number;
  mean: number;
  min: number;
  max: number;
  p90: number;
}

const EXACT_CAP = 4096;
/** Histogram bins: 0.2 % wide in log space, from 1 µs to ~ 30 min; below and above land in the end bins. */
const BIN_RATIO = 1.002;
const BIN_MIN_MS = 1e-3;
const BINS = Math.ceil(Math.log(1.8e6 / BIN_MIN_MS) / Math.log(BIN_RATIO));

/**
 * Streaming latency statistics. Mean, min and max are exact; the median and p90 are exact for up to 4096 runs
 * and afterwards read from a log-spaced histogram whose bins are 0.2 % wide (relative error under 0.1 %).
 */
export class LatencyAccumulator {
  private exact: Float64Array | undefined = new Float64Array(64);
  private hist: Uint32Array | undefined;
  private n = 0;
  private sum = 0;
  private lo = Number.POSITIVE_INFINITY;
  private hi = Number.NEGATIVE_INFINITY;

  add(ms: number): void {
    if (!(ms >= 0)) ms = 0;
    this.sum += ms;
    if (ms < this.lo) this.lo = ms;
    if (ms > this.hi) this.hi = ms;
    if (this.exact) {
      if (this.n === this.exact.length) {
        if (this.n < EXACT_CAP) {
          const grown = new Float64Array(Math.min(EXACT_CAP, this.n * 2));
          grown.set(this.exact);
          this.exact = grown;
        } else {
          this.hist = new Uint32Array(BINS);
          for (const v of this.exact) this.hist[binOf(v)]!++;
          this.exact = undefined;
        }
      }
    }
    if (this.exact) this.exact[this.n] = ms;
    else this.hist![binOf(ms)]!++;
    this.n++;
  }

  get count(): number {
    return this.n;
  }

  /** The q-quantile (0 ≤ q ≤ 1): linear interpolation between order statistics, as numpy's default. */
  quantile(q: number): number {
    if (this.n === 0) return Number.NaN;
    if (this.exact) {
      const sorted = this.exact.slice(0, this.n).sort();
      const pos = q * (this.n - 1);
      const i = Math.floor(pos);
      const f = pos - i;
      return i + 1 < this.n ? sorted[i]! * (1 - f) + sorted[i + 1]! * f : sorted[i]!;
    }
    const target = q * (this.n - 1);
    let seen = 0;
    const hist = this.hist!;
    for (let b = 0; b < hist.length; b++) {
      seen += hist[b]!;
      if (seen > target) return Math.min(this.hi, Math.max(this.lo, binCenter(b)));
    }
    return this.hi;
  }

  result(): LatencyStats {
    const empty = this.n === 0;
    return {
      runs: this.n,
      median: this.quantile(0.5),
      mean: empty ? Number.NaN : this.sum / this.n,
      min: empty ? Number.NaN : this.lo,
      max: empty ? Number.NaN : this.hi,
      p90: this.quantile(0.9),
    };
  }
}

function binOf(ms: number): number {
  if (ms <= BIN_MIN_MS) return 0;
  return Math.min(BINS - 1, Math.floor(Math.log(ms / BIN_MIN_MS) / Math.log(BIN_RATIO)));
}

function binCenter(b: number): number {
  return BIN_MIN_MS * BIN_RATIO ** (b + 0.5);
}
