/**
 * Gradient of `qnnx::FakeQuant` (src/train/fake-quant.ts), with pluggable rules for the round() that has no
 * useful derivative. Each FakeQuant node picks its rule by its `grad` attribute; the rule is one small function
 * in the table below.
 *
 * The plug point: `registerFakeQuantGradient(name, fn)`. `fn` receives a `FakeQuantGradInputs` whose pieces are
 * built lazily and at most once: v = x/s, the grid bounds lo = qmin − zp and hi = qmax − zp, the 0/1 masks of
 * elements below, inside and above the grid (in grid units, lo ≤ v ≤ hi is inside), a constant maker, and
 * `reduceToScale` (sums an elementwise term over everything but the channel axis, to the scale's shape). It
 * returns the gradients it defines for x, scale and zero point; anything left out gets no gradient. With
 * dy = ∂L/∂y:
 *
 *   ste  dx = dy·inside                               (clipped straight-through estimator)
 *   lsq  dx = dy·inside;  ds = g·Σ dy·(inside·(round(v) − v) + below·lo + above·hi),  g = 1/sqrt(N·qmax)
 *        (LSQ, Esser et al. 2020; N = elements per scale; the `grad_scale` attribute overrides g)
 *   mad  dx = dy·(inside + outside·c/|x|), c = |hi·s| above and |lo·s| below the grid
 *        (OCTAV's magnitude-aware differentiation, c being the clipping threshold in x units)
 *
 * Adding a rule, e.g. learned min/max (algorithms.md S06): write a function of `FakeQuantGradInputs` returning
 * { x, scale } and call `registerFakeQuantGradient('minmax', fn)` before building the training graph; nodes with
 * grad = 'minmax' then use it. No engine change is needed.
 */
import { QnnxError } from '../../../errors.js';
import { DataType } from '../../../onnx/dtype.js';
import {
  broadcastShape,
  FAKE_QUANT_DOMAIN,
  FAKE_QUANT_OP,
  type FakeQuantAttrs,
  fakeQuantAttrs,
} from '../../fake-quant.js';
import type { GradContext, GradientRule } from '../rule.js';

/** What a fake-quant gradient function is given. Methods build graph nodes on first call and cache them. */
export interface FakeQuantGradInputs {
  readonly ctx: GradContext;
  readonly attrs: FakeQuantAttrs;
  /** The forward input x and the upstream gradient dy (same shape). */
  readonly x: string;
  readonly dy: string;
  /** Which gradients the engine needs. */
  readonly needs: { x: boolean; scale: boolean; zeroPoint: boolean };
  /** Scale and zero point reshaped to broadcast against x (zero point undefined when the node has none). */
  scale(): string;
  zeroPoint(): string | undefined;
  /** v = x / s (float32 division, as in the forward). */
  v(): string;
  /** Grid bounds in grid units: lo = qmin − zp, hi = qmax − zp (broadcast like the scale). */
  lo(): string;
  hi(): string;
  /** Boolean conditions v < lo and v > hi. */
  isBelow(): string;
  isAbove(): string;
  /** 0/1 masks in x's float type: v < lo, v > hi, and lo ≤ v ≤ hi. */
  below(): string;
  above(): string;
  inside(): string;
  /** A scalar constant in x's float type. */
  constant(value: number): string;
  /** Elements of x per scale value (N of LSQ); needs a static shape of x. */
  groupSize(): number;
  /** Sums an elementwise term (x's shape) over all axes but the channel axis, reshaped to the scale's shape. */
  reduceToScale(t: string): string;
  /** Shorthand for ctx.op. */
  op(opType: string, inputs: string[]): string;
}

export interface FakeQuantGradResult {
  x?: string;
  scale?: string;
  zeroPoint?: string;
}

export type FakeQuantGradient = (g: FakeQuantGradInputs) => FakeQuantGradResult;

export interface FakeQuantGradientOptions {
  /**
   * Quantizer inputs the rule gives gradients for ('scale', 'zeroPoint'): the training graph then counts them
   * as trainable parameters by default. Default none (the quantizer's range stays fixed).
   */
  learns?: ('scale' | 'zeroPoint')[];
}

const GRADIENTS = new Map<string, { fn: FakeQuantGradient; learns: ('scale' | 'zeroPoint')[] }>();

/** Registers (or replaces) a fake-quant gradient rule, selected by nodes whose `grad` attribute is `name`. */
export function registerFakeQuantGradient(
  name: string,
  fn: FakeQuantGradient,
  options: FakeQuantGradientOptions = {},
): void {
  GRADIENTS.set(name, { fn, learns: [...(options.learns ?? [])] });
}

/** The quantizer inputs a registered rule learns (empty for unknown names). */
export function fakeQuantGradientLearns(name: string): readonly ('scale' | 'zeroPoint')[] {
  return GRADIENTS.get(name)?.learns ?? [];
}

export function fakeQuantGradientNames(): string[] {
  return [...GRADIENTS.keys()].sort();
}

export function fakeQuantGradient(name: string): FakeQuantGradient | undefined {
  return GRADIENTS.get(name)?.fn;
}

/** Clipped straight-through: the gradient passes where the value lies on the grid and stops where it clips. */
export const steGradient: FakeQuantGradient = (g) => ({
  x: g.needs.x ? g.op('Mul', [g.dy, g.inside()]) : undefined,
});

/** LSQ: straight-through for x, and the learned step size's gradient with LSQ's gradient scale. */
export const lsqGradient: FakeQuantGradient = (g) => {
  const out: FakeQuantGradResult = steGradient(g);
  if (g.needs.scale) {
    const rv = g.op('Sub', [g.op('Round', [g.v()]), g.v()]);
    const term = g.op('Sum', [
      g.op('Mul', [g.inside(), rv]),
      g.op('Mul', [g.below(), g.lo()]),
      g.op('Mul', [g.above(), g.hi()]),
    ]);
    const gs = g.attrs.gradScale ?? 1 / Math.sqrt(g.groupSize() * g.attrs.qmax);
    let ds = g.reduceToScale(g.op('Mul', [g.dy, term]));
    if (gs !== 1) ds = g.op('Mul', [ds, g.constant(gs)]);
    out.scale = ds;
  }
  return out;
};

/** OCTAV's magnitude-aware differentiation: clipped values pass threshold/|x| of the gradient instead of 0. */
export const madGradient: FakeQuantGradient = (g) => {
  if (!g.needs.x) return {};
  // Where, not a 0/1 mask product: threshold/|x| is infinite at x = 0, which lies inside the grid.
  const absX = g.op('Abs', [g.x]);
  const clipAbove = g.op('Abs', [g.op('Mul', [g.hi(), g.scale()])]);
  const clipBelow = g.op('Abs', [g.op('Mul', [g.lo(), g.scale()])]);
  const outside = g.op('Where', [g.isBelow(), g.op('Div', [clipBelow, absX]), g.constant(1)]);
  const factor = g.op('Where', [g.isAbove(), g.op('Div', [clipAbove, absX]), outside]);
  return { x: g.op('Mul', [g.dy, factor]) };
};

registerFakeQuantGradient('ste', steGradient);
registerFakeQuantGradient('lsq', lsqGradient, { learns: ['scale'] });
registerFakeQuantGradient('mad', madGradient);

function makeInputs(ctx: GradContext, attrs: FakeQuantAttrs): FakeQuantGradInputs {
  const node = ctx.node;
  const [x, s0, zp0] = node.inputs;
  const cache = new Map<string, string | undefined>();
  const once = (key: string, f: () => string | undefined): string | undefined => {
    if (!cache.has(key)) cache.set(key, f());
    return cache.get(key);
  };
  const elem = ctx.elemType(x);
  const floatType = elem === DataType.DOUBLE ? DataType.DOUBLE : DataType.FLOAT;
  const constant = (v: number) => ctx.constant([v], [], x);
  const rank = (): number => {
    const s = ctx.shape(x);
    if (!s) ctx.staticShape(x);
    return s!.length;
  };
  const bshape = (): string | undefined =>
    once('bshape', () => {
      const s = broadcastShape(attrs.axis, attrs.axis === undefined ? 0 : rank(), node);
      return s ? ctx.int64s(s) : undefined;
    });
  const broadcast = (name: string, key: string): string =>
    once(key, () => {
      const shape = bshape();
      return shape ? ctx.op('Reshape', [name, shape]) : name;
    })!;
  const mask = (cond: string) => ctx.op('Cast', [cond], { to: floatType });
  const g: FakeQuantGradInputs = {
    ctx,
    attrs,
    x,
    dy: ctx.dY[0]!,
    needs: { x: !!ctx.needs[0], scale: !!ctx.needs[1], zeroPoint: !!ctx.needs[2] },
    scale: () => broadcast(s0, 'scale'),
    zeroPoint: () => (zp0 ? broadcast(zp0, 'zp') : undefined),
    v: () => once('v', () => ctx.op('Div', [x, g.scale()]))!,
    lo: () =>
      once('lo', () => {
        const zp = g.zeroPoint();
        return zp ? ctx.op('Sub', [constant(attrs.qmin), zp]) : constant(attrs.qmin);
      })!,
    hi: () =>
      once('hi', () => {
        const zp = g.zeroPoint();
        return zp ? ctx.op('Sub', [constant(attrs.qmax), zp]) : constant(attrs.qmax);
      })!,
    isBelow: () => once('isBelow', () => ctx.op('Less', [g.v(), g.lo()]))!,
    isAbove: () => once('isAbove', () => ctx.op('Greater', [g.v(), g.hi()]))!,
    below: () => once('below', () => mask(g.isBelow()))!,
    above: () => once('above', () => mask(g.isAbove()))!,
    inside: () => once('inside', () => ctx.op('Sub', [ctx.op('Sub', [constant(1), g.below()]), g.above()]))!,
    constant,
    groupSize() {
      const dims = ctx.staticShape(x);
      const total = dims.reduce((a, d) => a * d, 1);
      if (attrs.axis === undefined) return total;
      const a = attrs.axis < 0 ? attrs.axis + dims.length : attrs.axis;
      return total / dims[a];
    },
    reduceToScale(t) {
      let r: string;
      if (attrs.axis === undefined) {
        r = ctx.op('ReduceSum', [t], { keepdims: 0 });
      } else {
        const n = rank();
        const a = attrs.axis < 0 ? attrs.axis + n : attrs.axis;
        const axes = Array.from({ length: n }, (_, i) => i).filter((i) => i !== a);
        if (axes.length === 0) return t;
        r =
          ctx.opset >= 13
            ? ctx.op('ReduceSum', [t, ctx.int64s(axes)], { keepdims: 0 })
            : ctx.op('ReduceSum', [t], { axes, keepdims: 0 });
      }
      return ctx.op('Reshape', [r, ctx.shapeOf(s0)]);
    },
    op: (opType, inputs) => ctx.op(opType, inputs),
  };
  return g;
}

export const rules: GradientRule[] = [
  {
    op: `${FAKE_QUANT_DOMAIN}::${FAKE_QUANT_OP}`,
    grad(ctx) {
      const node = ctx.node;
      const attrs = fakeQuantAttrs(node);
      const fn = GRADIENTS.get(attrs.grad)?.fn;
      if (!fn) {
        throw new QnnxError(
          'E_GRADIENT',
          `node ${node.label()}: unknown fake-quant gradient '${attrs.grad}' (registered: ${fakeQuantGradientNames().join(', ')})`,
          { node: node.name, field: 'grad' },
        );
      }
      if (!ctx.dY[0]) return [];
      const r = fn(makeInputs(ctx, attrs));
      return [r.x, r.scale, r.zeroPoint];
    },
  },
];
