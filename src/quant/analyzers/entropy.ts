/**
 * Entropy (KL-divergence) calibration, as TensorRT's and pytorch-quantization's `_compute_amax_entropy`: over the
 * histogram of |x|, for every candidate threshold bin i (from the number of quantized bins up to the last bin),
 * the reference distribution P is the first i bins with all the outliers added to the last one; the candidate Q
 * merges those i bins into `levels` quantized bins and spreads each merged count evenly over the source bins that
 * were non-zero. The threshold is the edge i * width of the i minimizing KL(P || Q) (the last one on ties).
 * `levels` = 2^(bits-1) (128 for int8) for signed data, 2^bits for non-negative data on an unsigned or asymmetric
 * grid (pytorch-quantization's `1 << (num_bits - 1 + int(unsigned))`).
 *
 * KL per candidate in O(levels) from prefix sums of h, h log h and the non-zero count (instead of O(i)), so a
 * 2048-bin histogram takes ~250k operations. The |x| histogram folds the signed 2048-bin one: it has between 512
 * and 2048 bins over [0, max|x|] (TensorRT: exactly 2048), so thresholds are resolved to <= max|x|/512.
 * Integer formats only (the quantized-bin model is a uniform grid).
 */
import { QnnxError } from '../../errors.js';
import type { Encoding } from '../encoding.js';
import type { QuantScheme } from '../scheme.js';
import type { AnalyzerOptions, EncodingAnalyzer } from './analyzer.js';
import { encodingForRanges } from './groups.js';
import type { MagnitudeBins } from './histogram.js';
import { symmetricByDefault } from './percentile.js';
import { DEFAULT_BINS, HistogramStore } from './store.js';

/**
 * The KL-optimal threshold of a magnitude histogram for `levels` quantized bins: the edge `bin * width` (at most
 * the observed max). A histogram with no more than `levels` bins is not clipped.
 */
export function entropyThreshold(m: MagnitudeBins, levels: number): { threshold: number; bin: number } {
  // As pytorch-quantization's _compute_amax_entropy: the first bin takes the second's count, so a spike at zero
  // (every ReLU output) does not dominate the KL search.
  const h = Float64Array.from(m.counts);
  if (h.length > 1) h[0] = h[1];
  const len = h.length;
  if (len <= levels) return { threshold: m.max, bin: len };
  const cum = new Float64Array(len + 1);
  const cumHLogH = new Float64Array(len + 1);
  const cumNz = new Float64Array(len + 1);
  for (let j = 0; j < len; j++) {
    const c = h[j];
    cum[j + 1] = cum[j] + c;
    cumHLogH[j + 1] = cumHLogH[j] + (c > 0 ? c * Math.log(c) : 0);
    cumNz[j + 1] = cumNz[j] + (c > 0 ? 1 : 0);
  }
  const total = cum[len];
  const logTotal = Math.log(total);
  let bestI = len;
  let best = Number.POSITIVE_INFINITY;
  for (let i = levels; i <= len; i++) {
    const inside = cum[i];
    const outliers = total - inside;
    const last = h[i - 1];
    if (inside === 0 || (last === 0 && outliers > 0)) continue; // KL = +Infinity
    const logInside = Math.log(inside);
    // sum over j < i-1 of p_j log p_j, p_j = h_j / N
    let kl = (cumHLogH[i - 1] - cum[i - 1] * logTotal) / total;
    // minus sum over j < i of (h_j / N) log q_j (all of bin k's mass sees the same q), the last bin handled below
    let lastQ = 0;
    for (let k = 0; k < levels; k++) {
      const a = Math.ceil((k * i) / levels);
      const b = Math.ceil(((k + 1) * i) / levels);
      let mass = cum[b] - cum[a];
      if (mass === 0) continue;
      const nz = cumNz[b] - cumNz[a];
      const logQ = Math.log(mass / nz) - logInside;
      if (b === i) {
        lastQ = logQ;
        mass -= last; // the last source bin is counted with the outliers below
      }
      kl -= (mass / total) * logQ;
    }
    // the last source bin: p = (h_{i-1} + outliers) / N
    const pLast = (last + outliers) / total;
    if (pLast > 0) kl += pLast * (Math.log(pLast) - lastQ);
    if (kl <= best) {
      best = kl;
      bestI = i;
    }
  }
  return { threshold: Math.min(bestI * m.width, m.max), bin: bestI };
}

export class EntropyAnalyzer implements EncodingAnalyzer {
  readonly symmetric: boolean;
  private readonly store: HistogramStore;

  constructor(
    readonly scheme: QuantScheme,
    options: AnalyzerOptions = {},
  ) {
    if (scheme.format !== 'int') {
      throw new QnnxError('E_USAGE', `entropy calibration needs an integer format, not ${scheme.format}`);
    }
    this.symmetric = options.symmetric ?? symmetricByDefault(scheme);
    this.store = new HistogramStore(scheme, 'entropy', options.bins ?? DEFAULT_BINS);
  }

  observe(x: Float32Array, dims: readonly number[]): void {
    this.store.observe(x, dims);
  }

  computeEncoding(): Encoding {
    const hists = this.store.hists;
    const lo = new Float64Array(hists.length);
    const hi = new Float64Array(hists.length);
    const s = this.scheme;
    const signedLevels = 2 ** (s.bits - 1);
    const unsignedLevels = 2 ** s.bits;
    for (let g = 0; g < hists.length; g++) {
      const h = hists[g];
      if (h.total === 0) continue;
      if (s.symmetry === 'unsigned-symmetric') {
        hi[g] = entropyThreshold(h.positive(), unsignedLevels).threshold;
      } else if (this.symmetric) {
        const t = entropyThreshold(
          h.magnitudes(),
          s.signed || s.symmetry === 'symmetric' ? signedLevels : unsignedLevels,
        );
        lo[g] = -t.threshold;
        hi[g] = t.threshold;
      } else if (h.min >= 0) {
        lo[g] = h.min;
        hi[g] = entropyThreshold(h.positive(), unsignedLevels).threshold;
      } else if (h.max <= 0) {
        lo[g] = -entropyThreshold(h.negative(), unsignedLevels).threshold;
        hi[g] = h.max;
      } else {
        // two-sided: each tail on its own, the quantized bins shared in proportion to the observed range
        const posLevels = Math.min(
          unsignedLevels - 2,
          Math.max(2, Math.round((unsignedLevels * h.max) / (h.max - h.min))),
        );
        hi[g] = entropyThreshold(h.positive(), posLevels).threshold;
        lo[g] = -entropyThreshold(h.negative(), unsignedLevels - posLevels).threshold;
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
