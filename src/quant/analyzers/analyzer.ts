/**
 * Encoding analyzers (AIMET v2's "encoding analyzer" role): observe statistics of a tensor, one batch at a time,
 * and compute an encoding for a quantization scheme from everything observed. Quantizers apply encodings;
 * QuantSim places quantizers; analyzers only measure.
 *
 * Memory stays flat however many batches are observed: min/max are streamed, distribution-based methods keep
 * fixed-size histograms (src/quant/analyzers/histogram.ts), and MSE/OCTAV keep the data itself only while it is
 * a single observation (weights), where they compute exactly.
 */
import { QnnxError } from '../../errors.js';
import type { Encoding } from '../encoding.js';
import type { QuantScheme } from '../scheme.js';
import { EntropyAnalyzer } from './entropy.js';
import { MinMaxAnalyzer, MovingAverageAnalyzer } from './minmax.js';
import { MseAnalyzer } from './mse.js';
import { OctavAnalyzer } from './octav.js';
import { PercentileAnalyzer } from './percentile.js';

export interface EncodingAnalyzer {
  /** Observe one batch of the tensor (dims may vary along dynamic axes except the quantization axis). */
  observe(x: Float32Array, dims: readonly number[]): void;
  /** Compute the encoding for the scheme from everything observed. */
  computeEncoding(): Encoding;
  reset(): void;
  /** Bytes of statistics held now (typed arrays), for checking that memory stays flat. */
  retainedBytes(): number;
}

export type AnalyzerKind = 'minmax' | 'moving-average' | 'percentile' | 'mse' | 'octav' | 'entropy';

export const ANALYZER_KINDS: readonly AnalyzerKind[] = [
  'minmax',
  'moving-average',
  'percentile',
  'mse',
  'octav',
  'entropy',
];

/** Options of all analyzers (each reads its own; defaults in brackets). */
export interface AnalyzerOptions {
  /** moving-average: weight of the newest batch's min/max, as PyTorch's averaging_constant [0.01]. */
  momentum?: number;
  /** percentile: the percentile kept, in (0, 100] [99.99]. */
  percentile?: number;
  /**
   * percentile, entropy: clip |x| symmetrically (true) or each tail on its own (false) [true unless the scheme
   * is asymmetric].
   */
  symmetric?: boolean;
  /** Histogram bins per group (percentile, entropy, and MSE/OCTAV once they stream) [2048]. */
  bins?: number;
  /** mse: candidates of the coarse search [100]. */
  candidates?: number;
  /** mse: candidate spacing over [minFraction, 1] * max [geometric]. */
  spacing?: 'geometric' | 'linear';
  /** mse: smallest clip fraction searched [0.01]. */
  minFraction?: number;
  /** mse: refine around the best coarse candidate with this many linear steps (0: no refinement) [40]. */
  refineSteps?: number;
  /** octav: Newton-Raphson iterations at most [15]. */
  maxIterations?: number;
  /** octav: initial clip (default: the mean |x| times 2). */
  initialClip?: number;
  /**
   * octav: noise coefficient. 'grid' matches the scheme's grid (see octav.ts); 'paper' is the paper's
   * sign-magnitude 4^-B/3 (unsigned 4^-B/12); a number sets it directly (symmetric grids) ['grid'].
   */
  coefficient?: 'grid' | 'paper' | number;
  /**
   * mse, octav: keep the data of a single observation up to this many values and compute exactly from it
   * (weights); beyond, or from the second observation on, use histograms [2^24]. Per-block/per-vector schemes
   * always keep the data and accept a single observation.
   */
  exactLimit?: number;
}

/** A calibration method: an analyzer kind plus its options (what `parseRangeMethod` returns). */
export interface RangeMethod extends AnalyzerOptions {
  kind: AnalyzerKind;
}

/**
 * Parses a method spec: 'minmax', 'moving-average[:momentum]', 'percentile[:p]', 'mse', 'octav', 'entropy'
 * (e.g. 'percentile:99.99', 'moving-average:0.01'). Throws E_USAGE for anything else.
 */
export function parseRangeMethod(spec: string): RangeMethod {
  const [name, arg, extra] = spec.trim().split(':');
  const kind = name as AnalyzerKind;
  if (!ANALYZER_KINDS.includes(kind) || extra !== undefined) {
    throw new QnnxError(
      'E_USAGE',
      `unknown range method '${spec}'; use minmax, moving-average[:momentum], percentile[:p], mse, octav or entropy`,
    );
  }
  if (arg === undefined || arg === '') return { kind };
  const v = Number(arg);
  if (kind === 'percentile') {
    if (!(v > 0 && v <= 100)) throw new QnnxError('E_USAGE', `percentile must be in (0, 100], got '${arg}'`);
    return { kind, percentile: v };
  }
  if (kind === 'moving-average') {
    if (!(v > 0 && v <= 1))
      throw new QnnxError('E_USAGE', `moving-average momentum must be in (0, 1], got '${arg}'`);
    return { kind, momentum: v };
  }
  throw new QnnxError('E_USAGE', `range method '${kind}' takes no argument (got '${spec}')`);
}

/** Creates the analyzer of a kind (or of a parsed method, whose options `options` override). */
export function createAnalyzer(
  kind: AnalyzerKind | RangeMethod,
  scheme: QuantScheme,
  options: AnalyzerOptions = {},
): EncodingAnalyzer {
  const method: RangeMethod = typeof kind === 'string' ? { kind, ...options } : { ...kind, ...options };
  switch (method.kind) {
    case 'minmax':
      return new MinMaxAnalyzer(scheme);
    case 'moving-average':
      return new MovingAverageAnalyzer(scheme, method.momentum);
    case 'percentile':
      return new PercentileAnalyzer(scheme, method);
    case 'mse':
      return new MseAnalyzer(scheme, method);
    case 'octav':
      return new OctavAnalyzer(scheme, method);
    case 'entropy':
      return new EntropyAnalyzer(scheme, method);
    default:
      throw new QnnxError('E_USAGE', `unknown analyzer kind '${(method as RangeMethod).kind}'`);
  }
}
