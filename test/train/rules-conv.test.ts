/**
 * Conv and ConvTranspose gradient rules against central finite differences (test/train/gradcheck.ts) on seeded
 * random geometries: 1-D, 2-D and 3-D; strides 1-3; dilations 1-2; asymmetric pads (some larger than the dilated
 * kernel); auto_pad SAME_UPPER/SAME_LOWER/VALID; groups including depthwise; bias; ConvTranspose output_padding
 * and output_shape. Stride-1 cases take the flipped-kernel Conv path for dX, the others ConvTranspose.
 *
 * Tolerance. ONNX Runtime has no float64 Conv/ConvTranspose kernels, so the checks run in float32. The loss is
 * linear in every single input element (bilinear in X and W), so a central difference is exact for any step;
 * eps 0.5 makes float32 rounding the only error: each output the perturbed element touches carries ≈ 6e-8·|y|,
 * a few dozen of them with |y·R| ≲ 5 give ≲ 2e-6 in the loss difference, ≲ 2e-6 after dividing by 2·eps, against
 * gradients of order 1; the analytic side is float32 sums of the same size. tol 1e-4 keeps a 50x margin.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { mulberry32 } from '../helpers/ort.js';
import { type CheckCase, gradCheck } from './gradcheck.js';

const OPTS = { eps: 0.5, tol: 1e-4 };
const CONFIGS = 12;

function randInt(rnd: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rnd() * (hi - lo + 1));
}

interface Case {
  c: CheckCase;
  label: string;
}

/** Channel layout: [groups, in-channels per group, out-channels per group]; every 4th is depthwise. */
function channels(rnd: () => number, i: number): [number, number, number] {
  if (i % 4 === 1) return [randInt(rnd, 2, 4), 1, randInt(rnd, 1, 2)];
  const g = randInt(rnd, 1, 3);
  return [g, randInt(rnd, 1, 3), randInt(rnd, 1, 2)];
}

function convCase(rnd: () => number, i: number): Case {
  const nsp = [2, 1, 2, 3, 2, 1][i % 6];
  const [g, cg, kg] = channels(rnd, i);
  const kernel = Array.from({ length: nsp }, () => randInt(rnd, 1, nsp === 3 ? 2 : 3));
  // A third of the cases are stride 1 on every axis (flipped-kernel dX path).
  const strides = Array.from({ length: nsp }, () => (i % 3 === 0 ? 1 : randInt(rnd, 1, 3)));
  const dilations = Array.from({ length: nsp }, () => (rnd() < 0.35 ? 2 : 1));
  const dk = kernel.map((k, j) => (k - 1) * dilations[j] + 1);
  // Pads up to the dilated kernel extent: pads = dk makes the flipped kernel's pads negative (ConvTranspose path).
  const pads = [...dk.map((d) => randInt(rnd, 0, d)), ...dk.map((d) => randInt(rnd, 0, d))];
  const x = dk.map((d) => randInt(rnd, d, d + (nsp === 3 ? 2 : 4)));
  const n = randInt(rnd, 1, 2);
  const attrs: NonNullable<CheckCase['attrs']> = { kernel_shape: kernel, strides, dilations };
  if (g !== 1) attrs.group = g;
  const autoPad = ['NOTSET', 'NOTSET', 'SAME_UPPER', 'NOTSET', 'SAME_LOWER', 'VALID'][i % 6];
  if (autoPad === 'NOTSET') attrs.pads = pads;
  else attrs.auto_pad = autoPad;
  // ONNX Runtime's Conv refuses dilations with SAME_UPPER/SAME_LOWER.
  if (autoPad.startsWith('SAME')) dilations.fill(1);
  const inputs: CheckCase['inputs'] = [
    { name: 'x', dims: [n, g * cg, ...x], dtype: 'float32' },
    { name: 'w', dims: [g * kg, cg, ...kernel], dtype: 'float32' },
  ];
  if (i % 2 === 0) inputs.push({ name: 'b', dims: [g * kg], dtype: 'float32' });
  const label = `x${JSON.stringify(inputs[0].dims)} w${JSON.stringify(inputs[1].dims)} g${g} s${strides} d${dilations} ${autoPad === 'NOTSET' ? `p${pads}` : autoPad}`;
  // Opset 12: ReduceSum with axes as an attribute; opset 9: no Slice with steps, so dX always by ConvTranspose.
  return { c: { op: 'Conv', opset: i === 7 ? 12 : i === 9 ? 9 : 13, attrs, inputs }, label };
}

function convTransposeCase(rnd: () => number, i: number): Case {
  const nsp = [2, 1, 2, 3, 2, 1][i % 6];
  const [g, cg, kg] = channels(rnd, i);
  const kernel = Array.from({ length: nsp }, () => randInt(rnd, 1, nsp === 3 ? 2 : 3));
  const strides = Array.from({ length: nsp }, () => randInt(rnd, 1, 3));
  const dilations = Array.from({ length: nsp }, () => (rnd() < 0.35 ? 2 : 1));
  const dk = kernel.map((k, j) => (k - 1) * dilations[j] + 1);
  const x = Array.from({ length: nsp }, () => randInt(rnd, 1, nsp === 3 ? 3 : 4));
  // output_padding < max(stride, dilation) as ONNX Runtime requires, and small enough that the adjoint Conv
  // lands back on X (output_padding < stride).
  const outputPadding = strides.map((s) => randInt(rnd, 0, s - 1));
  const natural = x.map((xi, j) => (xi - 1) * strides[j] + outputPadding[j] + dk[j]);
  const attrs: NonNullable<CheckCase['attrs']> = { kernel_shape: kernel, strides, dilations };
  if (g !== 1) attrs.group = g;
  if (outputPadding.some((p) => p !== 0)) attrs.output_padding = outputPadding;
  let mode: string;
  switch (i % 4) {
    case 1: {
      // output_shape: total padding computed and split by ONNX Runtime.
      // Mostly smaller than the natural size (padding), sometimes one larger (ONNX Runtime pads nothing and the
      // last output is bias only), which the adjoint Conv allows while output_padding + 1 < stride.
      const target = natural.map((nat, j) =>
        outputPadding[j] + 1 < strides[j] && rnd() < 0.3
          ? nat + 1
          : nat - randInt(rnd, 0, Math.min(2, dk[j] - 1)),
      );
      attrs.output_shape = target;
      mode = `output_shape${target}`;
      break;
    }
    case 3:
      // SAME with output_padding is refused (see the test below); SAME with total padding < 0 is not covered.
      if (dk.every((d, j) => d >= strides[j])) {
        delete attrs.output_padding;
        attrs.auto_pad = i % 8 === 3 ? 'SAME_UPPER' : 'SAME_LOWER';
        mode = String(attrs.auto_pad);
      } else {
        mode = 'VALID';
        attrs.auto_pad = 'VALID';
      }
      break;
    default: {
      const pads = [...dk.map((d) => randInt(rnd, 0, d - 1)), ...dk.map((d) => randInt(rnd, 0, d - 1))];
      // Keep at least one output element per axis.
      for (let j = 0; j < nsp; j++) while (natural[j] - pads[j] - pads[j + nsp] < 1) pads[j + nsp]--;
      attrs.pads = pads;
      mode = `p${pads}`;
    }
  }
  const n = randInt(rnd, 1, 2);
  const inputs: CheckCase['inputs'] = [
    { name: 'x', dims: [n, g * cg, ...x], dtype: 'float32' },
    { name: 'w', dims: [g * cg, kg, ...kernel], dtype: 'float32' },
  ];
  if (i % 2 === 0) inputs.push({ name: 'b', dims: [g * kg], dtype: 'float32' });
  const label = `x${JSON.stringify(inputs[0].dims)} w${JSON.stringify(inputs[1].dims)} g${g} s${strides} d${dilations} op${outputPadding} ${mode}`;
  return { c: { op: 'ConvTranspose', opset: i === 5 ? 10 : 13, attrs, inputs }, label };
}

async function sweep(
  t: { diagnostic(msg: string): void },
  name: string,
  seed: number,
  make: (rnd: () => number, i: number) => Case,
): Promise<void> {
  const rnd = mulberry32(seed);
  const worst: Record<string, number> = {};
  for (let i = 0; i < CONFIGS; i++) {
    const { c, label } = make(rnd, i);
    let r: Record<string, number>;
    try {
      r = await gradCheck({ seed: seed + i, ...c }, OPTS);
    } catch (e) {
      throw new Error(`${name} ${label}: ${(e as Error).message}`, { cause: e });
    }
    for (const [k, v] of Object.entries(r)) worst[k] = Math.max(worst[k] ?? 0, v);
  }
  const parts = Object.entries(worst).map(([k, v]) => `d${k} ${v.toExponential(2)}`);
  t.diagnostic(`${name}: max relative error ${parts.join(', ')}`);
}

describe('conv gradient rules', () => {
  test('Conv: 1-3-D, strides, dilations, pads, auto_pad, groups, depthwise, bias (float32)', (t) =>
    sweep(t, 'Conv', 1000, convCase));

  test('ConvTranspose with auto_pad SAME and output_padding is refused with E_GRADIENT', async () => {
    await assert.rejects(
      gradCheck({
        op: 'ConvTranspose',
        opset: 13,
        attrs: { strides: [2], output_padding: [1], auto_pad: 'SAME_LOWER' },
        inputs: [
          { name: 'x', dims: [1, 1, 3], dtype: 'float32' },
          { name: 'w', dims: [1, 1, 2], dtype: 'float32' },
        ],
      }),
      (e: Error & { code?: string }) => e.code === 'E_GRADIENT' && /output_padding/.test(e.message),
    );
  });

  test('ConvTranspose: 1-3-D, strides, dilations, pads, output_padding, output_shape, auto_pad, groups (float32)', (t) =>
    sweep(t, 'ConvTranspose', 2000, convTransposeCase));
});
