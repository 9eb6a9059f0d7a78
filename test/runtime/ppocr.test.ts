/**
 * A real third-party model: PaddleOCR's text-direction classifier (ch_ppocr_mobile_v2.0_cls, opset 9, 471 nodes,
 * weights in Constant nodes, input [N, 3, 48, 192], output softmax [N, 2]).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { describe, test } from 'node:test';
import { loadModel } from '../../src/io/model-file.js';
import type { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { Session } from '../../src/runtime/session.js';
import { addTaps, tapAll } from '../../src/runtime/taps.js';
import { assertClose, f32, PPOCR_CLS, plainOrt, randomF32 } from './helpers.js';

const skip = existsSync(PPOCR_CLS) ? false : `${PPOCR_CLS} is not installed`;
const DIMS = [1, 3, 48, 192];

function constantValue(m: Model, name: string): { dims: number[]; data: Float32Array } {
  const node = m.graph.nodes.find((n) => n.opType === 'Constant' && n.outputs[0] === name);
  const t = node?.attrTensor('value');
  assert.ok(t, `constant ${name}`);
  return { dims: t.dims, data: t.data as Float32Array };
}

describe('PP-OCR cls', { skip }, () => {
  const x = randomF32(3 * 48 * 192, 5);
  const options = { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' as const };

  test('Session (from the file and from the IR) gives exactly what plain onnxruntime-node gives', async () => {
    const { ort } = plainOrt();
    const plain = await ort.InferenceSession.create(PPOCR_CLS, options);
    const ref = (await plain.run({ x: new ort.Tensor('float32', x, DIMS) }))['softmax_0.tmp_0']
      .data as Float32Array;
    await plain.release();

    const fromFile = await Session.create(PPOCR_CLS);
    assert.deepEqual(fromFile.inputs, [
      {
        name: 'x',
        isTensor: true,
        dtype: DataType.FLOAT,
        shape: ['p2o.DynamicDimension.0', 3, 'p2o.DynamicDimension.1', 'p2o.DynamicDimension.2'],
      },
    ]);
    const a = await fromFile.run({ x: f32(DIMS, x) });
    await fromFile.release();
    const fromIr = await Session.create(loadModel(PPOCR_CLS));
    const b = await fromIr.run({ x: f32(DIMS, x) });
    await fromIr.release();

    assert.deepEqual(a['softmax_0.tmp_0'].dims, [1, 2]);
    assert.deepEqual(a['softmax_0.tmp_0'].data, ref);
    assert.deepEqual(b['softmax_0.tmp_0'].data, ref);
  });

  test('taps: first conv, pooled features and logits agree with computing them separately', async () => {
    const m = loadModel(PPOCR_CLS);
    const candidates = tapAll(m, (_, n) => n.opType !== 'Constant');
    assert.ok(candidates.includes('conv2d_53.tmp_0') && candidates.includes('p2o.Add.87'));
    const taps = ['conv2d_53.tmp_0', 'reshape2_0.tmp_0', 'p2o.Add.87'];
    const s = await Session.create(m, { taps });
    assert.deepEqual(
      s.outputs.map((o) => o.dtype),
      [DataType.FLOAT, DataType.FLOAT, DataType.FLOAT, DataType.FLOAT],
    );
    const out = await s.run({ x: f32(DIMS, x) });
    await s.release();
    const plain = await Session.create(m);
    const ref = (await plain.run({ x: f32(DIMS, x) }))['softmax_0.tmp_0'].data as Float32Array;
    await plain.release();

    // final output: taps block some fusions, so float rounding may differ slightly; softmax values in [0, 1]
    assertClose(out['softmax_0.tmp_0'].data as Float32Array, ref, { abs: 1e-6 }, 'softmax');

    // logits -> softmax by hand (float64): 1e-6 (float32 exp/normalise in ORT)
    const logits = out['p2o.Add.87'].data as Float32Array;
    assert.deepEqual(out['p2o.Add.87'].dims, [1, 2]);
    const mx = Math.max(logits[0], logits[1]);
    const e = [Math.exp(logits[0] - mx), Math.exp(logits[1] - mx)];
    assertClose(ref, [e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1])], { abs: 1e-6 }, 'softmax by hand');

    // features [1, 200] x fc weights [200, 2] + bias by hand (float64); float32 accumulation of 200 terms in ORT:
    // relative 1e-5 plus 1e-5 absolute
    const feats = out['reshape2_0.tmp_0'];
    assert.deepEqual(feats.dims, [1, 200]);
    const w = constantValue(m, 'fc_0.w_0');
    const bias = constantValue(m, 'fc_0.b_0');
    const byHand = [0, 1].map((j) => {
      let sum = bias.data[j];
      for (let k = 0; k < 200; k++) sum += (feats.data as Float32Array)[k] * w.data[k * 2 + j];
      return sum;
    });
    assertClose(logits, byHand, { abs: 1e-5, rel: 1e-5 }, 'logits');

    // first conv (3x3, stride 2, pad 1, 3 -> 8 channels, no bias) by hand in float64; 27-term float32 sums
    // of inputs in [-1, 1]: within 1e-5
    const conv = out['conv2d_53.tmp_0'];
    assert.deepEqual(conv.dims, [1, 8, 24, 96]);
    const k = constantValue(m, 'conv2d_0.w_0');
    const expected = new Float64Array(8 * 24 * 96);
    for (let oc = 0; oc < 8; oc++) {
      for (let oy = 0; oy < 24; oy++) {
        for (let ox = 0; ox < 96; ox++) {
          let sum = 0;
          for (let ic = 0; ic < 3; ic++) {
            for (let ky = 0; ky < 3; ky++) {
              for (let kx = 0; kx < 3; kx++) {
                const iy = oy * 2 - 1 + ky;
                const ix = ox * 2 - 1 + kx;
                if (iy < 0 || iy >= 48 || ix < 0 || ix >= 192) continue;
                sum += x[(ic * 48 + iy) * 192 + ix] * k.data[((oc * 3 + ic) * 3 + ky) * 3 + kx];
              }
            }
          }
          expected[(oc * 24 + oy) * 96 + ox] = sum;
        }
      }
    }
    assertClose(conv.data as Float32Array, expected, { abs: 1e-5 }, 'conv');
  });

  test('every node output of the model can be typed for tapping', () => {
    const m = loadModel(PPOCR_CLS);
    const all = tapAll(m);
    assert.equal(all.length, m.graph.nodes.length - 1); // every node has one output; one is the graph output
    const tapped = addTaps(m, all);
    assert.ok(tapped.graph.outputs.every((o) => o.type?.tensor_type?.elem_type));
  });
});
