/**
 * Tensor: an initializer or constant with a name, an ONNX data type, dims and element data. Data decoded from a
 * file stays a zero-copy view of the file's bytes (`raw`) until someone asks for typed `data`; a typed view is
 * itself zero-copy when the bytes are aligned. A tensor remembers how it was stored (raw_data, typed fields or
 * external data) so that an unchanged model is written back the same way.
 */
import Long from 'long';
import { QnnxError } from '../errors.js';
import { DataType, dataTypeName, isKnownDataType, storageBytes } from '../onnx/dtype.js';
import type { StringStringEntryProto, TensorProto } from '../onnx/proto.js';
import { has, toBigInt, toNumber } from '../onnx/proto.js';
import { elementCount, type HostTensor, storageConstructor, type TensorStorage } from '../tensor.js';

export type TensorStorageKind = 'raw' | 'typed' | 'external';

export interface ExternalDataInfo {
  location: string;
  offset: number;
  length: number;
  checksum?: string;
}

/** Reads the bytes of an externally stored tensor. Implemented by the Node file layer (src/io). */
export type ExternalDataReader = (info: ExternalDataInfo, tensorName: string) => Uint8Array;

const MAX_DIM = 2 ** 53;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export class Tensor implements HostTensor {
  name: string;
  dtype: DataType;
  dims: number[];
  docString?: string;
  metadataProps?: StringStringEntryProto[];
  /** How the tensor was (or will be) stored; `external` keeps `externalInfo` for writing back. */
  storage: TensorStorageKind;
  /** False when the file left the name field out (written back the same way). */
  hasName = true;
  externalInfo?: ExternalDataInfo;
  private _raw?: Uint8Array;
  private _data?: TensorStorage;

  constructor(name: string, dtype: DataType, dims: number[], data: TensorStorage | Uint8Array, raw = false) {
    this.name = name;
    this.dtype = dtype;
    this.dims = dims;
    this.storage = 'raw';
    if (raw) this._raw = data as Uint8Array;
    else this._data = data as TensorStorage;
  }

  /** Creates a tensor from host data (takes ownership of `data`). */
  static fromHost(name: string, t: HostTensor): Tensor {
    return new Tensor(name, t.dtype, [...t.dims], t.data);
  }

  get size(): number {
    return elementCount(this.dims);
  }

  /** Element storage (decoded lazily from raw bytes; zero-copy where alignment allows). */
  get data(): TensorStorage {
    if (this._data === undefined) this._data = rawToStorage(this.dtype, this._raw!, this.size, this.name);
    return this._data;
  }

  set data(d: TensorStorage) {
    this._data = d;
    this._raw = undefined;
  }

  /** Little-endian raw bytes as ONNX raw_data holds them (a view when possible). Not for strings. */
  get raw(): Uint8Array {
    if (this._raw !== undefined) return this._raw;
    if (this.dtype === DataType.STRING) {
      throw new QnnxError('E_DTYPE', `tensor '${this.name}': string tensors have no raw byte form`, {
        tensor: this.name,
      });
    }
    const d = this._data as Exclude<TensorStorage, Uint8Array[]>;
    if (!LITTLE_ENDIAN) throw new QnnxError('E_DTYPE', 'big-endian hosts are not supported');
    return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  }

  /** Byte size of the element data (strings: sum of their lengths). */
  get byteLength(): number {
    if (this.dtype === DataType.STRING) {
      return (this.data as Uint8Array[]).reduce((s, b) => s + b.length, 0);
    }
    return this._raw ? this._raw.length : storageBytes(this.dtype, this.size);
  }

  clone(name = this.name): Tensor {
    const t = new Tensor(name, this.dtype, [...this.dims], copyStorage(this.data));
    t.docString = this.docString;
    t.metadataProps = this.metadataProps?.map((e) => ({ ...e }));
    return t;
  }
}

function copyStorage(d: TensorStorage): TensorStorage {
  if (Array.isArray(d)) return d.map((b) => b.slice());
  return d.slice() as TensorStorage;
}

/** Interprets little-endian raw bytes as typed storage; zero-copy when aligned. */
export function rawToStorage(dtype: DataType, raw: Uint8Array, count: number, name = ''): TensorStorage {
  const expected = storageBytes(dtype, count);
  if (raw.length !== expected) {
    throw new QnnxError(
      'E_TENSOR_SIZE',
      `tensor '${name}': ${dataTypeName(dtype)} with ${count} elements needs ${expected} bytes, data has ${raw.length}`,
      { tensor: name },
    );
  }
  const C = storageConstructor(dtype);
  if (C === Uint8Array) return raw;
  const bpe = C.BYTES_PER_ELEMENT;
  if (raw.byteOffset % bpe === 0)
    return new C(raw.buffer as ArrayBuffer, raw.byteOffset, raw.length / bpe) as TensorStorage;
  const copy = new Uint8Array(raw.length);
  copy.set(raw);
  return new C(copy.buffer, 0, raw.length / bpe) as TensorStorage;
}

/** Number of elements the data of a TensorProto needs, validating dims; throws before any allocation. */
export function protoElementCount(tp: TensorProto, where: string): number {
  let n = 1;
  for (const d of tp.dims ?? []) {
    const v = toNumber(d);
    if (!Number.isInteger(v) || v < 0 || v > MAX_DIM) {
      throw new QnnxError('E_TENSOR_SIZE', `${where}: invalid dimension ${String(d)}`, { tensor: tp.name });
    }
    n *= v;
  }
  if (n > MAX_DIM)
    throw new QnnxError('E_TENSOR_SIZE', `${where}: declared size ${n} is too large`, { tensor: tp.name });
  return n;
}

function kv(entries: StringStringEntryProto[] | undefined): Map<string, string> {
  const m = new Map<string, string>();
  for (const e of entries ?? []) m.set(e.key ?? '', e.value ?? '');
  return m;
}

/** Parses and validates a TensorProto's external_data entries (the location is checked by the reader). */
export function externalInfoOf(tp: TensorProto, where: string): ExternalDataInfo {
  const m = kv(tp.external_data);
  const location = m.get('location');
  if (!location) {
    throw new QnnxError('E_EXTERNAL_DATA', `${where}: external data has no 'location'`, { tensor: tp.name });
  }
  const num = (k: string): number | undefined => {
    const s = m.get(k);
    if (s === undefined) return undefined;
    const v = Number(s);
    if (!/^\d+$/.test(s) || !Number.isSafeInteger(v)) {
      throw new QnnxError('E_EXTERNAL_DATA', `${where}: external data '${k}' is not a valid size: '${s}'`, {
        tensor: tp.name,
      });
    }
    return v;
  };
  const offset = num('offset') ?? 0;
  const length = num('length') ?? -1;
  return { location, offset, length, checksum: m.get('checksum') };
}

/** Builds an IR Tensor from a TensorProto, validating sizes before allocating anything. */
export function tensorFromProto(tp: TensorProto, readExternal?: ExternalDataReader, where?: string): Tensor {
  const name = tp.name ?? '';
  const at = where ?? `tensor '${name}'`;
  const dtype = tp.data_type ?? 0;
  if (!isKnownDataType(dtype)) {
    throw new QnnxError('E_DTYPE', `${at}: unknown data type ${dtype}`, { tensor: name });
  }
  if (tp.segment) {
    throw new QnnxError('E_TENSOR_SIZE', `${at}: segmented tensors are not supported`, { tensor: name });
  }
  const count = protoElementCount(tp, at);
  const dims = (tp.dims ?? []).map(toNumber);
  let t: Tensor;
  if (tp.data_location === 1) {
    const info = externalInfoOf(tp, at);
    const expected = storageBytes(dtype, count);
    if (dtype === DataType.STRING) {
      throw new QnnxError('E_EXTERNAL_DATA', `${at}: string tensors cannot be stored externally`, {
        tensor: name,
      });
    }
    if (info.length >= 0 && info.length !== expected) {
      throw new QnnxError(
        'E_TENSOR_SIZE',
        `${at}: external data length ${info.length} does not match ${expected} bytes declared by dims ${JSON.stringify(dims)}`,
        { tensor: name },
      );
    }
    if (!readExternal) {
      throw new QnnxError(
        'E_EXTERNAL_DATA',
        `${at}: stored in external data but no model directory is known`,
        {
          tensor: name,
        },
      );
    }
    const bytes = readExternal({ ...info, length: expected }, name);
    t = new Tensor(name, dtype, dims, bytes, true);
    t.storage = 'external';
    t.externalInfo = { ...info, length: expected };
  } else if (tp.raw_data && (tp.raw_data.length > 0 || (count === 0 && has(tp, 'raw_data')))) {
    if (dtype === DataType.STRING) {
      throw new QnnxError('E_DTYPE', `${at}: string tensors cannot use raw_data`, { tensor: name });
    }
    const expected = storageBytes(dtype, count);
    if (tp.raw_data.length !== expected) {
      throw new QnnxError(
        'E_TENSOR_SIZE',
        `${at}: dims ${JSON.stringify(dims)} of ${dataTypeName(dtype)} need ${expected} bytes, raw_data has ${tp.raw_data.length}`,
        { tensor: name },
      );
    }
    t = new Tensor(name, dtype, dims, tp.raw_data, true);
  } else {
    t = new Tensor(name, dtype, dims, typedFieldsToStorage(tp, dtype, count, at), false);
    t.storage = 'typed';
  }
  t.hasName = has(tp, 'name');
  if (has(tp, 'doc_string')) t.docString = tp.doc_string;
  if (tp.metadata_props?.length) t.metadataProps = tp.metadata_props.map((e) => ({ ...e }));
  return t;
}

function sizeError(at: string, name: string, field: string, have: number, need: number): QnnxError {
  return new QnnxError('E_TENSOR_SIZE', `${at}: ${field} holds ${have} values, dims declare ${need}`, {
    tensor: name,
    field,
  });
}

function typedFieldsToStorage(tp: TensorProto, dtype: DataType, count: number, at: string): TensorStorage {
  const name = tp.name ?? '';
  switch (dtype) {
    case DataType.FLOAT:
    case DataType.COMPLEX64: {
      const src = tp.float_data ?? [];
      const need = dtype === DataType.COMPLEX64 ? count * 2 : count;
      if (src.length !== need) throw sizeError(at, name, 'float_data', src.length, need);
      return Float32Array.from(src);
    }
    case DataType.DOUBLE:
    case DataType.COMPLEX128: {
      const src = tp.double_data ?? [];
      const need = dtype === DataType.COMPLEX128 ? count * 2 : count;
      if (src.length !== need) throw sizeError(at, name, 'double_data', src.length, need);
      return Float64Array.from(src);
    }
    case DataType.INT64: {
      const src = tp.int64_data ?? [];
      if (src.length !== count) throw sizeError(at, name, 'int64_data', src.length, count);
      const out = new BigInt64Array(count);
      for (let i = 0; i < count; i++) out[i] = BigInt.asIntN(64, toBigInt(src[i]));
      return out;
    }
    case DataType.UINT64:
    case DataType.UINT32: {
      const src = tp.uint64_data ?? [];
      if (src.length !== count) throw sizeError(at, name, 'uint64_data', src.length, count);
      if (dtype === DataType.UINT32) {
        const out = new Uint32Array(count);
        for (let i = 0; i < count; i++) out[i] = Number(BigInt.asUintN(32, toBigInt(src[i])));
        return out;
      }
      const out = new BigUint64Array(count);
      for (let i = 0; i < count; i++) out[i] = BigInt.asUintN(64, toBigInt(src[i]));
      return out;
    }
    case DataType.STRING: {
      const src = tp.string_data ?? [];
      if (src.length !== count) throw sizeError(at, name, 'string_data', src.length, count);
      return src.map((b) => b.slice());
    }
    default: {
      // int32_data carries INT32, INT16, INT8, UINT16, UINT8, BOOL, FLOAT16, BFLOAT16, FLOAT8* (one per int32)
      // and the packed 4-bit/2-bit types (one packed byte per int32).
      const src = tp.int32_data ?? [];
      const bits = storageBytes(dtype, 8) === 4 ? 4 : storageBytes(dtype, 4) === 1 ? 2 : 0;
      const need = bits ? storageBytes(dtype, count) : count;
      if (src.length !== need) throw sizeError(at, name, 'int32_data', src.length, need);
      const C = storageConstructor(dtype);
      const out = new C(need) as Exclude<TensorStorage, Uint8Array[] | BigInt64Array | BigUint64Array>;
      for (let i = 0; i < need; i++) out[i] = src[i];
      return out;
    }
  }
}

/** Writes a typed storage back into the TensorProto field ONNX prescribes for the data type. */
function storageToTypedFields(t: Tensor, tp: TensorProto): void {
  const d = t.data;
  switch (t.dtype) {
    case DataType.FLOAT:
    case DataType.COMPLEX64:
      tp.float_data = Array.from(d as Float32Array);
      return;
    case DataType.DOUBLE:
    case DataType.COMPLEX128:
      tp.double_data = Array.from(d as Float64Array);
      return;
    case DataType.INT64:
      tp.int64_data = Array.from(d as BigInt64Array, (v) => longFromBigInt(v, false));
      return;
    case DataType.UINT64:
      tp.uint64_data = Array.from(d as BigUint64Array, (v) => longFromBigInt(v, true));
      return;
    case DataType.UINT32:
      tp.uint64_data = Array.from(d as Uint32Array);
      return;
    case DataType.STRING:
      tp.string_data = d as Uint8Array[];
      return;
    default:
      tp.int32_data = Array.from(d as Int32Array);
  }
}

export function longFromBigInt(v: bigint, unsigned: boolean): Long {
  const u = BigInt.asUintN(64, v);
  return new Long(Number(u & 0xffffffffn) | 0, Number(u >> 32n) | 0, unsigned);
}

export interface TensorToProtoOptions {
  /** Called for tensors to store externally; returns the external info written. */
  writeExternal?: (t: Tensor) => ExternalDataInfo | undefined;
  /** Force raw_data for everything that is not a string (default: keep the original storage kind). */
  forceRaw?: boolean;
}

export function tensorToProto(t: Tensor, opts: TensorToProtoOptions = {}): TensorProto {
  const tp: TensorProto = {};
  tp.dims = t.dims.slice();
  tp.data_type = t.dtype;
  if (t.hasName || t.name !== '') tp.name = t.name;
  const ext = t.dtype !== DataType.STRING ? opts.writeExternal?.(t) : undefined;
  if (ext) {
    tp.external_data = [
      { key: 'location', value: ext.location },
      { key: 'offset', value: String(ext.offset) },
      { key: 'length', value: String(ext.length) },
    ];
    if (ext.checksum) tp.external_data.push({ key: 'checksum', value: ext.checksum });
    tp.data_location = 1;
  } else if (t.dtype === DataType.STRING || (t.storage === 'typed' && !opts.forceRaw)) {
    storageToTypedFields(t, tp);
  } else if (t.size > 0 || t.storage === 'raw') {
    tp.raw_data = t.raw;
  }
  if (t.docString !== undefined) tp.doc_string = t.docString;
  if (t.metadataProps) tp.metadata_props = t.metadataProps.map((e) => ({ ...e }));
  return tp;
}
