/**
 * Shape inference checked against ONNX Runtime: every intermediate value is made a graph output (with the
 * inferred element type, which ORT rejects if wrong), the model runs, and each observed shape is compared with
 * the inferred one. Every dim inferred as a number must equal the observed dim (100%, no tolerance: shapes are
 * exact); every dim inferred as the same symbol must have the same observed size throughout the model.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { loadModel, modelToBytes } from '../../../src/io/model-file.js';
import { floatAttr, GraphBuilder, valueInfo } from '../../../src/ir/builder.js';
import type { Model } from '../../../src/ir/model.js';
import {
  dimsOfType,
  inferShapes,
  inferTypes,
  recordShapesByRunning,
} from '../../../src/ir/passes/shape-inference.js';
import { Tensor } from '../../../src/ir/tensor.js';
import { DataType } from '../../../src/onnx/dtype.js';
import {
  addInput,
  bitDiff,
  FASHION_MNIST,
  f32,
  feedsFor,
  newModel,
  ort,
  present,
  REAL_MODELS,
  randomFloats,
  realFeeds,
  runOrt,
} from './helpers.js';

interface Agreement {
  values: number;
  ranked: number;
  numericDims: number;
  agree: number;
  symbolicDims: number;
  unknownDims: number;
  symbolClashes: number;
  bad: string[];
}

/** Runs the model with every intermediate tapped and compares the observed shapes with inference. */
async function agreement(
  model: Model,
  feeds: Record<string, ort.Tensor>,
  inputShapes?: Record<string, number[]>,
): Promise<Agreement> {
  const table = inferTypes(model, { inputShapes });
  let observed: Record<string, ort.Tensor> = {};
  const record = await recordShapesByRunning(
    model,
    [feeds],
    async (bytes, f) => {
      observed = await runOrt(bytes, f);
      return observed;
    },
    { inputShapes },
  );
  assert.equal(record.details.untyped, 0, 'every value has an inferred element type');
  const a: Agreement = {
    values: 0,
    ranked: 0,
    numericDims: 0,
    agree: 0,
    symbolicDims: 0,
    unknownDims: 0,
    symbolClashes: 0,
    bad: [],
  };
  const symbols = new Map<string, number>();
  for (const [name, t] of Object.entries(observed)) {
    a.values++;
    const inferred = table.get(name);
    const et = (
      { float32: 1, int64: 7, bool: 9, int32: 6, uint8: 2, int8: 3, float64: 11 } as Record<string, number>
    )[t.type];
    if (inferred?.elemType !== et) a.bad.push(`${name}: type ${inferred?.elemType} vs ${t.type}`);
    if (!inferred?.shape) continue;
    a.ranked++;
    if (inferred.shape.length !== t.dims.length) {
      a.bad.push(`${name}: rank [${inferred.shape}] vs [${t.dims}]`);
      continue;
    }
    inferred.shape.forEach((d, i) => {
      if (typeof d === 'number') {
        a.numericDims++;
        if (d === t.dims[i]) a.agree++;
        else a.bad.push(`${name}: [${inferred.shape}] vs [${t.dims}]`);
      } else if (typeof d === 'string') {
        a.symbolicDims++;
        const prev = symbols.get(d);
        if (prev !== undefined && prev !== t.dims[i]) a.symbolClashes++;
        symbols.set(d, t.dims[i]);
      } else a.unknownDims++;
    });
  }
  return a;
}

function summary(a: Agreement): string {
  return (
    `${a.values} values, ${a.ranked} ranked, numeric dims ${a.agree}/${a.numericDims} agree, ` +
    `${a.symbolicDims} symbolic, ${a.unknownDims} unknown`
  );
}

describe('inferTypes agrees with ONNX Runtime on real models', () => {
  const models = [
    ...REAL_MODELS,
    { name: 'Fashion-MNIST CNN', file: FASHION_MNIST, shapes: { input: [4, 1, 28, 28] } },
  ];
  for (const m of models) {
    test(m.name, { skip: !present(m.file) && `${m.file} is not present` }, async () => {
      const model = loadModel(m.file);
      const feeds = realFeeds(model, m, 5);
      const sym = await agreement(model, feeds);
      const fixed = await agreement(model, feeds, m.shapes);
      console.log(`${m.name}: declared input shapes: ${summary(sym)}; fixed input shapes: ${summary(fixed)}`);
      for (const a of [sym, fixed]) {
        assert.deepEqual(a.bad, []);
        assert.equal(a.agree, a.numericDims);
        assert.equal(a.symbolClashes, 0);
        assert.equal(a.ranked, a.values, 'every tapped value has a known rank');
      }
      assert.ok(fixed.numericDims >= sym.numericDims);
      if (m.name.startsWith('PP-OCR'))
        assert.equal(fixed.unknownDims, 0, 'fully static with fixed input shapes');
    });
  }
});

describe('inferShapes writes value_info that ONNX Runtime accepts', () => {
  for (const m of REAL_MODELS) {
    test(m.name, { skip: !present(m.file) && `${m.file} is not present` }, async () => {
      const model = loadModel(m.file);
      const feeds = realFeeds(model, m, 9);
      // ORT's optimizer may use the recorded shapes for more fusions (PP-OCRv4 rec then differs by 6e-12), so the
      // outputs are compared with optimizations disabled.
      const before = await runOrt(model, feeds, { optimization: 'disabled' });
      const viBefore = [...model.graph.allGraphs()].reduce((s, g) => s + g.valueInfo.length, 0);
      const record = inferShapes(model);
      const viAfter = [...model.graph.allGraphs()].reduce((s, g) => s + g.valueInfo.length, 0);
      assert.ok(viAfter > viBefore);
      assert.equal(
        record.details.typed,
        record.details.values,
        `every value typed: ${JSON.stringify(record.details)}`,
      );
      // ORT checks the written types against its own inference (a wrong element type fails to load).
      assert.equal(bitDiff(before, await runOrt(model, feeds, { optimization: 'disabled' })), undefined);
      await runOrt(model, feeds);
      // Idempotent: a second run changes nothing.
      assert.equal(inferShapes(model).changed, false);
    });
  }

  test('declared information is kept; unknown dims are filled', () => {
    const m = newModel(17);
    addInput(m, 'x', ['N', 3, 8, 8]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('W', [4, 3, 3, 3], 1));
    b.node('Conv', ['x', 'W'], { outputs: ['c'], attrs: { pads: [1, 1, 1, 1] } });
    b.node('Relu', ['c'], { outputs: ['y'] });
    m.graph.valueInfo.push(valueInfo('c', DataType.FLOAT, ['batch', null, null, 'w']));
    m.graph.outputs.push({ name: 'y' });
    const r = inferShapes(m);
    assert.deepEqual(dimsOfType(m.graph.valueInfo.find((v) => v.name === 'c')!.type), ['batch', 4, 8, 'w']);
    assert.deepEqual(dimsOfType(m.graph.outputs[0].type), ['N', 4, 8, 8]);
    assert.equal(r.details.valueInfoUpdated, 2);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Generated op zoo
// ---------------------------------------------------------------------------------------------------------------

function zoo(opset: number): Model {
  const m = newModel(opset);
  addInput(m, 'x', [2, 3, 17, 19]);
  addInput(m, 'v', ['n', 6]);
  const b = new GraphBuilder(m.graph);
  const g = m.graph;
  const i64 = (name: string, vals: number[], scalar = false) =>
    b.initializer(name, DataType.INT64, scalar ? [] : [vals.length], BigInt64Array.from(vals, BigInt));
  const f = (name: string, dims: number[], seed: number) => {
    g.addInitializer(f32(name, dims, seed));
    return name;
  };
  const W = f('W', [4, 3, 3, 3], 1);
  // Convolutions and pools
  b.op('Conv', ['x', W], { strides: [2, 2], pads: [1, 0, 2, 1] });
  b.op('Conv', ['x', W], { strides: [2, 3], auto_pad: 'SAME_UPPER' });
  b.op('Conv', ['x', f('W5', [4, 3, 4, 5], 2)], { strides: [3, 2], auto_pad: 'SAME_LOWER' });
  b.op('Conv', ['x', W], { auto_pad: 'VALID', dilations: [2, 3] });
  b.op('Conv', ['x', f('Wg', [6, 1, 3, 3], 3)], { group: 3 });
  b.op('ConvTranspose', ['x', f('Wt', [3, 2, 3, 3], 4)], {
    group: 3,
    strides: [2, 3],
    pads: [1, 0, 1, 2],
    output_padding: [1, 2],
  });
  b.op('ConvTranspose', ['x', f('Wt2', [3, 2, 2, 3], 5)], { strides: [2, 2], auto_pad: 'SAME_UPPER' });
  b.op('ConvTranspose', ['x', f('Wt3', [3, 2, 3, 3], 6)], { strides: [2, 2], output_shape: [35, 40] });
  b.node('MaxPool', ['x'], {
    outputs: 2,
    attrs: { kernel_shape: [3, 3], strides: [2, 2], pads: [1, 1, 1, 1], ceil_mode: 1 },
  });
  b.op('MaxPool', ['x'], { kernel_shape: [2, 3], strides: [2, 2], auto_pad: 'SAME_UPPER' });
  b.op('MaxPool', ['x'], { kernel_shape: [3, 3], strides: [3, 3], dilations: [2, 1] });
  b.op('AveragePool', ['x'], { kernel_shape: [2, 3], strides: [2, 2], ceil_mode: 1 });
  b.op('AveragePool', ['x'], { kernel_shape: [4, 4], strides: [3, 3], pads: [2, 2, 2, 2], ceil_mode: 1 });
  b.op('LpPool', ['x'], { kernel_shape: [3, 2], strides: [2, 2] });
  b.op('GlobalAveragePool', ['x']);
  b.op('GlobalMaxPool', ['x']);
  // Normalization, activations, element-wise
  b.op('BatchNormalization', [
    'x',
    f('s', [3], 7),
    f('bb', [3], 8),
    f('mu', [3], 9),
    b.floats('var', [3], [1, 2, 3]),
  ]);
  b.op('InstanceNormalization', ['x', 's', 'bb']);
  b.node('LayerNormalization', ['x', f('ls', [19], 10), f('lb', [19], 11)], {
    outputs: 3,
    attrs: { axis: -1 },
  });
  for (const op of [
    'Relu',
    'Sigmoid',
    'Tanh',
    'Softmax',
    'LogSoftmax',
    'HardSigmoid',
    'HardSwish',
    'Erf',
    'Abs',
    'Neg',
  ]) {
    b.op(op, ['x']);
  }
  b.op('Clip', ['x', b.floats('lo', [], [-0.5]), b.floats('hi', [], [0.5])]);
  b.op('Add', ['x', f('row', [19], 12)]);
  b.op('Mul', ['x', f('col', [3, 1, 1], 13)]);
  b.op('Where', [b.op('Greater', ['x', 'col']), 'x', f('w1', [1, 17, 1], 14)]);
  b.op('Pow', ['x', b.floats('two', [], [2])]);
  b.op('Max', ['x', 'row', 'col']);
  b.op('Equal', [b.op('Cast', ['x'], { to: DataType.INT32 }), b.op('Cast', ['row'], { to: DataType.INT32 })]);
  b.op('Not', [b.op('Less', ['x', 'row'])]);
  b.node('Dropout', ['x'], { outputs: 2 });
  // Shape manipulation
  b.op('Reshape', ['x', i64('rs1', [0, -1])]);
  b.op('Reshape', ['x', i64('rs2', [0, 0, -1, 1])]);
  b.op('Flatten', ['x'], { axis: 2 });
  b.op('Transpose', ['x'], { perm: [0, 2, 3, 1] });
  b.op('Transpose', ['x']);
  b.op('Concat', ['x', 'x', b.op('Relu', ['x'])], { axis: 1 });
  b.node('Split', ['x'], { outputs: 4, attrs: { axis: 3, num_outputs: 4 } });
  b.node('Split', ['x', i64('sp', [5, 12])], { outputs: 2, attrs: { axis: 2 } });
  b.op('Slice', ['x', i64('st', [1, -2]), i64('en', [1000, -20]), i64('ax', [1, 3]), i64('stp', [1, -2])]);
  b.op('Slice', ['x', i64('st2', [-5]), i64('en2', [-1]), i64('ax2', [2])]);
  b.op('Gather', ['x', i64('gi', [2, 0, -1, 1, 1, 2])], { axis: 1 });
  b.op('Gather', ['x', b.initializer('gi2', DataType.INT64, [2, 2], BigInt64Array.of(0n, 3n, 5n, -1n))], {
    axis: 3,
  });
  b.op('Gather', ['x', i64('gs', [1], true)], { axis: 2 });
  b.op('GatherElements', ['x', b.initializer('ge', DataType.INT64, [2, 3, 4, 5], new BigInt64Array(120))], {
    axis: 2,
  });
  b.op('Squeeze', [b.op('Unsqueeze', ['x', i64('ua', [0, -1])]), i64('sa', [0])]);
  b.op('Expand', ['col', i64('es', [2, 1, 17, 19])]);
  b.op('Tile', ['x', i64('tr', [1, 2, 1, 3])]);
  b.op('Pad', ['x', i64('pads', [0, 0, 1, 2, 0, 0, 3, 4])]);
  b.op('Pad', ['x', i64('pads2', [1, 2]), b.floats('pv', [], [0]), i64('pax', [-1])]);
  b.op('DepthToSpace', [b.op('Concat', ['x', 'x', 'x', 'x'], { axis: 1 })], { blocksize: 2 });
  b.op('SpaceToDepth', [b.op('Slice', ['x', i64('s0', [0, 0]), i64('s1', [16, 18]), i64('s2', [2, 3])])], {
    blocksize: 2,
  });
  // Reductions and friends
  b.op('ReduceMean', ['x', i64('rm', [1, 3])], { keepdims: 0 });
  b.op('ReduceSum', ['x', i64('rsa', [-1])]);
  b.op('ReduceMax', ['x']);
  b.op('ReduceL2', ['x', i64('rl', [2])], { keepdims: 0 });
  b.op('ArgMax', ['x'], { axis: 2, keepdims: 0 });
  b.op('ArgMin', ['x'], { axis: -1 });
  b.node('TopK', ['x', i64('k', [4])], { outputs: 2, attrs: { axis: 2 } });
  b.op('CumSum', ['x', i64('ca', [2], true)]);
  // Matrix products
  b.op('MatMul', ['x', f('mm', [19, 7], 15)]);
  b.op('MatMul', [f('mv', [17], 16), 'x']);
  b.op('Gemm', ['v', f('gb', [5, 6], 17), f('gc', [5], 18)], { transB: 1 });
  b.op('Gemm', [f('ga', [6, 4], 19), f('gb2', [6, 3], 20)], { transA: 1, alpha: floatAttr('alpha', 2) });
  b.op('Einsum', ['x', 'mm'], { equation: 'bchw,wk->bkh' });
  // Shapes as data
  const sh = b.op('Shape', ['x']);
  b.op('Shape', ['x'], { start: 1, end: -1 });
  b.op('Size', ['x']);
  const hw = b.op('Slice', [sh, i64('h0', [2]), i64('h1', [4])]);
  const n = b.op('Gather', [b.op('Shape', ['v']), i64('zero', [0], true)]);
  b.op('Reshape', [
    'v',
    b.op('Concat', [b.op('Unsqueeze', [n, i64('u0', [0])]), i64('m1', [-1]), i64('three', [3])], { axis: 0 }),
  ]);
  b.op('ConstantOfShape', [hw], { value: new Tensor('', DataType.INT32, [1], Int32Array.of(7)) });
  b.op('Range', [b.floats('r0', [], [1]), b.floats('r1', [], [10]), b.floats('r2', [], [1.5])]);
  b.op('Range', [i64('ri0', [10], true), i64('ri1', [-3], true), i64('ri2', [-4], true)]);
  b.op('Expand', ['row', b.op('Concat', [i64('e0', [4]), hw], { axis: 0 })]);
  b.op('Resize', ['x', '', b.floats('sc', [4], [1, 1, 1.5, 0.7])], { mode: 'linear' });
  b.op('Resize', ['x', '', '', i64('sz', [2, 3, 9, 31])], { mode: 'nearest' });
  b.op('Resize', ['x', '', '', i64('sz2', [10, 10])], {
    axes: [2, 3],
    keep_aspect_ratio_policy: 'not_larger',
  });
  b.op('NonZero', [b.op('Greater', ['x', b.floats('half', [], [0.5])])]);
  b.op('OneHot', [i64('oh', [1, 4, 2]), i64('depth', [5], true), b.floats('ohv', [2], [0, 1])], { axis: 0 });
  // Quantization
  const q = b.op('QuantizeLinear', [
    'x',
    b.floats('qs', [], [0.02]),
    b.initializer('qz', DataType.INT8, [], Int8Array.of(3)),
  ]);
  b.op('DequantizeLinear', [q, 'qs', 'qz']);
  b.op('DequantizeLinear', [b.op('QuantizeLinear', ['x', 'qs']), 'qs']);
  // Recurrent
  const seq = b.op('Reshape', ['x', i64('sq', [17, 6, 19])]);
  b.node('LSTM', [seq, f('lw', [2, 20, 19], 21), f('lr', [2, 20, 5], 22)], {
    outputs: 3,
    attrs: { hidden_size: 5, direction: 'bidirectional' },
  });
  b.node('GRU', [seq, f('gw', [1, 12, 19], 23), f('gr', [1, 12, 4], 24)], {
    outputs: 2,
    attrs: { hidden_size: 4 },
  });
  b.node('RNN', [seq, f('nw', [1, 3, 19], 25), f('nr', [1, 3, 3], 26)], {
    outputs: 2,
    attrs: { hidden_size: 3 },
  });
  b.op('Identity', ['x']);
  return m;
}

function zooOld(): Model {
  // Attribute forms of opset 11/12: Squeeze/Unsqueeze/Split/Reduce axes attributes, Pad pads input, Upsample-free.
  const m = newModel(11);
  addInput(m, 'x', [2, 3, 17, 19]);
  const b = new GraphBuilder(m.graph);
  b.op('Squeeze', [b.op('Unsqueeze', ['x'], { axes: [0, 5] })], { axes: [0] });
  b.node('Split', ['x'], { outputs: 3, attrs: { axis: 1 } });
  b.node('Split', ['x'], { outputs: 2, attrs: { axis: 3, split: [4, 15] } });
  b.op('ReduceSum', ['x'], { axes: [1], keepdims: 0 });
  b.op('ReduceMean', ['x'], { axes: [-1, 2] });
  b.op('Softmax', ['x'], { axis: 2 });
  b.node('TopK', ['x', b.initializer('k', DataType.INT64, [1], BigInt64Array.of(3n))], { outputs: 2 });
  b.op('Resize', ['x', b.floats('roi', [0], []), b.floats('sc', [4], [1, 1, 2, 0.5])]);
  b.op('Clip', ['x']);
  return m;
}

describe('inferTypes on a generated op zoo agrees with ONNX Runtime', () => {
  for (const [name, build, feeds] of [
    [
      'opset 18',
      () => zoo(18),
      {
        x: new ort.Tensor('float32', randomFloats(2 * 3 * 17 * 19, 1), [2, 3, 17, 19]),
        v: new ort.Tensor('float32', randomFloats(24, 2), [4, 6]),
      },
    ],
    [
      'opset 11 attribute forms',
      zooOld,
      { x: new ort.Tensor('float32', randomFloats(2 * 3 * 17 * 19, 3), [2, 3, 17, 19]) },
    ],
  ] as [string, () => Model, Record<string, ort.Tensor>][]) {
    test(name, async () => {
      const m = build();
      const a = await agreement(m, feeds);
      const t = inferTypes(m);
      console.log(`op zoo ${name}: ${summary(a)}; no rule for: ${JSON.stringify(t.unsupported)}`);
      assert.deepEqual(a.bad, []);
      assert.equal(a.symbolClashes, 0);
      assert.deepEqual(t.unsupported, {});
      // Everything but data-dependent outputs (NonZero's count) is static here, except values computed from the
      // symbolic dim of `v`.
      assert.ok(a.numericDims > 0.9 * (a.numericDims + a.unknownDims + a.symbolicDims));
    });
  }

  test('symbolic dims flow through shape computations (Shape → Gather → Concat → Reshape)', () => {
    const m = zoo(18);
    const t = inferTypes(m);
    const reshapeOut = m.graph.nodes.filter((n) => n.opType === 'Reshape').at(-2)!.outputs[0];
    assert.deepEqual(t.get(reshapeOut)?.shape, ['n', 2, 3]);
    const gemm = m.graph.nodes.find((n) => n.opType === 'Gemm')!.outputs[0];
    assert.deepEqual(t.get(gemm)?.shape, ['n', 5]);
  });
});

describe('recordShapesByRunning', () => {
  test('records observed shapes; dims that vary between runs stay symbolic or unknown', async () => {
    const m = newModel(17);
    addInput(m, 'x', ['N', 3, 'H', 'W']);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('W', [4, 3, 3, 3], 1));
    const c = b.op('Conv', ['x', 'W'], { strides: [2, 2] });
    b.node('NonZero', [b.op('Greater', [c, b.floats('z', [], [0])])], { outputs: ['nz'] });
    b.node('Relu', [c], { outputs: ['y'] });
    m.graph.outputs.push(valueInfo('y', DataType.FLOAT), valueInfo('nz', DataType.INT64));
    const feeds = [8, 12].map((h) => ({
      x: new ort.Tensor('float32', randomFloats(3 * h * 9, h), [1, 3, h, 9]),
    }));
    const runs: string[][] = [];
    const r = await recordShapesByRunning(m, feeds, async (bytes, f, names) => {
      runs.push([...names]);
      return runOrt(bytes, f);
    });
    assert.equal(runs.length, 2);
    assert.equal(r.details.mismatchCount, 0);
    const vi = (name: string) => dimsOfType(m.graph.valueInfo.find((v) => v.name === name)?.type);
    assert.deepEqual(vi(c), ['N', 4, null, 4]);
    // The output's declared type had no shape: the observed one is filled in.
    assert.deepEqual(dimsOfType(m.graph.outputs[0].type), ['N', 4, null, 4]);
    assert.deepEqual(dimsOfType(m.graph.outputs[1].type)?.[0], 4);
    // The model still loads and runs with the recorded value_info.
    await runOrt(modelToBytes(m), feeds[0]);
  });

  test('feedsFor-driven run on the Fashion-MNIST CNN', {
    skip: !present(FASHION_MNIST) && 'not present',
  }, async () => {
    const m = loadModel(FASHION_MNIST);
    const r = await recordShapesByRunning(m, [feedsFor(m, { input: [3, 1, 28, 28] })], (bytes, f) =>
      runOrt(bytes, f),
    );
    assert.equal(r.details.mismatchCount, 0);
    assert.ok((r.details.tapped as number) >= m.graph.nodes.length - 1);
  });
});
