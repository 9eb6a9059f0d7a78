/**
 * The JSON builder spec: a model described as data, which `qnnx train` accepts in place of an .onnx file.
 *
 * ```json
 * {
 *   "input": [1, 28, 28],
 *   "layers": [
 *     {"conv2d": {"filters": 32, "kernel": 3, "padding": 1}}, {"batchNorm": {}}, "relu", {"maxPool": {"kernel": 2}},
 *     "flatten", {"dense": {"units": 10}}
 *   ]
 * }
 * ```
 *
 * Top-level keys: `input` (per-sample shape, batch axis excluded; required), `layers` (required), and optional
 * `inputType` ('float32' | 'int64'), `inputName` ('input'), `outputName` ('logits'), `seed` (0), `init`
 * ('torch' | 'he' | 'xavier'), `description` (free text). A layer is `{"<type>": {options}}`, or just `"<type>"`
 * when it takes no options. Every error is E_USAGE and names the layer: `layers[3] (dense): 'units' is required`.
 */
import { QnnxError } from '../../errors.js';
import { INIT_SCHEMES, type InitScheme } from './init.js';
import { LAYERS, type LayerSpec, type LayerType, layerHelp } from './layers.js';
import { type BuiltModel, checkLayer, type SequentialOptions, sequential } from './sequential.js';

export interface BuilderSpec {
  input: number[];
  layers: LayerSpec[];
  inputType?: 'float32' | 'int64';
  inputName?: string;
  outputName?: string;
  seed?: number;
  init?: InitScheme;
  description?: string;
}

const TOP_KEYS = ['input', 'layers', 'inputType', 'inputName', 'outputName', 'seed', 'init', 'description'];

function usage(file: string | undefined, message: string): QnnxError {
  return new QnnxError('E_USAGE', file ? `${file}: ${message}` : message, file ? { file } : {});
}

/** Parses the text of a spec file (JSON). */
export function parseBuilderSpecText(text: string, file?: string): BuilderSpec {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw usage(file, `not valid JSON (${(e as Error).message})`);
  }
  return parseBuilderSpec(json, file);
}

/** Checks a parsed JSON value and converts it to a BuilderSpec (layers in their typed `{type, ...}` form). */
export function parseBuilderSpec(json: unknown, file?: string): BuilderSpec {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw usage(file, 'a builder spec is a JSON object with "input" and "layers"');
  }
  const o = json as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!TOP_KEYS.includes(k)) throw usage(file, `unknown key '${k}' (known: ${TOP_KEYS.join(', ')})`);
  }
  const input = o.input;
  if (!Array.isArray(input) || input.length === 0 || !input.every((d) => Number.isInteger(d) && d > 0)) {
    throw usage(
      file,
      `"input" must be the per-sample shape as a list of positive integers, batch axis excluded (e.g. [1, 28, 28]), got ${JSON.stringify(input)}`,
    );
  }
  if (!Array.isArray(o.layers) || o.layers.length === 0) {
    throw usage(file, '"layers" must be a non-empty list of layers');
  }
  const spec: BuilderSpec = { input: input as number[], layers: [] };
  if (o.inputType !== undefined) {
    if (o.inputType !== 'float32' && o.inputType !== 'int64') {
      throw usage(file, `"inputType" must be "float32" or "int64", got ${JSON.stringify(o.inputType)}`);
    }
    spec.inputType = o.inputType;
  }
  for (const k of ['inputName', 'outputName', 'description'] as const) {
    if (o[k] === undefined) continue;
    if (typeof o[k] !== 'string' || (k !== 'description' && o[k] === '')) {
      throw usage(file, `"${k}" must be a non-empty string, got ${JSON.stringify(o[k])}`);
    }
    spec[k] = o[k] as string;
  }
  if (o.seed !== undefined) {
    if (!Number.isInteger(o.seed) || (o.seed as number) < 0 || (o.seed as number) > 0xffffffff) {
      throw usage(file, `"seed" must be an integer in [0, 2^32), got ${JSON.stringify(o.seed)}`);
    }
    spec.seed = o.seed as number;
  }
  if (o.init !== undefined) {
    if (!INIT_SCHEMES.includes(o.init as InitScheme)) {
      throw usage(file, `"init" must be one of ${INIT_SCHEMES.join(', ')}, got ${JSON.stringify(o.init)}`);
    }
    spec.init = o.init as InitScheme;
  }
  try {
    spec.layers = o.layers.map((l, i) => toLayer(l, `layers[${i}]`));
  } catch (e) {
    if (e instanceof QnnxError && file) throw e.withFile(file);
    throw e;
  }
  return spec;
}

function toLayer(l: unknown, where: string): LayerSpec {
  let type: string;
  let options: unknown;
  if (typeof l === 'string') {
    type = l;
    options = {};
  } else if (typeof l === 'object' && l !== null && !Array.isArray(l)) {
    const keys = Object.keys(l);
    if (keys.length !== 1) {
      throw new QnnxError(
        'E_USAGE',
        `${where}: a layer is an object with exactly one key, the layer type (e.g. {"dense": {"units": 10}}), got ${keys.length ? `keys ${keys.join(', ')}` : 'an empty object'}`,
      );
    }
    type = keys[0];
    options = (l as Record<string, unknown>)[type];
  } else {
    throw new QnnxError(
      'E_USAGE',
      `${where}: a layer is "<type>" or {"<type>": {options}}, got ${JSON.stringify(l)}`,
    );
  }
  if (!(type in LAYERS)) {
    throw new QnnxError(
      'E_USAGE',
      `${where}: unknown layer '${type}' (known: ${Object.keys(LAYERS).join(', ')})`,
    );
  }
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new QnnxError(
      'E_USAGE',
      `${where} (${type}): the options must be an object (use {} for none), got ${JSON.stringify(options)}`,
    );
  }
  if ('type' in options) throw new QnnxError('E_USAGE', `${where} (${type}): unknown option 'type'`);
  const layer = { type: type as LayerType, ...(options as Record<string, unknown>) } as Record<
    string,
    unknown
  >;
  if (type === 'residual' && Array.isArray(layer.layers)) {
    layer.layers = (layer.layers as unknown[]).map((inner, j) => toLayer(inner, `${where}.layers[${j}]`));
  }
  checkLayer(layer, where);
  return layer as LayerSpec;
}

/** Builds the model a spec describes; `overrides` (e.g. the CLI's --seed) apply where the spec is silent. */
export function buildFromSpec(
  spec: BuilderSpec,
  overrides: Pick<SequentialOptions, 'seed' | 'init'> & { file?: string; specJson?: string } = {},
): BuiltModel {
  try {
    return sequential(spec.input, spec.layers, {
      seed: spec.seed ?? overrides.seed,
      init: spec.init ?? overrides.init,
      inputType: spec.inputType,
      inputName: spec.inputName,
      outputName: spec.outputName,
      specJson: overrides.specJson ?? JSON.stringify(spec),
    });
  } catch (e) {
    if (e instanceof QnnxError && overrides.file) throw e.withFile(overrides.file);
    throw e;
  }
}

/** The Fashion-MNIST example of the help text and docs (91.02 % test accuracy after 3 epochs with seed 0). */
export const FASHION_MNIST_SPEC = {
  input: [1, 28, 28],
  layers: [
    { conv2d: { filters: 32, kernel: 3, padding: 1 } },
    { batchNorm: {} },
    'relu',
    { maxPool: { kernel: 2 } },
    { conv2d: { filters: 64, kernel: 3, padding: 1 } },
    { batchNorm: {} },
    'relu',
    { maxPool: { kernel: 2 } },
    'flatten',
    { dense: { units: 128 } },
    'relu',
    { dense: { units: 10 } },
  ],
};

/** The builder spec format, for `qnnx train --help`. */
export function builderSpecHelp(): string {
  return `Builder spec (a .json file instead of an .onnx model):
  {"input": [per-sample shape, batch axis excluded], "layers": [layer, ...],
   optional: "inputType": "float32"|"int64", "inputName": "input", "outputName": "logits",
             "seed": 0, "init": "torch"|"he"|"xavier", "description": "..."}
  A layer is {"<type>": {options}} or "<type>" when it takes no options; options marked * are required.
  Parameters are named like PyTorch's nn.Sequential: "<layer index>.weight", "<index>.bias", ...
  The default init ("torch") is PyTorch's: conv/dense weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

Layers:
${layerHelp()}

Worked example: Fashion-MNIST (fashion.json)
  ${JSON.stringify(FASHION_MNIST_SPEC)}

  D=/usr/share/datasets/fashion-mnist
  qnnx train fashion.json --data $D/train-images-idx3-ubyte.gz --labels $D/train-labels-idx1-ubyte.gz \\
    --test-data $D/t10k-images-idx3-ubyte.gz --test-labels $D/t10k-labels-idx1-ubyte.gz \\
    --scale 1/255 --mean 0.2860 --std 0.3530 --epochs 3 --optimizer adam --lr 1e-3 -o fashion.onnx
  (91.02 % test accuracy after 3 epochs with seed 0; fashion.onnx takes input [N, 1, 28, 28], gives logits [N, 10])`;
}
