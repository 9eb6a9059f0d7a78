/**
 * Gradients of Gemm and MatMul.
 *
 * Gemm: Y = α·A'·B' + β·C with A' = transA ? Aᵀ : A, B' = transB ? Bᵀ : B. Each input gradient is one Gemm with
 * beta 0 and the transposes chosen per (transA, transB), as in ONNX Runtime's gradient builder; dC = β·ΣdY over the
 * axes C was broadcast along.
 *
 * MatMul (numpy semantics): 1-D operands are promoted (A: [K] → [1, K], B: [K] → [K, 1]) and dY gets the removed
 * axes back; then dA = dY·Bᵀ and dB = Aᵀ·dY, each summed over the batch axes its operand was broadcast along and
 * reshaped to the operand's shape. When B is a 2-D weight under a batched A (the common Linear layer), dB is one
 * Gemm over the flattened batch instead of a batched MatMul plus ReduceSum.
 */
import { type AttrInput, floatAttr } from '../../../ir/builder.js';
import type { Dim } from '../../../ir/passes/shape-inference.js';
import type { GradContext, GradientRule } from '../rule.js';
import { noGradient } from '../rule.js';

function reduceSum(c: GradContext, x: string, axes: number[], keepdims: 0 | 1): string {
  if (c.opset >= 13) return c.op('ReduceSum', [x, c.int64s(axes)], { keepdims });
  return c.op('ReduceSum', [x], { axes, keepdims });
}

function unsqueeze(c: GradContext, x: string, axes: number[]): string {
  if (c.opset >= 13) return c.op('Unsqueeze', [x, c.int64s(axes)]);
  return c.op('Unsqueeze', [x], { axes });
}

/** op(A)·op(B)·alpha as one Gemm (opset ≥ 11, where C is optional), else Transpose/MatMul/Mul. */
function gemm(c: GradContext, a: string, b: string, transA: boolean, transB: boolean, alpha: number): string {
  if (c.opset >= 11) {
    const attrs: Record<string, AttrInput> = {};
    if (transA) attrs.transA = 1;
    if (transB) attrs.transB = 1;
    if (alpha !== 1) attrs.alpha = floatAttr('alpha', alpha);
    return c.op('Gemm', [a, b], attrs);
  }
  const ta = transA ? c.op('Transpose', [a], { perm: [1, 0] }) : a;
  const tb = transB ? c.op('Transpose', [b], { perm: [1, 0] }) : b;
  const p = c.op('MatMul', [ta, tb]);
  return alpha === 1 ? p : c.op('Mul', [p, c.constant([alpha], [], c.node.inputs[0])]);
}

function rankOf(c: GradContext, name: string): number {
  const s = c.shape(name);
  if (!s) c.staticShape(name);
  return s!.length;
}

/** Swaps the last two axes of a rank-r tensor. */
function swapLast(c: GradContext, x: string, rank: number): string {
  const perm = Array.from({ length: rank }, (_, i) => i);
  [perm[rank - 2], perm[rank - 1]] = [perm[rank - 1], perm[rank - 2]];
  return c.op('Transpose', [x], { perm });
}

/**
 * Sums `d` (batch dims `outBatch`, then two matrix dims) down to an operand whose promoted shape is `operand`
 * (rank ≥ 2), then reshapes to `original` (the operand's own shape value) when the ranks differ.
 */
function reduceTo(
  c: GradContext,
  d: string,
  outBatch: Dim[],
  operand: Dim[],
  original: string,
  originalRank: number,
): string {
  const opBatch = operand.slice(0, -2);
  const lead = outBatch.length - opBatch.length;
  const axes: number[] = [];
  for (let i = 0; i < outBatch.length; i++) {
    if (i < lead) axes.push(i);
    else if (opBatch[i - lead] === 1 && outBatch[i] !== 1) axes.push(i);
  }
  let r = d;
  if (axes.length) r = reduceSum(c, r, axes, 1);
  if (lead > 0 || originalRank !== operand.length) r = c.op('Reshape', [r, c.shapeOf(original)]);
  return r;
}

export const rules: GradientRule[] = [
  {
    op: 'Gemm',
    grad: (c) => {
      const dy = c.dY[0];
      if (!dy) return [];
      const [a, b, cin] = c.node.inputs;
      const tA = c.node.attrInt('transA', 0) !== 0;
      const tB = c.node.attrInt('transB', 0) !== 0;
      const alpha = c.node.attrFloat('alpha', 1);
      const beta = c.node.attrFloat('beta', 1);
      let da: string | undefined;
      let db: string | undefined;
      let dc: string | undefined;
      if (c.needs[0]) {
        // dA' = α·dY·B'ᵀ; dA = dA' or its transpose.
        if (!tA) da = tB ? gemm(c, dy, b, false, false, alpha) : gemm(c, dy, b, false, true, alpha);
        else da = tB ? gemm(c, b, dy, true, true, alpha) : gemm(c, b, dy, false, true, alpha);
      }
      if (c.needs[1]) {
        // dB' = α·A'ᵀ·dY; dB = dB' or its transpose.
        if (!tB) db = tA ? gemm(c, a, dy, false, false, alpha) : gemm(c, a, dy, true, false, alpha);
        else db = tA ? gemm(c, dy, a, true, true, alpha) : gemm(c, dy, a, true, false, alpha);
      }
      if (cin && c.needs[2]) {
        const s = c.unbroadcast(dy, cin);
        dc = beta === 1 ? s : c.op('Mul', [s, c.constant([beta], [], cin)]);
      }
      return [da, db, dc];
    },
  },
  {
    op: 'MatMul',
    grad: (c) => {
      const dy = c.dY[0];
      if (!dy) return [];
      const [a, b] = c.node.inputs;
      const ra = rankOf(c, a);
      const rb = rankOf(c, b);
      if (ra === 0 || rb === 0) throw noGradient(c.node, 'MatMul operands must have rank ≥ 1');
      const sa = c.shape(a)!;
      const sb = c.shape(b)!;
      // Promoted operand shapes and output shape.
      const pa: Dim[] = ra === 1 ? [1, sa[0]] : sa;
      const pb: Dim[] = rb === 1 ? [sb[0], 1] : sb;
      const batchA = pa.slice(0, -2);
      const batchB = pb.slice(0, -2);
      const nb = Math.max(batchA.length, batchB.length);
      const outBatch: Dim[] = [];
      for (let i = 0; i < nb; i++) {
        const x = batchA[i - (nb - batchA.length)] ?? 1;
        const y = batchB[i - (nb - batchB.length)] ?? 1;
        outBatch.push(x === 1 ? y : x);
      }
      const ry = nb + 2;
      // dY with the promoted axes restored: [..., M, N].
      let dy2 = dy;
      if (ra === 1 && rb === 1) dy2 = unsqueeze(c, dy, [0, 1]);
      else if (ra === 1) dy2 = unsqueeze(c, dy, [ry - 2]);
      else if (rb === 1) dy2 = unsqueeze(c, dy, [ry - 1]);
      const a2 = ra === 1 ? unsqueeze(c, a, [0]) : a;
      const b2 = rb === 1 ? unsqueeze(c, b, [1]) : b;
      let da: string | undefined;
      let db: string | undefined;
      if (c.needs[0]) {
        const d = c.op('MatMul', [dy2, swapLast(c, b2, pb.length)]);
        da = reduceTo(c, d, outBatch, pa, a, ra);
      }
      if (c.needs[1]) {
        const k = pa[pa.length - 1];
        const n = pb[1];
        if (rb === 2 && ra > 2 && typeof k === 'number' && typeof n === 'number') {
          // Weight under a batched input: one Gemm over the flattened batch, Aᵀ[K, B·M] · dY[B·M, N].
          const af = c.op('Reshape', [a, c.int64s([-1, k])]);
          const df = c.op('Reshape', [dy, c.int64s([-1, n])]);
          db = gemm(c, af, df, true, false, 1);
        } else {
          const d = c.op('MatMul', [swapLast(c, a2, pa.length), dy2]);
          db = reduceTo(c, d, outBatch, pb, b, rb);
        }
      }
      return [da, db];
    },
  },
];
