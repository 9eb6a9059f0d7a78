/**
 * A streaming histogram with a fixed number of bins and flat memory, re-binned exactly when the range grows.
 *
 * Bin edges are integer multiples of a power-of-two width w: absolute bin j covers [j*w, (j+1)*w). When new data
 * falls outside the bins, w doubles (k times) and absolute bin j merges into floor(j / 2^k): counts and sums move
 * whole, so re-binning loses nothing that was not already lost to the bin width. The observed data's [min, max]
 * always spans between bins/2 and bins bins (w is the smallest power of two that fits), and because 0 is an edge
 * the histogram of |x| (or of the positive and negative parts) is an exact fold of it.
 *
 * Optional per-bin sums of the values make tail expectations E[X 1{X > t}] exact at bin edges (OCTAV).
 */
import { QnnxError } from '../../errors.js';
import { rangeOf } from './groups.js';

/** A one-sided histogram of a magnitude: bin j covers [j*width, (j+1)*width), j = 0..counts.length-1. */
export interface MagnitudeBins {
  width: number;
  counts: Float64Array;
  /** Per-bin sum of the magnitudes (present when the histogram keeps sums). */
  sums?: Float64Array;
  /** Largest magnitude observed (the top bin's data never exceeds it). */
  max: number;
}

export class StreamingHistogram {
  readonly bins: number;
  /** Bin width, a power of two (0 before the first value). */
  width = 0;
  /** Absolute index of counts[0]. */
  start = 0;
  counts: Float64Array;
  sums: Float64Array | undefined;
  min = Number.POSITIVE_INFINITY;
  max = Number.NEGATIVE_INFINITY;
  /** Number of values (NaN excluded). */
  total = 0;

  constructor(bins = 2048, keepSums = false) {
    if (!Number.isInteger(bins) || bins < 16)
      throw new QnnxError('E_USAGE', `histograms need >= 16 bins, got ${bins}`);
    this.bins = bins;
    this.counts = new Float64Array(bins);
    this.sums = keepSums ? new Float64Array(bins) : undefined;
  }

  get retainedBytes(): number {
    return this.counts.byteLength + (this.sums?.byteLength ?? 0);
  }

  reset(): void {
    this.width = 0;
    this.start = 0;
    this.counts.fill(0);
    this.sums?.fill(0);
    this.min = Number.POSITIVE_INFINITY;
    this.max = Number.NEGATIVE_INFINITY;
    this.total = 0;
  }

  /** Adds values[from, to) (NaN skipped). The values must be finite. */
  add(values: ArrayLike<number>, from = 0, to = values.length): void {
    const [lo, hi] = rangeOf(values, from, to);
    if (lo > hi) return; // nothing but NaN
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) {
      throw new QnnxError('E_DATA', 'a histogram cannot hold ±Infinity');
    }
    this.fit(Math.min(lo, this.min), Math.max(hi, this.max));
    this.min = Math.min(this.min, lo);
    this.max = Math.max(this.max, hi);
    const w = this.width;
    const start = this.start;
    const counts = this.counts;
    const sums = this.sums;
    let n = 0;
    for (let i = from; i < to; i++) {
      const v = values[i];
      if (Number.isNaN(v)) continue;
      const j = Math.floor(v / w) - start;
      counts[j]++;
      if (sums) sums[j] += v;
      n++;
    }
    this.total += n;
  }

  /** Smallest power-of-two width >= w0 (w0 > 0) such that [lo, hi] fits in the bins. */
  private widthFor(lo: number, hi: number, w0: number): number {
    let w = w0;
    while (Math.floor(hi / w) - Math.floor(lo / w) >= this.bins) w *= 2;
    return w;
  }

  /** Makes [lo, hi] fit, merging bins (exactly) as needed. */
  private fit(lo: number, hi: number): void {
    if (this.width === 0) {
      const span = hi - lo;
      const mag = Math.max(Math.abs(lo), Math.abs(hi));
      let w: number;
      if (span > 0) w = 2 ** Math.floor(Math.log2(span / this.bins));
      else w = mag > 0 ? 2 ** (Math.floor(Math.log2(mag)) - 24) : 2 ** -126;
      if (!(w > 0)) w = 2 ** -126;
      this.width = this.widthFor(lo, hi, w);
      this.start = Math.floor(lo / this.width);
      return;
    }
    const w = this.widthFor(lo, hi, this.width);
    const start = Math.floor(lo / w);
    if (w === this.width && start === this.start) return;
    if (w === this.width && Math.floor(hi / w) - this.start < this.bins && start >= this.start) return;
    // move (and merge) every occupied bin to its new place
    const factor = w / this.width;
    const oldCounts = this.counts;
    const oldSums = this.sums;
    const counts = new Float64Array(this.bins);
    const sums = oldSums ? new Float64Array(this.bins) : undefined;
    for (let j = 0; j < this.bins; j++) {
      const c = oldCounts[j];
      if (c === 0) continue;
      const nj = Math.floor((this.start + j) / factor) - start;
      counts[nj] += c;
      if (sums && oldSums) sums[nj] += oldSums[j];
    }
    this.counts = counts;
    this.sums = sums;
    this.width = w;
    this.start = start;
  }

  /**
   * The value below which a fraction q of the data lies (linear inside a bin), clamped to [min, max].
   */
  quantile(q: number): number {
    if (this.total === 0) throw new QnnxError('E_USAGE', 'quantile of an empty histogram');
    const target = Math.min(Math.max(q, 0), 1) * this.total;
    let cum = 0;
    for (let j = 0; j < this.bins; j++) {
      const c = this.counts[j];
      if (c > 0 && cum + c >= target) {
        const f = (target - cum) / c;
        const v = (this.start + j + f) * this.width;
        return Math.min(this.max, Math.max(this.min, v));
      }
      cum += c;
    }
    return this.max;
  }

  /** The histogram of |x| (exact fold: 0 is an edge). */
  magnitudes(): MagnitudeBins {
    return this.side(true, true);
  }

  /** The histogram of x restricted to x > 0 (sums of x). */
  positive(): MagnitudeBins {
    return this.side(true, false);
  }

  /** The histogram of -x restricted to x < 0 (sums of -x). */
  negative(): MagnitudeBins {
    return this.side(false, true);
  }

  /**
   * Folds the signed bins: pos/neg select which sides contribute. The result starts at 0; when the data lies far
   * from 0 (so that [0, max] would need more than `bins` bins) adjacent bins are merged, exactly, by a power of
   * two, so the result never has more than `bins` bins and its resolution is at least max/bins.
   */
  private side(pos: boolean, neg: boolean): MagnitudeBins {
    let last = 0;
    for (let j = 0; j < this.bins; j++) {
      if (this.counts[j] === 0) continue;
      const a = this.start + j;
      if (a >= 0 && pos) last = Math.max(last, a);
      if (a < 0 && neg) last = Math.max(last, -a - 1);
    }
    const factor = last + 1 > this.bins ? 2 ** Math.ceil(Math.log2((last + 1) / this.bins)) : 1;
    const len = Math.floor(last / factor) + 1;
    const counts = new Float64Array(len);
    const sums = this.sums ? new Float64Array(len) : undefined;
    for (let j = 0; j < this.bins; j++) {
      const c = this.counts[j];
      if (c === 0) continue;
      const a = this.start + j;
      if (a >= 0 ? !pos : !neg) continue;
      const k = Math.floor((a >= 0 ? a : -a - 1) / factor);
      counts[k] += c;
      if (sums && this.sums) sums[k] += a >= 0 ? this.sums[j] : -this.sums[j];
    }
    const max =
      pos && neg ? Math.max(this.max, -this.min) : pos ? Math.max(this.max, 0) : Math.max(-this.min, 0);
    return { width: this.width * factor, counts, sums, max };
  }

  /**
   * Calls fn(lo, hi, count) for every occupied bin, its edges clamped to the observed [min, max] (so the
   * outermost bins do not place data beyond the extremes; a bin may collapse to a point).
   */
  forEachBin(fn: (lo: number, hi: number, count: number) => void): void {
    for (let j = 0; j < this.bins; j++) {
      const c = this.counts[j];
      if (c === 0) continue;
      const lo = Math.max((this.start + j) * this.width, this.min);
      const hi = Math.min((this.start + j + 1) * this.width, this.max);
      fn(lo, hi, c);
    }
  }
}
