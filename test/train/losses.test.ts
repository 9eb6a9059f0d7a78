/**
 * Loss builders: the loss value computed by ONNX Runtime (float32) against hand computations in float64, and the
 * gradient the autodiff engine derives through the loss nodes against the closed form (softmax − onehot)/N etc.
 * Tolerances: 2e-6 relative for the loss (float32 arithmetic on O(1) values over a few dozen terms, float32
 * epsilon 6e-8), 1e-5 relative to the largest gradient element for the gradients.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { Session } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';
import { addGradients } from '../../src/train/autodiff/engine.js';
import { addLoss, type LossSpec, lossTargetType, lossValue } from '../../src/train/losses.js';
import { mulberry32 } from '../helpers/ort.js';

const N = 6;
const C = 5;

interface Case {
  spec: LossSpec;
  target: (rnd: () => number, pred: Float32Array) => Float32Array | BigInt64Array;
  /** Loss in float64, written out by hand. */
  loss: (p: Float32Array, t: ArrayLike<number | bigint>) => number;
  /** d loss / d pred in float64. */
  grad: (p: Float32Array, t: ArrayLike<number | bigint>) => Float64Array;
}

function softmaxRow(x: ArrayLike<number>, i: number, temp = 1): number[] {
  const row = Array.from({ length: C }, (_, j) => Number(x[i * C + j]) / temp);
  const m = Math.max(...row);
  const e = row.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

const T = 3;
const CASES: Case[] = [
  {
    spec: { kind: 'cross-entropy' },
    target: (rnd) => BigInt64Array.from({ length: N }, () => BigInt(Math.floor(rnd() * C))),
    loss: (p, t) => {
      let s = 0;
      for (let i = 0; i < N; i++) s += -Math.log(softmaxRow(p, i)[Number(t[i])]);
      return s / N;
    },
    grad: (p, t) => {
      const g = new Float64Array(N * C);
      for (let i = 0; i < N; i++) {
        const sm = softmaxRow(p, i);
        for (let j = 0; j < C; j++) g[i * C + j] = (sm[j] - (j === Number(t[i]) ? 1 : 0)) / N;
      }
      return g;
    },
  },
  {
    spec: { kind: 'mse' },
    target: (rnd) => Float32Array.from({ length: N * C }, () => rnd() * 4 - 2),
    loss: (p, t) => p.reduce((a, v, i) => a + (v - Number(t[i])) ** 2, 0) / (N * C),
    grad: (p, t) => Float64Array.from(p, (v, i) => (2 * (v - Number(t[i]))) / (N * C)),
  },
  {
    spec: { kind: 'l1' },
    target: (rnd) => Float32Array.from({ length: N * C }, () => rnd() * 4 - 2),
    loss: (p, t) => p.reduce((a, v, i) => a + Math.abs(v - Number(t[i])), 0) / (N * C),
    grad: (p, t) => Float64Array.from(p, (v, i) => Math.sign(v - Number(t[i])) / (N * C)),
  },
  {
    spec: { kind: 'bce-with-logits' },
    target: (rnd) => Float32Array.from({ length: N * C }, () => (rnd() < 0.5 ? 0 : rnd() < 0.5 ? 1 : rnd())),
    loss: (p, t) =>
      p.reduce((a, x, i) => {
        const y = Number(t[i]);
        const sig = 1 / (1 + Math.exp(-x));
        return a - (y * Math.log(sig) + (1 - y) * Math.log(1 - sig));
      }, 0) /
      (N * C),
    grad: (p, t) => Float64Array.from(p, (x, i) => (1 / (1 + Math.exp(-x)) - Number(t[i])) / (N * C)),
  },
  {
    spec: { kind: 'kl-div', temperature: T },
    target: (rnd) => Float32Array.from({ length: N * C }, () => rnd() * 8 - 4),
    loss: (p, t) => {
      let s = 0;
      for (let i = 0; i < N; i++) {
        const ps = softmaxRow(p, i, T);
        const pt = softmaxRow(t as Float32Array, i, T);
        for (let j = 0; j < C; j++) s += pt[j] * Math.log(pt[j] / ps[j]);
      }
      return (s / N) * T * T;
    },
    grad: (p, t) => {
      const g = new Float64Array(N * C);
      for (let i = 0; i < N; i++) {
        const ps = softmaxRow(p, i, T);
        const pt = softmaxRow(t as Float32Array, i, T);
        for (let j = 0; j < C; j++) g[i * C + j] = (T / N) * (ps[j] - pt[j]);
      }
      return g;
    },
  },
];

async function run(spec: LossSpec, pred: Float32Array, target: Float32Array | BigInt64Array) {
  const m = new Model();
  m.opsetImports = [{ domain: '', version: 18 }];
  const g = m.graph;
  const b = new GraphBuilder(g);
  const tt = lossTargetType(spec, [N, C]);
  g.inputs.push(valueInfo('pred', DataType.FLOAT, [N, C]), valueInfo('target', tt.dtype, tt.dims));
  const loss = addLoss(b, spec, 'pred', 'target', { opset: 18, predictionDims: [N, C] });
  assert.equal(loss, 'loss');
  const { gradients } = addGradients(m, { loss, wrt: ['pred'] });
  b.node('Identity', [gradients.get('pred')!], { outputs: ['dpred'] });
  g.outputs.push(valueInfo('loss', DataType.FLOAT, []), valueInfo('dpred', DataType.FLOAT, [N, C]));
  const s = await Session.create(m);
  try {
    const feeds: Record<string, HostTensor> = {
      pred: { dtype: DataType.FLOAT, dims: [N, C], data: pred },
      target: { dtype: tt.dtype, dims: tt.dims, data: target },
    };
    const out = await s.run(feeds, ['loss', 'dpred']);
    return { loss: Number(out.loss.data[0]), grad: out.dpred.data as Float32Array };
  } finally {
    await s.release();
  }
}

describe('losses', () => {
  for (const [k, c] of CASES.entries()) {
    test(`${c.spec.kind}: value and gradient match float64 hand computations`, async () => {
      const rnd = mulberry32(40 + k);
      const pred = Float32Array.from({ length: N * C }, () => rnd() * 6 - 3);
      const target = c.target(rnd, pred);
      const got = await run(c.spec, pred, target);
      const want = c.loss(pred, target);
      assert.ok(Math.abs(got.loss - want) <= 2e-6 * Math.abs(want), `loss ${got.loss} vs ${want}`);
      const ts = lossValue(c.spec, pred, target, [N, C]);
      assert.ok(Math.abs(ts - want) <= 1e-12 * Math.abs(want), `lossValue ${ts} vs ${want}`);
      const gw = c.grad(pred, target);
      const scale = Math.max(...Array.from(gw, Math.abs));
      for (let i = 0; i < gw.length; i++) {
        assert.ok(Math.abs(got.grad[i] - gw[i]) <= 1e-5 * scale, `d/dpred[${i}] ${got.grad[i]} vs ${gw[i]}`);
      }
    });
  }

  test('cross-entropy refuses logits that are not [batch, classes]', () => {
    assert.throws(() => lossTargetType({ kind: 'cross-entropy' }, [4, 3, 2]), /rank 2/);
  });
});
