/**
 * `qnnx train <model.onnx|spec.json> --data <dir|idx|npy|npz> [--labels ...] --epochs N -o <trained.onnx> ...`
 *
 * Trains a model (an ONNX file, or a JSON builder spec built on the spot) on labelled data and writes a normal
 * inference ONNX model with the trained weights. Data: a Fashion-MNIST-style directory of IDX files (train and
 * t10k splits found by name), IDX or .npy files with --labels, or an .npz holding both. Samples are normalised
 * as x = (raw · scale − mean) / std in float32 (scale defaults to 1/255 for uint8 data).
 *
 * Progress: a bar with rate and ETA on a TTY and one line per epoch; with --json, progress and metrics as JSON
 * lines on stderr and one JSON result on stdout.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { readDataFile } from '../data/files.js';
import { parseIdx, parseNpy, parseNpz, sampleKindOf } from '../data/index.js';
import { QnnxError } from '../errors.js';
import { loadModel, saveModel } from '../io/model-file.js';
import type { Model } from '../ir/model.js';
import { upgradeOpset } from '../ir/passes/index.js';
import { DataType, dataTypeName } from '../onnx/dtype.js';
import { elementCount, type HostTensor } from '../tensor.js';
import { builderSpecHelp, buildFromSpec, parseBuilderSpecText } from '../train/builder/index.js';
import { LOSS_KINDS, type LossSpec } from '../train/losses.js';
import type { OptimizerSpec } from '../train/optimizers.js';
import {
  constantLr,
  cosineLr,
  type LrSchedule,
  linearWarmup,
  perEpochLr,
  stepLr,
} from '../train/schedules.js';
import { type Dataset, type EpochMetrics, train } from '../train/trainer.js';
import { resolveTrainable } from '../train/training-graph.js';
import { bytes, count, table } from './format.js';
import { createProgress, type Progress } from './progress.js';

export interface TrainCliOptions {
  output: string;
  data: string;
  labels?: string;
  testData?: string;
  testLabels?: string;
  epochs: string;
  batchSize: string;
  optimizer: string;
  lr?: string;
  momentum?: string;
  nesterov?: boolean;
  weightDecay?: string;
  schedule: string;
  loss: string;
  clipGradNorm?: string;
  seed: string;
  scale?: string;
  mean?: string;
  std?: string;
  samples?: string;
  testSamples?: string;
  checkpointDir?: string;
  checkpointEvery?: string;
  resume?: string | boolean;
  threads: string;
  logEvery?: string;
  json?: boolean;
}

type RunFn = (fn: () => Promise<void> | void) => Promise<void>;

/** Where the command writes (tests pass their own). */
export interface TrainIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown; isTTY?: boolean };
}

export function registerTrain(
  program: Command,
  run: RunFn,
  io: TrainIo = { stdout: process.stdout, stderr: process.stderr },
): void {
  program
    .command('train')
    .description(
      'train a model (ONNX file or JSON builder spec) on labelled data; writes an inference ONNX model',
    )
    .argument('<model>', 'ONNX model to train (never modified), or a .json builder spec (see below)')
    .requiredOption('-o, --output <file>', 'trained inference ONNX model (written atomically)')
    .requiredOption(
      '--data <path>',
      'training data: a directory of IDX files (Fashion-MNIST layout), an IDX or .npy file of samples, or an .npz with x and y',
    )
    .option('--labels <file>', 'labels (IDX or .npy, integers) for --data given as an IDX or .npy file')
    .option('--test-data <path>', 'test data evaluated after every epoch (same forms as --data)')
    .option('--test-labels <file>', 'labels of --test-data')
    .requiredOption('--epochs <n>', 'passes over the training data')
    .option(
      '--batch-size <n>',
      'samples per optimizer step (the last partial batch of an epoch is dropped)',
      '64',
    )
    .option('--optimizer <name>', 'sgd, adam or adamw (PyTorch semantics)', 'adam')
    .option('--lr <rate>', 'learning rate (default 1e-3 for adam/adamw, 0.01 for sgd)')
    .option('--momentum <m>', 'sgd momentum (default 0.9)')
    .option('--nesterov', 'sgd: Nesterov momentum')
    .option('--weight-decay <wd>', 'L2 (sgd, adam) or decoupled (adamw) weight decay (default 0; adamw 0.01)')
    .option(
      '--schedule <s>',
      'learning-rate schedule: constant, cosine[:MIN_LR], step:N:G (times G every N epochs), warmup:N[,cosine|,step:N:G] (linear warm-up over N steps)',
      'constant',
    )
    .option('--loss <name>', `${LOSS_KINDS.filter((k) => k !== 'kl-div').join(', ')}`, 'cross-entropy')
    .option('--clip-grad-norm <max>', 'clip the global gradient L2 norm')
    .option('--seed <n>', 'seed of the initial weights (builder specs), shuffling and dropout', '0')
    .option('--scale <s>', 'multiply raw values by s, e.g. 1/255 (default: 1/255 for uint8 data, else 1)')
    .option('--mean <m>', 'subtract m after scaling (one value, or one per channel: 0.485,0.456,0.406)')
    .option('--std <s>', 'then divide by s (one value or one per channel)')
    .option('--samples <n>', 'use only the first n training samples')
    .option('--test-samples <n>', 'use only the first n test samples')
    .option(
      '--checkpoint-dir <dir>',
      'write <dir>/checkpoint.onnx after every epoch (and every --checkpoint-every steps)',
    )
    .option('--checkpoint-every <n>', 'also checkpoint every n optimizer steps')
    .option(
      '--resume [checkpoint]',
      'continue from <checkpoint-dir>/checkpoint.onnx (or the given checkpoint file)',
    )
    .option('--threads <n>', 'ONNX Runtime intra-op threads', '1')
    .option('--log-every <n>', 'with --json: a step metrics line every n steps (default 50; 0: epochs only)')
    .option('--json', 'print one JSON object on stdout; progress and metrics as JSON lines on stderr')
    .addHelpText(
      'after',
      `\n${builderSpecHelp()}\n\nExit codes: 0 success, 1 refused input or failed training, 2 usage error.`,
    )
    .action((file: string, opts: TrainCliOptions) =>
      run(async () => {
        const result = await runTrain(file, opts, io);
        if (opts.json) io.stdout.write(`${JSON.stringify(result)}\n`);
        else io.stdout.write(`${renderTrain(result)}\n`);
      }),
    );
}

/** What `qnnx train --json` prints. */
export interface TrainCliResult {
  model: string;
  built: boolean;
  output: string;
  outputBytes: number;
  params: number;
  data: {
    train: string;
    test: string | null;
    trainSamples: number;
    testSamples: number;
    normalisation: string;
  };
  optimizer: OptimizerSpec;
  schedule: string;
  batchSize: number;
  epochs: number;
  steps: number;
  resumedFrom: string | null;
  history: {
    epoch: number;
    trainLoss: number;
    testLoss: number | null;
    testAccuracy: number | null;
    seconds: number;
    imagesPerSecond: number;
  }[];
  finalTrainLoss: number | null;
  testAccuracy: number | null;
  seconds: number;
  /** Training throughput over the steps run (samples per second of step time). */
  samplesPerSecond: number;
  checkpoint: string | null;
}

// ---------------------------------------------------------------------------------------------------------------
// Option parsing
// ---------------------------------------------------------------------------------------------------------------

function usage(message: string): QnnxError {
  return new QnnxError('E_USAGE', message);
}

function intOption(name: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min) {
    throw usage(`--${name} must be an integer ≥ ${min}, got '${v}'`);
  }
  return n;
}

/** A number, or a fraction such as 1/255. */
export function parseNumber(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const m = /^\s*([-+]?[\d.eE+-]+)\s*\/\s*([-+]?[\d.eE+-]+)\s*$/.exec(v);
  const n = m ? Number(m[1]) / Number(m[2]) : v.trim() === '' ? Number.NaN : Number(v);
  if (!Number.isFinite(n))
    throw usage(`--${name} must be a number (or a fraction such as 1/255), got '${v}'`);
  return n;
}

function numberList(name: string, v: string | undefined): number[] | undefined {
  if (v === undefined) return undefined;
  return v.split(',').map((s) => parseNumber(name, s)!);
}

export function optimizerFromOptions(o: TrainCliOptions): OptimizerSpec {
  const lr = parseNumber('lr', o.lr);
  const wd = parseNumber('weight-decay', o.weightDecay);
  if (lr !== undefined && !(lr > 0)) throw usage(`--lr must be positive, got '${o.lr}'`);
  if (wd !== undefined && wd < 0) throw usage(`--weight-decay must be ≥ 0, got '${o.weightDecay}'`);
  switch (o.optimizer) {
    case 'sgd': {
      const momentum = parseNumber('momentum', o.momentum) ?? 0.9;
      if (!(momentum >= 0 && momentum < 1)) throw usage(`--momentum must be in [0, 1), got '${o.momentum}'`);
      return { kind: 'sgd', lr: lr ?? 0.01, momentum, nesterov: o.nesterov ?? false, weightDecay: wd ?? 0 };
    }
    case 'adam':
    case 'adamw':
      if (o.momentum !== undefined || o.nesterov)
        throw usage(`--momentum and --nesterov apply to sgd, not ${o.optimizer}`);
      return { kind: o.optimizer, lr: lr ?? 1e-3, weightDecay: wd ?? (o.optimizer === 'adamw' ? 0.01 : 0) };
    default:
      throw usage(`--optimizer must be sgd, adam or adamw, got '${o.optimizer}'`);
  }
}

/**
 * --schedule: constant | cosine[:MIN_LR] | step:N:G | warmup:N[,<one of the others>]. Cosine anneals over the
 * whole run (epochs × steps per epoch, after the warm-up); step multiplies by G every N epochs.
 */
export function scheduleFromOption(s: string, lr: number, stepsPerEpoch: number, epochs: number): LrSchedule {
  const parts = s.split(',').map((p) => p.trim());
  let warmup = 0;
  if (parts[0].startsWith('warmup')) {
    const m = /^warmup:(\d+)$/.exec(parts[0]);
    if (!m) throw usage(`--schedule: warm-up is warmup:N (N optimizer steps), got '${parts[0]}'`);
    warmup = Number(m[1]);
    parts.shift();
  }
  if (parts.length > 1) throw usage(`--schedule: expected [warmup:N,]<schedule>, got '${s}'`);
  const main = parts[0] ?? 'constant';
  const total = Math.max(1, epochs * stepsPerEpoch - warmup);
  let inner: LrSchedule;
  const cosine = /^cosine(?::(.+))?$/.exec(main);
  const step = /^step:(\d+):(.+)$/.exec(main);
  if (main === 'constant' || main === '') inner = constantLr(lr);
  else if (cosine) {
    const minLr = cosine[1] === undefined ? 0 : parseNumber('schedule', cosine[1])!;
    inner = cosineLr({ lr, totalSteps: total, minLr });
  } else if (step) {
    const every = Number(step[1]);
    const gamma = parseNumber('schedule', step[2])!;
    if (every < 1 || !(gamma > 0))
      throw usage(`--schedule step:N:G needs N ≥ 1 epochs and G > 0, got '${main}'`);
    // Epoch boundaries counted from the first step after the warm-up.
    inner = perEpochLr(stepLr({ lr, stepSize: every, gamma }), stepsPerEpoch);
  } else {
    throw usage(`--schedule must be constant, cosine[:MIN_LR], step:N:G or warmup:N[,...], got '${s}'`);
  }
  return warmup > 0 ? linearWarmup(inner, { steps: warmup }) : inner;
}

function lossFromOption(s: string): LossSpec {
  if (!LOSS_KINDS.includes(s as never) || s === 'kl-div') {
    throw usage(`--loss must be one of ${LOSS_KINDS.filter((k) => k !== 'kl-div').join(', ')}, got '${s}'`);
  }
  return { kind: s } as LossSpec;
}

// ---------------------------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------------------------

export interface Normalisation {
  scale?: number;
  mean?: number[];
  std?: number[];
}

export interface LoadedSplit {
  data: Dataset;
  /** Where it came from, for reports. */
  source: string;
}

interface RawSplit {
  x: HostTensor;
  y: HostTensor;
  xFile: string;
  yFile: string;
}

async function readTensorFile(file: string, what: string): Promise<HostTensor> {
  const kind = sampleKindOf(file);
  const bytes = await readDataFile(file);
  if (kind === 'npy') return parseNpy(bytes, file);
  if (kind === 'idx') return parseIdx(bytes, file);
  throw usage(`${what} ${file}: expected an IDX file (e.g. *-idx3-ubyte.gz) or a .npy file`);
}

/** Finds the images and labels of a split in a directory of IDX files (Fashion-MNIST / MNIST names). */
function findIdxPair(
  dir: string,
  files: string[],
  split: 'train' | 'test',
): { x: string; y: string } | undefined {
  const idx = files.filter((f) => sampleKindOf(f) === 'idx');
  const isSplit = (f: string) =>
    split === 'train' ? /(^|[-_.])train([-_.]|$)/i.test(f) : /(^|[-_.])(t10k|test)([-_.]|$)/i.test(f);
  const inSplit = idx.filter(isSplit);
  const pick = (re: RegExp) => {
    const c = inSplit.filter((f) => re.test(f));
    if (c.length > 1) {
      throw usage(
        `${dir}: more than one ${split} file matches: ${c.join(', ')}; name the files with --data/--labels`,
      );
    }
    return c[0];
  };
  const x = pick(/images|idx3/i);
  const y = pick(/labels|idx1/i);
  if (!x && !y) return undefined;
  if (!x || !y) {
    throw usage(
      `${dir}: found ${split} ${x ? `images ${x} but no labels` : `labels ${y} but no images`} (IDX files named *images*/*labels*)`,
    );
  }
  return { x: path.join(dir, x), y: path.join(dir, y) };
}

const X_KEYS = ['x', 'images', 'data', 'inputs', 'input'];
const Y_KEYS = ['y', 'labels', 'targets', 'target'];

async function loadRaw(
  spec: string,
  labels: string | undefined,
  what: string,
  split: 'train' | 'test',
): Promise<RawSplit> {
  let st: fs.Stats;
  try {
    st = fs.statSync(spec);
  } catch {
    throw new QnnxError('E_IO', `${spec}: cannot read ${what} (no such file or directory)`, { file: spec });
  }
  if (st.isDirectory()) {
    if (labels) throw usage(`${what}: --labels goes with a data file, not a directory (${spec})`);
    const files = fs.readdirSync(spec).sort();
    const pair = findIdxPair(spec, files, split);
    if (!pair) {
      throw new QnnxError(
        'E_DATA',
        `${spec}: no ${split} IDX images and labels found (expected names like ${split === 'train' ? 'train' : 't10k'}-images-idx3-ubyte.gz and ${split === 'train' ? 'train' : 't10k'}-labels-idx1-ubyte.gz)`,
        { file: spec },
      );
    }
    return {
      x: await readTensorFile(pair.x, what),
      y: await readTensorFile(pair.y, `${what} labels`),
      xFile: pair.x,
      yFile: pair.y,
    };
  }
  if (sampleKindOf(spec) === 'npz') {
    if (labels) throw usage(`${what}: an .npz holds its own labels; leave out --labels (${spec})`);
    const members = parseNpz(await readDataFile(spec), spec);
    const xKey = X_KEYS.find((k) => members.has(k));
    const yKey = Y_KEYS.find((k) => members.has(k));
    if (!xKey || !yKey) {
      throw new QnnxError(
        'E_DATA',
        `${spec}: an .npz for training needs samples under one of ${X_KEYS.join('/')} and labels under one of ${Y_KEYS.join('/')} (it has ${[...members.keys()].join(', ')})`,
        { file: spec },
      );
    }
    return {
      x: members.get(xKey)!,
      y: members.get(yKey)!,
      xFile: `${spec}[${xKey}]`,
      yFile: `${spec}[${yKey}]`,
    };
  }
  if (!labels)
    throw usage(
      `${what} ${spec} needs --${split === 'train' ? '' : 'test-'}labels (or use a directory or an .npz)`,
    );
  return {
    x: await readTensorFile(spec, what),
    y: await readTensorFile(labels, `${what} labels`),
    xFile: spec,
    yFile: labels,
  };
}

/** Float32 samples [N, ...sampleShape] from raw data, normalised in float32 as numpy would. */
export function toSamples(
  raw: HostTensor,
  sampleShape: readonly number[],
  norm: Normalisation,
  file: string,
): { x: HostTensor; scale: number } {
  const n = raw.dims[0];
  const per = elementCount(sampleShape);
  if (raw.dims.length < 1 || elementCount(raw.dims) !== n * per) {
    throw new QnnxError(
      'E_DATA',
      `${file}: samples of dims [${raw.dims.slice(1).join(', ')}] do not fit the model input [${sampleShape.join(', ')}] (${per} values per sample)`,
      { file },
    );
  }
  const src = raw.data;
  if (
    Array.isArray(src) ||
    src instanceof BigInt64Array ||
    src instanceof BigUint64Array ||
    raw.dtype === DataType.FLOAT16
  ) {
    throw new QnnxError(
      'E_DATA',
      `${file}: ${dataTypeName(raw.dtype)} samples are not supported (use uint8, integers or float)`,
      { file },
    );
  }
  const scale = Math.fround(norm.scale ?? (raw.dtype === DataType.UINT8 ? 1 / 255 : 1));
  const channels = sampleShape[0] ?? 1;
  const perChannel = per / channels;
  const pick = (list: number[] | undefined, fallback: number, name: string): Float32Array => {
    const v = list ?? [fallback];
    if (v.length !== 1 && v.length !== channels) {
      throw usage(`--${name} has ${v.length} values; give one or one per channel (${channels})`);
    }
    return Float32Array.from({ length: channels }, (_, c) => v[v.length === 1 ? 0 : c]);
  };
  const mean = pick(norm.mean, 0, 'mean');
  const std = pick(norm.std, 1, 'std');
  if (std.some((s) => s === 0)) throw usage('--std must not be 0');
  const out = new Float32Array(n * per);
  const values = src as Exclude<HostTensor['data'], Uint8Array[] | BigInt64Array | BigUint64Array>;
  for (let i = 0; i < out.length; i++) {
    const c = Math.floor(i / perChannel) % channels;
    out[i] = Math.fround(Math.fround(Math.fround(values[i] * scale) - mean[c]) / std[c]);
  }
  return { x: { dtype: DataType.FLOAT, dims: [n, ...sampleShape], data: out }, scale };
}

function limitRows(t: HostTensor, limit: number | undefined): HostTensor {
  if (limit === undefined || limit >= t.dims[0]) return t;
  const per = elementCount(t.dims.slice(1));
  const d = t.data as Exclude<HostTensor['data'], Uint8Array[]>;
  return {
    dtype: t.dtype,
    dims: [limit, ...t.dims.slice(1)],
    data: d.subarray(0, limit * per) as HostTensor['data'],
  };
}

/** Loads a split: raw tensors, checks, normalisation to the model's sample shape. */
export async function loadSplit(
  spec: string,
  labels: string | undefined,
  sampleShape: readonly number[],
  norm: Normalisation,
  limit: number | undefined,
  split: 'train' | 'test',
): Promise<LoadedSplit & { scale: number; labelFile: string }> {
  const what = split === 'train' ? 'training data' : 'test data';
  const raw = await loadRaw(spec, labels, what, split);
  const n = raw.x.dims[0];
  if (raw.x.dims.length === 0 || n === 0)
    throw new QnnxError('E_DATA', `${raw.xFile}: no samples`, { file: raw.xFile });
  if (raw.y.dims[0] !== n) {
    throw new QnnxError(
      'E_DATA',
      `${raw.yFile}: ${raw.y.dims[0] ?? 0} labels for ${n} samples in ${raw.xFile}`,
      { file: raw.yFile },
    );
  }
  const x = limitRows(raw.x, limit);
  const y = limitRows(raw.y, limit);
  const s = toSamples(x, sampleShape, norm, raw.xFile);
  const source =
    raw.xFile === raw.yFile
      ? raw.xFile
      : path.dirname(raw.xFile) === path.dirname(raw.yFile) && !raw.xFile.includes('[')
        ? `${path.join(path.dirname(raw.xFile), `{${path.basename(raw.xFile)}, ${path.basename(raw.yFile)}}`)}`
        : `${raw.xFile} + ${raw.yFile}`;
  return { data: { x: s.x, y }, source, scale: s.scale, labelFile: raw.yFile };
}

/** Labels are checked here too, before a session is built, so the error names the label file. */
function checkLabels(split: LoadedSplit, classes: number, file: string): void {
  const y = split.data.y;
  const d = y.data;
  if (Array.isArray(d)) throw new QnnxError('E_DATA', `${file}: labels must be integers`, { file });
  if (y.dtype === DataType.FLOAT || y.dtype === DataType.DOUBLE || y.dtype === DataType.FLOAT16) {
    throw new QnnxError(
      'E_DATA',
      `${file}: labels are ${dataTypeName(y.dtype)}; cross-entropy needs integer class labels`,
      { file },
    );
  }
  for (let i = 0; i < d.length; i++) {
    const v = Number(d[i]);
    if (!(v >= 0 && v < classes)) {
      throw new QnnxError(
        'E_DATA',
        `${file}: label ${v} of sample ${i} is outside [0, ${classes}) (the model has ${classes} outputs)`,
        { file, sample: i, label: v },
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------------------------

interface LoadedModel {
  model: Model;
  built: boolean;
  params?: number;
}

function loadModelOrSpec(file: string, seed: number): LoadedModel {
  if (file.toLowerCase().endsWith('.json')) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new QnnxError(
        'E_IO',
        `${file}: cannot read (${code === 'ENOENT' ? 'no such file' : (e as Error).message})`,
        { file },
      );
    }
    const spec = parseBuilderSpecText(text, file);
    const built = buildFromSpec(spec, { seed, file, specJson: JSON.stringify(JSON.parse(text)) });
    return { model: built.model, built: true, params: built.paramCount };
  }
  const model = loadModel(file);
  // Training-mode BatchNormalization needs opset 14.
  if ((model.opset('') ?? 0) < 14) upgradeOpset(model, 14);
  return { model, built: false };
}

function sampleShapeOf(model: Model, file: string): number[] {
  const g = model.graph;
  const inputs = g.inputs.filter((v) => !g.initializers.has(v.name));
  if (inputs.length !== 1) {
    throw usage(`${file}: train takes models with exactly one input (this one has ${inputs.length})`);
  }
  const dims = inputs[0].type?.tensor_type?.shape?.dim;
  if (inputs[0].type?.tensor_type?.elem_type !== DataType.FLOAT) {
    throw usage(
      `${file}: the model input '${inputs[0].name}' is not float32 (the trainer feeds float32 samples)`,
    );
  }
  if (!dims || dims.length < 2)
    throw usage(`${file}: the model input '${inputs[0].name}' needs a known shape [N, ...]`);
  const sample = dims.slice(1).map((d) => Number(d.dim_value ?? Number.NaN));
  if (sample.some((d) => !Number.isInteger(d) || d < 1)) {
    throw usage(`${file}: the model input '${inputs[0].name}' needs static dims after the batch axis`);
  }
  return sample;
}

function outputClasses(model: Model): number | undefined {
  const d = model.graph.outputs[0]?.type?.tensor_type?.shape?.dim;
  if (d?.length !== 2) return undefined;
  const c = Number(d[1].dim_value ?? Number.NaN);
  return Number.isInteger(c) && c > 0 ? c : undefined;
}

function describeNorm(scale: number, norm: Normalisation): string {
  const s = Math.abs(scale - 1 / 255) < 1e-9 ? '1/255' : String(scale);
  let text = `x·${s}`;
  if (norm.mean) text = `(${text} − ${norm.mean.join(',')})`;
  if (norm.std) text = `${text} / ${norm.std.join(',')}`;
  return text;
}

export async function runTrain(file: string, opts: TrainCliOptions, io: TrainIo): Promise<TrainCliResult> {
  const t0 = performance.now();
  const json = opts.json ?? false;
  const epochs = intOption('epochs', opts.epochs, 0)!;
  const batchSize = intOption('batch-size', opts.batchSize, 1)!;
  const seed = intOption('seed', opts.seed, 0)!;
  if (seed > 0xffffffff) throw usage(`--seed must be below 2^32, got '${opts.seed}'`);
  const threads = intOption('threads', opts.threads, 1)!;
  const limit = intOption('samples', opts.samples, 1);
  const testLimit = intOption('test-samples', opts.testSamples, 1);
  const every = intOption('checkpoint-every', opts.checkpointEvery, 1);
  const logEvery = intOption('log-every', opts.logEvery, 0);
  const clip = parseNumber('clip-grad-norm', opts.clipGradNorm);
  if (clip !== undefined && !(clip > 0))
    throw usage(`--clip-grad-norm must be positive, got '${opts.clipGradNorm}'`);
  const optimizer = optimizerFromOptions(opts);
  const loss = lossFromOption(opts.loss);
  if (opts.resume === true && !opts.checkpointDir) {
    throw usage('--resume without a file needs --checkpoint-dir');
  }
  if (opts.testLabels && !opts.testData) throw usage('--test-labels needs --test-data');
  const norm: Normalisation = {
    scale: parseNumber('scale', opts.scale),
    mean: numberList('mean', opts.mean),
    std: numberList('std', opts.std),
  };
  const outDir = path.dirname(path.resolve(opts.output));
  if (!fs.existsSync(outDir))
    throw new QnnxError('E_IO', `${opts.output}: cannot write (no such directory ${outDir})`, {
      file: opts.output,
    });
  if (path.resolve(opts.output) === path.resolve(file))
    throw usage('the output must not overwrite the input model');

  const loaded = loadModelOrSpec(file, seed);
  const sampleShape = sampleShapeOf(loaded.model, file);
  const trainSplit = await loadSplit(opts.data, opts.labels, sampleShape, norm, limit, 'train');
  let testSplit: Awaited<ReturnType<typeof loadSplit>> | undefined;
  if (opts.testData)
    testSplit = await loadSplit(opts.testData, opts.testLabels, sampleShape, norm, testLimit, 'test');
  else if (fs.statSync(opts.data).isDirectory()) {
    const files = fs.readdirSync(opts.data).sort();
    if (findIdxPair(opts.data, files, 'test'))
      testSplit = await loadSplit(opts.data, undefined, sampleShape, norm, testLimit, 'test');
  }
  if (loss.kind === 'cross-entropy') {
    const classes = outputClasses(loaded.model);
    if (classes !== undefined) {
      checkLabels(trainSplit, classes, trainSplit.labelFile);
      if (testSplit) checkLabels(testSplit, classes, testSplit.labelFile);
    }
  }
  const n = trainSplit.data.x.dims[0];
  const stepsPerEpoch = Math.floor(n / batchSize);
  if (stepsPerEpoch === 0)
    throw usage(`the training set has ${n} samples, fewer than one batch of ${batchSize}`);
  const schedule = scheduleFromOption(opts.schedule, optimizer.lr, stepsPerEpoch, epochs);

  let progress: Progress | undefined;
  const err = io.stderr;
  const history: TrainCliResult['history'] = [];
  const onEpoch = (m: EpochMetrics) => {
    progress?.stop();
    progress = undefined;
    const seconds = m.ms / 1000;
    const row = {
      epoch: m.epoch + 1,
      trainLoss: m.trainLoss,
      testLoss: m.test?.loss ?? null,
      testAccuracy: m.test?.accuracy ?? null,
      seconds,
      imagesPerSecond: m.stepMs > 0 ? (batchSize * 1000) / m.stepMs : 0,
    };
    history.push(row);
    if (!json) {
      const acc =
        row.testAccuracy === null
          ? ''
          : `  test loss ${row.testLoss!.toFixed(4)}  test acc ${(row.testAccuracy * 100).toFixed(2)} %`;
      err.write(
        `epoch ${row.epoch}/${epochs}  loss ${row.trainLoss.toFixed(4)}${acc}  ${count(Math.round(row.imagesPerSecond))} samples/s  ${seconds.toFixed(1)} s\n`,
      );
    }
  };
  const onStep = (m: { epoch: number; batch: number }) => {
    if (!progress) progress = createProgressOn(err, `epoch ${m.epoch + 1}/${epochs}`, json);
    progress.update((m.batch + 1) * batchSize, stepsPerEpoch * batchSize);
  };

  const controller = new AbortController();
  const onSignal = () => controller.abort();
  process.once('SIGINT', onSignal);
  let result: Awaited<ReturnType<typeof train>>;
  try {
    result = await train({
      model: loaded.model,
      data: { train: trainSplit.data, test: testSplit?.data },
      epochs,
      batchSize,
      optimizer,
      loss,
      schedule,
      clipGradNorm: clip,
      seed,
      session: { intraOpNumThreads: threads, graphOptimizationLevel: 'all' },
      checkpoint: opts.checkpointDir ? { dir: opts.checkpointDir, every } : undefined,
      resume: opts.resume === undefined ? undefined : opts.resume,
      metrics: json ? (line) => err.write(`${line}\n`) : undefined,
      logEvery: logEvery ?? 50,
      onStep,
      onEpoch,
      signal: controller.signal,
    });
  } finally {
    progress?.stop();
    process.removeListener('SIGINT', onSignal);
  }
  if (result.interrupted) {
    throw new QnnxError(
      'E_TRAIN',
      `interrupted at step ${result.steps}; nothing written to ${opts.output}${result.checkpoint ? `; resume from ${result.checkpoint} with --resume` : ''}`,
      { step: result.steps },
    );
  }
  const saved = saveModel(result.exportInferenceModel(), opts.output, { externalData: 'keep' });
  const last = history[history.length - 1];
  const stepMs = result.stepMs;
  const params = loaded.params ?? countParams(loaded.model);
  return {
    model: file,
    built: loaded.built,
    output: opts.output,
    outputBytes: saved.bytes + saved.externalBytes,
    params,
    data: {
      train: trainSplit.source,
      test: testSplit?.source ?? null,
      trainSamples: n,
      testSamples: testSplit?.data.x.dims[0] ?? 0,
      normalisation: describeNorm(trainSplit.scale, norm),
    },
    optimizer,
    schedule: opts.schedule,
    batchSize,
    epochs: result.epochs,
    steps: result.steps,
    resumedFrom: opts.resume
      ? typeof opts.resume === 'string'
        ? opts.resume
        : (result.checkpoint ?? null)
      : null,
    history,
    finalTrainLoss: last?.trainLoss ?? null,
    testAccuracy: last?.testAccuracy ?? null,
    seconds: (performance.now() - t0) / 1000,
    samplesPerSecond: stepMs > 0 ? (batchSize * 1000) / stepMs : 0,
    checkpoint: result.checkpoint ?? null,
  };
}

/** Elements of the parameters the trainer trains (BatchNorm statistics and constants excluded). */
function countParams(model: Model): number {
  const out = model.graph.outputs[0]?.name;
  if (!out) return 0;
  return resolveTrainable(model, undefined, out).reduce(
    (a, n) => a + model.graph.initializers.get(n)!.size,
    0,
  );
}

function createProgressOn(stderr: TrainIo['stderr'], stage: string, json: boolean): Progress {
  // The shared progress helper writes to process.stderr; tests pass a non-TTY stream and get JSON or nothing.
  if (!json && !stderr.isTTY) return { update() {}, stop() {} };
  return createProgress(stage, json, 'samples');
}

export function renderTrain(r: TrainCliResult): string {
  const rows: (string | number)[][] = [
    ['model', `${r.model}${r.built ? ' (builder spec)' : ''} -> ${r.output} (${bytes(r.outputBytes)})`],
    ['parameters', count(r.params)],
    ['data', `${r.data.train}: ${count(r.data.trainSamples)} samples, ${r.data.normalisation}`],
  ];
  if (r.data.test) rows.push(['test data', `${r.data.test}: ${count(r.data.testSamples)} samples`]);
  const o = r.optimizer;
  const optText =
    o.kind === 'sgd'
      ? `sgd lr ${o.lr} momentum ${o.momentum ?? 0}${o.nesterov ? ' nesterov' : ''} weight decay ${o.weightDecay ?? 0}`
      : `${o.kind} lr ${o.lr} weight decay ${o.weightDecay ?? 0}`;
  rows.push(['optimizer', `${optText}, schedule ${r.schedule}, batch ${r.batchSize}`]);
  rows.push([
    'training',
    `${r.epochs} epochs, ${count(r.steps)} steps${r.resumedFrom ? ` (resumed from ${r.resumedFrom})` : ''}`,
  ]);
  if (r.finalTrainLoss !== null) rows.push(['final train loss', r.finalTrainLoss.toFixed(4)]);
  if (r.testAccuracy !== null) rows.push(['test accuracy', `${(r.testAccuracy * 100).toFixed(2)} %`]);
  rows.push(['throughput', `${count(Math.round(r.samplesPerSecond))} samples/s (training steps)`]);
  rows.push(['time', `${r.seconds.toFixed(1)} s`]);
  if (r.checkpoint) rows.push(['checkpoint', r.checkpoint]);
  return table(['', 'value'], rows, ['l', 'l']);
}
