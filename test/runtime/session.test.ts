import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { saveModel } from '../../src/io/model-file.js';
import { Node } from '../../src/ir/graph.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType } from '../../src/onnx/dtype.js';
import type { OrtBackend, OrtSessionLike, OrtTensorLike } from '../../src/runtime/backend.js';
import { modelBytes, ortSessionOptions, Session } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';
import {
  assertClose,
  assertQnnxError,
  f32,
  identityModel,
  mlpByHand,
  mlpModel,
  model,
  plainOrt,
  randomF32,
  vi,
} from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'qnnx-runtime-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('Session: MLP y = Relu(x W + b)', () => {
  const { model: m, W, b } = mlpModel();
  const x = randomF32(5 * 4, 7);

  test('matches a float64 hand computation', async () => {
    const s = await Session.create(m);
    const out = await s.run({ x: f32([5, 4], x) });
    assert.deepEqual(Object.keys(out), ['y']);
    assert.equal(out.y.dtype, DataType.FLOAT);
    assert.deepEqual(out.y.dims, [5, 3]);
    // float32 dot products of 4 terms with |values| <= 1: error below 4 * 2^-24 * 4 < 1e-6; 1e-6 is safe.
    assertClose(out.y.data as Float32Array, mlpByHand(x, W, b).y, { abs: 1e-6 }, 'y');
    await s.release();
  });

  test('metadata: names, element types and symbolic dims', async () => {
    const s = await Session.create(m);
    assert.equal(s.name, "model 'test'");
    assert.deepEqual(s.inputs, [{ name: 'x', isTensor: true, dtype: DataType.FLOAT, shape: ['N', 4] }]);
    assert.deepEqual(s.outputs, [{ name: 'y', isTensor: true, dtype: DataType.FLOAT, shape: ['N', 3] }]);
    assert.deepEqual(s.inputNames, ['x']);
    assert.deepEqual(s.outputNames, ['y']);
    await s.release();
  });

  test('Model, bytes, file path and a Map of feeds give the same result', async () => {
    const file = join(dir, 'mlp.onnx');
    saveModel(m, file);
    const results: Float32Array[] = [];
    for (const source of [m, modelBytes(m), file]) {
      const s = await Session.create(source);
      const out = await s.run(new Map([['x', f32([5, 4], x)]]));
      results.push(out.y.data as Float32Array);
      await s.release();
    }
    assert.deepEqual(results[1], results[0]);
    assert.deepEqual(results[2], results[0]);
    const fromFile = await Session.create(file);
    assert.equal(fromFile.name, file);
    assert.deepEqual(fromFile.inputs[0].shape, ['N', 4]); // from ORT's metadata (no IR for a bare path)
    await fromFile.release();
  });

  test('results equal plain onnxruntime-node with the same options (bit for bit)', async () => {
    const { ort } = plainOrt();
    const plain = await ort.InferenceSession.create(modelBytes(m), {
      intraOpNumThreads: 1,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
    });
    const r = await plain.run({ x: new ort.Tensor('float32', x, [5, 4]) });
    const s = await Session.create(m);
    const out = await s.run({ x: f32([5, 4], x) });
    assert.deepEqual(out.y.data, r.y.data);
    await s.release();
    await plain.release();
  });

  test('release is idempotent and a released session refuses to run', async () => {
    const s = await Session.create(m);
    await s.release();
    await s.release();
    assert.equal(s.released, true);
    await assertQnnxError(() => s.run({ x: f32([1, 4], [1, 2, 3, 4]) }), 'E_RUNTIME', 'released');
  });
});

describe('Session: data types round-trip through Identity', () => {
  const cases: [string, HostTensor][] = [
    ['float32', { dtype: DataType.FLOAT, dims: [4], data: new Float32Array([1.5, -0, Infinity, -3e-38]) }],
    ['float64', { dtype: DataType.DOUBLE, dims: [3], data: new Float64Array([Math.PI, -1e300, 5e-324]) }],
    // float16 bit patterns: 1.0, -2.0, +inf, smallest subnormal, -0
    [
      'float16',
      { dtype: DataType.FLOAT16, dims: [5], data: new Uint16Array([0x3c00, 0xc000, 0x7c00, 0x0001, 0x8000]) },
    ],
    [
      'int64',
      {
        dtype: DataType.INT64,
        dims: [4],
        data: new BigInt64Array([2n ** 62n + 1n, -(2n ** 63n), 0n, 9007199254740993n]),
      },
    ],
    ['uint64', { dtype: DataType.UINT64, dims: [2], data: new BigUint64Array([2n ** 64n - 1n, 1n]) }],
    ['int32', { dtype: DataType.INT32, dims: [3], data: new Int32Array([-(2 ** 31), 2 ** 31 - 1, 0]) }],
    ['int8', { dtype: DataType.INT8, dims: [3], data: new Int8Array([-128, 127, 0]) }],
    ['uint8', { dtype: DataType.UINT8, dims: [2], data: new Uint8Array([0, 255]) }],
    ['int16', { dtype: DataType.INT16, dims: [2], data: new Int16Array([-32768, 32767]) }],
    ['uint16', { dtype: DataType.UINT16, dims: [2], data: new Uint16Array([0, 65535]) }],
    ['uint32', { dtype: DataType.UINT32, dims: [2], data: new Uint32Array([0, 2 ** 32 - 1]) }],
    ['bool', { dtype: DataType.BOOL, dims: [4], data: new Uint8Array([1, 0, 0, 1]) }],
    [
      'string',
      {
        dtype: DataType.STRING,
        dims: [3],
        data: ['héllo', '', '日本語 ✓'].map((s) => new TextEncoder().encode(s)),
      },
    ],
    ['empty float32', { dtype: DataType.FLOAT, dims: [0], data: new Float32Array(0) }],
  ];
  for (const [label, t] of cases) {
    test(label, async () => {
      const s = await Session.create(identityModel(t.dtype));
      const out = await s.run({ x: t });
      assert.equal(out.y.dtype, t.dtype);
      assert.deepEqual(out.y.dims, t.dims);
      assert.deepEqual(out.y.data, t.data);
      await s.release();
    });
  }
});

describe('Session: errors name the model and the input', () => {
  const { model: m } = mlpModel();

  test('unknown input name', async () => {
    const s = await Session.create(m);
    const e = await assertQnnxError(() => s.run({ z: f32([1, 4], [1, 2, 3, 4]) }), 'E_RUNTIME', "'z'", "'x'");
    assert.equal(e.context.tensor, 'z');
    await s.release();
  });

  test('missing input', async () => {
    const s = await Session.create(m);
    const e = await assertQnnxError(() => s.run({}), 'E_RUNTIME', "missing input 'x'", "model 'test'");
    assert.equal(e.context.tensor, 'x');
    await s.release();
  });

  test('wrong element type', async () => {
    const s = await Session.create(m);
    const feed = { dtype: DataType.DOUBLE, dims: [1, 4], data: new Float64Array(4) };
    const e = await assertQnnxError(() => s.run({ x: feed }), 'E_RUNTIME', "input 'x'", 'float64', 'float32');
    assert.equal(e.context.tensor, 'x');
    await s.release();
  });

  test('wrong rank and wrong fixed dim', async () => {
    const s = await Session.create(m);
    await assertQnnxError(
      () => s.run({ x: f32([4], [1, 2, 3, 4]) }),
      'E_RUNTIME',
      "input 'x'",
      'rank 1',
      'rank 2',
    );
    await assertQnnxError(
      () => s.run({ x: f32([1, 3], [1, 2, 3]) }),
      'E_RUNTIME',
      "input 'x'",
      'axis 1 must be 4',
    );
    await s.release();
  });

  test('ORT rank errors are also attributed when only ORT knows the shape (file path source)', async () => {
    const file = join(dir, 'mlp-rank.onnx');
    saveModel(m, file);
    const s = await Session.create(file);
    const e = await assertQnnxError(
      () => s.run({ x: f32([1, 1, 4], [1, 2, 3, 4]) }),
      'E_RUNTIME',
      "input 'x'",
    );
    assert.equal(e.context.file, file);
    await s.release();
  });

  test('data size not matching dims', async () => {
    const s = await Session.create(m);
    await assertQnnxError(() => s.run({ x: f32([2, 4], [1, 2, 3, 4]) }), 'E_TENSOR_SIZE', "input 'x'");
    await s.release();
  });

  test('unknown output name', async () => {
    const s = await Session.create(m);
    await assertQnnxError(() => s.run({ x: f32([1, 4], [1, 2, 3, 4]) }, ['nope']), 'E_RUNTIME', "'nope'");
    await s.release();
  });

  test('an ORT failure inside a node names the node', async () => {
    const g = model();
    g.graph.inputs = [vi('a', DataType.FLOAT, ['n']), vi('b', DataType.FLOAT, ['m'])];
    g.graph.outputs = [vi('y', DataType.FLOAT)];
    g.graph.nodes = [new Node('Add', ['a', 'b'], ['y'], [], 'my_add')];
    const s = await Session.create(g);
    const e = await assertQnnxError(
      () => s.run({ a: f32([3], [1, 2, 3]), b: f32([2], [1, 2]) }),
      'E_RUNTIME',
      'my_add',
      "model 'test'",
    );
    assert.equal(e.context.node, 'my_add');
    await s.release();
  });

  test('invalid model bytes', async () => {
    await assertQnnxError(
      () => Session.create(new Uint8Array([1, 2, 3])),
      'E_RUNTIME',
      'model (bytes)',
      'protobuf',
    );
  });

  test('a bfloat16 graph input is refused at creation with the reason', async () => {
    await assertQnnxError(() => Session.create(identityModel(DataType.BFLOAT16)), 'E_RUNTIME', 'bfloat16');
  });

  test('int4 outputs are never fetched (they crash onnxruntime-node 1.30)', async () => {
    const q = model(21);
    q.graph.inputs = [vi('x', DataType.FLOAT, [4])];
    q.graph.outputs = [vi('q', DataType.INT4, [4]), vi('y', DataType.FLOAT, [4])];
    q.graph.addInitializer(new Tensor('s', DataType.FLOAT, [], new Float32Array([0.5])));
    q.graph.addInitializer(new Tensor('z', DataType.INT4, [], new Uint8Array([0])));
    q.graph.nodes = [
      new Node('QuantizeLinear', ['x', 's', 'z'], ['q']),
      new Node('DequantizeLinear', ['q', 's', 'z'], ['y']),
    ];
    const s = await Session.create(q);
    assert.deepEqual(s.unfetchableOutputs, ['q']);
    assert.deepEqual(s.defaultOutputNames, ['y']);
    const x = f32([4], [1, -2, 3, 100]);
    const out = await s.run({ x });
    // int4 saturates at 7: 100 / 0.5 -> 7 -> 3.5; the others are exact multiples of 0.5
    assert.deepEqual(Array.from(out.y.data as Float32Array), [1, -2, 3, 3.5]);
    await assertQnnxError(() => s.run({ x }, ['q']), 'E_DTYPE', "output 'q'", 'int4');
    await s.release();
  });
});

describe('Session: options and backend', () => {
  test('defaults suit a shared CPU machine; extra entries merge over them', () => {
    const o = ortSessionOptions({ extra: { 'session.disable_quant_qdq': '1' } });
    assert.equal(o.intraOpNumThreads, 1);
    assert.equal(o.interOpNumThreads, 1);
    assert.equal(o.graphOptimizationLevel, 'all');
    assert.deepEqual(o.executionProviders, ['cpu']);
    assert.deepEqual(o.extra, {
      'session.intra_op.allow_spinning': '0',
      'session.inter_op.allow_spinning': '0',
      'session.disable_quant_qdq': '1',
    });
    assert.equal('enableCpuMemArena' in o, false);
    assert.equal(ortSessionOptions({ enableCpuMemArena: false }).enableCpuMemArena, false);
  });

  test('an injected backend receives the model bytes and options and does the runs', async () => {
    const { model: m } = mlpModel();
    let created: { source: unknown; options: unknown } | undefined;
    class FakeTensor implements OrtTensorLike {
      constructor(
        readonly type: string,
        readonly data: unknown,
        readonly dims: readonly number[] = [],
      ) {}
    }
    const fake: OrtSessionLike = {
      inputNames: ['x'],
      outputNames: ['y'],
      inputMetadata: [{ name: 'x', isTensor: true, type: 'float32', shape: ['N', 4] }],
      outputMetadata: [{ name: 'y', isTensor: true, type: 'float32', shape: ['N', 3] }],
      async run(feeds) {
        const x = feeds.x.data as Float32Array;
        return { y: new FakeTensor('float32', new Float32Array(3).fill(x[0]), [1, 3]) };
      },
      async release() {},
    };
    const backend: OrtBackend = {
      InferenceSession: {
        async create(source, options) {
          created = { source, options };
          return fake;
        },
      },
      Tensor: FakeTensor,
    };
    const s = await Session.create(m, { backend, intraOpNumThreads: 2 });
    assert.ok(created?.source instanceof Uint8Array);
    assert.equal((created?.options as { intraOpNumThreads?: number } | undefined)?.intraOpNumThreads, 2);
    const input = new Float32Array([7, 0, 0, 0]);
    const out = await s.run({ x: f32([1, 4], input) });
    assert.deepEqual(Array.from(out.y.data as Float32Array), [7, 7, 7]);
  });

  test('optimizedModelFilePath makes ORT write its optimized graph', async () => {
    const { model: m } = mlpModel();
    const file = join(dir, 'optimized.onnx');
    const s = await Session.create(m, { optimizedModelFilePath: file, graphOptimizationLevel: 'basic' });
    await s.release();
    const { loadModel } = await import('../../src/io/model-file.js');
    const ops = loadModel(file).graph.nodes.map((n) => n.opType);
    assert.ok(ops.includes('Relu'), ops.join(','));
  });
});
