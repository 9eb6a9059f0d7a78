/**
 * Running many samples: consecutive samples whose inputs agree in type and in every dim but the first are
 * concatenated along axis 0 and run as one batch, when the model's batch dim is dynamic; samples that differ
 * (variable-width text lines, variable-length audio) run one by one. Outputs come back per sample, in order, as
 * views into the batch's output buffers.
 *
 * Batching pays where per-run overhead or small-batch kernels dominate; for large convolutional models it mostly
 * saves ORT's per-run overhead (~0.03 ms) and costs one concatenation copy of the inputs.
 */
import { QnnxError } from '../errors.js';
import { DataType } from '../onnx/dtype.js';
import { elementCount, type HostTensor, storageConstructor, type TensorStorage } from '../tensor.js';
import { type Feeds, feedEntries, type Runner } from './session.js';

export interface BatchProgress {
  /** Samples finished so far. */
  samples: number;
  /** Runs so far (a batch is one run). */
  runs: number;
  /** Samples in the run just finished. */
  lastRunSamples: number;
}

export interface BatchOptions {
  /** Most rows (sum of the samples' first dims) per run; default 8. 1 runs every sample alone. */
  batchSize?: number;
  /** Outputs to fetch (default: the runner's default). */
  outputNames?: readonly string[];
  onProgress?: (p: BatchProgress) => void;
}

/** Concatenates tensors of one type whose dims agree past axis 0, along axis 0 (one copy). */
export function concatAlongBatch(tensors: readonly HostTensor[]): HostTensor {
  if (tensors.length === 0) throw new QnnxError('E_USAGE', 'concatAlongBatch: no tensors');
  const first = tensors[0];
  const rest = first.dims.slice(1);
  let rows = 0;
  for (const t of tensors) {
    if (
      t.dtype !== first.dtype ||
      t.dims.length !== first.dims.length ||
      t.dims.length === 0 ||
      t.dims.some((d, i) => i > 0 && d !== first.dims[i])
    ) {
      throw new QnnxError(
        'E_SHAPE',
        `cannot concatenate dims [${t.dims.join(', ')}] with [${first.dims.join(', ')}] along axis 0`,
      );
    }
    if (t.dtype === DataType.INT4 || t.dtype === DataType.UINT4) {
      throw new QnnxError('E_DTYPE', 'cannot concatenate packed 4-bit tensors along axis 0');
    }
    rows += t.dims[0];
  }
  const dims = [rows, ...rest];
  if (first.dtype === DataType.STRING) {
    return { dtype: first.dtype, dims, data: tensors.flatMap((t) => t.data as Uint8Array[]) };
  }
  const C = storageConstructor(first.dtype);
  const data = new C(elementCount(dims)) as Exclude<TensorStorage, Uint8Array[]>;
  let offset = 0;
  for (const t of tensors) {
    const d = t.data as typeof data;
    (data as Float32Array).set(d as Float32Array, offset);
    offset += d.length;
  }
  return { dtype: first.dtype, dims, data };
}

/** Splits a tensor along axis 0 into pieces of `rows[i]` rows each; pieces are views (no copy). */
export function splitAlongBatch(t: HostTensor, rows: readonly number[]): HostTensor[] {
  const total = rows.reduce((a, b) => a + b, 0);
  if (t.dims.length === 0 || t.dims[0] !== total) {
    throw new QnnxError(
      'E_SHAPE',
      `cannot split dims [${t.dims.join(', ')}] into ${total} rows along axis 0`,
    );
  }
  const rowSize = elementCount(t.dims.slice(1));
  const out: HostTensor[] = [];
  let start = 0;
  for (const r of rows) {
    const a = start * rowSize;
    const b = (start + r) * rowSize;
    const data = Array.isArray(t.data) ? t.data.slice(a, b) : (t.data.subarray(a, b) as TensorStorage);
    out.push({ dtype: t.dtype, dims: [r, ...t.dims.slice(1)], data });
    start += r;
  }
  return out;
}

/** Whether the runner's inputs and fetched outputs allow batching along axis 0. */
function modelAllowsBatching(runner: Runner, outputNames: readonly string[] | undefined): boolean {
  const freeAxis0 = (shape: (number | string)[] | undefined) =>
    shape === undefined || (shape.length > 0 && typeof shape[0] === 'string');
  if (!runner.inputs.every((m) => m.isTensor && freeAxis0(m.shape))) return false;
  const fetched = outputNames
    ? runner.outputs.filter((m) => outputNames.includes(m.name))
    : runner.outputs.filter((m) => m.isTensor);
  return fetched.every((m) => freeAxis0(m.shape));
}

interface Pending {
  feeds: Feeds;
  entries: [string, HostTensor][];
  rows: number;
}

/** A key that is equal for samples that can share a batch, or undefined when the sample cannot be batched. */
function batchKey(entries: [string, HostTensor][]): { key: string; rows: number } | undefined {
  let rows: number | undefined;
  const parts: string[] = [];
  for (const [name, t] of [...entries].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
    if (t.dims.length === 0 || t.dtype === DataType.INT4 || t.dtype === DataType.UINT4) return undefined;
    if (rows === undefined) rows = t.dims[0];
    else if (rows !== t.dims[0]) return undefined;
    parts.push(`${JSON.stringify(name)}:${t.dtype}:${t.dims.slice(1).join(',')}`);
  }
  if (rows === undefined || rows === 0) return undefined;
  return { key: parts.join(';'), rows };
}

/**
 * Runs every sample and yields each sample's outputs in order. Consecutive samples with matching input shapes
 * (past axis 0) are batched up to `batchSize` rows when the model's first axis is dynamic. If a batched run gives
 * an output whose first dim is not the batch's row count, batching is turned off and those samples (and all
 * later ones) run one by one, so results never depend on the batching.
 */
export async function* runBatched(
  runner: Runner,
  samples: AsyncIterable<Feeds> | Iterable<Feeds>,
  options: BatchOptions = {},
): AsyncGenerator<Record<string, HostTensor>> {
  const batchSize = options.batchSize ?? 8;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new QnnxError('E_USAGE', `batchSize must be a positive integer, got ${batchSize}`);
  }
  const outputNames = options.outputNames;
  let batching = batchSize > 1 && modelAllowsBatching(runner, outputNames);
  const progress: BatchProgress = { samples: 0, runs: 0, lastRunSamples: 0 };
  const report = (n: number) => {
    progress.samples += n;
    progress.runs++;
    progress.lastRunSamples = n;
    options.onProgress?.({ ...progress });
  };

  async function* runAlone(p: Pending): AsyncGenerator<Record<string, HostTensor>> {
    const out = await runner.run(p.feeds, outputNames);
    report(1);
    yield out;
  }

  async function* flush(batch: Pending[]): AsyncGenerator<Record<string, HostTensor>> {
    if (batch.length === 1) {
      yield* runAlone(batch[0]);
      return;
    }
    const feeds: Record<string, HostTensor> = {};
    for (const [name] of batch[0].entries) {
      feeds[name] = concatAlongBatch(batch.map((p) => p.entries.find(([n]) => n === name)![1]));
    }
    const total = batch.reduce((s, p) => s + p.rows, 0);
    const out = await runner.run(feeds, outputNames);
    const names = Object.keys(out);
    if (!names.every((n) => out[n].dims.length > 0 && out[n].dims[0] === total)) {
      batching = false; // an output without a batch axis: batching would be wrong for this model
      for (const p of batch) yield* runAlone(p);
      return;
    }
    const pieces = new Map(
      names.map((n) => [
        n,
        splitAlongBatch(
          out[n],
          batch.map((p) => p.rows),
        ),
      ]),
    );
    report(batch.length);
    for (let i = 0; i < batch.length; i++) {
      const r: Record<string, HostTensor> = {};
      for (const n of names) r[n] = pieces.get(n)![i];
      yield r;
    }
  }

  let batch: Pending[] = [];
  let batchKeyNow = '';
  let batchRows = 0;
  for await (const feeds of samples as AsyncIterable<Feeds>) {
    const entries = feedEntries(feeds);
    const k = batching ? batchKey(entries) : undefined;
    const p: Pending = { feeds, entries, rows: k?.rows ?? 0 };
    if (!k || k.rows > batchSize) {
      if (batch.length) yield* flush(batch);
      batch = [];
      yield* runAlone(p);
      continue;
    }
    if (batch.length && (k.key !== batchKeyNow || batchRows + k.rows > batchSize)) {
      yield* flush(batch);
      batch = [];
    }
    if (!batching) {
      yield* runAlone(p);
      continue;
    }
    if (batch.length === 0) {
      batchKeyNow = k.key;
      batchRows = 0;
    }
    batch.push(p);
    batchRows += k.rows;
  }
  if (batch.length) yield* flush(batch);
}
