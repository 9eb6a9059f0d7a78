/**
 * AutoQuant (AIMET's `AutoQuant`; research S13 G): apply the recommended post-training techniques in order of
 * cost, evaluating after each, and stop as soon as the quantized model is within `allowedDrop` of the float one.
 *
 *   step 'ptq'              plain PTQ: prepare (constant folding, BatchNorm folding), QuantSim, calibrate, export
 *   step 'cle'              + cross-layer equalization with high-bias absorption (BN statistics taken before folding)
 *   step 'bias-correction'  + CLE + empirical bias correction (the DFQ recipe; not in the default steps)
 *   step 'adaround'         + CLE + AdaRound of the weights (bias correction is not combined with AdaRound)
 *   step 'seq-mse'          + CLE + sequential-MSE weight encodings + AdaRound (not in the default steps)
 *
 * Every step starts again from the float model (steps are deterministic, so "+ CLE" is recomputed, not carried).
 * A step that cannot change anything (CLE finding no equalizable pair) is recorded as skipped and not evaluated.
 *
 * Quality: with labels, top-1 accuracy in percent and `drop` = float accuracy − quantized accuracy (points); without
 * labels, the SQNR (dB) of the model outputs against the float model and `drop` = `targetSqnrDb` − SQNR, i.e. the
 * step is good enough when its output SQNR reaches `targetSqnrDb − allowedDrop` (targetSqnrDb default 40 dB: 1 %
 * RMS output error). The returned model is the first step within `allowedDrop`, or else the best one seen.
 *
 * Data: `calib` and `evalData.samples` are read once per step, so they must be re-iterable (arrays or DataSources).
 * The float outputs of the evaluation samples are computed once and kept in memory.
 *
 * Each step is one run of `quantizeModel` (src/quant/quantize.ts) with that step's techniques switched on.
 */
import { QnnxError } from '../errors.js';
import { AccuracyAccumulator, ErrorAccumulator, type Labels, tensorValues } from '../eval/metrics.js';
import type { Model } from '../ir/model.js';
import { cloneModel } from '../ir/model.js';
import type { PassRecord } from '../ir/pass.js';
import { DataType } from '../onnx/dtype.js';
import {
  type PtqTechniques,
  type QuantizeOptions,
  type QuantizeReport,
  quantizeModel,
} from '../quant/quantize.js';
import type { QuantSim } from '../quant/sim/quantsim.js';
import { type Feeds, type Runner, Session } from '../runtime/session.js';
import { isFetchableOutputType } from '../runtime/tensor-convert.js';
import type { AdaRoundModelOptions } from './adaround.js';
import type { EmpiricalBiasCorrectionOptions } from './bias-correction.js';
import type { CleOptions } from './cle.js';
import type { SeqMseOptions } from './seq-mse.js';

export type AutoQuantStep = 'ptq' | 'cle' | 'bias-correction' | 'adaround' | 'seq-mse';

export const AUTOQUANT_DEFAULT_STEPS: readonly AutoQuantStep[] = ['ptq', 'cle', 'adaround'];

type Samples = AsyncIterable<Feeds> | Iterable<Feeds>;
type MakeRunner = (m: Model) => Promise<Runner & { release?: () => Promise<void> }>;

/** ONNX Runtime session, one thread, no memory arena (calibration inputs of varying shapes). */
export const defaultRunner: MakeRunner = (m) => Session.create(m, { enableCpuMemArena: false });

export interface AutoQuantEvalData {
  samples: Samples;
  /** One class per output row of the score output: accuracy is the metric. Without: output SQNR. */
  labels?: Labels;
  /** Output scored against the labels (default the first output). */
  outputName?: string;
}

export interface AutoQuantOptions extends QuantizeOptions {
  /** Allowed drop: accuracy points with labels, else dB below `targetSqnrDb`. */
  allowedDrop: number;
  /** Steps to try, in order (default ptq, cle, adaround). */
  steps?: readonly AutoQuantStep[];
  /** Without labels: the output SQNR (dB) counted as "no drop" (default 40). */
  targetSqnrDb?: number;
  /** Run every step even after one is within the allowed drop (for reports and benchmarks). */
  exhaustive?: boolean;
  /** Options of the CLE pass (BatchNorm statistics are collected by AutoQuant). */
  cle?: Omit<CleOptions, 'bnStats'>;
  /** Options of AdaRound (iterations per layer, samples kept, ...; default AdaRound's own). */
  adaround?: AdaRoundModelOptions;
  /** Options of sequential MSE (the 'seq-mse' step). */
  seqMse?: SeqMseOptions;
  /** Bias correction of the 'bias-correction' step (default 'empirical'). */
  biasCorrection?: 'empirical' | 'analytic' | EmpiricalBiasCorrectionOptions;
  /** Runner for calibration and the algorithms' float passes (default: ONNX Runtime session, 1 thread). */
  makeRunner?: MakeRunner;
  /** Called after each step with its result. */
  onStep?: (step: AutoQuantStepResult) => void;
}

export interface AutoQuantStepResult {
  step: AutoQuantStep;
  /** The techniques applied on top of plain PTQ. */
  techniques: string[];
  /** Percent top-1 accuracy (with labels). */
  accuracy?: number;
  /** Output SQNR against the float model (dB, all numeric outputs pooled). */
  sqnrDb: number;
  /** See the file comment; undefined for a skipped step. */
  drop?: number;
  withinDrop: boolean;
  /** Seconds of quantization work (algorithms + calibration + export), evaluation excluded. */
  seconds: number;
  evalSeconds: number;
  /** Set when the step was not run or not evaluated, with the reason. */
  skipped?: string;
  passes: PassRecord[];
  /** Seconds per phase of the step's quantization (prepare, cle, adaround, calibration, ...). */
  timings: Record<string, number>;
}

export interface AutoQuantReport {
  metric: 'accuracy' | 'sqnr';
  allowedDrop: number;
  /** Float accuracy in percent (with labels). */
  floatAccuracy?: number;
  targetSqnrDb?: number;
  steps: AutoQuantStepResult[];
  /** The step whose model is returned. */
  chosen: AutoQuantStep;
  /** Whether the chosen model is within the allowed drop. */
  met: boolean;
  /** Whether steps were left untried because one was already good enough. */
  stoppedEarly: boolean;
  /** The chosen step's quantization report. */
  quantize: QuantizeReport;
  seconds: number;
}

/** Float reference outputs of the evaluation samples, kept once. */
interface Reference {
  outputs: string[];
  scoreOutput: string;
  values: Float32Array[][];
  accuracy?: number;
}

function numericOutputs(r: Runner): string[] {
  return r.outputs
    .filter((m) => m.isTensor && m.dtype !== DataType.STRING && isFetchableOutputType(m.dtype))
    .map((m) => m.name);
}

/** Accuracy in percent, computed as 100·correct/total (exact for 1000 samples: 92.1, not 92.10000000000001). */
function percent(acc: AccuracyAccumulator): number {
  const r = acc.finish();
  return (100 * r.correct) / r.total;
}

async function referenceOutputs(float: Model, ev: AutoQuantEvalData): Promise<Reference> {
  const s = await Session.create(float);
  try {
    const outputs = numericOutputs(s);
    const scoreOutput = ev.outputName ?? outputs[0];
    if (!scoreOutput || !outputs.includes(scoreOutput)) {
      throw new QnnxError('E_USAGE', `autoQuantize: the float model has no output '${scoreOutput ?? ''}'`);
    }
    const acc = ev.labels ? new AccuracyAccumulator(ev.labels) : undefined;
    const values: Float32Array[][] = [];
    let n = 0;
    for await (const feeds of ev.samples as AsyncIterable<Feeds>) {
      const out = await s.run(feeds, outputs);
      values.push(outputs.map((o) => Float32Array.from(tensorValues(out[o], `output '${o}'`))));
      acc?.add(out[scoreOutput], n++);
    }
    if (values.length === 0) throw new QnnxError('E_DATA', 'autoQuantize: no evaluation samples');
    return { outputs, scoreOutput, values, accuracy: acc ? percent(acc) : undefined };
  } finally {
    await s.release();
  }
}

async function evaluate(
  q: Model,
  ref: Reference,
  ev: AutoQuantEvalData,
): Promise<{ accuracy?: number; sqnrDb: number }> {
  const s = await Session.create(q);
  try {
    const err = new ErrorAccumulator();
    const acc = ev.labels ? new AccuracyAccumulator(ev.labels) : undefined;
    let n = 0;
    for await (const feeds of ev.samples as AsyncIterable<Feeds>) {
      const out = await s.run(feeds, ref.outputs);
      for (const [i, o] of ref.outputs.entries())
        err.add(ref.values[n][i], tensorValues(out[o], `output '${o}'`));
      acc?.add(out[ref.scoreOutput], n);
      n++;
    }
    if (n !== ref.values.length) {
      throw new QnnxError(
        'E_DATA',
        `autoQuantize: evaluation samples changed between runs (${n} vs ${ref.values.length})`,
      );
    }
    return { accuracy: acc ? percent(acc) : undefined, sqnrDb: err.result().sqnrDb };
  } finally {
    await s.release();
  }
}

const TECHNIQUES: Record<AutoQuantStep, string[]> = {
  ptq: [],
  cle: ['cle'],
  'bias-correction': ['cle', 'bias-correction'],
  adaround: ['cle', 'adaround'],
  'seq-mse': ['cle', 'seq-mse', 'adaround'],
};

/** The techniques of a step, with the options AutoQuant was given for each. */
function stepTechniques(step: AutoQuantStep, options: AutoQuantOptions): PtqTechniques {
  const t = TECHNIQUES[step];
  return {
    cle: t.includes('cle') ? (options.cle ?? true) : false,
    seqMse: t.includes('seq-mse') ? (options.seqMse ?? true) : false,
    adaround: t.includes('adaround') ? (options.adaround ?? true) : false,
    biasCorrection: t.includes('bias-correction') ? (options.biasCorrection ?? 'empirical') : false,
  };
}

/**
 * Quantizes `model` (not modified) with the AutoQuant steps and returns the chosen QDQ model, its QuantSim and
 * the report of every step tried.
 */
export async function autoQuantize(
  model: Model,
  calib: Samples,
  evalData: AutoQuantEvalData,
  options: AutoQuantOptions,
): Promise<{ model: Model; sim: QuantSim; report: AutoQuantReport }> {
  const t0 = performance.now();
  if (!(options.allowedDrop >= 0)) {
    throw new QnnxError('E_USAGE', `allowedDrop must be a non-negative number, got ${options.allowedDrop}`);
  }
  const steps = options.steps ?? AUTOQUANT_DEFAULT_STEPS;
  if (steps.length === 0) throw new QnnxError('E_USAGE', 'autoQuantize: no steps to try');
  for (const s of steps) {
    if (!(s in TECHNIQUES)) {
      throw new QnnxError(
        'E_USAGE',
        `unknown AutoQuant step '${s}' (known: ${Object.keys(TECHNIQUES).join(', ')})`,
      );
    }
  }
  const makeRunner: MakeRunner = options.makeRunner ?? defaultRunner;
  const float = cloneModel(model);
  const ref = await referenceOutputs(float, evalData);
  const metric = evalData.labels ? 'accuracy' : 'sqnr';
  const target = options.targetSqnrDb ?? 40;
  const results: AutoQuantStepResult[] = [];
  let best:
    | {
        step: AutoQuantStep;
        model: Model;
        sim: QuantSim;
        report: QuantizeReport;
        accuracy?: number;
        sqnrDb: number;
        within: boolean;
      }
    | undefined;
  let stoppedEarly = false;
  for (let i = 0; i < steps.length; i++) {
    const step = steps[i];
    const ts = performance.now();
    const { cle: _cle, seqMse: _seq, adaround: _ada, biasCorrection: _bc, ...base } = options;
    const out = await quantizeModel(cloneModel(float), calib, makeRunner, {
      ...base,
      ...stepTechniques(step, options),
    });
    const seconds = (performance.now() - ts) / 1000;
    const passes = out.report.passes;
    const cleRecord = passes.find((p) => p.pass === 'cross-layer-equalization');
    if (step === 'cle' && cleRecord && !cleRecord.changed) {
      const r: AutoQuantStepResult = {
        step,
        techniques: TECHNIQUES[step],
        sqnrDb: Number.NaN,
        withinDrop: false,
        seconds,
        evalSeconds: 0,
        skipped: 'CLE found no equalizable layer pair: same model as plain PTQ',
        passes,
        timings: out.report.timings,
      };
      results.push(r);
      options.onStep?.(r);
      continue;
    }
    const te = performance.now();
    const q = await evaluate(out.model, ref, evalData);
    const evalSeconds = (performance.now() - te) / 1000;
    const drop =
      Math.round((metric === 'accuracy' ? ref.accuracy! - q.accuracy! : target - q.sqnrDb) * 1e9) / 1e9;
    const within = drop <= options.allowedDrop;
    const r: AutoQuantStepResult = {
      step,
      techniques: TECHNIQUES[step],
      accuracy: q.accuracy,
      sqnrDb: q.sqnrDb,
      drop,
      withinDrop: within,
      seconds,
      evalSeconds,
      passes,
      timings: out.report.timings,
    };
    results.push(r);
    options.onStep?.(r);
    // The first step within the drop is kept; before one is, the better step (accuracy, then SQNR) is.
    const better = (b: { accuracy?: number; sqnrDb: number }) =>
      metric === 'accuracy' && q.accuracy !== b.accuracy ? q.accuracy! > b.accuracy! : q.sqnrDb > b.sqnrDb;
    if (!best || (!best.within && (within || better(best)))) {
      best = {
        step,
        model: out.model,
        sim: out.sim,
        report: out.report,
        accuracy: q.accuracy,
        sqnrDb: q.sqnrDb,
        within,
      };
    }
    if (within && !options.exhaustive) {
      stoppedEarly = i < steps.length - 1;
      break;
    }
  }
  if (!best) throw new QnnxError('E_USAGE', 'autoQuantize: every step was skipped');
  return {
    model: best.model,
    sim: best.sim,
    report: {
      metric,
      allowedDrop: options.allowedDrop,
      floatAccuracy: ref.accuracy,
      targetSqnrDb: metric === 'sqnr' ? target : undefined,
      steps: results,
      chosen: best.step,
      met: best.within,
      stoppedEarly,
      quantize: best.report,
      seconds: (performance.now() - t0) / 1000,
    },
  };
}
