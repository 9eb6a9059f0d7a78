/**
 * Graph passes: each rewrites a Model in place and returns a PassRecord. `optimize` is the default clean-up
 * pipeline (dead nodes, constant folding, dead nodes again).
 */
import type { Model } from '../model.js';
import type { PassRecord } from '../pass.js';
import { type ConstantFoldingOptions, foldConstants } from './constant-folding.js';
import { eliminateDeadNodes } from './dead-code.js';

export { type BatchNormFoldOptions, type FoldedPair, foldBatchNorm } from './bn-folding.js';
export { type ConstantFoldingOptions, foldConstants } from './constant-folding.js';
export { eliminateDeadNodes } from './dead-code.js';
export { MAX_UPGRADE_OPSET, upgradeOpset } from './opset-upgrade.js';
export {
  broadcastShapes,
  constantNodeTensor,
  type Dim,
  dimsOfType,
  elemTypeOfType,
  inferShapes,
  inferTypes,
  type RecordShapesOptions,
  recordShapesByRunning,
  type ShapeInferenceOptions,
  type ShapeRunner,
  TypeTable,
  tensorNumbers,
  type ValueType,
} from './shape-inference.js';

/** Dead-node elimination, constant folding, dead-node elimination again; returns the three records. */
export function optimize(model: Model, options: ConstantFoldingOptions = {}): PassRecord[] {
  return [eliminateDeadNodes(model), foldConstants(model, options), eliminateDeadNodes(model)];
}
