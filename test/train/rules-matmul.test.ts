/**
 * Gemm and MatMul gradient rules against central finite differences (test/train/gradcheck.ts) on seeded random
 * shapes and attributes. Both ops have float64 kernels in ONNX Runtime and the loss is bilinear in (A, B), i.e.
 * linear in each perturbed element, so a central difference is exact up to rounding: with eps 1e-6 the error is
 * about 1e-16·|L|/eps ≈ 1e-10 relative, and tol 1e-6 leaves four orders of margin.
 */
import { describe, test } from 'node:test';
import { floatAttr } from '../../src/ir/builder.js';
import { mulberry32 } from '../helpers/ort.js';
import { type CheckCase, gradCheck } from './gradcheck.js';

const OPTS = { eps: 1e-6, tol: 1e-6 };

function randInt(rnd: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rnd() * (hi - lo + 1));
}

describe('matmul gradient rules', () => {
  test('Gemm: transA/transB, alpha, beta, C broadcast (float64, 16 configurations)', async (t) => {
    const rnd = mulberry32(31);
    let worst = 0;
    const seen = new Set<string>();
    for (let i = 0; i < 16; i++) {
      const [m, k, n] = [randInt(rnd, 1, 6), randInt(rnd, 1, 6), randInt(rnd, 1, 6)];
      const tA = i % 2;
      const tB = (i >> 1) % 2;
      const alpha = i % 3 === 0 ? 1 : 0.25 + 2 * rnd();
      const beta = i % 5 === 0 ? 1 : -1 + 2 * rnd();
      const cShapes: (number[] | undefined)[] = [undefined, [], [1], [n], [1, n], [m, 1], [m, n], [1, 1]];
      // The last two configurations use opset 9 (Gemm-9: C required; the rule's fallback is Transpose/MatMul/Mul).
      const opset = i >= 14 ? 9 : 13;
      const cDims = cShapes[i % cShapes.length] ?? (opset < 11 ? [n] : undefined);
      const inputs: CheckCase['inputs'] = [
        { name: 'a', dims: tA ? [k, m] : [m, k] },
        { name: 'b', dims: tB ? [n, k] : [k, n] },
      ];
      if (cDims) inputs.push({ name: 'c', dims: cDims });
      const attrs = {
        transA: tA,
        transB: tB,
        alpha: floatAttr('alpha', alpha),
        beta: floatAttr('beta', beta),
      };
      const r = await gradCheck({ op: 'Gemm', opset, attrs, inputs, seed: 300 + i }, OPTS);
      worst = Math.max(worst, ...Object.values(r));
      seen.add(`${tA}${tB}`);
    }
    t.diagnostic(`Gemm: max relative error ${worst.toExponential(2)} (trans combos ${[...seen].join(',')})`);
  });

  test('MatMul: N-D batched with broadcasting and 1-D operands (float64, 16 configurations)', async (t) => {
    const rnd = mulberry32(47);
    let worst = 0;
    for (let i = 0; i < 16; i++) {
      const [m, k, n] = [randInt(rnd, 1, 5), randInt(rnd, 1, 5), randInt(rnd, 1, 5)];
      // A full batch shape, from which each operand takes a random suffix with random axes set to 1.
      const batch = Array.from({ length: randInt(rnd, 0, 3) }, () => randInt(rnd, 2, 3));
      const pick = () => {
        const r = randInt(rnd, 0, batch.length);
        return batch.slice(batch.length - r).map((d) => (rnd() < 0.3 ? 1 : d));
      };
      let a: number[];
      let b: number[];
      switch (i % 8) {
        case 0: // 1-D · 1-D
          a = [k];
          b = [k];
          break;
        case 1: // 1-D · N-D
          a = [k];
          b = [...pick(), k, n];
          break;
        case 2: // N-D · 1-D
          a = [...pick(), m, k];
          b = [k];
          break;
        case 3: // batched input, 2-D weight (the Gemm path for dB)
          a = [...(batch.length ? batch : [2]), m, k];
          b = [k, n];
          break;
        default:
          a = [...pick(), m, k];
          b = [...pick(), k, n];
      }
      const r = await gradCheck(
        {
          op: 'MatMul',
          // Opsets 9 and 12 take the attribute forms of Unsqueeze and ReduceSum.
          opset: i === 7 ? 12 : i === 6 ? 9 : 13,
          inputs: [
            { name: 'a', dims: a },
            { name: 'b', dims: b },
          ],
          seed: 400 + i,
        },
        OPTS,
      );
      worst = Math.max(worst, ...Object.values(r));
    }
    t.diagnostic(`MatMul: max relative error ${worst.toExponential(2)}`);
  });
});
