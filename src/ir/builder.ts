/**
 * GraphBuilder: adds nodes, initializers and values to a Graph with names that are unique across the graph and
 * its subgraphs. Passes and model builders use it so that generated names never collide with existing ones.
 */
import { DataType } from '../onnx/dtype.js';
import { AttributeType, type TypeProto } from '../onnx/proto.js';
import type { TensorStorage } from '../tensor.js';
import { type Attribute, type AttributeValue, type Graph, Node, type ValueInfo } from './graph.js';
import { Tensor } from './tensor.js';

export type AttrInput = number | number[] | string | string[] | Tensor | Graph | Graph[] | Attribute;

export class GraphBuilder {
  private readonly used: Set<string>;
  private readonly counters = new Map<string, number>();

  constructor(readonly graph: Graph) {
    this.used = graph.allNames();
  }

  /** A name not used anywhere in the graph (including subgraphs), derived from `base`. */
  uniqueName(base: string): string {
    if (!this.used.has(base)) {
      this.used.add(base);
      return base;
    }
    let i = this.counters.get(base) ?? 1;
    while (this.used.has(`${base}_${i}`)) i++;
    this.counters.set(base, i + 1);
    const name = `${base}_${i}`;
    this.used.add(name);
    return name;
  }

  /** Reserves a name chosen elsewhere so that later unique names avoid it. */
  reserve(name: string): void {
    this.used.add(name);
  }

  /** Adds an initializer with a unique name and returns that name. */
  initializer(base: string, dtype: DataType, dims: number[], data: TensorStorage): string {
    const name = this.uniqueName(base);
    const t = new Tensor(name, dtype, dims, data);
    this.graph.addInitializer(t);
    return name;
  }

  /** Float32 initializer from values. */
  floats(base: string, dims: number[], values: ArrayLike<number>): string {
    return this.initializer(base, DataType.FLOAT, dims, Float32Array.from(values));
  }

  /** Int64 initializer from values. */
  int64s(base: string, dims: number[], values: ArrayLike<number | bigint>): string {
    return this.initializer(
      base,
      DataType.INT64,
      dims,
      BigInt64Array.from(Array.from(values, (v) => BigInt(v))),
    );
  }

  /**
   * Adds a node. `outputs` may be a number (that many fresh output names derived from the node name) or
   * explicit names. Returns the node; its outputs are `node.outputs`.
   */
  node(
    opType: string,
    inputs: string[],
    options: {
      outputs?: number | string[];
      name?: string;
      domain?: string;
      attrs?: Record<string, AttrInput>;
      /** Insert before this index in graph.nodes (default: append). */
      at?: number;
    } = {},
  ): Node {
    const name = this.uniqueName(options.name ?? opType);
    const outs = options.outputs ?? 1;
    const outputs =
      typeof outs === 'number'
        ? Array.from({ length: outs }, (_, i) =>
            this.uniqueName(outs === 1 ? `${name}_out` : `${name}_out${i}`),
          )
        : outs.map((o) => {
            this.reserve(o);
            return o;
          });
    const attributes = Object.entries(options.attrs ?? {}).map(([k, v]) => makeAttribute(k, v));
    const n = new Node(opType, inputs, outputs, attributes, name, options.domain ?? '');
    if (options.at === undefined) this.graph.nodes.push(n);
    else this.graph.nodes.splice(options.at, 0, n);
    return n;
  }

  /** Shorthand: adds a single-output node and returns its output name. */
  op(opType: string, inputs: string[], attrs?: Record<string, AttrInput>, name?: string): string {
    return this.node(opType, inputs, { attrs, name }).outputs[0];
  }
}

/** Makes an attribute from a JS value, inferring its ONNX type. Integers vs floats: use `floatAttr` for floats. */
export function makeAttribute(name: string, v: AttrInput): Attribute {
  if (typeof v === 'object' && v !== null && 'type' in v && 'name' in v && !(v instanceof Tensor)) {
    return { ...(v as Attribute), name };
  }
  const enc = new TextEncoder();
  let type: AttributeType;
  let value: AttributeValue;
  if (typeof v === 'number') {
    type = Number.isInteger(v) ? AttributeType.INT : AttributeType.FLOAT;
    value = v;
  } else if (typeof v === 'string') {
    type = AttributeType.STRING;
    value = enc.encode(v);
  } else if (v instanceof Tensor) {
    type = AttributeType.TENSOR;
    value = v;
  } else if (Array.isArray(v)) {
    if (v.length > 0 && typeof v[0] === 'string') {
      type = AttributeType.STRINGS;
      value = (v as string[]).map((s) => enc.encode(s));
    } else if (v.length > 0 && typeof v[0] === 'object') {
      type = AttributeType.GRAPHS;
      value = v as Graph[];
    } else {
      const nums = v as number[];
      type = nums.every(Number.isInteger) ? AttributeType.INTS : AttributeType.FLOATS;
      value = nums;
    }
  } else {
    type = AttributeType.GRAPH;
    value = v as Graph;
  }
  return { name, type, value };
}

/** A FLOAT attribute even for integral values (e.g. alpha = 1). */
export function floatAttr(name: string, v: number): Attribute {
  return { name, type: AttributeType.FLOAT, value: v };
}

/** A FLOATS attribute even for integral values. */
export function floatsAttr(name: string, v: number[]): Attribute {
  return { name, type: AttributeType.FLOATS, value: v };
}

/** A tensor TypeProto with a shape whose dims are numbers (static), strings (symbolic) or null (unknown). */
export function tensorType(elemType: DataType, shape?: (number | string | null)[]): TypeProto {
  const t: TypeProto = { tensor_type: { elem_type: elemType } };
  if (shape) {
    t.tensor_type!.shape = {
      dim: shape.map((d) =>
        typeof d === 'number' ? { dim_value: d } : typeof d === 'string' ? { dim_param: d } : {},
      ),
    };
  }
  return t;
}

export function valueInfo(name: string, elemType: DataType, shape?: (number | string | null)[]): ValueInfo {
  return { name, type: tensorType(elemType, shape) };
}
