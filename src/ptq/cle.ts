/**
 * Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019; AIMET's `equalize_model`), with
 * high-bias absorption, on the float ONNX model after BatchNorm folding.
 *
 * For two weighted layers W1 → act → W2 where act is positively homogeneous (none, Relu, LeakyRelu, PRelu, or
 * Clip(0, +inf)), output channel i of W1 may be divided by s_i > 0 and input channel i of W2 multiplied by s_i
 * without changing the function. With r1_i = max|W1[i, :]| and r2_i = max|W2[:, i]|, s_i = √(r1_i·r2_i)/r2_i makes
 * both ranges √(r1_i·r2_i), which equalizes the per-channel ranges that per-tensor weight quantization must cover.
 * Chains of more than two layers (depthwise-separable Conv → DWConv → Conv) are equalized pairwise and iterated
 * to convergence; for a triple this converges to all three ranges equal to the cube root of their product.
 *
 * Pairs must have single-consumer intermediates (neither a graph output) and unshared weights. Supported layers:
 * Conv (any group; the weight decides the channel mapping), Gemm (constant B, A not transposed when it is the
 * second layer) and MatMul with a constant 2-D weight, whose bias is a following Add of a constant [N] vector.
 *
 * Relu6 (Clip(0, 6)) is not positively homogeneous. AIMET replaces it by Relu before CLE, which changes the float
 * model wherever an activation exceeds 6; that is opt-in here (`relu6: 'replace'`), the default skips such pairs.
 *
 * High-bias absorption (DFQ section 4.1.2) needs each first layer's pre-activation statistics, which BatchNorm
 * folding discards: call `collectBnStats(model)` before `prepareModel`/`foldBatchNorm` and pass the result as
 * `bnStats`. With z_i ~ N(β_i, γ_i²), c_i = max(0, β_i − 3γ_i) moves from b1 to b2 (b1 −= c, b2 += W2·c). It is
 * exact when z_i ≥ c_i (Relu) and the second layer has no zero padding; padded convolutions see c at their
 * borders instead of 0, so they are skipped unless `absorbIntoPadded` is set. The pass rescales the statistics it
 * is given (in place), so the same map can be handed on to analytic bias correction.
 *
 * CLE only looks at weights. Dividing W1's row i by s_i < 1 multiplies activation channel i (and its bias) by
 * 1/s_i, which can widen a per-tensor activation range: on PP-OCR det the stem pair (Conv 3→16, then a depthwise
 * Conv with 14x larger rows) costs 1.6 dB at W8A8 that way. `activationRanges` (from `measureActivationRanges`,
 * one float pass over calibration data) makes the scales account for the activation too.
 */
import { GraphBuilder } from '../ir/builder.js';
import type { Graph, Node } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import type { PassRecord } from '../ir/pass.js';
import { constantNodeTensor, tensorNumbers } from '../ir/passes/shape-inference.js';
import { Tensor } from '../ir/tensor.js';
import { DataType } from '../onnx/dtype.js';
import { AttributeType } from '../onnx/proto.js';
import type { Feeds, Runner } from '../runtime/session.js';
import { copyModelStructure } from '../runtime/taps.js';

export type MakeRunner = (m: Model) => Promise<Runner & { release?: () => Promise<void> }>;

// ---------------------------------------------------------------------------------------------------------------
// BatchNorm statistics

/** Per-channel distribution of a layer's output before its activation: mean β and standard deviation γ ≥ 0. */
export interface BnChannelStats {
  beta: Float64Array;
  gamma: Float64Array;
}

/** BatchNorm statistics keyed by `layerKey` of the Conv/ConvTranspose/Gemm the BatchNorm folds into. */
export type BnStats = Map<string, BnChannelStats>;

/** The key of a layer in BnStats and in pass records: its name, or its first output when unnamed. */
export function layerKey(n: Node): string {
  return n.name || n.outputs[0] || n.opType;
}

function isDefaultDomain(n: Node): boolean {
  return !n.domain || n.domain === 'ai.onnx';
}

/** Constant values of a graph (initializers that are not inputs, and Constant nodes) as float64. */
class ConstValues {
  private readonly tensors = new Map<string, Tensor>();

  constructor(g: Graph) {
    const inputs = new Set(g.inputs.map((v) => v.name));
    for (const [name, t] of g.initializers) if (!inputs.has(name)) this.tensors.set(name, t);
    for (const n of g.nodes) {
      if (n.opType === 'Constant' && isDefaultDomain(n) && n.outputs[0]) {
        const t = constantNodeTensor(n);
        if (t) this.tensors.set(n.outputs[0], t);
      }
    }
  }

  tensor(name: string | undefined): Tensor | undefined {
    return name ? this.tensors.get(name) : undefined;
  }

  values(name: string | undefined): { dims: number[]; v: Float64Array } | undefined {
    const t = this.tensor(name);
    if (!t || (t.dtype !== DataType.FLOAT && t.dtype !== DataType.DOUBLE && t.dtype !== DataType.FLOAT16))
      return undefined;
    const v = tensorNumbers(t);
    return v ? { dims: t.dims, v: Float64Array.from(v) } : undefined;
  }
}

/** A constant as c per-channel values along `axis` of a rank-`rank` tensor (scalars broadcast); else undefined. */
function perChannel(
  c: { dims: number[]; v: Float64Array },
  rank: number,
  axis: number,
  channels: number,
): Float64Array | undefined {
  if (c.v.length === 1) return new Float64Array(channels).fill(c.v[0]);
  if (c.dims.length > rank) return undefined;
  const dims = [...Array(rank - c.dims.length).fill(1), ...c.dims];
  for (let i = 0; i < rank; i++) if (i !== axis && dims[i] !== 1) return undefined;
  return dims[axis] === channels ? c.v : undefined;
}

/**
 * Records, for every BatchNormalization that `foldBatchNorm` would fold into a Conv, ConvTranspose or Gemm, the
 * per-channel mean (β) and standard deviation (|γ|) of its output, keyed by `layerKey` of that host node (the
 * key it keeps after folding). Per-channel Mul/Div/Add/Sub by constants right after the BatchNorm (PP-LCNet's
 * learnable affine) are applied to the statistics too, as folding absorbs them. Call it before `prepareModel`.
 */
export function collectBnStats(model: Model): BnStats {
  const g = model.graph;
  const consts = new ConstValues(g);
  const consumers = g.consumers();
  const outputs = new Set(g.outputs.map((o) => o.name));
  const single = (name: string): Node | undefined => {
    const cs = consumers.get(name) ?? [];
    return cs.length === 1 && !outputs.has(name) && isDefaultDomain(cs[0]) ? cs[0] : undefined;
  };
  const stats: BnStats = new Map();
  for (const host of g.nodes) {
    if (!['Conv', 'ConvTranspose', 'Gemm'].includes(host.opType) || !isDefaultDomain(host)) continue;
    const y = host.outputs[0];
    if (!y) continue;
    const bn = single(y);
    if (bn?.opType !== 'BatchNormalization' || bn.inputs[0] !== y) continue;
    if (bn.attrInt('training_mode', 0) !== 0) continue;
    const [scale, bias] = [1, 2].map((i) => consts.values(bn.inputs[i]));
    if (!scale || !bias || scale.v.length !== bias.v.length) continue;
    const c = scale.v.length;
    const beta = Float64Array.from(bias.v);
    const gamma = scale.v.map(Math.abs);
    // Follow constant per-channel affine ops that folding also absorbs.
    let out = bn.outputs[0];
    const rank = host.opType === 'Gemm' ? 2 : (consts.tensor(host.inputs[1])?.dims.length ?? 4);
    for (let next = single(out); next; next = single(out)) {
      if (!['Mul', 'Div', 'Add', 'Sub'].includes(next.opType)) break;
      const other = next.inputs[0] === out ? 1 : 0;
      if (next.inputs[1 - other] !== out || next.inputs[other] === out) break;
      const k = consts.values(next.inputs[other]);
      const v = k && perChannel(k, rank, 1, c);
      if (!v) break;
      if (next.opType === 'Mul') {
        for (let i = 0; i < c; i++) {
          beta[i] *= v[i];
          gamma[i] *= Math.abs(v[i]);
        }
      } else if (next.opType === 'Div') {
        if (other !== 1 || v.some((x) => x === 0)) break;
        for (let i = 0; i < c; i++) {
          beta[i] /= v[i];
          gamma[i] /= Math.abs(v[i]);
        }
      } else if (next.opType === 'Add') for (let i = 0; i < c; i++) beta[i] += v[i];
      else {
        if (other !== 1) break;
        for (let i = 0; i < c; i++) beta[i] -= v[i];
      }
      out = next.outputs[0];
    }
    // After folding an unnamed host takes the output of the last folded op.
    stats.set(host.name || out, { beta, gamma });
  }
  return stats;
}

// ---------------------------------------------------------------------------------------------------------------
// Weighted layers: channel maps over the weight elements

export type LayerKind = 'conv' | 'gemm' | 'matmul';

/** A weighted node with a constant float32 weight, viewed as out-channel x in-channel blocks of elements. */
export interface WeightedLayer {
  node: Node;
  kind: LayerKind;
  weight: Tensor;
  outChannels: number;
  inChannels: number;
  /** For every weight element: its output channel and its input channel. */
  outOf: Int32Array;
  inOf: Int32Array;
  /** Where the bias is (Conv/Gemm input 2; MatMul: the constant input of the following Add), if any. */
  bias?: { node: Node; index: number };
  /** The value after the bias: the node output, or the bias Add's output for a MatMul. */
  output: string;
  /** Axis of the channel in the layer's activations (1 for Conv, last for Gemm/MatMul). */
  channelAxis: 'first' | 'last';
}

/** Element-to-channel maps of a weight, or undefined for unsupported layouts. */
export function channelMaps(
  n: Node,
  w: Tensor,
): { outChannels: number; inChannels: number; outOf: Int32Array; inOf: Int32Array } | undefined {
  const size = w.size;
  const outOf = new Int32Array(size);
  const inOf = new Int32Array(size);
  if (n.opType === 'Conv') {
    if (w.dims.length < 3) return undefined;
    const [O, Cg] = w.dims;
    const group = n.attrInt('group', 1);
    if (O % group !== 0) return undefined;
    const K = size / (O * Cg);
    const perGroup = O / group;
    for (let o = 0; o < O; o++) {
      const gi = Math.floor(o / perGroup);
      for (let ci = 0; ci < Cg; ci++) {
        const base = (o * Cg + ci) * K;
        for (let k = 0; k < K; k++) {
          outOf[base + k] = o;
          inOf[base + k] = gi * Cg + ci;
        }
      }
    }
    return { outChannels: O, inChannels: Cg * group, outOf, inOf };
  }
  if (w.dims.length !== 2) return undefined;
  const transB = n.opType === 'Gemm' && n.attrInt('transB', 0) === 1;
  const [r, c] = w.dims;
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < c; j++) {
      outOf[i * c + j] = transB ? i : j;
      inOf[i * c + j] = transB ? j : i;
    }
  }
  return transB
    ? { outChannels: r, inChannels: c, outOf, inOf }
    : { outChannels: c, inChannels: r, outOf, inOf };
}

/**
 * The weighted layers of a graph: Conv, Gemm and MatMul nodes whose weight (input 1) is a float32 initializer
 * (not a graph input). `consumers` is the graph's consumer map.
 */
export function weightedLayers(g: Graph, consumers = g.consumers()): WeightedLayer[] {
  const inputs = new Set(g.inputs.map((v) => v.name));
  const outputs = new Set(g.outputs.map((v) => v.name));
  const out: WeightedLayer[] = [];
  for (const n of g.nodes) {
    if (!['Conv', 'Gemm', 'MatMul'].includes(n.opType) || !isDefaultDomain(n)) continue;
    const wName = n.inputs[1];
    const w = wName && !inputs.has(wName) ? g.initializer(wName) : undefined;
    if (!w || w.dtype !== DataType.FLOAT) continue;
    const maps = channelMaps(n, w);
    if (!maps) continue;
    let bias: WeightedLayer['bias'];
    let output = n.outputs[0];
    if (n.opType === 'MatMul') {
      const cs = consumers.get(output) ?? [];
      const add = cs.length === 1 && !outputs.has(output) && cs[0].opType === 'Add' ? cs[0] : undefined;
      if (add && isDefaultDomain(add)) {
        const bi = add.inputs[0] === output ? 1 : 0;
        const bt = add.inputs[1 - bi] === output ? g.initializer(add.inputs[bi]) : undefined;
        if (
          bt &&
          !inputs.has(bt.name) &&
          bt.dtype === DataType.FLOAT &&
          bt.size === maps.outChannels &&
          bt.dims.every((d, i) => i === bt.dims.length - 1 || d === 1)
        ) {
          bias = { node: add, index: bi };
          output = add.outputs[0];
        }
      }
    } else if (n.inputs[2]) {
      bias = { node: n, index: 2 };
    }
    out.push({
      node: n,
      kind: n.opType === 'Conv' ? 'conv' : n.opType === 'Gemm' ? 'gemm' : 'matmul',
      weight: w,
      ...maps,
      bias,
      output,
      channelAxis: n.opType === 'Conv' ? 'first' : 'last',
    });
  }
  return out;
}

/** The effective bias of a layer as float64 per output channel (Gemm: beta·C), zeros when it has none. */
export function layerBias(g: Graph, l: WeightedLayer): Float64Array | undefined {
  const b = new Float64Array(l.outChannels);
  if (!l.bias) return b;
  const t = g.initializer(l.bias.node.inputs[l.bias.index]);
  if (!t || t.dtype !== DataType.FLOAT) return undefined;
  const v = t.data as Float32Array;
  if (v.length !== 1 && v.length !== l.outChannels) return undefined;
  const beta = l.node.opType === 'Gemm' ? l.node.attrFloat('beta', 1) : 1;
  for (let i = 0; i < l.outChannels; i++) b[i] = beta * v[v.length === 1 ? 0 : i];
  return b;
}

/**
 * Writes a new effective bias (float64 per output channel) into the model as a fresh initializer (existing
 * tensors are never modified: other models may share them). Conv/Gemm without a bias get one; returns false when
 * the layer has nowhere to put a bias (a MatMul without a constant Add after it).
 */
export function setLayerBias(
  g: Graph,
  l: WeightedLayer,
  bias: Float64Array,
  builder?: GraphBuilder,
): boolean {
  const n = l.node;
  if (!l.bias) {
    if (n.opType === 'MatMul') return false;
    const b = builder ?? new GraphBuilder(g);
    const name = b.uniqueName(`${layerKey(n)}_bias`);
    g.addInitializer(new Tensor(name, DataType.FLOAT, [l.outChannels], Float32Array.from(bias)));
    while (n.inputs.length < 3) n.inputs.push('');
    n.inputs[2] = name;
    if (n.opType === 'Gemm') n.setAttr('beta', AttributeType.FLOAT, 1);
    l.bias = { node: n, index: 2 };
    return true;
  }
  const old = g.initializer(l.bias.node.inputs[l.bias.index])!;
  const beta = n.opType === 'Gemm' ? n.attrFloat('beta', 1) : 1;
  const data = new Float32Array(l.outChannels);
  for (let i = 0; i < l.outChannels; i++) data[i] = bias[i] / beta;
  const dims = old.size === l.outChannels ? [...old.dims] : [l.outChannels];
  const used = [...g.nodes].filter((m) => m.inputs.includes(old.name)).length;
  if (used > 1) {
    // Shared with another node: give this layer its own copy.
    const b = builder ?? new GraphBuilder(g);
    const name = b.uniqueName(`${old.name}_${layerKey(n)}`);
    g.addInitializer(new Tensor(name, DataType.FLOAT, dims, data));
    l.bias.node.inputs[l.bias.index] = name;
  } else {
    g.initializers.set(old.name, new Tensor(old.name, DataType.FLOAT, dims, data));
  }
  return true;
}

/** Replaces a layer's weight data (a new Tensor object under the same name). */
function setLayerWeight(g: Graph, l: WeightedLayer, w: Float64Array): void {
  const old = l.weight;
  const t = new Tensor(old.name, DataType.FLOAT, [...old.dims], Float32Array.from(w));
  g.initializers.set(old.name, t);
  l.weight = t;
}

// ---------------------------------------------------------------------------------------------------------------
// Per-channel statistics measured with ONNX Runtime

export interface ChannelRequest {
  /** The value to reduce. */
  tensor: string;
  /** 'first': channel on axis 1 of a rank-`rank` tensor (NCHW); 'last': channel on the last axis. */
  axis: 'first' | 'last';
  rank: number;
  channels: number;
}

/**
 * Per-channel statistics of values of `model` over `samples`, computed inside the graph (reductions appended to a
 * structural copy, so each run returns C numbers per value): 'mean' averages each run's batch/spatial mean over
 * the runs; 'absmax' is the largest |x| seen. Keyed by tensor name.
 */
export async function channelStatistics(
  model: Model,
  requests: readonly ChannelRequest[],
  samples: Iterable<Feeds> | AsyncIterable<Feeds>,
  makeRunner: MakeRunner,
  kind: 'mean' | 'absmax',
): Promise<Map<string, Float64Array>> {
  const m = copyModelStructure(model);
  const g = m.graph;
  const b = new GraphBuilder(g);
  const opset = m.opset('') ?? 13;
  const outs = new Map<string, string>();
  for (const r of requests) {
    if (outs.has(r.tensor)) continue;
    let x = r.tensor;
    if (kind === 'absmax') x = b.op('Abs', [x], undefined, `${r.tensor}_abs`);
    let axes: number[];
    if (r.axis === 'last') {
      const shape = b.int64s(`${r.tensor}_stat_shape`, [2], [-1, r.channels]);
      x = b.op('Reshape', [x, shape], undefined, `${r.tensor}_stat_reshape`);
      axes = [0];
    } else axes = [...Array(r.rank).keys()].filter((a) => a !== 1);
    const op = kind === 'mean' ? 'ReduceMean' : 'ReduceMax';
    let out: string;
    if (opset >= 18) {
      const ax = b.int64s(`${r.tensor}_stat_axes`, [axes.length], axes);
      out = b.op(op, [x, ax], { keepdims: 0 }, `${r.tensor}_channel_${kind}`);
    } else out = b.op(op, [x], { axes, keepdims: 0 }, `${r.tensor}_channel_${kind}`);
    g.outputs.push({ name: out, type: { tensor_type: { elem_type: DataType.FLOAT } } });
    outs.set(r.tensor, out);
  }
  const acc = new Map<string, Float64Array>();
  if (outs.size === 0) return acc;
  const runner = await makeRunner(m);
  let count = 0;
  try {
    const wanted = [...outs.values()];
    for await (const feeds of samples as AsyncIterable<Feeds>) {
      const r = await runner.run(feeds, wanted);
      for (const [t, out] of outs) {
        const v = r[out].data as Float32Array;
        let a = acc.get(t);
        if (!a) {
          a = new Float64Array(v.length);
          acc.set(t, a);
        }
        if (kind === 'mean') for (let i = 0; i < v.length; i++) a[i] += v[i];
        else for (let i = 0; i < v.length; i++) a[i] = Math.max(a[i], v[i]);
      }
      count++;
    }
  } finally {
    await runner.release?.();
  }
  if (count === 0) throw new Error('channel statistics: no samples were given');
  if (kind === 'mean') for (const a of acc.values()) for (let i = 0; i < a.length; i++) a[i] /= count;
  return acc;
}

// ---------------------------------------------------------------------------------------------------------------
// Cross-layer equalization

export interface CleOptions {
  /** Maximum rounds over all pairs (default 50); chains of two layers converge in one. */
  iterations?: number;
  /** Stop when every scale of a round is within this of 1 (default 1e-6). */
  tolerance?: number;
  /** High-bias absorption where BatchNorm statistics are known (default true). */
  highBiasAbsorption?: boolean;
  /** Statistics from `collectBnStats` (taken before BatchNorm folding); rescaled in place by the pass. */
  bnStats?: BnStats;
  /**
   * Clip(0, 6) between two layers: 'skip' (default) leaves the pair alone; 'replace' turns it into Relu as AIMET
   * does, which changes the float model wherever the activation exceeds 6.
   */
  relu6?: 'skip' | 'replace';
  /** Absorb high biases into a second layer with zero padding too (changes border outputs; default false). */
  absorbIntoPadded?: boolean;
  /** Only equalize pairs for which this returns true. */
  filter?: (first: Node, second: Node) => boolean;
  /**
   * Activation-aware equalization (not in DFQ; our extension for per-tensor activations): per-channel max |x| of
   * the tensors between pairs, from `measureActivationRanges`. The intermediate activation is divided by s_i
   * together with W1's row, so its range joins r1_i in units of W1's range: s_i = √(max(r1_i, a_i·R1/A)/r2_i)
   * (R1, A: the largest r1 and a). Without it, pure DFQ: s_i = √(r1_i/r2_i).
   */
  activationRanges?: Map<string, Float64Array>;
}

interface Pair {
  first: WeightedLayer;
  second: WeightedLayer;
  /** The node between them, if any. */
  act?: Node;
  /** Whether the activation is Relu-like (max(0, x)), which high-bias absorption requires. */
  reluLike: boolean;
  /** The value the second layer reads. */
  between: string;
}

function clipBounds(n: Node, consts: ConstValues): { lo: number; hi: number } | undefined {
  if (n.opType !== 'Clip') return undefined;
  const read = (i: number, attr: string, fallback: number): number | undefined => {
    if (n.inputs[i]) {
      const v = consts.values(n.inputs[i]);
      return v && v.v.length === 1 ? v.v[0] : undefined;
    }
    return n.attrFloat(attr, fallback);
  };
  const lo = read(1, 'min', Number.NEGATIVE_INFINITY);
  const hi = read(2, 'max', Number.POSITIVE_INFINITY);
  return lo === undefined || hi === undefined ? undefined : { lo, hi };
}

/** Whether the layer has zero padding anywhere (explicit pads or SAME auto_pad). */
function hasPadding(n: Node): boolean {
  if (n.opType !== 'Conv') return false;
  const auto = n.attrString('auto_pad', 'NOTSET');
  if (auto === 'SAME_UPPER' || auto === 'SAME_LOWER') return true;
  return (n.attrInts('pads') ?? []).some((p) => p !== 0);
}

function findPairs(
  model: Model,
  consts: ConstValues,
  relu6: 'skip' | 'replace',
  skipped: { first: string; second: string; reason: string }[],
): Pair[] {
  const g = model.graph;
  const consumers = g.consumers();
  const outputs = new Set(g.outputs.map((o) => o.name));
  const layers = weightedLayers(g, consumers);
  const byNode = new Map(layers.map((l) => [l.node, l]));
  const uses = (name: string) => consumers.get(name)?.length ?? 0;
  const single = (name: string): Node | undefined => {
    const cs = consumers.get(name) ?? [];
    return cs.length === 1 && !outputs.has(name) ? cs[0] : undefined;
  };
  const pairs: Pair[] = [];
  for (const first of layers) {
    const next = single(first.output);
    if (!next || !isDefaultDomain(next)) continue;
    let act: Node | undefined;
    let reluLike = false;
    let second = byNode.get(next);
    if (!second) {
      act = next;
      if (act.opType === 'Relu') reluLike = true;
      else if (act.opType === 'LeakyRelu') reluLike = false;
      else if (act.opType === 'PRelu') {
        if (!consts.values(act.inputs[1])) continue;
      } else if (act.opType === 'Clip') {
        const b = clipBounds(act, consts);
        if (b?.lo !== 0) continue;
        if (b.hi !== Number.POSITIVE_INFINITY) {
          const after = single(act.outputs[0]);
          const l2 = after && byNode.get(after);
          if (!l2) continue;
          if (relu6 === 'skip') {
            skipped.push({
              first: layerKey(first.node),
              second: layerKey(l2.node),
              reason: `Clip(0, ${b.hi}) is not scale-equivariant (relu6: 'replace' turns it into Relu)`,
            });
            continue;
          }
        }
        reluLike = true;
      } else continue;
      const after = single(act.outputs[0]);
      second = after ? byNode.get(after) : undefined;
    }
    if (!second || second === first) continue;
    const x = act ? act.outputs[0] : first.output;
    const reason =
      second.node.inputs[0] !== x || second.node.inputs.slice(1).includes(x)
        ? 'not the data input of the second layer'
        : first.channelAxis !== second.channelAxis
          ? 'channel axes differ'
          : second.node.opType === 'Gemm' && second.node.attrInt('transA', 0) !== 0
            ? 'second Gemm transposes A'
            : first.outChannels !== second.inChannels
              ? 'channel counts differ'
              : uses(first.weight.name) > 1 || uses(second.weight.name) > 1
                ? 'a weight is shared with another node'
                : first.bias && uses(first.bias.node.inputs[first.bias.index]) > 1
                  ? 'the first bias is shared with another node'
                  : undefined;
    if (reason) {
      skipped.push({ first: layerKey(first.node), second: layerKey(second.node), reason });
      continue;
    }
    pairs.push({ first, second, act, reluLike, between: x });
  }
  return pairs;
}

/** Per-output-channel (or per-input-channel) max |w|. */
function channelAbsMax(w: Float64Array, of: Int32Array, channels: number): Float64Array {
  const r = new Float64Array(channels);
  for (let i = 0; i < w.length; i++) {
    const a = Math.abs(w[i]);
    if (a > r[of[i]]) r[of[i]] = a;
  }
  return r;
}

/**
 * Cross-layer equalization with optional high-bias absorption; modifies `model` in place (new tensor objects,
 * same names) and leaves its float function unchanged up to float32 rounding (high-bias absorption: unchanged
 * wherever the absorbed pre-activations are at least c, which BatchNorm statistics make a 3-sigma event).
 */
export function equalizeCrossLayer(model: Model, options: CleOptions = {}): PassRecord {
  const g = model.graph;
  const consts = new ConstValues(g);
  const skipped: { first: string; second: string; reason: string }[] = [];
  const pairs = findPairs(model, consts, options.relu6 ?? 'skip', skipped).filter(
    (p) => options.filter?.(p.first.node, p.second.node) ?? true,
  );
  const order = new Map(g.topologicalOrder().map((n, i) => [n, i]));
  pairs.sort((a, b) => order.get(a.first.node)! - order.get(b.first.node)!);

  // Working copies in float64, written back once.
  const layers = new Set(pairs.flatMap((p) => [p.first, p.second]));
  const w = new Map<WeightedLayer, Float64Array>();
  const bias = new Map<WeightedLayer, Float64Array>();
  const biasOk = new Map<WeightedLayer, boolean>();
  for (const l of layers) {
    w.set(l, Float64Array.from(l.weight.data as Float32Array));
    const b = layerBias(g, l);
    biasOk.set(l, b !== undefined);
    bias.set(l, b ?? new Float64Array(l.outChannels));
  }
  const usable = pairs.filter((p) => {
    if (biasOk.get(p.first) && biasOk.get(p.second)) return true;
    skipped.push({ first: layerKey(p.first.node), second: layerKey(p.second.node), reason: 'bias shape' });
    return false;
  });
  const stats = options.bnStats;
  const scaleTotal = new Map<WeightedLayer, Float64Array>();

  const act = new Map<Pair, Float64Array>();
  for (const p of usable) {
    const a = options.activationRanges?.get(p.between);
    if (a && a.length === p.first.outChannels) act.set(p, Float64Array.from(a));
  }
  const maxIter = options.iterations ?? 50;
  const tol = options.tolerance ?? 1e-6;
  let rounds = 0;
  let lastChange = 0;
  for (; rounds < maxIter && usable.length; ) {
    rounds++;
    let change = 0;
    for (const p of usable) {
      const w1 = w.get(p.first)!;
      const w2 = w.get(p.second)!;
      const c = p.first.outChannels;
      const r1 = channelAbsMax(w1, p.first.outOf, c);
      const r2 = channelAbsMax(w2, p.second.inOf, c);
      const s = new Float64Array(c);
      const a = act.get(p);
      if (a) {
        // Activation-aware: the activation's range, in units of W1's range, joins r1.
        const R1 = Math.max(...r1);
        const A = Math.max(...a);
        for (let i = 0; i < c; i++) if (A > 0) r1[i] = Math.max(r1[i], (a[i] * R1) / A);
      }
      for (let i = 0; i < c; i++) {
        s[i] = r1[i] > 0 && r2[i] > 0 ? Math.sqrt(r1[i] * r2[i]) / r2[i] : 1;
        change = Math.max(change, Math.abs(s[i] - 1));
      }
      if (a) for (let i = 0; i < c; i++) a[i] /= s[i];
      for (let k = 0; k < w1.length; k++) w1[k] /= s[p.first.outOf[k]];
      for (let k = 0; k < w2.length; k++) w2[k] *= s[p.second.inOf[k]];
      const b1 = bias.get(p.first)!;
      for (let i = 0; i < c; i++) b1[i] /= s[i];
      let tot = scaleTotal.get(p.first);
      if (!tot) {
        tot = new Float64Array(c).fill(1);
        scaleTotal.set(p.first, tot);
      }
      for (let i = 0; i < c; i++) tot[i] *= s[i];
    }
    lastChange = change;
    if (change <= tol) break;
  }
  // The first layers' output statistics follow their scaling.
  if (stats) {
    for (const [l, tot] of scaleTotal) {
      const st = stats.get(layerKey(l.node));
      if (!st || st.beta.length !== tot.length) continue;
      stats.set(layerKey(l.node), {
        beta: st.beta.map((v, i) => v / tot[i]),
        gamma: st.gamma.map((v, i) => v / tot[i]),
      });
    }
  }

  // High-bias absorption, in topological order so that absorbed means propagate down chains.
  const absorbed: { first: string; second: string; channels: number; total: number }[] = [];
  if ((options.highBiasAbsorption ?? true) && stats) {
    for (const p of usable) {
      const st = stats.get(layerKey(p.first.node));
      if (!st || !p.reluLike || st.beta.length !== p.first.outChannels) continue;
      if (hasPadding(p.second.node) && !options.absorbIntoPadded) {
        skipped.push({
          first: layerKey(p.first.node),
          second: layerKey(p.second.node),
          reason: 'high-bias absorption: second layer pads with zeros',
        });
        continue;
      }
      if (p.second.kind === 'matmul' && !p.second.bias) continue;
      const c = new Float64Array(p.first.outChannels);
      let count = 0;
      let total = 0;
      for (let i = 0; i < c.length; i++) {
        c[i] = Math.max(0, st.beta[i] - 3 * st.gamma[i]);
        if (c[i] > 0) {
          count++;
          total += c[i];
        }
      }
      if (count === 0) continue;
      const b1 = bias.get(p.first)!;
      const b2 = bias.get(p.second)!;
      const w2 = w.get(p.second)!;
      for (let i = 0; i < c.length; i++) b1[i] -= c[i];
      const shift = new Float64Array(p.second.outChannels);
      for (let k = 0; k < w2.length; k++) shift[p.second.outOf[k]] += w2[k] * c[p.second.inOf[k]];
      for (let o = 0; o < shift.length; o++) b2[o] += shift[o];
      stats.set(layerKey(p.first.node), { beta: st.beta.map((v, i) => v - c[i]), gamma: st.gamma });
      const st2 = stats.get(layerKey(p.second.node));
      if (st2 && st2.beta.length === shift.length) {
        stats.set(layerKey(p.second.node), { beta: st2.beta.map((v, o) => v + shift[o]), gamma: st2.gamma });
      }
      absorbed.push({
        first: layerKey(p.first.node),
        second: layerKey(p.second.node),
        channels: count,
        total,
      });
    }
  }

  // Write back.
  const builder = new GraphBuilder(g);
  const touched = new Set(usable.flatMap((p) => [p.first, p.second]));
  for (const l of touched) {
    setLayerWeight(g, l, w.get(l)!);
    const b = bias.get(l)!;
    if (l.bias || b.some((v) => v !== 0)) setLayerBias(g, l, b, builder);
  }
  let replaced = 0;
  if (options.relu6 === 'replace') {
    for (const p of usable) {
      if (p.act?.opType === 'Clip') {
        p.act.opType = 'Relu';
        p.act.inputs = [p.act.inputs[0]];
        p.act.attributes = [];
        replaced++;
      }
    }
  }
  return {
    pass: 'cross-layer-equalization',
    changed: touched.size > 0,
    details: {
      pairs: usable.map((p) => ({
        first: layerKey(p.first.node),
        second: layerKey(p.second.node),
        activation: p.act?.opType ?? 'none',
      })),
      rounds,
      lastMaxScaleChange: lastChange,
      highBiasAbsorbed: absorbed,
      clipReplacedByRelu: replaced,
      skipped,
    },
  };
}

/**
 * Per-channel max |x| of the tensors between the pairs `equalizeCrossLayer` would equalize (one pass of the float
 * model over `samples`), for its `activationRanges` option. Call it on the prepared model, right before CLE.
 */
export function measureActivationRanges(
  model: Model,
  samples: Iterable<Feeds> | AsyncIterable<Feeds>,
  makeRunner: MakeRunner,
  options: Pick<CleOptions, 'relu6'> = {},
): Promise<Map<string, Float64Array>> {
  const pairs = findPairs(model, new ConstValues(model.graph), options.relu6 ?? 'skip', []);
  return channelStatistics(
    model,
    pairs.map((p) => ({
      tensor: p.between,
      axis: p.first.channelAxis,
      rank: p.first.kind === 'conv' ? p.first.weight.dims.length : 2,
      channels: p.first.outChannels,
    })),
    samples,
    makeRunner,
    'absmax',
  );
}
