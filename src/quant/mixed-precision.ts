/**
 * Automatic mixed precision after AIMET's AMP: given a calibrated QuantSim, raise the fewest quantizer groups to
 * a higher precision until the output SQNR against the float model reaches a target.
 *
 * Candidates are quantizer groups: an activation quantizer together with the quantizers sharing its encoding
 * (outputs of MaxPool, Reshape, ... after it), constants of Add/Mul, and, with `weights: true`, a weight (its
 * int32 bias stays: its scale follows the weight's). A group falls back to
 * - 'float': its quantizers are disabled (the tensor stays float; on ONNX Runtime CPU the ops next to it run as
 *   float kernels, everything else stays integer: the fastest fallback there), or
 * - 'int16': its quantizers move to 16 bits over the same range (uint8 → uint16, int8 → int16), for NPUs with
 *   16-bit activations. 16-bit QuantizeLinear/DequantizeLinear need opset 21: a model below it is upgraded in
 *   place (sim.model). Bias encodings are recomputed (scale = input scale × weight scale).
 *
 * Algorithm:
 * 1. float reference outputs, and the SQNR of the sim as given (`baselineSqnrDb`);
 * 2. screening, two measurements per candidate (`screen`):
 *    - allBut: the group alone falls back (AIMET's per-group sensitivity); the output noise power it removes,
 *      Δ = N(all) − N(all but the group), relative to the signal power;
 *    - only: the group alone stays quantized, every other candidate falls back; the noise it brings on its own
 *      above that floor. This finds quantizers that are harmful only together: on the openWakeWord melspectrogram
 *      three quantizers on the power spectrum each flush its quiet bins to zero, so falling back any one of them
 *      alone removes almost nothing (allBut ≈ 0) while each alone costs ~25 dB (only);
 *    the group's harm is the larger of the two. Noise powers add up to first order, so harm stays a valid ranking
 *    as other groups fall back (dB gains do not: the same noise removed is worth more dB when less is left). The
 *    ranking score is harm / cost^latencyWeight, cost being the share of the model's multiply-accumulates in the
 *    ops that lose their integer kernels (producer and consumers of the group's tensors);
 * 3. greedy: fall back the best remaining candidate and re-measure. A pick that leaves the noise within
 *    `tolerance` of where it was is kept (the first members of a harmful-together set change little), one that
 *    makes it worse is undone at once (rejected: interactions, or outputs such as softmax probabilities whose
 *    error is dominated by a few borderline samples). Repeat until the target SQNR is reached, `maxFallbacks` or
 *    `maxRuns` is reached, `patience` picks in a row lowered the noise by less than 1 %, or no harmful candidate is
 *    left; then go back to the best configuration seen. With `batch` > 1, up to that many candidates are taken at
 *    once when their summed harm is predicted to be needed;
 * 4. pruning: picks are undone one at a time, least harmful first, and stay undone when the SQNR stays at or above
 *    the target (or, when the target is not met, when the SQNR does not drop), so a pick that later ones made
 *    redundant does not cost a fallback;
 * 5. the chosen configuration is applied to the sim and measured once more as a plain QDQ export (`sqnrDb`).
 *
 * All measurements of steps 1-4 run one model: the sim's QDQ export with a switch per group (switchableModel), so a
 * measurement costs one pass over the samples, not an export and a session creation. Since only improving picks
 * are kept, the configuration left is the best seen; `met` says whether it reaches the target.
 * The sim's flags, schemes and encodings are left in the chosen configuration (`apply`, default true) or
 * restored exactly to what they were (`apply: false`); quantizers the caller had disabled are never candidates
 * and stay disabled. Export the result with `exportQdq(sim)`.
 *
 * Measurements run at graphOptimizationLevel 'basic' (every Q/DQ as its own op around float compute: the
 * simulated arithmetic), as in src/eval/sensitivity.ts. ONNX Runtime's integer kernels (level 'all') round
 * slightly differently, so check the final model at the level it will run at.
 */

import { QnnxError } from '../errors.js';
import { groupQuantizers } from '../eval/sensitivity.js';
import { GraphBuilder, valueInfo } from '../ir/builder.js';
import type { Node } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { upgradeOpset } from '../ir/passes/index.js';
import { inferTypes } from '../ir/passes/shape-inference.js';
import { DataType } from '../onnx/dtype.js';
import { decodeToFloat32 } from '../onnx/formats.js';
import { type Feeds, feedEntries, Session, type SessionOptions } from '../runtime/session.js';
import type { HostTensor } from '../tensor.js';
import { type Encoding, encodingFromRange, normAxis } from './encoding.js';
import { exportQdq } from './export/qdq.js';
import { quantize } from './quantizer.js';
import { intRange, type QuantScheme, storageType } from './scheme.js';
import type { QuantSim } from './sim/quantsim.js';

export type FallbackKind = 'float' | 'int16';

export interface MixedPrecisionOptions {
  /** Output SQNR (dB) to reach against the float model (default 30). */
  targetSqnrDb?: number;
  /** What a chosen group becomes (default 'float'). */
  fallback?: FallbackKind;
  /** Most groups to fall back (default: no limit). */
  maxFallbacks?: number;
  /** Output measured (default the float model's first output). */
  outputName?: string;
  /** Samples used (default 8); each measurement runs them all. */
  maxSamples?: number;
  /** Samples (the first ones) used to screen each candidate (default all): screening is most of the runs. */
  screenSamples?: number;
  /** Weights (with their biases) are candidates too (default false: activations and constants only). */
  weights?: boolean;
  /**
   * Exponent of the latency cost in the ranking score Δ / cost^w (default 0: sensitivity only). 0.5 to 1 prefers
   * cheap tensors among comparably harmful ones (float fallback on CPU).
   */
  latencyWeight?: number;
  /** Candidates taken at most per measurement in the greedy phase (default 1: re-measure after every pick). */
  batch?: number;
  /**
   * Screening measurements (default both): 'allBut' falls each group back alone (the noise it removes, Δ),
   * 'only' keeps each group alone quantized with every other candidate fallen back (the noise it brings on its
   * own, which also finds quantizers that are harmful only together with others on the same signal). A group's
   * harm is the larger of the two.
   */
  screen?: readonly ('allBut' | 'only')[];
  /** A greedy pick is kept when the noise power grows by at most this fraction (default 0.02, ~0.09 dB). */
  tolerance?: number;
  /** Stop the greedy phase after this many picks in a row that lowered the noise by less than 1 % (default 24). */
  patience?: number;
  /** Stop the greedy phase after this many measurements in all (default: no limit). */
  maxRuns?: number;
  /** Undo picks the target does not need once it is met (default true). */
  prune?: boolean;
  /** Screen only the candidates whose tensors (any of the group) pass this filter (default all). */
  filter?: (group: MixedPrecisionGroup) => boolean;
  /** Leave the sim in the chosen configuration (default true); false restores it exactly. */
  apply?: boolean;
  /** Session options of every measurement (graphOptimizationLevel is always 'basic'). */
  sessionOptions?: Omit<SessionOptions, 'graphOptimizationLevel' | 'taps'>;
  onProgress?: (event: MixedPrecisionProgress) => void;
}

export interface MixedPrecisionProgress {
  phase: 'reference' | 'baseline' | 'screen' | 'pick' | 'prune' | 'verify';
  /** Measurements done so far, and the count planned for the phase where it is known. */
  runs: number;
  done?: number;
  total?: number;
  /** The group concerned (screen, pick, prune). */
  group?: string;
  sqnrDb?: number;
}

export interface MixedPrecisionGroup {
  /** The group's name: its first tensor (the activation whose encoding the others share, or the weight). */
  name: string;
  kind: 'activation' | 'weight';
  /** Tensors whose quantizers fall back together. */
  tensors: string[];
  /** The layer the group feeds, as in the sensitivity analysis: `node (OpType)`. */
  layer: string;
  /** Share of the model's multiply-accumulates in the ops that lose their integer kernels (0..1; 0 when unknown). */
  cost: number;
}

export interface MixedPrecisionPick extends MixedPrecisionGroup {
  /** SQNR of the configuration with only this group fallen back (screening). */
  screenSqnrDb: number;
  /** Output noise power the group removed in screening, relative to the signal power (Δ). */
  noiseRemoved: number;
  /** SQNR measured right after this pick (with the picks before it). */
  sqnrDb: number;
}

export interface MixedPrecisionReport {
  targetSqnrDb: number;
  fallback: FallbackKind;
  outputName: string;
  samples: number;
  /** SQNR of the sim as given. */
  baselineSqnrDb: number;
  /** SQNR of the chosen configuration. */
  sqnrDb: number;
  met: boolean;
  /** Groups fallen back in the chosen configuration, in pick order (pruned picks removed). */
  picks: MixedPrecisionPick[];
  /** SQNR after each greedy attempt, in order (rejected and later pruned ones included): the trajectory. */
  trajectory: { group: string; sqnrDb: number; rejected?: boolean }[];
  /** Candidates tried in the greedy phase and undone at once because the SQNR did not improve. */
  rejected: string[];
  /** Picks undone by pruning. */
  pruned: string[];
  /** Tensors whose quantizers were disabled or widened, over all picks. */
  tensors: string[];
  /** Share of the model's multiply-accumulates in the ops next to the picks' tensors (each op counted once). */
  cost: number;
  /** Candidate groups screened, and calibrated activation quantizers enabled at the start. */
  candidates: number;
  activationQuantizers: number;
  /**
   * Every candidate's screening result, most harmful first (for diagnosis): SQNR with the group fallen back alone
   * (allBut) and with only the group quantized (only), the noise removed in allBut (Δ), the harm (the larger of
   * Δ and the only-noise above the all-fallen-back floor), all noise powers relative to the signal.
   */
  screening: {
    group: string;
    layer: string;
    sqnrDb: number;
    onlySqnrDb: number;
    noiseRemoved: number;
    harm: number;
    cost: number;
  }[];
  /** Set when the model's opset was raised for 16-bit Q/DQ. */
  opset?: { before: number; after: number };
  runs: number;
  seconds: number;
}

/** A screened candidate: relative noise powers with it fallen back alone (allBut) and quantized alone (only). */
interface Screened {
  i: number;
  noise: number;
  /** Relative noise with every other candidate fallen back. */
  only: number;
  removed: number;
  harm: number;
  score: number;
}

interface Saved {
  enabled: boolean;
  scheme: QuantScheme;
  encoding?: Encoding;
}

function cloneEncoding(e: Encoding | undefined): Encoding | undefined {
  if (!e) return undefined;
  const c: Encoding = { ...e, scale: Float32Array.from(e.scale), zeroPoint: Int32Array.from(e.zeroPoint) };
  if (e.vector)
    c.vector = { channelScale: Float32Array.from(e.vector.channelScale), intScale: e.vector.intScale };
  return c;
}

/** The same range on a 16-bit grid (or the scheme's grid at `bits`). */
export function widenEncoding(enc: Encoding, bits = 16): Encoding {
  const s = enc.scheme;
  if (s.format !== 'int') {
    throw new QnnxError('E_USAGE', `only integer encodings can be widened (this one is ${s.format})`);
  }
  if (s.granularity.kind === 'block' || s.granularity.kind === 'vector') {
    throw new QnnxError('E_USAGE', `a ${s.granularity.kind} encoding cannot be widened`);
  }
  if (s.bits >= bits) return enc;
  const { qmin, qmax } = intRange(s.bits, s.signed, s.narrow);
  const n = enc.scale.length;
  const lo = new Float64Array(n);
  const hi = new Float64Array(n);
  for (let g = 0; g < n; g++) {
    lo[g] = (qmin - enc.zeroPoint[g]!) * enc.scale[g]!;
    hi[g] = (qmax - enc.zeroPoint[g]!) * enc.scale[g]!;
  }
  const scheme: QuantScheme = { ...s, bits };
  return encodingFromRange(scheme, lo, hi, [...enc.scaleDims]);
}

/** Multiply-accumulates of a node from its output (and weight) shapes; 0 when a shape is unknown. */
function nodeMacs(n: Node, shape: (t: string) => number[] | undefined, model: Model): number {
  const out = n.outputs[0] ? shape(n.outputs[0]) : undefined;
  if (!out) return 0;
  const size = out.reduce((a, b) => a * b, 1);
  const w = n.inputs[1] ? (model.graph.initializer(n.inputs[1])?.dims ?? shape(n.inputs[1])) : undefined;
  switch (n.opType) {
    case 'Conv':
      return w ? size * w.slice(1).reduce((a, b) => a * b, 1) : size;
    case 'ConvTranspose': {
      const x = shape(n.inputs[0]!);
      return w && x ? x.reduce((a, b) => a * b, 1) * w.slice(1).reduce((a, b) => a * b, 1) : size;
    }
    case 'MatMul':
    case 'Gemm': {
      const a = shape(n.inputs[0]!);
      const k = a ? (n.opType === 'Gemm' && n.attrInt('transA', 0) ? a[0]! : a[a.length - 1]!) : 1;
      return size * k;
    }
    default:
      return size;
  }
}

/** Share of the model's multiply-accumulates in the producers and consumers of `tensors` (0 when unknown). */
function macCost(
  sim: QuantSim,
  inputDims: Record<string, number[]> | undefined,
): (tensors: string[]) => number {
  const model = sim.model;
  const g = model.graph;
  let types: ReturnType<typeof inferTypes> | undefined;
  try {
    types = inferTypes(model, { inputShapes: inputDims });
  } catch {
    types = undefined;
  }
  const shape = (t: string): number[] | undefined => {
    const s = types?.get(t)?.shape;
    return s?.every((d) => typeof d === 'number') ? (s as number[]) : undefined;
  };
  const macs = new Map<Node, number>();
  let total = 0;
  for (const n of g.nodes) {
    const m = nodeMacs(n, shape, model);
    macs.set(n, m);
    total += m;
  }
  const producers = g.producers();
  const consumers = g.consumers();
  const costOf = (tensors: string[]): number => {
    const nodes = new Set<Node>();
    for (const t of tensors) {
      const p = producers.get(t);
      if (p) nodes.add(p);
      for (const c of consumers.get(t) ?? []) nodes.add(c);
    }
    let s = 0;
    for (const n of nodes) s += macs.get(n) ?? 0;
    return total > 0 ? s / total : 0;
  };
  return costOf;
}

/**
 * The candidate groups of a sim: every enabled, non-shared activation or constant quantizer with the enabled
 * quantizers sharing its encoding, and (with `weights`) every enabled weight quantizer alone. `cost` is
 * the share of multiply-accumulates in the ops next to the group's tensors, from shapes inferred for `inputDims`.
 */
export function mixedPrecisionGroups(
  sim: QuantSim,
  options: { weights?: boolean; inputDims?: Record<string, number[]> } = {},
): MixedPrecisionGroup[] {
  const costOf = macCost(sim, options.inputDims);
  const followers = new Map<string, string[]>();
  for (const q of sim.quantizers.values()) {
    if (q.enabled && q.sharedWith) {
      const list = followers.get(q.sharedWith) ?? [];
      list.push(q.tensor);
      followers.set(q.sharedWith, list);
    }
  }
  const groups: MixedPrecisionGroup[] = [];
  const layers = new Map<string, string>();
  for (const l of groupQuantizers(sim))
    for (const t of l.quantizers) layers.set(t, `${l.layer} (${l.opType})`);
  const layerOf = (t: string) => layers.get(t) ?? '';
  for (const q of sim.quantizers.values()) {
    if (!q.enabled || q.sharedWith) continue;
    if (q.kind === 'activation' || q.kind === 'constant') {
      const tensors = [q.tensor, ...(followers.get(q.tensor) ?? [])];
      groups.push({
        name: q.tensor,
        kind: 'activation',
        tensors,
        layer: layerOf(q.tensor),
        cost: costOf(tensors),
      });
    } else if (q.kind === 'weight' && options.weights) {
      // The bias stays int32 (scale = input scale × weight scale, exact to far below the activation grid): with a
      // float bias initializer ONNX Runtime's basic-level fusions change the Conv's numerics (seen on the
      // openWakeWord embedding: 2 dB apart), and the switchable model could not reproduce that.
      groups.push({
        name: q.tensor,
        kind: 'weight',
        tensors: [q.tensor],
        layer: layerOf(q.tensor),
        cost: costOf([q.tensor]),
      });
    }
  }
  return groups;
}

async function collect(samples: AsyncIterable<Feeds> | Iterable<Feeds>, max: number): Promise<Feeds[]> {
  const out: Feeds[] = [];
  for await (const s of samples as AsyncIterable<Feeds>) {
    out.push(s);
    if (out.length >= max) break;
  }
  return out;
}

function values(t: HostTensor): Float32Array {
  if (t.data instanceof Float32Array) return t.data;
  return Float32Array.from(t.data as ArrayLike<number>);
}

function intStorage(values: Int32Array, dtype: DataType): Int16Array | Uint16Array {
  return dtype === DataType.INT16 ? Int16Array.from(values) : Uint16Array.from(values);
}

/**
 * The sim's QDQ export with a switch per group: a bool input `[groups]`; where entry i is true, the tensors of
 * group i read their fallback (the float value, or a 16-bit QuantizeLinear/DequantizeLinear of it) instead of the
 * 8-bit DequantizeLinear output, through a Where. One session then measures any combination of fallbacks, which
 * makes screening hundreds of groups cost runs rather than exports and session creations. Biases keep the
 * encoding of the 8-bit input scale (an int32 bias is exact to well below the activation grid either way).
 */
export function switchableModel(
  sim: QuantSim,
  groups: readonly MixedPrecisionGroup[],
  fallback: FallbackKind,
): { model: Model; input: string } {
  const { model } = exportQdq(sim);
  const g = model.graph;
  const b = new GraphBuilder(g);
  const input = b.uniqueName('mixed_precision_switch');
  g.inputs.push(valueInfo(input, DataType.BOOL, [groups.length]));
  const producers = g.producers();
  const consumers = g.consumers();
  const qByInput = new Map<string, Node>();
  const dqByOutput = new Map<string, Node>();
  const dqByParameter = new Map<string, Node>();
  for (const n of g.nodes) {
    if (n.opType === 'QuantizeLinear') qByInput.set(n.inputs[0]!, n);
    else if (n.opType === 'DequantizeLinear') {
      dqByOutput.set(n.outputs[0]!, n);
      const m = /^(.*)_quantized(_\d+)?$/.exec(n.inputs[0]!);
      if (m && g.initializer(n.inputs[0]!)) dqByParameter.set(m[1]!, n);
    }
  }
  const src = sim.model.graph;
  const added: Node[] = [];
  for (const [i, grp] of groups.entries()) {
    const index = b.int64s(`${input}_${i}`, [], [i]);
    const gather = b.node('Gather', [input, index], { attrs: { axis: 0 } });
    const cond = gather.outputs[0]!;
    added.push(gather);
    for (const t of grp.tensors) {
      const q = sim.quantizers.get(t);
      if (!q?.encoding || q.kind === 'bias') continue;
      let dq: Node | undefined;
      let float: string;
      let isOutput = false;
      if (q.kind === 'weight' || q.kind === 'constant') {
        dq = dqByParameter.get(t);
        float = t;
        if (dq && !g.initializer(t)) g.addInitializer(src.initializer(t)!);
      } else {
        const qn = qByInput.get(t);
        if (qn) {
          dq = (consumers.get(qn.outputs[0]!) ?? []).find((c) => c.opType === 'DequantizeLinear');
          float = t;
        } else {
          // A graph output: the export renamed the float producer's output, the DequantizeLinear produces `t`.
          dq = dqByOutput.get(t);
          const qq = dq ? producers.get(dq.inputs[0]!) : undefined;
          float = qq?.inputs[0] ?? t;
          isOutput = true;
        }
      }
      if (!dq) continue;
      let alternative = float;
      if (fallback === 'int16') {
        const enc = widenEncoding(q.encoding, 16);
        const dtype = storageType(enc.scheme);
        const gran = enc.scheme.granularity;
        const sdims = gran.kind === 'tensor' ? [] : enc.scaleDims;
        const scale = b.floats(`${t}_scale16`, sdims, enc.scale);
        const zp = b.initializer(`${t}_zero_point16`, dtype, sdims, intStorage(enc.zeroPoint, dtype));
        const attrs: Record<string, number> = {};
        if (q.kind === 'weight' || q.kind === 'constant') {
          const w = src.initializer(t)!;
          const x =
            w.dtype === DataType.FLOAT ? (w.data as Float32Array) : decodeToFloat32(w.dtype, w.data, w.size);
          const qv = b.initializer(
            `${t}_quantized16`,
            dtype,
            [...w.dims],
            intStorage(quantize(x, w.dims, enc), dtype),
          );
          if (gran.kind === 'channel') attrs.axis = normAxis(gran.axis, w.dims.length);
          const dq16 = b.node('DequantizeLinear', [qv, scale, zp], { attrs });
          added.push(dq16);
          alternative = dq16.outputs[0]!;
        } else {
          const q16 = b.node('QuantizeLinear', [float, scale, zp]);
          const dq16 = b.node('DequantizeLinear', [q16.outputs[0]!, scale, zp]);
          added.push(q16, dq16);
          alternative = dq16.outputs[0]!;
        }
      }
      const dqOut = dq.outputs[0]!;
      if (isOutput) {
        const renamed = b.uniqueName(`${t}_int8`);
        dq.outputs = [renamed];
        added.push(b.node('Where', [cond, alternative, renamed], { outputs: [t] }));
      } else {
        const where = b.node('Where', [cond, alternative, dqOut]);
        added.push(where);
        for (const c of consumers.get(dqOut) ?? [])
          c.inputs = c.inputs.map((x) => (x === dqOut ? where.outputs[0]! : x));
      }
    }
  }
  g.sort();
  return { model, input };
}

/**
 * Chooses quantizer groups of `sim` to fall back to float or 16 bits until the output SQNR against `floatModel`
 * reaches `targetSqnrDb`; see the file comment. `floatModel` defaults to `sim.model`, which is only the float
 * model when nothing changed it: bias correction rewrites sim.model's biases in place, so pass the original model
 * then (otherwise the reference already carries the correction and the SQNR is overstated by several dB). The sim must have encodings for its enabled
 * quantizers (calibrated and finalized).
 */
export async function mixedPrecision(
  sim: QuantSim,
  floatModel: Model | undefined,
  samples: AsyncIterable<Feeds> | Iterable<Feeds>,
  options: MixedPrecisionOptions = {},
): Promise<MixedPrecisionReport> {
  const t0 = performance.now();
  const target = options.targetSqnrDb ?? 30;
  const fallback = options.fallback ?? 'float';
  const maxFallbacks = options.maxFallbacks ?? Number.POSITIVE_INFINITY;
  const maxSamples = options.maxSamples ?? 8;
  const batch = options.batch ?? 1;
  const latencyWeight = options.latencyWeight ?? 0;
  const maxRuns = options.maxRuns ?? Number.POSITIVE_INFINITY;
  const patience = options.patience ?? 24;
  const tolerance = options.tolerance ?? 0.02;
  const modes = options.screen ?? ['allBut', 'only'];
  if (modes.length === 0 || modes.some((m) => m !== 'only' && m !== 'allBut'))
    throw new QnnxError('E_USAGE', `screen must list 'allBut' and/or 'only', got [${modes.join(', ')}]`);
  if (!Number.isFinite(target)) throw new QnnxError('E_USAGE', `targetSqnrDb must be finite, got ${target}`);
  if (fallback !== 'float' && fallback !== 'int16')
    throw new QnnxError('E_USAGE', `fallback must be 'float' or 'int16', got '${fallback}'`);
  if (!(maxFallbacks >= 0)) throw new QnnxError('E_USAGE', `maxFallbacks must be >= 0, got ${maxFallbacks}`);
  if (!Number.isInteger(maxSamples) || maxSamples < 1)
    throw new QnnxError('E_USAGE', `maxSamples must be a positive integer, got ${maxSamples}`);
  if (!Number.isInteger(batch) || batch < 1)
    throw new QnnxError('E_USAGE', `batch must be a positive integer, got ${batch}`);
  const missing = sim.missingEncodings();
  if (missing.length) {
    throw new QnnxError(
      'E_USAGE',
      `mixed precision needs encodings for every enabled quantizer; missing: ${missing.slice(0, 5).join(', ')}` +
        ' (calibrate and finalize the QuantSim first)',
      { tensor: missing[0] },
    );
  }
  const feeds = await collect(samples, maxSamples);
  if (feeds.length === 0) throw new QnnxError('E_DATA', 'no samples for mixed precision');

  const inputDims = Object.fromEntries(feedEntries(feeds[0]!).map(([k, v]) => [k, [...v.dims]]));
  const all = mixedPrecisionGroups(sim, { weights: options.weights, inputDims });
  const costOf = macCost(sim, inputDims);
  const groups = options.filter ? all.filter(options.filter) : all;
  const activationQuantizers = [...sim.quantizers.values()].filter(
    (q) => q.enabled && q.kind === 'activation' && !q.sharedWith,
  ).length;
  if (fallback === 'int16') {
    for (const grp of groups) {
      for (const t of grp.tensors) {
        const q = sim.quantizers.get(t)!;
        if (q.kind !== 'bias' && q.scheme.format !== 'int') {
          throw new QnnxError(
            'E_USAGE',
            `int16 fallback needs integer quantizers; '${t}' is ${q.scheme.format}`,
            {
              tensor: t,
            },
          );
        }
      }
    }
  }

  const saved = new Map<string, Saved>();
  for (const [k, q] of sim.quantizers)
    saved.set(k, { enabled: q.enabled, scheme: q.scheme, encoding: cloneEncoding(q.encoding) });
  let opset: MixedPrecisionReport['opset'];
  if (fallback === 'int16' && (sim.model.opset('') ?? 0) < 21) {
    const before = sim.model.opset('') ?? 0;
    upgradeOpset(sim.model, 21);
    opset = { before, after: 21 };
  }

  const sessionOptions: SessionOptions = { ...options.sessionOptions, graphOptimizationLevel: 'basic' };
  let runs = 0;
  const progress = (e: Omit<MixedPrecisionProgress, 'runs'>) => options.onProgress?.({ ...e, runs });

  // Float reference.
  const ref = await Session.create(floatModel ?? sim.model, { ...sessionOptions, name: 'float model' });
  const reference: Float32Array[] = [];
  const signals: number[] = [];
  let outputName: string;
  try {
    outputName = options.outputName ?? ref.outputNames[0]!;
    if (!ref.outputNames.includes(outputName)) {
      throw new QnnxError(
        'E_USAGE',
        `output '${outputName}' not found in the float model (outputs: ${ref.outputNames.join(', ')})`,
        { tensor: outputName },
      );
    }
    for (const f of feeds) {
      const x = values((await ref.run(f, [outputName]))[outputName]!);
      reference.push(x);
      let s2 = 0;
      for (let i = 0; i < x.length; i++) s2 += x[i]! * x[i]!;
      signals.push(s2);
    }
  } finally {
    await ref.release();
  }
  runs++;
  progress({ phase: 'reference' });

  /** Output noise power relative to the signal over the samples; NaN outputs count as infinite noise. */
  const noiseOf = async (
    session: Session,
    extra: Record<string, HostTensor> = {},
    count = feeds.length,
  ): Promise<number> => {
    let noise = 0;
    let sig = 0;
    for (const [i, f] of feeds.slice(0, count).entries()) {
      const y = values(
        (await session.run({ ...Object.fromEntries(feedEntries(f)), ...extra }, [outputName]))[outputName]!,
      );
      const x = reference[i]!;
      if (x.length !== y.length) {
        throw new QnnxError(
          'E_SHAPE',
          `output '${outputName}' has ${y.length} values in the QDQ model, ${x.length} in the float model`,
          { tensor: outputName },
        );
      }
      for (let k = 0; k < x.length; k++) noise += (x[k]! - y[k]!) ** 2;
      sig += signals[i]!;
    }
    runs++;
    return Number.isNaN(noise) ? Number.POSITIVE_INFINITY : noise / (sig || 1);
  };
  const db = (relNoise: number) => (relNoise === 0 ? Number.POSITIVE_INFINITY : -10 * Math.log10(relNoise));

  // Materializing a configuration in the sim (flags, or 16-bit schemes and encodings, and bias encodings).
  const restoreAll = () => {
    for (const [k, q] of sim.quantizers) {
      const s = saved.get(k)!;
      q.enabled = s.enabled;
      q.scheme = s.scheme;
      q.encoding = cloneEncoding(s.encoding);
    }
  };
  const materialize = (chosen: readonly MixedPrecisionGroup[]) => {
    restoreAll();
    for (const grp of chosen) {
      for (const t of grp.tensors) {
        const q = sim.quantizers.get(t)!;
        if (fallback === 'float') q.enabled = false;
        else if (q.kind !== 'bias' && q.encoding) {
          q.encoding = widenEncoding(q.encoding, 16);
          q.scheme = q.encoding.scheme;
        }
      }
    }
    // Shared encodings follow their roots and bias scales the input × weight scales.
    if (fallback === 'int16' && chosen.length > 0) sim.finalizeEncodings();
  };

  const picks: MixedPrecisionPick[] = [];
  const trajectory: MixedPrecisionReport['trajectory'] = [];
  const rejected: string[] = [];
  const pruned: string[] = [];
  const screening: MixedPrecisionReport['screening'] = [];
  let baseline = Number.NaN;
  let current = Number.POSITIVE_INFINITY;
  let verified = Number.NaN;
  const applied: Screened[] = [];
  try {
    const sw = switchableModel(sim, groups, fallback);
    const session = await Session.create(sw.model, {
      ...sessionOptions,
      name: 'QDQ model with fallback switches',
    });
    try {
      const measure = (active: Iterable<number>, count?: number) => {
        const flags = new Uint8Array(groups.length);
        for (const i of active) flags[i] = 1;
        return noiseOf(
          session,
          { [sw.input]: { dtype: DataType.BOOL, dims: [groups.length], data: flags } },
          count,
        );
      };
      current = await measure([]);
      baseline = current;
      progress({ phase: 'baseline', sqnrDb: db(current) });
      const screenCount = Math.min(options.screenSamples ?? feeds.length, feeds.length);
      const screenBase = screenCount < feeds.length ? await measure([], screenCount) : baseline;

      // Screening: each group alone falls back (allBut), and each group alone stays quantized (only).
      const targetNoise = 10 ** (-target / 10);
      const screened: Screened[] = [];
      if (current > targetNoise && maxFallbacks > 0) {
        const everyone = groups.map((_, i) => i);
        const floor = modes.includes('only') ? await measure(everyone, screenCount) : 0;
        for (const [i, grp] of groups.entries()) {
          const noise = modes.includes('allBut') ? await measure([i], screenCount) : Number.NaN;
          const onlyNoise = modes.includes('only')
            ? await measure(
                everyone.filter((k) => k !== i),
                screenCount,
              )
            : Number.NaN;
          const only = onlyNoise - floor;
          const removed = Number.isNaN(noise)
            ? 0
            : Number.isFinite(screenBase)
              ? screenBase - noise
              : Number.isFinite(noise)
                ? 1
                : 0;
          const harm = Math.max(removed, Number.isNaN(only) ? 0 : only);
          screened.push({
            i,
            noise,
            only: onlyNoise,
            removed,
            harm,
            score: harm / Math.max(grp.cost, 1e-6) ** latencyWeight,
          });
          progress({
            phase: 'screen',
            done: i + 1,
            total: groups.length,
            group: grp.name,
            sqnrDb: db(Number.isNaN(noise) ? only : noise),
          });
        }
      }
      for (const c of [...screened].sort((x, y) => y.harm - x.harm)) {
        const grp = groups[c.i]!;
        screening.push({
          group: grp.name,
          layer: grp.layer,
          sqnrDb: db(c.noise),
          onlySqnrDb: db(c.only),
          noiseRemoved: c.removed,
          harm: c.harm,
          cost: grp.cost,
        });
      }

      // Greedy, highest score first. A pick that leaves the noise within `tolerance` of where it was is kept
      // (several quantizers on one signal can each destroy it: removing one of them alone changes little);
      // one that makes it worse is undone at once.
      const queue = screened.filter((c) => c.harm > 0).sort((x, y) => y.score - x.score);
      const active = new Set<number>();
      let best = { noise: current, active: new Set<number>() };
      let misses = 0;
      while (
        current > targetNoise &&
        queue.length > 0 &&
        applied.length < maxFallbacks &&
        runs < maxRuns &&
        misses < patience
      ) {
        const take: typeof queue = [];
        let predicted = current;
        while (
          queue.length > 0 &&
          take.length < batch &&
          applied.length + take.length < maxFallbacks &&
          (take.length === 0 || predicted > targetNoise)
        ) {
          const c = queue.shift()!;
          take.push(c);
          predicted -= c.harm;
        }
        const label = take.map((c) => groups[c.i]!.name).join(', ');
        const noise = await measure([...active, ...take.map((c) => c.i)]);
        if (!(noise <= current * (1 + tolerance))) {
          rejected.push(...take.map((c) => groups[c.i]!.name));
          misses++;
          trajectory.push({ group: label, sqnrDb: db(noise), rejected: true });
          progress({ phase: 'pick', done: applied.length, group: `${label} (rejected)`, sqnrDb: db(noise) });
          continue;
        }
        misses = noise < current * 0.99 ? 0 : misses + 1;
        current = noise;
        for (const c of take) {
          active.add(c.i);
          applied.push(c);
          const grp = groups[c.i]!;
          picks.push({ ...grp, screenSqnrDb: db(c.noise), noiseRemoved: c.removed, sqnrDb: db(current) });
        }
        if (current < best.noise) best = { noise: current, active: new Set(active) };
        trajectory.push({ group: label, sqnrDb: db(current) });
        progress({ phase: 'pick', done: applied.length, group: label, sqnrDb: db(current) });
      }
      if (current > best.noise) {
        // Back to the best configuration seen (flat picks after it did not complete what they started).
        for (const i of [...active]) if (!best.active.has(i)) active.delete(i);
        for (let k = applied.length - 1; k >= 0; k--) {
          if (!active.has(applied[k]!.i)) {
            pruned.push(groups[applied[k]!.i]!.name);
            applied.splice(k, 1);
          }
        }
        current = best.noise;
      }

      // Pruning: undo picks, least harmful first, that the target does not need (met), or that do not help (not
      // met: the noise does not grow without them).
      if ((options.prune ?? true) && applied.length > (current <= targetNoise ? 1 : 0)) {
        const met = current <= targetNoise;
        const order = [...applied].sort((x, y) => x.harm - y.harm);
        for (const [k, c] of order.entries()) {
          active.delete(c.i);
          const noise = await measure(active);
          progress({
            phase: 'prune',
            done: k + 1,
            total: order.length,
            group: groups[c.i]!.name,
            sqnrDb: db(noise),
          });
          if (met ? noise <= targetNoise : noise <= current) {
            current = noise;
            pruned.push(groups[c.i]!.name);
          } else active.add(c.i);
        }
      }
    } finally {
      await session.release();
    }

    // The chosen configuration, materialized in the sim and measured once as a plain export.
    const chosen = picks.filter((p) => !pruned.includes(p.name));
    materialize(chosen);
    const plain = await Session.create(exportQdq(sim).model, {
      ...sessionOptions,
      name: 'QDQ model (chosen)',
    });
    try {
      verified = await noiseOf(plain);
    } finally {
      await plain.release();
    }
    progress({ phase: 'verify', sqnrDb: db(verified) });
  } catch (e) {
    restoreAll();
    throw e;
  }
  const kept = picks.filter((p) => !pruned.includes(p.name));
  if (options.apply === false) restoreAll();

  return {
    targetSqnrDb: target,
    fallback,
    outputName,
    samples: feeds.length,
    baselineSqnrDb: db(baseline),
    sqnrDb: db(verified),
    met: db(verified) >= target,
    picks: kept,
    trajectory,
    pruned,
    rejected,
    tensors: kept.flatMap((p) => p.tensors),
    cost: costOf(kept.flatMap((p) => (p.kind === 'weight' ? [p.tensors[0]!] : p.tensors))),
    candidates: groups.length,
    activationQuantizers,
    screening,
    ...(opset ? { opset } : {}),
    runs,
    seconds: (performance.now() - t0) / 1000,
  };
}
