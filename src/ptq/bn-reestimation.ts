/**
 * Batch-norm re-estimation (AIMET `reestimate_bn_stats`; research S09 and S13 F): after quantization, pruning or
 * QAT has changed what reaches each BatchNormalization, its running mean and variance no longer match its input.
 * Re-estimation runs the model with every BatchNormalization normalizing with the statistics of the current batch
 * (PyTorch's training-mode forward) and everything else as it is (QDQ or FakeQuant nodes keep quantizing, weights
 * are frozen), over `batches` batches, and sets
 *
 *   running_mean = (1/B)·Σ_b mean_b,   running_var = (1/B)·Σ_b var_b · M_b/(M_b − 1)
 *
 * where mean_b and var_b are the per-channel mean and biased variance of batch b over its M_b = N·H·W values
 * (axes [0, 2, 3, ...]). The variance averaged is the UNBIASED one, as PyTorch's running_var (and so AIMET, which
 * runs BatchNorm with momentum=None, the cumulative average of the per-batch statistics) uses; normalization
 * inside the batch uses the biased one, as PyTorch's training-mode forward does. Nothing but the running
 * statistics changes: scale, bias, epsilon and every other tensor are left as they are.
 *
 * How it runs: a structural copy of the model where each BatchNormalization stays in inference mode but reads its
 * mean and variance from ReduceMean nodes on its own input (x viewed as [N, C, S]) instead of its running-stat
 * initializers. That is exactly the training-mode normalization, works at every opset, and avoids ONNX Runtime's
 * training-mode kernel, which writes the ONNX momentum update into its running-stat inputs in place (see
 * src/train/training-graph.ts). The copy outputs each node's batch mean, biased variance and the [N, C, S] shape
 * (for M); nodes after the last BatchNormalization are pruned. qnnx::FakeQuant nodes (QAT models) are lowered to
 * float ops in the copy first.
 *
 * Batches: consecutive samples are concatenated along axis 0 (runtime/batch.ts) up to `batchSize` rows; a sample
 * with more rows than that is a batch of its own, and samples whose dims past axis 0 differ start a new batch.
 * The last, partial batch counts. Every batch needs at least two values per channel. A model whose inputs declare a
 * fixed batch dim gets batches of exactly that size (batchSize defaults to it).
 */
import { QnnxError } from '../errors.js';
import { GraphBuilder, valueInfo } from '../ir/builder.js';
import type { Node } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import type { PassRecord } from '../ir/pass.js';
import { eliminateDeadNodes } from '../ir/passes/dead-code.js';
import { Tensor } from '../ir/tensor.js';
import { DataType } from '../onnx/dtype.js';
import { AttributeType, has, toNumber } from '../onnx/proto.js';
import { concatAlongBatch } from '../runtime/batch.js';
import { type Feeds, feedEntries, type Runner, Session } from '../runtime/session.js';
import { copyModelStructure } from '../runtime/taps.js';
import type { HostTensor } from '../tensor.js';
import { isFakeQuant, lowerFakeQuant } from '../train/fake-quant.js';

export type BnRunner = Runner & { release?: () => Promise<void> };

export interface BnReestimationOptions {
  /** Batches to average over (default 100, AIMET's default). Fewer are used when the data runs out. */
  batches?: number;
  /**
   * Rows per batch: consecutive samples are concatenated along axis 0 up to this many rows (default 32, or the
   * model's fixed batch dim).
   */
  batchSize?: number;
  /** Only these BatchNormalization nodes (by name); default every one of the main graph. */
  nodes?: readonly string[];
  /** Creates the runner for the statistics model (default: an ONNX Runtime session, 1 thread). */
  makeRunner?: (model: Model) => Promise<BnRunner>;
  /** Called after each batch. */
  onProgress?: (done: number, total: number) => void;
}

/** What re-estimation did to one BatchNormalization node. */
export interface BnNodeChange {
  node: string;
  channels: number;
  /** Largest |new − old| running mean over channels. */
  maxMeanChange: number;
  /** Largest max(new/old, old/new) running variance ratio over channels. */
  maxVarRatio: number;
}

export interface BnReestimationDetails {
  /** Nodes whose statistics were re-estimated. */
  nodes: BnNodeChange[];
  /** Nodes left alone, with the reason. */
  skipped: { node: string; reason: string }[];
  batches: number;
  /** Rows (sum of the batches' first dims). */
  rows: number;
  batchSize: number;
  variance: 'unbiased';
  seconds: number;
}

/** One BatchNormalization being re-estimated: where its statistics come out of the copy and go in the model. */
interface Target {
  index: number;
  label: string;
  meanName: string;
  varName: string;
  channels: number;
  mean: string;
  variance: string;
  shape: string;
  sumMean: Float64Array;
  sumVar: Float64Array;
}

function nodeLabel(n: Node): string {
  return n.name || n.outputs[0] || 'BatchNormalization';
}

/** Float values of a running statistic: an initializer or a Constant node's value. Undefined when neither. */
function statTensor(model: Model, name: string, constants: Map<string, Node>): Tensor | undefined {
  const g = model.graph;
  if (g.inputs.some((v) => v.name === name)) return undefined;
  const t = g.initializer(name) ?? constants.get(name)?.attrTensor('value');
  return t && t.dtype === DataType.FLOAT ? t : undefined;
}

function setStat(model: Model, name: string, constants: Map<string, Node>, values: Float32Array): void {
  const g = model.graph;
  const old = g.initializer(name);
  if (old) {
    const t = new Tensor(name, DataType.FLOAT, [...old.dims], values);
    t.docString = old.docString;
    g.initializers.set(name, t);
    return;
  }
  const c = constants.get(name)!;
  const prev = c.attrTensor('value')!;
  c.setAttr('value', AttributeType.TENSOR, new Tensor(prev.name, DataType.FLOAT, [...prev.dims], values));
}

function reduceMean(b: GraphBuilder, opset: number, x: string, keepdims: number, name: string): string {
  return opset >= 18
    ? b.op('ReduceMean', [x, b.int64s(`${name}_axes`, [2], [0, 2])], { keepdims }, name)
    : b.op('ReduceMean', [x], { axes: [0, 2], keepdims }, name);
}

/** The first dim shared by every (non-initializer) graph input when all declare it as a number, else undefined. */
function fixedBatchDim(model: Model): number | undefined {
  const g = model.graph;
  let dim: number | undefined;
  for (const v of g.inputs) {
    if (g.initializers.has(v.name)) continue;
    const d = v.type?.tensor_type?.shape?.dim?.[0];
    if (!d || !has(d, 'dim_value')) return undefined;
    const n = toNumber(d.dim_value);
    if (dim !== undefined && dim !== n) return undefined;
    dim = n;
  }
  return dim;
}

/** Groups samples into batches of at most `batchSize` rows (see the file comment). */
async function* batchesOf(
  samples: AsyncIterable<Feeds> | Iterable<Feeds>,
  batchSize: number,
): AsyncGenerator<Record<string, HostTensor>> {
  let pending: [string, HostTensor][][] = [];
  let rows = 0;
  let key = '';
  const flush = (): Record<string, HostTensor> => {
    const out: Record<string, HostTensor> = {};
    if (pending.length === 1) for (const [k, t] of pending[0]) out[k] = t;
    else
      for (const [k] of pending[0])
        out[k] = concatAlongBatch(pending.map((e) => e.find(([n]) => n === k)![1]));
    pending = [];
    rows = 0;
    return out;
  };
  for await (const feeds of samples as AsyncIterable<Feeds>) {
    const entries = feedEntries(feeds).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const r = entries[0]?.[1].dims[0] ?? 1;
    const k = entries.map(([n, t]) => `${n}:${t.dtype}:${t.dims.slice(1).join('x')}`).join('|');
    if (pending.length > 0 && (k !== key || rows + r > batchSize)) yield flush();
    pending.push(entries);
    key = k;
    rows += r;
    if (rows >= batchSize) yield flush();
  }
  if (pending.length > 0) yield flush();
}

/**
 * Re-estimates the running mean and variance of the model's BatchNormalization nodes in place (see the file
 * comment) and returns the pass record. `data` is any (async) iterable of feeds; it is read once, up to
 * `batches` batches.
 */
export async function reestimateBatchNorm(
  model: Model,
  data: AsyncIterable<Feeds> | Iterable<Feeds>,
  options: BnReestimationOptions = {},
): Promise<PassRecord & { details: BnReestimationDetails }> {
  const t0 = performance.now();
  const maxBatches = options.batches ?? 100;
  // A model whose inputs have a fixed batch dim takes batches of exactly that many rows.
  const fixedRows = fixedBatchDim(model);
  const batchSize = options.batchSize ?? fixedRows ?? 32;
  if (fixedRows !== undefined && batchSize !== fixedRows) {
    throw new QnnxError(
      'E_USAGE',
      `the model's inputs have a fixed batch dim of ${fixedRows}; batchSize ${batchSize} cannot be fed ` +
        `(leave batchSize out or set it to ${fixedRows})`,
    );
  }
  if (!Number.isInteger(maxBatches) || maxBatches < 1) {
    throw new QnnxError('E_USAGE', `batches must be a positive integer, got ${options.batches}`);
  }
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new QnnxError('E_USAGE', `batchSize must be a positive integer, got ${options.batchSize}`);
  }
  const g = model.graph;
  const constants = new Map<string, Node>();
  for (const n of g.nodes)
    if (n.opType === 'Constant' && !n.domain && n.outputs[0]) constants.set(n.outputs[0], n);
  const wanted = options.nodes ? new Set(options.nodes) : undefined;
  const skipped: { node: string; reason: string }[] = [];
  const candidates: { index: number; node: Node }[] = [];
  const statUses = new Map<string, number>();
  g.nodes.forEach((n, index) => {
    if (n.opType !== 'BatchNormalization' || (n.domain && n.domain !== 'ai.onnx')) return;
    if (wanted && !wanted.has(n.name)) return;
    for (const s of [n.inputs[3], n.inputs[4]]) if (s) statUses.set(s, (statUses.get(s) ?? 0) + 1);
    candidates.push({ index, node: n });
  });
  if (wanted) {
    for (const w of wanted) {
      if (!candidates.some((c) => c.node.name === w)) {
        throw new QnnxError('E_USAGE', `no BatchNormalization node named '${w}' in the main graph`, {
          node: w,
        });
      }
    }
  }
  const accepted: { index: number; node: Node; channels: number }[] = [];
  for (const { index, node } of candidates) {
    const [, , , rm, rv] = node.inputs;
    const mean = rm ? statTensor(model, rm, constants) : undefined;
    const variance = rv ? statTensor(model, rv, constants) : undefined;
    if (!mean || !variance) {
      skipped.push({ node: nodeLabel(node), reason: 'running statistics are not float32 constants' });
    } else if (statUses.get(rm) !== 1 || statUses.get(rv) !== 1) {
      skipped.push({ node: nodeLabel(node), reason: 'running statistics shared with another node' });
    } else if (node.attrInt('training_mode', 0) === 1) {
      skipped.push({ node: nodeLabel(node), reason: 'already in training mode' });
    } else if (mean.size !== variance.size) {
      skipped.push({ node: nodeLabel(node), reason: 'running mean and variance differ in size' });
    } else accepted.push({ index, node, channels: mean.size });
  }
  const record = (nodes: BnNodeChange[], batches: number, rows: number) => ({
    pass: 'bn-reestimation',
    changed: nodes.length > 0,
    details: {
      nodes,
      skipped,
      batches,
      rows,
      batchSize,
      variance: 'unbiased' as const,
      seconds: (performance.now() - t0) / 1000,
    },
  });
  if (accepted.length === 0) return record([], 0, 0);

  // The statistics model: a structural copy (new nodes, shared tensors) whose BNs normalize with batch stats.
  const m = copyModelStructure(model);
  const mg = m.graph;
  const opset = m.opset('') ?? 0;
  const b = new GraphBuilder(mg);
  const targets: Target[] = [];
  const copyNodes = [...mg.nodes];
  for (const { index, node, channels } of accepted) {
    const n = copyNodes[index];
    const base = nodeLabel(node).replace(/[^A-Za-z0-9_.]/g, '_');
    const x3 = b.op(
      'Reshape',
      [n.inputs[0], b.int64s(`${base}_nc_s`, [3], [0, 0, -1])],
      undefined,
      `${base}_ncs`,
    );
    const meanK = reduceMean(b, opset, x3, 1, `${base}_batch_mean_k`);
    const d = b.op('Sub', [x3, meanK], undefined, `${base}_centered`);
    const variance = reduceMean(
      b,
      opset,
      b.op('Mul', [d, d], undefined, `${base}_sq`),
      0,
      `${base}_batch_var`,
    );
    const mean = b.op(
      'Reshape',
      [meanK, b.int64s(`${base}_flat`, [1], [-1])],
      undefined,
      `${base}_batch_mean`,
    );
    const shape = b.op('Shape', [x3], undefined, `${base}_ncs_shape`);
    n.inputs = [...n.inputs.slice(0, 3), mean, variance];
    n.outputs = n.outputs.slice(0, 1);
    n.removeAttr('training_mode');
    targets.push({
      index,
      label: nodeLabel(node),
      meanName: node.inputs[3],
      varName: node.inputs[4],
      channels,
      mean,
      variance,
      shape,
      sumMean: new Float64Array(channels),
      sumVar: new Float64Array(channels),
    });
  }
  mg.sort();
  mg.outputs = targets.flatMap((t) => [
    valueInfo(t.mean, DataType.FLOAT, [t.channels]),
    valueInfo(t.variance, DataType.FLOAT, [t.channels]),
    valueInfo(t.shape, DataType.INT64, [3]),
  ]);
  if (mg.nodes.some(isFakeQuant)) lowerFakeQuant(m);
  eliminateDeadNodes(m);
  // Inputs the pruned copy no longer reads are not fed.
  const read = new Set(mg.nodes.flatMap((n) => n.inputs));
  const feedNames = new Set(mg.inputs.filter((v) => read.has(v.name)).map((v) => v.name));
  mg.inputs = mg.inputs.filter((v) => feedNames.has(v.name) || mg.initializers.has(v.name));

  const makeRunner = options.makeRunner ?? ((mm: Model) => Session.create(mm, { enableCpuMemArena: false }));
  const runner = await makeRunner(m);
  const fetch = mg.outputs.map((o) => o.name);
  let batches = 0;
  let rows = 0;
  try {
    for await (const batch of batchesOf(data, batchSize)) {
      const feeds: Record<string, HostTensor> = {};
      for (const [k, v] of Object.entries(batch)) if (feedNames.has(k)) feeds[k] = v;
      const out = await runner.run(feeds, fetch);
      for (const t of targets) {
        const dims = Array.from(out[t.shape].data as BigInt64Array, Number);
        const count = dims[0] * dims[2];
        if (dims[1] !== t.channels) {
          throw new QnnxError(
            'E_SHAPE',
            `BatchNormalization '${t.label}': input has ${dims[1]} channels, its statistics ${t.channels}`,
            { node: t.label },
          );
        }
        if (count < 2) {
          throw new QnnxError(
            'E_DATA',
            `BatchNormalization '${t.label}': batch ${batches} has ${count} value per channel; re-estimation ` +
              'needs at least 2 (use a larger batchSize)',
            { node: t.label },
          );
        }
        const mean = out[t.mean].data as Float32Array;
        const variance = out[t.variance].data as Float32Array;
        const unbias = count / (count - 1);
        for (let c = 0; c < t.channels; c++) {
          t.sumMean[c] += mean[c];
          t.sumVar[c] += variance[c] * unbias;
        }
      }
      batches++;
      rows += Object.values(feeds)[0]?.dims[0] ?? 0;
      options.onProgress?.(batches, maxBatches);
      if (batches >= maxBatches) break;
    }
  } finally {
    await runner.release?.();
  }
  if (batches === 0) throw new QnnxError('E_DATA', 'no samples were given for BatchNorm re-estimation');

  const changes: BnNodeChange[] = [];
  for (const t of targets) {
    const oldMean = statTensor(model, t.meanName, constants)!.data as Float32Array;
    const oldVar = statTensor(model, t.varName, constants)!.data as Float32Array;
    const mean = new Float32Array(t.channels);
    const variance = new Float32Array(t.channels);
    let maxMeanChange = 0;
    let maxVarRatio = 1;
    for (let c = 0; c < t.channels; c++) {
      mean[c] = t.sumMean[c] / batches;
      variance[c] = t.sumVar[c] / batches;
      maxMeanChange = Math.max(maxMeanChange, Math.abs(mean[c] - oldMean[c]));
      const r = variance[c] / oldVar[c];
      if (Number.isFinite(r) && r > 0) maxVarRatio = Math.max(maxVarRatio, r, 1 / r);
    }
    setStat(model, t.meanName, constants, mean);
    setStat(model, t.varName, constants, variance);
    changes.push({ node: t.label, channels: t.channels, maxMeanChange, maxVarRatio });
  }
  return record(changes, batches, rows);
}
