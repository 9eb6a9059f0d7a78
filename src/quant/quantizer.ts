/**
 * Quantizers apply an encoding: quantize to grid values, dequantize back, or both (fake quantization). The
 * arithmetic is exactly ONNX Runtime's QuantizeLinear / DequantizeLinear on CPU (MLAS): q = clamp(rne(x / s),
 * qmin - zp, qmax - zp) + zp with the division in float32 and NaN going to qmin; x' = (q - zp) * s in float32.
 */
import {
  bfloat16BitsToFloat32,
  float8BitsToFloat32,
  float16BitsToFloat32,
  float32ToBfloat16Bits,
  float32ToFloat8Bits,
  float32ToFloat16Bits,
  roundHalfEven,
} from '../onnx/formats.js';
import type { Encoding } from './encoding.js';
import { groupIndexer } from './encoding.js';
import { float8Type, intRange } from './scheme.js';

const f32 = Math.fround;

/** Quantizes to integer grid values (int formats) or float8 bit patterns (float8 formats). */
export function quantize(x: ArrayLike<number>, dims: readonly number[], enc: Encoding): Int32Array {
  const out = new Int32Array(x.length);
  const s = enc.scheme;
  const { index } = groupIndexer(dims, s.granularity);
  const scale = enc.scale;
  if (s.format === 'int') {
    const { qmin, qmax } = intRange(s.bits, s.signed, s.narrow);
    const zps = enc.zeroPoint;
    for (let i = 0; i < x.length; i++) {
      const g = index(i);
      const zp = zps[g];
      let v = f32(x[i] / scale[g]);
      if (Number.isNaN(v)) v = qmin - zp;
      else if (v < qmin - zp) v = qmin - zp;
      else if (v > qmax - zp) v = qmax - zp;
      out[i] = roundHalfEven(v) + zp;
    }
    return out;
  }
  if (s.format.startsWith('float8')) {
    const t = float8Type(s.format);
    for (let i = 0; i < x.length; i++) out[i] = float32ToFloat8Bits(f32(x[i] / scale[index(i)]), t, true);
    return out;
  }
  const enc16 = s.format === 'float16' ? float32ToFloat16Bits : float32ToBfloat16Bits;
  for (let i = 0; i < x.length; i++) out[i] = enc16(x[i]);
  return out;
}

/** Dequantizes grid values (or float8/16 bit patterns) to float32 values. */
export function dequantize(q: ArrayLike<number>, dims: readonly number[], enc: Encoding): Float32Array {
  const out = new Float32Array(q.length);
  const s = enc.scheme;
  const { index } = groupIndexer(dims, s.granularity);
  const scale = enc.scale;
  if (s.format === 'int') {
    const zps = enc.zeroPoint;
    for (let i = 0; i < q.length; i++) {
      const g = index(i);
      out[i] = (q[i] - zps[g]) * scale[g];
    }
    return out;
  }
  if (s.format.startsWith('float8')) {
    const t = float8Type(s.format);
    for (let i = 0; i < q.length; i++) out[i] = float8BitsToFloat32(q[i], t) * scale[index(i)];
    return out;
  }
  const dec16 = s.format === 'float16' ? float16BitsToFloat32 : bfloat16BitsToFloat32;
  for (let i = 0; i < q.length; i++) out[i] = dec16(q[i]);
  return out;
}

/** Quantize then dequantize: what the quantized model computes with this tensor. */
export function fakeQuantize(x: ArrayLike<number>, dims: readonly number[], enc: Encoding): Float32Array {
  return dequantize(quantize(x, dims, enc), dims, enc);
}

/** Signal-to-quantization-noise ratio in dB: 10 log10(sum x^2 / sum (x - x')^2), accumulated in float64. */
export function sqnrDb(x: ArrayLike<number>, xq: ArrayLike<number>): number {
  let sig = 0;
  let noise = 0;
  for (let i = 0; i < x.length; i++) {
    sig += x[i] * x[i];
    const d = x[i] - xq[i];
    noise += d * d;
  }
  if (noise === 0) return Number.POSITIVE_INFINITY;
  return 10 * Math.log10(sig / noise);
}
