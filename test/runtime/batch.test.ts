import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Node } from '../../src/ir/graph.js';
import { DataType } from '../../src/onnx/dtype.js';
import {
  type BatchProgress,
  concatAlongBatch,
  runBatched,
  splitAlongBatch,
} from '../../src/runtime/batch.js';
import { type Feeds, Session } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';
import { assertClose, f32, intAttr, intsAttr, mlpByHand, mlpModel, model, randomF32, vi } from './helpers.js';

async function collect(it: AsyncIterable<Record<string, HostTensor>>): Promise<Record<string, HostTensor>[]> {
  const out: Record<string, HostTensor>[] = [];
  for await (const r of it) out.push(r);
  return out;
}

describe('concatAlongBatch / splitAlongBatch', () => {
  test('round trip, strings included', () => {
    const a = f32([1, 2], [1, 2]);
    const b = f32([2, 2], [3, 4, 5, 6]);
    const c = concatAlongBatch([a, b]);
    assert.deepEqual(c.dims, [3, 2]);
    assert.deepEqual(Array.from(c.data as Float32Array), [1, 2, 3, 4, 5, 6]);
    const [a2, b2] = splitAlongBatch(c, [1, 2]);
    assert.deepEqual(a2, a);
    assert.deepEqual(b2, b);
    assert.equal((b2.data as Float32Array).buffer, (c.data as Float32Array).buffer); // a view
    const enc = (s: string) => new TextEncoder().encode(s);
    const s = concatAlongBatch([
      { dtype: DataType.STRING, dims: [1], data: [enc('a')] },
      { dtype: DataType.STRING, dims: [1], data: [enc('b')] },
    ]);
    assert.deepEqual(s.data, [enc('a'), enc('b')]);
  });

  test('mismatched trailing dims are E_SHAPE', () => {
    assert.throws(() => concatAlongBatch([f32([1, 2], [1, 2]), f32([1, 3], [1, 2, 3])]), { code: 'E_SHAPE' });
  });
});

describe('runBatched', () => {
  test('MLP with a dynamic batch: batched results equal one-by-one, in order', async () => {
    const { model: m, W, b } = mlpModel();
    const s = await Session.create(m);
    const rows = [1, 1, 1, 1, 1, 3, 1, 1, 1, 1];
    const samples: Feeds[] = rows.map((r, i) => ({ x: f32([r, 4], randomF32(r * 4, 100 + i)) }));
    const single: Record<string, HostTensor>[] = [];
    for (const f of samples) single.push(await s.run(f));
    const progress: BatchProgress[] = [];
    const batched = await collect(
      runBatched(s, samples, { batchSize: 4, onProgress: (p) => progress.push(p) }),
    );
    assert.equal(batched.length, samples.length);
    for (let i = 0; i < samples.length; i++) {
      assert.deepEqual(batched[i].y.dims, [rows[i], 3]);
      // a batch changes the GEMM's M, and with it possibly the kernel's summation order: 1e-6 absolute
      assertClose(
        batched[i].y.data as Float32Array,
        single[i].y.data as Float32Array,
        { abs: 1e-6 },
        `y[${i}]`,
      );
      const x = (samples[i] as Record<string, HostTensor>).x.data as Float32Array;
      assertClose(batched[i].y.data as Float32Array, mlpByHand(x, W, b).y, { abs: 1e-6 }, `hand[${i}]`);
    }
    // rows 1+1+1+1 | 1+3 | 1+1+1+1 (batchSize counts rows)
    assert.deepEqual(
      progress.map((p) => p.lastRunSamples),
      [4, 2, 4],
    );
    assert.equal(progress.at(-1)?.samples, 10);
    await s.release();
  });

  test('variable-width samples: equal widths are batched, different widths run apart (async source, Map feeds)', async () => {
    const g = model();
    g.graph.inputs = [vi('x', DataType.FLOAT, ['N', 'W'])];
    g.graph.outputs = [vi('y', DataType.FLOAT, ['N', 1])];
    g.graph.nodes = [new Node('ReduceMean', ['x'], ['y'], [intsAttr('axes', [1]), intAttr('keepdims', 1)])];
    const s = await Session.create(g);
    const widths = [5, 5, 7, 7, 7, 3, 5];
    async function* source() {
      for (let i = 0; i < widths.length; i++) {
        yield new Map([['x', f32([1, widths[i]], randomF32(widths[i], 200 + i))]]);
      }
    }
    const progress: number[] = [];
    const out = await collect(
      runBatched(s, source(), { batchSize: 8, onProgress: (p) => progress.push(p.lastRunSamples) }),
    );
    assert.deepEqual(progress, [2, 3, 1, 1]);
    for (let i = 0; i < widths.length; i++) {
      const x = randomF32(widths[i], 200 + i);
      const mean = x.reduce((a, v) => a + v, 0) / widths[i];
      // float32 mean of at most 7 values in [-1, 1]: within 1e-6
      assertClose(out[i].y.data as Float32Array, [mean], { abs: 1e-6 }, `mean[${i}]`);
    }
    await s.release();
  });

  test('a model with a fixed batch of 1 runs every sample alone', async () => {
    const g = model();
    g.graph.inputs = [vi('x', DataType.FLOAT, [1, 2])];
    g.graph.outputs = [vi('y', DataType.FLOAT, [1, 2])];
    g.graph.nodes = [new Node('Neg', ['x'], ['y'])];
    const s = await Session.create(g);
    const progress: number[] = [];
    const samples = [0, 1, 2].map((i) => ({ x: f32([1, 2], [i, -i]) }));
    const out = await collect(
      runBatched(s, samples, { batchSize: 4, onProgress: (p) => progress.push(p.runs) }),
    );
    assert.deepEqual(progress, [1, 2, 3]);
    assert.deepEqual(
      out.map((o) => Array.from(o.y.data as Float32Array)),
      [
        [-0, 0],
        [-1, 1],
        [-2, 2],
      ],
    );
    await s.release();
  });

  test('an output without a batch axis turns batching off and the results stay per sample', async () => {
    const g = model();
    g.graph.inputs = [vi('x', DataType.FLOAT, ['N', 2])];
    g.graph.outputs = [vi('total', DataType.FLOAT)]; // shape not declared: only the run reveals it is a scalar
    g.graph.nodes = [new Node('ReduceSum', ['x'], ['total'], [intAttr('keepdims', 0)])];
    const s = await Session.create(g);
    const samples = [1, 2, 3, 4, 5].map((i) => ({ x: f32([1, 2], [i, 10 * i]) }));
    const progress: number[] = [];
    const out = await collect(
      runBatched(s, samples, { batchSize: 2, onProgress: (p) => progress.push(p.runs) }),
    );
    assert.deepEqual(
      out.map((o) => (o.total.data as Float32Array)[0]),
      [11, 22, 33, 44, 55],
    );
    // one wasted batched run (not reported), then every sample alone
    assert.deepEqual(progress, [1, 2, 3, 4, 5]);
    await s.release();
  });
});
