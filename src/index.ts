/**
 * qnnx: the public API. Names follow the CLI: loadModel/saveModel, inspectModel, quantizeModel, compareModels.
 * Browser code should import the portable modules (onnx/, ir/, quant/, runtime/portable) directly; this entry
 * point also brings the Node-only file, data and worker layers.
 */
export * from './data/index.js';
export { isQnnxError, QnnxError, type QnnxErrorCode } from './errors.js';
export * from './eval/index.js';
export { loadModel, modelToBytes, type SaveOptions, saveModel } from './io/model-file.js';
export { GraphBuilder, makeAttribute, tensorType, valueInfo } from './ir/builder.js';
export { type Attribute, Graph, Node, type ValueInfo } from './ir/graph.js';
export { inspectModel, type ModelSummary } from './ir/inspect.js';
export { Model, modelFromProto, modelToProto } from './ir/model.js';
export type { Pass, PassRecord } from './ir/pass.js';
export * from './ir/passes/index.js';
export { Tensor } from './ir/tensor.js';
export { decodeModelProto, encodeModelProto } from './onnx/codec.js';
export { DataType, dataTypeName } from './onnx/dtype.js';
export * from './onnx/formats.js';
export * from './ptq/index.js';
export * from './quant/analyzers/index.js';
export { gridOf } from './quant/analyzers/index.js';
export { type Encoding, encodingFromRange } from './quant/encoding.js';
export {
  aimetEncodingsJson,
  applyEncodings,
  exportAimetEncodings,
  parseAimetEncodings,
} from './quant/export/aimet.js';
export { exportDynamicInt8 } from './quant/export/dynamic.js';
export { convertToFloat16 } from './quant/export/fp16.js';
export { exportWeightOnly, weightOnlySimulation } from './quant/export/matmulnbits.js';
export { exportQdq } from './quant/export/qdq.js';
export { correctWeightOnlyBias } from './quant/export/weight-only.js';
export {
  type MixedPrecisionOptions,
  type MixedPrecisionReport,
  mixedPrecision,
} from './quant/mixed-precision.js';
export { PRESETS, type PresetName } from './quant/presets.js';
export {
  type PtqTechniques,
  type QuantizeOptions,
  type QuantizeReport,
  quantizeModel,
  type RewriteOptions,
} from './quant/quantize.js';
export { dequantize, fakeQuantize, quantize, sqnrDb } from './quant/quantizer.js';
export * from './quant/scheme.js';
export {
  type CalibrationBatching,
  calibrate,
  calibrationBatching,
  calibrationPlan,
} from './quant/sim/calibrate.js';
export { type Quantizer, QuantSim, type QuantSimOptions } from './quant/sim/quantsim.js';
export { getTarget, parseTarget, TARGETS, type TargetProfile } from './quant/sim/targets.js';
export * from './runtime/index.js';
export type { HostTensor, TensorStorage } from './tensor.js';
export * from './train/index.js';
