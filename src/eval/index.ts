/** Evaluation: metrics (SQNR, accuracy, ...), float-vs-quantized comparison, per-layer sensitivity. */
export {
  type CompareOptions,
  compareModels,
  type EvaluateOptions,
  evaluateModel,
  type ModelComparison,
  type ModelEvaluation,
  type OutputComparison,
  type Samples,
} from './compare.js';
export {
  AccuracyAccumulator,
  type AccuracyResult,
  AgreementAccumulator,
  accuracy,
  argmaxRow,
  argmaxRows,
  ErrorAccumulator,
  type ErrorMetrics,
  errorMetrics,
  inTopK,
  type Labels,
  LatencyAccumulator,
  type LatencyStats,
  scoreRows,
  sqnrDb,
  tensorValues,
  toLabelArray,
} from './metrics.js';
export {
  measureNoiseGain,
  type NoiseGainEntry,
  type NoiseGainOptions,
  type NoiseGainReport,
  type NoiseSite,
  noiseSites,
} from './noise-gain.js';
export {
  analyzeSensitivity,
  groupQuantizers,
  type LayerSensitivity,
  type QuantizerGroup,
  type SensitivityEntry,
  type SensitivityMode,
  type SensitivityOptions,
  type SensitivityReport,
} from './sensitivity.js';
