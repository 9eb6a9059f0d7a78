/**
 * Weight-only export: MatMuls with a constant 2-D weight W [K, N] get 4- or 8-bit weights quantized in blocks of
 * `blockSize` along K (one scale, and for asymmetric schemes one zero point, per block and output column), in
 * one of two forms ONNX Runtime runs as the same kernel:
 *
 * - `'matmulnbits'`: ONNX Runtime's contrib op `com.microsoft.MatMulNBits(A, B, scales, zero_points?, g_idx?,
 *   bias?)` directly. B is uint8 [N, ceil(K/bs), bs*bits/8]: for each output column n and block b the unsigned
 *   codes of W[b*bs .. b*bs+bs-1, n], two per byte low nibble first for 4 bits; scales float [N*ceil(K/bs)]
 *   (column-major: n*blocks + b); zero points omitted when every block has the implicit 2^(bits-1), else uint8
 *   packed per column (4 bits: two per byte, each column starting on a byte). `accuracy_level` 4 quantizes the
 *   activations to int8 per block inside the kernel (fast), 0 computes in float32 (exact up to summation order).
 * - `'blocked-dq'`: standard ONNX (opset 21) `DequantizeLinear(W_q [K,N], scale [ceil(K/bs), N], zp?, axis 0,
 *   block_size bs) -> MatMul`; ONNX Runtime fuses the pair into MatMulNBits at optimization level 'extended'
 *   (its `session.qdq_matmulnbits_accuracy_level` config, default 4, sets the fused kernel's accuracy level).
 *   Caveat (onnxruntime 1.30): with 2-D activations, ORT's MatMulAddFusion first turns MatMul + bias Add into
 *   Gemm and the DequantizeLinear in front of it then stays unfused (DQ + float Gemm on every run); set
 *   `optimization.disable_specified_optimizers: 'MatMulAddFusion'` or use the 'matmulnbits' form.
 *
 * Both dequantize exactly as ONNX DequantizeLinear does, w' = (q - zp) * scale in float32, so a float MatMul with
 * `dequantizedWeight` (our simulation) is what the exported model computes. The input model is not modified.
 *
 * Conv, ConvTranspose and Gemm weights (on by default, `ops`) become int4/int8 initializers behind a standard
 * DequantizeLinear feeding the float op, per output channel or in blocks along the input channels (weight-only.ts).
 * Int4 and blocked DequantizeLinear need opset 21: the copy is upgraded when the model is older (`upgradeOpset`).
 * Fold BatchNormalization into the Convs first (prepareModel): with a DequantizeLinear in front of the weight,
 * ONNX Runtime no longer folds it at load time.
 */
import { QnnxError } from '../../errors.js';
import { GraphBuilder } from '../../ir/builder.js';
import type { Graph, Node } from '../../ir/graph.js';
import type { Model } from '../../ir/model.js';
import { upgradeOpset as upgradeModelOpset } from '../../ir/passes/opset-upgrade.js';
import { constantNodeTensor } from '../../ir/passes/shape-inference.js';
import { Tensor } from '../../ir/tensor.js';
import { DataType } from '../../onnx/dtype.js';
import { decodeToFloat32 } from '../../onnx/formats.js';
import { AttributeType } from '../../onnx/proto.js';
import { copyModelStructure } from '../../runtime/taps.js';
import { type Encoding, encodingFromRange, groupRanges, scaleDimsFor } from '../encoding.js';
import { dequantize, quantize } from '../quantizer.js';
import { intRange, type QuantScheme } from '../scheme.js';
import type { QuantSim } from '../sim/quantsim.js';
import { matcher } from '../sim/quantsim.js';
import {
  emitDequantizeLinear,
  type QuantizedWeight,
  quantizeWeight,
  type ScaleType,
  WEIGHT_ONLY_OPS,
  type WeightOnlyBiasCorrection,
  type WeightOnlyOp,
  type WeightRange,
  weightAxes,
  weightNamer,
  weightScheme,
  weightSqnr,
} from './weight-only.js';

export type WeightOnlyForm = 'matmulnbits' | 'blocked-dq';

export interface WeightOnlyOptions {
  /** Weight bits: 4 (default) or 8. */
  bits?: 4 | 8;
  /** Block length along K: a power of two ≥ 16 (default 32). */
  blockSize?: number;
  /** Symmetric (signed grid, zero point 0; default) or asymmetric (unsigned grid with per-block zero points). */
  symmetric?: boolean;
  /** Export form (default 'matmulnbits'). */
  form?: WeightOnlyForm;
  /** MatMulNBits `accuracy_level` (default 4: int8 activations inside the kernel; 0: float32 compute). */
  accuracyLevel?: 0 | 1 | 2 | 3 | 4;
  /** Node names, op types or /regex/ patterns (matched against the node name) to leave float. */
  exclude?: string[];
  /** 'matmulnbits' form: fold a following Add of a constant [N] into MatMulNBits' bias input (default true). */
  fuseBias?: boolean;
  /**
   * Take the weight encodings from this QuantSim (its weight quantizers must be integer, 4 or 8 bits; MatMul:
   * blocked along axis 0 with a block size that MatMulNBits accepts; Conv/ConvTranspose/Gemm: per channel or blocked
   * on any axis). Weights it has no usable encoding for are computed here.
   */
  sim?: QuantSim;
  /** Op types whose constant weights are compressed (default all: MatMul, Gemm, Conv, ConvTranspose). */
  ops?: readonly WeightOnlyOp[];
  /**
   * Scale granularity. Default: Conv, ConvTranspose and Gemm weights per output channel, MatMul weights in blocks
   * of `blockSize` along K. 'block': every weight in blocks of `blockSize` along its reduction axis (Conv: input
   * channels). 'channel': every weight per output channel (MatMul: one MatMulNBits block spanning K, the next power
   * of two ≥ K, at most 256; longer K keeps blocks of 256).
   */
  granularity?: 'channel' | 'block';
  /** Depthwise Conv weights (one input channel per group), always per channel: 8 bits (default) or 4. */
  depthwiseBits?: 4 | 8;
  /** Weight ranges: 'minmax' (default) or 'mse' (per group, the clipping ratio minimizing the weight error). */
  range?: WeightRange;
  /**
   * Conv/ConvTranspose/Gemm scales: 'float32' (default) or 'float16' (DequantizeLinear to float16, then a Cast to
   * float32; halves the scale bytes, which matters only with blocks).
   */
  scaleType?: ScaleType;
  /** Short names (`w12q`, `w12s`, `w12`) for the initializers and values the export adds (default true). */
  shortNames?: boolean;
  /**
   * Upgrade the copy to opset 21 when int4 or blocked DequantizeLinear needs it (default true); false: throw
   * E_OPSET instead.
   */
  upgradeOpset?: boolean;
}

export interface WeightOnlyLayer {
  node: string;
  /** The node's op type (MatMul, Gemm, Conv, ConvTranspose). */
  op: string;
  weight: string;
  /** Reduction length per output (Conv: input channels per group × kernel size). */
  K: number;
  /** Output channels. */
  N: number;
  /** Stored bits (4 or 8). */
  bits: number;
  /** 'block:N' or 'channel'. */
  granularity: string;
  /** 'matmulnbits' or 'dq' (DequantizeLinear → float op). */
  form: 'matmulnbits' | 'dq';
  /** The activation input (input 0) of the layer. */
  input: string;
  /** The output of the node that computes the layer in the exported model (MatMulNBits: after a fused bias). */
  output: string;
  /** SQNR of the dequantized weight against the float weight, in dB. */
  weightSqnrDb: number;
  biasFused: boolean;
}

export interface WeightOnlyResult {
  model: Model;
  /** Weighted nodes whose weight was replaced (MatMul, Gemm, Conv, ConvTranspose). */
  replaced: number;
  /** Bytes of the float weights that were replaced. */
  bytesBefore: number;
  /** Bytes of what replaced them: packed weights, scales and zero points. */
  bytesAfter: number;
  layers: WeightOnlyLayer[];
  /** Weighted nodes left float, with the reason. */
  skipped: { node: string; reason: string }[];
  /** The opset upgrade applied to the copy (from, to), when one was needed. */
  opsetUpgrade?: { from: number; to: number };
  /** Per replaced weight (by its float name): the float32 values the exported model computes with. */
  dequantized: Map<string, Float32Array>;
}

/** A weight quantized in blocks along K: grid values, encoding and the dequantized weight (the simulation). */
export interface BlockQuantizedWeight {
  K: number;
  N: number;
  bits: number;
  blockSize: number;
  encoding: Encoding;
  /** Grid values of W [K, N] (row-major) on the scheme's grid. */
  q: Int32Array;
  /** (q - zp) * scale in float32: what DequantizeLinear and MatMulNBits compute. */
  dequantized: Float32Array;
}

/** The scheme used for weight-only blocks: signed symmetric, or unsigned asymmetric. */
export function weightOnlyScheme(bits: number, blockSize: number, symmetric: boolean): QuantScheme {
  return weightScheme(bits, { kind: 'block', axis: 0, size: blockSize }, symmetric);
}

function checkBlockSize(bs: number): void {
  if (!Number.isInteger(bs) || bs < 16 || (bs & (bs - 1)) !== 0) {
    throw new QnnxError('E_USAGE', `block size must be a power of two of at least 16, got ${bs}`);
  }
}

/** Quantizes a float weight [K, N] in blocks along K (min/max per block), or with a given encoding. */
export function quantizeWeightBlocks(
  w: Float32Array,
  K: number,
  N: number,
  options:
    | { bits: number; blockSize: number; symmetric: boolean; range?: WeightRange }
    | { encoding: Encoding },
): BlockQuantizedWeight {
  const dims = [K, N];
  let encoding: Encoding;
  if ('encoding' in options) encoding = options.encoding;
  else {
    checkBlockSize(options.blockSize);
    const scheme = weightOnlyScheme(options.bits, options.blockSize, options.symmetric);
    if (options.range === 'mse') encoding = quantizeWeight(w, dims, scheme, { range: 'mse' }).encoding;
    else {
      const { min, max } = groupRanges(w, dims, scheme.granularity);
      encoding = encodingFromRange(scheme, min, max, scaleDimsFor(dims, scheme.granularity));
    }
  }
  const g = encoding.scheme.granularity;
  if (g.kind !== 'block' || (g.axis !== 0 && g.axis !== -2) || encoding.scheme.format !== 'int') {
    throw new QnnxError('E_USAGE', 'weight-only export needs integer encodings blocked along axis 0 (K)');
  }
  const q = quantize(w, dims, encoding);
  const dequantized = dequantize(q, dims, encoding);
  return { K, N, bits: encoding.scheme.bits, blockSize: g.size, encoding, q, dequantized };
}

/** Unsigned MatMulNBits codes and zero points: signed grids are shifted by 2^(bits-1). */
function unsignedCodes(bq: BlockQuantizedWeight): { codes: Int32Array; zp: Int32Array; implicitZp: boolean } {
  const s = bq.encoding.scheme;
  const shift = s.signed ? 2 ** (s.bits - 1) : 0;
  const codes = new Int32Array(bq.q.length);
  for (let i = 0; i < codes.length; i++) codes[i] = bq.q[i] + shift;
  const zp = new Int32Array(bq.encoding.zeroPoint.length);
  const implicit = 2 ** (bq.bits - 1);
  let implicitZp = true;
  for (let i = 0; i < zp.length; i++) {
    zp[i] = bq.encoding.zeroPoint[i] + shift;
    if (zp[i] !== implicit) implicitZp = false;
  }
  return { codes, zp, implicitZp };
}

/** MatMulNBits initializers for a block-quantized weight: B [N, blocks, bs*bits/8], scales, zero points. */
export function packMatMulNBits(bq: BlockQuantizedWeight): {
  B: Uint8Array;
  bDims: number[];
  scales: Float32Array;
  zeroPoints?: Uint8Array;
} {
  const { K, N, bits, blockSize: bs } = bq;
  if (bits !== 4 && bits !== 8)
    throw new QnnxError('E_USAGE', `MatMulNBits export supports 4 or 8 bits, got ${bits}`);
  const blocks = Math.ceil(K / bs);
  const blob = (bs * bits) / 8;
  const { codes, zp, implicitZp } = unsignedCodes(bq);
  const B = new Uint8Array(N * blocks * blob);
  const scales = new Float32Array(N * blocks);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < blocks; b++) {
      const g = b * N + n; // index in the [blocks, N] scale tensor
      scales[n * blocks + b] = bq.encoding.scale[g];
      const base = (n * blocks + b) * blob;
      for (let j = 0; j < bs; j++) {
        const k = b * bs + j;
        // Padding past K holds the zero point, so it dequantizes to 0.
        const v = k < K ? codes[k * N + n] : zp[g];
        if (bits === 8) B[base + j] = v;
        else B[base + (j >> 1)] |= v << ((j & 1) * 4);
      }
    }
  }
  if (implicitZp) return { B, bDims: [N, blocks, blob], scales };
  let zeroPoints: Uint8Array;
  if (bits === 8) {
    zeroPoints = new Uint8Array(N * blocks);
    for (let n = 0; n < N; n++) for (let b = 0; b < blocks; b++) zeroPoints[n * blocks + b] = zp[b * N + n];
  } else {
    const row = Math.ceil(blocks / 2);
    zeroPoints = new Uint8Array(N * row);
    for (let n = 0; n < N; n++)
      for (let b = 0; b < blocks; b++) zeroPoints[n * row + (b >> 1)] |= zp[b * N + n] << ((b & 1) * 4);
  }
  return { B, bDims: [N, blocks, blob], scales, zeroPoints };
}

/**
 * The constant 2-D float32 weight (input 1) of a MatMul/Gemm that an export may replace, or undefined after
 * recording in `skipped` why the node stays as it is (excluded, weight not constant, not 2-D float32).
 */
export function constantMatMulWeight(
  g: Graph,
  producers: Map<string, Node>,
  graphInputs: Set<string>,
  n: Node,
  excluded: (n: Node) => boolean,
  skipped: { node: string; reason: string }[],
): Tensor | undefined {
  const label = n.name || n.outputs[0];
  if (excluded(n)) {
    skipped.push({ node: label, reason: 'excluded' });
    return undefined;
  }
  const wName = n.inputs[1];
  const w = wName && !graphInputs.has(wName) ? constantInput(g, producers, wName) : undefined;
  if (!w) {
    skipped.push({ node: label, reason: 'weight is not a constant' });
    return undefined;
  }
  if (w.dtype !== DataType.FLOAT || w.dims.length !== 2) {
    skipped.push({ node: label, reason: `weight is not a 2-D float32 tensor (dims [${w.dims.join(', ')}])` });
    return undefined;
  }
  return w;
}

/** A constant float tensor feeding `name`: an initializer or a Constant node's value. */
export function constantInput(g: Graph, producers: Map<string, Node>, name: string): Tensor | undefined {
  const init = g.initializer(name);
  if (init) return init;
  const p = producers.get(name);
  if (p && p.opType === 'Constant' && (p.domain === '' || p.domain === 'ai.onnx'))
    return constantNodeTensor(p);
  return undefined;
}

function floatData(t: Tensor): Float32Array {
  return t.dtype === DataType.FLOAT ? (t.data as Float32Array) : decodeToFloat32(t.dtype, t.data, t.size);
}

/**
 * Encoding for a weight from a QuantSim, when it has a usable one: integer, 4 or 8 bits, an unsigned grid starting
 * at 0; `matmul`: blocked along axis 0 (MatMulNBits' layout), else per tensor, per channel or blocked.
 */
function simEncoding(sim: QuantSim | undefined, weight: string, matmul = true): Encoding | undefined {
  const q = sim?.quantizers.get(weight);
  if (!q?.enabled || !q.encoding || q.kind !== 'weight') return undefined;
  const s = q.encoding.scheme;
  const g = s.granularity;
  if (s.format !== 'int' || (s.bits !== 4 && s.bits !== 8)) return undefined;
  if (matmul ? g.kind !== 'block' || (g.axis !== 0 && g.axis !== -2) : g.kind === 'vector') return undefined;
  const { qmin } = intRange(s.bits, s.signed, s.narrow);
  if (!s.signed && qmin !== 0) return undefined;
  return q.encoding;
}

/**
 * Replaces the constant float weights of MatMuls by weight-only quantized MatMulNBits (or blocked
 * DequantizeLinear → MatMul), and those of Conv, ConvTranspose and Gemm by int4/int8 initializers behind a
 * DequantizeLinear. Returns a new model; the input is not modified.
 */
export function exportWeightOnly(source: Model, options: WeightOnlyOptions = {}): WeightOnlyResult {
  const bits = options.bits ?? 4;
  const bs = options.blockSize ?? 32;
  const symmetric = options.symmetric ?? true;
  const form = options.form ?? 'matmulnbits';
  const accuracyLevel = options.accuracyLevel ?? 4;
  const fuseBias = options.fuseBias ?? true;
  const ops = new Set<string>(options.ops ?? WEIGHT_ONLY_OPS);
  const granularity = options.granularity;
  const depthwiseBits = options.depthwiseBits ?? 8;
  const range = options.range ?? 'minmax';
  const scaleType = options.scaleType ?? 'float32';
  if (bits !== 4 && bits !== 8)
    throw new QnnxError('E_USAGE', `weight-only export supports 4 or 8 bits, got ${bits}`);
  if (depthwiseBits !== 4 && depthwiseBits !== 8)
    throw new QnnxError('E_USAGE', `depthwise weights take 4 or 8 bits, got ${depthwiseBits}`);
  checkBlockSize(bs);
  if (![0, 1, 2, 3, 4].includes(accuracyLevel))
    throw new QnnxError('E_USAGE', `accuracy_level must be 0 to 4, got ${accuracyLevel}`);
  if (form !== 'matmulnbits' && form !== 'blocked-dq')
    throw new QnnxError('E_USAGE', `unknown weight-only form '${form}' (matmulnbits, blocked-dq)`);
  if (granularity !== undefined && granularity !== 'channel' && granularity !== 'block')
    throw new QnnxError('E_USAGE', `weight-only granularity must be channel or block, got '${granularity}'`);
  if (range !== 'minmax' && range !== 'mse')
    throw new QnnxError('E_USAGE', `weight-only range must be minmax or mse, got '${range}'`);
  if (scaleType !== 'float32' && scaleType !== 'float16')
    throw new QnnxError('E_USAGE', `scale type must be float32 or float16, got '${scaleType}'`);
  for (const op of ops) {
    if (!WEIGHT_ONLY_OPS.includes(op as WeightOnlyOp))
      throw new QnnxError('E_USAGE', `weight-only export handles ${WEIGHT_ONLY_OPS.join(', ')}, not '${op}'`);
  }

  const model = copyModelStructure(source);
  const excluded = matcher(options.exclude) ?? (() => false);
  // The opset the replacements need: blocked DequantizeLinear and int4 need 21, int8 per channel 13.
  let needed = 0;
  {
    const g = model.graph;
    const producers = g.producers();
    const graphInputs = new Set(g.inputs.map((o) => o.name));
    for (const n of g.nodes) {
      if (!ops.has(n.opType) || (n.domain !== '' && n.domain !== 'ai.onnx') || excluded(n)) continue;
      if (n.opType === 'MatMul') {
        if (form === 'blocked-dq') needed = 21;
        continue;
      }
      const w =
        n.inputs[1] && !graphInputs.has(n.inputs[1]) ? constantInput(g, producers, n.inputs[1]) : undefined;
      const axes = w && weightAxes(n, w.dims);
      if (!w || !axes) continue;
      const wb = axes.depthwise ? depthwiseBits : bits;
      needed = Math.max(needed, wb === 4 || (granularity === 'block' && axes.inAxis !== undefined) ? 21 : 13);
    }
  }
  const opsetBefore = model.opset('') ?? 0;
  let opsetUpgrade: { from: number; to: number } | undefined;
  if (opsetBefore < needed) {
    const why = `int4 or blocked DequantizeLinear needs opset ${needed}; the model is at opset ${opsetBefore}`;
    if (options.upgradeOpset === false) throw new QnnxError('E_OPSET', `${why} (upgrade it first)`);
    if (model.graph.nodes.some((n) => n.subgraphs().length))
      throw new QnnxError('E_OPSET', `${why}, and it has subgraphs: upgrade it first (upgradeOpset)`);
    upgradeModelOpset(model, needed);
    opsetUpgrade = { from: opsetBefore, to: needed };
  }

  const g = model.graph;
  const b = new GraphBuilder(g);
  const names = weightNamer(b, options.shortNames ?? true);
  const producers = g.producers();
  const consumers = g.consumers();
  const graphOutputs = new Set(g.outputs.map((o) => o.name));
  const graphInputs = new Set(g.inputs.map((o) => o.name));
  const layers: WeightOnlyLayer[] = [];
  const skipped: { node: string; reason: string }[] = [];
  const removed = new Set<Node>();
  const replacedConstants = new Set<string>();
  const shared = new Map<string, { bq: BlockQuantizedWeight; inputs: string[] }>();
  const sharedDq = new Map<
    string,
    { qw: QuantizedWeight; output: string; bits: number; granularity: string }
  >();
  const dequantized = new Map<string, Float32Array>();
  let bytesBefore = 0;
  let bytesAfter = 0;

  for (const n of [...g.nodes]) {
    if (!ops.has(n.opType) || (n.domain !== '' && n.domain !== 'ai.onnx')) continue;
    if (n.opType !== 'MatMul') {
      const r = replaceWithDequantize(n);
      if (r) bytesAfter += r;
      continue;
    }
    const w = constantMatMulWeight(g, producers, graphInputs, n, excluded, skipped);
    if (!w) continue;
    const label = n.name || n.outputs[0];
    const wName = n.inputs[1];
    const [K, N] = w.dims;
    const wf = floatData(w);
    // A weight shared by several MatMuls is quantized and stored once.
    let entry = shared.get(wName);
    if (!entry) {
      const enc = simEncoding(options.sim, wName);
      const bq = enc
        ? quantizeWeightBlocks(wf, K, N, { encoding: enc })
        : quantizeWeightBlocks(wf, K, N, {
            bits,
            blockSize:
              granularity === 'channel' ? Math.min(256, Math.max(16, 2 ** Math.ceil(Math.log2(K)))) : bs,
            symmetric,
            range,
          });
      if (enc) checkBlockSize(bq.blockSize);
      entry = { bq, inputs: [] };
      shared.set(wName, entry);
      dequantized.set(wName, bq.dequantized);
      bytesBefore += w.byteLength;
      replacedConstants.add(wName);
    }
    const bq = entry.bq;

    // A following Add of a constant [N] becomes MatMulNBits' bias.
    let biasName: string | undefined;
    let addNode: Node | undefined;
    const out = n.outputs[0];
    const cs = consumers.get(out) ?? [];
    if (
      form === 'matmulnbits' &&
      fuseBias &&
      cs.length === 1 &&
      !graphOutputs.has(out) &&
      cs[0].opType === 'Add'
    ) {
      const add = cs[0];
      const other = add.inputs[0] === out ? add.inputs[1] : add.inputs[0];
      const bt = other && add.inputs.includes(out) ? constantInput(g, producers, other) : undefined;
      if (
        bt &&
        bt.dtype === DataType.FLOAT &&
        bt.dims.length === 1 &&
        bt.dims[0] === N &&
        (add.domain === '' || add.domain === 'ai.onnx')
      ) {
        addNode = add;
        replacedConstants.add(other);
        biasName = g.initializer(other)
          ? other
          : b.initializer(`${other}_bias`, DataType.FLOAT, [N], floatData(bt));
      }
    }

    const base = wName.replace(/[^A-Za-z0-9_.]/g, '_');
    if (form === 'matmulnbits') {
      if (!entry.inputs.length) {
        const packed = packMatMulNBits(bq);
        const nm = options.shortNames === false ? undefined : names(wName);
        entry.inputs.push(
          b.initializer(nm?.q ?? `${base}_Q${bq.bits}`, DataType.UINT8, packed.bDims, packed.B),
          b.initializer(nm?.s ?? `${base}_scales`, DataType.FLOAT, [packed.scales.length], packed.scales),
        );
        bytesAfter += packed.B.length + packed.scales.byteLength;
        if (packed.zeroPoints) {
          entry.inputs.push(
            b.initializer(
              nm?.z ?? `${base}_zero_points`,
              DataType.UINT8,
              [packed.zeroPoints.length],
              packed.zeroPoints,
            ),
          );
          bytesAfter += packed.zeroPoints.length;
        }
      }
      const inputs = [n.inputs[0], ...entry.inputs];
      if (biasName) {
        while (inputs.length < 5) inputs.push('');
        inputs.push(biasName);
      }
      b.node('MatMulNBits', inputs, {
        outputs: [addNode ? addNode.outputs[0] : out],
        name: n.name || `${base}_MatMulNBits`,
        domain: 'com.microsoft',
        attrs: { K, N, bits: bq.bits, block_size: bq.blockSize, accuracy_level: accuracyLevel },
      });
      removed.add(n);
      if (addNode) removed.add(addNode);
    } else {
      if (!entry.inputs.length) {
        const qw: QuantizedWeight = {
          dims: [K, N],
          encoding: bq.encoding,
          q: bq.q,
          dequantized: bq.dequantized,
          scaleType: 'float32',
        };
        const r = emitDequantizeLinear(b, qw, names(wName));
        bytesAfter += r.bytes;
        entry.inputs.push(r.output);
      }
      n.inputs = [n.inputs[0], entry.inputs[0]];
    }
    layers.push({
      node: label,
      op: n.opType,
      weight: wName,
      K,
      N,
      bits: bq.bits,
      granularity: `block:${bq.blockSize}`,
      form: form === 'matmulnbits' ? 'matmulnbits' : 'dq',
      input: n.inputs[0],
      output: addNode ? addNode.outputs[0] : out,
      weightSqnrDb: weightSqnr(wf, bq.dequantized),
      biasFused: addNode !== undefined,
    });
  }

  /** Conv / ConvTranspose / Gemm: weight → DequantizeLinear(int weight); returns the bytes added. */
  function replaceWithDequantize(n: Node): number {
    const label = n.name || n.outputs[0];
    if (excluded(n)) {
      skipped.push({ node: label, reason: 'excluded' });
      return 0;
    }
    const wName = n.inputs[1];
    const w = wName && !graphInputs.has(wName) ? constantInput(g, producers, wName) : undefined;
    if (!w) {
      skipped.push({ node: label, reason: 'weight is not a constant' });
      return 0;
    }
    const axes = weightAxes(n, w.dims);
    if (w.dtype !== DataType.FLOAT || !axes) {
      skipped.push({
        node: label,
        reason: `weight is not a float32 ${n.opType} weight (dims [${w.dims.join(', ')}])`,
      });
      return 0;
    }
    const dims = [...w.dims];
    const wf = floatData(w);
    let added = 0;
    let entry = sharedDq.get(wName);
    if (!entry) {
      const enc = simEncoding(options.sim, wName, false);
      let qw: QuantizedWeight;
      let wBits: number;
      let gLabel: string;
      if (enc) {
        const q = quantize(wf, dims, enc);
        qw = { dims, encoding: enc, q, dequantized: dequantize(q, dims, enc), scaleType: 'float32' };
        wBits = enc.scheme.bits;
        const eg = enc.scheme.granularity;
        gLabel = eg.kind === 'block' ? `block:${eg.size}` : eg.kind;
      } else {
        wBits = axes.depthwise ? depthwiseBits : bits;
        const blocked =
          granularity === 'block' && !axes.depthwise && axes.inAxis !== undefined && dims[axes.inAxis] >= bs;
        const gran = blocked
          ? { kind: 'block' as const, axis: axes.inAxis!, size: bs }
          : { kind: 'channel' as const, axis: axes.outAxis };
        gLabel = blocked ? `block:${bs}` : 'channel';
        qw = quantizeWeight(wf, dims, weightScheme(wBits, gran, symmetric), { range, scaleType });
      }
      const r = emitDequantizeLinear(b, qw, names(wName));
      added = r.bytes;
      entry = { qw, output: r.output, bits: wBits, granularity: gLabel };
      sharedDq.set(wName, entry);
      dequantized.set(wName, qw.dequantized);
      bytesBefore += w.byteLength;
      replacedConstants.add(wName);
    }
    n.inputs = [n.inputs[0], entry.output, ...n.inputs.slice(2)];
    const outAxis = axes.outAxis;
    const N = dims[outAxis];
    layers.push({
      node: label,
      op: n.opType,
      weight: wName,
      K: w.size / N,
      N,
      bits: entry.bits,
      granularity: entry.granularity,
      form: 'dq',
      input: n.inputs[0],
      output: n.outputs[0],
      weightSqnrDb: weightSqnr(wf, entry.qw.dequantized),
      biasFused: false,
    });
    return added;
  }

  g.nodes = g.nodes.filter((n) => !removed.has(n));
  if (
    form === 'matmulnbits' &&
    layers.some((l) => l.form === 'matmulnbits') &&
    model.opset('com.microsoft') === undefined
  )
    model.opsetImports.push({ domain: 'com.microsoft', version: 1 });
  dropUnused(g, replacedConstants);
  g.sort();
  return {
    model,
    replaced: layers.length,
    bytesBefore,
    bytesAfter,
    layers,
    skipped,
    dequantized,
    ...(opsetUpgrade ? { opsetUpgrade } : {}),
  };
}

/** Drops the replaced weights (initializers or Constant nodes) that nothing reads any more. */
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

/** The dequantized weight [K, N] the exported model computes with (for simulations and tests). */
export function dequantizedWeight(
  w: Float32Array,
  K: number,
  N: number,
  options: WeightOnlyOptions = {},
): Float32Array {
  return quantizeWeightBlocks(w, K, N, {
    bits: options.bits ?? 4,
    blockSize: options.blockSize ?? 32,
    symmetric: options.symmetric ?? true,
    range: options.range,
  }).dequantized;
}

/**
 * The simulation of a weight-only export: a copy of `source` (the model given to exportWeightOnly) whose replaced
 * weights (initializers or Constant nodes) hold the dequantized values the exported model computes with, plus the
 * bias shifts of `correction` (correctWeightOnlyBias) when given.
 */
export function weightOnlySimulation(
  source: Model,
  result: WeightOnlyResult,
  correction?: Pick<WeightOnlyBiasCorrection, 'deltas'>,
): Model {
  const m = copyModelStructure(source);
  const g = m.graph;
  if (correction) {
    // Bias corrections as an Add of Δb after each corrected layer (the same sums up to float rounding).
    const b = new GraphBuilder(g);
    for (const [label, { delta, dims }] of correction.deltas) {
      const n = g.nodes.find((x) => (x.name || x.outputs[0]) === label);
      if (!n) throw new QnnxError('E_GRAPH', `corrected layer '${label}' is not in the source model`);
      const out = n.outputs[0];
      const raw = b.uniqueName(`${out}_uncorrected`);
      n.outputs[0] = raw;
      b.node('Add', [raw, b.initializer(`${out}_delta`, DataType.FLOAT, dims, delta)], { outputs: [out] });
    }
    g.sort();
  }
  for (const [name, data] of result.dequantized) {
    const init = g.initializer(name);
    if (init) {
      g.initializers.set(name, new Tensor(name, DataType.FLOAT, [...init.dims], data));
      continue;
    }
    const c = g.nodes.find((n) => n.opType === 'Constant' && n.outputs[0] === name);
    const t = c?.attrTensor('value');
    if (!c || !t) throw new QnnxError('E_GRAPH', `weight '${name}' is neither an initializer nor a Constant`);
    c.attributes = [
      { name: 'value', type: AttributeType.TENSOR, value: new Tensor('', DataType.FLOAT, [...t.dims], data) },
    ];
  }
  return m;
}
