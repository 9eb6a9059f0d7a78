/**
 * Dropout's gradient. Where Dropout is the identity (no training_mode, training_mode false, ratio 0, opsets
 * before 12) it is checked against float64 finite differences at 1e-6. In training mode the mask is random
 * and changes every run, so finite differences do not apply; instead one run of the training graph returns
 * y, the mask and dX, and dX must equal W·mask/(1 − ratio) for the loss Σ y·W, while y = x·mask/(1 − ratio)
 * shows that the mask is the one the forward used. Those are exact up to one rounding (rel 1e-12 in float64,
 * 1e-6 in float32).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { modelToBytes } from '../../src/io/model-file.js';
import { GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType } from '../../src/onnx/dtype.js';
import { addGradients } from '../../src/train/autodiff/engine.js';
import { mulberry32 } from '../helpers/ort.js';
import { gradCheck } from './gradcheck.js';

describe('Dropout gradient', () => {
  test('identity cases match float64 finite differences (rel tol 1e-6)', async () => {
    const x = { name: 'x', dims: [3, 4] };
    const bool = (name: string, v: number) => ({
      name,
      dims: [],
      dtype: 'bool' as const,
      values: [v],
      constant: true,
    });
    const ratio = (v: number) => ({ name: 'r', dims: [], values: [v], constant: true });
    await gradCheck({ op: 'Dropout', opset: 13, inputs: [x] });
    await gradCheck({ op: 'Dropout', opset: 13, inputs: [x, ratio(0.3)] });
    await gradCheck({ op: 'Dropout', opset: 13, inputs: [x, ratio(0.3), bool('t', 0)] });
    // Training mode with ratio 0 keeps every element and scales by 1.
    await gradCheck({ op: 'Dropout', opset: 13, inputs: [x, ratio(0), bool('t', 1)] });
    // Opset 10: ratio is an attribute and ONNX Runtime runs Dropout as the identity.
    await gradCheck({ op: 'Dropout', opset: 10, attrs: { ratio: 0.5 }, inputs: [x] });
  });

  interface Case {
    dtype: 'float64' | 'float32';
    /** A constant, or fed at run time (undefined: the input is left out). */
    ratio?: number | { fed: number };
    training: boolean | { fed: boolean };
    /** The forward node already exposes its mask. */
    maskOutput?: boolean;
  }

  async function runTraining(c: Case, seed: number): Promise<void> {
    const m = new Model();
    m.irVersion = 10;
    m.opsetImports = [{ domain: '', version: 13 }];
    const g = m.graph;
    const b = new GraphBuilder(g);
    const type = c.dtype === 'float64' ? DataType.DOUBLE : DataType.FLOAT;
    const arr = (v: number[]) => (c.dtype === 'float64' ? Float64Array.from(v) : Float32Array.from(v));
    const dims = [4, 50];
    const n = 200;
    const rnd = mulberry32(seed);
    const xv = arr(Array.from({ length: n }, () => 0.5 + rnd()));
    const wv = arr(Array.from({ length: n }, () => rnd() - 0.5));
    const feeds: Record<string, ort.Tensor> = { x: new ort.Tensor(c.dtype, xv, dims) };
    g.inputs.push(valueInfo('x', type, dims));
    b.reserve('x');
    const w = b.initializer('w', type, dims, wv);
    const inputs = ['x'];
    let r = 0.5;
    if (c.ratio === undefined) inputs.push('');
    else if (typeof c.ratio === 'number') {
      r = c.ratio;
      inputs.push(b.initializer('ratio', type, [], arr([r])));
    } else {
      r = c.ratio.fed;
      g.inputs.push(valueInfo('ratio', type, []));
      b.reserve('ratio');
      feeds.ratio = new ort.Tensor(c.dtype, arr([r]), []);
      inputs.push('ratio');
    }
    let training: boolean;
    if (typeof c.training === 'boolean') {
      training = c.training;
      g.addInitializer(new Tensor('training', DataType.BOOL, [], Uint8Array.of(training ? 1 : 0)));
      b.reserve('training');
    } else {
      training = c.training.fed;
      g.inputs.push(valueInfo('training', DataType.BOOL, []));
      b.reserve('training');
      feeds.training = new ort.Tensor('bool', Uint8Array.of(training ? 1 : 0), []);
    }
    inputs.push('training');
    const node = b.node('Dropout', inputs, { outputs: c.maskOutput ? ['y', 'mask'] : ['y'], name: 'drop' });
    b.node('ReduceSum', [b.op('Mul', [node.outputs[0], w])], { outputs: ['loss'], attrs: { keepdims: 0 } });
    const { gradients } = addGradients(m, { loss: 'loss', wrt: ['x'] });
    assert.equal(node.outputs.length, 2, 'prepare gives Dropout a mask output');
    if (c.maskOutput) assert.equal(node.outputs[1], 'mask', 'an existing mask output is reused');
    b.node('Identity', [gradients.get('x')!], { outputs: ['dx'] });
    b.node('Identity', [node.outputs[1]], { outputs: ['mask_out'] });
    g.outputs.push(valueInfo('y', type), valueInfo('dx', type), valueInfo('mask_out', DataType.BOOL));
    const s = await ort.InferenceSession.create(modelToBytes(m), { logSeverityLevel: 3 });
    const out = await s.run(feeds);
    await s.release();
    const y = out.y.data as Float64Array;
    const dx = out.dx.data as Float64Array;
    const mask = out.mask_out.data as Uint8Array;
    // ONNX Runtime computes 1 − ratio in float32, also for float64 data; the rule does the same.
    const scale = training ? 1 / Math.fround(1 - Math.fround(r)) : 1;
    const tol = c.dtype === 'float64' ? 1e-12 : 1e-6;
    let kept = 0;
    for (let i = 0; i < n; i++) {
      kept += mask[i] ? 1 : 0;
      const ey = mask[i] ? xv[i] * scale : 0;
      const edx = mask[i] ? wv[i] * scale : 0;
      assert.ok(Math.abs(y[i] - ey) <= tol * Math.abs(ey) + 1e-30, `y[${i}] = ${y[i]}, expected ${ey}`);
      assert.ok(Math.abs(dx[i] - edx) <= tol * Math.abs(edx) + 1e-30, `dx[${i}] = ${dx[i]}, expected ${edx}`);
    }
    if (training && r > 0) assert.ok(kept > 0 && kept < n, `a random mask (kept ${kept} of ${n})`);
    else assert.equal(kept, n, 'inference mode keeps everything');
  }

  const cases: Case[] = [
    { dtype: 'float64', ratio: 0.3, training: true },
    { dtype: 'float64', training: true }, // default ratio 0.5
    { dtype: 'float64', ratio: { fed: 0.6 }, training: true },
    { dtype: 'float64', ratio: 0.25, training: { fed: true } },
    { dtype: 'float64', ratio: { fed: 0.4 }, training: { fed: false } },
    { dtype: 'float64', ratio: 0.2, training: true, maskOutput: true },
    { dtype: 'float32', ratio: 0.5, training: { fed: true } },
    { dtype: 'float32', ratio: { fed: 0.1 }, training: { fed: false } },
  ];
  for (const [i, c] of cases.entries()) {
    test(`training graph: dX = W·mask/(1 − r), ${JSON.stringify(c)}`, async () => {
      await runTraining(c, 7 + i);
    });
  }
});
