/**
 * Loss builders: each appends the nodes of one loss to a graph and returns the name of the scalar loss value.
 * They are written with ops that have gradient rules (LogSoftmax, Mul, Sub, Abs, Exp, Log, Relu, Div,
 * ReduceSum, ReduceMean), so the autodiff engine differentiates them like any other part of the model.
 *
 *   cross-entropy     mean_i −log softmax(logits_i)[label_i]; logits [N, C], labels int64 [N]. The one-hot is
 *                     Cast(Equal(Reshape(labels, [−1, 1]), [0..C−1])) (research notes A.2: always works, unlike
 *                     OneHot). Labels must lie in [0, C): the trainer checks them before running.
 *   mse               mean (p − t)²
 *   l1                mean |p − t|
 *   bce-with-logits   mean max(x, 0) − x·t + log(1 + exp(−|x|))   (PyTorch's BCEWithLogitsLoss, stable form)
 *   kl-div            distillation: T²·Σ_i KL(softmax(t_i/T) ‖ softmax(s_i/T)) / N, with s the student logits and
 *                     t the teacher logits fed as the target (PyTorch KLDivLoss(reduction='batchmean')·T²)
 *
 * Means are over every element (PyTorch's reduction='mean'); the KL loss divides by the batch size N.
 */
import { QnnxError } from '../errors.js';
import type { GraphBuilder } from '../ir/builder.js';
import { DataType } from '../onnx/dtype.js';

export type LossSpec =
  | { kind: 'cross-entropy' }
  | { kind: 'mse' }
  | { kind: 'l1' }
  | { kind: 'bce-with-logits' }
  | { kind: 'kl-div'; temperature?: number };

export type LossKind = LossSpec['kind'];

export const LOSS_KINDS: readonly LossKind[] = ['cross-entropy', 'mse', 'l1', 'bce-with-logits', 'kl-div'];

/** Whether a loss takes integer class labels (and its model output is read as class scores). */
export function isClassification(spec: LossSpec): boolean {
  return spec.kind === 'cross-entropy';
}

/** The element type and dims of the target a loss expects, given the prediction's static dims. */
export function lossTargetType(
  spec: LossSpec,
  predictionDims: readonly number[],
): { dtype: DataType; dims: number[] } {
  if (spec.kind === 'cross-entropy') {
    if (predictionDims.length !== 2) {
      throw new QnnxError(
        'E_USAGE',
        `cross-entropy needs logits of rank 2 [batch, classes], the model output has dims [${predictionDims.join(', ')}]`,
      );
    }
    return { dtype: DataType.INT64, dims: [predictionDims[0]] };
  }
  return { dtype: DataType.FLOAT, dims: [...predictionDims] };
}

export interface LossBuildOptions {
  /** Default-domain opset of the graph (ReduceSum takes axes as an input from 13, ReduceMean from 18). */
  opset: number;
  /** Static dims of the prediction (the batch size and, for cross-entropy, the class count come from here). */
  predictionDims: readonly number[];
  /** Base for node names (default 'loss'). */
  name?: string;
}

/** Appends the loss nodes and returns the name of the scalar loss (float32). */
export function addLoss(
  b: GraphBuilder,
  spec: LossSpec,
  prediction: string,
  target: string,
  o: LossBuildOptions,
): string {
  const base = o.name ?? 'loss';
  const op = (type: string, inputs: string[], attrs?: Record<string, number | number[]>) =>
    b.op(type, inputs, attrs, `${base}_${type}`);
  const f = (v: number) => b.floats(`${base}_const`, [], [v]);
  const reduce = (type: 'ReduceSum' | 'ReduceMean', x: string, axes?: number[], keepdims = 0) => {
    if (!axes) return op(type, [x], { keepdims });
    const asInput = type === 'ReduceSum' ? o.opset >= 13 : o.opset >= 18;
    return asInput
      ? op(type, [x, b.int64s(`${base}_axes`, [axes.length], axes)], { keepdims })
      : op(type, [x], { axes, keepdims });
  };
  const final = (type: string, inputs: string[], attrs?: Record<string, number>) =>
    b.node(type, inputs, { outputs: [b.uniqueName(base)], attrs, name: `${base}_${type}` }).outputs[0];
  const dims = o.predictionDims;
  const n = dims[0];
  switch (spec.kind) {
    case 'cross-entropy': {
      lossTargetType(spec, dims);
      const c = dims[1];
      const logp = op('LogSoftmax', [prediction], { axis: 1 });
      const labels = op('Reshape', [target, b.int64s(`${base}_col`, [2], [-1, 1])]);
      const classes = b.int64s(
        `${base}_classes`,
        [c],
        Array.from({ length: c }, (_, i) => i),
      );
      const onehot = op('Cast', [op('Equal', [labels, classes])], { to: DataType.FLOAT });
      const picked = reduce('ReduceSum', op('Mul', [onehot, logp]));
      return final('Div', [op('Neg', [picked]), f(n)]);
    }
    case 'mse': {
      const d = op('Sub', [prediction, target]);
      return final('ReduceMean', [op('Mul', [d, d])], { keepdims: 0 });
    }
    case 'l1':
      return final('ReduceMean', [op('Abs', [op('Sub', [prediction, target])])], { keepdims: 0 });
    case 'bce-with-logits': {
      const x = prediction;
      const softplus = op('Log', [op('Add', [f(1), op('Exp', [op('Neg', [op('Abs', [x])])])])]);
      const l = op('Add', [op('Sub', [op('Relu', [x]), op('Mul', [x, target])]), softplus]);
      return final('ReduceMean', [l], { keepdims: 0 });
    }
    case 'kl-div': {
      const t = spec.temperature ?? 1;
      if (!(t > 0)) throw new QnnxError('E_USAGE', `kl-div temperature must be positive (got ${t})`);
      if (dims.length < 2)
        throw new QnnxError('E_USAGE', 'kl-div needs logits of rank ≥ 2 [batch, classes, ...]');
      const temp = f(t);
      const logS = op('LogSoftmax', [op('Div', [prediction, temp])], { axis: 1 });
      const logT = op('LogSoftmax', [op('Div', [target, temp])], { axis: 1 });
      const kl = reduce('ReduceSum', op('Mul', [op('Exp', [logT]), op('Sub', [logT, logS])]));
      return final('Mul', [kl, f((t * t) / n)]);
    }
    default:
      throw new QnnxError(
        'E_USAGE',
        `unknown loss ${JSON.stringify(spec)} (known: ${LOSS_KINDS.join(', ')})`,
      );
  }
}

/**
 * The loss of one batch computed in float64 in TypeScript, for evaluation reports and as a reference. `pred` is
 * [N, ...] flattened; cross-entropy takes integer labels, the others float targets of the prediction's size.
 */
export function lossValue(
  spec: LossSpec,
  pred: ArrayLike<number>,
  target: ArrayLike<number | bigint>,
  dims: readonly number[],
): number {
  const n = dims[0];
  const size = pred.length;
  const t = (i: number) => Number(target[i]);
  switch (spec.kind) {
    case 'cross-entropy': {
      const c = dims[1];
      let sum = 0;
      for (let i = 0; i < n; i++) sum += logSumExp(pred, i * c, c, 1) - pred[i * c + t(i)];
      return sum / n;
    }
    case 'mse': {
      let s = 0;
      for (let i = 0; i < size; i++) s += (pred[i] - t(i)) ** 2;
      return s / size;
    }
    case 'l1': {
      let s = 0;
      for (let i = 0; i < size; i++) s += Math.abs(pred[i] - t(i));
      return s / size;
    }
    case 'bce-with-logits': {
      let s = 0;
      for (let i = 0; i < size; i++) {
        const x = pred[i];
        s += Math.max(x, 0) - x * t(i) + Math.log1p(Math.exp(-Math.abs(x)));
      }
      return s / size;
    }
    case 'kl-div': {
      const temp = spec.temperature ?? 1;
      const c = dims[1];
      const inner = size / (n * c);
      let s = 0;
      for (let i = 0; i < n; i++) {
        for (let k = 0; k < inner; k++) {
          const off = i * c * inner + k;
          const lt = logSumExp(target as ArrayLike<number>, off, c, inner, temp);
          const ls = logSumExp(pred, off, c, inner, temp);
          for (let j = 0; j < c; j++) {
            const a = t(off + j * inner) / temp - lt;
            const bb = pred[off + j * inner] / temp - ls;
            s += Math.exp(a) * (a - bb);
          }
        }
      }
      return (s * temp * temp) / n;
    }
  }
}

function logSumExp(x: ArrayLike<number>, off: number, count: number, stride: number, temp = 1): number {
  let m = -Infinity;
  for (let j = 0; j < count; j++) m = Math.max(m, Number(x[off + j * stride]) / temp);
  let s = 0;
  for (let j = 0; j < count; j++) s += Math.exp(Number(x[off + j * stride]) / temp - m);
  return m + Math.log(s);
}
