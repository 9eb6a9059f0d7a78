/**
 * Calibration: run the float model over sample inputs and give every activation quantizer an encoding.
 *
 * Two ways to collect statistics, chosen by method (costs measured in bench/calibration-cost.ts):
 * - min/max: reductions inside the graph, so a run returns a few small vectors instead of copying whole
 *   activations out of ONNX Runtime. Only tensors whose range cannot be derived get them: a value computed from a
 *   ranged value by an exact monotone elementwise step (Add/Sub/Mul/Div by a scalar constant, Relu, Clip) gets its
 *   range by applying the step to that range in float32, and a value that is never negative (Relu, Sigmoid,
 *   HardSigmoid, Softmax, Clip at ≥ 0) gets only a ReduceMax (encodings always include 0). Float graph inputs are
 *   reduced in the graph as well, with a ReduceSum that flags NaNs. The reductions are concatenated into one
 *   output per rank and ordered so ONNX Runtime runs each right after its tensor is made.
 *   The encodings are bit-identical to those of tapping every activation (test/quant/sim/calibrate.test.ts);
 * - histogram methods (percentile, MSE, OCTAV, entropy): the activations are tapped as graph outputs and the
 *   analyzers stream them into fixed-size histograms, so memory stays flat however many samples are fed.
 *
 * Min/max can run several samples per ONNX Runtime run (CalibrationOptions.batchSize): the statistics of a batch
 * are the min/max of its samples', so the encodings stay bit-identical, and small models lose ORT's fixed per-run
 * cost (calibrationBatching says when batching applies).
 */
import { isQnnxError, QnnxError } from '../../errors.js';
import { GraphBuilder } from '../../ir/builder.js';
import type { Graph, Node } from '../../ir/graph.js';
import type { Model } from '../../ir/model.js';
import { inferTypes } from '../../ir/passes/shape-inference.js';
import { DataType } from '../../onnx/dtype.js';
import { concatAlongBatch } from '../../runtime/batch.js';
import { type Feeds, feedEntries, type Runner } from '../../runtime/session.js';
import { copyModelStructure } from '../../runtime/taps.js';
import { recordElementTypes } from '../../runtime/value-types.js';
import type { HostTensor } from '../../tensor.js';
import { createAnalyzer, type EncodingAnalyzer, type RangeMethod } from '../analyzers/index.js';
import type { QuantSim } from './quantsim.js';

export interface CalibrationOptions {
  method: RangeMethod;
  /** Called after each sample. */
  onProgress?: (done: number, total: number | undefined) => void;
  /** Upper bound on samples used. */
  limit?: number;
  /** Force tapping full activations even for min/max (for benchmarks). */
  forceTaps?: boolean;
  /**
   * Most samples per ORT run (default 1: one run per sample), or 'auto': as many as keep one run's inputs within
   * AUTO_BATCH.inputBytes, at most AUTO_BATCH.samples, sized on the first sample. Consecutive samples with the
   * same input names, dtypes and dims are concatenated along axis 0; the encodings are bit-identical to batch 1.
   * Applies to `minmax` on models whose inputs have a dynamic first dim; otherwise calibration runs at batch 1
   * and `onBatching` says why (calibrationBatching). On small models this removes ORT's fixed per-run cost.
   */
  batchSize?: number | 'auto';
  /**
   * Called with the batch size in effect when `batchSize` is given, and again if batching stops (a batched run
   * showed that the model does not keep samples apart along axis 0, or failed).
   */
  onBatching?: (batching: CalibrationBatching) => void;
}

export interface CalibrationPlanOptions {
  /** Tap full activations even for min/max (for benchmarks and checks). */
  forceTaps?: boolean;
  /**
   * Min/max only: `'derived'` (default) reduces only the tensors whose range cannot be derived exactly from
   * another range and skips ReduceMin where the minimum is known to be ≥ 0; `'every-tensor'` appends ReduceMin and
   * ReduceMax for every calibrated tensor, one scalar output each (the plan before 2026-11; for benchmarks).
   */
  layout?: 'derived' | 'every-tensor';
}

/**
 * One exact, monotone step from a tensor's range to the range of an elementwise op's output, as ONNX Runtime
 * computes the op in float32: y = fl(x + c), fl(x - c), fl(c - x), fl(x * c), fl(x / c), clamp(x, lo, hi) (Relu is
 * clamp(x, 0, +inf)). Each is a monotone function of x, so its extremes are the images of x's extremes (swapped
 * when it is decreasing).
 */
export type RangeStep =
  | { op: 'add' | 'sub' | 'rsub' | 'mul' | 'div'; c: number }
  | { op: 'clip'; lo: number; hi: number };

/** Where a calibrated tensor's per-sample [min, max] comes from in reduce mode. */
export type RangeSource =
  /**
   * In-graph reductions: slots in the statistic outputs; no min slot means the tensor is ≥ 0 (min taken as 0).
   * Graph inputs also get `finite`, the slot of their ReduceSum: ONNX Runtime's ReduceMin/ReduceMax skip NaNs
   * (but for one in the first element), a sum does not, so a non-finite sum makes calibrate() check the feed in JS
   * (which names the sample and element; a sum that overflows on finite data passes that check).
   */
  | { kind: 'reduced'; min?: StatSlot; max: StatSlot; finite?: StatSlot }
  /** From another tensor's range through exact monotone steps (no graph work at all). */
  | { kind: 'derived'; from: string; steps: RangeStep[] }
  /** A graph input: min/max computed from the feed in JS (taps, every-tensor plan, non-float inputs). */
  | { kind: 'feed' };

export interface StatSlot {
  output: string;
  index: number;
}

export interface CalibrationPlan {
  /** The model to run: the float model plus statistic outputs. */
  model: Model;
  /**
   * Graph inputs whose statistics calibrate() computes from the feeds in JS (the derived min/max plan reduces
   * float graph inputs in the graph instead, so this is empty there but for non-float inputs).
   */
  fromFeeds: string[];
  mode: 'reduce' | 'taps';
  /**
   * Reduce mode: the range source of every calibrated tensor, and of the intermediate values derivations pass
   * through.
   */
  ranges?: Map<string, RangeSource>;
  /** Reduce mode: ReduceMin/ReduceMax nodes added. */
  reductions?: number;
  /** The outputs calibrate() fetches (default: every graph output). */
  fetch?: string[];
}

const MIN_SUFFIX = '__qnnx_min';
const MAX_SUFFIX = '__qnnx_max';
const STATS_OUTPUT = '__qnnx_ranges';

/** Ops whose output is never negative (for any input), so its min/max encoding needs only the maximum. */
const NON_NEGATIVE_OPS = new Set(['Relu', 'Sigmoid', 'HardSigmoid', 'Softmax', 'Abs']);

/** The value of a float scalar initializer that is not overridable by a graph input. */
function scalarConstant(g: Graph, name: string | undefined, inputs: Set<string>): number | undefined {
  if (!name || inputs.has(name)) return undefined;
  const t = g.initializer(name);
  if (!t || t.dtype !== DataType.FLOAT || t.size !== 1) return undefined;
  const v = (t.data as Float32Array)[0];
  return Number.isNaN(v) ? undefined : v;
}

/** The exact monotone step a node applies to its one variable input, if it is one (see RangeStep). */
function rangeStep(
  g: Graph,
  n: Node,
  inputs: Set<string>,
  opset: number,
): { from: string; step: RangeStep } | undefined {
  if (n.domain !== '' && n.domain !== 'ai.onnx') return undefined;
  const [a, b] = n.inputs;
  switch (n.opType) {
    case 'Relu':
      return { from: a, step: { op: 'clip', lo: 0, hi: Number.POSITIVE_INFINITY } };
    case 'Clip': {
      let lo = Number.NEGATIVE_INFINITY;
      let hi = Number.POSITIVE_INFINITY;
      if (opset < 11) {
        lo = n.attrFloat('min', -3.4028234663852886e38);
        hi = n.attrFloat('max', 3.4028234663852886e38);
      } else {
        for (const [i, name] of n.inputs.entries()) {
          if (i === 0 || !name) continue;
          const v = scalarConstant(g, name, inputs);
          if (v === undefined) return undefined;
          if (i === 1) lo = v;
          else hi = v;
        }
      }
      return lo <= hi ? { from: a, step: { op: 'clip', lo, hi } } : undefined;
    }
    case 'Add':
    case 'Mul': {
      const op = n.opType === 'Add' ? 'add' : 'mul';
      const cb = scalarConstant(g, b, inputs);
      if (cb !== undefined) return { from: a, step: { op, c: cb } };
      const ca = scalarConstant(g, a, inputs);
      return ca !== undefined ? { from: b, step: { op, c: ca } } : undefined;
    }
    case 'Sub': {
      const cb = scalarConstant(g, b, inputs);
      if (cb !== undefined) return { from: a, step: { op: 'sub', c: cb } };
      const ca = scalarConstant(g, a, inputs);
      return ca !== undefined ? { from: b, step: { op: 'rsub', c: ca } } : undefined;
    }
    case 'Div': {
      const cb = scalarConstant(g, b, inputs);
      return cb !== undefined && cb !== 0 ? { from: a, step: { op: 'div', c: cb } } : undefined;
    }
    default:
      return undefined;
  }
}

/** Applies a step to a float32 value exactly as float32 arithmetic does (double then one rounding is exact). */
function applyStep(s: RangeStep, x: number): number {
  switch (s.op) {
    case 'add':
      return Math.fround(x + s.c);
    case 'sub':
      return Math.fround(x - s.c);
    case 'rsub':
      return Math.fround(s.c - x);
    case 'mul':
      return Math.fround(x * s.c);
    case 'div':
      return Math.fround(x / s.c);
    case 'clip':
      return Math.min(Math.max(x, s.lo), s.hi);
  }
}

function decreasing(s: RangeStep): boolean {
  return s.op === 'rsub' || ((s.op === 'mul' || s.op === 'div') && s.c < 0);
}

/** The range [lo, hi] of a value after `steps`, from the range of the value they start from (in place). */
export function deriveRange(steps: readonly RangeStep[], r: Float64Array): void {
  for (const s of steps) {
    const a = applyStep(s, r[0]);
    const b = applyStep(s, r[1]);
    if (decreasing(s)) {
      r[0] = b;
      r[1] = a;
    } else {
      r[0] = a;
      r[1] = b;
    }
  }
}

/** The statistics model for a QuantSim's calibrated tensors. */
export function calibrationPlan(
  sim: QuantSim,
  method: RangeMethod,
  options: boolean | CalibrationPlanOptions = false,
): CalibrationPlan {
  const opts: CalibrationPlanOptions = typeof options === 'boolean' ? { forceTaps: options } : options;
  const tensors = sim.calibratedTensors();
  const model = copyModelStructure(sim.model);
  const g = model.graph;
  const inputs = new Set(g.inputs.map((v) => v.name));
  const outputs = new Set(g.outputs.map((v) => v.name));
  const fromFeeds = tensors.filter((t) => inputs.has(t));
  const inGraph = tensors.filter((t) => !inputs.has(t));
  const reduce = (method.kind === 'minmax' || method.kind === 'moving-average') && !opts.forceTaps;
  if (!reduce) {
    for (const t of inGraph) {
      if (!outputs.has(t)) g.outputs.push({ name: t, type: { tensor_type: { elem_type: DataType.FLOAT } } });
    }
    return { model, fromFeeds, mode: 'taps' };
  }
  if (opts.layout === 'every-tensor') return everyTensorPlan(model, inGraph, fromFeeds);
  return derivedPlan(model, tensors, inputs, fromFeeds);
}

/** ReduceMin and ReduceMax of every calibrated tensor, each a scalar graph output. */
function everyTensorPlan(model: Model, inGraph: string[], fromFeeds: string[]): CalibrationPlan {
  const g = model.graph;
  const b = new GraphBuilder(g);
  const ranges = new Map<string, RangeSource>();
  for (const t of fromFeeds) ranges.set(t, { kind: 'feed' });
  for (const t of inGraph) {
    for (const [op, suffix] of [
      ['ReduceMin', MIN_SUFFIX],
      ['ReduceMax', MAX_SUFFIX],
    ] as const) {
      const out = `${t}${suffix}`;
      b.node(op, [t], { outputs: [out], attrs: { keepdims: 0 }, name: `${t}_${op}` });
      g.outputs.push({
        name: out,
        type: { tensor_type: { elem_type: DataType.FLOAT, shape: { dim: [] } } },
      });
    }
    ranges.set(t, {
      kind: 'reduced',
      min: { output: `${t}${MIN_SUFFIX}`, index: 0 },
      max: { output: `${t}${MAX_SUFFIX}`, index: 0 },
    });
  }
  return { model, fromFeeds, mode: 'reduce', ranges, reductions: 2 * inGraph.length };
}

/**
 * The reduced plan: walking the graph in order, a value whose producer is an exact monotone step (RangeStep) of a
 * value with a known range gets its range derived; a calibrated value otherwise gets ReduceMax, plus ReduceMin
 * unless its producer never outputs negatives (the encoding's range always includes 0, so a minimum ≥ 0 is the
 * same as 0). The reductions keep their dims and are concatenated, per rank, into one output each, so a run
 * returns a few small vectors instead of two scalar outputs per tensor.
 */
function derivedPlan(
  model: Model,
  tensors: string[],
  inputs: Set<string>,
  fromFeeds: string[],
): CalibrationPlan {
  const g = model.graph;
  const opset = model.opset('') ?? 1;
  const wanted = new Set(tensors);
  const types = recordElementTypes(g);
  const shapes = inferShapesOf(model);
  const ranks = new Map([...shapes].map(([name, shape]) => [name, shape.length]));
  for (const v of g.inputs) {
    const dims = v.type?.tensor_type?.shape?.dim;
    if (dims && !shapes.has(v.name)) ranks.set(v.name, dims.length);
  }
  const consumers = g.consumers();
  const ranges = new Map<string, RangeSource>();
  const toReduce: { t: string; min: boolean; feed?: boolean }[] = [];
  // Float graph inputs are reduced in the graph too (ONNX Runtime's vectorized reductions instead of a JS loop
  // over every feed), with a ReduceSum that catches NaNs (see RangeSource).
  const jsFeeds: string[] = [];
  for (const t of fromFeeds) {
    if (types.get(t) === DataType.FLOAT) {
      toReduce.push({ t, min: true, feed: true });
      ranges.set(t, { kind: 'reduced', max: { output: '', index: 0 } }); // slots filled below
    } else {
      jsFeeds.push(t);
      ranges.set(t, { kind: 'feed' });
    }
  }
  for (const n of g.topologicalOrder()) {
    const out = n.outputs[0];
    if (!out || types.get(out) !== DataType.FLOAT) continue;
    const step = rangeStep(g, n, inputs, opset);
    const src = step ? ranges.get(step.from) : undefined;
    if (step && src && n.outputs.length === 1) {
      const base =
        src.kind === 'derived'
          ? { from: src.from, steps: [...src.steps, step.step] }
          : { from: step.from, steps: [step.step] };
      ranges.set(out, { kind: 'derived', ...base });
    } else if (wanted.has(out) && !ranges.has(out)) {
      const nonNegative =
        (n.domain === '' || n.domain === 'ai.onnx') &&
        (NON_NEGATIVE_OPS.has(n.opType) ||
          (step?.step.op === 'clip' && step.step.lo >= 0 && step.from === n.inputs[0]));
      toReduce.push({ t: out, min: !nonNegative });
      ranges.set(out, { kind: 'reduced', max: { output: '', index: 0 } }); // slots filled below
    }
  }
  // Calibrated values not produced by a node of this graph (none expected) still get reduced.
  for (const t of tensors) {
    if (!ranges.has(t)) {
      toReduce.push({ t, min: true });
      ranges.set(t, { kind: 'reduced', max: { output: '', index: 0 } });
    }
  }
  const b = new GraphBuilder(g);
  const modelNodes = g.nodes.length;
  let shape1: string | undefined;
  // One Concat per rank; values of unknown rank are reshaped to [1] and join the rank-1 group.
  const groups = new Map<number, string[]>();
  const slot = (t: string, op: 'ReduceMin' | 'ReduceMax' | 'ReduceSum'): StatSlot => {
    const rank = ranks.get(t);
    let r = b.node(op, [t], { attrs: { keepdims: 1 }, name: `${t}_${op}` }).outputs[0];
    let key = rank ?? 0;
    if (!(key >= 1)) {
      shape1 ??= b.int64s('qnnx_range_shape', [1], [1]);
      r = b.node('Reshape', [r, shape1], { name: `${t}_${op}_reshape` }).outputs[0];
      key = 1;
    }
    const list = groups.get(key) ?? [];
    groups.set(key, list);
    list.push(r);
    return { output: String(key), index: list.length - 1 };
  };
  let reductions = 0;
  for (const { t, min, feed } of toReduce) {
    // The maximum of a tensor that a covering MaxPool reads is the maximum of the (smaller) pooled tensor, which
    // ONNX Runtime may also have in plain NCHW layout already.
    const pool = (consumers.get(t) ?? []).find(
      (c) =>
        c.inputs[0] === t && types.get(c.outputs[0]) === DataType.FLOAT && maxPoolCovers(c, shapes.get(t)),
    );
    const src: RangeSource = { kind: 'reduced', max: slot(pool ? pool.outputs[0] : t, 'ReduceMax') };
    reductions++;
    if (min) {
      src.min = slot(t, 'ReduceMin');
      reductions++;
    }
    if (feed) src.finite = slot(t, 'ReduceSum');
    ranges.set(t, src);
  }
  // Node order steers ONNX Runtime's execution order (a depth-first walk back from the graph outputs, taking the
  // highest node index first): with the reductions after the model's nodes in reverse order and the Concats last,
  // each reduction runs right after its tensor is computed, while the tensor is still in cache, instead of all
  // at the end of the run (which also keeps every reduced tensor alive until then). Measured on PP-OCRv4 det:
  // CPU time 1.10x -> 1.02x the float model's (bench/calibration-cost.ts).
  const blocks = g.nodes.splice(modelNodes);
  const perTensor: Node[][] = [];
  const made = new Set(blocks.flatMap((n) => n.outputs));
  for (const n of blocks) {
    const last = perTensor.at(-1);
    if (!made.has(n.inputs[0]) && (!last || last[0].inputs[0] !== n.inputs[0])) perTensor.push([n]);
    else last!.push(n);
  }
  for (const nodes of perTensor.reverse()) g.nodes.push(...nodes);
  const firstUse = new Map<string, number>(); // rank group -> index in toReduce of its first reduction
  for (const [i, { t }] of toReduce.entries()) {
    const k = (ranges.get(t) as Extract<RangeSource, { kind: 'reduced' }>).max.output;
    if (!firstUse.has(k)) firstUse.set(k, i);
  }
  const outputName = new Map<string, string>();
  const fetch: string[] = [];
  // The group holding the earliest reductions goes last, so the walk starts from it.
  const order = [...groups.keys()].sort(
    (x, y) => (firstUse.get(String(y)) ?? 0) - (firstUse.get(String(x)) ?? 0),
  );
  for (const rank of order) {
    const list = groups.get(rank)!;
    const name = b.uniqueName(`${STATS_OUTPUT}_rank${rank}`);
    b.node('Concat', list, { outputs: [name], attrs: { axis: 0 }, name });
    g.outputs.push({ name, type: { tensor_type: { elem_type: DataType.FLOAT } } });
    outputName.set(String(rank), name);
    fetch.push(name);
  }
  for (const src of ranges.values()) {
    if (src.kind !== 'reduced') continue;
    src.max.output = outputName.get(src.max.output)!;
    if (src.min) src.min.output = outputName.get(src.min.output)!;
    if (src.finite) src.finite.output = outputName.get(src.finite.output)!;
  }
  return { model, fromFeeds: jsFeeds, mode: 'reduce', ranges, reductions, fetch };
}

/** Shapes of the model's values where shape inference knows them (dims: numbers, symbols or null). */
function inferShapesOf(model: Model): Map<string, readonly unknown[]> {
  const shapes = new Map<string, readonly unknown[]>();
  let table: ReturnType<typeof inferTypes> | undefined;
  try {
    table = inferTypes(model);
  } catch {
    table = undefined; // no shapes: every reduction is reshaped to [1], no MaxPool shortcut
  }
  if (!table) return shapes;
  for (const n of model.graph.nodes) {
    for (const o of n.outputs) {
      const shape = o ? table.get(o)?.shape : undefined;
      if (shape) shapes.set(o, shape);
    }
  }
  return shapes;
}

/**
 * Whether every element of a MaxPool's input lies in at least one of its windows (then the maximum of its output is
 * the maximum of its input, exactly). Needs static spatial dims; dilations 1, explicit or VALID padding.
 */
function maxPoolCovers(n: Node, shape: readonly unknown[] | undefined): boolean {
  if (n.opType !== 'MaxPool' || (n.domain !== '' && n.domain !== 'ai.onnx') || n.outputs[1]) return false;
  const k = n.attrInts('kernel_shape');
  if (!shape || !k || shape.length !== k.length + 2) return false;
  const dims = shape.slice(2);
  if (!dims.every((d): d is number => typeof d === 'number')) return false;
  const autoPad = n.attrString('auto_pad', 'NOTSET');
  if (autoPad !== 'NOTSET' && autoPad !== 'VALID') return false;
  const r = k.length;
  const strides = n.attrInts('strides') ?? new Array<number>(r).fill(1);
  const dilations = n.attrInts('dilations') ?? new Array<number>(r).fill(1);
  const pads = (autoPad === 'NOTSET' ? n.attrInts('pads') : undefined) ?? new Array<number>(2 * r).fill(0);
  const ceil = n.attrInt('ceil_mode', 0) === 1;
  for (let i = 0; i < r; i++) {
    const [L, s, kk, pb] = [dims[i], strides[i], k[i], pads[i]];
    if (dilations[i] !== 1 || kk < s) return false; // gaps between windows
    const span = L + pb + pads[i + r] - kk;
    if (span < 0) return false;
    let out = (ceil ? Math.ceil(span / s) : Math.floor(span / s)) + 1;
    if (ceil && (out - 1) * s >= L + pb) out--; // a last window starting in the right padding is dropped
    if ((out - 1) * s - pb + kk - 1 < L - 1) return false; // the last elements are in no window
  }
  return true;
}

function feedValue(feeds: Feeds, name: string): HostTensor | undefined {
  return feeds instanceof Map ? feeds.get(name) : (feeds as Record<string, HostTensor>)[name];
}

function checkFinite(x: Float32Array, tensor: string, sample: number): void {
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i])) {
      throw new QnnxError(
        'E_DATA',
        `calibration sample ${sample}: tensor '${tensor}' holds ${x[i]} at element ${i}; check the input data`,
        { tensor, sample },
      );
    }
  }
}

function allFinite(x: ArrayLike<number>): boolean {
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i])) return false;
  return true;
}

/** [min, max] of x into r in one pass; false when x holds a NaN or ±Infinity. */
function finiteRange(x: Float32Array, r: Float32Array): boolean {
  let lo = Number.POSITIVE_INFINITY;
  let hi = Number.NEGATIVE_INFINITY;
  let nan = false;
  for (let i = 0; i < x.length; i++) {
    const e = x[i];
    if (e < lo) lo = e;
    if (e > hi) hi = e;
    nan ||= Number.isNaN(e);
  }
  r[0] = lo;
  r[1] = hi;
  return !nan && Number.isFinite(lo) && Number.isFinite(hi);
}

/** How calibration batches samples (see CalibrationOptions.batchSize). */
export interface CalibrationBatching {
  /** Most samples per run that calibration uses. */
  batchSize: number;
  /** Why it is below the requested size (undefined when it is not). */
  reason?: string;
  /** Set when the size was chosen automatically (batchSize 'auto'). */
  auto?: true;
}

/**
 * The automatic batch size (`batchSize: 'auto'`): samples per run while one run's inputs stay within
 * `inputBytes`. Batching pays on small inputs, where ONNX Runtime's fixed per-run cost dominates (Fashion-MNIST,
 * 3 KiB per sample: calibration/inference CPU time 1.26-1.51 at batch 1, 1.26-1.27 at 16); large inputs gain
 * nothing and a batch multiplies the activation memory (PP-OCR det at 640×640 is 4.7 MiB per sample: batch 1).
 */
export const AUTO_BATCH = { samples: 16, inputBytes: 1 << 20 } as const;

/** Bytes of a sample's tensor inputs. */
function feedBytes(feeds: Feeds): number {
  let n = 0;
  for (const [, t] of feedEntries(feeds)) n += (t.data as { byteLength?: number }).byteLength ?? 0;
  return n;
}

/**
 * The batch size calibrate() uses for a requested `batchSize`: the request for `minmax` when the model's inputs
 * have a dynamic (or unknown) first dim, else 1 with the reason. Batching keeps the encodings bit-identical only
 * where the statistics of a batch equal the combined statistics of its samples:
 * - `minmax` (reduced or every-tensor plan: reductions over all axes; taps: per-tensor MinMaxAnalyzer): the min
 *   of a concatenation is the min of the per-sample mins, so batches of any size give identical encodings;
 * - `moving-average` updates its range once per observation (per run), so a batch is one update instead of
 *   several: batch 1 always;
 * - histogram methods (percentile, mse, octav, entropy): a histogram of a concatenation is the sum of the
 *   per-sample histograms in most cases, but not in all: the bin width follows the first observation (a constant
 *   first sample fixes a width a batch would not have), MSE/OCTAV keep a single observation exactly instead of in
 *   a histogram, and OCTAV's per-bin float sums re-merge in a different order. Batch 1 always.
 */
export function calibrationBatching(
  sim: QuantSim,
  plan: CalibrationPlan,
  runner: Pick<Runner, 'inputs'>,
  method: RangeMethod,
  requested = 1,
): CalibrationBatching {
  if (!Number.isInteger(requested) || requested < 1) {
    throw new QnnxError('E_USAGE', `calibration batchSize must be a positive integer, got ${requested}`);
  }
  if (requested === 1) return { batchSize: 1 };
  const one = (reason: string): CalibrationBatching => ({ batchSize: 1, reason });
  if (method.kind === 'moving-average') {
    return one('moving-average updates its range once per run, so batches would change the encodings');
  }
  if (method.kind !== 'minmax') {
    return one(
      `${method.kind} observes each sample on its own (histogram widths and exact single observations ` +
        'depend on how samples are grouped)',
    );
  }
  if (plan.mode === 'taps') {
    const feeds = new Set(plan.fromFeeds);
    for (const t of sim.calibratedTensors()) {
      const g = sim.quantizers.get(t)?.scheme.granularity;
      if (!feeds.has(t) && g && g.kind !== 'tensor') {
        return one(`tensor '${t}' is calibrated per ${g.kind} from full activations`);
      }
    }
  }
  for (const m of runner.inputs) {
    if (!m.isTensor) return one(`input '${m.name}' is not a tensor`);
    if (m.shape === undefined) continue; // unknown rank: the first batched run checks the outputs
    if (m.shape.length === 0) return one(`input '${m.name}' is a scalar`);
    if (typeof m.shape[0] === 'number' && m.shape[0] > 0) {
      return one(`input '${m.name}' has a fixed batch dim of ${m.shape[0]}`);
    }
  }
  return { batchSize: requested };
}

function feedIterable(feeds: Feeds): Iterable<[string, HostTensor]> {
  return feeds instanceof Map ? (feeds as ReadonlyMap<string, HostTensor>) : Object.entries(feeds);
}

/** Whether a sample may be concatenated with others: feeds with a first dim ≥ 1 and a concatenable dtype. */
function batchable(feeds: Feeds): boolean {
  let any = false;
  for (const [, t] of feedIterable(feeds)) {
    if (
      t.dims.length === 0 ||
      t.dims[0] < 1 ||
      t.dtype === DataType.INT4 ||
      t.dtype === DataType.UINT4 ||
      t.dtype === DataType.STRING
    ) {
      return false;
    }
    any = true;
  }
  return any;
}

/** Whether two samples have the same input names, dtypes and dims (then they may share a batch). */
function sameLayout(a: Feeds, b: Feeds): boolean {
  const size = (f: Feeds) => (f instanceof Map ? f.size : Object.keys(f).length);
  if (size(a) !== size(b)) return false;
  for (const [name, t] of feedIterable(a)) {
    const u = feedValue(b, name);
    if (!u || u.dtype !== t.dtype || u.dims.length !== t.dims.length) return false;
    for (let i = 0; i < t.dims.length; i++) if (u.dims[i] !== t.dims[i]) return false;
  }
  return true;
}

/**
 * Runs calibration with a runner built on `plan.model` and sets every calibrated quantizer's encoding. Returns
 * the number of samples used.
 *
 * With `batchSize` > 1 (see calibrationBatching for when it applies), consecutive samples with the same input
 * names, dtypes and dims are concatenated along axis 0 into one run of up to `batchSize` samples; a sample that
 * differs starts a new batch. The encodings are bit-identical to batch 1. Anything wrong with a batch (a
 * non-finite input or statistic, a failed run) makes calibrate() redo that batch one sample at a time, so errors
 * name the sample they come from exactly as with batch 1. The first batched run also checks that the model's own
 * outputs come back with the batch's rows along axis 0; if not (a model that mixes samples), calibration goes on
 * at batch 1. Samples are held until their batch runs, so an iterable must not reuse a sample's buffers.
 */
export async function calibrate(
  sim: QuantSim,
  plan: CalibrationPlan,
  runner: Runner,
  samples: AsyncIterable<Feeds> | Iterable<Feeds>,
  options: CalibrationOptions,
  total?: number,
): Promise<number> {
  const tensors = sim.calibratedTensors();
  const analyzers = new Map<string, EncodingAnalyzer>();
  for (const t of tensors) analyzers.set(t, createAnalyzer(options.method, sim.quantizers.get(t)!.scheme));
  const wanted = plan.fetch?.length ? plan.fetch : plan.model.graph.outputs.map((o) => o.name);
  const feedSet = new Set(plan.fromFeeds);
  const reduceMode = plan.mode === 'reduce';
  const ranges = plan.ranges;
  const auto = options.batchSize === 'auto' ? (true as const) : undefined;
  const requested = options.batchSize === 'auto' ? AUTO_BATCH.samples : (options.batchSize ?? 1);
  const batching = calibrationBatching(sim, plan, runner, options.method, requested);
  let batchSize = batching.batchSize;
  // 'auto' sizes the batch on the first sample (sized = false until then).
  let sized = !auto || batchSize === 1;
  if (options.batchSize !== undefined && sized) options.onBatching?.(auto ? { ...batching, auto } : batching);
  // Per-run [min, max] of every value a range is read or derived from (reduce mode), computed once per run
  // (stamp = the run it was computed for).
  const sampleRange = new Map<string, { r: Float64Array; stamp: number }>();
  let runs = 0;
  const pair = new Float32Array(2);
  const rangeOf = (
    t: string,
    out: Record<string, HostTensor>,
    feeds: Feeds,
    sample: number,
  ): Float64Array => {
    let slot = sampleRange.get(t);
    if (!slot) {
      slot = { r: new Float64Array(2), stamp: -1 };
      sampleRange.set(t, slot);
    }
    const r = slot.r;
    if (slot.stamp === runs) return r;
    const src = ranges?.get(t);
    if (!src || src.kind === 'feed') {
      const v = feedValue(feeds, t);
      if (!v)
        throw new QnnxError('E_DATA', `calibration sample ${sample} has no input '${t}'`, { tensor: t });
      const x = v.data as Float32Array;
      checkFinite(x, t, sample);
      let lo = Number.POSITIVE_INFINITY;
      let hi = Number.NEGATIVE_INFINITY;
      for (let i = 0; i < x.length; i++) {
        const e = x[i];
        if (e < lo) lo = e;
        if (e > hi) hi = e;
      }
      r[0] = lo;
      r[1] = hi;
    } else if (src.kind === 'reduced') {
      if (src.finite && !Number.isFinite((out[src.finite.output].data as Float32Array)[src.finite.index])) {
        const v = feedValue(feeds, t);
        if (v) checkFinite(v.data as Float32Array, t, sample);
      }
      r[0] = src.min ? (out[src.min.output].data as Float32Array)[src.min.index] : 0;
      r[1] = (out[src.max.output].data as Float32Array)[src.max.index];
    } else {
      r.set(rangeOf(src.from, out, feeds, sample));
      deriveRange(src.steps, r);
    }
    slot.stamp = runs;
    return r;
  };
  const order = tensors.map((t) => ({ t, a: analyzers.get(t)!, feed: feedSet.has(t) }));
  let n = 0;
  /** One sample, one run (batch 1). */
  const observe = async (feeds: Feeds): Promise<void> => {
    let out: Record<string, HostTensor>;
    runs++;
    try {
      out = await runner.run(feeds, wanted);
    } catch (e) {
      if (isQnnxError(e)) {
        throw new QnnxError(
          e.code,
          `calibration sample ${n}: ${e.message}`,
          { ...e.context, sample: n },
          { cause: e },
        );
      }
      throw e;
    }
    for (const { t, a, feed } of order) {
      if (feed) {
        const v = feedValue(feeds, t);
        if (!v) throw new QnnxError('E_DATA', `calibration sample ${n} has no input '${t}'`, { tensor: t });
        const x = v.data as Float32Array;
        checkFinite(x, t, n);
        a.observe(x, v.dims);
      } else if (reduceMode && ranges) {
        const r = rangeOf(t, out, feeds, n);
        pair[0] = r[0];
        pair[1] = r[1];
        if (!Number.isFinite(pair[0]) || !Number.isFinite(pair[1])) checkFinite(pair, t, n);
        a.observe(pair, [2]);
      } else if (reduceMode) {
        pair[0] = (out[`${t}${MIN_SUFFIX}`].data as Float32Array)[0];
        pair[1] = (out[`${t}${MAX_SUFFIX}`].data as Float32Array)[0];
        if (!Number.isFinite(pair[0]) || !Number.isFinite(pair[1])) checkFinite(pair, t, n);
        a.observe(pair, [2]);
      } else {
        const v = out[t];
        const x = v.data as Float32Array;
        checkFinite(x, t, n);
        a.observe(x, v.dims);
      }
    }
    n++;
    options.onProgress?.(n, total);
  };

  // Batches (batchSize > 1). Every analyzer observes once per batch: in-graph tensors their [min, max] over the
  // batch (or, tapping, the batch's activations); graph inputs quantized per tensor the [min, max] of the
  // concatenated feed, others each sample's feed as with batch 1.
  const perTensorFeed = order.map(
    ({ t, feed }) => feed && sim.quantizers.get(t)?.scheme.granularity.kind === 'tensor',
  );
  const batchPairs = new Float32Array(2 * order.length);
  /** The model's own outputs, fetched once with the first batch to check that they keep the batch's rows. */
  const ownOutputs = new Set(sim.model.graph.outputs.map((o) => o.name));
  let probed = false;
  const stopBatching = (reason: string) => {
    batchSize = 1;
    options.onBatching?.(auto ? { batchSize: 1, reason, auto } : { batchSize: 1, reason });
  };
  type Seen = { x: Float32Array; dims: readonly number[] } | undefined;
  /**
   * Runs a batch and returns what each analyzer observes (undefined: every sample's feed), or undefined when the
   * batch must be redone one sample at a time (a non-finite input or statistic, a model that mixes samples).
   */
  const runBatch = async (batch: Feeds[]): Promise<Seen[] | undefined> => {
    const feeds: Record<string, HostTensor> = {};
    for (const [name] of feedEntries(batch[0])) {
      feeds[name] = concatAlongBatch(batch.map((f) => feedValue(f, name)!));
    }
    const seen: Seen[] = [];
    for (const [i, { t, feed }] of order.entries()) {
      if (!feed) continue;
      const v = feeds[t];
      if (!v) return undefined;
      if (perTensorFeed[i]) {
        const x = batchPairs.subarray(2 * i, 2 * i + 2);
        if (!finiteRange(v.data as Float32Array, x)) return undefined;
        seen[i] = { x, dims: [2] };
      } else if (!allFinite(v.data as Float32Array)) return undefined;
    }
    const rows = feedEntries(feeds)[0][1].dims[0];
    const probe = probed ? [] : [...ownOutputs].filter((o) => !wanted.includes(o)).slice(0, 1);
    runs++;
    const out = await runner.run(feeds, probe.length ? [...wanted, ...probe] : wanted);
    if (!probed) {
      // The model's own outputs (and, tapping, the activations) must keep the batch's rows along axis 0.
      const check = Object.keys(out).filter((o) => ownOutputs.has(o) || !reduceMode);
      const bad = check.find((o) => out[o].dims.length === 0 || out[o].dims[0] !== rows);
      if (bad) {
        stopBatching(
          `output '${bad}' of a ${batch.length}-sample run has dims [${out[bad].dims.join(', ')}], not ` +
            `${rows} rows along axis 0`,
        );
        return undefined;
      }
      probed = true;
    }
    for (const [i, { t, feed }] of order.entries()) {
      if (feed) continue;
      let x: Float32Array;
      let dims: readonly number[] = [2];
      if (reduceMode && ranges) {
        const r = rangeOf(t, out, feeds, n);
        x = batchPairs.subarray(2 * i, 2 * i + 2);
        x[0] = r[0];
        x[1] = r[1];
      } else if (reduceMode) {
        x = batchPairs.subarray(2 * i, 2 * i + 2);
        x[0] = (out[`${t}${MIN_SUFFIX}`].data as Float32Array)[0];
        x[1] = (out[`${t}${MAX_SUFFIX}`].data as Float32Array)[0];
      } else {
        x = out[t].data as Float32Array;
        dims = out[t].dims;
      }
      if (!allFinite(x)) return undefined;
      seen[i] = { x, dims };
    }
    return seen;
  };
  const observeBatch = async (batch: Feeds[]): Promise<void> => {
    if (batch.length === 1) return observe(batch[0]);
    let seen: Seen[] | undefined;
    let failed: unknown;
    try {
      seen = await runBatch(batch);
    } catch (e) {
      failed = e;
    }
    if (!seen) {
      // Batch 1 for these samples: the same statistics, and errors that name their sample.
      for (const feeds of batch) await observe(feeds);
      if (failed !== undefined && batchSize > 1) {
        stopBatching(`a batched run failed (${failed instanceof Error ? failed.message : String(failed)})`);
      }
      return;
    }
    for (const [i, { t, a }] of order.entries()) {
      const s = seen[i];
      if (s) a.observe(s.x, s.dims);
      else {
        for (const feeds of batch) {
          const v = feedValue(feeds, t)!;
          a.observe(v.data as Float32Array, v.dims);
        }
      }
    }
    for (let i = 0; i < batch.length; i++) {
      n++;
      options.onProgress?.(n, total);
    }
  };
  let pending: Feeds[] = [];
  const flush = async (): Promise<void> => {
    if (pending.length === 0) return;
    const batch = pending;
    pending = [];
    await observeBatch(batch);
  };
  const take = async (feeds: Feeds): Promise<void> => {
    if (!sized) {
      sized = true;
      const bytes = feedBytes(feeds);
      const fit = Math.max(1, Math.floor(AUTO_BATCH.inputBytes / Math.max(1, bytes)));
      batchSize = Math.min(batchSize, fit);
      options.onBatching?.(
        batchSize === 1
          ? {
              batchSize: 1,
              reason:
                `automatic: a sample's inputs are ${(bytes / 1024).toFixed(0)} KiB; batches are formed below ` +
                `${AUTO_BATCH.inputBytes / 2048} KiB`,
              auto: true,
            }
          : { batchSize, auto: true },
      );
    }
    if (batchSize === 1) {
      await flush();
      return observe(feeds);
    }
    if (!batchable(feeds)) {
      await flush();
      return observe(feeds);
    }
    if (pending.length > 0 && !sameLayout(feeds, pending[0])) await flush();
    pending.push(feeds);
    if (pending.length >= batchSize) await flush();
  };
  const full = () => options.limit !== undefined && n + pending.length >= options.limit;
  // A plain iterable (an array of samples) is walked synchronously: for-await over it costs a few microseconds a
  // sample, which shows on small models.
  if (typeof (samples as Iterable<Feeds>)[Symbol.iterator] === 'function') {
    for (const feeds of samples as Iterable<Feeds>) {
      if (full()) break;
      await take(feeds);
    }
  } else {
    for await (const feeds of samples as AsyncIterable<Feeds>) {
      if (full()) break;
      await take(feeds);
    }
  }
  await flush();
  if (n === 0) throw new QnnxError('E_DATA', 'no calibration samples were given');
  for (const t of tensors) sim.setEncoding(t, analyzers.get(t)!.computeEncoding());
  return n;
}
