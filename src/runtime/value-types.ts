/**
 * Element types of a graph's values, for declaring taps as graph outputs (ONNX requires a type on graph outputs).
 *
 * Types come first from what the graph declares (inputs, outputs, value_info, initializers), then from a small
 * forward recording over the nodes in topological order: type-preserving ops take their first input's type,
 * comparisons give bool, Shape/ArgMax give int64, Cast takes `to`, and so on. This is deliberately only element
 * types, not shapes, and only standard ops; a full shape/type inference pass (src/ir/passes) supersedes it.
 * Values it cannot type are left out of the map.
 */
import type { Graph, Node } from '../ir/graph.js';
import { DataType } from '../onnx/dtype.js';
import type { TypeProto } from '../onnx/proto.js';

/** Ops whose every output has the element type of input `index` (default 0). */
const SAME_AS_INPUT: Record<string, number> = {};
for (const op of [
  'Abs',
  'Acos',
  'Acosh',
  'Add',
  'Asin',
  'Asinh',
  'Atan',
  'Atanh',
  'AveragePool',
  'BatchNormalization',
  'BitShift',
  'BitwiseAnd',
  'BitwiseNot',
  'BitwiseOr',
  'BitwiseXor',
  'Ceil',
  'Celu',
  'Clip',
  'Compress',
  'Concat',
  'Conv',
  'ConvTranspose',
  'Cos',
  'Cosh',
  'CumSum',
  'DepthToSpace',
  'Div',
  'Einsum',
  'Elu',
  'Erf',
  'Exp',
  'Expand',
  'Flatten',
  'Floor',
  'Gather',
  'GatherElements',
  'GatherND',
  'Gelu',
  'Gemm',
  'GlobalAveragePool',
  'GlobalLpPool',
  'GlobalMaxPool',
  'GroupNormalization',
  'HardSigmoid',
  'HardSwish',
  'Hardmax',
  'Identity',
  'InstanceNormalization',
  'LRN',
  'LeakyRelu',
  'Log',
  'LogSoftmax',
  'LpNormalization',
  'LpPool',
  'MatMul',
  'Max',
  'Mean',
  'MeanVarianceNormalization',
  'Min',
  'Mish',
  'Mod',
  'Mul',
  'Neg',
  'PRelu',
  'Pad',
  'Pow',
  'Range',
  'Reciprocal',
  'ReduceL1',
  'ReduceL2',
  'ReduceLogSum',
  'ReduceLogSumExp',
  'ReduceMax',
  'ReduceMean',
  'ReduceMin',
  'ReduceProd',
  'ReduceSum',
  'ReduceSumSquare',
  'Relu',
  'Reshape',
  'Resize',
  'ReverseSequence',
  'Round',
  'Scatter',
  'ScatterElements',
  'ScatterND',
  'Selu',
  'Shrink',
  'Sigmoid',
  'Sign',
  'Sin',
  'Sinh',
  'Slice',
  'Softmax',
  'Softplus',
  'Softsign',
  'SpaceToDepth',
  'Split',
  'Sqrt',
  'Squeeze',
  'Sub',
  'Sum',
  'Tan',
  'Tanh',
  'ThresholdedRelu',
  'Tile',
  'Transpose',
  'Trilu',
  'Unsqueeze',
  'Upsample',
]) {
  SAME_AS_INPUT[op] = 0;
}
SAME_AS_INPUT.Where = 1;
SAME_AS_INPUT.CastLike = 1;

const BOOL_OPS = new Set([
  'Equal',
  'Less',
  'Greater',
  'LessOrEqual',
  'GreaterOrEqual',
  'Not',
  'And',
  'Or',
  'Xor',
  'IsNaN',
  'IsInf',
]);
const INT64_OPS = new Set(['Shape', 'Size', 'ArgMax', 'ArgMin', 'NonZero', 'NonMaxSuppression']);

/** The element type declared by a TypeProto (tensor or sparse tensor), if any. */
export function elemTypeOf(type: TypeProto | undefined): DataType | undefined {
  const t = type?.tensor_type?.elem_type ?? type?.sparse_tensor_type?.elem_type;
  return t ? (t as DataType) : undefined;
}

/** Output element types of one node, given a lookup for its inputs' types (undefined where unknown). */
function nodeOutputTypes(n: Node, typeOf: (name: string) => DataType | undefined): (DataType | undefined)[] {
  const out: (DataType | undefined)[] = n.outputs.map(() => undefined);
  if (n.domain !== '' && n.domain !== 'ai.onnx') return out;
  const input = (i: number) => (n.inputs[i] ? typeOf(n.inputs[i]) : undefined);
  const all = (t: DataType | undefined) => out.fill(t);
  const op = n.opType;
  if (op in SAME_AS_INPUT) {
    const t = input(SAME_AS_INPUT[op]);
    if (op === 'BatchNormalization')
      out[0] = t; // training-mode statistics outputs stay untyped
    else all(t);
  } else if (BOOL_OPS.has(op)) all(DataType.BOOL);
  else if (INT64_OPS.has(op)) all(DataType.INT64);
  else {
    switch (op) {
      case 'Cast':
        all(n.attrInt('to') as DataType | undefined);
        break;
      case 'LayerNormalization':
        out[0] = input(0);
        break;
      case 'MaxPool':
        out[0] = input(0);
        if (out.length > 1) out[1] = DataType.INT64;
        break;
      case 'TopK':
        out[0] = input(0);
        if (out.length > 1) out[1] = DataType.INT64;
        break;
      case 'Dropout':
        out[0] = input(0);
        if (out.length > 1) out[1] = DataType.BOOL;
        break;
      case 'Constant': {
        const a = n.attributes[0];
        if (!a) break;
        if (a.name === 'value') out[0] = n.attrTensor('value')?.dtype;
        else if (a.name === 'value_float' || a.name === 'value_floats') out[0] = DataType.FLOAT;
        else if (a.name === 'value_int' || a.name === 'value_ints') out[0] = DataType.INT64;
        else if (a.name === 'value_string' || a.name === 'value_strings') out[0] = DataType.STRING;
        break;
      }
      case 'ConstantOfShape':
        out[0] = n.attrTensor('value')?.dtype ?? DataType.FLOAT;
        break;
      case 'DequantizeLinear': {
        const od = n.attr('output_dtype') ? n.attrInt('output_dtype') : 0;
        out[0] = od ? (od as DataType) : input(1);
        break;
      }
      case 'QuantizeLinear': {
        const od = n.attr('output_dtype') ? n.attrInt('output_dtype') : 0;
        out[0] = input(2) ?? (od ? (od as DataType) : DataType.UINT8);
        break;
      }
      case 'DynamicQuantizeLinear':
        out.splice(0, 3, DataType.UINT8, DataType.FLOAT, DataType.UINT8);
        out.length = n.outputs.length;
        break;
      case 'QLinearConv':
      case 'QLinearMatMul':
        out[0] = input(7);
        break;
      case 'ConvInteger':
      case 'MatMulInteger':
        out[0] = DataType.INT32;
        break;
      case 'EyeLike':
      case 'RandomNormalLike':
      case 'RandomUniformLike':
        out[0] = n.attr('dtype') ? (n.attrInt('dtype') as DataType) : input(0);
        break;
      case 'RandomNormal':
      case 'RandomUniform':
        out[0] = n.attr('dtype') ? (n.attrInt('dtype') as DataType) : DataType.FLOAT;
        break;
      case 'OneHot':
        out[0] = input(2);
        break;
    }
  }
  return out;
}

/**
 * Element types of the values of `graph` (this graph only; subgraph-internal values are not listed): declared
 * types first, then the forward recording described above. Values that cannot be typed are absent.
 */
export function recordElementTypes(graph: Graph): Map<string, DataType> {
  const types = new Map<string, DataType>();
  const declare = (name: string, t: DataType | undefined) => {
    if (name && t !== undefined && t !== DataType.UNDEFINED && !types.has(name)) types.set(name, t);
  };
  for (const v of [...graph.inputs, ...graph.outputs, ...graph.valueInfo])
    declare(v.name, elemTypeOf(v.type));
  for (const [name, t] of graph.initializers) declare(name, t.dtype);
  for (const sp of graph.sparseInitializers) declare(sp.values?.name ?? '', sp.values?.data_type);
  let order: Node[];
  try {
    order = graph.topologicalOrder();
  } catch {
    order = graph.nodes;
  }
  for (const n of order) {
    if (n.outputs.every((o) => !o || types.has(o))) continue;
    let outTypes: (DataType | undefined)[];
    try {
      outTypes = nodeOutputTypes(n, (name) => types.get(name));
    } catch {
      continue; // an ill-typed attribute: leave the outputs untyped
    }
    n.outputs.forEach((o, i) => {
      declare(o, outTypes[i]);
    });
  }
  return types;
}
