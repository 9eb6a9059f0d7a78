/**
 * `qnnx eval <model.onnx> --data <dir|glob|file.npy> [--reference <float.onnx>] [--labels <file.npy|idx>]
 *   [--input-name NAME] [--split | --no-split] [--samples N] [--output NAME] [--threads N] [--warmup N] [--json]`
 *
 * Runs a model over evaluation data and prints, with --reference, per-output SQNR/MSE/max-abs against the
 * reference; with --labels, top-1 accuracy (of the reference too); and per-sample latency of both.
 */
import { open } from 'node:fs/promises';
import type { Command } from 'commander';
import {
  type DataSource,
  openDataSource,
  parseNpyHeader,
  readIdx,
  readNpy,
  resolveDataFiles,
  sampleKindOf,
} from '../data/index.js';
import { isQnnxError, QnnxError } from '../errors.js';
import { compareModels, evaluateModel } from '../eval/compare.js';
import type { LatencyStats } from '../eval/metrics.js';
import { toLabelArray } from '../eval/metrics.js';
import { DataType, dataTypeName } from '../onnx/dtype.js';
import { Session } from '../runtime/session.js';
import { table } from './format.js';

export interface EvalCliOptions {
  data: string;
  reference?: string;
  labels?: string;
  inputName?: string;
  /** true: --split, false: --no-split, undefined: automatic. */
  split?: boolean;
  samples?: string;
  output?: string;
  threads?: string;
  warmup?: string;
  json?: boolean;
}

export interface EvalOutputMetrics {
  dims: number[];
  sqnrDb: number;
  mse: number;
  maxAbs: number;
  meanAbs: number;
  cosine: number;
}

/** What `qnnx eval --json` prints (non-finite numbers become the strings "Infinity", "-Infinity", "NaN"). */
export interface EvalResult {
  model: string;
  reference: string | null;
  data: string;
  samples: number;
  inputName: string | null;
  split: boolean;
  outputs: Record<string, EvalOutputMetrics> | null;
  scoreOutput: string;
  labels: string | null;
  accuracy: number | null;
  correct: number | null;
  /** Output rows scored against labels (= labels used). */
  scoredRows: number | null;
  referenceAccuracy: number | null;
  referenceCorrect: number | null;
  agreement: number | null;
  latencyMs: LatencyStats;
  referenceLatencyMs: LatencyStats | null;
  /** Reference median latency / model median latency. */
  speedup: number | null;
}

type RunFn = (fn: () => Promise<void> | void) => Promise<void>;

/** Where the command writes (tests pass their own). */
export interface EvalIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown; isTTY?: boolean };
}

export function registerEval(
  program: Command,
  run: RunFn,
  io: EvalIo = { stdout: process.stdout, stderr: process.stderr },
): void {
  program
    .command('eval')
    .description('evaluate a model: error against a reference model, accuracy against labels, latency')
    .argument('<model>', 'ONNX model to evaluate (e.g. the quantized model)')
    .requiredOption(
      '--data <spec>',
      'evaluation data: a .npy/.npz file, a directory or a glob of them, or IDX',
    )
    .option(
      '--reference <model>',
      'reference ONNX model (e.g. the float model) to compare outputs and latency with',
    )
    .option('--labels <file>', 'integer class labels (.npy or IDX), one per output row, in sample order')
    .option('--input-name <name>', 'model input the .npy/IDX data feeds (default: the only input)')
    .option('--split', 'split .npy/.npz files along axis 0 into samples of batch 1')
    .option('--no-split', 'never split .npy files automatically (one file = one sample)')
    .option('--samples <n>', 'use only the first n samples')
    .option(
      '--output <name>',
      'output scored against the labels and for top-1 agreement (default: the first)',
    )
    .option('--threads <n>', 'ONNX Runtime intra-op threads per model (default 1)')
    .option('--warmup <n>', 'untimed runs of the first sample per model before timing (default 1)')
    .option(
      '--json',
      'print one JSON object (see docs/eval.md for its fields); progress as JSON lines on stderr',
    )
    .action((file: string, opts: EvalCliOptions) =>
      run(async () => {
        const result = await runEval(file, opts, progressReporter(opts.json ?? false, io.stderr));
        if (opts.json) io.stdout.write(`${JSON.stringify(result, jsonNumbers)}\n`);
        else io.stdout.write(`${renderEval(result)}\n`);
      }),
    );
}

function positiveInt(value: string | undefined, flag: string, min = 1): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min)
    throw new QnnxError('E_USAGE', `${flag} must be an integer >= ${min}, got '${value}'`);
  return n;
}

/** JSON.stringify replacer: non-finite numbers as strings (JSON has no Infinity). */
export function jsonNumbers(_key: string, value: unknown): unknown {
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  return value;
}

/** Progress on stderr: JSON lines with --json, a self-overwriting line on a terminal, nothing otherwise. */
function progressReporter(
  json: boolean,
  stderr: EvalIo['stderr'],
): (done: number, total: number | undefined) => void {
  let last = 0;
  const tty = stderr.isTTY ?? false;
  return (done, total) => {
    const now = performance.now();
    const end = total !== undefined && done >= total;
    if (!end && now - last < 500) return;
    last = now;
    if (json)
      stderr.write(`${JSON.stringify({ progress: { stage: 'eval', done, total: total ?? null } })}\n`);
    else if (tty) stderr.write(`\reval ${done}${total !== undefined ? `/${total}` : ''}${end ? '\n' : ''}`);
  };
}

async function readNpyDims(file: string): Promise<number[] | undefined> {
  let fh: Awaited<ReturnType<typeof open>> | undefined;
  try {
    fh = await open(file, 'r');
    const buf = new Uint8Array(64 * 1024);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    return parseNpyHeader(buf.subarray(0, bytesRead), file).dims;
  } catch {
    return undefined; // the data source reports a bad file with its own message
  } finally {
    await fh?.close();
  }
}

/**
 * Whether to split .npy data when neither --split nor --no-split is given: the first file holds more than one
 * item along axis 0 and the model's axis 0 does not take that many at once (dynamic, or a fixed other size).
 */
async function autoSplit(spec: string, inputShape: (number | string)[] | undefined): Promise<boolean> {
  const files = await resolveDataFiles(spec);
  if (sampleKindOf(files[0]!) !== 'npy') return false;
  const dims = await readNpyDims(files[0]!);
  if (!dims || dims.length === 0 || dims[0]! <= 1) return false;
  if (inputShape && inputShape.length !== dims.length) return false;
  return !(inputShape && typeof inputShape[0] === 'number' && inputShape[0] === dims[0]);
}

const INTEGER_TYPES = new Set([
  DataType.INT8,
  DataType.UINT8,
  DataType.INT16,
  DataType.UINT16,
  DataType.INT32,
  DataType.UINT32,
  DataType.INT64,
  DataType.UINT64,
]);

/** Reads integer labels from a .npy or IDX file (any shape, flattened in row-major order). */
export async function readLabels(file: string): Promise<Int32Array> {
  const kind = sampleKindOf(file);
  if (kind !== 'npy' && kind !== 'idx') {
    throw new QnnxError('E_USAGE', `--labels must be a .npy or IDX file, got '${file}'`, { file });
  }
  const t = kind === 'npy' ? await readNpy(file) : await readIdx(file);
  if (!INTEGER_TYPES.has(t.dtype)) {
    throw new QnnxError(
      'E_DATA',
      `${file}: labels must be integers (class indices), got ${dataTypeName(t.dtype)}`,
      { file },
    );
  }
  try {
    return toLabelArray(t.data as ArrayLike<number> | ArrayLike<bigint>, file);
  } catch (e) {
    throw isQnnxError(e) ? e.withFile(file) : e;
  }
}

/** The work of `qnnx eval`, returning the result object (printed by the command). */
export async function runEval(
  file: string,
  opts: EvalCliOptions,
  onProgress?: (done: number, total: number | undefined) => void,
): Promise<EvalResult> {
  const limit = positiveInt(opts.samples, '--samples');
  const threads = positiveInt(opts.threads, '--threads');
  const warmup = positiveInt(opts.warmup, '--warmup', 0);
  const labels = opts.labels !== undefined ? await readLabels(opts.labels) : undefined;
  const sessionOptions = { intraOpNumThreads: threads ?? 1 };
  const sessions: Session[] = [];
  try {
    const model = await Session.create(file, sessionOptions);
    sessions.push(model);
    const reference = opts.reference ? await Session.create(opts.reference, sessionOptions) : undefined;
    if (reference) sessions.push(reference);

    const files = await resolveDataFiles(opts.data);
    const kind = sampleKindOf(files[0]!);
    let inputName = opts.inputName;
    if (inputName !== undefined && !model.inputNames.includes(inputName)) {
      throw new QnnxError(
        'E_USAGE',
        `--input-name '${inputName}' is not an input of ${file} (inputs: ${model.inputNames.map((n) => `'${n}'`).join(', ')})`,
        { file, tensor: inputName },
      );
    }
    if (inputName === undefined && kind !== 'npz') {
      if (model.inputNames.length !== 1) {
        throw new QnnxError(
          'E_USAGE',
          `${file} has ${model.inputNames.length} inputs (${model.inputNames.map((n) => `'${n}'`).join(', ')}); ` +
            'give --input-name for single-tensor data, or use .npz files keyed by input name',
          { file },
        );
      }
      inputName = model.inputNames[0];
    }
    const inputShape = model.inputs.find((m) => m.name === inputName)?.shape;
    const split = kind === 'idx' || (opts.split ?? (await autoSplit(opts.data, inputShape)));
    const source: DataSource = await openDataSource(opts.data, {
      inputName,
      inputNames: kind === 'npz' ? model.inputNames : undefined,
      split,
      limit,
    });
    const common = {
      labels,
      outputName: opts.output,
      warmup,
      // with --samples the labels of the samples left out are not used
      allowExtraLabels: limit !== undefined,
      onProgress,
    };
    const base = {
      model: file,
      reference: opts.reference ?? null,
      data: opts.data,
      inputName: kind === 'npz' && opts.inputName === undefined ? null : (inputName ?? null),
      split,
      labels: opts.labels ?? null,
    };
    if (reference) {
      const c = await compareModels(reference, model, source, common);
      const outputs: Record<string, EvalOutputMetrics> = {};
      for (const [name, m] of Object.entries(c.outputs)) {
        outputs[name] = {
          dims: m.dims,
          sqnrDb: m.sqnrDb,
          mse: m.mse,
          maxAbs: m.maxAbs,
          meanAbs: m.meanAbs,
          cosine: m.cosine,
        };
      }
      return {
        ...base,
        samples: c.samples,
        outputs,
        scoreOutput: c.scoreOutput,
        accuracy: c.accuracy ?? null,
        correct: c.accuracyDetail?.candidate.correct ?? null,
        scoredRows: c.accuracyDetail?.candidate.total ?? null,
        referenceAccuracy: c.referenceAccuracy ?? null,
        referenceCorrect: c.accuracyDetail?.reference.correct ?? null,
        agreement: c.agreement ?? null,
        latencyMs: c.latencyMs,
        referenceLatencyMs: c.referenceLatencyMs,
        speedup: c.referenceLatencyMs.median / c.latencyMs.median,
      };
    }
    const e = await evaluateModel(model, source, common);
    return {
      ...base,
      samples: e.samples,
      outputs: null,
      scoreOutput: e.scoreOutput,
      accuracy: e.accuracy ?? null,
      correct: e.accuracyDetail?.correct ?? null,
      scoredRows: e.accuracyDetail?.total ?? null,
      referenceAccuracy: null,
      referenceCorrect: null,
      agreement: null,
      latencyMs: e.latencyMs,
      referenceLatencyMs: null,
      speedup: null,
    };
  } finally {
    for (const s of sessions) await s.release();
  }
}

function num(x: number, digits = 4): string {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (x === 0) return '0';
  const a = Math.abs(x);
  return a >= 1e-3 && a < 1e5 ? x.toPrecision(digits) : x.toExponential(digits - 1);
}

function db(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  return x.toFixed(2);
}

function pct(x: number | null): string {
  return x === null ? '-' : `${(100 * x).toFixed(2)} %`;
}

function ms(x: number): string {
  return Number.isFinite(x) ? x.toFixed(3) : '-';
}

/** The text report of `qnnx eval`. */
export function renderEval(r: EvalResult): string {
  const out: string[] = [];
  out.push(`model      ${r.model}`);
  if (r.reference) out.push(`reference  ${r.reference}`);
  const feed = r.inputName ? ` -> input '${r.inputName}'` : '';
  out.push(`data       ${r.data}: ${r.samples} samples${r.split ? ' (split along axis 0)' : ''}${feed}`);
  if (r.outputs) {
    out.push('');
    out.push(
      table(
        ['output', 'dims', 'SQNR dB', 'MSE', 'max abs', 'mean abs', 'cosine'],
        Object.entries(r.outputs).map(([name, m]) => [
          name,
          `[${m.dims.join(', ')}]`,
          db(m.sqnrDb),
          num(m.mse),
          num(m.maxAbs),
          num(m.meanAbs),
          m.cosine.toFixed(6),
        ]),
        ['l', 'l', 'r', 'r', 'r', 'r', 'r'],
      ),
    );
  }
  if (r.accuracy !== null || r.agreement !== null) {
    out.push('');
    const rows: (string | number)[][] = [];
    if (r.accuracy !== null) {
      const frac = (c: number | null) => (c === null || r.scoredRows === null ? '' : `${c}/${r.scoredRows}`);
      rows.push(['model', pct(r.accuracy), frac(r.correct)]);
      if (r.referenceAccuracy !== null)
        rows.push(['reference', pct(r.referenceAccuracy), frac(r.referenceCorrect)]);
    }
    if (r.agreement !== null) rows.push(['top-1 agreement', pct(r.agreement), '']);
    out.push(table([`top-1 on '${r.scoreOutput}'`, 'accuracy', 'correct'], rows, ['l', 'r', 'r']));
  }
  out.push('');
  const lat = (name: string, s: LatencyStats) => [name, ms(s.median), ms(s.mean), ms(s.p90), ms(s.min)];
  const rows = [lat('model', r.latencyMs)];
  if (r.referenceLatencyMs) rows.push(lat('reference', r.referenceLatencyMs));
  out.push(table(['latency per sample (ms)', 'median', 'mean', 'p90', 'min'], rows));
  if (r.speedup !== null) out.push(`speedup (reference median / model median): ${r.speedup.toFixed(2)}x`);
  return out.join('\n');
}
