/**
 * Per-layer quantization sensitivity, after AIMET's layer-wise analysis: for each layer of a QuantSim with
 * encodings, export and run the model with
 * - `only`: only that layer's quantizers enabled (how much error the layer alone brings), and
 * - `allBut`: every quantizer enabled but that layer's (how much leaving the layer float would recover),
 * and measure the output SQNR against the float model (and accuracy when labels are given).
 *
 * A layer is the node its quantizers feed: the weight, bias and input activation of one Conv form one group.
 * Activations reach their layer through data-movement ops (MaxPool, Reshape, Flatten, ...) and fused activations
 * (Relu, Clip), since those share or fold into the encoding in front of the next compute op; an activation that
 * feeds nothing (a graph output) belongs to the node producing it. Grouping keeps the run count at 2 per layer.
 *
 * Quantizers the caller had disabled stay disabled; the QuantSim's `enabled` flags are restored afterwards.
 */
import { QnnxError } from '../errors.js';
import type { Node } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { exportQdq } from '../quant/export/qdq.js';
import type { QuantSim } from '../quant/sim/quantsim.js';
import { Session, type SessionOptions } from '../runtime/session.js';
import type { HostTensor } from '../tensor.js';
import { firstSamples, type Samples } from './compare.js';
import { AccuracyAccumulator, ErrorAccumulator, type Labels, sameDims, tensorValues } from './metrics.js';

export type SensitivityMode = 'only' | 'allBut';

/** The quantizers that feed one node. */
export interface QuantizerGroup {
  /** The node's name, or `OpType(first output)` when unnamed (or the tensor name for a node-less group). */
  layer: string;
  opType: string;
  /** Tensor names of the quantizers in the group. */
  quantizers: string[];
}

export interface SensitivityEntry {
  /** SQNR (dB) of the score output against the float model. */
  sqnrDb: number;
  /** Top-1 accuracy (fraction), with labels. */
  accuracy?: number;
}

export interface LayerSensitivity extends QuantizerGroup {
  only?: SensitivityEntry;
  allBut?: SensitivityEntry;
}

export interface SensitivityOptions {
  /** One class per row of the score output, in sample order; labels past the samples used are ignored. */
  labels?: Labels;
  /** Output to measure (default the float model's first output). */
  outputName?: string;
  /** Analyze at most this many layers (the first ones in topological order); the rest are listed as omitted. */
  maxLayers?: number;
  /** Default both, `['only', 'allBut']`. */
  modes?: readonly SensitivityMode[];
  /** Samples used (default 64): each layer costs one model export, session creation and run per mode. */
  maxSamples?: number;
  /** The float model to compare with (default `sim.model`, the prepared float model the sim quantizes). */
  floatModel?: Model;
  /** Session options for all runs (graphOptimizationLevel is always 'basic', see below). */
  sessionOptions?: Omit<SessionOptions, 'graphOptimizationLevel' | 'taps'>;
  /** Called after each export-and-run with the runs done, the total, and what was measured. */
  onProgress?: (done: number, total: number, what: string) => void;
}

export interface SensitivityReport {
  samples: number;
  outputName: string;
  /** Float model accuracy (with labels). */
  float: { accuracy?: number };
  /** All quantizers enabled. */
  quantized: SensitivityEntry;
  /**
   * Layers, most harmful first: by `only` SQNR ascending when measured, otherwise by the SQNR gained in `allBut`
   * over `quantized`, descending.
   */
  layers: LayerSensitivity[];
  /** Layers not analyzed because of `maxLayers`. */
  omitted: string[];
  /** Export-and-run passes done (float model included). */
  runs: number;
  seconds: number;
}

function layerName(n: Node): string {
  return n.name || `${n.opType}(${n.outputs[0] ?? ''})`;
}

/** Groups a QuantSim's enabled quantizers by the node they feed, in topological order of those nodes. */
export function groupQuantizers(sim: QuantSim): QuantizerGroup[] {
  const g = sim.model.graph;
  const order = g.topologicalOrder();
  const position = new Map<Node, number>(order.map((n, i) => [n, i]));
  const consumers = g.consumers();
  const producers = g.producers();
  const passThrough = new Set([...sim.target.sharedEncodingOps, ...sim.target.fusedActivations]);

  /** The first compute node (topological order) reading `tensor`, looking through pass-through ops. */
  const feeds = (tensor: string): Node | undefined => {
    let best: Node | undefined;
    const seen = new Set<string>();
    const stack = [tensor];
    while (stack.length) {
      const t = stack.pop()!;
      if (seen.has(t)) continue;
      seen.add(t);
      for (const c of consumers.get(t) ?? []) {
        if (passThrough.has(c.opType) && (c.domain === '' || c.domain === 'ai.onnx')) {
          for (const o of c.outputs) if (o) stack.push(o);
        } else if (!best || position.get(c)! < position.get(best)!) best = c;
      }
    }
    return best;
  };

  const groups = new Map<string, { group: QuantizerGroup; pos: number }>();
  for (const q of sim.quantizers.values()) {
    if (!q.enabled) continue;
    let node: Node | undefined;
    if (q.kind === 'weight' || q.kind === 'bias') {
      node = order.find((n) => n.name === q.consumers[0]) ?? feeds(q.tensor);
    } else {
      node = feeds(q.tensor) ?? producers.get(q.tensor);
    }
    const key = node ? `node:${position.get(node)}` : `tensor:${q.tensor}`;
    let entry = groups.get(key);
    if (!entry) {
      entry = {
        group: { layer: node ? layerName(node) : q.tensor, opType: node?.opType ?? '', quantizers: [] },
        pos: node ? position.get(node)! : order.length,
      };
      groups.set(key, entry);
    }
    entry.group.quantizers.push(q.tensor);
  }
  return [...groups.values()].sort((a, b) => a.pos - b.pos).map((e) => e.group);
}

/**
 * Runs the per-layer sensitivity analysis. The sim must have encodings for its enabled quantizers (after
 * calibration and `finalizeEncodings`).
 */
export async function analyzeSensitivity(
  sim: QuantSim,
  samples: Samples,
  options: SensitivityOptions = {},
): Promise<SensitivityReport> {
  const t0 = performance.now();
  const modes = options.modes ?? ['only', 'allBut'];
  if (modes.length === 0 || modes.some((m) => m !== 'only' && m !== 'allBut')) {
    throw new QnnxError(
      'E_USAGE',
      `sensitivity modes must be 'only' and/or 'allBut', got [${modes.join(', ')}]`,
    );
  }
  const maxSamples = options.maxSamples ?? 64;
  if (!Number.isInteger(maxSamples) || maxSamples < 1)
    throw new QnnxError('E_USAGE', `maxSamples must be a positive integer, got ${options.maxSamples}`);
  if (options.maxLayers !== undefined && (!Number.isInteger(options.maxLayers) || options.maxLayers < 1))
    throw new QnnxError('E_USAGE', `maxLayers must be a positive integer, got ${options.maxLayers}`);
  const missing = sim.missingEncodings();
  if (missing.length) {
    throw new QnnxError(
      'E_USAGE',
      `sensitivity analysis needs encodings for every enabled quantizer; missing: ${missing.slice(0, 5).join(', ')}` +
        `${missing.length > 5 ? ', ...' : ''} (calibrate and finalize the QuantSim first)`,
      { tensor: missing[0] },
    );
  }
  const feeds = await firstSamples(samples, maxSamples);
  if (feeds.length === 0) throw new QnnxError('E_DATA', 'no samples for the sensitivity analysis');

  const all = groupQuantizers(sim);
  const limit = options.maxLayers ?? all.length;
  const analyzed = all.slice(0, limit);
  const omitted = all.slice(limit).map((g) => g.layer);
  const enabledAtStart = new Map([...sim.quantizers].map(([k, q]) => [k, q.enabled]));
  const universe = [...enabledAtStart].filter(([, e]) => e).map(([k]) => k);

  // QDQ models are created with graphOptimizationLevel 'basic': at 'extended'/'all' ONNX Runtime fuses complete
  // Q/DQ patterns into integer kernels, so a model with some quantizers disabled would mix integer and float
  // kernels whose rounding differs from the simulated quantization, and the comparison between layers would
  // measure kernel choice as well as quantization error. At 'basic' every QuantizeLinear/DequantizeLinear runs
  // as its own op around float compute (exactly the simulated arithmetic), and sessions are created faster
  // (no fusion passes), which matters here: one session per layer and mode.
  const sessionOptions: SessionOptions = { ...options.sessionOptions, graphOptimizationLevel: 'basic' };

  const totalRuns = 2 + analyzed.length * modes.length;
  let runs = 0;
  const progress = (what: string) => {
    runs++;
    options.onProgress?.(runs, totalRuns, what);
  };

  // Float reference outputs, kept for the (small) sample set.
  const floatModel = options.floatModel ?? sim.model;
  const floatSession = await Session.create(floatModel, { ...sessionOptions, name: 'float model' });
  let outputName: string;
  const reference: HostTensor[] = [];
  const floatAcc = options.labels ? new AccuracyAccumulator(options.labels) : undefined;
  try {
    outputName = options.outputName ?? floatSession.outputNames[0]!;
    if (!floatSession.outputNames.includes(outputName)) {
      throw new QnnxError(
        'E_USAGE',
        `output '${outputName}' not found in the float model (outputs: ${floatSession.outputNames
          .map((n) => `'${n}'`)
          .join(', ')})`,
        { tensor: outputName },
      );
    }
    for (const [i, f] of feeds.entries()) {
      const out = (await floatSession.run(f, [outputName]))[outputName]!;
      reference.push(out);
      floatAcc?.add(out, i);
    }
  } finally {
    await floatSession.release();
  }
  progress('float model');

  const measure = async (enabled: ReadonlySet<string>, what: string): Promise<SensitivityEntry> => {
    for (const [k, q] of sim.quantizers) q.enabled = enabled.has(k);
    const { model } = exportQdq(sim);
    const session = await Session.create(model, { ...sessionOptions, name: `QDQ model (${what})` });
    const err = new ErrorAccumulator();
    const acc = options.labels ? new AccuracyAccumulator(options.labels) : undefined;
    try {
      for (const [i, f] of feeds.entries()) {
        const y = (await session.run(f, [outputName]))[outputName]!;
        const x = reference[i]!;
        if (!sameDims(x.dims, y.dims)) {
          throw new QnnxError(
            'E_SHAPE',
            `sample ${i}: output '${outputName}' has dims [${y.dims.join(', ')}] in the QDQ model (${what}), ` +
              `[${x.dims.join(', ')}] in the float model`,
            { tensor: outputName },
          );
        }
        err.add(tensorValues(x), tensorValues(y));
        acc?.add(y, i);
      }
    } finally {
      await session.release();
    }
    progress(what);
    const entry: SensitivityEntry = { sqnrDb: err.result().sqnrDb };
    if (acc) entry.accuracy = acc.result().accuracy;
    return entry;
  };

  const layers: LayerSensitivity[] = [];
  let quantized: SensitivityEntry;
  try {
    quantized = await measure(new Set(universe), 'all quantizers');
    for (const group of analyzed) {
      const mine = new Set(group.quantizers);
      const layer: LayerSensitivity = { ...group, quantizers: [...group.quantizers] };
      if (modes.includes('only')) layer.only = await measure(mine, `only ${group.layer}`);
      if (modes.includes('allBut'))
        layer.allBut = await measure(new Set(universe.filter((k) => !mine.has(k))), `all but ${group.layer}`);
      layers.push(layer);
    }
  } finally {
    for (const [k, q] of sim.quantizers) q.enabled = enabledAtStart.get(k) ?? q.enabled;
  }

  // Most harmful first. NaN SQNR (a run producing NaN) counts as most harmful.
  const harm = (l: LayerSensitivity): number => {
    if (l.only) return Number.isNaN(l.only.sqnrDb) ? Number.POSITIVE_INFINITY : -l.only.sqnrDb;
    const gain = l.allBut!.sqnrDb - quantized.sqnrDb;
    return Number.isNaN(gain) ? (Number.isNaN(l.allBut!.sqnrDb) ? Number.NEGATIVE_INFINITY : 0) : gain;
  };
  const sorted = layers
    .map((l, i) => ({ l, i, h: harm(l) }))
    .sort((a, b) => (b.h === a.h ? a.i - b.i : b.h > a.h ? 1 : -1))
    .map((e) => e.l);

  const report: SensitivityReport = {
    samples: feeds.length,
    outputName,
    float: floatAcc ? { accuracy: floatAcc.result().accuracy } : {},
    quantized,
    layers: sorted,
    omitted,
    runs,
    seconds: (performance.now() - t0) / 1000,
  };
  return report;
}
