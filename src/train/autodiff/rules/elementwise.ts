/**
 * Gradients of elementwise ops. Broadcasting inputs get their gradient summed back over the broadcast axes with
 * `ctx.unbroadcast` (ReduceSum over statically known axes, then Reshape). A value used twice by one node (`x*x`)
 * gets both contributions: the engine adds the gradients it returns per input.
 *
 * Min/Max (variadic) split the gradient evenly among tied inputs (PyTorch's convention for ties); the sum over
 * inputs of the gradients is then exactly dY.
 */
import { constantNodeTensor, tensorNumbers } from '../../../ir/passes/shape-inference.js';
import { DataType, isFloatType } from '../../../onnx/dtype.js';
import type { GradContext, GradientRule } from '../rule.js';

/** Whether a forward value has a floating-point element type (unknown types count as float). */
export function isFloatValue(ctx: Pick<GradContext, 'elemType'>, name: string): boolean {
  const t = ctx.elemType(name);
  return t === undefined || isFloatType(t);
}

/** Gradient of input k given the output-shaped gradient `dx`, or undefined when input k needs none. */
function toInput(ctx: GradContext, k: number, dx: () => string): string | undefined {
  const x = ctx.node.inputs[k];
  if (!ctx.needs[k] || !x || !isFloatValue(ctx, x)) return undefined;
  return ctx.unbroadcast(dx(), x);
}

/** A single-output unary rule dX = f(ctx, dY, x, y). */
function unary(op: string, f: (ctx: GradContext, d: string, x: string, y: string) => string): GradientRule {
  return {
    op,
    grad(ctx) {
      const d = ctx.dY[0];
      if (!d || !ctx.needs[0]) return [];
      return [f(ctx, d, ctx.node.inputs[0], ctx.node.outputs[0])];
    },
  };
}

/** Largest constant read into JS numbers (rule parameters: axes, pads, scales, exponents). */
const MAX_CONSTANT = 4096;

/**
 * The values of a constant forward value: an initializer that is not also a graph input, a Constant node's
 * output, or a small integer tensor that shape inference computed (shape arithmetic). Undefined otherwise.
 */
export function constantValues(ctx: Pick<GradContext, 'b' | 'types'>, name: string): number[] | undefined {
  if (!name) return undefined;
  const g = ctx.b.graph;
  if (g.inputs.some((v) => v.name === name)) return undefined;
  const t = g.initializer(name);
  if (t) return t.size <= MAX_CONSTANT ? tensorNumbers(t) : undefined;
  const v = ctx.types.value(name);
  if (v?.every((e) => typeof e === 'number')) return v as number[];
  const producer = g.nodes.find((n) => n.opType === 'Constant' && n.outputs[0] === name);
  const c = producer && constantNodeTensor(producer);
  return c && tensorNumbers(c);
}

/** The value of a scalar (one-element) constant, if it is one. */
function scalarConstant(ctx: GradContext, name: string): number | undefined {
  const v = constantValues(ctx, name);
  return v?.length === 1 ? v[0] : undefined;
}

/** `e` cast to x's element type where they differ (Pow's exponent may be another type, even an integer). */
function castLike(ctx: GradContext, e: string, x: string): string {
  const te = ctx.elemType(e);
  const tx = ctx.elemType(x);
  if (te === undefined || tx === undefined || te === tx) return e;
  return ctx.op('Cast', [e], { to: tx });
}

const pow: GradientRule = {
  op: 'Pow',
  grad(ctx) {
    const d = ctx.dY[0]!;
    const [x, e] = ctx.node.inputs;
    const y = ctx.node.outputs[0];
    const dx = toInput(ctx, 0, () => {
      // dX = dY · e · x^(e−1); with x^(e−1) computed directly, so x = 0 is fine for e ≥ 1.
      const c = scalarConstant(ctx, e);
      if (c !== undefined) {
        if (c === 1) return d;
        if (c === 0) return ctx.op('Mul', [d, ctx.constant([0], [], x)]);
        const scaled = ctx.op('Mul', [d, ctx.constant([c], [], x)]);
        if (c === 2) return ctx.op('Mul', [scaled, x]);
        return ctx.op('Mul', [scaled, ctx.op('Pow', [x, ctx.constant([c - 1], [], x)])]);
      }
      const ec = castLike(ctx, e, x);
      const em1 = ctx.op('Sub', [ec, ctx.constant([1], [], x)]);
      return ctx.op('Mul', [ctx.op('Mul', [d, ec]), ctx.op('Pow', [x, em1])]);
    });
    const de = toInput(ctx, 1, () => {
      // dE = dY · ln(x) · y, defined for x > 0; where y = 0 (x = 0, e > 0) the limit 0 is used instead of NaN.
      const zero = ctx.constant([0], [], x);
      const t = ctx.op('Mul', [ctx.op('Mul', [d, ctx.op('Log', [x])]), y]);
      const masked = ctx.op('Where', [ctx.op('Equal', [y, zero]), zero, t]);
      return castLike(ctx, masked, e);
    });
    return [dx, de];
  },
};

/** Variadic Min/Max: the gradient goes to the inputs equal to the output, split evenly among ties. */
function minMax(op: 'Min' | 'Max'): GradientRule {
  return {
    op,
    grad(ctx) {
      const d = ctx.dY[0]!;
      const y = ctx.node.outputs[0];
      const xs = ctx.node.inputs;
      if (xs.length === 1) return [d];
      const type = ctx.elemType(y) ?? DataType.FLOAT;
      const masks = xs.map((x) => ctx.op('Cast', [ctx.op('Equal', [x, y])], { to: type }));
      const count = ctx.op('Sum', masks);
      const share = ctx.op('Div', [d, count]);
      return xs.map((_, k) => toInput(ctx, k, () => ctx.op('Mul', [share, masks[k]])));
    },
  };
}

/** Cast and CastLike: the gradient is cast back to the input's type; no gradient to or from non-float types. */
function castRule(op: 'Cast' | 'CastLike'): GradientRule {
  return {
    op,
    grad(ctx) {
      const d = ctx.dY[0]!;
      const x = ctx.node.inputs[0];
      const y = ctx.node.outputs[0];
      if (!ctx.needs[0] || !isFloatValue(ctx, x) || !isFloatValue(ctx, y)) return [];
      const tx = ctx.elemType(x);
      if (tx === undefined) return [ctx.op('CastLike', [d, x])];
      return [tx === ctx.elemType(y) ? d : ctx.op('Cast', [d], { to: tx })];
    },
  };
}

export const rules: GradientRule[] = [
  {
    op: 'Add',
    grad: (ctx) => [toInput(ctx, 0, () => ctx.dY[0]!), toInput(ctx, 1, () => ctx.dY[0]!)],
  },
  {
    op: 'Sub',
    grad(ctx) {
      const d = ctx.dY[0]!;
      const db = toInput(ctx, 1, () => d);
      return [toInput(ctx, 0, () => d), db && ctx.op('Neg', [db])];
    },
  },
  {
    op: 'Mul',
    grad(ctx) {
      const d = ctx.dY[0]!;
      const [a, b] = ctx.node.inputs;
      return [toInput(ctx, 0, () => ctx.op('Mul', [d, b])), toInput(ctx, 1, () => ctx.op('Mul', [d, a]))];
    },
  },
  {
    op: 'Div',
    grad(ctx) {
      // y = a / b: da = dY / b, db = −dY · y / b.
      const d = ctx.dY[0]!;
      const b = ctx.node.inputs[1];
      const y = ctx.node.outputs[0];
      let q: string | undefined;
      const dOverB = () => {
        q ??= ctx.op('Div', [d, b]);
        return q;
      };
      const da = toInput(ctx, 0, dOverB);
      const db = toInput(ctx, 1, () => ctx.op('Mul', [dOverB(), y]));
      return [da, db && ctx.op('Neg', [db])];
    },
  },
  pow,
  unary('Sqrt', (ctx, d, x, y) => ctx.op('Div', [ctx.op('Mul', [d, ctx.constant([0.5], [], x)]), y])),
  unary('Exp', (ctx, d, _x, y) => ctx.op('Mul', [d, y])),
  unary('Log', (ctx, d, x) => ctx.op('Div', [d, x])),
  unary('Neg', (ctx, d) => ctx.op('Neg', [d])),
  unary('Abs', (ctx, d, x) => ctx.op('Mul', [d, ctx.op('Sign', [x])])),
  unary('Reciprocal', (ctx, d, _x, y) => ctx.op('Neg', [ctx.op('Mul', [d, ctx.op('Mul', [y, y])])])),
  unary('Identity', (_ctx, d) => d),
  castRule('Cast'),
  castRule('CastLike'),
  {
    op: 'Where',
    grad(ctx) {
      // No gradient to the condition; each branch gets dY where it was chosen, 0 elsewhere.
      const d = ctx.dY[0]!;
      const [c] = ctx.node.inputs;
      const zero = ctx.constant([0], [], ctx.node.outputs[0]);
      return [
        undefined,
        toInput(ctx, 1, () => ctx.op('Where', [c, d, zero])),
        toInput(ctx, 2, () => ctx.op('Where', [c, zero, d])),
      ];
    },
  },
  {
    op: 'Sum',
    grad: (ctx) => ctx.node.inputs.map((_, k) => toInput(ctx, k, () => ctx.dY[0]!)),
  },
  {
    op: 'Mean',
    grad(ctx) {
      const n = ctx.node.inputs.length;
      let scaled: string | undefined;
      const share = () => {
        scaled ??= ctx.op('Mul', [ctx.dY[0]!, ctx.constant([1 / n], [], ctx.node.outputs[0])]);
        return scaled;
      };
      return ctx.node.inputs.map((_, k) => toInput(ctx, k, share));
    },
  },
  minMax('Min'),
  minMax('Max'),
  {
    // Expand broadcasts its input to the output shape: sum the gradient back. No gradient to the shape.
    op: 'Expand',
    grad: (ctx) => [toInput(ctx, 0, () => ctx.dY[0]!)],
  },
];
