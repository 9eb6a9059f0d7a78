/**
 * W8A8 post-training quantization of real models on real-looking inputs, against the targets:
 *
 *   npx tsc -p tsconfig.json && node dist/bench/ptq-real.js [--only det,rec,cls,vad,oww,size,speed] [--quick]
 *
 * Models (research note assets.md §5): PP-OCRv4 det and rec, PP-OCR cls, Silero VAD v4 (vad-node) and v5
 * (vad-web), openWakeWord melspectrogram and embedding. Inputs are rendered here (bench/assets): text pages and
 * text lines with ImageMagick + DejaVu fonts, speech with espeak-ng + sox. Every model is calibrated on one set
 * of inputs and evaluated on another (held out).
 *
 * Quantization is quantizeModel (src/quant/quantize.ts): prepare, exact rewrites (affine chains into Convs,
 * ConvTranspose → Conv1x1 + DepthToSpace), empirical bias correction for weight rounding, QuantSim (ort-cpu: int8
 * per-channel weights, uint8 per-tensor activations, minmax), export, affine absorption into the DQ parameters,
 * compaction. The "baseline" row uses the same pipeline with every rewrite and the bias correction off.
 *
 * Latency: onnxruntime-node, 1 intra-op thread, graphOptimizationLevel 'all', float and int8 sessions in the
 * same process, runs alternating (which goes first alternates too), median of each; the ratio is int8 / float.
 * The machine is shared, so each ratio is the median of alternating runs taken in one go.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { table } from '../src/cli/format.js';
import { loadModel, modelToBytes } from '../src/io/model-file.js';
import type { Model } from '../src/ir/model.js';
import { exportWeightOnly } from '../src/quant/export/matmulnbits.js';
import { exportQdq } from '../src/quant/export/qdq.js';
import { correctWeightOnlyBias } from '../src/quant/export/weight-only.js';
import { prepareModel, quantizeModel, type RewriteOptions } from '../src/quant/quantize.js';
import { specializeControlFlow } from '../src/quant/rewrites/index.js';
import { QuantSim } from '../src/quant/sim/quantsim.js';
import { getTarget } from '../src/quant/sim/targets.js';
import { type Feeds, Session } from '../src/runtime/session.js';
import type { HostTensor } from '../src/tensor.js';
import { flag, want } from './assets/args.js';
import {
  clsInput,
  detInput,
  embeddingWindows,
  MODELS,
  melInput,
  recInput,
  runVad,
  Sqnr,
  speech,
  VAD_SPECIALIZE,
  type VadVersion,
  wakeScore,
  withoutInputs,
} from './assets/inputs.js';
import { alternatingLatency } from './assets/latency.js';
import { available, SENTENCES, VOICES } from './assets/render.js';

const quick = flag('--quick');
const OUT = path.join(os.tmpdir(), 'qnnx-ptq-real');
fs.mkdirSync(OUT, { recursive: true });

const tools = available();
if (!tools.images || !tools.speech) {
  console.log(
    `missing tools: ${!tools.images ? 'ImageMagick convert + fonts-dejavu ' : ''}${!tools.speech ? 'espeak-ng + sox' : ''}` +
      ' (apt-get install -y imagemagick fonts-dejavu espeak-ng sox)',
  );
  process.exit(1);
}

const t0 = performance.now();
const log = (s: string) => console.log(`[${((performance.now() - t0) / 1000).toFixed(0)}s] ${s}`);
const makeRunner = (m: Model) => Session.create(m);
const fmt = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : v > 0 ? 'inf' : String(v));

interface Row {
  metric: string;
  value: string;
  target: string;
  ok: string;
  note: string;
}
const rows: Row[] = [];
function report(
  metric: string,
  value: number,
  target: string,
  pass: boolean | undefined,
  note = '',
  digits = 1,
) {
  rows.push({
    metric,
    value: fmt(value, digits),
    target,
    ok: pass === undefined ? '' : pass ? 'yes' : 'MISS',
    note,
  });
}

/** Runs every sample through both runners and pools the SQNR of `output` (default: each's first output). */
async function sqnrOver(a: Session, b: Session, samples: Feeds[], output?: string): Promise<Sqnr> {
  const s = new Sqnr();
  for (const f of samples) {
    const ra = await a.run(f);
    const rb = await b.run(f);
    const k = output ?? a.outputNames[0]!;
    s.add(ra[k]!.data as Float32Array, rb[k]!.data as Float32Array);
  }
  return s;
}

/** Median latency of alternating runs of a float and a quantized model on the same feeds, after warm-up. */
async function latency(fModel: Uint8Array, qModel: Uint8Array, feeds: Feeds, rounds: number) {
  const a = await Session.create(fModel);
  const b = await Session.create(qModel);
  const r = await alternatingLatency(a, b, feeds, rounds);
  await a.release();
  await b.release();
  return { float: r.a, int8: r.b, ratio: r.ratio, minRatio: r.minRatio };
}

/** A variant of the pipeline: its rewrites, and whether empirical bias correction is on (default on). */
type Variant = RewriteOptions & { biasCorrection?: boolean };

async function quantizeVariant(m: Model, calib: Feeds[], v: Variant = {}) {
  const { biasCorrection = true, ...rewrites } = v;
  const t = performance.now();
  const r = await quantizeModel(m, calib, makeRunner, {
    rewrites,
    biasCorrection: biasCorrection ? 'empirical' : false,
  });
  return {
    model: r.model,
    sim: r.sim,
    passes: r.report.passes,
    seconds: (performance.now() - t) / 1000,
    bytes: modelToBytes(r.model),
  };
}

const quantize = (file: string, calib: Feeds[], v: Variant = {}) =>
  quantizeVariant(loadModel(file), calib, v);

const BASELINE: Variant = {
  foldAffine: false,
  convTranspose: false,
  absorbAffine: false,
  biasCorrection: false,
  compact: 'none',
};

// ---------------------------------------------------------------------------------------------------------------
// PP-OCR det
// ---------------------------------------------------------------------------------------------------------------

/** Fraction of pixels where both maps agree on text (p > 0.3): intersection over union of the text regions. */
function textIou(a: Float32Array, b: Float32Array): number {
  let inter = 0;
  let uni = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]! > 0.3;
    const y = b[i]! > 0.3;
    if (x && y) inter++;
    if (x || y) uni++;
  }
  return uni === 0 ? 1 : inter / uni;
}

const PAGE = { w: 1248, h: 1760 };
/** The det configuration reported (SQNR, size, latency): every rewrite, the 3-channel stem left float. */
const DET_REWRITES: Variant = { firstConvFloat: true };
const detFloat = modelToBytes(loadModel(MODELS.det));
let detInt8: Uint8Array | undefined;
let det640: Feeds[] = [];
let detPage: Feeds[] = [];

if (want('det') || want('speed') || want('size')) {
  log('det: rendering inputs');
  const nCal = quick ? 4 : 8;
  const calib = [
    ...(await Promise.all(Array.from({ length: nCal }, (_, i) => detInput(i + 1, 640, 640)))),
    ...(await Promise.all(Array.from({ length: quick ? 1 : 2 }, (_, i) => detInput(i + 1, PAGE.w, PAGE.h)))),
  ];
  det640 = await Promise.all(Array.from({ length: quick ? 2 : 4 }, (_, i) => detInput(101 + i, 640, 640)));
  detPage = await Promise.all(
    Array.from({ length: quick ? 1 : 2 }, (_, i) => detInput(101 + i, PAGE.w, PAGE.h)),
  );
  log('det: quantizing');
  const q = await quantize(MODELS.det, calib, DET_REWRITES);
  detInt8 = q.bytes;
  fs.writeFileSync(path.join(OUT, 'det-int8.onnx'), q.bytes);
  if (want('det')) {
    const fs_ = await Session.create(detFloat);
    const qs = await Session.create(q.bytes);
    for (const [name, set] of [
      ['640x640', det640],
      [`${PAGE.w}x${PAGE.h}`, detPage],
    ] as const) {
      const s = await sqnrOver(fs_, qs, [...set]);
      let iou = 1;
      for (const f of set) {
        const a = Object.values(await fs_.run(f))[0]!;
        const b = Object.values(await qs.run(f))[0]!;
        iou = Math.min(iou, textIou(a.data as Float32Array, b.data as Float32Array));
      }
      report(
        `det ${name} output SQNR (dB)`,
        s.db,
        '>= 30',
        s.db >= 30,
        `worst image ${fmt(s.worst)}; min text IoU@0.3 ${fmt(iou, 3)}`,
      );
    }
    await fs_.release();
    await qs.release();
    const passes = q.passes.map(
      (p) => `${p.pass}:${JSON.stringify(p.details).length > 2 ? summarize(p.details) : ''}`,
    );
    log(`det passes: ${passes.join(' | ')} (${fmt(q.seconds)} s)`);
  }
}

function summarize(d: Record<string, unknown>): string {
  return Object.entries(d)
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
}

// ---------------------------------------------------------------------------------------------------------------
// PP-OCR rec and cls
// ---------------------------------------------------------------------------------------------------------------

/** CTC greedy decode: argmax per step, repeats collapsed, blanks (class 0) removed. */
function ctc(out: HostTensor): number[] {
  const [, T, C] = out.dims as [number, number, number];
  const d = out.data as Float32Array;
  const seq: number[] = [];
  let prev = -1;
  for (let t = 0; t < T; t++) {
    let best = 0;
    for (let c = 1; c < C; c++) if (d[t * C + c]! > d[t * C + best]!) best = c;
    if (best !== prev && best !== 0) seq.push(best);
    prev = best;
  }
  return seq;
}

let recInt8: Uint8Array | undefined;
const recFloat = modelToBytes(loadModel(MODELS.rec));
if (want('rec') || want('size')) {
  log('rec: rendering inputs');
  const calib = await Promise.all(Array.from({ length: quick ? 12 : 32 }, (_, i) => recInput(i + 1)));
  const held = await Promise.all(Array.from({ length: quick ? 8 : 24 }, (_, i) => recInput(1001 + i)));
  log('rec: quantizing');
  const q = await quantize(MODELS.rec, calib);
  recInt8 = q.bytes;
  fs.writeFileSync(path.join(OUT, 'rec-int8.onnx'), q.bytes);
  if (want('rec')) {
    const fs_ = await Session.create(recFloat);
    const qs = await Session.create(q.bytes);
    const s = await sqnrOver(fs_, qs, held);
    let same = 0;
    for (const f of held) {
      const a = ctc(Object.values(await fs_.run(f))[0]!);
      const b = ctc(Object.values(await qs.run(f))[0]!);
      if (a.join() === b.join()) same++;
    }
    report(
      'rec output SQNR (dB)',
      s.db,
      '>= 30',
      s.db >= 30,
      `worst line ${fmt(s.worst)}; same text ${same}/${held.length}`,
    );
    const lat = await latency(recFloat, q.bytes, held[0]!, quick ? 11 : 31);
    report(
      'rec 48xW latency int8/float',
      lat.ratio,
      '(info)',
      undefined,
      `${fmt(lat.int8, 2)} / ${fmt(lat.float, 2)} ms`,
      3,
    );
    await fs_.release();
    await qs.release();
  }
}

if (want('cls')) {
  log('cls');
  const calib = await Promise.all(Array.from({ length: 16 }, (_, i) => clsInput(i)));
  const held = await Promise.all(Array.from({ length: 16 }, (_, i) => clsInput(100 + i)));
  const q = await quantize(MODELS.cls, calib);
  const fs_ = await Session.create(MODELS.cls);
  const qs = await Session.create(q.bytes);
  const s = await sqnrOver(fs_, qs, held);
  report('cls output SQNR (dB)', s.db, '>= 30', s.db >= 30, `worst ${fmt(s.worst)}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Silero VAD
// ---------------------------------------------------------------------------------------------------------------

if (want('vad')) {
  const calibClips = await Promise.all(
    SENTENCES.slice(0, 6).map((t, i) => speech(t, VOICES[i % VOICES.length])),
  );
  const heldClips = await Promise.all(
    SENTENCES.slice(6).map((t, i) => speech(t, VOICES[(i + 2) % VOICES.length])),
  );
  for (const [version, file] of [
    [4, MODELS.vad4],
    [5, MODELS.vad5],
  ] as [VadVersion, string][]) {
    const fs_ = await Session.create(file);
    const calib: Feeds[] = [];
    for (const c of calibClips) calib.push(...(await runVad(fs_, version, c)).feeds);
    const sample = calib.filter((_, i) => i % 2 === 0);
    for (const specialized of [false, true]) {
      log(`silero v${version}${specialized ? ' specialized to 16 kHz' : ''}`);
      const m = loadModel(file);
      let note = '';
      if (specialized) {
        const r = specializeControlFlow(m, VAD_SPECIALIZE[version]);
        note = `sr bound to 16000, ${r.details.ifsInlined} If inlined, ${r.details.ifsLeft} left; `;
      }
      const q = await quantizeVariant(m, specialized ? withoutInputs(sample, ['sr']) : sample);
      const qs = await Session.create(modelToBytes(q.model));
      const s = new Sqnr();
      let flips = 0;
      let frames = 0;
      for (const c of heldClips) {
        const a = (await runVad(fs_, version, c)).probs;
        const b = (await runVad(qs, version, c)).probs;
        s.add(a, b);
        for (let i = 0; i < a.length; i++) if (a[i]! > 0.5 !== b[i]! > 0.5) flips++;
        frames += a.length;
      }
      const convs = [...q.sim.quantizers.values()].filter((x) => x.kind === 'weight').length;
      report(
        `silero v${version}${specialized ? ' (If inlined)' : ' (control flow)'} output SQNR (dB)`,
        s.db,
        '>= 30',
        s.db >= 30,
        `${note}${q.sim.quantizers.size} quantizers, ${convs} weights` +
          `${specialized ? '' : ' (main graph only, subgraphs float)'}; speech flips ${flips}/${frames}`,
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// openWakeWord
// ---------------------------------------------------------------------------------------------------------------

if (want('oww')) {
  const texts = SENTENCES;
  const clips = await Promise.all(texts.map((t, i) => speech(t, VOICES[i % VOICES.length])));
  const calibIdx = clips.map((_, i) => i).filter((i) => i % 2 === 0);
  const heldIdx = clips.map((_, i) => i).filter((i) => i % 2 === 1);
  log('oww melspectrogram');
  const melF = await Session.create(MODELS.mel);
  const melQ = await quantize(
    MODELS.mel,
    calibIdx.map((i) => melInput(clips[i]!)),
  );
  const melQs = await Session.create(melQ.bytes);
  const sm = await sqnrOver(
    melF,
    melQs,
    heldIdx.map((i) => melInput(clips[i]!)),
  );
  report('oww melspectrogram SQNR (dB)', sm.db, '>= 30', sm.db >= 30, `worst clip ${fmt(sm.worst)}`);
  const melWo = await Session.create(modelToBytes(weightOnly(MODELS.mel, 8)));
  const sw = await sqnrOver(
    melF,
    melWo,
    heldIdx.map((i) => melInput(clips[i]!)),
  );
  report(
    'oww melspectrogram weight-only int8 SQNR (dB)',
    sw.db,
    '(info)',
    undefined,
    'activations float: a log-power spectrogram spans > 60 dB, beyond uint8 per-tensor',
  );
  log('oww embedding');
  const windows = async (idx: number[]) => {
    const out: Feeds[] = [];
    for (const i of idx)
      out.push(...embeddingWindows(Object.values(await melF.run(melInput(clips[i]!)))[0]!));
    return out;
  };
  const embF = await Session.create(MODELS.emb);
  const embQ = await quantize(MODELS.emb, await windows(calibIdx));
  const embQs = await Session.create(embQ.bytes);
  const se = await sqnrOver(embF, embQs, await windows(heldIdx));
  report('oww embedding SQNR (dB)', se.db, '>= 30', se.db >= 30, `worst window ${fmt(se.worst)}`);
  // Downstream: wake-word scores with the float front end vs the quantized one.
  const notes: string[] = [];
  for (const [head, phrase] of [
    [MODELS.alexa, 'alexa'],
    [MODELS.jarvis, 'hey jarvis'],
  ] as const) {
    const h = await Session.create(head);
    const clip = await speech(phrase, 'en-gb', 160);
    const neg = await speech('good morning everyone', 'en-gb', 160);
    const score = async (mel: Session, emb: Session, audio: Float32Array) => {
      const ws = embeddingWindows(Object.values(await mel.run(melInput(audio)))[0]!);
      const e: Float32Array[] = [];
      for (const w of ws) e.push(Object.values(await emb.run(w))[0]!.data as Float32Array);
      return wakeScore(h, e);
    };
    notes.push(
      `${phrase}: pos ${fmt(await score(melF, embF, clip), 3)}→${fmt(await score(melQs, embQs, clip), 3)}` +
        ` (w-only mel ${fmt(await score(melWo, embQs, clip), 3)}), ` +
        `neg ${fmt(await score(melF, embF, neg), 3)}→${fmt(await score(melQs, embQs, neg), 3)}` +
        ` (w-only mel ${fmt(await score(melWo, embQs, neg), 3)})`,
    );
  }
  rows.push({
    metric: 'oww wake scores float→int8 front end',
    value: '',
    target: '(info)',
    ok: '',
    note: notes.join('; '),
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Sizes: int8 QDQ and int4 weight-only
// ---------------------------------------------------------------------------------------------------------------

/** Conv/Gemm/MatMul weights as intN per output channel, weight-only (DequantizeLinear → float op). */
/** Weight quantizers only (QuantSim weightOnly: int4/int8 per-channel weights, float activations), QDQ export. */
function weightOnly(file: string, bits: 4 | 8): Model {
  const m = loadModel(file);
  prepareModel(m, bits === 4 ? 21 : 13);
  const sim = new QuantSim(m, {
    target: getTarget('ort-cpu'),
    weights: { bits, signed: true, symmetry: 'symmetric', narrow: true, granularity: 'channel' },
    weightOnly: true,
  });
  sim.computeParameterEncodings();
  sim.finalizeEncodings();
  return exportQdq(sim).model;
}

if (want('size')) {
  log('sizes');
  for (const [name, file, fBytes, qBytes] of [
    ['det', MODELS.det, detFloat, detInt8],
    ['rec', MODELS.rec, recFloat, recInt8],
  ] as const) {
    if (qBytes) {
      const r = qBytes.length / fBytes.length;
      report(
        `${name} int8 bytes / float bytes`,
        r,
        '<= 0.29',
        r <= 0.29,
        `${qBytes.length} / ${fBytes.length} (default compaction: zero points, short generated names)`,
        3,
      );
    }
    // Weight-only int4 (qnnx quantize --weight-only): BatchNorm folded, Conv/Gemm weights per output channel
    // behind DequantizeLinear (depthwise int8), MatMuls as MatMulNBits; the default (MatMul blocks of 32) and
    // --granularity channel with bias correction from calibration inputs (bench/weight-only.ts has every variant).
    const inputs = name === 'det' ? det640.slice(0, 2) : await Promise.all([recInput(1001), recInput(1002)]);
    const calib =
      name === 'det'
        ? await Promise.all([1, 2, 3].map((i) => detInput(i, 640, 640)))
        : await Promise.all([1, 2, 3, 4, 5, 6].map((i) => recInput(i)));
    const a = await Session.create(fBytes);
    for (const channel of [false, true]) {
      const m = loadModel(file);
      prepareModel(m, 21);
      const wo = exportWeightOnly(m, {
        bits: 4,
        blockSize: 32,
        granularity: channel ? 'channel' : undefined,
      });
      if (channel) await correctWeightOnlyBias(m, wo, calib, makeRunner);
      const woBytes = modelToBytes(wo.model);
      const b = await Session.create(woBytes);
      const s = inputs.length ? await sqnrOver(a, b, inputs) : new Sqnr();
      await b.release();
      report(
        `${name} int4 weight-only bytes ratio, ${channel ? '--granularity channel + bias correction' : 'default'}`,
        woBytes.length / fBytes.length,
        '<= 0.15',
        woBytes.length / fBytes.length <= 0.15,
        `${wo.replaced} layers replaced (${wo.skipped.length} skipped); SQNR ${fmt(s.db)} dB on ${inputs.length} inputs`,
        3,
      );
    }
    await a.release();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Speed: det latency ratio, and what each rewrite contributes
// ---------------------------------------------------------------------------------------------------------------

if (want('speed')) {
  if (det640.length === 0) det640 = [await detInput(101, 640, 640)];
  if (detPage.length === 0) detPage = [await detInput(101, PAGE.w, PAGE.h)];
  const calib = await Promise.all(Array.from({ length: 4 }, (_, i) => detInput(i + 1, 640, 640)));
  const variants: [string, Variant][] = [
    ['baseline (no rewrites)', BASELINE],
    ['+ bias correction', { ...BASELINE, biasCorrection: true }],
    ['+ affine into Conv (exact)', { ...BASELINE, biasCorrection: true, foldAffine: true }],
    ['+ affine absorption', { ...BASELINE, biasCorrection: true, foldAffine: true, absorbAffine: true }],
    ['+ ConvTranspose → Conv1x1 + D2S (all rewrites)', {}],
    ['all + first conv float', { firstConvFloat: true }],
    ['all + first conv float + Resize float', { firstConvFloat: true, floatOps: ['Resize'] }],
  ];
  const rounds640 = quick ? 9 : 31;
  const roundsPage = quick ? 5 : 11;
  const results: (string | number)[][] = [];
  for (const [name, rw] of variants) {
    // The reported det model (DET_REWRITES) is reused for its row.
    const q =
      name === 'all + first conv float' && detInt8
        ? { bytes: detInt8 }
        : await quantize(MODELS.det, calib, rw);
    const a = await latency(detFloat, q.bytes, det640[0]!, rounds640);
    const b = await latency(detFloat, q.bytes, detPage[0]!, roundsPage);
    log(`speed ${name}: 640 ${fmt(a.ratio, 3)} page ${fmt(b.ratio, 3)}`);
    results.push([
      name,
      fmt(a.float),
      fmt(a.int8),
      fmt(a.ratio, 3),
      fmt(a.minRatio, 3),
      fmt(b.float),
      fmt(b.int8),
      fmt(b.ratio, 3),
      fmt(b.minRatio, 3),
    ]);
    if (name.startsWith('all + first conv float') && !name.includes('Resize')) {
      report(
        'det 640x640 latency int8/float',
        a.ratio,
        '<= 0.45',
        a.ratio <= 0.45,
        `${fmt(a.int8)} / ${fmt(a.float)} ms (all rewrites + first conv float)`,
        3,
      );
      report(
        `det ${PAGE.w}x${PAGE.h} latency int8/float`,
        b.ratio,
        '<= 0.45',
        b.ratio <= 0.45,
        `${fmt(b.int8)} / ${fmt(b.float)} ms`,
        3,
      );
    }
  }
  console.log('\nPP-OCRv4 det latency (ms, median of alternating runs, 1 thread, level all)\n');
  console.log(
    table(
      [
        'variant',
        'float 640',
        'int8 640',
        'ratio 640',
        'ratio of mins',
        'float page',
        'int8 page',
        'ratio page',
        'ratio of mins',
      ],
      results,
    ),
  );
}

console.log('\nResults vs targets\n');
console.log(
  table(
    ['metric', 'value', 'target', 'met', 'notes'],
    rows.map((r) => [r.metric, r.value, r.target, r.ok, r.note]),
    ['l', 'r', 'l', 'l', 'l'],
  ),
);
log(`done; quantized models in ${OUT}`);
