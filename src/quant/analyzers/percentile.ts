/**
 * Percentile calibration: clip at the p-th percentile of |x| (symmetric) or at the (100 - p)-th and p-th
 * percentiles of x (two-sided), from streaming histograms, per tensor or per channel. Inside a bin the
 * distribution is taken as uniform, so the result is within one bin width (<= range/1024 with 2048 bins) of the
 * exact sample percentile; it never leaves the observed [min, max].
 */
import type { Encoding } from '../encoding.js';
import { isFloat8, type QuantScheme } from '../scheme.js';
import type { AnalyzerOptions, EncodingAnalyzer } from './analyzer.js';
import { encodingForRanges } from './groups.js';
import type { MagnitudeBins } from './histogram.js';
import { DEFAULT_BINS, HistogramStore } from './store.js';

/** The value below which a fraction q of a magnitude histogram lies (linear inside a bin), at most max. */
export function magnitudeQuantile(m: MagnitudeBins, q: number): number {
  let total = 0;
  for (let j = 0; j < m.counts.length; j++) total += m.counts[j];
  if (total === 0) return 0;
  const target = Math.min(Math.max(q, 0), 1) * total;
  let cum = 0;
  for (let j = 0; j < m.counts.length; j++) {
    const c = m.counts[j];
    if (c > 0 && cum + c >= target) return Math.min(m.max, (j + (target - cum) / c) * m.width);
    cum += c;
  }
  return m.max;
}

/** Whether range methods clip |x| symmetrically by default for a scheme. */
export function symmetricByDefault(scheme: QuantScheme): boolean {
  return isFloat8(scheme.format) || scheme.symmetry !== 'asymmetric';
}

export class PercentileAnalyzer implements EncodingAnalyzer {
  readonly percentile: number;
  readonly symmetric: boolean;
  private readonly store: HistogramStore;

  constructor(
    readonly scheme: QuantScheme,
    options: AnalyzerOptions = {},
  ) {
    this.percentile = options.percentile ?? 99.99;
    this.symmetric = options.symmetric ?? symmetricByDefault(scheme);
    this.store = new HistogramStore(scheme, 'percentile', options.bins ?? DEFAULT_BINS);
  }

  observe(x: Float32Array, dims: readonly number[]): void {
    this.store.observe(x, dims);
  }

  computeEncoding(): Encoding {
    const hists = this.store.hists;
    const lo = new Float64Array(hists.length);
    const hi = new Float64Array(hists.length);
    const p = this.percentile / 100;
    for (let g = 0; g < hists.length; g++) {
      const h = hists[g];
      if (h.total === 0) continue;
      if (this.scheme.symmetry === 'unsigned-symmetric' && !isFloat8(this.scheme.format)) {
        hi[g] = Math.max(h.quantile(p), 0);
      } else if (this.symmetric) {
        const a = magnitudeQuantile(h.magnitudes(), p);
        lo[g] = -a;
        hi[g] = a;
      } else {
        lo[g] = h.quantile(1 - p);
        hi[g] = h.quantile(p);
      }
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
