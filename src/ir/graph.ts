/**
 * The graph IR: nodes refer to values by name, as ONNX does; initializers are typed Tensors; subgraphs of
 * If/Loop/Scan live in node attributes as Graphs of their own. Producer and consumer maps are computed on demand
 * and are cheap to recompute after a pass.
 */
import { QnnxError } from '../errors.js';
import type {
  SparseTensorProto,
  StringStringEntryProto,
  TensorAnnotationProto,
  TypeProto,
} from '../onnx/proto.js';
import { AttributeType } from '../onnx/proto.js';
import type { Tensor } from './tensor.js';

export interface ValueInfo {
  name: string;
  type?: TypeProto;
  docString?: string;
  metadataProps?: StringStringEntryProto[];
}

export type AttributeValue =
  | number
  | bigint
  | Uint8Array
  | Tensor
  | Graph
  | SparseTensorProto
  | TypeProto
  | number[]
  | (number | bigint)[]
  | Uint8Array[]
  | Tensor[]
  | Graph[]
  | SparseTensorProto[]
  | TypeProto[];

export interface Attribute {
  name: string;
  type: AttributeType;
  value?: AttributeValue;
  /** Set when the attribute refers to an attribute of the enclosing function. */
  refAttrName?: string;
  docString?: string;
}

export class Node {
  name: string;
  opType: string;
  domain: string;
  inputs: string[];
  outputs: string[];
  attributes: Attribute[];
  overload?: string;
  docString?: string;
  metadataProps?: StringStringEntryProto[];
  /** Kept verbatim (multi-device annotations, IR 11). */
  deviceConfigurations?: unknown[];
  /** Whether `name`/`domain` were present on the wire, so unchanged models are written back identically. */
  hasName = true;
  hasDomain = true;

  constructor(
    opType: string,
    inputs: string[],
    outputs: string[],
    attributes: Attribute[] = [],
    name = '',
    domain = '',
  ) {
    this.opType = opType;
    this.inputs = inputs;
    this.outputs = outputs;
    this.attributes = attributes;
    this.name = name;
    this.domain = domain;
  }

  attr(name: string): Attribute | undefined {
    return this.attributes.find((a) => a.name === name);
  }

  /** Integer attribute as a JS number (large int64 values lose precision beyond 2^53). */
  attrInt(name: string, fallback: number): number;
  attrInt(name: string): number | undefined;
  attrInt(name: string, fallback?: number): number | undefined {
    const a = this.attr(name);
    if (!a || a.value === undefined) return fallback;
    if (a.type !== AttributeType.INT) throw attrTypeError(this, name, 'an int');
    return Number(a.value as number | bigint);
  }

  attrFloat(name: string, fallback: number): number;
  attrFloat(name: string): number | undefined;
  attrFloat(name: string, fallback?: number): number | undefined {
    const a = this.attr(name);
    if (!a || a.value === undefined) return fallback;
    if (a.type !== AttributeType.FLOAT) throw attrTypeError(this, name, 'a float');
    return a.value as number;
  }

  attrInts(name: string): number[] | undefined {
    const a = this.attr(name);
    if (!a || a.value === undefined) return undefined;
    if (a.type !== AttributeType.INTS) throw attrTypeError(this, name, 'a list of ints');
    return (a.value as (number | bigint)[]).map(Number);
  }

  attrString(name: string, fallback: string): string;
  attrString(name: string): string | undefined;
  attrString(name: string, fallback?: string): string | undefined {
    const a = this.attr(name);
    if (!a || a.value === undefined) return fallback;
    if (a.type !== AttributeType.STRING) throw attrTypeError(this, name, 'a string');
    return new TextDecoder().decode(a.value as Uint8Array);
  }

  attrTensor(name: string): Tensor | undefined {
    const a = this.attr(name);
    if (!a || a.value === undefined) return undefined;
    if (a.type !== AttributeType.TENSOR) throw attrTypeError(this, name, 'a tensor');
    return a.value as Tensor;
  }

  setAttr(name: string, type: AttributeType, value: AttributeValue): void {
    const existing = this.attr(name);
    if (existing) {
      existing.type = type;
      existing.value = value;
    } else {
      this.attributes.push({ name, type, value });
    }
  }

  removeAttr(name: string): void {
    this.attributes = this.attributes.filter((a) => a.name !== name);
  }

  /** The Graphs held in this node's attributes (If branches, Loop/Scan bodies). */
  subgraphs(): Graph[] {
    const out: Graph[] = [];
    for (const a of this.attributes) {
      if (a.type === AttributeType.GRAPH && a.value) out.push(a.value as Graph);
      else if (a.type === AttributeType.GRAPHS && a.value) out.push(...(a.value as Graph[]));
    }
    return out;
  }

  /** A label for messages: the node name, or op type and first output when unnamed. */
  label(): string {
    return this.name
      ? `'${this.name}' (${this.opType})`
      : `${this.opType} producing '${this.outputs[0] ?? ''}'`;
  }
}

function attrTypeError(node: Node, name: string, what: string): QnnxError {
  return new QnnxError('E_ATTRIBUTE', `node ${node.label()}: attribute '${name}' is not ${what}`, {
    node: node.name,
    field: name,
  });
}

export class Graph {
  name = '';
  nodes: Node[] = [];
  inputs: ValueInfo[] = [];
  outputs: ValueInfo[] = [];
  valueInfo: ValueInfo[] = [];
  initializers = new Map<string, Tensor>();
  sparseInitializers: SparseTensorProto[] = [];
  quantizationAnnotation: TensorAnnotationProto[] = [];
  docString?: string;
  metadataProps?: StringStringEntryProto[];
  hasName = true;

  initializer(name: string): Tensor | undefined {
    return this.initializers.get(name);
  }

  addInitializer(t: Tensor): Tensor {
    this.initializers.set(t.name, t);
    return t;
  }

  /** Maps each value name to the node producing it (this graph only). */
  producers(): Map<string, Node> {
    const m = new Map<string, Node>();
    for (const n of this.nodes) for (const o of n.outputs) if (o) m.set(o, n);
    return m;
  }

  /** Maps each value name to the nodes consuming it, including uses inside subgraphs of a node. */
  consumers(): Map<string, Node[]> {
    const m = new Map<string, Node[]>();
    const add = (name: string, n: Node) => {
      const l = m.get(name);
      if (l) {
        if (l[l.length - 1] !== n) l.push(n);
      } else m.set(name, [n]);
    };
    for (const n of this.nodes) {
      for (const i of n.inputs) if (i) add(i, n);
      for (const i of implicitInputs(n)) add(i, n);
    }
    return m;
  }

  /** Every value name defined in this graph: inputs, initializers and node outputs. */
  definedNames(): Set<string> {
    const s = new Set<string>();
    for (const v of this.inputs) s.add(v.name);
    for (const k of this.initializers.keys()) s.add(k);
    for (const sp of this.sparseInitializers) if (sp.values?.name) s.add(sp.values.name);
    for (const n of this.nodes) for (const o of n.outputs) if (o) s.add(o);
    return s;
  }

  /**
   * Nodes in an order where every producer precedes its consumers (stable: keeps the file order where it already
   * is valid). Throws E_GRAPH_CYCLE naming a node on the cycle.
   */
  topologicalOrder(): Node[] {
    const producers = this.producers();
    const state = new Map<Node, 1 | 2>();
    const order: Node[] = [];
    for (const root of this.nodes) {
      if (state.has(root)) continue;
      // iterative DFS over the producers of each node's inputs
      const stack: { node: Node; deps: Node[]; i: number }[] = [];
      const push = (n: Node) => {
        state.set(n, 1);
        const deps: Node[] = [];
        for (const name of [...n.inputs, ...implicitInputs(n)]) {
          const p = name ? producers.get(name) : undefined;
          if (p) deps.push(p);
        }
        stack.push({ node: n, deps, i: 0 });
      };
      push(root);
      while (stack.length) {
        const top = stack[stack.length - 1];
        if (top.i < top.deps.length) {
          const d = top.deps[top.i++];
          const s = state.get(d);
          if (s === undefined) push(d);
          else if (s === 1) {
            throw new QnnxError(
              'E_GRAPH_CYCLE',
              `graph '${this.name}' has a cycle through node ${d.label()}`,
              {
                node: d.name,
              },
            );
          }
        } else {
          state.set(top.node, 2);
          order.push(top.node);
          stack.pop();
        }
      }
    }
    return order;
  }

  /** Puts the nodes in topological order in place. */
  sort(): void {
    this.nodes = this.topologicalOrder();
  }

  /** Every graph: this one and all nested subgraphs, depth first. */
  *allGraphs(): Generator<Graph> {
    yield this;
    for (const n of this.nodes) for (const g of n.subgraphs()) yield* g.allGraphs();
  }

  /** Every node of this graph and of all nested subgraphs. */
  *allNodes(): Generator<Node> {
    for (const g of this.allGraphs()) yield* g.nodes;
  }

  /** Names used anywhere in this graph or its subgraphs (for making unique names). */
  allNames(): Set<string> {
    const s = new Set<string>();
    for (const g of this.allGraphs()) {
      for (const n of g.definedNames()) s.add(n);
      for (const n of g.nodes) {
        if (n.name) s.add(n.name);
        for (const i of n.inputs) if (i) s.add(i);
      }
      for (const o of g.outputs) s.add(o.name);
    }
    return s;
  }
}

/** Names a node uses from outer scopes through its subgraphs (If/Loop/Scan bodies). */
export function implicitInputs(node: Node): string[] {
  const subs = node.subgraphs();
  if (subs.length === 0) return [];
  const out = new Set<string>();
  for (const g of subs) for (const n of outerScopeNames(g)) out.add(n);
  return [...out];
}

/** Names referenced inside `g` (or its nested subgraphs) that `g` does not define itself. */
export function outerScopeNames(g: Graph): string[] {
  const defined = g.definedNames();
  const out = new Set<string>();
  for (const n of g.nodes) {
    for (const i of n.inputs) if (i && !defined.has(i)) out.add(i);
    for (const i of implicitInputs(n)) if (!defined.has(i)) out.add(i);
  }
  for (const o of g.outputs) if (!defined.has(o.name)) out.add(o.name);
  return [...out];
}

/** Number of nodes in a graph and all its subgraphs. */
export function graphNodeTotal(g: Graph): number {
  let n = 0;
  for (const sg of g.allGraphs()) n += sg.nodes.length;
  return n;
}
