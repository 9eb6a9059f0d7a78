/**
 * Optimizers as ONNX nodes appended to the training graph, with PyTorch's semantics (torch.optim, single-tensor
 * CPU path), op for op in float32:
 *
 *   sgd    d = g + wd·p;  buf = momentum·buf + (1 − dampening)·d  (buf = d at the first step);
 *          d = nesterov ? d + momentum·buf : buf;  p = p − lr·d
 *   adam   g = g + wd·p (L2);  m = m + (1 − β1)·(g − m);  v = β2·v + (1 − β2)·g²;
 *          p = p − (lr/(1 − β1^t))·m / (sqrt(v)/sqrt(1 − β2^t) + eps)
 *   adamw  as adam, but p = p·(1 − lr·wd) first instead of the L2 term (decoupled weight decay; PyTorch's
 *          default wd 0.01)
 *
 * Everything that changes from step to step is a scalar graph input computed in TypeScript (in float64, then
 * rounded to float32 as PyTorch does with Python scalars): the learning rate, Adam's bias-corrected step size
 * lr/(1 − β1^t) and sqrt(1 − β2^t), AdamW's decay factor, and SGD's first-step switch. So learning-rate
 * schedules and the step count never rebuild the graph; `stepScalars(t, lr)` gives the feeds for step t ≥ 1.
 *
 * State tensors (momentum_buffer, exp_avg, exp_avg_sq, named as in PyTorch's optimizer state) start at zero and
 * are graph inputs `<param>.<slot>` with updated outputs `<param>.<slot>.next`; updated parameters are outputs
 * `<param>.next` (names made unique if taken).
 *
 * `appendGradClip` is torch.nn.utils.clip_grad_norm_ (global L2 norm, coefficient min(1, max/(norm + 1e-6))).
 */
import { QnnxError } from '../errors.js';
import { type GraphBuilder, valueInfo } from '../ir/builder.js';
import { DataType } from '../onnx/dtype.js';
import type { HostTensor } from '../tensor.js';

export type OptimizerSpec =
  | {
      kind: 'sgd';
      lr: number;
      momentum?: number;
      dampening?: number;
      nesterov?: boolean;
      weightDecay?: number;
    }
  | { kind: 'adam' | 'adamw'; lr: number; betas?: [number, number]; eps?: number; weightDecay?: number };

export type OptimizerKind = OptimizerSpec['kind'];

/** A parameter and its gradient in the training graph. */
export interface ParamGrad {
  name: string;
  grad: string;
  dims: number[];
}

/** One optimizer state tensor: fed in as `input`, its update comes out as `output`. Starts at zero. */
export interface StateSlot {
  input: string;
  output: string;
  param: string;
  /** PyTorch's state key: momentum_buffer, exp_avg or exp_avg_sq. */
  slot: string;
  dims: number[];
}

export interface OptimizerGraph {
  /** Scalar float32 inputs fed every step (see stepScalars). */
  scalars: string[];
  state: StateSlot[];
  /** Parameter name → name of its updated value (a graph output). */
  updated: Map<string, string>;
  /** The scalar feeds for optimizer step t (1-based) at learning rate lr. */
  stepScalars(t: number, lr: number): Record<string, HostTensor>;
}

/** The spec with PyTorch's defaults filled in, checked. */
export function resolveOptimizer(spec: OptimizerSpec): Required<OptimizerSpec> {
  if (!(spec.lr >= 0)) throw new QnnxError('E_USAGE', `optimizer: lr must be ≥ 0 (got ${spec.lr})`);
  if (spec.kind === 'sgd') {
    const r = {
      kind: 'sgd' as const,
      lr: spec.lr,
      momentum: spec.momentum ?? 0,
      dampening: spec.dampening ?? 0,
      nesterov: spec.nesterov ?? false,
      weightDecay: spec.weightDecay ?? 0,
    };
    if (r.nesterov && (r.momentum <= 0 || r.dampening !== 0)) {
      throw new QnnxError('E_USAGE', 'optimizer: Nesterov momentum requires a momentum and zero dampening');
    }
    return r;
  }
  if (spec.kind === 'adam' || spec.kind === 'adamw') {
    const betas = spec.betas ?? [0.9, 0.999];
    if (!(betas[0] >= 0 && betas[0] < 1 && betas[1] >= 0 && betas[1] < 1)) {
      throw new QnnxError('E_USAGE', `optimizer: betas must lie in [0, 1) (got ${betas.join(', ')})`);
    }
    return {
      kind: spec.kind,
      lr: spec.lr,
      betas,
      eps: spec.eps ?? 1e-8,
      weightDecay: spec.weightDecay ?? (spec.kind === 'adamw' ? 0.01 : 0),
    };
  }
  throw new QnnxError('E_USAGE', `unknown optimizer ${JSON.stringify(spec)} (known: sgd, adam, adamw)`);
}

const scalar = (v: number): HostTensor => ({ dtype: DataType.FLOAT, dims: [], data: Float32Array.of(v) });

/**
 * Appends the update nodes for every parameter. Adds the scalar inputs and the state inputs to the graph's
 * inputs; the caller makes `updated` and the state outputs graph outputs.
 */
export function appendOptimizer(b: GraphBuilder, spec: OptimizerSpec, params: ParamGrad[]): OptimizerGraph {
  const o = resolveOptimizer(spec);
  const g = b.graph;
  const scalars: string[] = [];
  const input = (base: string, dims: number[]) => {
    const name = b.uniqueName(base);
    g.inputs.push(valueInfo(name, DataType.FLOAT, dims));
    return name;
  };
  const scalarInput = (base: string) => {
    const name = input(base, []);
    scalars.push(name);
    return name;
  };
  const c = (v: number) => b.floats('opt_const', [], [v]);
  const op = (type: string, inputs: string[], name: string) => b.op(type, inputs, undefined, name);
  const out = (type: string, inputs: string[], base: string) =>
    b.node(type, inputs, { outputs: [b.uniqueName(base)], name: `${base}_${type}` }).outputs[0];
  const state: StateSlot[] = [];
  const stateSlot = (p: ParamGrad, slot: string) => {
    const s: StateSlot = {
      input: input(`${p.name}.${slot}`, p.dims),
      output: '',
      param: p.name,
      slot,
      dims: p.dims,
    };
    state.push(s);
    return s;
  };
  const updated = new Map<string, string>();

  if (o.kind === 'sgd') {
    const lr = scalarInput('opt.lr');
    const useBuf = o.momentum !== 0;
    // First step: buf = d (momentum factor 0, gradient weight 1); later: momentum, 1 − dampening.
    const bufDecay = useBuf ? scalarInput('opt.momentum_decay') : '';
    const gradWeight = useBuf ? scalarInput('opt.grad_weight') : '';
    const wd = o.weightDecay !== 0 ? c(o.weightDecay) : '';
    const mom = c(o.momentum);
    for (const p of params) {
      let d = p.grad;
      if (wd) d = op('Add', [d, op('Mul', [p.name, wd], `${p.name}_wd`)], `${p.name}_d`);
      if (useBuf) {
        const s = stateSlot(p, 'momentum_buffer');
        const buf = out(
          'Add',
          [
            op('Mul', [s.input, bufDecay], `${p.name}_buf_decay`),
            op('Mul', [d, gradWeight], `${p.name}_buf_add`),
          ],
          `${s.input}.next`,
        );
        s.output = buf;
        d = o.nesterov
          ? op('Add', [d, op('Mul', [buf, mom], `${p.name}_nesterov`)], `${p.name}_d_nesterov`)
          : buf;
      }
      updated.set(p.name, out('Sub', [p.name, op('Mul', [d, lr], `${p.name}_step`)], `${p.name}.next`));
    }
    return {
      scalars,
      state,
      updated,
      stepScalars(t, rate) {
        const feeds: Record<string, HostTensor> = { [lr]: scalar(rate) };
        if (useBuf) {
          feeds[bufDecay] = scalar(t <= 1 ? 0 : o.momentum);
          feeds[gradWeight] = scalar(t <= 1 ? 1 : 1 - o.dampening);
        }
        return feeds;
      },
    };
  }

  // Adam / AdamW
  const [beta1, beta2] = o.betas;
  const stepSize = scalarInput('opt.step_size');
  const bc2Sqrt = scalarInput('opt.bias_correction2_sqrt');
  const decay = o.kind === 'adamw' && o.weightDecay !== 0 ? scalarInput('opt.decay') : '';
  const wd = o.kind === 'adam' && o.weightDecay !== 0 ? c(o.weightDecay) : '';
  const oneMinusB1 = c(1 - beta1);
  const b2 = c(beta2);
  const oneMinusB2 = c(1 - beta2);
  const eps = c(o.eps);
  for (const p of params) {
    let grad = p.grad;
    let param = p.name;
    if (wd) grad = op('Add', [grad, op('Mul', [param, wd], `${p.name}_wd`)], `${p.name}_g`);
    if (decay) param = op('Mul', [param, decay], `${p.name}_decayed`);
    const m = stateSlot(p, 'exp_avg');
    const v = stateSlot(p, 'exp_avg_sq');
    // exp_avg.lerp_(grad, 1 − β1): m + (1 − β1)·(g − m)
    m.output = out(
      'Add',
      [m.input, op('Mul', [op('Sub', [grad, m.input], `${p.name}_g_minus_m`), oneMinusB1], `${p.name}_lerp`)],
      `${m.input}.next`,
    );
    // exp_avg_sq.mul_(β2).addcmul_(grad, grad, value = 1 − β2)
    v.output = out(
      'Add',
      [
        op('Mul', [v.input, b2], `${p.name}_v_decay`),
        op('Mul', [op('Mul', [grad, grad], `${p.name}_g2`), oneMinusB2], `${p.name}_v_add`),
      ],
      `${v.input}.next`,
    );
    // denom = sqrt(v)/sqrt(bc2) + eps; p = p − step_size·(m/denom)
    const denom = op(
      'Add',
      [op('Div', [op('Sqrt', [v.output], `${p.name}_sqrt_v`), bc2Sqrt], `${p.name}_v_hat`), eps],
      `${p.name}_denom`,
    );
    const upd = op('Mul', [op('Div', [m.output, denom], `${p.name}_ratio`), stepSize], `${p.name}_update`);
    updated.set(p.name, out('Sub', [param, upd], `${p.name}.next`));
  }
  return {
    scalars,
    state,
    updated,
    stepScalars(t, rate) {
      const bc1 = 1 - beta1 ** t;
      const bc2 = 1 - beta2 ** t;
      const feeds: Record<string, HostTensor> = {
        [stepSize]: scalar(rate / bc1),
        [bc2Sqrt]: scalar(Math.sqrt(bc2)),
      };
      if (decay) feeds[decay] = scalar(1 - rate * o.weightDecay);
      return feeds;
    },
  };
}

/**
 * Global-norm gradient clipping in the graph: norm = sqrt(Σ_i Σ g_i²), each g scaled by min(1, max/(norm + 1e-6))
 * (torch.nn.utils.clip_grad_norm_). Returns the clipped gradient names and the norm (before clipping).
 */
export function appendGradClip(
  b: GraphBuilder,
  grads: string[],
  maxNorm: number,
): { grads: string[]; norm: string } {
  if (!(maxNorm > 0)) throw new QnnxError('E_USAGE', `clipGradNorm must be positive (got ${maxNorm})`);
  const squares = grads.map((g) => b.op('ReduceSumSquare', [g], { keepdims: 0 }, 'clip_sumsq'));
  const total = squares.length === 1 ? squares[0] : b.op('Sum', squares, undefined, 'clip_total');
  const norm = b.node('Sqrt', [total], { outputs: [b.uniqueName('grad_norm')], name: 'clip_norm' })
    .outputs[0];
  const coef = b.op(
    'Min',
    [
      b.op('Div', [
        b.floats('clip_max', [], [maxNorm]),
        b.op('Add', [norm, b.floats('clip_eps', [], [1e-6])]),
      ]),
      b.floats('clip_one', [], [1]),
    ],
    undefined,
    'clip_coef',
  );
  return { grads: grads.map((g) => b.op('Mul', [g, coef], undefined, 'clip')), norm };
}
