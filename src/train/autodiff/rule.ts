/**
 * Gradient rules, in the style of tfjs-core's `gradients/*_grad.ts`: one small record per op type that emits the
 * backward ONNX nodes for that op and nothing else. Rules are registered in one table (registry.ts); the engine
 * (engine.ts) walks the graph backwards and calls them.
 */
import { QnnxError } from '../../errors.js';
import type { AttrInput, GraphBuilder } from '../../ir/builder.js';
import type { Node } from '../../ir/graph.js';
import type { Dim, TypeTable } from '../../ir/passes/shape-inference.js';
import type { DataType } from '../../onnx/dtype.js';

export interface GradContext {
  /** Adds nodes and initializers to the training graph, with unique names. */
  readonly b: GraphBuilder;
  /** The forward node being differentiated (rules may add outputs to it in `prepare`). */
  readonly node: Node;
  /** Upstream gradient for each of the node's outputs; undefined where no gradient flows. */
  readonly dY: (string | undefined)[];
  /** Which inputs need a gradient (parameters, or values on the way to one). */
  readonly needs: boolean[];
  /** Static types from shape inference on the forward graph (dims may be symbolic strings or null). */
  readonly types: TypeTable;
  /** Default-domain opset of the training graph. */
  readonly opset: number;
  /** Shape of a forward value: numbers, symbolic strings or null (unknown); undefined when the rank is unknown. */
  shape(name: string): Dim[] | undefined;
  /** A static shape, or an E_SHAPE error naming the value and this node. */
  staticShape(name: string): number[];
  elemType(name: string): DataType | undefined;
  /** A `Shape` node's output for a forward value (one per value, cached). */
  shapeOf(name: string): string;
  /** Shorthand for a single-output node. */
  op(opType: string, inputs: string[], attrs?: Record<string, AttrInput>): string;
  /** A float constant (scalar when dims is []), float64 when `like` names a float64 value, else float32. */
  constant(values: ArrayLike<number>, dims?: number[], like?: string): string;
  /** An int64 constant. */
  int64s(values: ArrayLike<number>, dims?: number[]): string;
  /** Sums `dx` over the axes along which `input` was broadcast to produce `dx`'s shape, then reshapes to it. */
  unbroadcast(dx: string, input: string): string;
}

export interface GradientRule {
  /** Op type, prefixed `domain::` outside the default domain. */
  op: string;
  /**
   * Optional change to the forward node before differentiation, e.g. request MaxPool's Indices output or turn
   * BatchNormalization into training mode. Called once, before the backward walk.
   */
  prepare?(node: Node, ctx: Pick<GradContext, 'b' | 'opset'>): void;
  /** Gradient for each input (undefined where none flows or none is needed). */
  grad(ctx: GradContext): (string | undefined)[];
}

export function noGradient(node: Node, what: string): QnnxError {
  return new QnnxError('E_GRADIENT', `node ${node.label()}: ${what}`, { node: node.name });
}
