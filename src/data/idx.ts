/**
 * IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed (detected by the 1f 8b magic, not by
 * the file name). Layout: two zero bytes, an element-type byte, a rank byte, `rank` big-endian uint32 dims,
 * then the elements in C order, big-endian.
 *
 * Element types: 0x08 unsigned byte → UINT8, 0x09 signed byte → INT8, 0x0B int16 → INT16, 0x0C int32 → INT32,
 * 0x0D float32 → FLOAT, 0x0E float64 → DOUBLE. Multi-byte data is converted to host (little-endian) order;
 * byte data is a zero-copy view of the (decompressed) input.
 */
import { gunzipSync } from 'node:zlib';
import { QnnxError } from '../errors.js';
import { DataType, dataTypeName } from '../onnx/dtype.js';
import { elementCount, type HostTensor } from '../tensor.js';
import { readDataFile } from './files.js';

const IDX_TYPES: Record<number, { dtype: DataType; size: number; label: string }> = {
  8: { dtype: DataType.UINT8, size: 1, label: 'ubyte' },
  9: { dtype: DataType.INT8, size: 1, label: 'byte' },
  11: { dtype: DataType.INT16, size: 2, label: 'short' },
  12: { dtype: DataType.INT32, size: 4, label: 'int' },
  13: { dtype: DataType.FLOAT, size: 4, label: 'float' },
  14: { dtype: DataType.DOUBLE, size: 8, label: 'double' },
};

function dataError(file: string, what: string, cause?: unknown): QnnxError {
  return new QnnxError('E_DATA', `${file}: ${what}`, { file }, { cause });
}

/** True when the bytes start with the gzip magic 1f 8b. */
export function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

/** Parse an IDX file (gzip'd or not). `name` is used in error messages. */
export function parseIdx(bytes: Uint8Array, name = '<idx>'): HostTensor {
  let b = bytes;
  if (isGzip(b)) {
    try {
      const buf = gunzipSync(b);
      b = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    } catch (e) {
      throw dataError(name, `corrupt or truncated gzip data: ${(e as Error).message}`, e);
    }
  }
  if (b.length < 4) throw dataError(name, `truncated IDX file (${b.length} bytes, no complete magic number)`);
  if (b[0] !== 0 || b[1] !== 0)
    throw dataError(
      name,
      `not an IDX file (bad magic ${[...b.subarray(0, 4)].map((x) => x.toString(16).padStart(2, '0')).join(' ')}, ` +
        'expected 00 00 <type> <rank>)',
    );
  const type = IDX_TYPES[b[2]!];
  if (!type) throw dataError(name, `unsupported IDX element type 0x${b[2]!.toString(16).padStart(2, '0')}`);
  const rank = b[3]!;
  const dataOffset = 4 + 4 * rank;
  if (b.length < dataOffset)
    throw dataError(
      name,
      `truncated IDX file: ${rank} dims need a ${dataOffset}-byte header, file has ${b.length}`,
    );
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const dims: number[] = [];
  for (let i = 0; i < rank; i++) dims.push(dv.getUint32(4 + 4 * i, false));
  const count = elementCount(dims);
  const nbytes = count * type.size;
  const available = b.length - dataOffset;
  if (available < nbytes)
    throw dataError(
      name,
      `truncated IDX file: dims [${dims.join(', ')}] of ${type.label} need ${nbytes} data bytes, found ${available}`,
    );
  if (available > nbytes)
    throw dataError(
      name,
      `IDX size mismatch: dims [${dims.join(', ')}] of ${type.label} need ${nbytes} data bytes, found ${available}`,
    );
  const off = b.byteOffset + dataOffset;
  switch (type.dtype) {
    case DataType.UINT8:
      return { dtype: type.dtype, dims, data: new Uint8Array(b.buffer, off, count) };
    case DataType.INT8:
      return { dtype: type.dtype, dims, data: new Int8Array(b.buffer, off, count) };
    case DataType.INT16: {
      const data = new Int16Array(count);
      for (let i = 0; i < count; i++) data[i] = dv.getInt16(dataOffset + 2 * i, false);
      return { dtype: type.dtype, dims, data };
    }
    case DataType.INT32: {
      const data = new Int32Array(count);
      for (let i = 0; i < count; i++) data[i] = dv.getInt32(dataOffset + 4 * i, false);
      return { dtype: type.dtype, dims, data };
    }
    case DataType.FLOAT: {
      const data = new Float32Array(count);
      for (let i = 0; i < count; i++) data[i] = dv.getFloat32(dataOffset + 4 * i, false);
      return { dtype: type.dtype, dims, data };
    }
    default: {
      const data = new Float64Array(count);
      for (let i = 0; i < count; i++) data[i] = dv.getFloat64(dataOffset + 8 * i, false);
      return { dtype: type.dtype, dims, data };
    }
  }
}

/** Read and parse an IDX file (gzip'd or not) from disk. */
export async function readIdx(file: string): Promise<HostTensor> {
  return parseIdx(await readDataFile(file), file);
}

/** Encode a tensor as an (uncompressed) IDX file; for test fixtures and exports. */
export function encodeIdx(t: HostTensor): Uint8Array {
  const entry = Object.entries(IDX_TYPES).find(([, v]) => v.dtype === t.dtype);
  if (!entry) throw new QnnxError('E_DTYPE', `cannot write ${dataTypeName(t.dtype)} tensor as IDX`);
  if (t.dims.length > 255)
    throw new QnnxError('E_USAGE', `IDX supports at most 255 dims, got ${t.dims.length}`);
  const code = Number(entry[0]);
  const size = entry[1].size;
  const count = elementCount(t.dims);
  const src = t.data as Exclude<HostTensor['data'], Uint8Array[]>;
  if (src.length !== count)
    throw new QnnxError(
      'E_TENSOR_SIZE',
      `dims [${t.dims.join(', ')}] need ${count} elements, data has ${src.length}`,
    );
  const head = 4 + 4 * t.dims.length;
  const out = new Uint8Array(head + count * size);
  const dv = new DataView(out.buffer);
  out[2] = code;
  out[3] = t.dims.length;
  for (const [i, d] of t.dims.entries()) dv.setUint32(4 + 4 * i, d, false);
  for (let i = 0; i < count; i++) {
    const v = Number(src[i]);
    const o = head + i * size;
    if (code === 0x08) dv.setUint8(o, v);
    else if (code === 0x09) dv.setInt8(o, v);
    else if (code === 0x0b) dv.setInt16(o, v, false);
    else if (code === 0x0c) dv.setInt32(o, v, false);
    else if (code === 0x0d) dv.setFloat32(o, v, false);
    else dv.setFloat64(o, v, false);
  }
  return out;
}
