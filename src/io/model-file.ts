/**
 * Reading and writing ONNX model files on Node: external data (read, write, automatic for models past the 2 GB
 * protobuf limit), containment of external-data locations in the model's folder, and atomic writes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isQnnxError, QnnxError } from '../errors.js';
import { Model, modelFromProto, modelToProto } from '../ir/model.js';
import type { ExternalDataInfo, ExternalDataReader, Tensor } from '../ir/tensor.js';
import { decodeModelProto, encodeModelProto } from '../onnx/codec.js';
import type { ModelProto } from '../onnx/proto.js';

/** Protobuf messages cannot exceed 2 GiB; leave room for the graph itself. */
export const PROTOBUF_LIMIT = 2 ** 31 - 1;
const AUTO_EXTERNAL_MARGIN = 64 * 2 ** 20;

function ioError(file: string, e: unknown, verb: string): QnnxError {
  const err = e as NodeJS.ErrnoException;
  const reason =
    err.code === 'ENOENT' ? 'no such file' : err.code === 'EISDIR' ? 'is a directory' : err.message;
  return new QnnxError('E_IO', `${file}: cannot ${verb} (${reason})`, { file });
}

export function readFileBytes(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw ioError(file, e, 'read');
  }
}

/**
 * Resolves external-data locations against the model's folder. Locations that are absolute or climb out of the
 * folder (`../`, symlinks pointing outside) are refused; sizes are checked before anything is allocated.
 */
export class ExternalDataFiles {
  private readonly fds = new Map<string, { fd: number; size: number }>();
  private readonly realDir: string;

  constructor(
    readonly dir: string,
    readonly modelFile: string,
  ) {
    this.realDir = fs.realpathSync(dir);
  }

  private open(location: string, tensor: string): { fd: number; size: number } {
    const cached = this.fds.get(location);
    if (cached) return cached;
    const where = `${this.modelFile}: tensor '${tensor}'`;
    if (path.isAbsolute(location) || /^[a-zA-Z]:[\\/]/.test(location) || location.startsWith('\\')) {
      throw new QnnxError(
        'E_EXTERNAL_DATA',
        `${where}: external data location '${location}' is absolute; refused`,
        {
          file: this.modelFile,
          tensor,
        },
      );
    }
    const resolved = path.resolve(this.dir, location);
    const rel = path.relative(this.dir, resolved);
    if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) {
      throw new QnnxError(
        'E_EXTERNAL_DATA',
        `${where}: external data location '${location}' escapes the model's folder; refused`,
        { file: this.modelFile, tensor },
      );
    }
    let real: string;
    try {
      real = fs.realpathSync(resolved);
    } catch {
      throw new QnnxError('E_EXTERNAL_DATA', `${where}: external data file '${location}' does not exist`, {
        file: this.modelFile,
        tensor,
      });
    }
    const realRel = path.relative(this.realDir, real);
    if (realRel.startsWith('..') || path.isAbsolute(realRel)) {
      throw new QnnxError(
        'E_EXTERNAL_DATA',
        `${where}: external data file '${location}' links outside the model's folder; refused`,
        { file: this.modelFile, tensor },
      );
    }
    let fd: number;
    let size: number;
    try {
      fd = fs.openSync(real, 'r');
      const st = fs.fstatSync(fd);
      if (!st.isFile()) {
        fs.closeSync(fd);
        throw Object.assign(new Error('not a regular file'), { code: 'EISDIR' });
      }
      size = st.size;
    } catch (e) {
      const reason = (e as NodeJS.ErrnoException).code === 'EISDIR' ? 'is a directory' : (e as Error).message;
      throw new QnnxError(
        'E_EXTERNAL_DATA',
        `${where}: cannot open external data file '${location}' (${reason})`,
        {
          file: this.modelFile,
          tensor,
        },
      );
    }
    const entry = { fd, size };
    this.fds.set(location, entry);
    return entry;
  }

  readonly reader: ExternalDataReader = (info: ExternalDataInfo, tensor: string) => {
    const { fd, size } = this.open(info.location, tensor);
    if (info.offset + info.length > size) {
      throw new QnnxError(
        'E_EXTERNAL_DATA',
        `${this.modelFile}: tensor '${tensor}': external data '${info.location}' has ${size} bytes, ` +
          `tensor needs bytes ${info.offset}..${info.offset + info.length}`,
        { file: this.modelFile, tensor },
      );
    }
    const buf = Buffer.allocUnsafe(info.length);
    let done = 0;
    while (done < info.length) {
      const n = fs.readSync(fd, buf, done, info.length - done, info.offset + done);
      if (n === 0) break;
      done += n;
    }
    if (done !== info.length) {
      throw new QnnxError(
        'E_EXTERNAL_DATA',
        `${this.modelFile}: tensor '${tensor}': external data is truncated`,
        {
          file: this.modelFile,
          tensor,
        },
      );
    }
    return buf;
  };

  close(): void {
    for (const { fd } of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
  }
}

/** Decodes a model file into the IR, resolving external data relative to the file's folder. */
export function loadModel(file: string): Model {
  const bytes = readFileBytes(file);
  const proto = decodeModelProto(bytes, file);
  return modelFromFileProto(proto, file);
}

export function modelFromFileProto(proto: ModelProto, file: string): Model {
  const ext = new ExternalDataFiles(path.dirname(path.resolve(file)), file);
  try {
    return modelFromProto(proto, { readExternal: ext.reader, file });
  } catch (e) {
    if (isQnnxError(e)) throw e.withFile(file);
    throw e;
  } finally {
    ext.close();
  }
}

export interface SaveOptions {
  /**
   * `true`: store every tensor of at least `threshold` bytes in one external file; `false`: store all data inline
   * (fails past 2 GiB); `'keep'` (default): tensors that came from external data stay external, and the model
   * moves to external data automatically when it would pass the 2 GiB protobuf limit.
   */
  externalData?: boolean | 'keep';
  /** External file name relative to the model (default `<model file name>.data`). */
  location?: string;
  /** Minimum tensor size in bytes to externalize (default 1024, as ONNX's own saver). */
  threshold?: number;
}

export interface SaveResult {
  file: string;
  bytes: number;
  externalFile?: string;
  externalBytes: number;
  externalTensors: number;
}

function tmpName(file: string): string {
  return `${file}.${process.pid}.${Math.random().toString(36).slice(2, 8)}.tmp`;
}

function totalTensorBytes(model: Model): number {
  let n = 0;
  for (const g of model.graph.allGraphs()) for (const t of g.initializers.values()) n += t.byteLength;
  return n;
}

/** Writes a model atomically: data to temporary files, then renamed into place. The input is never modified. */
export function saveModel(model: Model, file: string, opts: SaveOptions = {}): SaveResult {
  const mode = opts.externalData ?? 'keep';
  const threshold = opts.threshold ?? 1024;
  const location = opts.location ?? `${path.basename(file)}.data`;
  const autoExternal = mode === 'keep' && totalTensorBytes(model) > PROTOBUF_LIMIT - AUTO_EXTERNAL_MARGIN;
  const wants = (t: Tensor): boolean => {
    if (t.byteLength < threshold && !(mode === 'keep' && t.storage === 'external')) return false;
    if (mode === true || autoExternal) return true;
    return mode === 'keep' && t.storage === 'external';
  };
  const dataPath = path.join(path.dirname(file), location);
  const dataTmp = tmpName(dataPath);
  const modelTmp = tmpName(file);
  let fd: number | undefined;
  let offset = 0;
  let externalTensors = 0;
  let dataRenamed = false;
  try {
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) {
      throw new QnnxError('E_IO', `${file}: cannot write (is a directory)`, { file });
    }
    const writeExternal = (t: Tensor): ExternalDataInfo | undefined => {
      if (mode === false || !wants(t)) return undefined;
      if (fd === undefined) fd = fs.openSync(dataTmp, 'w');
      const bytes = t.raw;
      // Align large tensors to 4 KiB so they can be memory-mapped, as ONNX's saver does.
      if (bytes.length >= 2 ** 20 && offset % 4096 !== 0) {
        const pad = 4096 - (offset % 4096);
        fs.writeSync(fd, new Uint8Array(pad), 0, pad, offset);
        offset += pad;
      }
      const info = { location, offset, length: bytes.length };
      let done = 0;
      while (done < bytes.length) done += fs.writeSync(fd, bytes, done, bytes.length - done, offset + done);
      offset += bytes.length;
      externalTensors++;
      return info;
    };
    const proto = modelToProto(model, { writeExternal });
    const encoded = encodeModelProto(proto);
    if (encoded.length > PROTOBUF_LIMIT) {
      throw new QnnxError(
        'E_IO',
        `${file}: the model is ${encoded.length} bytes, over the 2 GiB protobuf limit; save with external data`,
        { file },
      );
    }
    if (fd !== undefined) {
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fd = undefined;
    }
    fs.writeFileSync(modelTmp, encoded);
    if (externalTensors > 0) {
      fs.renameSync(dataTmp, dataPath);
      dataRenamed = true;
    }
    fs.renameSync(modelTmp, file);
    return {
      file,
      bytes: encoded.length,
      externalFile: externalTensors > 0 ? dataPath : undefined,
      externalBytes: offset,
      externalTensors,
    };
  } catch (e) {
    if (fd !== undefined) fs.closeSync(fd);
    for (const f of [dataTmp, modelTmp]) fs.rmSync(f, { force: true });
    if (dataRenamed) fs.rmSync(dataPath, { force: true });
    if (isQnnxError(e)) throw e.withFile(file);
    throw ioError(file, e, 'write');
  }
}

/** Encodes a model to bytes with all data inline (for handing to ONNX Runtime in memory). */
export function modelToBytes(model: Model): Uint8Array {
  return encodeModelProto(modelToProto(model, {}));
}

export { Model };
