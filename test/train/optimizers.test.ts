/**
 * Optimizers in the training graph against a TypeScript transcription of PyTorch's torch.optim formulas (SGD with
 * momentum, dampening, Nesterov and weight decay; Adam with L2; AdamW with decoupled decay; bias correction), on
 * a quadratic loss L(w) = mean((x·w − t)²) over 8 steps, plus global-norm clipping and learning-rate schedules.
 *
 * Tolerance: the graph runs in float32 and the reference in float64; after 8 steps the parameters agree to
 * 2e-6 relative to their largest magnitude (float32 epsilon 6e-8 per operation, compounded over the steps),
 * and the optimizer state to 2e-5 relative (exp_avg_sq is a square of the gradients, so relative errors double).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { Session } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';
import type { OptimizerSpec } from '../../src/train/optimizers.js';
import {
  constantLr,
  cosineLr,
  type LrSchedule,
  linearWarmup,
  perEpochLr,
  scheduleFromSpec,
  sequentialLr,
  stepLr,
} from '../../src/train/schedules.js';
import { buildTrainingGraph } from '../../src/train/training-graph.js';
import { mulberry32 } from '../helpers/ort.js';

const NP = 12;
const STEPS = 8;

function quadraticModel(w0: Float32Array): Model {
  const m = new Model();
  m.opsetImports = [{ domain: '', version: 18 }];
  const g = m.graph;
  g.name = 'quadratic';
  const b = new GraphBuilder(g);
  g.inputs.push(valueInfo('x', DataType.FLOAT, ['N', NP]));
  b.initializer('w', DataType.FLOAT, [NP], w0);
  b.node('Mul', ['x', 'w'], { outputs: ['y'] });
  g.outputs.push(valueInfo('y', DataType.FLOAT, ['N', NP]));
  return m;
}

interface RefState {
  w: Float64Array;
  buf?: Float64Array;
  m?: Float64Array;
  v?: Float64Array;
}

/** torch.optim single-tensor step, in float64, with the gradient of mean((x·w − t)²). */
function referenceStep(
  spec: OptimizerSpec,
  s: RefState,
  x: Float32Array,
  t: Float32Array,
  step: number,
  lr: number,
  clip?: number,
): void {
  const n = s.w.length;
  let g: Float64Array = Float64Array.from(s.w, (w, i) => (2 * x[i] * (x[i] * w - t[i])) / n);
  if (clip !== undefined) {
    const norm = Math.sqrt(g.reduce((a, v) => a + v * v, 0));
    const coef = Math.min(1, clip / (norm + 1e-6));
    g = g.map((v) => v * coef);
  }
  if (spec.kind === 'sgd') {
    const mom = spec.momentum ?? 0;
    const damp = spec.dampening ?? 0;
    const wd = spec.weightDecay ?? 0;
    const d = g.map((v, i) => v + wd * s.w[i]);
    let dir: Float64Array = d;
    if (mom !== 0) {
      if (!s.buf) s.buf = Float64Array.from(d);
      else s.buf = s.buf.map((b, i) => mom * b + (1 - damp) * d[i]);
      dir = spec.nesterov ? d.map((v, i) => v + mom * s.buf![i]) : s.buf;
    }
    s.w = s.w.map((w, i) => w - lr * dir[i]);
    return;
  }
  const [b1, b2] = spec.betas ?? [0.9, 0.999];
  const eps = spec.eps ?? 1e-8;
  const wd = spec.weightDecay ?? (spec.kind === 'adamw' ? 0.01 : 0);
  s.m ??= new Float64Array(n);
  s.v ??= new Float64Array(n);
  if (spec.kind === 'adamw') s.w = s.w.map((w) => w * (1 - lr * wd));
  else g = g.map((v, i) => v + wd * s.w[i]);
  s.m = s.m.map((m, i) => m + (1 - b1) * (g[i] - m));
  s.v = s.v.map((v, i) => b2 * v + (1 - b2) * g[i] * g[i]);
  const bc1 = 1 - b1 ** step;
  const bc2 = 1 - b2 ** step;
  s.w = s.w.map((w, i) => w - (lr / bc1) * (s.m![i] / (Math.sqrt(s.v![i]) / Math.sqrt(bc2) + eps)));
}

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}

async function compare(spec: OptimizerSpec, schedule: LrSchedule, clip?: number): Promise<void> {
  const rnd = mulberry32(11);
  const w0 = Float32Array.from({ length: NP }, () => rnd() * 2 - 1);
  const x = Float32Array.from({ length: NP }, () => rnd() * 3 - 1.5);
  const t = Float32Array.from({ length: NP }, () => rnd() * 2 - 1);
  const tg = buildTrainingGraph(quadraticModel(w0), {
    optimizer: spec,
    loss: { kind: 'mse' },
    batchShape: [1, NP],
    clipGradNorm: clip,
  });
  assert.deepEqual(tg.params, ['w']);
  const session = await Session.create(tg.model);
  const state = tg.initialState();
  const ref: RefState = { w: Float64Array.from(w0) };
  try {
    for (let k = 0; k < STEPS; k++) {
      const lr = schedule(k);
      const feeds: Record<string, HostTensor> = {
        [tg.input]: { dtype: DataType.FLOAT, dims: [1, NP], data: x },
        [tg.target]: { dtype: DataType.FLOAT, dims: [1, NP], data: t },
        ...tg.optimizer.stepScalars(k + 1, lr),
      };
      for (const f of tg.feedback) feeds[f.input] = state.get(f.input)!;
      const out = await session.run(feeds, tg.fetches);
      for (const f of tg.feedback) state.set(f.input, out[f.output]);
      if (clip !== undefined) {
        const g = Float64Array.from(ref.w, (w, i) => (2 * x[i] * (x[i] * w - t[i])) / NP);
        const norm = Math.sqrt(g.reduce((a, v) => a + v * v, 0));
        const got = Number(out[tg.gradNorm!].data[0]);
        assert.ok(Math.abs(got - norm) <= 1e-5 * norm, `grad norm ${got} vs ${norm}`);
      }
      referenceStep(spec, ref, x, t, k + 1, lr, clip);
    }
  } finally {
    await session.release();
  }
  const w = state.get('w')!.data as Float32Array;
  assert.ok(maxRel(w, ref.w) <= 2e-6, `w: max rel err ${maxRel(w, ref.w)}`);
  // The parameters moved (the comparison is not vacuous).
  assert.ok(maxRel(w, w0) > 1e-3);
  const slot = (name: string) => state.get(`w.${name}`)?.data as Float32Array | undefined;
  if (ref.buf) assert.ok(maxRel(slot('momentum_buffer')!, ref.buf) <= 2e-5, 'momentum buffer');
  if (ref.m) assert.ok(maxRel(slot('exp_avg')!, ref.m) <= 2e-5, 'exp_avg');
  if (ref.v) assert.ok(maxRel(slot('exp_avg_sq')!, ref.v) <= 2e-5, 'exp_avg_sq');
}

describe('optimizers vs PyTorch formulas', () => {
  const lr = constantLr(0.1);
  test('SGD', () => compare({ kind: 'sgd', lr: 0.1 }, lr));
  test('SGD momentum 0.9, dampening 0.1, weight decay 0.01', () =>
    compare({ kind: 'sgd', lr: 0.1, momentum: 0.9, dampening: 0.1, weightDecay: 0.01 }, lr));
  test('SGD Nesterov momentum 0.9, weight decay 1e-3', () =>
    compare({ kind: 'sgd', lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 1e-3 }, lr));
  test('Adam with L2 weight decay 0.01', () =>
    compare({ kind: 'adam', lr: 0.05, weightDecay: 0.01 }, constantLr(0.05)));
  test('Adam betas (0.8, 0.99), eps 1e-6', () =>
    compare({ kind: 'adam', lr: 0.05, betas: [0.8, 0.99], eps: 1e-6 }, constantLr(0.05)));
  test('AdamW weight decay 0.1 with a cosine schedule', () =>
    compare({ kind: 'adamw', lr: 0.05, weightDecay: 0.1 }, cosineLr({ lr: 0.05, totalSteps: STEPS })));
  test('SGD momentum with global-norm clipping at 0.05', () =>
    compare({ kind: 'sgd', lr: 0.5, momentum: 0.9 }, constantLr(0.5), 0.05));
  test('Nesterov without momentum is refused', () => {
    assert.throws(
      () =>
        buildTrainingGraph(quadraticModel(new Float32Array(NP)), {
          optimizer: { kind: 'sgd', lr: 0.1, nesterov: true },
          loss: { kind: 'mse' },
          batchShape: [1, NP],
        }),
      /Nesterov/,
    );
  });
});

describe('learning-rate schedules vs formulas', () => {
  const close = (a: number, b: number) =>
    assert.ok(Math.abs(a - b) <= 1e-15 * Math.max(1, Math.abs(b)), `${a} vs ${b}`);
  test('stepLr: lr·gamma^floor(step/stepSize) (PyTorch StepLR)', () => {
    const s = stepLr({ lr: 0.1, stepSize: 3, gamma: 0.5 });
    const want = [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125];
    for (const [k, w] of want.entries()) close(s(k), w);
  });
  test('cosineLr: min + (lr − min)(1 + cos(π·t/T))/2, held at min after T', () => {
    const s = cosineLr({ lr: 0.1, totalSteps: 10, minLr: 0.001 });
    close(s(0), 0.1);
    close(s(5), (0.1 + 0.001) / 2);
    close(s(10), 0.001);
    close(s(15), 0.001);
    for (let k = 0; k <= 10; k++)
      close(s(k), 0.001 + ((0.1 - 0.001) * (1 + Math.cos((Math.PI * k) / 10))) / 2);
  });
  test('linearWarmup then cosine (SequentialLR([LinearLR, Cosine]))', () => {
    const s = linearWarmup(cosineLr({ lr: 0.2, totalSteps: 8 }), { steps: 4, startFactor: 0.25 });
    close(s(0), 0.2 * 0.25);
    close(s(2), 0.2 * (0.25 + 0.75 * 0.5));
    close(s(4), 0.2);
    close(s(8), 0.1);
    close(s(12), 0);
  });
  test('sequentialLr, perEpochLr and specs compose', () => {
    const s = sequentialLr([
      { schedule: constantLr(1), steps: 2 },
      { schedule: stepLr({ lr: 0.5, stepSize: 1, gamma: 0.1 }), steps: 3 },
      { schedule: constantLr(0.01), steps: 1 },
    ]);
    for (const [k, w] of [1, 1, 0.5, 0.05, 0.005, 0.01, 0.01].entries()) close(s(k), w);
    const e = perEpochLr(stepLr({ lr: 1, stepSize: 1, gamma: 0.5 }), 10);
    close(e(9), 1);
    close(e(10), 0.5);
    const fromSpec = scheduleFromSpec({
      kind: 'warmup',
      steps: 4,
      startFactor: 0.25,
      after: { kind: 'cosine', lr: 0.2, totalSteps: 8 },
    });
    for (let k = 0; k < 14; k++) {
      close(
        fromSpec(k),
        linearWarmup(cosineLr({ lr: 0.2, totalSteps: 8 }), { steps: 4, startFactor: 0.25 })(k),
      );
    }
  });
});
