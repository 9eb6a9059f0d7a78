/**
 * The layers of the model builder: what each one is called, which options it takes (checked at run time, so the
 * TypeScript API and the JSON builder spec report the same errors), how its output shape follows from its input
 * shape, and the ONNX nodes (opset 18) and initializers it emits. Parameter names follow PyTorch's
 * `nn.Sequential`: `<layer index>.weight`, `<layer index>.bias`, `<index>.running_mean`, ... (nested layers add
 * their own index: `3.1.weight`), so a torch state_dict maps onto a built model by name.
 */
import { QnnxError } from '../../errors.js';
import { floatAttr, type GraphBuilder } from '../../ir/builder.js';
import { DataType } from '../../onnx/dtype.js';
import type { InitScheme, ParamRole } from './init.js';

// ---------------------------------------------------------------------------------------------------------------
// Layer specs (the typed form of the JSON spec: `{"conv2d": {...}}` is `{ type: 'conv2d', ... }`)
// ---------------------------------------------------------------------------------------------------------------

/** One number for both spatial axes, or [height, width]. */
export type Pair = number | [number, number];

/** Padding: one number, [h, w], [top, left, bottom, right], 'same' (stride 1 only) or 'valid' (0). */
export type Padding = number | [number, number] | [number, number, number, number] | 'same' | 'valid';

interface Named {
  /** Parameter and node name prefix (default: the layer's index, as in torch's nn.Sequential). */
  name?: string;
}

export interface Conv2dOptions extends Named {
  filters: number;
  kernel: Pair;
  stride?: Pair;
  padding?: Padding;
  dilation?: Pair;
  groups?: number;
  bias?: boolean;
}
export interface DenseOptions extends Named {
  units: number;
  bias?: boolean;
}
export interface BatchNormOptions extends Named {
  epsilon?: number;
  /** PyTorch's convention: running = (1 − momentum)·running + momentum·batch (ONNX momentum = 1 − this). */
  momentum?: number;
}
export interface LayerNormOptions extends Named {
  epsilon?: number;
}
export interface LeakyReluOptions {
  alpha?: number;
}
export interface GeluOptions {
  approximate?: 'none' | 'tanh';
}
export interface PoolLayerOptions {
  kernel: Pair;
  /** Default: the kernel size (as PyTorch). */
  stride?: Pair;
  padding?: Pair;
  ceil?: boolean;
}
export interface AvgPoolOptions extends PoolLayerOptions {
  /** Count padded zeros in the average (PyTorch's default: true). */
  countIncludePad?: boolean;
}
export interface GlobalAvgPoolOptions {
  /** Keep [C, 1, 1] instead of flattening to [C] (default false). */
  keepDims?: boolean;
}
export interface DropoutOptions {
  rate: number;
}
export interface EmbeddingOptions extends Named {
  vocab: number;
  dim: number;
}
export interface AttentionOptions extends Named {
  heads: number;
  /** Hidden size of the MLP as a multiple of the model width (default 4); `mlpDim` sets it directly. */
  mlpRatio?: number;
  mlpDim?: number;
  epsilon?: number;
  /** Mask attention to later positions. */
  causal?: boolean;
  gelu?: 'none' | 'tanh';
}
export interface ResidualOptions extends Named {
  layers: LayerSpec[];
}
export interface ReshapeOptions {
  /** New shape of each sample (batch axis excluded); one entry may be -1. */
  shape: number[];
}
export interface TransposeOptions {
  /** Permutation of the sample axes (batch axis excluded, 0-based). */
  perm: number[];
}
export type PositionEmbeddingOptions = Named;

export type LayerSpec =
  | ({ type: 'conv2d' } & Conv2dOptions)
  | ({ type: 'dense' } & DenseOptions)
  | ({ type: 'batchNorm' } & BatchNormOptions)
  | ({ type: 'layerNorm' } & LayerNormOptions)
  | { type: 'relu' }
  | ({ type: 'leakyRelu' } & LeakyReluOptions)
  | { type: 'sigmoid' }
  | { type: 'tanh' }
  | ({ type: 'gelu' } & GeluOptions)
  | { type: 'hardSwish' }
  | ({ type: 'maxPool' } & PoolLayerOptions)
  | ({ type: 'avgPool' } & AvgPoolOptions)
  | ({ type: 'globalAvgPool' } & GlobalAvgPoolOptions)
  | { type: 'flatten' }
  | ({ type: 'dropout' } & DropoutOptions)
  | ({ type: 'embedding' } & EmbeddingOptions)
  | ({ type: 'attention' } & AttentionOptions)
  | ({ type: 'residual' } & ResidualOptions)
  | ({ type: 'reshape' } & ReshapeOptions)
  | ({ type: 'transpose' } & TransposeOptions)
  | ({ type: 'positionEmbedding' } & PositionEmbeddingOptions);

export type LayerType = LayerSpec['type'];

// Factories for the TypeScript API: `sequential([1, 28, 28], [conv2d({ filters: 8, kernel: 3 }), relu(), ...])`.
export const conv2d = (o: Conv2dOptions): LayerSpec => ({ type: 'conv2d', ...o });
export const dense = (o: DenseOptions): LayerSpec => ({ type: 'dense', ...o });
export const batchNorm = (o: BatchNormOptions = {}): LayerSpec => ({ type: 'batchNorm', ...o });
export const layerNorm = (o: LayerNormOptions = {}): LayerSpec => ({ type: 'layerNorm', ...o });
export const relu = (): LayerSpec => ({ type: 'relu' });
export const leakyRelu = (o: LeakyReluOptions = {}): LayerSpec => ({ type: 'leakyRelu', ...o });
export const sigmoid = (): LayerSpec => ({ type: 'sigmoid' });
export const tanh = (): LayerSpec => ({ type: 'tanh' });
export const gelu = (o: GeluOptions = {}): LayerSpec => ({ type: 'gelu', ...o });
export const hardSwish = (): LayerSpec => ({ type: 'hardSwish' });
export const maxPool = (o: PoolLayerOptions): LayerSpec => ({ type: 'maxPool', ...o });
export const avgPool = (o: AvgPoolOptions): LayerSpec => ({ type: 'avgPool', ...o });
export const globalAvgPool = (o: GlobalAvgPoolOptions = {}): LayerSpec => ({ type: 'globalAvgPool', ...o });
export const flatten = (): LayerSpec => ({ type: 'flatten' });
export const dropout = (o: DropoutOptions): LayerSpec => ({ type: 'dropout', ...o });
export const embedding = (o: EmbeddingOptions): LayerSpec => ({ type: 'embedding', ...o });
export const attention = (o: AttentionOptions): LayerSpec => ({ type: 'attention', ...o });
export const residual = (layers: LayerSpec[], o: Named = {}): LayerSpec => ({
  type: 'residual',
  layers,
  ...o,
});
export const reshape = (o: ReshapeOptions): LayerSpec => ({ type: 'reshape', ...o });
export const transpose = (o: TransposeOptions): LayerSpec => ({ type: 'transpose', ...o });
export const positionEmbedding = (o: PositionEmbeddingOptions = {}): LayerSpec => ({
  type: 'positionEmbedding',
  ...o,
});

// ---------------------------------------------------------------------------------------------------------------
// Option checking
// ---------------------------------------------------------------------------------------------------------------

type OptionKind =
  | 'posInt'
  | 'pair'
  | 'pairNonNeg'
  | 'padding'
  | 'bool'
  | 'posNumber'
  | 'nonNegNumber'
  | 'rate'
  | 'fraction'
  | 'name'
  | 'gelu'
  | 'shape'
  | 'perm'
  | 'layers';

interface OptionDef {
  kind: OptionKind;
  required?: boolean;
  doc: string;
}

const KIND_TEXT: Record<OptionKind, string> = {
  posInt: 'a positive integer',
  pair: 'a positive integer or [h, w]',
  pairNonNeg: 'a non-negative integer or [h, w]',
  padding: "a non-negative integer, [h, w], [top, left, bottom, right], 'same' or 'valid'",
  bool: 'true or false',
  posNumber: 'a positive number',
  nonNegNumber: 'a non-negative number',
  rate: 'a number in [0, 1)',
  fraction: 'a number in [0, 1]',
  name: 'a non-empty string of letters, digits, _ . -',
  gelu: "'none' or 'tanh'",
  shape: 'a non-empty list of positive integers with at most one -1',
  perm: 'a permutation of 0..rank-1',
  layers: 'a non-empty list of layers',
};

const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v);

function checkKind(kind: OptionKind, v: unknown): boolean {
  switch (kind) {
    case 'posInt':
      return isInt(v) && v > 0;
    case 'pair':
      return (isInt(v) && v > 0) || (Array.isArray(v) && v.length === 2 && v.every((x) => isInt(x) && x > 0));
    case 'pairNonNeg':
      return (
        (isInt(v) && v >= 0) || (Array.isArray(v) && v.length === 2 && v.every((x) => isInt(x) && x >= 0))
      );
    case 'padding':
      return (
        v === 'same' ||
        v === 'valid' ||
        (isInt(v) && v >= 0) ||
        (Array.isArray(v) && (v.length === 2 || v.length === 4) && v.every((x) => isInt(x) && x >= 0))
      );
    case 'bool':
      return typeof v === 'boolean';
    case 'posNumber':
      return typeof v === 'number' && Number.isFinite(v) && v > 0;
    case 'nonNegNumber':
      return typeof v === 'number' && Number.isFinite(v) && v >= 0;
    case 'rate':
      return typeof v === 'number' && v >= 0 && v < 1;
    case 'fraction':
      return typeof v === 'number' && v >= 0 && v <= 1;
    case 'name':
      return typeof v === 'string' && /^[A-Za-z0-9_.-]+$/.test(v);
    case 'gelu':
      return v === 'none' || v === 'tanh';
    case 'shape':
      return (
        Array.isArray(v) &&
        v.length > 0 &&
        v.every((x) => isInt(x) && (x > 0 || x === -1)) &&
        v.filter((x) => x === -1).length <= 1
      );
    case 'perm':
      return (
        Array.isArray(v) &&
        v.length > 0 &&
        v.every(isInt) &&
        [...(v as number[])].sort((a, b) => a - b).every((x, i) => x === i)
      );
    case 'layers':
      return Array.isArray(v) && v.length > 0;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------------------------------------------

/** The value flowing between layers: its name, per-sample shape (batch axis excluded) and element type. */
export interface Flow {
  value: string;
  shape: number[];
  dtype: 'float32' | 'int64';
}

export interface ParamInfo {
  name: string;
  dims: number[];
  /** Trainable parameter, or a buffer (BatchNorm running statistics). */
  kind: 'parameter' | 'buffer';
  /** The layer it belongs to, e.g. `layers[3]`. */
  layer: string;
}

export interface LayerSummary {
  /** Where the layer is in the spec: `layers[3]`, `layers[5].layers[0]` for nested layers. */
  where: string;
  type: LayerType;
  /** Name prefix of its parameters and nodes. */
  name: string;
  inputShape: number[];
  outputShape: number[];
  /** Number of trainable parameter elements. */
  params: number;
}

/** What a layer's build function gets. */
export interface LayerContext {
  readonly b: GraphBuilder;
  /** Parameter/node name prefix, e.g. '3' or '5.0'. */
  readonly prefix: string;
  /** Location for messages, e.g. 'layers[3]'. */
  readonly where: string;
  readonly init: InitScheme;
  readonly seed: number;
  readonly params: ParamInfo[];
  /** Adds an initializer `<prefix>.<suffix>` with values from the init scheme; returns its name. */
  param(suffix: string, dims: number[], role: ParamRole, kind?: 'parameter' | 'buffer'): string;
  /** A single-output node named `<prefix>.<opType>`. */
  op(opType: string, inputs: string[], attrs?: Record<string, unknown>): string;
  /** A float constant (initializer, not a parameter). */
  floats(suffix: string, dims: number[], values: ArrayLike<number>): string;
  /** An int64 constant. */
  int64s(suffix: string, values: number[]): string;
  /** An E_USAGE error naming this layer. */
  error(message: string): QnnxError;
}

interface LayerDef {
  doc: string;
  options: Record<string, OptionDef>;
  /** One-line example for the help text. */
  example: string;
  build(spec: LayerSpec, x: Flow, ctx: LayerContext, buildNested: NestedBuilder): Flow;
}

/** Builds a list of nested layers (residual) under a name prefix and location. */
export type NestedBuilder = (layers: LayerSpec[], x: Flow, prefix: string, where: string) => Flow;

const NAME: OptionDef = { kind: 'name', doc: 'prefix of its parameter names (default: the layer index)' };

function pair(v: Pair | undefined, fallback: [number, number]): [number, number] {
  if (v === undefined) return fallback;
  return typeof v === 'number' ? [v, v] : [v[0], v[1]];
}

/** ONNX pads [top, left, bottom, right]. */
function pads(
  p: Padding | undefined,
  kernel: [number, number],
  dilation: [number, number],
  stride: [number, number],
  ctx: LayerContext,
): number[] {
  if (p === undefined || p === 'valid') return [0, 0, 0, 0];
  if (p === 'same') {
    if (stride[0] !== 1 || stride[1] !== 1) throw ctx.error("padding 'same' needs stride 1 (as in PyTorch)");
    const th = dilation[0] * (kernel[0] - 1);
    const tw = dilation[1] * (kernel[1] - 1);
    return [Math.floor(th / 2), Math.floor(tw / 2), th - Math.floor(th / 2), tw - Math.floor(tw / 2)];
  }
  if (typeof p === 'number') return [p, p, p, p];
  if (p.length === 2) return [p[0], p[1], p[0], p[1]];
  return [...p];
}

function windowOut(
  size: number,
  k: number,
  s: number,
  d: number,
  pBegin: number,
  pEnd: number,
  ceil: boolean,
): number {
  const span = size + pBegin + pEnd - d * (k - 1) - 1;
  if (span < 0) return 0;
  let out = (ceil ? Math.ceil(span / s) : Math.floor(span / s)) + 1;
  // PyTorch/ONNX: with ceil_mode the last window must start inside the input or the left padding.
  if (ceil && (out - 1) * s >= size + pBegin) out--;
  return out;
}

function requireFloat(x: Flow, ctx: LayerContext): void {
  if (x.dtype !== 'float32') {
    throw ctx.error('needs a float input but gets int64 token ids (start the model with an embedding layer)');
  }
}

function requireRank(x: Flow, ranks: number[], ctx: LayerContext, hint = ''): void {
  if (!ranks.includes(x.shape.length)) {
    const want = ranks.map((r) => `${r}`).join(' or ');
    throw ctx.error(
      `needs an input of ${want} dims per sample, got ${fmtShape(x.shape)}${hint ? ` (${hint})` : ''}`,
    );
  }
}

export function fmtShape(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

function unary(opType: string, attrs?: (s: LayerSpec) => Record<string, unknown>): LayerDef['build'] {
  return (spec, x, ctx) => {
    requireFloat(x, ctx);
    return { ...x, value: ctx.op(opType, [x.value], attrs?.(spec)) };
  };
}

/** Gemm with a [out, in] weight (PyTorch's Linear layout) on a [rows, in] value. */
function linear(ctx: LayerContext, x: string, w: string, bias: string | undefined): string {
  return ctx.op('Gemm', bias ? [x, w, bias] : [x, w], { transB: 1 });
}

/** A dense layer over the last axis of `x` (any rank ≥ 1 per sample). Default init: PyTorch's Linear. */
function denseOn(
  ctx: LayerContext,
  x: Flow,
  units: number,
  withBias: boolean,
  suffix: string,
  roles: { weight?: ParamRole; bias?: ParamRole } = {},
): Flow {
  const inF = x.shape[x.shape.length - 1];
  const w = ctx.param(
    `${suffix}weight`,
    [units, inF],
    roles.weight ?? { kind: 'weight', fanIn: inF, fanOut: units },
  );
  const bias = withBias
    ? ctx.param(`${suffix}bias`, [units], roles.bias ?? { kind: 'bias', fanIn: inF })
    : undefined;
  if (x.shape.length === 1) return { ...x, value: linear(ctx, x.value, w, bias), shape: [units] };
  // Rank > 2: fold the leading axes into the rows of one Gemm and restore them after.
  const rows = ctx.op('Reshape', [x.value, ctx.int64s('rows', [-1, inF])]);
  const y = linear(ctx, rows, w, bias);
  const shape = [...x.shape.slice(0, -1), units];
  return { ...x, value: ctx.op('Reshape', [y, ctx.int64s('shape', [-1, ...shape])]), shape };
}

function layerNormOn(ctx: LayerContext, x: Flow, eps: number, suffix: string): Flow {
  const d = x.shape[x.shape.length - 1];
  const g = ctx.param(`${suffix}weight`, [d], { kind: 'constant', value: 1 });
  const bias = ctx.param(`${suffix}bias`, [d], { kind: 'constant', value: 0 });
  return {
    ...x,
    value: ctx.op('LayerNormalization', [x.value, g, bias], { axis: -1, epsilon: floatAttr('epsilon', eps) }),
  };
}

/** GELU from opset-18 ops: exact 0.5·x·(1 + erf(x/√2)), or the tanh approximation. */
function geluOn(ctx: LayerContext, x: string, approximate: 'none' | 'tanh'): string {
  const half = ctx.floats('half', [], [0.5]);
  const one = ctx.floats('one', [], [1]);
  let inner: string;
  if (approximate === 'tanh') {
    const c = ctx.floats('c', [], [0.044715]);
    const k = ctx.floats('k', [], [Math.sqrt(2 / Math.PI)]);
    const x3 = ctx.op('Mul', [ctx.op('Mul', [x, x]), x]);
    const u = ctx.op('Mul', [k, ctx.op('Add', [x, ctx.op('Mul', [c, x3])])]);
    inner = ctx.op('Tanh', [u]);
  } else {
    inner = ctx.op('Erf', [ctx.op('Mul', [x, ctx.floats('rsqrt2', [], [Math.SQRT1_2])])]);
  }
  return ctx.op('Mul', [ctx.op('Mul', [x, half]), ctx.op('Add', [inner, one])]);
}

export const LAYERS: Record<LayerType, LayerDef> = {
  conv2d: {
    doc: '2-D convolution over [C, H, W] (ONNX Conv; weight [filters, C/groups, kh, kw] as PyTorch)',
    example: '{"conv2d": {"filters": 32, "kernel": 3, "padding": 1}}',
    options: {
      filters: { kind: 'posInt', required: true, doc: 'output channels' },
      kernel: { kind: 'pair', required: true, doc: 'kernel size' },
      stride: { kind: 'pair', doc: 'default 1' },
      padding: { kind: 'padding', doc: "default 0; 'same' keeps H and W at stride 1" },
      dilation: { kind: 'pair', doc: 'default 1' },
      groups: { kind: 'posInt', doc: 'default 1; groups = C is depthwise' },
      bias: { kind: 'bool', doc: 'default true' },
      name: NAME,
    },
    build(spec, x, ctx) {
      const o = spec as Conv2dOptions;
      requireFloat(x, ctx);
      requireRank(x, [3], ctx, 'conv2d takes [channels, height, width]');
      const [c, h, w] = x.shape;
      const k = pair(o.kernel, [1, 1]);
      const s = pair(o.stride, [1, 1]);
      const d = pair(o.dilation, [1, 1]);
      const g = o.groups ?? 1;
      if (c % g !== 0 || o.filters % g !== 0) {
        throw ctx.error(`groups ${g} must divide both the input channels (${c}) and filters (${o.filters})`);
      }
      const p = pads(o.padding, k, d, s, ctx);
      const oh = windowOut(h, k[0], s[0], d[0], p[0], p[2], false);
      const ow = windowOut(w, k[1], s[1], d[1], p[1], p[3], false);
      if (oh < 1 || ow < 1) {
        throw ctx.error(
          `kernel ${fmtShape(k)} does not fit the input ${fmtShape(x.shape)} (output would be empty)`,
        );
      }
      const fanIn = (c / g) * k[0] * k[1];
      const fanOut = (o.filters / g) * k[0] * k[1];
      const wName = ctx.param('weight', [o.filters, c / g, k[0], k[1]], { kind: 'weight', fanIn, fanOut });
      const inputs = [x.value, wName];
      if (o.bias ?? true) inputs.push(ctx.param('bias', [o.filters], { kind: 'bias', fanIn }));
      const y = ctx.op('Conv', inputs, {
        kernel_shape: k,
        strides: s,
        pads: p,
        dilations: d,
        group: g,
      });
      return { ...x, value: y, shape: [o.filters, oh, ow] };
    },
  },
  dense: {
    doc: 'fully connected layer over the last axis (Gemm with weight [units, in] as PyTorch Linear)',
    example: '{"dense": {"units": 10}}',
    options: {
      units: { kind: 'posInt', required: true, doc: 'output features' },
      bias: { kind: 'bool', doc: 'default true' },
      name: NAME,
    },
    build(spec, x, ctx) {
      const o = spec as DenseOptions;
      requireFloat(x, ctx);
      requireRank(x, [1, 2], ctx, 'add {"flatten": {}} before it');
      return denseOn(ctx, x, o.units, o.bias ?? true, '');
    },
  },
  batchNorm: {
    doc: 'batch normalization over the channel axis (axis 1 of [C], [C, L] or [C, H, W]); running statistics',
    example: '{"batchNorm": {}}',
    options: {
      epsilon: { kind: 'posNumber', doc: 'default 1e-5' },
      momentum: { kind: 'fraction', doc: 'PyTorch convention, default 0.1' },
      name: NAME,
    },
    build(spec, x, ctx) {
      const o = spec as BatchNormOptions;
      requireFloat(x, ctx);
      requireRank(x, [1, 2, 3], ctx);
      const c = x.shape[0];
      const scale = ctx.param('weight', [c], { kind: 'constant', value: 1 });
      const bias = ctx.param('bias', [c], { kind: 'constant', value: 0 });
      const mean = ctx.param('running_mean', [c], { kind: 'constant', value: 0 }, 'buffer');
      const variance = ctx.param('running_var', [c], { kind: 'constant', value: 1 }, 'buffer');
      const y = ctx.op('BatchNormalization', [x.value, scale, bias, mean, variance], {
        epsilon: floatAttr('epsilon', o.epsilon ?? 1e-5),
        momentum: floatAttr('momentum', 1 - (o.momentum ?? 0.1)),
      });
      return { ...x, value: y };
    },
  },
  layerNorm: {
    doc: 'layer normalization over the last axis (LayerNormalization, axis -1)',
    example: '{"layerNorm": {}}',
    options: { epsilon: { kind: 'posNumber', doc: 'default 1e-5' }, name: NAME },
    build(spec, x, ctx) {
      requireFloat(x, ctx);
      return layerNormOn(ctx, x, (spec as LayerNormOptions).epsilon ?? 1e-5, '');
    },
  },
  relu: { doc: 'max(x, 0)', example: '"relu"', options: {}, build: unary('Relu') },
  leakyRelu: {
    doc: 'x if x > 0 else alpha·x',
    example: '{"leakyRelu": {"alpha": 0.1}}',
    options: { alpha: { kind: 'nonNegNumber', doc: 'default 0.01 (PyTorch)' } },
    build: unary('LeakyRelu', (s) => ({ alpha: floatAttr('alpha', (s as LeakyReluOptions).alpha ?? 0.01) })),
  },
  sigmoid: { doc: '1 / (1 + exp(−x))', example: '"sigmoid"', options: {}, build: unary('Sigmoid') },
  tanh: { doc: 'tanh(x)', example: '"tanh"', options: {}, build: unary('Tanh') },
  gelu: {
    doc: "GELU, exact (erf) or 'tanh' approximation, written with opset-18 ops",
    example: '{"gelu": {"approximate": "tanh"}}',
    options: { approximate: { kind: 'gelu', doc: "'none' (default) or 'tanh'" } },
    build(spec, x, ctx) {
      requireFloat(x, ctx);
      return { ...x, value: geluOn(ctx, x.value, (spec as GeluOptions).approximate ?? 'none') };
    },
  },
  hardSwish: {
    doc: 'x·relu6(x + 3)/6 (HardSwish)',
    example: '"hardSwish"',
    options: {},
    build: unary('HardSwish'),
  },
  maxPool: {
    doc: 'max pooling over [C, H, W]',
    example: '{"maxPool": {"kernel": 2}}',
    options: {
      kernel: { kind: 'pair', required: true, doc: 'window size' },
      stride: { kind: 'pair', doc: 'default: the kernel size' },
      padding: { kind: 'pairNonNeg', doc: 'default 0' },
      ceil: { kind: 'bool', doc: 'ceil mode, default false' },
    },
    build(spec, x, ctx) {
      return pool('MaxPool', spec as PoolLayerOptions, x, ctx, {});
    },
  },
  avgPool: {
    doc: 'average pooling over [C, H, W]',
    example: '{"avgPool": {"kernel": 2}}',
    options: {
      kernel: { kind: 'pair', required: true, doc: 'window size' },
      stride: { kind: 'pair', doc: 'default: the kernel size' },
      padding: { kind: 'pairNonNeg', doc: 'default 0' },
      ceil: { kind: 'bool', doc: 'ceil mode, default false' },
      countIncludePad: { kind: 'bool', doc: 'count padding in the average, default true (PyTorch)' },
    },
    build(spec, x, ctx) {
      const o = spec as AvgPoolOptions;
      return pool('AveragePool', o, x, ctx, { count_include_pad: (o.countIncludePad ?? true) ? 1 : 0 });
    },
  },
  globalAvgPool: {
    doc: 'mean over H and W: [C, H, W] -> [C] ([C, 1, 1] with keepDims)',
    example: '{"globalAvgPool": {}}',
    options: { keepDims: { kind: 'bool', doc: 'default false' } },
    build(spec, x, ctx) {
      requireFloat(x, ctx);
      requireRank(x, [3], ctx);
      const y = ctx.op('GlobalAveragePool', [x.value]);
      if ((spec as GlobalAvgPoolOptions).keepDims) return { ...x, value: y, shape: [x.shape[0], 1, 1] };
      return { ...x, value: ctx.op('Flatten', [y], { axis: 1 }), shape: [x.shape[0]] };
    },
  },
  flatten: {
    doc: 'flatten each sample to one axis',
    example: '"flatten"',
    options: {},
    build(_spec, x, ctx) {
      const n = x.shape.reduce((a, d) => a * d, 1);
      return { ...x, value: ctx.op('Flatten', [x.value], { axis: 1 }), shape: [n] };
    },
  },
  dropout: {
    doc: 'zeroes a fraction `rate` of values while training (identity in the exported model)',
    example: '{"dropout": {"rate": 0.25}}',
    options: { rate: { kind: 'rate', required: true, doc: 'fraction dropped, in [0, 1)' } },
    build(spec, x, ctx) {
      requireFloat(x, ctx);
      const ratio = ctx.floats('ratio', [], [(spec as DropoutOptions).rate]);
      return { ...x, value: ctx.op('Dropout', [x.value, ratio]) };
    },
  },
  embedding: {
    doc: 'token ids [T] (int64 input) -> vectors [T, dim] (Gather; weight [vocab, dim] ~ N(0, 1) as PyTorch)',
    example: '{"embedding": {"vocab": 1000, "dim": 64}}',
    options: {
      vocab: { kind: 'posInt', required: true, doc: 'number of token ids' },
      dim: { kind: 'posInt', required: true, doc: 'vector size' },
      name: NAME,
    },
    build(spec, x, ctx) {
      const o = spec as EmbeddingOptions;
      if (x.dtype !== 'int64') {
        throw ctx.error('needs int64 token ids: set "inputType": "int64" and make it the first layer');
      }
      const w = ctx.param('weight', [o.vocab, o.dim], { kind: 'normal', std: 1 });
      return {
        value: ctx.op('Gather', [w, x.value], { axis: 0 }),
        shape: [...x.shape, o.dim],
        dtype: 'float32',
      };
    },
  },
  attention: {
    doc:
      'pre-norm transformer block on [T, D]: x + MHSA(LayerNorm(x)), then x + MLP(LayerNorm(x)) with GELU ' +
      '(as torch.nn.TransformerEncoderLayer with norm_first=True, batch_first=True, activation gelu, dropout 0)',
    example: '{"attention": {"heads": 4}}',
    options: {
      heads: { kind: 'posInt', required: true, doc: 'attention heads; must divide D' },
      mlpRatio: { kind: 'posNumber', doc: 'MLP width as a multiple of D, default 4' },
      mlpDim: { kind: 'posInt', doc: 'MLP width (overrides mlpRatio)' },
      epsilon: { kind: 'posNumber', doc: 'LayerNorm epsilon, default 1e-5' },
      causal: { kind: 'bool', doc: 'mask later positions, default false' },
      gelu: { kind: 'gelu', doc: "'none' (exact, default) or 'tanh'" },
      name: NAME,
    },
    build(spec, x, ctx) {
      return attentionBlock(spec as AttentionOptions, x, ctx);
    },
  },
  residual: {
    doc: 'x + f(x), where f is the nested list of layers (its output must have the input shape)',
    example: '{"residual": {"layers": [{"dense": {"units": 64}}, "relu"]}}',
    options: { layers: { kind: 'layers', required: true, doc: 'the layers of f' }, name: NAME },
    build(spec, x, ctx, nested) {
      const o = spec as ResidualOptions;
      const y = nested(o.layers, x, ctx.prefix, ctx.where);
      if (y.shape.join() !== x.shape.join()) {
        throw ctx.error(`the inner layers change the shape ${fmtShape(x.shape)} to ${fmtShape(y.shape)}`);
      }
      return { ...x, value: ctx.op('Add', [x.value, y.value]) };
    },
  },
  reshape: {
    doc: 'reshape each sample (batch axis kept)',
    example: '{"reshape": {"shape": [64, -1]}}',
    options: { shape: { kind: 'shape', required: true, doc: 'new per-sample shape; one entry may be -1' } },
    build(spec, x, ctx) {
      const target = (spec as ReshapeOptions).shape;
      const n = x.shape.reduce((a, d) => a * d, 1);
      const known = target.filter((d) => d !== -1).reduce((a, d) => a * d, 1);
      const shape = target.map((d) => (d === -1 ? n / known : d));
      if (!shape.every((d) => Number.isInteger(d) && d > 0) || shape.reduce((a, d) => a * d, 1) !== n) {
        throw ctx.error(`cannot reshape ${fmtShape(x.shape)} (${n} values) to ${fmtShape(target)}`);
      }
      return { ...x, value: ctx.op('Reshape', [x.value, ctx.int64s('shape', [-1, ...shape])]), shape };
    },
  },
  transpose: {
    doc: 'permute the axes of each sample (batch axis kept first)',
    example: '{"transpose": {"perm": [1, 0]}}',
    options: { perm: { kind: 'perm', required: true, doc: 'permutation of the sample axes' } },
    build(spec, x, ctx) {
      const perm = (spec as TransposeOptions).perm;
      if (perm.length !== x.shape.length) {
        throw ctx.error(
          `perm ${fmtShape(perm)} has ${perm.length} axes, the input ${fmtShape(x.shape)} has ${x.shape.length}`,
        );
      }
      const y = ctx.op('Transpose', [x.value], { perm: [0, ...perm.map((p) => p + 1)] });
      return { ...x, value: y, shape: perm.map((p) => x.shape[p]) };
    },
  },
  positionEmbedding: {
    doc: 'adds a learned tensor of the sample shape (e.g. [T, D] positions), initialised N(0, 0.02)',
    example: '{"positionEmbedding": {}}',
    options: { name: NAME },
    build(_spec, x, ctx) {
      requireFloat(x, ctx);
      const p = ctx.param('weight', x.shape, { kind: 'normal', std: 0.02 });
      return { ...x, value: ctx.op('Add', [x.value, p]) };
    },
  },
};

function pool(
  opType: string,
  o: PoolLayerOptions,
  x: Flow,
  ctx: LayerContext,
  extra: Record<string, unknown>,
): Flow {
  requireFloat(x, ctx);
  requireRank(x, [3], ctx, 'pooling takes [channels, height, width]');
  const k = pair(o.kernel, [1, 1]);
  const s = pair(o.stride, k);
  const p = pair(o.padding, [0, 0]);
  if (p[0] * 2 > k[0] || p[1] * 2 > k[1]) {
    throw ctx.error(`padding ${fmtShape(p)} must be at most half the kernel ${fmtShape(k)} (as in PyTorch)`);
  }
  const ceil = o.ceil ?? false;
  const oh = windowOut(x.shape[1], k[0], s[0], 1, p[0], p[0], ceil);
  const ow = windowOut(x.shape[2], k[1], s[1], 1, p[1], p[1], ceil);
  if (oh < 1 || ow < 1) throw ctx.error(`kernel ${fmtShape(k)} does not fit the input ${fmtShape(x.shape)}`);
  const y = ctx.op(opType, [x.value], {
    kernel_shape: k,
    strides: s,
    pads: [p[0], p[1], p[0], p[1]],
    ceil_mode: ceil ? 1 : 0,
    ...extra,
  });
  return { ...x, value: y, shape: [x.shape[0], oh, ow] };
}

function attentionBlock(o: AttentionOptions, x: Flow, ctx: LayerContext): Flow {
  requireFloat(x, ctx);
  requireRank(x, [2], ctx, 'attention takes [tokens, width]');
  const [t, d] = x.shape;
  const h = o.heads;
  if (d % h !== 0) throw ctx.error(`heads (${h}) must divide the width D = ${d}`);
  const dh = d / h;
  const mlp = o.mlpDim ?? Math.max(1, Math.round(d * (o.mlpRatio ?? 4)));
  const eps = o.epsilon ?? 1e-5;
  // Self-attention on LayerNorm(x).
  const n1 = layerNormOn(ctx, x, eps, 'norm1.');
  const heads = ctx.int64s('heads_shape', [-1, t, h, dh]);
  // q/k/v as nn.MultiheadAttention: xavier_uniform_ over the stacked [3D, D] in_proj weight, zero biases.
  const rows: Flow = { ...n1, value: ctx.op('Reshape', [n1.value, ctx.int64s('rows', [-1, d])]), shape: [d] };
  const inProj = {
    weight: { kind: 'xavier', fanIn: d, fanOut: 3 * d },
    bias: { kind: 'constant', value: 0 },
  } as const;
  const proj = (which: string, perm: number[]) => {
    const p = denseOn(ctx, rows, d, true, `${which}.`, inProj);
    return ctx.op('Transpose', [ctx.op('Reshape', [p.value, heads])], { perm });
  };
  const q = proj('q_proj', [0, 2, 1, 3]); // [N, H, T, dh]
  const k = proj('k_proj', [0, 2, 3, 1]); // [N, H, dh, T]
  const v = proj('v_proj', [0, 2, 1, 3]); // [N, H, T, dh]
  const qs = ctx.op('Mul', [q, ctx.floats('scale', [], [1 / Math.sqrt(dh)])]);
  let scores = ctx.op('MatMul', [qs, k]); // [N, H, T, T]
  if (o.causal) {
    const mask = new Float32Array(t * t);
    for (let i = 0; i < t; i++) for (let j = i + 1; j < t; j++) mask[i * t + j] = -1e9;
    scores = ctx.op('Add', [scores, ctx.floats('causal_mask', [t, t], mask)]);
  }
  const probs = ctx.op('Softmax', [scores], { axis: -1 });
  const mixed = ctx.op('Transpose', [ctx.op('MatMul', [probs, v])], { perm: [0, 2, 1, 3] }); // [N, T, H, dh]
  const merged: Flow = { ...x, value: ctx.op('Reshape', [mixed, ctx.int64s('merge_shape', [-1, t, d])]) };
  // out_proj as nn.MultiheadAttention: default Linear weight init, zero bias.
  const out = denseOn(ctx, merged, d, true, 'out_proj.', { bias: { kind: 'constant', value: 0 } });
  const x1: Flow = { ...x, value: ctx.op('Add', [x.value, out.value]) };
  // MLP on LayerNorm(x1).
  const n2 = layerNormOn(ctx, x1, eps, 'norm2.');
  const f1 = denseOn(ctx, n2, mlp, true, 'linear1.');
  const act: Flow = { ...f1, value: geluOn(ctx, f1.value, o.gelu ?? 'none') };
  const f2 = denseOn(ctx, act, d, true, 'linear2.');
  return { ...x, value: ctx.op('Add', [x1.value, f2.value]) };
}

/** Checks one layer's options (unknown names, missing required ones, wrong types). `where`: 'layers[3]'. */
export function checkLayerOptions(type: LayerType, options: Record<string, unknown>, where: string): void {
  const def = LAYERS[type];
  for (const key of Object.keys(options)) {
    if (key === 'type') continue;
    if (!(key in def.options)) {
      const known = Object.keys(def.options);
      throw new QnnxError(
        'E_USAGE',
        `${where} (${type}): unknown option '${key}' (${known.length ? `known: ${known.join(', ')}` : 'it takes no options'})`,
      );
    }
  }
  for (const [key, od] of Object.entries(def.options)) {
    const v = options[key];
    if (v === undefined) {
      if (od.required)
        throw new QnnxError('E_USAGE', `${where} (${type}): '${key}' is required (${KIND_TEXT[od.kind]})`);
      continue;
    }
    if (!checkKind(od.kind, v)) {
      throw new QnnxError(
        'E_USAGE',
        `${where} (${type}): '${key}' must be ${KIND_TEXT[od.kind]}, got ${JSON.stringify(v)}`,
      );
    }
  }
}

/** The layer table as text, for `qnnx train --help` and docs. */
export function layerHelp(): string {
  const lines: string[] = [];
  for (const [type, def] of Object.entries(LAYERS)) {
    lines.push(`  ${type}: ${def.doc}`);
    const opts = Object.entries(def.options)
      .filter(([k]) => k !== 'name')
      .map(([k, od]) => `${k}${od.required ? '*' : ''} (${od.doc})`);
    if (opts.length) lines.push(`      options: ${opts.join('; ')}`);
    lines.push(`      e.g. ${def.example}`);
  }
  return lines.join('\n');
}

export const DATA_TYPE_OF_FLOW = { float32: DataType.FLOAT, int64: DataType.INT64 } as const;
