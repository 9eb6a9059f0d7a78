/**
 * A model's census for `qnnx inspect`: IR version, opsets, producer, inputs and outputs with types and shapes,
 * op counts (subgraphs included), parameters, bytes by data type, external data and subgraph count.
 */
import { dataTypeName } from '../onnx/dtype.js';
import type { NodeProto, TypeProto } from '../onnx/proto.js';
import { AttributeType, toNumber } from '../onnx/proto.js';
import type { ValueInfo } from './graph.js';
import type { Model } from './model.js';
import type { Tensor } from './tensor.js';

export type Dim = number | string | null;

export interface ValueSummary {
  name: string;
  /** ONNX element type name (float32, int64, ...); for non-tensor types, e.g. 'sequence<float32>'. */
  dtype: string;
  /** Static dims as numbers, symbolic dims as strings, unknown dims as null; null when the rank is unknown. */
  shape: Dim[] | null;
}

export interface ExternalDataSummary {
  location: string;
  tensors: number;
  bytes: number;
}

export interface ModelSummary {
  irVersion: number;
  opsets: Record<string, number>;
  producer: { name: string; version: string };
  domain: string;
  modelVersion: number;
  docString: string;
  inputs: ValueSummary[];
  outputs: ValueSummary[];
  /** op type (prefixed `domain::` outside the default domain) → count, subgraphs included. */
  opCounts: Record<string, number>;
  nodes: number;
  /** Total elements in initializers and Constant tensors, subgraphs included. */
  parameters: number;
  initializers: number;
  /** Bytes of initializer and Constant data by element type. */
  bytesByDtype: Record<string, number>;
  externalData: ExternalDataSummary[];
  subgraphs: number;
  /** Op counts inside model-local functions (not part of opCounts). */
  functions: { name: string; domain: string; opCounts: Record<string, number> }[];
  metadata: Record<string, string>;
}

export function opKey(domain: string | undefined, opType: string): string {
  return domain && domain !== 'ai.onnx' ? `${domain}::${opType}` : opType;
}

function typeName(t: TypeProto | undefined): string {
  if (!t) return 'unknown';
  if (t.tensor_type) return dataTypeName(t.tensor_type.elem_type ?? 0);
  if (t.sparse_tensor_type) return `sparse<${dataTypeName(t.sparse_tensor_type.elem_type ?? 0)}>`;
  if (t.sequence_type) return `sequence<${typeName(t.sequence_type.elem_type)}>`;
  if (t.optional_type) return `optional<${typeName(t.optional_type.elem_type)}>`;
  if (t.map_type) return `map<${dataTypeName(t.map_type.key_type ?? 0)},${typeName(t.map_type.value_type)}>`;
  return 'unknown';
}

export function shapeOf(t: TypeProto | undefined): Dim[] | null {
  const shape = t?.tensor_type?.shape ?? t?.sparse_tensor_type?.shape;
  if (!shape) return null;
  return (shape.dim ?? []).map((d) => {
    if (d.dim_param !== undefined && d.dim_param !== null && d.dim_param !== '') return d.dim_param;
    if (d.dim_value !== undefined && d.dim_value !== null && Object.hasOwn(d, 'dim_value'))
      return toNumber(d.dim_value);
    return null;
  });
}

function summarizeValue(v: ValueInfo): ValueSummary {
  return { name: v.name, dtype: typeName(v.type), shape: shapeOf(v.type) };
}

function countFunctionNodes(nodes: NodeProto[] | undefined, counts: Record<string, number>): void {
  for (const n of nodes ?? []) {
    const k = opKey(n.domain, n.op_type ?? '');
    counts[k] = (counts[k] ?? 0) + 1;
    for (const a of n.attribute ?? []) {
      if (a.g) countFunctionNodes(a.g.node, counts);
      for (const g of a.graphs ?? []) countFunctionNodes(g.node, counts);
    }
  }
}

export function inspectModel(model: Model): ModelSummary {
  const opCounts: Record<string, number> = {};
  const bytesByDtype: Record<string, number> = {};
  const external = new Map<string, ExternalDataSummary>();
  let nodes = 0;
  let parameters = 0;
  let initializers = 0;
  let subgraphs = -1; // the main graph is not a subgraph
  const countTensor = (t: Tensor) => {
    parameters += t.size;
    const k = dataTypeName(t.dtype);
    bytesByDtype[k] = (bytesByDtype[k] ?? 0) + t.byteLength;
    if (t.storage === 'external' && t.externalInfo) {
      const e = external.get(t.externalInfo.location) ?? {
        location: t.externalInfo.location,
        tensors: 0,
        bytes: 0,
      };
      e.tensors++;
      e.bytes += t.externalInfo.length;
      external.set(e.location, e);
    }
  };
  for (const g of model.graph.allGraphs()) {
    subgraphs++;
    for (const t of g.initializers.values()) {
      initializers++;
      countTensor(t);
    }
    for (const n of g.nodes) {
      nodes++;
      const k = opKey(n.domain, n.opType);
      opCounts[k] = (opCounts[k] ?? 0) + 1;
      // Constant nodes hold parameters too (exporters often put weights there); other tensor attributes, such
      // as ConstantOfShape's fill value, are not parameters.
      if (n.opType === 'Constant' && (n.domain === '' || n.domain === 'ai.onnx')) {
        for (const a of n.attributes)
          if (a.type === AttributeType.TENSOR && a.value) countTensor(a.value as Tensor);
      }
    }
  }
  const initNames = new Set(model.graph.initializers.keys());
  const opsets: Record<string, number> = {};
  for (const o of model.opsetImports) opsets[o.domain === '' ? 'ai.onnx' : o.domain] = o.version;
  const metadata: Record<string, string> = {};
  for (const e of model.metadataProps ?? []) metadata[e.key ?? ''] = e.value ?? '';
  return {
    irVersion: model.irVersion,
    opsets,
    producer: { name: model.producerName ?? '', version: model.producerVersion ?? '' },
    domain: model.domain ?? '',
    modelVersion: model.modelVersion ?? 0,
    docString: model.docString ?? '',
    inputs: model.graph.inputs.filter((v) => !initNames.has(v.name)).map(summarizeValue),
    outputs: model.graph.outputs.map(summarizeValue),
    opCounts: sortCounts(opCounts),
    nodes,
    parameters,
    initializers,
    bytesByDtype,
    externalData: [...external.values()],
    subgraphs,
    functions: model.functions.map((f) => {
      const counts: Record<string, number> = {};
      countFunctionNodes(f.node, counts);
      return { name: f.name ?? '', domain: f.domain ?? '', opCounts: sortCounts(counts) };
    }),
    metadata,
  };
}

function sortCounts(c: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(c).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])));
}
