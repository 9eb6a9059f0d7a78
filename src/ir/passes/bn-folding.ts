/**
 * Batch-norm folding: a BatchNormalization (inference mode) whose input is the only use of a Conv, ConvTranspose
 * or Gemm output becomes part of that node's weights and bias. With `affine` (default on), a Mul, Div, Add or
 * Sub by a per-channel (or scalar) constant right after such a node is folded the same way; PP-OCR's PP-LCNet
 * puts a learnable scalar Mul/Add between every Conv and its activation, and quantization needs them gone.
 *
 * The per-channel map y → y·s + t is computed in float64 and the new weights and bias are rounded to the weight
 * type once. Results differ from the unfolded graph by float re-association only.
 */
import { DataType } from '../../onnx/dtype.js';
import { AttributeType } from '../../onnx/proto.js';
import { GraphBuilder } from '../builder.js';
import type { Graph, Node } from '../graph.js';
import type { Model } from '../model.js';
import type { PassRecord } from '../pass.js';
import { Tensor } from '../tensor.js';
import { constantNodeTensor, tensorNumbers } from './shape-inference.js';

export interface BatchNormFoldOptions {
  /** Also fold Mul/Div/Add/Sub by per-channel or scalar constants into the preceding node (default true). */
  affine?: boolean;
}

export interface FoldedPair {
  /** The Conv/ConvTranspose/Gemm that absorbed the op (name, or its first output when unnamed). */
  into: string;
  /** The folded node (name, or its first output when unnamed). */
  folded: string;
  opType: string;
}

const HOSTS = new Set(['Conv', 'ConvTranspose', 'Gemm']);
const AFFINE = new Set(['Mul', 'Div', 'Add', 'Sub']);

function label(n: Node): string {
  return n.name || n.outputs[0] || n.opType;
}

function isDefault(n: Node): boolean {
  return !n.domain || n.domain === 'ai.onnx';
}

/** y = y·scale + shift per output channel (length C). */
interface ChannelAffine {
  scale: Float64Array;
  shift: Float64Array;
}

class GraphFolder {
  readonly consts = new Map<string, { tensor: Tensor; node?: Node }>();
  private builder?: GraphBuilder;
  /** Weight names replaced by folded copies: removed afterwards when nothing uses them any more. */
  readonly replaced = new Set<string>();

  constructor(
    readonly g: Graph,
    readonly opset: number,
  ) {
    const inputs = new Set(g.inputs.map((v) => v.name));
    for (const [name, t] of g.initializers) if (!inputs.has(name)) this.consts.set(name, { tensor: t });
    for (const n of g.nodes) {
      if (n.opType === 'Constant' && isDefault(n) && n.outputs[0]) {
        const t = constantNodeTensor(n);
        if (t) this.consts.set(n.outputs[0], { tensor: t, node: n });
      }
    }
  }

  constant(name: string | undefined): Tensor | undefined {
    return name ? this.consts.get(name)?.tensor : undefined;
  }

  private names(): GraphBuilder {
    this.builder ??= new GraphBuilder(this.g);
    return this.builder;
  }

  /** Replaces input `i` of `node` with a new initializer holding `data`. */
  setInput(
    node: Node,
    i: number,
    base: string,
    dtype: DataType,
    dims: number[],
    data: Float32Array | Float64Array,
  ) {
    const old = node.inputs[i];
    if (old) this.replaced.add(old);
    const name = this.names().uniqueName(base);
    const t = new Tensor(name, dtype, dims, data);
    this.g.addInitializer(t);
    this.consts.set(name, { tensor: t });
    while (node.inputs.length <= i) node.inputs.push('');
    node.inputs[i] = name;
  }

  /** Drops replaced weights (initializers or Constant nodes) that nothing refers to any more. */
  cleanup(): void {
    if (this.replaced.size === 0) return;
    const used = new Set<string>(this.g.outputs.map((o) => o.name));
    for (const n of this.g.nodes) {
      for (const i of n.inputs) used.add(i);
      for (const sg of n.subgraphs())
        for (const i of [...sg.allNodes()].flatMap((m) => m.inputs)) used.add(i);
    }
    const dead = new Set<Node>();
    for (const name of this.replaced) {
      if (used.has(name)) continue;
      const c = this.consts.get(name);
      if (c?.node) dead.add(c.node);
      else this.g.initializers.delete(name);
    }
    if (dead.size) this.g.nodes = this.g.nodes.filter((n) => !dead.has(n));
  }
}

function floatType(t: Tensor | undefined): t is Tensor {
  return t !== undefined && (t.dtype === DataType.FLOAT || t.dtype === DataType.DOUBLE);
}

function newArray(dtype: DataType, n: number): Float32Array | Float64Array {
  return dtype === DataType.DOUBLE ? new Float64Array(n) : new Float32Array(n);
}

/** The number of output channels of a host node, from its weight. */
function outChannels(host: Node, w: Tensor): number | undefined {
  if (host.opType === 'Conv') return w.dims[0];
  if (host.opType === 'ConvTranspose') return w.dims[1] * host.attrInt('group', 1);
  if (w.dims.length !== 2) return undefined;
  return host.attrInt('transB', 0) ? w.dims[0] : w.dims[1];
}

/** Output rank of a host node (Conv/ConvTranspose: the weight's rank; Gemm: 2). */
function outRank(host: Node, w: Tensor): number {
  return host.opType === 'Gemm' ? 2 : w.dims.length;
}

/** Reason a BatchNormalization cannot be folded, or its per-channel affine map. */
function batchNormAffine(f: GraphFolder, bn: Node, c: number): ChannelAffine | string {
  if (bn.attrInt('training_mode', 0) !== 0) return 'training_mode';
  // Before opset 14 the statistics outputs select training mode (before 7, is_test = 0 does).
  if (f.opset < 14 && f.opset >= 7 && bn.outputs.slice(1).some((o) => o))
    return 'training mode (statistics outputs)';
  if (f.opset < 9 && bn.attrInt('spatial', 1) !== 1) return 'spatial=0';
  if (f.opset < 7 && bn.attrInt('is_test', 0) !== 1) return 'is_test=0';
  const [scale, bias, mean, variance] = [1, 2, 3, 4].map((i) => {
    const t = f.constant(bn.inputs[i]);
    return t ? tensorNumbers(t) : undefined;
  });
  if (!scale || !bias || !mean || !variance) return 'non-constant parameters';
  if ([scale, bias, mean, variance].some((v) => v.length !== c)) return 'parameter size';
  const eps = bn.attrFloat('epsilon', 1e-5);
  const s = new Float64Array(c);
  const t = new Float64Array(c);
  for (let k = 0; k < c; k++) {
    s[k] = scale[k] / Math.sqrt(variance[k] + Math.fround(eps));
    t[k] = bias[k] - mean[k] * s[k];
  }
  return { scale: s, shift: t };
}

/** Per-channel values of a constant broadcast against an output of rank `r` with `c` channels on axis 1. */
function channelValues(k: Tensor, r: number, c: number): Float64Array | undefined {
  const vals = tensorNumbers(k);
  if (!vals || k.dims.length > r) return undefined;
  const pos = 1 - (r - k.dims.length);
  for (let i = 0; i < k.dims.length; i++) if (i !== pos && k.dims[i] !== 1) return undefined;
  const kc = pos >= 0 ? k.dims[pos] : 1;
  if (kc !== 1 && kc !== c) return undefined;
  return Float64Array.from({ length: c }, (_, i) => vals[kc === 1 ? 0 : i]);
}

function affineOf(
  f: GraphFolder,
  host: Node,
  w: Tensor,
  next: Node,
  y: string,
  c: number,
): ChannelAffine | string {
  if (next.opType === 'BatchNormalization') {
    if (next.inputs[0] !== y) return 'not the data input';
    return batchNormAffine(f, next, c);
  }
  const other = next.inputs[0] === y ? 1 : 0;
  if (next.inputs[1 - other] !== y || next.inputs[other] === y) return 'not a binary op on the output';
  const k = f.constant(next.inputs[other]);
  if (!k || k.dtype !== w.dtype) return 'non-constant operand';
  const v = channelValues(k, outRank(host, w), c);
  if (!v) return 'operand not per-channel';
  const ones = new Float64Array(c).fill(1);
  const zeros = new Float64Array(c);
  switch (next.opType) {
    case 'Mul':
      return { scale: v, shift: zeros };
    case 'Div':
      if (other !== 1 || v.some((x) => x === 0)) return 'division';
      return { scale: v.map((x) => 1 / x), shift: zeros };
    case 'Add':
      return { scale: ones, shift: v };
    case 'Sub':
      if (other !== 1) return 'constant minus output';
      return { scale: ones, shift: v.map((x) => -x) };
  }
  return 'unsupported op';
}

/** Rewrites the host's weight and bias for y·scale + shift; false (nothing changed) when it cannot. */
function applyAffine(f: GraphFolder, host: Node, w: Tensor, a: ChannelAffine, c: number): string | undefined {
  const bName = host.inputs[2];
  const bias = bName ? f.constant(bName) : undefined;
  if (bName && !floatType(bias)) return 'non-constant bias';
  const scaleIsOne = a.scale.every((x) => x === 1);
  const wv = w.data as Float32Array | Float64Array;
  const base = host.name || host.outputs[0] || host.opType;
  if (!scaleIsOne) {
    const out = newArray(w.dtype, wv.length);
    const spatial = w.dims.slice(2).reduce((p, d) => p * d, 1);
    if (host.opType === 'Conv') {
      const per = wv.length / c;
      for (let i = 0; i < wv.length; i++) out[i] = wv[i] * a.scale[Math.floor(i / per)];
    } else if (host.opType === 'ConvTranspose') {
      const [cin, coutG] = w.dims;
      const group = host.attrInt('group', 1);
      const cinG = cin / group;
      for (let i = 0; i < cin; i++) {
        const gi = Math.floor(i / cinG);
        for (let j = 0; j < coutG; j++) {
          const s = a.scale[gi * coutG + j];
          const o = (i * coutG + j) * spatial;
          for (let k = 0; k < spatial; k++) out[o + k] = wv[o + k] * s;
        }
      }
    } else {
      const transB = host.attrInt('transB', 0) === 1;
      const [r, cols] = w.dims;
      for (let i = 0; i < r; i++) {
        for (let j = 0; j < cols; j++) out[i * cols + j] = wv[i * cols + j] * a.scale[transB ? i : j];
      }
    }
    f.setInput(host, 1, `${base}_W_folded`, w.dtype, [...w.dims], out);
  }
  // Bias: b' = b·scale + shift (Gemm: b = beta·C, and beta becomes 1).
  let b: Float64Array;
  if (bias) {
    const bv = tensorNumbers(bias)!;
    if (host.opType === 'Gemm') {
      const d = bias.dims;
      const okShape =
        bv.length === 1 ||
        (bv.length === c && (d.length === 1 || (d.length === 2 && d[0] === 1 && d[1] === c)));
      if (!okShape) return 'Gemm C is not per-column';
      const beta = host.attrFloat('beta', 1);
      b = Float64Array.from({ length: c }, (_, i) => beta * bv[bv.length === 1 ? 0 : i]);
    } else {
      if (bv.length !== c) return 'bias size';
      b = Float64Array.from(bv);
    }
  } else b = new Float64Array(c);
  const nb = newArray(w.dtype, c);
  for (let i = 0; i < c; i++) nb[i] = b[i] * a.scale[i] + a.shift[i];
  f.setInput(host, 2, `${base}_B_folded`, w.dtype, [c], nb);
  if (host.opType === 'Gemm') host.setAttr('beta', AttributeType.FLOAT, 1);
  return undefined;
}

/** Checks and folds `next` into `host`; returns a skip reason or undefined when folded. */
function tryFold(f: GraphFolder, host: Node, next: Node): string | undefined {
  const w = f.constant(host.inputs[1]);
  if (!floatType(w)) return 'weight is not a constant float tensor';
  if (host.opType === 'Gemm' && w.dims.length !== 2) return 'Gemm B rank';
  const c = outChannels(host, w);
  if (!c) return 'channel count';
  const a = affineOf(f, host, w, next, host.outputs[0], c);
  if (typeof a === 'string') return a;
  return applyAffine(f, host, w, a, c);
}

function foldGraph(
  g: Graph,
  opset: number,
  affine: boolean,
  folded: FoldedPair[],
  skipped: { node: string; reason: string }[],
) {
  for (const n of g.nodes) for (const sg of n.subgraphs()) foldGraph(sg, opset, affine, folded, skipped);
  const f = new GraphFolder(g, opset);
  const graphOutputs = new Set(g.outputs.map((o) => o.name));
  let again = true;
  while (again) {
    again = false;
    const consumers = g.consumers();
    for (const host of g.nodes) {
      if (!HOSTS.has(host.opType) || !isDefault(host)) continue;
      const y = host.outputs[0];
      if (!y || graphOutputs.has(y) || host.outputs.length > 1) continue;
      const cons = consumers.get(y) ?? [];
      if (cons.length !== 1) continue;
      const next = cons[0];
      if (!isDefault(next)) continue;
      if (next.opType !== 'BatchNormalization' && !(affine && AFFINE.has(next.opType))) continue;
      if (next.opType === 'BatchNormalization') {
        const extra = next.outputs
          .slice(1)
          .filter((o) => o && ((consumers.get(o)?.length ?? 0) > 0 || graphOutputs.has(o)));
        if (extra.length) {
          skipped.push({ node: label(next), reason: 'training outputs are used' });
          continue;
        }
      }
      if (next.subgraphs().length) continue;
      const reason = tryFold(f, host, next);
      if (reason) {
        if (next.opType === 'BatchNormalization') skipped.push({ node: label(next), reason });
        continue;
      }
      folded.push({ into: label(host), folded: label(next), opType: next.opType });
      host.outputs[0] = next.outputs[0];
      g.nodes = g.nodes.filter((m) => m !== next);
      g.valueInfo = g.valueInfo.filter((v) => v.name !== y);
      again = true;
      break;
    }
  }
  f.cleanup();
  const producers = g.producers();
  const noted = new Set(skipped.map((s) => s.node));
  for (const n of g.nodes) {
    if (n.opType !== 'BatchNormalization' || !isDefault(n) || noted.has(label(n))) continue;
    const p = producers.get(n.inputs[0]);
    const reason = !p
      ? 'input is not produced by a node'
      : !HOSTS.has(p.opType)
        ? `input is produced by ${p.opType}`
        : 'the producer output has other uses or is a graph output';
    skipped.push({ node: label(n), reason });
  }
}

/**
 * Folds BatchNormalization (and, with `affine`, per-channel Mul/Div/Add/Sub) into the preceding Conv,
 * ConvTranspose or Gemm when it is that node's only consumer. Weights shared with other nodes are copied, not
 * modified. Records the folded pairs by name and the BatchNormalizations left alone with the reason.
 */
export function foldBatchNorm(model: Model, options: BatchNormFoldOptions = {}): PassRecord {
  const folded: FoldedPair[] = [];
  const skipped: { node: string; reason: string }[] = [];
  foldGraph(model.graph, model.opset('') ?? 1, options.affine ?? true, folded, skipped);
  const counts: Record<string, number> = {};
  for (const p of folded) counts[p.opType] = (counts[p.opType] ?? 0) + 1;
  return {
    pass: 'batchnorm-folding',
    changed: folded.length > 0,
    details: { folded: folded.length, byOpType: counts, pairs: folded, skipped },
  };
}
