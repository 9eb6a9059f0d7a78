/**
 * MSE calibration (AIMET 'tf_enhanced'-like): search the clip range that minimizes the quantization MSE of the
 * observed data on the grid actually used (the scale and rounded zero point that `encodingFromRange` gives the
 * candidate range, round half to even, saturation; float8 grids included), per tensor, channel, block or vector.
 *
 * Candidates: `candidates` clip fractions of the observed range (geometric over [minFraction, 1] by default),
 * then `refineSteps` linear steps between the best candidate's neighbours. Symmetric grids search |clip|; the
 * unsigned-symmetric grid searches max; asymmetric grids search a common fraction of (min, max) and then each end on
 * its own (two rounds of coordinate descent).
 *
 * The error of a candidate is computed exactly on the data when the group's data is kept (a single observation,
 * see SampleStore) and holds at most EXACT_GROUP_LIMIT (2^18) values; otherwise from the histogram, taking the density as uniform
 * inside each bin (bins clamped to the observed [min, max]) and integrating (x - Q(x))^2 over it in closed form
 * (`GridError.integral`), so the estimate has no error from where values sit relative to the grid, only from
 * the within-bin shape.
 */
import type { DataType } from '../../onnx/dtype.js';
import { float8BitsToFloat32 } from '../../onnx/formats.js';
import { type Encoding, encodingFromRange } from '../encoding.js';
import { float8Type, intRange, isFloat8, type QuantScheme } from '../scheme.js';
import type { AnalyzerOptions, EncodingAnalyzer } from './analyzer.js';
import { encodingForRanges, rangeOf } from './groups.js';
import { StreamingHistogram } from './histogram.js';
import { DEFAULT_BINS, SampleStore } from './store.js';

const f32 = Math.fround;

/** Largest group evaluated exactly on its data (cost: one quantization per value and candidate). */
export const EXACT_GROUP_LIMIT = 2 ** 18;

// ---------------------------------------------------------------------------------------------------------------
// Quantization error of one grid
// ---------------------------------------------------------------------------------------------------------------

/** A quantization grid in units of the scale: integer levels kmin..kmax, or a float8 format's values. */
export interface GridError {
  /** H(u) = integral from an anchor to u of (t - Q(t))^2 dt, Q rounding to the nearest level and saturating. */
  integral(u: number): number;
  /** The level x / s rounds to (exactly as the quantizer: float32 division, round half to even, saturate). */
  level(u: number): number;
}

/** The integer grid {kmin, ..., kmax} (q - zero point). */
export class IntGridError implements GridError {
  constructor(
    readonly kmin: number,
    readonly kmax: number,
  ) {}

  integral(u: number): number {
    const { kmin, kmax } = this;
    if (u <= kmin - 0.5) {
      const d = u - kmin;
      return (d * d * d + 0.125) / 3;
    }
    if (u >= kmax + 0.5) {
      const d = u - kmax;
      return (kmax - kmin + 1) / 12 + (d * d * d - 0.125) / 3;
    }
    let k = Math.floor(u + 0.5);
    if (k > kmax) k = kmax;
    const d = u - k;
    return (k - kmin) / 12 + (d * d * d + 0.125) / 3;
  }

  level(u: number): number {
    if (Number.isNaN(u)) return this.kmin;
    const v = Math.min(this.kmax, Math.max(this.kmin, u));
    const r = Math.round(v);
    return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }
}

/** A float8 format's finite values (saturating), symmetric about 0. */
export class Float8GridError implements GridError {
  /** Non-negative levels, ascending (index = magnitude code). */
  readonly levels: Float64Array;
  /** bounds[k] = midpoint between levels k-1 and k (bounds[0] = 0). */
  private readonly bounds: Float64Array;
  /** cum[k] = integral from 0 to bounds[k]. */
  private readonly cum: Float64Array;

  /**
   * The grid of a float8 type, or of any list of non-negative levels ascending from 0 (e.g. an E4M3 variant whose
   * codes are all finite, for comparisons with papers that assume so).
   */
  constructor(type: DataType | readonly number[]) {
    const vals: number[] = [];
    if (typeof type === 'number') {
      for (let c = 0; c < 0x80; c++) {
        const v = float8BitsToFloat32(c, type);
        if (Number.isFinite(v)) vals.push(v);
      }
    } else vals.push(...type);
    this.levels = Float64Array.from(vals);
    const n = vals.length;
    this.bounds = new Float64Array(n);
    this.cum = new Float64Array(n);
    for (let k = 1; k < n; k++) {
      this.bounds[k] = (vals[k - 1] + vals[k]) / 2;
      const l = vals[k - 1];
      this.cum[k] = this.cum[k - 1] + ((this.bounds[k] - l) ** 3 - (this.bounds[k - 1] - l) ** 3) / 3;
    }
  }

  /** Index of the cell holding magnitude a >= 0 (largest k with bounds[k] <= a). */
  private cell(a: number): number {
    const b = this.bounds;
    let lo = 0;
    let hi = b.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (b[mid] <= a) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  integral(u: number): number {
    const a = Math.abs(u);
    const k = this.cell(a);
    const l = this.levels[k];
    const h = this.cum[k] + ((a - l) ** 3 - (this.bounds[k] - l) ** 3) / 3;
    return u < 0 ? -h : h;
  }

  level(u: number): number {
    const a = Math.abs(u);
    let k = this.cell(a);
    // exactly on a boundary: round half to even (codes are consecutive, so even code = even index)
    if (k > 0 && a === this.bounds[k] && k % 2 !== 0) k--;
    const v = this.levels[k];
    return u < 0 ? -v : v;
  }
}

const FLOAT8_GRIDS = new Map<DataType, Float8GridError>();

/** The grid of an encoding's group (scale in units), and the scale. */
export function gridOf(scheme: QuantScheme, zeroPoint: number): GridError {
  if (isFloat8(scheme.format)) {
    const t = float8Type(scheme.format);
    let g = FLOAT8_GRIDS.get(t);
    if (!g) {
      g = new Float8GridError(t);
      FLOAT8_GRIDS.set(t, g);
    }
    return g;
  }
  const { qmin, qmax } = intRange(scheme.bits, scheme.signed, scheme.narrow);
  return new IntGridError(qmin - zeroPoint, qmax - zeroPoint);
}

/** Sum of squared quantization errors of values[from, to) with scale s, exactly as the quantizer computes. */
export function exactSquaredError(
  values: ArrayLike<number>,
  from: number,
  to: number,
  s: number,
  grid: GridError,
): number {
  let err = 0;
  if (grid instanceof IntGridError) {
    // the quantizer's arithmetic, inlined: clamp, round half to even, dequantize in float32
    const { kmin, kmax } = grid;
    for (let i = from; i < to; i++) {
      const x = values[i];
      let v = f32(x / s);
      if (Number.isNaN(v)) v = kmin;
      else if (v < kmin) v = kmin;
      else if (v > kmax) v = kmax;
      let r = Math.round(v);
      if (r - v === 0.5 && r % 2 !== 0) r--;
      const d = x - f32(r * s);
      err += d * d;
    }
    return err;
  }
  for (let i = from; i < to; i++) {
    const x = values[i];
    const d = x - f32(grid.level(f32(x / s)) * s);
    err += d * d;
  }
  return err;
}

/** Occupied histogram bins as flat arrays (lo, hi, count), edges clamped to the observed [min, max]. */
export interface BinList {
  lo: Float64Array;
  hi: Float64Array;
  count: Float64Array;
}

export function binList(h: StreamingHistogram): BinList {
  const lo: number[] = [];
  const hi: number[] = [];
  const count: number[] = [];
  h.forEachBin((a, b, c) => {
    lo.push(a);
    hi.push(b);
    count.push(c);
  });
  return { lo: Float64Array.from(lo), hi: Float64Array.from(hi), count: Float64Array.from(count) };
}

/** Expected sum of squared errors of the histogram's data with scale s (uniform density inside each bin). */
export function histogramSquaredError(bins: BinList, s: number, grid: GridError): number {
  let err = 0;
  const s3 = s * s * s;
  for (let j = 0; j < bins.count.length; j++) {
    const a = bins.lo[j];
    const b = bins.hi[j];
    const c = bins.count[j];
    if (b - a <= 0) {
      const d = a - grid.level(a / s) * s;
      err += c * d * d;
    } else {
      err += (c * s3 * (grid.integral(b / s) - grid.integral(a / s))) / (b - a);
    }
  }
  return err;
}

// ---------------------------------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------------------------------

export interface SearchOptions {
  candidates: number;
  spacing: 'geometric' | 'linear';
  minFraction: number;
  refineSteps: number;
}

export const DEFAULT_SEARCH: SearchOptions = {
  candidates: 100,
  spacing: 'geometric',
  minFraction: 0.01,
  refineSteps: 40,
};

/** Minimizes cost(f) over clip fractions f in (0, 1]; returns the best f and its cost. */
export function searchFraction(cost: (f: number) => number, o: SearchOptions): { f: number; cost: number } {
  const n = Math.max(2, o.candidates);
  const fs: number[] = [];
  for (let k = 0; k < n; k++) {
    fs.push(o.spacing === 'geometric' ? o.minFraction * (1 / o.minFraction) ** (k / (n - 1)) : (k + 1) / n);
  }
  let best = 0;
  let bestCost = Number.POSITIVE_INFINITY;
  for (let k = 0; k < n; k++) {
    const c = cost(fs[k]);
    if (c < bestCost) {
      bestCost = c;
      best = k;
    }
  }
  let f = fs[best];
  if (o.refineSteps > 0) {
    const a = best > 0 ? fs[best - 1] : fs[0] / 2;
    const b = best < n - 1 ? fs[best + 1] : fs[n - 1];
    for (let k = 1; k < o.refineSteps; k++) {
      const g = a + ((b - a) * k) / o.refineSteps;
      const c = cost(g);
      if (c < bestCost) {
        bestCost = c;
        f = g;
      }
    }
  }
  return { f, cost: bestCost };
}

/** The squared-error function of one group: (lo, hi) -> error of the encoding of that range. */
export type RangeCost = (lo: number, hi: number) => number;

/** Searches the MSE-optimal range of one group whose data spans [min, max]. */
export function searchRange(
  scheme: QuantScheme,
  min: number,
  max: number,
  cost: RangeCost,
  o: SearchOptions,
): [number, number] {
  const lo0 = Math.min(min, 0);
  const hi0 = Math.max(max, 0);
  if (lo0 === 0 && hi0 === 0) return [0, 0];
  if (isFloat8(scheme.format) || scheme.symmetry === 'symmetric') {
    const a = Math.max(-lo0, hi0);
    const { f } = searchFraction((t) => cost(-t * a, t * a), o);
    return [-f * a, f * a];
  }
  if (scheme.symmetry === 'unsigned-symmetric') {
    if (hi0 === 0) return [0, 0];
    const { f } = searchFraction((t) => cost(0, t * hi0), o);
    return [0, f * hi0];
  }
  // asymmetric: a common fraction first, then each end on its own
  const { f } = searchFraction((t) => cost(t * lo0, t * hi0), o);
  let lo = f * lo0;
  let hi = f * hi0;
  for (let round = 0; round < 2; round++) {
    if (hi0 > 0) hi = searchFraction((t) => cost(lo, t * hi0), o).f * hi0;
    if (lo0 < 0) lo = searchFraction((t) => cost(t * lo0, hi), o).f * lo0;
  }
  return [lo, hi];
}

/** The error function of one group of data (exact) or of a histogram (integrated). */
export function rangeCost(
  scheme: QuantScheme,
  source: { values: ArrayLike<number>; from: number; to: number } | BinList,
): RangeCost {
  const lo1 = new Float64Array(1);
  const hi1 = new Float64Array(1);
  return (lo, hi) => {
    lo1[0] = lo;
    hi1[0] = hi;
    const enc = encodingFromRange(scheme, lo1, hi1, []);
    const s = enc.scale[0];
    const grid = gridOf(scheme, enc.zeroPoint[0]);
    return 'values' in source
      ? exactSquaredError(source.values, source.from, source.to, s, grid)
      : histogramSquaredError(source, s, grid);
  };
}

export class MseAnalyzer implements EncodingAnalyzer {
  private readonly store: SampleStore;
  readonly search: SearchOptions;
  private readonly bins: number;

  constructor(
    readonly scheme: QuantScheme,
    options: AnalyzerOptions = {},
  ) {
    this.bins = options.bins ?? DEFAULT_BINS;
    this.store = new SampleStore(scheme, 'mse', this.bins, false, options.exactLimit);
    this.search = {
      candidates: options.candidates ?? DEFAULT_SEARCH.candidates,
      spacing: options.spacing ?? DEFAULT_SEARCH.spacing,
      minFraction: options.minFraction ?? DEFAULT_SEARCH.minFraction,
      refineSteps: options.refineSteps ?? DEFAULT_SEARCH.refineSteps,
    };
  }

  observe(x: Float32Array, dims: readonly number[]): void {
    this.store.observe(x, dims);
  }

  computeEncoding(): Encoding {
    const { data, hists } = this.store;
    const groups = this.store.shape.groups;
    const lo = new Float64Array(groups);
    const hi = new Float64Array(groups);
    for (let g = 0; g < groups; g++) {
      let min: number;
      let max: number;
      let cost: RangeCost;
      if (data) {
        const from = data.offsets[g];
        const to = data.offsets[g + 1];
        [min, max] = rangeOf(data.values, from, to);
        if (min > max) continue;
        if (to - from <= EXACT_GROUP_LIMIT) cost = rangeCost(this.scheme, { values: data.values, from, to });
        else {
          const h = new StreamingHistogram(this.bins);
          h.add(data.values, from, to);
          cost = rangeCost(this.scheme, binList(h));
        }
      } else {
        const h = hists![g];
        if (h.total === 0) continue;
        min = h.min;
        max = h.max;
        cost = rangeCost(this.scheme, binList(h));
      }
      [lo[g], hi[g]] = searchRange(this.scheme, min, max, cost, this.search);
    }
    return encodingForRanges(this.scheme, lo, hi, this.store.shape);
  }

  reset(): void {
    this.store.reset();
  }

  retainedBytes(): number {
    return this.store.retainedBytes();
  }
}
