/**
 * Training: the training graph (forward + loss + backward + optimizer update in one ONNX model), the trainer
 * that runs it, checkpoints, losses, optimizers, learning-rate schedules and the fake-quant pseudo-op of QAT.
 */
export { addGradients, type GradientOptions, type GradientResult } from './autodiff/engine.js';
export { registeredOps, registerRule } from './autodiff/registry.js';
export type { GradContext, GradientRule } from './autodiff/rule.js';
export {
  type FakeQuantGradInputs,
  type FakeQuantGradient,
  type FakeQuantGradientOptions,
  type FakeQuantGradResult,
  fakeQuantGradientLearns,
  fakeQuantGradientNames,
  lsqGradient,
  madGradient,
  registerFakeQuantGradient,
  steGradient,
} from './autodiff/rules/fake-quant.js';
export * from './builder/index.js';
export {
  CHECKPOINT_FORMAT,
  CHECKPOINT_METADATA_KEY,
  type Checkpoint,
  type CheckpointMeta,
  decodeCheckpoint,
  encodeCheckpoint,
  loadCheckpoint,
  saveCheckpoint,
} from './checkpoint.js';
export {
  declareFakeQuantTypes,
  FAKE_QUANT_DOMAIN,
  FAKE_QUANT_OP,
  type FakeQuantAttrs,
  type FakeQuantSpec,
  fakeQuantAttrs,
  fakeQuantSpecFromEncoding,
  insertFakeQuant,
  isFakeQuant,
  lowerFakeQuant,
} from './fake-quant.js';
export {
  addLoss,
  isClassification,
  LOSS_KINDS,
  type LossKind,
  type LossSpec,
  lossTargetType,
  lossValue,
} from './losses.js';
export {
  appendGradClip,
  appendOptimizer,
  type OptimizerGraph,
  type OptimizerKind,
  type OptimizerSpec,
  resolveOptimizer,
  type StateSlot,
} from './optimizers.js';
export {
  constantLr,
  cosineLr,
  type LrSchedule,
  linearWarmup,
  perEpochLr,
  type ScheduleSpec,
  scaledLr,
  scheduleFromSpec,
  sequentialLr,
  stepLr,
} from './schedules.js';
export {
  type Dataset,
  type EpochMetrics,
  type EvalMetrics,
  epochPermutation,
  type StepMetrics,
  Trainer,
  type TrainerOptions,
  type TrainOptions,
  type TrainResult,
  train,
} from './trainer.js';
export {
  batchNormStats,
  buildTrainingGraph,
  cloneModel,
  type DropoutMask,
  type Feedback,
  resolveTrainable,
  type TrainingGraph,
  type TrainingGraphOptions,
} from './training-graph.js';
