/**
 * float16 conversion, in the manner of onnxconverter-common's `convert_float_to_float16`: float32 initializers
 * and Constant tensors become float16 (after clipping tiny and huge magnitudes that float16 cannot hold), every
 * float32 value computed by a converted node becomes float16 (value_info updated), and Cast nodes are inserted
 * where a float32 value meets a float16 consumer or the other way round:
 *
 * - at the graph inputs and outputs, which keep their float32 types by default (`keepIoTypes`);
 * - around blocked ops (`blockList`: op types kept in float32 because their inputs must be float32, e.g. Resize's
 *   scales, or precision suffers), nodes of other domains (ai.onnx.ml, com.microsoft) and nodes with subgraphs
 *   (If/Loop/Scan stay float32; the outer values their bodies read are cast to float32 and renamed inside).
 *
 * Cast(to=float) nodes and Constants feeding only float32 consumers are left alone; Shape and Cast read either
 * type, so they get no Cast in front. On CPU, ONNX Runtime runs ops without a float16 kernel (Conv on x86, for
 * one) in float32 behind Casts of its own, so a converted model runs everywhere, at half the file size.
 */
import { QnnxError } from '../../errors.js';
import { GraphBuilder } from '../../ir/builder.js';
import type { Attribute, Graph, Node } from '../../ir/graph.js';
import { implicitInputs } from '../../ir/graph.js';
import type { Model } from '../../ir/model.js';
import { inferTypes } from '../../ir/passes/shape-inference.js';
import { Tensor } from '../../ir/tensor.js';
import { DataType } from '../../onnx/dtype.js';
import { decodeToFloat32, toFloat16Array } from '../../onnx/formats.js';
import { AttributeType, type TypeProto } from '../../onnx/proto.js';
import { copyModelStructure } from '../../runtime/taps.js';
import { elemTypeOf, recordElementTypes } from '../../runtime/value-types.js';

/** Op types kept in float32 by default: float32-only inputs (scales, boxes), integer-like semantics, or dtype attributes. */
export const DEFAULT_FP16_BLOCK_LIST: readonly string[] = [
  'Resize',
  'Upsample',
  'Range',
  'CumSum',
  'NonMaxSuppression',
  'RoiAlign',
  'TopK',
  'QuantizeLinear',
  'DequantizeLinear',
  'DynamicQuantizeLinear',
  'QLinearConv',
  'QLinearMatMul',
  'RandomNormal',
  'RandomUniform',
  'RandomNormalLike',
  'RandomUniformLike',
  'Multinomial',
  'Bernoulli',
  'EyeLike',
];

export interface Float16Options {
  /** Graph inputs and outputs stay float32, with Casts inside the graph (default true). */
  keepIoTypes?: boolean;
  /** Op types kept in float32 (default DEFAULT_FP16_BLOCK_LIST). */
  blockList?: readonly string[];
  /** Node names kept in float32. */
  nodeBlockList?: readonly string[];
  /** Non-zero magnitudes below this become ±minPositiveValue (default 1e-7, as onnxconverter-common). */
  minPositiveValue?: number;
  /** Finite magnitudes above this become ±maxFiniteValue (default 1e4, as onnxconverter-common). */
  maxFiniteValue?: number;
  /**
   * Keep a node in float32 when one of its constant inputs holds finite magnitudes above maxFiniteValue, instead
   * of clipping them (default true). Clipping such a tensor silently changes the model: PP-OCRv4 det has
   * BatchNormalization variances up to 9.8e7, and clipping them to 1e4 (or to float16's 65504) ruins its output.
   */
  blockOutOfRange?: boolean;
}

export interface Float16Result {
  model: Model;
  /** Initializers and Constant tensors converted to float16. */
  convertedTensors: number;
  /** Elements clipped to ±minPositiveValue or ±maxFiniteValue. */
  clippedValues: number;
  /** Nodes left in float32 (blocked op types, other domains, subgraph owners, out-of-range constants). */
  blockedNodes: string[];
  /** The subset of blockedNodes kept in float32 because a constant input is out of float16's range. */
  outOfRangeNodes: string[];
  /** Cast nodes inserted. */
  castsInserted: number;
  /** Bytes of float tensor data before and after. */
  tensorBytesBefore: number;
  tensorBytesAfter: number;
  /**
   * Converted initializers that were also listed as graph inputs (overridable defaults): removed from the inputs
   * (IR ≥ 4; IR < 4 requires the entry, which is then typed float16).
   */
  initializerInputsRemoved: string[];
}

type Precision = 'fp16' | 'fp32';

/** Input slots that must stay float32 even on converted nodes (their ONNX type is tensor(float) only). */
const FLOAT32_SLOTS: Record<string, number[]> = { Resize: [1, 2], Upsample: [1] };
/** Output slots that stay float32 on converted nodes (LayerNormalization's Mean/InvStdDev: stash_type float). */
const FLOAT32_OUTPUTS: Record<string, number[]> = { LayerNormalization: [1, 2] };
/** Input slots that accept any element type (no Cast needed in front). */
const ANY_SLOTS: Record<string, number[]> = { Cast: [0], Shape: [0], Size: [0], CastLike: [0] };

function isDefaultDomain(n: Node): boolean {
  return n.domain === '' || n.domain === 'ai.onnx';
}

function tensorTypeWith(t: TypeProto | undefined, elem: DataType): TypeProto {
  return { ...t, tensor_type: { ...t?.tensor_type, elem_type: elem } };
}

/** Converts float32 values to float16 bits after onnxconverter-common's clipping; counts clipped elements. */
function toFloat16Clipped(
  x: Float32Array,
  minPos: number,
  maxFinite: number,
): { bits: Uint16Array; clipped: number } {
  let clipped = 0;
  let y: Float32Array | undefined;
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    const a = Math.abs(v);
    let r = v;
    if (a > 0 && a < minPos) r = v > 0 ? minPos : -minPos;
    else if (a > maxFinite && a !== Number.POSITIVE_INFINITY) r = v > 0 ? maxFinite : -maxFinite;
    if (r !== v) {
      y ??= Float32Array.from(x);
      y[i] = r;
      clipped++;
    }
  }
  return { bits: toFloat16Array(y ?? x), clipped };
}

/** A structural copy of a subgraph (new graph, node and list objects, recursively; tensors shared). */
function copyGraphDeep(g: Graph): Graph {
  const c = Object.assign(Object.create(Object.getPrototypeOf(g)) as Graph, g);
  c.nodes = g.nodes.map((n) => {
    const m = Object.assign(Object.create(Object.getPrototypeOf(n)) as Node, n);
    m.inputs = [...n.inputs];
    m.outputs = [...n.outputs];
    m.attributes = n.attributes.map(copyGraphAttribute);
    return m;
  });
  c.inputs = g.inputs.map((v) => ({ ...v }));
  c.outputs = g.outputs.map((v) => ({ ...v }));
  c.valueInfo = g.valueInfo.map((v) => ({ ...v }));
  c.initializers = new Map(g.initializers);
  return c;
}

function copyGraphAttribute(a: Attribute): Attribute {
  if (a.type === AttributeType.GRAPH && a.value) return { ...a, value: copyGraphDeep(a.value as Graph) };
  if (a.type === AttributeType.GRAPHS && a.value)
    return { ...a, value: (a.value as Graph[]).map(copyGraphDeep) };
  return a;
}

/** Gives a node its own copies of its subgraphs (copyModelStructure shares them with the input model). */
function detachSubgraphs(n: Node, done: Set<Node>): void {
  if (done.has(n)) return;
  done.add(n);
  n.attributes = n.attributes.map(copyGraphAttribute);
}

/** Renames references to the outer value `from` inside a subgraph (and its nested subgraphs), respecting shadowing. */
function renameOuterReference(g: Graph, from: string, to: string): void {
  if (g.definedNames().has(from)) return;
  for (const n of g.nodes) {
    n.inputs = n.inputs.map((i) => (i === from ? to : i));
    for (const sub of n.subgraphs()) renameOuterReference(sub, from, to);
  }
  for (const o of g.outputs) if (o.name === from) o.name = to;
}

/** Converts a model to float16. Returns a new model; the input is not modified. */
export function convertToFloat16(source: Model, options: Float16Options = {}): Float16Result {
  const keepIo = options.keepIoTypes ?? true;
  const blockOps = new Set(options.blockList ?? DEFAULT_FP16_BLOCK_LIST);
  const blockNames = new Set(options.nodeBlockList ?? []);
  const minPos = options.minPositiveValue ?? 1e-7;
  const maxFinite = options.maxFiniteValue ?? 1e4;
  if (!(minPos >= 0) || !(maxFinite > 0))
    throw new QnnxError('E_USAGE', 'minPositiveValue and maxFiniteValue must be positive');

  const model = copyModelStructure(source);
  const g = model.graph;
  const b = new GraphBuilder(g);

  // Element types of the main graph's values: inference first, the forward recording as a fallback.
  let inferred: ((name: string) => DataType | undefined) | undefined;
  try {
    const table = inferTypes(model);
    inferred = (name) => table.get(name)?.elemType;
  } catch {
    inferred = undefined;
  }
  const recorded = recordElementTypes(g);
  const typeOf = (name: string) => (name ? (inferred?.(name) ?? recorded.get(name)) : undefined);
  const isFloat = (name: string) => typeOf(name) === DataType.FLOAT;

  const consumers = g.consumers();
  const producers = g.producers();

  // Nodes with a constant input beyond maxFiniteValue stay float32 (unless the caller asks for clipping).
  const outOfRange = new Set<Node>();
  if (options.blockOutOfRange ?? true) {
    const cache = new Map<string, boolean>();
    const tooLarge = (name: string): boolean => {
      const known = cache.get(name);
      if (known !== undefined) return known;
      let t = g.initializer(name);
      const p = producers.get(name);
      if (!t && p?.opType === 'Constant' && isDefaultDomain(p)) {
        const a = p.attributes[0];
        if (a?.name === 'value' && a.type === AttributeType.TENSOR) t = a.value as Tensor;
        else if (a?.name === 'value_float' || a?.name === 'value_floats') {
          const v = a.name === 'value_float' ? [a.value as number] : (a.value as number[]);
          t = new Tensor(name, DataType.FLOAT, [v.length], Float32Array.from(v));
        }
      }
      let big = false;
      if (t && t.dtype === DataType.FLOAT) {
        const d = t.data as Float32Array;
        for (let i = 0; i < d.length && !big; i++) {
          const a = Math.abs(d[i]);
          big = a > maxFinite && a !== Number.POSITIVE_INFINITY;
        }
      }
      cache.set(name, big);
      return big;
    };
    for (const n of g.nodes)
      if (n.opType !== 'Constant' && n.inputs.some((i) => i && tooLarge(i))) outOfRange.add(n);
  }
  const blocked = (n: Node) =>
    blockOps.has(n.opType) ||
    blockNames.has(n.name) ||
    !isDefaultDomain(n) ||
    n.subgraphs().length > 0 ||
    outOfRange.has(n);
  const graphOutputs = new Set(g.outputs.map((o) => o.name));
  const outputPrecision: Precision = keepIo ? 'fp32' : 'fp16';

  /** The precision a consumer slot wants for a float value; undefined when it takes either. */
  const wantAt = (n: Node, slot: number): Precision | undefined => {
    if (ANY_SLOTS[n.opType]?.includes(slot) && isDefaultDomain(n)) return undefined;
    if (blocked(n) || FLOAT32_SLOTS[n.opType]?.includes(slot)) return 'fp32';
    return 'fp16';
  };
  /** Whether any consumer of `name` wants it as float16 (decides Constants, initializers and Cast(to=float)). */
  const wantedAsFp16 = (name: string): boolean => {
    if (graphOutputs.has(name) && outputPrecision === 'fp16') return true;
    // (Subgraph owners are blocked: their bodies read outer values as float32.)
    for (const c of consumers.get(name) ?? [])
      for (let i = 0; i < c.inputs.length; i++)
        if (c.inputs[i] === name && wantAt(c, i) === 'fp16') return true;
    return false;
  };

  // Which nodes run in float16.
  const converted = new Set<Node>();
  for (const n of g.nodes) {
    if (blocked(n)) continue;
    if (n.opType === 'Constant' || (n.opType === 'Cast' && n.attrInt('to', 0) === DataType.FLOAT)) {
      const out = n.outputs[0];
      if (out && isFloat(out) && wantedAsFp16(out) && !(graphOutputs.has(out) && keepIo)) converted.add(n);
      continue;
    }
    converted.add(n);
  }

  // Precision of every float value of the main graph.
  const precision = new Map<string, Precision>();
  const initializerInputsRemoved: string[] = [];
  let convertedTensors = 0;
  let clippedValues = 0;
  let tensorBytesBefore = 0;
  let tensorBytesAfter = 0;

  for (const [name, t] of [...g.initializers]) {
    if (t.dtype !== DataType.FLOAT) continue;
    const isOutput = graphOutputs.has(name);
    if (!wantedAsFp16(name) || (isOutput && keepIo)) {
      precision.set(name, 'fp32');
      continue;
    }
    const { bits, clipped } = toFloat16Clipped(t.data as Float32Array, minPos, maxFinite);
    const h = new Tensor(name, DataType.FLOAT16, [...t.dims], bits);
    h.docString = t.docString;
    g.initializers.set(name, h);
    precision.set(name, 'fp16');
    convertedTensors++;
    clippedValues += clipped;
    tensorBytesBefore += t.byteLength;
    tensorBytesAfter += h.byteLength;
    const idx = g.inputs.findIndex((v) => v.name === name);
    if (idx >= 0) {
      // IR < 4 requires initializers to be listed as inputs: keep the entry, typed float16.
      if (model.irVersion < 4)
        g.inputs[idx] = { ...g.inputs[idx], type: tensorTypeWith(g.inputs[idx].type, DataType.FLOAT16) };
      else {
        g.inputs.splice(idx, 1);
        initializerInputsRemoved.push(name);
      }
    }
  }
  for (const v of g.inputs) {
    if (!isFloat(v.name) || g.initializers.has(v.name)) continue;
    precision.set(v.name, keepIo ? 'fp32' : 'fp16');
    if (!keepIo) v.type = tensorTypeWith(v.type, DataType.FLOAT16);
  }
  for (const n of g.nodes) {
    const p: Precision = converted.has(n) ? 'fp16' : 'fp32';
    n.outputs.forEach((o, i) => {
      if (o && isFloat(o)) precision.set(o, FLOAT32_OUTPUTS[n.opType]?.includes(i) ? 'fp32' : p);
    });
  }

  // Convert the converted nodes' attributes: Constant tensors, Cast targets, ConstantOfShape values.
  for (const n of converted) {
    if (n.opType === 'Constant') {
      const a = n.attributes[0];
      let values: Float32Array | undefined;
      let dims: number[] = [];
      if (a?.name === 'value' && a.type === AttributeType.TENSOR) {
        const t = a.value as Tensor;
        if (t.dtype !== DataType.FLOAT) continue;
        values = decodeToFloat32(t.dtype, t.data, t.size);
        dims = [...t.dims];
        tensorBytesBefore += t.byteLength;
      } else if (a?.name === 'value_float') {
        values = Float32Array.of(a.value as number);
        tensorBytesBefore += 4;
      } else if (a?.name === 'value_floats') {
        values = Float32Array.from(a.value as number[]);
        dims = [values.length];
        tensorBytesBefore += values.byteLength;
      }
      if (!values) continue;
      const { bits, clipped } = toFloat16Clipped(values, minPos, maxFinite);
      const h = new Tensor('', DataType.FLOAT16, dims, bits);
      h.hasName = false;
      n.attributes = [{ name: 'value', type: AttributeType.TENSOR, value: h }];
      convertedTensors++;
      clippedValues += clipped;
      tensorBytesAfter += h.byteLength;
    } else if (n.opType === 'Cast' && n.attrInt('to', 0) === DataType.FLOAT) {
      n.setAttr('to', AttributeType.INT, DataType.FLOAT16);
    } else if (n.opType === 'ConstantOfShape' && n.outputs[0] && isFloat(n.outputs[0])) {
      const t = n.attrTensor('value');
      const v = t ? decodeToFloat32(t.dtype, t.data, 1)[0] : 0;
      const h = new Tensor(
        '',
        DataType.FLOAT16,
        [1],
        toFloat16Clipped(Float32Array.of(v), minPos, maxFinite).bits,
      );
      h.hasName = false;
      n.setAttr('value', AttributeType.TENSOR, h);
    }
  }

  // Casts where a value's precision differs from what a consumer wants.
  const casts = new Map<string, string>();
  let castsInserted = 0;
  const castTo = (name: string, want: Precision): string => {
    const key = `${want}:${name}`;
    const have = casts.get(key);
    if (have) return have;
    const out = b.uniqueName(`${name}_${want}`);
    b.node('Cast', [name], {
      outputs: [out],
      name: `${name}_cast_${want}`,
      attrs: { to: want === 'fp16' ? DataType.FLOAT16 : DataType.FLOAT },
    });
    castsInserted++;
    casts.set(key, out);
    return out;
  };
  const original = [...g.nodes];
  const detached = new Set<Node>();
  for (const n of original) {
    n.inputs = n.inputs.map((x, i) => {
      const p = x ? precision.get(x) : undefined;
      if (!p) return x;
      const want = wantAt(n, i);
      return want && want !== p ? castTo(x, want) : x;
    });
    if (n.subgraphs().length) {
      for (const x of implicitInputs(n)) {
        if (precision.get(x) !== 'fp16') continue;
        const c = castTo(x, 'fp32');
        detachSubgraphs(n, detached);
        for (const sub of n.subgraphs()) renameOuterReference(sub, x, c);
      }
    }
  }

  // Graph outputs: a value computed in float16 is renamed and cast back (or declared float16).
  for (const o of g.outputs) {
    if (precision.get(o.name) !== 'fp16') continue;
    if (!keepIo) {
      o.type = tensorTypeWith(o.type, DataType.FLOAT16);
      continue;
    }
    const producer = producers.get(o.name);
    if (!producer) continue;
    const inner = b.uniqueName(`${o.name}_fp16`);
    producer.outputs = producer.outputs.map((x) => (x === o.name ? inner : x));
    for (const n of g.nodes) {
      if (n === producer) continue;
      n.inputs = n.inputs.map((x) => (x === o.name ? inner : x));
      if (n.subgraphs().length && implicitInputs(n).includes(o.name)) {
        detachSubgraphs(n, detached);
        for (const sub of n.subgraphs()) renameOuterReference(sub, o.name, inner);
      }
    }
    for (const v of g.valueInfo) if (v.name === o.name) v.name = inner;
    precision.set(inner, 'fp16');
    b.node('Cast', [inner], {
      outputs: [o.name],
      name: `${o.name}_cast_fp32`,
      attrs: { to: DataType.FLOAT },
    });
    castsInserted++;
  }

  // value_info: float16 values declared as such.
  g.valueInfo = g.valueInfo.map((v) =>
    precision.get(v.name) === 'fp16' && elemTypeOf(v.type) === DataType.FLOAT
      ? { ...v, type: tensorTypeWith(v.type, DataType.FLOAT16) }
      : v,
  );
  g.sort();
  return {
    model,
    convertedTensors,
    clippedValues,
    blockedNodes: original.filter(blocked).map((n) => n.name || n.opType),
    outOfRangeNodes: original.filter((n) => outOfRange.has(n)).map((n) => n.name || n.opType),
    castsInserted,
    tensorBytesBefore,
    tensorBytesAfter,
    initializerInputsRemoved,
  };
}
