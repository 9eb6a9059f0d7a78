/**
 * Gradients of data-movement ops. Reshape-like ops reshape dY back; Transpose, Concat/Split and DepthToSpace /
 * SpaceToDepth invert themselves; Slice with step 1 and constant Pad pad or crop dY; Tile sums dY over the
 * repeats; Gather and GatherElements scatter dY back with ScatterND / ScatterElements (reduction='add').
 * Other pure selections (strided or reversed Slice, Pad reflect/edge/wrap, Slice or Tile with run-time
 * parameters) use the "iota trick": the forward op is applied, with the same parameters, to an int64 tensor
 * holding each element's flat index, which says where every output element came from; dY is then scattered
 * back with ScatterElements(reduction='add'). Resize (any separable mode) multiplies dY by the transposed
 * interpolation matrix of each resized axis, and those matrices are made by Resize itself from identity
 * matrices.
 *
 * Opset notes: reduction='add' needs opset 16. Below it, Gather, GatherElements and the selections that may
 * repeat an element (Pad reflect/edge, Tile with run-time repeats) fall back to the iota trick with a one-hot
 * matrix product, which holds numel(x)·numel(y) elements: fine for small tensors only. The iota trick needs
 * Range (opset 11).
 */
import { type AttrInput, floatAttr } from '../../../ir/builder.js';
import { Tensor } from '../../../ir/tensor.js';
import { DataType } from '../../../onnx/dtype.js';
import { storageConstructor } from '../../../tensor.js';
import type { GradContext, GradientRule } from '../rule.js';
import { noGradient } from '../rule.js';
import { constantValues, isFloatValue } from './elementwise.js';

// ---------------------------------------------------------------------------------------------------------------
// Helpers shared with other rule files
// ---------------------------------------------------------------------------------------------------------------

/** The shape of a forward value as an int64 tensor: a constant when static (and free of zeros), else Shape. */
export function shapeTensor(ctx: GradContext, name: string): string {
  const s = ctx.shape(name);
  if (s?.every((d) => typeof d === 'number' && d > 0)) return ctx.int64s(s as number[]);
  return ctx.shapeOf(name);
}

/** A one-element tensor of `dtype` holding 0 (for ConstantOfShape's value). */
export function zeroValue(dtype: DataType): Tensor {
  const C = storageConstructor(dtype) as unknown as new (n: number) => Tensor['data'];
  return new Tensor('value', dtype, [1], new C(1));
}

/** Zeros with a given shape tensor and element type. */
export function zerosOfShape(ctx: GradContext, shape: string, dtype: DataType): string {
  return ctx.op('ConstantOfShape', [shape], { value: zeroValue(dtype) });
}

/** The element type of a forward float value (float32 when unknown). */
export function floatTypeOf(ctx: GradContext, name: string): DataType {
  return ctx.elemType(name) ?? DataType.FLOAT;
}

/** Unsqueeze with axes as an attribute (opset < 13) or an input. */
export function unsqueeze(ctx: GradContext, x: string, axes: number[]): string {
  if (ctx.opset >= 13) return ctx.op('Unsqueeze', [x, ctx.int64s(axes)]);
  return ctx.op('Unsqueeze', [x], { axes });
}

/** ReduceSum with axes as an attribute (opset < 13) or an input. */
export function reduceSum(ctx: GradContext, x: string, axes: number[], keepdims: 0 | 1): string {
  if (ctx.opset >= 13) return ctx.op('ReduceSum', [x, ctx.int64s(axes)], { keepdims });
  return ctx.op('ReduceSum', [x], { axes, keepdims });
}

function normAxis(a: number, rank: number): number {
  return a < 0 ? a + rank : a;
}

function rankOf(ctx: GradContext, name: string): number {
  const s = ctx.shape(name);
  if (!s) ctx.staticShape(name); // throws E_SHAPE naming the value
  return s!.length;
}

/** The forward node's attributes, to apply the same op to another tensor. */
function sameAttrs(ctx: GradContext, drop: string[] = []): Record<string, AttrInput> {
  return Object.fromEntries(
    ctx.node.attributes.filter((a) => !drop.includes(a.name)).map((a) => [a.name, a]),
  );
}

/** A multi-output node emitted for the gradient. */
function multi(ctx: GradContext, opType: string, inputs: string[], outputs: number, attrs = {}): string[] {
  const name = `${ctx.node.name || ctx.node.opType}_grad_${opType}`;
  return ctx.b.node(opType, inputs, { outputs, attrs, name }).outputs;
}

/**
 * The iota trick for a pure selection op: `select` applies the forward op to an int64 tensor of x's shape that
 * holds flat indices; dY is scattered back to where each output element came from. `injective`: no element is
 * selected twice (then plain ScatterElements suffices below opset 16).
 */
export function selectionGradient(
  ctx: GradContext,
  x: string,
  dy: string,
  select: (iota: string) => string,
  injective: boolean,
): string {
  const s = ctx.shape(x);
  const count = s?.every((d) => typeof d === 'number')
    ? ctx.int64s([(s as number[]).reduce((a, b) => a * b, 1)], [])
    : ctx.op('Size', [x]);
  const iota = ctx.op('Range', [ctx.int64s([0], []), count, ctx.int64s([1], [])]);
  const xShape = shapeTensor(ctx, x);
  const picked = ctx.op('Reshape', [select(ctx.op('Reshape', [iota, xShape])), ctx.int64s([-1])]);
  const flatDy = ctx.op('Reshape', [dy, ctx.int64s([-1])]);
  const type = floatTypeOf(ctx, x);
  let flat: string;
  if (ctx.opset >= 16 || injective) {
    const zeros = zerosOfShape(ctx, ctx.op('Reshape', [count, ctx.int64s([1])]), type);
    const attrs: Record<string, AttrInput> = ctx.opset >= 16 ? { axis: 0, reduction: 'add' } : { axis: 0 };
    flat = ctx.op('ScatterElements', [zeros, picked, flatDy], attrs);
  } else {
    // onehot[j, i] = (picked[j] == i); dx = dY_flat · onehot.
    const onehot = ctx.op('Cast', [ctx.op('Equal', [unsqueeze(ctx, picked, [1]), iota])], { to: type });
    flat = ctx.op('MatMul', [unsqueeze(ctx, flatDy, [0]), onehot]);
  }
  return ctx.op('Reshape', [flat, xShape]);
}

/** Reshape dY back to the input's shape (Flatten, Reshape, Squeeze, Unsqueeze). */
function reshapeBack(op: string): GradientRule {
  return {
    op,
    grad(ctx) {
      if (!ctx.needs[0]) return [];
      const x = ctx.node.inputs[0];
      return [ctx.op('Reshape', [ctx.dY[0]!, shapeTensor(ctx, x)])];
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------------------------

const transpose: GradientRule = {
  op: 'Transpose',
  grad(ctx) {
    const x = ctx.node.inputs[0];
    const r = rankOf(ctx, x);
    const perm = ctx.node.attrInts('perm') ?? Array.from({ length: r }, (_, i) => r - 1 - i);
    const inv = new Array<number>(r);
    perm.forEach((p, i) => {
      inv[p] = i;
    });
    return [ctx.op('Transpose', [ctx.dY[0]!], { perm: inv })];
  },
};

const concat: GradientRule = {
  op: 'Concat',
  grad(ctx) {
    const xs = ctx.node.inputs;
    const axis = normAxis(ctx.node.attrInt('axis', 0), rankOf(ctx, xs[0]));
    const sizes = xs.map((x) => {
      const d = ctx.shape(x)?.[axis];
      if (typeof d !== 'number') ctx.staticShape(x);
      return d as number;
    });
    if (xs.length === 1) return [ctx.dY[0]];
    const parts =
      ctx.opset >= 13
        ? multi(ctx, 'Split', [ctx.dY[0]!, ctx.int64s(sizes)], xs.length, { axis })
        : multi(ctx, 'Split', [ctx.dY[0]!], xs.length, { axis, split: sizes });
    return parts.map((p, k) => (ctx.needs[k] ? p : undefined));
  },
};

const split: GradientRule = {
  op: 'Split',
  grad(ctx) {
    // Concat of the output gradients, with zeros for outputs no gradient reached. num_outputs (18) and the split
    // sizes (attribute < 13, input ≥ 13) only decide the outputs' shapes, which the zeros copy.
    const x = ctx.node.inputs[0];
    const axis = normAxis(ctx.node.attrInt('axis', 0), rankOf(ctx, x));
    const type = floatTypeOf(ctx, x);
    const parts = ctx.node.outputs.map((y, k) => ctx.dY[k] ?? zerosOfShape(ctx, shapeTensor(ctx, y), type));
    return [parts.length === 1 ? parts[0] : ctx.op('Concat', parts, { axis })];
  },
};

/** Slice parameters as numbers where they are constants. */
function sliceParams(ctx: GradContext) {
  const n = ctx.node;
  if (ctx.opset < 10) {
    return {
      starts: n.attrInts('starts'),
      ends: n.attrInts('ends'),
      axes: n.attrInts('axes'),
      steps: undefined,
    };
  }
  const opt = (i: number) => (n.inputs[i] ? constantValues(ctx, n.inputs[i]) : undefined);
  return {
    starts: opt(1),
    ends: opt(2),
    axes: n.inputs[3] ? (opt(3) ?? null) : undefined,
    steps: n.inputs[4] ? (opt(4) ?? null) : undefined,
  };
}

const slice: GradientRule = {
  op: 'Slice',
  grad(ctx) {
    const x = ctx.node.inputs[0];
    const d = ctx.dY[0]!;
    const xs = ctx.shape(x);
    const p = sliceParams(ctx);
    const r = xs?.length ?? 0;
    const axes = p.axes === undefined ? p.starts?.map((_, i) => i) : (p.axes ?? undefined);
    const steps = p.steps === undefined ? p.starts?.map(() => 1) : (p.steps ?? undefined);
    const static_ = xs?.every((v) => typeof v === 'number') && p.starts && p.ends && axes && steps;
    if (static_ && steps!.every((s) => s === 1)) {
      // Step 1: pad dY back with zeros, clamping starts/ends as Slice does.
      const dims = xs as number[];
      const pads = new Array<number>(2 * r).fill(0);
      axes!.forEach((a0, i) => {
        const a = normAxis(a0, r);
        const dim = dims[a];
        const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + dim : v, 0), dim);
        const s = clamp(p.starts![i]);
        const e = Math.max(clamp(p.ends![i]), s);
        pads[a] = s;
        pads[a + r] = dim - e;
      });
      if (ctx.opset >= 11) return [ctx.op('Pad', [d, ctx.int64s(pads)])];
      return [ctx.op('Pad', [d], { pads })];
    }
    // Any steps (negative included) or parameters known only at run time: the iota trick.
    const rest = ctx.node.inputs.slice(1);
    return [selectionGradient(ctx, x, d, (iota) => ctx.op('Slice', [iota, ...rest], sameAttrs(ctx)), true)];
  },
};

const gather: GradientRule = {
  op: 'Gather',
  grad(ctx) {
    const [x, indices] = ctx.node.inputs;
    const d = ctx.dY[0]!;
    const r = rankOf(ctx, x);
    const k = normAxis(ctx.node.attrInt('axis', 0), r);
    const dimK = ctx.shape(x)?.[k];
    const q = ctx.shape(indices)?.length;
    if (ctx.opset < 16 || typeof dimK !== 'number' || q === undefined) {
      return [selectionGradient(ctx, x, d, (iota) => ctx.op('Gather', [iota, indices], { axis: k }), false)];
    }
    // ScatterND(add) into x with axis k moved to the front; indices normalized into [0, dim) by Mod.
    let idx = indices;
    if (ctx.elemType(indices) !== DataType.INT64) idx = ctx.op('Cast', [idx], { to: DataType.INT64 });
    idx = unsqueeze(ctx, ctx.op('Mod', [idx, ctx.int64s([dimK], [])]), [q]);
    const xs = ctx.staticShape(x);
    const front = [dimK, ...xs.slice(0, k), ...xs.slice(k + 1)];
    let upd = d;
    if (k > 0) {
      // dY: x[:k] + I + x[k+1:] → I + x[:k] + x[k+1:]
      const perm = [
        ...Array.from({ length: q }, (_, i) => k + i),
        ...Array.from({ length: k }, (_, i) => i),
        ...Array.from({ length: r - k - 1 }, (_, i) => k + q + i),
      ];
      upd = ctx.op('Transpose', [d], { perm });
    }
    const zeros = zerosOfShape(ctx, ctx.int64s(front), floatTypeOf(ctx, x));
    let dx = ctx.op('ScatterND', [zeros, idx, upd], { reduction: 'add' });
    if (k > 0) {
      const back = [
        ...Array.from({ length: k }, (_, i) => i + 1),
        0,
        ...Array.from({ length: r - k - 1 }, (_, i) => k + 1 + i),
      ];
      dx = ctx.op('Transpose', [dx], { perm: back });
    }
    return [dx];
  },
};

const gatherElements: GradientRule = {
  op: 'GatherElements',
  grad(ctx) {
    const [x, indices] = ctx.node.inputs;
    const d = ctx.dY[0]!;
    const axis = ctx.node.attrInt('axis', 0);
    if (ctx.opset < 16) {
      return [
        selectionGradient(ctx, x, d, (iota) => ctx.op('GatherElements', [iota, indices], { axis }), false),
      ];
    }
    const zeros = zerosOfShape(ctx, shapeTensor(ctx, x), floatTypeOf(ctx, x));
    return [ctx.op('ScatterElements', [zeros, indices, d], { axis, reduction: 'add' })];
  },
};

const pad: GradientRule = {
  op: 'Pad',
  grad(ctx) {
    const n = ctx.node;
    const x = n.inputs[0];
    const d = ctx.dY[0]!;
    const mode = n.attrString('mode', 'constant');
    if (mode !== 'constant') {
      // reflect / edge / wrap select (and repeat) input elements: the iota trick.
      if (!ctx.needs[0]) return [];
      const rest = ctx.opset >= 11 ? [n.inputs[1] ?? '', '', ...(n.inputs[3] ? [n.inputs[3]] : [])] : [];
      while (rest.length && !rest[rest.length - 1]) rest.pop();
      return [selectionGradient(ctx, x, d, (iota) => ctx.op('Pad', [iota, ...rest], sameAttrs(ctx)), false)];
    }
    // Constant mode: Pad dY with the negated pads (negative pads crop; regions the forward cropped get 0).
    let dx: string;
    if (ctx.opset < 11) {
      dx = ctx.op('Pad', [d], { pads: n.attrInts('pads')!.map((v) => -v) });
    } else {
      const pv = constantValues(ctx, n.inputs[1]);
      const neg = pv ? ctx.int64s(pv.map((v) => -v)) : ctx.op('Neg', [n.inputs[1]]);
      dx = ctx.op('Pad', n.inputs[3] ? [d, neg, '', n.inputs[3]] : [d, neg]);
    }
    let dc: string | undefined;
    if (ctx.opset >= 11 && n.inputs[2] && ctx.needs[2] && isFloatValue(ctx, n.inputs[2])) {
      // The padding value's gradient: everything in dY that did not come from x.
      const all = (t: string) => ctx.op('ReduceSum', [t], { keepdims: 0 });
      dc = ctx.op('Reshape', [ctx.op('Sub', [all(d), all(dx)]), ctx.shapeOf(n.inputs[2])]);
    }
    return [ctx.needs[0] ? dx : undefined, undefined, dc];
  },
};

const tile: GradientRule = {
  op: 'Tile',
  grad(ctx) {
    const [x, repeatsName] = ctx.node.inputs;
    const d = ctx.dY[0]!;
    const xs = ctx.shape(x);
    const repeats = constantValues(ctx, repeatsName);
    if (repeats && xs?.every((v) => typeof v === 'number')) {
      // y viewed as [r0, d0, r1, d1, …]: sum over the repeat axes.
      const dims = xs as number[];
      const view = dims.flatMap((v, i) => [repeats[i], v]);
      return [
        reduceSum(
          ctx,
          ctx.op('Reshape', [d, ctx.int64s(view)]),
          dims.map((_, i) => 2 * i),
          0,
        ),
      ];
    }
    return [selectionGradient(ctx, x, d, (iota) => ctx.op('Tile', [iota, repeatsName]), false)];
  },
};

/** DepthToSpace (DCR/CRD) and SpaceToDepth are Reshape → Transpose → Reshape; the gradient runs it backwards. */
function depthSpace(op: 'DepthToSpace' | 'SpaceToDepth'): GradientRule {
  return {
    op,
    grad(ctx) {
      const x = ctx.node.inputs[0];
      const [n, c, h, w] = ctx.staticShape(x);
      const b = ctx.node.attrInt('blocksize')!;
      let view: number[];
      let perm: number[];
      if (op === 'SpaceToDepth') {
        view = [n, c, h / b, b, w / b, b];
        perm = [0, 3, 5, 1, 2, 4];
      } else if (ctx.node.attrString('mode', 'DCR') === 'CRD') {
        view = [n, c / (b * b), b, b, h, w];
        perm = [0, 1, 4, 2, 5, 3];
      } else {
        view = [n, b, b, c / (b * b), h, w];
        perm = [0, 3, 4, 1, 5, 2];
      }
      const mid = perm.map((p) => view[p]);
      const inv = new Array<number>(6);
      perm.forEach((p, i) => {
        inv[p] = i;
      });
      const t = ctx.op('Transpose', [ctx.op('Reshape', [ctx.dY[0]!, ctx.int64s(mid)])], { perm: inv });
      return [ctx.op('Reshape', [t, ctx.int64s([n, c, h, w])])];
    },
  };
}

const resize: GradientRule = {
  op: 'Resize',
  grad(ctx) {
    // Resize is linear in x and, for every mode without antialias across axes, separable: y = x ×_k A_k over the
    // resized axes k, with A_k the [out, in] interpolation matrix of axis k. A_k is computed by Resize itself,
    // applied along axis k to an identity matrix laid out on axes (k, m); dX = dY ×_k A_kᵀ, one MatMul per axis.
    const n = ctx.node;
    const x = n.inputs[0];
    const y = n.outputs[0];
    const xs = ctx.staticShape(x);
    const ys = ctx.staticShape(y);
    const r = xs.length;
    if (r < 2) throw noGradient(n, 'Resize gradients need inputs of rank 2 or more');
    const policy = n.attrString('keep_aspect_ratio_policy', 'stretch');
    const axesAttr = n.attrInts('axes')?.map((a) => normAxis(a, r));
    const axes = axesAttr ?? Array.from({ length: r }, (_, i) => i);
    const full = <T>(vals: T[] | undefined, fill: (i: number) => T): T[] =>
      Array.from({ length: r }, (_, i) => (vals && axes.includes(i) ? vals[axes.indexOf(i)] : fill(i)));
    const scalesName = ctx.opset < 11 ? n.inputs[1] : n.inputs[2];
    const sizesName = ctx.opset < 11 ? undefined : n.inputs[3];
    const useSizes = !!sizesName && (ctx.shape(sizesName)?.[0] ?? 1) !== 0;
    if (useSizes && policy !== 'stretch') {
      throw noGradient(n, `Resize with keep_aspect_ratio_policy '${policy}' has no gradient rule`);
    }
    let scales: number[] | undefined;
    if (!useSizes) {
      const s = constantValues(ctx, scalesName ?? '');
      if (!s) throw noGradient(n, 'the Resize gradient needs constant scales');
      scales = full(s, () => 1);
    }
    const roiVals = ctx.opset >= 11 && n.inputs[1] ? constantValues(ctx, n.inputs[1]) : undefined;
    const cropping = n.attrString('coordinate_transformation_mode', 'half_pixel') === 'tf_crop_and_resize';
    if (cropping && !roiVals) throw noGradient(n, 'the Resize gradient needs a constant roi');
    const nA = axes.length;
    const roi = cropping
      ? {
          start: full(roiVals!.slice(0, nA), () => 0),
          end: full(roiVals!.slice(nA), () => 1),
        }
      : undefined;
    const type = floatTypeOf(ctx, x);
    // Values outside a tf_crop_and_resize roi are the constant extrapolation_value, not a function of x: 0 in A_k.
    const attrs: Record<string, AttrInput> = sameAttrs(ctx, ['axes', 'keep_aspect_ratio_policy']);
    if (ctx.opset >= 11) attrs.extrapolation_value = floatAttr('extrapolation_value', 0);
    const emptyFloats = () => ctx.constant([], [0]);
    let t = ctx.dY[0]!;
    for (let k = 0; k < r; k++) {
      const L = xs[k];
      const OL = ys[k];
      // Scale 1 (or size = input size) without a crop is the identity, whatever the mode.
      const identity = useSizes ? OL === L : scales![k] === 1;
      if (identity && (!roi || (roi.start[k] === 0 && roi.end[k] === 1))) continue;
      const m = k === 0 ? 1 : 0;
      const eDims = xs.map((_, i) => (i === k || i === m ? L : 1));
      const eye = ctx.op('EyeLike', [zerosOfShape(ctx, ctx.int64s([L, L]), type)]);
      const e = ctx.op('Reshape', [eye, ctx.int64s(eDims)]);
      const axisOnly = <T>(v: T, one: T, i: number) => (i === k ? v : one);
      let inputs: string[];
      if (ctx.opset < 11) {
        inputs = [
          e,
          ctx.constant(
            xs.map((_, i) => axisOnly(scales![k], 1, i)),
            [r],
          ),
        ];
      } else {
        const roiIn = roi
          ? ctx.constant(
              [
                ...xs.map((_, i) => axisOnly(roi.start[k], 0, i)),
                ...xs.map((_, i) => axisOnly(roi.end[k], 1, i)),
              ],
              [2 * r],
            )
          : ctx.opset < 13
            ? emptyFloats()
            : '';
        if (useSizes) {
          inputs = [
            e,
            roiIn,
            ctx.opset < 13 ? emptyFloats() : '',
            ctx.int64s(eDims.map((v, i) => (i === k ? OL : v))),
          ];
        } else {
          inputs = [
            e,
            roiIn,
            ctx.constant(
              xs.map((_, i) => axisOnly(scales![k], 1, i)),
              [r],
            ),
          ];
        }
      }
      const res = ctx.op('Resize', inputs, attrs);
      // Row-major over (m, k): [L, OL] = A_kᵀ when m < k, [OL, L] = A_k when m > k.
      const mat = ctx.op('Reshape', [res, ctx.int64s(m < k ? [L, OL] : [OL, L])]);
      const aT = m < k ? mat : ctx.op('Transpose', [mat], { perm: [1, 0] });
      const a = m < k ? ctx.op('Transpose', [mat], { perm: [1, 0] }) : mat;
      if (k === r - 1) {
        t = ctx.op('MatMul', [t, a]);
      } else if (k === r - 2) {
        t = ctx.op('MatMul', [aT, t]);
      } else {
        const perm = [...Array.from({ length: r }, (_, i) => i).filter((i) => i !== k), k];
        const inv = new Array<number>(r);
        perm.forEach((p, i) => {
          inv[p] = i;
        });
        t = ctx.op('Transpose', [ctx.op('MatMul', [ctx.op('Transpose', [t], { perm }), a])], { perm: inv });
      }
    }
    return [t];
  },
};

export const rules: GradientRule[] = [
  reshapeBack('Flatten'),
  reshapeBack('Reshape'),
  reshapeBack('Squeeze'),
  reshapeBack('Unsqueeze'),
  transpose,
  concat,
  split,
  slice,
  gather,
  gatherElements,
  pad,
  tile,
  resize,
  depthSpace('DepthToSpace'),
  depthSpace('SpaceToDepth'),
];
