/**
 * HostTensor <-> ONNX Runtime tensor conversion. Numeric data is never copied in either direction: ORT tensors
 * wrap our typed arrays (and onnxruntime-node reads input memory in place), and output typed arrays become
 * HostTensor storage as they are. Strings are the exception: ONNX strings are bytes (Uint8Array per element
 * here) while ORT's JS API takes JS strings, so they are decoded and encoded as UTF-8.
 *
 * ORT's JS API has tensors of float32, float64, float16 (Uint16Array bits), int8/16/32/64, uint8/16/32/64, bool
 * (Uint8Array), string and, on some backends, int4/uint4 (packed Uint8Array). It has no bfloat16, float8, float4,
 * 2-bit or complex tensors: those are refused with E_DTYPE, and a model must cast them at its boundary.
 * onnxruntime-node 1.30 additionally refuses int4/uint4 input tensors ("Tensor.type is not supported") and
 * crashes the process when asked to return an int4/uint4 output, so such outputs are never fetched
 * (`isFetchableOutputType`).
 */
import { QnnxError } from '../errors.js';
import { DataType, dataTypeFromName, dataTypeName } from '../onnx/dtype.js';
import { elementCount, type HostTensor, storageConstructor, type TensorStorage } from '../tensor.js';
import type { OrtTensorConstructor, OrtTensorLike } from './backend.js';

const ORT_TYPES: Partial<Record<DataType, string>> = {
  [DataType.FLOAT]: 'float32',
  [DataType.DOUBLE]: 'float64',
  [DataType.FLOAT16]: 'float16',
  [DataType.INT8]: 'int8',
  [DataType.INT16]: 'int16',
  [DataType.INT32]: 'int32',
  [DataType.INT64]: 'int64',
  [DataType.UINT8]: 'uint8',
  [DataType.UINT16]: 'uint16',
  [DataType.UINT32]: 'uint32',
  [DataType.UINT64]: 'uint64',
  [DataType.BOOL]: 'bool',
  [DataType.STRING]: 'string',
  [DataType.INT4]: 'int4',
  [DataType.UINT4]: 'uint4',
};

/** Whether ORT's JS API has a tensor type for this data type (int4/uint4 depend on the backend). */
export function hasOrtType(dtype: DataType): boolean {
  return ORT_TYPES[dtype] !== undefined;
}

/** Whether an output of this type may be fetched (onnxruntime-node 1.30 crashes on int4/uint4 outputs). */
export function isFetchableOutputType(dtype: DataType | undefined): boolean {
  return dtype === undefined || (hasOrtType(dtype) && dtype !== DataType.INT4 && dtype !== DataType.UINT4);
}

function unsupported(dtype: DataType, what: string, name: string): QnnxError {
  return new QnnxError(
    'E_DTYPE',
    `${what} '${name}' is ${dataTypeName(dtype)}, which ONNX Runtime's JS API cannot pass; ` +
      'cast it in the graph (e.g. Cast to float32 or float16) at the model boundary',
    { tensor: name, dtype: dataTypeName(dtype) },
  );
}

/** ORT's type string for a data type; throws E_DTYPE for types ORT's JS API does not have. */
export function ortTypeOf(dtype: DataType, name = ''): string {
  const t = ORT_TYPES[dtype];
  if (t === undefined) throw unsupported(dtype, 'tensor', name);
  return t;
}

/** The data type for an ORT type string ('float32' -> FLOAT); undefined when unknown. */
export function dataTypeOfOrt(type: string): DataType | undefined {
  return dataTypeFromName(type);
}

const utf8Decoder = new TextDecoder('utf-8', { fatal: true });
const utf8Encoder = new TextEncoder();

function checkSize(t: HostTensor, name: string): void {
  for (const d of t.dims) {
    if (!Number.isInteger(d) || d < 0) {
      throw new QnnxError('E_TENSOR_SIZE', `input '${name}': invalid dims ${JSON.stringify(t.dims)}`, {
        tensor: name,
      });
    }
  }
  const n = elementCount(t.dims);
  const packed = t.dtype === DataType.INT4 || t.dtype === DataType.UINT4;
  const need = packed ? Math.ceil(n / 2) : n;
  if (t.data.length !== need) {
    throw new QnnxError(
      'E_TENSOR_SIZE',
      `input '${name}': dims ${JSON.stringify(t.dims)} need ${need} ${packed ? 'packed bytes' : 'elements'}, ` +
        `the data holds ${t.data.length}`,
      { tensor: name },
    );
  }
  const C = storageConstructor(t.dtype);
  const ok = t.dtype === DataType.STRING ? Array.isArray(t.data) : t.data instanceof C;
  if (!ok) {
    throw new QnnxError(
      'E_DTYPE',
      `input '${name}': ${dataTypeName(t.dtype)} data must be ${t.dtype === DataType.STRING ? 'an array of UTF-8 Uint8Arrays' : C.name}, got ${t.data.constructor.name}`,
      { tensor: name },
    );
  }
}

/** Wraps a HostTensor as an ORT tensor without copying numeric data. */
export function toOrtTensor(Tensor: OrtTensorConstructor, t: HostTensor, name = ''): OrtTensorLike {
  const type = ortTypeOf(t.dtype, name);
  checkSize(t, name);
  let data: unknown = t.data;
  if (t.dtype === DataType.STRING) {
    data = (t.data as Uint8Array[]).map((b, i) => {
      try {
        return utf8Decoder.decode(b);
      } catch {
        throw new QnnxError('E_DTYPE', `input '${name}': string element ${i} is not valid UTF-8`, {
          tensor: name,
        });
      }
    });
  }
  try {
    return new Tensor(type, data, t.dims);
  } catch (e) {
    throw new QnnxError(
      'E_RUNTIME',
      `input '${name}': ONNX Runtime refused the tensor: ${e instanceof Error ? e.message : String(e)}`,
      { tensor: name },
      { cause: e },
    );
  }
}

/** Turns an ORT output tensor into a HostTensor; typed arrays are taken as they are (no copy). */
export function fromOrtTensor(t: OrtTensorLike, name = ''): HostTensor {
  const dtype = dataTypeOfOrt(t.type);
  if (dtype === undefined || !hasOrtType(dtype)) {
    throw new QnnxError('E_DTYPE', `output '${name}': unsupported ONNX Runtime tensor type '${t.type}'`, {
      tensor: name,
    });
  }
  const dims = Array.from(t.dims, Number);
  const raw = t.data;
  let data: TensorStorage;
  if (dtype === DataType.STRING) {
    data = (raw as string[]).map((s) => utf8Encoder.encode(s));
  } else {
    const C = storageConstructor(dtype);
    const view = raw as ArrayBufferView;
    // float16 may arrive as Float16Array where the platform has it; int4 as Int8Array: view the same bytes.
    data =
      view instanceof C
        ? (view as TensorStorage)
        : (new C(
            view.buffer as ArrayBuffer,
            view.byteOffset,
            view.byteLength / C.BYTES_PER_ELEMENT,
          ) as TensorStorage);
  }
  return { dtype, dims, data };
}
