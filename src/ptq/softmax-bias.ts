/**
 * Softmax bias correction (Pandey, Fournarakis, Patel, Nagel, "Softmax Bias Correction for Quantized Generative
 * Models", ICCV 2023 workshops; research note S08). An 8-bit softmax output quantizer rounds most of the many
 * small probabilities of a long row to 0, so the quantized rows no longer sum to 1: a systematic, data-independent
 * bias. The correction is measured offline on calibration data, per attention head h (or per softmax tensor):
 *
 *   β_h = E_{batch, query, key}[p − p̂]   (equivalently E[1 − Σ_j p̂_j] / L for L keys)
 *
 * and absorbed as p̃ = p̂ + β_h = s·(q − (z − β_h/s)): a fractional zero point z' = z − β_h/s, reported in the
 * pass record for targets that accept one. ONNX DequantizeLinear zero points are integers (and β_h is a fraction
 * of an LSB), so the exported model carries it as the equivalent per-head bias on the consuming MatMul's output,
 * P̃·V = P̂·V + β_h·Σ_j V_j: one ReduceSum over the keys, a Mul and an Add in float, inserted before the MatMul's
 * output quantizer (ORT then runs that MatMul in float; constant V folds to a constant bias). Softmax outputs
 * consumed by anything but the A input of a MatMul are left alone.
 *
 * The S08 setting quantizes softmax outputs on the fixed range [0, 1] (s = 1/(2^b − 1), z = 0); `fixedRange`
 * imposes it on the QuantSim's softmax quantizers. Without it the calibrated encoding is corrected as it is.
 */
import { GraphBuilder } from '../ir/builder.js';
import type { Node } from '../ir/graph.js';
import type { PassRecord } from '../ir/pass.js';
import { DataType } from '../onnx/dtype.js';
import { type Encoding, encodingFromRange } from '../quant/encoding.js';
import { fakeQuantize, sqnrDb } from '../quant/quantizer.js';
import { intScheme } from '../quant/scheme.js';
import type { QuantSim } from '../quant/sim/quantsim.js';
import { mulberry32 } from '../random.js';
import type { Feeds } from '../runtime/session.js';
import { copyModelStructure } from '../runtime/taps.js';
import type { MakeRunner } from './bias-correction.js';

/** Sums of p − p̂ and element counts per head, accumulated over calibration batches. */
export class SoftmaxBiasStats {
  readonly sum: Float64Array;
  readonly count: Float64Array;

  constructor(readonly heads: number) {
    this.sum = new Float64Array(heads);
    this.count = new Float64Array(heads);
  }

  /**
   * Adds a batch of probabilities `p` with `dims`; `headAxis` (e.g. 1 for [B, H, Lq, Lk]) selects the head, or
   * undefined for one group.
   */
  observe(p: Float32Array, dims: readonly number[], enc: Encoding, headAxis?: number): void {
    const pq = fakeQuantize(p, dims, enc);
    let inner = 1;
    if (headAxis !== undefined) for (let k = headAxis + 1; k < dims.length; k++) inner *= dims[k];
    const h = headAxis === undefined ? 1 : dims[headAxis];
    for (let i = 0; i < p.length; i++) {
      const g = headAxis === undefined ? 0 : Math.floor(i / inner) % h;
      this.sum[g] += p[i] - pq[i];
      this.count[g]++;
    }
  }

  /** β per head. */
  beta(): Float64Array {
    return this.sum.map((s, i) => (this.count[i] ? s / this.count[i] : 0));
  }
}

/** The S08 softmax output encoding: unsigned b-bit on the fixed range [0, 1] (s = 1/(2^b − 1), z = 0). */
export function fixedSoftmaxEncoding(bits = 8): Encoding {
  return encodingFromRange(intScheme(bits, { signed: false, symmetry: 'asymmetric' }), [0], [1], []);
}

export interface SoftmaxBiasOptions {
  /** One β per head (axis 1 of a rank-4 softmax output) rather than per tensor (default true). */
  perHead?: boolean;
  /** Impose the fixed [0, 1] range on the softmax output quantizers before measuring (default false). */
  fixedRange?: boolean;
}

interface Site {
  softmax: Node;
  tensor: string;
  headAxis?: number;
  heads: number;
}

/**
 * Measures β per softmax (per head) on `samples` with the float model of `sim` and the softmax output encodings
 * (after calibration), then inserts the per-head bias β·ΣV after every MatMul that reads the softmax output as
 * its A input. Modifies the sim's float model in place; call it before `finalizeEncodings`/`exportQdq`.
 */
export async function correctSoftmaxBias(
  sim: QuantSim,
  samples: Iterable<Feeds> | AsyncIterable<Feeds>,
  makeRunner: MakeRunner,
  options: SoftmaxBiasOptions = {},
): Promise<PassRecord> {
  const model = sim.model;
  const g = model.graph;
  const skipped: { node: string; reason: string }[] = [];
  const sites: Site[] = [];
  for (const n of g.nodes) {
    if (n.opType !== 'Softmax' || (n.domain && n.domain !== 'ai.onnx')) continue;
    const q = sim.quantizers.get(n.outputs[0]);
    const name = n.name || n.outputs[0];
    if (!q?.enabled || q.sharedWith || q.kind !== 'activation') {
      skipped.push({ node: name, reason: 'softmax output is not quantized' });
      continue;
    }
    if (options.fixedRange) q.encoding = { ...fixedSoftmaxEncoding(q.scheme.bits), scheme: q.scheme };
    if (!q.encoding) {
      skipped.push({ node: name, reason: 'softmax output has no encoding (calibrate first)' });
      continue;
    }
    sites.push({ softmax: n, tensor: n.outputs[0], heads: 1 });
  }
  if (sites.length === 0) return { pass: 'softmax-bias-correction', changed: false, details: { skipped } };

  // Measure: tap the softmax outputs of the float model.
  const tapped = copyModelStructure(model);
  const outs = new Set(tapped.graph.outputs.map((o) => o.name));
  for (const s of sites) {
    if (!outs.has(s.tensor))
      tapped.graph.outputs.push({ name: s.tensor, type: { tensor_type: { elem_type: DataType.FLOAT } } });
  }
  const stats = new Map<Site, SoftmaxBiasStats>();
  const runner = await makeRunner(tapped);
  let count = 0;
  try {
    for await (const feeds of samples as AsyncIterable<Feeds>) {
      const r = await runner.run(
        feeds,
        sites.map((s) => s.tensor),
      );
      for (const s of sites) {
        const v = r[s.tensor];
        const dims = v.dims;
        let st = stats.get(s);
        if (!st) {
          s.headAxis = (options.perHead ?? true) && dims.length >= 4 ? 1 : undefined;
          s.heads = s.headAxis === undefined ? 1 : dims[1];
          st = new SoftmaxBiasStats(s.heads);
          stats.set(s, st);
        }
        st.observe(v.data as Float32Array, dims, sim.quantizers.get(s.tensor)!.encoding!, s.headAxis);
      }
      count++;
    }
  } finally {
    await runner.release?.();
  }
  if (count === 0) throw new Error('softmax bias correction: no samples were given');

  // Absorb: P̃·V = P̂·V + β·ΣV after each consuming MatMul.
  const b = new GraphBuilder(g);
  const consumers = g.consumers();
  const corrected: {
    softmax: string;
    beta: number[];
    betaLsb: number[];
    fractionalZeroPoint: number[];
    matmuls: string[];
  }[] = [];
  for (const s of sites) {
    const beta = stats.get(s)!.beta();
    const enc = sim.quantizers.get(s.tensor)!.encoding!;
    const scale = enc.scale[0];
    const zp = enc.zeroPoint[0];
    const matmuls: string[] = [];
    for (const c of consumers.get(s.tensor) ?? []) {
      const cname = c.name || c.outputs[0];
      if (c.opType !== 'MatMul' || c.inputs[0] !== s.tensor || c.inputs[1] === s.tensor) {
        skipped.push({ node: cname, reason: 'softmax consumer is not the A input of a MatMul' });
        continue;
      }
      const y = c.outputs[0];
      const raw = b.uniqueName(`${y}_before_softmax_bias`);
      const at = g.nodes.indexOf(c) + 1;
      c.outputs[0] = raw;
      const axesInput = (model.opset('') ?? 13) >= 13;
      const vIn = axesInput
        ? [c.inputs[1], b.int64s(`${cname}_softmax_bias_axes`, [1], [-2])]
        : [c.inputs[1]];
      const vsum = b.node('ReduceSum', vIn, {
        attrs: axesInput ? { keepdims: 1 } : { keepdims: 1, axes: [-2] },
        name: `${cname}_softmax_bias_vsum`,
        at,
      }).outputs[0];
      const dims = s.headAxis === undefined ? [] : [s.heads, 1, 1];
      const betaName = b.floats(`${cname}_softmax_bias_beta`, dims, beta);
      const corr = b.node('Mul', [vsum, betaName], { name: `${cname}_softmax_bias_scale`, at: at + 1 })
        .outputs[0];
      b.node('Add', [raw, corr], { outputs: [y], name: `${cname}_softmax_bias_add`, at: at + 2 });
      matmuls.push(cname);
    }
    corrected.push({
      softmax: s.softmax.name || s.tensor,
      beta: [...beta],
      betaLsb: [...beta].map((v) => v / scale),
      fractionalZeroPoint: [...beta].map((v) => zp - v / scale),
      matmuls,
    });
  }
  return {
    pass: 'softmax-bias-correction',
    changed: corrected.some((c) => c.matmuls.length > 0),
    details: { samples: count, corrected, skipped },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// The S08 synthetic check

function normals(n: number, rng: () => number, mean = 0, sigma = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    let u = 0;
    while (u === 0) u = rng();
    const v = rng();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = mean + sigma * r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = mean + sigma * r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** Row-wise softmax of `rows` rows of length `l` (float64 accumulation, float32 result). */
export function softmaxRows(logits: Float32Array, rows: number, l: number): Float32Array {
  const out = new Float32Array(rows * l);
  for (let r = 0; r < rows; r++) {
    const o = r * l;
    let m = Number.NEGATIVE_INFINITY;
    for (let j = 0; j < l; j++) m = Math.max(m, logits[o + j]);
    let s = 0;
    for (let j = 0; j < l; j++) s += Math.exp(logits[o + j] - m);
    for (let j = 0; j < l; j++) out[o + j] = Math.exp(logits[o + j] - m) / s;
  }
  return out;
}

export interface SoftmaxBiasExperiment {
  /** Mean row sum of p̂ (test rows). */
  meanSum: number;
  /** Mean row sum of p̂ + β. */
  correctedSum: number;
  /** Fraction of test probabilities quantized to 0. */
  fractionZero: number;
  /** β in LSBs. */
  betaLsb: number;
  sqnrBefore: number;
  sqnrAfter: number;
}

/**
 * S08's synthetic check: logits ~ N(0, σ²) over `keys` keys, b-bit softmax on [0, 1], β from `calibRows` rows,
 * evaluated on `testRows` other rows as SQNR(P·V) with V ~ N(1, 1) of `dims` columns (float64 products).
 */
export function softmaxBiasExperiment(options: {
  keys: number;
  sigma: number;
  bits?: number;
  calibRows?: number;
  testRows?: number;
  dims?: number;
  seed?: number;
}): SoftmaxBiasExperiment {
  const L = options.keys;
  const calibRows = options.calibRows ?? 1000;
  const testRows = options.testRows ?? 1000;
  const D = options.dims ?? 64;
  const rng = mulberry32(options.seed ?? 1);
  const enc = fixedSoftmaxEncoding(options.bits ?? 8);
  const stats = new SoftmaxBiasStats(1);
  const calib = softmaxRows(normals(calibRows * L, rng, 0, options.sigma), calibRows, L);
  stats.observe(calib, [calibRows, L], enc);
  const beta = stats.beta()[0];
  const p = softmaxRows(normals(testRows * L, rng, 0, options.sigma), testRows, L);
  const pq = fakeQuantize(p, [testRows, L], enc);
  const v = normals(L * D, rng, 1, 1);
  const ref = new Float64Array(testRows * D);
  const before = new Float64Array(testRows * D);
  const after = new Float64Array(testRows * D);
  let sum = 0;
  let zeros = 0;
  const vsum = new Float64Array(D);
  for (let j = 0; j < L; j++) for (let d = 0; d < D; d++) vsum[d] += v[j * D + d];
  for (let r = 0; r < testRows; r++) {
    for (let j = 0; j < L; j++) {
      const a = p[r * L + j];
      const aq = pq[r * L + j];
      sum += aq;
      if (aq === 0) zeros++;
      const vo = j * D;
      const o = r * D;
      for (let d = 0; d < D; d++) {
        ref[o + d] += a * v[vo + d];
        before[o + d] += aq * v[vo + d];
      }
    }
    for (let d = 0; d < D; d++) after[r * D + d] = before[r * D + d] + beta * vsum[d];
  }
  const meanSum = sum / testRows;
  return {
    meanSum,
    correctedSum: meanSum + beta * L,
    fractionZero: zeros / (testRows * L),
    betaLsb: beta / enc.scale[0],
    sqnrBefore: sqnrDb(ref, before),
    sqnrAfter: sqnrDb(ref, after),
  };
}
