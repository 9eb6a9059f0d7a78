/**
 * Encodings: the data a quantizer applies. An analyzer observes statistics and returns ranges; `encodingFromRange`
 * turns ranges into scales and zero points on the scheme's grid. Scales are float32 values (what ONNX stores).
 */
import { QnnxError } from '../errors.js';
import { type Granularity, intRange, isFloat8, type QuantScheme } from './scheme.js';

export interface Encoding {
  scheme: QuantScheme;
  /** One scale per group: 1 (tensor), dims[axis] (channel), or the blocked scale tensor flattened (block/vector). */
  scale: Float32Array;
  /** Zero points on the integer grid, one per group (always 0 for float8 and symmetric schemes). */
  zeroPoint: Int32Array;
  /** Shape of the scale tensor: [] per tensor, [C] per channel, blocked: dims with dims[axis] -> ceil(n/size). */
  scaleDims: number[];
  /** VS-Quant second level: scale[g] = fround(channelScale[c] * intScale[g]). */
  vector?: { channelScale: Float32Array; intScale: Uint16Array };
}

/** Largest finite magnitude of each float8 format. */
export const FLOAT8_MAX: Record<string, number> = {
  float8e4m3fn: 448,
  float8e4m3fnuz: 240,
  float8e5m2: 57344,
  float8e5m2fnuz: 57344,
};

/** Shape of the scale tensor for a tensor of `dims` under a granularity. */
export function scaleDimsFor(dims: readonly number[], g: Granularity): number[] {
  switch (g.kind) {
    case 'tensor':
      return [];
    case 'channel':
      return [dims[normAxis(g.axis, dims.length)]];
    case 'block':
    case 'vector': {
      const a = normAxis(g.axis, dims.length);
      const out = [...dims];
      out[a] = Math.ceil(dims[a] / g.size);
      return out;
    }
  }
}

export function normAxis(axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank)
    throw new QnnxError('E_USAGE', `axis ${axis} is out of range for a rank-${rank} tensor`);
  return a;
}

/**
 * For every element of a tensor with `dims`, the index of its scale group. Returned as a function over flat
 * indices plus the number of groups, so hot loops can iterate without allocating.
 */
export function groupIndexer(
  dims: readonly number[],
  g: Granularity,
): { groups: number; index: (i: number) => number } {
  if (g.kind === 'tensor') return { groups: 1, index: () => 0 };
  const a = normAxis(g.axis, dims.length);
  let inner = 1;
  for (let k = a + 1; k < dims.length; k++) inner *= dims[k];
  const n = dims[a];
  if (g.kind === 'channel') return { groups: n, index: (i) => Math.floor(i / inner) % n };
  const nb = Math.ceil(n / g.size);
  let outer = 1;
  for (let k = 0; k < a; k++) outer *= dims[k];
  const size = g.size;
  return {
    groups: outer * nb * inner,
    index: (i) => {
      const k = i % inner;
      const rest = (i - k) / inner;
      const j = rest % n;
      const o = (rest - j) / n;
      return (o * nb + Math.floor(j / size)) * inner + k;
    },
  };
}

function pow2Ceil(s: number): number {
  return 2 ** Math.ceil(Math.log2(s));
}

/** Smallest scale used for all-zero groups, so that nothing divides by zero (and int32 biases stay in range). */
export const MIN_SCALE = 2 ** -64;

/**
 * Encoding for each group's observed [min, max] on the scheme's grid, as AIMET and ONNX Runtime compute it:
 * - symmetric: scale = max(|min|, |max|) / (grid half-width), zero point 0 (narrow grid: /(2^(b-1)-1); full
 *   signed grid: range 2*absmax over 2^b - 1 steps, as ONNX Runtime does);
 * - unsigned-symmetric: [0, max] over the unsigned grid, zero point qmin;
 * - asymmetric: [min, max] widened to include 0, scale = (max - min)/(qmax - qmin), zero point
 *   round(qmin - min/scale) clamped to the grid, so that 0 is exactly representable;
 * - float8: scale = absmax / format max, zero point 0.
 * pow2 scales are rounded up to the next power of two.
 */
export function encodingFromRange(
  scheme: QuantScheme,
  min: ArrayLike<number>,
  max: ArrayLike<number>,
  scaleDims: number[],
): Encoding {
  const n = min.length;
  const scale = new Float32Array(n);
  const zeroPoint = new Int32Array(n);
  const fmax = isFloat8(scheme.format) ? FLOAT8_MAX[scheme.format] : 0;
  const { qmin, qmax } =
    scheme.format === 'int' ? intRange(scheme.bits, scheme.signed, scheme.narrow) : { qmin: 0, qmax: 0 };
  for (let g = 0; g < n; g++) {
    let lo = Math.min(min[g], 0);
    const hi = Math.max(max[g], 0);
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) {
      throw new QnnxError(
        'E_DATA',
        `non-finite range [${min[g]}, ${max[g]}] observed; check the data for NaN or Inf`,
      );
    }
    let s: number;
    let zp = 0;
    if (fmax) {
      s = Math.max(-lo, hi) / fmax;
    } else if (scheme.symmetry === 'symmetric') {
      const absmax = Math.max(-lo, hi);
      if (scheme.signed) s = (2 * absmax) / (qmax - qmin);
      else {
        // symmetric on an unsigned grid: zero at the middle code
        s = (2 * absmax) / (qmax - qmin);
        zp = Math.round((qmax + qmin + 1) / 2);
      }
    } else if (scheme.symmetry === 'unsigned-symmetric') {
      s = hi / (qmax - qmin);
      zp = qmin;
      lo = 0;
    } else {
      s = (hi - lo) / (qmax - qmin);
      if (s > 0) zp = Math.min(qmax, Math.max(qmin, Math.round(qmin - lo / s)));
      else zp = scheme.signed ? 0 : qmin;
    }
    if (!(s > MIN_SCALE)) s = scheme.symmetry === 'asymmetric' && hi === lo ? 1 : Math.max(s, MIN_SCALE);
    if (scheme.scaleType === 'pow2') s = pow2Ceil(s);
    scale[g] = Math.fround(s);
    zeroPoint[g] = zp;
  }
  return { scheme, scale, zeroPoint, scaleDims };
}

/** Per-group [min, max] of a tensor under a granularity (float64 accumulation not needed: min/max are exact). */
export function groupRanges(
  x: ArrayLike<number>,
  dims: readonly number[],
  g: Granularity,
): { min: Float64Array; max: Float64Array } {
  const { groups, index } = groupIndexer(dims, g);
  const min = new Float64Array(groups).fill(Number.POSITIVE_INFINITY);
  const max = new Float64Array(groups).fill(Number.NEGATIVE_INFINITY);
  if (g.kind === 'tensor') {
    let lo = Number.POSITIVE_INFINITY;
    let hi = Number.NEGATIVE_INFINITY;
    for (let i = 0; i < x.length; i++) {
      const v = x[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    min[0] = lo;
    max[0] = hi;
  } else {
    for (let i = 0; i < x.length; i++) {
      const gi = index(i);
      const v = x[i];
      if (v < min[gi]) min[gi] = v;
      if (v > max[gi]) max[gi] = v;
    }
  }
  for (let i = 0; i < groups; i++) {
    if (min[i] === Number.POSITIVE_INFINITY) {
      min[i] = 0;
      max[i] = 0;
    }
  }
  return { min, max };
}

/**
 * VS-Quant two-level scales from per-vector float scales: per channel gamma = max_v s_v / (2^M - 1), integer
 * scales sq_v = clamp(ceil|round(s_v / gamma), 1, 2^M - 1), effective scale fround(gamma * sq_v).
 */
export function twoLevelScales(enc: Encoding, dims: readonly number[]): Encoding {
  const g = enc.scheme.granularity;
  if (g.kind !== 'vector') return enc;
  const sd = enc.scaleDims;
  const ca = normAxis(g.channelAxis, dims.length);
  const channels = sd[ca];
  let inner = 1;
  for (let k = ca + 1; k < sd.length; k++) inner *= sd[k];
  const chanOf = (i: number) => Math.floor(i / inner) % channels;
  const top = 2 ** g.scaleBits - 1;
  const gamma = new Float32Array(channels);
  for (let i = 0; i < enc.scale.length; i++) {
    const c = chanOf(i);
    if (enc.scale[i] > gamma[c]) gamma[c] = enc.scale[i];
  }
  for (let c = 0; c < channels; c++) gamma[c] = Math.fround(Math.max(gamma[c] / top, MIN_SCALE));
  const intScale = new Uint16Array(enc.scale.length);
  const scale = new Float32Array(enc.scale.length);
  for (let i = 0; i < enc.scale.length; i++) {
    const c = chanOf(i);
    const r = enc.scale[i] / gamma[c];
    const q = g.scaleRounding === 'ceil' ? Math.ceil(r - 1e-9) : Math.round(r);
    intScale[i] = Math.min(top, Math.max(1, q));
    scale[i] = Math.fround(gamma[c] * intScale[i]);
  }
  return { ...enc, scale, vector: { channelScale: gamma, intScale } };
}
