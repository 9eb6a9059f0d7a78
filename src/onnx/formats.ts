/**
 * Exact number-format conversions as ONNX specifies them (Cast, QuantizeLinear, sub-byte packing).
 *
 * Pure TypeScript, no Node-only API: runs in browsers too.
 *
 * Every encoder rounds FROM A FLOAT32 VALUE, as ONNX Runtime does: a JS number (a double) is first rounded to
 * float32 with round-to-nearest-even (exactly `Math.fround`), then to the target format. Rounding a double
 * straight to the target could differ from that in rare double-rounding cases; this module never does it. The
 * array encoders that take a Float32Array read the float32 bit patterns directly, so they also keep the sign of
 * a NaN; the scalar encoders see a JS number, whose NaN sign and payload JavaScript engines do not preserve.
 *
 * Decoders are exact (every value of the narrow formats is a float32). NaN decodes to a quiet float32 NaN with
 * the sign bit of the encoded pattern (FNUZ formats have one NaN, 0x80, whose sign bit is set: it decodes to
 * -NaN, as ONNX Runtime does).
 */
import { QnnxError } from '../errors.js';
import type { TensorStorage } from '../tensor.js';
import { storageConstructor } from '../tensor.js';
import { DataType, dataTypeName, storageBytes } from './dtype.js';

// Scratch views used to move between numbers and float32 bit patterns without allocating.
const SCRATCH_F32 = new Float32Array(1);
const SCRATCH_U32 = new Uint32Array(SCRATCH_F32.buffer);

const QNAN_POS = 0x7fc00000;
const QNAN_NEG = 0xffc00000;

/** The float32 bit pattern (as an unsigned 32-bit integer) of `x` rounded to float32 (`Math.fround`). */
export function float32Bits(x: number): number {
  SCRATCH_F32[0] = x;
  return SCRATCH_U32[0];
}

/** The float32 value whose bit pattern is `bits` (taken modulo 2^32). */
export function float32FromBits(bits: number): number {
  SCRATCH_U32[0] = bits;
  return SCRATCH_F32[0];
}

// ---------------------------------------------------------------------------------------------------------------
// Rounding to integers
// ---------------------------------------------------------------------------------------------------------------

/**
 * Round to the nearest integer, ties to even (IEEE roundTiesToEven, C `nearbyint` in the default mode): the
 * rounding of ONNX QuantizeLinear and Round. 0.5 → 0, 1.5 → 2, 2.5 → 2, -1.5 → -2. The sign of zero is kept:
 * -0.5 → -0 and -0.2 → -0 (they compare equal to 0; use `Object.is` to tell). NaN → NaN, ±Infinity → ±Infinity.
 * No allocation; the tie branch is taken only on exact ties.
 */
export function roundHalfEven(x: number): number {
  const r = Math.round(x); // ties toward +Infinity
  if (r - x === 0.5 && r % 2 !== 0) return r - 1; // a tie rounded up to an odd integer: take the even one below
  return r;
}

// ---------------------------------------------------------------------------------------------------------------
// Generic rounding of a finite float32 magnitude to a narrow binary format
// ---------------------------------------------------------------------------------------------------------------

/**
 * Round the finite, non-negative float32 magnitude with bit pattern `a` (sign bit clear) to a binary format with
 * `mant` mantissa bits and exponent bias `bias`, round to nearest even, and return the magnitude code
 * (exponent << mant | mantissa) of the result with an UNBOUNDED exponent range: a code above the format's largest
 * finite code means the rounded value is out of range. Subnormals of the target format are handled; float32
 * subnormals are far below the smallest subnormal of every format used here and round to 0.
 */
function roundMagnitude(a: number, mant: number, bias: number): number {
  const e = a >>> 23;
  if (e >= 128 - bias) {
    // Normal in the target format: rebias the exponent and round off the low 23 - mant mantissa bits.
    const shift = 23 - mant;
    const c = a - ((127 - bias) << 23);
    return (c + (1 << (shift - 1)) - 1 + ((c >>> shift) & 1)) >>> shift;
  }
  if (e === 0) return 0;
  // Subnormal in the target format: the value is m24 * 2^(e - 150), the unit is 2^(1 - bias - mant).
  const shift = 151 - bias - mant - e;
  if (shift > 24) return 0; // below half the smallest subnormal
  const m24 = (a & 0x7fffff) | 0x800000;
  const q = m24 >>> shift;
  const rem = m24 & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return rem > half || (rem === half && (q & 1) === 1) ? q + 1 : q;
}

// ---------------------------------------------------------------------------------------------------------------
// float16 (IEEE binary16)
// ---------------------------------------------------------------------------------------------------------------

/**
 * float32 bit pattern → float16 bit pattern: round to nearest even, overflow (|x| ≥ 65520) → ±Infinity, subnormals
 * exact. NaN → quiet NaN with the same sign and the top 9 bits of the payload (what x86 F16C does; ONNX Runtime
 * keeps or drops the payload depending on the element's position, so only NaN-ness and sign are portable).
 */
export function float16BitsFromFloat32Bits(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  const a = b & 0x7fffffff;
  if (a >= 0x7f800000) return a === 0x7f800000 ? sign | 0x7c00 : sign | 0x7e00 | ((a >>> 13) & 0x3ff);
  if (a >= 0x47800000) return sign | 0x7c00; // ≥ 65536
  return sign | roundMagnitude(a, 10, 15); // 0x7c00 (Infinity) when it rounds up past 65504
}

/** float16 bit pattern → float32 bit pattern (exact; NaN payload and sign kept). */
export function float32BitsFromFloat16Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0x1f) return (sign | 0x7f800000 | (m << 13)) >>> 0;
  if (e !== 0) return (sign | ((e + 112) << 23) | (m << 13)) >>> 0;
  if (m === 0) return sign >>> 0;
  const p = 31 - Math.clz32(m); // position of the leading 1 (0..9); the value is m * 2^-24
  return (sign | ((p + 103) << 23) | ((m << (23 - p)) & 0x7fffff)) >>> 0;
}

/**
 * Encode a number as float16 bits. The number is first rounded to float32 (`Math.fround`), then to float16 with
 * round-to-nearest-even, as ONNX Cast(float → float16) does. Overflow → ±Infinity, NaN → quiet NaN 0x7e00.
 */
export function float32ToFloat16Bits(x: number): number {
  SCRATCH_F32[0] = x;
  return float16BitsFromFloat32Bits(SCRATCH_U32[0]);
}

/** Decode float16 bits (low 16 bits of `bits`) to a number (exact). */
export function float16BitsToFloat32(bits: number): number {
  SCRATCH_U32[0] = float32BitsFromFloat16Bits(bits & 0xffff);
  return SCRATCH_F32[0];
}

// ---------------------------------------------------------------------------------------------------------------
// bfloat16
// ---------------------------------------------------------------------------------------------------------------

/**
 * float32 bit pattern → bfloat16 bit pattern, exactly as ONNX Runtime's Cast: round to nearest even on the low
 * 16 bits (overflow rounds to ±Infinity, subnormals round like any other value), NaN → 0x7fc0 with the sign of the
 * input (payload dropped).
 */
export function bfloat16BitsFromFloat32Bits(b: number): number {
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) & 0x8000) | 0x7fc0;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Encode a number as bfloat16 bits (rounded to float32 first, then RNE; see `bfloat16BitsFromFloat32Bits`). */
export function float32ToBfloat16Bits(x: number): number {
  SCRATCH_F32[0] = x;
  return bfloat16BitsFromFloat32Bits(SCRATCH_U32[0]);
}

/** Decode bfloat16 bits (low 16 bits of `bits`) to a number (exact). */
export function bfloat16BitsToFloat32(bits: number): number {
  SCRATCH_U32[0] = (bits & 0xffff) << 16;
  return SCRATCH_F32[0];
}

// ---------------------------------------------------------------------------------------------------------------
// 8-bit floats and FLOAT4E2M1
// ---------------------------------------------------------------------------------------------------------------

/** Special-value conventions of the narrow float formats. */
const Kind = {
  /** Finite only, NaN = S.1111.111 (E4M3FN). */
  FN: 0,
  /** IEEE-like: Infinity = S.11111.00, NaN = S.11111.{01,10,11} (E5M2). */
  IEEE: 1,
  /** Finite only, a single NaN 0x80 (negative zero's pattern), no -0 (E4M3FNUZ, E5M2FNUZ). */
  FNUZ: 2,
  /** Finite only, no NaN at all (FLOAT4E2M1). */
  NONAN: 3,
} as const;

interface MiniFloat {
  readonly mant: number;
  readonly bias: number;
  /** Largest finite magnitude code. */
  readonly maxCode: number;
  /** Sign bit of the encoding. */
  readonly signBit: number;
  readonly kind: (typeof Kind)[keyof typeof Kind];
  table?: Uint32Array; // decode table (pattern → float32 bits), built on first use
}

const E4M3FN: MiniFloat = { mant: 3, bias: 7, maxCode: 0x7e, signBit: 0x80, kind: Kind.FN };
const E4M3FNUZ: MiniFloat = { mant: 3, bias: 8, maxCode: 0x7f, signBit: 0x80, kind: Kind.FNUZ };
const E5M2: MiniFloat = { mant: 2, bias: 15, maxCode: 0x7b, signBit: 0x80, kind: Kind.IEEE };
const E5M2FNUZ: MiniFloat = { mant: 2, bias: 16, maxCode: 0x7f, signBit: 0x80, kind: Kind.FNUZ };
const E2M1: MiniFloat = { mant: 1, bias: 1, maxCode: 0x7, signBit: 0x8, kind: Kind.NONAN };

function float8Format(type: DataType): MiniFloat {
  switch (type) {
    case DataType.FLOAT8E4M3FN:
      return E4M3FN;
    case DataType.FLOAT8E4M3FNUZ:
      return E4M3FNUZ;
    case DataType.FLOAT8E5M2:
      return E5M2;
    case DataType.FLOAT8E5M2FNUZ:
      return E5M2FNUZ;
    default:
      throw new QnnxError('E_DTYPE', `${dataTypeName(type)} is not a float8 type this conversion supports`, {
        dtype: type,
      });
  }
}

/** The encoding of ±Infinity and out-of-range values when not saturating: ±Infinity for E5M2, else NaN. */
function overflowCode(f: MiniFloat, signBit: number): number {
  switch (f.kind) {
    case Kind.IEEE:
      return signBit | 0x7c;
    case Kind.FN:
      return signBit | 0x7f;
    case Kind.FNUZ:
      return 0x80;
    default:
      return signBit | f.maxCode;
  }
}

/**
 * Encode a float32 bit pattern in a narrow float format, following the ONNX Cast saturate table:
 *
 * | x            | E4M3FN   | E4M3FNUZ | E5M2     | E5M2FNUZ | E2M1 |
 * | ------------ | -------- | -------- | -------- | -------- | ---- |
 * | ±0           | ±0       | 0        | ±0       | 0        | ±0   |
 * | NaN          | NaN (±)  | NaN      | NaN (±)  | NaN      | +6   |
 * | ±Inf, sat    | ±448     | ±240     | ±57344   | ±57344   | ±6   |
 * | ±Inf, no sat | NaN (±)  | NaN      | ±Inf     | NaN      | ±6   |
 * | [x] > max    | sat: ±max; no sat: NaN (±Inf for E5M2)  | ±6   |
 * | else         | round to nearest even, subnormals included         |
 *
 * FNUZ and ±Inf with saturate: the Cast operator text's table says NaN, but ONNX's reference implementation (and so
 * the ONNX backend tests) and ONNX Runtime give ±max; this follows them. A value that rounds to zero in a FNUZ type
 * gives 0 whatever its sign. FLOAT4E2M1 always saturates and maps NaN to +6 (ONNX float4 Cast table).
 */
function encodeMini(b: number, f: MiniFloat, saturate: boolean): number {
  const signBit = b >>> 31 === 0 ? 0 : f.signBit;
  const a = b & 0x7fffffff;
  if (a > 0x7f800000) return f.kind === Kind.NONAN ? f.maxCode : f.kind === Kind.FNUZ ? 0x80 : signBit | 0x7f;
  if (a === 0x7f800000) return saturate ? signBit | f.maxCode : overflowCode(f, signBit);
  const q = roundMagnitude(a, f.mant, f.bias);
  if (q > f.maxCode) return saturate ? signBit | f.maxCode : overflowCode(f, signBit);
  if (q === 0 && f.kind === Kind.FNUZ) return 0;
  return signBit | q;
}

function decodeTable(f: MiniFloat): Uint32Array {
  if (f.table) return f.table;
  const n = f.signBit << 1;
  const table = new Uint32Array(n);
  const expMask = (f.signBit - 1) >>> f.mant;
  for (let bits = 0; bits < n; bits++) {
    const neg = (bits & f.signBit) !== 0;
    const e = (bits >>> f.mant) & expMask;
    const m = bits & ((1 << f.mant) - 1);
    let out: number;
    if (f.kind === Kind.FNUZ && bits === 0x80) out = QNAN_NEG;
    else if (f.kind === Kind.FN && (bits & 0x7f) === 0x7f) out = neg ? QNAN_NEG : QNAN_POS;
    else if (f.kind === Kind.IEEE && e === expMask) {
      out = m === 0 ? (neg ? 0xff800000 : 0x7f800000) : neg ? QNAN_NEG : QNAN_POS;
    } else {
      const v = e === 0 ? m * 2 ** (1 - f.bias - f.mant) : (1 + m / (1 << f.mant)) * 2 ** (e - f.bias);
      out = float32Bits(neg ? -v : v);
    }
    table[bits] = out;
  }
  f.table = table;
  return table;
}

/**
 * Encode a number as a float8 pattern (0..255) of `type` (FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2 or
 * FLOAT8E5M2FNUZ), exactly as ONNX Cast (opset 19+) with the given `saturate` attribute: the number is rounded to
 * float32 first, then to nearest even; see the table at `encodeMini` for ±0, NaN, ±Inf and out-of-range values.
 * NaN encodes as 0x7f (FN, E5M2) or 0x80 (FNUZ). Throws QnnxError E_DTYPE for other types.
 *
 * ONNX Runtime 1.30 (CPU) matches this bit for bit except in two saturate=0 ranges where it departs from the spec:
 * FLOAT8E4M3FN with 480 <= |x| < 496 gives ±448 there (spec: NaN), FLOAT8E5M2 with 61440 <= |x| < 65536 gives
 * ±NaN there (spec: ±Infinity). This function follows the spec.
 */
export function float32ToFloat8Bits(x: number, type: DataType, saturate = true): number {
  const f = float8Format(type);
  SCRATCH_F32[0] = x;
  return encodeMini(SCRATCH_U32[0], f, saturate);
}

/**
 * Decode a float8 pattern of `type` to a number (exact). Also accepts FLOAT8E8M0 (2^(bits - 127), 0xff = NaN).
 */
export function float8BitsToFloat32(bits: number, type: DataType): number {
  if (type === DataType.FLOAT8E8M0) return e8m0ToFloat32((bits & 0xff) >>> 0);
  SCRATCH_U32[0] = decodeTable(float8Format(type))[bits & 0xff];
  return SCRATCH_F32[0];
}

function e8m0ToFloat32(bits: number): number {
  return bits === 0xff ? Number.NaN : 2 ** (bits - 127);
}

/**
 * Encode a number as a FLOAT4E2M1 nibble (0..15): round to float32, then to nearest even among
 * {0, 0.5, 1, 1.5, 2, 3, 4, 6}; |x| > 6 and ±Infinity saturate to ±6; NaN → +6 (0x7); -0 → 0x8. (ONNX float4 Cast.)
 */
export function float32ToFloat4e2m1Bits(x: number): number {
  SCRATCH_F32[0] = x;
  return encodeMini(SCRATCH_U32[0], E2M1, true);
}

/** Decode a FLOAT4E2M1 nibble (low 4 bits of `bits`) to a number (exact). */
export function float4e2m1BitsToFloat32(bits: number): number {
  SCRATCH_U32[0] = decodeTable(E2M1)[bits & 0xf];
  return SCRATCH_F32[0];
}

// ---------------------------------------------------------------------------------------------------------------
// Array versions
// ---------------------------------------------------------------------------------------------------------------

/** The float32 bit patterns of `src`: a view of a Float32Array (NaN signs kept), a rounded copy of a Float64Array. */
function float32BitView(src: Float32Array | Float64Array): Uint32Array {
  const f32 = src instanceof Float32Array ? src : new Float32Array(src);
  return new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
}

/** Float32Array whose elements are the given float32 bit patterns. */
function float32ArrayFrom(count: number, bitsAt: (i: number) => number): Float32Array {
  const out = new Float32Array(count);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < count; i++) u[i] = bitsAt(i);
  return out;
}

/** Array version of `float32ToFloat16Bits` (Float64Array elements are rounded to float32 first). */
export function toFloat16Array(src: Float32Array | Float64Array): Uint16Array {
  const bits = float32BitView(src);
  const out = new Uint16Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = float16BitsFromFloat32Bits(bits[i]);
  return out;
}

/** Array version of `float16BitsToFloat32` (NaN payloads are kept bit for bit). */
export function fromFloat16Array(src: Uint16Array): Float32Array {
  return float32ArrayFrom(src.length, (i) => float32BitsFromFloat16Bits(src[i]));
}

/** Array version of `float32ToBfloat16Bits`. */
export function toBfloat16Array(src: Float32Array | Float64Array): Uint16Array {
  const bits = float32BitView(src);
  const out = new Uint16Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = bfloat16BitsFromFloat32Bits(bits[i]);
  return out;
}

/** Array version of `bfloat16BitsToFloat32`. */
export function fromBfloat16Array(src: Uint16Array): Float32Array {
  return float32ArrayFrom(src.length, (i) => src[i] << 16);
}

/** Array version of `float32ToFloat8Bits`; NaN keeps its sign where the format has signed NaNs. */
export function toFloat8Array(src: Float32Array | Float64Array, type: DataType, saturate = true): Uint8Array {
  const f = float8Format(type);
  const bits = float32BitView(src);
  const out = new Uint8Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = encodeMini(bits[i], f, saturate);
  return out;
}

/** Array version of `float8BitsToFloat32` (also FLOAT8E8M0). */
export function fromFloat8Array(src: Uint8Array, type: DataType): Float32Array {
  if (type === DataType.FLOAT8E8M0) {
    const out = new Float32Array(src.length);
    for (let i = 0; i < src.length; i++) out[i] = e8m0ToFloat32(src[i]);
    return out;
  }
  const table = decodeTable(float8Format(type));
  return float32ArrayFrom(src.length, (i) => table[src[i]]);
}

/** FLOAT4E2M1 values packed two per byte, element 0 in the low nibble (ONNX raw_data layout). */
export function toFloat4e2m1Packed(src: Float32Array | Float64Array): Uint8Array {
  const bits = float32BitView(src);
  const out = new Uint8Array((bits.length + 1) >>> 1);
  for (let i = 0; i < bits.length; i++) out[i >>> 1] |= encodeMini(bits[i], E2M1, true) << ((i & 1) << 2);
  return out;
}

/** Decode `count` packed FLOAT4E2M1 values (two per byte, element 0 in the low nibble). */
export function fromFloat4e2m1Packed(bytes: Uint8Array, count: number): Float32Array {
  checkPackedLength(bytes, count, 4, 'float4e2m1');
  const table = decodeTable(E2M1);
  return float32ArrayFrom(count, (i) => table[(bytes[i >>> 1] >>> ((i & 1) << 2)) & 0xf]);
}

// ---------------------------------------------------------------------------------------------------------------
// Sub-byte integer packing (int4/uint4, int2/uint2)
// ---------------------------------------------------------------------------------------------------------------

function checkPackedLength(bytes: Uint8Array, count: number, bits: number, what: string): void {
  if (!Number.isInteger(count) || count < 0) {
    throw new QnnxError('E_USAGE', `element count must be a non-negative integer, got ${count}`);
  }
  const need = Math.ceil((count * bits) / 8);
  if (bytes.length < need) {
    throw new QnnxError(
      'E_TENSOR_SIZE',
      `${count} ${what} elements need ${need} bytes, got ${bytes.length}`,
      {
        expected: need,
        actual: bytes.length,
      },
    );
  }
}

function subByteName(bits: number, signed: boolean): string {
  return `${signed ? '' : 'u'}int${bits}`;
}

/**
 * Pack integers `bits` wide (2 or 4) into bytes, element 0 in the lowest bits of byte 0, as ONNX raw_data stores
 * int4/uint4 (two per byte) and int2/uint2 (four per byte). Unused high bits of the last byte are zero. Values must
 * be integers in range ([-8, 7] / [0, 15] for 4 bits, [-2, 1] / [0, 3] for 2 bits), else QnnxError E_DTYPE.
 */
export function packSubByte(values: ArrayLike<number>, bits: 2 | 4, signed: boolean): Uint8Array {
  if (bits !== 2 && bits !== 4) throw new QnnxError('E_USAGE', `sub-byte width must be 2 or 4, got ${bits}`);
  const lo = signed ? -(1 << (bits - 1)) : 0;
  const hi = signed ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
  const mask = (1 << bits) - 1;
  const perByteLog2 = bits === 4 ? 1 : 2;
  const n = values.length;
  const out = new Uint8Array((n * bits + 7) >>> 3);
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (!(v >= lo && v <= hi) || !Number.isInteger(v)) {
      throw new QnnxError(
        'E_DTYPE',
        `value ${v} at index ${i} is not representable as ${subByteName(bits, signed)} [${lo}, ${hi}]`,
        { index: i, value: v },
      );
    }
    out[i >>> perByteLog2] |= (v & mask) << ((i & ((1 << perByteLog2) - 1)) * bits);
  }
  return out;
}

/** Unpack `count` integers `bits` wide (2 or 4), sign-extending when `signed`. Inverse of `packSubByte`. */
export function unpackSubByte(bytes: Uint8Array, count: number, bits: 2 | 4, signed: boolean): Int8Array {
  if (bits !== 2 && bits !== 4) throw new QnnxError('E_USAGE', `sub-byte width must be 2 or 4, got ${bits}`);
  checkPackedLength(bytes, count, bits, subByteName(bits, signed));
  const perByteLog2 = bits === 4 ? 1 : 2;
  const mask = (1 << bits) - 1;
  const ext = 32 - bits;
  const out = new Int8Array(count);
  for (let i = 0; i < count; i++) {
    const v = (bytes[i >>> perByteLog2] >>> ((i & ((1 << perByteLog2) - 1)) * bits)) & mask;
    out[i] = signed ? (v << ext) >> ext : v;
  }
  return out;
}

/** Pack int4 (signed, [-8, 7]) or uint4 ([0, 15]) values two per byte, element 0 in the low nibble. */
export function packInt4(values: ArrayLike<number>, signed: boolean): Uint8Array {
  return packSubByte(values, 4, signed);
}

/** Unpack `count` int4/uint4 values (sign-extended when `signed`). */
export function unpackInt4(bytes: Uint8Array, count: number, signed: boolean): Int8Array {
  return unpackSubByte(bytes, count, 4, signed);
}

/** Pack int2 (signed, [-2, 1]) or uint2 ([0, 3]) values four per byte, element 0 in the lowest two bits. */
export function packInt2(values: ArrayLike<number>, signed: boolean): Uint8Array {
  return packSubByte(values, 2, signed);
}

/** Unpack `count` int2/uint2 values (sign-extended when `signed`). */
export function unpackInt2(bytes: Uint8Array, count: number, signed: boolean): Int8Array {
  return unpackSubByte(bytes, count, 2, signed);
}

// ---------------------------------------------------------------------------------------------------------------
// Any numeric storage → float32
// ---------------------------------------------------------------------------------------------------------------

const TWO_POW_53 = 2n ** 53n;

/** A 64-bit integer rounded once to float32 (nearest even), as a C cast does; Number() alone could round twice. */
function bigintToFloat32(v: bigint): number {
  const neg = v < 0n;
  let m = neg ? -v : v;
  if (m <= TWO_POW_53) return Math.fround(Number(v));
  const shift = m.toString(2).length - 24; // keep 24 significant bits
  const big = BigInt(shift);
  const rem = m & ((1n << big) - 1n);
  const half = 1n << (big - 1n);
  m >>= big;
  if (rem > half || (rem === half && (m & 1n) === 1n)) m += 1n;
  const r = Number(m) * 2 ** shift; // exact: m has at most 25 bits
  return neg ? -r : r;
}

/**
 * Convert `count` elements of any numeric tensor storage (as laid out in `HostTensor.data`, see src/tensor.ts) to
 * float32 values: exact for every format narrower than float32, float32-rounded (nearest even) for doubles and
 * 32/64-bit integers, bool → 0/1. Throws QnnxError E_DTYPE for STRING, COMPLEX64/128 and unknown types, or when the
 * storage is not the typed array the data type uses; E_TENSOR_SIZE when it holds fewer than `count` elements.
 */
export function decodeToFloat32(dtype: DataType, data: TensorStorage, count: number): Float32Array {
  const name = dataTypeName(dtype);
  if (
    dtype === DataType.STRING ||
    dtype === DataType.COMPLEX64 ||
    dtype === DataType.COMPLEX128 ||
    dtype === DataType.UNDEFINED ||
    storageBytes(dtype, 1) === 0
  ) {
    throw new QnnxError('E_DTYPE', `cannot convert ${name} elements to float32`, { dtype });
  }
  const ctor = storageConstructor(dtype);
  if (!(data instanceof ctor)) {
    throw new QnnxError('E_DTYPE', `${name} data must be stored in a ${ctor.name}`, { dtype });
  }
  if (!Number.isInteger(count) || count < 0) {
    throw new QnnxError('E_USAGE', `element count must be a non-negative integer, got ${count}`);
  }
  const bytes = data as Uint8Array;
  switch (dtype) {
    case DataType.INT4:
    case DataType.UINT4:
      return Float32Array.from(unpackSubByte(bytes, count, 4, dtype === DataType.INT4));
    case DataType.INT2:
    case DataType.UINT2:
      return Float32Array.from(unpackSubByte(bytes, count, 2, dtype === DataType.INT2));
    case DataType.FLOAT4E2M1:
      return fromFloat4e2m1Packed(bytes, count);
  }
  if (data.length < count) {
    throw new QnnxError('E_TENSOR_SIZE', `${count} ${name} elements expected, storage holds ${data.length}`, {
      expected: count,
      actual: data.length,
    });
  }
  switch (dtype) {
    case DataType.FLOAT16:
      return fromFloat16Array((data as Uint16Array).subarray(0, count));
    case DataType.BFLOAT16:
      return fromBfloat16Array((data as Uint16Array).subarray(0, count));
    case DataType.FLOAT8E4M3FN:
    case DataType.FLOAT8E4M3FNUZ:
    case DataType.FLOAT8E5M2:
    case DataType.FLOAT8E5M2FNUZ:
    case DataType.FLOAT8E8M0:
      return fromFloat8Array(bytes.subarray(0, count), dtype);
    case DataType.INT64:
    case DataType.UINT64: {
      const big = data as BigInt64Array | BigUint64Array;
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = bigintToFloat32(big[i]);
      return out;
    }
    default: {
      // float, double, (u)int8/16/32, bool: the Float32Array store rounds to nearest even.
      const src = data as Exclude<TensorStorage, BigInt64Array | BigUint64Array | Uint8Array[]>;
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = src[i];
      return out;
    }
  }
}
