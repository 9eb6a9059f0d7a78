import { DataType } from './onnx/dtype.js';

/**
 * Typed storage for tensor elements. Sub-byte types (int4, uint4, float4e2m1) and 8-bit floats are stored as
 * Uint8Array (int4/uint4/fp4 packed two per byte, low nibble first, exactly as ONNX raw_data); float16/bfloat16
 * as Uint16Array bit patterns; int64/uint64 as BigInt64Array/BigUint64Array; bool as Uint8Array; strings as an
 * array of UTF-8 byte arrays (ONNX strings are bytes).
 */
export type TensorStorage =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array
  | Uint8Array[];

/** A tensor held in memory: data type, dimensions and element storage. No name, no graph. */
export interface HostTensor {
  dtype: DataType;
  dims: number[];
  data: TensorStorage;
}

export function elementCount(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

/** The typed-array constructor used for a data type's in-memory storage (packed types use Uint8Array). */
export function storageConstructor(dtype: DataType) {
  switch (dtype) {
    case DataType.FLOAT:
      return Float32Array;
    case DataType.DOUBLE:
      return Float64Array;
    case DataType.INT8:
      return Int8Array;
    case DataType.INT16:
      return Int16Array;
    case DataType.UINT16:
    case DataType.FLOAT16:
    case DataType.BFLOAT16:
      return Uint16Array;
    case DataType.INT32:
      return Int32Array;
    case DataType.UINT32:
      return Uint32Array;
    case DataType.INT64:
      return BigInt64Array;
    case DataType.UINT64:
      return BigUint64Array;
    case DataType.COMPLEX64:
      return Float32Array; // interleaved real, imaginary
    case DataType.COMPLEX128:
      return Float64Array;
    default:
      return Uint8Array; // uint8, bool, fp8 variants, packed 4-bit and 2-bit types
  }
}
