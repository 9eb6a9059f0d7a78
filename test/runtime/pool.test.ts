import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { describe, test } from 'node:test';
import { isQnnxError } from '../../src/errors.js';
import { Node } from '../../src/ir/graph.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType } from '../../src/onnx/dtype.js';
import { runBatched } from '../../src/runtime/batch.js';
import { WorkerPool } from '../../src/runtime/pool.js';
import { Session } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';
import { assertQnnxError, f32, mlpModel, model, PPOCR_CLS, randomF32, vi } from './helpers.js';

/** x [512, 512] through `k` MatMuls with the identity: y = x, at 0.27 GFLOP per MatMul. */
function matmulChain(k: number) {
  const n = 512;
  const m = model();
  const eye = new Float32Array(n * n);
  for (let i = 0; i < n; i++) eye[i * n + i] = 1;
  m.graph.addInitializer(new Tensor('I', DataType.FLOAT, [n, n], eye));
  m.graph.inputs = [vi('x', DataType.FLOAT, [n, n])];
  m.graph.outputs = [vi('y', DataType.FLOAT, [n, n])];
  for (let i = 0; i < k; i++) {
    m.graph.nodes.push(new Node('MatMul', [i === 0 ? 'x' : `h${i}`, 'I'], [i === k - 1 ? 'y' : `h${i + 1}`]));
  }
  return m;
}

async function ticksDuring(fn: () => Promise<unknown>): Promise<{ ticks: number; ms: number }> {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const t0 = performance.now();
  await fn();
  const ms = performance.now() - t0;
  clearInterval(timer);
  return { ticks, ms };
}

describe('WorkerPool', () => {
  const { model: mlp } = mlpModel();
  const x = randomF32(5 * 4, 3);

  test('results are identical to the in-process session', async () => {
    const s = await Session.create(mlp);
    const ref = await s.run({ x: f32([5, 4], x) });
    await s.release();
    const pool = await WorkerPool.create(mlp);
    assert.equal(pool.size, 1);
    assert.deepEqual(pool.inputs, s.inputs);
    assert.deepEqual(pool.outputs, s.outputs);
    const out = await pool.run({ x: f32([5, 4], x) });
    assert.deepEqual(out, ref);
    await pool.close();
  });

  test('PP-OCR cls through the pool equals the in-process session', {
    skip: !existsSync(PPOCR_CLS),
  }, async () => {
    const img = f32([1, 3, 48, 192], randomF32(3 * 48 * 192, 9));
    const s = await Session.create(PPOCR_CLS);
    const ref = await s.run({ x: img });
    await s.release();
    const pool = await WorkerPool.create(PPOCR_CLS);
    assert.deepEqual(await pool.run({ x: img }), ref);
    await pool.close();
  });

  test('the main event loop keeps ticking while the pool computes', async (t) => {
    // size the chain so that one run takes about 200 ms here
    let k = 10;
    const probe = await Session.create(matmulChain(k));
    const input = { x: f32([512, 512], randomF32(512 * 512, 4)) };
    await probe.run(input);
    const t0 = performance.now();
    await probe.run(input);
    const perMatMul = (performance.now() - t0) / k;
    await probe.release();
    k = Math.max(10, Math.min(400, Math.ceil(200 / perMatMul)));
    const heavy = matmulChain(k);

    const s = await Session.create(heavy);
    await s.run(input); // warm up
    const inProcess = await ticksDuring(() => s.run(input));
    await s.release();

    const pool = await WorkerPool.create(heavy);
    await pool.run(input); // warm up
    let out: Record<string, HostTensor> | undefined;
    const inPool = await ticksDuring(async () => {
      out = await pool.run(input);
    });
    await pool.close();
    t.diagnostic(
      `${k} MatMuls 512^3: in-process ${inProcess.ms.toFixed(0)} ms, ${inProcess.ticks} ticks of a 1 ms timer; ` +
        `pool ${inPool.ms.toFixed(0)} ms, ${inPool.ticks} ticks`,
    );
    assert.deepEqual(out?.y.data, input.x.data); // identity MatMuls: exact
    // a free event loop fires a 1 ms timer roughly once per ms; demand a tenth of that
    assert.ok(inPool.ticks >= Math.min(10, inPool.ms / 10), `only ${inPool.ticks} ticks in ${inPool.ms} ms`);
  });

  test('errors come back as QnnxError naming the input', async () => {
    const pool = await WorkerPool.create(mlp);
    const e = await assertQnnxError(() => pool.run({ z: f32([1, 4], [1, 2, 3, 4]) }), 'E_RUNTIME', "'z'");
    assert.equal(e.context.tensor, 'z');
    await assertQnnxError(
      () => pool.run({ x: { dtype: DataType.INT32, dims: [1, 4], data: new Int32Array(4) } }),
      'E_RUNTIME',
      "input 'x'",
      'int32',
    );
    assert.ok(e.stack?.includes('pool worker'));
    // the pool still works after errors
    const ok = await pool.run({ x: f32([1, 4], [1, 2, 3, 4]) });
    assert.deepEqual(ok.y.dims, [1, 3]);
    await pool.close();
  });

  test('a model ORT cannot load fails pool creation with E_RUNTIME', async () => {
    await assertQnnxError(() => WorkerPool.create(new Uint8Array([1, 2, 3])), 'E_RUNTIME', 'protobuf');
  });

  test('two workers, many queued runs: every result matches its own input', async () => {
    const pool = await WorkerPool.create(mlp, { size: 2 });
    const s = await Session.create(mlp);
    const inputs = Array.from({ length: 12 }, (_, i) => f32([2, 4], randomF32(8, 50 + i)));
    const outs = await Promise.all(inputs.map((xi) => pool.run({ x: xi })));
    for (let i = 0; i < inputs.length; i++) assert.deepEqual(outs[i], await s.run({ x: inputs[i] }));
    await s.release();
    await pool.close();
  });

  test('close() finishes queued runs, then refuses new ones', async () => {
    const pool = await WorkerPool.create(mlp);
    const runs = [1, 2, 3].map((i) => pool.run({ x: f32([1, 4], [i, i, i, i]) }));
    const closing = pool.close();
    const results = await Promise.all(runs);
    await closing;
    assert.equal(results.length, 3);
    await assertQnnxError(() => pool.run({ x: f32([1, 4], [1, 2, 3, 4]) }), 'E_RUNTIME', 'closed');
  });

  test('terminate() rejects runs in flight', async () => {
    const pool = await WorkerPool.create(matmulChain(20));
    const run = pool.run({ x: f32([512, 512], new Float32Array(512 * 512)) }).then(
      () => undefined,
      (e: unknown) => e,
    );
    await pool.terminate();
    const e = await run;
    assert.ok(isQnnxError(e) && e.code === 'E_RUNTIME' && e.message.includes('terminated'), String(e));
  });

  test('transferInputs moves the feed buffers instead of copying them', async () => {
    const pool = await WorkerPool.create(mlp, { transferInputs: true });
    const data = new Float32Array([1, 2, 3, 4]);
    const out = await pool.run({ x: f32([1, 4], data) });
    assert.equal(data.length, 0); // detached
    assert.deepEqual(out.y.dims, [1, 3]);
    await pool.close();
  });

  test('taps and runBatched work through the pool', async () => {
    const pool = await WorkerPool.create(mlp, { taps: ['pre'] });
    assert.deepEqual(
      pool.outputs.map((o) => o.name),
      ['y', 'pre'],
    );
    const s = await Session.create(mlp, { taps: ['pre'] });
    const samples = [0, 1, 2, 3, 4].map((i) => ({ x: f32([1, 4], randomF32(4, 70 + i)) }));
    const got: Record<string, HostTensor>[] = [];
    for await (const r of runBatched(pool, samples, { batchSize: 2 })) got.push(r);
    assert.equal(got.length, 5);
    for (let i = 0; i < 5; i++) {
      const ref = await s.run(samples[i]);
      for (const name of ['y', 'pre']) {
        const a = got[i][name].data as Float32Array;
        const b = ref[name].data as Float32Array;
        // batches of 2 vs 1 row may round differently inside the GEMM: 1e-6
        for (let j = 0; j < a.length; j++) assert.ok(Math.abs(a[j] - b[j]) <= 1e-6, `${name}[${i}][${j}]`);
      }
    }
    await s.release();
    await pool.close();
  });
});
