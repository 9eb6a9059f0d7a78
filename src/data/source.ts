/**
 * Data sources for calibration, evaluation and training: a sorted, deterministic sequence of model-input
 * samples (`Map<inputName, HostTensor>`) read lazily from files.
 *
 * The spec is a file, a directory, a glob pattern (see glob.ts: `*`, `?`, `[...]`, `**`) or an array of those.
 * Directories give their (non-hidden) files, sorted, and with `recursive: true` those of subdirectories too;
 * globs give their matches, sorted; an array keeps its own order, each element expanded in place, duplicates
 * dropped. Sorting is by plain code-unit order (so 'img10' sorts before 'img2': zero-pad numbers).
 *
 * File kinds, by name (all files of one source must be of one kind):
 * - `.npy`: one sample per file, mapped to `options.inputName`;
 * - `.npz`: one sample per file, keyed by member name; with `options.inputNames` every listed input must be
 *   present (E_DATA otherwise) and other members are dropped;
 * - images (`.png .jpg .jpeg .webp .gif .tif .tiff .avif`): preprocessed with `options.image`, mapped to
 *   `options.inputName`;
 * - `.wav`: [1, n] float32 via `options.wav`, mapped to `options.inputName`;
 * - IDX (`*.idx`, `*-idx3-ubyte`, ... optionally `.gz`): a whole data set per file, always split along axis 0.
 *
 * With `split: true`, `.npy`/`.npz` files are also treated as batches and split along axis 0: each sample
 * keeps a leading dim of 1 (IDX: [1, ...rest]; an IDX label file of dims [N] gives samples of dims [1]).
 * Samples are never assumed to share a shape: variable widths/lengths pass through untouched.
 * `limit` keeps the first `limit` samples. `transform` may rewrite each sample (e.g. cast or reshape).
 */
import { open, stat } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import { QnnxError } from '../errors.js';
import { elementCount, type HostTensor, type TensorStorage } from '../tensor.js';
import { readDataFile } from './files.js';
import { glob, hasGlobChars } from './glob.js';
import { parseIdx } from './idx.js';
import { type ImageSpec, loadImage, validateImageSpec } from './image.js';
import { parseNpy, parseNpyHeader } from './npy.js';
import { parseNpz } from './npz.js';
import { parseWav, type WavOptions, type WavToTensorOptions, wavToTensor } from './wav.js';

export type SampleKind = 'npy' | 'npz' | 'image' | 'wav' | 'idx';

/** One model-input sample: input name → tensor. */
export type Sample = Map<string, HostTensor>;

export interface SampleInfo {
  /** Position of the sample in the source, 0-based. */
  index: number;
  /** The file it comes from. */
  file: string;
  /** Position within the file for split batches (and IDX); undefined for one-sample files. */
  item?: number;
}

export interface WavSourceOptions extends WavOptions, WavToTensorOptions {
  /** Refuse (E_DATA) files with another sample rate. */
  sampleRate?: number;
}

export interface DataSourceOptions {
  /** Input name for single-tensor kinds (npy, image, wav, idx). Required for those. */
  inputName?: string;
  /** npz: the model's input names; each must be present in every file, other members are dropped. */
  inputNames?: readonly string[];
  /** Preprocessing for image files. Required for images. */
  image?: ImageSpec;
  /** Options for wav files. */
  wav?: WavSourceOptions;
  /** Keep only the first `limit` samples. */
  limit?: number;
  /** Split .npy/.npz files along axis 0 into samples with a batch dim of 1 (IDX files always are). */
  split?: boolean;
  /** Directories: include files of subdirectories. Default false. */
  recursive?: boolean;
  /** Rewrite each sample after loading. */
  transform?: (sample: Sample, info: SampleInfo) => Sample | Promise<Sample>;
}

export interface DataSource extends AsyncIterable<Sample> {
  readonly kind: SampleKind;
  /** The files, in order (before `limit`). */
  readonly files: readonly string[];
  /** Number of samples (after `limit`). */
  readonly size: number;
  /** The sample at `index` (0 ≤ index < size). */
  get(index: number): Promise<Sample>;
  /** Samples with their origin. */
  entries(): AsyncIterableIterator<{ info: SampleInfo; sample: Sample }>;
}

const IMAGE_EXTS = new Set(['.png', '.jpg', '.jpeg', '.jpe', '.webp', '.gif', '.tif', '.tiff', '.avif']);

/** The kind of data file a name denotes, or undefined. */
export function sampleKindOf(file: string): SampleKind | undefined {
  const name = basename(file).toLowerCase();
  const ext = extname(name);
  if (ext === '.npy') return 'npy';
  if (ext === '.npz') return 'npz';
  if (ext === '.wav') return 'wav';
  if (IMAGE_EXTS.has(ext)) return 'image';
  const stem = name.endsWith('.gz') ? name.slice(0, -3) : name;
  if (/(^|[-_.])idx\d*$/.test(stem) || /(^|[-_.])idx\d*[-_.]u?byte$/.test(stem) || /-ubyte$/.test(stem))
    return 'idx';
  return undefined;
}

function dataError(what: string, file?: string): QnnxError {
  return new QnnxError('E_DATA', file ? `${file}: ${what}` : what, file ? { file } : {});
}

async function statOrUndefined(p: string) {
  try {
    return await stat(p);
  } catch {
    return undefined;
  }
}

async function listDir(dir: string, recursive: boolean): Promise<string[]> {
  if (recursive) return glob(join(dir, '**', '*'));
  return glob(join(dir, '*'));
}

/** Expand a spec (file, directory, glob, or array of those) into the ordered file list. */
export async function resolveDataFiles(
  spec: string | readonly string[],
  recursive = false,
): Promise<string[]> {
  const items = typeof spec === 'string' ? [spec] : spec;
  if (items.length === 0) throw new QnnxError('E_USAGE', 'no data files given (empty list)');
  const out: string[] = [];
  const seen = new Set<string>();
  const add = (f: string) => {
    if (!seen.has(f)) {
      seen.add(f);
      out.push(f);
    }
  };
  for (const item of items) {
    const st = await statOrUndefined(item);
    if (st?.isFile()) add(item);
    else if (st?.isDirectory()) {
      const files = await listDir(item, recursive);
      if (files.length === 0)
        throw dataError(`no data files in directory${recursive ? ' (searched recursively)' : ''}`, item);
      files.forEach(add);
    } else if (hasGlobChars(item)) {
      const files = await glob(item);
      if (files.length === 0) throw dataError(`no files match the pattern '${item}'`, item);
      files.forEach(add);
    } else {
      throw new QnnxError('E_IO', `${item}: no such file or directory`, { file: item });
    }
  }
  return out;
}

type NumericStorage = Exclude<TensorStorage, Uint8Array[]>;

/** Item `i` along axis 0 of a tensor, as a zero-copy view with a leading dim of 1. */
function sliceBatch(t: HostTensor, i: number): HostTensor {
  const per = elementCount(t.dims.slice(1));
  const data = t.data as NumericStorage;
  return { dtype: t.dtype, dims: [1, ...t.dims.slice(1)], data: data.subarray(i * per, (i + 1) * per) };
}

/** Leading dim of every tensor of a file (they must agree). */
function batchCount(tensors: Sample, file: string): number {
  let n: number | undefined;
  for (const [key, t] of tensors) {
    if (t.dims.length === 0) throw dataError(`cannot split '${key}' along axis 0: it is a scalar`, file);
    if (n === undefined) n = t.dims[0]!;
    else if (t.dims[0] !== n)
      throw dataError(`cannot split along axis 0: '${key}' has ${t.dims[0]} items, others ${n}`, file);
  }
  return n ?? 0;
}

async function readNpyHeaderOfFile(file: string) {
  const fh = await open(file, 'r').catch((e) => {
    throw new QnnxError('E_IO', `${file}: cannot read (${(e as Error).message})`, { file }, { cause: e });
  });
  try {
    const head = new Uint8Array(12);
    const { bytesRead } = await fh.read(head, 0, 12, 0);
    const major = head[6];
    const len =
      bytesRead < 12
        ? 0
        : major === 1
          ? head[8]! | (head[9]! << 8)
          : new DataView(head.buffer).getUint32(8, true);
    const total = Math.min((major === 1 ? 10 : 12) + len, 16 * 1024 * 1024);
    const buf = new Uint8Array(Math.max(total, bytesRead));
    const r = await fh.read(buf, 0, buf.length, 0);
    return parseNpyHeader(buf.subarray(0, r.bytesRead), file);
  } finally {
    await fh.close();
  }
}

/** Open a data source; files are listed (and, for split sources, sized) now, samples are read lazily. */
export async function openDataSource(
  spec: string | readonly string[],
  options: DataSourceOptions = {},
): Promise<DataSource> {
  if (options.limit !== undefined && (!Number.isInteger(options.limit) || options.limit < 0))
    throw new QnnxError('E_USAGE', `limit must be a non-negative integer, got ${options.limit}`);
  const files = await resolveDataFiles(spec, options.recursive ?? false);

  // Kinds: every file must be known, and all of one kind.
  const byKind = new Map<SampleKind, string>();
  for (const f of files) {
    const k = sampleKindOf(f);
    if (!k)
      throw dataError(
        `unknown data file type '${extname(f) || basename(f)}' (expected .npy, .npz, .wav, an image or IDX)`,
        f,
      );
    if (!byKind.has(k)) byKind.set(k, f);
  }
  if (byKind.size > 1)
    throw dataError(
      `mixed data file kinds in one source: ${[...byKind].map(([k, f]) => `${k} (${f})`).join(', ')}`,
      files[0],
    );
  const kind = [...byKind.keys()][0]!;

  // Options each kind needs.
  if (kind !== 'npz' && !options.inputName)
    throw new QnnxError('E_USAGE', `${kind} data needs an input name (options.inputName)`, {
      file: files[0],
    });
  if (kind === 'image') {
    if (!options.image)
      throw new QnnxError('E_USAGE', 'image data needs a preprocessing spec (options.image)');
    validateImageSpec(options.image);
  }
  const splitting = kind === 'idx' || ((kind === 'npy' || kind === 'npz') && options.split === true);

  // A one-file cache: split sources read each file once per pass.
  let cached: { file: string; tensors: Sample } | undefined;
  const loadFile = async (file: string): Promise<Sample> => {
    if (cached?.file === file) return cached.tensors;
    const bytes = await readDataFile(file);
    let tensors: Sample;
    switch (kind) {
      case 'npy':
        tensors = new Map([[options.inputName!, parseNpy(bytes, file)]]);
        break;
      case 'idx':
        tensors = new Map([[options.inputName!, parseIdx(bytes, file)]]);
        break;
      case 'npz': {
        const all = parseNpz(bytes, file);
        if (options.inputNames) {
          tensors = new Map();
          for (const n of options.inputNames) {
            const t = all.get(n);
            if (!t)
              throw dataError(
                `missing input '${n}' (the file has ${[...all.keys()].map((k) => `'${k}'`).join(', ') || 'no arrays'})`,
                file,
              );
            tensors.set(n, t);
          }
        } else tensors = all;
        break;
      }
      case 'wav': {
        const audio = parseWav(bytes, file, options.wav);
        const want = options.wav?.sampleRate;
        if (want !== undefined && audio.sampleRate !== want)
          throw dataError(`sample rate ${audio.sampleRate} Hz, expected ${want} Hz`, file);
        tensors = new Map([[options.inputName!, wavToTensor(audio, options.wav)]]);
        break;
      }
      case 'image':
        tensors = new Map([[options.inputName!, await loadImage(bytes, options.image!, file)]]);
        break;
    }
    if (splitting) cached = { file, tensors };
    return tensors;
  };

  // Sample index → (file, item).
  let counts: number[] | undefined;
  let total = files.length;
  if (splitting) {
    counts = [];
    let rank: number | undefined;
    for (const f of files) {
      let n: number;
      if (kind === 'npy') {
        const h = await readNpyHeaderOfFile(f);
        if (h.dims.length === 0) throw dataError('cannot split a scalar along axis 0', f);
        n = h.dims[0]!;
      } else {
        const tensors = await loadFile(f);
        n = batchCount(tensors, f);
        if (kind === 'idx') {
          const r = tensors.values().next().value!.dims.length;
          if (rank !== undefined && r !== rank)
            throw dataError(
              `IDX files of different ranks in one source (${r} here, ${rank} in ${files[0]}): ` +
                'images and labels must be separate sources',
              f,
            );
          rank = r;
        }
      }
      counts.push(n);
    }
    total = counts.reduce((a, b) => a + b, 0);
  }
  const size = Math.min(total, options.limit ?? total);
  const starts: number[] = [];
  if (counts) {
    let s = 0;
    for (const c of counts) {
      starts.push(s);
      s += c;
    }
  }
  const locate = (index: number): { fileIndex: number; item?: number } => {
    if (!counts) return { fileIndex: index };
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid]! <= index) lo = mid;
      else hi = mid - 1;
    }
    return { fileIndex: lo, item: index - starts[lo]! };
  };

  const load = async (index: number): Promise<{ info: SampleInfo; sample: Sample }> => {
    const { fileIndex, item } = locate(index);
    const file = files[fileIndex]!;
    const tensors = await loadFile(file);
    let sample: Sample;
    if (item === undefined) sample = new Map(tensors);
    else {
      sample = new Map();
      for (const [k, t] of tensors) sample.set(k, sliceBatch(t, item));
    }
    const info: SampleInfo = item === undefined ? { index, file } : { index, file, item };
    if (options.transform) sample = await options.transform(sample, info);
    return { info, sample };
  };

  const source: DataSource = {
    kind,
    files,
    size,
    async get(index: number) {
      if (!Number.isInteger(index) || index < 0 || index >= size)
        throw new QnnxError('E_USAGE', `sample index ${index} out of range (source has ${size} samples)`);
      return (await load(index)).sample;
    },
    async *entries() {
      for (let i = 0; i < size; i++) yield await load(i);
    },
    async *[Symbol.asyncIterator]() {
      for (let i = 0; i < size; i++) yield (await load(i)).sample;
    },
  };
  return source;
}
