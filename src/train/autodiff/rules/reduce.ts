/**
 * Gradients of the Reduce* ops. dY is first given back the reduced axes as size-1 dims ("kept" form: Unsqueeze when
 * keepdims = 0), then broadcast against x. Axes come from the attribute (ReduceSum < 13, the others < 18) or the
 * second input; a constant input is read statically, a computed one is passed on to Unsqueeze/ReduceSum as is.
 * Empty axes reduce everything, unless noop_with_empty_axes = 1: then ONNX Runtime reduces each element alone
 * (x for Sum/Mean/Max/Min, x² for SumSquare, |x| for L1/L2, log x for LogSum), and the same formulas hold with
 * nothing to broadcast.
 *
 * ReduceMax / ReduceMin send the gradient to the elements equal to the result, split evenly among ties
 * (PyTorch's amax/amin convention; ONNX Runtime's own training builder gives every tie the full gradient).
 */
import { DataType } from '../../../onnx/dtype.js';
import type { GradContext, GradientRule } from '../rule.js';
import { constantValues } from './elementwise.js';
import { floatTypeOf, reduceSum, shapeTensor, unsqueeze } from './shape.js';

interface Reduction {
  /** Normalized, sorted reduced axes; undefined when given by a computed input (`axesInput`). */
  axes?: number[];
  axesInput?: string;
  keepdims: boolean;
  /** noop_with_empty_axes with empty axes: the op is the identity. */
  identity: boolean;
}

function reduction(ctx: GradContext): Reduction {
  const n = ctx.node;
  const keepdims = n.attrInt('keepdims', 1) === 1;
  const noop = n.attrInt('noop_with_empty_axes', 0) === 1;
  const rank = ctx.shape(n.inputs[0])?.length;
  let axes = n.attrInts('axes');
  const input = n.inputs[1];
  if (!axes && input) {
    axes = constantValues(ctx, input);
    if (!axes) return { axesInput: input, keepdims, identity: false };
  }
  if (!axes?.length) {
    if (noop) return { axes: [], keepdims, identity: true };
    if (rank === undefined) ctx.staticShape(n.inputs[0]); // throws: "all axes" needs the rank
    axes = Array.from({ length: rank! }, (_, i) => i);
  }
  const norm = axes.map((a) => (a < 0 ? a + rank! : a));
  if (norm.some((a) => Number.isNaN(a))) ctx.staticShape(n.inputs[0]);
  return { axes: norm.sort((a, b) => a - b), keepdims, identity: false };
}

/** `t` (shaped like the output) with the reduced axes put back as size-1 dims. */
function kept(ctx: GradContext, red: Reduction, t: string): string {
  if (red.keepdims || red.identity) return t;
  if (red.axes) return unsqueeze(ctx, t, red.axes);
  return ctx.op('Unsqueeze', [t, red.axesInput!]);
}

/** ReduceSum over the same axes as the forward node, keeping dims. */
function sumLikeForward(ctx: GradContext, red: Reduction, t: string): string {
  if (red.identity) return t;
  if (red.axes) return reduceSum(ctx, t, red.axes, 1);
  return ctx.op('ReduceSum', [t, red.axesInput!], {
    keepdims: 1,
    noop_with_empty_axes: ctx.node.attrInt('noop_with_empty_axes', 0),
  });
}

/**
 * A rule from dX = f(ctx, dYk, yk, x), with dYk and yk the gradient and output in kept form. `expand`: f's result
 * does not involve x, so it is broadcast to x's shape.
 */
function reduceRule(
  op: string,
  f: (ctx: GradContext, dk: string, yk: () => string, x: string, red: Reduction) => string,
  expand = false,
): GradientRule {
  return {
    op,
    grad(ctx) {
      if (!ctx.needs[0]) return [];
      const x = ctx.node.inputs[0];
      const red = reduction(ctx);
      const dk = kept(ctx, red, ctx.dY[0]!);
      let ykv: string | undefined;
      const yk = () => {
        ykv ??= kept(ctx, red, ctx.node.outputs[0]);
        return ykv;
      };
      const dx = f(ctx, dk, yk, x, red);
      return [expand && !red.identity ? ctx.op('Expand', [dx, shapeTensor(ctx, x)]) : dx];
    },
  };
}

/** Number of elements reduced into each output element, as a scalar of x's type. */
function reducedCount(ctx: GradContext, x: string): string {
  const y = ctx.node.outputs[0];
  const xs = ctx.shape(x);
  const ys = ctx.shape(y);
  const numel = (s: typeof xs) =>
    s?.every((d) => typeof d === 'number') ? (s as number[]).reduce((a, b) => a * b, 1) : undefined;
  const nx = numel(xs);
  const ny = numel(ys);
  if (nx !== undefined && ny !== undefined) return ctx.constant([ny === 0 ? 0 : nx / ny], [], x);
  return ctx.op('Cast', [ctx.op('Div', [ctx.op('Size', [x]), ctx.op('Size', [y])])], {
    to: floatTypeOf(ctx, x),
  });
}

/** ReduceMax / ReduceMin: the gradient goes to the arg-max/min elements, split evenly among ties. */
function extremum(op: 'ReduceMax' | 'ReduceMin'): GradientRule {
  return reduceRule(op, (ctx, dk, yk, x, red) => {
    if (red.identity) return dk;
    const mask = ctx.op('Cast', [ctx.op('Equal', [x, yk()])], { to: ctx.elemType(x) ?? DataType.FLOAT });
    const count = sumLikeForward(ctx, red, mask);
    return ctx.op('Mul', [mask, ctx.op('Div', [dk, count])]);
  });
}

export const rules: GradientRule[] = [
  reduceRule('ReduceSum', (_ctx, dk) => dk, true),
  reduceRule(
    'ReduceMean',
    (ctx, dk, _yk, x, red) => (red.identity ? dk : ctx.op('Div', [dk, reducedCount(ctx, x)])),
    true,
  ),
  reduceRule('ReduceSumSquare', (ctx, dk, _yk, x) =>
    ctx.op('Mul', [x, ctx.op('Mul', [dk, ctx.constant([2], [], x)])]),
  ),
  reduceRule('ReduceL1', (ctx, dk, _yk, x) => ctx.op('Mul', [ctx.op('Sign', [x]), dk])),
  reduceRule('ReduceL2', (ctx, dk, yk, x) => {
    // x · dY / y, with 0 where y = 0 (the subgradient at the origin).
    const zero = ctx.constant([0], [], x);
    const q = ctx.op('Where', [ctx.op('Equal', [yk(), zero]), zero, ctx.op('Div', [dk, yk()])]);
    return ctx.op('Mul', [x, q]);
  }),
  reduceRule('ReduceLogSumExp', (ctx, dk, yk, x) =>
    ctx.op('Mul', [dk, ctx.op('Exp', [ctx.op('Sub', [x, yk()])])]),
  ),
  reduceRule('ReduceLogSum', (ctx, dk, yk) => ctx.op('Div', [dk, ctx.op('Exp', [yk()])]), true),
  extremum('ReduceMax'),
  extremum('ReduceMin'),
];
