/**
 * Shared helpers of the quantization rewrites: constant lookup (initializers and Constant nodes), numbers in
 * float64, per-channel broadcast of small constants, and new-initializer creation with unique names.
 */
import { GraphBuilder } from '../../ir/builder.js';
import type { Graph, Node } from '../../ir/graph.js';
import { constantNodeTensor } from '../../ir/passes/shape-inference.js';
import { Tensor } from '../../ir/tensor.js';
import { DataType } from '../../onnx/dtype.js';
import { decodeToFloat32 } from '../../onnx/formats.js';

export function isDefaultDomain(n: Node): boolean {
  return !n.domain || n.domain === 'ai.onnx';
}

export function label(n: Node): string {
  return n.name || n.outputs[0] || n.opType;
}

/** Constants of a graph: initializers that are not graph inputs, and Constant node outputs. */
export class Constants {
  private readonly map = new Map<string, Tensor>();

  constructor(readonly g: Graph) {
    const inputs = new Set(g.inputs.map((v) => v.name));
    for (const [name, t] of g.initializers) if (!inputs.has(name)) this.map.set(name, t);
    for (const n of g.nodes) {
      if (n.opType === 'Constant' && isDefaultDomain(n) && n.outputs[0]) {
        const t = constantNodeTensor(n);
        if (t) this.map.set(n.outputs[0], t);
      }
    }
  }

  get(name: string | undefined): Tensor | undefined {
    return name ? this.map.get(name) : undefined;
  }

  /** A float constant's elements as float64 (undefined when not a float constant). */
  floats(name: string | undefined): { dims: number[]; values: Float64Array } | undefined {
    const t = this.get(name);
    if (!t) return undefined;
    if (t.dtype === DataType.FLOAT || t.dtype === DataType.DOUBLE) {
      return { dims: t.dims, values: Float64Array.from(t.data as Float32Array) };
    }
    if (t.dtype === DataType.FLOAT16 || t.dtype === DataType.BFLOAT16) {
      return { dims: t.dims, values: Float64Array.from(decodeToFloat32(t.dtype, t.data, t.size)) };
    }
    return undefined;
  }

  add(t: Tensor): void {
    this.map.set(t.name, t);
  }
}

/**
 * A constant as one value per channel of a rank-`rank` NCHW-like tensor: scalar → [v] (broadcast), [C] along
 * axis 1 ([C,1,1], [1,C,1,1], ...) → C values. Undefined for any other shape.
 */
export function perChannel(
  c: { dims: number[]; values: Float64Array },
  rank: number,
): Float64Array | undefined {
  if (c.values.length === 1) return c.values;
  if (c.dims.length > rank) return undefined;
  const dims = [...Array(rank - c.dims.length).fill(1), ...c.dims];
  for (let i = 0; i < rank; i++) if (i !== 1 && dims[i] !== 1) return undefined;
  return c.values;
}

/** Value of a per-channel array at channel c (scalars broadcast). */
export function at(v: Float64Array, c: number): number {
  return v.length === 1 ? v[0]! : v[c]!;
}

/** Adds a float32 initializer with a unique name derived from `base`; returns its name. */
export function addFloats(b: GraphBuilder, base: string, dims: number[], values: ArrayLike<number>): string {
  const name = b.uniqueName(base);
  b.graph.addInitializer(new Tensor(name, DataType.FLOAT, dims, Float32Array.from(values)));
  return name;
}

export function builder(g: Graph): GraphBuilder {
  return new GraphBuilder(g);
}

/** Whether a Conv node has no padding at all (pads all zero and auto_pad NOTSET/VALID). */
export function convHasNoPadding(n: Node): boolean {
  const auto = n.attrString('auto_pad', 'NOTSET');
  if (auto !== 'NOTSET' && auto !== 'VALID') return false;
  if (auto === 'VALID') return true;
  return (n.attrInts('pads') ?? []).every((p) => p === 0);
}

/** Removes nodes whose outputs nobody reads (graph outputs and subgraph uses count), repeatedly. */
export function removeUnused(g: Graph, candidates: Iterable<Node>): number {
  const pending = new Set(candidates);
  let removed = 0;
  let changed = true;
  while (changed && pending.size) {
    changed = false;
    const consumers = g.consumers();
    const outputs = new Set(g.outputs.map((o) => o.name));
    for (const n of [...pending]) {
      if (n.outputs.some((o) => o && (outputs.has(o) || (consumers.get(o)?.length ?? 0) > 0))) continue;
      g.nodes = g.nodes.filter((m) => m !== n);
      pending.delete(n);
      removed++;
      changed = true;
    }
  }
  return removed;
}

/** Drops initializers nothing reads any more (main graph; subgraph outer-scope uses count). */
export function dropUnusedInitializers(g: Graph, names: Iterable<string>): void {
  const used = new Set<string>(g.outputs.map((o) => o.name));
  for (const n of g.allNodes()) for (const i of n.inputs) used.add(i);
  for (const name of names) if (!used.has(name)) g.initializers.delete(name);
}
