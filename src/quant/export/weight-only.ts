/**
 * Weight-only compression of Conv, ConvTranspose and Gemm weights (the MatMul side is matmulnbits.ts, whose
 * `exportWeightOnly` calls this): the float weight initializer becomes an integer initializer (int4 packed two per
 * byte, or int8) behind a standard DequantizeLinear whose output feeds the float op, so the file shrinks while the
 * graph still computes in float:
 *
 *     W_q (int4) ─┐
 *     scale ──────┴─ DequantizeLinear(axis, block_size?) ─→ Conv / ConvTranspose / Gemm (float, bias float)
 *
 * Granularity (standard ONNX, opset 21 for int4 and for blocks; opset 13 suffices for int8 per channel):
 * - `'channel'`: one scale per output channel (Conv axis 0; ConvTranspose axis 1, or axis 0 when grouped; Gemm
 *   the N axis), DequantizeLinear `axis`;
 * - `'block'`: blocks of `blockSize` along the reduction axis (Conv input channels, axis 1; ConvTranspose axis 0;
 *   Gemm K), DequantizeLinear `axis` + `block_size`. For a k×k Conv the blocks run along the input channels at
 *   each kernel position (the scale tensor is [M, ceil(C/bs), kh, kw]), so a Conv with fewer than `blockSize`
 *   input channels per group keeps per-channel scales (a block would be smaller than the channel).
 * Depthwise convs (one input channel per group) are per channel at `depthwiseBits` (default 8): their weights are
 * a few hundred bytes to a few KB per layer, and with bias correction int4 on their 9 or 25 taps per channel cost
 * PP-OCRv4 det and rec 1.4-1.5 dB of output SQNR for 0.6 % (det) / 0.3 % (rec) of the float bytes
 * (bench/weight-only.ts).
 *
 * Scales are float32, or float16 (`scaleType: 'float16'`) with the DequantizeLinear producing float16 and a Cast
 * to float32 after it; the product (q - zp) * scale is then rounded to float16 as ONNX Runtime's DequantizeLinear
 * does, and the simulation (`dequantized`) does the same, so it stays exact.
 *
 * Ranges: `'minmax'` (scale from each group's absolute maximum) or `'mse'` (per group, the clipping ratio in
 * [0.5, 1] that minimizes the squared weight error, searched on a grid of 26 ratios).
 */
import { QnnxError } from '../../errors.js';
import { GraphBuilder } from '../../ir/builder.js';
import type { Graph, Node } from '../../ir/graph.js';
import type { Model } from '../../ir/model.js';
import { constantNodeTensor } from '../../ir/passes/shape-inference.js';
import { Tensor } from '../../ir/tensor.js';
import { DataType } from '../../onnx/dtype.js';
import {
  decodeToFloat32,
  float16BitsToFloat32,
  float32ToFloat16Bits,
  packSubByte,
  roundHalfEven,
  toFloat16Array,
} from '../../onnx/formats.js';
import { AttributeType } from '../../onnx/proto.js';
import { channelMeans, type MakeRunner } from '../../ptq/bias-correction.js';
import type { Feeds } from '../../runtime/session.js';
import { type Encoding, encodingFromRange, groupIndexer, groupRanges, scaleDimsFor } from '../encoding.js';
import { dequantize, quantize } from '../quantizer.js';
import { type Granularity, intRange, intScheme, type QuantScheme, storageType } from '../scheme.js';
import type { WeightOnlyLayer, WeightOnlyResult } from './matmulnbits.js';

/** Op types whose constant weight (input 1) the weight-only export compresses. */
export type WeightOnlyOp = 'MatMul' | 'Gemm' | 'Conv' | 'ConvTranspose';
export const WEIGHT_ONLY_OPS: readonly WeightOnlyOp[] = ['MatMul', 'Gemm', 'Conv', 'ConvTranspose'];

export type WeightRange = 'minmax' | 'mse';
export type ScaleType = 'float32' | 'float16';

/** Where a weight's output channels and reduction run, and whether it is depthwise. */
export interface WeightAxes {
  /** Axis of the output channels (per-channel scales). */
  outAxis: number;
  /** Axis of the reduction (blocks), or undefined when blocking makes no sense (depthwise / grouped transpose). */
  inAxis?: number;
  depthwise: boolean;
}

/** The weight axes of a Conv / ConvTranspose / Gemm with a weight of `dims`, or undefined for other ops. */
export function weightAxes(n: Node, dims: readonly number[]): WeightAxes | undefined {
  if (n.opType === 'Conv') {
    if (dims.length < 3) return undefined;
    const group = n.attrInt('group', 1);
    const depthwise = group > 1 && dims[1] === 1;
    return { outAxis: 0, inAxis: depthwise ? undefined : 1, depthwise };
  }
  if (n.opType === 'ConvTranspose') {
    if (dims.length < 3) return undefined;
    // W [C, M/group, k...]: per output channel along axis 1 when ungrouped; grouped (depthwise) transposes keep a
    // scale per input channel (axis 0), each of which feeds only its own group.
    const group = n.attrInt('group', 1);
    if (group > 1) return { outAxis: 0, depthwise: dims[1] === 1 };
    return { outAxis: 1, inAxis: 0, depthwise: false };
  }
  if (n.opType === 'Gemm') {
    if (dims.length !== 2) return undefined;
    return n.attrInt('transB', 0)
      ? { outAxis: 0, inAxis: 1, depthwise: false }
      : { outAxis: 1, inAxis: 0, depthwise: false };
  }
  return undefined;
}

/** A weight quantized for DequantizeLinear: grid values, encoding, and what DequantizeLinear computes. */
export interface QuantizedWeight {
  dims: number[];
  encoding: Encoding;
  /** Grid values, row-major over `dims`. */
  q: Int32Array;
  /** The DequantizeLinear output as float32 (with float16 scales: rounded to float16, as ONNX Runtime does). */
  dequantized: Float32Array;
  scaleType: ScaleType;
}

/** Signed symmetric (zero point 0, full grid [-2^(b-1), 2^(b-1)-1]) or unsigned asymmetric integer scheme. */
export function weightScheme(bits: number, granularity: Granularity, symmetric: boolean): QuantScheme {
  return intScheme(bits, {
    signed: symmetric,
    symmetry: symmetric ? 'symmetric' : 'asymmetric',
    granularity,
  });
}

/** Smallest positive float16 (subnormal), the floor for float16 scales. */
const F16_MIN = 2 ** -24;

/** The smallest float16 value ≥ s (so nothing that fitted the float32 scale clips), at least 2^-24. */
function float16AtLeast(s: number): number {
  if (!(s > F16_MIN)) return F16_MIN;
  let h = float32ToFloat16Bits(s);
  if (float16BitsToFloat32(h) < s) h++;
  return float16BitsToFloat32(h);
}

function roundScales(enc: Encoding, scaleType: ScaleType): Encoding {
  if (scaleType === 'float32') return enc;
  return { ...enc, scale: Float32Array.from(enc.scale, float16AtLeast) };
}

/** Per group, the squared error of quantizing x with `enc` (integer schemes; as quantize + dequantize compute). */
function groupErrors(x: Float32Array, group: Int32Array, enc: Encoding, err: Float64Array): void {
  const { qmin, qmax } = intRange(enc.scheme.bits, enc.scheme.signed, enc.scheme.narrow);
  const scale = enc.scale;
  const zps = enc.zeroPoint;
  err.fill(0);
  for (let i = 0; i < x.length; i++) {
    const g = group[i];
    const zp = zps[g];
    const s = scale[g];
    let v = Math.fround(x[i] / s);
    if (v < qmin - zp) v = qmin - zp;
    else if (v > qmax - zp) v = qmax - zp;
    const d = x[i] - Math.fround(roundHalfEven(v) * s);
    err[g] += d * d;
  }
}

/**
 * Quantizes a float weight for DequantizeLinear under `scheme` (integer, any granularity): min/max per group, or
 * the MSE-optimal clipping ratio per group; scales rounded up to float16 when `scaleType` is 'float16'.
 */
export function quantizeWeight(
  w: Float32Array,
  dims: readonly number[],
  scheme: QuantScheme,
  options: { range?: WeightRange; scaleType?: ScaleType } = {},
): QuantizedWeight {
  if (scheme.format !== 'int') throw new QnnxError('E_USAGE', 'weight-only export needs an integer scheme');
  const range = options.range ?? 'minmax';
  const scaleType = options.scaleType ?? 'float32';
  const sDims = scaleDimsFor(dims, scheme.granularity);
  const { min, max } = groupRanges(w, dims, scheme.granularity);
  let enc = roundScales(encodingFromRange(scheme, min, max, sDims), scaleType);
  if (range === 'mse') {
    const groups = enc.scale.length;
    const best = new Float64Array(groups);
    const err = new Float64Array(groups);
    const { index } = groupIndexer(dims, scheme.granularity);
    const group = new Int32Array(w.length);
    for (let i = 0; i < w.length; i++) group[i] = index(i);
    groupErrors(w, group, enc, best);
    const scale = Float32Array.from(enc.scale);
    const zeroPoint = Int32Array.from(enc.zeroPoint);
    const lo = new Float32Array(groups);
    const hi = new Float32Array(groups);
    for (let k = 1; k <= 25; k++) {
      const r = 1 - k * 0.02;
      for (let g = 0; g < groups; g++) {
        lo[g] = min[g] * r;
        hi[g] = max[g] * r;
      }
      const cand = roundScales(encodingFromRange(scheme, lo, hi, sDims), scaleType);
      groupErrors(w, group, cand, err);
      for (let g = 0; g < groups; g++) {
        if (err[g] < best[g]) {
          best[g] = err[g];
          scale[g] = cand.scale[g];
          zeroPoint[g] = cand.zeroPoint[g];
        }
      }
    }
    enc = { ...enc, scale, zeroPoint };
  }
  const q = quantize(w, dims, enc);
  const dequantized = dequantize(q, dims, enc);
  if (scaleType === 'float16')
    for (let i = 0; i < dequantized.length; i++)
      dequantized[i] = float16BitsToFloat32(float32ToFloat16Bits(dequantized[i]));
  return { dims: [...dims], encoding: enc, q, dequantized, scaleType };
}

/** Integer grid values in the storage of `dtype`: int4/uint4 packed two per byte, int8/uint8 one per byte. */
export function storeGrid(values: Int32Array, dtype: DataType): Uint8Array | Int8Array {
  if (dtype === DataType.INT4 || dtype === DataType.UINT4)
    return packSubByte(values, 4, dtype === DataType.INT4);
  return dtype === DataType.INT8 ? Int8Array.from(values) : Uint8Array.from(values);
}

/** Names for what the export adds: short (`w3q`, `w3s`, `w3z`, `w3`) or derived from the float weight's name. */
export function weightNamer(
  b: GraphBuilder,
  short: boolean,
): (weight: string) => { q: string; s: string; z: string; out: string; node: string } {
  let i = 0;
  return (weight) => {
    if (short) {
      const k = i++;
      return { q: `w${k}q`, s: `w${k}s`, z: `w${k}z`, out: b.uniqueName(`w${k}`), node: '' };
    }
    const base = weight.replace(/[^A-Za-z0-9_.]/g, '_');
    return {
      q: `${base}_quantized`,
      s: `${base}_scale`,
      z: `${base}_zero_point`,
      out: b.uniqueName(`${base}_dequantized`),
      node: `${base}_DequantizeLinear`,
    };
  };
}

/**
 * Adds `W_q`, scale (and zero point when any is nonzero) initializers and a DequantizeLinear (plus a Cast to float
 * for float16 scales) computing the weight; returns the float32 output name and the bytes added.
 */
export function emitDequantizeLinear(
  b: GraphBuilder,
  qw: QuantizedWeight,
  names: { q: string; s: string; z: string; out: string; node: string },
): { output: string; bytes: number } {
  const enc = qw.encoding;
  const dtype = storageType(enc.scheme);
  const qName = b.initializer(names.q, dtype, qw.dims, storeGrid(qw.q, dtype));
  let bytes = b.graph.initializer(qName)!.byteLength;
  const g = enc.scheme.granularity;
  const sDims = [...enc.scaleDims];
  const f16 = qw.scaleType === 'float16';
  const sName = f16
    ? b.initializer(names.s, DataType.FLOAT16, sDims, toFloat16Array(enc.scale))
    : b.initializer(names.s, DataType.FLOAT, sDims, Float32Array.from(enc.scale));
  bytes += enc.scale.length * (f16 ? 2 : 4);
  const inputs = [qName, sName];
  if (enc.zeroPoint.some((z) => z !== 0)) {
    const z = b.initializer(names.z, dtype, sDims, storeGrid(enc.zeroPoint, dtype));
    inputs.push(z);
    bytes += b.graph.initializer(z)!.byteLength;
  }
  const attrs: Record<string, number> = {};
  if (g.kind === 'channel') attrs.axis = g.axis;
  else if (g.kind === 'block') {
    attrs.axis = g.axis;
    attrs.block_size = g.size;
  } else if (g.kind !== 'tensor')
    throw new QnnxError('E_USAGE', `weight-only export cannot store ${g.kind} granularity`);
  const dqOut = f16 ? b.uniqueName(`${names.out}h`) : names.out;
  const dq = b.node('DequantizeLinear', inputs, {
    outputs: [dqOut],
    name: names.node || undefined,
    attrs,
  });
  if (!names.node) {
    dq.name = '';
    dq.hasName = false;
  }
  if (f16) {
    const cast = b.node('Cast', [dqOut], {
      outputs: [names.out],
      name: names.node ? `${names.node}_Cast` : undefined,
      attrs: { to: DataType.FLOAT },
    });
    if (!names.node) {
      cast.name = '';
      cast.hasName = false;
    }
  }
  return { output: names.out, bytes };
}

/** A constant tensor feeding `name`: an initializer or a Constant node's value. */
function constantInput(g: Graph, producers: Map<string, Node>, name: string): Tensor | undefined {
  const init = g.initializer(name);
  if (init) return init;
  const p = producers.get(name);
  if (p && p.opType === 'Constant' && (p.domain === '' || p.domain === 'ai.onnx'))
    return constantNodeTensor(p);
  return undefined;
}

/** The signal-to-noise ratio of y against x in dB (infinite when equal). */
export function weightSqnr(x: Float32Array, y: Float32Array): number {
  let s = 0;
  let e = 0;
  for (let i = 0; i < x.length; i++) {
    s += x[i] * x[i];
    e += (x[i] - y[i]) ** 2;
  }
  return e === 0 ? Number.POSITIVE_INFINITY : 10 * Math.log10(s / e);
}

// ---------------------------------------------------------------------------------------------------------------
// Bias correction

/** What `correctWeightOnlyBias` did. */
export interface WeightOnlyBiasCorrection {
  /** Layers whose bias was corrected (a bias was added where the layer had none). */
  corrected: number;
  /** Layers left as they were, with the reason. */
  skipped: { node: string; reason: string }[];
  /** Mean |Δb| / mean |b + Δb| over the corrected layers' channels (how much the biases moved). */
  relativeShift: number;
  /**
   * Per corrected layer (WeightOnlyLayer.node): Δb per output channel, and the shape it broadcasts with against
   * the layer's output ([M, 1, 1] for a 2-D Conv, [N] for Gemm/MatMul); weightOnlySimulation adds it.
   */
  deltas: Map<string, { delta: Float32Array; dims: number[] }>;
}

/**
 * Empirical bias correction for a weight-only export (Nagel et al., "Data-Free Quantization" 4.2, with measured
 * means): rounding a layer's weight W to Ŵ shifts its expected output by (Ŵ − W)·E[x] per output channel, and on
 * small CNNs such as PP-OCR those shifts add up through the network (int4 per channel without correction keeps half
 * of PP-OCRv4 rec's time steps). E[x], the per-channel mean of each layer's input in the float model, is measured
 * once over `samples` (ReduceMean outputs appended to a copy of `source`, one ONNX Runtime pass), and each bias
 * of `result.model` becomes b + (W − Ŵ)·E[x]. Conv, ConvTranspose, Gemm (bias C of shape [N], added when absent)
 * and MatMulNBits (bias input, added when absent) are corrected; a blocked-dq MatMul only through a following Add
 * of a constant [N].
 *
 * `source` is the model given to exportWeightOnly and `result` what it returned; `result.model` is modified in
 * place (new bias tensors: the float model's tensors are shared, never written).
 */
export async function correctWeightOnlyBias(
  source: Model,
  result: WeightOnlyResult,
  samples: Iterable<Feeds> | AsyncIterable<Feeds>,
  makeRunner: MakeRunner,
): Promise<WeightOnlyBiasCorrection> {
  const sg = source.graph;
  const sProducers = sg.producers();
  const g = result.model.graph;
  const producers = g.producers();
  const consumers = g.consumers();
  const b = new GraphBuilder(g);
  const skipped: { node: string; reason: string }[] = [];
  interface Job {
    layer: WeightOnlyLayer;
    node: Node;
    w: Float32Array;
    wq: Float32Array;
    dims: number[];
    /** Δb per output channel from the input means. */
    shift: (mean: Float64Array) => Float64Array;
    channels: number;
    axis: 'first' | 'last';
    rank: number;
  }
  const jobs: Job[] = [];
  for (const layer of result.layers) {
    const wq = result.dequantized.get(layer.weight);
    const wt = constantInput(sg, sProducers, layer.weight);
    const node = producers.get(layer.output);
    if (!wq || !wt || !node) {
      skipped.push({ node: layer.node, reason: 'layer not found in the exported model' });
      continue;
    }
    const w =
      wt.dtype === DataType.FLOAT ? (wt.data as Float32Array) : decodeToFloat32(wt.dtype, wt.data, wt.size);
    const dims = [...wt.dims];
    const job = biasJob(layer, node, w, wq, dims);
    if (typeof job === 'string') skipped.push({ node: layer.node, reason: job });
    else jobs.push(job);
  }
  const deltas = new Map<string, { delta: Float32Array; dims: number[] }>();
  if (!jobs.length) return { corrected: 0, skipped, relativeShift: 0, deltas };
  const means = await channelMeans(
    source,
    jobs.map((j) => ({ tensor: j.layer.input, axis: j.axis, rank: j.rank, channels: j.channels })),
    samples,
    makeRunner,
  );
  let moved = 0;
  let total = 0;
  let corrected = 0;
  for (const j of jobs) {
    const mean = means.get(j.layer.input);
    if (!mean || mean.length !== j.channels) {
      skipped.push({ node: j.layer.node, reason: 'input mean not measured' });
      continue;
    }
    const delta = j.shift(mean);
    const r = applyBias(j, delta);
    if (typeof r === 'string') {
      skipped.push({ node: j.layer.node, reason: r });
      continue;
    }
    for (let i = 0; i < delta.length; i++) {
      moved += Math.abs(delta[i]);
      total += Math.abs(r[i]);
    }
    const conv = j.node.opType === 'Conv' || j.node.opType === 'ConvTranspose';
    deltas.set(j.layer.node, {
      delta: Float32Array.from(delta),
      dims: conv ? [delta.length, ...j.dims.slice(2).map(() => 1)] : [delta.length],
    });
    corrected++;
  }
  return { corrected, skipped, relativeShift: total > 0 ? moved / total : 0, deltas };

  function biasJob(
    layer: WeightOnlyLayer,
    node: Node,
    w: Float32Array,
    wq: Float32Array,
    dims: number[],
  ): Job | string {
    const base = { layer, node, w, wq, dims };
    const op = node.opType;
    if (op === 'Conv' || op === 'ConvTranspose') {
      const group = node.attrInt('group', 1);
      let k = 1;
      for (let i = 2; i < dims.length; i++) k *= dims[i];
      if (op === 'Conv') {
        const [M, Cg] = dims;
        const Mg = M / group;
        return {
          ...base,
          channels: Cg * group,
          axis: 'first',
          rank: dims.length,
          shift: (mean) => {
            const d = new Float64Array(M);
            for (let o = 0; o < M; o++) {
              const c0 = Math.floor(o / Mg) * Cg;
              let acc = 0;
              for (let c = 0; c < Cg; c++) {
                const m = mean[c0 + c];
                const at = (o * Cg + c) * k;
                for (let t = 0; t < k; t++) acc += (w[at + t] - wq[at + t]) * m;
              }
              d[o] = acc;
            }
            return d;
          },
        };
      }
      // ConvTranspose: W [C, M/group, k...]; input channel c feeds the outputs of its group. Each input pixel
      // spreads its k taps over prod(strides) output pixels, so the mean output moves by Σ_t ΔW / prod(strides).
      const [C, Mg] = dims;
      const Cg = C / group;
      const spread = (node.attrInts('strides') ?? []).reduce((a, s) => a * s, 1);
      return {
        ...base,
        channels: C,
        axis: 'first',
        rank: dims.length,
        shift: (mean) => {
          const d = new Float64Array(Mg * group);
          for (let c = 0; c < C; c++) {
            const o0 = Math.floor(c / Cg) * Mg;
            for (let m = 0; m < Mg; m++) {
              const at = (c * Mg + m) * k;
              let acc = 0;
              for (let t = 0; t < k; t++) acc += w[at + t] - wq[at + t];
              d[o0 + m] += (acc * mean[c]) / spread;
            }
          }
          return d;
        },
      };
    }
    if (op === 'Gemm' || op === 'MatMulNBits' || op === 'MatMul') {
      if (op === 'Gemm' && node.attrInt('transA', 0)) return 'Gemm with transA';
      const transB = op === 'Gemm' && node.attrInt('transB', 0) === 1;
      const [K, N] = transB ? [dims[1], dims[0]] : dims;
      const alpha = op === 'Gemm' ? node.attrFloat('alpha', 1) : 1;
      return {
        ...base,
        channels: K,
        axis: 'last',
        rank: 2,
        shift: (mean) => {
          const d = new Float64Array(N);
          for (let k = 0; k < K; k++) {
            const m = mean[k];
            for (let n = 0; n < N; n++) {
              const i = transB ? n * K + k : k * N + n;
              d[n] += (w[i] - wq[i]) * m;
            }
          }
          if (alpha !== 1) for (let n = 0; n < N; n++) d[n] *= alpha;
          return d;
        },
      };
    }
    return `no bias correction for ${op}`;
  }

  /** Adds delta to the layer's bias (creating it when absent); returns the new bias, or why it could not. */
  function applyBias(j: Job, delta: Float64Array): Float32Array | string {
    const n = j.node;
    const N = delta.length;
    let index: number;
    let scale = 1;
    let target = n;
    if (n.opType === 'Conv' || n.opType === 'ConvTranspose') index = 2;
    else if (n.opType === 'Gemm') {
      index = 2;
      const beta = n.attrFloat('beta', 1);
      if (!n.inputs[2]) n.setAttr('beta', AttributeType.FLOAT, 1);
      else if (beta === 0) return 'Gemm with beta 0';
      else scale = 1 / beta;
    } else if (n.opType === 'MatMulNBits') index = 5;
    else {
      // blocked-dq MatMul: through a single following Add of a constant [N]
      const out = n.outputs[0];
      const cs = consumers.get(out) ?? [];
      if (cs.length !== 1 || cs[0].opType !== 'Add') return 'MatMul without a following bias Add';
      target = cs[0];
      index = target.inputs[0] === out ? 1 : 0;
    }
    const name = target.inputs[index];
    let old: Float32Array | undefined;
    if (name) {
      const t = constantInput(g, producers, name);
      if (
        !t ||
        t.dtype !== DataType.FLOAT ||
        t.size !== N ||
        (t.dims.length !== 1 && !(t.dims.length === 2 && t.dims[0] === 1))
      )
        return 'bias is not a constant float [N] vector';
      old = t.data as Float32Array;
    } else if (target.opType === 'Add') return 'MatMul without a following bias Add';
    const nb = new Float32Array(N);
    for (let i = 0; i < N; i++) nb[i] = (old ? old[i] : 0) + delta[i] * scale;
    const dims = name ? [...constantInput(g, producers, name)!.dims] : [N];
    const uses = name ? g.nodes.filter((m) => m.inputs.includes(name)).length : 0;
    if (name && g.initializer(name) && uses === 1 && !g.inputs.some((v) => v.name === name)) {
      g.initializers.set(name, new Tensor(name, DataType.FLOAT, dims, nb));
    } else {
      const fresh = b.initializer(
        name ? `${name}_c` : `b${result.layers.indexOf(j.layer)}`,
        DataType.FLOAT,
        dims,
        nb,
      );
      while (target.inputs.length <= index) target.inputs.push('');
      target.inputs[index] = fresh;
    }
    return nb;
  }
}
