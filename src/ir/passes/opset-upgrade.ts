/**
 * Opset upgrade of the default ONNX domain, after the ONNX version converter: the model is walked through every
 * opset version between its own and the target, and at each version the ops whose meaning or signature changed
 * there are rewritten (attributes that became inputs, renamed or removed attributes, ops that were replaced).
 * Ops whose schema changed only compatibly (new types, new optional attributes or inputs whose defaults keep the
 * old behaviour) are carried over unchanged. An op that cannot be converted raises QnnxError E_OPSET naming the
 * node and op. Subgraphs (If/Loop/Scan bodies) are converted too: they share the model's opset imports.
 */
import { QnnxError } from '../../errors.js';
import { DataType, dataTypeName, isFloatType } from '../../onnx/dtype.js';
import { float32ToFloat16Bits } from '../../onnx/formats.js';
import { AttributeType } from '../../onnx/proto.js';
import { GraphBuilder } from '../builder.js';
import { type Attribute, type Graph, Node } from '../graph.js';
import type { Model } from '../model.js';
import type { PassRecord } from '../pass.js';
import { Tensor } from '../tensor.js';
import { constantNodeTensor, inferTypes, type TypeTable, tensorNumbers } from './shape-inference.js';

/** The highest default-domain opset this converter knows the changes up to. */
export const MAX_UPGRADE_OPSET = 22;

/** Lowest IR version that goes with each opset (ONNX's release table); a model's IR version is raised to it. */
const MIN_IR: Record<number, number> = {
  1: 3,
  2: 3,
  3: 3,
  4: 3,
  5: 3,
  6: 3,
  7: 3,
  8: 3,
  9: 4,
  10: 5,
  11: 6,
  12: 7,
  13: 7,
  14: 7,
  15: 8,
  16: 8,
  17: 8,
  18: 8,
  19: 9,
  20: 9,
  21: 10,
  22: 10,
};

/** Every operator of the default domain up to opset 22, including deprecated ones handled below. */
const KNOWN_OPS = new Set(
  (
    'Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization ' +
    'Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Cast CastLike Ceil Celu ' +
    'CenterCropPad Clip Col2Im Compress Concat ConcatFromSequence Constant ConstantOfShape Conv ConvInteger ' +
    'ConvTranspose Cos Cosh CumSum DFT DeformConv DepthToSpace DequantizeLinear Det Div Dropout ' +
    'DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements ' +
    'GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample ' +
    'GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageDecoder ' +
    'InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop ' +
    'LpNormalization LpPool MatMul MatMulInteger Max MaxPool MaxRoiPool MaxUnpool Mean MeanVarianceNormalization ' +
    'MelWeightMatrix Min Mish Mod Mul Multinomial Neg NegativeLogLikelihoodLoss NonMaxSuppression NonZero Not ' +
    'OneHot Optional OptionalGetElement OptionalHasElement Or PRelu Pad Pow QLinearConv QLinearMatMul ' +
    'QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ' +
    'ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare ' +
    'RegexFullMatch Relu Reshape Resize ReverseSequence RoiAlign Round STFT Scan Scatter ScatterElements ' +
    'ScatterND Selu SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength ' +
    'SequenceMap Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax SoftmaxCrossEntropyLoss Softplus Softsign ' +
    'SpaceToDepth Split SplitToSequence Sqrt Squeeze StringConcat StringNormalizer StringSplit Sub Sum Tan Tanh ' +
    'TfIdfVectorizer ThresholdedRelu Tile TopK Transpose Trilu Unique Unsqueeze Upsample Where Xor DynamicSlice'
  ).split(' '),
);

/** Experimental ops of early opsets that were dropped without a standard replacement we convert to. */
const DROPPED = new Set([
  'ImageScaler',
  'Crop',
  'Affine',
  'ParametricSoftplus',
  'ScaledTanh',
  'GivenTensorFill',
  'GRUUnit',
  'ATen',
  'Scale',
]);

const LEGACY_BROADCAST = new Set([
  'Add',
  'Sub',
  'Mul',
  'Div',
  'Pow',
  'And',
  'Or',
  'Xor',
  'Equal',
  'Greater',
  'Less',
]);
const REDUCE_18 = [
  'ReduceMean',
  'ReduceMax',
  'ReduceMin',
  'ReduceProd',
  'ReduceL1',
  'ReduceL2',
  'ReduceLogSum',
  'ReduceLogSumExp',
  'ReduceSumSquare',
];

/** What an adapter sees: the node, its graph, the version being entered, and ways to add constants. */
class Step {
  /** Set by an adapter that replaced the node with new nodes (built for the final target). */
  replacement?: Node[];

  constructor(
    readonly node: Node,
    readonly graph: Graph,
    readonly version: number,
    readonly up: Upgrader,
  ) {}

  fail(reason: string): never {
    const n = this.node;
    throw new QnnxError(
      'E_OPSET',
      `node ${n.label()}: cannot convert ${n.opType} from opset ${this.version - 1} to ${this.version}: ${reason}`,
      { node: n.name, op: n.opType, from: this.up.from, to: this.up.target },
    );
  }

  /** Adds an int64 initializer to the node's graph and returns its name. */
  int64s(base: string, values: number[], scalar = false): string {
    return this.up.constant(
      this.graph,
      base,
      DataType.INT64,
      scalar ? [] : [values.length],
      BigInt64Array.from(values, BigInt),
    );
  }

  /** Adds a scalar (or 1-D) initializer of a float or integer type. */
  typed(base: string, dtype: DataType, values: number[], dims: number[] = []): string {
    let data: Float32Array | Float64Array | Uint16Array | Int32Array | Int8Array | Uint8Array | BigInt64Array;
    switch (dtype) {
      case DataType.FLOAT:
        data = Float32Array.from(values);
        break;
      case DataType.DOUBLE:
        data = Float64Array.from(values);
        break;
      case DataType.FLOAT16:
        data = Uint16Array.from(values, float32ToFloat16Bits);
        break;
      case DataType.INT32:
        data = Int32Array.from(values);
        break;
      case DataType.INT8:
        data = Int8Array.from(values);
        break;
      case DataType.UINT8:
        data = Uint8Array.from(values);
        break;
      case DataType.INT64:
        data = BigInt64Array.from(values, (v) => BigInt(Math.trunc(v)));
        break;
      default:
        this.fail(`cannot make a ${dataTypeName(dtype)} constant`);
    }
    return this.up.constant(this.graph, base, dtype, dims, data);
  }

  /** The element type of input i (from shape inference), or undefined. */
  elemType(i: number): DataType | undefined {
    const name = this.node.inputs[i];
    return name ? this.up.types.get(name, this.graph)?.elemType : undefined;
  }

  rank(i: number): number | undefined {
    const name = this.node.inputs[i];
    return name ? this.up.types.get(name, this.graph)?.shape?.length : undefined;
  }

  /** Constant values of input i (initializer or Constant node in scope). */
  constValues(i: number): number[] | undefined {
    const name = this.node.inputs[i];
    if (!name) return undefined;
    const t = this.up.constTensor(this.graph, name);
    return t ? tensorNumbers(t) : undefined;
  }

  base(suffix: string): string {
    return `${this.node.name || this.node.outputs[0] || this.node.opType}_${suffix}`;
  }

  /** Moves an int-list attribute to input position i as an int64 tensor (nothing when the attribute is absent). */
  attrToInput(attr: string, i: number, opts: { scalar?: boolean } = {}): boolean {
    const v =
      this.node.attrInts(attr) ??
      (this.node.attr(attr)?.type === AttributeType.INT ? [this.node.attrInt(attr)!] : undefined);
    this.node.removeAttr(attr);
    if (v === undefined) return false;
    this.setInput(i, this.int64s(this.base(attr), v, opts.scalar));
    return true;
  }

  setInput(i: number, name: string): void {
    const n = this.node;
    while (n.inputs.length <= i) n.inputs.push('');
    n.inputs[i] = name;
  }

  newNode(op: string, inputs: string[], outputs: string[], attrs: Attribute[] = []): Node {
    return new Node(op, inputs, outputs, attrs, this.up.names.uniqueName(this.base(op)));
  }

  newName(suffix: string): string {
    return this.up.names.uniqueName(this.base(suffix));
  }
}

type Adapter = (s: Step) => void;

const int = (name: string, value: number): Attribute => ({ name, type: AttributeType.INT, value });
const str = (name: string, value: string): Attribute => ({
  name,
  type: AttributeType.STRING,
  value: new TextEncoder().encode(value),
});

function legacyBroadcast(s: Step): void {
  const n = s.node;
  const bc = n.attrInt('broadcast', 0);
  const axis = n.attrInt('axis');
  n.removeAttr('broadcast');
  n.removeAttr('axis');
  if (bc !== 1 || axis === undefined) return;
  const ra = s.rank(0);
  const rb = s.rank(1);
  if (ra === undefined || rb === undefined) s.fail('legacy broadcast with an axis needs known input ranks');
  const a = axis < 0 ? axis + ra : axis;
  const trailing = ra - a - rb;
  if (trailing === 0) return;
  if (trailing < 0) s.fail('legacy broadcast axis out of range');
  // Append size-1 dims to B so that numpy broadcasting aligns it at `axis`.
  n.inputs[1] = unsqueezeBefore(
    s,
    n.inputs[1],
    Array.from({ length: trailing }, (_, i) => rb + i),
  );
}

/** Inserts an Unsqueeze of `x` (attribute or input form, as the target needs) before the node. */
function unsqueezeBefore(s: Step, x: string, axes: number[]): string {
  const out = s.newName(`${x}_unsqueezed`);
  const unsq =
    s.up.target >= 13
      ? s.newNode('Unsqueeze', [x, s.int64s(s.base('axes'), axes)], [out])
      : s.newNode('Unsqueeze', [x], [out], [{ name: 'axes', type: AttributeType.INTS, value: axes }]);
  s.up.before.push(unsq);
  return out;
}

/** PRelu-6 applies a slope of size C per channel (axis 1); PRelu-7 broadcasts it numpy-style (trailing). */
function prelu7(s: Step): void {
  const n = s.node;
  const r = s.rank(0);
  const slope = s.up.types.get(n.inputs[1], s.graph)?.shape;
  if (slope?.length !== 1 || slope[0] === 1) return;
  if (r === undefined) s.fail('per-channel slope needs the input rank');
  if (r <= 2) return;
  n.inputs[1] = unsqueezeBefore(
    s,
    n.inputs[1],
    Array.from({ length: r - 2 }, (_, i) => i + 1),
  );
}

function softmax13(s: Step): void {
  const n = s.node;
  const axis = n.attrInt('axis', 1);
  const r = s.rank(0);
  const a = r !== undefined && axis < 0 ? axis + r : axis;
  if (r !== undefined && a === r - 1) {
    n.setAttr('axis', AttributeType.INT, a);
    return;
  }
  // Old semantics: coerce to 2-D [prod(d[:axis]), prod(d[axis:])], normalize rows, restore the shape.
  const x = n.inputs[0];
  const y = n.outputs[0];
  const flat = s.newName('flat');
  const norm = s.newName('2d');
  const shape = s.newName('shape');
  const flatten = s.newNode('Flatten', [x], [flat], [int('axis', axis)]);
  const op = new Node(n.opType, [flat], [norm], [int('axis', 1)], n.name, n.domain);
  op.hasName = n.hasName;
  op.hasDomain = n.hasDomain;
  const shapeOf = s.newNode('Shape', [x], [shape]);
  const reshape = s.newNode('Reshape', [norm, shape], [y]);
  s.replacement = [flatten, op, shapeOf, reshape];
}

function clip11(s: Step): void {
  const n = s.node;
  const min = n.attrFloat('min');
  const max = n.attrFloat('max');
  n.removeAttr('min');
  n.removeAttr('max');
  if (min === undefined && max === undefined) return;
  const t = s.elemType(0);
  if (t === undefined || !isFloatType(t)) s.fail('the element type of the input is unknown');
  n.inputs.length = 1;
  if (min !== undefined) s.setInput(1, s.typed(s.base('min'), t, [min]));
  if (max !== undefined) s.setInput(2, s.typed(s.base('max'), t, [max]));
}

function pad11(s: Step): void {
  const n = s.node;
  const pads = n.attrInts('pads');
  if (!pads) s.fail("missing 'pads'");
  const value = n.attrFloat('value', 0);
  n.removeAttr('pads');
  n.removeAttr('value');
  s.setInput(1, s.int64s(s.base('pads'), pads));
  const mode = n.attrString('mode', 'constant');
  if (value !== 0 && mode === 'constant') {
    const t = s.elemType(0);
    if (t === undefined) s.fail('the element type of the input is unknown');
    s.setInput(2, s.typed(s.base('value'), t, [value]));
  }
}

function resize11(s: Step): void {
  const n = s.node;
  const mode = n.attrString('mode', 'nearest');
  // Opset 10 Resize (and Upsample) maps output pixel x to x / scale (asymmetric); nearest takes floor when
  // upsampling and ceil when downsampling (ONNX Runtime's opset-10 rule).
  n.setAttr('coordinate_transformation_mode', AttributeType.STRING, new TextEncoder().encode('asymmetric'));
  if (mode === 'nearest') {
    // Upsample requires scales >= 1 (its spec), so a converted Upsample floors whatever its scales are.
    const scales = s.up.fromUpsample.has(n) ? [1] : s.constValues(1);
    if (!scales) s.fail('nearest Resize-10 with non-constant scales (floor or ceil cannot be chosen)');
    const up = scales.every((x) => x >= 1);
    const down = scales.every((x) => x <= 1);
    if (!up && !down) s.fail('nearest Resize that upsamples some axes and downsamples others');
    n.setAttr('nearest_mode', AttributeType.STRING, new TextEncoder().encode(up ? 'floor' : 'ceil'));
  }
  // 'linear' interpolates the same way once the coordinates are asymmetric.
  const roi = s.typed(s.base('roi'), DataType.FLOAT, [], [0]);
  n.inputs = [n.inputs[0], roi, n.inputs[1]];
}

function resize13(s: Step): void {
  if (s.node.attrString('coordinate_transformation_mode', 'half_pixel') === 'tf_half_pixel_for_nn') {
    s.fail("coordinate_transformation_mode 'tf_half_pixel_for_nn' was removed and has no exact replacement");
  }
}

function upsample9(s: Step): void {
  const n = s.node;
  const scales = n.attr('scales')?.value as number[] | undefined;
  if (!scales) s.fail("missing 'scales'");
  n.removeAttr('scales');
  s.setInput(1, s.typed(s.base('scales'), DataType.FLOAT, scales, [scales.length]));
}

function upsample7(s: Step): void {
  const n = s.node;
  const h = n.attrFloat('height_scale');
  const w = n.attrFloat('width_scale');
  if (h === undefined || w === undefined) s.fail('experimental Upsample without height_scale/width_scale');
  n.removeAttr('height_scale');
  n.removeAttr('width_scale');
  const mode = n.attrString('mode', 'nearest');
  n.setAttr('mode', AttributeType.STRING, new TextEncoder().encode(mode === 'bilinear' ? 'linear' : mode));
  n.setAttr('scales', AttributeType.FLOATS, [1, 1, h, w]);
}

function dropoutMask(s: Step): void {
  const n = s.node;
  const mask = n.outputs[1];
  if (mask && s.up.isUsed(s.graph, mask)) s.fail('the mask output changes type (T to bool) and is used');
  if (mask) n.outputs.length = 1;
}

function dropout12(s: Step): void {
  const n = s.node;
  const ratio = n.attrFloat('ratio');
  n.removeAttr('ratio');
  if (ratio !== undefined) s.setInput(1, s.typed(s.base('ratio'), DataType.FLOAT, [ratio]));
}

/** BatchNormalization-6 chooses training by `is_test`; from 7 on the number of outputs decides. */
function batchNorm7(s: Step): void {
  const n = s.node;
  const isTest = n.attrInt('is_test', 0);
  n.removeAttr('is_test');
  const extra = n.outputs.slice(1).filter((o) => o);
  if (isTest === 1) {
    if (extra.some((o) => s.up.isUsed(s.graph, o)))
      s.fail('statistics outputs of an is_test=1 node are used');
    n.outputs.length = 1;
  } else if (extra.length === 0) {
    s.fail('training mode (is_test=0) with only the Y output has no opset-7 form');
  }
}

function batchNorm9(s: Step): void {
  const n = s.node;
  const spatial = n.attrInt('spatial', 1);
  n.removeAttr('spatial');
  if (spatial !== 1 && s.rank(0) !== 2) s.fail('spatial=0 (per-activation statistics) was removed');
}

/**
 * Opsets 9-13 run BatchNormalization in training mode when it has the statistics outputs; 14 has a
 * `training_mode` attribute and keeps only the running mean and variance outputs.
 */
function batchNorm14(s: Step): void {
  const n = s.node;
  const extra = n.outputs.slice(1).filter((o) => o);
  if (extra.length === 0) {
    n.outputs.length = 1;
    return;
  }
  const saved = n.outputs.slice(3).filter((o) => o);
  if (saved.some((o) => s.up.isUsed(s.graph, o)))
    s.fail('the saved_mean / saved_var training outputs are used');
  n.outputs.length = Math.min(n.outputs.length, 3);
  while (n.outputs.length > 1 && !n.outputs[n.outputs.length - 1]) n.outputs.pop();
  n.setAttr('training_mode', AttributeType.INT, 1);
}

function split13(s: Step): void {
  s.attrToInput('split', 1);
}

function split18(s: Step): void {
  const n = s.node;
  if (!n.inputs[1] && !n.attr('num_outputs')) n.setAttr('num_outputs', AttributeType.INT, n.outputs.length);
}

function split2(s: Step): void {
  const n = s.node;
  if (n.inputs[1]) {
    const v = s.constValues(1);
    if (!v) s.fail('split sizes given as a non-constant input');
    n.inputs.length = 1;
    n.setAttr('split', AttributeType.INTS, v);
  }
}

function slice10(s: Step): void {
  const n = s.node;
  const starts = n.attrInts('starts');
  const ends = n.attrInts('ends');
  const axes = n.attrInts('axes');
  if (!starts || !ends) s.fail("missing 'starts' or 'ends'");
  for (const a of ['starts', 'ends', 'axes']) n.removeAttr(a);
  n.inputs = [n.inputs[0], s.int64s(s.base('starts'), starts), s.int64s(s.base('ends'), ends)];
  if (axes) n.inputs.push(s.int64s(s.base('axes'), axes));
}

function topK10(s: Step): void {
  const k = s.node.attrInt('k');
  if (k === undefined) s.fail("missing 'k'");
  s.node.removeAttr('k');
  s.setInput(1, s.int64s(s.base('k'), [k]));
}

function reshape5(s: Step): void {
  const shape = s.node.attrInts('shape');
  s.node.removeAttr('shape');
  if (!shape) {
    if (!s.node.inputs[1]) s.fail("missing 'shape'");
    return;
  }
  s.setInput(1, s.int64s(s.base('shape'), shape));
}

function cast6(s: Step): void {
  const a = s.node.attr('to');
  if (a?.type !== AttributeType.STRING) return;
  const name = new TextDecoder().decode(a.value as Uint8Array).toUpperCase();
  const t = (DataType as unknown as Record<string, number>)[name];
  if (typeof t !== 'number') s.fail(`unknown type '${name}'`);
  s.node.setAttr('to', AttributeType.INT, t);
}

function groupNorm21(s: Step): void {
  const n = s.node;
  const groups = n.attrInt('num_groups');
  const shape = s.up.types.get(n.inputs[0], s.graph)?.shape;
  const c = shape?.[1];
  if (groups === undefined || typeof c !== 'number') s.fail('the channel count is unknown');
  for (const i of [1, 2]) {
    const v = s.constValues(i);
    if (!v || v.length !== groups) s.fail('scale and bias must be constant per-group tensors');
    const t = s.elemType(i) ?? DataType.FLOAT;
    const per = c / groups;
    s.setInput(
      i,
      s.typed(
        s.base(i === 1 ? 'scale' : 'bias'),
        t,
        Array.from({ length: c }, (_, k) => v[Math.floor(k / per)]),
        [c],
      ),
    );
  }
}

function dft20(s: Step): void {
  const axis = s.node.attrInt('axis', 1);
  s.node.removeAttr('axis');
  s.setInput(2, s.int64s(s.base('axis'), [axis], true));
}

function gridSample20(s: Step): void {
  const mode = s.node.attrString('mode', 'bilinear');
  const renamed = mode === 'bilinear' ? 'linear' : mode === 'bicubic' ? 'cubic' : mode;
  s.node.setAttr('mode', AttributeType.STRING, new TextEncoder().encode(renamed));
}

function roiAlign16(s: Step): void {
  if (!s.node.attr('coordinate_transformation_mode')) {
    s.node.attributes.push(str('coordinate_transformation_mode', 'output_half_pixel'));
  }
}

function mvn9(s: Step): void {
  const n = s.node;
  const across = n.attrInt('across_channels', 0);
  const normalize = n.attrInt('normalize_variance', 1);
  n.removeAttr('across_channels');
  n.removeAttr('normalize_variance');
  if (normalize !== 1) s.fail('normalize_variance=0 has no opset-9 equivalent');
  n.setAttr('axes', AttributeType.INTS, across ? [0, 1, 2, 3] : [0, 2, 3]);
}

/** Adapters by the version that introduced the change, then by op type. */
const ADAPTERS: Record<number, Record<string, Adapter>> = {
  2: {
    Pad: (s) => {
      const p = s.node.attrInts('paddings');
      if (p) {
        s.node.removeAttr('paddings');
        s.node.setAttr('pads', AttributeType.INTS, p);
      }
    },
    Split: split2,
    LpPool: (s) => pFloatToInt(s),
    GlobalLpPool: (s) => pFloatToInt(s),
  },
  4: {
    Concat: (s) => {
      if (!s.node.attr('axis')) s.node.setAttr('axis', AttributeType.INT, 1);
    },
  },
  5: { Reshape: reshape5 },
  6: {
    Cast: cast6,
    Tile: (s) => s.fail('Tile-1 (tiles and axis inputs) is not converted'),
  },
  7: {
    ...Object.fromEntries([...LEGACY_BROADCAST].map((op) => [op, legacyBroadcast])),
    Gemm: (s) => s.node.removeAttr('broadcast'),
    PRelu: prelu7,
    BatchNormalization: batchNorm7,
    Dropout: (s) => s.node.removeAttr('is_test'),
    Upsample: upsample7,
    LSTM: (s) => s.node.removeAttr('output_sequence'),
    GRU: (s) => s.node.removeAttr('output_sequence'),
    RNN: (s) => s.node.removeAttr('output_sequence'),
  },
  9: {
    BatchNormalization: batchNorm9,
    Upsample: upsample9,
    Scan: (s) => s.fail('Scan-8 (batch axis, sequence_lens) is not converted'),
    MeanVarianceNormalization: mvn9,
  },
  10: {
    Slice: slice10,
    DynamicSlice: (s) => {
      s.node.opType = 'Slice';
    },
    TopK: topK10,
    Dropout: dropoutMask,
    Upsample: (s) => {
      s.node.opType = 'Resize';
      s.up.fromUpsample.add(s.node);
    },
  },
  11: {
    Clip: clip11,
    Pad: pad11,
    Resize: resize11,
    Scatter: (s) => {
      s.node.opType = 'ScatterElements';
    },
  },
  12: { Dropout: dropout12 },
  13: {
    Squeeze: (s) => void s.attrToInput('axes', 1),
    Unsqueeze: (s) => {
      if (!s.attrToInput('axes', 1)) s.fail("missing 'axes'");
    },
    Split: split13,
    ReduceSum: (s) => void s.attrToInput('axes', 1),
    Softmax: softmax13,
    LogSoftmax: softmax13,
    Hardmax: softmax13,
    Resize: resize13,
  },
  14: { BatchNormalization: batchNorm14 },
  16: { RoiAlign: roiAlign16 },
  18: {
    ...Object.fromEntries(REDUCE_18.map((op) => [op, (s: Step) => void s.attrToInput('axes', 1)])),
    Split: split18,
  },
  20: { DFT: dft20, GridSample: gridSample20 },
  21: { GroupNormalization: groupNorm21 },
};

function pFloatToInt(s: Step): void {
  const a = s.node.attr('p');
  if (a?.type === AttributeType.FLOAT) {
    const p = a.value as number;
    if (!Number.isInteger(p)) s.fail(`non-integer p=${p}`);
    s.node.setAttr('p', AttributeType.INT, p);
  }
}

class Upgrader {
  readonly names: GraphBuilder;
  readonly types: TypeTable;
  /** Nodes to insert before the node being converted. */
  before: Node[] = [];
  readonly counts: Record<string, number> = {};
  nodesAdded = 0;
  initializersAdded = 0;
  /** Resize nodes that were Upsample (whose scales are >= 1 by definition). */
  readonly fromUpsample = new Set<Node>();
  private usedCache = new Map<Graph, Set<string>>();

  constructor(
    readonly model: Model,
    readonly from: number,
    readonly target: number,
  ) {
    this.names = new GraphBuilder(model.graph);
    this.types = inferTypes(model);
  }

  constant(g: Graph, base: string, dtype: DataType, dims: number[], data: Tensor['data']): string {
    const name = this.names.uniqueName(base);
    g.addInitializer(new Tensor(name, dtype, dims, data));
    this.initializersAdded++;
    return name;
  }

  constTensor(g: Graph, name: string): Tensor | undefined {
    let scope: Graph | undefined = g;
    while (scope) {
      const inputs = new Set(scope.inputs.map((v) => v.name));
      const t = scope.initializers.get(name);
      if (t) return inputs.has(name) ? undefined : t;
      const p = scope.nodes.find((n) => n.outputs.includes(name));
      if (p) return p.opType === 'Constant' ? constantNodeTensor(p) : undefined;
      if (inputs.has(name)) return undefined;
      scope = this.parents.get(scope);
    }
    return undefined;
  }

  readonly parents = new Map<Graph, Graph>();

  /** Whether a value is read by any node (in any subgraph) or is an output of its graph. */
  isUsed(g: Graph, name: string): boolean {
    let used = this.usedCache.get(g);
    if (!used) {
      used = new Set(g.outputs.map((o) => o.name));
      for (const n of g.allNodes()) for (const i of n.inputs) used.add(i);
      for (const sg of g.allGraphs()) for (const o of sg.outputs) used.add(o.name);
      this.usedCache.set(g, used);
    }
    return used.has(name);
  }

  convertGraph(g: Graph): void {
    for (const n of g.nodes) {
      for (const sg of n.subgraphs()) {
        this.parents.set(sg, g);
        this.convertGraph(sg);
      }
    }
    const out: Node[] = [];
    for (const node of g.nodes) {
      if (node.domain && node.domain !== 'ai.onnx') {
        out.push(node);
        continue;
      }
      if (DROPPED.has(node.opType)) {
        throw new QnnxError(
          'E_OPSET',
          `node ${node.label()}: ${node.opType} is an experimental op without a standard replacement; cannot upgrade to opset ${this.target}`,
          { node: node.name, op: node.opType },
        );
      }
      if (!KNOWN_OPS.has(node.opType)) {
        throw new QnnxError(
          'E_OPSET',
          `node ${node.label()}: ${node.opType} is not an ONNX operator this converter knows; cannot upgrade to opset ${this.target}`,
          { node: node.name, op: node.opType },
        );
      }
      let replacement: Node[] | undefined;
      this.before = [];
      for (let v = this.from + 1; v <= this.target && !replacement; v++) {
        if (v === 6 && node.attr('consumed_inputs')) {
          node.removeAttr('consumed_inputs');
          this.count(node.opType, v);
        }
        const table = ADAPTERS[v];
        const adapter = table && Object.hasOwn(table, node.opType) ? table[node.opType] : undefined;
        if (!adapter) continue;
        const op = node.opType;
        const step = new Step(node, g, v, this);
        adapter(step);
        this.count(op, v);
        replacement = step.replacement;
      }
      if (node.opType === 'Upsample' && this.target >= 10) {
        throw new QnnxError('E_OPSET', `node ${node.label()}: Upsample was not converted`, {
          node: node.name,
        });
      }
      out.push(...this.before);
      this.nodesAdded += this.before.length;
      if (replacement) {
        out.push(...replacement);
        this.nodesAdded += replacement.length - 1;
      } else out.push(node);
    }
    g.nodes = out;
  }

  private count(op: string, v: number): void {
    const k = `${op}@${v}`;
    this.counts[k] = (this.counts[k] ?? 0) + 1;
  }
}

/**
 * Raises the default-domain opset of `model` to `target` (nothing happens when it is already at or above it),
 * converting every node whose op changed on the way, and raises the IR version to the lowest that goes with the
 * target. Throws E_OPSET (naming the node and op) when an op cannot be converted; the model is then unchanged
 * only if the failure happens before any rewrite, so convert a copy when that matters.
 */
export function upgradeOpset(model: Model, target: number): PassRecord {
  if (!Number.isInteger(target) || target < 1 || target > MAX_UPGRADE_OPSET) {
    throw new QnnxError(
      'E_OPSET',
      `cannot upgrade to opset ${target}: supported targets are 1..${MAX_UPGRADE_OPSET}`,
      {
        target,
      },
    );
  }
  const current = model.opset('');
  const irBefore = model.irVersion;
  if (current !== undefined && current >= target) {
    return {
      pass: 'opset-upgrade',
      changed: false,
      details: { from: current, to: current, irVersion: irBefore, converted: {} },
    };
  }
  const from = current ?? 1;
  if (
    current === undefined &&
    ![...model.graph.allNodes()].some((n) => !n.domain || n.domain === 'ai.onnx')
  ) {
    model.setOpset('', target);
  } else {
    const up = new Upgrader(model, from, target);
    // Validate everything first so that an unconvertible op is reported before anything is rewritten.
    preflight(model, from, target);
    up.convertGraph(model.graph);
    model.setOpset('', target);
    model.irVersion = Math.max(model.irVersion, MIN_IR[target] ?? 3, up.initializersAdded > 0 ? 4 : 0);
    return {
      pass: 'opset-upgrade',
      changed: true,
      details: {
        from,
        to: target,
        irVersion: { from: irBefore, to: model.irVersion },
        converted: up.counts,
        nodesAdded: up.nodesAdded,
        initializersAdded: up.initializersAdded,
      },
    };
  }
  model.irVersion = Math.max(model.irVersion, MIN_IR[target] ?? 3);
  return {
    pass: 'opset-upgrade',
    changed: true,
    details: { from, to: target, irVersion: { from: irBefore, to: model.irVersion }, converted: {} },
  };
}

/** Checks op names before any rewrite (unknown and dropped ops, Scan-8 and Tile-1 crossings). */
function preflight(model: Model, from: number, target: number): void {
  for (const node of model.graph.allNodes()) {
    if (node.domain && node.domain !== 'ai.onnx') continue;
    const bad =
      DROPPED.has(node.opType) ||
      !KNOWN_OPS.has(node.opType) ||
      (node.opType === 'Scan' && from < 9 && target >= 9) ||
      (node.opType === 'Tile' && from < 6 && target >= 6);
    if (bad) {
      throw new QnnxError(
        'E_OPSET',
        `node ${node.label()}: ${node.opType} (opset ${from}) cannot be converted to opset ${target}`,
        { node: node.name, op: node.opType },
      );
    }
  }
}
