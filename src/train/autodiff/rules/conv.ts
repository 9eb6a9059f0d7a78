/**
 * Gradients of Conv and ConvTranspose (1-D, 2-D and 3-D; strides, dilations, asymmetric pads, auto_pad, groups
 * including depthwise, bias), with the formulations that measured fastest in ONNX Runtime (docs/research
 * onnx-runtime.md A.2 and A.4):
 *
 * Conv dX
 *   - stride 1: Conv(dY, W'), W' = W transposed per group ([K, C/g, k...] → [C, K/g, k...]) and flipped along
 *     every spatial axis (Slice with step −1), pads' = d·(k − 1) − pads;
 *   - stride > 1 (or pads larger than the dilated kernel): ConvTranspose(dY, W) with the forward's strides, pads,
 *     dilations and group, and output_padding = (X + p_begin + p_end − d·(k − 1) − 1) mod s so dX has X's shape.
 * Conv dW ("unfold"): U = Conv(X, E, group C) with a one-hot kernel E[C·kk, 1, k...] (kk = ∏k; im2col as a
 *   depthwise conv with the forward's s/p/d), then per group MatMul(U[N, g, C/g·kk, P], dYᵀ[N, g, P, K/g]),
 *   ReduceSum over N, Transpose and Reshape to [K, C/g, k...].
 * Conv dB = ReduceSum(dY, [0, 2, ...]).
 *
 * ConvTranspose is the adjoint of Conv in its input: dX = Conv(dY, W) with the same strides, pads, dilations and
 * group, and dW is the Conv dW recipe with the roles swapped (input := dY, output gradient := X). Pads are resolved
 * the way ONNX Runtime 1.30 resolves them (output_shape and SAME_* split the total padding as the ONNX spec says;
 * checked by running it, since older ONNX Runtime sources split it the other way round).
 *
 * Shapes: channels, spatial dims and W must be static (the batch dim may be symbolic).
 */
import type { AttrInput } from '../../../ir/builder.js';
import type { Dim } from '../../../ir/passes/shape-inference.js';
import type { GradContext, GradientRule } from '../rule.js';
import { noGradient } from '../rule.js';

const INT64_MIN = -(2 ** 63);

/** The geometry of a convolution from an input of spatial size `x` to an output of spatial size `out`. */
interface ConvGeometry {
  x: number[];
  out: number[];
  kernel: number[];
  strides: number[];
  dilations: number[];
  padsBegin: number[];
  padsEnd: number[];
  group: number;
}

function product(dims: number[]): number {
  return dims.reduce((a, d) => a * d, 1);
}

function reduceSum(c: GradContext, x: string, axes: number[], keepdims: 0 | 1): string {
  if (c.opset >= 13) return c.op('ReduceSum', [x, c.int64s(axes)], { keepdims });
  return c.op('ReduceSum', [x], { axes, keepdims });
}

/** Channels and spatial dims of an [N, C, spatial...] value, which must be static (N may be symbolic). */
function channelsAndSpatial(c: GradContext, name: string): { channels: number; spatial: number[] } {
  const s = c.shape(name);
  if (s && s.length < 3) throw noGradient(c.node, `'${name}' has rank ${s.length} (need [N, C, spatial...])`);
  if (!s || s.slice(1).some((d: Dim) => typeof d !== 'number')) c.staticShape(name);
  return { channels: s![1] as number, spatial: s!.slice(2) as number[] };
}

function spatialAttrs(c: GradContext, nsp: number) {
  const node = c.node;
  const strides = node.attrInts('strides') ?? Array(nsp).fill(1);
  const dilations = node.attrInts('dilations') ?? Array(nsp).fill(1);
  const pads = node.attrInts('pads') ?? Array(2 * nsp).fill(0);
  const group = node.attrInt('group', 1);
  const autoPad = node.attrString('auto_pad', 'NOTSET');
  if (!['NOTSET', 'VALID', 'SAME_UPPER', 'SAME_LOWER'].includes(autoPad)) {
    throw noGradient(node, `auto_pad '${autoPad}' is not supported`);
  }
  if (strides.length !== nsp || dilations.length !== nsp || pads.length !== 2 * nsp) {
    throw noGradient(node, `strides/dilations/pads do not match ${nsp} spatial axes`);
  }
  return { strides, dilations, pads, group, autoPad };
}

function kernelOf(c: GradContext, w: number[], nsp: number): number[] {
  const kernel = w.slice(2);
  const attr = c.node.attrInts('kernel_shape');
  if (kernel.length !== nsp || (attr && attr.join() !== kernel.join())) {
    throw noGradient(
      c.node,
      `kernel_shape ${JSON.stringify(attr ?? kernel)} does not match W ${JSON.stringify(w)}`,
    );
  }
  return kernel;
}

/** Conv geometry with auto_pad resolved as ONNX Runtime does (SAME: output ⌈x/s⌉, extra padding at the end for UPPER). */
function convGeometry(c: GradContext): ConvGeometry {
  const [xName, wName] = c.node.inputs;
  const x = channelsAndSpatial(c, xName).spatial;
  const w = c.staticShape(wName);
  const nsp = x.length;
  const kernel = kernelOf(c, w, nsp);
  const { strides, dilations, pads, group, autoPad } = spatialAttrs(c, nsp);
  const padsBegin: number[] = [];
  const padsEnd: number[] = [];
  const out: number[] = [];
  for (let i = 0; i < nsp; i++) {
    const dk = (kernel[i] - 1) * dilations[i] + 1;
    let [pb, pe] = [pads[i], pads[i + nsp]];
    if (autoPad === 'VALID') [pb, pe] = [0, 0];
    else if (autoPad !== 'NOTSET') {
      const need = Math.max(0, (Math.ceil(x[i] / strides[i]) - 1) * strides[i] + dk - x[i]);
      pb = autoPad === 'SAME_LOWER' ? Math.ceil(need / 2) : Math.floor(need / 2);
      pe = need - pb;
    }
    padsBegin.push(pb);
    padsEnd.push(pe);
    out.push(Math.floor((x[i] + pb + pe - dk) / strides[i]) + 1);
  }
  return { x, out, kernel, strides, dilations, padsBegin, padsEnd, group };
}

/** ConvTranspose geometry, seen as the Conv it is the adjoint of (from Y back to X). */
function convTransposeGeometry(c: GradContext): ConvGeometry {
  const node = c.node;
  const [xName, wName] = node.inputs;
  const x = channelsAndSpatial(c, xName).spatial;
  const w = c.staticShape(wName);
  const nsp = x.length;
  const kernel = kernelOf(c, w, nsp);
  const { strides, dilations, pads, group, autoPad } = spatialAttrs(c, nsp);
  const outputPadding = node.attrInts('output_padding') ?? Array(nsp).fill(0);
  const outputShape = node.attrInts('output_shape');
  if (!outputShape && autoPad.startsWith('SAME')) {
    // ONNX's shape inference declares x·s + output_padding; ONNX Runtime computes x·s, or the natural size when
    // that is smaller. Where they differ, the declared shapes of the gradient would contradict the run-time ones.
    const off = x.some((xi, i) => {
      const natural = (xi - 1) * strides[i] + outputPadding[i] + (kernel[i] - 1) * dilations[i] + 1;
      return outputPadding[i] !== 0 || natural < xi * strides[i];
    });
    if (off) {
      throw noGradient(
        node,
        `ConvTranspose with auto_pad ${autoPad} here (output_padding, or a kernel extent below the stride) has an output size ONNX and ONNX Runtime disagree on; give pads or output_shape instead`,
      );
    }
  }
  const padsBegin: number[] = [];
  const padsEnd: number[] = [];
  const y: number[] = [];
  for (let i = 0; i < nsp; i++) {
    const dk = (kernel[i] - 1) * dilations[i] + 1;
    const natural = (x[i] - 1) * strides[i] + (outputPadding[i] ?? 0) + dk;
    let [pb, pe] = autoPad === 'VALID' ? [0, 0] : [pads[i], pads[i + nsp]];
    let size: number;
    const target = outputShape
      ? outputShape[outputShape.length - nsp + i]
      : autoPad.startsWith('SAME')
        ? x[i] * strides[i]
        : -1;
    if (target >= 0) {
      // total = max(0, natural − target), split as the ONNX spec says and ONNX Runtime 1.30 does (measured):
      // SAME_UPPER puts the odd unit at the end, NOTSET (output_shape) and SAME_LOWER at the beginning.
      const total = Math.max(0, natural - target);
      pb = autoPad === 'SAME_UPPER' ? Math.floor(total / 2) : total - Math.floor(total / 2);
      pe = total - pb;
      size = outputShape ? target : natural - total;
    } else size = natural - pb - pe;
    padsBegin.push(pb);
    padsEnd.push(pe);
    y.push(size);
    // The adjoint Conv from Y must land exactly on X.
    if (Math.floor((size + pb + pe - dk) / strides[i]) + 1 !== x[i]) {
      throw noGradient(
        node,
        `ConvTranspose output size ${size} on axis ${i} is not the adjoint of a Conv back to ${x[i]} (output_padding/output_shape too large)`,
      );
    }
  }
  return { x: y, out: x, kernel, strides, dilations, padsBegin, padsEnd, group };
}

function convAttrs(g: ConvGeometry): Record<string, AttrInput> {
  const attrs: Record<string, AttrInput> = {
    kernel_shape: g.kernel,
    strides: g.strides,
    dilations: g.dilations,
    pads: [...g.padsBegin, ...g.padsEnd],
  };
  if (g.group !== 1) attrs.group = g.group;
  return attrs;
}

/**
 * Gradient of a Conv (geometry g, weights `w` of shape [K, C/g, k...]) with respect to its input, given dY.
 */
function convInputGrad(
  c: GradContext,
  dy: string,
  w: string,
  g: ConvGeometry,
  k: number,
  ch: number,
): string {
  const nsp = g.x.length;
  const dk = g.kernel.map((kk, i) => (kk - 1) * g.dilations[i] + 1);
  const flipBegin = dk.map((d, i) => d - 1 - g.padsBegin[i]);
  const flipEnd = dk.map((d, i) => d - 1 - g.padsEnd[i]);
  if (c.opset >= 10 && g.strides.every((s) => s === 1) && [...flipBegin, ...flipEnd].every((p) => p >= 0)) {
    // W [K, C/g, k...] → per-group transpose [C, K/g, k...] → flipped spatially.
    const spatialAxes = Array.from({ length: nsp }, (_, i) => i + 2);
    let wt: string;
    if (g.group === 1) wt = c.op('Transpose', [w], { perm: [1, 0, ...spatialAxes] });
    else {
      const grouped = c.op('Reshape', [w, c.int64s([g.group, k / g.group, ch / g.group, ...g.kernel])]);
      const swapped = c.op('Transpose', [grouped], { perm: [0, 2, 1, ...spatialAxes.map((a) => a + 1)] });
      wt = c.op('Reshape', [swapped, c.int64s([ch, k / g.group, ...g.kernel])]);
    }
    const flipped = c.op('Slice', [
      wt,
      c.int64s(Array(nsp).fill(-1)),
      c.int64s(Array(nsp).fill(INT64_MIN)),
      c.int64s(spatialAxes),
      c.int64s(Array(nsp).fill(-1)),
    ]);
    const attrs: Record<string, AttrInput> = {
      kernel_shape: g.kernel,
      dilations: g.dilations,
      pads: [...flipBegin, ...flipEnd],
    };
    if (g.group !== 1) attrs.group = g.group;
    return c.op('Conv', [dy, flipped], attrs);
  }
  const outputPadding = g.x.map(
    (x, i) => x + g.padsBegin[i] + g.padsEnd[i] - dk[i] - g.strides[i] * (g.out[i] - 1),
  );
  const attrs = convAttrs(g);
  if (outputPadding.some((p) => p !== 0)) attrs.output_padding = outputPadding;
  return c.op('ConvTranspose', [dy, w], attrs);
}

/**
 * Gradient of a Conv (geometry g from `input` [N, C, x...] to `outGrad` [N, K, out...]) with respect to its
 * weights [K, C/g, k...], by unfolding the input with a one-hot depthwise Conv.
 */
function convWeightGrad(
  c: GradContext,
  input: string,
  outGrad: string,
  g: ConvGeometry,
  k: number,
  ch: number,
): string {
  const nsp = g.x.length;
  const kk = product(g.kernel);
  const eyeValues = new Array(kk * kk).fill(0);
  for (let j = 0; j < kk; j++) eyeValues[j * kk + j] = 1;
  const eye = c.constant(eyeValues, [kk, 1, ...g.kernel], c.node.inputs[0]);
  const e = ch === 1 ? eye : c.op('Tile', [eye, c.int64s([ch, ...Array(nsp + 1).fill(1)])]);
  const unfold = c.op('Conv', [input, e], { ...convAttrs(g), group: ch });
  const cg = ch / g.group;
  const kg = k / g.group;
  const u = c.op('Reshape', [unfold, c.int64s([0, g.group, cg * kk, -1])]);
  const d = c.op('Transpose', [c.op('Reshape', [outGrad, c.int64s([0, g.group, kg, -1])])], {
    perm: [0, 1, 3, 2],
  });
  const perBatch = c.op('MatMul', [u, d]);
  const summed = reduceSum(c, perBatch, [0], 0);
  const t = c.op('Transpose', [summed], { perm: [0, 2, 1] });
  return c.op('Reshape', [t, c.int64s([k, cg, ...g.kernel])]);
}

function biasGrad(c: GradContext, dy: string, nsp: number): string {
  return reduceSum(c, dy, [0, ...Array.from({ length: nsp }, (_, i) => i + 2)], 0);
}

function checkGroups(c: GradContext, g: ConvGeometry, inCh: number, outCh: number): void {
  if (g.group < 1 || inCh % g.group !== 0 || outCh % g.group !== 0) {
    throw noGradient(c.node, `group ${g.group} does not divide the channels (${inCh} → ${outCh})`);
  }
}

const conv: GradientRule = {
  op: 'Conv',
  grad(c) {
    const dy = c.dY[0];
    if (!dy) return [];
    const [x, w, bias] = c.node.inputs;
    const g = convGeometry(c);
    const ch = channelsAndSpatial(c, x).channels;
    const k = c.staticShape(w)[0];
    checkGroups(c, g, ch, k);
    return [
      c.needs[0] ? convInputGrad(c, dy, w, g, k, ch) : undefined,
      c.needs[1] ? convWeightGrad(c, x, dy, g, k, ch) : undefined,
      bias && c.needs[2] ? biasGrad(c, dy, g.x.length) : undefined,
    ];
  },
};

const convTranspose: GradientRule = {
  op: 'ConvTranspose',
  grad(c) {
    const dy = c.dY[0];
    if (!dy) return [];
    const [x, w, bias] = c.node.inputs;
    // As a Conv from Y ([N, Cout, y...]) to X ([N, Cin, x...]) with weights W [Cin, Cout/g, k...].
    const g = convTransposeGeometry(c);
    const cin = channelsAndSpatial(c, x).channels;
    const cout = c.staticShape(w)[1] * g.group;
    checkGroups(c, g, cout, cin);
    return [
      c.needs[0] ? c.op('Conv', [dy, w], convAttrs(g)) : undefined,
      c.needs[1] ? convWeightGrad(c, dy, x, g, cin, cout) : undefined,
      bias && c.needs[2] ? biasGrad(c, dy, g.x.length) : undefined,
    ];
  },
};

export const rules: GradientRule[] = [conv, convTranspose];
