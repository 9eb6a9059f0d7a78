/**
 * Constant folding: nodes whose inputs are all constants (initializers that cannot be overridden, Constant
 * outputs, earlier folded values) are evaluated here in TypeScript and replaced by initializers; Shape and Size
 * of values whose shape inference finds fully static fold too. Every Constant node becomes an initializer.
 *
 * The evaluators reproduce ONNX Runtime bit for bit: float32 arithmetic rounds every result with Math.fround
 * (exact, since a double holds the exact sum, difference or product of two floats, and a correctly rounded
 * quotient rounds to float32 without a double-rounding error), integer arithmetic wraps as C++ does, casts
 * truncate toward zero. Cases where ORT's result is undefined behaviour (integer division by zero, float→int
 * out of range or NaN) or not portable are left unfolded, as are ops not listed here.
 */
import { DataType, isKnownDataType } from '../../onnx/dtype.js';
import {
  bfloat16BitsFromFloat32Bits,
  decodeToFloat32,
  float16BitsFromFloat32Bits,
  float32Bits,
  toFloat8Array,
  unpackSubByte,
} from '../../onnx/formats.js';
import { AttributeType } from '../../onnx/proto.js';
import type { TensorStorage } from '../../tensor.js';
import { storageConstructor } from '../../tensor.js';
import { tensorType } from '../builder.js';
import { type Graph, implicitInputs, type Node } from '../graph.js';
import type { Model } from '../model.js';
import type { PassRecord } from '../pass.js';
import { Tensor } from '../tensor.js';
import { constantNodeTensor, inferTypes, type TypeTable, tensorNumbers } from './shape-inference.js';

export interface ConstantFoldingOptions {
  /**
   * Also fold DequantizeLinear of constant weights (default false): a QDQ model keeps its DequantizeLinear nodes
   * so that ONNX Runtime can fuse them into integer kernels; folding them turns the model back into float.
   */
  foldDequantize?: boolean;
  /** Restrict folding to these op types (Constant nodes always become initializers). */
  ops?: readonly string[];
  /** A fold may not create a tensor with more elements than this unless its inputs hold as many (default 2^20). */
  maxElements?: number;
}

const SUPPORTED = new Set([
  'Constant',
  'Identity',
  'Cast',
  'Reshape',
  'Flatten',
  'Transpose',
  'Unsqueeze',
  'Squeeze',
  'Concat',
  'Gather',
  'Shape',
  'Size',
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Neg',
  'Slice',
  'DequantizeLinear',
  'ConstantOfShape',
  'Range',
  'Expand',
]);

const PACKED = new Set([
  DataType.INT4,
  DataType.UINT4,
  DataType.FLOAT4E2M1,
  DataType.INT2,
  DataType.UINT2,
  DataType.COMPLEX64,
  DataType.COMPLEX128,
]);

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

const count = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);

function stridesOf(dims: readonly number[]): number[] {
  const s = new Array<number>(dims.length);
  let acc = 1;
  for (let i = dims.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= dims[i];
  }
  return s;
}

function alloc(dtype: DataType, n: number): TensorStorage {
  if (dtype === DataType.STRING) return new Array<Uint8Array>(n);
  const C = storageConstructor(dtype);
  return new C(n) as TensorStorage;
}

type Indexable = { [i: number]: number | bigint | Uint8Array; length: number };

/** A new tensor whose element i is element map(i) of `src` (movement ops). */
function gatherElements(src: Tensor, dims: number[], map: (i: number) => number): Tensor {
  const n = count(dims);
  const out = alloc(src.dtype, n) as unknown as Indexable;
  const d = src.data as unknown as Indexable;
  for (let i = 0; i < n; i++) out[i] = d[map(i)];
  return new Tensor('', src.dtype, dims, out as unknown as TensorStorage);
}

/** For every element of `outDims`, the index of the element of `inDims` it reads under numpy broadcasting. */
function broadcastMap(outDims: number[], inDims: number[]): (i: number) => number {
  const r = outDims.length;
  const inStrides = stridesOf(inDims);
  const s = outDims.map((_, k) => {
    const j = k - (r - inDims.length);
    return j < 0 || inDims[j] === 1 ? 0 : inStrides[j];
  });
  if (count(inDims) === count(outDims) && inDims.length <= r) {
    const same = outDims.every((d, k) => k < r - inDims.length || inDims[k - (r - inDims.length)] === d);
    if (same) return (i) => i;
  }
  return (i) => {
    let src = 0;
    for (let k = r - 1; k >= 0; k--) {
      const d = outDims[k];
      src += (i % d) * s[k];
      i = Math.floor(i / d);
    }
    return src;
  };
}

function broadcastDims(a: number[], b: number[]): number[] | undefined {
  const r = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const x = a[i - (r - a.length)] ?? 1;
    const y = b[i - (r - b.length)] ?? 1;
    if (x !== y && x !== 1 && y !== 1) return undefined;
    out.push(x === 1 ? y : x);
  }
  return out;
}

function ints(t: Tensor | undefined): number[] | undefined {
  if (!t) return undefined;
  if (t.dtype !== DataType.INT64 && t.dtype !== DataType.INT32) return undefined;
  return tensorNumbers(t);
}

const normAxis = (a: number, r: number) => (a < 0 ? a + r : a);

// ---------------------------------------------------------------------------------------------------------------
// Element-wise arithmetic
// ---------------------------------------------------------------------------------------------------------------

type Arith = 'Add' | 'Sub' | 'Mul' | 'Div';

function arith(op: Arith, a: Tensor, b: Tensor): Tensor | undefined {
  if (a.dtype !== b.dtype) return undefined;
  const dims = broadcastDims(a.dims, b.dims);
  if (!dims) return undefined;
  const n = count(dims);
  const ma = broadcastMap(dims, a.dims);
  const mb = broadcastMap(dims, b.dims);
  const dt = a.dtype;
  const out = alloc(dt, n);
  if (dt === DataType.INT64 || dt === DataType.UINT64) {
    const x = a.data as BigInt64Array;
    const y = b.data as BigInt64Array;
    const o = out as BigInt64Array;
    const wrap =
      dt === DataType.INT64 ? (v: bigint) => BigInt.asIntN(64, v) : (v: bigint) => BigInt.asUintN(64, v);
    for (let i = 0; i < n; i++) {
      const p = x[ma(i)];
      const q = y[mb(i)];
      let r: bigint;
      if (op === 'Add') r = p + q;
      else if (op === 'Sub') r = p - q;
      else if (op === 'Mul') r = p * q;
      else {
        if (q === 0n) return undefined;
        r = p / q;
      }
      o[i] = wrap(r);
    }
    return new Tensor('', dt, dims, out);
  }
  const x = a.data as Float64Array;
  const y = b.data as Float64Array;
  const o = out as Float64Array;
  switch (dt) {
    case DataType.FLOAT:
    case DataType.DOUBLE: {
      const f = dt === DataType.FLOAT ? Math.fround : (v: number) => v;
      for (let i = 0; i < n; i++) {
        const p = x[ma(i)];
        const q = y[mb(i)];
        o[i] = f(op === 'Add' ? p + q : op === 'Sub' ? p - q : op === 'Mul' ? p * q : p / q);
      }
      return new Tensor('', dt, dims, out);
    }
    case DataType.INT32:
    case DataType.UINT32:
    case DataType.INT16:
    case DataType.UINT16:
    case DataType.INT8:
    case DataType.UINT8: {
      const min =
        dt === DataType.INT32
          ? -(2 ** 31)
          : dt === DataType.INT16
            ? -(2 ** 15)
            : dt === DataType.INT8
              ? -128
              : 0;
      for (let i = 0; i < n; i++) {
        const p = x[ma(i)];
        const q = y[mb(i)];
        if (op === 'Add') o[i] = p + q;
        else if (op === 'Sub') o[i] = p - q;
        else if (op === 'Mul') o[i] = Math.imul(p, q);
        else {
          if (q === 0 || (p === min && q === -1 && min < 0)) return undefined;
          o[i] = Math.trunc(p / q);
        }
      }
      return new Tensor('', dt, dims, out);
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Cast
// ---------------------------------------------------------------------------------------------------------------

const INT_RANGE: Partial<Record<DataType, [number, number]>> = {
  [DataType.INT8]: [-128, 127],
  [DataType.UINT8]: [0, 255],
  [DataType.INT16]: [-32768, 32767],
  [DataType.UINT16]: [0, 65535],
  [DataType.INT32]: [-(2 ** 31), 2 ** 31 - 1],
  [DataType.UINT32]: [0, 2 ** 32 - 1],
  [DataType.INT64]: [-(2 ** 63), 2 ** 63 - 1024],
  [DataType.UINT64]: [0, 2 ** 64 - 2048],
};

const isInt = (t: DataType) => INT_RANGE[t] !== undefined;

/** A 64-bit integer rounded once to float32 (nearest even), as a C cast does. */
function bigToFloat32(v: bigint): number {
  const neg = v < 0n;
  let m = neg ? -v : v;
  if (m <= 2n ** 53n) return Math.fround(Number(v));
  const shift = m.toString(2).length - 24;
  const big = BigInt(shift);
  const rem = m & ((1n << big) - 1n);
  const half = 1n << (big - 1n);
  m >>= big;
  if (rem > half || (rem === half && (m & 1n) === 1n)) m += 1n;
  const r = Number(m) * 2 ** shift;
  return neg ? -r : r;
}

function cast(t: Tensor, to: DataType, saturate: boolean): Tensor | undefined {
  const from = t.dtype;
  const n = t.size;
  if (from === to) return new Tensor('', to, [...t.dims], t.data);
  if (PACKED.has(from) || PACKED.has(to) || from === DataType.STRING || to === DataType.STRING)
    return undefined;
  const src = t.data;
  // Source elements as numbers (exact for every source narrower than 53 bits) or bigints.
  const big = from === DataType.INT64 || from === DataType.UINT64;
  let vals: Float64Array | Float32Array | undefined;
  if (!big) {
    if (
      from === DataType.FLOAT16 ||
      from === DataType.BFLOAT16 ||
      (from >= 17 && from <= 20) ||
      from === 24
    ) {
      vals = decodeToFloat32(from, src, n);
    } else vals = src as Float64Array;
  }
  const out = alloc(to, n);
  const floatSrc =
    from === DataType.FLOAT ||
    from === DataType.DOUBLE ||
    (vals !== undefined && !isInt(from) && from !== DataType.BOOL);
  if (to === DataType.BOOL) {
    const o = out as Uint8Array;
    for (let i = 0; i < n; i++)
      o[i] = big ? ((src as BigInt64Array)[i] !== 0n ? 1 : 0) : vals![i] !== 0 ? 1 : 0;
    return new Tensor('', to, [...t.dims], out);
  }
  if (isInt(to)) {
    const [lo, hi] = INT_RANGE[to]!;
    if (to === DataType.INT64 || to === DataType.UINT64) {
      const o = out as BigInt64Array;
      for (let i = 0; i < n; i++) {
        if (big) {
          const v = (src as BigInt64Array)[i];
          o[i] = to === DataType.INT64 ? BigInt.asIntN(64, v) : BigInt.asUintN(64, v);
          continue;
        }
        const v = floatSrc ? Math.trunc(vals![i]) : vals![i];
        if (!Number.isFinite(v) || v < lo || v > hi) return undefined;
        o[i] = BigInt(v);
      }
      return new Tensor('', to, [...t.dims], out);
    }
    const o = out as Int32Array;
    for (let i = 0; i < n; i++) {
      if (big) {
        // Integer narrowing wraps (static_cast).
        const bits =
          to === DataType.UINT32 || to === DataType.UINT16 || to === DataType.UINT8 ? 'asUintN' : 'asIntN';
        const width =
          to === DataType.INT32 || to === DataType.UINT32
            ? 32
            : to === DataType.INT16 || to === DataType.UINT16
              ? 16
              : 8;
        o[i] = Number(BigInt[bits](width, (src as BigInt64Array)[i]));
        continue;
      }
      if (floatSrc) {
        const v = Math.trunc(vals![i]);
        if (!Number.isFinite(v) || v < lo || v > hi) return undefined;
        o[i] = v;
      } else o[i] = vals![i]; // integer narrowing wraps through the typed array
    }
    return new Tensor('', to, [...t.dims], out);
  }
  // Float targets: go through float32 exactly as ORT does for narrow formats.
  const asF32 = (i: number): number =>
    big ? bigToFloat32((src as BigInt64Array)[i]) : Math.fround(vals![i]);
  switch (to) {
    case DataType.FLOAT: {
      const o = out as Float32Array;
      for (let i = 0; i < n; i++) o[i] = asF32(i);
      return new Tensor('', to, [...t.dims], out);
    }
    case DataType.DOUBLE: {
      const o = out as Float64Array;
      for (let i = 0; i < n; i++) o[i] = big ? Number((src as BigInt64Array)[i]) : vals![i];
      if (big && (src as BigInt64Array).some((v) => v > 2n ** 53n || v < -(2n ** 53n))) return undefined;
      return new Tensor('', to, [...t.dims], out);
    }
    case DataType.FLOAT16:
    case DataType.BFLOAT16: {
      // ORT converts from float32; only exact-in-float32 sources are folded (no double rounding).
      if (from !== DataType.FLOAT && from !== DataType.FLOAT16 && from !== DataType.BFLOAT16)
        return undefined;
      const o = out as Uint16Array;
      const enc = to === DataType.FLOAT16 ? float16BitsFromFloat32Bits : bfloat16BitsFromFloat32Bits;
      for (let i = 0; i < n; i++) o[i] = enc(float32Bits(vals![i]));
      return new Tensor('', to, [...t.dims], out);
    }
    case DataType.FLOAT8E4M3FN:
    case DataType.FLOAT8E4M3FNUZ:
    case DataType.FLOAT8E5M2:
    case DataType.FLOAT8E5M2FNUZ: {
      if (from !== DataType.FLOAT) return undefined;
      return new Tensor('', to, [...t.dims], toFloat8Array(src as Float32Array, to, saturate));
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Evaluators
// ---------------------------------------------------------------------------------------------------------------

interface EvalCtx {
  node: Node;
  inputs: (Tensor | undefined)[];
  opset: number;
  /** Static shape of input i (for Shape/Size), when shape inference found it. */
  staticShape(i: number): number[] | undefined;
  foldDequantize: boolean;
}

function reshapeTarget(input: number[], target: number[], allowzero: boolean): number[] | undefined {
  const out = target.map((d, i) => (d === 0 && !allowzero ? input[i] : d));
  const neg = out.indexOf(-1);
  if (neg >= 0) {
    const rest = out.reduce((p, d, i) => (i === neg ? p : p * d), 1);
    if (rest === 0) return undefined;
    out[neg] = count(input) / rest;
  }
  if (out.some((d) => d === undefined || d < 0 || !Number.isInteger(d)) || count(out) !== count(input))
    return undefined;
  return out;
}

function evalTranspose(x: Tensor, perm: number[]): Tensor {
  const r = x.dims.length;
  const dims = perm.map((p) => x.dims[p]);
  const inStrides = stridesOf(x.dims);
  const s = perm.map((p) => inStrides[p]);
  return gatherElements(x, dims, (i) => {
    let src = 0;
    for (let k = r - 1; k >= 0; k--) {
      src += (i % dims[k]) * s[k];
      i = Math.floor(i / dims[k]);
    }
    return src;
  });
}

function evalSlice(
  x: Tensor,
  starts: number[],
  ends: number[],
  axes: number[],
  steps: number[],
): Tensor | undefined {
  const r = x.dims.length;
  const start = new Array<number>(r).fill(0);
  const step = new Array<number>(r).fill(1);
  const dims = [...x.dims];
  for (let i = 0; i < axes.length; i++) {
    const a = normAxis(axes[i], r);
    if (a < 0 || a >= r) return undefined;
    const d = x.dims[a];
    const st = steps[i] ?? 1;
    if (st === 0) return undefined;
    let s = starts[i] < 0 ? starts[i] + d : starts[i];
    let e = ends[i] < 0 ? ends[i] + d : ends[i];
    if (st > 0) {
      s = Math.min(Math.max(s, 0), d);
      e = Math.min(Math.max(e, 0), d);
    } else {
      s = Math.min(Math.max(s, 0), d - 1);
      e = Math.min(Math.max(e, -1), d - 1);
    }
    start[a] = s;
    step[a] = st;
    dims[a] = Math.max(0, Math.ceil((e - s) / st));
  }
  const inStrides = stridesOf(x.dims);
  return gatherElements(x, dims, (i) => {
    let src = 0;
    for (let k = r - 1; k >= 0; k--) {
      src += (start[k] + (i % dims[k]) * step[k]) * inStrides[k];
      i = Math.floor(i / dims[k]);
    }
    return src;
  });
}

function evalGather(x: Tensor, idx: Tensor, axis: number): Tensor | undefined {
  const iv = ints(idx);
  if (!iv) return undefined;
  const r = x.dims.length;
  const a = normAxis(axis, r);
  const d = x.dims[a];
  const norm = iv.map((i) => (i < 0 ? i + d : i));
  if (norm.some((i) => i < 0 || i >= d)) return undefined;
  const inner = count(x.dims.slice(a + 1));
  const dims = [...x.dims.slice(0, a), ...idx.dims, ...x.dims.slice(a + 1)];
  const ni = norm.length;
  return gatherElements(x, dims, (i) => {
    const k = i % inner;
    const j = Math.floor(i / inner) % ni;
    const o = Math.floor(i / (inner * ni));
    return (o * d + norm[j]) * inner + k;
  });
}

function evalConcat(ts: Tensor[], axis: number): Tensor | undefined {
  const r = ts[0].dims.length;
  const a = normAxis(axis, r);
  for (const t of ts) {
    if (t.dims.length !== r || t.dtype !== ts[0].dtype) return undefined;
    for (let k = 0; k < r; k++) if (k !== a && t.dims[k] !== ts[0].dims[k]) return undefined;
  }
  const dims = [...ts[0].dims];
  dims[a] = ts.reduce((s, t) => s + t.dims[a], 0);
  const outer = count(dims.slice(0, a));
  const inner = count(dims.slice(a + 1));
  const out = alloc(ts[0].dtype, count(dims)) as unknown as Indexable;
  let o = 0;
  for (let i = 0; i < outer; i++) {
    for (const t of ts) {
      const len = t.dims[a] * inner;
      const d = t.data as unknown as Indexable;
      for (let k = 0; k < len; k++) out[o++] = d[i * len + k];
    }
  }
  return new Tensor('', ts[0].dtype, dims, out as unknown as TensorStorage);
}

function evalDequantize(c: EvalCtx): Tensor | undefined {
  const [x, scale, zp] = c.inputs;
  if (!x || !scale || scale.dtype !== DataType.FLOAT) return undefined;
  if (c.node.attrInt('block_size', 0) !== 0) return undefined;
  const r = x.dims.length;
  const n = x.size;
  let xv: ArrayLike<number>;
  switch (x.dtype) {
    case DataType.INT8:
    case DataType.UINT8:
    case DataType.INT16:
    case DataType.UINT16:
    case DataType.INT32:
      xv = x.data as Int32Array;
      break;
    case DataType.INT4:
    case DataType.UINT4:
      xv = unpackSubByte(x.data as Uint8Array, n, 4, x.dtype === DataType.INT4);
      break;
    default:
      return undefined;
  }
  let zv: ArrayLike<number> | undefined;
  if (zp) {
    if (zp.dtype !== x.dtype) return undefined;
    zv =
      zp.dtype === DataType.INT4 || zp.dtype === DataType.UINT4
        ? unpackSubByte(zp.data as Uint8Array, zp.size, 4, zp.dtype === DataType.INT4)
        : (zp.data as Int32Array);
  }
  const sv = scale.data as Float32Array;
  const out = new Float32Array(n);
  if (scale.size === 1) {
    const z = zv ? zv[0] : 0;
    for (let i = 0; i < n; i++) out[i] = Math.fround(Math.fround(xv[i] - z) * sv[0]);
  } else {
    const a = normAxis(c.node.attrInt('axis', 1), r);
    const d = x.dims[a];
    if (scale.dims.length !== 1 || scale.size !== d || (zv && zv.length !== d)) return undefined;
    const inner = count(x.dims.slice(a + 1));
    for (let i = 0; i < n; i++) {
      const ch = Math.floor(i / inner) % d;
      out[i] = Math.fround(Math.fround(xv[i] - (zv ? zv[ch] : 0)) * sv[ch]);
    }
  }
  return new Tensor('', DataType.FLOAT, [...x.dims], out);
}

function evalRange(s: Tensor, l: Tensor, d: Tensor): Tensor | undefined {
  const dt = s.dtype;
  if (l.dtype !== dt || d.dtype !== dt) return undefined;
  if (dt === DataType.INT64) {
    const [a, b, c] = [
      (s.data as BigInt64Array)[0],
      (l.data as BigInt64Array)[0],
      (d.data as BigInt64Array)[0],
    ];
    if (c === 0n) return undefined;
    const n = Math.max(Math.ceil(Number(b - a) / Number(c)), 0);
    const out = new BigInt64Array(n);
    for (let i = 0; i < n; i++) out[i] = a + BigInt(i) * c;
    return new Tensor('', dt, [n], out);
  }
  if (dt !== DataType.FLOAT && dt !== DataType.DOUBLE && dt !== DataType.INT32 && dt !== DataType.INT16)
    return undefined;
  const f = dt === DataType.FLOAT ? Math.fround : (v: number) => v;
  const [a, b, c] = [(s.data as Float64Array)[0], (l.data as Float64Array)[0], (d.data as Float64Array)[0]];
  if (c === 0) return undefined;
  // ORT: n = ceil(double(limit - start) / delta) with the difference taken in T, then start += delta in T.
  const n = Math.max(Math.ceil(f(b - a) / c), 0);
  if (!Number.isFinite(n)) return undefined;
  const out = alloc(dt, n) as Float64Array;
  let v = a;
  for (let i = 0; i < n; i++) {
    out[i] = v;
    v = f(v + c);
  }
  return new Tensor('', dt, [n], out);
}

function squeezeAxes(c: EvalCtx): number[] | undefined {
  return c.opset >= 13 ? (c.node.inputs[1] ? ints(c.inputs[1]) : undefined) : c.node.attrInts('axes');
}

function evaluate(c: EvalCtx): (Tensor | undefined)[] | undefined {
  const n = c.node;
  const [x, y] = c.inputs;
  switch (n.opType) {
    case 'Constant': {
      const t = constantNodeTensor(n);
      if (t) return [t];
      const s = n.attr('value_string');
      if (s?.value) return [new Tensor('', DataType.STRING, [], [s.value as Uint8Array])];
      const ss = n.attr('value_strings');
      if (ss?.value)
        return [
          new Tensor('', DataType.STRING, [(ss.value as Uint8Array[]).length], ss.value as Uint8Array[]),
        ];
      return undefined;
    }
    case 'Identity':
      return [x];
    case 'Cast': {
      const to = n.attr('to');
      if (!x || !to || to.type !== AttributeType.INT) return undefined;
      const dt = Number(to.value);
      if (!isKnownDataType(dt)) return undefined;
      return [cast(x, dt, n.attrInt('saturate', 1) === 1)];
    }
    case 'Reshape': {
      const target = ints(y);
      if (!x || !target) return undefined;
      const dims = reshapeTarget(x.dims, target, n.attrInt('allowzero', 0) === 1);
      return dims ? [new Tensor('', x.dtype, dims, x.data)] : undefined;
    }
    case 'Flatten': {
      if (!x) return undefined;
      const a = normAxis(n.attrInt('axis', 1), x.dims.length);
      return [new Tensor('', x.dtype, [count(x.dims.slice(0, a)), count(x.dims.slice(a))], x.data)];
    }
    case 'Transpose': {
      if (!x) return undefined;
      const perm = n.attrInts('perm') ?? x.dims.map((_, i) => x.dims.length - 1 - i);
      return [evalTranspose(x, perm)];
    }
    case 'Unsqueeze': {
      const axes = c.opset >= 13 ? ints(y) : n.attrInts('axes');
      if (!x || !axes) return undefined;
      const r = x.dims.length + axes.length;
      const set = new Set(axes.map((a) => normAxis(a, r)));
      const dims: number[] = [];
      let j = 0;
      for (let i = 0; i < r; i++) dims.push(set.has(i) ? 1 : x.dims[j++]);
      return [new Tensor('', x.dtype, dims, x.data)];
    }
    case 'Squeeze': {
      if (!x) return undefined;
      const axes = squeezeAxes(c);
      if (c.opset >= 13 && n.inputs[1] && !axes) return undefined;
      const set = new Set(
        (axes ?? x.dims.flatMap((d, i) => (d === 1 ? [i] : []))).map((a) => normAxis(a, x.dims.length)),
      );
      if ([...set].some((a) => x.dims[a] !== 1)) return undefined;
      return [
        new Tensor(
          '',
          x.dtype,
          x.dims.filter((_, i) => !set.has(i)),
          x.data,
        ),
      ];
    }
    case 'Concat': {
      const ts = c.inputs.filter((t): t is Tensor => t !== undefined);
      if (ts.length !== n.inputs.filter((i) => i).length || ts.length === 0) return undefined;
      return [evalConcat(ts, n.attrInt('axis', 1))];
    }
    case 'Gather':
      return x && y ? [evalGather(x, y, n.attrInt('axis', 0))] : undefined;
    case 'Shape': {
      const s = c.staticShape(0);
      if (!s) return undefined;
      const r = s.length;
      const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + r : v, 0), r);
      const start = clamp(n.attrInt('start', 0));
      const end = clamp(n.attrInt('end', r));
      const v = s.slice(start, Math.max(start, end));
      return [new Tensor('', DataType.INT64, [v.length], BigInt64Array.from(v, BigInt))];
    }
    case 'Size': {
      const s = c.staticShape(0);
      return s ? [new Tensor('', DataType.INT64, [], BigInt64Array.of(BigInt(count(s))))] : undefined;
    }
    case 'Add':
    case 'Sub':
    case 'Mul':
    case 'Div':
      return x && y ? [arith(n.opType, x, y)] : undefined;
    case 'Neg': {
      if (!x) return undefined;
      if (
        x.dtype === DataType.FLOAT ||
        x.dtype === DataType.DOUBLE ||
        x.dtype === DataType.INT32 ||
        x.dtype === DataType.INT8 ||
        x.dtype === DataType.INT16
      ) {
        return [
          new Tensor(
            '',
            x.dtype,
            [...x.dims],
            (x.data as Float64Array).map((v) => -v),
          ),
        ];
      }
      if (x.dtype === DataType.INT64) {
        return [
          new Tensor(
            '',
            x.dtype,
            [...x.dims],
            (x.data as BigInt64Array).map((v) => BigInt.asIntN(64, -v)),
          ),
        ];
      }
      return undefined;
    }
    case 'Slice': {
      if (!x) return undefined;
      if (c.opset < 10) {
        const starts = n.attrInts('starts');
        const ends = n.attrInts('ends');
        if (!starts || !ends) return undefined;
        return [evalSlice(x, starts, ends, n.attrInts('axes') ?? starts.map((_, i) => i), [])];
      }
      const starts = ints(c.inputs[1]);
      const ends = ints(c.inputs[2]);
      const axes = n.inputs[3] ? ints(c.inputs[3]) : starts?.map((_, i) => i);
      const steps = n.inputs[4] ? ints(c.inputs[4]) : [];
      if (!starts || !ends || !axes || !steps) return undefined;
      return [evalSlice(x, starts, ends, axes, steps)];
    }
    case 'DequantizeLinear':
      return c.foldDequantize ? [evalDequantize(c)] : undefined;
    case 'ConstantOfShape': {
      const dims = ints(x);
      if (!dims || dims.some((d) => d < 0)) return undefined;
      const v = n.attrTensor('value') ?? new Tensor('', DataType.FLOAT, [1], new Float32Array(1));
      if (v.size !== 1 || PACKED.has(v.dtype)) return undefined;
      const out = alloc(v.dtype, count(dims)) as unknown as Indexable;
      const e = (v.data as unknown as Indexable)[0];
      for (let i = 0; i < out.length; i++) out[i] = e;
      return [new Tensor('', v.dtype, dims, out as unknown as TensorStorage)];
    }
    case 'Range': {
      const [s, l, d] = c.inputs;
      return s && l && d ? [evalRange(s, l, d)] : undefined;
    }
    case 'Expand': {
      const shape = ints(y);
      if (!x || !shape) return undefined;
      const dims = broadcastDims(x.dims, shape);
      return dims ? [gatherElements(x, dims, broadcastMap(dims, x.dims))] : undefined;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------------------------

interface FoldStats {
  folded: Record<string, number>;
  initializersAdded: number;
  constantsToInitializers: number;
  skippedTooLarge: number;
}

class Scope {
  readonly consts = new Map<string, Tensor>();
  readonly defined: Set<string>;
  constructor(
    readonly graph: Graph,
    readonly parent?: Scope,
  ) {
    this.defined = graph.definedNames();
  }
  get(name: string): Tensor | undefined {
    let s: Scope | undefined = this;
    while (s && !s.defined.has(name)) s = s.parent;
    return s?.consts.get(name);
  }
}

function foldGraph(
  g: Graph,
  parent: Scope | undefined,
  ctx: { opset: number; table: TypeTable; options: ConstantFoldingOptions; irVersion: number },
  stats: FoldStats,
  isMain: boolean,
): void {
  const scope = new Scope(g, parent);
  const inputs = new Set(g.inputs.map((v) => v.name));
  // In IR < 4 every initializer is also a graph input and ONNX Runtime treats them as constants.
  const inputsOverride = !isMain || ctx.irVersion >= 4;
  for (const [name, t] of g.initializers) if (!inputs.has(name) || !inputsOverride) scope.consts.set(name, t);
  const maxElements = ctx.options.maxElements ?? 2 ** 20;
  const foldedNodes = new Set<Node>();
  const newValues = new Map<string, Tensor>();
  for (const node of g.topologicalOrder()) {
    const subs = node.subgraphs();
    if (subs.length) {
      for (const sg of subs) foldGraph(sg, scope, ctx, stats, false);
      continue;
    }
    if (node.domain && node.domain !== 'ai.onnx') continue;
    if (!SUPPORTED.has(node.opType)) continue;
    if (ctx.options.ops && node.opType !== 'Constant' && !ctx.options.ops.includes(node.opType)) continue;
    const shapeOnly = node.opType === 'Shape' || node.opType === 'Size';
    const ins = node.inputs.map((i) => (i ? scope.get(i) : undefined));
    if (!shapeOnly && node.inputs.some((i, k) => i && !ins[k])) continue;
    if (ins.some((t) => t && PACKED.has(t.dtype) && node.opType !== 'DequantizeLinear')) continue;
    let outs: (Tensor | undefined)[] | undefined;
    try {
      outs = evaluate({
        node,
        inputs: ins,
        opset: ctx.opset,
        foldDequantize: ctx.options.foldDequantize ?? false,
        staticShape: (i) => {
          const t = ins[i];
          if (t) return [...t.dims];
          const s = ctx.table.get(node.inputs[i], g)?.shape;
          return s?.every((d): d is number => typeof d === 'number') ? s : undefined;
        },
      });
    } catch {
      outs = undefined;
    }
    if (!outs || outs.length < node.outputs.filter((o) => o).length || outs.some((t) => !t)) continue;
    const inSize = ins.reduce((s, t) => s + (t ? t.size : 0), 0);
    if (node.opType !== 'Constant' && outs.some((t) => t!.size > maxElements && t!.size > inSize)) {
      stats.skippedTooLarge++;
      continue;
    }
    node.outputs.forEach((name, k) => {
      if (!name) return;
      const t = outs![k]!;
      const named = new Tensor(name, t.dtype, [...t.dims], t.data);
      scope.consts.set(name, named);
      newValues.set(name, named);
    });
    foldedNodes.add(node);
    if (node.opType === 'Constant') stats.constantsToInitializers++;
    else stats.folded[node.opType] = (stats.folded[node.opType] ?? 0) + 1;
  }
  if (foldedNodes.size === 0) return;
  g.nodes = g.nodes.filter((n) => !foldedNodes.has(n));
  // Keep the folded values something still reads: remaining nodes (and their subgraphs) and graph outputs.
  const used = new Set<string>(g.outputs.map((o) => o.name));
  for (const n of g.nodes) {
    for (const i of n.inputs) used.add(i);
    for (const i of implicitInputs(n)) used.add(i);
  }
  const needsInput = isMain && ctx.irVersion < 4;
  for (const [name, t] of newValues) {
    if (!used.has(name)) continue;
    g.addInitializer(t);
    stats.initializersAdded++;
    if (needsInput && !inputs.has(name)) g.inputs.push({ name, type: tensorType(t.dtype, t.dims) });
  }
}

/**
 * Folds constant subgraphs into initializers (see the module comment for the ops and the exactness rules).
 * Values that are graph outputs stay graph outputs, as initializers (ONNX Runtime accepts that, also in
 * subgraphs). Nodes inside subgraphs fold when their inputs are constants of the subgraph or of an enclosing
 * graph. Records the number of folded nodes by op type.
 */
export function foldConstants(model: Model, options: ConstantFoldingOptions = {}): PassRecord {
  const stats: FoldStats = {
    folded: {},
    initializersAdded: 0,
    constantsToInitializers: 0,
    skippedTooLarge: 0,
  };
  const opset = model.opset('') ?? 1;
  // Shape folding can enable more folds downstream (and vice versa); a few rounds reach the fixed point.
  for (let round = 0; round < 4; round++) {
    const before = Object.values(stats.folded).reduce((a, b) => a + b, 0) + stats.constantsToInitializers;
    const table = inferTypes(model);
    foldGraph(model.graph, undefined, { opset, table, options, irVersion: model.irVersion }, stats, true);
    const after = Object.values(stats.folded).reduce((a, b) => a + b, 0) + stats.constantsToInitializers;
    if (after === before) break;
  }
  const total = Object.values(stats.folded).reduce((a, b) => a + b, 0);
  return {
    pass: 'constant-folding',
    changed: total + stats.constantsToInitializers > 0,
    details: {
      nodesFolded: total,
      byOpType: stats.folded,
      constantsToInitializers: stats.constantsToInitializers,
      initializersAdded: stats.initializersAdded,
      skippedTooLarge: stats.skippedTooLarge,
    },
  };
}
