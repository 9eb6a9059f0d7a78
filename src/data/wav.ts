/**
 * WAV (RIFF/WAVE, little-endian) audio: parse to float samples, write 16-bit PCM.
 *
 * Read: integer PCM of 8 (unsigned), 16, 24 and 32 bits, IEEE float of 32 and 64 bits, any number of channels,
 * with a plain `fmt ` chunk (WAVE_FORMAT_PCM = 1, WAVE_FORMAT_IEEE_FLOAT = 3) or WAVE_FORMAT_EXTENSIBLE
 * (0xFFFE, whose sub-format GUID gives PCM or float). Other codecs (A-law, µ-law, ADPCM, ...), big-endian RIFX
 * and RF64 files are refused with QnnxError E_DATA, as are truncated files and data chunks that are not a whole
 * number of frames.
 *
 * Samples come back PLANAR: `samples[c]` is a Float32Array of channel c with `frames` values. Scaling:
 * - `scale: 'unit'` (default): integer PCM is divided by 2^(bits-1), so values lie in [-1, 1) (8-bit PCM is
 *   offset by 128 first); float data is returned as stored.
 * - `scale: 'int16'`: the unit value times 32768, i.e. int16-valued floats (exact integers for 16-bit PCM).
 *   This is what models trained on raw int16 audio (e.g. openWakeWord's melspectrogram) expect.
 */
import { QnnxError } from '../errors.js';
import { DataType } from '../onnx/dtype.js';
import type { HostTensor } from '../tensor.js';
import { readDataFile } from './files.js';

export type WavScale = 'unit' | 'int16';

export interface WavOptions {
  /** 'unit' (default): [-1, 1); 'int16': int16-valued floats. */
  scale?: WavScale;
}

export interface WavAudio {
  sampleRate: number;
  channels: number;
  /** Samples per channel. */
  frames: number;
  /** Encoding of the file: integer PCM or IEEE float. */
  format: 'pcm' | 'float';
  /** Container bits per sample (8, 16, 24, 32 or 64). */
  bitsPerSample: number;
  /** Planar samples: one Float32Array of `frames` values per channel. */
  samples: Float32Array[];
}

const WAVE_FORMAT_PCM = 1;
const WAVE_FORMAT_IEEE_FLOAT = 3;
const WAVE_FORMAT_EXTENSIBLE = 0xfffe;
const KNOWN_FORMATS: Record<number, string> = {
  2: 'MS ADPCM',
  6: 'A-law',
  7: 'µ-law',
  17: 'IMA ADPCM',
  85: 'MP3',
};
// The tail (bytes 2..15) of KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT: xxxx0000-0000-0010-8000-00aa00389b71.
const GUID_TAIL = [0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71];

function dataError(file: string, what: string): QnnxError {
  return new QnnxError('E_DATA', `${file}: ${what}`, { file });
}

function fourcc(b: Uint8Array, o: number): string {
  return String.fromCharCode(b[o]!, b[o + 1]!, b[o + 2]!, b[o + 3]!);
}

/** Parse a WAV file. `name` is used in error messages. */
export function parseWav(bytes: Uint8Array, name = '<wav>', options: WavOptions = {}): WavAudio {
  const scale = options.scale ?? 'unit';
  if (scale !== 'unit' && scale !== 'int16')
    throw new QnnxError('E_USAGE', `wav scale must be 'unit' or 'int16', got ${JSON.stringify(scale)}`);
  if (bytes.length < 12) {
    if (bytes.length >= 4 && fourcc(bytes, 0) === 'RIFF')
      throw dataError(name, `truncated WAV file (${bytes.length} bytes)`);
    throw dataError(name, 'not a WAV file (bad magic, expected RIFF....WAVE)');
  }
  const riff = fourcc(bytes, 0);
  if (riff === 'RIFX') throw dataError(name, 'big-endian RIFX WAV files are not supported');
  if (riff === 'RF64') throw dataError(name, 'RF64 (64-bit) WAV files are not supported');
  if (riff !== 'RIFF' || fourcc(bytes, 8) !== 'WAVE')
    throw dataError(name, 'not a WAV file (bad magic, expected RIFF....WAVE)');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);

  let fmt: { off: number; size: number } | undefined;
  let data: { off: number; size: number } | undefined;
  let pos = 12;
  while (pos + 8 <= bytes.length) {
    const id = fourcc(bytes, pos);
    let size = dv.getUint32(pos + 4, true);
    const off = pos + 8;
    if (id === 'data' && size === 0xffffffff) size = bytes.length - off; // streamed: size unknown, take the rest
    if (off + size > bytes.length) {
      if (id === 'data' || id === 'fmt ')
        throw dataError(
          name,
          `truncated WAV file: '${id}' chunk declares ${size} bytes, only ${bytes.length - off} present`,
        );
      if (fmt && data) break; // junk after the audio; ignore
      throw dataError(
        name,
        `truncated WAV file: '${id}' chunk declares ${size} bytes, only ${bytes.length - off} present`,
      );
    }
    if (id === 'fmt ' && !fmt) fmt = { off, size };
    else if (id === 'data' && !data) data = { off, size };
    pos = off + size + (size & 1);
  }
  if (!fmt)
    throw dataError(name, data ? "WAV file has no 'fmt ' chunk" : "truncated WAV file (no 'fmt ' chunk)");
  if (!data) throw dataError(name, "truncated WAV file (no 'data' chunk)");
  if (fmt.size < 16) throw dataError(name, `malformed WAV 'fmt ' chunk (${fmt.size} bytes, need 16)`);

  let formatTag = dv.getUint16(fmt.off, true);
  const channels = dv.getUint16(fmt.off + 2, true);
  const sampleRate = dv.getUint32(fmt.off + 4, true);
  const blockAlign = dv.getUint16(fmt.off + 12, true);
  const bits = dv.getUint16(fmt.off + 14, true);
  if (formatTag === WAVE_FORMAT_EXTENSIBLE) {
    if (fmt.size < 40)
      throw dataError(name, `malformed WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk (${fmt.size} bytes)`);
    const g = fmt.off + 24;
    formatTag = dv.getUint16(g, true);
    if (GUID_TAIL.some((v, i) => bytes[g + 2 + i] !== v))
      throw dataError(name, 'unsupported WAVE_FORMAT_EXTENSIBLE sub-format (not PCM or IEEE float)');
  }
  if (formatTag !== WAVE_FORMAT_PCM && formatTag !== WAVE_FORMAT_IEEE_FLOAT) {
    const what = KNOWN_FORMATS[formatTag] ?? `format tag 0x${formatTag.toString(16).padStart(4, '0')}`;
    throw dataError(name, `unsupported WAV encoding: ${what} (only PCM and IEEE float are supported)`);
  }
  const isFloat = formatTag === WAVE_FORMAT_IEEE_FLOAT;
  if (isFloat ? bits !== 32 && bits !== 64 : bits !== 8 && bits !== 16 && bits !== 24 && bits !== 32)
    throw dataError(name, `unsupported WAV sample size: ${bits}-bit ${isFloat ? 'float' : 'PCM'}`);
  if (channels === 0) throw dataError(name, 'malformed WAV file: 0 channels');
  if (sampleRate === 0) throw dataError(name, 'malformed WAV file: sample rate 0');
  const bytesPerSample = bits / 8;
  if (blockAlign !== channels * bytesPerSample)
    throw dataError(
      name,
      `malformed WAV file: block align ${blockAlign} != ${channels} channels x ${bytesPerSample} bytes`,
    );
  if (data.size % blockAlign !== 0)
    throw dataError(
      name,
      `truncated WAV file: data chunk of ${data.size} bytes is not a whole number of ${blockAlign}-byte frames`,
    );
  const frames = data.size / blockAlign;
  const samples = Array.from({ length: channels }, () => new Float32Array(frames));
  const k = scale === 'int16' ? 32768 : 1;
  let o = data.off;
  for (let f = 0; f < frames; f++) {
    for (let c = 0; c < channels; c++) {
      let v: number;
      if (isFloat) v = bits === 32 ? dv.getFloat32(o, true) : dv.getFloat64(o, true);
      else if (bits === 16) v = dv.getInt16(o, true) / 32768;
      else if (bits === 8) v = (bytes[o]! - 128) / 128;
      else if (bits === 24)
        v = ((bytes[o]! | (bytes[o + 1]! << 8) | (bytes[o + 2]! << 16)) << 8) / 2147483648;
      else v = dv.getInt32(o, true) / 2147483648;
      samples[c]![f] = v * k;
      o += bytesPerSample;
    }
  }
  return { sampleRate, channels, frames, format: isFloat ? 'float' : 'pcm', bitsPerSample: bits, samples };
}

/** Read and parse a WAV file from disk. */
export async function readWav(file: string, options: WavOptions = {}): Promise<WavAudio> {
  return parseWav(await readDataFile(file), file, options);
}

export interface WavToTensorOptions {
  /** Channel index to take, or 'mean' to average all channels (default: 'mean'; a no-op for mono). */
  channel?: number | 'mean';
}

/** A [1, frames] float32 tensor from one channel of (or the mean of all channels of) the audio. */
export function wavToTensor(audio: WavAudio, options: WavToTensorOptions = {}): HostTensor {
  const ch = options.channel ?? 'mean';
  let out: Float32Array;
  if (ch === 'mean') {
    if (audio.samples.length === 1) out = audio.samples[0]!;
    else {
      out = new Float32Array(audio.frames);
      for (let i = 0; i < audio.frames; i++) {
        let s = 0;
        for (const c of audio.samples) s += c[i]!;
        out[i] = s / audio.samples.length;
      }
    }
  } else {
    if (!Number.isInteger(ch) || ch < 0 || ch >= audio.samples.length)
      throw new QnnxError(
        'E_USAGE',
        `wav channel ${ch} out of range (audio has ${audio.samples.length} channels)`,
      );
    out = audio.samples[ch]!;
  }
  return { dtype: DataType.FLOAT, dims: [1, out.length], data: out };
}

export interface EncodeWavOptions {
  /** How the input samples are scaled: 'unit' (default, [-1, 1)) or 'int16' (int16-valued floats). */
  scale?: WavScale;
}

/**
 * Encode planar float samples (one array per channel, all the same length) as a 16-bit PCM WAV file.
 * Values are rounded to the nearest int16 and clamped to [-32768, 32767].
 */
export function encodeWav(
  audio: { sampleRate: number; samples: readonly Float32Array[] },
  options: EncodeWavOptions = {},
): Uint8Array {
  const { sampleRate, samples } = audio;
  const channels = samples.length;
  if (channels === 0 || channels > 0xffff)
    throw new QnnxError('E_USAGE', `encodeWav needs 1..65535 channels`);
  if (!Number.isInteger(sampleRate) || sampleRate <= 0 || sampleRate > 0xffffffff)
    throw new QnnxError('E_USAGE', `encodeWav: bad sample rate ${sampleRate}`);
  const frames = samples[0]!.length;
  if (samples.some((c) => c.length !== frames))
    throw new QnnxError('E_USAGE', 'encodeWav: all channels must have the same number of samples');
  const k = (options.scale ?? 'unit') === 'int16' ? 1 : 32768;
  const dataSize = frames * channels * 2;
  if (44 + dataSize > 0xffffffff) throw new QnnxError('E_USAGE', 'encodeWav: audio too long for a RIFF file');
  const out = new Uint8Array(44 + dataSize);
  const dv = new DataView(out.buffer);
  const put = (o: number, s: string) => {
    for (let i = 0; i < 4; i++) out[o + i] = s.charCodeAt(i);
  };
  put(0, 'RIFF');
  dv.setUint32(4, 36 + dataSize, true);
  put(8, 'WAVE');
  put(12, 'fmt ');
  dv.setUint32(16, 16, true);
  dv.setUint16(20, WAVE_FORMAT_PCM, true);
  dv.setUint16(22, channels, true);
  dv.setUint32(24, sampleRate, true);
  dv.setUint32(28, sampleRate * channels * 2, true);
  dv.setUint16(32, channels * 2, true);
  dv.setUint16(34, 16, true);
  put(36, 'data');
  dv.setUint32(40, dataSize, true);
  let o = 44;
  for (let f = 0; f < frames; f++) {
    for (let c = 0; c < channels; c++) {
      const v = Math.round(samples[c]![f]! * k);
      dv.setInt16(o, Number.isNaN(v) ? 0 : Math.max(-32768, Math.min(32767, v)), true);
      o += 2;
    }
  }
  return out;
}
