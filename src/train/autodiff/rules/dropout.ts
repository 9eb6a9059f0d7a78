/**
 * Dropout. From opset 12 the ratio and training_mode are inputs: the trainer feeds training_mode = true to the
 * training graph (and false, or leaves it out, for evaluation), so one graph serves both. In training mode
 * y = mask · x / (1 − ratio) and dX = Where(mask, dY / (1 − ratio), 0), read from the node's mask output, which
 * `prepare` requests. Without training_mode (or with a constant false) Dropout is the identity and so is its
 * gradient. Opsets before 12 have no training mode in ONNX Runtime: Dropout is the identity there.
 */
import type { Node } from '../../../ir/graph.js';
import { DataType } from '../../../onnx/dtype.js';
import type { GradContext, GradientRule } from '../rule.js';
import { constantValues } from './elementwise.js';
import { floatTypeOf } from './shape.js';

function trainingInput(node: Node): string | undefined {
  return node.inputs[2] || undefined;
}

export const rules: GradientRule[] = [
  {
    op: 'Dropout',
    prepare(node, { b, opset }) {
      if (opset < 12 || !trainingInput(node)) return;
      if (!node.outputs[1]) {
        node.outputs[1] = b.uniqueName(`${node.outputs[0]}_mask`);
      }
    },
    grad(ctx: GradContext) {
      if (!ctx.needs[0]) return [];
      const n = ctx.node;
      const d = ctx.dY[0]!;
      const training = trainingInput(n);
      if (ctx.opset < 12 || !training) return [d];
      const tm = constantValues(ctx, training);
      if (tm && !tm[0]) return [d];
      const x = n.inputs[0];
      const type = floatTypeOf(ctx, x);
      // Scale 1 / (1 − ratio) (ratio 0.5 by default) in x's type, with 1 − ratio computed in float32 first as
      // ONNX Runtime's kernel does (also for float64 data), so that dX uses exactly the forward's factor.
      const ratio = n.inputs[1] || undefined;
      const rv = ratio ? constantValues(ctx, ratio) : [0.5];
      let scale: string;
      if (rv) {
        const s = 1 / Math.fround(1 - Math.fround(rv[0]));
        scale = ctx.constant([type === DataType.DOUBLE ? s : Math.fround(s)], [], x);
      } else {
        const r = ctx.op('Cast', [ratio!], { to: DataType.FLOAT });
        let keep = ctx.op('Sub', [ctx.constant([1], []), r]);
        if (type !== DataType.FLOAT) keep = ctx.op('Cast', [keep], { to: type });
        scale = ctx.op('Div', [ctx.constant([1], [], x), keep]);
      }
      if (!tm) {
        // training_mode fed at run time: the forward ignores the ratio when it is false.
        const bool =
          ctx.elemType(training) === DataType.BOOL
            ? training
            : ctx.op('Cast', [training], { to: DataType.BOOL });
        scale = ctx.op('Where', [bool, scale, ctx.constant([1], [], x)]);
      }
      const zero = ctx.constant([0], [], x);
      return [ctx.op('Where', [n.outputs[1], ctx.op('Mul', [d, scale]), zero])];
    },
  },
];
