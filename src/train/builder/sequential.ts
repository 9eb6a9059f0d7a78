/**
 * `sequential(inputShape, layers)`: builds an inference ONNX model (opset 18, IR 10) from a list of layers, with
 * a dynamic batch axis 'N', initial weights from a seeded PyTorch-style initialisation, and a summary of every
 * layer's shapes and parameters. The model is the same kind of model a user would load from a file: training
 * turns it into a training graph, and the trained weights are written back into it.
 */
import { QnnxError } from '../../errors.js';
import { type AttrInput, GraphBuilder, valueInfo } from '../../ir/builder.js';
import { Model } from '../../ir/model.js';
import { DataType } from '../../onnx/dtype.js';
import { INIT_SCHEMES, type InitScheme, initValues } from './init.js';
import {
  checkLayerOptions,
  DATA_TYPE_OF_FLOW,
  type Flow,
  LAYERS,
  type LayerContext,
  type LayerSpec,
  type LayerSummary,
  type LayerType,
  type ParamInfo,
} from './layers.js';

export const BUILDER_OPSET = 18;

export interface SequentialOptions {
  /** Seed of the weight initialisation (default 0). */
  seed?: number;
  /** Initialisation scheme (default 'torch': PyTorch's defaults). */
  init?: InitScheme;
  /** Element type of the input: 'float32' (default) or 'int64' (token ids for an embedding layer). */
  inputType?: 'float32' | 'int64';
  /** Graph input name (default 'input'). */
  inputName?: string;
  /** Graph output name (default 'logits'). */
  outputName?: string;
  /** Graph name (default 'qnnx_sequential'). */
  name?: string;
  /** Stored in the model's metadata as `qnnx.builder_spec` (the CLI passes the JSON spec it was given). */
  specJson?: string;
}

export interface BuiltModel {
  model: Model;
  inputName: string;
  outputName: string;
  /** Per-sample input shape (batch axis excluded). */
  inputShape: number[];
  inputType: 'float32' | 'int64';
  /** Per-sample output shape (batch axis excluded). */
  outputShape: number[];
  /** Trainable parameters and buffers (BatchNorm running statistics), in creation order. */
  params: ParamInfo[];
  layers: LayerSummary[];
  /** Number of trainable parameter elements. */
  paramCount: number;
}

const KNOWN_TYPES = Object.keys(LAYERS) as LayerType[];

function usage(message: string): QnnxError {
  return new QnnxError('E_USAGE', message);
}

/** Checks that a value is a layer spec object with a known type and valid options. */
export function checkLayer(layer: unknown, where: string): asserts layer is LayerSpec {
  if (typeof layer !== 'object' || layer === null || Array.isArray(layer)) {
    throw usage(`${where}: a layer must be an object, got ${JSON.stringify(layer)}`);
  }
  const type = (layer as { type?: unknown }).type;
  if (typeof type !== 'string' || !(type in LAYERS)) {
    throw usage(`${where}: unknown layer '${String(type)}' (known: ${KNOWN_TYPES.join(', ')})`);
  }
  checkLayerOptions(type as LayerType, layer as Record<string, unknown>, where);
  if (type === 'residual') {
    (layer as { layers: unknown[] }).layers.forEach((l, j) => {
      checkLayer(l, `${where}.layers[${j}]`);
    });
  }
}

/** Builds the model. Every problem is an E_USAGE error naming the layer (`layers[3] (dense): ...`). */
export function sequential(
  inputShape: readonly number[],
  layers: readonly LayerSpec[],
  options: SequentialOptions = {},
): BuiltModel {
  if (
    !Array.isArray(inputShape) ||
    inputShape.length === 0 ||
    !inputShape.every((d) => Number.isInteger(d) && d > 0)
  ) {
    throw usage(
      `the input shape must be a non-empty list of positive integers (batch axis excluded), got ${JSON.stringify(inputShape)}`,
    );
  }
  if (!Array.isArray(layers) || layers.length === 0) throw usage('the model needs at least one layer');
  layers.forEach((l, i) => {
    checkLayer(l, `layers[${i}]`);
  });
  const init = options.init ?? 'torch';
  if (!INIT_SCHEMES.includes(init)) throw usage(`unknown init '${init}' (known: ${INIT_SCHEMES.join(', ')})`);
  const seed = options.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff)
    throw usage(`the seed must be an integer in [0, 2^32), got ${seed}`);
  const inputType = options.inputType ?? 'float32';
  if (inputType !== 'float32' && inputType !== 'int64')
    throw usage(`inputType must be 'float32' or 'int64', got '${inputType}'`);
  const inputName = options.inputName ?? 'input';
  const outputName = options.outputName ?? 'logits';
  if (inputName === outputName) throw usage(`the input and output names must differ (both '${inputName}')`);

  const model = new Model();
  model.irVersion = 10;
  model.opsetImports = [{ domain: '', version: BUILDER_OPSET }];
  model.producerName = 'qnnx';
  model.producerVersion = '0.1.0';
  const g = model.graph;
  g.name = options.name ?? 'qnnx_sequential';
  const b = new GraphBuilder(g);
  b.reserve(inputName);
  b.reserve(outputName);
  g.inputs.push(valueInfo(inputName, DATA_TYPE_OF_FLOW[inputType], ['N', ...inputShape]));

  const params: ParamInfo[] = [];
  const summaries: LayerSummary[] = [];
  const usedPrefixes = new Set<string>();

  const buildList = (list: readonly LayerSpec[], x0: Flow, parent: string, parentWhere: string): Flow => {
    let x = x0;
    list.forEach((layer, i) => {
      const where = `${parentWhere}${parentWhere ? '.' : ''}layers[${i}]`;
      const defaultPrefix = parent ? `${parent}.${i}` : `${i}`;
      const prefix = 'name' in layer && layer.name ? layer.name : defaultPrefix;
      if (usedPrefixes.has(prefix))
        throw usage(`${where} (${layer.type}): the name '${prefix}' is already used`);
      usedPrefixes.add(prefix);
      const before = params.length;
      const ctx = layerContext(b, prefix, `${where} (${layer.type})`, init, seed, params);
      const inputShapeHere = x.shape;
      x = LAYERS[layer.type].build(layer, x, ctx, (inner, xi, p) => buildList(inner, xi, p, where));
      const own = params.slice(before).filter((p) => p.kind === 'parameter');
      summaries.push({
        where,
        type: layer.type,
        name: prefix,
        inputShape: inputShapeHere,
        outputShape: x.shape,
        params: own.reduce((a, p) => a + p.dims.reduce((m, d) => m * d, 1), 0),
      });
    });
    return x;
  };

  const out = buildList(layers, { value: inputName, shape: [...inputShape], dtype: inputType }, '', '');
  if (out.dtype !== 'float32')
    throw usage('the model output must be float (an embedding layer needs layers after it)');
  // Name the last value after the graph output.
  const producer = g.nodes.find((n) => n.outputs.includes(out.value));
  if (!producer) throw usage('the model needs at least one layer that computes something');
  producer.outputs = producer.outputs.map((o) => (o === out.value ? outputName : o));
  g.outputs.push(valueInfo(outputName, DataType.FLOAT, ['N', ...out.shape]));
  if (options.specJson !== undefined) {
    model.metadataProps = [{ key: 'qnnx.builder_spec', value: options.specJson }];
  }
  model.docString = `Built by qnnx's model builder: input '${inputName}' [N, ${inputShape.join(', ')}], output '${outputName}' [N, ${out.shape.join(', ')}].`;
  // Summaries of nested layers were pushed before their parent's; order them by position in the spec.
  summaries.sort((a, c) => compareWhere(a.where, c.where));
  const paramCount = params
    .filter((p) => p.kind === 'parameter')
    .reduce((a, p) => a + p.dims.reduce((m, d) => m * d, 1), 0);
  return {
    model,
    inputName,
    outputName,
    inputShape: [...inputShape],
    inputType,
    outputShape: out.shape,
    params,
    layers: summaries,
    paramCount,
  };
}

function compareWhere(a: string, c: string): number {
  const na = [...a.matchAll(/\[(\d+)\]/g)].map((m) => Number(m[1]));
  const nc = [...c.matchAll(/\[(\d+)\]/g)].map((m) => Number(m[1]));
  for (let i = 0; i < Math.min(na.length, nc.length); i++) if (na[i] !== nc[i]) return na[i] - nc[i];
  return na.length - nc.length;
}

function layerContext(
  b: GraphBuilder,
  prefix: string,
  where: string,
  init: InitScheme,
  seed: number,
  params: ParamInfo[],
): LayerContext {
  return {
    b,
    prefix,
    where,
    init,
    seed,
    params,
    param(suffix, dims, role, kind = 'parameter') {
      const base = `${prefix}.${suffix}`;
      if (b.graph.initializer(base)) throw usage(`${where}: parameter '${base}' is defined twice`);
      const count = dims.reduce((a, d) => a * d, 1);
      const name = b.initializer(base, DataType.FLOAT, dims, initValues(init, role, count, seed, base));
      params.push({ name, dims, kind, layer: where.replace(/ \(.*\)$/, '') });
      return name;
    },
    op(opType, inputs, attrs) {
      const out = b.uniqueName(`${prefix}.${opType.toLowerCase()}`);
      b.node(opType, inputs, {
        name: `${prefix}.${opType}`,
        outputs: [out],
        attrs: attrs as Record<string, AttrInput>,
      });
      return out;
    },
    floats(suffix, dims, values) {
      return b.floats(`${prefix}.${suffix}`, dims, values);
    },
    int64s(suffix, values) {
      return b.int64s(`${prefix}.${suffix}`, [values.length], values);
    },
    error(message) {
      return usage(`${where}: ${message}`);
    },
  };
}
