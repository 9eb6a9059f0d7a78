/**
 * ConvTranspose with kernel = stride and no padding (the 2x upsampling "deconv" of segmentation heads, e.g. the
 * PP-OCR det head) rewritten exactly as a 1x1 Conv producing Cout·s² channels followed by DepthToSpace(s, CRD):
 *
 *   y[n, co, h·s+i, w·s+j] = b[co] + Σ_ci x[n, ci, h, w] · W[ci, co, i, j]
 *                          = DepthToSpace_CRD(Conv1x1(x; W'[co·s² + i·s + j, ci] = W[ci, co, i, j]))
 *
 * ONNX Runtime has no integer ConvTranspose (QDQ around it stays float); the 1x1 Conv becomes a QLinearConv.
 * Elementwise unary ops right after the DepthToSpace (Relu, Sigmoid, Clip, LeakyRelu, HardSigmoid, Tanh, ...) are
 * moved in front of it, which is exact because DepthToSpace only moves values; they then fuse with the Conv (Relu,
 * Clip) or run on the smaller, quantized tensor.
 *
 * Then a DepthToSpace followed by a 1x1 Conv without padding is turned into a 1x1 Conv (block-diagonal weights,
 * one copy per sub-pixel) followed by the DepthToSpace, and two DepthToSpace in a row become one with a larger
 * block, with the channel permutation folded into the weights of the Conv in front: so a head of two stacked
 * deconvolutions ends up as integer 1x1 Convs at the low resolution and a single DepthToSpace at the end.
 */
import type { Graph, Node } from '../../ir/graph.js';
import type { Model } from '../../ir/model.js';
import type { PassRecord } from '../../ir/pass.js';
import { AttributeType } from '../../onnx/proto.js';
import { addFloats, builder, Constants, dropUnusedInitializers, isDefaultDomain, label } from './common.js';

/** Unary elementwise ops that commute with DepthToSpace. */
const ELEMENTWISE = new Set([
  'Relu',
  'Sigmoid',
  'Clip',
  'LeakyRelu',
  'HardSigmoid',
  'HardSwish',
  'Tanh',
  'Elu',
  'Selu',
  'Softplus',
  'Exp',
  'Abs',
  'Neg',
  'Identity',
]);

function ints(n: Node, name: string): number[] | undefined {
  return n.attrInts(name);
}

/** Block size when `n` is a ConvTranspose that equals Conv1x1 + DepthToSpace, else undefined. */
function convTransposeBlock(n: Node, consts: Constants): number | undefined {
  if (n.opType !== 'ConvTranspose' || !isDefaultDomain(n)) return undefined;
  const w = consts.get(n.inputs[1]);
  if (w?.dims.length !== 4 || !consts.floats(n.inputs[1])) return undefined;
  if (n.inputs[2] && !consts.floats(n.inputs[2])) return undefined;
  if (n.attrInt('group', 1) !== 1) return undefined;
  const [kh, kw] = [w.dims[2]!, w.dims[3]!];
  const ks = ints(n, 'kernel_shape');
  if (ks && (ks[0] !== kh || ks[1] !== kw)) return undefined;
  const s = ints(n, 'strides') ?? [1, 1];
  if (kh !== kw || s[0] !== kh || s[1] !== kw) return undefined;
  if ((ints(n, 'dilations') ?? [1, 1]).some((d) => d !== 1)) return undefined;
  if ((ints(n, 'pads') ?? [0, 0, 0, 0]).some((p) => p !== 0)) return undefined;
  if ((ints(n, 'output_padding') ?? [0, 0]).some((p) => p !== 0)) return undefined;
  if (n.attr('output_shape')) return undefined;
  const auto = n.attrString('auto_pad', 'NOTSET');
  if (auto !== 'NOTSET' && auto !== 'VALID') return undefined;
  return kh;
}

function d2sNode(
  b: ReturnType<typeof builder>,
  input: string,
  output: string,
  bs: number,
  name: string,
): Node {
  const node = b.node('DepthToSpace', [input], { outputs: [output], name });
  node.setAttr('blocksize', AttributeType.INT, bs);
  node.setAttr('mode', AttributeType.STRING, new TextEncoder().encode('CRD'));
  return node;
}

function replaceNode(g: Graph, old: Node, replacement: Node[]): void {
  const i = g.nodes.indexOf(old);
  const rest = g.nodes.filter((n) => !replacement.includes(n) && n !== old);
  rest.splice(i, 0, ...replacement);
  g.nodes = rest;
}

function isD2S(n: Node | undefined): n is Node {
  return (
    n !== undefined &&
    n.opType === 'DepthToSpace' &&
    isDefaultDomain(n) &&
    n.attrString('mode', 'DCR') === 'CRD'
  );
}

/** Rewrites ConvTranspose(k = s, no padding) and tidies the DepthToSpace that results (see the file comment). */
export function convTransposeToDepthToSpace(model: Model): PassRecord {
  const g = model.graph;
  const consts = new Constants(g);
  const b = builder(g);
  const rewritten: string[] = [];
  let moved = 0;
  let swapped = 0;
  let merged = 0;

  // 1. ConvTranspose → Conv1x1 + DepthToSpace.
  for (const n of [...g.nodes]) {
    const s = convTransposeBlock(n, consts);
    if (!s) continue;
    const w = consts.get(n.inputs[1])!;
    const W = consts.floats(n.inputs[1])!.values;
    const [Cin, Cout] = [w.dims[0]!, w.dims[1]!];
    const s2 = s * s;
    const W2 = new Float64Array(Cout * s2 * Cin);
    for (let ci = 0; ci < Cin; ci++)
      for (let co = 0; co < Cout; co++)
        for (let p = 0; p < s2; p++) W2[(co * s2 + p) * Cin + ci] = W[(ci * Cout + co) * s2 + p]!;
    const bias = n.inputs[2] ? consts.floats(n.inputs[2])!.values : undefined;
    const base = n.name || n.outputs[0] || 'ConvTranspose';
    const wName = addFloats(b, `${base}_W_1x1`, [Cout * s2, Cin, 1, 1], W2);
    const inputs = [n.inputs[0]!, wName];
    if (bias) {
      const b2 = new Float64Array(Cout * s2);
      for (let co = 0; co < Cout; co++) for (let p = 0; p < s2; p++) b2[co * s2 + p] = bias[co]!;
      inputs.push(addFloats(b, `${base}_B_1x1`, [Cout * s2], b2));
    }
    const mid = b.uniqueName(`${base}_space`);
    const conv = b.node('Conv', inputs, { outputs: [mid], name: `${base}_1x1` });
    conv.setAttr('kernel_shape', AttributeType.INTS, [1, 1]);
    const d2s = d2sNode(b, mid, n.outputs[0]!, s, `${base}_DepthToSpace`);
    replaceNode(g, n, [conv, d2s]);
    dropUnusedInitializers(g, [n.inputs[1]!, n.inputs[2] ?? ''].filter(Boolean));
    for (const t of inputs.slice(1)) consts.add(g.initializer(t)!);
    rewritten.push(label(n));
  }
  if (rewritten.length === 0) {
    return { pass: 'convtranspose-to-depthtospace', changed: false, details: { rewritten: 0 } };
  }

  const outputs = () => new Set(g.outputs.map((o) => o.name));
  let progress = true;
  while (progress) {
    progress = false;
    const producers = g.producers();
    const consumers = g.consumers();
    const outs = outputs();
    for (const d of [...g.nodes]) {
      if (!isD2S(d) || !g.nodes.includes(d)) continue;
      const y = d.outputs[0]!;
      const cs = consumers.get(y) ?? [];
      if (cs.length !== 1 || outs.has(y)) continue;
      const c = cs[0]!;
      const bs = d.attrInt('blocksize', 0);
      // 2. Elementwise unary op after the DepthToSpace: move it in front.
      if (ELEMENTWISE.has(c.opType) && isDefaultDomain(c) && c.inputs[0] === y) {
        const extra = c.inputs.slice(1).filter(Boolean);
        if (extra.every((e) => consts.get(e) && consts.get(e)!.size === 1)) {
          const x = d.inputs[0]!;
          const z = c.outputs[0]!;
          const mid = b.uniqueName(`${x}_${c.opType.toLowerCase()}`);
          c.inputs[0] = x;
          c.outputs[0] = mid;
          d.inputs[0] = mid;
          d.outputs[0] = z;
          g.sort();
          moved++;
          progress = true;
          break;
        }
      }
      // 3. DepthToSpace → Conv1x1 (no padding, group 1): Conv1x1 with block-diagonal weights → DepthToSpace.
      if (c.opType === 'Conv' && isDefaultDomain(c) && c.inputs[0] === y && c.attrInt('group', 1) === 1) {
        const w = consts.get(c.inputs[1]);
        const wf = consts.floats(c.inputs[1]);
        const bias = c.inputs[2] ? consts.floats(c.inputs[2]) : undefined;
        const ks = w?.dims.slice(2) ?? [];
        const strides = ints(c, 'strides') ?? [1, 1];
        const pads = ints(c, 'pads') ?? [0, 0, 0, 0];
        if (
          w &&
          wf &&
          (!c.inputs[2] || bias) &&
          ks.length === 2 &&
          ks.every((k) => k === 1) &&
          strides.every((v) => v === 1) &&
          pads.every((v) => v === 0) &&
          c.attrString('auto_pad', 'NOTSET') === 'NOTSET'
        ) {
          const [O, C] = [w.dims[0]!, w.dims[1]!];
          const s2 = bs * bs;
          const W2 = new Float64Array(O * s2 * C * s2);
          for (let o = 0; o < O; o++)
            for (let ci = 0; ci < C; ci++)
              for (let p = 0; p < s2; p++) W2[(o * s2 + p) * (C * s2) + ci * s2 + p] = wf.values[o * C + ci]!;
          const base = c.name || c.outputs[0] || 'Conv';
          const wName = addFloats(b, `${base}_W_blockdiag`, [O * s2, C * s2, 1, 1], W2);
          const inputs = [d.inputs[0]!, wName];
          if (bias) {
            const b2 = new Float64Array(O * s2);
            for (let o = 0; o < O; o++) for (let p = 0; p < s2; p++) b2[o * s2 + p] = bias.values[o]!;
            inputs.push(addFloats(b, `${base}_B_blockdiag`, [O * s2], b2));
          }
          const oldInputs = c.inputs.slice(1);
          const z = c.outputs[0]!;
          const mid = b.uniqueName(`${base}_space`);
          c.inputs = inputs;
          c.outputs = [mid];
          d.inputs = [mid];
          d.outputs = [z];
          for (const t of inputs.slice(1)) consts.add(g.initializer(t)!);
          dropUnusedInitializers(g, oldInputs.filter(Boolean));
          g.sort();
          swapped++;
          progress = true;
          break;
        }
      }
      // 4. DepthToSpace(s1) → DepthToSpace(s2): one DepthToSpace(s1·s2), with the channel permutation folded into
      // the Conv producing the first one's input (through elementwise ops, which commute with a permutation).
      if (isD2S(c) && c.inputs[0] === y) {
        let p = producers.get(d.inputs[0]!);
        let ok = true;
        while (p && ELEMENTWISE.has(p.opType) && isDefaultDomain(p)) {
          const single = (consumers.get(p.outputs[0]!)?.length ?? 0) === 1 && !outs.has(p.outputs[0]!);
          const extra = p.inputs.slice(1).filter(Boolean);
          if (!single || !extra.every((e) => consts.get(e)?.size === 1)) ok = false;
          p = producers.get(p.inputs[0]!);
        }
        const s1 = bs;
        const s2 = c.attrInt('blocksize', 0);
        const w = p ? consts.get(p.inputs[1]) : undefined;
        const wf = p ? consts.floats(p.inputs[1]) : undefined;
        const bias = p?.inputs[2] ? consts.floats(p.inputs[2]) : undefined;
        const single = p && (consumers.get(p.outputs[0]!)?.length ?? 0) === 1 && !outs.has(p.outputs[0]!);
        if (
          ok &&
          p &&
          single &&
          p.opType === 'Conv' &&
          isDefaultDomain(p) &&
          w &&
          wf &&
          (!p.inputs[2] || bias)
        ) {
          // Z[c2, (h·s1 + i1)·s2 + i2, (w·s1 + j1)·s2 + j2] = X[((c2·s2² + i2·s2 + j2)·s1 + i1)·s1 + j1, h, w], and
          // D2S(S = s1·s2) reads channel c2·S² + i·S + j for the offsets i = i1·s2 + i2, j = j1·s2 + j2.
          const S = s1 * s2;
          const Ctot = w.dims[0]!;
          const C2 = Ctot / (S * S);
          if (Number.isInteger(C2)) {
            const perm = new Int32Array(Ctot); // new channel index → old channel index
            for (let c2 = 0; c2 < C2; c2++)
              for (let i2 = 0; i2 < s2; i2++)
                for (let j2 = 0; j2 < s2; j2++)
                  for (let i1 = 0; i1 < s1; i1++)
                    for (let j1 = 0; j1 < s1; j1++) {
                      const old = ((c2 * s2 * s2 + i2 * s2 + j2) * s1 + i1) * s1 + j1;
                      perm[c2 * S * S + (i1 * s2 + i2) * S + (j1 * s2 + j2)] = old;
                    }
            const per = w.size / Ctot;
            const W2 = new Float64Array(w.size);
            for (let k = 0; k < Ctot; k++)
              for (let e = 0; e < per; e++) W2[k * per + e] = wf.values[perm[k]! * per + e]!;
            const base = p.name || p.outputs[0] || 'Conv';
            const oldInputs = p.inputs.slice(1);
            p.inputs[1] = addFloats(b, `${base}_W_perm`, [...w.dims], W2);
            if (bias) {
              p.inputs[2] = addFloats(
                b,
                `${base}_B_perm`,
                [Ctot],
                Array.from(perm, (k) => bias.values[k]!),
              );
            }
            for (const t of p.inputs.slice(1)) consts.add(g.initializer(t)!);
            dropUnusedInitializers(g, oldInputs.filter(Boolean));
            d.outputs = [c.outputs[0]!];
            d.setAttr('blocksize', AttributeType.INT, S);
            g.nodes = g.nodes.filter((n) => n !== c);
            merged++;
            progress = true;
            break;
          }
        }
      }
    }
  }
  return {
    pass: 'convtranspose-to-depthtospace',
    changed: true,
    details: {
      rewritten: rewritten.length,
      nodes: rewritten,
      unaryMoved: moved,
      convsSwapped: swapped,
      merged,
    },
  };
}
