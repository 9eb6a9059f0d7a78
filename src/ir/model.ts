/**
 * Model: the IR's top level, and the conversions between decoded protobuf messages and the IR. Conversion keeps
 * everything (doc strings, metadata, quantization annotations, functions, training info) so that a model read
 * and written back without changes is the same model.
 */
import { QnnxError } from '../errors.js';
import { decodeModelProto, encodeModelProto } from '../onnx/codec.js';
import type {
  AttributeProto,
  FunctionProto,
  GraphProto,
  ModelProto,
  NodeProto,
  StringStringEntryProto,
  TrainingInfoProto,
  ValueInfoProto,
} from '../onnx/proto.js';
import { AttributeType, has, toBigInt, toNumber } from '../onnx/proto.js';
import { type Attribute, Graph, Node, type ValueInfo } from './graph.js';
import {
  type ExternalDataReader,
  longFromBigInt,
  type Tensor,
  type TensorToProtoOptions,
  tensorFromProto,
  tensorToProto,
} from './tensor.js';

export interface OpsetImport {
  domain: string;
  version: number;
  /** False when the file left the domain field out (written back the same way). */
  hasDomain?: boolean;
}

export class Model {
  irVersion = 10;
  opsetImports: OpsetImport[] = [{ domain: '', version: 17 }];
  producerName?: string;
  producerVersion?: string;
  domain?: string;
  modelVersion?: number;
  docString?: string;
  graph: Graph = new Graph();
  metadataProps?: StringStringEntryProto[];
  /** Kept verbatim. */
  trainingInfo: TrainingInfoProto[] = [];
  /** Model-local functions, kept verbatim (their nodes are counted by inspect). */
  functions: FunctionProto[] = [];
  /** Multi-device configuration (IR 11), kept verbatim. */
  configuration: unknown[] = [];

  /** The imported version of an operator set ('' and 'ai.onnx' are the default domain). */
  opset(domain = ''): number | undefined {
    const d = domain === 'ai.onnx' ? '' : domain;
    return this.opsetImports.find((o) => (o.domain === 'ai.onnx' ? '' : o.domain) === d)?.version;
  }

  setOpset(domain: string, version: number): void {
    const d = domain === 'ai.onnx' ? '' : domain;
    const found = this.opsetImports.find((o) => (o.domain === 'ai.onnx' ? '' : o.domain) === d);
    if (found) found.version = version;
    else this.opsetImports.push({ domain, version });
  }
}

export interface FromProtoOptions {
  readExternal?: ExternalDataReader;
  file?: string;
}

export function modelFromProto(m: ModelProto, opts: FromProtoOptions = {}): Model {
  const model = new Model();
  model.irVersion = toNumber(m.ir_version);
  model.opsetImports = (m.opset_import ?? []).map((o) => ({
    domain: o.domain ?? '',
    version: toNumber(o.version),
    ...(has(o, 'domain') ? {} : { hasDomain: false }),
  }));
  if (has(m, 'producer_name')) model.producerName = m.producer_name;
  if (has(m, 'producer_version')) model.producerVersion = m.producer_version;
  if (has(m, 'domain')) model.domain = m.domain;
  if (has(m, 'model_version')) model.modelVersion = toNumber(m.model_version);
  if (has(m, 'doc_string')) model.docString = m.doc_string;
  if (m.metadata_props?.length) model.metadataProps = m.metadata_props.map((e) => ({ ...e }));
  model.trainingInfo = m.training_info ?? [];
  model.functions = m.functions ?? [];
  model.configuration = m.configuration ?? [];
  model.graph = graphFromProto(m.graph ?? {}, opts, 'graph');
  return model;
}

function valueInfoFromProto(v: ValueInfoProto): ValueInfo {
  const out: ValueInfo = { name: v.name ?? '' };
  if (v.type) out.type = v.type;
  if (has(v, 'doc_string')) out.docString = v.doc_string;
  if (v.metadata_props?.length) out.metadataProps = v.metadata_props;
  return out;
}

function valueInfoToProto(v: ValueInfo): ValueInfoProto {
  const out: ValueInfoProto = { name: v.name };
  if (v.type) out.type = v.type;
  if (v.docString !== undefined) out.doc_string = v.docString;
  if (v.metadataProps?.length) out.metadata_props = v.metadataProps;
  return out;
}

export function graphFromProto(gp: GraphProto, opts: FromProtoOptions, path: string): Graph {
  const g = new Graph();
  g.name = gp.name ?? '';
  g.hasName = has(gp, 'name');
  if (has(gp, 'doc_string')) g.docString = gp.doc_string;
  if (gp.metadata_props?.length) g.metadataProps = gp.metadata_props;
  g.inputs = (gp.input ?? []).map(valueInfoFromProto);
  g.outputs = (gp.output ?? []).map(valueInfoFromProto);
  g.valueInfo = (gp.value_info ?? []).map(valueInfoFromProto);
  const where = (s: string) => (opts.file ? `${opts.file}: ${s}` : s);
  for (const tp of gp.initializer ?? []) {
    const t = tensorFromProto(tp, opts.readExternal, where(`initializer '${tp.name ?? ''}' of ${path}`));
    if (g.initializers.has(t.name)) {
      throw new QnnxError('E_GRAPH', where(`${path} has two initializers named '${t.name}'`), {
        tensor: t.name,
      });
    }
    g.initializers.set(t.name, t);
  }
  g.sparseInitializers = gp.sparse_initializer ?? [];
  g.quantizationAnnotation = gp.quantization_annotation ?? [];
  g.nodes = (gp.node ?? []).map((np, i) => nodeFromProto(np, opts, `${path}/node[${i}]`));
  return g;
}

function nodeFromProto(np: NodeProto, opts: FromProtoOptions, path: string): Node {
  const n = new Node(
    np.op_type ?? '',
    [...(np.input ?? [])],
    [...(np.output ?? [])],
    [],
    np.name ?? '',
    np.domain ?? '',
  );
  n.hasName = has(np, 'name');
  n.hasDomain = has(np, 'domain');
  if (has(np, 'overload')) n.overload = np.overload;
  if (has(np, 'doc_string')) n.docString = np.doc_string;
  if (np.metadata_props?.length) n.metadataProps = np.metadata_props;
  if (np.device_configurations?.length) n.deviceConfigurations = np.device_configurations;
  const label = np.name ? `${path} '${np.name}'` : path;
  n.attributes = (np.attribute ?? []).map((a) => attributeFromProto(a, opts, label));
  return n;
}

function int64Value(v: Parameters<typeof toBigInt>[0]): number | bigint {
  const b = toBigInt(v);
  return b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
}

function inferAttributeType(a: AttributeProto): AttributeType {
  if (a.type) return a.type;
  // IR version 1 models have no type discriminator: infer it from the field in use.
  if (has(a, 'f')) return AttributeType.FLOAT;
  if (has(a, 'i')) return AttributeType.INT;
  if (has(a, 's')) return AttributeType.STRING;
  if (a.t) return AttributeType.TENSOR;
  if (a.g) return AttributeType.GRAPH;
  if (a.floats?.length) return AttributeType.FLOATS;
  if (a.ints?.length) return AttributeType.INTS;
  if (a.strings?.length) return AttributeType.STRINGS;
  if (a.tensors?.length) return AttributeType.TENSORS;
  if (a.graphs?.length) return AttributeType.GRAPHS;
  return AttributeType.UNDEFINED;
}

function attributeFromProto(a: AttributeProto, opts: FromProtoOptions, nodePath: string): Attribute {
  const name = a.name ?? '';
  const type = inferAttributeType(a);
  const attr: Attribute = { name, type };
  if (has(a, 'ref_attr_name')) attr.refAttrName = a.ref_attr_name;
  if (has(a, 'doc_string')) attr.docString = a.doc_string;
  const where = `${nodePath} attribute '${name}'`;
  const tensor = (tp: NonNullable<AttributeProto['t']>) =>
    tensorFromProto(tp, opts.readExternal, opts.file ? `${opts.file}: ${where}` : where);
  switch (type) {
    case AttributeType.FLOAT:
      if (has(a, 'f')) attr.value = a.f;
      break;
    case AttributeType.INT:
      if (has(a, 'i')) attr.value = int64Value(a.i);
      break;
    case AttributeType.STRING:
      if (has(a, 's')) attr.value = a.s;
      break;
    case AttributeType.TENSOR:
      if (a.t) attr.value = tensor(a.t);
      break;
    case AttributeType.GRAPH:
      if (a.g) attr.value = graphFromProto(a.g, opts, `${nodePath}.${name}`);
      break;
    case AttributeType.SPARSE_TENSOR:
      if (a.sparse_tensor) attr.value = a.sparse_tensor;
      break;
    case AttributeType.TYPE_PROTO:
      if (a.tp) attr.value = a.tp;
      break;
    case AttributeType.FLOATS:
      attr.value = [...(a.floats ?? [])];
      break;
    case AttributeType.INTS:
      attr.value = (a.ints ?? []).map(int64Value);
      break;
    case AttributeType.STRINGS:
      attr.value = [...(a.strings ?? [])];
      break;
    case AttributeType.TENSORS:
      attr.value = (a.tensors ?? []).map(tensor);
      break;
    case AttributeType.GRAPHS:
      attr.value = (a.graphs ?? []).map((gp, i) => graphFromProto(gp, opts, `${nodePath}.${name}[${i}]`));
      break;
    case AttributeType.SPARSE_TENSORS:
      attr.value = a.sparse_tensors ?? [];
      break;
    case AttributeType.TYPE_PROTOS:
      attr.value = a.type_protos ?? [];
      break;
    default:
      throw new QnnxError('E_ATTRIBUTE', `${where}: unknown attribute type ${String(a.type)}`, {
        field: name,
      });
  }
  return attr;
}

export type ToProtoOptions = TensorToProtoOptions;

export function modelToProto(model: Model, opts: ToProtoOptions = {}): ModelProto {
  const m: ModelProto = {};
  m.ir_version = model.irVersion;
  m.opset_import = model.opsetImports.map((o) =>
    o.hasDomain === false && o.domain === ''
      ? { version: o.version }
      : { domain: o.domain, version: o.version },
  );
  if (model.producerName !== undefined) m.producer_name = model.producerName;
  if (model.producerVersion !== undefined) m.producer_version = model.producerVersion;
  if (model.domain !== undefined) m.domain = model.domain;
  if (model.modelVersion !== undefined) m.model_version = model.modelVersion;
  if (model.docString !== undefined) m.doc_string = model.docString;
  m.graph = graphToProto(model.graph, opts);
  if (model.metadataProps?.length) m.metadata_props = model.metadataProps;
  if (model.trainingInfo.length) m.training_info = model.trainingInfo;
  if (model.functions.length) m.functions = model.functions;
  if (model.configuration.length) m.configuration = model.configuration;
  return m;
}

export function graphToProto(g: Graph, opts: ToProtoOptions = {}): GraphProto {
  const gp: GraphProto = {};
  gp.node = g.nodes.map((n) => nodeToProto(n, opts));
  if (g.hasName || g.name) gp.name = g.name;
  gp.initializer = [...g.initializers.values()].map((t) => tensorToProto(t, opts));
  if (g.sparseInitializers.length) gp.sparse_initializer = g.sparseInitializers;
  if (g.docString !== undefined) gp.doc_string = g.docString;
  gp.input = g.inputs.map(valueInfoToProto);
  gp.output = g.outputs.map(valueInfoToProto);
  gp.value_info = g.valueInfo.map(valueInfoToProto);
  if (g.quantizationAnnotation.length) gp.quantization_annotation = g.quantizationAnnotation;
  if (g.metadataProps?.length) gp.metadata_props = g.metadataProps;
  return gp;
}

function nodeToProto(n: Node, opts: ToProtoOptions): NodeProto {
  const np: NodeProto = { input: n.inputs, output: n.outputs };
  if (n.hasName || n.name) np.name = n.name;
  np.op_type = n.opType;
  if (n.hasDomain || n.domain) np.domain = n.domain;
  if (n.overload !== undefined) np.overload = n.overload;
  np.attribute = n.attributes.map((a) => attributeToProto(a, opts));
  if (n.docString !== undefined) np.doc_string = n.docString;
  if (n.metadataProps?.length) np.metadata_props = n.metadataProps;
  if (n.deviceConfigurations?.length) np.device_configurations = n.deviceConfigurations;
  return np;
}

function int64ToProto(v: number | bigint) {
  return typeof v === 'bigint' ? longFromBigInt(v, false) : v;
}

function attributeToProto(a: Attribute, opts: ToProtoOptions): AttributeProto {
  const ap: AttributeProto = { name: a.name };
  if (a.refAttrName !== undefined) ap.ref_attr_name = a.refAttrName;
  if (a.docString !== undefined) ap.doc_string = a.docString;
  ap.type = a.type;
  const v = a.value;
  if (v === undefined) return ap;
  switch (a.type) {
    case AttributeType.FLOAT:
      ap.f = v as number;
      break;
    case AttributeType.INT:
      ap.i = int64ToProto(v as number | bigint);
      break;
    case AttributeType.STRING:
      ap.s = v as Uint8Array;
      break;
    case AttributeType.TENSOR:
      ap.t = tensorToProto(v as Tensor, opts);
      break;
    case AttributeType.GRAPH:
      ap.g = graphToProto(v as Graph, opts);
      break;
    case AttributeType.SPARSE_TENSOR:
      ap.sparse_tensor = v as AttributeProto['sparse_tensor'];
      break;
    case AttributeType.TYPE_PROTO:
      ap.tp = v as AttributeProto['tp'];
      break;
    case AttributeType.FLOATS:
      ap.floats = v as number[];
      break;
    case AttributeType.INTS:
      ap.ints = (v as (number | bigint)[]).map(int64ToProto);
      break;
    case AttributeType.STRINGS:
      ap.strings = v as Uint8Array[];
      break;
    case AttributeType.TENSORS:
      ap.tensors = (v as Tensor[]).map((t) => tensorToProto(t, opts));
      break;
    case AttributeType.GRAPHS:
      ap.graphs = (v as Graph[]).map((g) => graphToProto(g, opts));
      break;
    case AttributeType.SPARSE_TENSORS:
      ap.sparse_tensors = v as AttributeProto['sparse_tensors'];
      break;
    case AttributeType.TYPE_PROTOS:
      ap.type_protos = v as AttributeProto['type_protos'];
      break;
  }
  return ap;
}

/** A deep copy of a model (through its protobuf encoding: nothing is shared with the original). */
export function cloneModel(model: Model): Model {
  return modelFromProto(decodeModelProto(encodeModelProto(modelToProto(model, {})), 'model'));
}
