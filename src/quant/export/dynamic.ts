/**
 * Dynamic int8 export, as ONNX Runtime's `quantize_dynamic`: every MatMul (and Gemm) whose weight is a constant
 * gets int8 weights (symmetric, narrow grid [-127, 127], per output column or per tensor) and becomes
 * `com.microsoft.DynamicQuantizeMatMul(A, B_int8 [K, N], b_scale, b_zero_point, bias?)`. The kernel quantizes
 * the activations to uint8 at run time (per tensor, from their min/max), so no calibration data is needed.
 *
 * Gemm is handled by folding its attributes: transB=1 weights are transposed to [K, N], alpha multiplies the
 * weight scales, and beta·C becomes the bias when C is a constant broadcastable to [N] (otherwise an Add follows).
 * Gemm with transA=1 is left float. The input model is not modified.
 */
import { QnnxError } from '../../errors.js';
import { GraphBuilder } from '../../ir/builder.js';
import type { Graph, Node } from '../../ir/graph.js';
import type { Model } from '../../ir/model.js';
import type { Tensor } from '../../ir/tensor.js';
import { DataType } from '../../onnx/dtype.js';
import { decodeToFloat32 } from '../../onnx/formats.js';
import { copyModelStructure } from '../../runtime/taps.js';
import { type Encoding, encodingFromRange, groupRanges, scaleDimsFor } from '../encoding.js';
import { quantize } from '../quantizer.js';
import { intScheme, type QuantScheme } from '../scheme.js';
import { matcher } from '../sim/quantsim.js';
import { constantInput, constantMatMulWeight } from './matmulnbits.js';

export interface DynamicInt8Options {
  /** One weight scale per output column (default true) or one per tensor. */
  perChannel?: boolean;
  /** Node names, op types or /regex/ patterns (matched against the node name) to leave float. */
  exclude?: string[];
  /** Op types to convert (default ['MatMul', 'Gemm']). */
  opTypes?: ('MatMul' | 'Gemm')[];
}

export interface DynamicInt8Layer {
  node: string;
  opType: string;
  K: number;
  N: number;
}

export interface DynamicInt8Result {
  model: Model;
  replaced: number;
  /** Bytes of the float weights replaced. */
  bytesBefore: number;
  /** Bytes of the int8 weights, scales and zero points that replaced them. */
  bytesAfter: number;
  layers: DynamicInt8Layer[];
  skipped: { node: string; reason: string }[];
}

/** The weight scheme: int8 symmetric narrow, per column of W [K, N] or per tensor (ORT's QInt8 weights). */
export function dynamicWeightScheme(perChannel: boolean): QuantScheme {
  return intScheme(8, {
    signed: true,
    symmetry: 'symmetric',
    narrow: true,
    granularity: perChannel ? { kind: 'channel', axis: 1 } : { kind: 'tensor' },
  });
}

/** int8 weight [K, N] and its encoding. */
export function quantizeDynamicWeight(
  w: Float32Array,
  K: number,
  N: number,
  perChannel: boolean,
): { q: Int8Array; encoding: Encoding } {
  const scheme = dynamicWeightScheme(perChannel);
  const dims = [K, N];
  const { min, max } = groupRanges(w, dims, scheme.granularity);
  const encoding = encodingFromRange(scheme, min, max, scaleDimsFor(dims, scheme.granularity));
  return { q: Int8Array.from(quantize(w, dims, encoding)), encoding };
}

function floatData(t: Tensor): Float32Array {
  return t.dtype === DataType.FLOAT ? (t.data as Float32Array) : decodeToFloat32(t.dtype, t.data, t.size);
}

/** W [K, N] from a Gemm's B ([K, N], or [N, K] with transB). */
function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c];
  return out;
}

/**
 * Replaces MatMul/Gemm nodes with constant float weights by DynamicQuantizeMatMul with int8 weights. Returns a new
 * model; the input is not modified.
 */
export function exportDynamicInt8(source: Model, options: DynamicInt8Options = {}): DynamicInt8Result {
  const perChannel = options.perChannel ?? true;
  const ops = new Set(options.opTypes ?? ['MatMul', 'Gemm']);
  for (const op of ops)
    if (op !== 'MatMul' && op !== 'Gemm')
      throw new QnnxError('E_USAGE', `dynamic int8 export cannot convert ${op}`);
  const model = copyModelStructure(source);
  const g = model.graph;
  const b = new GraphBuilder(g);
  const excluded = matcher(options.exclude) ?? (() => false);
  const producers = g.producers();
  const graphInputs = new Set(g.inputs.map((v) => v.name));
  const layers: DynamicInt8Layer[] = [];
  const skipped: { node: string; reason: string }[] = [];
  const removed = new Set<Node>();
  const replacedConstants = new Set<string>();
  const shared = new Map<string, string[]>();
  let bytesBefore = 0;
  let bytesAfter = 0;

  for (const n of [...g.nodes]) {
    if (!ops.has(n.opType as 'MatMul') || (n.domain !== '' && n.domain !== 'ai.onnx')) continue;
    const label = n.name || n.outputs[0];
    const wt = constantMatMulWeight(g, producers, graphInputs, n, excluded, skipped);
    if (!wt) continue;
    const wName = n.inputs[1];
    const isGemm = n.opType === 'Gemm';
    const transB = isGemm && n.attrInt('transB', 0) === 1;
    if (isGemm && n.attrInt('transA', 0) === 1) {
      skipped.push({ node: label, reason: 'Gemm with transA=1' });
      continue;
    }
    const K = transB ? wt.dims[1] : wt.dims[0];
    const N = transB ? wt.dims[0] : wt.dims[1];
    const alpha = isGemm ? n.attrFloat('alpha', 1) : 1;
    const beta = isGemm ? n.attrFloat('beta', 1) : 1;

    // Gemm's C: a bias [N] when constant and broadcastable along N, else an Add after the op.
    let bias: Float32Array | undefined;
    let addC: string | undefined;
    const cName = isGemm ? n.inputs[2] : undefined;
    if (cName && beta !== 0) {
      const ct = constantInput(g, producers, cName);
      const cSize = ct ? ct.size : -1;
      if (
        ct &&
        ct.dtype === DataType.FLOAT &&
        ct.dims.length <= 2 &&
        (cSize === N || cSize === 1) &&
        (ct.dims.length < 2 || ct.dims[0] === 1)
      ) {
        const c = floatData(ct);
        bias = Float32Array.from({ length: N }, (_, i) => Math.fround(beta * c[cSize === 1 ? 0 : i]));
      } else if (beta === 1) addC = cName;
      else {
        skipped.push({ node: label, reason: 'Gemm with beta ≠ 1 and a C that is not a constant [N]' });
        continue;
      }
    }

    // A weight shared by several nodes (same layout and alpha) is quantized and stored once.
    const key = `${wName}\u0000${transB}\u0000${alpha}`;
    let weightInputs = shared.get(key);
    const base = wName.replace(/[^A-Za-z0-9_.]/g, '_');
    if (!weightInputs) {
      const wf = transB ? transpose(floatData(wt), N, K) : floatData(wt);
      const { q, encoding } = quantizeDynamicWeight(wf, K, N, perChannel);
      const scale = Float32Array.from(encoding.scale, (s) => Math.fround(s * alpha));
      if (!replacedConstants.has(wName)) bytesBefore += wt.byteLength;
      replacedConstants.add(wName);
      const sDims = perChannel ? [N] : [];
      weightInputs = [
        b.initializer(`${base}_quantized`, DataType.INT8, [K, N], q),
        b.initializer(`${base}_scale`, DataType.FLOAT, sDims, scale),
        b.initializer(`${base}_zero_point`, DataType.INT8, sDims, new Int8Array(scale.length)),
      ];
      bytesAfter += q.length + scale.length * 5;
      shared.set(key, weightInputs);
    }
    const inputs = [n.inputs[0], ...weightInputs];
    if (bias) {
      inputs.push(b.initializer(`${base}_bias`, DataType.FLOAT, [N], bias));
      replacedConstants.add(cName!);
    }
    const out = n.outputs[0];
    const mmOut = addC ? b.uniqueName(`${out}_matmul`) : out;
    b.node('DynamicQuantizeMatMul', inputs, {
      outputs: [mmOut],
      name: `${n.name || base}_DynamicQuantizeMatMul`,
      domain: 'com.microsoft',
    });
    if (addC) b.node('Add', [mmOut, addC], { outputs: [out], name: `${n.name || base}_bias_Add` });
    removed.add(n);
    layers.push({ node: label, opType: n.opType, K, N });
  }

  g.nodes = g.nodes.filter((n) => !removed.has(n));
  if (layers.length && model.opset('com.microsoft') === undefined)
    model.opsetImports.push({ domain: 'com.microsoft', version: 1 });
  dropUnused(g, replacedConstants);
  g.sort();
  return { model, replaced: layers.length, bytesBefore, bytesAfter, layers, skipped };
}

/** Drops replaced constants (initializers or Constant nodes) that nothing reads any more. */
function dropUnused(g: Graph, names: Set<string>): void {
  const used = new Set<string>();
  for (const n of g.nodes) for (const i of n.inputs) used.add(i);
  for (const sub of g.nodes.flatMap((n) => n.subgraphs()))
    for (const n of sub.allNodes()) for (const i of n.inputs) used.add(i);
  for (const o of g.outputs) used.add(o.name);
  for (const v of g.inputs) used.add(v.name);
  const dead = new Set([...names].filter((n) => !used.has(n)));
  for (const name of dead) g.initializers.delete(name);
  g.nodes = g.nodes.filter((n) => n.opType !== 'Constant' || !dead.has(n.outputs[0]));
}
