/**
 * BatchNormalization (training mode) and LayerNormalization gradient rules against central finite differences
 * (test/train/gradcheck.ts), on seeded random shapes, epsilons and axes. Both ops have float64 kernels in ONNX
 * Runtime (BatchNormalization in training mode included), so the checks run in float64 with eps 1e-6: the
 * central-difference truncation error is O(eps²·|f'''|) ≈ 1e-12 and the rounding error O(1e-16·|L|/eps) ≈ 1e-10,
 * so tol 1e-6 has a wide margin. The finite differences run the forward node as given to gradCheck, so the
 * BatchNormalization cases declare training mode themselves (training_mode = 1 and three outputs); the test of
 * `prepare` checks separately that the rule turns an inference-mode node into exactly that.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { modelToBytes } from '../../src/io/model-file.js';
import { floatAttr, GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { addGradients } from '../../src/train/autodiff/engine.js';
import { mulberry32, ort, runModel } from '../helpers/ort.js';
import { type CheckCase, gradCheck } from './gradcheck.js';

const OPTS = { eps: 1e-6, tol: 1e-6 };
const CONFIGS = 8;

function randInt(rnd: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rnd() * (hi - lo + 1));
}

describe('normalization gradient rules', () => {
  test('BatchNormalization training mode, ranks 2-5 (float64)', async (t) => {
    const rnd = mulberry32(11);
    let worst = 0;
    for (let i = 0; i < CONFIGS; i++) {
      const n = randInt(rnd, 1, 4);
      const ch = randInt(rnd, 1, 4);
      const spatial = Array.from({ length: i % 4 }, () => randInt(rnd, 1, 4));
      // At least 3 values per channel: with 1 the variance is 0, and with 2 x̂ = ±1 whatever x is, so dx is
      // only the tiny ε-term and a relative error is meaningless.
      if (n * spatial.reduce((a, d) => a * d, 1) < 3) spatial.push(3);
      const dims = [n, ch, ...spatial];
      // Opset 15 uses training_mode; opsets 9 and 13 train because all five outputs are requested.
      const opset = i === 5 ? 9 : i % 3 === 2 ? 13 : 15;
      const attrs: CheckCase['attrs'] = {
        epsilon: floatAttr('epsilon', 10 ** (-5 + 3 * rnd())),
        momentum: floatAttr('momentum', 0.5 + 0.5 * rnd()),
      };
      if (opset >= 14) attrs.training_mode = 1;
      const r = await gradCheck(
        {
          op: 'BatchNormalization',
          opset,
          attrs,
          outputs: 1,
          declaredOutputs: opset >= 14 ? 3 : 5,
          inputs: [
            { name: 'x', dims, lo: -2, hi: 3 },
            { name: 'scale', dims: [ch], lo: 0.5, hi: 1.5 },
            { name: 'bias', dims: [ch] },
            { name: 'mean', dims: [ch], grad: false },
            { name: 'var', dims: [ch], lo: 0.5, hi: 2, grad: false },
          ],
          seed: 100 + i,
        },
        OPTS,
      );
      worst = Math.max(worst, ...Object.values(r));
    }
    t.diagnostic(`BatchNormalization: max relative error ${worst.toExponential(2)}`);
  });

  test('BatchNormalization prepare(): training mode, running-stat outputs and their semantics', async () => {
    const rnd = mulberry32(12);
    const [n, ch, h, w] = [3, 2, 2, 3];
    const dims = [n, ch, h, w];
    const m = new Model();
    m.opsetImports = [{ domain: '', version: 15 }];
    const b = new GraphBuilder(m.graph);
    m.graph.inputs.push(valueInfo('x', DataType.DOUBLE, dims));
    b.reserve('x');
    const d = (name: string, v: number[]) =>
      b.initializer(name, DataType.DOUBLE, [v.length], Float64Array.from(v));
    const runMean = [0.3, -0.2];
    const runVar = [1.5, 0.7];
    const momentum = 0.8;
    const bn = b.node(
      'BatchNormalization',
      ['x', d('g', [1.2, 0.8]), d('beta', [0.1, -0.1]), d('rm', runMean), d('rv', runVar)],
      {
        outputs: ['y'],
        attrs: { momentum: floatAttr('momentum', momentum) },
        name: 'bn',
      },
    );
    b.node('ReduceSum', ['y'], { outputs: ['loss'], attrs: { keepdims: 0 } });
    m.graph.outputs.push(valueInfo('loss', DataType.DOUBLE, []));
    addGradients(m, { loss: 'loss', wrt: ['g'] });
    assert.equal(bn.attrInt('training_mode'), 1);
    assert.deepEqual(bn.outputs, ['y', 'y_running_mean', 'y_running_var']);
    m.graph.outputs.push(
      valueInfo('y_running_mean', DataType.DOUBLE, [ch]),
      valueInfo('y_running_var', DataType.DOUBLE, [ch]),
    );
    const x = Float64Array.from({ length: n * ch * h * w }, () => rnd() * 4 - 1);
    const out = await runModel(modelToBytes(m), { x: new ort.Tensor('float64', x, dims) });
    const rm = out.y_running_mean.data as Float64Array;
    const rv = out.y_running_var.data as Float64Array;
    for (let c = 0; c < ch; c++) {
      const vals: number[] = [];
      for (let i = 0; i < n; i++) for (let j = 0; j < h * w; j++) vals.push(x[(i * ch + c) * h * w + j]);
      const mean = vals.reduce((a, v) => a + v, 0) / vals.length;
      const biased = vals.reduce((a, v) => a + (v - mean) ** 2, 0) / vals.length;
      // ONNX momentum (a float32 attribute) weights the old value; the variance is the biased one.
      const mo = Math.fround(momentum);
      assert.ok(Math.abs(rm[c] - (mo * runMean[c] + (1 - mo) * mean)) < 1e-12, `running mean ${c}`);
      assert.ok(Math.abs(rv[c] - (mo * runVar[c] + (1 - mo) * biased)) < 1e-12, `running var ${c}`);
    }
  });

  test('LayerNormalization, random axis, with and without bias (float64)', async (t) => {
    const rnd = mulberry32(21);
    let worst = 0;
    for (let i = 0; i < CONFIGS; i++) {
      const rank = randInt(rnd, 1, 4);
      const dims = Array.from({ length: rank }, () => randInt(rnd, 1, 4));
      const axis = randInt(rnd, -rank, rank - 1);
      const a = axis < 0 ? axis + rank : axis;
      // At least 3 normalized elements (see the BatchNormalization case).
      if (dims.slice(a).reduce((p, d) => p * d, 1) < 3) dims[rank - 1] = 3;
      const inputs: CheckCase['inputs'] = [
        { name: 'x', dims, lo: -2, hi: 3 },
        { name: 'scale', dims: dims.slice(a), lo: 0.5, hi: 1.5 },
      ];
      if (i % 3 !== 1) inputs.push({ name: 'bias', dims: dims.slice(a) });
      const r = await gradCheck(
        {
          op: 'LayerNormalization',
          // Opset 17: ReduceMean takes axes as an attribute; 18: as an input.
          opset: i % 2 ? 17 : 18,
          attrs: { axis, epsilon: floatAttr('epsilon', 10 ** (-5 + 3 * rnd())) },
          inputs,
          seed: 200 + i,
        },
        OPTS,
      );
      worst = Math.max(worst, ...Object.values(r));
    }
    t.diagnostic(`LayerNormalization: max relative error ${worst.toExponential(2)}`);
  });

  test('a loss that reads the running statistics is refused with E_GRADIENT', async () => {
    await assert.rejects(
      gradCheck({
        op: 'BatchNormalization',
        opset: 15,
        attrs: { training_mode: 1 },
        outputs: 2,
        declaredOutputs: 3,
        inputs: [
          { name: 'x', dims: [2, 2, 2] },
          { name: 'scale', dims: [2] },
          { name: 'bias', dims: [2] },
          { name: 'mean', dims: [2], grad: false },
          { name: 'var', dims: [2], lo: 0.5, hi: 1, grad: false },
        ],
      }),
      (e: Error & { code?: string }) => e.code === 'E_GRADIENT' && /running mean\/variance/.test(e.message),
    );
  });
});
