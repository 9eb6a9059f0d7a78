/**
 * Layer-by-layer data for the PTQ weight optimizers (AdaRound, sequential MSE), as AIMET gathers it: the layers
 * are visited in topological order, and each one sees
 * - x̃, its input in the *quantized-so-far* model: the float model with every quantized weight replaced by its
 *   quantized value (the layers already optimized with their final values, the others rounded to nearest) and
 *   activation quantizers off, as AIMET's AdaRound and sequential MSE run it;
 * - the float model's value of a tensor (AdaRound's target f(W·x): the layer output, after its activation).
 *
 * Two ONNX Runtime sessions serve all layers: the quantized-so-far model, whose optimized weights are graph inputs
 * (so updating a weight is a new feed, not a new session), and the float model; both expose the values needed
 * as taps. Every request runs the samples through the whole model, so a pass over L layers costs about 2·L·N
 * forward runs, and the cache holds one layer's data at a time.
 *
 * Memory bound: the samples (model inputs) are kept, at most `maxSamples` of them (default 256), and one layer's
 * stacked data (inputs plus targets, float32) is at most `maxBytes` (default 256 MiB): a layer with larger
 * activations uses its first floor(maxBytes / bytes per sample) samples only.
 */
import { QnnxError } from '../errors.js';
import type { Node } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { Tensor } from '../ir/tensor.js';
import { DataType } from '../onnx/dtype.js';
import { decodeToFloat32 } from '../onnx/formats.js';
import { fakeQuantize } from '../quant/quantizer.js';
import type { Quantizer, QuantSim } from '../quant/sim/quantsim.js';
import { type Feeds, feedEntries, type Runner } from '../runtime/session.js';
import { addTaps, copyModelStructure } from '../runtime/taps.js';
import type { HostTensor } from '../tensor.js';

export type MakeRunner = (model: Model) => Promise<Runner & { release?: () => Promise<void> }>;

/** The activation that follows a layer and enters its reconstruction loss. */
export type LayerActivation = { kind: 'relu' } | { kind: 'clip'; min: number; max: number };

/** A Conv, Gemm or MatMul whose constant weight has an integer weight quantizer with an encoding. */
export interface WeightedLayer {
  node: Node;
  /** Node name, or its first output when unnamed. */
  name: string;
  weight: string;
  quantizer: Quantizer;
  /** The value the layer reads its input from. */
  input: string;
  /** Bias initializer (Conv/Gemm input 2), if any. */
  bias?: string;
  /** Relu or Clip that is the only consumer of the layer's output. */
  activation?: LayerActivation;
  /** The layer's output after `activation` (the value AdaRound reconstructs). */
  target: string;
  /** Axis of the layer output that holds output channels (1 for Conv/Gemm, the last for MatMul). */
  outputChannelAxis: number | 'last';
}

export interface SkippedLayer {
  node: string;
  reason: string;
}

/** Float32 data of several samples concatenated along axis 0. */
export interface Stacked {
  data: Float32Array;
  dims: number[];
  /** Samples (model runs) it holds. */
  samples: number;
}

export interface LayerCacheOptions {
  /** Most samples kept and used (default 256). */
  maxSamples?: number;
  /** Most bytes of one layer's stacked data (default 256 MiB); larger layers use fewer samples. */
  maxBytes?: number;
}

export const DEFAULT_MAX_SAMPLES = 256;
export const DEFAULT_MAX_BYTES = 256 * 2 ** 20;

function nodeLabel(n: Node): string {
  return n.name || n.outputs[0] || n.opType;
}

function scalarOf(model: Model, name: string | undefined, fallback: number): number | undefined {
  if (!name) return fallback;
  const t = model.graph.initializer(name);
  if (t?.size !== 1) return undefined;
  return (t.dtype === DataType.FLOAT ? (t.data as Float32Array) : decodeToFloat32(t.dtype, t.data, 1))[0];
}

/**
 * The layers AdaRound and sequential MSE can optimize, in topological order, and the weighted layers they leave
 * alone with the reason. `filter` narrows the layers further (e.g. by name).
 */
export function weightedLayers(
  sim: QuantSim,
  filter?: (layer: WeightedLayer) => boolean,
): { layers: WeightedLayer[]; skipped: SkippedLayer[] } {
  const model = sim.model;
  const g = model.graph;
  const consumers = g.consumers();
  const outputs = new Set(g.outputs.map((o) => o.name));
  const layers: WeightedLayer[] = [];
  const skipped: SkippedLayer[] = [];
  for (const n of g.topologicalOrder()) {
    if (n.opType !== 'Conv' && n.opType !== 'Gemm' && n.opType !== 'MatMul') continue;
    if (n.domain !== '' && n.domain !== 'ai.onnx') continue;
    const name = nodeLabel(n);
    const wName = n.inputs[1];
    const q = wName ? sim.quantizers.get(wName) : undefined;
    const w = wName ? g.initializer(wName) : undefined;
    const skip = (reason: string) => skipped.push({ node: name, reason });
    if (q?.kind !== 'weight' || !w) {
      skip('weight not quantized');
      continue;
    }
    if (!q.enabled || !q.encoding) {
      skip('weight quantizer disabled or without encoding');
      continue;
    }
    if (q.scheme.format !== 'int') {
      skip(`${q.scheme.format} weights (integer grids only)`);
      continue;
    }
    if (w.dtype !== DataType.FLOAT) {
      skip('weight is not float32');
      continue;
    }
    if ((consumers.get(wName) ?? []).length !== 1) {
      skip('weight shared by several nodes');
      continue;
    }
    if (!n.inputs[0] || g.initializer(n.inputs[0])) {
      skip('input is a constant');
      continue;
    }
    if (n.opType === 'Conv' && w.dims.length < 3) {
      skip('Conv weight of rank < 3');
      continue;
    }
    if (n.opType === 'Gemm' && n.attrInt('transA', 0) !== 0) {
      skip('Gemm with transA');
      continue;
    }
    if (n.opType === 'MatMul' && w.dims.length !== 2) {
      skip('MatMul weight is not 2-D');
      continue;
    }
    const bias = n.opType !== 'MatMul' ? n.inputs[2] || undefined : undefined;
    if (bias && !g.initializer(bias)) {
      skip('bias is not a constant');
      continue;
    }
    const out = n.outputs[0];
    let activation: LayerActivation | undefined;
    let target = out;
    const cs = consumers.get(out) ?? [];
    if (cs.length === 1 && !outputs.has(out) && cs[0].inputs[0] === out) {
      const a = cs[0];
      if (a.opType === 'Relu') activation = { kind: 'relu' };
      else if (a.opType === 'Clip') {
        const min =
          model.opset('')! >= 11 ? scalarOf(model, a.inputs[1], -Infinity) : a.attrFloat('min', -Infinity);
        const max =
          model.opset('')! >= 11 ? scalarOf(model, a.inputs[2], Infinity) : a.attrFloat('max', Infinity);
        if (min !== undefined && max !== undefined) activation = { kind: 'clip', min, max };
      }
      if (activation) target = a.outputs[0];
    }
    const layer: WeightedLayer = {
      node: n,
      name,
      weight: wName,
      quantizer: q,
      input: n.inputs[0],
      bias,
      activation,
      target,
      outputChannelAxis: n.opType === 'MatMul' ? 'last' : 1,
    };
    if (filter && !filter(layer)) {
      skip('not selected');
      continue;
    }
    layers.push(layer);
  }
  return { layers, skipped };
}

/** Float32 data of an initializer. */
export function floatData(t: Tensor): Float32Array {
  return t.dtype === DataType.FLOAT ? (t.data as Float32Array) : decodeToFloat32(t.dtype, t.data, t.size);
}

/** Replaces an initializer's data with a new Tensor object (models sharing the old one keep it). */
export function replaceInitializer(model: Model, name: string, data: Float32Array): void {
  const old = model.graph.initializer(name);
  if (!old) throw new QnnxError('E_GRAPH', `no initializer '${name}'`, { tensor: name });
  model.graph.initializers.set(name, new Tensor(name, DataType.FLOAT, [...old.dims], data));
}

/** Reads up to `limit` samples into memory. */
export async function collectSamples(
  samples: AsyncIterable<Feeds> | Iterable<Feeds>,
  limit: number,
): Promise<Feeds[]> {
  const out: Feeds[] = [];
  if (limit <= 0) return out;
  for await (const s of samples as AsyncIterable<Feeds>) {
    out.push(s);
    if (out.length >= limit) break;
  }
  if (out.length === 0) throw new QnnxError('E_DATA', 'no calibration samples were given');
  return out;
}

/**
 * The two sessions and the samples. Create with `LayerCache.create`, set weights as layers are optimized, and
 * `release` at the end.
 */
export class LayerCache {
  /** Current weights fed to the quantized-so-far model, by weight name. */
  private readonly weights = new Map<string, HostTensor>();

  private constructor(
    readonly samples: readonly Feeds[],
    private readonly quantized: Runner & { release?: () => Promise<void> },
    private readonly float: (Runner & { release?: () => Promise<void> }) | undefined,
    private readonly maxBytes: number,
  ) {}

  /**
   * Builds the quantized-so-far model of `sim.model` (the weights of `layers` as graph inputs, starting at their
   * nearest-rounded values; every other quantized weight rounded to nearest) and, unless `float: false`, the
   * float model `reference` (by default `sim.model` as it is now), with taps on the layers' inputs and targets.
   */
  static async create(
    sim: QuantSim,
    layers: readonly WeightedLayer[],
    samples: AsyncIterable<Feeds> | Iterable<Feeds>,
    makeRunner: MakeRunner,
    options: LayerCacheOptions & { reference?: Model; float?: boolean } = {},
  ): Promise<LayerCache> {
    const kept = await collectSamples(samples, options.maxSamples ?? DEFAULT_MAX_SAMPLES);
    const reference = options.reference ?? sim.model;
    const qm = copyModelStructure(sim.model);
    const g = qm.graph;
    const optimized = new Set(layers.map((l) => l.weight));
    const weights = new Map<string, HostTensor>();
    for (const q of sim.quantizers.values()) {
      if (q.kind !== 'weight' || !q.enabled || !q.encoding) continue;
      const t = g.initializer(q.tensor);
      if (!t) continue;
      const wq = fakeQuantize(floatData(t), t.dims, q.encoding);
      if (optimized.has(q.tensor)) {
        g.initializers.delete(q.tensor);
        g.inputs.push({
          name: q.tensor,
          type: {
            tensor_type: { elem_type: DataType.FLOAT, shape: { dim: t.dims.map((d) => ({ dim_value: d })) } },
          },
        });
        weights.set(q.tensor, { dtype: DataType.FLOAT, dims: [...t.dims], data: wq });
      } else g.initializers.set(q.tensor, new Tensor(q.tensor, DataType.FLOAT, [...t.dims], wq));
    }
    const inputs = new Set(g.inputs.map((v) => v.name));
    const quantizedTaps = [...new Set(layers.map((l) => l.input))].filter((v) => !inputs.has(v));
    const floatTaps = [...new Set(layers.map((l) => l.target))];
    const quantized = await makeRunner(addTaps(qm, quantizedTaps));
    let float: (Runner & { release?: () => Promise<void> }) | undefined;
    try {
      if (options.float ?? true) float = await makeRunner(addTaps(reference, floatTaps));
    } catch (e) {
      await quantized.release?.();
      throw e;
    }
    const cache = new LayerCache(kept, quantized, float, options.maxBytes ?? DEFAULT_MAX_BYTES);
    for (const [k, v] of weights) cache.weights.set(k, v);
    return cache;
  }

  /** Sets the value the quantized-so-far model uses for a layer's weight from now on. */
  setWeight(layer: WeightedLayer, values: Float32Array): void {
    const cur = this.weights.get(layer.weight);
    if (!cur) throw new QnnxError('E_USAGE', `weight '${layer.weight}' is not an input of the cache`);
    this.weights.set(layer.weight, { dtype: DataType.FLOAT, dims: cur.dims, data: values });
  }

  private feeds(i: number, withWeights: boolean): Record<string, HostTensor> {
    const f: Record<string, HostTensor> = {};
    for (const [k, v] of feedEntries(this.samples[i])) f[k] = v;
    if (withWeights) for (const [k, v] of this.weights) f[k] = v;
    return f;
  }

  private async value(which: 'quantized' | 'float', name: string, i: number): Promise<HostTensor> {
    const own = feedEntries(this.samples[i]).find(([k]) => k === name);
    if (own) return own[1];
    const runner = which === 'quantized' ? this.quantized : this.float;
    if (!runner) throw new QnnxError('E_USAGE', 'the layer cache was created without the float model');
    const r = await runner.run(this.feeds(i, which === 'quantized'), [name]);
    return r[name];
  }

  /**
   * For each of `names` (source, value name), the samples' values stacked along axis 0, for as many samples as
   * fit in `maxBytes` together (all requests share the sample count).
   */
  async stack(requests: readonly { from: 'quantized' | 'float'; name: string }[]): Promise<Stacked[]> {
    const first = await Promise.all(requests.map((r) => this.value(r.from, r.name, 0)));
    const perSample = first.reduce((a, t) => a + t.data.length * 4, 0);
    const n = Math.max(1, Math.min(this.samples.length, Math.floor(this.maxBytes / Math.max(1, perSample))));
    const out = first.map((t) => {
      if (t.dtype !== DataType.FLOAT) {
        throw new QnnxError('E_DTYPE', `layer data '${requests[0].name}' is not float32`, {
          tensor: requests[0].name,
        });
      }
      const dims = [...t.dims];
      if (dims.length === 0) dims.push(1);
      const data = new Float32Array(t.data.length * n);
      data.set(t.data as Float32Array, 0);
      return { data, dims: [dims[0] * n, ...dims.slice(1)], samples: n, row: t.data.length, lead: dims };
    });
    for (let i = 1; i < n; i++) {
      for (let k = 0; k < requests.length; k++) {
        const t = await this.value(requests[k].from, requests[k].name, i);
        const o = out[k];
        const same =
          t.data.length === o.row && (t.dims.length === 0 || t.dims.every((d, j) => d === o.lead[j]));
        if (!same) {
          throw new QnnxError(
            'E_DATA',
            `sample ${i}: '${requests[k].name}' has dims [${t.dims.join(', ')}], sample 0 has ` +
              `[${o.lead.join(', ')}]; layer-wise weight optimization needs samples of one shape`,
            { tensor: requests[k].name, sample: i },
          );
        }
        o.data.set(t.data as Float32Array, i * o.row);
      }
    }
    return out.map(({ data, dims, samples }) => ({ data, dims, samples }));
  }

  async release(): Promise<void> {
    await Promise.allSettled([this.quantized.release?.(), this.float?.release?.()]);
  }
}
