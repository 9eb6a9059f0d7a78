/**
 * Gradients of the activation functions: Relu, LeakyRelu, PRelu, Sigmoid, Tanh, HardSigmoid, HardSwish, Clip,
 * Erf, Gelu, Softmax, LogSoftmax, Elu, Selu, Celu, Softplus, Softsign and ThresholdedRelu. Every rule is a few
 * elementwise ONNX nodes (docs/research: onnx-runtime.md A.2). Masks are taken on the output where that is exact
 * (Relu, HardSigmoid), so the forward input need not stay alive; otherwise on the input.
 *
 * Conventions at kinks: the subgradient is 0 at x = 0 for Relu/LeakyRelu/PRelu/Elu/Selu/Celu (x > 0 selects the
 * linear branch), and Clip passes the gradient at x == min or x == max (ONNX Runtime's own convention).
 */
import type { GradContext, GradientRule } from '../rule.js';
import { noGradient } from '../rule.js';

/** A scalar constant of the forward input's float type. */
function k(c: GradContext, v: number): string {
  return c.constant([v], [], c.node.inputs[0]);
}

function mul(c: GradContext, a: string, b: string): string {
  return c.op('Mul', [a, b]);
}

/** ReduceSum with keepdims, axes as an input from opset 13 and as an attribute before. */
function reduceSum(c: GradContext, x: string, axes: number[] | undefined, keepdims: 0 | 1): string {
  if (!axes) return c.op('ReduceSum', [x], { keepdims });
  if (c.opset >= 13) return c.op('ReduceSum', [x, c.int64s(axes)], { keepdims });
  return c.op('ReduceSum', [x], { axes, keepdims });
}

/** A rule for y = f(x) whose input gradient `dx` builds from x, y and dY. */
function unary(op: string, dx: (c: GradContext, x: string, y: string, dy: string) => string): GradientRule {
  return {
    op,
    grad: (c) => {
      const dy = c.dY[0];
      if (!dy || !c.needs[0]) return [];
      return [dx(c, c.node.inputs[0], c.node.outputs[0], dy)];
    },
  };
}

/** The axes Softmax/LogSoftmax normalize over: [axis] from opset 13, [axis, rank) before (2-D coercion). */
function softmaxAxes(c: GradContext): number[] {
  const y = c.node.outputs[0];
  const shape = c.shape(y) ?? c.shape(c.node.inputs[0]);
  if (!shape) c.staticShape(c.node.inputs[0]);
  const rank = shape!.length;
  const legacy = c.opset < 13;
  let axis = c.node.attrInt('axis', legacy ? 1 : -1);
  if (axis < 0) axis += rank;
  if (axis < 0 || axis >= Math.max(rank, 1))
    throw noGradient(c.node, `axis ${axis} is out of range for rank ${rank}`);
  if (rank === 0) return [];
  if (!legacy) return [axis];
  return Array.from({ length: rank - axis }, (_, i) => axis + i);
}

const SQRT_2_PI = Math.sqrt(2 / Math.PI);
const GELU_C = 0.044715;

export const rules: GradientRule[] = [
  unary('Relu', (c, _x, y, dy) => c.op('Where', [c.op('Greater', [y, k(c, 0)]), dy, k(c, 0)])),

  unary('LeakyRelu', (c, x, _y, dy) => {
    const alpha = c.node.attrFloat('alpha', 0.01);
    return c.op('Where', [c.op('Greater', [x, k(c, 0)]), dy, mul(c, dy, k(c, alpha))]);
  }),

  unary('ThresholdedRelu', (c, x, _y, dy) => {
    const alpha = c.node.attrFloat('alpha', 1);
    return c.op('Where', [c.op('Greater', [x, k(c, alpha)]), dy, k(c, 0)]);
  }),

  unary('Sigmoid', (c, _x, y, dy) => mul(c, mul(c, dy, y), c.op('Sub', [k(c, 1), y]))),

  unary('Tanh', (c, _x, y, dy) => mul(c, dy, c.op('Sub', [k(c, 1), mul(c, y, y)]))),

  // y = max(0, min(1, αx + β)): slope α strictly inside (0, 1), read off y.
  unary('HardSigmoid', (c, _x, y, dy) => {
    const alpha = c.node.attrFloat('alpha', 0.2);
    const inside = c.op('And', [c.op('Greater', [y, k(c, 0)]), c.op('Less', [y, k(c, 1)])]);
    return c.op('Where', [inside, mul(c, dy, k(c, alpha)), k(c, 0)]);
  }),

  // y = x · max(0, min(1, x/6 + 1/2)): 1 above 3, 0 below −3, x/3 + 1/2 between.
  unary('HardSwish', (c, x, _y, dy) => {
    const mid = c.op('Add', [mul(c, x, k(c, 1 / 3)), k(c, 0.5)]);
    const slope = c.op('Where', [
      c.op('Greater', [x, k(c, 3)]),
      k(c, 1),
      c.op('Where', [c.op('Less', [x, k(c, -3)]), k(c, 0), mid]),
    ]);
    return mul(c, dy, slope);
  }),

  // dy/dx = 1 for x > 0, y + α below.
  unary('Elu', (c, x, y, dy) => {
    const alpha = c.node.attrFloat('alpha', 1);
    return c.op('Where', [c.op('Greater', [x, k(c, 0)]), dy, mul(c, dy, c.op('Add', [y, k(c, alpha)]))]);
  }),

  // y = γ·x for x > 0, γ·α·(eˣ − 1) below: dy/dx = γ, y + γ·α.
  unary('Selu', (c, x, y, dy) => {
    const alpha = c.node.attrFloat('alpha', Math.fround(1.6732632423543772));
    const gamma = c.node.attrFloat('gamma', Math.fround(1.0507009873554805));
    return c.op('Where', [
      c.op('Greater', [x, k(c, 0)]),
      mul(c, dy, k(c, gamma)),
      mul(c, dy, c.op('Add', [y, k(c, gamma * alpha)])),
    ]);
  }),

  // y = max(0, x) + min(0, α(e^{x/α} − 1)): dy/dx = 1 for x > 0, e^{x/α} = y/α + 1 below.
  unary('Celu', (c, x, y, dy) => {
    const alpha = c.node.attrFloat('alpha', 1);
    const below = c.op('Add', [mul(c, y, k(c, 1 / alpha)), k(c, 1)]);
    return c.op('Where', [c.op('Greater', [x, k(c, 0)]), dy, mul(c, dy, below)]);
  }),

  unary('Softplus', (c, x, _y, dy) => mul(c, dy, c.op('Sigmoid', [x]))),

  // y = x / (1 + |x|): dy/dx = 1 / (1 + |x|)².
  unary('Softsign', (c, x, _y, dy) => {
    const d = c.op('Add', [c.op('Abs', [x]), k(c, 1)]);
    return c.op('Div', [dy, mul(c, d, d)]);
  }),

  unary('Erf', (c, x, _y, dy) => {
    const e = c.op('Exp', [c.op('Neg', [mul(c, x, x)])]);
    return mul(c, dy, mul(c, e, k(c, 2 / Math.sqrt(Math.PI))));
  }),

  // Exact: Φ(x) + x·φ(x). Tanh approximation: ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²), t = tanh(u).
  unary('Gelu', (c, x, _y, dy) => {
    const approx = c.node.attrString('approximate', 'none');
    if (approx === 'none') {
      const cdf = mul(c, c.op('Add', [c.op('Erf', [mul(c, x, k(c, Math.SQRT1_2))]), k(c, 1)]), k(c, 0.5));
      const pdf = mul(c, c.op('Exp', [mul(c, mul(c, x, x), k(c, -0.5))]), k(c, 1 / Math.sqrt(2 * Math.PI)));
      return mul(c, dy, c.op('Add', [cdf, mul(c, x, pdf)]));
    }
    if (approx === 'tanh') {
      const x2 = mul(c, x, x);
      const u = mul(c, mul(c, x, c.op('Add', [mul(c, x2, k(c, GELU_C)), k(c, 1)])), k(c, SQRT_2_PI));
      const t = c.op('Tanh', [u]);
      const du = mul(c, c.op('Add', [mul(c, x2, k(c, 3 * GELU_C)), k(c, 1)]), k(c, SQRT_2_PI));
      const sech2 = c.op('Sub', [k(c, 1), mul(c, t, t)]);
      const d = c.op('Add', [
        mul(c, c.op('Add', [t, k(c, 1)]), k(c, 0.5)),
        mul(c, mul(c, mul(c, x, k(c, 0.5)), sech2), du),
      ]);
      return mul(c, dy, d);
    }
    throw noGradient(c.node, `Gelu approximate='${approx}' is not supported (use 'none' or 'tanh')`);
  }),

  // dX = Y·(dY − Σ dY·Y) over the softmax axes.
  unary('Softmax', (c, _x, y, dy) => {
    const axes = softmaxAxes(c);
    const s = reduceSum(c, mul(c, dy, y), axes, 1);
    return mul(c, y, c.op('Sub', [dy, s]));
  }),

  // dX = dY − exp(Y)·Σ dY over the softmax axes.
  unary('LogSoftmax', (c, _x, y, dy) => {
    const axes = softmaxAxes(c);
    const s = reduceSum(c, dy, axes, 1);
    return c.op('Sub', [dy, mul(c, c.op('Exp', [y]), s)]);
  }),

  // y = slope·x for x < 0, x otherwise; slope broadcasts (unidirectionally) to x.
  {
    op: 'PRelu',
    grad: (c) => {
      const dy = c.dY[0];
      if (!dy) return [];
      const [x, slope] = c.node.inputs;
      const neg = c.op('Less', [x, k(c, 0)]);
      const dx = c.needs[0] ? c.op('Where', [neg, mul(c, dy, slope), dy]) : undefined;
      const ds = c.needs[1] ? c.unbroadcast(c.op('Where', [neg, mul(c, dy, x), k(c, 0)]), slope) : undefined;
      return [dx, ds];
    },
  },

  // Clip: gradient passes where min ≤ x ≤ max. From opset 11 min and max are (optional, scalar) inputs and may
  // themselves be trained (PACT-style clipping): dmin = Σ dY over x < min, dmax = Σ dY over x > max.
  {
    op: 'Clip',
    grad: (c) => {
      const dy = c.dY[0];
      if (!dy) return [];
      const x = c.node.inputs[0];
      let lo: string | undefined;
      let hi: string | undefined;
      if (c.opset >= 11) {
        lo = c.node.inputs[1] || undefined;
        hi = c.node.inputs[2] || undefined;
      } else {
        const a = c.node.attrFloat('min');
        const b = c.node.attrFloat('max');
        lo = a === undefined ? undefined : k(c, a);
        hi = b === undefined ? undefined : k(c, b);
      }
      const below = lo ? c.op('Less', [x, lo]) : undefined;
      const above = hi ? c.op('Greater', [x, hi]) : undefined;
      const zero = k(c, 0);
      let dx: string | undefined;
      if (c.needs[0]) {
        const masks = [below, above].filter((m): m is string => !!m);
        if (masks.length === 0) dx = dy;
        else {
          const out = masks.length === 1 ? masks[0] : c.op('Or', masks);
          dx = c.op('Where', [out, zero, dy]);
        }
      }
      const bound = (mask: string | undefined, input: string): string | undefined => {
        if (!mask) return undefined;
        const s = reduceSum(c, c.op('Where', [mask, dy, zero]), undefined, 0);
        const rank = c.shape(input)?.length;
        return rank === 0 ? s : c.op('Reshape', [s, c.shapeOf(input)]);
      };
      const dlo = c.opset >= 11 && c.needs[1] ? bound(below, lo!) : undefined;
      const dhi = c.opset >= 11 && c.needs[2] ? bound(above, hi!) : undefined;
      return [dx, dlo, dhi];
    },
  },
];
