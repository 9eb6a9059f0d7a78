/**
 * BatchNorm re-estimation (src/ptq/bn-reestimation.ts): statistics equal a TypeScript reference computed on the
 * same batches (a two-BN MatMul chain, with and without a QAT FakeQuant; the first BN of the Fashion-MNIST CNN,
 * rank 4, through a tap), corrupted statistics recover the float accuracy, a W4A8 QDQ model with unfolded BN
 * gets closer to the float model, and the options (batches, batchSize, nodes) do what they say.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { openDataSource, readNpy } from '../../src/data/index.js';
import { loadModel } from '../../src/io/model-file.js';
import { GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { reestimateBatchNorm } from '../../src/ptq/bn-reestimation.js';
import { quantizeModel } from '../../src/quant/quantize.js';
import { type Feeds, Session } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';
import { insertFakeQuant } from '../../src/train/fake-quant.js';
import { cloneModel } from '../../src/train/training-graph.js';
import { gaussian } from '../quant/synthetic.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const EX = path.join(ROOT, 'examples', 'fashion-mnist');
const FLOAT_ACC = 92.1;

function floats(dims: number[], data: Float32Array): HostTensor {
  return { dtype: DataType.FLOAT, dims, data };
}

/** x [N, 4] → MatMul W1 [4, 6] → BN1 → Relu → MatMul W2 [6, 3] → BN2 → y. */
function chainModel(opset: number): Model {
  const m = new Model();
  m.opsetImports = [{ domain: '', version: opset }];
  const g = m.graph;
  g.name = 'bn-chain';
  g.inputs.push(valueInfo('x', DataType.FLOAT, ['N', 4]));
  const b = new GraphBuilder(g);
  b.floats('W1', [4, 6], gaussian(24, 1));
  b.floats('W2', [6, 3], gaussian(18, 2));
  b.floats('g1', [6], [1, 0.5, 2, 1.5, 0.8, 1.2]);
  b.floats('b1', [6], [0.1, -0.2, 0.3, 0, 0.5, -0.4]);
  b.floats('m1', [6], [5, 5, 5, 5, 5, 5]);
  b.floats('v1', [6], [9, 9, 9, 9, 9, 9]);
  b.floats('g2', [3], [1, 2, 0.5]);
  b.floats('b2', [3], [0, 0.3, -0.3]);
  b.floats('m2', [3], [-1, -1, -1]);
  b.floats('v2', [3], [0.1, 0.1, 0.1]);
  b.node('MatMul', ['x', 'W1'], { outputs: ['h1'], name: 'mm1' });
  b.node('BatchNormalization', ['h1', 'g1', 'b1', 'm1', 'v1'], { outputs: ['n1'], name: 'bn1' });
  b.node('Relu', ['n1'], { outputs: ['r1'], name: 'relu1' });
  b.node('MatMul', ['r1', 'W2'], { outputs: ['h2'], name: 'mm2' });
  b.node('BatchNormalization', ['h2', 'g2', 'b2', 'm2', 'v2'], { outputs: ['y'], name: 'bn2' });
  g.outputs.push(valueInfo('y', DataType.FLOAT, ['N', 3]));
  return m;
}

function data(g: Model, name: string): Float32Array {
  return g.graph.initializer(name)!.data as Float32Array;
}

/** x [N, K] · W [K, C] in float64. */
function matmul(x: ArrayLike<number>, n: number, w: ArrayLike<number>, k: number, c: number): Float64Array {
  const out = new Float64Array(n * c);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < c; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += x[i * k + t] * w[t * c + j];
      out[i * c + j] = s;
    }
  return out;
}

/** Per-channel mean and biased variance of [N, C]. */
function stats(h: Float64Array, n: number, c: number): { mean: Float64Array; variance: Float64Array } {
  const mean = new Float64Array(c);
  const variance = new Float64Array(c);
  for (let j = 0; j < c; j++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += h[i * c + j];
    mean[j] = s / n;
    let v = 0;
    for (let i = 0; i < n; i++) v += (h[i * c + j] - mean[j]) ** 2;
    variance[j] = v / n;
  }
  return { mean, variance };
}

/** Training-mode BN forward (biased batch variance), in place. */
function normalize(
  h: Float64Array,
  n: number,
  c: number,
  gamma: Float32Array,
  beta: Float32Array,
  eps = 1e-5,
) {
  const { mean, variance } = stats(h, n, c);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < c; j++) {
      h[i * c + j] = ((h[i * c + j] - mean[j]) / Math.sqrt(variance[j] + eps)) * gamma[j] + beta[j];
    }
  return { mean, variance };
}

/** Reference running statistics of the chain over batches: mean of per-batch means and unbiased variances. */
function chainReference(m: Model, batches: Float32Array[], rows: number, w1: ArrayLike<number>) {
  const acc = {
    m1: new Float64Array(6),
    v1: new Float64Array(6),
    m2: new Float64Array(3),
    v2: new Float64Array(3),
  };
  for (const x of batches) {
    const h1 = matmul(x, rows, w1, 4, 6);
    const s1 = normalize(h1, rows, 6, data(m, 'g1'), data(m, 'b1'));
    for (let i = 0; i < h1.length; i++) h1[i] = Math.max(0, h1[i]);
    const h2 = matmul(h1, rows, data(m, 'W2'), 6, 3);
    const s2 = stats(h2, rows, 3);
    const unbias = rows / (rows - 1);
    for (let j = 0; j < 6; j++) {
      acc.m1[j] += s1.mean[j] / batches.length;
      acc.v1[j] += (s1.variance[j] * unbias) / batches.length;
    }
    for (let j = 0; j < 3; j++) {
      acc.m2[j] += s2.mean[j] / batches.length;
      acc.v2[j] += (s2.variance[j] * unbias) / batches.length;
    }
  }
  return acc;
}

function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  rel: number,
  what: string,
): void {
  assert.equal(actual.length, expected.length, what);
  for (let i = 0; i < actual.length; i++) {
    const tol = rel * Math.max(1, Math.abs(expected[i]));
    assert.ok(Math.abs(actual[i] - expected[i]) <= tol, `${what}[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

/** Rows of x [*, 4] shifted and scaled so that the stale statistics are far off. */
function chainSamples(count: number, seed: number): Feeds[] {
  const z = gaussian(count * 4, seed);
  const out: Feeds[] = [];
  for (let i = 0; i < count; i++) {
    const row = new Float32Array(4);
    for (let k = 0; k < 4; k++) row[k] = 2 + 3 * z[i * 4 + k];
    out.push({ x: floats([1, 4], row) });
  }
  return out;
}

function concatRows(samples: Feeds[], from: number, n: number): Float32Array {
  const x = new Float32Array(n * 4);
  for (let i = 0; i < n; i++)
    x.set((samples[from + i] as Record<string, HostTensor>).x.data as Float32Array, i * 4);
  return x;
}

describe('reestimateBatchNorm: statistics', () => {
  for (const opset of [13, 18]) {
    test(`two chained BNs equal the TypeScript reference (opset ${opset}, batches of 16)`, async () => {
      const m = chainModel(opset);
      const samples = chainSamples(16 * 7, 3);
      const before = data(m, 'g1').slice();
      const rec = await reestimateBatchNorm(m, samples, { batchSize: 16, batches: 5 });
      assert.equal(rec.pass, 'bn-reestimation');
      assert.equal(rec.changed, true);
      assert.equal(rec.details.batches, 5);
      assert.equal(rec.details.rows, 80);
      assert.equal(rec.details.variance, 'unbiased');
      assert.deepEqual(
        rec.details.nodes.map((n) => n.node),
        ['bn1', 'bn2'],
      );
      const batches = [0, 1, 2, 3, 4].map((i) => concatRows(samples, i * 16, 16));
      const ref = chainReference(chainModel(opset), batches, 16, data(chainModel(opset), 'W1'));
      assertClose(data(m, 'm1'), ref.m1, 1e-4, 'm1');
      assertClose(data(m, 'v1'), ref.v1, 1e-4, 'v1');
      assertClose(data(m, 'm2'), ref.m2, 1e-4, 'm2');
      assertClose(data(m, 'v2'), ref.v2, 1e-4, 'v2');
      // Nothing else changed.
      assert.deepEqual(data(m, 'g1'), before);
      assert.deepEqual(data(m, 'W1'), data(chainModel(opset), 'W1'));
    });
  }

  test('a QAT model: FakeQuant nodes stay in the forward (lowered), statistics match the reference', async () => {
    const m = chainModel(18);
    insertFakeQuant(m, 'W1', { scale: 0.25, qmin: -8, qmax: 7 });
    const samples = chainSamples(64, 5);
    const rec = await reestimateBatchNorm(m, samples, { batchSize: 32 });
    assert.equal(rec.details.batches, 2);
    assert.ok(
      m.graph.nodes.some((n) => n.opType === 'FakeQuant'),
      'the model itself keeps its FakeQuant',
    );
    const w1 = Float64Array.from(data(chainModel(18), 'W1'), (w) => {
      const q = Math.fround(w / 0.25);
      const r = Math.round(q);
      const even = Math.abs(q - Math.trunc(q)) === 0.5 ? 2 * Math.round(q / 2) : r;
      return Math.min(7, Math.max(-8, even)) * 0.25;
    });
    const batches = [0, 1].map((i) => concatRows(samples, i * 32, 32));
    const ref = chainReference(chainModel(18), batches, 32, w1);
    assertClose(data(m, 'm1'), ref.m1, 1e-4, 'm1');
    assertClose(data(m, 'v1'), ref.v1, 1e-4, 'v1');
    assertClose(data(m, 'v2'), ref.v2, 1e-4, 'v2');
  });

  test('Fashion-MNIST first BN (rank 4): equals the tapped Conv output statistics over the same batches', async () => {
    const model = loadModel(path.join(EX, 'model.onnx'));
    const calib = await openDataSource(path.join(EX, 'calib'), { inputName: 'input', limit: 96 });
    const conv = '/features/features.0/Conv_output_0';
    const tap = await Session.create(model, { taps: [conv] });
    const mean = new Float64Array(16);
    const variance = new Float64Array(16);
    for (let b = 0; b < 3; b++) {
      const x = new Float32Array(32 * 784);
      for (let i = 0; i < 32; i++)
        x.set((await calib.get(b * 32 + i)).get('input')!.data as Float32Array, i * 784);
      const h = (await tap.run({ input: floats([32, 1, 28, 28], x) }, [conv]))[conv].data as Float32Array;
      const hw = 28 * 28;
      const count = 32 * hw;
      for (let c = 0; c < 16; c++) {
        let s = 0;
        for (let n = 0; n < 32; n++) for (let p = 0; p < hw; p++) s += h[(n * 16 + c) * hw + p];
        const mu = s / count;
        let v = 0;
        for (let n = 0; n < 32; n++) for (let p = 0; p < hw; p++) v += (h[(n * 16 + c) * hw + p] - mu) ** 2;
        mean[c] += mu / 3;
        variance[c] += v / (count - 1) / 3;
      }
    }
    await tap.release();
    const rec = await reestimateBatchNorm(model, calib, { batchSize: 32 });
    assert.equal(rec.details.batches, 3);
    assertClose(data(model, 'features.1.running_mean'), mean, 1e-4, 'running_mean');
    assertClose(data(model, 'features.1.running_var'), variance, 1e-4, 'running_var');
  });
});

let testSet: Promise<{ x: HostTensor; y: BigInt64Array }> | undefined;
function testData() {
  testSet ??= (async () => ({
    x: await readNpy(path.join(EX, 'test-images.npy')),
    y: (await readNpy(path.join(EX, 'test-labels.npy'))).data as BigInt64Array,
  }))();
  return testSet;
}

/** Accuracy (percent) and logits of the 1000 bundled test images. */
async function evaluate(m: Model): Promise<{ acc: number; logits: Float32Array }> {
  const { x, y } = await testData();
  const s = await Session.create(m);
  const logits = (await s.run({ input: x })).logits.data as Float32Array;
  await s.release();
  let correct = 0;
  for (let i = 0; i < 1000; i++) {
    let best = 0;
    for (let k = 1; k < 10; k++) if (logits[i * 10 + k] > logits[i * 10 + best]) best = k;
    if (BigInt(best) === y[i]) correct++;
  }
  return { acc: correct / 10, logits };
}

function sqnr(ref: Float32Array, x: Float32Array): number {
  let s = 0;
  let e = 0;
  for (let i = 0; i < ref.length; i++) {
    s += ref[i] ** 2;
    e += (ref[i] - x[i]) ** 2;
  }
  return 10 * Math.log10(s / e);
}

describe('reestimateBatchNorm: Fashion-MNIST', () => {
  test('corrupted BN statistics recover the float accuracy', async () => {
    const m = loadModel(path.join(EX, 'model.onnx'));
    for (const n of ['features.1.running_mean', 'features.5.running_mean']) {
      m.graph.initializer(n)!.data = new Float32Array(m.graph.initializer(n)!.size);
    }
    for (const n of ['features.1.running_var', 'features.5.running_var']) {
      m.graph.initializer(n)!.data = new Float32Array(m.graph.initializer(n)!.size).fill(1);
    }
    const broken = await evaluate(m);
    assert.ok(broken.acc < 70, `corrupted accuracy ${broken.acc}`);
    const calib = await openDataSource(path.join(EX, 'calib'), { inputName: 'input' });
    const rec = await reestimateBatchNorm(m, calib, { batchSize: 32 });
    assert.equal(rec.details.batches, 8);
    assert.equal(rec.details.rows, 256);
    const fixed = await evaluate(m);
    console.log(`# corrupted BN stats ${broken.acc}% → re-estimated ${fixed.acc}% (float ${FLOAT_ACC}%)`);
    assert.ok(fixed.acc >= FLOAT_ACC - 1, `re-estimated accuracy ${fixed.acc}`);
  });

  test('W4A8 QDQ model with unfolded BN: re-estimation moves it closer to the float model', async () => {
    const float = loadModel(path.join(EX, 'model.onnx'));
    const ref = await evaluate(float);
    const calib = await openDataSource(path.join(EX, 'calib'), { inputName: 'input' });
    const { model: q } = await quantizeModel(cloneModel(float), calib, (m) => Session.create(m), {
      preset: 'w4a8',
      foldBatchNorm: false,
    });
    assert.equal(q.graph.nodes.filter((n) => n.opType === 'BatchNormalization').length, 2);
    const before = await evaluate(q);
    const rec = await reestimateBatchNorm(q, calib, { batchSize: 32 });
    assert.equal(rec.details.nodes.length, 2);
    const after = await evaluate(q);
    const s0 = sqnr(ref.logits, before.logits);
    const s1 = sqnr(ref.logits, after.logits);
    console.log(
      `# W4A8 QDQ, BN unfolded: ${before.acc}% / ${s0.toFixed(2)} dB → re-estimated ${after.acc}% / ${s1.toFixed(2)} dB`,
    );
    assert.ok(after.acc >= before.acc, `accuracy ${before.acc} → ${after.acc}`);
    assert.ok(s1 > s0, `logit SQNR ${s0} → ${s1}`);
  });
});

describe('reestimateBatchNorm: options', () => {
  test('nodes, partial last batch, no BN, bad options', async () => {
    const m = chainModel(13);
    const rec = await reestimateBatchNorm(m, chainSamples(40, 7), { batchSize: 16, nodes: ['bn2'] });
    assert.deepEqual(
      rec.details.nodes.map((n) => n.node),
      ['bn2'],
    );
    assert.equal(rec.details.batches, 3);
    assert.equal(rec.details.rows, 40);
    assert.deepEqual(data(m, 'm1'), Float32Array.of(5, 5, 5, 5, 5, 5));
    await assert.rejects(
      reestimateBatchNorm(chainModel(13), chainSamples(4, 1), { nodes: ['nope'] }),
      /nope/,
    );
    await assert.rejects(reestimateBatchNorm(chainModel(13), chainSamples(4, 1), { batches: 0 }), /batches/);
    await assert.rejects(
      reestimateBatchNorm(chainModel(13), chainSamples(1, 1), { batchSize: 1 }),
      /at least 2/,
    );
    await assert.rejects(reestimateBatchNorm(chainModel(13), [], {}), /no samples/);
    // A fixed batch dim sets the batch size.
    const fixed = chainModel(13);
    fixed.graph.inputs[0] = valueInfo('x', DataType.FLOAT, [4, 4]);
    const fr = await reestimateBatchNorm(fixed, chainSamples(12, 2));
    assert.equal(fr.details.batchSize, 4);
    assert.equal(fr.details.batches, 3);
    await assert.rejects(
      reestimateBatchNorm(fixed, chainSamples(12, 2), { batchSize: 8 }),
      /fixed batch dim of 4/,
    );
    const plain = new Model();
    plain.graph.inputs.push(valueInfo('x', DataType.FLOAT, [1]));
    new GraphBuilder(plain.graph).node('Relu', ['x'], { outputs: ['y'] });
    plain.graph.outputs.push(valueInfo('y', DataType.FLOAT, [1]));
    const none = await reestimateBatchNorm(plain, []);
    assert.equal(none.changed, false);
  });
});
