/**
 * Gradients of BatchNormalization (training mode) and LayerNormalization. Both recompute the statistics in the
 * backward pass (ONNX Runtime's training-mode BatchNormalization does not output the batch mean and inverse
 * standard deviation, and LayerNormalization's Mean/InvStdDev outputs are stored as `stash_type`, float32):
 *
 *   μ = mean(x), σ² = mean((x − μ)²) (biased), istd = 1/√(σ² + ε), x̂ = (x − μ)·istd
 *   dx = istd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)),   dx̂ = dY·γ
 *   dγ = Σ dY·x̂,   dβ = Σ dY
 *
 * over the axes [0, 2, 3, ...] (BatchNormalization) or [axis, rank) (LayerNormalization).
 *
 * BatchNormalization, `prepare`: the forward node is switched to training mode, so that it normalizes with the
 * batch statistics and updates the running ones:
 *   - opset ≥ 14: attribute training_mode = 1, outputs [Y, running_mean, running_var];
 *   - opsets 9-13: outputs [Y, mean, var, saved_mean, saved_var] (ONNX Runtime trains when more than one output
 *     is requested, and the schema allows one output or five).
 * Missing outputs are created with the names `<Y>_running_mean`, `<Y>_running_var` (and `<Y>_saved_mean`,
 * `<Y>_saved_var` for opsets 9-13), made unique against the graph; outputs the model already names are kept. After `addGradients`, the trainer reads the new
 * running statistics from `node.outputs[1]` and `node.outputs[2]` and feeds them back as inputs 3 and 4.
 * Semantics of those outputs (checked in ONNX Runtime 1.30, see docs/research onnx-runtime.md A.2):
 *   running_mean = momentum·input_mean + (1 − momentum)·batch_mean — ONNX's `momentum` weights the OLD value, so
 *   ONNX momentum 0.9 is PyTorch momentum 0.1;
 *   running_var uses the BIASED batch variance in ONNX Runtime, whereas PyTorch updates with the unbiased one
 *   (factor M/(M−1), M = N·H·W); a trainer that wants PyTorch's numbers must rescale the batch variance itself.
 * Gradients never flow into the running statistics (a loss that reads them is refused).
 */
import { AttributeType } from '../../../onnx/proto.js';
import type { GradContext, GradientRule } from '../rule.js';
import { noGradient } from '../rule.js';

function reduce(
  c: GradContext,
  op: 'ReduceSum' | 'ReduceMean',
  x: string,
  axes: number[],
  keepdims: 0 | 1,
): string {
  const asInput = op === 'ReduceSum' ? c.opset >= 13 : c.opset >= 18;
  if (asInput) return c.op(op, [x, c.int64s(axes)], { keepdims });
  return c.op(op, [x], { axes, keepdims });
}

function rankOf(c: GradContext, name: string): number {
  const s = c.shape(name);
  if (!s) c.staticShape(name);
  return s!.length;
}

/** x̂ and istd for x normalized over `axes`, recomputed from x. */
function normalized(
  c: GradContext,
  x: string,
  axes: number[],
  epsilon: number,
): { xhat: string; istd: string } {
  const mean = reduce(c, 'ReduceMean', x, axes, 1);
  const xc = c.op('Sub', [x, mean]);
  const variance = reduce(c, 'ReduceMean', c.op('Mul', [xc, xc]), axes, 1);
  const istd = c.op('Reciprocal', [c.op('Sqrt', [c.op('Add', [variance, c.constant([epsilon], [], x)])])]);
  return { xhat: c.op('Mul', [xc, istd]), istd };
}

/** istd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)), the means given (keepdims) or computed over `axes`. */
function inputGrad(
  c: GradContext,
  dxhat: string,
  xhat: string,
  istd: string,
  axes: number[],
  means?: { m: string; mx: string },
): string {
  const m = means?.m ?? reduce(c, 'ReduceMean', dxhat, axes, 1);
  const mx = means?.mx ?? reduce(c, 'ReduceMean', c.op('Mul', [dxhat, xhat]), axes, 1);
  const centered = c.op('Sub', [c.op('Sub', [dxhat, m]), c.op('Mul', [xhat, mx])]);
  return c.op('Mul', [istd, centered]);
}

function refuseStatGradients(c: GradContext, what: string): void {
  if (c.dY.slice(1).some((d) => d !== undefined)) {
    throw noGradient(c.node, `the loss depends on the ${what} outputs, which have no gradient`);
  }
}

const batchNormalization: GradientRule = {
  op: 'BatchNormalization',
  prepare(node, { b, opset }) {
    if (opset < 9) {
      throw noGradient(
        node,
        `BatchNormalization before opset 9 (here ${opset}) is not supported in training mode`,
      );
    }
    if (opset >= 14) node.setAttr('training_mode', AttributeType.INT, 1);
    const y = node.outputs[0];
    // Opset ≥ 14: [Y, running_mean, running_var]. Opsets 9-13 allow one output or all five (the last two are
    // the saved batch mean and inverse standard deviation, which ONNX Runtime's CPU kernel does not fill).
    const outs = node.outputs.slice(0, opset >= 14 ? 3 : 5);
    const names = ['', 'running_mean', 'running_var', 'saved_mean', 'saved_var'];
    while (outs.length < (opset >= 14 ? 3 : 5)) outs.push('');
    for (let i = 1; i < outs.length; i++) if (!outs[i]) outs[i] = b.uniqueName(`${y}_${names[i]}`);
    node.outputs = outs;
  },
  grad(c) {
    refuseStatGradients(c, 'running mean/variance');
    const dy = c.dY[0];
    if (!dy) return [];
    const [x, scale] = c.node.inputs;
    const rank = rankOf(c, x);
    if (rank < 2) throw noGradient(c.node, `BatchNormalization input of rank ${rank} (need [N, C, ...])`);
    if (c.opset >= 14 && c.node.attrInt('training_mode', 0) !== 1) {
      throw noGradient(c.node, 'BatchNormalization is not in training mode (prepare() was not applied)');
    }
    const axes = [0, ...Array.from({ length: rank - 2 }, (_, i) => i + 2)];
    const { xhat, istd } = normalized(c, x, axes, c.node.attrFloat('epsilon', 1e-5));
    // Per-channel sums with keepdims (shape [1, C, 1, ...]); dγ and dβ are these reshaped to [C].
    const sumY = c.needs[0] || c.needs[2] ? reduce(c, 'ReduceSum', dy, axes, 1) : undefined;
    const sumYX =
      c.needs[0] || c.needs[1] ? reduce(c, 'ReduceSum', c.op('Mul', [dy, xhat]), axes, 1) : undefined;
    const flat = (s: string) => c.op('Reshape', [s, c.int64s([-1])]);
    let dx: string | undefined;
    if (c.needs[0]) {
      // With dx̂ = γ·dY: mean(dx̂) = γ·ΣdY/M and mean(dx̂·x̂) = γ·Σ(dY·x̂)/M, reusing the sums above.
      const shape = c.shape(x)!;
      const count = axes.reduce<number | undefined>(
        (p, a) => (p !== undefined && typeof shape[a] === 'number' ? p * (shape[a] as number) : undefined),
        1,
      );
      const g = rank > 2 ? c.op('Reshape', [scale, c.int64s([-1, ...Array(rank - 2).fill(1)])]) : scale;
      const inv = count === undefined ? undefined : c.constant([1 / count], [], x);
      const means =
        inv === undefined
          ? undefined
          : {
              m: c.op('Mul', [c.op('Mul', [sumY!, inv]), g]),
              mx: c.op('Mul', [c.op('Mul', [sumYX!, inv]), g]),
            };
      dx = inputGrad(c, c.op('Mul', [dy, g]), xhat, istd, axes, means);
    }
    return [dx, c.needs[1] ? flat(sumYX!) : undefined, c.needs[2] ? flat(sumY!) : undefined];
  },
};

const layerNormalization: GradientRule = {
  op: 'LayerNormalization',
  grad(c) {
    refuseStatGradients(c, 'Mean/InvStdDev');
    const dy = c.dY[0];
    if (!dy) return [];
    const [x, scale, bias] = c.node.inputs;
    const rank = rankOf(c, x);
    let axis = c.node.attrInt('axis', -1);
    if (axis < 0) axis += rank;
    if (axis < 0 || axis >= rank) throw noGradient(c.node, `axis ${c.node.attrInt('axis', -1)} out of range`);
    const axes = Array.from({ length: rank - axis }, (_, i) => axis + i);
    const { xhat, istd } = normalized(c, x, axes, c.node.attrFloat('epsilon', 1e-5));
    const dx = c.needs[0] ? inputGrad(c, c.op('Mul', [dy, scale]), xhat, istd, axes) : undefined;
    const dscale = c.needs[1] ? c.unbroadcast(c.op('Mul', [dy, xhat]), scale) : undefined;
    const dbias = bias && c.needs[2] ? c.unbroadcast(dy, bias) : undefined;
    return [dx, dscale, dbias];
  },
};

export const rules: GradientRule[] = [batchNormalization, layerNormalization];
