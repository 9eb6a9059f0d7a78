/**
 * The runtime API that runs anywhere ONNX Runtime does (Node and browsers): nothing here imports Node modules.
 * Browser code imports from this file and passes onnxruntime-web as `backend` (or calls `setDefaultBackend`).
 */
export {
  loadDefaultBackend,
  type OrtBackend,
  type OrtSessionLike,
  type OrtTensorConstructor,
  type OrtTensorLike,
  type OrtValueMetadata,
  setDefaultBackend,
} from './backend.js';
export {
  type BatchOptions,
  type BatchProgress,
  concatAlongBatch,
  runBatched,
  splitAlongBatch,
} from './batch.js';
export {
  type Feeds,
  type GraphOptimizationLevel,
  type ModelSource,
  modelBytes,
  type Runner,
  type SerializableSessionOptions,
  Session,
  type SessionOptions,
  type ValueMeta,
} from './session.js';
export { addTaps, copyModelStructure, type TapOptions, tapAll } from './taps.js';
export {
  dataTypeOfOrt,
  fromOrtTensor,
  hasOrtType,
  isFetchableOutputType,
  ortTypeOf,
  toOrtTensor,
} from './tensor-convert.js';
export { recordElementTypes } from './value-types.js';
