/**
 * QDQ export: a QuantSim with encodings becomes a standard ONNX model with QuantizeLinear/DequantizeLinear pairs
 * on activations and integer initializers behind DequantizeLinear for weights and biases, so the file really
 * shrinks and ONNX Runtime fuses the patterns into integer kernels. The input model is not modified.
 */
import { QnnxError } from '../../errors.js';
import { GraphBuilder } from '../../ir/builder.js';
import { Graph, Node } from '../../ir/graph.js';
import { Model } from '../../ir/model.js';
import { Tensor } from '../../ir/tensor.js';
import { DataType } from '../../onnx/dtype.js';
import { decodeToFloat32, packSubByte, roundHalfEven } from '../../onnx/formats.js';
import { AttributeType } from '../../onnx/proto.js';
import type { TensorStorage } from '../../tensor.js';
import type { Encoding } from '../encoding.js';
import { normAxis } from '../encoding.js';
import { fakeQuantize, quantize } from '../quantizer.js';
import { storageType } from '../scheme.js';
import { affineEncoding, type Quantizer, type QuantSim } from '../sim/quantsim.js';

/** Opset a QDQ export needs for its types and granularities. */
export function requiredOpset(sim: QuantSim): number {
  let need = Math.max(13, sim.target.opset);
  for (const q of sim.quantizers.values()) {
    if (!q.enabled) continue;
    const s = q.scheme;
    if (s.granularity.kind === 'block' || s.granularity.kind === 'vector') need = Math.max(need, 21);
    if (s.format === 'int' && q.kind !== 'bias' && (s.bits < 8 || s.bits > 8)) need = Math.max(need, 21);
    if (s.format === 'int' && q.kind !== 'bias' && s.bits <= 2) need = Math.max(need, 25);
    if (s.format.startsWith('float8')) need = Math.max(need, 19);
  }
  return need;
}

/** Storage of quantized values in the ONNX element type of the scheme. */
function storeValues(values: Int32Array, dtype: DataType): TensorStorage {
  switch (dtype) {
    case DataType.INT8:
      return Int8Array.from(values);
    case DataType.INT16:
      return Int16Array.from(values);
    case DataType.UINT16:
      return Uint16Array.from(values);
    case DataType.INT32:
      return values;
    case DataType.INT4:
    case DataType.UINT4:
      return packSubByte(values, 4, dtype === DataType.INT4);
    case DataType.INT2:
    case DataType.UINT2:
      return packSubByte(values, 2, dtype === DataType.INT2);
    default:
      return Uint8Array.from(values); // uint8 and float8 bit patterns
  }
}

function qdqAttrs(enc: Encoding, rank: number): { name: string; type: AttributeType; value: number }[] {
  const g = enc.scheme.granularity;
  if (g.kind === 'tensor') return [];
  const axis = normAxis(g.axis, rank);
  if (g.kind === 'channel') return [{ name: 'axis', type: AttributeType.INT, value: axis }];
  return [
    { name: 'axis', type: AttributeType.INT, value: axis },
    { name: 'block_size', type: AttributeType.INT, value: g.size },
  ];
}

interface QParams {
  scale: string;
  zeroPoint: string;
}

export interface QdqExportResult {
  model: Model;
  quantizedTensors: number;
  weightBytesBefore: number;
  weightBytesAfter: number;
  /**
   * The Convs of `model` whose int32 bias took out the shift δ of an affine-derived input encoding (pass to
   * `absorbAffineIntoQdq`, which would otherwise take it out again).
   */
  compensatedConvs: Node[];
}

/** Builds the QDQ model. Disabled quantizers and quantizers without encodings are left out. */
export function exportQdq(sim: QuantSim): QdqExportResult {
  const missing = sim.missingEncodings();
  if (missing.length) {
    throw new QnnxError('E_USAGE', `quantizers without encodings: ${missing.slice(0, 5).join(', ')}`, {
      tensor: missing[0],
    });
  }
  const src = sim.model;
  const model = new Model();
  Object.assign(model, src, { graph: new Graph(), opsetImports: src.opsetImports.map((o) => ({ ...o })) });
  const g = model.graph;
  const sg = src.graph;
  Object.assign(g, sg, {
    nodes: sg.nodes.map((n) => cloneNode(n)),
    inputs: sg.inputs.map((v) => ({ ...v })),
    outputs: sg.outputs.map((v) => ({ ...v })),
    valueInfo: [...sg.valueInfo],
    initializers: new Map(sg.initializers),
  });
  const need = requiredOpset(sim);
  if ((model.opset('') ?? 0) < need) {
    throw new QnnxError(
      'E_OPSET',
      `the model must be at opset ${need} or later before QDQ export (upgrade it first)`,
    );
  }
  const b = new GraphBuilder(g);
  const params = new Map<string, QParams>();
  const paramsFor = (q: Quantizer): QParams => {
    const key = q.sharedWith ?? q.tensor;
    const cached = params.get(key);
    if (cached) return cached;
    const enc = q.encoding!;
    const dtype = q.kind === 'bias' ? DataType.INT32 : storageType(enc.scheme);
    const sdims = enc.scheme.granularity.kind === 'tensor' ? [] : enc.scaleDims;
    const scale = b.initializer(`${key}_scale`, DataType.FLOAT, sdims, Float32Array.from(enc.scale));
    const zp = b.initializer(`${key}_zero_point`, dtype, sdims, storeValues(enc.zeroPoint, dtype));
    const p = { scale, zeroPoint: zp };
    params.set(key, p);
    return p;
  };

  let weightBytesBefore = 0;
  let weightBytesAfter = 0;
  let count = 0;
  const rename = new Map<string, string>();
  const outputNames = new Set(g.outputs.map((o) => o.name));
  const newNodes: { after: string | undefined; nodes: Node[] }[] = [];
  const compensatedConvs: Node[] = [];

  for (const q of sim.quantizers.values()) {
    if (!q.enabled || !q.encoding) continue;
    const enc = q.encoding;
    count++;
    if (q.kind === 'weight' || q.kind === 'bias' || q.kind === 'constant') {
      const t = g.initializer(q.tensor)!;
      let x =
        t.dtype === DataType.FLOAT ? (t.data as Float32Array) : decodeToFloat32(t.dtype, t.data, t.size);
      let values: Int32Array;
      if (q.kind === 'bias') {
        const shifted = compensatedBias(sim, q, x, sg);
        if (shifted) {
          x = shifted.bias;
          // the exported clone of the Conv: same position, new nodes are appended after this loop
          compensatedConvs.push(g.nodes[sg.nodes.indexOf(shifted.conv)]!);
        }
        values = new Int32Array(t.size);
        for (let i = 0; i < t.size; i++) {
          const v = roundHalfEven(Math.fround(x[i] / enc.scale[i]));
          values[i] = Math.max(-(2 ** 31), Math.min(2 ** 31 - 1, v));
        }
      } else values = quantize(x, t.dims, enc);
      const dtype = q.kind === 'bias' ? DataType.INT32 : storageType(enc.scheme);
      const qName = b.uniqueName(`${q.tensor}_quantized`);
      const qt = new Tensor(qName, dtype, [...t.dims], storeValues(values, dtype));
      g.addInitializer(qt);
      weightBytesBefore += t.byteLength;
      weightBytesAfter += qt.byteLength;
      const p = paramsFor(q);
      const out = b.uniqueName(`${q.tensor}_dequantized`);
      const dq = new Node(
        'DequantizeLinear',
        [qName, p.scale, p.zeroPoint],
        [out],
        q.kind === 'bias'
          ? [{ name: 'axis', type: AttributeType.INT, value: 0 }]
          : qdqAttrs(enc, t.dims.length),
        b.uniqueName(`${q.tensor}_DequantizeLinear`),
      );
      newNodes.push({ after: undefined, nodes: [dq] });
      rename.set(q.tensor, out);
      continue;
    }
    // activation: Q -> DQ after the producer; consumers read the DQ output
    const p = paramsFor(q);
    const isOutput = outputNames.has(q.tensor);
    let floatName = q.tensor;
    if (isOutput) {
      floatName = b.uniqueName(`${q.tensor}_float`);
      for (const n of g.nodes) n.outputs = n.outputs.map((o) => (o === q.tensor ? floatName : o));
    }
    const qOut = b.uniqueName(`${q.tensor}_quantized`);
    const dqOut = isOutput ? q.tensor : b.uniqueName(`${q.tensor}_dequantized`);
    const attrs = qdqAttrs(q.encoding, 0);
    const qn = new Node(
      'QuantizeLinear',
      [floatName, p.scale, p.zeroPoint],
      [qOut],
      attrs,
      b.uniqueName(`${q.tensor}_QuantizeLinear`),
    );
    const dqn = new Node(
      'DequantizeLinear',
      [qOut, p.scale, p.zeroPoint],
      [dqOut],
      attrs,
      b.uniqueName(`${q.tensor}_DequantizeLinear`),
    );
    newNodes.push({ after: floatName, nodes: [qn, dqn] });
    if (!isOutput) rename.set(q.tensor, dqOut);
  }
  // Rewire consumers (main graph only; subgraphs keep reading float values) and add the new nodes.
  const inserted = new Set(newNodes.flatMap((e) => e.nodes));
  for (const n of g.nodes) {
    if (inserted.has(n)) continue;
    n.inputs = n.inputs.map((i) => rename.get(i) ?? i);
  }
  g.nodes.push(...newNodes.flatMap((e) => e.nodes));
  // Float initializers nothing reads any more are dropped (their quantized copies replace them).
  const used = new Set<string>();
  for (const n of g.nodes) for (const i of n.inputs) used.add(i);
  for (const sub of g.nodes.flatMap((n) => n.subgraphs()))
    for (const n of sub.allNodes()) for (const i of n.inputs) used.add(i);
  for (const o of g.outputs) used.add(o.name);
  for (const name of [...g.initializers.keys()]) if (!used.has(name)) g.initializers.delete(name);
  g.sort();
  return { model, quantizedTensors: count, weightBytesBefore, weightBytesAfter, compensatedConvs };
}

/**
 * The float bias of a Conv whose input quantizer is affine-derived (`affineEncoding`), with the shift δ of that
 * encoding taken out: bias − δ·ΣŴ per output channel (Ŵ the quantized weights), as `absorbAffineIntoQdq` does
 * when it absorbs the chain. Exact except at padded borders. Undefined when nothing is to be taken out.
 */
function compensatedBias(
  sim: QuantSim,
  q: Quantizer,
  bias: Float32Array,
  g: Graph,
): { bias: Float32Array; conv: Node } | undefined {
  if (!q.biasOf) return undefined;
  const x = sim.quantizers.get(q.biasOf.input);
  const w = sim.quantizers.get(q.biasOf.weight);
  const src = x?.affineOf ? sim.quantizers.get(x.affineOf.tensor) : undefined;
  if (!x?.enabled || !src?.enabled || !w?.enabled || !w.encoding || !x.encoding) return undefined;
  const d = affineEncoding(sim, x);
  if (!d || d.delta === 0) return undefined;
  // only while the input really is on the derived grid
  if (x.encoding.scale[0] !== d.encoding.scale[0] || x.encoding.zeroPoint[0] !== d.encoding.zeroPoint[0])
    return undefined;
  const conv = g.nodes.find(
    (n) => n.opType === 'Conv' && n.inputs[0] === x.tensor && n.inputs[2] === q.tensor,
  );
  const wt = g.initializer(q.biasOf.weight);
  if (!conv || !wt || wt.dtype !== DataType.FLOAT) return undefined;
  const wq = fakeQuantize(wt.data as Float32Array, wt.dims, w.encoding);
  const O = wt.dims[0]!;
  if (bias.length !== O) return undefined;
  const per = wq.length / O;
  const out = new Float32Array(O);
  for (let o = 0; o < O; o++) {
    let sum = 0;
    for (let k = 0; k < per; k++) sum += wq[o * per + k]!;
    out[o] = bias[o]! - d.delta * sum;
  }
  return { bias: out, conv };
}

function cloneNode(n: Node): Node {
  const c = new Node(n.opType, [...n.inputs], [...n.outputs], n.attributes, n.name, n.domain);
  c.hasName = n.hasName;
  c.hasDomain = n.hasDomain;
  c.overload = n.overload;
  c.docString = n.docString;
  c.metadataProps = n.metadataProps;
  return c;
}
