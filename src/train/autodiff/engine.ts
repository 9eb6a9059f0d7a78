/**
 * Reverse-mode autodiff over an ONNX graph, emitting the backward pass as standard ONNX nodes in the same graph
 * (so ONNX Runtime runs forward and backward in one session). As small as tinygrad's gradient.py: find the nodes
 * on a path from the parameters to the loss, walk them in reverse topological order, call each op's rule, and
 * add gradients that meet.
 */
import { QnnxError } from '../../errors.js';
import { GraphBuilder } from '../../ir/builder.js';
import type { Node } from '../../ir/graph.js';
import { opKey } from '../../ir/inspect.js';
import type { Model } from '../../ir/model.js';
import { type Dim, inferTypes, type TypeTable } from '../../ir/passes/shape-inference.js';
import { Tensor } from '../../ir/tensor.js';
import { DataType, isFloatType } from '../../onnx/dtype.js';
import { ruleFor } from './registry.js';
import type { GradContext } from './rule.js';

export interface GradientOptions {
  /** Name of the scalar loss value. */
  loss: string;
  /** Values to differentiate with respect to (initializers or graph inputs). */
  wrt: string[];
  /** Static input shapes for shape inference (e.g. the training batch shape). */
  inputShapes?: Record<string, Dim[]>;
}

export interface GradientResult {
  /** wrt name → name of its gradient in the graph. */
  gradients: Map<string, string>;
  /** Forward nodes differentiated. */
  nodes: number;
}

/** Adds gradient nodes for `loss` with respect to `wrt` to the model's main graph, in place. */
export function addGradients(model: Model, options: GradientOptions): GradientResult {
  const g = model.graph;
  const b = new GraphBuilder(g);
  const opset = model.opset('') ?? 0;
  const order = g.topologicalOrder();
  const producers = g.producers();
  if (!g.definedNames().has(options.loss)) {
    throw new QnnxError('E_GRADIENT', `the loss '${options.loss}' is not a value of the graph`, {
      tensor: options.loss,
    });
  }
  // Values that depend on a parameter. Only float values carry gradients: Shape, Size, comparisons, ArgMax and
  // casts to integers end the dependence (their outputs are constant almost everywhere).
  const before = inferTypes(model, {
    inputShapes: options.inputShapes as Record<string, (number | string)[]>,
  });
  const differentiable = (v: string) => {
    const t = before.get(v)?.elemType;
    return t === undefined || isFloatType(t);
  };
  const requires = new Set(options.wrt);
  for (const n of order) {
    if (n.inputs.some((i) => requires.has(i)))
      for (const o of n.outputs) if (o && differentiable(o)) requires.add(o);
  }
  if (!requires.has(options.loss)) {
    throw new QnnxError(
      'E_GRADIENT',
      `the loss '${options.loss}' does not depend on any of the parameters given`,
    );
  }
  // Nodes that feed the loss and depend on a parameter.
  const onPath = new Set<Node>();
  const work = [options.loss];
  const seen = new Set(work);
  while (work.length) {
    const p = producers.get(work.pop()!);
    if (!p || onPath.has(p) || !p.outputs.some((o) => requires.has(o))) continue;
    onPath.add(p);
    for (const i of p.inputs) {
      if (i && requires.has(i) && !seen.has(i)) {
        seen.add(i);
        work.push(i);
      }
    }
  }
  // Rules may change forward nodes (extra outputs, training mode) before shapes are inferred.
  const path = order.filter((n) => onPath.has(n));
  for (const n of path) {
    if (n.subgraphs().length) {
      throw new QnnxError(
        'E_GRADIENT',
        `node ${n.label()}: control flow (${n.opType}) on the path to the loss is not differentiable here`,
        { node: n.name },
      );
    }
    const rule = ruleFor(opKey(n.domain, n.opType));
    if (!rule) {
      throw new QnnxError(
        'E_GRADIENT',
        `node ${n.label()}: op ${opKey(n.domain, n.opType)} has no gradient rule`,
        { node: n.name },
      );
    }
    rule.prepare?.(n, { b, opset });
  }
  const types = inferTypes(model, {
    inputShapes: options.inputShapes as Record<string, (number | string)[]>,
  });
  const grads = new Map<string, string[]>();
  const one =
    types.get(options.loss)?.elemType === DataType.DOUBLE
      ? b.initializer('loss_grad_seed', DataType.DOUBLE, [], Float64Array.of(1))
      : b.floats('loss_grad_seed', [], [1]);
  grads.set(options.loss, [one]);
  const total = (name: string): string | undefined => {
    const parts = grads.get(name);
    if (!parts?.length) return undefined;
    if (parts.length === 1) return parts[0];
    const s = b.op('Sum', parts, undefined, `${name}_grad_sum`);
    grads.set(name, [s]);
    return s;
  };
  const shapeCache = new Map<string, string>();
  for (const n of [...path].reverse()) {
    const dY = n.outputs.map((o) => (o ? total(o) : undefined));
    if (dY.every((d) => d === undefined)) continue;
    const needs = n.inputs.map((i) => !!i && requires.has(i));
    const ctx = makeContext(b, n, dY, needs, types, opset, shapeCache);
    const out = ruleFor(opKey(n.domain, n.opType))!.grad(ctx);
    n.inputs.forEach((input, k) => {
      const d = out[k];
      if (d && needs[k]) {
        const l = grads.get(input);
        if (l) l.push(d);
        else grads.set(input, [d]);
      }
    });
  }
  const gradients = new Map<string, string>();
  for (const p of options.wrt) {
    let d = total(p);
    if (!d) {
      // A parameter the loss does not reach: its gradient is zero.
      // A parameter the loss does not reach: its gradient is zero (ConstantOfShape, not p·0, which would be
      // -0 or NaN for some p).
      const t = types.get(p)?.elemType === DataType.DOUBLE ? DataType.DOUBLE : DataType.FLOAT;
      const fill = new Tensor(
        `${p}_zero`,
        t,
        [1],
        t === DataType.DOUBLE ? new Float64Array(1) : new Float32Array(1),
      );
      const shape = b.op('Shape', [p], undefined, `${p}_grad_shape`);
      d = b.node('ConstantOfShape', [shape], { name: `${p}_grad_zero`, attrs: { value: fill } }).outputs[0];
    }
    gradients.set(p, d);
  }
  return { gradients, nodes: path.length };
}

function makeContext(
  b: GraphBuilder,
  node: Node,
  dY: (string | undefined)[],
  needs: boolean[],
  types: TypeTable,
  opset: number,
  shapeCache: Map<string, string>,
): GradContext {
  const ctx: GradContext = {
    b,
    node,
    dY,
    needs,
    types,
    opset,
    shape: (name) => types.get(name)?.shape,
    staticShape(name) {
      const s = types.get(name)?.shape;
      if (!s || s.some((d) => typeof d !== 'number')) {
        throw new QnnxError(
          'E_SHAPE',
          `node ${node.label()}: the gradient needs a static shape for '${name}' (got ${JSON.stringify(s ?? null)}); give the training input shapes`,
          { node: node.name, tensor: name },
        );
      }
      return s as number[];
    },
    elemType: (name) => types.get(name)?.elemType,
    shapeOf(name) {
      let s = shapeCache.get(name);
      if (!s) {
        s = b.op('Shape', [name], undefined, `${name}_shape`);
        shapeCache.set(name, s);
      }
      return s;
    },
    op: (opType, inputs, attrs) => b.op(opType, inputs, attrs, `${node.name || node.opType}_grad_${opType}`),
    constant: (values, dims = [], like) => {
      const base = `${node.name || node.opType}_grad_const`;
      if (like && types.get(like)?.elemType === DataType.DOUBLE) {
        return b.initializer(base, DataType.DOUBLE, dims, Float64Array.from(values));
      }
      return b.floats(base, dims, values);
    },
    int64s: (values, dims) =>
      b.int64s(`${node.name || node.opType}_grad_i64`, dims ?? [values.length], values),
    unbroadcast(dx, input) {
      const xs = types.get(input)?.shape;
      const ys = types.get(node.outputs[0])?.shape;
      if (!xs || !ys) {
        // Unknown ranks: reduce dynamically is not possible in plain ONNX without shapes; demand them.
        ctx.staticShape(xs ? node.outputs[0] : input);
      }
      const xr = xs!;
      const yr = ys!;
      const lead = yr.length - xr.length;
      const axes: number[] = [];
      for (let i = 0; i < yr.length; i++) {
        const xd = i < lead ? 1 : xr[i - lead];
        const yd = yr[i];
        if (i < lead || (xd === 1 && yd !== 1)) axes.push(i);
      }
      if (axes.length === 0) return dx;
      let r: string;
      if (opset >= 13) r = ctx.op('ReduceSum', [dx, ctx.int64s(axes)], { keepdims: 1 });
      else r = ctx.op('ReduceSum', [dx], { axes, keepdims: 1 });
      if (lead === 0) return r;
      return ctx.op('Reshape', [r, ctx.shapeOf(input)]);
    },
  };
  return ctx;
}
