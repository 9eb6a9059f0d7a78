/**
 * Calibration: run the float model over sample inputs and give every activation quantizer an encoding.
 *
 * Two ways to collect statistics, measured in bench/ptq.ts and chosen by method:
 * - min/max: ReduceMin/ReduceMax nodes appended inside the graph, so each run returns two scalars per tensor
 *   instead of copying whole activations out of ONNX Runtime (the fast path);
 * - histogram methods (percentile, MSE, OCTAV, entropy): the activations are tapped as graph outputs and the
 *   analyzers stream them into fixed-size histograms, so memory stays flat however many samples are fed.
 */
import { isQnnxError, QnnxError } from '../../errors.js';
import { GraphBuilder } from '../../ir/builder.js';
import type { Model } from '../../ir/model.js';
import { DataType } from '../../onnx/dtype.js';
import type { Feeds, Runner } from '../../runtime/session.js';
import { copyModelStructure } from '../../runtime/taps.js';
import type { HostTensor } from '../../tensor.js';
import { createAnalyzer, type EncodingAnalyzer, type RangeMethod } from '../analyzers/index.js';
import type { QuantSim } from './quantsim.js';

export interface CalibrationOptions {
  method: RangeMethod;
  /** Called after each sample. */
  onProgress?: (done: number, total: number | undefined) => void;
  /** Upper bound on samples used. */
  limit?: number;
  /** Force tapping full activations even for min/max (for benchmarks). */
  forceTaps?: boolean;
}

export interface CalibrationPlan {
  /** The model to run: the float model plus statistic outputs. */
  model: Model;
  /** Tensors read from feeds directly (graph inputs). */
  fromFeeds: string[];
  mode: 'reduce' | 'taps';
}

const MIN_SUFFIX = '__qnnx_min';
const MAX_SUFFIX = '__qnnx_max';

/** The statistics model for a QuantSim's calibrated tensors. */
export function calibrationPlan(sim: QuantSim, method: RangeMethod, forceTaps = false): CalibrationPlan {
  const tensors = sim.calibratedTensors();
  const model = copyModelStructure(sim.model);
  const g = model.graph;
  const inputs = new Set(g.inputs.map((v) => v.name));
  const outputs = new Set(g.outputs.map((v) => v.name));
  const fromFeeds = tensors.filter((t) => inputs.has(t));
  const inGraph = tensors.filter((t) => !inputs.has(t));
  const reduce = (method.kind === 'minmax' || method.kind === 'moving-average') && !forceTaps;
  if (reduce) {
    const b = new GraphBuilder(g);
    for (const t of inGraph) {
      for (const [op, suffix] of [
        ['ReduceMin', MIN_SUFFIX],
        ['ReduceMax', MAX_SUFFIX],
      ] as const) {
        const out = `${t}${suffix}`;
        b.node(op, [t], { outputs: [out], attrs: { keepdims: 0 }, name: `${t}_${op}` });
        g.outputs.push({
          name: out,
          type: { tensor_type: { elem_type: DataType.FLOAT, shape: { dim: [] } } },
        });
      }
    }
  } else {
    for (const t of inGraph) {
      if (!outputs.has(t)) g.outputs.push({ name: t, type: { tensor_type: { elem_type: DataType.FLOAT } } });
    }
  }
  return { model, fromFeeds, mode: reduce ? 'reduce' : 'taps' };
}

function feedValue(feeds: Feeds, name: string): HostTensor | undefined {
  return feeds instanceof Map ? feeds.get(name) : (feeds as Record<string, HostTensor>)[name];
}

function checkFinite(x: Float32Array, tensor: string, sample: number): void {
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i])) {
      throw new QnnxError(
        'E_DATA',
        `calibration sample ${sample}: tensor '${tensor}' holds ${x[i]} at element ${i}; check the input data`,
        { tensor, sample },
      );
    }
  }
}

/**
 * Runs calibration with a runner built on `plan.model` and sets every calibrated quantizer's encoding. Returns
 * the number of samples used.
 */
export async function calibrate(
  sim: QuantSim,
  plan: CalibrationPlan,
  runner: Runner,
  samples: AsyncIterable<Feeds> | Iterable<Feeds>,
  options: CalibrationOptions,
  total?: number,
): Promise<number> {
  const tensors = sim.calibratedTensors();
  const analyzers = new Map<string, EncodingAnalyzer>();
  for (const t of tensors) analyzers.set(t, createAnalyzer(options.method, sim.quantizers.get(t)!.scheme));
  const wanted = plan.model.graph.outputs.map((o) => o.name);
  let n = 0;
  for await (const feeds of samples as AsyncIterable<Feeds>) {
    if (options.limit !== undefined && n >= options.limit) break;
    let out: Record<string, HostTensor>;
    try {
      out = await runner.run(feeds, wanted);
    } catch (e) {
      if (isQnnxError(e)) {
        throw new QnnxError(
          e.code,
          `calibration sample ${n}: ${e.message}`,
          { ...e.context, sample: n },
          { cause: e },
        );
      }
      throw e;
    }
    for (const t of tensors) {
      const a = analyzers.get(t)!;
      if (plan.fromFeeds.includes(t)) {
        const v = feedValue(feeds, t);
        if (!v) throw new QnnxError('E_DATA', `calibration sample ${n} has no input '${t}'`, { tensor: t });
        const x = v.data as Float32Array;
        checkFinite(x, t, n);
        a.observe(x, v.dims);
      } else if (plan.mode === 'reduce') {
        const lo = (out[`${t}${MIN_SUFFIX}`].data as Float32Array)[0];
        const hi = (out[`${t}${MAX_SUFFIX}`].data as Float32Array)[0];
        if (!Number.isFinite(lo) || !Number.isFinite(hi)) checkFinite(Float32Array.of(lo, hi), t, n);
        a.observe(Float32Array.of(lo, hi), [2]);
      } else {
        const v = out[t];
        const x = v.data as Float32Array;
        checkFinite(x, t, n);
        a.observe(x, v.dims);
      }
    }
    n++;
    options.onProgress?.(n, total);
  }
  if (n === 0) throw new QnnxError('E_DATA', 'no calibration samples were given');
  for (const t of tensors) sim.setEncoding(t, analyzers.get(t)!.computeEncoding());
  return n;
}
