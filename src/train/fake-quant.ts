/**
 * `qnnx::FakeQuant`: the quantizer of quantization-aware training, as one pseudo-op in the graph.
 *
 *   inputs      x (float), scale (float, [] or [C]), zero_point (float holding integers, same shape as scale)
 *   attributes  qmin, qmax (ints: the integer grid, e.g. -128/127), axis (int, only for per-channel [C] scales),
 *               grad (string: the gradient rule, default 'ste'), grad_scale (float, optional: LSQ's gradient
 *               scale; default 1/sqrt(N·qmax) with N the elements per scale)
 *   output      y = (clamp(round(x / scale) + zero_point, qmin, qmax) − zero_point) · scale
 *
 * The forward is exactly our quantizer's `fakeQuantize` (src/quant/quantizer.ts) and ONNX Runtime's
 * QuantizeLinear→DequantizeLinear: float32 division, round half to even, clamp, float32 product.
 *
 * Why a pseudo-op and not Q→DQ: ONNX has no stop-gradient, so the backward of round() must be a rule chosen by
 * us (straight-through, LSQ, MAD, ...), selected per node by the `grad` attribute (see rules/fake-quant.ts for
 * the plug point). ONNX Runtime cannot run the qnnx domain, so after differentiation `lowerFakeQuant` rewrites
 * every FakeQuant into Div/Round/Add/Clip/Sub/Mul. Never into QuantizeLinear/DequantizeLinear: ORT's QDQ fusion
 * also fires inside training graphs and would switch the forward to integer kernels depending on the wiring
 * (research notes A.5).
 *
 * Shape inference knows no qnnx ops, so `declareFakeQuantTypes` records each FakeQuant output's type (the type of
 * its x) in value_info before the gradient engine infers shapes; `insertFakeQuant` does the same.
 *
 * Not handled: NaN inputs (the quantizer maps NaN to qmin, the lowered graph keeps NaN), blocked and per-vector
 * granularities (use one FakeQuant per block layout reshaped, or extend `broadcastScale`).
 */
import { QnnxError } from '../errors.js';
import { GraphBuilder } from '../ir/builder.js';
import type { Node } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { type Dim, inferTypes, type TypeTable } from '../ir/passes/shape-inference.js';
import { DataType } from '../onnx/dtype.js';
import { AttributeType } from '../onnx/proto.js';
import type { Encoding } from '../quant/encoding.js';
import { intRange } from '../quant/scheme.js';

export const FAKE_QUANT_DOMAIN = 'qnnx';
export const FAKE_QUANT_OP = 'FakeQuant';

/** The attributes of one FakeQuant node, read and checked. */
export interface FakeQuantAttrs {
  qmin: number;
  qmax: number;
  /** Channel axis of a per-channel scale (may be negative); undefined for a per-tensor scale. */
  axis?: number;
  /** Name of the gradient rule ('ste', 'lsq', 'mad', or any registered with registerFakeQuantGradient). */
  grad: string;
  /** Explicit LSQ gradient scale (attribute `grad_scale`); undefined: 1/sqrt(N·qmax). */
  gradScale?: number;
}

export function isFakeQuant(node: Node): boolean {
  return node.opType === FAKE_QUANT_OP && node.domain === FAKE_QUANT_DOMAIN;
}

export function fakeQuantAttrs(node: Node): FakeQuantAttrs {
  const qmin = node.attrInt('qmin');
  const qmax = node.attrInt('qmax');
  if (qmin === undefined || qmax === undefined || !(qmin < qmax)) {
    throw new QnnxError(
      'E_ATTRIBUTE',
      `node ${node.label()}: FakeQuant needs integer attributes qmin < qmax (got ${qmin}, ${qmax})`,
      { node: node.name },
    );
  }
  if (node.inputs.length < 2 || !node.inputs[0] || !node.inputs[1]) {
    throw new QnnxError('E_GRAPH', `node ${node.label()}: FakeQuant needs inputs x, scale[, zero_point]`, {
      node: node.name,
    });
  }
  return {
    qmin,
    qmax,
    axis: node.attrInt('axis'),
    grad: node.attrString('grad', 'ste'),
    gradScale: node.attrFloat('grad_scale'),
  };
}

/** Parameters of a FakeQuant to insert. Scale and zero point become float32 initializers. */
export interface FakeQuantSpec {
  /** One scale (per tensor) or one per channel along `axis`. */
  scale: number | ArrayLike<number>;
  /** Integer zero point(s), default 0; same count as the scales. */
  zeroPoint?: number | ArrayLike<number>;
  qmin: number;
  qmax: number;
  /** Channel axis, required when `scale` has several values. */
  axis?: number;
  /** Gradient rule name, default 'ste'. */
  grad?: string;
  gradScale?: number;
}

/** A FakeQuantSpec from a quantizer encoding (integer formats, per-tensor or per-channel). */
export function fakeQuantSpecFromEncoding(enc: Encoding, grad = 'ste'): FakeQuantSpec {
  const s = enc.scheme;
  if (s.format !== 'int') {
    throw new QnnxError('E_USAGE', `FakeQuant supports integer formats only (got ${s.format})`);
  }
  const g = s.granularity;
  if (g.kind !== 'tensor' && g.kind !== 'channel') {
    throw new QnnxError('E_USAGE', `FakeQuant supports per-tensor and per-channel encodings (got ${g.kind})`);
  }
  const { qmin, qmax } = intRange(s.bits, s.signed, s.narrow);
  return {
    scale: g.kind === 'tensor' ? enc.scale[0] : enc.scale,
    zeroPoint: g.kind === 'tensor' ? enc.zeroPoint[0] : enc.zeroPoint,
    qmin,
    qmax,
    axis: g.kind === 'channel' ? g.axis : undefined,
    grad,
  };
}

/**
 * Inserts a FakeQuant on `tensor` (an initializer, graph input or node output of the main graph): every
 * consumer then reads the fake-quantized value. Returns the node; its scale and zero point are initializers named
 * `<tensor>_fq_scale` and `<tensor>_fq_zero_point` (made unique). Graph outputs keep the unquantized value.
 */
export function insertFakeQuant(model: Model, tensor: string, spec: FakeQuantSpec): Node {
  const g = model.graph;
  if (!g.definedNames().has(tensor)) {
    throw new QnnxError('E_GRAPH', `cannot fake-quantize '${tensor}': no such value in the main graph`, {
      tensor,
    });
  }
  const scales = typeof spec.scale === 'number' ? [spec.scale] : Array.from(spec.scale);
  const zps =
    spec.zeroPoint === undefined
      ? scales.map(() => 0)
      : typeof spec.zeroPoint === 'number'
        ? [spec.zeroPoint]
        : Array.from(spec.zeroPoint);
  const perChannel = typeof spec.scale !== 'number';
  if (perChannel && spec.axis === undefined) {
    throw new QnnxError('E_USAGE', `fake quant of '${tensor}': per-channel scales need an axis`, { tensor });
  }
  if (zps.length !== scales.length || zps.some((z) => !Number.isInteger(z))) {
    throw new QnnxError('E_USAGE', `fake quant of '${tensor}': zero points must be integers, one per scale`, {
      tensor,
    });
  }
  if (scales.some((s) => !(s > 0) || !Number.isFinite(s))) {
    throw new QnnxError('E_USAGE', `fake quant of '${tensor}': scales must be positive and finite`, {
      tensor,
    });
  }
  const b = new GraphBuilder(g);
  const dims = perChannel ? [scales.length] : [];
  const scale = b.floats(`${tensor}_fq_scale`, dims, scales);
  const zp = b.floats(`${tensor}_fq_zero_point`, dims, zps);
  const consumers = g.nodes.slice();
  const attrs: Record<string, number | string> = {
    qmin: spec.qmin,
    qmax: spec.qmax,
    grad: spec.grad ?? 'ste',
  };
  if (perChannel) attrs.axis = spec.axis!;
  const node = b.node(FAKE_QUANT_OP, [tensor, scale, zp], {
    domain: FAKE_QUANT_DOMAIN,
    attrs,
    name: `${tensor}_fq`,
  });
  if (spec.gradScale !== undefined) node.setAttr('grad_scale', AttributeType.FLOAT, spec.gradScale);
  const out = node.outputs[0];
  for (const n of consumers) n.inputs = n.inputs.map((i) => (i === tensor ? out : i));
  // Keep topological order: the FakeQuant goes right after the producer of its input (or first).
  g.nodes.pop();
  const producerIndex = g.nodes.findIndex((n) => n.outputs.includes(tensor));
  g.nodes.splice(producerIndex + 1, 0, node);
  if (!model.opset(FAKE_QUANT_DOMAIN)) model.setOpset(FAKE_QUANT_DOMAIN, 1);
  declareFakeQuantTypes(model);
  return node;
}

/** Runs type inference with every FakeQuant read as an Identity (its output has its input's type). */
export function inferTypesWithFakeQuant(model: Model, inputShapes?: Record<string, Dim[]>): TypeTable {
  const swapped: Node[] = [];
  for (const n of model.graph.nodes) {
    if (isFakeQuant(n)) {
      n.opType = 'Identity';
      n.domain = '';
      swapped.push(n);
    }
  }
  try {
    return inferTypes(model, { inputShapes: inputShapes as Record<string, (number | string)[]> });
  } finally {
    for (const n of swapped) {
      n.opType = FAKE_QUANT_OP;
      n.domain = FAKE_QUANT_DOMAIN;
    }
  }
}

/**
 * Records the type of each FakeQuant output (its input's type under `inputShapes`) in value_info, replacing an
 * older record, so that shape inference (which has no rule for qnnx ops) sees through FakeQuant nodes.
 */
export function declareFakeQuantTypes(model: Model, inputShapes?: Record<string, Dim[]>): number {
  const fq = model.graph.nodes.filter(isFakeQuant);
  if (fq.length === 0) return 0;
  const types = inferTypesWithFakeQuant(model, inputShapes);
  const outs = new Set(fq.map((n) => n.outputs[0]));
  model.graph.valueInfo = model.graph.valueInfo.filter((v) => !outs.has(v.name));
  for (const n of fq) {
    const t = types.get(n.inputs[0]);
    if (t?.elemType === undefined) continue;
    const shape = t.shape?.map((d) => (typeof d === 'number' || typeof d === 'string' ? d : null));
    model.graph.valueInfo.push({
      name: n.outputs[0],
      type: {
        tensor_type: {
          elem_type: t.elemType,
          ...(shape
            ? {
                shape: {
                  dim: shape.map((d) =>
                    typeof d === 'number' ? { dim_value: d } : typeof d === 'string' ? { dim_param: d } : {},
                  ),
                },
              }
            : {}),
        },
      },
    });
  }
  return fq.length;
}

/**
 * The shape that makes a per-channel parameter of [C] broadcast against a rank-`rank` tensor along `axis`:
 * [-1, 1, ..., 1] with rank−1−axis ones. Undefined for per-tensor parameters (they broadcast as they are).
 */
export function broadcastShape(axis: number | undefined, rank: number, node?: Node): number[] | undefined {
  if (axis === undefined) return undefined;
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) {
    throw new QnnxError(
      'E_ATTRIBUTE',
      `node ${node?.label() ?? 'FakeQuant'}: axis ${axis} is out of range for a rank-${rank} input`,
      { node: node?.name },
    );
  }
  return [-1, ...Array.from({ length: rank - 1 - a }, () => 1)];
}

export interface LowerRecord {
  pass: 'fake-quant-lowering';
  changed: boolean;
  details: { lowered: number };
}

/**
 * Rewrites every FakeQuant of the main graph into float ops, in place:
 * y = Mul(Sub(Clip(Add(Round(Div(x, s)), zp), qmin, qmax), zp), s), with s and zp reshaped to broadcast along
 * `axis` for per-channel nodes. Values named by the old node stay the same (the Mul writes its output).
 */
export function lowerFakeQuant(model: Model, inputShapes?: Record<string, Dim[]>): LowerRecord {
  const g = model.graph;
  const fq = g.nodes.filter(isFakeQuant);
  if (fq.length === 0) return { pass: 'fake-quant-lowering', changed: false, details: { lowered: 0 } };
  const types = inferTypesWithFakeQuant(model, inputShapes);
  const b = new GraphBuilder(g);
  const opset = model.opset('') ?? 0;
  const replaced = new Map<Node, Node[]>();
  for (const n of fq) {
    const a = fakeQuantAttrs(n);
    const [x, s0, zp0] = n.inputs;
    const base = n.name || `${x}_fq`;
    const before = g.nodes.length;
    const elem = types.get(x)?.elemType;
    const rank = types.get(x)?.shape?.length;
    let s = s0;
    let zp = zp0 || undefined;
    if (a.axis !== undefined) {
      if (rank === undefined) {
        throw new QnnxError('E_SHAPE', `node ${n.label()}: per-channel FakeQuant needs the rank of '${x}'`, {
          node: n.name,
          tensor: x,
        });
      }
      const bs = broadcastShape(a.axis, rank, n)!;
      const shape = b.int64s(`${base}_bshape`, [bs.length], bs);
      s = b.op('Reshape', [s, shape], undefined, `${base}_scale_b`);
      if (zp) zp = b.op('Reshape', [zp, shape], undefined, `${base}_zp_b`);
    }
    const like = (v: number) =>
      elem === DataType.DOUBLE
        ? b.initializer(`${base}_c`, DataType.DOUBLE, [], Float64Array.of(v))
        : b.floats(`${base}_c`, [], [v]);
    let q = b.op('Round', [b.op('Div', [x, s], undefined, `${base}_div`)], undefined, `${base}_round`);
    if (zp) q = b.op('Add', [q, zp], undefined, `${base}_add_zp`);
    q =
      opset >= 11
        ? b.op('Clip', [q, like(a.qmin), like(a.qmax)], undefined, `${base}_clip`)
        : b.op('Min', [b.op('Max', [q, like(a.qmin)]), like(a.qmax)], undefined, `${base}_clip`);
    if (zp) q = b.op('Sub', [q, zp], undefined, `${base}_sub_zp`);
    b.node('Mul', [q, s], { outputs: [n.outputs[0]], name: `${base}_dq` });
    replaced.set(n, g.nodes.splice(before));
  }
  // Put each node's replacement where the FakeQuant was (keeps the file in topological order).
  g.nodes = g.nodes.flatMap((n) => replaced.get(n) ?? [n]);
  const outs = new Set(fq.map((n) => n.outputs[0]));
  g.valueInfo = g.valueInfo.filter((v) => !outs.has(v.name));
  if (!g.nodes.some((n) => n.domain === FAKE_QUANT_DOMAIN)) {
    model.opsetImports = model.opsetImports.filter((o) => o.domain !== FAKE_QUANT_DOMAIN);
  }
  return { pass: 'fake-quant-lowering', changed: true, details: { lowered: fq.length } };
}
