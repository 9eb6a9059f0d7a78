/**
 * Where distribution-based analyzers keep what they observed, per scale group, in flat memory:
 *
 * - `HistogramStore`: one streaming histogram per group (per tensor or per channel);
 * - `SampleStore` (MSE, OCTAV): the data itself while it is a single observation of at most `exactLimit` values
 *   (weights: exact results), switching to histograms from the second observation on (activations). Per-block and
 *   per-vector groups are laid out over the whole tensor, so they keep the data and take one observation only.
 */
import { QnnxError } from '../../errors.js';
import type { QuantScheme } from '../scheme.js';
import { type GroupedValues, GroupShape, rangeOf, splitByGroup } from './groups.js';
import { StreamingHistogram } from './histogram.js';

export const DEFAULT_BINS = 2048;
export const DEFAULT_EXACT_LIMIT = 2 ** 24;

export class HistogramStore {
  readonly shape: GroupShape;
  hists: StreamingHistogram[] = [];

  constructor(
    readonly scheme: QuantScheme,
    readonly method: string,
    readonly bins = DEFAULT_BINS,
    readonly keepSums = false,
  ) {
    const k = scheme.granularity.kind;
    if (k !== 'tensor' && k !== 'channel') {
      throw new QnnxError(
        'E_USAGE',
        `the ${method} analyzer works per tensor or per channel, not per ${scheme.granularity.kind}`,
      );
    }
    this.shape = new GroupShape(scheme.granularity);
  }

  observe(x: Float32Array, dims: readonly number[]): void {
    const first = this.shape.dims === null;
    const groups = this.shape.check(dims, x.length);
    if (first)
      this.hists = Array.from({ length: groups }, () => new StreamingHistogram(this.bins, this.keepSums));
    addGrouped(this.hists, splitByGroup(x, dims, this.scheme.granularity), this.method);
  }

  reset(): void {
    this.shape.reset();
    this.hists = [];
  }

  retainedBytes(): number {
    return this.hists.reduce((s, h) => s + h.retainedBytes, 0);
  }
}

function addGrouped(hists: StreamingHistogram[], split: GroupedValues, method: string): void {
  for (let g = 0; g < split.groups; g++) {
    const from = split.offsets[g];
    const to = split.offsets[g + 1];
    const [lo, hi] = rangeOf(split.values, from, to);
    if (lo === Number.NEGATIVE_INFINITY || hi === Number.POSITIVE_INFINITY) {
      throw new QnnxError(
        'E_DATA',
        `${method} analyzer: the data holds ${lo === -Infinity ? '-' : ''}Infinity`,
      );
    }
    hists[g].add(split.values, from, to);
  }
}

/** Exact data of one observation, or histograms. */
export class SampleStore {
  readonly shape: GroupShape;
  /** The single observation, grouped (null once histograms took over, or before any). */
  data: GroupedValues | null = null;
  hists: StreamingHistogram[] | null = null;
  private observations = 0;

  constructor(
    readonly scheme: QuantScheme,
    readonly method: string,
    readonly bins = DEFAULT_BINS,
    readonly keepSums = false,
    readonly exactLimit = DEFAULT_EXACT_LIMIT,
  ) {
    this.shape = new GroupShape(scheme.granularity);
  }

  private get blocked(): boolean {
    const k = this.scheme.granularity.kind;
    return k === 'block' || k === 'vector';
  }

  observe(x: Float32Array, dims: readonly number[]): void {
    const groups = this.shape.check(dims, x.length);
    this.observations++;
    if (this.blocked && this.observations > 1) {
      throw new QnnxError(
        'E_USAGE',
        `the ${this.method} analyzer computes per-${this.scheme.granularity.kind} encodings from one observation ` +
          '(weights); use minmax to calibrate blocked activations',
      );
    }
    const split = splitByGroup(x, dims, this.scheme.granularity);
    if (this.observations === 1 && (this.blocked || x.length <= this.exactLimit)) {
      // keep a private copy (the caller may reuse its buffer)
      this.data = split.values === x ? { ...split, values: x.slice() } : split;
      for (let g = 0; g < groups; g++) {
        const [lo, hi] = rangeOf(this.data.values, this.data.offsets[g], this.data.offsets[g + 1]);
        if (lo === Number.NEGATIVE_INFINITY || hi === Number.POSITIVE_INFINITY) {
          throw new QnnxError(
            'E_DATA',
            `${this.method} analyzer: the data holds ${lo === -Infinity ? '-' : ''}Infinity`,
          );
        }
      }
      return;
    }
    if (!this.hists) {
      this.hists = Array.from({ length: groups }, () => new StreamingHistogram(this.bins, this.keepSums));
      if (this.data) addGrouped(this.hists, this.data, this.method);
      this.data = null;
    }
    addGrouped(this.hists, split, this.method);
  }

  reset(): void {
    this.shape.reset();
    this.data = null;
    this.hists = null;
    this.observations = 0;
  }

  retainedBytes(): number {
    if (this.data) return this.data.values.byteLength + this.data.offsets.byteLength;
    return this.hists ? this.hists.reduce((s, h) => s + h.retainedBytes, 0) : 0;
  }
}
