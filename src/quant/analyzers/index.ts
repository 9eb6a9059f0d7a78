/** Encoding analyzers: observe statistics of a tensor, return an encoding (see analyzer.ts). */
export {
  ANALYZER_KINDS,
  type AnalyzerKind,
  type AnalyzerOptions,
  createAnalyzer,
  type EncodingAnalyzer,
  parseRangeMethod,
  type RangeMethod,
} from './analyzer.js';
export { EntropyAnalyzer, entropyThreshold } from './entropy.js';
export { type MagnitudeBins, StreamingHistogram } from './histogram.js';
export { MinMaxAnalyzer, MovingAverageAnalyzer } from './minmax.js';
export {
  type BinList,
  binList,
  DEFAULT_SEARCH,
  EXACT_GROUP_LIMIT,
  exactSquaredError,
  Float8GridError,
  type GridError,
  gridOf,
  histogramSquaredError,
  IntGridError,
  MseAnalyzer,
  type SearchOptions,
  searchFraction,
  searchRange,
} from './mse.js';
export {
  exactTailStats,
  histogramTailStats,
  OctavAnalyzer,
  type OctavGrid,
  type OctavResult,
  octavGrid,
  octavSolve,
  type TailStats,
} from './octav.js';
export { magnitudeQuantile, PercentileAnalyzer } from './percentile.js';
