/**
 * Presets: named weight/activation schemes on top of a target profile (`qnnx quantize --preset w8a8`).
 */
import { QnnxError } from '../errors.js';
import type { QuantSimOptions } from './sim/quantsim.js';

export type PresetName = 'w8a8' | 'w8a16' | 'w4a8' | 'w4a16' | 'int8-dynamic' | 'fp8' | 'fp16';

export const PRESETS: Record<
  PresetName,
  { description: string; sim?: Pick<QuantSimOptions, 'weights' | 'activations' | 'weightOnly'> }
> = {
  w8a8: {
    description: 'int8 weights (per-channel symmetric), uint8 activations (per-tensor asymmetric)',
    sim: {},
  },
  w8a16: {
    description: 'int8 weights, uint16 activations (opset 21; ONNX Runtime runs Q/DQ in reference kernels)',
    sim: { activations: { bits: 16, signed: false, symmetry: 'asymmetric' } },
  },
  w4a8: {
    description: 'int4 weights (per-channel symmetric, opset 21), uint8 activations',
    sim: { weights: { bits: 4, signed: true, symmetry: 'symmetric', narrow: true } },
  },
  w4a16: {
    description: 'int4 weights, uint16 activations (opset 21)',
    sim: {
      weights: { bits: 4, signed: true, symmetry: 'symmetric', narrow: true },
      activations: { bits: 16, signed: false, symmetry: 'asymmetric' },
    },
  },
  'int8-dynamic': {
    description: 'int8 weights for MatMul/Gemm, activations quantized at run time (DynamicQuantizeMatMul)',
  },
  fp8: {
    description: 'float8 e4m3fn weights (per-channel) and activations (per-tensor), opset 19',
    sim: {
      weights: { format: 'float8e4m3fn', signed: true, symmetry: 'symmetric' },
      activations: { format: 'float8e4m3fn', signed: true, symmetry: 'symmetric' },
    },
  },
  fp16: { description: 'float16 weights and compute, float32 inputs and outputs kept' },
};

export function getPreset(name: string): (typeof PRESETS)[PresetName] {
  const p = PRESETS[name as PresetName];
  if (!p)
    throw new QnnxError('E_USAGE', `unknown preset '${name}' (known: ${Object.keys(PRESETS).join(', ')})`);
  return p;
}
