/**
 * Taps: intermediate values of a model exposed as extra graph outputs, so one run returns them (calibration,
 * per-layer comparison). The tapped model is a structural copy (new Model, Graph, Node and list objects) that
 * shares tensors with the original; the original model is not modified.
 *
 * Costs, measured with onnxruntime-node 1.30 (docs in research B.5/A.5): every exposed value is copied out of
 * ORT after each run and blocks fusions on it (Conv+Relu stay separate; QDQ stays unfused), so tap in chunks of
 * layers rather than every value of a large model at once.
 */
import { QnnxError } from '../errors.js';
import { Graph, Node, type ValueInfo } from '../ir/graph.js';
import { Model } from '../ir/model.js';
import { elemTypeOf, recordElementTypes } from './value-types.js';

export interface TapOptions {
  /**
   * What to do with a value whose element type cannot be found: `'error'` (default) throws E_GRAPH naming it;
   * `'untyped'` declares the output without a type. ONNX requires output types, so such a model is not valid
   * ONNX, but onnxruntime-node 1.30 accepts it and infers the type (verified).
   */
  unknownType?: 'error' | 'untyped';
}

function copyNode(n: Node): Node {
  const c = new Node(
    n.opType,
    [...n.inputs],
    [...n.outputs],
    n.attributes.map((a) => ({ ...a })),
    n.name,
    n.domain,
  );
  c.overload = n.overload;
  c.docString = n.docString;
  c.metadataProps = n.metadataProps;
  c.deviceConfigurations = n.deviceConfigurations;
  c.hasName = n.hasName;
  c.hasDomain = n.hasDomain;
  return c;
}

/** A copy of the graph's structure: new node and list objects; tensors and subgraphs are shared. */
function copyGraph(g: Graph): Graph {
  const c = new Graph();
  c.name = g.name;
  c.hasName = g.hasName;
  c.docString = g.docString;
  c.metadataProps = g.metadataProps;
  c.nodes = g.nodes.map(copyNode);
  c.inputs = g.inputs.map((v) => ({ ...v }));
  c.outputs = g.outputs.map((v) => ({ ...v }));
  c.valueInfo = g.valueInfo.map((v) => ({ ...v }));
  c.initializers = new Map(g.initializers);
  c.sparseInitializers = [...g.sparseInitializers];
  c.quantizationAnnotation = [...g.quantizationAnnotation];
  return c;
}

/** A copy of the model's structure sharing its tensors (see copyGraph). */
export function copyModelStructure(model: Model): Model {
  const m = new Model();
  m.irVersion = model.irVersion;
  m.opsetImports = model.opsetImports.map((o) => ({ ...o }));
  m.producerName = model.producerName;
  m.producerVersion = model.producerVersion;
  m.domain = model.domain;
  m.modelVersion = model.modelVersion;
  m.docString = model.docString;
  m.metadataProps = model.metadataProps;
  m.trainingInfo = [...model.trainingInfo];
  m.functions = [...model.functions];
  m.configuration = [...model.configuration];
  m.graph = copyGraph(model.graph);
  return m;
}

function subgraphOwner(model: Model, name: string): Node | undefined {
  for (const n of model.graph.nodes) {
    for (const sub of n.subgraphs()) {
      for (const g of sub.allGraphs()) if (g.definedNames().has(name)) return n;
    }
  }
  return undefined;
}

/**
 * A copy of `model` whose graph also outputs the values `names` (main-graph values: node outputs, inputs or
 * initializers). Names already among the outputs are kept once. Throws E_GRAPH for a name the main graph does not
 * define (naming the node when it lives inside a subgraph) and, unless `unknownType: 'untyped'`, for a value
 * whose element type is unknown.
 */
export function addTaps(model: Model, names: readonly string[], options: TapOptions = {}): Model {
  const g = model.graph;
  const defined = g.definedNames();
  const outputs = new Set(g.outputs.map((o) => o.name));
  const wanted: string[] = [];
  for (const name of names) {
    if (outputs.has(name) || wanted.includes(name)) continue;
    if (!name || !defined.has(name)) {
      const owner = name ? subgraphOwner(model, name) : undefined;
      const where = owner
        ? `: it is internal to a subgraph of node ${owner.label()}; only main-graph values`
        : '';
      throw new QnnxError(
        'E_GRAPH',
        `cannot tap '${name}'${where || ': the main graph defines no value of that name; only its node outputs, inputs and initializers'} can be tapped`,
        { tensor: name, ...(owner ? { node: owner.name } : {}) },
      );
    }
    wanted.push(name);
  }
  const tapped = copyModelStructure(model);
  if (wanted.length === 0) return tapped;
  const declared = new Map<string, ValueInfo>();
  for (const v of [...g.valueInfo, ...g.inputs]) if (!declared.has(v.name)) declared.set(v.name, v);
  const types = recordElementTypes(g);
  for (const name of wanted) {
    const info = declared.get(name);
    const t = elemTypeOf(info?.type) ?? types.get(name);
    if (t !== undefined) {
      // keep the declared type (with its shape) when it is a tensor type, else declare the element type only
      const type =
        elemTypeOf(info?.type) === t && info?.type?.tensor_type
          ? info.type
          : { tensor_type: { elem_type: t } };
      tapped.graph.outputs.push({ name, type });
    } else if (options.unknownType === 'untyped') {
      tapped.graph.outputs.push({ name });
    } else {
      const producer = g.producers().get(name);
      throw new QnnxError(
        'E_GRAPH',
        `cannot tap '${name}': its element type is unknown (produced by node ${producer ? producer.label() : '?'}, ` +
          'with no value_info and no type rule); add value_info for it or run shape inference first',
        { tensor: name, ...(producer ? { node: producer.name } : {}) },
      );
    }
  }
  return tapped;
}

/**
 * The names that can be tapped: outputs of the main graph's nodes (in topological order), excluding values that
 * are already graph outputs and values internal to subgraphs. `filter` can narrow them, e.g.
 * `(name, node) => node.opType === 'Conv'`.
 */
export function tapAll(model: Model, filter?: (name: string, node: Node) => boolean): string[] {
  const g = model.graph;
  const outputs = new Set(g.outputs.map((o) => o.name));
  const out: string[] = [];
  let order: Node[];
  try {
    order = g.topologicalOrder();
  } catch {
    order = g.nodes;
  }
  for (const n of order) {
    for (const o of n.outputs) {
      if (!o || outputs.has(o)) continue;
      if (filter && !filter(o, n)) continue;
      out.push(o);
    }
  }
  return out;
}
