/**
 * BatchNormalization folding, checked against ONNX Runtime: the model runs before and after the pass on the same
 * inputs. Tolerance: max |before - after| <= 1e-5 * max |before|. Folding replaces (x ⊛ W)·s + t by
 * x ⊛ (W·s) + t': the same real-number map computed with the float32 products and sums re-associated, so each
 * output differs by a few float32 ulps of the intermediate magnitudes; deep models accumulate that through their
 * layers, which is why the bound is relative to the output's range rather than per element.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { loadModel } from '../../../src/io/model-file.js';
import { floatAttr, GraphBuilder } from '../../../src/ir/builder.js';
import { Node } from '../../../src/ir/graph.js';
import type { Model } from '../../../src/ir/model.js';
import { type FoldedPair, foldBatchNorm } from '../../../src/ir/passes/bn-folding.js';
import { DataType } from '../../../src/onnx/dtype.js';
import {
  addInput,
  addOutput,
  FASHION_MNIST,
  f32,
  maxDiff,
  newModel,
  ort,
  present,
  REAL_MODELS,
  randomFloats,
  realFeeds,
  runOrt,
} from './helpers.js';

const TOL = 1e-5;

async function checkFold(model: Model, feeds: Record<string, ort.Tensor>) {
  const before = await runOrt(model, feeds);
  const nodesBefore = model.graph.nodes.length;
  const record = foldBatchNorm(model);
  const after = await runOrt(model, feeds);
  const d = maxDiff(before, after);
  return { record, d, nodesBefore, nodesAfter: model.graph.nodes.length };
}

/** Adds BatchNormalization(y) with random positive variance; returns its output. */
function addBn(b: GraphBuilder, y: string, c: number, seed: number, eps = 1e-3): string {
  const scale = b.floats('bn_scale', [c], randomFloats(c, seed, 0.5, 2));
  const bias = b.floats('bn_bias', [c], randomFloats(c, seed + 1));
  const mean = b.floats('bn_mean', [c], randomFloats(c, seed + 2));
  const v = b.floats('bn_var', [c], randomFloats(c, seed + 3, 0.1, 3));
  return b.node('BatchNormalization', [y, scale, bias, mean, v], {
    attrs: { epsilon: floatAttr('epsilon', eps) },
  }).outputs[0];
}

describe('foldBatchNorm on real models', () => {
  const models = [
    ...REAL_MODELS.filter((m) => m.name.startsWith('PP-OCR')),
    { name: 'Fashion-MNIST CNN', file: FASHION_MNIST, shapes: { input: [4, 1, 28, 28] } },
  ];
  for (const m of models) {
    test(m.name, { skip: !present(m.file) && `${m.file} is not present` }, async () => {
      const model = loadModel(m.file);
      const bnBefore = model.graph.nodes.filter((n) => n.opType === 'BatchNormalization').length;
      const feeds = realFeeds(model, m, 7);
      const { record, d, nodesBefore, nodesAfter } = await checkFold(model, feeds);
      const byOp = record.details.byOpType as Record<string, number>;
      const bnAfter = model.graph.nodes.filter((n) => n.opType === 'BatchNormalization').length;
      console.log(
        `${m.name}: BN ${bnBefore} -> ${bnAfter}, nodes ${nodesBefore} -> ${nodesAfter}, folded ${JSON.stringify(byOp)}, ` +
          `max|diff| ${d.abs.toExponential(2)} of max|y| ${d.ref.toExponential(2)} (rel ${d.rel.toExponential(2)})`,
      );
      assert.ok(bnBefore > 0);
      assert.equal(bnAfter, 0, `all BatchNormalizations folded: ${JSON.stringify(record.details.skipped)}`);
      assert.ok(nodesAfter < nodesBefore);
      assert.ok(d.ref > 0, 'the output is not all zeros');
      assert.ok(d.rel <= TOL, `relative difference ${d.rel} > ${TOL}`);
      const pairs = record.details.pairs as FoldedPair[];
      assert.ok(pairs.every((p) => p.into && p.folded));
    });
  }
});

describe('foldBatchNorm on generated graphs', () => {
  test('Conv with groups, no bias', async () => {
    const m = newModel(17);
    addInput(m, 'x', [2, 4, 9, 9]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('W', [6, 2, 3, 3], 11));
    const y = b.node('Conv', ['x', 'W'], { attrs: { group: 2, pads: [1, 1, 1, 1] } }).outputs[0];
    const z = addBn(b, y, 6, 20);
    b.node('Relu', [z], { outputs: ['out'] });
    addOutput(m, 'out');
    const feeds = { x: new ort.Tensor('float32', randomFloats(2 * 4 * 81, 3), [2, 4, 9, 9]) };
    const { record, d, nodesBefore, nodesAfter } = await checkFold(m, feeds);
    assert.equal(record.details.folded, 1);
    assert.equal(nodesAfter, nodesBefore - 1);
    assert.ok(d.rel <= TOL, `rel ${d.rel}`);
    const conv = m.graph.nodes.find((n) => n.opType === 'Conv')!;
    assert.equal(conv.inputs.length, 3, 'a bias was added');
  });

  for (const group of [1, 2, 3]) {
    test(`ConvTranspose, group ${group}, with bias`, async () => {
      const m = newModel(17);
      const cin = 6;
      const coutG = 2;
      addInput(m, 'x', [1, cin, 5, 7]);
      const b = new GraphBuilder(m.graph);
      m.graph.addInitializer(f32('W', [cin, coutG, 3, 2], 12 + group));
      m.graph.addInitializer(f32('B', [coutG * group], 13));
      const y = b.node('ConvTranspose', ['x', 'W', 'B'], {
        attrs: { group, strides: [2, 2], pads: [1, 0, 0, 1], output_padding: [1, 0] },
      }).outputs[0];
      b.node('BatchNormalization', [y, ...bnParams(b, coutG * group, 30 + group)], { outputs: ['out'] });
      addOutput(m, 'out');
      const feeds = { x: new ort.Tensor('float32', randomFloats(cin * 35, 4), [1, cin, 5, 7]) };
      const { record, d } = await checkFold(m, feeds);
      assert.equal(record.details.folded, 1);
      assert.ok(d.rel <= TOL, `rel ${d.rel}`);
    });
  }

  for (const [transB, withC, cShape] of [
    [0, true, [5]],
    [1, true, [1, 5]],
    [0, false, []],
    [1, false, []],
    [1, true, [1]],
  ] as [number, boolean, number[]][]) {
    test(`Gemm transB=${transB}, C ${withC ? JSON.stringify(cShape) : 'absent'}, alpha 1.5, beta 0.5`, async () => {
      const m = newModel(17);
      addInput(m, 'a', [3, 4]);
      const b = new GraphBuilder(m.graph);
      m.graph.addInitializer(f32('B', transB ? [5, 4] : [4, 5], 40 + transB));
      if (withC) m.graph.addInitializer(f32('C', cShape, 41));
      const y = b.node('Gemm', withC ? ['a', 'B', 'C'] : ['a', 'B'], {
        attrs: { transB, alpha: floatAttr('alpha', 1.5), beta: floatAttr('beta', 0.5) },
      }).outputs[0];
      b.node('BatchNormalization', [y, ...bnParams(b, 5, 50)], { outputs: ['out'] });
      addOutput(m, 'out');
      const feeds = { a: new ort.Tensor('float32', randomFloats(12, 5), [3, 4]) };
      const { record, d } = await checkFold(m, feeds);
      assert.equal(record.details.folded, 1);
      assert.ok(d.rel <= TOL, `rel ${d.rel}`);
    });
  }

  test('Conv followed by per-channel Mul, scalar Add, Sub and Div (affine folding)', async () => {
    const m = newModel(17);
    addInput(m, 'x', [1, 3, 8, 8]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('W', [4, 3, 3, 3], 60));
    m.graph.addInitializer(f32('B', [4], 61));
    let y = b.node('Conv', ['x', 'W', 'B'], {}).outputs[0];
    y = b.op('Mul', [y, b.floats('k', [4, 1, 1], randomFloats(4, 62, 0.5, 2))]);
    y = b.op('Add', [b.floats('s', [], [0.25]), y]);
    y = b.op('Sub', [y, b.floats('t', [1, 4, 1, 1], randomFloats(4, 63))]);
    b.node('Div', [y, b.floats('d', [1], [3])], { outputs: ['out'] });
    addOutput(m, 'out');
    const feeds = { x: new ort.Tensor('float32', randomFloats(192, 6), [1, 3, 8, 8]) };
    const { record, d, nodesAfter } = await checkFold(m, feeds);
    assert.deepEqual(record.details.byOpType, { Mul: 1, Add: 1, Sub: 1, Div: 1 });
    assert.equal(nodesAfter, 1);
    assert.ok(d.rel <= TOL, `rel ${d.rel}`);
  });

  test('affine: false leaves Mul/Add alone; a Mul that would broadcast to more channels is not folded', async () => {
    const m = newModel(17);
    addInput(m, 'x', [1, 3, 8, 8]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('W', [4, 3, 3, 3], 70));
    const y = b.node('Conv', ['x', 'W'], {}).outputs[0];
    b.node('Mul', [y, b.floats('k', [6, 1], randomFloats(6, 71))], { outputs: ['out'] });
    addOutput(m, 'out');
    assert.equal(foldBatchNorm(m, { affine: false }).changed, false);
    assert.equal(foldBatchNorm(m).changed, false);
  });

  test('shared weights are copied, not modified; a Conv output with two uses is not folded', async () => {
    const m = newModel(17);
    addInput(m, 'x', [1, 2, 6, 6]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('W', [3, 2, 3, 3], 80));
    const y1 = b.node('Conv', ['x', 'W'], {}).outputs[0];
    const y2 = b.node('Conv', ['x', 'W'], {}).outputs[0];
    b.node('BatchNormalization', [y1, ...bnParams(b, 3, 81)], { outputs: ['out1'] });
    b.node('BatchNormalization', [y2, ...bnParams(b, 3, 82)], { outputs: ['out2'] });
    b.node('Relu', [y2], { outputs: ['out3'] });
    for (const o of ['out1', 'out2', 'out3']) addOutput(m, o);
    const wBefore = Float32Array.from(m.graph.initializer('W')!.data as Float32Array);
    const feeds = { x: new ort.Tensor('float32', randomFloats(72, 8), [1, 2, 6, 6]) };
    const { record, d } = await checkFold(m, feeds);
    assert.equal(record.details.folded, 1);
    assert.deepEqual(m.graph.initializer('W')!.data, wBefore, 'W is still used by the second Conv');
    const skipped = record.details.skipped as { node: string; reason: string }[];
    assert.equal(skipped.length, 1);
    assert.match(skipped[0].reason, /other uses/);
    assert.ok(d.rel <= TOL, `rel ${d.rel}`);
  });

  test('training-mode BatchNormalization is left alone, with the reason recorded', () => {
    const m = newModel(15);
    addInput(m, 'x', [2, 2, 4, 4]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('W', [3, 2, 1, 1], 90));
    const y = b.node('Conv', ['x', 'W'], {}).outputs[0];
    const bn = b.node('BatchNormalization', [y, ...bnParams(b, 3, 91)], {
      outputs: ['out'],
      attrs: { training_mode: 1 },
    });
    assert.ok(bn instanceof Node);
    addOutput(m, 'out');
    const record = foldBatchNorm(m);
    assert.equal(record.changed, false);
    assert.deepEqual(
      (record.details.skipped as { reason: string }[]).map((s) => s.reason),
      ['training_mode'],
    );
  });

  test('Gemm whose C varies along rows is not folded', () => {
    const m = newModel(17);
    addInput(m, 'a', [3, 4]);
    const b = new GraphBuilder(m.graph);
    m.graph.addInitializer(f32('B', [4, 5], 100));
    m.graph.addInitializer(f32('C', [3, 5], 101));
    const y = b.node('Gemm', ['a', 'B', 'C'], {}).outputs[0];
    b.node('BatchNormalization', [y, ...bnParams(b, 5, 102)], { outputs: ['out'] });
    addOutput(m, 'out');
    const record = foldBatchNorm(m);
    assert.equal(record.changed, false);
    assert.match(JSON.stringify(record.details.skipped), /per-column/);
  });

  test('float64 weights fold too', async () => {
    const m = newModel(17);
    addInput(m, 'a', [2, 3], DataType.DOUBLE);
    const b = new GraphBuilder(m.graph);
    b.initializer('B', DataType.DOUBLE, [3, 4], Float64Array.from(randomFloats(12, 110)));
    const y = b.node('Gemm', ['a', 'B'], {}).outputs[0];
    const p = ['s', 'b', 'm', 'v'].map((n, i) =>
      b.initializer(
        n,
        DataType.DOUBLE,
        [4],
        Float64Array.from(randomFloats(4, 111 + i, i === 3 ? 0.5 : -1, 2)),
      ),
    );
    b.node('BatchNormalization', [y, ...p], { outputs: ['out'] });
    addOutput(m, 'out', DataType.DOUBLE);
    const feeds = { a: new ort.Tensor('float64', Float64Array.from(randomFloats(6, 112)), [2, 3]) };
    const { record, d } = await checkFold(m, feeds);
    assert.equal(record.details.folded, 1);
    assert.ok(d.rel <= 1e-12, `rel ${d.rel}`);
  });
});

function bnParams(b: GraphBuilder, c: number, seed: number): string[] {
  return [
    b.floats('bn_scale', [c], randomFloats(c, seed, 0.5, 2)),
    b.floats('bn_bias', [c], randomFloats(c, seed + 1)),
    b.floats('bn_mean', [c], randomFloats(c, seed + 2)),
    b.floats('bn_var', [c], randomFloats(c, seed + 3, 0.1, 3)),
  ];
}
