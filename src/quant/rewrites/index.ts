/**
 * Graph rewrites for fast, accurate integer inference: exact float rewrites run before quantization (affine
 * chains into Convs, ConvTranspose as Conv1x1 + DepthToSpace), and post-export rewrites of the QDQ model (scalar affine absorption into quantization parameters).
 */
export {
  absorbAffineIntoQdq,
  absorbableAffineChains,
  QUANTIZED_READERS,
  QUANTIZED_WRITERS,
} from './affine-absorb.js';
export { type AffineChain, affineChainEndingAt, affineStep, foldAffineIntoConv } from './affine-into-conv.js';
export { type CompactOptions, compactQdq } from './compact.js';
export { convTransposeToDepthToSpace } from './convtranspose.js';
export { resizeNearestToExpand } from './resize.js';
export { exactNamePattern, firstConvs, targetWithFloatOps } from './select.js';
export { bindInputs, fixInputShapes, inlineConstantIf, specializeControlFlow } from './specialize.js';
