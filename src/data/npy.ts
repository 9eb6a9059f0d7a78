/**
 * NumPy `.npy` files: read and write.
 *
 * Reading accepts format versions 1.0, 2.0 and 3.0 (v1: 16-bit header length, latin-1 header; v2: 32-bit
 * header length; v3: 32-bit header length, UTF-8 header) and the dtypes `f2 f4 f8 i1 u1 i2 u2 i4 u4 i8 u8 b1`
 * (plus `?` for bool) in little-endian (`<`), big-endian (`>`), native (`=`, little-endian on every platform
 * Node runs on) or not-applicable (`|`) byte order. Big-endian data is byte-swapped into a fresh array.
 *
 * Fortran-order (`'fortran_order': True`) arrays are read and transposed into C (row-major) order, so the
 * returned HostTensor always has C layout with the dims of the header.
 *
 * Storage follows HostTensor: float16 as Uint16Array bit patterns (DataType.FLOAT16), int64/uint64 as
 * BigInt64Array/BigUint64Array, bool as Uint8Array (DataType.BOOL). When the data lies at an offset of its
 * buffer that is a multiple of the element size, little-endian C-order data is returned as a zero-copy view
 * of the input bytes; otherwise it is copied.
 *
 * Writing always produces little-endian C-order data with a version 1.0 header (2.0 when the header would not
 * fit), padded so the data starts at a multiple of 64 bytes, as NumPy itself does.
 */
import { QnnxError } from '../errors.js';
import { DataType, dataTypeName } from '../onnx/dtype.js';
import { elementCount, type HostTensor, storageConstructor, type TensorStorage } from '../tensor.js';
import { readDataFile } from './files.js';

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

/** NumPy type character + item size → ONNX data type. */
const NPY_TO_DTYPE: Record<string, DataType> = {
  f2: DataType.FLOAT16,
  f4: DataType.FLOAT,
  f8: DataType.DOUBLE,
  i1: DataType.INT8,
  u1: DataType.UINT8,
  i2: DataType.INT16,
  u2: DataType.UINT16,
  i4: DataType.INT32,
  u4: DataType.UINT32,
  i8: DataType.INT64,
  u8: DataType.UINT64,
  b1: DataType.BOOL,
};

const DTYPE_TO_NPY: Partial<Record<DataType, string>> = {
  [DataType.FLOAT16]: '<f2',
  [DataType.FLOAT]: '<f4',
  [DataType.DOUBLE]: '<f8',
  [DataType.INT8]: '|i1',
  [DataType.UINT8]: '|u1',
  [DataType.INT16]: '<i2',
  [DataType.UINT16]: '<u2',
  [DataType.INT32]: '<i4',
  [DataType.UINT32]: '<u4',
  [DataType.INT64]: '<i8',
  [DataType.UINT64]: '<u8',
  [DataType.BOOL]: '|b1',
};

/** The data types encodeNpy/parseNpy support. */
export const NPY_DATA_TYPES: readonly DataType[] = Object.keys(DTYPE_TO_NPY).map(
  (k) => Number(k) as DataType,
);

function dataError(file: string, what: string): QnnxError {
  return new QnnxError('E_DATA', `${file}: ${what}`, { file });
}

// ---------------------------------------------------------------------------------------------------------
// A small parser for the Python literal NumPy writes as the header: a dict of str keys whose values are
// strings, booleans, ints, tuples or lists (lists appear in structured dtypes, which are then refused).

type PyValue = string | number | boolean | null | PyValue[] | Map<string, PyValue>;

class PyLiteralParser {
  private pos = 0;
  constructor(
    private readonly s: string,
    private readonly file: string,
  ) {}

  parseTop(): PyValue {
    const v = this.value();
    this.ws();
    if (this.pos !== this.s.length) throw this.fail('unexpected trailing characters');
    return v;
  }

  private fail(what: string): QnnxError {
    return dataError(
      this.file,
      `malformed .npy header (${what} at offset ${this.pos}): ${JSON.stringify(this.s)}`,
    );
  }

  private ws(): void {
    while (this.pos < this.s.length && /\s/.test(this.s[this.pos]!)) this.pos++;
  }

  private value(): PyValue {
    this.ws();
    const c = this.s[this.pos];
    if (c === undefined) throw this.fail('unexpected end');
    if (c === '{') return this.dict();
    if (c === '(') return this.seq('(', ')');
    if (c === '[') return this.seq('[', ']');
    if (c === "'" || c === '"') return this.str();
    if (/[-+0-9]/.test(c)) return this.num();
    for (const [word, val] of [
      ['True', true],
      ['False', false],
      ['None', null],
    ] as const) {
      if (this.s.startsWith(word, this.pos)) {
        this.pos += word.length;
        return val;
      }
    }
    throw this.fail(`unexpected character ${JSON.stringify(c)}`);
  }

  private dict(): Map<string, PyValue> {
    const m = new Map<string, PyValue>();
    this.pos++; // {
    for (;;) {
      this.ws();
      if (this.s[this.pos] === '}') {
        this.pos++;
        return m;
      }
      const k = this.value();
      if (typeof k !== 'string') throw this.fail('dict key is not a string');
      this.ws();
      if (this.s[this.pos] !== ':') throw this.fail("expected ':'");
      this.pos++;
      m.set(k, this.value());
      this.ws();
      if (this.s[this.pos] === ',') this.pos++;
      else if (this.s[this.pos] !== '}') throw this.fail("expected ',' or '}'");
    }
  }

  private seq(open: string, close: string): PyValue[] {
    const out: PyValue[] = [];
    this.pos++; // open
    for (;;) {
      this.ws();
      if (this.s[this.pos] === close) {
        this.pos++;
        return out;
      }
      out.push(this.value());
      this.ws();
      if (this.s[this.pos] === ',') this.pos++;
      else if (this.s[this.pos] !== close) throw this.fail(`expected ',' or '${open}${close}' close`);
    }
  }

  private str(): string {
    const q = this.s[this.pos]!;
    this.pos++;
    let out = '';
    while (this.pos < this.s.length && this.s[this.pos] !== q) {
      const c = this.s[this.pos]!;
      if (c === '\\') {
        const n = this.s[this.pos + 1];
        if (n === undefined) break;
        out += n === 'n' ? '\n' : n === 't' ? '\t' : n;
        this.pos += 2;
      } else {
        out += c;
        this.pos++;
      }
    }
    if (this.s[this.pos] !== q) throw this.fail('unterminated string');
    this.pos++;
    return out;
  }

  private num(): number {
    const m = /^[-+]?[0-9]+[lL]?/.exec(this.s.slice(this.pos)); // Python 2 headers may write 3L
    if (!m) throw this.fail('bad number');
    this.pos += m[0].length;
    return Number.parseInt(m[0], 10);
  }
}

// ---------------------------------------------------------------------------------------------------------

/** What a .npy header says, plus where the data starts. */
export interface NpyHeader {
  version: [number, number];
  /** The header's `descr`, e.g. '<f4'. */
  descr: string;
  dtype: DataType;
  /** True for big-endian multi-byte data. */
  bigEndian: boolean;
  itemSize: number;
  fortranOrder: boolean;
  dims: number[];
  /** Byte offset of the array data from the start of the file. */
  dataOffset: number;
}

/** Parse and validate the header of a .npy file (the data itself is not read). */
export function parseNpyHeader(bytes: Uint8Array, name = '<npy>'): NpyHeader {
  if (bytes.length < 10) {
    if (bytes.length < MAGIC.length || MAGIC.some((b, i) => bytes[i] !== b))
      throw dataError(name, `not a .npy file (${bytes.length} bytes, too short for the \\x93NUMPY magic)`);
    throw dataError(name, `truncated .npy file (${bytes.length} bytes, header incomplete)`);
  }
  if (MAGIC.some((b, i) => bytes[i] !== b))
    throw dataError(name, 'not a .npy file (bad magic, expected \\x93NUMPY)');
  const major = bytes[6]!;
  const minor = bytes[7]!;
  if (major < 1 || major > 3 || minor !== 0)
    throw dataError(name, `unsupported .npy format version ${major}.${minor} (supported: 1.0, 2.0, 3.0)`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen: number;
  let headerStart: number;
  if (major === 1) {
    headerLen = dv.getUint16(8, true);
    headerStart = 10;
  } else {
    if (bytes.length < 12)
      throw dataError(name, `truncated .npy file (${bytes.length} bytes, header incomplete)`);
    headerLen = dv.getUint32(8, true);
    headerStart = 12;
  }
  const dataOffset = headerStart + headerLen;
  if (dataOffset > bytes.length)
    throw dataError(
      name,
      `truncated .npy file: header declares ${headerLen} bytes but only ${bytes.length - headerStart} follow`,
    );
  const headerBytes = bytes.subarray(headerStart, dataOffset);
  const text = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(headerBytes);
  const parsed = new PyLiteralParser(text.trim(), name).parseTop();
  if (!(parsed instanceof Map))
    throw dataError(name, `malformed .npy header (not a dict): ${JSON.stringify(text)}`);
  const descr = parsed.get('descr');
  const fortran = parsed.get('fortran_order');
  const shape = parsed.get('shape');
  if (descr === undefined || fortran === undefined || shape === undefined)
    throw dataError(
      name,
      `malformed .npy header (needs 'descr', 'fortran_order' and 'shape'): ${JSON.stringify(text.trim())}`,
    );
  if (typeof descr !== 'string')
    throw dataError(name, `unsupported .npy dtype: structured array (descr ${JSON.stringify(descr)})`);
  if (typeof fortran !== 'boolean')
    throw dataError(name, "malformed .npy header: 'fortran_order' is not a bool");
  if (!Array.isArray(shape) || shape.some((d) => typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0))
    throw dataError(name, `malformed .npy header: bad shape ${JSON.stringify(shape)}`);

  const m = /^([<>|=]?)([a-zA-Z?])(\d*)$/.exec(descr);
  if (!m) throw dataError(name, `unsupported .npy dtype '${descr}'`);
  const [, order, kindRaw, sizeRaw] = m as unknown as [string, string, string, string];
  if (kindRaw === 'O') throw dataError(name, `object arrays are not supported (dtype '${descr}')`);
  const kind = kindRaw === '?' ? 'b' : kindRaw;
  const size = kindRaw === '?' ? (sizeRaw === '' ? 1 : Number(sizeRaw)) : Number(sizeRaw);
  const dtype = NPY_TO_DTYPE[`${kind}${size}`];
  if (dtype === undefined) throw dataError(name, `unsupported .npy dtype '${descr}'`);
  if (order === '|' && size > 1)
    throw dataError(name, `malformed .npy dtype '${descr}' ('|' needs a 1-byte type)`);
  return {
    version: [major, minor],
    descr,
    dtype,
    bigEndian: order === '>' && size > 1,
    itemSize: size,
    fortranOrder: fortran,
    dims: shape as number[],
    dataOffset,
  };
}

type NumericStorage = Exclude<TensorStorage, Uint8Array[]>;

function byteSwapCopy(src: Uint8Array, itemSize: number): Uint8Array {
  const out = new Uint8Array(src.length);
  for (let i = 0; i < src.length; i += itemSize) {
    for (let j = 0; j < itemSize; j++) out[i + j] = src[i + itemSize - 1 - j]!;
  }
  return out;
}

/** Reorder a Fortran-order (column-major) element array into C order for the same dims. */
function fortranToC<T extends NumericStorage>(src: T, dims: readonly number[]): T {
  const n = src.length;
  const Ctor = src.constructor as new (n: number) => T;
  const out = new Ctor(n);
  const rank = dims.length;
  if (rank <= 1 || n === 0) {
    (out as any).set(src);
    return out;
  }
  // Fortran strides: stride[0] = 1, stride[k] = stride[k-1] * dims[k-1]. Walk C order with a counter.
  const fstride = new Array<number>(rank);
  fstride[0] = 1;
  for (let k = 1; k < rank; k++) fstride[k] = fstride[k - 1]! * dims[k - 1]!;
  const idx = new Array<number>(rank).fill(0);
  let f = 0;
  for (let c = 0; c < n; c++) {
    (out as any)[c] = (src as any)[f];
    for (let k = rank - 1; k >= 0; k--) {
      idx[k]!++;
      f += fstride[k]!;
      if (idx[k]! < dims[k]!) break;
      f -= fstride[k]! * dims[k]!;
      idx[k] = 0;
    }
  }
  return out;
}

/**
 * Parse a .npy file. `name` (the file name) is used in error messages. Returns a C-order HostTensor; the data
 * is a zero-copy view of `bytes` when possible (little-endian, C order, aligned data offset).
 */
export function parseNpy(bytes: Uint8Array, name = '<npy>'): HostTensor {
  const h = parseNpyHeader(bytes, name);
  const count = elementCount(h.dims);
  if (!Number.isSafeInteger(count * h.itemSize))
    throw dataError(name, `.npy shape [${h.dims.join(', ')}] is too large`);
  const nbytes = count * h.itemSize;
  const available = bytes.length - h.dataOffset;
  if (available < nbytes)
    throw dataError(
      name,
      `truncated .npy file: shape [${h.dims.join(', ')}] of ${h.descr} needs ${nbytes} data bytes, found ${available}`,
    );
  if (available > nbytes)
    throw dataError(
      name,
      `.npy size mismatch: shape [${h.dims.join(', ')}] of ${h.descr} needs ${nbytes} data bytes, found ${available}`,
    );
  const Ctor = storageConstructor(h.dtype) as unknown as {
    new (buf: ArrayBufferLike, off: number, len: number): NumericStorage;
  };
  let raw = bytes.subarray(h.dataOffset, h.dataOffset + nbytes);
  let copied = false;
  if (h.bigEndian) {
    raw = byteSwapCopy(raw, h.itemSize);
    copied = true;
  }
  if (!copied && raw.byteOffset % h.itemSize !== 0) {
    raw = raw.slice();
    copied = true;
  }
  let data: NumericStorage = new Ctor(raw.buffer, raw.byteOffset, count);
  if (h.fortranOrder) data = fortranToC(data, h.dims);
  return { dtype: h.dtype, dims: [...h.dims], data };
}

function shapeLiteral(dims: readonly number[]): string {
  if (dims.length === 1) return `(${dims[0]},)`;
  return `(${dims.join(', ')})`;
}

/**
 * Encode a HostTensor as a .npy file (little-endian, C order). Supports the data types listed in
 * NPY_DATA_TYPES; others (strings, bfloat16, 8-bit floats, packed 4-bit types, complex) throw E_DTYPE, and a
 * data length that does not match the dims throws E_TENSOR_SIZE.
 */
export function encodeNpy(t: HostTensor): Uint8Array {
  const descr = DTYPE_TO_NPY[t.dtype];
  if (descr === undefined)
    throw new QnnxError(
      'E_DTYPE',
      `cannot write ${dataTypeName(t.dtype)} tensor as .npy (no NumPy equivalent)`,
      {
        field: 'dtype',
      },
    );
  if (Array.isArray(t.data)) throw new QnnxError('E_DTYPE', 'cannot write string tensor as .npy');
  const count = elementCount(t.dims);
  const data = t.data as NumericStorage;
  if (data.length !== count)
    throw new QnnxError(
      'E_TENSOR_SIZE',
      `tensor dims [${t.dims.join(', ')}] need ${count} elements, data has ${data.length}`,
    );
  const Ctor = storageConstructor(t.dtype);
  if (!(data instanceof Ctor))
    throw new QnnxError(
      'E_DTYPE',
      `${dataTypeName(t.dtype)} tensor data must be a ${Ctor.name}, got ${(data as object).constructor.name}`,
    );
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeLiteral(t.dims)}, }`;
  // Pad with spaces so that magic + version + length + header (ending in '\n') is a multiple of 64.
  let major = 1;
  let prefix = 10;
  let total = Math.ceil((prefix + dict.length + 1) / 64) * 64;
  if (total - prefix > 0xffff) {
    major = 2;
    prefix = 12;
    total = Math.ceil((prefix + dict.length + 1) / 64) * 64;
  }
  const headerLen = total - prefix;
  const out = new Uint8Array(total + data.byteLength);
  out.set(MAGIC, 0);
  out[6] = major;
  out[7] = 0;
  const dv = new DataView(out.buffer);
  if (major === 1) dv.setUint16(8, headerLen, true);
  else dv.setUint32(8, headerLen, true);
  const header = dict.padEnd(headerLen - 1, ' ') + '\n';
  for (let i = 0; i < header.length; i++) out[prefix + i] = header.charCodeAt(i);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), total);
  return out;
}

/** Read and parse a .npy file from disk. */
export async function readNpy(file: string): Promise<HostTensor> {
  return parseNpy(await readDataFile(file), file);
}
