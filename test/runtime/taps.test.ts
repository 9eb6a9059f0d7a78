import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Graph, Node } from '../../src/ir/graph.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType } from '../../src/onnx/dtype.js';
import { AttributeType } from '../../src/onnx/proto.js';
import { Session } from '../../src/runtime/session.js';
import { addTaps, tapAll } from '../../src/runtime/taps.js';
import { recordElementTypes } from '../../src/runtime/value-types.js';
import {
  assertClose,
  assertQnnxError,
  f32,
  intAttr,
  mlpByHand,
  mlpModel,
  model,
  randomF32,
  vi,
} from './helpers.js';

describe('addTaps on the MLP', () => {
  const { model: m, W, b } = mlpModel();
  const x = randomF32(6 * 4, 21);

  test('tapped intermediates equal the values computed separately; the outputs are unchanged', async () => {
    const plain = await Session.create(m);
    const ref = await plain.run({ x: f32([6, 4], x) });
    await plain.release();

    const tapped = addTaps(m, ['mm', 'pre']);
    const s = await Session.create(tapped);
    assert.deepEqual(s.outputNames, ['y', 'mm', 'pre']);
    assert.equal(s.outputs[1].dtype, DataType.FLOAT);
    const out = await s.run({ x: f32([6, 4], x) });
    const hand = mlpByHand(x, W, b);
    // float32 sums of 4 products of values in [-1, 1]: within 1e-6 of the float64 result
    assertClose(out.mm.data as Float32Array, hand.mm, { abs: 1e-6 }, 'mm');
    assertClose(out.pre.data as Float32Array, hand.pre, { abs: 1e-6 }, 'pre');
    // Exposing 'mm' stops ORT fusing MatMul+Add, which may change float rounding: 1e-6 again, not bit equality.
    assertClose(out.y.data as Float32Array, ref.y.data as Float32Array, { abs: 1e-6 }, 'y');

    // computed separately: a model whose only output is 'mm'
    const mmOnly = addTaps(m, ['mm']);
    mmOnly.graph.outputs = mmOnly.graph.outputs.filter((o) => o.name === 'mm');
    const s2 = await Session.create(mmOnly);
    const sep = await s2.run({ x: f32([6, 4], x) });
    assert.deepEqual(out.mm.data, sep.mm.data);
    await s.release();
    await s2.release();
  });

  test('the original model is not modified and tensors are shared, not copied', () => {
    const before = { outputs: m.graph.outputs.length, nodes: m.graph.nodes.length };
    const tapped = addTaps(m, ['mm']);
    assert.equal(m.graph.outputs.length, before.outputs);
    assert.equal(m.graph.nodes.length, before.nodes);
    assert.notEqual(tapped.graph, m.graph);
    assert.notEqual(tapped.graph.nodes[0], m.graph.nodes[0]);
    assert.equal(tapped.graph.initializer('W'), m.graph.initializer('W'));
    tapped.graph.nodes[0].inputs[0] = 'changed';
    assert.equal(m.graph.nodes[0].inputs[0], 'x');
  });

  test('the Session `taps` option, duplicates and existing outputs', async () => {
    const s = await Session.create(m, { taps: ['pre', 'pre', 'y'] });
    assert.deepEqual(s.outputNames, ['y', 'pre']);
    assert.deepEqual(s.taps, ['pre', 'y']);
    const out = await s.run({ x: f32([6, 4], x) });
    assertClose(out.pre.data as Float32Array, mlpByHand(x, W, b).pre, { abs: 1e-6 }, 'pre');
    await s.release();
  });

  test('inputs and initializers can be tapped too', async () => {
    const s = await Session.create(addTaps(m, ['x', 'b']));
    const out = await s.run({ x: f32([6, 4], x) });
    assert.deepEqual(out.x.data, x);
    assert.deepEqual(out.b.data, b);
    await s.release();
  });

  test('a value the main graph does not define is E_GRAPH naming it', async () => {
    await assertQnnxError(() => addTaps(m, ['nope']), 'E_GRAPH', "'nope'");
  });

  test('tapAll lists node outputs that are not already outputs, filtered', () => {
    assert.deepEqual(tapAll(m), ['mm', 'pre']);
    assert.deepEqual(
      tapAll(m, (_, n) => n.opType === 'Add'),
      ['pre'],
    );
  });
});

describe('taps: element types', () => {
  test('a value of unknown type is E_GRAPH naming the value and its producer', async () => {
    const g = model();
    g.opsetImports.push({ domain: 'com.example', version: 1 });
    g.graph.inputs = [vi('x', DataType.FLOAT, [2])];
    g.graph.outputs = [vi('y', DataType.FLOAT, [2])];
    g.graph.nodes = [
      new Node('Mystery', ['x'], ['m'], [], 'mystery', 'com.example'),
      new Node('Relu', ['m'], ['y']),
    ];
    const e = await assertQnnxError(
      () => addTaps(g, ['m']),
      'E_GRAPH',
      "'m'",
      'element type is unknown',
      'mystery',
    );
    assert.equal(e.context.tensor, 'm');
  });

  test("unknownType: 'untyped' leaves the type to ORT, which infers it", async () => {
    // Det has no rule in the element-type recorder, so its output's type is unknown to qnnx
    const g = model();
    g.graph.inputs = [vi('x', DataType.FLOAT, [2, 2])];
    g.graph.outputs = [vi('y', DataType.FLOAT, [])];
    g.graph.nodes = [new Node('Det', ['x'], ['d']), new Node('Neg', ['d'], ['y'])];
    await assertQnnxError(() => addTaps(g, ['d']), 'E_GRAPH', "'d'");
    const tapped = addTaps(g, ['d'], { unknownType: 'untyped' });
    assert.equal(tapped.graph.outputs[1].type, undefined);
    const s = await Session.create(tapped);
    assert.equal(s.outputs[1].dtype, DataType.FLOAT);
    const out = await s.run({ x: f32([2, 2], [1, 2, 3, 4]) });
    // det [[1, 2], [3, 4]] = -2 (LU in float32: exact to 1e-6)
    assertClose(out.d.data as Float32Array, [-2], { abs: 1e-6 }, 'd');
    assertClose(out.y.data as Float32Array, [2], { abs: 1e-6 }, 'y');
    await s.release();
  });

  test('a value internal to a subgraph cannot be tapped; the message names the node', async () => {
    const g = model();
    g.graph.inputs = [vi('c', DataType.BOOL, []), vi('x', DataType.FLOAT, [2])];
    g.graph.outputs = [vi('y', DataType.FLOAT, [2])];
    const thenG = new Graph();
    thenG.name = 'then';
    thenG.nodes = [new Node('Neg', ['x'], ['inner'])];
    thenG.outputs = [vi('inner', DataType.FLOAT, [2])];
    const elseG = new Graph();
    elseG.name = 'else';
    elseG.nodes = [new Node('Identity', ['x'], ['other'])];
    elseG.outputs = [vi('other', DataType.FLOAT, [2])];
    g.graph.nodes = [
      new Node(
        'If',
        ['c'],
        ['y'],
        [
          { name: 'then_branch', type: AttributeType.GRAPH, value: thenG },
          { name: 'else_branch', type: AttributeType.GRAPH, value: elseG },
        ],
        'branch',
      ),
    ];
    await assertQnnxError(() => addTaps(g, ['inner']), 'E_GRAPH', "'inner'", 'subgraph', 'branch');
    assert.deepEqual(tapAll(g), []); // 'y' is an output; 'inner' is subgraph-internal
    // and the main-graph model still runs
    const s = await Session.create(g);
    const out = await s.run({
      c: { dtype: DataType.BOOL, dims: [], data: new Uint8Array([1]) },
      x: f32([2], [1, -2]),
    });
    assert.deepEqual(Array.from(out.y.data as Float32Array), [-1, 2]);
    await s.release();
  });

  test('recorded element types follow Cast, Shape, comparisons and Constant', () => {
    const g = model();
    g.graph.inputs = [vi('x', DataType.FLOAT, [2])];
    g.graph.outputs = [vi('y', DataType.BOOL, [2])];
    const k = new Tensor('', DataType.INT32, [], new Int32Array([3]));
    g.graph.nodes = [
      new Node('Cast', ['x'], ['xi'], [intAttr('to', DataType.INT32)]),
      new Node('Shape', ['x'], ['s']),
      new Node('Constant', [], ['k'], [{ name: 'value', type: AttributeType.TENSOR, value: k }]),
      new Node('Add', ['xi', 'k'], ['sum']),
      new Node('Greater', ['sum', 'k'], ['y']),
      new Node('MaxPool', ['x4'], ['mp', 'idx']),
    ];
    const t = recordElementTypes(g.graph);
    assert.equal(t.get('xi'), DataType.INT32);
    assert.equal(t.get('s'), DataType.INT64);
    assert.equal(t.get('k'), DataType.INT32);
    assert.equal(t.get('sum'), DataType.INT32);
    assert.equal(t.get('y'), DataType.BOOL);
    assert.equal(t.get('mp'), undefined); // its input is unknown
    assert.equal(t.get('idx'), DataType.INT64);
  });
});
