/**
 * Shape inference: element types and shapes of every value, propagated through the graph in topological order
 * from the graph inputs, initializers and Constant nodes. Dims are numbers (static), strings (symbolic, carried
 * over from the inputs where the op passes them through) or null (unknown). Small integer tensors computed from
 * shapes (Shape → Gather → Concat → Reshape chains) are tracked by value, symbols included, so that Reshape,
 * Expand, Slice, Resize and friends get static output shapes where the data allow.
 *
 * `inferShapes` writes the results into graph.valueInfo (and fills missing types of graph outputs) without
 * removing or contradicting what the file declared. `recordShapesByRunning` is the fallback for what static
 * inference cannot see: it taps every intermediate through a caller-supplied runner (ONNX Runtime in practice;
 * src/ir stays free of it) and records the observed shapes.
 */

import { encodeModelProto } from '../../onnx/codec.js';
import { DataType, isKnownDataType } from '../../onnx/dtype.js';
import { decodeToFloat32 } from '../../onnx/formats.js';
import { AttributeType, has, type TypeProto, toNumber } from '../../onnx/proto.js';
import { tensorType } from '../builder.js';
import type { Graph, Node, ValueInfo } from '../graph.js';
import { type Model, modelToProto } from '../model.js';
import type { PassRecord } from '../pass.js';
import { Tensor } from '../tensor.js';

/** A dimension: a number when static, a string when symbolic, null when unknown. */
export type Dim = number | string | null;

/** What inference knows about a tensor value. `shape` undefined: unknown rank. */
export interface ValueType {
  elemType?: DataType;
  shape?: Dim[];
}

export interface ShapeInferenceOptions {
  /** Shapes to assume for graph inputs (override the declared ones); strings stay symbolic. */
  inputShapes?: Record<string, (number | string)[]>;
}

/** Largest integer tensor whose values inference tracks (shape tensors are tiny). */
const MAX_TRACKED = 1024;

// ---------------------------------------------------------------------------------------------------------------
// Reading and writing TypeProtos
// ---------------------------------------------------------------------------------------------------------------

/** The elem type of a tensor TypeProto, undefined when absent, 0 or not a tensor type. */
export function elemTypeOfType(t: TypeProto | undefined): DataType | undefined {
  const e = t?.tensor_type?.elem_type;
  return e && isKnownDataType(e) ? e : undefined;
}

/** The dims of a tensor TypeProto: numbers, strings (dim_param) or null; undefined when the shape is absent. */
export function dimsOfType(t: TypeProto | undefined): Dim[] | undefined {
  const shape = t?.tensor_type?.shape;
  if (!shape) return undefined;
  return (shape.dim ?? []).map((d) => {
    if (has(d, 'dim_value')) return toNumber(d.dim_value);
    if (has(d, 'dim_param') && d.dim_param) return d.dim_param;
    return null;
  });
}

function valueTypeOf(t: TypeProto | undefined): ValueType | undefined {
  if (!t?.tensor_type) return undefined;
  return { elemType: elemTypeOfType(t), shape: dimsOfType(t) };
}

// ---------------------------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------------------------

/** The tensor a Constant node produces (value, value_float(s), value_int(s)); undefined for strings/sparse. */
export function constantNodeTensor(node: Node): Tensor | undefined {
  const name = node.outputs[0] ?? '';
  for (const a of node.attributes) {
    if (a.value === undefined) continue;
    switch (a.name) {
      case 'value':
        if (a.type === AttributeType.TENSOR) return a.value as Tensor;
        break;
      case 'value_float':
        return new Tensor(name, DataType.FLOAT, [], Float32Array.of(a.value as number));
      case 'value_floats': {
        const v = a.value as number[];
        return new Tensor(name, DataType.FLOAT, [v.length], Float32Array.from(v));
      }
      case 'value_int':
        return new Tensor(name, DataType.INT64, [], BigInt64Array.of(BigInt(a.value as number | bigint)));
      case 'value_ints': {
        const v = a.value as (number | bigint)[];
        return new Tensor(
          name,
          DataType.INT64,
          [v.length],
          BigInt64Array.from(v, (x) => BigInt(x)),
        );
      }
    }
  }
  return undefined;
}

/** Elements of a numeric tensor as JS numbers (int64 beyond 2^53 loses precision); undefined for strings. */
export function tensorNumbers(t: { dtype: DataType; dims: number[]; data: unknown }): number[] | undefined {
  const count = t.dims.reduce((a, b) => a * b, 1);
  const d = t.data;
  if (d instanceof BigInt64Array || d instanceof BigUint64Array)
    return Array.from(d.subarray(0, count), Number);
  if (
    t.dtype === DataType.FLOAT ||
    t.dtype === DataType.DOUBLE ||
    t.dtype === DataType.INT8 ||
    t.dtype === DataType.UINT8 ||
    t.dtype === DataType.INT16 ||
    t.dtype === DataType.UINT16 ||
    t.dtype === DataType.INT32 ||
    t.dtype === DataType.UINT32 ||
    t.dtype === DataType.BOOL
  ) {
    return Array.from((d as Float64Array).subarray(0, count));
  }
  try {
    return Array.from(decodeToFloat32(t.dtype, d as Float32Array, count));
  } catch {
    return undefined;
  }
}

function isIntType(t: DataType | undefined): boolean {
  return (
    t === DataType.INT64 ||
    t === DataType.INT32 ||
    t === DataType.INT16 ||
    t === DataType.INT8 ||
    t === DataType.UINT8 ||
    t === DataType.UINT16 ||
    t === DataType.UINT32 ||
    t === DataType.UINT64 ||
    t === DataType.BOOL
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Dim arithmetic
// ---------------------------------------------------------------------------------------------------------------

function broadcastDim(a: Dim, b: Dim): Dim {
  if (a === 1) return b;
  if (b === 1) return a;
  if (a === b) return a;
  if (typeof a === 'number') return typeof b === 'number' ? null : a;
  if (typeof b === 'number') return b;
  return null;
}

/** numpy-style multidirectional broadcasting; undefined when a rank is unknown. */
export function broadcastShapes(shapes: (Dim[] | undefined)[]): Dim[] | undefined {
  if (shapes.some((s) => s === undefined)) return undefined;
  const ss = shapes as Dim[][];
  const r = Math.max(0, ...ss.map((s) => s.length));
  const out: Dim[] = [];
  for (let i = 0; i < r; i++) {
    let d: Dim = 1;
    for (const s of ss) {
      const k = i - (r - s.length);
      if (k >= 0) d = broadcastDim(d, s[k]);
    }
    out.push(d);
  }
  return out;
}

/** The product of dims: a number when all are numbers, a symbol when it is the only factor other than 1s. */
function productDim(dims: Dim[]): Dim {
  let n = 1;
  let sym: Dim | undefined;
  for (const d of dims) {
    if (d === 0) return 0;
    if (typeof d === 'number') n *= d;
    else if (sym === undefined && typeof d === 'string') sym = d;
    else return null;
  }
  if (sym === undefined) return n;
  return n === 1 ? sym : null;
}

const num = (d: Dim | undefined): d is number => typeof d === 'number';
const valid = (d: number): Dim => (Number.isInteger(d) && d >= 0 ? d : null);

function normAxis(axis: number, rank: number): number {
  return axis < 0 ? axis + rank : axis;
}

/** Reshape target dims with 0 (copy, unless allowzero) and -1 (inferred), cancelling symbols where possible. */
function reshapeDims(input: Dim[] | undefined, target: Dim[], allowzero: boolean): Dim[] {
  const out: Dim[] = target.map((t, i) => {
    if (t === 0 && !allowzero) return input && i < input.length ? input[i] : null;
    return t;
  });
  const neg = out.indexOf(-1);
  if (neg < 0) return out.map((d) => (typeof d === 'number' && d < 0 ? null : d));
  if (!input) {
    out[neg] = null;
    return out;
  }
  // -1 = product(input) / product(other outputs), by cancelling symbols and dividing the numeric parts.
  const syms = new Map<string, number>();
  let numer = 1;
  for (const d of input) {
    if (d === null) {
      out[neg] = null;
      return out;
    }
    if (typeof d === 'number') numer *= d;
    else syms.set(d, (syms.get(d) ?? 0) + 1);
  }
  let denom = 1;
  for (let i = 0; i < out.length; i++) {
    if (i === neg) continue;
    const d = out[i];
    if (d === null) {
      out[neg] = null;
      return out;
    }
    if (typeof d === 'number') denom *= d;
    else {
      const c = syms.get(d) ?? 0;
      if (c === 0) {
        out[neg] = null;
        return out;
      }
      syms.set(d, c - 1);
    }
  }
  const left = [...syms.entries()].filter(([, c]) => c > 0);
  if (denom === 0) out[neg] = null;
  else if (left.length === 0) out[neg] = numer % denom === 0 ? numer / denom : null;
  else if (left.length === 1 && left[0][1] === 1 && numer === denom) out[neg] = left[0][0];
  else out[neg] = null;
  return out;
}

/** Output length of Slice on one axis, or null when it depends on an unknown dim. */
function sliceLength(dim: Dim, start: number, end: number, step: number): Dim {
  if (typeof dim !== 'number') {
    // x[0:] keeps a symbolic dim; any other slice of an unknown size has an unknown length.
    return typeof dim === 'string' && start === 0 && end >= 2 ** 31 - 1 && step === 1 ? dim : null;
  }
  let s = start < 0 ? start + dim : start;
  let e = end < 0 ? end + dim : end;
  if (step < 0) {
    s = Math.min(Math.max(s, 0), dim - 1);
    e = Math.min(Math.max(e, -1), dim - 1);
  } else {
    s = Math.min(Math.max(s, 0), dim);
    e = Math.min(Math.max(e, 0), dim);
  }
  return Math.max(0, Math.ceil((e - s) / step));
}

// ---------------------------------------------------------------------------------------------------------------
// Inference environment
// ---------------------------------------------------------------------------------------------------------------

class Env {
  readonly types = new Map<string, ValueType>();
  /** Known values of small integer tensors (flattened; symbols allowed). */
  readonly values = new Map<string, Dim[]>();
  /** Constant tensors: initializers that cannot be overridden, Constant node outputs. */
  readonly consts = new Map<string, Tensor>();
  readonly defined: Set<string>;

  constructor(
    readonly graph: Graph,
    readonly parent?: Env,
  ) {
    this.defined = graph.definedNames();
  }

  private owner(name: string): Env | undefined {
    let e: Env | undefined = this;
    while (e && !e.defined.has(name)) e = e.parent;
    return e;
  }

  type(name: string): ValueType | undefined {
    return this.owner(name)?.types.get(name);
  }

  value(name: string): Dim[] | undefined {
    return this.owner(name)?.values.get(name);
  }

  constant(name: string): Tensor | undefined {
    return this.owner(name)?.consts.get(name);
  }
}

interface Out extends ValueType {
  value?: Dim[];
}

class Ctx {
  constructor(
    readonly node: Node,
    readonly env: Env,
    readonly opset: number,
  ) {}

  has(i: number): boolean {
    return (this.node.inputs[i] ?? '') !== '';
  }
  type(i: number): ValueType | undefined {
    return this.has(i) ? this.env.type(this.node.inputs[i]) : undefined;
  }
  elem(i: number): DataType | undefined {
    return this.type(i)?.elemType;
  }
  shape(i: number): Dim[] | undefined {
    return this.type(i)?.shape;
  }
  /** Known integer values of input i. */
  ints(i: number): Dim[] | undefined {
    return this.has(i) ? this.env.value(this.node.inputs[i]) : undefined;
  }
  /** Known integer values of input i, all numbers. */
  numbers(i: number): number[] | undefined {
    const v = this.ints(i);
    return v?.every(num) ? (v as number[]) : undefined;
  }
  /** Values of a constant input of any numeric type. */
  constNumbers(i: number): number[] | undefined {
    if (!this.has(i)) return undefined;
    const t = this.env.constant(this.node.inputs[i]);
    return t ? tensorNumbers(t) : this.numbers(i);
  }
  int(name: string, fallback: number): number {
    return this.node.attrInt(name, fallback);
  }
  ints_(name: string): number[] | undefined {
    return this.node.attrInts(name);
  }
  str(name: string, fallback: string): string {
    return this.node.attrString(name, fallback);
  }
}

type Handler = (c: Ctx) => (Out | undefined)[];

// ---------------------------------------------------------------------------------------------------------------
// Op handlers
// ---------------------------------------------------------------------------------------------------------------

const same: Handler = (c) => [{ elemType: c.elem(0), shape: c.shape(0) }];
const sameAs =
  (elemType: DataType): Handler =>
  (c) => [{ elemType, shape: c.shape(0) }];

function arithValues(c: Ctx, f: (a: number, b: number) => number): Dim[] | undefined {
  const a = c.ints(0);
  const b = c.ints(1);
  if (!a || !b || !isIntType(c.elem(0))) return undefined;
  const n = Math.max(a.length, b.length);
  if ((a.length !== n && a.length !== 1) || (b.length !== n && b.length !== 1)) return undefined;
  const out: Dim[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length === 1 ? 0 : i];
    const y = b[b.length === 1 ? 0 : i];
    if (num(x) && num(y)) out.push(f(x, y));
    else if (f === mulF && (x === 1 || y === 1)) out.push(x === 1 ? y : x);
    else if ((f === addF || f === subF) && y === 0) out.push(x);
    else if (f === addF && x === 0) out.push(y);
    else out.push(null);
  }
  return out;
}
const addF = (a: number, b: number) => a + b;
const subF = (a: number, b: number) => a - b;
const mulF = (a: number, b: number) => a * b;
const divF = (a: number, b: number) => (b === 0 ? Number.NaN : Math.trunc(a / b));

function binary(f?: (a: number, b: number) => number, elemType?: DataType): Handler {
  return (c) => {
    const shape = broadcastShapes([c.shape(0), c.shape(1)]);
    const out: Out = { elemType: elemType ?? c.elem(0) ?? c.elem(1), shape };
    if (f) {
      const v = arithValues(c, f);
      if (v && !v.some((x) => typeof x === 'number' && !Number.isFinite(x))) out.value = v;
    }
    return [out];
  };
}

const variadic =
  (elemType?: DataType): Handler =>
  (c) => [
    {
      elemType: elemType ?? c.elem(0),
      shape: broadcastShapes(c.node.inputs.map((_, i) => c.shape(i))),
    },
  ];

/** Spatial output size of Conv and the pools; null when unknown. */
function spatialOut(
  c: Ctx,
  input: Dim[],
  kernel: number[],
  opts: { ceil: boolean; pool: boolean; transpose?: boolean; outChannels: Dim },
): Dim[] {
  const nsp = input.length - 2;
  const strides = c.ints_('strides') ?? Array(nsp).fill(1);
  const dil = c.ints_('dilations') ?? Array(nsp).fill(1);
  const pads = c.ints_('pads') ?? Array(2 * nsp).fill(0);
  const autoPad = c.str('auto_pad', 'NOTSET');
  const out: Dim[] = [input[0], opts.outChannels];
  for (let i = 0; i < nsp; i++) {
    const x = input[2 + i];
    const k = kernel[i];
    const s = strides[i] ?? 1;
    const d = dil[i] ?? 1;
    if (!num(x) || k === undefined) {
      out.push(null);
      continue;
    }
    const dk = (k - 1) * d + 1;
    if (opts.transpose) {
      const outputShape = c.ints_('output_shape');
      const op = c.ints_('output_padding')?.[i] ?? 0;
      if (outputShape) out.push(outputShape[outputShape.length - nsp + i]);
      else if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') out.push(x * s);
      else {
        const [pb, pe] = autoPad === 'VALID' ? [0, 0] : [pads[i], pads[i + nsp]];
        out.push(valid(s * (x - 1) + op + dk - pb - pe));
      }
      continue;
    }
    if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') {
      if (opts.pool) {
        const target = Math.ceil(x / s);
        const need = Math.max(0, (target - 1) * s + k - x);
        out.push(poolOut(x, need, 0, dk, s, opts.ceil));
      } else out.push(Math.ceil(x / s));
      continue;
    }
    const [pb, pe] = autoPad === 'VALID' ? [0, 0] : [pads[i] ?? 0, pads[i + nsp] ?? 0];
    if (opts.pool) out.push(poolOut(x, pb + pe, pb, dk, s, opts.ceil));
    else out.push(valid(Math.floor((x + pb + pe - dk) / s) + 1));
  }
  return out;
}

function poolOut(x: number, padTotal: number, padHead: number, dk: number, s: number, ceil: boolean): Dim {
  const span = x + padTotal - dk;
  if (!ceil) return valid(Math.floor(span / s) + 1);
  let o = Math.ceil(span / s) + 1;
  // The last window must start inside the input or the head padding (ONNX / ONNX Runtime ceil_mode rule).
  if ((o - 1) * s >= x + padHead) o--;
  return valid(o);
}

const conv: Handler = (c) => {
  const x = c.shape(0);
  const w = c.shape(1);
  const elemType = c.elem(0);
  if (!x) return [{ elemType }];
  const kernel = c.ints_('kernel_shape') ?? (w ? w.slice(2) : undefined);
  if (!kernel?.every(num))
    return [{ elemType, shape: [x[0], w ? w[0] : null, ...x.slice(2).map(() => null)] }];
  return [
    {
      elemType,
      shape: spatialOut(c, x, kernel as number[], { ceil: false, pool: false, outChannels: w ? w[0] : null }),
    },
  ];
};

const convTranspose: Handler = (c) => {
  const x = c.shape(0);
  const w = c.shape(1);
  const elemType = c.elem(0);
  if (!x) return [{ elemType }];
  const group = c.int('group', 1);
  const outC = w && num(w[1]) ? w[1] * group : null;
  const kernel = c.ints_('kernel_shape') ?? (w ? w.slice(2) : undefined);
  if (!kernel?.every(num)) return [{ elemType, shape: [x[0], outC, ...x.slice(2).map(() => null)] }];
  return [
    {
      elemType,
      shape: spatialOut(c, x, kernel as number[], {
        ceil: false,
        pool: false,
        transpose: true,
        outChannels: outC,
      }),
    },
  ];
};

const pool: Handler = (c) => {
  const x = c.shape(0);
  const elemType = c.elem(0);
  if (!x) return [{ elemType }, { elemType: DataType.INT64 }];
  const kernel = c.ints_('kernel_shape') ?? [];
  const shape = spatialOut(c, x, kernel, {
    ceil: c.int('ceil_mode', 0) === 1,
    pool: true,
    outChannels: x[1],
  });
  return [
    { elemType, shape },
    { elemType: DataType.INT64, shape },
  ];
};

const globalPool: Handler = (c) => {
  const x = c.shape(0);
  return [{ elemType: c.elem(0), shape: x ? [x[0], x[1], ...x.slice(2).map(() => 1)] : undefined }];
};

function matmulShape(a: Dim[] | undefined, b: Dim[] | undefined): Dim[] | undefined {
  if (!a || !b || a.length === 0 || b.length === 0) return undefined;
  const a2 = a.length === 1 ? [1, a[0]] : a;
  const b2 = b.length === 1 ? [b[0], 1] : b;
  const batch = broadcastShapes([a2.slice(0, -2), b2.slice(0, -2)])!;
  const out = [...batch, a2[a2.length - 2], b2[b2.length - 1]];
  if (a.length === 1) out.splice(out.length - 2, 1);
  if (b.length === 1) out.splice(out.length - 1, 1);
  return out;
}

const gemm: Handler = (c) => {
  const a = c.shape(0);
  const b = c.shape(1);
  const m = a && a.length === 2 ? (c.int('transA', 0) ? a[1] : a[0]) : null;
  const n = b && b.length === 2 ? (c.int('transB', 0) ? b[0] : b[1]) : null;
  return [{ elemType: c.elem(0), shape: [m, n] }];
};

const reshape: Handler = (c) => {
  const target = c.ints(1);
  const out: Out = { elemType: c.elem(0) };
  const allowzero = c.int('allowzero', 0) === 1;
  if (target) out.shape = reshapeDims(c.shape(0), target, allowzero);
  else if (c.opset < 5 && c.ints_('shape')) out.shape = reshapeDims(c.shape(0), c.ints_('shape')!, false);
  else if (c.shape(1)?.length === 1 && num(c.shape(1)![0])) out.shape = Array(c.shape(1)![0]).fill(null);
  const v = c.ints(0);
  if (v) out.value = v;
  return [out];
};

const flatten: Handler = (c) => {
  const x = c.shape(0);
  const out: Out = { elemType: c.elem(0) };
  if (x) {
    const axis = normAxis(c.int('axis', 1), x.length);
    out.shape = [productDim(x.slice(0, axis)), productDim(x.slice(axis))];
  }
  const v = c.ints(0);
  if (v) out.value = v;
  return [out];
};

const transpose: Handler = (c) => {
  const x = c.shape(0);
  if (!x) return [{ elemType: c.elem(0) }];
  const perm = c.ints_('perm') ?? x.map((_, i) => x.length - 1 - i);
  return [{ elemType: c.elem(0), shape: perm.map((p) => x[p] ?? null) }];
};

const concat: Handler = (c) => {
  const shapes = c.node.inputs.map((_, i) => c.shape(i));
  const elemType = c.node.inputs.map((_, i) => c.elem(i)).find((e) => e !== undefined);
  const out: Out = { elemType };
  const known = shapes.filter((s): s is Dim[] => s !== undefined);
  if (known.length) {
    const rank = known[0].length;
    const axis = normAxis(c.int('axis', 1), rank);
    const shape: Dim[] = [];
    for (let d = 0; d < rank; d++) {
      if (d === axis) {
        shape.push(
          shapes.every((s) => s && num(s[d])) ? shapes.reduce((t, s) => t + (s![d] as number), 0) : null,
        );
      } else {
        let v: Dim = null;
        for (const s of known) if (num(s[d]) || (v === null && s[d] !== null)) v = s[d];
        shape.push(v);
      }
    }
    out.shape = shape;
  }
  const vals = c.node.inputs.map((_, i) => c.ints(i));
  if (vals.every((v) => v !== undefined) && vals.length > 0 && known.every((s) => s.length <= 1)) {
    out.value = vals.flat() as Dim[];
  }
  return [out];
};

const split: Handler = (c) => {
  const x = c.shape(0);
  const n = c.node.outputs.length;
  const elemType = c.elem(0);
  if (!x) return c.node.outputs.map(() => ({ elemType }));
  const axis = normAxis(c.int('axis', 0), x.length);
  let sizes: Dim[] | undefined = c.opset >= 13 ? c.ints(1) : c.ints_('split');
  if (!sizes && c.opset < 13 && c.opset < 2 && c.has(1)) sizes = c.ints(1);
  const d = x[axis];
  if (!sizes) {
    if (num(d)) {
      if (c.opset >= 18 && c.node.attr('num_outputs')) {
        const k = Math.ceil(d / n);
        sizes = Array.from({ length: n }, (_, i) => Math.max(0, Math.min(k, d - i * k)));
      } else sizes = Array(n).fill(d % n === 0 ? d / n : null);
    } else sizes = Array(n).fill(null);
  }
  return c.node.outputs.map((_, i) => {
    const s = [...x];
    s[axis] = sizes![i] ?? null;
    return { elemType, shape: s };
  });
};

function sliceParams(c: Ctx): { starts?: number[]; ends?: number[]; axes?: number[]; steps?: number[] } {
  if (c.opset < 10) return { starts: c.ints_('starts'), ends: c.ints_('ends'), axes: c.ints_('axes') };
  return {
    starts: c.numbers(1),
    ends: c.numbers(2),
    axes: c.has(3) ? c.numbers(3) : undefined,
    steps: c.has(4) ? c.numbers(4) : undefined,
  };
}

const slice: Handler = (c) => {
  const x = c.shape(0);
  const elemType = c.elem(0);
  if (!x) return [{ elemType }];
  const { starts, ends, axes: ax, steps } = sliceParams(c);
  const axesGiven = c.opset < 10 ? c.ints_('axes') !== undefined : c.has(3);
  const stepsGiven = c.opset >= 10 && c.has(4);
  if (!starts || !ends || (axesGiven && !ax) || (stepsGiven && !steps)) {
    // Unknown parameters: only the sliced axes change; without axes any axis can.
    if (axesGiven && ax) {
      const s = [...x];
      for (const a of ax) s[normAxis(a, x.length)] = null;
      return [{ elemType, shape: s }];
    }
    return [{ elemType, shape: x.map(() => null) }];
  }
  const axes = ax ?? starts.map((_, i) => i);
  const shape = [...x];
  const v = c.ints(0);
  let value: Dim[] | undefined;
  for (let i = 0; i < axes.length; i++) {
    const a = normAxis(axes[i], x.length);
    const step = steps?.[i] ?? 1;
    shape[a] = sliceLength(x[a], starts[i], ends[i], step);
    if (v && x.length === 1 && num(x[0])) {
      const d = x[0];
      let s = starts[i] < 0 ? starts[i] + d : starts[i];
      let e = ends[i] < 0 ? ends[i] + d : ends[i];
      value = [];
      if (step > 0) {
        s = Math.min(Math.max(s, 0), d);
        e = Math.min(Math.max(e, 0), d);
        for (let j = s; j < e; j += step) value.push(v[j]);
      } else {
        s = Math.min(Math.max(s, 0), d - 1);
        e = Math.min(Math.max(e, -1), d - 1);
        for (let j = s; j > e; j += step) value.push(v[j]);
      }
    }
  }
  return [{ elemType, shape, value }];
};

const gather: Handler = (c) => {
  const x = c.shape(0);
  const idx = c.shape(1);
  const elemType = c.elem(0);
  if (!x || !idx) return [{ elemType }];
  const axis = normAxis(c.int('axis', 0), x.length);
  const out: Out = { elemType, shape: [...x.slice(0, axis), ...idx, ...x.slice(axis + 1)] };
  const v = c.ints(0);
  const iv = c.numbers(1);
  if (v && iv && x.length === 1 && num(x[0])) {
    const d = x[0];
    out.value = iv.map((i) => v[i < 0 ? i + d : i] ?? null);
  }
  return [out];
};

function reduceAxes(c: Ctx): { axes?: number[]; known: boolean } {
  const op = c.node.opType;
  const axesAsInput = op === 'ReduceSum' ? c.opset >= 13 : c.opset >= 18;
  if (!axesAsInput) return { axes: c.ints_('axes'), known: true };
  if (!c.has(1)) return { axes: undefined, known: true };
  const v = c.numbers(1);
  return { axes: v, known: v !== undefined };
}

const reduce: Handler = (c) => {
  const x = c.shape(0);
  const elemType = c.elem(0);
  const keep = c.int('keepdims', 1) === 1;
  if (!x) return [{ elemType }];
  const { axes, known } = reduceAxes(c);
  if (!known) return [{ elemType, shape: keep ? x.map(() => null) : undefined }];
  if (!axes || axes.length === 0) {
    if (c.int('noop_with_empty_axes', 0) === 1) return [{ elemType, shape: x }];
    return [{ elemType, shape: keep ? x.map(() => 1) : [] }];
  }
  const set = new Set(axes.map((a) => normAxis(a, x.length)));
  const shape: Dim[] = [];
  x.forEach((d, i) => {
    if (!set.has(i)) shape.push(d);
    else if (keep) shape.push(1);
  });
  return [{ elemType, shape }];
};

const argReduce: Handler = (c) => {
  const x = c.shape(0);
  if (!x) return [{ elemType: DataType.INT64 }];
  const axis = normAxis(c.int('axis', 0), x.length);
  const keep = c.int('keepdims', 1) === 1;
  const shape = keep ? x.map((d, i) => (i === axis ? 1 : d)) : x.filter((_, i) => i !== axis);
  return [{ elemType: DataType.INT64, shape }];
};

const squeeze: Handler = (c) => {
  const x = c.shape(0);
  const elemType = c.elem(0);
  const out: Out = { elemType, value: c.ints(0) };
  if (!x) return [out];
  const axes = c.opset >= 13 ? (c.has(1) ? c.numbers(1) : undefined) : c.ints_('axes');
  if (c.opset >= 13 && c.has(1) && !axes) return [out];
  if (!axes) {
    if (x.every(num)) out.shape = x.filter((d) => d !== 1);
    return [out];
  }
  const set = new Set(axes.map((a) => normAxis(a, x.length)));
  out.shape = x.filter((_, i) => !set.has(i));
  return [out];
};

const unsqueeze: Handler = (c) => {
  const x = c.shape(0);
  const elemType = c.elem(0);
  const out: Out = { elemType, value: c.ints(0) };
  const axes = c.opset >= 13 ? c.numbers(1) : c.ints_('axes');
  if (!x || !axes) return [out];
  const r = x.length + axes.length;
  const set = new Set(axes.map((a) => normAxis(a, r)));
  const shape: Dim[] = [];
  let j = 0;
  for (let i = 0; i < r; i++) shape.push(set.has(i) ? 1 : x[j++]);
  out.shape = shape;
  return [out];
};

const cast: Handler = (c) => {
  const to = c.node.attr('to');
  let elemType: DataType | undefined;
  if (to?.type === AttributeType.STRING) {
    const name = new TextDecoder().decode(to.value as Uint8Array).toUpperCase();
    elemType = (DataType as unknown as Record<string, DataType>)[name];
  } else if (to) elemType = Number(to.value) as DataType;
  const v = c.ints(0);
  return [
    { elemType, shape: c.shape(0), value: v && isIntType(elemType) && isIntType(c.elem(0)) ? v : undefined },
  ];
};

const shapeOp: Handler = (c) => {
  const x = c.shape(0);
  if (!x) return [{ elemType: DataType.INT64, shape: [null] }];
  const r = x.length;
  const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + r : v, 0), r);
  const start = clamp(c.int('start', 0));
  const end = clamp(c.int('end', r));
  const value = x.slice(start, Math.max(start, end));
  return [{ elemType: DataType.INT64, shape: [value.length], value }];
};

const size: Handler = (c) => {
  const x = c.shape(0);
  const p = x ? productDim(x) : null;
  return [{ elemType: DataType.INT64, shape: [], value: num(p) ? [p] : undefined }];
};

const constant: Handler = (c) => {
  const t = constantNodeTensor(c.node);
  if (t) return [{ elemType: t.dtype, shape: [...t.dims] }];
  const strs = c.node.attr('value_strings')?.value as Uint8Array[] | undefined;
  if (c.node.attr('value_string')) return [{ elemType: DataType.STRING, shape: [] }];
  if (strs) return [{ elemType: DataType.STRING, shape: [strs.length] }];
  return [{}];
};

const constantOfShape: Handler = (c) => {
  const t = c.node.attrTensor('value');
  const elemType = t ? t.dtype : DataType.FLOAT;
  const dims = c.ints(0);
  const inShape = c.shape(0);
  const shape = dims ?? (inShape && num(inShape[0]) ? Array(inShape[0]).fill(null) : undefined);
  const out: Out = { elemType, shape };
  if (dims?.every(num) && isIntType(elemType)) {
    const n = (dims as number[]).reduce((a, b) => a * b, 1);
    if (n <= MAX_TRACKED) out.value = Array(n).fill(t ? (tensorNumbers(t)?.[0] ?? 0) : 0);
  }
  return [out];
};

const range: Handler = (c) => {
  const [s, l, d] = [c.constNumbers(0), c.constNumbers(1), c.constNumbers(2)];
  const elemType = c.elem(0);
  if (s && l && d && d[0] !== 0) {
    const n = Math.max(Math.ceil((l[0] - s[0]) / d[0]), 0);
    const out: Out = { elemType, shape: [n] };
    if (isIntType(elemType) && n <= MAX_TRACKED)
      out.value = Array.from({ length: n }, (_, i) => s[0] + i * d[0]);
    return [out];
  }
  return [{ elemType, shape: [null] }];
};

const expand: Handler = (c) => {
  const target = c.ints(1);
  const x = c.shape(0);
  if (!target) {
    const ts = c.shape(1);
    return [
      {
        elemType: c.elem(0),
        shape: ts && num(ts[0]) && x ? Array(Math.max(ts[0], x.length)).fill(null) : undefined,
      },
    ];
  }
  return [{ elemType: c.elem(0), shape: broadcastShapes([x, target]) }];
};

const tile: Handler = (c) => {
  const x = c.shape(0);
  const reps = c.ints(1);
  if (!x) return [{ elemType: c.elem(0) }];
  if (!reps) return [{ elemType: c.elem(0), shape: x.map(() => null) }];
  return [
    {
      elemType: c.elem(0),
      shape: x.map((d, i) => {
        const r = reps[i];
        if (r === 1) return d;
        return num(d) && num(r) ? d * r : null;
      }),
    },
  ];
};

const pad: Handler = (c) => {
  const x = c.shape(0);
  const elemType = c.elem(0);
  if (!x) return [{ elemType }];
  const pads = c.opset >= 11 ? c.numbers(1) : (c.ints_('pads') ?? c.ints_('paddings'));
  if (!pads) return [{ elemType, shape: x.map(() => null) }];
  const axes = c.opset >= 18 && c.has(3) ? c.numbers(3) : x.map((_, i) => i);
  if (!axes) return [{ elemType, shape: x.map(() => null) }];
  const shape = [...x];
  const n = axes.length;
  axes.forEach((a, i) => {
    const ax = normAxis(a, x.length);
    const d = x[ax];
    const p = pads[i] + pads[i + n];
    shape[ax] = p === 0 ? d : num(d) ? valid(d + p) : null;
  });
  return [{ elemType, shape }];
};

function scaledDims(x: Dim[], scales: number[], axes?: number[]): Dim[] {
  const shape = [...x];
  const ax = axes ?? x.map((_, i) => i);
  ax.forEach((a, i) => {
    const k = normAxis(a, x.length);
    const d = x[k];
    const s = scales[i];
    shape[k] = s === 1 ? d : num(d) ? Math.floor(Math.fround(d * Math.fround(s))) : null;
  });
  return shape;
}

const resize: Handler = (c) => {
  const x = c.shape(0);
  const elemType = c.elem(0);
  if (!x) return [{ elemType }];
  if (c.node.opType === 'Upsample' || c.opset < 11) {
    const scales = c.opset < 9 ? (c.node.attr('scales')?.value as number[] | undefined) : c.constNumbers(1);
    return [{ elemType, shape: scales ? scaledDims(x, scales) : x.map(() => null) }];
  }
  const axes = c.ints_('axes');
  const sizes = c.has(3) ? c.numbers(3) : undefined;
  if (sizes) {
    const policy = c.str('keep_aspect_ratio_policy', 'stretch');
    const ax = axes ?? x.map((_, i) => i);
    const shape = [...x];
    if (policy === 'stretch') {
      ax.forEach((a, i) => {
        shape[normAxis(a, x.length)] = sizes[i];
      });
      return [{ elemType, shape }];
    }
    const ds = ax.map((a) => x[normAxis(a, x.length)]);
    if (!ds.every(num)) {
      for (const a of ax) shape[normAxis(a, x.length)] = null;
      return [{ elemType, shape }];
    }
    const ratios = ax.map((_, i) => Math.fround(sizes[i] / (ds[i] as number)));
    const r = policy === 'not_larger' ? Math.min(...ratios) : Math.max(...ratios);
    ax.forEach((a, i) => {
      shape[normAxis(a, x.length)] = Math.round(Math.fround(r * (ds[i] as number)));
    });
    return [{ elemType, shape }];
  }
  const scales = c.has(2) ? c.constNumbers(2) : undefined;
  if (scales && scales.length > 0) {
    if (c.str('coordinate_transformation_mode', 'half_pixel') === 'tf_crop_and_resize') {
      return [{ elemType, shape: x.map(() => null) }];
    }
    return [{ elemType, shape: scaledDims(x, scales, axes) }];
  }
  // Non-constant scales or sizes: the rank is kept, the resized dims are unknown.
  return [{ elemType, shape: x.map(() => null) }];
};

const where: Handler = (c) => [
  { elemType: c.elem(1) ?? c.elem(2), shape: broadcastShapes([c.shape(0), c.shape(1), c.shape(2)]) },
];

const batchNorm: Handler = (c) => {
  const x = c.shape(0);
  const ch: Dim[] = [x ? x[1] : null];
  return [
    { elemType: c.elem(0), shape: x },
    { elemType: c.elem(3) ?? c.elem(1), shape: ch },
    { elemType: c.elem(3) ?? c.elem(1), shape: ch },
    { elemType: c.elem(3) ?? c.elem(1), shape: ch },
    { elemType: c.elem(3) ?? c.elem(1), shape: ch },
  ];
};

const layerNorm: Handler = (c) => {
  const x = c.shape(0);
  const stash = c.int('stash_type', 1) as DataType;
  if (!x) return [{ elemType: c.elem(0) }, { elemType: stash }, { elemType: stash }];
  const axis = normAxis(c.int('axis', -1), x.length);
  const stat = x.map((d, i) => (i < axis ? d : 1));
  return [
    { elemType: c.elem(0), shape: x },
    { elemType: stash, shape: stat },
    { elemType: stash, shape: stat },
  ];
};

const rnn: Handler = (c) => {
  const x = c.shape(0);
  const elemType = c.elem(0);
  const hidden = c.node.attrInt('hidden_size') ?? null;
  const dirs = c.str('direction', 'forward') === 'bidirectional' ? 2 : 1;
  const layout = c.int('layout', 0);
  let seq: Dim = null;
  let batch: Dim = null;
  if (x && x.length === 3) [seq, batch] = layout === 0 ? [x[0], x[1]] : [x[1], x[0]];
  const y = layout === 0 ? [seq, dirs, batch, hidden] : [batch, seq, dirs, hidden];
  const h = layout === 0 ? [dirs, batch, hidden] : [batch, dirs, hidden];
  return [
    { elemType, shape: y },
    { elemType, shape: h },
    { elemType, shape: h },
  ];
};

const dropout: Handler = (c) => [
  { elemType: c.elem(0), shape: c.shape(0) },
  { elemType: c.opset >= 10 ? DataType.BOOL : c.elem(0), shape: c.shape(0) },
];

const topK: Handler = (c) => {
  const x = c.shape(0);
  const elemType = c.elem(0);
  if (!x) return [{ elemType }, { elemType: DataType.INT64 }];
  const axis = normAxis(c.int('axis', -1), x.length);
  const k = c.opset >= 10 ? c.numbers(1)?.[0] : c.node.attrInt('k');
  const shape = x.map((d, i) => (i === axis ? (k ?? null) : d));
  return [
    { elemType, shape },
    { elemType: DataType.INT64, shape },
  ];
};

const quantize: Handler = (c) => {
  const outDtype = c.node.attrInt('output_dtype');
  const elemType = outDtype ? (outDtype as DataType) : (c.elem(2) ?? DataType.UINT8);
  return [{ elemType, shape: c.shape(0) }];
};

const dequantize: Handler = (c) => {
  const outDtype = c.node.attrInt('output_dtype');
  return [{ elemType: outDtype ? (outDtype as DataType) : c.elem(1), shape: c.shape(0) }];
};

const depthToSpace: Handler = (c) => {
  const x = c.shape(0);
  const b = c.int('blocksize', 1);
  if (x?.length !== 4) return [{ elemType: c.elem(0) }];
  const m = (d: Dim, f: number) => (num(d) ? d * f : null);
  const dv = (d: Dim, f: number) => (num(d) && d % f === 0 ? d / f : null);
  if (c.node.opType === 'DepthToSpace') {
    return [{ elemType: c.elem(0), shape: [x[0], dv(x[1], b * b), m(x[2], b), m(x[3], b)] }];
  }
  return [{ elemType: c.elem(0), shape: [x[0], m(x[1], b * b), dv(x[2], b), dv(x[3], b)] }];
};

const oneHot: Handler = (c) => {
  const idx = c.shape(0);
  const depth = c.constNumbers(1)?.[0];
  if (!idx) return [{ elemType: c.elem(2) }];
  const r = idx.length + 1;
  const axis = normAxis(c.int('axis', -1), r);
  const shape = [...idx];
  shape.splice(axis, 0, depth === undefined ? null : depth);
  return [{ elemType: c.elem(2), shape }];
};

const gatherElements: Handler = (c) => [{ elemType: c.elem(0), shape: c.shape(1) }];

const gatherND: Handler = (c) => {
  const x = c.shape(0);
  const idx = c.shape(1);
  const b = c.int('batch_dims', 0);
  if (!x || !idx || !num(idx[idx.length - 1])) return [{ elemType: c.elem(0) }];
  const last = idx[idx.length - 1] as number;
  return [{ elemType: c.elem(0), shape: [...idx.slice(0, -1), ...x.slice(b + last)] }];
};

const einsum: Handler = (c) => {
  const eq = c.str('equation', '').replace(/\s/g, '');
  const elemType = c.elem(0);
  if (eq.includes('.') || !eq.includes('->')) return [{ elemType }];
  const [lhs, rhs] = eq.split('->');
  const terms = lhs.split(',');
  const letters = new Map<string, Dim>();
  for (let i = 0; i < terms.length; i++) {
    const s = c.shape(i);
    if (!s || s.length !== terms[i].length) continue;
    [...terms[i]].forEach((ch, k) => {
      const prev = letters.get(ch);
      letters.set(ch, prev === undefined || prev === 1 || prev === null ? s[k] : prev);
    });
  }
  return [{ elemType, shape: [...rhs].map((ch) => letters.get(ch) ?? null) }];
};

const nonZero: Handler = (c) => [{ elemType: DataType.INT64, shape: [c.shape(0)?.length ?? null, null] }];

const compress: Handler = (c) => {
  const x = c.shape(0);
  const axis = c.node.attrInt('axis');
  if (!x || axis === undefined) return [{ elemType: c.elem(0), shape: [null] }];
  const a = normAxis(axis, x.length);
  return [{ elemType: c.elem(0), shape: x.map((d, i) => (i === a ? null : d)) }];
};

const eyeLike: Handler = (c) => {
  const dt = c.node.attrInt('dtype');
  return [{ elemType: dt ? (dt as DataType) : c.elem(0), shape: c.shape(0) }];
};

const randomLike: Handler = (c) => {
  const dt = c.node.attrInt('dtype');
  return [{ elemType: dt ? (dt as DataType) : c.elem(0), shape: c.shape(0) }];
};

const random: Handler = (c) => [
  { elemType: c.int('dtype', DataType.FLOAT) as DataType, shape: c.ints_('shape') },
];

const det: Handler = (c) => {
  const x = c.shape(0);
  return [{ elemType: c.elem(0), shape: x ? x.slice(0, -2) : undefined }];
};

const gridSample: Handler = (c) => {
  const x = c.shape(0);
  const g = c.shape(1);
  if (!x || !g) return [{ elemType: c.elem(0) }];
  return [{ elemType: c.elem(0), shape: [x[0], x[1], ...g.slice(1, -1)] }];
};

const roiAlign: Handler = (c) => {
  const x = c.shape(0);
  const rois = c.shape(1);
  return [
    {
      elemType: c.elem(0),
      shape: [rois ? rois[0] : null, x ? x[1] : null, c.int('output_height', 1), c.int('output_width', 1)],
    },
  ];
};

const qlinearMatMul: Handler = (c) => [{ elemType: c.elem(7), shape: matmulShape(c.shape(0), c.shape(3)) }];

const qlinearConv: Handler = (c) => {
  const x = c.shape(0);
  const w = c.shape(3);
  const elemType = c.elem(7);
  if (!x) return [{ elemType }];
  const kernel = c.ints_('kernel_shape') ?? (w ? w.slice(2) : undefined);
  if (!kernel?.every(num)) return [{ elemType }];
  return [
    {
      elemType,
      shape: spatialOut(c, x, kernel as number[], { ceil: false, pool: false, outChannels: w ? w[0] : null }),
    },
  ];
};

const convInteger: Handler = (c) => {
  const [r] = conv(c);
  return [{ ...r, elemType: DataType.INT32 }];
};

const cumLike: Handler = same;

const dynamicQuantize: Handler = (c) => [
  { elemType: DataType.UINT8, shape: c.shape(0) },
  { elemType: DataType.FLOAT, shape: [] },
  { elemType: DataType.UINT8, shape: [] },
];

const maxUnpool: Handler = (c) => {
  const x = c.shape(0);
  if (!x) return [{ elemType: c.elem(0) }];
  const os = c.has(2) ? c.ints(2) : undefined;
  if (os) return [{ elemType: c.elem(0), shape: os }];
  const k = c.ints_('kernel_shape') ?? [];
  const s = c.ints_('strides') ?? k.map(() => 1);
  const p = c.ints_('pads') ?? [...k, ...k].map(() => 0);
  const n = k.length;
  return [
    {
      elemType: c.elem(0),
      shape: [
        x[0],
        x[1],
        ...k.map((kk, i) =>
          num(x[2 + i]) ? ((x[2 + i] as number) - 1) * s[i] + kk - p[i] - p[i + n] : null,
        ),
      ],
    },
  ];
};

const nms: Handler = () => [{ elemType: DataType.INT64, shape: [null, 3] }];

const neg: Handler = (c) => {
  const v = c.ints(0);
  return [
    {
      elemType: c.elem(0),
      shape: c.shape(0),
      value: v?.every(num) ? (v as number[]).map((x) => -x) : undefined,
    },
  ];
};

const identity: Handler = (c) => [{ elemType: c.elem(0), shape: c.shape(0), value: c.ints(0) }];

const unaryOps = (
  'Abs Acos Acosh Asin Asinh Atan Atanh Ceil Celu Clip Cos Cosh Elu Erf Exp Floor Gelu ' +
  'HardSigmoid HardSwish Hardmax InstanceNormalization LRN LeakyRelu Log LogSoftmax ' +
  'LpNormalization MeanVarianceNormalization Mish Reciprocal Relu Round Selu Shrink Sigmoid Sign ' +
  'Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Trilu CumSum ReverseSequence ' +
  'ScatterElements ScatterND Scatter PRelu GroupNormalization Not BitwiseNot Swish'
).split(' ');

const HANDLERS: Record<string, Handler> = {
  Add: binary(addF),
  Sub: binary(subF),
  Mul: binary(mulF),
  Div: binary(divF),
  Pow: binary(),
  Mod: binary(),
  BitShift: binary(),
  BitwiseAnd: binary(),
  BitwiseOr: binary(),
  BitwiseXor: binary(),
  And: binary(undefined, DataType.BOOL),
  Or: binary(undefined, DataType.BOOL),
  Xor: binary(undefined, DataType.BOOL),
  Equal: binary(undefined, DataType.BOOL),
  Less: binary(undefined, DataType.BOOL),
  Greater: binary(undefined, DataType.BOOL),
  LessOrEqual: binary(undefined, DataType.BOOL),
  GreaterOrEqual: binary(undefined, DataType.BOOL),
  Max: variadic(),
  Min: variadic(),
  Sum: variadic(),
  Mean: variadic(),
  IsNaN: sameAs(DataType.BOOL),
  IsInf: sameAs(DataType.BOOL),
  Neg: neg,
  Identity: identity,
  Conv: conv,
  ConvTranspose: convTranspose,
  ConvInteger: convInteger,
  QLinearConv: qlinearConv,
  MaxPool: pool,
  AveragePool: pool,
  LpPool: pool,
  GlobalAveragePool: globalPool,
  GlobalMaxPool: globalPool,
  GlobalLpPool: globalPool,
  Gemm: gemm,
  MatMul: (c) => [{ elemType: c.elem(0), shape: matmulShape(c.shape(0), c.shape(1)) }],
  MatMulInteger: (c) => [{ elemType: DataType.INT32, shape: matmulShape(c.shape(0), c.shape(1)) }],
  QLinearMatMul: qlinearMatMul,
  Reshape: reshape,
  Flatten: flatten,
  Transpose: transpose,
  Concat: concat,
  Split: split,
  Slice: slice,
  Gather: gather,
  GatherElements: gatherElements,
  GatherND: gatherND,
  Squeeze: squeeze,
  Unsqueeze: unsqueeze,
  ReduceSum: reduce,
  ReduceMean: reduce,
  ReduceMax: reduce,
  ReduceMin: reduce,
  ReduceProd: reduce,
  ReduceL1: reduce,
  ReduceL2: reduce,
  ReduceLogSum: reduce,
  ReduceLogSumExp: reduce,
  ReduceSumSquare: reduce,
  ArgMax: argReduce,
  ArgMin: argReduce,
  Cast: cast,
  CastLike: (c) => [{ elemType: c.elem(1), shape: c.shape(0) }],
  Shape: shapeOp,
  Size: size,
  Constant: constant,
  ConstantOfShape: constantOfShape,
  Range: range,
  Expand: expand,
  Tile: tile,
  Pad: pad,
  Resize: resize,
  Upsample: resize,
  Where: where,
  BatchNormalization: batchNorm,
  LayerNormalization: layerNorm,
  LSTM: rnn,
  GRU: rnn,
  RNN: rnn,
  Dropout: dropout,
  TopK: topK,
  QuantizeLinear: quantize,
  DequantizeLinear: dequantize,
  DynamicQuantizeLinear: dynamicQuantize,
  DepthToSpace: depthToSpace,
  SpaceToDepth: depthToSpace,
  OneHot: oneHot,
  Einsum: einsum,
  NonZero: nonZero,
  Compress: compress,
  EyeLike: eyeLike,
  RandomNormalLike: randomLike,
  RandomUniformLike: randomLike,
  RandomNormal: random,
  RandomUniform: random,
  Bernoulli: randomLike,
  Det: det,
  GridSample: gridSample,
  RoiAlign: roiAlign,
  MaxUnpool: maxUnpool,
  NonMaxSuppression: nms,
  CumSum: cumLike,
};
for (const op of unaryOps) HANDLERS[op] ??= same;

// ---------------------------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------------------------

/** The result of inference: types of values per graph (subgraphs see their outer scopes). */
export class TypeTable {
  /** Op types (domain-qualified when not the default domain) inference had no rule for, with counts. */
  readonly unsupported: Record<string, number> = {};
  /** Shape conflicts between inference and declared value_info (declared kept). */
  conflicts = 0;
  /** @internal */
  readonly envs = new Map<Graph, Env>();

  /** The type of `name` as seen from `graph` (default: the main graph). */
  get(name: string, graph?: Graph): ValueType | undefined {
    const env = graph ? this.envs.get(graph) : this.main;
    return env?.type(name);
  }

  /** The known values of a small integer tensor (shape computations), symbols allowed. */
  value(name: string, graph?: Graph): Dim[] | undefined {
    const env = graph ? this.envs.get(graph) : this.main;
    return env?.value(name);
  }

  /** @internal */
  main?: Env;
}

function mergeShape(
  inferred: Dim[] | undefined,
  declared: Dim[] | undefined,
  table: TypeTable,
): Dim[] | undefined {
  if (!declared) return inferred;
  if (!inferred) return declared;
  if (inferred.length !== declared.length) {
    table.conflicts++;
    return declared;
  }
  return inferred.map((d, i) => {
    const e = declared[i];
    if (num(e)) {
      if (num(d) && d !== e) table.conflicts++;
      return e;
    }
    if (d !== null) return d;
    return e;
  });
}

/**
 * Infers element types and shapes of every value in the model (main graph and subgraphs). Nothing is written;
 * see `inferShapes` for the pass that records the results in value_info.
 */
export function inferTypes(model: Model, options: ShapeInferenceOptions = {}): TypeTable {
  const table = new TypeTable();
  const opset = model.opset('') ?? 1;
  table.main = inferGraph(model.graph, undefined, opset, table, options.inputShapes ?? {});
  return table;
}

function inferGraph(
  g: Graph,
  parent: Env | undefined,
  opset: number,
  table: TypeTable,
  inputShapes: Record<string, (number | string)[]>,
  inputOverrides?: Map<string, ValueType>,
): Env {
  const env = new Env(g, parent);
  table.envs.set(g, env);
  const declared = new Map<string, ValueType>();
  for (const v of [...g.valueInfo, ...g.outputs]) {
    const t = valueTypeOf(v.type);
    if (t) declared.set(v.name, t);
  }
  const inputNames = new Set<string>();
  for (const v of g.inputs) {
    inputNames.add(v.name);
    const t: ValueType = valueTypeOf(v.type) ?? {};
    const override = inputOverrides?.get(v.name);
    if (override) {
      t.elemType ??= override.elemType;
      t.shape ??= override.shape;
    }
    if (!parent && inputShapes[v.name]) t.shape = [...inputShapes[v.name]];
    env.types.set(v.name, t);
  }
  for (const [name, t] of g.initializers) {
    if (!inputNames.has(name)) {
      env.types.set(name, { elemType: t.dtype, shape: [...t.dims] });
      env.consts.set(name, t);
      if (isIntType(t.dtype) && t.size <= MAX_TRACKED) {
        const v = tensorNumbers(t);
        if (v) env.values.set(name, v);
      }
    } else {
      const declaredT = env.types.get(name);
      if (!declaredT?.elemType)
        env.types.set(name, { elemType: t.dtype, shape: declaredT?.shape ?? [...t.dims] });
    }
  }
  for (const node of g.topologicalOrder()) {
    const key = node.domain && node.domain !== 'ai.onnx' ? `${node.domain}:${node.opType}` : node.opType;
    let outs: (Out | undefined)[] = [];
    const isDefault = !node.domain || node.domain === 'ai.onnx';
    const ctx = new Ctx(node, env, opset);
    if (isDefault && (node.opType === 'If' || node.opType === 'Loop' || node.opType === 'Scan')) {
      outs = controlFlow(ctx, opset, table, inputShapes);
    } else if (node.domain === 'qnnx' && node.opType === 'FakeQuant') {
      // qnnx's training-time fake quantizer (src/train/fake-quant.ts): same type and shape as its input.
      outs = identity(ctx);
    } else {
      const h = isDefault && Object.hasOwn(HANDLERS, node.opType) ? HANDLERS[node.opType] : undefined;
      if (h) {
        try {
          outs = h(ctx);
        } catch {
          outs = [];
        }
      } else {
        table.unsupported[key] = (table.unsupported[key] ?? 0) + 1;
        for (const sg of node.subgraphs()) inferGraph(sg, env, opset, table, inputShapes);
      }
    }
    if (isDefault && node.opType === 'Constant') {
      const t = constantNodeTensor(node);
      if (t && node.outputs[0]) {
        env.consts.set(node.outputs[0], t);
        if (isIntType(t.dtype) && t.size <= MAX_TRACKED) {
          const v = tensorNumbers(t);
          if (v) env.values.set(node.outputs[0], v);
        }
      }
    }
    node.outputs.forEach((name, i) => {
      if (!name) return;
      const o = outs[i];
      const d = declared.get(name);
      const shape = mergeShape(
        o?.shape?.map((x) => (num(x) && (!Number.isInteger(x) || x < 0) ? null : x)),
        d?.shape,
        table,
      );
      const t: ValueType = { elemType: o?.elemType ?? d?.elemType, shape };
      env.types.set(name, t);
      if (o?.value && !env.values.has(name) && o.value.length <= MAX_TRACKED) {
        const n = shape ? productDim(shape) : null;
        if (n === null || n === o.value.length) env.values.set(name, o.value);
      }
    });
  }
  return env;
}

function controlFlow(
  c: Ctx,
  opset: number,
  table: TypeTable,
  inputShapes: Record<string, (number | string)[]>,
): (Out | undefined)[] {
  const node = c.node;
  if (node.opType === 'If') {
    const branches = ['then_branch', 'else_branch']
      .map((n) => node.attr(n)?.value as Graph | undefined)
      .filter((g): g is Graph => g !== undefined);
    const envs = branches.map((b) => inferGraph(b, c.env, opset, table, inputShapes));
    return node.outputs.map((_, i) => {
      const types = branches.map((b, k) => (b.outputs[i] ? envs[k].type(b.outputs[i].name) : undefined));
      const elemType = types.find((t) => t?.elemType)?.elemType;
      const shapes = types.map((t) => t?.shape);
      let shape: Dim[] | undefined;
      if (shapes.every((s) => s && s.length === shapes[0]!.length)) {
        shape = shapes[0]!.map((d, k) => (shapes.every((s) => s![k] === d) ? d : null));
      }
      return { elemType, shape };
    });
  }
  const body = node.attr('body')?.value as Graph | undefined;
  if (!body) return [];
  if (node.opType === 'Loop') {
    const overrides = new Map<string, ValueType>();
    const nCarried = Math.max(0, node.inputs.length - 2);
    body.inputs.forEach((v, i) => {
      if (i === 0) overrides.set(v.name, { elemType: DataType.INT64, shape: [] });
      else if (i === 1) overrides.set(v.name, { elemType: DataType.BOOL, shape: [] });
      else overrides.set(v.name, { elemType: c.elem(i) });
    });
    const env = inferGraph(body, c.env, opset, table, inputShapes, overrides);
    return node.outputs.map((_, i) => {
      const o = body.outputs[1 + i];
      const t = o ? env.type(o.name) : undefined;
      if (i < nCarried) {
        const init = c.shape(2 + i);
        const s = t?.shape;
        const shape =
          s && init && s.length === init.length ? s.map((d, k) => (d === init[k] ? d : null)) : undefined;
        return { elemType: t?.elemType ?? c.elem(2 + i), shape };
      }
      return { elemType: t?.elemType, shape: t?.shape ? [null, ...t.shape] : undefined };
    });
  }
  // Scan: element types from the body; shapes left to the declared value_info.
  const env = inferGraph(body, c.env, opset, table, inputShapes);
  return node.outputs.map((_, i) => {
    const o = body.outputs[i];
    return { elemType: o ? env.type(o.name)?.elemType : undefined };
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Writing value_info
// ---------------------------------------------------------------------------------------------------------------

interface WriteStats {
  added: number;
  updated: number;
}

/** Fills the missing parts of `v`'s tensor type from `t`; never removes or changes what is there. */
function fillValueInfo(v: ValueInfo, t: ValueType): boolean {
  if (v.type && !v.type.tensor_type) return false; // sequences, maps, optionals: left alone
  let changed = false;
  if (!v.type) {
    if (t.elemType === undefined) return false;
    v.type = tensorType(t.elemType, t.shape);
    return true;
  }
  const tt = v.type.tensor_type!;
  if (!tt.elem_type && t.elemType !== undefined) {
    tt.elem_type = t.elemType;
    changed = true;
  }
  if (!t.shape) return changed;
  if (!tt.shape) {
    tt.shape = tensorType(DataType.FLOAT, t.shape).tensor_type!.shape;
    return true;
  }
  const dims = tt.shape.dim ?? [];
  if (dims.length !== t.shape.length) return changed;
  dims.forEach((d, i) => {
    if (has(d, 'dim_value') || (has(d, 'dim_param') && d.dim_param)) return;
    const x = t.shape![i];
    if (typeof x === 'number') {
      d.dim_value = x;
      changed = true;
    } else if (typeof x === 'string') {
      d.dim_param = x;
      changed = true;
    }
  });
  return changed;
}

function writeGraph(g: Graph, lookup: (name: string) => ValueType | undefined, stats: WriteStats): void {
  const infos = new Map<string, ValueInfo>();
  for (const v of g.valueInfo) infos.set(v.name, v);
  const outputs = new Map<string, ValueInfo>();
  for (const v of g.outputs) outputs.set(v.name, v);
  for (const node of g.nodes) {
    for (const name of node.outputs) {
      if (!name) continue;
      const t = lookup(name);
      if (!t) continue;
      const existing = outputs.get(name) ?? infos.get(name);
      if (existing) {
        if (fillValueInfo(existing, t)) stats.updated++;
      } else if (t.elemType !== undefined) {
        const v: ValueInfo = { name, type: tensorType(t.elemType, t.shape) };
        g.valueInfo.push(v);
        infos.set(name, v);
        stats.added++;
      }
    }
  }
}

/**
 * The shape-inference pass: infers element types and shapes and records them in each graph's value_info (graph
 * outputs get missing types and unknown dims filled). Declared information is kept; where it disagrees with
 * inference the declared value wins and the conflict is counted. With `inputShapes`, the recorded shapes hold
 * for inputs of those shapes only.
 */
export function inferShapes(model: Model, options: ShapeInferenceOptions = {}): PassRecord {
  const table = inferTypes(model, options);
  const stats: WriteStats = { added: 0, updated: 0 };
  let values = 0;
  let typed = 0;
  let ranked = 0;
  let fullyStatic = 0;
  for (const [g, env] of table.envs) {
    writeGraph(g, (n) => env.type(n), stats);
    for (const node of g.nodes) {
      for (const name of node.outputs) {
        if (!name) continue;
        values++;
        const t = env.type(name);
        if (t?.elemType !== undefined) typed++;
        if (t?.shape) {
          ranked++;
          if (t.shape.every(num)) fullyStatic++;
        }
      }
    }
  }
  return {
    pass: 'shape-inference',
    changed: stats.added + stats.updated > 0,
    details: {
      values,
      typed,
      ranked,
      fullyStatic,
      valueInfoAdded: stats.added,
      valueInfoUpdated: stats.updated,
      conflicts: table.conflicts,
      unsupportedOps: table.unsupported,
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Recording shapes by running the model
// ---------------------------------------------------------------------------------------------------------------

/**
 * Runs a model given as ONNX bytes on one set of feeds and returns (at least) the dims of the requested outputs.
 * In Node this wraps an onnxruntime-node session; src/ir never imports a runtime.
 */
export type ShapeRunner<F> = (
  modelBytes: Uint8Array,
  feeds: F,
  outputNames: readonly string[],
) => Promise<Record<string, { dims: readonly number[] }>> | Record<string, { dims: readonly number[] }>;

export interface RecordShapesOptions extends ShapeInferenceOptions {
  /** Only tap these values (default: every node output of the main graph whose element type is known). */
  names?: readonly string[];
}

/**
 * Fallback for what static inference cannot see: exposes every intermediate of the main graph whose element
 * type is known (from inference or value_info) as a graph output, runs the model on each set of feeds through
 * `run`, and records the observed shapes in value_info. Dims inferred as symbols stay symbols; other dims are
 * recorded as observed when every run saw the same size, else left unknown (so with a single set of feeds, a
 * dim inference could not find is recorded as that run's size: give samples that vary along dynamic axes).
 * Values whose element type stays unknown are not tapped (counted in `untyped`).
 */
export async function recordShapesByRunning<F>(
  model: Model,
  feeds: readonly F[],
  run: ShapeRunner<F>,
  options: RecordShapesOptions = {},
): Promise<PassRecord> {
  const table = inferTypes(model, options);
  const g = model.graph;
  const outputNames = new Set(g.outputs.map((o) => o.name));
  const want = options.names ? new Set(options.names) : undefined;
  const taps: { name: string; elemType: DataType }[] = [];
  let untyped = 0;
  for (const node of g.nodes) {
    for (const name of node.outputs) {
      if (!name || outputNames.has(name) || (want && !want.has(name))) continue;
      const t = table.get(name);
      if (t?.elemType === undefined || t.elemType === DataType.UNDEFINED) {
        untyped++;
        continue;
      }
      taps.push({ name, elemType: t.elemType });
    }
  }
  const proto = modelToProto(model);
  for (const t of taps)
    proto.graph!.output!.push({ name: t.name, type: { tensor_type: { elem_type: t.elemType } } });
  const bytes = encodeModelProto(proto);
  const names = [...g.outputs.map((o) => o.name), ...taps.map((t) => t.name)];
  const observed = new Map<string, Dim[]>();
  for (const f of feeds) {
    const res = await run(bytes, f, names);
    for (const name of names) {
      const r = res[name];
      if (!r) continue;
      const dims = [...r.dims];
      const prev = observed.get(name);
      if (!prev) observed.set(name, dims);
      else if (prev.length !== dims.length) observed.set(name, []);
      else
        observed.set(
          name,
          prev.map((d, i) => (d === dims[i] ? d : null)),
        );
    }
  }
  const stats: WriteStats = { added: 0, updated: 0 };
  const mismatches: { name: string; inferred: Dim[]; observed: Dim[] }[] = [];
  let mismatchCount = 0;
  const lookup = (name: string): ValueType | undefined => {
    const inferred = table.get(name);
    const obs = observed.get(name);
    if (!obs || (obs.length === 0 && inferred?.shape?.length !== 0)) return inferred;
    // A symbol from inference says more than a size seen in a few runs; elsewhere the observation wins.
    const shape = obs.map((d, i) => {
      const t = inferred?.shape?.length === obs.length ? inferred.shape[i] : null;
      return typeof t === 'string' || d === null ? t : d;
    });
    if (inferred?.shape) {
      const bad =
        inferred.shape.length !== obs.length ||
        inferred.shape.some((d, i) => num(d) && num(obs[i]) && d !== obs[i]);
      if (bad) {
        mismatchCount++;
        if (mismatches.length < 20) mismatches.push({ name, inferred: inferred.shape, observed: obs });
      }
    }
    return { elemType: inferred?.elemType, shape };
  };
  writeGraph(g, lookup, stats);
  return {
    pass: 'record-shapes',
    changed: stats.added + stats.updated > 0,
    details: {
      tapped: taps.length,
      untyped,
      runs: feeds.length,
      observed: observed.size,
      valueInfoAdded: stats.added,
      valueInfoUpdated: stats.updated,
      mismatchCount,
      mismatches,
    },
  };
}
