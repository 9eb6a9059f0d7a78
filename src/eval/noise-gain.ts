/**
 * Noise gain: how much a float model amplifies small relative errors at the places a QuantSim quantizes. It is the
 * model's own ceiling for post-training quantization, whatever the quantizer: a model that turns 40 dB of noise
 * on every weight into a 12 dB output cannot give a 30 dB output from any 8-bit weight grid.
 *
 * For one kind of quantizer at a time (weights, activations, both), every tensor the QuantSim quantizes (enabled,
 * not shared) gets independent uniform noise whose RMS is `levelDb` below the tensor's own RMS (per-tensor SQNR =
 * `levelDb`), and the perturbed float model's output is compared with the unperturbed float model:
 *
 *   gain (dB) = levelDb − output SQNR.
 *
 * Weights (and constants) are perturbed in TypeScript; activations in the graph, after each tensor's producer:
 * `t + RandomUniformLike(t, ±√3·10^(−L/20)) · sqrt(ReduceMean(t²))`, with the RMS taken over the tensor in each
 * run.
 * At small noise the output error is linear in the injected errors, so uncorrelated errors of per-tensor SQNR L
 * give an output SQNR of about L − gain (checked by measuring at two levels: `linearityDb`). The per-tensor SQNR a
 * quantizer needs for an output target T is therefore T + gain, and `effectiveDb` (the SQNR of the QuantSim's real
 * quantizers of that kind, measured, plus the gain) is how good the real quantizers are on that scale.
 */
import { QnnxError } from '../errors.js';
import { floatAttr, makeAttribute } from '../ir/builder.js';
import { Node } from '../ir/graph.js';
import { cloneModel, type Model } from '../ir/model.js';
import { Tensor } from '../ir/tensor.js';
import { exportQdq } from '../quant/export/qdq.js';
import type { QuantSim } from '../quant/sim/quantsim.js';
import { mulberry32 } from '../random.js';
import { Session, type SessionOptions } from '../runtime/session.js';
import type { HostTensor } from '../tensor.js';
import { firstSamples, type Samples } from './compare.js';
import { ErrorAccumulator, sameDims, tensorValues } from './metrics.js';

export type NoiseSite = 'weights' | 'activations' | 'all';

export interface NoiseGainOptions {
  /** Per-tensor SQNR of the injected noise, dB (default 40, about what int8 per-channel weights give). */
  levelDb?: number;
  /** A second level to check linearity (default levelDb + 10; 0 skips the check). */
  checkLevelDb?: number;
  /**
   * Also search, per site, the per-tensor noise level at which the output SQNR reaches this target (secant steps
   * on the measured curve, at most `searchSteps` extra runs, to within 0.5 dB): `levelForTargetDb`.
   */
  targetDb?: number;
  /** Extra runs per site for the `targetDb` search (default 6). */
  searchSteps?: number;
  /** Which quantizers to perturb (default all three: weights, activations, all). */
  sites?: readonly NoiseSite[];
  /** Also measure the real quantizers of each site (QDQ export with only that kind enabled): `effectiveDb`. */
  measureQuantized?: boolean;
  /** Samples used (default 8). */
  maxSamples?: number;
  /** Output to measure (default the float model's first output). */
  outputName?: string;
  /**
   * The float model: the reference, and the model the noise goes into (default `sim.model`). Pass the prepared
   * model from before bias correction or CLE when the sim's model has had its weights or biases changed; it must
   * have the sim's tensor names (quantizeModel run without those techniques gives it).
   */
  floatModel?: Model;
  /** Seed of the weight noise and of the activation noise nodes (default 1). */
  seed?: number;
  /** Session options for every run (graphOptimizationLevel is 'basic', as in the sensitivity analysis). */
  sessionOptions?: Omit<SessionOptions, 'graphOptimizationLevel' | 'taps'>;
  onProgress?: (done: number, total: number, what: string) => void;
}

export interface NoiseGainEntry {
  site: NoiseSite;
  /** Tensors perturbed. */
  tensors: number;
  /** Output SQNR (dB) of the float model with every such tensor at `levelDb`. */
  outputSqnrDb: number;
  /** levelDb − outputSqnrDb. */
  gainDb: number;
  /** Gain measured at `checkLevelDb` minus the gain at `levelDb` (≈ 0 when the model is linear at this noise). */
  linearityDb?: number;
  /** With `targetDb`: the per-tensor SQNR every perturbed tensor needs for that output SQNR (dB). */
  levelForTargetDb?: number;
  /** The output SQNR measured at `levelForTargetDb` (within 0.5 dB of the target unless the search ran out). */
  levelForTargetOutputDb?: number;
  /** With `measureQuantized`: output SQNR of the QuantSim with only this site's quantizers enabled. */
  quantizedSqnrDb?: number;
  /** quantizedSqnrDb + gainDb: the per-tensor SQNR the real quantizers are worth on the noise scale. */
  effectiveDb?: number;
}

export interface NoiseGainReport {
  levelDb: number;
  samples: number;
  outputName: string;
  entries: NoiseGainEntry[];
  runs: number;
  seconds: number;
}

/** The quantized tensors of a site: enabled, not shared with another encoding, biases never (int32). */
export function noiseSites(sim: QuantSim, site: NoiseSite): string[] {
  const out: string[] = [];
  for (const q of sim.quantizers.values()) {
    if (!q.enabled || q.sharedWith || q.kind === 'bias') continue;
    const isWeight = q.kind === 'weight' || q.kind === 'constant';
    if (site === 'all' || (site === 'weights') === isWeight) out.push(q.tensor);
  }
  return out;
}

/** Adds uniform noise at `levelDb` below each named initializer's RMS (new data; the model is a clone). */
function perturbWeights(model: Model, names: string[], levelDb: number, seed: number): void {
  const g = model.graph;
  const rand = mulberry32(seed);
  const amp = Math.sqrt(3) * 10 ** (-levelDb / 20);
  for (const name of names) {
    const t = g.initializer(name);
    if (!t) continue;
    const x = t.data as Float32Array;
    let ss = 0;
    for (let i = 0; i < x.length; i++) ss += x[i]! * x[i]!;
    const a = amp * Math.sqrt(ss / Math.max(1, x.length));
    const y = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) y[i] = x[i]! + a * (2 * rand() - 1);
    g.addInitializer(new Tensor(name, t.dtype, [...t.dims], y));
  }
}

/** Inserts noise after each named activation (renaming the producer's output so every reader sees the noise). */
function perturbActivations(model: Model, names: string[], levelDb: number, seed: number): void {
  const g = model.graph;
  const producers = g.producers();
  const consumers = g.consumers();
  const taken = g.allNames();
  const fresh = (base: string) => {
    let n = base;
    for (let i = 1; taken.has(n); i++) n = `${base}_${i}`;
    taken.add(n);
    return n;
  };
  const amp = Math.sqrt(3) * 10 ** (-levelDb / 20);
  const added: Node[] = [];
  for (const [k, name] of names.entries()) {
    if (g.initializer(name)) continue;
    const p = producers.get(name);
    let clean: string;
    let noisy: string;
    if (p) {
      // the producer writes a new name; the noisy value takes the original one (graph outputs included)
      clean = fresh(`${name}__clean`);
      p.outputs = p.outputs.map((o) => (o === name ? clean : o));
      noisy = name;
    } else {
      // a graph input: its readers switch to the noisy value
      clean = name;
      noisy = fresh(`${name}__noisy`);
      for (const c of consumers.get(name) ?? []) c.inputs = c.inputs.map((i) => (i === name ? noisy : i));
    }
    const v = (s: string) => fresh(`${name}__${s}`);
    const [sq, ms, rms, u, n] = [v('sq'), v('ms'), v('rms'), v('u'), v('n')];
    added.push(
      new Node('Mul', [clean, clean], [sq]),
      new Node('ReduceMean', [sq], [ms], [makeAttribute('keepdims', 1)]),
      new Node('Sqrt', [ms], [rms]),
      new Node(
        'RandomUniformLike',
        [clean],
        [u],
        [floatAttr('low', -amp), floatAttr('high', amp), floatAttr('seed', seed * 7919 + k)],
      ),
      new Node('Mul', [u, rms], [n]),
      new Node('Add', [clean, n], [noisy]),
    );
  }
  g.nodes.push(...added);
  g.sort();
}

/**
 * The next noise level to try for an output SQNR of `target`, from the (level, output SQNR) points so far: linear
 * interpolation (kept off the ends) once the target is bracketed, otherwise a secant step from the two points
 * nearest the unbracketed side (slope 1 with one point), at most 30 dB, within [1, 160] dB.
 */
export function nextLevel(points: readonly [number, number][], target: number): number {
  const below = points.filter((p) => p[1] < target).sort((a, b) => b[0] - a[0]);
  const above = points.filter((p) => p[1] >= target).sort((a, b) => a[0] - b[0]);
  const lo = below[0];
  const hi = above[0];
  if (lo && hi && hi[0] > lo[0]) {
    const w = hi[0] - lo[0];
    const t = hi[1] > lo[1] ? (target - lo[1]) / (hi[1] - lo[1]) : 0.5;
    return lo[0] + w * Math.min(0.9, Math.max(0.1, t));
  }
  const side = lo ? below : above;
  const [p, q] = side;
  const slope = q && Math.abs(q[0] - p![0]) > 1e-6 ? (q[1] - p![1]) / (q[0] - p![0]) : 1;
  const step = (target - p![1]) / (slope > 0.1 ? slope : 1);
  return Math.min(160, Math.max(1, p![0] + Math.max(-30, Math.min(30, step))));
}

/**
 * Measures the noise gain of the float model (`options.floatModel`, default `sim.model`) at the QuantSim's
 * quantizer positions. With `measureQuantized`, the sim needs encodings for its enabled quantizers.
 */
export async function measureNoiseGain(
  sim: QuantSim,
  samples: Samples,
  options: NoiseGainOptions = {},
): Promise<NoiseGainReport> {
  const t0 = performance.now();
  const levelDb = options.levelDb ?? 40;
  const checkDb = options.checkLevelDb ?? levelDb + 10;
  const sites = options.sites ?? (['weights', 'activations', 'all'] as const);
  const maxSamples = options.maxSamples ?? 8;
  const seed = options.seed ?? 1;
  if (!Number.isFinite(levelDb) || levelDb <= 0)
    throw new QnnxError('E_USAGE', `noise level must be a positive number of dB, got ${options.levelDb}`);
  if (!Number.isInteger(maxSamples) || maxSamples < 1)
    throw new QnnxError('E_USAGE', `maxSamples must be a positive integer, got ${options.maxSamples}`);
  if (sites.some((s) => s !== 'weights' && s !== 'activations' && s !== 'all'))
    throw new QnnxError(
      'E_USAGE',
      `noise sites must be weights, activations or all, got [${sites.join(', ')}]`,
    );
  if (options.measureQuantized) {
    const missing = sim.missingEncodings();
    if (missing.length)
      throw new QnnxError(
        'E_USAGE',
        `measuring the quantized model needs encodings for every enabled quantizer; missing: ${missing[0]}`,
        { tensor: missing[0] },
      );
  }
  const feeds = await firstSamples(samples, maxSamples);
  if (feeds.length === 0) throw new QnnxError('E_DATA', 'no samples for the noise-gain analysis');
  const sessionOptions: SessionOptions = { ...options.sessionOptions, graphOptimizationLevel: 'basic' };

  const floatModel = options.floatModel ?? sim.model;
  const defined = floatModel.graph.definedNames();
  const withSites = sites
    .map((site) => ({ site, names: noiseSites(sim, site) }))
    .filter((s) => s.names.length);
  for (const { names } of withSites) {
    const missing = names.find((n) => !defined.has(n));
    if (missing !== undefined)
      throw new QnnxError(
        'E_USAGE',
        `tensor '${missing}' of the QuantSim is not in the float model given for the noise-gain analysis`,
        { tensor: missing },
      );
  }
  const steps = options.targetDb === undefined ? 0 : (options.searchSteps ?? 6);
  const total = 1 + withSites.length * (1 + (checkDb ? 1 : 0) + steps + (options.measureQuantized ? 1 : 0));
  let runs = 0;
  const progress = (what: string) => options.onProgress?.(++runs, total, what);

  const reference: HostTensor[] = [];
  const floatSession = await Session.create(floatModel, { ...sessionOptions, name: 'float model' });
  let outputName: string;
  try {
    outputName = options.outputName ?? floatSession.outputNames[0]!;
    if (!floatSession.outputNames.includes(outputName))
      throw new QnnxError('E_USAGE', `output '${outputName}' not found in the float model`, {
        tensor: outputName,
      });
    for (const f of feeds) reference.push((await floatSession.run(f, [outputName]))[outputName]!);
  } finally {
    await floatSession.release();
  }
  progress('float model');

  const sqnrOf = async (model: Model, what: string): Promise<number> => {
    const session = await Session.create(model, { ...sessionOptions, name: what });
    const err = new ErrorAccumulator();
    try {
      for (const [i, f] of feeds.entries()) {
        const y = (await session.run(f, [outputName]))[outputName]!;
        const x = reference[i]!;
        if (!sameDims(x.dims, y.dims))
          throw new QnnxError(
            'E_SHAPE',
            `sample ${i}: output '${outputName}' has dims [${y.dims.join(', ')}] in the ${what}, ` +
              `[${x.dims.join(', ')}] in the float model`,
            { tensor: outputName },
          );
        err.add(tensorValues(x), tensorValues(y));
      }
    } finally {
      await session.release();
    }
    progress(what);
    return err.result().sqnrDb;
  };
  const perturbed = (names: string[], level: number): Model => {
    const m = cloneModel(floatModel);
    const weights = names.filter((n) => m.graph.initializer(n));
    const acts = names.filter((n) => !m.graph.initializer(n));
    perturbWeights(m, weights, level, seed);
    perturbActivations(m, acts, level, seed);
    return m;
  };

  const entries: NoiseGainEntry[] = [];
  const enabledAtStart = new Map([...sim.quantizers].map(([k, q]) => [k, q.enabled]));
  try {
    for (const { site, names } of withSites) {
      const out = await sqnrOf(perturbed(names, levelDb), `${site} at ${levelDb} dB`);
      const gainDb = levelDb - out;
      const entry: NoiseGainEntry = {
        site,
        tensors: names.length,
        outputSqnrDb: out,
        gainDb,
      };
      // (level, output SQNR) points measured, for the target search
      const points: [number, number][] = [[levelDb, out]];
      if (checkDb) {
        const out2 = await sqnrOf(perturbed(names, checkDb), `${site} at ${checkDb} dB`);
        entry.linearityDb = checkDb - out2 - gainDb;
        points.push([checkDb, out2]);
      }
      if (options.targetDb !== undefined) {
        const target = options.targetDb;
        const closest = () =>
          points.reduce((a, b) => (Math.abs(b[1] - target) < Math.abs(a[1] - target) ? b : a));
        for (let k = 0; k < steps && Math.abs(closest()[1] - target) > 0.5; k++) {
          const next = nextLevel(points, target);
          points.push([next, await sqnrOf(perturbed(names, next), `${site} at ${next.toFixed(1)} dB`)]);
        }
        const [l, o] = closest();
        entry.levelForTargetDb = l;
        entry.levelForTargetOutputDb = o;
      }
      if (options.measureQuantized) {
        const mine = new Set(names);
        for (const [k, q] of sim.quantizers) {
          const on = enabledAtStart.get(k) ?? false;
          // biases follow their weights; shared encodings follow the activations they share
          q.enabled =
            on &&
            (mine.has(k) ||
              (q.kind === 'bias' && site !== 'activations') ||
              (q.sharedWith !== undefined && site !== 'weights'));
        }
        entry.quantizedSqnrDb = await sqnrOf(exportQdq(sim).model, `${site} quantized`);
        entry.effectiveDb = entry.quantizedSqnrDb + gainDb;
        for (const [k, q] of sim.quantizers) q.enabled = enabledAtStart.get(k) ?? q.enabled;
      }
      entries.push(entry);
    }
  } finally {
    for (const [k, q] of sim.quantizers) q.enabled = enabledAtStart.get(k) ?? q.enabled;
  }
  return {
    levelDb,
    samples: feeds.length,
    outputName,
    entries,
    runs,
    seconds: (performance.now() - t0) / 1000,
  };
}
