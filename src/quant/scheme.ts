/**
 * Quantization schemes: what a quantizer does to one tensor. A scheme combines a number format, a granularity,
 * a symmetry and a scale restriction, each a small independent part (in the manner of Brevitas): power-of-two
 * scales, narrow range or ternary levels are one field each, not flags threaded through every function.
 */
import { QnnxError } from '../errors.js';
import { DataType } from '../onnx/dtype.js';

export type NumberFormat =
  | 'int'
  | 'float8e4m3fn'
  | 'float8e4m3fnuz'
  | 'float8e5m2'
  | 'float8e5m2fnuz'
  | 'float16'
  | 'bfloat16';

export type Granularity =
  | { kind: 'tensor' }
  /** One scale per index along `axis`. */
  | { kind: 'channel'; axis: number }
  /** One scale per `size` consecutive elements along `axis` (ONNX opset-21 `block_size`). */
  | { kind: 'block'; axis: number; size: number }
  /**
   * VS-Quant per-vector scaling: blocks of `size` along `axis` (the reduction axis), each block's scale an
   * unsigned `scaleBits`-bit integer times a float scale per channel along `channelAxis`.
   */
  | {
      kind: 'vector';
      axis: number;
      size: number;
      channelAxis: number;
      scaleBits: number;
      scaleRounding: 'ceil' | 'round';
    };

/** symmetric: zero point 0 (signed grid); asymmetric: min/max mapped to the grid ends; unsigned-symmetric: [0, max]. */
export type Symmetry = 'symmetric' | 'asymmetric' | 'unsigned-symmetric';

export interface QuantScheme {
  format: NumberFormat;
  /** Integer bits (2-16). Float formats imply their own width. */
  bits: number;
  /** Signed integer grid (int8) or unsigned (uint8). */
  signed: boolean;
  symmetry: Symmetry;
  /** Narrow signed grid [-(2^(b-1)-1), 2^(b-1)-1], symmetric around zero (ONNX Runtime's int8 weights). */
  narrow: boolean;
  granularity: Granularity;
  /** 'pow2' restricts scales to powers of two (fixed-point NPUs), rounded up so nothing extra clips. */
  scaleType: 'float' | 'pow2';
}

export interface IntRange {
  qmin: number;
  qmax: number;
}

export function intRange(bits: number, signed: boolean, narrow = false): IntRange {
  if (!Number.isInteger(bits) || bits < 2 || bits > 16) {
    throw new QnnxError('E_USAGE', `integer quantization needs 2 to 16 bits, got ${bits}`);
  }
  if (signed) {
    const half = 2 ** (bits - 1);
    return { qmin: narrow ? -(half - 1) : -half, qmax: half - 1 };
  }
  return { qmin: 0, qmax: 2 ** bits - 1 };
}

/** The ONNX element type that stores values of a scheme (int8, uint8, int4, uint16, float8e4m3fn, ...). */
export function storageType(s: Pick<QuantScheme, 'format' | 'bits' | 'signed'>): DataType {
  switch (s.format) {
    case 'float8e4m3fn':
      return DataType.FLOAT8E4M3FN;
    case 'float8e4m3fnuz':
      return DataType.FLOAT8E4M3FNUZ;
    case 'float8e5m2':
      return DataType.FLOAT8E5M2;
    case 'float8e5m2fnuz':
      return DataType.FLOAT8E5M2FNUZ;
    case 'float16':
      return DataType.FLOAT16;
    case 'bfloat16':
      return DataType.BFLOAT16;
    default:
      break;
  }
  if (s.bits <= 2) return s.signed ? DataType.INT2 : DataType.UINT2;
  if (s.bits <= 4) return s.signed ? DataType.INT4 : DataType.UINT4;
  if (s.bits <= 8) return s.signed ? DataType.INT8 : DataType.UINT8;
  return s.signed ? DataType.INT16 : DataType.UINT16;
}

export function isFloat8(f: NumberFormat): boolean {
  return f.startsWith('float8');
}

/** The float8 data type of a format. */
export function float8Type(f: NumberFormat): DataType {
  return storageType({ format: f, bits: 8, signed: true });
}

export function intScheme(bits: number, options: Partial<QuantScheme> = {}): QuantScheme {
  return {
    format: 'int',
    bits,
    signed: options.signed ?? true,
    symmetry: options.symmetry ?? 'symmetric',
    narrow: options.narrow ?? false,
    granularity: options.granularity ?? { kind: 'tensor' },
    scaleType: options.scaleType ?? 'float',
  };
}

/** Ternary weights {-a, 0, +a}: a 2-bit narrow symmetric grid. */
export function ternaryScheme(granularity: Granularity = { kind: 'tensor' }): QuantScheme {
  return intScheme(2, { signed: true, narrow: true, symmetry: 'symmetric', granularity });
}

export function describeScheme(s: QuantScheme): string {
  const g = s.granularity;
  const gran =
    g.kind === 'tensor'
      ? 'per-tensor'
      : g.kind === 'channel'
        ? `per-channel(axis ${g.axis})`
        : g.kind === 'block'
          ? `per-block(${g.size}, axis ${g.axis})`
          : `per-vector(${g.size}, ${g.scaleBits}-bit scales)`;
  const fmt =
    s.format === 'int' ? `${s.signed ? 'int' : 'uint'}${s.bits}${s.narrow ? '-narrow' : ''}` : s.format;
  return `${fmt} ${s.symmetry} ${gran}${s.scaleType === 'pow2' ? ' pow2' : ''}`;
}
