/**
 * Training checkpoints: one ONNX file that is at once the inference model with the weights of that step
 * (loadable and runnable like any model, e.g. by `qnnx eval`) and the full training state:
 *   - parameters and BatchNorm running statistics: the model's own initializers;
 *   - optimizer state (`<param>.exp_avg`, `<param>.momentum_buffer`, ...): extra float32 initializers that the
 *     graph does not read (ONNX Runtime drops them when it loads the model);
 *   - counters and RNG: model metadata `qnnx.checkpoint`, a JSON object {format, step, epoch, batchInEpoch,
 *     seed, ...}. The trainer's random streams (shuffling, dropout masks) are counter-based functions of the seed
 *     and the epoch or step, so seed + epoch + step is the whole RNG state.
 *
 * The file is written to a temporary name in the same folder, flushed to disk and renamed over the old one, so a
 * crash at any point leaves either the previous or the new checkpoint, never a torn one. Reading and writing
 * files loads `node:fs` on first use; `encodeCheckpoint`/`decodeCheckpoint` work on bytes anywhere.
 */
import { QnnxError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { modelFromProto, modelToProto } from '../ir/model.js';
import { Tensor } from '../ir/tensor.js';
import { decodeModelProto, encodeModelProto } from '../onnx/codec.js';
import { DataType } from '../onnx/dtype.js';
import type { HostTensor } from '../tensor.js';

export const CHECKPOINT_METADATA_KEY = 'qnnx.checkpoint';
export const CHECKPOINT_FORMAT = 1;

export interface CheckpointMeta {
  format: number;
  /** Optimizer steps completed. */
  step: number;
  /** Epochs completed. */
  epoch: number;
  /** Batches of epoch `epoch` already trained (0 at an epoch boundary). */
  batchInEpoch: number;
  seed: number;
  batchSize: number;
  /** Names of the tensors restored on resume: parameters, running statistics, optimizer state. */
  params: string[];
  buffers: string[];
  state: string[];
  /** The optimizer kind, checked on resume. */
  optimizer: string;
  /** The loss of the last step. */
  loss?: number;
}

export interface Checkpoint {
  meta: CheckpointMeta;
  /** Every tensor of meta.params, meta.buffers and meta.state. */
  tensors: Map<string, HostTensor>;
  /** The inference model stored in the checkpoint (its optimizer-state initializers removed). */
  model: Model;
}

/**
 * Encodes a checkpoint: `model` (an inference model whose initializers already hold the parameters and
 * statistics) plus the optimizer state tensors and the metadata. `model` is not modified.
 */
export function encodeCheckpoint(
  model: Model,
  meta: CheckpointMeta,
  state: ReadonlyMap<string, HostTensor>,
): Uint8Array {
  const g = model.graph;
  const added: string[] = [];
  const metaProps = model.metadataProps;
  try {
    for (const name of meta.state) {
      const t = state.get(name);
      if (!t)
        throw new QnnxError('E_TRAIN', `checkpoint: optimizer state '${name}' is missing`, { tensor: name });
      if (g.initializers.has(name)) {
        throw new QnnxError(
          'E_TRAIN',
          `checkpoint: optimizer state '${name}' clashes with a model initializer`,
          {
            tensor: name,
          },
        );
      }
      g.addInitializer(new Tensor(name, t.dtype, [...t.dims], t.data));
      added.push(name);
    }
    model.metadataProps = [
      ...(metaProps ?? []).filter((p) => p.key !== CHECKPOINT_METADATA_KEY),
      { key: CHECKPOINT_METADATA_KEY, value: JSON.stringify(meta) },
    ];
    return encodeModelProto(modelToProto(model, {}));
  } finally {
    for (const name of added) g.initializers.delete(name);
    model.metadataProps = metaProps;
  }
}

/** Decodes a checkpoint; `name` is used in messages. */
export function decodeCheckpoint(bytes: Uint8Array, name = 'checkpoint'): Checkpoint {
  const model = modelFromProto(decodeModelProto(bytes, name), { file: name });
  const entry = model.metadataProps?.find((p) => p.key === CHECKPOINT_METADATA_KEY);
  if (!entry?.value) {
    throw new QnnxError(
      'E_TRAIN',
      `${name}: not a qnnx training checkpoint (no '${CHECKPOINT_METADATA_KEY}' metadata)`,
      {
        file: name,
      },
    );
  }
  let meta: CheckpointMeta;
  try {
    meta = JSON.parse(entry.value) as CheckpointMeta;
  } catch (e) {
    throw new QnnxError(
      'E_TRAIN',
      `${name}: the checkpoint metadata is not valid JSON`,
      { file: name },
      { cause: e },
    );
  }
  if (meta.format !== CHECKPOINT_FORMAT) {
    throw new QnnxError(
      'E_TRAIN',
      `${name}: checkpoint format ${meta.format} is not supported (expected ${CHECKPOINT_FORMAT})`,
      {
        file: name,
      },
    );
  }
  const tensors = new Map<string, HostTensor>();
  for (const n of [...meta.params, ...meta.buffers, ...meta.state]) {
    const t = model.graph.initializers.get(n);
    if (!t || t.dtype !== DataType.FLOAT) {
      throw new QnnxError('E_TRAIN', `${name}: the checkpoint has no float32 tensor '${n}'`, {
        file: name,
        tensor: n,
      });
    }
    tensors.set(n, { dtype: t.dtype, dims: [...t.dims], data: Float32Array.from(t.data as Float32Array) });
  }
  for (const n of meta.state) model.graph.initializers.delete(n);
  model.metadataProps = model.metadataProps?.filter((p) => p.key !== CHECKPOINT_METADATA_KEY);
  return { meta, tensors, model };
}

/** Writes bytes atomically: temporary file in the same folder, fsync, rename. Creates the folder. */
export async function writeFileAtomic(file: string, bytes: Uint8Array): Promise<void> {
  const fs = await import('node:fs');
  const path = await import('node:path');
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2, 8)}.tmp`;
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const fd = fs.openSync(tmp, 'w');
    try {
      let done = 0;
      while (done < bytes.length) done += fs.writeSync(fd, bytes, done, bytes.length - done);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw new QnnxError(
      'E_IO',
      `${file}: cannot write the checkpoint: ${(e as Error).message}`,
      { file },
      { cause: e },
    );
  }
}

export async function saveCheckpoint(
  file: string,
  model: Model,
  meta: CheckpointMeta,
  state: ReadonlyMap<string, HostTensor>,
): Promise<void> {
  await writeFileAtomic(file, encodeCheckpoint(model, meta, state));
}

export async function loadCheckpoint(file: string): Promise<Checkpoint> {
  const fs = await import('node:fs');
  let bytes: Uint8Array;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw new QnnxError(
      'E_IO',
      `${file}: cannot read the checkpoint: ${(e as Error).message}`,
      { file },
      { cause: e },
    );
  }
  return decodeCheckpoint(bytes, file);
}

/** Whether a file exists (Node). */
export async function fileExists(file: string): Promise<boolean> {
  const fs = await import('node:fs');
  return fs.existsSync(file);
}
