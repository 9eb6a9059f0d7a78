/**
 * The trainer: runs the training graph (training-graph.ts) over a data set for some epochs, with seeded
 * shuffling, evaluation, metrics, checkpoints and exact resumption.
 *
 * ```ts
 * const run = await train({
 *   model, data: { train: { x, y }, test: { x: tx, y: ty } },
 *   batchSize: 32, epochs: 2, seed: 1,
 *   optimizer: { kind: 'adam', lr: 1e-3 },
 *   schedule: cosineLr({ lr: 1e-3, totalSteps: 124 }),
 *   checkpoint: { dir: 'out/ckpt', every: 50 }, resume: true,
 *   metrics: (line) => process.stderr.write(line + '\n'),
 * });
 * saveModel(run.exportInferenceModel(), 'trained.onnx');
 * ```
 *
 * Behaviour:
 * - Data: `x` is float32 [N, ...] (one sample per row), `y` holds N labels (any integer type, for
 *   cross-entropy) or N float targets of the model output's per-sample shape. Labels are checked before anything
 *   runs: one outside [0, classes) is an E_TRAIN error naming the sample index.
 * - Batches have exactly `batchSize` samples; the last partial batch of an epoch is dropped in training.
 *   Evaluation covers every test sample (the last batch is padded and the padding ignored).
 * - Randomness is counter-based: epoch e's order is a Fisher-Yates shuffle driven by mulberry32(hash(seed, e)),
 *   and step t's dropout masks by mulberry32(hash(seed, t, node)). The same seed gives the same run, bit for bit
 *   (ONNX Runtime runs with one intra-op thread by default; keep the thread count fixed across a run).
 * - A NaN or infinite loss stops training with E_TRAIN naming the step; the weights of that step are discarded
 *   and the last checkpoint on disk, written before it, stays as it was.
 * - Checkpoints (`checkpoint.ts`) go to `<dir>/checkpoint.onnx` every `every` steps, at the end of every epoch
 *   and at the end; `resume` continues from one exactly where it stopped, mid-epoch included: a resumed run ends
 *   with the same weights as an uninterrupted one, bit for bit.
 * - Metrics: `onStep`/`onEpoch` get objects; `metrics` gets the same as JSON lines ({"type":"step",...}
 *   every `logEvery` steps, {"type":"epoch",...} every epoch).
 * - Memory stays flat: batch buffers are reused, each step's outputs replace the previous step's tensors, and
 *   one evaluation session (parameters as inputs) serves every epoch.
 */
import { QnnxError } from '../errors.js';
import { valueInfo } from '../ir/builder.js';
import type { Model } from '../ir/model.js';
import { DataType, dataTypeName } from '../onnx/dtype.js';
import { mulberry32 } from '../random.js';
import { type SerializableSessionOptions, Session } from '../runtime/session.js';
import { elementCount, type HostTensor } from '../tensor.js';
import {
  CHECKPOINT_FORMAT,
  type CheckpointMeta,
  fileExists,
  loadCheckpoint,
  saveCheckpoint,
} from './checkpoint.js';
import { lowerFakeQuant } from './fake-quant.js';
import { isClassification, type LossSpec, lossValue } from './losses.js';
import type { OptimizerSpec } from './optimizers.js';
import { constantLr, type LrSchedule, type ScheduleSpec, scheduleFromSpec } from './schedules.js';
import { buildTrainingGraph, cloneModel, type TrainingGraph } from './training-graph.js';

/** Samples: x [N, ...] float32; y [N] labels (integers) or [N, ...] float targets. */
export interface Dataset {
  x: HostTensor;
  y: HostTensor;
}

export interface StepMetrics {
  /** Optimizer steps completed (1 after the first step). */
  step: number;
  /** 0-based epoch and batch within it. */
  epoch: number;
  batch: number;
  loss: number;
  lr: number;
  /** Global gradient norm (with clipGradNorm). */
  gradNorm?: number;
  /** Wall time of this step's run, in milliseconds. */
  ms: number;
}

export interface EvalMetrics {
  /** Mean loss over the samples (float64, computed from the model outputs). */
  loss: number;
  /** Fraction of correct argmax predictions (classification losses). */
  accuracy?: number;
  samples: number;
}

export interface EpochMetrics {
  /** 0-based epoch just finished. */
  epoch: number;
  step: number;
  /** Mean training loss over the epoch's steps (those run in this process). */
  trainLoss: number;
  test?: EvalMetrics;
  /** Mean step time in milliseconds over the epoch. */
  stepMs: number;
  ms: number;
}

export interface TrainerOptions {
  /** The inference model to train (not modified). */
  model: Model;
  batchSize: number;
  optimizer: OptimizerSpec;
  /** Default cross-entropy. */
  loss?: LossSpec;
  /** Learning rate per 0-based step, as a function or a JSON spec; default constant optimizer.lr. */
  schedule?: LrSchedule | ScheduleSpec;
  /** Which parameters train (see TrainingGraphOptions.trainable). */
  trainable?: readonly string[] | ((name: string) => boolean);
  clipGradNorm?: number;
  bnMomentum?: number;
  /** Default 0. */
  seed?: number;
  /** Graph input and output to use (default: the first of each). */
  input?: string;
  output?: string;
  /** For kl-div distillation: the teacher model, whose output on each batch is the target. */
  teacher?: Model;
  /** ONNX Runtime options for the sessions (default one thread, 'all' optimizations). */
  session?: SerializableSessionOptions;
}

export interface TrainOptions extends TrainerOptions {
  data: { train: Dataset; test?: Dataset };
  epochs: number;
  onStep?: (m: StepMetrics) => void | Promise<void>;
  onEpoch?: (m: EpochMetrics) => void | Promise<void>;
  /** JSON-lines metrics sink (one line per call, no newline). */
  metrics?: (line: string) => void;
  /** Step lines every this many steps (default 50; 0: epoch lines only). */
  logEvery?: number;
  checkpoint?: { dir: string; every?: number };
  /** true: continue from `<checkpoint.dir>/checkpoint.onnx` when it exists; a path: from that file (must exist). */
  resume?: boolean | string;
  /** Stops cleanly before the next step (a checkpoint is written first when configured). */
  signal?: AbortSignal;
}

export interface TrainResult {
  steps: number;
  epochs: number;
  history: EpochMetrics[];
  /** Mean step time in ms over the steps of this process (first step excluded). */
  stepMs: number;
  /** True when stopped by the abort signal. */
  interrupted: boolean;
  /** Path of the last checkpoint written or resumed from. */
  checkpoint?: string;
  /** Final parameters, statistics and optimizer state by training-graph input name. */
  state: Map<string, HostTensor>;
  /** The trained model as a normal inference model (BatchNorm in inference mode, dropout off). */
  exportInferenceModel(): Model;
}

// ---------------------------------------------------------------------------------------------------------------
// Counter-based random streams
// ---------------------------------------------------------------------------------------------------------------

/** A 32-bit hash of a few integers (murmur3 finalizer chain): the seed of one random stream. */
export function streamKey(...parts: number[]): number {
  let h = 0x9e3779b9;
  for (const p of parts) {
    h = Math.imul(h ^ (p >>> 0), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
  }
  return h >>> 0;
}

/** The sample order of one epoch. */
export function epochPermutation(n: number, seed: number, epoch: number): Uint32Array {
  const rnd = mulberry32(streamKey(seed, 1, epoch));
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

// ---------------------------------------------------------------------------------------------------------------
// Trainer
// ---------------------------------------------------------------------------------------------------------------

function trainError(message: string, context: Record<string, unknown> = {}): QnnxError {
  return new QnnxError('E_TRAIN', message, context);
}

function isIntegerType(t: DataType): boolean {
  return [
    DataType.INT8,
    DataType.UINT8,
    DataType.INT16,
    DataType.UINT16,
    DataType.INT32,
    DataType.UINT32,
    DataType.INT64,
    DataType.UINT64,
  ].includes(t);
}

/**
 * One training graph and its state, stepped batch by batch. `train()` drives it; use it directly for custom
 * loops (e.g. QAT schedules that change quantizer settings between epochs).
 */
export class Trainer {
  readonly graph: TrainingGraph;
  readonly options: TrainerOptions;
  /** Optimizer steps completed. */
  step = 0;
  /** Parameters, running statistics and optimizer state, by training-graph input name. */
  state: Map<string, HostTensor>;
  private readonly session: Session;
  private evalSession?: Session;
  private teacherSession?: Session;
  private readonly schedule: LrSchedule;
  private readonly seed: number;
  private readonly sampleSize: number;
  private readonly xBuf: Float32Array;
  private readonly inputNames: Set<string>;
  private readonly masks: Float32Array[];

  private constructor(graph: TrainingGraph, session: Session, options: TrainerOptions) {
    this.graph = graph;
    this.session = session;
    this.options = options;
    this.state = graph.initialState();
    const sch = options.schedule;
    this.schedule =
      typeof sch === 'function' ? sch : sch ? scheduleFromSpec(sch) : constantLr(options.optimizer.lr);
    this.seed = options.seed ?? 0;
    this.sampleSize = elementCount(graph.batchShape.slice(1));
    this.xBuf = new Float32Array(graph.batchShape[0] * this.sampleSize);
    this.inputNames = new Set(session.inputNames);
    this.masks = graph.dropout.map((d) => new Float32Array(elementCount(d.dims)));
  }

  /** Builds the training graph for `options.model` and its session. `sampleShape` excludes the batch axis. */
  static async create(options: TrainerOptions, sampleShape: readonly number[]): Promise<Trainer> {
    if (!Number.isInteger(options.batchSize) || options.batchSize < 1) {
      throw new QnnxError('E_USAGE', `batchSize must be a positive integer (got ${options.batchSize})`);
    }
    if (options.loss?.kind === 'kl-div' && !options.teacher) {
      throw new QnnxError('E_USAGE', 'the kl-div (distillation) loss needs a teacher model');
    }
    const graph = buildTrainingGraph(options.model, {
      optimizer: options.optimizer,
      loss: options.loss,
      batchShape: [options.batchSize, ...sampleShape],
      trainable: options.trainable,
      clipGradNorm: options.clipGradNorm,
      input: options.input,
      output: options.output,
      bnMomentum: options.bnMomentum,
    });
    const session = await Session.create(graph.model, { name: 'training graph', ...options.session });
    const t = new Trainer(graph, session, options);
    if (options.teacher) {
      t.teacherSession = await Session.create(options.teacher, { name: 'teacher model', ...options.session });
    }
    return t;
  }

  /** The learning rate of the next step. */
  get lr(): number {
    return this.schedule(this.step);
  }

  /** Checks a data set against the model: shapes, types, and labels within [0, classes). */
  checkData(data: Dataset, what: string): number {
    const { x, y } = data;
    const n = x.dims[0];
    if (x.dtype !== DataType.FLOAT) {
      throw new QnnxError(
        'E_USAGE',
        `${what} x is ${dataTypeName(x.dtype)}; the trainer takes float32 samples`,
      );
    }
    const sample = this.graph.batchShape.slice(1);
    if (x.dims.length !== sample.length + 1 || x.dims.slice(1).some((d, i) => d !== sample[i])) {
      throw new QnnxError(
        'E_USAGE',
        `${what} x has dims [${x.dims.join(', ')}]; the model takes samples of [${sample.join(', ')}]`,
      );
    }
    if (y.dims[0] !== n) {
      throw new QnnxError('E_USAGE', `${what}: x has ${n} samples but y has ${y.dims[0]}`);
    }
    const spec = this.graph.lossSpec;
    if (isClassification(spec)) {
      if (!isIntegerType(y.dtype) || y.dims.length !== 1) {
        throw new QnnxError(
          'E_USAGE',
          `${what} y must be integer class labels of dims [${n}] (got ${dataTypeName(y.dtype)} [${y.dims.join(', ')}])`,
        );
      }
      const classes = this.graph.outputDims[1];
      for (let i = 0; i < n; i++) {
        const v = Number(y.data[i] as number | bigint);
        if (!(v >= 0 && v < classes)) {
          throw trainError(
            `${what} labels: sample ${i} has label ${v}, outside [0, ${classes}) (the model has ${classes} classes)`,
            { sample: i, label: v },
          );
        }
      }
    } else if (!this.options.teacher) {
      const per = elementCount(this.graph.targetType.dims.slice(1));
      if (y.dtype !== DataType.FLOAT || elementCount(y.dims) !== n * per) {
        throw new QnnxError(
          'E_USAGE',
          `${what} y must be float32 targets with ${per} values per sample (got ${dataTypeName(y.dtype)} [${y.dims.join(', ')}])`,
        );
      }
    }
    return n;
  }

  /** Copies samples `idx` of `data` into a batch: x into the reused buffer, y as the target tensor. */
  private gather(data: Dataset, idx: ArrayLike<number>, count: number): { x: HostTensor; y: HostTensor } {
    const s = this.sampleSize;
    const xs = data.x.data as Float32Array;
    const xb = this.xBuf;
    xb.fill(0);
    for (let k = 0; k < count; k++) xb.set(xs.subarray(idx[k] * s, idx[k] * s + s), k * s);
    const bs = this.graph.batchShape[0];
    let y: HostTensor;
    if (this.graph.targetType.dtype === DataType.INT64) {
      const yb = new BigInt64Array(bs);
      for (let k = 0; k < count; k++) yb[k] = BigInt(Number(data.y.data[idx[k]] as number | bigint));
      y = { dtype: DataType.INT64, dims: [bs], data: yb };
    } else {
      const per = elementCount(this.graph.targetType.dims.slice(1));
      const yb = new Float32Array(bs * per);
      const ys = data.y.data as Float32Array;
      if (!this.options.teacher) {
        for (let k = 0; k < count; k++) yb.set(ys.subarray(idx[k] * per, idx[k] * per + per), k * per);
      }
      y = { dtype: DataType.FLOAT, dims: [...this.graph.targetType.dims], data: yb };
    }
    return { x: { dtype: DataType.FLOAT, dims: [...this.graph.batchShape], data: xb }, y };
  }

  private async teacherTarget(x: HostTensor): Promise<HostTensor> {
    const s = this.teacherSession!;
    const out = await s.run({ [s.inputNames[0]]: x }, [s.outputNames[0]]);
    return out[s.outputNames[0]];
  }

  private dropoutFeeds(step: number): Record<string, HostTensor> {
    const feeds: Record<string, HostTensor> = {};
    this.graph.dropout.forEach((d, k) => {
      const m = this.masks[k];
      const rnd = mulberry32(streamKey(this.seed, 2, step, k));
      const keep = Math.fround(1 / (1 - d.ratio));
      for (let i = 0; i < m.length; i++) m[i] = rnd() < d.ratio ? 0 : keep;
      feeds[d.input] = { dtype: DataType.FLOAT, dims: [...d.dims], data: m };
    });
    return feeds;
  }

  /**
   * One optimizer step on the batch of samples `idx` of `data` (exactly batchSize of them). Throws E_TRAIN on a
   * NaN or infinite loss, leaving the state as it was before the step.
   */
  async trainStep(
    data: Dataset,
    idx: ArrayLike<number>,
  ): Promise<{ loss: number; gradNorm?: number; lr: number; ms: number }> {
    const g = this.graph;
    const batch = this.gather(data, idx, g.batchShape[0]);
    const lr = this.schedule(this.step);
    const feeds: Record<string, HostTensor> = {
      [g.input]: batch.x,
      [g.target]: this.options.teacher ? await this.teacherTarget(batch.x) : batch.y,
      ...this.dropoutFeeds(this.step),
    };
    for (const [name, t] of Object.entries(g.optimizer.stepScalars(this.step + 1, lr))) {
      if (this.inputNames.has(name)) feeds[name] = t;
    }
    for (const f of g.feedback) feeds[f.input] = this.state.get(f.input)!;
    const t0 = performance.now();
    const out = await this.session.run(feeds, g.fetches);
    const ms = performance.now() - t0;
    const loss = Number((out[g.loss].data as Float32Array)[0]);
    if (!Number.isFinite(loss)) {
      throw trainError(
        `the loss is ${loss} at step ${this.step + 1} (learning rate ${lr}); training stopped`,
        {
          step: this.step + 1,
          loss,
        },
      );
    }
    for (const f of g.feedback) this.state.set(f.input, out[f.output]);
    this.step++;
    const gradNorm = g.gradNorm ? Number((out[g.gradNorm].data as Float32Array)[0]) : undefined;
    return { loss, gradNorm, lr, ms };
  }

  private async ensureEvalSession(): Promise<Session> {
    if (this.evalSession) return this.evalSession;
    const m = cloneModel(this.graph.forward);
    const g = m.graph;
    // Parameters and statistics as inputs, so the current values are fed without rebuilding the session.
    for (const name of [...this.graph.params, ...this.graph.buffers]) {
      const t = g.initializers.get(name)!;
      g.initializers.delete(name);
      g.inputs.push(valueInfo(name, DataType.FLOAT, t.dims));
    }
    const input = this.graph.input;
    const type = g.inputs.find((v) => v.name === input)?.type?.tensor_type?.elem_type ?? DataType.FLOAT;
    g.inputs = g.inputs.map((v) => (v.name === input ? valueInfo(input, type, this.graph.batchShape) : v));
    g.outputs = g.outputs.filter((o) => o.name === this.graph.output);
    if (g.outputs.length === 0) g.outputs.push(valueInfo(this.graph.output, DataType.FLOAT));
    lowerFakeQuant(m, { [input]: this.graph.batchShape });
    this.evalSession = await Session.create(m, { name: 'evaluation model', ...this.options.session });
    return this.evalSession;
  }

  /** Evaluates the current weights on every sample of `data` (inference mode: running statistics, no dropout). */
  async evaluate(data: Dataset): Promise<EvalMetrics> {
    const s = await this.ensureEvalSession();
    const g = this.graph;
    const n = data.x.dims[0];
    const bs = g.batchShape[0];
    const feeds: Record<string, HostTensor> = {};
    for (const name of [...g.params, ...g.buffers]) feeds[name] = this.state.get(name)!;
    const spec = g.lossSpec;
    let lossSum = 0;
    let correct = 0;
    const idx = new Uint32Array(bs);
    for (let start = 0; start < n; start += bs) {
      const count = Math.min(bs, n - start);
      for (let k = 0; k < bs; k++) idx[k] = start + Math.min(k, count - 1);
      const batch = this.gather(data, idx, count);
      feeds[g.input] = batch.x;
      const out = (await s.run(feeds, [g.output]))[g.output];
      const pred = out.data as Float32Array;
      const per = pred.length / bs;
      const used = pred.subarray(0, count * per);
      const dims = [count, ...out.dims.slice(1)];
      let target: ArrayLike<number | bigint> = batch.y.data as Float32Array | BigInt64Array;
      if (this.options.teacher) target = (await this.teacherTarget(batch.x)).data as Float32Array;
      lossSum += lossValue(spec, used, target, dims) * count;
      if (isClassification(spec) || (spec.kind === 'kl-div' && isIntegerType(data.y.dtype))) {
        for (let k = 0; k < count; k++) {
          let best = 0;
          for (let j = 1; j < per; j++) if (pred[k * per + j] > pred[k * per + best]) best = j;
          if (best === Number(data.y.data[start + k] as number | bigint)) correct++;
        }
      } else if (spec.kind === 'bce-with-logits') {
        const t = batch.y.data as Float32Array;
        for (let i = 0; i < count * per; i++) if (pred[i] > 0 === t[i] > 0.5) correct++;
      }
    }
    const r: EvalMetrics = { loss: lossSum / n, samples: n };
    if (isClassification(spec) || (spec.kind === 'kl-div' && isIntegerType(data.y.dtype)))
      r.accuracy = correct / n;
    if (spec.kind === 'bce-with-logits')
      r.accuracy = correct / (n * elementCount(g.targetType.dims.slice(1)));
    return r;
  }

  /** The trained weights in a copy of the original inference model. */
  exportInferenceModel(): Model {
    const m = cloneModel(this.graph.forward);
    for (const name of [...this.graph.params, ...this.graph.buffers]) {
      const t = m.graph.initializers.get(name)!;
      t.data = Float32Array.from(this.state.get(name)!.data as Float32Array);
    }
    lowerFakeQuant(m);
    return m;
  }

  /** Checkpoint metadata for the current state. */
  checkpointMeta(epoch: number, batchInEpoch: number, loss?: number): CheckpointMeta {
    return {
      format: CHECKPOINT_FORMAT,
      step: this.step,
      epoch,
      batchInEpoch,
      seed: this.seed,
      batchSize: this.graph.batchShape[0],
      params: [...this.graph.params],
      buffers: [...this.graph.buffers],
      state: this.graph.feedback.filter((f) => f.kind === 'state').map((f) => f.input),
      optimizer: this.options.optimizer.kind,
      loss,
    };
  }

  /** Writes a checkpoint of the current state. Refuses (E_TRAIN) when a parameter is not finite. */
  async saveCheckpoint(file: string, epoch: number, batchInEpoch: number, loss?: number): Promise<void> {
    for (const f of this.graph.feedback) {
      const d = this.state.get(f.input)!.data as Float32Array;
      for (let i = 0; i < d.length; i++) {
        if (!Number.isFinite(d[i])) {
          throw trainError(`'${f.input}' holds ${d[i]} after step ${this.step}; not writing a checkpoint`, {
            step: this.step,
            tensor: f.input,
          });
        }
      }
    }
    await saveCheckpoint(
      file,
      this.exportInferenceModel(),
      this.checkpointMeta(epoch, batchInEpoch, loss),
      this.state,
    );
  }

  /** Restores the state from a checkpoint file; returns its metadata (epoch and batch position). */
  async loadCheckpoint(file: string): Promise<CheckpointMeta> {
    const c = await loadCheckpoint(file);
    const m = c.meta;
    const expect = this.checkpointMeta(0, 0);
    const same = (a: string[], b: string[]) => a.length === b.length && a.every((x, i) => x === b[i]);
    if (
      m.optimizer !== expect.optimizer ||
      !same(m.params, expect.params) ||
      !same(m.buffers, expect.buffers) ||
      !same(m.state, expect.state)
    ) {
      throw trainError(
        `${file}: the checkpoint does not match this training run (optimizer ${m.optimizer} vs ${expect.optimizer}, ` +
          `${m.params.length} vs ${expect.params.length} parameters, ${m.state.length} vs ${expect.state.length} state tensors)`,
        { file },
      );
    }
    if (m.batchSize !== expect.batchSize || m.seed !== expect.seed) {
      throw trainError(
        `${file}: the checkpoint was written with batch size ${m.batchSize} and seed ${m.seed}; ` +
          `this run uses ${expect.batchSize} and ${expect.seed}, so it would not continue the same run`,
        { file },
      );
    }
    for (const f of this.graph.feedback) {
      const t = c.tensors.get(f.input)!;
      if (elementCount(t.dims) !== elementCount(f.dims)) {
        throw trainError(
          `${file}: '${f.input}' has dims [${t.dims.join(', ')}], expected [${f.dims.join(', ')}]`,
          {
            file,
            tensor: f.input,
          },
        );
      }
      this.state.set(f.input, { dtype: DataType.FLOAT, dims: [...f.dims], data: t.data });
    }
    this.step = m.step;
    return m;
  }

  async release(): Promise<void> {
    await this.session.release();
    await this.evalSession?.release();
    await this.teacherSession?.release();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// train()
// ---------------------------------------------------------------------------------------------------------------

/** Trains `options.model` on `options.data`; see the file comment for the behaviour. */
export async function train(options: TrainOptions): Promise<TrainResult> {
  const { data } = options;
  if (!Number.isInteger(options.epochs) || options.epochs < 0) {
    throw new QnnxError('E_USAGE', `epochs must be a non-negative integer (got ${options.epochs})`);
  }
  const trainer = await Trainer.create(options, data.train.x.dims.slice(1));
  try {
    return await runTraining(trainer, options);
  } finally {
    await trainer.release();
  }
}

async function runTraining(trainer: Trainer, options: TrainOptions): Promise<TrainResult> {
  const { data } = options;
  const n = trainer.checkData(data.train, 'training data');
  if (data.test) trainer.checkData(data.test, 'test data');
  const bs = options.batchSize;
  const batches = Math.floor(n / bs);
  if (batches === 0) {
    throw new QnnxError('E_USAGE', `the training set has ${n} samples, fewer than one batch of ${bs}`);
  }
  const ckptFile = options.checkpoint
    ? `${options.checkpoint.dir.replace(/\/+$/, '')}/checkpoint.onnx`
    : undefined;
  const every = options.checkpoint?.every ?? 0;
  const logEvery = options.logEvery ?? 50;
  const emit = (o: Record<string, unknown>) => options.metrics?.(JSON.stringify(o));

  let epoch = 0;
  let batchStart = 0;
  let lastCheckpoint: string | undefined;
  if (options.resume) {
    const file = typeof options.resume === 'string' ? options.resume : ckptFile;
    if (!file)
      throw new QnnxError('E_USAGE', 'resume: true needs checkpoint.dir (or give the checkpoint path)');
    if (typeof options.resume === 'string' || (await fileExists(file))) {
      const meta = await trainer.loadCheckpoint(file);
      epoch = meta.epoch;
      batchStart = meta.batchInEpoch;
      lastCheckpoint = file;
      emit({ type: 'resume', file, step: meta.step, epoch, batch: batchStart });
    }
  }

  const history: EpochMetrics[] = [];
  let msSum = 0;
  let msCount = 0;
  let interrupted = false;
  let lastLoss: number | undefined;
  const save = async (ep: number, b: number) => {
    if (!ckptFile) return;
    await trainer.saveCheckpoint(ckptFile, ep, b, lastLoss);
    lastCheckpoint = ckptFile;
  };
  const seed = options.seed ?? 0;
  for (; epoch < options.epochs && !interrupted; epoch++, batchStart = 0) {
    const t0 = performance.now();
    const perm = epochPermutation(n, seed, epoch);
    let lossSum = 0;
    let stepMs = 0;
    let steps = 0;
    for (let b = batchStart; b < batches; b++) {
      if (options.signal?.aborted) {
        await save(epoch, b);
        interrupted = true;
        break;
      }
      let r: Awaited<ReturnType<Trainer['trainStep']>>;
      try {
        r = await trainer.trainStep(data.train, perm.subarray(b * bs, b * bs + bs));
      } catch (e) {
        if (e instanceof QnnxError && e.code === 'E_TRAIN' && lastCheckpoint) {
          throw new QnnxError(
            'E_TRAIN',
            `${e.message}; the last good checkpoint is ${lastCheckpoint}`,
            { ...e.context, checkpoint: lastCheckpoint },
            { cause: e },
          );
        }
        throw e;
      }
      lastLoss = r.loss;
      lossSum += r.loss;
      stepMs += r.ms;
      steps++;
      if (trainer.step > 1) {
        msSum += r.ms;
        msCount++;
      }
      const m: StepMetrics = { step: trainer.step, epoch, batch: b, loss: r.loss, lr: r.lr, ms: r.ms };
      if (r.gradNorm !== undefined) m.gradNorm = r.gradNorm;
      if (logEvery > 0 && trainer.step % logEvery === 0) emit({ type: 'step', ...m });
      await options.onStep?.(m);
      if (every > 0 && trainer.step % every === 0 && b + 1 < batches) await save(epoch, b + 1);
    }
    if (interrupted) break;
    const m: EpochMetrics = {
      epoch,
      step: trainer.step,
      trainLoss: steps ? lossSum / steps : Number.NaN,
      stepMs: steps ? stepMs / steps : 0,
      ms: 0,
    };
    if (data.test) m.test = await trainer.evaluate(data.test);
    m.ms = performance.now() - t0;
    await save(epoch + 1, 0);
    history.push(m);
    emit({ type: 'epoch', ...m });
    await options.onEpoch?.(m);
  }
  return {
    steps: trainer.step,
    epochs: epoch,
    history,
    stepMs: msCount ? msSum / msCount : 0,
    interrupted,
    checkpoint: lastCheckpoint,
    state: trainer.state,
    exportInferenceModel: () => trainer.exportInferenceModel(),
  };
}
