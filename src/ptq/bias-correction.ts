/**
 * Bias correction (Nagel et al., "Data-Free Quantization", section 4.2; AIMET's `bias_correction`): quantizing a
 * layer's weight W to Ŵ shifts the expected output by E[Ŵx̂] − E[Wx] per output channel, and that shift adds up
 * through the network. The correction subtracts it from the layer's float bias, so the exported int32 bias
 * (rounded at export, by `finalizeEncodings`/`exportQdq`) carries it at no runtime cost.
 *
 * - Empirical, float inputs (default): Δb = (W − Ŵ)·E[x] with E[x] the per-input-channel mean of the layer's
 *   input in the float model, measured by ONNX Runtime (ReduceMean outputs appended to a copy of the float model,
 *   so each run returns C numbers per layer). Because the layer is linear, this is exactly E[Wx] − E[Ŵx] on the
 *   same data. It needs only the weight encodings, so it can run before or after activation calibration.
 * - Empirical, quantized inputs (`inputs: 'quantized'`): Δb = W·E[x] − Ŵ·E[x̂] with x̂ the input the layer sees in
 *   the exported QDQ model (activation quantization and upstream errors included). Corrections change what later
 *   layers see, so layers are corrected in dependency levels: the QDQ model is re-exported and re-measured once
 *   per level (network depth passes over the samples). Needs activation encodings (run it after calibration).
 * - Analytic (data-free): Δb = (W − Ŵ)·E[x] with E[x] from the BatchNorm statistics of the layer producing x
 *   (`collectBnStats`, taken before folding, and rescaled by CLE), through its activation: Relu gives
 *   E[x_c] = γφ(β/γ) + βΦ(β/γ); Clip(lo, hi) and LeakyRelu use the same Gaussian algebra; no activation gives β.
 *
 * Convolutions with zero padding see a slightly different mean at their borders; the correction is for the
 * interior. Conv and Gemm layers without a bias get one (with an int32 bias quantizer when the QuantSim would
 * have placed one); MatMul layers are corrected through a following Add of a constant [N] vector, else skipped.
 */
import { GraphBuilder } from '../ir/builder.js';
import type { Graph, Node } from '../ir/graph.js';
import { cloneModel, type Model } from '../ir/model.js';
import type { PassRecord } from '../ir/pass.js';
import { constantNodeTensor, tensorNumbers } from '../ir/passes/shape-inference.js';
import { Tensor } from '../ir/tensor.js';
import { encodingFromRange, groupRanges, scaleDimsFor } from '../quant/encoding.js';
import { exportQdq } from '../quant/export/qdq.js';
import { fakeQuantize } from '../quant/quantizer.js';
import type { QuantSim } from '../quant/sim/quantsim.js';
import type { Feeds } from '../runtime/session.js';
import {
  type BnStats,
  type ChannelRequest,
  channelStatistics,
  layerBias,
  layerKey,
  type MakeRunner,
  setLayerBias,
  type WeightedLayer,
  weightedLayers,
} from './cle.js';

export type { ChannelRequest, MakeRunner } from './cle.js';

/** Per output channel: Σ over the elements of that channel of (a − b)[k] · mean[input channel of k]. */
export function biasShift(
  layer: Pick<WeightedLayer, 'outChannels' | 'outOf' | 'inOf'>,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  mean: ArrayLike<number>,
): Float64Array {
  const out = new Float64Array(layer.outChannels);
  for (let k = 0; k < a.length; k++) out[layer.outOf[k]] += (a[k] - b[k]) * mean[layer.inOf[k]];
  return out;
}

/** Per output channel: Σ w[k] · mean[input channel of k]. */
function weightTimesMean(
  layer: Pick<WeightedLayer, 'outChannels' | 'outOf' | 'inOf'>,
  w: ArrayLike<number>,
  mean: ArrayLike<number>,
): Float64Array {
  const out = new Float64Array(layer.outChannels);
  for (let k = 0; k < w.length; k++) out[layer.outOf[k]] += w[k] * mean[layer.inOf[k]];
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Gaussian algebra for the analytic form

/** erfc(x), |relative error| < 1.2e-7 (Numerical Recipes' Chebyshev fit). */
function erfc(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r =
    t *
    Math.exp(
      -z * z -
        1.26551223 +
        t *
          (1.00002368 +
            t *
              (0.37409196 +
                t *
                  (0.09678418 +
                    t *
                      (-0.18628806 +
                        t *
                          (0.27886807 +
                            t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
    );
  return x >= 0 ? r : 2 - r;
}

/** Standard normal CDF Φ. */
export function normalCdf(x: number): number {
  return 0.5 * erfc(-x / Math.SQRT2);
}

/** Standard normal density φ. */
export function normalPdf(x: number): number {
  return Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);
}

/** E[max(0, z)] for z ~ N(beta, gamma²): γφ(β/γ) + βΦ(β/γ). */
export function reluGaussianMean(beta: number, gamma: number): number {
  if (!(gamma > 0)) return Math.max(0, beta);
  const t = beta / gamma;
  return gamma * normalPdf(t) + beta * normalCdf(t);
}

/** E[act(z)] for z ~ N(beta, gamma²) and act one of Relu, Clip(lo, hi), LeakyRelu(alpha), identity. */
export function activationGaussianMean(
  act:
    | { op: 'Identity' }
    | { op: 'Relu' }
    | { op: 'Clip'; lo: number; hi: number }
    | { op: 'LeakyRelu'; alpha: number },
  beta: number,
  gamma: number,
): number {
  switch (act.op) {
    case 'Identity':
      return beta;
    case 'Relu':
      return reluGaussianMean(beta, gamma);
    case 'LeakyRelu': {
      const r = reluGaussianMean(beta, gamma);
      return r + act.alpha * (beta - r);
    }
    case 'Clip': {
      // clip(z, lo, hi) = lo + relu(z − lo) − relu(z − hi)
      const lo = Number.isFinite(act.lo) ? act.lo : undefined;
      const hi = Number.isFinite(act.hi) ? act.hi : undefined;
      if (lo === undefined) {
        // min(z, hi) = z − relu(z − hi)
        return hi === undefined ? beta : beta - reluGaussianMean(beta - hi, gamma);
      }
      const upper = hi === undefined ? 0 : reluGaussianMean(beta - hi, gamma);
      return lo + reluGaussianMean(beta - lo, gamma) - upper;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Channel means measured with ONNX Runtime

/**
 * Per-channel means of values of `model` over `samples` (each run's batch/spatial mean, then the mean over runs),
 * computed inside the graph (ReduceMean outputs added to a structural copy), keyed by tensor name.
 */
export function channelMeans(
  model: Model,
  requests: readonly ChannelRequest[],
  samples: Iterable<Feeds> | AsyncIterable<Feeds>,
  makeRunner: MakeRunner,
): Promise<Map<string, Float64Array>> {
  return channelStatistics(model, requests, samples, makeRunner, 'mean');
}

function meanRequest(l: WeightedLayer, input: string): ChannelRequest {
  return {
    tensor: input,
    axis: l.channelAxis,
    rank: l.kind === 'conv' ? l.weight.dims.length : 2,
    channels: l.inChannels,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Applying corrections to a QuantSim's float model

interface Target {
  layer: WeightedLayer;
  w: Float32Array;
  wq: Float32Array;
}

/** The layers of the sim's model whose weights have an enabled weight quantizer with an encoding. */
function targets(
  sim: QuantSim,
  skipped: { node: string; reason: string }[],
  floatWeights?: ReadonlyMap<string, Float32Array>,
): Target[] {
  const out: Target[] = [];
  for (const layer of weightedLayers(sim.model.graph)) {
    if (layer.kind === 'gemm' && layer.node.attrInt('transA', 0) !== 0) {
      skipped.push({ node: layerKey(layer.node), reason: 'Gemm with transposed A' });
      continue;
    }
    const q = sim.quantizers.get(layer.weight.name);
    if (q?.kind !== 'weight' || !q.enabled || !q.encoding) {
      skipped.push({ node: layerKey(layer.node), reason: 'weight not quantized' });
      continue;
    }
    const current = layer.weight.data as Float32Array;
    const w = floatWeights?.get(layer.weight.name) ?? current;
    if (w.length !== current.length) {
      skipped.push({ node: layerKey(layer.node), reason: 'float weight of another size' });
      continue;
    }
    out.push({ layer, w, wq: fakeQuantize(current, layer.weight.dims, q.encoding) });
  }
  return out;
}

/** After the bias tensor of `l` changed: keep the QuantSim's bias/constant quantizer consistent with it. */
function syncBiasQuantizer(sim: QuantSim, l: WeightedLayer): void {
  if (!l.bias) return;
  const g = sim.model.graph;
  const name = l.bias.node.inputs[l.bias.index];
  const q = sim.quantizers.get(name);
  const t = g.initializer(name)!;
  if (q) {
    if (q.kind === 'constant' && q.encoding) {
      // A MatMul bias Add's constant: its encoding depends on its values.
      const x = t.data as Float32Array;
      const { min, max } = groupRanges(x, t.dims, q.scheme.granularity);
      q.encoding = encodingFromRange(q.scheme, min, max, scaleDimsFor(t.dims, q.scheme.granularity));
    }
    return;
  }
  if (l.node.opType === 'MatMul') return;
  // A new bias: add the int32 quantizer QuantSim places for Conv/Gemm biases, under the same conditions.
  const n = l.node;
  const x = sim.quantizers.get(n.inputs[0]);
  const wq = sim.quantizers.get(n.inputs[1]);
  const ws = wq?.scheme;
  const plainGemm =
    n.opType !== 'Gemm' ||
    (n.attrFloat('alpha', 1) === 1 && n.attrFloat('beta', 1) === 1 && t.dims.length === 1);
  if (
    !x ||
    !wq ||
    wq.kind !== 'weight' ||
    !ws ||
    ws.format !== 'int' ||
    (ws.granularity.kind !== 'tensor' && ws.granularity.kind !== 'channel') ||
    sim.target.bias !== 'int32' ||
    !plainGemm
  )
    return;
  sim.quantizers.set(name, {
    tensor: name,
    kind: 'bias',
    scheme: {
      format: 'int',
      bits: 32,
      signed: true,
      symmetry: 'symmetric',
      narrow: false,
      granularity: { kind: 'channel', axis: 0 },
      scaleType: 'float',
    },
    biasOf: { input: n.inputs[0], weight: n.inputs[1] },
    consumers: [n.name],
    enabled: true,
  });
}

function summarize(shift: Float64Array): { maxShift: number; meanAbsShift: number } {
  let max = 0;
  let sum = 0;
  for (const v of shift) {
    max = Math.max(max, Math.abs(v));
    sum += Math.abs(v);
  }
  return { maxShift: max, meanAbsShift: shift.length ? sum / shift.length : 0 };
}

/** b ← base − shift for each target; returns per-layer summaries. */
function applyShifts(
  sim: QuantSim,
  shifts: Map<Target, Float64Array>,
  base: Map<Target, Float64Array>,
  skipped: { node: string; reason: string }[],
): { node: string; maxShift: number; meanAbsShift: number }[] {
  const g: Graph = sim.model.graph;
  const builder = new GraphBuilder(g);
  const layers: { node: string; maxShift: number; meanAbsShift: number }[] = [];
  for (const [t, shift] of shifts) {
    const b0 = base.get(t)!;
    const nb = b0.map((v, i) => v - shift[i]);
    if (!setLayerBias(g, t.layer, nb, builder)) {
      skipped.push({ node: layerKey(t.layer.node), reason: 'MatMul without a constant bias Add' });
      continue;
    }
    syncBiasQuantizer(sim, t.layer);
    layers.push({ node: layerKey(t.layer.node), ...summarize(shift) });
  }
  return layers;
}

function record(
  pass: string,
  mode: string,
  layers: { node: string; maxShift: number; meanAbsShift: number }[],
  skipped: { node: string; reason: string }[],
  extra: Record<string, unknown> = {},
): PassRecord {
  return {
    pass,
    changed: layers.length > 0,
    details: { mode, corrected: layers.length, layers, skipped, ...extra },
  };
}

function baseBiases(g: Graph, ts: Target[], skipped: { node: string; reason: string }[]): Target[] {
  return ts.filter((t) => {
    if (layerBias(g, t.layer)) return true;
    skipped.push({ node: layerKey(t.layer.node), reason: 'bias shape' });
    return false;
  });
}

export interface EmpiricalBiasCorrectionOptions {
  /**
   * 'float' (default): Δb = (W − Ŵ)·E[x] from the float model's layer inputs (one pass over the samples).
   * 'quantized': Δb = W·E[x] − Ŵ·E[x̂] with x̂ measured in the exported QDQ model (needs activation encodings).
   */
  inputs?: 'float' | 'quantized';
  /**
   * 'quantized' inputs: dependency levels corrected per measurement (default 1: exact, one export and one pass
   * over the samples per level of the network's depth; larger values trade exactness for fewer passes).
   */
  levelsPerStage?: number;
  /** Only correct layers for which this returns true (layerKey of the node). */
  filter?: (key: string, node: Node) => boolean;
  /**
   * The float weights by initializer name, when the sim's model already holds rounded weights (after AdaRound):
   * they are the W of Δb, and the float model whose layer inputs give E[x] is the sim's model with them restored.
   */
  floatWeights?: ReadonlyMap<string, Float32Array>;
}

/** The sim's model with `floatWeights` restored (a copy), or the sim's model itself. */
function floatModelOf(sim: QuantSim, floatWeights: ReadonlyMap<string, Float32Array> | undefined): Model {
  if (!floatWeights?.size) return sim.model;
  const m = cloneModel(sim.model);
  for (const [name, w] of floatWeights) {
    const t = m.graph.initializer(name);
    if (t && t.size === w.length) m.graph.addInitializer(new Tensor(name, t.dtype, [...t.dims], w));
  }
  return m;
}

/** Finds the node of the exported model that corresponds to `n` of the float model. */
function exportedNode(
  exported: Model,
  n: Node,
  byName: Map<string, Node[]>,
  byOutput: Map<string, Node>,
): Node | undefined {
  if (n.name) {
    const c = byName.get(n.name);
    if (c?.length === 1 && c[0].opType === n.opType) return c[0];
  }
  const o = byOutput.get(n.outputs[0]);
  if (o && o.opType === n.opType) return o;
  const f = exported.graph.nodes.find(
    (m) => m.opType === n.opType && m.outputs[0]?.startsWith(`${n.outputs[0]}_float`),
  );
  return f;
}

/**
 * Empirical bias correction of the float model held by `sim` (in place), given the sim's weight encodings
 * (`computeParameterEncodings`). Call it before `finalizeEncodings` and `exportQdq`; with `inputs: 'quantized'`
 * also after `calibrate`. `samples` is iterated once per measurement (pass an array for 'quantized').
 */
export async function correctBiasEmpirical(
  sim: QuantSim,
  samples: Iterable<Feeds> | AsyncIterable<Feeds>,
  makeRunner: MakeRunner,
  options: EmpiricalBiasCorrectionOptions = {},
): Promise<PassRecord> {
  const g = sim.model.graph;
  const skipped: { node: string; reason: string }[] = [];
  const ts = baseBiases(
    g,
    targets(sim, skipped, options.floatWeights).filter(
      (t) => options.filter?.(layerKey(t.layer.node), t.layer.node) ?? true,
    ),
    skipped,
  );
  const mode = options.inputs ?? 'float';
  const base = new Map(ts.map((t) => [t, layerBias(g, t.layer)!]));
  const requests = ts.map((t) => meanRequest(t.layer, t.layer.node.inputs[0]));
  const data: Iterable<Feeds> | AsyncIterable<Feeds> =
    mode === 'quantized' && !Array.isArray(samples) ? await collect(samples) : samples;
  const floatMeans = await channelMeans(floatModelOf(sim, options.floatWeights), requests, data, makeRunner);
  if (mode === 'float') {
    const shifts = new Map<Target, Float64Array>();
    for (const t of ts) shifts.set(t, biasShift(t.layer, t.wq, t.w, floatMeans.get(t.layer.node.inputs[0])!));
    const layers = applyShifts(sim, shifts, base, skipped);
    return record('bias-correction', 'empirical-float-inputs', layers, skipped);
  }
  // Layer by layer in dependency levels: a layer's x̂ is measured once every weighted layer upstream of it has
  // its final bias, so each correction is exact for what the quantized model feeds it.
  const level = layerLevels(g, ts);
  const depth = Math.max(0, ...level.values()) + 1;
  const per = Math.max(1, options.levelsPerStage ?? 1);
  const layers: { node: string; maxShift: number; meanAbsShift: number }[] = [];
  let stages = 0;
  for (let lo = 0; lo < depth; lo += per) {
    const stage = ts.filter((t) => level.get(t)! >= lo && level.get(t)! < lo + per);
    if (stage.length === 0) continue;
    stages++;
    sim.finalizeEncodings();
    const exported = exportQdq(sim).model;
    const byName = new Map<string, Node[]>();
    const byOutput = new Map<string, Node>();
    for (const m of exported.graph.nodes) {
      if (m.name) byName.set(m.name, [...(byName.get(m.name) ?? []), m]);
      if (m.outputs[0]) byOutput.set(m.outputs[0], m);
    }
    const where = new Map<Target, string>();
    for (const t of stage) {
      const m = exportedNode(exported, t.layer.node, byName, byOutput);
      if (m) where.set(t, m.inputs[0]);
      else skipped.push({ node: layerKey(t.layer.node), reason: 'not found in the exported model' });
    }
    const qMeans = await channelMeans(
      exported,
      [...where].map(([t, x]) => meanRequest(t.layer, x)),
      data,
      makeRunner,
    );
    const shifts = new Map<Target, Float64Array>();
    for (const [t, xq] of where) {
      // shift = E[Ŵx̂] − E[Wx]
      const a = weightTimesMean(t.layer, t.wq, qMeans.get(xq)!);
      const b = weightTimesMean(t.layer, t.w, floatMeans.get(t.layer.node.inputs[0])!);
      shifts.set(
        t,
        a.map((v, i) => v - b[i]),
      );
    }
    layers.push(...applyShifts(sim, shifts, base, skipped));
  }
  return record('bias-correction', 'empirical-quantized-inputs', layers, skipped, { stages });
}

/** Dependency level of each target: 0 when no other target is upstream of it, else 1 + the deepest one's. */
function layerLevels(g: Graph, ts: Target[]): Map<Target, number> {
  const byNode = new Map(ts.map((t) => [t.layer.node, t]));
  const producers = g.producers();
  // Deepest target level that has influenced each value (-1: none).
  const valueLevel = new Map<string, number>();
  const out = new Map<Target, number>();
  for (const n of g.topologicalOrder()) {
    let upstream = -1;
    for (const i of n.inputs)
      if (i && producers.has(i)) upstream = Math.max(upstream, valueLevel.get(i) ?? -1);
    const t = byNode.get(n);
    let lv = upstream;
    if (t) {
      lv = upstream + 1;
      out.set(t, lv);
    }
    for (const o of n.outputs) if (o) valueLevel.set(o, lv);
  }
  return out;
}

async function collect(samples: Iterable<Feeds> | AsyncIterable<Feeds>): Promise<Feeds[]> {
  const out: Feeds[] = [];
  for await (const f of samples as AsyncIterable<Feeds>) out.push(f);
  return out;
}

export interface AnalyticBiasCorrectionOptions {
  /** BatchNorm statistics (from `collectBnStats` before folding; after CLE, the map CLE rescaled). */
  bnStats?: BnStats;
  /** Known E[x] per input channel, keyed by layerKey; takes precedence over bnStats. */
  inputMeans?: Map<string, ArrayLike<number>>;
  filter?: (key: string, node: Node) => boolean;
  /** The float weights by initializer name, when the sim's model already holds rounded weights (AdaRound). */
  floatWeights?: ReadonlyMap<string, Float32Array>;
}

function constScalar(g: Graph, name: string | undefined): number | undefined {
  if (!name) return undefined;
  const node = g.nodes.find((n) => n.opType === 'Constant' && n.outputs[0] === name);
  const t = g.initializer(name) ?? (node ? constantNodeTensor(node) : undefined);
  const v = t ? tensorNumbers(t) : undefined;
  return v && v.length === 1 ? v[0] : undefined;
}

/**
 * Data-free bias correction (in place): Δb = (W − Ŵ)·E[x], with E[x] from `inputMeans` or derived from the
 * BatchNorm statistics of the layer that produces x (directly, or through Relu, Clip or LeakyRelu). Layers whose
 * input has no known statistics are left alone (listed in the record).
 */
export function correctBiasAnalytic(sim: QuantSim, options: AnalyticBiasCorrectionOptions): PassRecord {
  const g = sim.model.graph;
  const skipped: { node: string; reason: string }[] = [];
  const ts = baseBiases(
    g,
    targets(sim, skipped, options.floatWeights).filter(
      (t) => options.filter?.(layerKey(t.layer.node), t.layer.node) ?? true,
    ),
    skipped,
  );
  const producers = g.producers();
  const layerByOutput = new Map(weightedLayers(g).map((l) => [l.output, l]));
  const base = new Map(ts.map((t) => [t, layerBias(g, t.layer)!]));
  const shifts = new Map<Target, Float64Array>();
  for (const t of ts) {
    const key = layerKey(t.layer.node);
    let mean: ArrayLike<number> | undefined = options.inputMeans?.get(key);
    if (!mean && options.bnStats) {
      const x = t.layer.node.inputs[0];
      const p = producers.get(x);
      let act: Parameters<typeof activationGaussianMean>[0] | undefined;
      let src: WeightedLayer | undefined = layerByOutput.get(x);
      if (src) act = { op: 'Identity' };
      else if (p && (p.opType === 'Relu' || p.opType === 'Clip' || p.opType === 'LeakyRelu')) {
        src = layerByOutput.get(p.inputs[0]);
        if (p.opType === 'Relu') act = { op: 'Relu' };
        else if (p.opType === 'LeakyRelu') act = { op: 'LeakyRelu', alpha: p.attrFloat('alpha', 0.01) };
        else {
          const lo = p.inputs[1] ? constScalar(g, p.inputs[1]) : p.attrFloat('min', Number.NEGATIVE_INFINITY);
          const hi = p.inputs[2] ? constScalar(g, p.inputs[2]) : p.attrFloat('max', Number.POSITIVE_INFINITY);
          if (lo !== undefined && hi !== undefined) act = { op: 'Clip', lo, hi };
        }
      }
      const st = src ? options.bnStats.get(layerKey(src.node)) : undefined;
      if (st && act && st.beta.length === t.layer.inChannels) {
        const a = act;
        mean = Float64Array.from(st.beta, (b, c) => activationGaussianMean(a, b, st.gamma[c]));
      }
    }
    if (!mean || mean.length !== t.layer.inChannels) {
      skipped.push({ node: key, reason: 'no statistics for the input' });
      continue;
    }
    shifts.set(t, biasShift(t.layer, t.wq, t.w, mean));
  }
  const layers = applyShifts(sim, shifts, base, skipped);
  return record('bias-correction', 'analytic', layers, skipped);
}
