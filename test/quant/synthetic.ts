/**
 * Seeded synthetic distributions for the quantization paper checks and bench/quant-formats.ts (mulberry32 +
 * Box-Muller / inverse CDF; float32 output). The draws differ from the numpy ones behind the research numbers,
 * so results agree within sampling noise, not digit for digit.
 */
import { GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { mulberry32 } from '../helpers/ort.js';

export { mulberry32 };

/** Standard normal sampler from a uniform source (Box-Muller, both values used). */
export function normalSampler(rng: () => number): () => number {
  let spare: number | null = null;
  return () => {
    if (spare !== null) {
      const v = spare;
      spare = null;
      return v;
    }
    let u = 0;
    while (u === 0) u = rng();
    const v = rng();
    const r = Math.sqrt(-2 * Math.log(u));
    spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  };
}

export function gaussian(n: number, seed: number, sigma = 1): Float32Array {
  const z = normalSampler(mulberry32(seed));
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = sigma * z();
  return out;
}

/** Laplace(0, b). */
export function laplace(n: number, seed: number, b = 1): Float32Array {
  const rng = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let u = rng() - 0.5;
    while (u === -0.5) u = rng() - 0.5;
    out[i] = -b * Math.sign(u) * Math.log(1 - 2 * Math.abs(u));
  }
  return out;
}

/** Student-t with nu degrees of freedom (normal / sqrt(chi2 / nu), chi2 as a sum of nu squared normals). */
export function studentT(n: number, seed: number, nu = 3): Float32Array {
  const z = normalSampler(mulberry32(seed));
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let chi = 0;
    for (let k = 0; k < nu; k++) {
      const v = z();
      chi += v * v;
    }
    out[i] = z() / Math.sqrt(chi / nu);
  }
  return out;
}

/** N(0,1) with a fraction of the samples multiplied by `factor` (0.1 % x 50 in the FP8 whitepaper check). */
export function gaussianWithOutliers(n: number, seed: number, fraction = 0.001, factor = 50): Float32Array {
  const x = gaussian(n, seed);
  const rng = mulberry32(seed ^ 0x9e3779b9);
  for (let i = 0; i < n; i++) if (rng() < fraction) x[i] *= factor;
  return x;
}

/** VS-Quant weights: rows x cols, each row N(0,1) or Laplace(1) times a row scale drawn from U(0.2, 2). */
export function rowScaledWeights(
  rows: number,
  cols: number,
  seed: number,
  dist: 'gaussian' | 'laplace',
): Float32Array {
  const base = dist === 'gaussian' ? gaussian(rows * cols, seed) : laplace(rows * cols, seed);
  const rng = mulberry32(seed + 7);
  for (let r = 0; r < rows; r++) {
    const s = 0.2 + 1.8 * rng();
    for (let c = 0; c < cols; c++) base[r * cols + c] *= s;
  }
  return base;
}

/**
 * The S08 attention test graph: one layer, `heads` heads over L keys of width D (input x [1, L, D], output y
 * [1, H, L, D/H]); per-head logit scales σ = 1 and 2 folded into Wq, V = x·Wv + 1, seeded weights.
 */
export function attentionGraph(L: number, D: number, H: number): Model {
  const dh = D / H;
  const z = normalSampler(mulberry32(3));
  const m = new Model();
  m.setOpset('', 13);
  const g = m.graph;
  g.inputs.push(valueInfo('x', DataType.FLOAT, [1, L, D]));
  g.outputs.push(valueInfo('y', DataType.FLOAT, [1, H, L, dh]));
  const b = new GraphBuilder(g);
  // Per-head logit scales σ = 1 and 2 (folded into Wq), V = x·Wv + 1.
  const sig = [1, 2];
  const wq = Float32Array.from(
    { length: D * D },
    (_, i) => (sig[Math.floor((i % D) / dh)] * z()) / Math.sqrt(D),
  );
  const wk = Float32Array.from({ length: D * D }, () => z() / Math.sqrt(D));
  const wv = Float32Array.from({ length: D * D }, () => (0.5 * z()) / Math.sqrt(D));
  const heads = (t: string, perm: number[]) => {
    const r = b.op('Reshape', [t, b.int64s('shape', [4], [1, L, H, dh])]);
    return b.op('Transpose', [r], { perm });
  };
  const q = heads(b.op('MatMul', ['x', b.floats('Wq', [D, D], wq)]), [0, 2, 1, 3]);
  const k = heads(b.op('MatMul', ['x', b.floats('Wk', [D, D], wk)]), [0, 2, 3, 1]);
  const vx = b.op('MatMul', ['x', b.floats('Wv', [D, D], wv)]);
  const v = heads(b.op('Add', [vx, b.floats('bv', [D], Array(D).fill(1))]), [0, 2, 1, 3]);
  const logits = b.op('Mul', [b.op('MatMul', [q, k]), b.floats('scale', [], [1 / Math.sqrt(dh)])]);
  const p = b.op('Softmax', [logits], { axis: -1 }, 'softmax');
  b.node('MatMul', [p, v], { outputs: ['y'], name: 'pv' });
  return m;
}
