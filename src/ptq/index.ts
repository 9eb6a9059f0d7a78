/**
 * Post-training quantization algorithms (research S09, S13 B-G, S08): BatchNorm re-estimation, cross-layer
 * equalization with high-bias absorption, bias correction, softmax bias correction, AdaRound, sequential MSE,
 * and AutoQuant, which applies them in order of cost until the quantized model is good enough.
 *
 * Two files define a `WeightedLayer` / `weightedLayers` (cle.ts: layers as channel maps over a float model;
 * layer-cache.ts: quantized layers of a QuantSim for AdaRound and sequential MSE) and two a `MakeRunner` (the
 * same type). The names re-exported here are cle.ts' and bias-correction.ts'; layer-cache.ts' are re-exported as
 * `QuantizedLayer` and `quantizedLayers`.
 */
export * from './adaround.js';
export * from './autoquant.js';
export type { MakeRunner } from './bias-correction.js';
export * from './bias-correction.js';
export * from './bn-reestimation.js';
export * from './cle.js';
export { type WeightedLayer, weightedLayers } from './cle.js';
export * from './layer-cache.js';
export { type WeightedLayer as QuantizedLayer, weightedLayers as quantizedLayers } from './layer-cache.js';
export * from './seq-mse.js';
export * from './softmax-bias.js';
