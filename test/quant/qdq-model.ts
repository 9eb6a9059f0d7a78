/**
 * Tiny QuantizeLinear -> DequantizeLinear models built with our IR, run in ONNX Runtime (one thread), for the
 * bit-exactness tests of src/quant/quantizer.ts. ORT-node can return int8/uint8/int16/uint16 tensors but not
 * int4/fp8 ones (it crashes), so the quantized tensor is a graph output only for the former; the others are
 * compared through DequantizeLinear's float output.
 */

import { modelToBytes } from '../../src/io/model-file.js';
import { GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType } from '../../src/onnx/dtype.js';
import { packInt4 } from '../../src/onnx/formats.js';
import type { TensorStorage } from '../../src/tensor.js';
import { ort, runModel } from '../helpers/ort.js';

/** Integer types ORT-node can hand back as graph outputs. */
const READABLE = new Set([DataType.INT8, DataType.UINT8, DataType.INT16, DataType.UINT16]);

export interface QdqCase {
  /** Quantized element type (int8, uint8, int16, uint16, int4, uint4, float8e4m3fn, float8e5m2). */
  dtype: DataType;
  dims: number[];
  scale: Float32Array;
  /** [] per tensor, [C] per axis, blocked: x's dims with dims[axis] -> ceil(n / blockSize). */
  scaleDims: number[];
  /** Zero points (integers; float8: must be 0). Omitted: no zero-point input. */
  zeroPoint?: ArrayLike<number>;
  axis?: number;
  blockSize?: number;
  opset: number;
  /** float8 only (ONNX default 1). */
  saturate?: number;
}

function zeroPointStorage(dtype: DataType, zp: ArrayLike<number>): TensorStorage {
  switch (dtype) {
    case DataType.INT8:
      return Int8Array.from(zp);
    case DataType.UINT8:
      return Uint8Array.from(zp);
    case DataType.INT16:
      return Int16Array.from(zp);
    case DataType.UINT16:
      return Uint16Array.from(zp);
    case DataType.INT4:
      return packInt4(zp, true);
    case DataType.UINT4:
      return packInt4(zp, false);
    default:
      // float8: the bit pattern of +0 is 0
      return new Uint8Array(zp.length);
  }
}

/** Model bytes for QuantizeLinear(x) -> q -> DequantizeLinear -> y (outputs y, and q where ORT-node can). */
export function qdqModel(c: QdqCase): { bytes: Uint8Array; outputsQ: boolean } {
  const model = new Model();
  model.opsetImports = [{ domain: '', version: c.opset }];
  const g = model.graph;
  g.name = 'qdq';
  const b = new GraphBuilder(g);
  g.inputs.push(valueInfo('x', DataType.FLOAT, c.dims));
  g.addInitializer(new Tensor('scale', DataType.FLOAT, c.scaleDims, c.scale));
  const inputs = ['x', 'scale'];
  if (c.zeroPoint) {
    g.addInitializer(new Tensor('zp', c.dtype, c.scaleDims, zeroPointStorage(c.dtype, c.zeroPoint)));
    inputs.push('zp');
  }
  const attrs: Record<string, number> = {};
  if (c.axis !== undefined) attrs.axis = c.axis;
  if (c.blockSize !== undefined) attrs.block_size = c.blockSize;
  const qAttrs = { ...attrs };
  if (c.saturate !== undefined) qAttrs.saturate = c.saturate;
  // Without a zero-point input the output type defaults to uint8; opset 21 names it with output_dtype.
  if (!c.zeroPoint) qAttrs.output_dtype = c.dtype;
  b.node('QuantizeLinear', inputs, { outputs: ['q'], attrs: qAttrs });
  b.node('DequantizeLinear', ['q', ...inputs.slice(1)], { outputs: ['y'], attrs });
  g.outputs.push(valueInfo('y', DataType.FLOAT, c.dims));
  const outputsQ = READABLE.has(c.dtype);
  if (outputsQ) g.outputs.push(valueInfo('q', c.dtype, c.dims));
  return { bytes: modelToBytes(model), outputsQ };
}

/** Runs the QDQ model on x: the dequantized float32 values and (int8/uint8/int16/uint16) the quantized ones. */
export async function runQdq(
  c: QdqCase,
  x: Float32Array,
): Promise<{ y: Float32Array; q?: ArrayLike<number> }> {
  const { bytes, outputsQ } = qdqModel(c);
  const out = await runModel(bytes, { x: new ort.Tensor('float32', x, c.dims) });
  return { y: out.y.data as Float32Array, q: outputsQ ? (out.q.data as ArrayLike<number>) : undefined };
}

/** DequantizeLinear alone on a constant quantized tensor (int4 / uint4 / int8 values), for export checks. */
export async function runDequantize(
  dtype: DataType,
  q: ArrayLike<number>,
  dims: number[],
  scale: Float32Array,
  scaleDims: number[],
  opts: { zeroPoint?: ArrayLike<number>; axis?: number; blockSize?: number; opset?: number } = {},
): Promise<Float32Array> {
  const model = new Model();
  model.opsetImports = [{ domain: '', version: opts.opset ?? 21 }];
  const g = model.graph;
  g.name = 'dq';
  const b = new GraphBuilder(g);
  // A dummy float input so the session has a feed; the output ignores it.
  g.inputs.push(valueInfo('unused', DataType.FLOAT, [1]));
  const store =
    dtype === DataType.INT4 || dtype === DataType.UINT4
      ? packInt4(q, dtype === DataType.INT4)
      : zeroPointStorage(dtype, q);
  g.addInitializer(new Tensor('q', dtype, dims, store));
  g.addInitializer(new Tensor('scale', DataType.FLOAT, scaleDims, scale));
  const inputs = ['q', 'scale'];
  if (opts.zeroPoint) {
    g.addInitializer(new Tensor('zp', dtype, scaleDims, zeroPointStorage(dtype, opts.zeroPoint)));
    inputs.push('zp');
  }
  const attrs: Record<string, number> = {};
  if (opts.axis !== undefined) attrs.axis = opts.axis;
  if (opts.blockSize !== undefined) attrs.block_size = opts.blockSize;
  b.node('DequantizeLinear', inputs, { outputs: ['y'], attrs });
  g.outputs.push(valueInfo('y', DataType.FLOAT, dims));
  const out = await runModel(modelToBytes(model), {
    unused: new ort.Tensor('float32', new Float32Array(1), [1]),
  });
  return out.y.data as Float32Array;
}
