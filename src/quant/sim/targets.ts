/**
 * Target profiles: which ops a target quantizes and how, as plain data. Built-in profiles describe what ONNX
 * Runtime fuses into integer kernels (see docs/quantize.md and the research note, part B); a custom profile is a
 * JSON file with the same fields (`qnnx quantize --target my-npu.json`).
 */
import { QnnxError } from '../../errors.js';
import type { Symmetry } from '../scheme.js';

export interface SchemeSpec {
  bits: number;
  signed: boolean;
  symmetry: Symmetry;
  narrow?: boolean;
  /** 'tensor' or 'channel' (weights: along the output-channel axis of each op). */
  granularity: 'tensor' | 'channel';
  scaleType?: 'float' | 'pow2';
}

export interface TargetProfile {
  name: string;
  description: string;
  /** Minimum default-domain opset of the exported model. */
  opset: number;
  weights: SchemeSpec;
  activations: SchemeSpec;
  /** 'int32': biases quantized with scale = input scale x weight scale; 'float': left as float. */
  bias: 'int32' | 'float';
  /** Ops with weights: their activation inputs, weights, biases and outputs are quantized. */
  weightedOps: string[];
  /** Ops whose float inputs and outputs are quantized (each tensor gets its own encoding). */
  quantizedOps: string[];
  /**
   * Ops that only move or select data: quantized inputs pass through, and the output reuses the input's encoding
   * (ONNX Runtime then drops the Q/DQ pair and runs the op on 8-bit data).
   */
  sharedEncodingOps: string[];
  /**
   * Activations folded into the op before them: no quantizer between op and activation, only after the
   * activation (ONNX Runtime removes Relu/Clip in front of a Q whose range they cannot change).
   */
  fusedActivations: string[];
  /** Quantize weights only (no activation quantizers). */
  weightOnly?: boolean;
}

const WEIGHTED = ['Conv', 'Gemm', 'MatMul'];
const ORT_FUSED = [
  'Add',
  'Mul',
  'Concat',
  'AveragePool',
  'GlobalAveragePool',
  'Sigmoid',
  'LeakyRelu',
  'Softmax',
];
const DATA_MOVEMENT = [
  'MaxPool',
  'Reshape',
  'Transpose',
  'Flatten',
  'Squeeze',
  'Unsqueeze',
  'Resize',
  'Slice',
  'Expand',
  'Tile',
  'Gather',
  'Split',
  'DepthToSpace',
  'SpaceToDepth',
  'Identity',
];

const ORT_CPU: TargetProfile = {
  name: 'ort-cpu',
  description:
    'ONNX Runtime CPU: int8 symmetric per-channel weights, uint8 asymmetric per-tensor activations, int32 biases; ' +
    'QDQ placed only where ORT fuses it into integer kernels (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, ...)',
  opset: 13,
  weights: { bits: 8, signed: true, symmetry: 'symmetric', narrow: true, granularity: 'channel' },
  activations: { bits: 8, signed: false, symmetry: 'asymmetric', granularity: 'tensor' },
  bias: 'int32',
  weightedOps: WEIGHTED,
  quantizedOps: ORT_FUSED,
  sharedEncodingOps: DATA_MOVEMENT,
  fusedActivations: ['Relu', 'Clip'],
};

export const TARGETS: Record<string, TargetProfile> = {
  'ort-cpu': ORT_CPU,
  'ort-wasm': {
    ...ORT_CPU,
    name: 'ort-wasm',
    description:
      'onnxruntime-web WASM: the same kernels as the CPU execution provider compiled to WebAssembly, so the same ' +
      'placement as ort-cpu',
  },
  'ort-webgpu': {
    name: 'ort-webgpu',
    description:
      'onnxruntime-web WebGPU: no integer convolution kernels, so only weights are quantized (int8 per-channel, ' +
      'DequantizeLinear in front of float ops): files shrink about 4x, compute stays float',
    opset: 13,
    weights: { bits: 8, signed: true, symmetry: 'symmetric', narrow: true, granularity: 'channel' },
    activations: { bits: 8, signed: false, symmetry: 'asymmetric', granularity: 'tensor' },
    bias: 'float',
    weightedOps: WEIGHTED,
    quantizedOps: [],
    sharedEncodingOps: [],
    fusedActivations: [],
    weightOnly: true,
  },
  'npu-symmetric-pow2': {
    name: 'npu-symmetric-pow2',
    description:
      'A generic fixed-point NPU: int8 symmetric power-of-two scales everywhere (weights per-tensor, activations ' +
      'signed with zero point 0), int32 biases, every supported op quantized including Tanh and HardSwish',
    opset: 13,
    weights: {
      bits: 8,
      signed: true,
      symmetry: 'symmetric',
      narrow: true,
      granularity: 'tensor',
      scaleType: 'pow2',
    },
    activations: { bits: 8, signed: true, symmetry: 'symmetric', granularity: 'tensor', scaleType: 'pow2' },
    bias: 'int32',
    weightedOps: [...WEIGHTED, 'ConvTranspose'],
    quantizedOps: [...ORT_FUSED, 'Sub', 'Div', 'Tanh', 'HardSwish', 'HardSigmoid', 'Relu', 'Clip'],
    sharedEncodingOps: DATA_MOVEMENT,
    fusedActivations: ['Relu', 'Clip'],
  },
};

const KEYS: (keyof TargetProfile)[] = [
  'name',
  'opset',
  'weights',
  'activations',
  'bias',
  'weightedOps',
  'quantizedOps',
  'sharedEncodingOps',
  'fusedActivations',
];

/** A built-in profile by name. */
export function getTarget(name: string): TargetProfile {
  const t = TARGETS[name];
  if (!t) {
    throw new QnnxError('E_USAGE', `unknown target '${name}' (built-in: ${Object.keys(TARGETS).join(', ')})`);
  }
  return structuredClone(t);
}

/** Validates a custom profile read from JSON; `source` names the file in messages. */
export function parseTarget(json: unknown, source: string): TargetProfile {
  if (typeof json !== 'object' || json === null) {
    throw new QnnxError('E_USAGE', `${source}: a target profile must be a JSON object`, { file: source });
  }
  const o = json as Record<string, unknown>;
  for (const k of KEYS) {
    if (!(k in o))
      throw new QnnxError('E_USAGE', `${source}: target profile lacks '${k}'`, { file: source, field: k });
  }
  for (const k of ['weightedOps', 'quantizedOps', 'sharedEncodingOps', 'fusedActivations'] as const) {
    if (!Array.isArray(o[k]) || !(o[k] as unknown[]).every((s) => typeof s === 'string')) {
      throw new QnnxError('E_USAGE', `${source}: '${k}' must be a list of op types`, {
        file: source,
        field: k,
      });
    }
  }
  return {
    ...(o as unknown as TargetProfile),
    description: typeof o.description === 'string' ? o.description : '',
  };
}
