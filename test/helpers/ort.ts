/**
 * Test helpers around onnxruntime-node: run a model with one thread, turn a decoded TensorProto into an
 * ort.Tensor (decoded here independently of src/ir), compare two output maps bit for bit, and a seeded PRNG.
 */
import * as ort from 'onnxruntime-node';
import type { TensorProto } from '../../src/onnx/proto.js';
import { toBigInt, toNumber } from '../../src/onnx/proto.js';
import { mulberry32 } from '../../src/random.js';

export { mulberry32, ort };

export const SESSION_OPTIONS: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  logSeverityLevel: 3,
};

export type OrtFeeds = Record<string, ort.Tensor>;
export type OrtOutputs = Record<string, ort.Tensor>;

export function createSession(model: Uint8Array | string): Promise<ort.InferenceSession> {
  return typeof model === 'string'
    ? ort.InferenceSession.create(model, SESSION_OPTIONS)
    : ort.InferenceSession.create(model, SESSION_OPTIONS);
}

/** Runs a model (bytes or file path) once with the given feeds and releases the session. */
export async function runModel(model: Uint8Array | string, feeds: OrtFeeds): Promise<OrtOutputs> {
  const session = await createSession(model);
  try {
    return (await session.run(feeds)) as OrtOutputs;
  } finally {
    await session.release();
  }
}

type Typed =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array;

interface DTypeInfo {
  ort?: ort.Tensor.Type;
  /** Bits per element in raw_data (complex: both parts). */
  bits: number;
  ctor?: { new (buffer: ArrayBuffer, offset: number, length: number): Typed; BYTES_PER_ELEMENT: number };
  field: 'float_data' | 'double_data' | 'int32_data' | 'int64_data' | 'uint64_data' | 'string_data';
}

/** ONNX TensorProto.DataType table, written from onnx.proto (independent of src/onnx/dtype.ts). */
const DTYPES: Record<number, DTypeInfo> = {
  1: { ort: 'float32', bits: 32, ctor: Float32Array, field: 'float_data' },
  2: { ort: 'uint8', bits: 8, ctor: Uint8Array, field: 'int32_data' },
  3: { ort: 'int8', bits: 8, ctor: Int8Array, field: 'int32_data' },
  4: { ort: 'uint16', bits: 16, ctor: Uint16Array, field: 'int32_data' },
  5: { ort: 'int16', bits: 16, ctor: Int16Array, field: 'int32_data' },
  6: { ort: 'int32', bits: 32, ctor: Int32Array, field: 'int32_data' },
  7: { ort: 'int64', bits: 64, ctor: BigInt64Array, field: 'int64_data' },
  8: { ort: 'string', bits: 0, field: 'string_data' },
  9: { ort: 'bool', bits: 8, ctor: Uint8Array, field: 'int32_data' },
  10: { ort: 'float16', bits: 16, ctor: Uint16Array, field: 'int32_data' },
  11: { ort: 'float64', bits: 64, ctor: Float64Array, field: 'double_data' },
  12: { ort: 'uint32', bits: 32, ctor: Uint32Array, field: 'uint64_data' },
  13: { ort: 'uint64', bits: 64, ctor: BigUint64Array, field: 'uint64_data' },
  14: { bits: 64, ctor: Float32Array, field: 'float_data' },
  15: { bits: 128, ctor: Float64Array, field: 'double_data' },
  16: { bits: 16, ctor: Uint16Array, field: 'int32_data' },
  17: { bits: 8, ctor: Uint8Array, field: 'int32_data' },
  18: { bits: 8, ctor: Uint8Array, field: 'int32_data' },
  19: { bits: 8, ctor: Uint8Array, field: 'int32_data' },
  20: { bits: 8, ctor: Uint8Array, field: 'int32_data' },
  21: { bits: 4, ctor: Uint8Array, field: 'int32_data' },
  22: { bits: 4, ctor: Uint8Array, field: 'int32_data' },
  23: { bits: 4, ctor: Uint8Array, field: 'int32_data' },
  24: { bits: 8, ctor: Uint8Array, field: 'int32_data' },
  25: { bits: 2, ctor: Uint8Array, field: 'int32_data' },
  26: { bits: 2, ctor: Uint8Array, field: 'int32_data' },
};

export interface ProtoValues {
  dataType: number;
  dims: number[];
  /** Little-endian element bytes, as raw_data would hold them (absent for strings). */
  bytes?: Uint8Array;
  /** Typed view of `bytes` (absent for strings). */
  values?: Typed;
  strings?: Uint8Array[];
}

/** Decodes the element data of a TensorProto (raw_data or the typed field), checking the element count. */
export function protoValues(tp: TensorProto): ProtoValues {
  const dataType = tp.data_type ?? 0;
  const info = DTYPES[dataType];
  if (!info) throw new Error(`tensor '${tp.name}': unknown data_type ${dataType}`);
  const dims = (tp.dims ?? []).map(toNumber);
  const count = dims.reduce((a, b) => a * b, 1);
  if (info.field === 'string_data') {
    const strings = tp.string_data ?? [];
    if (strings.length !== count)
      throw new Error(`tensor '${tp.name}': ${strings.length} strings, need ${count}`);
    return { dataType, dims, strings };
  }
  const nbytes = Math.ceil((count * info.bits) / 8);
  const buf = new ArrayBuffer(nbytes);
  const bytes = new Uint8Array(buf);
  const dv = new DataView(buf);
  if (tp.raw_data && tp.raw_data.length > 0) {
    if (tp.raw_data.length !== nbytes)
      throw new Error(`tensor '${tp.name}': raw_data ${tp.raw_data.length} != ${nbytes}`);
    bytes.set(tp.raw_data);
  } else {
    const src = (tp[info.field] ?? []) as (number | Parameters<typeof toBigInt>[0])[];
    const per = info.bits >= 8 ? info.bits / 8 : 1; // bytes per entry of the typed field
    const entries = info.bits >= 8 ? (dataType === 14 || dataType === 15 ? count * 2 : count) : nbytes;
    if (src.length !== entries)
      throw new Error(`tensor '${tp.name}': ${info.field} has ${src.length}, need ${entries}`);
    const step = dataType === 14 ? 4 : dataType === 15 ? 8 : per;
    for (let i = 0; i < entries; i++) {
      const v = src[i];
      const o = i * step;
      if (info.field === 'float_data') dv.setFloat32(o, v as number, true);
      else if (info.field === 'double_data') dv.setFloat64(o, v as number, true);
      else if (info.field === 'int64_data') dv.setBigInt64(o, BigInt.asIntN(64, toBigInt(v as never)), true);
      else if (info.field === 'uint64_data') {
        if (dataType === 12) dv.setUint32(o, Number(BigInt.asUintN(32, toBigInt(v as never))), true);
        else dv.setBigUint64(o, BigInt.asUintN(64, toBigInt(v as never)), true);
      } else if (step === 1) dv.setUint8(o, (v as number) & 0xff);
      else if (step === 2) dv.setUint16(o, (v as number) & 0xffff, true);
      else dv.setInt32(o, v as number, true);
    }
  }
  const C = info.ctor!;
  const values = new C(buf, 0, nbytes / C.BYTES_PER_ELEMENT);
  return { dataType, dims, bytes, values };
}

/** An ort.Tensor holding a TensorProto's data; throws for data types ORT's Node API cannot feed. */
export function protoToOrt(tp: TensorProto): ort.Tensor {
  const info = DTYPES[tp.data_type ?? 0];
  if (!info?.ort) throw new Error(`tensor '${tp.name}': data_type ${tp.data_type} cannot be fed to ORT-node`);
  const v = protoValues(tp);
  if (v.strings) {
    const dec = new TextDecoder();
    return new ort.Tensor(
      'string',
      v.strings.map((s) => dec.decode(s)),
      v.dims,
    );
  }
  return new ort.Tensor(info.ort as 'float32', v.values as Float32Array, v.dims);
}

function tensorBytes(t: ort.Tensor): Uint8Array {
  const d = t.data as Typed;
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

/** Describes the first difference between two ORT output maps (bit-exact), or returns undefined. */
export function diffOutputs(a: OrtOutputs, b: OrtOutputs): string | undefined {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  if (ka.join('\0') !== kb.join('\0')) return `output names differ: [${ka}] vs [${kb}]`;
  for (const k of ka) {
    const x = a[k];
    const y = b[k];
    if (x.type !== y.type) return `output '${k}': type ${x.type} vs ${y.type}`;
    if (x.dims.join(',') !== y.dims.join(',')) return `output '${k}': dims [${x.dims}] vs [${y.dims}]`;
    if (x.type === 'string') {
      const sx = x.data as string[];
      const sy = y.data as string[];
      const i = sx.findIndex((s, j) => s !== sy[j]);
      if (i >= 0)
        return `output '${k}': string ${i} differs: ${JSON.stringify(sx[i])} vs ${JSON.stringify(sy[i])}`;
      continue;
    }
    const bx = tensorBytes(x);
    const by = tensorBytes(y);
    if (bx.length !== by.length) return `output '${k}': ${bx.length} vs ${by.length} bytes`;
    if (
      !Buffer.from(bx.buffer, bx.byteOffset, bx.length).equals(
        Buffer.from(by.buffer, by.byteOffset, by.length),
      )
    ) {
      const bpe = (x.data as Typed).BYTES_PER_ELEMENT;
      let i = 0;
      while (bx[i] === by[i]) i++;
      const e = Math.floor(i / bpe);
      return `output '${k}': element ${e} differs: ${(x.data as Typed)[e]} vs ${(y.data as Typed)[e]}`;
    }
  }
  return undefined;
}
