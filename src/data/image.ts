/**
 * Images (PNG, JPEG, WebP, GIF, TIFF, AVIF, ... whatever sharp decodes) → a preprocessed HostTensor with a
 * leading batch dim of 1: [1, C, H, W] for layout 'NCHW', [1, H, W, C] for 'NHWC'.
 *
 * Steps, in order:
 * 1. decode with sharp (8 bits per channel; alpha is dropped, not blended; EXIF orientation is applied only
 *    with `autoOrient: true`, so by default pixels are in stored order as PIL's Image.open gives them);
 * 2. resize (see below) with sharp's `kernel` (default 'lanczos3'; use 'nearest', 'linear' or 'cubic' to
 *    imitate other pipelines);
 * 3. colour: `channels: 3` gives RGB (grey sources are replicated); `channels: 1` gives luma computed from the
 *    gamma-encoded RGB with ITU-R 601 weights exactly as PIL's convert('L') does
 *    ((19595 R + 38470 G + 7471 B + 32768) >> 16; grey sources pass through unchanged);
 *    `channelOrder: 'BGR'` reverses the channels (cv2 order);
 * 4. values: dtype 'uint8' keeps the 0..255 bytes (no scale/mean/std allowed); dtype 'float32' (default)
 *    computes `(pixel * scale - mean[c]) / std[c]` with scale default 1, mean default 0, std default 1.
 *    `mean`/`std` have one value (all channels) or one per channel IN OUTPUT CHANNEL ORDER (so for
 *    channelOrder 'BGR' give them in B, G, R order).
 *
 * Resizing, fixed size: give `width` and `height`. `fit` is 'fill' (default: stretch to exactly width x
 * height), 'cover' (keep aspect ratio, scale to cover, centre-crop) or 'contain' (keep aspect ratio, scale to
 * fit, centre and pad with `background`, default 0, e.g. 114 for YOLO-style letterboxing).
 *
 * Resizing, variable width (OCR text-line recognizers and similar): give `height` and `widthMultiple` (and
 * usually `maxWidth`), no `width`. The natural width `srcW * height / srcH` is rounded UP to a multiple of
 * `widthMultiple`, then clamped to [minWidth, maxWidth] (minWidth defaults to widthMultiple; both are
 * rounded to multiples — maxWidth down, minWidth up). With `widthRounding: 'stretch'` (default) the image is
 * resized to exactly that width (a slight horizontal stretch of less than one multiple); with 'pad' it is
 * resized to its natural width (clamped) and padded on the right with `background` up to the multiple, as
 * PaddleOCR's recognizer preprocessing does. E.g. `{ height: 48, widthMultiple: 8, maxWidth: 320, channels: 3,
 * layout: 'NCHW', scale: 1/127.5, mean: [1], std: [1] }` gives [1, 3, 48, W] with W in 8..320, values in
 * [-1, 1].
 *
 * Neither width nor height: the image keeps its size. Only height or only width (without widthMultiple):
 * the other side follows the aspect ratio (rounded to the nearest pixel).
 */
import sharp, { type OutputInfo } from 'sharp';
import { QnnxError } from '../errors.js';
import { DataType } from '../onnx/dtype.js';
import type { HostTensor } from '../tensor.js';
import { readDataFile } from './files.js';

export type ResizeKernel = 'nearest' | 'linear' | 'cubic' | 'mitchell' | 'lanczos2' | 'lanczos3';

export interface ImageSpec {
  /** Output width (fixed-size mode). Leave out for variable-width mode (`widthMultiple`). */
  width?: number;
  /** Output height. */
  height?: number;
  /** How a fixed width x height is reached: 'fill' (default), 'cover' or 'contain'. */
  fit?: 'fill' | 'cover' | 'contain';
  /** Variable-width mode: the width is a multiple of this. Needs `height`, excludes `width`. */
  widthMultiple?: number;
  /** Variable-width mode: the largest width (rounded down to a multiple). Default: no limit. */
  maxWidth?: number;
  /** Variable-width mode: the smallest width (rounded up to a multiple). Default: widthMultiple. */
  minWidth?: number;
  /** Variable-width mode: 'stretch' (default) or 'pad' to reach the multiple. */
  widthRounding?: 'stretch' | 'pad';
  channels: 1 | 3;
  layout: 'NCHW' | 'NHWC';
  /** Default 'RGB'. Ignored for 1 channel. */
  channelOrder?: 'RGB' | 'BGR';
  /** Multiplier applied to 0..255 pixel values before mean/std (e.g. 1/255). Default 1. */
  scale?: number;
  /** Subtracted after scaling: one value or one per output channel (output order). Default 0. */
  mean?: number[];
  /** Divides after mean subtraction: one value or one per output channel (output order). Default 1. */
  std?: number[];
  /** Default 'float32'. */
  dtype?: 'float32' | 'uint8';
  /** Resampling kernel (sharp). Default 'lanczos3'. */
  kernel?: ResizeKernel;
  /** Padding value (0..255) for fit 'contain' and widthRounding 'pad': grey level or [R, G, B]. Default 0. */
  background?: number | [number, number, number];
  /** Apply the EXIF orientation before anything else. Default false. */
  autoOrient?: boolean;
}

function usage(what: string): QnnxError {
  return new QnnxError('E_USAGE', `image spec: ${what}`, { field: 'image' });
}

function positiveInt(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0)
    throw usage(`${what} must be a positive integer, got ${JSON.stringify(v)}`);
  return v;
}

/** Check a spec without loading anything; throws QnnxError E_USAGE for a bad one. */
export function validateImageSpec(spec: ImageSpec): void {
  if (spec.channels !== 1 && spec.channels !== 3)
    throw usage(`channels must be 1 or 3, got ${JSON.stringify(spec.channels)}`);
  if (spec.layout !== 'NCHW' && spec.layout !== 'NHWC')
    throw usage(`layout must be 'NCHW' or 'NHWC', got ${JSON.stringify(spec.layout)}`);
  if (spec.channelOrder !== undefined && spec.channelOrder !== 'RGB' && spec.channelOrder !== 'BGR')
    throw usage(`channelOrder must be 'RGB' or 'BGR', got ${JSON.stringify(spec.channelOrder)}`);
  if (spec.fit !== undefined && !['fill', 'cover', 'contain'].includes(spec.fit))
    throw usage(`fit must be 'fill', 'cover' or 'contain', got ${JSON.stringify(spec.fit)}`);
  if (spec.dtype !== undefined && spec.dtype !== 'float32' && spec.dtype !== 'uint8')
    throw usage(`dtype must be 'float32' or 'uint8', got ${JSON.stringify(spec.dtype)}`);
  if (spec.width !== undefined) positiveInt(spec.width, 'width');
  if (spec.height !== undefined) positiveInt(spec.height, 'height');
  if (spec.widthMultiple !== undefined) {
    positiveInt(spec.widthMultiple, 'widthMultiple');
    if (spec.width !== undefined) throw usage('give either width or widthMultiple, not both');
    if (spec.height === undefined) throw usage('widthMultiple needs a fixed height');
    if (spec.maxWidth !== undefined && positiveInt(spec.maxWidth, 'maxWidth') < spec.widthMultiple)
      throw usage(`maxWidth ${spec.maxWidth} is smaller than widthMultiple ${spec.widthMultiple}`);
    if (spec.minWidth !== undefined) positiveInt(spec.minWidth, 'minWidth');
    if (spec.widthRounding !== undefined && spec.widthRounding !== 'stretch' && spec.widthRounding !== 'pad')
      throw usage(`widthRounding must be 'stretch' or 'pad', got ${JSON.stringify(spec.widthRounding)}`);
  } else if (spec.maxWidth !== undefined || spec.minWidth !== undefined || spec.widthRounding !== undefined) {
    throw usage('maxWidth, minWidth and widthRounding need widthMultiple');
  }
  const c = spec.channels;
  for (const key of ['mean', 'std'] as const) {
    const v = spec[key];
    if (v === undefined) continue;
    if (!Array.isArray(v) || (v.length !== 1 && v.length !== c) || v.some((x) => typeof x !== 'number'))
      throw usage(`${key} must be an array of 1 or ${c} numbers, got ${JSON.stringify(v)}`);
    if (key === 'std' && v.some((x) => x === 0 || !Number.isFinite(x)))
      throw usage('std values must be non-zero');
  }
  if (spec.scale !== undefined && (typeof spec.scale !== 'number' || !Number.isFinite(spec.scale)))
    throw usage(`scale must be a finite number, got ${JSON.stringify(spec.scale)}`);
  if (
    spec.dtype === 'uint8' &&
    (spec.scale !== undefined || spec.mean !== undefined || spec.std !== undefined)
  )
    throw usage("dtype 'uint8' takes no scale, mean or std");
}

/** Output width and height, plus the resize width before right padding (variable-width 'pad' mode). */
export function imageTargetSize(
  spec: ImageSpec,
  srcWidth: number,
  srcHeight: number,
): { width: number; height: number; resizeWidth: number } {
  const { width, height, widthMultiple: m } = spec;
  if (m !== undefined && height !== undefined) {
    const natural = (srcWidth * height) / srcHeight;
    const minW = Math.ceil((spec.minWidth ?? m) / m) * m;
    const maxW = spec.maxWidth !== undefined ? Math.floor(spec.maxWidth / m) * m : Number.POSITIVE_INFINITY;
    const clamp = (w: number) => Math.max(minW, Math.min(maxW, w));
    const w = clamp(Math.ceil(natural / m - 1e-9) * m);
    if (spec.widthRounding === 'pad') {
      const rw = Math.max(1, Math.min(w, Math.round(natural)));
      return { width: w, height, resizeWidth: rw };
    }
    return { width: w, height, resizeWidth: w };
  }
  if (width !== undefined && height !== undefined) return { width, height, resizeWidth: width };
  if (width !== undefined) {
    const h = Math.max(1, Math.round((srcHeight * width) / srcWidth));
    return { width, height: h, resizeWidth: width };
  }
  if (height !== undefined) {
    const w = Math.max(1, Math.round((srcWidth * height) / srcHeight));
    return { width: w, height, resizeWidth: w };
  }
  return { width: srcWidth, height: srcHeight, resizeWidth: srcWidth };
}

function backgroundRgb(bg: ImageSpec['background']): { r: number; g: number; b: number; alpha: number } {
  if (bg === undefined) return { r: 0, g: 0, b: 0, alpha: 1 };
  if (typeof bg === 'number') return { r: bg, g: bg, b: bg, alpha: 1 };
  return { r: bg[0], g: bg[1], b: bg[2], alpha: 1 };
}

/**
 * Load and preprocess an image. `input` is a file path or the encoded image bytes (then `name` labels it in
 * error messages). A missing file is E_IO; undecodable data is E_DATA naming the file; a bad spec is E_USAGE.
 */
export async function loadImage(
  input: string | Uint8Array,
  spec: ImageSpec,
  name?: string,
): Promise<HostTensor> {
  validateImageSpec(spec);
  const file = name ?? (typeof input === 'string' ? input : '<image>');
  const bytes = typeof input === 'string' ? await readDataFile(input) : input;
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let raw: { data: Buffer; info: OutputInfo };
  let target: { width: number; height: number; resizeWidth: number };
  try {
    const img = sharp(buf, { failOn: 'error', autoOrient: spec.autoOrient ?? false });
    const meta = await img.metadata();
    const srcW = spec.autoOrient ? meta.autoOrient.width : meta.width;
    const srcH = spec.autoOrient ? meta.autoOrient.height : meta.height;
    target = imageTargetSize(spec, srcW, srcH);
    const background = backgroundRgb(spec.background);
    let p = img.removeAlpha();
    if (target.resizeWidth !== srcW || target.height !== srcH) {
      const fit = spec.widthMultiple !== undefined ? 'fill' : (spec.fit ?? 'fill');
      p = p.resize(target.resizeWidth, target.height, { fit, kernel: spec.kernel ?? 'lanczos3', background });
    }
    if (target.resizeWidth < target.width)
      p = p.extend({ right: target.width - target.resizeWidth, background });
    raw = await p.toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  } catch (e) {
    if (e instanceof QnnxError) throw e;
    throw new QnnxError(
      'E_DATA',
      `${file}: cannot decode image: ${(e as Error).message}`,
      { file },
      { cause: e },
    );
  }
  const { data, info } = raw;
  if (info.width !== target.width || info.height !== target.height)
    throw new QnnxError(
      'E_DATA',
      `${file}: image resized to ${info.width}x${info.height}, expected ${target.width}x${target.height}`,
      { file },
    );
  return toTensor(data, info.width, info.height, info.channels, spec);
}

/** Pixels (8-bit, `srcChannels` interleaved) → tensor per the spec's colour, value and layout steps. */
function toTensor(px: Uint8Array, w: number, h: number, srcChannels: number, spec: ImageSpec): HostTensor {
  const c = spec.channels;
  const n = w * h;
  // Per-pixel channel values in output order, as bytes.
  const planes = Array.from({ length: c }, () => new Uint8Array(n));
  const bgr = c === 3 && spec.channelOrder === 'BGR';
  for (let i = 0; i < n; i++) {
    const o = i * srcChannels;
    const r = px[o]!;
    const g = srcChannels >= 3 ? px[o + 1]! : r;
    const b = srcChannels >= 3 ? px[o + 2]! : r;
    if (c === 1) planes[0]![i] = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16;
    else {
      planes[0]![i] = bgr ? b : r;
      planes[1]![i] = g;
      planes[2]![i] = bgr ? r : b;
    }
  }
  const dims = spec.layout === 'NCHW' ? [1, c, h, w] : [1, h, w, c];
  const nchw = spec.layout === 'NCHW';
  if (spec.dtype === 'uint8') {
    const out = new Uint8Array(n * c);
    for (let k = 0; k < c; k++) {
      const plane = planes[k]!;
      if (nchw) out.set(plane, k * n);
      else for (let i = 0; i < n; i++) out[i * c + k] = plane[i]!;
    }
    return { dtype: DataType.UINT8, dims, data: out };
  }
  const scale = spec.scale ?? 1;
  const out = new Float32Array(n * c);
  for (let k = 0; k < c; k++) {
    const mean = spec.mean ? (spec.mean.length === 1 ? spec.mean[0]! : spec.mean[k]!) : 0;
    const std = spec.std ? (spec.std.length === 1 ? spec.std[0]! : spec.std[k]!) : 1;
    // A 256-entry table: every pixel value maps the same way.
    const lut = new Float32Array(256);
    for (let v = 0; v < 256; v++) lut[v] = (v * scale - mean) / std;
    const plane = planes[k]!;
    if (nchw) for (let i = 0; i < n; i++) out[k * n + i] = lut[plane[i]!]!;
    else for (let i = 0; i < n; i++) out[i * c + k] = lut[plane[i]!]!;
  }
  return { dtype: DataType.FLOAT, dims, data: out };
}
