/**
 * QuantSim: places quantizers in a float model according to a target profile (AIMET's third role: analyzers
 * observe, quantizers apply, QuantSim places). The placement produces the QDQ patterns ONNX Runtime fuses into
 * integer kernels: per-channel weights on Conv/Gemm/MatMul, per-tensor activations, Relu/Clip folded into the op
 * before them, int32 biases with scale = input scale x weight scale, and shared encodings across data-movement
 * ops. Only the main graph is quantized; subgraphs of If/Loop/Scan stay float.
 */
import { QnnxError } from '../../errors.js';
import type { Node } from '../../ir/graph.js';
import type { Model } from '../../ir/model.js';
import type { Tensor } from '../../ir/tensor.js';
import { DataType } from '../../onnx/dtype.js';
import { decodeToFloat32, roundHalfEven } from '../../onnx/formats.js';
import { recordElementTypes } from '../../runtime/value-types.js';
import { type Encoding, encodingFromRange, groupRanges, scaleDimsFor, twoLevelScales } from '../encoding.js';
import { type Granularity, intRange, type NumberFormat, type QuantScheme } from '../scheme.js';
import type { SchemeSpec, TargetProfile } from './targets.js';

export type QuantizerKind = 'activation' | 'weight' | 'bias' | 'constant';

export interface Quantizer {
  /** The float tensor this quantizer applies to (unique per quantizer). */
  tensor: string;
  kind: QuantizerKind;
  scheme: QuantScheme;
  /** Output of a data-movement op: reuses the encoding of this tensor's quantizer. */
  sharedWith?: string;
  /** Bias: the activation and weight quantizers whose scales multiply into its scale. */
  biasOf?: { input: string; weight: string };
  /**
   * The output z = a·t + b (a > 0) of a scalar affine chain that stays float and is absorbed into the Q/DQ
   * parameters after export (rewrites/affine-absorb.ts): its encoding is t's grid mapped through the chain
   * (`affineEncoding`), as the written model will have it.
   */
  affineOf?: { tensor: string; a: number; b: number };
  /** Nodes that read the tensor through this quantizer (for messages and sensitivity reports). */
  consumers: string[];
  encoding?: Encoding;
  /** Disabled quantizers are left out of the exported model (sensitivity analysis, overrides). */
  enabled: boolean;
}

export interface WeightSchemeOverride {
  bits?: number;
  format?: NumberFormat;
  granularity?:
    | 'tensor'
    | 'channel'
    | { kind: 'block'; size: number }
    | { kind: 'vector'; size: number; scaleBits: number };
}

export interface QuantSimOptions {
  target: TargetProfile;
  /** Override the target's weight scheme (e.g. 4-bit weights, blocked or per-vector granularity). */
  weights?: Partial<SchemeSpec> & {
    format?: NumberFormat;
    blockSize?: number;
    vector?: { size: number; scaleBits: number };
  };
  /** Override the target's activation scheme (e.g. 16-bit activations, fp8). */
  activations?: Partial<SchemeSpec> & { format?: NumberFormat };
  /** Node names, op types or /regex/ patterns (matched against the node name) to leave float. */
  exclude?: string[];
  /** When given, only matching nodes are quantized. */
  include?: string[];
  /** Quantize only weights (no activation quantizers): weight-only compression. */
  weightOnly?: boolean;
}

export function matcher(patterns: string[] | undefined): ((n: Node) => boolean) | undefined {
  if (!patterns?.length) return undefined;
  const tests = patterns.map((p) => {
    // `/regex/flags`, unless it only looks like one: PyTorch names such as `/features/features.4/Conv` are names.
    const end = p.lastIndexOf('/');
    if (p.length > 2 && p.startsWith('/') && end > 0 && /^[dimsuy]*$/.test(p.slice(end + 1))) {
      let re: RegExp | undefined;
      try {
        re = new RegExp(p.slice(1, end), p.slice(end + 1));
      } catch {
        re = undefined;
      }
      if (re) {
        const r = re;
        return (n: Node) => n.name === p || r.test(n.name);
      }
    }
    return (n: Node) => n.name === p || n.opType === p;
  });
  return (n) => tests.some((t) => t(n));
}

function schemeFrom(spec: SchemeSpec & { format?: NumberFormat }, granularity: Granularity): QuantScheme {
  return {
    format: spec.format ?? 'int',
    bits: spec.format && spec.format !== 'int' ? 8 : spec.bits,
    signed: spec.signed,
    symmetry: spec.format && spec.format !== 'int' ? 'symmetric' : spec.symmetry,
    narrow: spec.narrow ?? false,
    granularity,
    scaleType: spec.scaleType ?? 'float',
  };
}

/** Output-channel axis of a weight, and its reduction axis, for each weighted op. */
function weightAxes(node: Node, w: Tensor): { channel: number; reduction: number } | undefined {
  const rank = w.dims.length;
  switch (node.opType) {
    case 'Conv':
      return { channel: 0, reduction: 1 };
    case 'ConvTranspose':
      return node.attrInt('group', 1) === 1 ? { channel: 1, reduction: 0 } : undefined;
    case 'Gemm':
      return node.attrInt('transB', 0) ? { channel: 0, reduction: 1 } : { channel: 1, reduction: 0 };
    case 'MatMul':
      return rank >= 2 ? { channel: rank - 1, reduction: rank - 2 } : undefined;
    default:
      return undefined;
  }
}

export class QuantSim {
  readonly model: Model;
  readonly target: TargetProfile;
  readonly quantizers = new Map<string, Quantizer>();
  /** Nodes left float by --exclude/--include, with the reason. */
  readonly skipped: { node: string; opType: string; reason: string }[] = [];
  private readonly options: QuantSimOptions;
  private readonly weightSpec: SchemeSpec & {
    format?: NumberFormat;
    blockSize?: number;
    vector?: { size: number; scaleBits: number };
  };
  private readonly actSpec: SchemeSpec & { format?: NumberFormat };

  constructor(model: Model, options: QuantSimOptions) {
    this.model = model;
    this.target = options.target;
    this.options = options;
    this.weightSpec = { ...options.target.weights, ...options.weights };
    this.actSpec = { ...options.target.activations, ...options.activations };
    this.place();
  }

  /** Quantizers whose encodings come from calibration data (activations, not shared). */
  calibratedTensors(): string[] {
    return [...this.quantizers.values()]
      .filter((q) => q.kind === 'activation' && !q.sharedWith)
      .map((q) => q.tensor);
  }

  activationScheme(): QuantScheme {
    return schemeFrom(this.actSpec, { kind: 'tensor' });
  }

  private place(): void {
    const g = this.model.graph;
    const types = recordElementTypes(g);
    const isFloat = (name: string) => types.get(name) === DataType.FLOAT;
    const consumers = g.consumers();
    const outputs = new Set(g.outputs.map((o) => o.name));
    const excluded = matcher(this.options.exclude);
    const included = matcher(this.options.include);
    const t = this.target;
    const weighted = new Set(t.weightedOps);
    const quantized = new Set(t.quantizedOps);
    const shared = new Set(t.sharedEncodingOps);
    const fused = new Set(t.fusedActivations);
    const actScheme = this.activationScheme();
    const weightOnly = this.options.weightOnly ?? this.target.weightOnly ?? false;

    const addActivation = (name: string, consumer: Node | undefined) => {
      if (weightOnly || !name || !isFloat(name)) return false;
      const q = this.quantizers.get(name);
      if (q) {
        if (consumer && !q.consumers.includes(consumer.name)) q.consumers.push(consumer.name);
        return true;
      }
      const init = g.initializer(name);
      this.quantizers.set(name, {
        tensor: name,
        kind: init ? 'constant' : 'activation',
        scheme: actScheme,
        consumers: consumer ? [consumer.name] : [],
        enabled: true,
      });
      return true;
    };
    /** The op's output, or, when a fused activation is its only consumer, that activation's output. */
    const outputAfterFusion = (n: Node): string | undefined => {
      const out = n.outputs[0];
      if (!out) return undefined;
      const cs = consumers.get(out) ?? [];
      if (cs.length === 1 && !outputs.has(out) && fused.has(cs[0].opType) && cs[0].inputs[0] === out) {
        if (!(excluded?.(cs[0]) ?? false)) return cs[0].outputs[0];
      }
      return out;
    };

    for (const n of g.topologicalOrder()) {
      if (n.domain !== '' && n.domain !== 'ai.onnx') continue;
      const isSelected = (included ? included(n) : true) && !(excluded?.(n) ?? false);
      const relevant = weighted.has(n.opType) || quantized.has(n.opType) || shared.has(n.opType);
      if (!isSelected) {
        if (relevant) this.skipped.push({ node: n.name, opType: n.opType, reason: 'excluded' });
        continue;
      }
      if (weighted.has(n.opType)) this.placeWeighted(n, addActivation, outputAfterFusion, isFloat);
      else if (quantized.has(n.opType)) {
        for (const i of n.inputs) addActivation(i, n);
        const out = outputAfterFusion(n);
        if (out) addActivation(out, undefined);
      } else if (shared.has(n.opType)) {
        const src = this.quantizers.get(n.inputs[0]);
        if (!src || weightOnly) continue;
        if (!src.consumers.includes(n.name)) src.consumers.push(n.name);
        const root = src.sharedWith ?? src.tensor;
        for (const o of n.outputs) {
          if (o && isFloat(o) && !this.quantizers.has(o)) {
            this.quantizers.set(o, {
              tensor: o,
              kind: 'activation',
              scheme: src.scheme,
              sharedWith: root,
              consumers: [],
              enabled: true,
            });
          }
        }
      } else if (fused.has(n.opType) && this.quantizers.has(n.inputs[0])) {
        // A Relu/Clip after an already quantized tensor: quantize its output (ORT folds it into the Q).
        const out = n.outputs[0];
        if (out) addActivation(out, undefined);
      }
    }
  }

  private placeWeighted(
    n: Node,
    addActivation: (name: string, consumer: Node | undefined) => boolean,
    outputAfterFusion: (n: Node) => string | undefined,
    isFloat: (name: string) => boolean,
  ): void {
    const g = this.model.graph;
    const wName = n.inputs[1];
    const w = wName ? g.initializer(wName) : undefined;
    const graphInputs = new Set(g.inputs.map((v) => v.name));
    const xOk = addActivation(n.inputs[0], n);
    let weightQuantized = false;
    if (w && w.dtype === DataType.FLOAT && !graphInputs.has(wName)) {
      const axes = weightAxes(n, w);
      const spec = this.weightSpec;
      let granularity: Granularity = { kind: 'tensor' };
      if (spec.vector && axes) {
        granularity = {
          kind: 'vector',
          axis: axes.reduction,
          size: spec.vector.size,
          channelAxis: axes.channel,
          scaleBits: spec.vector.scaleBits,
          scaleRounding: spec.vector.scaleBits < spec.bits ? 'ceil' : 'round',
        };
      } else if (spec.blockSize && axes)
        granularity = { kind: 'block', axis: axes.reduction, size: spec.blockSize };
      else if (spec.granularity === 'channel' && axes) granularity = { kind: 'channel', axis: axes.channel };
      const existing = this.quantizers.get(wName);
      if (existing) {
        if (!existing.consumers.includes(n.name)) existing.consumers.push(n.name);
        weightQuantized = existing.kind === 'weight';
      } else {
        this.quantizers.set(wName, {
          tensor: wName,
          kind: 'weight',
          scheme: schemeFrom(spec, granularity),
          consumers: [n.name],
          enabled: true,
        });
        weightQuantized = true;
      }
    } else if (wName) {
      addActivation(wName, n); // MatMul/Gemm of two activations
    }
    const bName =
      n.opType === 'Gemm'
        ? n.inputs[2]
        : n.opType === 'Conv' || n.opType === 'ConvTranspose'
          ? n.inputs[2]
          : undefined;
    const b = bName ? g.initializer(bName) : undefined;
    const gemmPlain =
      n.opType !== 'Gemm' ||
      (n.attrFloat('alpha', 1) === 1 && n.attrFloat('beta', 1) === 1 && b?.dims.length === 1);
    if (
      b &&
      bName &&
      b.dtype === DataType.FLOAT &&
      isFloat(bName) &&
      xOk &&
      weightQuantized &&
      gemmPlain &&
      this.target.bias === 'int32' &&
      !(this.options.weightOnly ?? this.target.weightOnly) &&
      this.weightSpec.format === undefined &&
      !this.weightSpec.blockSize &&
      !this.weightSpec.vector &&
      !this.quantizers.has(bName)
    ) {
      this.quantizers.set(bName, {
        tensor: bName,
        kind: 'bias',
        scheme: {
          ...schemeFrom(
            { bits: 8, signed: true, symmetry: 'symmetric', granularity: 'channel' },
            { kind: 'channel', axis: 0 },
          ),
          bits: 32 as number,
        },
        biasOf: { input: n.inputs[0], weight: wName },
        consumers: [n.name],
        enabled: true,
      });
    }
    const out = outputAfterFusion(n);
    if (out) addActivation(out, undefined);
  }

  /** Encodings of weights and constants, computed from their data (min/max per group). */
  computeParameterEncodings(): void {
    const g = this.model.graph;
    for (const q of this.quantizers.values()) {
      if (q.kind !== 'weight' && q.kind !== 'constant') continue;
      const t = g.initializer(q.tensor)!;
      const x =
        t.dtype === DataType.FLOAT ? (t.data as Float32Array) : decodeToFloat32(t.dtype, t.data, t.size);
      const { min, max } = groupRanges(x, t.dims, q.scheme.granularity);
      const enc = encodingFromRange(q.scheme, min, max, scaleDimsFor(t.dims, q.scheme.granularity));
      q.encoding = twoLevelScales(enc, t.dims);
    }
  }

  /** Sets a calibrated activation encoding. */
  setEncoding(tensor: string, enc: Encoding): void {
    const q = this.quantizers.get(tensor);
    if (!q) throw new QnnxError('E_USAGE', `no quantizer on tensor '${tensor}'`, { tensor });
    q.encoding = enc;
  }

  /** Resolves shared, affine-derived and bias encodings once activations and weights have theirs. */
  finalizeEncodings(): void {
    for (const q of this.quantizers.values()) {
      if (q.sharedWith) q.encoding = this.quantizers.get(q.sharedWith)?.encoding;
    }
    for (const q of this.quantizers.values()) {
      const d = q.affineOf ? affineEncoding(this, q) : undefined;
      if (d) q.encoding = d.encoding;
    }
    const g = this.model.graph;
    for (const q of this.quantizers.values()) {
      if (q.kind !== 'bias' || !q.biasOf) continue;
      const x = this.quantizers.get(q.biasOf.input)?.encoding;
      const w = this.quantizers.get(q.biasOf.weight)?.encoding;
      const b = g.initializer(q.tensor)!;
      if (!x || !w) continue;
      const n = b.size;
      const bias = b.data as Float32Array;
      const scale = new Float32Array(n);
      const sx = x.scale[0];
      for (let c = 0; c < n; c++) {
        const wi = w.scale.length === 1 ? 0 : c;
        // A channel whose weights are ~0 but whose bias is not would overflow int32: raise its weight scale.
        const need = Math.abs(bias[c]) / (sx * 2 ** 30);
        if (w.scale[wi] < need) w.scale[wi] = Math.fround(need);
        scale[c] = Math.fround(sx * w.scale[wi]);
      }
      q.encoding = {
        scheme: q.scheme,
        scale,
        zeroPoint: new Int32Array(n),
        scaleDims: [n],
      };
    }
  }

  /** Every quantizer has an encoding (or is disabled). */
  missingEncodings(): string[] {
    return [...this.quantizers.values()].filter((q) => q.enabled && !q.encoding).map((q) => q.tensor);
  }
}

/**
 * The encoding of an affine chain's output z = a·t + b on t's grid: scale s' = fround(a·s_t), zero point
 * round(zp_t − b/s') (the encoding absorption gives the chain's output), and δ = s'·(zp' − round(zp')), the
 * shift every represented value of z carries (represented − true), which absorption and the QDQ export take out of
 * the next Convs' biases. Re-quantizing z on this grid gives back t's integer: no second rounding. Undefined when
 * t has no integer per-tensor encoding of z's width, or the zero point does not fit.
 */
export function affineEncoding(
  sim: QuantSim,
  q: Quantizer,
): { encoding: Encoding; delta: number } | undefined {
  const f = q.affineOf;
  if (!f || !(f.a > 0) || q.sharedWith) return undefined;
  const src = sim.quantizers.get(f.tensor);
  const et = src?.sharedWith ? sim.quantizers.get(src.sharedWith)?.encoding : src?.encoding;
  const sz = q.scheme;
  if (et?.scale.length !== 1 || et.scheme.format !== 'int' || sz.format !== 'int') return undefined;
  if (sz.granularity.kind !== 'tensor' || et.scheme.bits !== sz.bits || et.scheme.signed !== sz.signed)
    return undefined;
  const s2 = Math.fround(f.a * et.scale[0]!);
  const zpExact = et.zeroPoint[0]! - f.b / s2;
  const zr = roundHalfEven(zpExact);
  const { qmin, qmax } = intRange(sz.bits, sz.signed, sz.narrow);
  if (!(s2 > 0) || !Number.isFinite(s2) || zr < qmin || zr > qmax) return undefined;
  return {
    encoding: { scheme: sz, scale: Float32Array.of(s2), zeroPoint: Int32Array.of(zr), scaleDims: [] },
    delta: s2 * (zpExact - zr),
  };
}
