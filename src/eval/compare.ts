/**
 * Float-vs-quantized comparison: run a reference and a candidate model over the same samples, one sample at a
 * time, and report per-output error metrics (SQNR, MSE, ...), top-1 accuracy of both against labels, their top-1
 * agreement, and per-sample latency of each.
 *
 * Latency is measured serially in one loop, the two runners alternating which goes first (even samples: the
 * reference first; odd samples: the candidate first), so that cache warmth and CPU frequency drift favour
 * neither. Each runner first runs the first sample `warmup` times untimed (allocation of ORT's arena, lazy
 * kernel set-up). Times include the Runner's own work (feed checks, tensor conversion): what a caller pays.
 *
 * Nothing is kept per sample: metrics stream through the accumulators of metrics.ts.
 */
import { QnnxError } from '../errors.js';
import { DataType } from '../onnx/dtype.js';
import type { Feeds, Runner, ValueMeta } from '../runtime/session.js';
import { isFetchableOutputType } from '../runtime/tensor-convert.js';
import type { HostTensor } from '../tensor.js';
import {
  AccuracyAccumulator,
  type AccuracyResult,
  AgreementAccumulator,
  ErrorAccumulator,
  type ErrorMetrics,
  type Labels,
  LatencyAccumulator,
  type LatencyStats,
  sameDims,
  scoreRows,
  tensorValues,
} from './metrics.js';

/** Samples: any (async) iterable of feeds; a `size` (DataSource) or `length` (array) gives progress totals. */
export type Samples = AsyncIterable<Feeds> | Iterable<Feeds>;

/** The first `max` samples, held in memory (analyses that run them many times). */
export async function firstSamples(samples: Samples, max: number): Promise<Feeds[]> {
  const out: Feeds[] = [];
  if (max <= 0) return out;
  for await (const s of samples as AsyncIterable<Feeds>) {
    out.push(s);
    if (out.length >= max) break;
  }
  return out;
}

export interface EvaluateOptions {
  /** One integer class per row of the score output (see metrics.ts), in sample order. */
  labels?: Labels;
  /** The output scored against the labels (and for agreement); default the first output compared. */
  outputName?: string;
  /** Top-k accuracy (default 1). */
  topK?: number;
  /** Untimed runs of the first sample per runner before timing starts (default 1). */
  warmup?: number;
  /** Use at most this many samples. */
  limit?: number;
  /** Accept more labels than output rows (the first ones are used), e.g. when `limit` cut the samples short. */
  allowExtraLabels?: boolean;
  /** Called after each sample with the count done and the total when known. */
  onProgress?: (done: number, total: number | undefined) => void;
}

export interface CompareOptions extends EvaluateOptions {
  /**
   * Reference outputs to compare (default: every numeric reference output the candidate also has; when the two
   * share no output name but have the same number of outputs, they are paired by position).
   */
  outputs?: readonly string[];
}

/** Metrics of one compared output; keyed by the reference's output name. */
export interface OutputComparison extends ErrorMetrics {
  /** The candidate's output name (differs only when outputs were paired by position). */
  candidateName: string;
  /** Dims of the output for the first sample. */
  dims: number[];
}

export interface ModelComparison {
  samples: number;
  outputs: Record<string, OutputComparison>;
  /** The output used for accuracy and agreement. */
  scoreOutput: string;
  /** Fraction of rows where both models pick the same top-1 class; undefined when the output has one class. */
  agreement?: number;
  /** Candidate accuracy (fraction), with labels. */
  accuracy?: number;
  /** Reference accuracy (fraction), with labels. */
  referenceAccuracy?: number;
  /** The counts behind the accuracies. */
  accuracyDetail?: { candidate: AccuracyResult; reference: AccuracyResult };
  /** Candidate latency per sample. */
  latencyMs: LatencyStats;
  referenceLatencyMs: LatencyStats;
}

export interface ModelEvaluation {
  samples: number;
  /** The output scored against labels (first output by default). */
  scoreOutput: string;
  accuracy?: number;
  accuracyDetail?: AccuracyResult;
  latencyMs: LatencyStats;
}

/** Outputs a runner can hand back as numbers. */
function numericOutputs(r: Runner): ValueMeta[] {
  return r.outputs.filter((m) => m.isTensor && m.dtype !== DataType.STRING && isFetchableOutputType(m.dtype));
}

function quoteList(names: readonly string[]): string {
  return names.map((n) => `'${n}'`).join(', ') || 'none';
}

function outputNotFound(r: Runner, name: string, role: string): QnnxError {
  return new QnnxError(
    'E_USAGE',
    `output '${name}' not found in the ${role} model ${r.name} (outputs: ${quoteList(r.outputs.map((m) => m.name))})`,
    { tensor: name },
  );
}

/** Reference → candidate output names. */
function pairOutputs(reference: Runner, candidate: Runner, wanted?: readonly string[]): [string, string][] {
  const refNames = numericOutputs(reference).map((m) => m.name);
  const candNames = numericOutputs(candidate).map((m) => m.name);
  const candSet = new Set(candNames);
  if (wanted?.length) {
    const all = new Set(reference.outputs.map((m) => m.name));
    return wanted.map((n) => {
      if (!all.has(n)) throw outputNotFound(reference, n, 'reference');
      if (!candSet.has(n)) throw outputNotFound(candidate, n, 'candidate');
      return [n, n];
    });
  }
  const common = refNames.filter((n) => candSet.has(n));
  if (common.length > 0) return common.map((n) => [n, n]);
  if (refNames.length > 0 && refNames.length === candNames.length) {
    return refNames.map((n, i) => [n, candNames[i]!]);
  }
  throw new QnnxError(
    'E_USAGE',
    `the models share no output: reference ${reference.name} has ${quoteList(refNames)}, candidate ` +
      `${candidate.name} has ${quoteList(candNames)}`,
  );
}

function totalOf(samples: Samples, limit: number | undefined): number | undefined {
  const s = samples as { size?: unknown; length?: unknown };
  const n = typeof s.size === 'number' ? s.size : typeof s.length === 'number' ? s.length : undefined;
  if (n === undefined) return limit;
  return limit === undefined ? n : Math.min(n, limit);
}

function checkLabelsEarly(labels: Labels | undefined, total: number | undefined): void {
  // Every sample yields at least one output row, so fewer labels than samples can never match.
  if (labels && total !== undefined && labels.length < total) {
    throw new QnnxError(
      'E_DATA',
      `labels count mismatch: ${labels.length} labels for ${total} samples (one label per output row is needed)`,
      { labels: labels.length, samples: total },
    );
  }
}

function checkWarmup(w: number | undefined): number {
  const n = w ?? 1;
  if (!Number.isInteger(n) || n < 0)
    throw new QnnxError('E_USAGE', `warmup must be a non-negative integer, got ${w}`);
  return n;
}

async function timed(
  runner: Runner,
  feeds: Feeds,
  names: readonly string[],
): Promise<{ out: Record<string, HostTensor>; ms: number }> {
  const t0 = performance.now();
  const out = await runner.run(feeds, names);
  return { out, ms: performance.now() - t0 };
}

/**
 * Compares a candidate (e.g. quantized) model with a reference (float) model over samples. Throws E_SHAPE when
 * a compared output differs in dims between the models for a sample, E_DATA on a labels count mismatch, E_USAGE
 * for an output not found.
 */
export async function compareModels(
  reference: Runner,
  candidate: Runner,
  samples: Samples,
  options: CompareOptions = {},
): Promise<ModelComparison> {
  const pairs = pairOutputs(reference, candidate, options.outputs);
  let score = pairs[0]!;
  if (options.outputName !== undefined) {
    const p = pairs.find(([r]) => r === options.outputName);
    if (!p) {
      if (!reference.outputs.some((m) => m.name === options.outputName))
        throw outputNotFound(reference, options.outputName, 'reference');
      throw outputNotFound(candidate, options.outputName, 'candidate');
    }
    score = p;
  }
  const warmup = checkWarmup(options.warmup);
  const total = totalOf(samples, options.limit);
  checkLabelsEarly(options.labels, total);
  const refFetch = pairs.map(([r]) => r);
  const candFetch = pairs.map(([, c]) => c);
  const errors = pairs.map(() => new ErrorAccumulator());
  const firstDims: number[][] = [];
  const agreement = new AgreementAccumulator();
  const candAcc = options.labels ? new AccuracyAccumulator(options.labels, options.topK) : undefined;
  const refAcc = options.labels ? new AccuracyAccumulator(options.labels, options.topK) : undefined;
  const refTime = new LatencyAccumulator();
  const candTime = new LatencyAccumulator();
  let scoreClasses = 0;

  let n = 0;
  for await (const feeds of samples as AsyncIterable<Feeds>) {
    if (options.limit !== undefined && n >= options.limit) break;
    if (n === 0) {
      for (let w = 0; w < warmup; w++) {
        await reference.run(feeds, refFetch);
        await candidate.run(feeds, candFetch);
      }
    }
    let ref: Record<string, HostTensor>;
    let cand: Record<string, HostTensor>;
    if (n % 2 === 0) {
      const a = await timed(reference, feeds, refFetch);
      const b = await timed(candidate, feeds, candFetch);
      ref = a.out;
      cand = b.out;
      refTime.add(a.ms);
      candTime.add(b.ms);
    } else {
      const b = await timed(candidate, feeds, candFetch);
      const a = await timed(reference, feeds, refFetch);
      ref = a.out;
      cand = b.out;
      refTime.add(a.ms);
      candTime.add(b.ms);
    }
    pairs.forEach(([r, c], i) => {
      const x = ref[r]!;
      const y = cand[c]!;
      if (!sameDims(x.dims, y.dims)) {
        throw new QnnxError(
          'E_SHAPE',
          `sample ${n}: output '${r}' has dims [${x.dims.join(', ')}] in the reference ${reference.name} but ` +
            `[${y.dims.join(', ')}] in the candidate ${candidate.name}`,
          { tensor: r, sample: n },
        );
      }
      if (n === 0) firstDims[i] = [...x.dims];
      errors[i]!.add(tensorValues(x, `output '${r}'`), tensorValues(y, `output '${c}'`));
    });
    const sx = ref[score[0]]!;
    const sy = cand[score[1]]!;
    if (n === 0) scoreClasses = scoreRows(sx.dims).classes;
    if (scoreClasses > 1) agreement.add(sx, sy);
    refAcc?.add(sx, n);
    candAcc?.add(sy, n);
    n++;
    options.onProgress?.(n, total);
  }
  if (n === 0) throw new QnnxError('E_DATA', 'no samples to evaluate');

  const outputs: Record<string, OutputComparison> = {};
  pairs.forEach(([r, c], i) => {
    outputs[r] = { ...errors[i]!.result(), candidateName: c, dims: firstDims[i]! };
  });
  const result: ModelComparison = {
    samples: n,
    outputs,
    scoreOutput: score[0],
    latencyMs: candTime.result(),
    referenceLatencyMs: refTime.result(),
  };
  if (scoreClasses > 1) result.agreement = agreement.result().accuracy;
  if (candAcc && refAcc) {
    const candidateResult = candAcc.finish(options.allowExtraLabels);
    const referenceResult = refAcc.finish(options.allowExtraLabels);
    result.accuracy = candidateResult.accuracy;
    result.referenceAccuracy = referenceResult.accuracy;
    result.accuracyDetail = { candidate: candidateResult, reference: referenceResult };
  }
  return result;
}

/**
 * Evaluates one model over samples: accuracy against labels (when given) and per-sample latency. Every numeric
 * output is fetched (as a deployment would); the score output is the first one unless `outputName` is given.
 */
export async function evaluateModel(
  runner: Runner,
  samples: Samples,
  options: EvaluateOptions = {},
): Promise<ModelEvaluation> {
  const fetch = numericOutputs(runner).map((m) => m.name);
  if (fetch.length === 0) {
    throw new QnnxError('E_USAGE', `the model ${runner.name} has no numeric output to evaluate`);
  }
  const scoreOutput = options.outputName ?? fetch[0]!;
  if (!fetch.includes(scoreOutput)) throw outputNotFound(runner, scoreOutput, 'evaluated');
  const warmup = checkWarmup(options.warmup);
  const total = totalOf(samples, options.limit);
  checkLabelsEarly(options.labels, total);
  const acc = options.labels ? new AccuracyAccumulator(options.labels, options.topK) : undefined;
  const time = new LatencyAccumulator();
  let n = 0;
  for await (const feeds of samples as AsyncIterable<Feeds>) {
    if (options.limit !== undefined && n >= options.limit) break;
    if (n === 0) for (let w = 0; w < warmup; w++) await runner.run(feeds, fetch);
    const { out, ms } = await timed(runner, feeds, fetch);
    time.add(ms);
    acc?.add(out[scoreOutput]!, n);
    n++;
    options.onProgress?.(n, total);
  }
  if (n === 0) throw new QnnxError('E_DATA', 'no samples to evaluate');
  const result: ModelEvaluation = { samples: n, scoreOutput, latencyMs: time.result() };
  if (acc) {
    result.accuracyDetail = acc.finish(options.allowExtraLabels);
    result.accuracy = result.accuracyDetail.accuracy;
  }
  return result;
}
