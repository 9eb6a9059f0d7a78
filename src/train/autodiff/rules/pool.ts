/**
 * Gradients of the pooling ops: MaxPool, AveragePool, GlobalAveragePool and GlobalMaxPool (any number of spatial
 * axes ONNX Runtime supports).
 *
 * MaxPool: `prepare` requests the second output, Indices (int64, flat over N·C·H·W in row-major order; padding
 * does not count), and the gradient scatters dY onto those positions:
 *   dX = Reshape(ScatterElements(zeros[N·C·H·W], Reshape(Indices, [−1]), Reshape(dY, [−1]), axis 0, 'add'), X.shape)
 * so pads, strides, dilations, ceil_mode and auto_pad are exactly the forward's. Ties go to the element ONNX
 * Runtime picked (the first maximum), never to every tied element. Overlapping windows need reduction 'add'
 * (opset ≥ 16); below that only non-overlapping windows (kernel extent ≤ stride) are supported.
 *
 * AveragePool: dX = ConvTranspose(dY·w, ones[C, 1, k...], group C, same strides/pads/dilations), w = 1/count per
 * output position. The count is whatever ONNX Runtime divided by (count_include_pad 0 or 1, ceil_mode windows
 * that run past the padding), obtained in the graph from the op itself as
 *   w = AveragePool(ones[1, 1, H, W]) / Conv(ones[1, 1, H, W], ones[1, 1, k...])   (valid elements per window)
 * on constants, which ONNX Runtime folds when the session is created. With ceil_mode the end padding of the
 * ConvTranspose grows to cover the last window, and output_padding restores X's size.
 *
 * ceil_mode: ONNX's static shape inference and ONNX Runtime's kernels disagree when the last window would start in
 * the end padding (see declareShape); the rules then declare the run-time shapes of the pooled values in
 * graph.valueInfo.
 *
 * GlobalAveragePool: dX = Expand(dY, X.shape)/(H·W). GlobalMaxPool: dY goes to the first maximum of each channel
 * (ArgMax), consistent with MaxPool.
 */
import { valueInfo } from '../../../ir/builder.js';
import type { Dim } from '../../../ir/passes/shape-inference.js';
import { DataType } from '../../../onnx/dtype.js';
import type { GradContext, GradientRule } from '../rule.js';
import { noGradient } from '../rule.js';

/** X's spatial dims, which must be static (the batch dim may be symbolic). */
function spatial(c: GradContext, x: string): number[] {
  const s = c.shape(x);
  if (!s || s.length < 3 || s.slice(1).some((d) => typeof d !== 'number')) {
    if (s && s.length < 3) throw noGradient(c.node, `input of rank ${s.length} (need [N, C, spatial...])`);
    c.staticShape(x);
  }
  return (s as Dim[]).slice(2) as number[];
}

function product(dims: number[]): number {
  return dims.reduce((a, d) => a * d, 1);
}

interface PoolGeometry {
  /** Input spatial sizes. */
  x: number[];
  /** Output spatial sizes (as ONNX Runtime's kernels compute them). */
  out: number[];
  kernel: number[];
  strides: number[];
  dilations: number[];
  padsBegin: number[];
  padsEnd: number[];
}

/** Explicit geometry of a pooling node: auto_pad resolved the way ONNX Runtime's pool kernels resolve it. */
function poolGeometry(c: GradContext): PoolGeometry {
  const node = c.node;
  const x = spatial(c, node.inputs[0]);
  const n = x.length;
  const kernel = node.attrInts('kernel_shape');
  if (!kernel || kernel.length !== n)
    throw noGradient(node, 'kernel_shape is missing or does not match the input rank');
  const strides = node.attrInts('strides') ?? Array(n).fill(1);
  const dilations = node.attrInts('dilations') ?? Array(n).fill(1);
  const pads = node.attrInts('pads') ?? Array(2 * n).fill(0);
  const autoPad = node.attrString('auto_pad', 'NOTSET');
  const ceil = node.attrInt('ceil_mode', 0) === 1;
  const padsBegin: number[] = [];
  const padsEnd: number[] = [];
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const dk = (kernel[i] - 1) * dilations[i] + 1;
    let pb = pads[i] ?? 0;
    let pe = pads[i + n] ?? 0;
    if (autoPad === 'VALID') [pb, pe] = [0, 0];
    else if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') {
      const target = Math.ceil(x[i] / strides[i]);
      const need = Math.max(0, (target - 1) * strides[i] + kernel[i] - x[i]);
      pb = autoPad === 'SAME_LOWER' ? Math.ceil(need / 2) : Math.floor(need / 2);
      pe = need - pb;
    } else if (autoPad !== 'NOTSET') throw noGradient(node, `auto_pad '${autoPad}' is not supported`);
    const span = x[i] + pb + pe - dk;
    let o = (ceil ? Math.ceil(span / strides[i]) : Math.floor(span / strides[i])) + 1;
    // ONNX Runtime's ceil_mode rule: the last window must start inside the input or the head padding.
    if (ceil && (o - 1) * strides[i] >= x[i] + pb) o--;
    padsBegin.push(pb);
    padsEnd.push(pe);
    out.push(o);
  }
  const y = c.shape(node.outputs[0]);
  if (y?.slice(2).some((d, i) => typeof d === 'number' && d !== out[i])) {
    throw noGradient(
      node,
      `pooling geometry ${JSON.stringify(out)} disagrees with the inferred output shape ${JSON.stringify(y)}`,
    );
  }
  return { x, out, kernel, strides, dilations, padsBegin, padsEnd };
}

/** Flat zeros with X's element count (static when X's shape is, else from Shape(X)). */
function flatZeros(c: GradContext, x: string): string {
  const s = c.shape(x);
  const count = s?.every((d) => typeof d === 'number')
    ? c.int64s([product(s as number[])])
    : c.op('ReduceProd', [c.shapeOf(x)], { keepdims: 1 });
  return c.op('Expand', [c.constant([0], [], x), count]);
}

function flat(c: GradContext, v: string): string {
  return c.op('Reshape', [v, c.int64s([-1])]);
}

/**
 * With ceil_mode, ONNX's shape inference (run by ONNX Runtime when it loads a graph) keeps a last window that
 * starts in the end padding, which ONNX Runtime's kernels (and qnnx's shape inference) drop: the declared shape of
 * the output is then one larger than the run-time one, and backward ops sized from the real shape are rejected at
 * load time ("Incompatible dimensions"). ONNX Runtime prefers a declared value_info over its own inference, so the
 * run-time shape is declared for the pooled values. Replaces an existing declaration of `name`.
 */
function declareShape(
  c: GradContext,
  name: string,
  elemType: DataType | undefined,
  dims: Dim[] | undefined,
): void {
  if (!dims || elemType === undefined || dims.slice(2).some((d) => typeof d !== 'number')) return;
  const g = c.b.graph;
  g.valueInfo = g.valueInfo.filter((v) => v.name !== name);
  g.valueInfo.push(valueInfo(name, elemType, dims));
}

const maxPool: GradientRule = {
  op: 'MaxPool',
  prepare(node, { b, opset }) {
    if (opset < 11)
      throw noGradient(
        node,
        `MaxPool gradients need opset ≥ 11 (Indices and ScatterElements); the model has ${opset}`,
      );
    if (node.attrInt('storage_order', 0) !== 0)
      throw noGradient(node, 'MaxPool storage_order=1 is not supported');
    if (!node.outputs[1]) node.outputs[1] = b.uniqueName(`${node.outputs[0]}_indices`);
  },
  grad(c) {
    const dy = c.dY[0];
    if (!dy || !c.needs[0]) return [];
    const x = c.node.inputs[0];
    const attrs: Record<string, string | number> = { axis: 0 };
    if (c.opset >= 16) attrs.reduction = 'add';
    else {
      // Without reduction, repeated indices overwrite each other: allowed only where windows cannot overlap.
      const kernel = c.node.attrInts('kernel_shape') ?? [];
      const strides = c.node.attrInts('strides') ?? kernel.map(() => 1);
      const dil = c.node.attrInts('dilations') ?? kernel.map(() => 1);
      if (kernel.some((k, i) => (k - 1) * dil[i] + 1 > strides[i])) {
        throw noGradient(
          c.node,
          `overlapping MaxPool windows need ScatterElements reduction='add' (opset ≥ 16); the model has opset ${c.opset}`,
        );
      }
    }
    if (c.node.attrInt('ceil_mode', 0) === 1) {
      const [y, indices] = c.node.outputs;
      declareShape(c, y, c.elemType(y), c.shape(y));
      declareShape(c, indices, DataType.INT64, c.shape(y));
    }
    const scattered = c.op(
      'ScatterElements',
      [flatZeros(c, x), flat(c, c.node.outputs[1]), flat(c, dy)],
      attrs,
    );
    return [c.op('Reshape', [scattered, c.shapeOf(x)])];
  },
};

const averagePool: GradientRule = {
  op: 'AveragePool',
  grad(c) {
    const dy = c.dY[0];
    if (!dy || !c.needs[0]) return [];
    const x = c.node.inputs[0];
    const g = poolGeometry(c);
    const channels = c.shape(x)![1] as number;
    // End padding that covers every window (ceil_mode windows may run past the declared padding).
    const padsEnd = g.padsEnd.map((pe, i) =>
      Math.max(
        pe,
        g.strides[i] * (g.out[i] - 1) + (g.kernel[i] - 1) * g.dilations[i] + 1 - g.x[i] - g.padsBegin[i],
      ),
    );
    const pads = [...g.padsBegin, ...padsEnd];
    const outputPadding = g.x.map(
      (xi, i) =>
        xi +
        g.padsBegin[i] +
        padsEnd[i] -
        g.strides[i] * (g.out[i] - 1) -
        (g.kernel[i] - 1) * g.dilations[i] -
        1,
    );
    if (outputPadding.some((p, i) => p < 0 || p >= Math.max(g.strides[i], g.dilations[i]))) {
      throw noGradient(
        c.node,
        `AveragePool geometry needs output_padding ${JSON.stringify(outputPadding)}, not supported`,
      );
    }
    const ones = c.constant(new Array(product(g.x)).fill(1), [1, 1, ...g.x], x);
    const onesK = c.constant(new Array(product(g.kernel)).fill(1), [1, 1, ...g.kernel], x);
    const geometry = { strides: g.strides, dilations: g.dilations, pads };
    // Valid (non-padding) elements per window, and the forward op itself on ones, which gives valid/count for
    // every window whatever count ONNX Runtime used (count_include_pad, ceil_mode windows past the padding).
    const valid = c.op('Conv', [ones, onesK], geometry);
    const avgAttrs: Record<string, number | number[] | string> = {};
    for (const a of c.node.attributes) {
      if (['kernel_shape', 'strides', 'pads', 'dilations'].includes(a.name))
        avgAttrs[a.name] = c.node.attrInts(a.name)!;
      else if (['ceil_mode', 'count_include_pad'].includes(a.name))
        avgAttrs[a.name] = c.node.attrInt(a.name)!;
      else if (a.name === 'auto_pad') avgAttrs[a.name] = c.node.attrString(a.name)!;
    }
    const avg = c.op('AveragePool', [ones], avgAttrs);
    if (c.node.attrInt('ceil_mode', 0) === 1) {
      const y = c.node.outputs[0];
      declareShape(c, y, c.elemType(y), c.shape(y));
      declareShape(c, avg, c.elemType(x), [1, 1, ...g.out]);
    }
    const w = c.op('Div', [avg, c.op('Max', [valid, c.constant([1], [], x)])]);
    const weights = c.constant(
      new Array(channels * product(g.kernel)).fill(1),
      [channels, 1, ...g.kernel],
      x,
    );
    const attrs: Record<string, number | number[]> = { ...geometry, group: channels };
    if (outputPadding.some((p) => p !== 0)) attrs.output_padding = outputPadding;
    return [c.op('ConvTranspose', [c.op('Mul', [dy, w]), weights], attrs)];
  },
};

const globalAveragePool: GradientRule = {
  op: 'GlobalAveragePool',
  grad(c) {
    const dy = c.dY[0];
    if (!dy || !c.needs[0]) return [];
    const x = c.node.inputs[0];
    const inv = c.constant([1 / product(spatial(c, x))], [], x);
    return [c.op('Mul', [c.op('Expand', [dy, c.shapeOf(x)]), inv])];
  },
};

const globalMaxPool: GradientRule = {
  op: 'GlobalMaxPool',
  grad(c) {
    const dy = c.dY[0];
    if (!dy || !c.needs[0]) return [];
    const x = c.node.inputs[0];
    const p = product(spatial(c, x));
    // [N, C, P]: the first maximum of each channel receives dY.
    const xf = c.op('Reshape', [x, c.int64s([0, 0, -1])]);
    const arg = c.op('ArgMax', [xf], { axis: 2, keepdims: 1 });
    const iota = c.int64s(Array.from({ length: p }, (_, i) => i));
    const hit = c.op('Equal', [iota, arg]);
    const d = c.op('Where', [hit, c.op('Reshape', [dy, c.int64s([0, 0, 1])]), c.constant([0], [], x)]);
    return [c.op('Reshape', [d, c.shapeOf(x)])];
  },
};

export const rules: GradientRule[] = [maxPool, averagePool, globalAveragePool, globalMaxPool];
