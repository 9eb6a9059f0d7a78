/**
 * ONNX TensorProto.DataType: numbering, names and byte sizes, as in onnx.proto (IR version 10+).
 */
export enum DataType {
  UNDEFINED = 0,
  FLOAT = 1,
  UINT8 = 2,
  INT8 = 3,
  UINT16 = 4,
  INT16 = 5,
  INT32 = 6,
  INT64 = 7,
  STRING = 8,
  BOOL = 9,
  FLOAT16 = 10,
  DOUBLE = 11,
  UINT32 = 12,
  UINT64 = 13,
  COMPLEX64 = 14,
  COMPLEX128 = 15,
  BFLOAT16 = 16,
  FLOAT8E4M3FN = 17,
  FLOAT8E4M3FNUZ = 18,
  FLOAT8E5M2 = 19,
  FLOAT8E5M2FNUZ = 20,
  UINT4 = 21,
  INT4 = 22,
  FLOAT4E2M1 = 23,
  FLOAT8E8M0 = 24,
  UINT2 = 25,
  INT2 = 26,
}

/** Lower-case names as ONNX Runtime's JS API spells them where it has one, else the ONNX enum name lower-cased. */
const NAMES: Record<number, string> = {
  [DataType.FLOAT]: 'float32',
  [DataType.UINT8]: 'uint8',
  [DataType.INT8]: 'int8',
  [DataType.UINT16]: 'uint16',
  [DataType.INT16]: 'int16',
  [DataType.INT32]: 'int32',
  [DataType.INT64]: 'int64',
  [DataType.STRING]: 'string',
  [DataType.BOOL]: 'bool',
  [DataType.FLOAT16]: 'float16',
  [DataType.DOUBLE]: 'float64',
  [DataType.UINT32]: 'uint32',
  [DataType.UINT64]: 'uint64',
  [DataType.COMPLEX64]: 'complex64',
  [DataType.COMPLEX128]: 'complex128',
  [DataType.BFLOAT16]: 'bfloat16',
  [DataType.FLOAT8E4M3FN]: 'float8e4m3fn',
  [DataType.FLOAT8E4M3FNUZ]: 'float8e4m3fnuz',
  [DataType.FLOAT8E5M2]: 'float8e5m2',
  [DataType.FLOAT8E5M2FNUZ]: 'float8e5m2fnuz',
  [DataType.UINT4]: 'uint4',
  [DataType.INT4]: 'int4',
  [DataType.FLOAT4E2M1]: 'float4e2m1',
  [DataType.FLOAT8E8M0]: 'float8e8m0',
  [DataType.UINT2]: 'uint2',
  [DataType.INT2]: 'int2',
};

const BY_NAME = new Map(Object.entries(NAMES).map(([k, v]) => [v, Number(k) as DataType]));

/** Bits per element of the packed storage (raw_data) layout. 0 for STRING (variable). */
const BITS: Record<number, number> = {
  [DataType.FLOAT]: 32,
  [DataType.UINT8]: 8,
  [DataType.INT8]: 8,
  [DataType.UINT16]: 16,
  [DataType.INT16]: 16,
  [DataType.INT32]: 32,
  [DataType.INT64]: 64,
  [DataType.STRING]: 0,
  [DataType.BOOL]: 8,
  [DataType.FLOAT16]: 16,
  [DataType.DOUBLE]: 64,
  [DataType.UINT32]: 32,
  [DataType.UINT64]: 64,
  [DataType.COMPLEX64]: 64,
  [DataType.COMPLEX128]: 128,
  [DataType.BFLOAT16]: 16,
  [DataType.FLOAT8E4M3FN]: 8,
  [DataType.FLOAT8E4M3FNUZ]: 8,
  [DataType.FLOAT8E5M2]: 8,
  [DataType.FLOAT8E5M2FNUZ]: 8,
  [DataType.UINT4]: 4,
  [DataType.INT4]: 4,
  [DataType.FLOAT4E2M1]: 4,
  [DataType.FLOAT8E8M0]: 8,
  [DataType.UINT2]: 2,
  [DataType.INT2]: 2,
};

export function isKnownDataType(t: number): t is DataType {
  return Number.isInteger(t) && t > 0 && t in NAMES;
}

export function dataTypeName(t: number): string {
  return NAMES[t] ?? `unknown(${t})`;
}

export function dataTypeFromName(name: string): DataType | undefined {
  return BY_NAME.get(name.toLowerCase());
}

/** Bits per element in raw_data; 0 for strings. */
export function bitsPerElement(t: DataType): number {
  return BITS[t] ?? 0;
}

/** Bytes needed to store `count` elements in raw_data (sub-byte types are packed, low nibble first). */
export function storageBytes(t: DataType, count: number): number {
  return Math.ceil((bitsPerElement(t) * count) / 8);
}

export function isFloatType(t: DataType): boolean {
  return (
    t === DataType.FLOAT ||
    t === DataType.DOUBLE ||
    t === DataType.FLOAT16 ||
    t === DataType.BFLOAT16 ||
    t === DataType.FLOAT8E4M3FN ||
    t === DataType.FLOAT8E4M3FNUZ ||
    t === DataType.FLOAT8E5M2 ||
    t === DataType.FLOAT8E5M2FNUZ ||
    t === DataType.FLOAT4E2M1 ||
    t === DataType.FLOAT8E8M0
  );
}
