/**
 * Sequential MSE (AIMET `seq_mse`, aimet_onnx sequential_mse/seq_mse.py): choose each weight's encoding by the
 * error it causes in the layer's output, layer by layer in topological order, instead of by the weight's own
 * min/max.
 *
 * For each Conv/Gemm/MatMul, candidates clip the weight range to r·[min, max] (r = 1/R, 2/R, ..., 1; R = 20),
 * per output channel for per-channel encodings and for the whole tensor otherwise. Each candidate is scored by
 * the squared error of the layer output, ||W·x̃ − Q_r(W)·x̃||², per output channel, where x̃ is the layer input in
 * the quantized-so-far model (earlier layers with their chosen encodings, activation quantizers off: AIMET's
 * default 'symqt' mode). Each channel keeps its best candidate (ties go to the larger range); per-tensor encodings
 * keep the candidate with the smallest sum. Since min/max itself is the candidate r = 1, the chosen encoding never
 * has a larger output error on the samples than min/max.
 *
 * The error is linear in (W − Q_r(W)), so all candidates of a layer are scored in one ONNX Runtime run per chunk
 * of samples: the layer op applied to x̃ with the stacked candidate error weights (R·O output channels, no bias),
 * then ReduceSumSquare down to one number per candidate and channel. Memory: the layer's x̃ (see layer-cache.ts),
 * stacked candidate errors of at most 16 M floats at a time (candidates in groups for larger weights), and op
 * outputs of about 16 M floats per run (samples in chunks).
 *
 * Only encodings change (`quantizer.encoding`); the float weights stay. Run it after
 * `sim.computeParameterEncodings()` and before AdaRound (which rounds on the chosen grid) and calibration.
 */
import { QnnxError } from '../errors.js';
import { GraphBuilder, valueInfo } from '../ir/builder.js';
import { Model } from '../ir/model.js';
import { DataType } from '../onnx/dtype.js';
import { type Encoding, encodingFromRange, groupRanges, normAxis } from '../quant/encoding.js';
import { fakeQuantize } from '../quant/quantizer.js';
import { matcher, type QuantSim } from '../quant/sim/quantsim.js';
import { type Feeds, Session } from '../runtime/session.js';
import {
  floatData,
  LayerCache,
  type LayerCacheOptions,
  type MakeRunner,
  type SkippedLayer,
  type Stacked,
  type WeightedLayer,
  weightedLayers,
} from './layer-cache.js';

export interface SeqMseOptions extends LayerCacheOptions {
  /** Number of clip candidates R (default 20): ratios 1/R, 2/R, ..., 1 of the min/max range. */
  candidates?: number;
  /** Node names, op types or /regex/ of layers that keep their min/max encodings. */
  exclude?: string[];
  /** ONNX Runtime intra-op threads for the scoring sessions (default 1). */
  threads?: number;
  onLayer?: (report: SeqMseLayerReport, done: number, total: number) => void;
}

export interface SeqMseLayerReport {
  node: string;
  weight: string;
  samples: number;
  /** Output MSE (per output element) of the layer on x̃ with the min/max encoding, and with the chosen one. */
  mseMinMax: number;
  mseChosen: number;
  /** Mean chosen clip ratio over the encoding's groups (1 = min/max). */
  meanRatio: number;
  seconds: number;
}

export interface SeqMseReport {
  layers: SeqMseLayerReport[];
  skipped: SkippedLayer[];
  samples: number;
  seconds: number;
}

/** The output-channel axis of a layer's weight. */
function weightChannelAxis(layer: WeightedLayer, rank: number): number {
  if (layer.node.opType === 'Conv') return 0;
  if (layer.node.opType === 'Gemm') return layer.node.attrInt('transB', 0) ? 0 : 1;
  return rank - 1;
}

/** Encoding with each group's range scaled by its ratio. */
function scaledEncoding(
  enc: Encoding,
  min: Float64Array,
  max: Float64Array,
  ratio: (group: number) => number,
): Encoding {
  const lo = min.map((v, i) => v * ratio(i));
  const hi = max.map((v, i) => v * ratio(i));
  return encodingFromRange(enc.scheme, lo, hi, enc.scaleDims);
}

/**
 * Builds the scoring model: the layer op on X with E (candidate errors stacked along the output channels), output
 * the sum of squares per output channel.
 */
function scoringModel(
  layer: WeightedLayer,
  xDims: number[],
  eDims: number[],
): { model: Model; out: string; size: string } {
  const model = new Model();
  model.opsetImports = [{ domain: '', version: 17 }];
  const g = model.graph;
  const b = new GraphBuilder(g);
  b.reserve('X');
  b.reserve('E');
  g.inputs.push(valueInfo('X', DataType.FLOAT, ['n', ...xDims.slice(1)]));
  g.inputs.push(valueInfo('E', DataType.FLOAT, eDims));
  const n = layer.node;
  const attrs = Object.fromEntries(
    n.attributes.filter((a) => n.opType !== 'Gemm' || a.name !== 'beta').map((a) => [a.name, a]),
  );
  const y = b.node(n.opType, ['X', 'E'], { attrs }).outputs[0];
  const rank = n.opType === 'MatMul' ? xDims.length : n.opType === 'Gemm' ? 2 : xDims.length;
  const chAxis = n.opType === 'MatMul' ? rank - 1 : 1;
  const axes = [...Array(rank).keys()].filter((a) => a !== chAxis);
  const out = b.op('ReduceSumSquare', [y], { axes, keepdims: 0 });
  g.outputs.push(valueInfo(out, DataType.FLOAT, [eDims[n.opType === 'Conv' ? 0 : eDims.length - 1]]));
  const size = b.op('Size', [y]);
  g.outputs.push(valueInfo(size, DataType.INT64, []));
  return { model, out, size };
}

/**
 * Candidate errors of all candidates stacked so that one op computes them all, and the map from the op's output
 * channel j back to (candidate, channel).
 */
function stackErrors(
  layer: WeightedLayer,
  dims: number[],
  errors: Float32Array[],
): { e: Float32Array; eDims: number[]; which: (j: number) => [number, number] } {
  const R = errors.length;
  const size = errors[0].length;
  const op = layer.node.opType;
  if (op === 'Conv') {
    const O = dims[0];
    const group = layer.node.attrInt('group', 1);
    const og = O / group;
    const per = size / O;
    const e = new Float32Array(R * size);
    // rows ordered [group][candidate][channel in group], so each group's outputs read that group's inputs
    for (let k = 0; k < group; k++)
      for (let r = 0; r < R; r++)
        for (let o = 0; o < og; o++) {
          const src = (k * og + o) * per;
          const dst = ((k * R + r) * og + o) * per;
          e.set(errors[r].subarray(src, src + per), dst);
        }
    return {
      e,
      eDims: [R * O, ...dims.slice(1)],
      which: (j) => {
        const k = Math.floor(j / (R * og));
        const rest = j % (R * og);
        return [Math.floor(rest / og), k * og + (rest % og)];
      },
    };
  }
  if (op === 'Gemm' && layer.node.attrInt('transB', 0)) {
    // [O, K] → [R·O, K]
    const e = new Float32Array(R * size);
    for (let r = 0; r < R; r++) e.set(errors[r], r * size);
    const O = dims[0];
    return { e, eDims: [R * O, dims[1]], which: (j) => [Math.floor(j / O), j % O] };
  }
  // [K, O] → [K, R·O]
  const [K, O] = dims;
  const e = new Float32Array(R * size);
  for (let k = 0; k < K; k++)
    for (let r = 0; r < R; r++) e.set(errors[r].subarray(k * O, (k + 1) * O), (k * R + r) * O);
  return { e, eDims: [K, R * O], which: (j) => [Math.floor(j / O), j % O] };
}

/**
 * Output squared error per candidate and output channel, summed over the rows of `x`: loss[r][o], and the
 * number of output positions (per channel) summed over.
 */
async function candidateLosses(
  layer: WeightedLayer,
  w: Float32Array,
  dims: number[],
  R: number,
  errorOf: (r: number) => Float32Array,
  x: Stacked,
  threads: number,
): Promise<{ loss: Float64Array[]; positions: number }> {
  const O = dims[weightChannelAxis(layer, dims.length)];
  const loss = Array.from({ length: R }, () => new Float64Array(O));
  // Candidates in groups so that the stacked error weights stay under 16 M floats (built group by group).
  const perGroup = Math.max(1, Math.floor(2 ** 24 / w.length));
  const rows = x.dims[0];
  const rowSize = x.data.length / rows;
  let positions = 0;
  for (let r0 = 0; r0 < R; r0 += perGroup) {
    const part = Array.from({ length: Math.min(perGroup, R - r0) }, (_, i) => errorOf(r0 + i));
    const { e, eDims, which } = stackErrors(layer, dims, part);
    const { model, out, size } = scoringModel(layer, x.dims, eDims);
    const session = await Session.create(model, {
      graphOptimizationLevel: 'all',
      intraOpNumThreads: threads,
      name: 'seq-mse',
    });
    try {
      // One row first, to learn the op's output size; then chunks of rows with outputs under 16 M floats.
      let chunk = 1;
      for (let i = 0; i < rows; ) {
        const m = Math.min(chunk, rows - i);
        const X = x.data.subarray(i * rowSize, (i + m) * rowSize);
        const res = await session.run(
          {
            X: { dtype: DataType.FLOAT, dims: [m, ...x.dims.slice(1)], data: X },
            E: { dtype: DataType.FLOAT, dims: eDims, data: e },
          },
          [out, size],
        );
        const s = res[out].data as Float32Array;
        for (let j = 0; j < s.length; j++) {
          const [r, o] = which(j);
          loss[r0 + r][o] += s[j];
        }
        const elems = Number((res[size].data as BigInt64Array)[0]);
        if (r0 === 0) positions += elems / (part.length * O);
        if (i === 0) chunk = Math.max(1, Math.floor(2 ** 24 / Math.max(1, elems)));
        i += m;
      }
    } finally {
      await session.release();
    }
  }
  return { loss, positions };
}

/**
 * Sequential MSE over a model: sets the weight encodings of every Conv/Gemm/MatMul with a per-tensor or
 * per-channel integer encoding (after `sim.computeParameterEncodings()`).
 */
export async function sequentialMse(
  sim: QuantSim,
  samples: AsyncIterable<Feeds> | Iterable<Feeds>,
  makeRunner: MakeRunner,
  options: SeqMseOptions = {},
): Promise<SeqMseReport> {
  const t0 = performance.now();
  const R = options.candidates ?? 20;
  if (!(Number.isInteger(R) && R >= 1)) {
    throw new QnnxError('E_USAGE', `seq-mse: candidates must be a positive integer, got ${R}`);
  }
  const excluded = matcher(options.exclude);
  const found = weightedLayers(sim, excluded ? (l) => !excluded(l.node) : undefined);
  const skipped = found.skipped;
  const g = sim.model.graph;
  const layers = found.layers.filter((l) => {
    const gran = l.quantizer.scheme.granularity;
    const w = g.initializer(l.weight)!;
    const ok =
      gran.kind === 'tensor' ||
      (gran.kind === 'channel' && normAxis(gran.axis, w.dims.length) === weightChannelAxis(l, w.dims.length));
    if (!ok)
      skipped.push({ node: l.name, reason: `${gran.kind} granularity (per-tensor or per-channel only)` });
    return ok;
  });
  const report: SeqMseReport = { layers: [], skipped, samples: 0, seconds: 0 };
  if (layers.length === 0) return report;
  const cache = await LayerCache.create(sim, layers, samples, makeRunner, { ...options, float: false });
  report.samples = cache.samples.length;
  try {
    for (const [k, layer] of layers.entries()) {
      const t1 = performance.now();
      const [x] = await cache.stack([{ from: 'quantized', name: layer.input }]);
      const wt = g.initializer(layer.weight)!;
      const w = floatData(wt);
      const dims = [...wt.dims];
      const enc0 = layer.quantizer.encoding!;
      const gran = enc0.scheme.granularity;
      const { min, max } = groupRanges(w, dims, gran);
      const ratios = Array.from({ length: R }, (_, i) => (i + 1) / R);
      const errorOf = (r: number) => {
        const wq = fakeQuantize(
          w,
          dims,
          scaledEncoding(enc0, min, max, () => ratios[r]),
        );
        const d = new Float32Array(w.length);
        for (let i = 0; i < w.length; i++) d[i] = w[i] - wq[i];
        return d;
      };
      const threads = options.threads ?? 1;
      const { loss, positions } = await candidateLosses(layer, w, dims, R, errorOf, x, threads);
      const O = loss[0].length;
      const groups = gran.kind === 'tensor' ? 1 : O;
      const best = new Int32Array(groups).fill(R - 1);
      const score = (r: number, grp: number) =>
        gran.kind === 'tensor' ? loss[r].reduce((a, v) => a + v, 0) : loss[r][grp];
      for (let grp = 0; grp < groups; grp++) {
        let bestLoss = score(R - 1, grp);
        for (let r = R - 2; r >= 0; r--) {
          const l = score(r, grp);
          if (l < bestLoss) {
            bestLoss = l;
            best[grp] = r;
          }
        }
      }
      const chosen = scaledEncoding(enc0, min, max, (grp) => ratios[best[grp]]);
      layer.quantizer.encoding = chosen;
      cache.setWeight(layer, fakeQuantize(w, dims, chosen));
      let lossMinMax = 0;
      let lossChosen = 0;
      for (let o = 0; o < O; o++) {
        lossMinMax += loss[R - 1][o];
        lossChosen += loss[best[groups === 1 ? 0 : o]][o];
      }
      const count = positions * O;
      const lr: SeqMseLayerReport = {
        node: layer.name,
        weight: layer.weight,
        samples: x.samples,
        mseMinMax: lossMinMax / count,
        mseChosen: lossChosen / count,
        meanRatio: best.reduce((a, r) => a + ratios[r], 0) / groups,
        seconds: (performance.now() - t1) / 1000,
      };
      report.layers.push(lr);
      options.onLayer?.(lr, k + 1, layers.length);
    }
  } finally {
    await cache.release();
  }
  report.seconds = (performance.now() - t0) / 1000;
  return report;
}
