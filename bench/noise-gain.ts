/**
 * Noise gain of real third-party models (src/eval/noise-gain.ts): how much each float model amplifies small
 * relative errors at the tensors W8A8 quantizes, and so what per-tensor SQNR its quantizers would need for the
 * issue's 30 dB output target, side by side with what the real int8 quantizers are worth on the same scale:
 *
 *   npx tsc -p tsconfig.json && node dist/bench/noise-gain.js [--only det,rec,cls,emb] [--level 40] [--target 30]
 *
 * Per model: W8A8 (ort-cpu: int8 per-channel weights, uint8 per-tensor activations, minmax; weights with
 * empirical bias correction), then for weights, activations and both: the float model's output SQNR with uniform
 * noise `--level` dB below every quantized tensor's RMS, the level needed for `--target` dB at the output (searched),
 * and the int8 quantizers' "effective" level (their measured output SQNR plus the gain), for the sim's QDQ export
 * and for the model quantizeModel writes (affine chains absorbed into the Q/DQ parameters, so fewer requantizations
 * and a higher SQNR). The shortfall (needed − effective of the written model) in dB, / 6.02, is about how many more
 * bits every quantizer would need. SQNR is measured on held-out
 * inputs at ONNX Runtime level 'basic' against the prepared float model (exact rewrites only).
 *
 * The openWakeWord melspectrogram is left out: its activations include a power spectrum that feeds a Log, and
 * additive noise makes small powers negative (NaN), which quantization on an unsigned grid never does; it meets the
 * target with mixed precision anyway (bench/mixed-precision.ts).
 *
 * Inputs: rendered with ImageMagick + DejaVu fonts (text pages and lines) and espeak-ng + sox (speech), as in
 * bench/ptq-real.ts (bench/assets).
 */
import { table } from '../src/cli/format.js';
import { measureNoiseGain, type NoiseGainEntry } from '../src/eval/noise-gain.js';
import { loadModel } from '../src/io/model-file.js';
import { defaultRunner } from '../src/ptq/autoquant.js';
import { quantizeModel } from '../src/quant/quantize.js';
import { type Feeds, Session } from '../src/runtime/session.js';
import { arg, want } from './assets/args.js';
import {
  clsInput,
  detInput,
  embeddingWindows,
  MODELS,
  melInput,
  recInput,
  Sqnr,
  speech,
} from './assets/inputs.js';
import { available, SENTENCES, VOICES } from './assets/render.js';

const levelDb = Number(arg('--level') ?? 40);
const targetDb = Number(arg('--target') ?? 30);

const tools = available();
if (!tools.images || !tools.speech) {
  console.log('missing tools: apt-get install -y imagemagick fonts-dejavu espeak-ng sox');
  process.exit(1);
}
const t0 = performance.now();
const log = (s: string) => console.log(`[${((performance.now() - t0) / 1000).toFixed(0)}s] ${s}`);
const fmt = (v: number | undefined, d = 1) =>
  v === undefined ? '' : Number.isFinite(v) ? v.toFixed(d) : v > 0 ? 'inf' : String(v);

interface Row {
  model: string;
  /** The sim's QDQ export (every quantizer as placed, level basic). */
  w8a8: number;
  /** The model quantizeModel writes (affine chains absorbed into Q/DQ parameters), ORT default level. */
  shipped: number;
  weights: NoiseGainEntry;
  activations: NoiseGainEntry;
  all: NoiseGainEntry;
}
const rows: Row[] = [];

async function run(name: string, file: string, calib: Feeds[], held: Feeds[]) {
  log(`${name}: W8A8 without and with bias correction`);
  // The prepared float model (exact rewrites only) is the reference and the model the noise goes into; bias
  // correction changes the biases of the second sim's model, so its activation-only run would be meaningless.
  const plain = await quantizeModel(loadModel(file), calib, defaultRunner, {});
  const bc = await quantizeModel(loadModel(file), calib, defaultRunner, { biasCorrection: 'empirical' });
  const common = {
    levelDb,
    targetDb,
    measureQuantized: true,
    maxSamples: held.length,
    onProgress: (done: number, total: number, what: string) => log(`${name}: ${done}/${total} ${what}`),
  };
  const a = await measureNoiseGain(bc.sim, held, {
    ...common,
    floatModel: plain.sim.model,
    sites: ['weights', 'all'],
  });
  const b = await measureNoiseGain(plain.sim, held, { ...common, sites: ['activations'] });
  const [weights, all] = a.entries;
  const [activations] = b.entries;
  const f = await Session.create(loadModel(file));
  const q = await Session.create(bc.model);
  const acc = new Sqnr();
  for (const x of held) {
    const k = f.outputNames[0]!;
    acc.add((await f.run(x))[k]!.data as Float32Array, (await q.run(x))[k]!.data as Float32Array);
  }
  await f.release();
  await q.release();
  rows.push({
    model: name,
    w8a8: all!.quantizedSqnrDb!,
    shipped: acc.db,
    weights: weights!,
    activations: activations!,
    all: all!,
  });
  log(
    `${name}: W8A8 ${fmt(all!.quantizedSqnrDb)} dB; gain ${fmt(all!.gainDb)} dB; needed ${fmt(all!.levelForTargetDb)} ` +
      `dB per tensor vs int8 worth ${fmt(all!.effectiveDb)} dB (${a.seconds.toFixed(0)} + ${b.seconds.toFixed(0)} s)`,
  );
}

if (want('cls')) {
  const calib = await Promise.all(Array.from({ length: 32 }, (_, i) => clsInput(i)));
  const held = await Promise.all(Array.from({ length: 16 }, (_, i) => clsInput(100 + i)));
  await run('PP-OCR cls', MODELS.cls, calib, held);
}
if (want('rec')) {
  const calib = await Promise.all(Array.from({ length: 24 }, (_, i) => recInput(i + 1)));
  const held = await Promise.all(Array.from({ length: 16 }, (_, i) => recInput(1001 + i)));
  await run('PP-OCRv4 rec', MODELS.rec, calib, held);
}
if (want('det')) {
  log('det: rendering inputs');
  const calib = await Promise.all(Array.from({ length: 8 }, (_, i) => detInput(i + 1, 640, 640)));
  const held = await Promise.all(Array.from({ length: 4 }, (_, i) => detInput(101 + i, 640, 640)));
  await run('PP-OCRv4 det 640', MODELS.det, calib, held);
}
if (want('emb')) {
  const clips = await Promise.all(SENTENCES.map((t, i) => speech(t, VOICES[i % VOICES.length])));
  const mel = await Session.create(MODELS.mel);
  const windows = async (idx: number[]) => {
    const out: Feeds[] = [];
    for (const i of idx) out.push(...embeddingWindows(Object.values(await mel.run(melInput(clips[i]!)))[0]!));
    return out;
  };
  const calib = (await windows(clips.map((_, i) => i).filter((i) => i % 2 === 0))).filter(
    (_, i) => i % 2 === 0,
  );
  const held = (await windows(clips.map((_, i) => i).filter((i) => i % 2 === 1))).filter(
    (_, i) => i % 3 === 0,
  );
  await mel.release();
  await run('oww embedding', MODELS.emb, calib, held);
}

console.log(
  `\nNoise gain at the W8A8 quantizer positions (uniform noise ${levelDb} dB below each tensor's RMS; output SQNR ` +
    `on held-out inputs, ORT level basic)\n`,
);
console.log(
  table(
    ['model', 'tensors w / a', `output dB @${levelDb}: w / a / all`, 'gain dB (all)', 'linearity dB'],
    rows.map((r) => [
      r.model,
      `${r.weights.tensors} / ${r.activations.tensors}`,
      `${fmt(r.weights.outputSqnrDb)} / ${fmt(r.activations.outputSqnrDb)} / ${fmt(r.all.outputSqnrDb)}`,
      fmt(r.all.gainDb),
      fmt(r.all.linearityDb),
    ]),
  ),
);
console.log(
  `\nPer-tensor SQNR needed for a ${targetDb} dB output vs what the int8 quantizers are worth (effective = their ` +
    "output SQNR + gain): the sim's QDQ export (every quantizer as placed) and the model quantizeModel writes " +
    '(affine chains absorbed: fewer requantizations); shortfall of the latter / 6.02 ≈ extra bits per quantizer\n',
);
console.log(
  table(
    [
      'model',
      'W8A8 dB: sim / written',
      `needed for ${targetDb} dB: w / a / all`,
      'int8 worth: w / a / all / written',
      'shortfall (written) dB',
      '≈ bits short',
    ],
    rows.map((r) => {
      const written = r.shipped + r.all.gainDb;
      const short = r.all.levelForTargetDb! - written;
      return [
        r.model,
        `${fmt(r.w8a8)} / ${fmt(r.shipped)}`,
        `${fmt(r.weights.levelForTargetDb)} / ${fmt(r.activations.levelForTargetDb)} / ${fmt(r.all.levelForTargetDb)}`,
        `${fmt(r.weights.effectiveDb)} / ${fmt(r.activations.effectiveDb)} / ${fmt(r.all.effectiveDb)} / ${fmt(written)}`,
        fmt(short),
        fmt(Math.max(0, short) / 6.02),
      ];
    }),
  ),
);
for (const r of rows) {
  console.log(
    `noise-gain: model="${r.model}" w8a8_db=${fmt(r.w8a8, 2)} written_db=${fmt(r.shipped, 2)} gain_db=${fmt(r.all.gainDb, 2)} ` +
      `needed_db=${fmt(r.all.levelForTargetDb, 2)} int8_effective_db=${fmt(r.all.effectiveDb, 2)}`,
  );
}
log('done');
