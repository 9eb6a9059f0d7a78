/**
 * Post-training quantization, end to end — the one PTQ pipeline behind `qnnx quantize`, AutoQuant and the
 * benchmarks, in AIMET's order:
 *
 *   1. prepare: Constant nodes to initializers, BatchNorm folding (statistics kept first when CLE or analytic bias
 *      correction need them), exact rewrites for integer kernels (affine chains into Convs, ConvTranspose(k = s)
 *      as Conv1x1 + DepthToSpace; research part C), dead nodes removed, opset raised as the export needs;
 *   2. cross-layer equalization with high-bias absorption (`cle`);
 *   3. QuantSim placement (scalar affine chains left float to be absorbed after export; `rewrites.firstConvFloat`
 *      leaves an image model's stem float), weight encodings;
 *   4. sequential MSE weight encodings (`seqMse`), AdaRound (`adaround`), bias correction (`biasCorrection`,
 *      empirical or analytic; the 'quantized inputs' form runs after calibration);
 *   5. activation calibration with ONNX Runtime; softmax bias correction (`softmaxBias`); mixed precision
 *      (`mixedPrecision`: fall back the fewest quantizers until the output SQNR reaches a target);
 *   6. QDQ export, absorption of the affine chains into the Q/DQ parameters, dead nodes, compaction (zero points
 *      before Convs, short generated names).
 *
 * Runs anywhere a Runner can be created (Node by default). `samples` is read once for calibration plus once per
 * data-driven technique, so it must be re-iterable (an array or a DataSource) when any is on.
 */
import { QnnxError } from '../errors.js';
import { cloneModel, type Model } from '../ir/model.js';
import type { PassRecord } from '../ir/pass.js';
import { eliminateDeadNodes, foldBatchNorm, foldConstants, upgradeOpset } from '../ir/passes/index.js';
import { type AdaRoundModelOptions, type AdaRoundReport, adaround } from '../ptq/adaround.js';
import {
  correctBiasAnalytic,
  correctBiasEmpirical,
  type EmpiricalBiasCorrectionOptions,
} from '../ptq/bias-correction.js';
import { type CleOptions, collectBnStats, equalizeCrossLayer } from '../ptq/cle.js';
import { type SeqMseOptions, type SeqMseReport, sequentialMse } from '../ptq/seq-mse.js';
import { correctSoftmaxBias, type SoftmaxBiasOptions } from '../ptq/softmax-bias.js';
import type { Feeds, Runner } from '../runtime/session.js';
import { parseRangeMethod } from './analyzers/index.js';
import { exportQdq, requiredOpset } from './export/qdq.js';
import { type MixedPrecisionOptions, type MixedPrecisionReport, mixedPrecision } from './mixed-precision.js';
import { getPreset, type PresetName } from './presets.js';
import { absorbAffineIntoQdq, absorbableAffineChains } from './rewrites/affine-absorb.js';
import { foldAffineIntoConv } from './rewrites/affine-into-conv.js';
import { compactQdq } from './rewrites/compact.js';
import { convTransposeToDepthToSpace } from './rewrites/convtranspose.js';
import { resizeNearestToExpand } from './rewrites/resize.js';
import { exactNamePattern, firstConvs, targetWithFloatOps } from './rewrites/select.js';
import { type CalibrationBatching, calibrate, calibrationPlan } from './sim/calibrate.js';
import { QuantSim, type QuantSimOptions } from './sim/quantsim.js';
import { getTarget, type TargetProfile } from './sim/targets.js';

type Samples = AsyncIterable<Feeds> | Iterable<Feeds>;
export type MakeRunner = (m: Model) => Promise<Runner & { release?: () => Promise<void> }>;

/** Graph rewrites of the pipeline (research part C); all exact except where noted. */
export interface RewriteOptions {
  /** Fold constant affine chains into unpadded Convs (default true). */
  foldAffine?: boolean;
  /** ConvTranspose(k = s) → Conv1x1 + DepthToSpace (default true). */
  convTranspose?: boolean;
  /**
   * Nearest integer-factor Resize → Unsqueeze + Expand + Reshape (default false: ORT 1.30's uint8 Expand is
   * slower than its uint8 Resize, 27 ms vs 11 ms on PP-OCRv4 det 640x640).
   */
  resizeToExpand?: boolean;
  /** Leave scalar affine chains float and absorb them into the Q/DQ parameters after export (default true). */
  absorbAffine?: boolean;
  /**
   * Leave Convs reading a graph input with ≤ 4 channels float (default false). On ONNX Runtime CPU the int8 kernel
   * for a 3-channel stem is slow: PP-OCRv4 det 640 goes from 0.50 to 0.39x the float latency. Not a general win:
   * on the Fashion-MNIST CNN (1 channel) the float stem's output then needs its own QuantizeLinear, and batch 64
   * runs at 1.75x float instead of 1.15x.
   */
  firstConvFloat?: boolean;
  /** Ops removed from the target's op lists, i.e. left float (e.g. ['Resize']). */
  floatOps?: string[];
  /**
   * Post-export byte savings (compactQdq): 'zero-points' drops all-zero zero points in front of Convs; 'names'
   * (default) also drops Q/DQ node names and gives the export's generated values short names; 'none' keeps all.
   */
  compact?: 'none' | 'zero-points' | 'names';
}

/** Post-training techniques (src/ptq) on top of plain calibration. */
export interface PtqTechniques {
  /** Cross-layer equalization with high-bias absorption, after BatchNorm folding (statistics collected before). */
  cle?: boolean | Omit<CleOptions, 'bnStats'>;
  /** Sequential MSE weight encodings (before AdaRound, which rounds on the chosen grid). */
  seqMse?: boolean | SeqMseOptions;
  /** AdaRound of the weights (before activation calibration). */
  adaround?: boolean | AdaRoundModelOptions;
  /**
   * Bias correction for weight quantization: 'empirical' (float layer-input means over the samples) or 'analytic'
   * (from BatchNorm statistics, data-free; layers without statistics are left alone), or the empirical options
   * (`inputs: 'quantized'` measures the quantized model's inputs after calibration). After AdaRound it corrects
   * the shift of the learned rounding (W − W̃)·E[x], with the float weights kept aside before AdaRound.
   */
  biasCorrection?: false | 'empirical' | 'analytic' | EmpiricalBiasCorrectionOptions;
  /** Softmax bias correction (research S08) of softmax outputs feeding MatMuls, after calibration. */
  softmaxBias?: boolean | SoftmaxBiasOptions;
  /**
   * Automatic mixed precision (src/quant/mixed-precision.ts) after calibration: the fewest quantizer groups fall
   * back to float (or int16) until the output SQNR against the float model, on the first calibration samples,
   * reaches `targetSqnrDb` (default 30). The float reference is the prepared model before CLE and bias correction.
   */
  mixedPrecision?: MixedPrecisionOptions;
}

export interface QuantizeOptions extends PtqTechniques {
  preset?: PresetName;
  /** A built-in target name or a parsed profile. Default 'ort-cpu'. */
  target?: string | TargetProfile;
  /** Weight granularity: 'tensor', 'channel', 'block:N' or 'vector:N' (per-vector, 4-bit... scales: 'vector:N:M'). */
  granularity?: string;
  /** Weight bits override (2-16). */
  weightBits?: number;
  weightSigned?: boolean;
  /** Activation bits override (8 or 16). */
  activationBits?: number;
  activationSigned?: boolean;
  /** Range method: minmax, moving-average[:m], percentile:P, mse, octav, entropy. Default minmax. */
  range?: string;
  exclude?: string[];
  include?: string[];
  /** Fold BatchNormalization before quantizing (default true). */
  foldBatchNorm?: boolean;
  /** Graph rewrites (research part C); defaults in RewriteOptions. */
  rewrites?: RewriteOptions;
  /**
   * Calibration samples per ONNX Runtime run, or 'auto' (default): as many as keep a run's inputs within 1 MiB,
   * at most 16 (AUTO_BATCH). Min/max calibration of models with a dynamic batch axis stacks consecutive
   * same-shape samples (bit-identical encodings, less per-run overhead); other range methods and fixed-batch
   * models run one sample at a time (`report.calibration.batch` says which, and why).
   */
  calibrationBatch?: number | 'auto';
  onProgress?: (done: number, total: number | undefined) => void;
}

export interface QuantizeReport {
  preset: string;
  target: string;
  range: string;
  opset: { before: number; after: number };
  quantizers: { activations: number; shared: number; weights: number; biases: number; constants: number };
  skipped: { node: string; opType: string; reason: string }[];
  calibration: { samples: number; seconds: number; mode: string; batch?: CalibrationBatching };
  /** The mixed-precision search, when asked for (without its per-candidate screening table). */
  mixedPrecision?: Omit<MixedPrecisionReport, 'screening'>;
  weightBytes: { before: number; after: number };
  passes: PassRecord[];
  /** Seconds per phase (prepare, cle, seqMse, adaround, biasCorrection, calibration, softmaxBias, export). */
  timings: Record<string, number>;
}

/** Parses --granularity into the QuantSim weight override. */
export function parseGranularity(s: string | undefined): QuantSimOptions['weights'] {
  if (!s) return {};
  if (s === 'tensor' || s === 'channel') return { granularity: s };
  const m = /^(block|vector):(\d+)(?::(\d+))?$/.exec(s);
  if (!m) {
    throw new QnnxError(
      'E_USAGE',
      `--granularity must be tensor, channel, block:N or vector:N[:M], got '${s}'`,
    );
  }
  const size = Number(m[2]);
  if (size < 2) throw new QnnxError('E_USAGE', `block/vector size must be at least 2, got ${size}`);
  if (m[1] === 'block') return { blockSize: size };
  return { vector: { size, scaleBits: m[3] ? Number(m[3]) : 4 } };
}

/**
 * Prepares a float model for quantization in place; returns the pass records. `rewrites`: also apply the exact
 * rewrites for integer kernels (`true` = the defaults of RewriteOptions); tests of those rewrites turn it off to
 * apply them one at a time.
 */
export function prepareModel(
  model: Model,
  opset: number,
  foldBn = true,
  rewrites: boolean | RewriteOptions = true,
): PassRecord[] {
  const rw: RewriteOptions = rewrites === true ? {} : rewrites === false ? NO_REWRITES : rewrites;
  const records: PassRecord[] = [];
  records.push(foldConstants(model));
  if (foldBn) records.push(foldBatchNorm(model));
  if (rw.foldAffine ?? true) records.push(foldAffineIntoConv(model));
  if (rw.convTranspose ?? true) records.push(convTransposeToDepthToSpace(model));
  records.push(eliminateDeadNodes(model));
  if ((model.opset('') ?? 0) < opset) records.push(upgradeOpset(model, opset));
  // After the opset upgrade: the rewrite writes opset-13 Unsqueeze (axes as an input) when the model is at 13+.
  if (rw.resizeToExpand) records.push(resizeNearestToExpand(model));
  return records;
}

const NO_REWRITES: RewriteOptions = { foldAffine: false, convTranspose: false, resizeToExpand: false };

export function buildSim(model: Model, options: QuantizeOptions): QuantSim {
  const preset = getPreset(options.preset ?? 'w8a8');
  if (!preset.sim) {
    throw new QnnxError('E_USAGE', `preset '${options.preset}' does not use calibration; use its own export`);
  }
  const target = typeof options.target === 'object' ? options.target : getTarget(options.target ?? 'ort-cpu');
  const weights = { ...preset.sim.weights, ...parseGranularity(options.granularity) };
  if (options.weightBits) weights.bits = options.weightBits;
  if (options.weightSigned !== undefined) weights.signed = options.weightSigned;
  const activations = { ...preset.sim.activations };
  if (options.activationBits) activations.bits = options.activationBits;
  if (options.activationSigned !== undefined) {
    activations.signed = options.activationSigned;
    activations.symmetry = options.activationSigned ? 'symmetric' : 'asymmetric';
  }
  return new QuantSim(model, {
    target,
    weights,
    activations,
    weightOnly: preset.sim.weightOnly,
    exclude: options.exclude,
    include: options.include,
  });
}

const opt = <T extends object>(v: boolean | T | undefined): T | undefined =>
  v === undefined || v === false ? undefined : v === true ? ({} as T) : v;

function summarizeLayers(
  pass: string,
  r: { layers: object[]; skipped: unknown[]; samples: number; seconds: number },
  pick: (l: never) => Record<string, unknown>,
): PassRecord {
  return {
    pass,
    changed: r.layers.length > 0,
    details: {
      layers: r.layers.map((l) => pick(l as never)),
      skipped: r.skipped,
      samples: r.samples,
      seconds: r.seconds,
    },
  };
}

/**
 * Quantizes `model` (modified in place by the preparation passes and techniques) and returns the QDQ model, the
 * QuantSim and a report. `makeRunner` creates an ONNX Runtime session for the calibration model and the
 * techniques' float passes; `sampleCount` (when known) is the progress total.
 */
export async function quantizeModel(
  model: Model,
  samples: Samples,
  makeRunner: MakeRunner,
  options: QuantizeOptions = {},
  sampleCount?: number,
): Promise<{ model: Model; sim: QuantSim; report: QuantizeReport }> {
  const timings: Record<string, number> = {};
  let t = performance.now();
  const lap = (key: string) => {
    const now = performance.now();
    timings[key] = (timings[key] ?? 0) + (now - t) / 1000;
    t = now;
  };
  const rw = options.rewrites ?? {};
  const opsetBefore = model.opset('') ?? 0;
  const method = parseRangeMethod(options.range ?? 'minmax');
  const cleOptions = opt(options.cle);
  const bc = options.biasCorrection;
  const bnStats = cleOptions !== undefined || bc === 'analytic' ? collectBnStats(model) : undefined;
  const target = targetWithFloatOps(options.target, rw.floatOps ?? []);
  const base: QuantizeOptions = { ...options, target };
  // Place once to learn the opset the export needs, then prepare and place for real.
  const passes = prepareModel(model, requiredOpset(buildSim(model, base)), options.foldBatchNorm ?? true, rw);
  // The float reference of mixed precision: prepared (exact rewrites only), before CLE and bias correction.
  const floatReference = options.mixedPrecision ? cloneModel(model) : undefined;
  if (cleOptions) {
    lap('prepare');
    passes.push(equalizeCrossLayer(model, { ...cleOptions, bnStats }));
    lap('cle');
  }
  // Scalar affine chains (z = a·t + b) stay float here and are absorbed into the quantization parameters after
  // export, so they cost nothing at run time.
  const chains = (rw.absorbAffine ?? true) ? absorbableAffineChains(model) : undefined;
  const absorbed = (chains?.nodes ?? []).map(exactNamePattern);
  const stems = (rw.firstConvFloat ? firstConvs(model) : []).map(exactNamePattern);
  const excluded = [...absorbed, ...stems];
  const simOptions: QuantizeOptions = { ...base, exclude: [...(options.exclude ?? []), ...excluded] };
  let sim = buildSim(model, simOptions);
  // Weights behind Constant nodes get quantizers only after preparation: the opset may need raising again.
  if ((model.opset('') ?? 0) < requiredOpset(sim)) {
    passes.push(upgradeOpset(model, requiredOpset(sim)));
    sim = buildSim(model, simOptions);
  }
  // The chains' outputs get their inputs' grids mapped through the chain (finalizeEncodings), as absorption will
  // give them: the sim's own export then computes what the written model does.
  for (const c of chains?.chains ?? []) {
    const q = sim.quantizers.get(c.output);
    if (q && !q.sharedWith && c.A.length === 1 && c.B.length === 1 && c.A[0]! > 0)
      q.affineOf = { tensor: c.root, a: c.A[0]!, b: c.B[0]! };
  }
  if (sim.quantizers.size === 0 && hasSubgraphs(model)) {
    // A control-flow model whose computation lives in If/Loop/Scan bodies: they stay float (see docs/quantize.md).
    lap('prepare');
    return { model, sim, report: emptyReport(options, sim, opsetBefore, model, passes, timings) };
  }
  if (sim.quantizers.size === 0) {
    const ops = [...new Set(model.graph.nodes.map((n) => n.opType))].join(', ');
    throw new QnnxError(
      'E_USAGE',
      `the model has no quantizable ops for target '${sim.target.name}' (its ops: ${ops}); nothing would be quantized`,
      { reason: 'nothing-to-quantize' },
    );
  }
  sim.computeParameterEncodings();
  lap('prepare');
  const seqMse = opt(options.seqMse);
  if (seqMse) {
    const r = await sequentialMse(sim, samples, makeRunner, seqMse);
    passes.push(
      summarizeLayers('sequential-mse', r, (l: SeqMseReport['layers'][number]) => ({
        node: l.node,
        mseRatio: l.mseMinMax > 0 ? l.mseChosen / l.mseMinMax : 1,
        meanRatio: l.meanRatio,
        seconds: l.seconds,
      })),
    );
    lap('seqMse');
  }
  const ada = opt(options.adaround);
  // AdaRound writes its rounded weights into the model: bias correction after it needs the float weights.
  let floatWeights: Map<string, Float32Array> | undefined;
  if (ada && bc) {
    floatWeights = new Map();
    for (const q of sim.quantizers.values()) {
      const t = q.kind === 'weight' ? model.graph.initializer(q.tensor) : undefined;
      if (t) floatWeights.set(q.tensor, Float32Array.from(t.data as Float32Array));
    }
  }
  if (ada) {
    const r = await adaround(sim, samples, makeRunner, ada);
    passes.push(
      summarizeLayers('adaround', r, (l: AdaRoundReport['layers'][number]) => ({
        node: l.node,
        mseRatio: l.mseNearest > 0 ? l.mseAdaRound / l.mseNearest : 1,
        changed: l.changed,
        iterations: l.iterations,
        seconds: l.seconds,
      })),
    );
    lap('adaround');
  }
  const bcOptions: EmpiricalBiasCorrectionOptions | undefined =
    bc === 'empirical' ? { floatWeights } : typeof bc === 'object' ? { floatWeights, ...bc } : undefined;
  if (bc === 'analytic') {
    passes.push(correctBiasAnalytic(sim, { bnStats, floatWeights }));
    lap('biasCorrection');
  } else if (bcOptions && bcOptions.inputs !== 'quantized') {
    passes.push(await correctBiasEmpirical(sim, samples, makeRunner, bcOptions));
    lap('biasCorrection');
  }
  const plan = calibrationPlan(sim, method);
  const t0 = performance.now();
  let used = 0;
  let batching: CalibrationBatching | undefined;
  if (sim.calibratedTensors().length > 0) {
    const runner = await makeRunner(plan.model);
    try {
      used = await calibrate(
        sim,
        plan,
        runner,
        samples,
        {
          method,
          onProgress: options.onProgress,
          batchSize: options.calibrationBatch ?? 'auto',
          onBatching: (b) => {
            batching = b;
          },
        },
        sampleCount,
      );
    } finally {
      await runner.release?.();
    }
  }
  const calibSeconds = (performance.now() - t0) / 1000;
  lap('calibration');
  if (bcOptions?.inputs === 'quantized') {
    passes.push(await correctBiasEmpirical(sim, samples, makeRunner, bcOptions));
    lap('biasCorrection');
  }
  const softmax = opt(options.softmaxBias);
  if (softmax) {
    passes.push(await correctSoftmaxBias(sim, samples, makeRunner, softmax));
    lap('softmaxBias');
  }
  sim.finalizeEncodings();
  let mixed: MixedPrecisionReport | undefined;
  if (options.mixedPrecision) {
    mixed = await mixedPrecision(sim, floatReference, samples, options.mixedPrecision);
    passes.push({
      pass: 'mixed-precision',
      changed: mixed.picks.length > 0,
      details: { picks: mixed.picks.map((p) => p.name), sqnrDb: mixed.sqnrDb, met: mixed.met },
    });
    lap('mixedPrecision');
  }
  const exported = exportQdq(sim);
  if (rw.absorbAffine ?? true)
    passes.push(absorbAffineIntoQdq(exported.model, { compensated: exported.compensatedConvs }));
  passes.push(eliminateDeadNodes(exported.model));
  const compact = rw.compact ?? 'names';
  if (compact !== 'none') passes.push(compactQdq(exported.model, { shortNames: compact === 'names' }));
  lap('export');
  const qs = [...sim.quantizers.values()];
  const report: QuantizeReport = {
    preset: options.preset ?? 'w8a8',
    target: sim.target.name,
    range: options.range ?? 'minmax',
    opset: { before: opsetBefore, after: exported.model.opset('') ?? 0 },
    quantizers: {
      activations: qs.filter((q) => q.kind === 'activation' && !q.sharedWith).length,
      shared: qs.filter((q) => q.sharedWith).length,
      weights: qs.filter((q) => q.kind === 'weight').length,
      biases: qs.filter((q) => q.kind === 'bias').length,
      constants: qs.filter((q) => q.kind === 'constant').length,
    },
    // Absorbed affine chains cost nothing at run time: not "left float". Stems left float are.
    skipped: sim.skipped
      .filter((k) => !absorbed.includes(exactNamePattern(k.node)))
      .map((k) =>
        stems.includes(exactNamePattern(k.node))
          ? { ...k, reason: 'first conv left float (firstConvFloat)' }
          : k,
      ),
    calibration: {
      samples: used,
      seconds: calibSeconds,
      mode: plan.mode,
      ...(batching ? { batch: batching } : {}),
    },
    weightBytes: { before: exported.weightBytesBefore, after: exported.weightBytesAfter },
    passes,
    timings,
  };
  if (mixed) {
    const { screening: _screening, ...rest } = mixed;
    report.mixedPrecision = rest;
  }
  return { model: exported.model, sim, report };
}

function hasSubgraphs(model: Model): boolean {
  return model.graph.nodes.some((n) => n.subgraphs().length > 0);
}

function emptyReport(
  options: QuantizeOptions,
  sim: QuantSim,
  opsetBefore: number,
  model: Model,
  passes: PassRecord[],
  timings: Record<string, number>,
): QuantizeReport {
  return {
    preset: options.preset ?? 'w8a8',
    target: sim.target.name,
    range: options.range ?? 'minmax',
    opset: { before: opsetBefore, after: model.opset('') ?? 0 },
    quantizers: { activations: 0, shared: 0, weights: 0, biases: 0, constants: 0 },
    skipped: [
      {
        node: '',
        opType: 'If/Loop/Scan',
        reason: 'the computation is inside control-flow subgraphs, left float',
      },
    ],
    calibration: { samples: 0, seconds: 0, mode: 'none' },
    weightBytes: { before: 0, after: 0 },
    passes,
    timings,
  };
}
