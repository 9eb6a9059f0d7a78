/**
 * Exact fold of constant affine chains into the Convs that read them.
 *
 * `z = A·t + B` (a chain of Mul / Div / Add / Sub by scalar or per-channel constants, e.g. PP-LCNet's hardswish
 * `/6` followed by its learnable scalar `·a + b`) in front of a Conv without padding is the same as that Conv reading
 * `t` with weights `W·A` (per input channel) and bias `bias + Σ W·B`. With padding the fold is not exact (the
 * zero border of z is not the zero border of t), so padded Convs are left alone: see `absorbAffineIntoQdq` for
 * those. The chain nodes are removed once nothing reads their output any more.
 *
 * Arithmetic is float64, rounded to float32 once, so the result differs from the unfolded graph by float
 * re-association only. Must run after constant folding (weights in initializers) and BatchNorm folding.
 */
import type { Graph, Node } from '../../ir/graph.js';
import type { Model } from '../../ir/model.js';
import type { PassRecord } from '../../ir/pass.js';
import {
  addFloats,
  at,
  builder,
  Constants,
  convHasNoPadding,
  dropUnusedInitializers,
  isDefaultDomain,
  label,
  perChannel,
  removeUnused,
} from './common.js';

/** One affine step `x → a·x + b` with per-channel (or scalar) a and b, and the activation input index. */
export interface AffineStep {
  node: Node;
  input: string;
  a: Float64Array;
  b: Float64Array;
}

const ONE = Float64Array.of(1);
const ZERO = Float64Array.of(0);

/**
 * The affine step a node computes, when it is Mul / Div / Add / Sub of one activation and one float constant that
 * is a scalar or a per-channel vector for a tensor of rank `rank` (Div and Sub only with the constant second,
 * except `c - x`).
 */
export function affineStep(n: Node, consts: Constants, rank: number): AffineStep | undefined {
  if (!isDefaultDomain(n) || n.inputs.length !== 2) return undefined;
  if (!['Mul', 'Div', 'Add', 'Sub'].includes(n.opType)) return undefined;
  const [x0, x1] = n.inputs as [string, string];
  const c0 = consts.floats(x0);
  const c1 = consts.floats(x1);
  if ((c0 && c1) || (!c0 && !c1)) return undefined;
  const ci = c0 ? 0 : 1;
  const c = perChannel((c0 ?? c1)!, rank);
  if (!c) return undefined;
  const input = ci === 0 ? x1 : x0;
  switch (n.opType) {
    case 'Mul':
      return { node: n, input, a: c, b: ZERO };
    case 'Div':
      if (ci === 0 || c.some((v) => v === 0)) return undefined;
      return { node: n, input, a: c.map((v) => 1 / v), b: ZERO };
    case 'Add':
      return { node: n, input, a: ONE, b: c };
    default: // Sub
      return ci === 1
        ? { node: n, input, a: ONE, b: c.map((v) => -v) }
        : { node: n, input, a: c.map(() => -1), b: c };
  }
}

/** `z = A·t + B` built from a chain of affine steps, t the chain's input. */
export interface AffineChain {
  root: string;
  output: string;
  nodes: Node[];
  A: Float64Array;
  B: Float64Array;
}

function compose(
  A: Float64Array,
  B: Float64Array,
  a: Float64Array,
  b: Float64Array,
): [Float64Array, Float64Array] {
  const n = Math.max(A.length, B.length, a.length, b.length);
  const A2 = new Float64Array(n);
  const B2 = new Float64Array(n);
  for (let c = 0; c < n; c++) {
    A2[c] = at(a, c) * at(A, c);
    B2[c] = at(a, c) * at(B, c) + at(b, c);
  }
  return [A2, B2];
}

/**
 * The longest affine chain ending in `z`: walks back through affine steps while each intermediate value has a
 * single consumer and is not a graph output. Undefined when z is not produced by an affine step.
 */
export function affineChainEndingAt(
  z: string,
  rank: number,
  consts: Constants,
  producers: Map<string, Node>,
  consumers: Map<string, Node[]>,
  outputs: Set<string>,
): AffineChain | undefined {
  const steps: AffineStep[] = [];
  let cur = z;
  for (;;) {
    const p = producers.get(cur);
    if (!p) break;
    if (cur !== z && ((consumers.get(cur)?.length ?? 0) !== 1 || outputs.has(cur))) break;
    const s = affineStep(p, consts, rank);
    if (!s) break;
    steps.push(s);
    cur = s.input;
  }
  if (steps.length === 0) return undefined;
  let A: Float64Array = ONE;
  let B: Float64Array = ZERO;
  for (let i = steps.length - 1; i >= 0; i--) [A, B] = compose(A, B, steps[i]!.a, steps[i]!.b);
  return { root: cur, output: z, nodes: steps.map((s) => s.node).reverse(), A, B };
}

/** Folds `chain` into `conv` (input 0 must be chain.output). Returns false when shapes do not allow it. */
function foldInto(g: Graph, conv: Node, chain: AffineChain, consts: Constants): boolean {
  const w = consts.get(conv.inputs[1]);
  const wf = consts.floats(conv.inputs[1]);
  if (!w || !wf || w.dims.length < 3) return false;
  const bias = conv.inputs[2] ? consts.floats(conv.inputs[2]) : undefined;
  if (conv.inputs[2] && !bias) return false;
  const O = w.dims[0]!;
  const Cg = w.dims[1]!;
  const group = conv.attrInt('group', 1);
  const C = Cg * group;
  if (chain.A.length !== 1 && chain.A.length !== C) return false;
  if (chain.B.length !== 1 && chain.B.length !== C) return false;
  if (O % group !== 0) return false;
  const K = w.size / (O * Cg);
  const perGroup = O / group;
  const W = wf.values;
  const W2 = new Float64Array(W.length);
  const b2 = new Float64Array(O);
  for (let o = 0; o < O; o++) {
    const gi = Math.floor(o / perGroup);
    let acc = bias ? bias.values[o]! : 0;
    for (let ci = 0; ci < Cg; ci++) {
      const c = gi * Cg + ci;
      const a = at(chain.A, c);
      const bb = at(chain.B, c);
      for (let k = 0; k < K; k++) {
        const i = (o * Cg + ci) * K + k;
        W2[i] = W[i]! * a;
        acc += W[i]! * bb;
      }
    }
    b2[o] = acc;
  }
  const b = builder(g);
  const base = conv.name || conv.outputs[0] || 'conv';
  const old = [conv.inputs[1]!, conv.inputs[2] ?? ''];
  conv.inputs[0] = chain.root;
  conv.inputs[1] = addFloats(b, `${base}_W_affine`, [...w.dims], W2);
  const bName = addFloats(b, `${base}_B_affine`, [O], b2);
  if (conv.inputs.length < 3) conv.inputs.push(bName);
  else conv.inputs[2] = bName;
  dropUnusedInitializers(g, old.filter(Boolean));
  return true;
}

/** Folds affine chains into every Conv without padding that reads them (see the file comment). */
export function foldAffineIntoConv(model: Model): PassRecord {
  const g = model.graph;
  const consts = new Constants(g);
  const producers = g.producers();
  const outputs = new Set(g.outputs.map((o) => o.name));
  let consumers = g.consumers();
  const folded: { conv: string; chain: string[] }[] = [];
  const touched: Node[] = [];
  for (const conv of [...g.nodes]) {
    if (conv.opType !== 'Conv' || !isDefaultDomain(conv) || !convHasNoPadding(conv)) continue;
    const w = consts.get(conv.inputs[1]);
    const z = conv.inputs[0];
    if (!w || !z) continue;
    const chain = affineChainEndingAt(z, w.dims.length, consts, producers, consumers, outputs);
    if (!chain) continue;
    if (foldInto(g, conv, chain, consts)) {
      // Refresh constants for the new initializers and consumers for the next conv.
      for (const name of conv.inputs.slice(1)) {
        const t = g.initializer(name);
        if (t) consts.add(t);
      }
      consumers = g.consumers();
      folded.push({ conv: label(conv), chain: chain.nodes.map(label) });
      touched.push(...chain.nodes);
    }
  }
  const removed = removeUnused(g, touched);
  return {
    pass: 'affine-into-conv',
    changed: folded.length > 0,
    details: { convsFolded: folded.length, nodesRemoved: removed, folded },
  };
}
