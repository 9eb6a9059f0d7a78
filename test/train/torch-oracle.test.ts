/**
 * qnnx training against PyTorch 1.13: whole-network gradients, BatchNorm running statistics and two optimizer
 * steps (SGD with momentum and weight decay, Adam, AdamW) of the small CNN of tools/torch_train_oracle.py, from
 * the fixtures in test/fixtures/torch-grad (torch is not needed here).
 *
 * The network is built twice: from its builder spec (with torch's initial weights loaded by name) and from the
 * ONNX file torch.onnx.export wrote (opset 13, upgraded to 18 because training-mode BatchNormalization needs 14).
 *
 * How the gradients are read: the training graph exposes updated parameters, not gradients, so it is built with
 * plain SGD and fed the learning rate 1024 (a power of two, so lr·g is exact): p' = fl(p − 1024·g), and
 * g = (p − p')/1024 carries only the rounding of that one subtraction, a relative error of about 6e-8 of g.
 *
 * Tolerances. The torch references are float64 computations from the same float32 start, so they are the exact
 * answers and the difference is qnnx's float32 round-off: measured about 1e-7–1e-6 relative. Bounds:
 *   - gradients, loss, running statistics, SGD steps: max |qnnx − torch| / max |torch| ≤ 1e-5 per tensor;
 *   - Adam/AdamW: the update m/(√v + eps) is lr·sign(g) wherever |g| ≫ eps = 1e-8, and infinitely sensitive
 *     where |g| ≈ eps, so the parameters are compared as p − p0 (the update) with bound 1e-4 relative to
 *     max |update| (= lr); all gradients here are ≥ 1e-6 in size or exactly 0 on both sides, see the check.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { readNpy } from '../../src/data/index.js';
import { loadModel } from '../../src/io/model-file.js';
import type { Model } from '../../src/ir/model.js';
import { upgradeOpset } from '../../src/ir/passes/index.js';
import { DataType } from '../../src/onnx/dtype.js';
import { Session } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';
import { buildFromSpec, parseBuilderSpec } from '../../src/train/builder/index.js';
import type { OptimizerSpec } from '../../src/train/optimizers.js';
import { buildTrainingGraph } from '../../src/train/training-graph.js';

const DIR = 'test/fixtures/torch-grad';
const GRAD_TOL = 1e-5;
const ADAM_TOL = 1e-4;

interface Meta {
  spec: unknown;
  batch: number;
  parameters: string[];
  buffers: string[];
  optimizers: Record<
    string,
    {
      type: string;
      lr: number;
      momentum?: number;
      weightDecay: number;
      beta1?: number;
      beta2?: number;
      eps?: number;
    }
  >;
  initialLoss: number;
  lossesPerStep: Record<string, number[]>;
}

const meta = JSON.parse(readFileSync(join(DIR, 'model.json'), 'utf8')) as Meta;

async function npy(rel: string): Promise<Float64Array> {
  const t = await readNpy(join(DIR, rel));
  return Float64Array.from(t.data as Float32Array | Float64Array);
}

function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length);
  let m = 0;
  let d = 0;
  for (let i = 0; i < want.length; i++) {
    m = Math.max(m, Math.abs(want[i]));
    d = Math.max(d, Math.abs(got[i] - want[i]));
  }
  return m === 0 ? d : d / m;
}

/** The builder's model of the spec, with torch's initial weights. */
async function builtModel(): Promise<Model> {
  const built = buildFromSpec(parseBuilderSpec(meta.spec));
  for (const name of [...meta.parameters, ...meta.buffers]) {
    const t = built.model.graph.initializer(name);
    assert.ok(t, name);
    (t.data as Float32Array).set(await npy(`initial/${name}.npy`));
  }
  return built.model;
}

/** torch.onnx.export's model (opset 13 → 18). */
function exportedModel(): Model {
  const m = loadModel(join(DIR, 'model.onnx'));
  upgradeOpset(m, 18);
  return m;
}

function optimizerSpec(kind: string, lr?: number): OptimizerSpec {
  const o = meta.optimizers[kind];
  if (o.type === 'sgd')
    return { kind: 'sgd', lr: lr ?? o.lr, momentum: o.momentum, weightDecay: o.weightDecay };
  return {
    kind: o.type as 'adam' | 'adamw',
    lr: o.lr,
    betas: [o.beta1!, o.beta2!],
    eps: o.eps,
    weightDecay: o.weightDecay,
  };
}

interface Run {
  losses: number[];
  /** State after each step: parameter/buffer name → values. */
  after: Map<string, Float32Array>[];
}

/** Runs `steps` training steps on the fixture batch with the given optimizer; `lr` overrides the step's rate. */
async function train(model: Model, spec: OptimizerSpec, steps: number, lr = spec.lr): Promise<Run> {
  const tg = buildTrainingGraph(model, { optimizer: spec, batchShape: [meta.batch, 1, 10, 10] });
  assert.deepEqual([...tg.params].sort(), [...meta.parameters].sort(), 'trained parameters');
  assert.deepEqual([...tg.buffers].sort(), [...meta.buffers].sort(), 'running statistics');
  const x = (await readNpy(join(DIR, 'batch/x.npy'))) as HostTensor;
  const y = (await readNpy(join(DIR, 'batch/y.npy'))) as HostTensor;
  assert.equal(y.dtype, DataType.INT64);
  const session = await Session.create(tg.model, { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
  const state = tg.initialState();
  const run: Run = { losses: [], after: [] };
  try {
    for (let t = 1; t <= steps; t++) {
      const feeds: Record<string, HostTensor> = {
        [tg.input]: x,
        [tg.target]: y,
        ...tg.optimizer.stepScalars(t, lr),
      };
      for (const [k, v] of state) feeds[k] = v;
      const out = await session.run(feeds, tg.fetches);
      run.losses.push((out[tg.loss].data as Float32Array)[0]);
      const snapshot = new Map<string, Float32Array>();
      for (const f of tg.feedback) {
        state.set(f.input, out[f.output]);
        if (f.kind !== 'state') snapshot.set(f.input, out[f.output].data as Float32Array);
      }
      run.after.push(snapshot);
    }
  } finally {
    await session.release();
  }
  return run;
}

for (const [source, make] of [
  ['builder spec', builtModel],
  ['torch.onnx.export model', async () => exportedModel()],
] as const) {
  describe(`against PyTorch 1.13 (${source})`, () => {
    let model: Model;
    before(async () => {
      model = await make();
    });

    test('whole-network gradients, loss and BatchNorm running statistics after one forward pass', async () => {
      const lr = 1024;
      const r = await train(model, { kind: 'sgd', lr }, 1, lr);
      assert.ok(
        Math.abs(r.losses[0] - meta.initialLoss) / meta.initialLoss < GRAD_TOL,
        `loss ${r.losses[0]} vs torch ${meta.initialLoss}`,
      );
      const report: string[] = [];
      for (const name of meta.parameters) {
        const p0 = await npy(`initial/${name}.npy`);
        const p1 = r.after[0].get(name)!;
        const g = Float64Array.from(p0, (v, i) => (v - p1[i]) / lr);
        const want = await npy(`grad/${name}.npy`);
        const e = relErr(g, want);
        report.push(`${name} ${e.toExponential(1)}`);
        assert.ok(e <= GRAD_TOL, `gradient of ${name}: relative error ${e.toExponential(2)} > ${GRAD_TOL}`);
      }
      for (const name of meta.buffers) {
        const e = relErr(r.after[0].get(name)!, await npy(`sgd-1/${name}.npy`));
        report.push(`${name} ${e.toExponential(1)}`);
        assert.ok(e <= GRAD_TOL, `running statistic ${name}: relative error ${e.toExponential(2)}`);
      }
      console.log(`# gradient agreement with torch (${source}): ${report.join(', ')}`);
    });

    for (const kind of ['sgd', 'adam', 'adamw']) {
      test(`two ${kind} steps (${JSON.stringify(meta.optimizers[kind])})`, async () => {
        const r = await train(model, optimizerSpec(kind), 2);
        const tol = kind === 'sgd' ? GRAD_TOL : ADAM_TOL;
        const report: string[] = [];
        for (let step = 1; step <= 2; step++) {
          const wantLoss = meta.lossesPerStep[kind][step - 1];
          assert.ok(
            Math.abs(r.losses[step - 1] - wantLoss) / wantLoss < GRAD_TOL,
            `${kind} step ${step} loss`,
          );
          for (const name of [...meta.parameters, ...meta.buffers]) {
            const p0 = await npy(`initial/${name}.npy`);
            const got = r.after[step - 1].get(name)!;
            const want = await npy(`${kind}-${step}/${name}.npy`);
            // Compare the change from the start: the part the optimizer computed.
            const e = relErr(
              Float64Array.from(got, (v, i) => v - p0[i]),
              Float64Array.from(want, (v, i) => v - p0[i]),
            );
            if (step === 2) report.push(`${name} ${e.toExponential(1)}`);
            assert.ok(
              e <= tol,
              `${kind} step ${step}, ${name}: relative error of the update ${e.toExponential(2)} > ${tol}`,
            );
          }
        }
        console.log(`# ${kind}, 2 steps, update agreement with torch (${source}): ${report.join(', ')}`);
      });
    }
  });
}

test('the fixture gradients are far from Adam’s eps (so the Adam comparison is well conditioned)', async () => {
  for (const name of meta.parameters) {
    const g = await npy(`grad/${name}.npy`);
    for (const v of g)
      assert.ok(v === 0 || Math.abs(v) > 1e-6, `${name}: gradient ${v} is within 100·eps of 0`);
  }
});
