/**
 * The training graph: one ONNX model that computes forward, loss, backward and the optimizer update for one
 * batch, so that ONNX Runtime runs a whole training step in one `run` (research notes A.3).
 *
 * Interface of the training model (names made unique when the model already uses them; `TrainingGraph` lists
 * the actual names):
 *   inputs   <input>            the batch, static shape `batchShape`
 *            target             labels (int64 [N], cross-entropy) or targets (float, the prediction's shape)
 *            <param>            each trainable parameter (the model's initializer name)
 *            <bn running stat>  each BatchNormalization running_mean / running_var
 *            <param>.<slot>     optimizer state (momentum_buffer, exp_avg, exp_avg_sq)
 *            opt.*              per-step optimizer scalars (learning rate, bias corrections; see optimizers.ts)
 *            <dropout>.mask     one scaled keep-mask per Dropout node (0 or 1/(1 − ratio)), drawn by the trainer
 *   outputs  loss               the batch's mean loss (before the update)
 *            grad_norm          the global gradient norm, only with clipGradNorm
 *            <name>.next        the new value of every parameter, running statistic and state tensor
 *
 * The trainer feeds each `.next` output back as the matching input of the next step (`feedback` pairs). Inputs
 * are zero-copy in onnxruntime-node; every fetched output is copied once into a new buffer (notes B.5), so a step
 * copies exactly the parameters, statistics and optimizer state, never the gradients or activations: 1× the
 * parameter bytes for SGD, 2× with momentum, 3× for Adam. Measured (onnxruntime-node 1.30, one thread, shared
 * 2-vCPU machine, minimum over 400 interleaved runs of fetching everything vs. the loss only, batch 64):
 *   MLP 784-256-128-10 (235k params), Adam, 2.69 MiB fed back: 1.75 vs 1.55 ms per step, copy ≈ 0.2 ms (11 %);
 *     with SGD (0.90 MiB): 0.88 vs 0.80 ms, copy ≈ 0.08 ms;
 *   MLP 784-1024-1024-10 (1.86M params), Adam, 21.3 MiB: 18.3-19.6 vs 15.0-15.3 ms, copy ≈ 3-4 ms (≈ 20 %; large
 *     outputs are freshly allocated and page-faulted by the binding every step).
 * `test/train/training-graph.test.ts` prints the same measurement for the small MLP.
 *
 * What happens to the forward model:
 * - BatchNormalization runs in training mode (batch statistics). Its running statistics are updated as PyTorch
 *   does: new = (1 − m)·old + m·batch, with the *unbiased* batch variance (· n/(n − 1)), where m is PyTorch's
 *   momentum = 1 − ONNX momentum (0.9 in the file ↔ 0.1), overridable with `bnMomentum`. ONNX's own
 *   training-mode outputs use the biased variance, so the update is computed here from ReduceMean nodes.
 * - Dropout becomes x · mask with the mask a graph input: masks come from the trainer's seeded, counter-based
 *   RNG, so runs are reproducible and a resumed run draws the same masks (ORT's Dropout RNG restarts with every
 *   session and cannot be resumed).
 * - qnnx::FakeQuant nodes are differentiated with their own rules, then lowered to float ops.
 * - Dead nodes are pruned (ORT runs every node, used or not) and the model's own outputs are dropped, so
 *   nothing blocks fusions or gets copied out.
 */
import { QnnxError } from '../errors.js';
import { GraphBuilder, valueInfo } from '../ir/builder.js';
import type { Node } from '../ir/graph.js';
import { cloneModel, type Model } from '../ir/model.js';
import { eliminateDeadNodes } from '../ir/passes/dead-code.js';
import type { Dim, TypeTable } from '../ir/passes/shape-inference.js';
import { DataType, dataTypeName } from '../onnx/dtype.js';
import { AttributeType } from '../onnx/proto.js';
import { elementCount, type HostTensor } from '../tensor.js';
import { addGradients } from './autodiff/engine.js';
import { fakeQuantGradientLearns } from './autodiff/rules/fake-quant.js';
import {
  declareFakeQuantTypes,
  fakeQuantAttrs,
  inferTypesWithFakeQuant,
  isFakeQuant,
  lowerFakeQuant,
} from './fake-quant.js';
import { addLoss, type LossSpec, lossTargetType } from './losses.js';
import { appendGradClip, appendOptimizer, type OptimizerGraph, type OptimizerSpec } from './optimizers.js';

export interface TrainingGraphOptions {
  optimizer: OptimizerSpec;
  /** Default cross-entropy. */
  loss?: LossSpec;
  /** Shape of one training batch of the model input, e.g. [32, 1, 28, 28]. */
  batchShape: number[];
  /**
   * Parameters to train: names, or a predicate over initializer names. Default: every float initializer of
   * rank ≥ 1 that feeds the model output, except BatchNormalization running statistics and other non-parameter
   * operands (Clip bounds, Pow exponents, Resize scales, Dropout ratios, fake-quant ranges unless the node's
   * gradient rule learns them).
   */
  trainable?: readonly string[] | ((name: string) => boolean);
  /** Clip gradients to this global L2 norm (torch.nn.utils.clip_grad_norm_). */
  clipGradNorm?: number;
  /** Graph input holding the batch (default: the first graph input that is not an initializer). */
  input?: string;
  /** Model output the loss reads (default: the first graph output). */
  output?: string;
  /** BatchNorm momentum in PyTorch's convention (default: 1 − each node's ONNX momentum, i.e. 0.1). */
  bnMomentum?: number;
}

/** A tensor fed back every step: the `output` of one step is the `input` of the next. */
export interface Feedback {
  input: string;
  output: string;
  kind: 'param' | 'buffer' | 'state';
  dims: number[];
}

/** A Dropout node turned into x · mask: the trainer feeds a fresh mask every step. */
export interface DropoutMask {
  input: string;
  ratio: number;
  dims: number[];
  /** The Dropout node it replaces. */
  node: string;
}

export interface TrainingGraph {
  /** The training model (run it with Session.create). */
  model: Model;
  /** A copy of the original inference model (for evaluation and export). */
  forward: Model;
  /** Batch input name. */
  input: string;
  batchShape: number[];
  /** Target input (labels or regression targets), its type and dims. */
  target: string;
  targetType: { dtype: DataType; dims: number[] };
  /** The forward model's output the loss reads, and its static dims for the training batch. */
  output: string;
  outputDims: number[];
  /** Loss output. */
  loss: string;
  /** Gradient-norm output (with clipGradNorm). */
  gradNorm?: string;
  /** Trainable parameters (names of the forward model's initializers). */
  params: string[];
  /** BatchNorm running statistics updated every step. */
  buffers: string[];
  feedback: Feedback[];
  optimizer: OptimizerGraph;
  dropout: DropoutMask[];
  lossSpec: LossSpec;
  /** Outputs to fetch every step: the loss, the gradient norm if any, then every feedback output. */
  fetches: string[];
  /** Initial values of every feedback input: parameters and statistics from the model, optimizer state zero. */
  initialState(): Map<string, HostTensor>;
  /** Node counts: the forward model, and the training model after pruning. */
  stats: { forwardNodes: number; trainingNodes: number; paramElements: number; feedbackBytes: number };
}

/** Operand positions that hold constants of an op, not parameters (by op key). */
const NON_PARAMETER_SLOTS: Record<string, number[]> = {
  BatchNormalization: [3, 4],
  Clip: [1, 2],
  Pad: [1, 2, 3],
  Resize: [1, 2, 3],
  Dropout: [1, 2],
  Pow: [1],
  'qnnx::FakeQuant': [1, 2],
};

/** A deep copy of a model (through its protobuf encoding). */
export { cloneModel };

function usage(message: string, context: Record<string, unknown> = {}): QnnxError {
  return new QnnxError('E_USAGE', message, context);
}

/** Names of the BatchNormalization running statistics that are initializers. */
export function batchNormStats(model: Model): string[] {
  const out: string[] = [];
  for (const n of model.graph.nodes) {
    if (n.opType !== 'BatchNormalization' || n.domain) continue;
    for (const i of [n.inputs[3], n.inputs[4]]) {
      if (i && model.graph.initializers.has(i) && !out.includes(i)) out.push(i);
    }
  }
  return out;
}

/** Values the given output depends on (walking producers back from it). */
function ancestors(model: Model, output: string): Set<string> {
  const producers = model.graph.producers();
  const seen = new Set<string>([output]);
  const work = [output];
  while (work.length) {
    const p = producers.get(work.pop()!);
    if (!p) continue;
    for (const i of p.inputs) {
      if (i && !seen.has(i)) {
        seen.add(i);
        work.push(i);
      }
    }
  }
  return seen;
}

/** The parameters `buildTrainingGraph` trains for these options (see TrainingGraphOptions.trainable). */
export function resolveTrainable(
  model: Model,
  trainable: TrainingGraphOptions['trainable'],
  output: string,
): string[] {
  const g = model.graph;
  const stats = new Set(batchNormStats(model));
  const isFloat = (name: string) => g.initializers.get(name)?.dtype === DataType.FLOAT;
  if (Array.isArray(trainable)) {
    for (const name of trainable as string[]) {
      const t = g.initializers.get(name);
      if (!t)
        throw usage(`trainable parameter '${name}' is not an initializer of the model`, { tensor: name });
      if (t.dtype !== DataType.FLOAT) {
        throw usage(
          `trainable parameter '${name}' is ${dataTypeName(t.dtype)}; only float32 parameters train`,
          {
            tensor: name,
          },
        );
      }
      if (stats.has(name)) {
        throw usage(
          `'${name}' is a BatchNormalization running statistic: it is updated from batch statistics, not trained`,
          { tensor: name },
        );
      }
    }
    return [...new Set(trainable as string[])];
  }
  const reach = ancestors(model, output);
  const excluded = new Set<string>(stats);
  const learned = new Set<string>();
  for (const n of g.nodes) {
    const key = n.domain && n.domain !== 'ai.onnx' ? `${n.domain}::${n.opType}` : n.opType;
    for (const k of NON_PARAMETER_SLOTS[key] ?? []) if (n.inputs[k]) excluded.add(n.inputs[k]);
    if (isFakeQuant(n)) {
      const learns = fakeQuantGradientLearns(fakeQuantAttrs(n).grad);
      if (learns.includes('scale')) learned.add(n.inputs[1]);
      if (learns.includes('zeroPoint') && n.inputs[2]) learned.add(n.inputs[2]);
    }
  }
  const pred = typeof trainable === 'function' ? trainable : undefined;
  const out: string[] = [];
  for (const [name, t] of g.initializers) {
    if (!isFloat(name) || !reach.has(name)) continue;
    const ok = pred
      ? pred(name) && !stats.has(name) && (learned.has(name) || !excluded.has(name))
      : learned.has(name) || (!excluded.has(name) && t.dims.length > 0);
    if (ok) out.push(name);
  }
  return out;
}

function defaultInput(model: Model): string {
  const inits = model.graph.initializers;
  const inp = model.graph.inputs.find((v) => !inits.has(v.name));
  if (!inp) throw usage('the model has no graph input to feed batches to');
  return inp.name;
}

function staticDims(types: TypeTable, name: string, what: string): number[] {
  const s = types.get(name)?.shape;
  if (!s || s.some((d) => typeof d !== 'number')) {
    throw new QnnxError(
      'E_SHAPE',
      `${what} '${name}' has no static shape for the training batch (inferred ${JSON.stringify(s ?? null)})`,
      { tensor: name },
    );
  }
  return s as number[];
}

/** PyTorch momentum from an ONNX BatchNormalization momentum attribute (float32 0.9 → 0.1, not 0.10000002). */
function torchMomentum(node: Node): number {
  const onnx = node.attrFloat('momentum', 0.9);
  return Number((1 - onnx).toPrecision(7));
}

function reduceMean(
  b: GraphBuilder,
  opset: number,
  x: string,
  axes: number[],
  keepdims: number,
  name: string,
) {
  return opset >= 18
    ? b.op('ReduceMean', [x, b.int64s(`${name}_axes`, [axes.length], axes)], { keepdims }, name)
    : b.op('ReduceMean', [x], { axes, keepdims }, name);
}

/** Builds the training model for `model` (which is not modified). */
export function buildTrainingGraph(model: Model, options: TrainingGraphOptions): TrainingGraph {
  const forward = cloneModel(model);
  const m = cloneModel(model);
  const g = m.graph;
  const b = new GraphBuilder(g);
  const opset = m.opset('') ?? 0;
  if (opset < 13) {
    throw usage(
      `training needs a model of opset ≥ 13 (this one is ${opset}); upgrade it with upgradeOpset first`,
    );
  }
  const lossSpec: LossSpec = options.loss ?? { kind: 'cross-entropy' };
  const input = options.input ?? defaultInput(m);
  const inputInfo = g.inputs.find((v) => v.name === input);
  if (!inputInfo || g.initializers.has(input)) throw usage(`'${input}' is not a graph input of the model`);
  const output = options.output ?? g.outputs[0]?.name;
  if (!output || !g.definedNames().has(output)) throw usage(`the model has no output '${output ?? ''}'`);
  const batchShape = [...options.batchShape];
  if (batchShape.some((d) => !Number.isInteger(d) || d < 1)) {
    throw usage(`batchShape must be positive integers (got [${batchShape.join(', ')}])`);
  }
  const forwardNodes = g.nodes.length;

  // Parameters and buffers, decided on the untouched forward graph.
  const params = resolveTrainable(m, options.trainable, output);
  const buffers = batchNormStats(m);
  const reach = ancestors(m, output);
  const liveBuffers = buffers.filter((n) => reach.has(n));

  // Static batch shape on the input.
  const inputType = inputInfo.type?.tensor_type?.elem_type ?? DataType.FLOAT;
  g.inputs = g.inputs.map((v) => (v.name === input ? valueInfo(input, inputType, batchShape) : v));
  const shapes: Record<string, Dim[]> = { [input]: batchShape };
  let types = inferTypesWithFakeQuant(m, shapes);

  // Dropout → x · mask (mask fed by the trainer).
  const dropout: DropoutMask[] = [];
  for (const n of [...g.nodes]) {
    if (n.opType !== 'Dropout' || n.domain) continue;
    if (n.outputs[1] && g.nodes.some((c) => c.inputs.includes(n.outputs[1]))) {
      throw usage(`Dropout ${n.label()}: its mask output is used by the model; cannot train it here`, {
        node: n.name,
      });
    }
    let ratio = 0.5;
    if (opset >= 12) {
      const t = n.inputs[1] ? g.initializers.get(n.inputs[1]) : undefined;
      const isFloat = t?.dtype === DataType.FLOAT || t?.dtype === DataType.DOUBLE;
      if (n.inputs[1] && !(isFloat && t?.size === 1)) {
        throw usage(`Dropout ${n.label()}: the ratio must be a float constant initializer`);
      }
      if (t) ratio = Number((t.data as Float32Array)[0]);
    } else ratio = n.attrFloat('ratio', 0.5);
    if (!(ratio >= 0 && ratio < 1)) throw usage(`Dropout ${n.label()}: ratio ${ratio} is not in [0, 1)`);
    const x = n.inputs[0];
    const dims = staticDims(types, x, `Dropout input of ${n.label()}`);
    const mask = b.uniqueName(`${n.name || n.outputs[0]}.mask`);
    g.inputs.push(valueInfo(mask, DataType.FLOAT, dims));
    const mul = b.node('Mul', [x, mask], { outputs: [n.outputs[0]], name: `${n.name || 'dropout'}_train` });
    g.nodes.pop();
    g.nodes.splice(g.nodes.indexOf(n), 1, mul);
    dropout.push({ input: mask, ratio, dims, node: n.name });
  }

  // Loss.
  const predDims = staticDims(types, output, 'model output');
  const targetType = lossTargetType(lossSpec, predDims);
  const target = b.uniqueName('target');
  g.inputs.push(valueInfo(target, targetType.dtype, targetType.dims));
  const loss = addLoss(b, lossSpec, output, target, { opset, predictionDims: predDims });
  shapes[target] = targetType.dims;

  // Parameters and running statistics become graph inputs.
  const dimsOf = new Map<string, number[]>();
  for (const name of [...params, ...liveBuffers]) {
    const t = g.initializers.get(name)!;
    dimsOf.set(name, [...t.dims]);
    g.initializers.delete(name);
    g.inputs.push(valueInfo(name, DataType.FLOAT, t.dims));
  }

  // Backward.
  declareFakeQuantTypes(m, shapes);
  let grads: string[] = [];
  if (params.length > 0) {
    const { gradients } = addGradients(m, { loss, wrt: params, inputShapes: shapes });
    grads = params.map((p) => gradients.get(p)!);
  }
  types = inferTypesWithFakeQuant(m, shapes);

  // BatchNorm: training mode, running statistics updated as PyTorch does.
  const feedback: Feedback[] = [];
  const statOutputs = new Map<string, string>();
  for (const n of g.nodes) {
    if (n.opType !== 'BatchNormalization' || n.domain) continue;
    const [x, , , rm, rv] = n.inputs;
    if (!liveBuffers.includes(rm) || !liveBuffers.includes(rv)) continue;
    if (statOutputs.has(rm) || statOutputs.has(rv)) {
      throw usage(`BatchNormalization ${n.label()} shares its running statistics with another node`, {
        node: n.name,
      });
    }
    if (opset < 14) throw usage(`BatchNormalization ${n.label()}: training mode needs opset ≥ 14`);
    // Nodes off the gradient path (frozen upstream) were not prepared by the rule: training mode needs 3 outputs.
    n.setAttr('training_mode', AttributeType.INT, 1);
    const base = n.name || rm;
    for (let i = 1; i < 3; i++) n.outputs[i] ||= b.uniqueName(`${base}_unused_stat`);
    // ONNX Runtime's training-mode kernel aliases its running-statistic outputs to inputs 3 and 4 and writes the
    // ONNX-style update into those buffers: with the statistics fed as zero-copy graph inputs, it overwrote the
    // caller's arrays (and the update below read the overwritten values). Training mode normalizes with the
    // batch statistics only, so the node gets scratch constants there; the PyTorch update reads the real inputs.
    const channels = dimsOf.get(rm)![0];
    n.inputs[3] = b.floats(`${base}_scratch_mean`, [channels], new Float32Array(channels));
    n.inputs[4] = b.floats(`${base}_scratch_var`, [channels], new Float32Array(channels).fill(1));
    const dims = staticDims(types, x, `BatchNormalization input of ${n.label()}`);
    const axes = dims.map((_, i) => i).filter((i) => i !== 1);
    const count = axes.reduce((a, i) => a * dims[i], 1);
    if (count < 2) {
      throw usage(
        `BatchNormalization ${n.label()}: training needs more than one value per channel (got ${count})`,
      );
    }
    const mom = options.bnMomentum ?? torchMomentum(n);
    const meanK = reduceMean(b, opset, x, axes, 1, `${base}_batch_mean`);
    const d = b.op('Sub', [x, meanK], undefined, `${base}_centered`);
    const varB = reduceMean(
      b,
      opset,
      b.op('Mul', [d, d], undefined, `${base}_sq`),
      axes,
      0,
      `${base}_batch_var`,
    );
    const mean = b.op(
      'Reshape',
      [meanK, b.int64s(`${base}_flat`, [1], [-1])],
      undefined,
      `${base}_mean_flat`,
    );
    const keep = b.floats(`${base}_keep`, [], [1 - mom]);
    const update = (old: string, batch: string, factor: number, what: string) =>
      b.node(
        'Add',
        [
          b.op('Mul', [old, keep], undefined, `${base}_${what}_old`),
          b.op('Mul', [batch, b.floats(`${base}_${what}_m`, [], [factor])], undefined, `${base}_${what}_new`),
        ],
        { outputs: [b.uniqueName(`${what === 'mean' ? rm : rv}.next`)], name: `${base}_${what}_update` },
      ).outputs[0];
    statOutputs.set(rm, update(rm, mean, mom, 'mean'));
    statOutputs.set(rv, update(rv, varB, (mom * count) / (count - 1), 'var'));
  }
  for (const s of liveBuffers) {
    const out = statOutputs.get(s);
    if (out) feedback.push({ input: s, output: out, kind: 'buffer', dims: dimsOf.get(s)! });
  }

  // Gradient clipping and optimizer.
  let gradNorm: string | undefined;
  if (options.clipGradNorm !== undefined && grads.length > 0) {
    const c = appendGradClip(b, grads, options.clipGradNorm);
    grads = c.grads;
    gradNorm = c.norm;
  }
  const optimizer = appendOptimizer(
    b,
    options.optimizer,
    params.map((p, i) => ({ name: p, grad: grads[i], dims: dimsOf.get(p)! })),
  );
  for (const p of params) {
    feedback.push({ input: p, output: optimizer.updated.get(p)!, kind: 'param', dims: dimsOf.get(p)! });
  }
  for (const s of optimizer.state)
    feedback.push({ input: s.input, output: s.output, kind: 'state', dims: s.dims });
  // Feedback first (params before their state), loss first among outputs.
  feedback.sort((a, c) => order(a.kind) - order(c.kind));

  g.outputs = [valueInfo(loss, DataType.FLOAT, [])];
  if (gradNorm) g.outputs.push(valueInfo(gradNorm, DataType.FLOAT, []));
  for (const f of feedback) g.outputs.push(valueInfo(f.output, DataType.FLOAT, f.dims));

  lowerFakeQuant(m, shapes);
  eliminateDeadNodes(m);
  // Inputs nothing reads any more (e.g. a frozen model's unused statistics) would still have to be fed: drop them.
  const used = new Set(g.nodes.flatMap((n) => n.inputs));
  g.inputs = g.inputs.filter(
    (v) =>
      used.has(v.name) || v.name === input || v.name === target || feedback.some((f) => f.input === v.name),
  );

  const paramElements = params.reduce((a, p) => a + elementCount(dimsOf.get(p)!), 0);
  const feedbackBytes = feedback.reduce((a, f) => a + 4 * elementCount(f.dims), 0);
  return {
    model: m,
    forward,
    input,
    batchShape,
    target,
    targetType,
    output,
    outputDims: predDims,
    loss,
    gradNorm,
    params,
    buffers: liveBuffers,
    feedback,
    optimizer,
    dropout,
    lossSpec,
    fetches: [loss, ...(gradNorm ? [gradNorm] : []), ...feedback.map((f) => f.output)],
    initialState() {
      const init = new Map<string, HostTensor>();
      for (const f of feedback) {
        if (f.kind === 'state') {
          init.set(f.input, {
            dtype: DataType.FLOAT,
            dims: [...f.dims],
            data: new Float32Array(elementCount(f.dims)),
          });
        } else {
          const t = forward.graph.initializers.get(f.input)!;
          init.set(f.input, {
            dtype: DataType.FLOAT,
            dims: [...t.dims],
            data: Float32Array.from(t.data as Float32Array),
          });
        }
      }
      return init;
    },
    stats: { forwardNodes, trainingNodes: g.nodes.length, paramElements, feedbackBytes },
  };
}

function order(kind: Feedback['kind']): number {
  return kind === 'param' ? 0 : kind === 'buffer' ? 1 : 2;
}
