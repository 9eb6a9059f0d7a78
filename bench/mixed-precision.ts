/**
 * Automatic mixed precision (src/quant/mixed-precision.ts) on real third-party models, against the issue's
 * 30 dB W8A8 output SQNR target:
 *
 *   npx tsc -p tsconfig.json && node dist/bench/mixed-precision.js [--only det,rec,cls,mel,emb] [--quick]
 *        [--target 30] [--fallback float|int16] [--latency-weight 0] [--weights] [--top 8] [--no-latency]
 *        [--tolerance 0.02] [--max-fallbacks N]   (qnnx quantize --target-sqnr: --max-fallbacks 16)
 *
 * Per model: W8A8 (ort-cpu: int8 per-channel weights, uint8 per-tensor activations, minmax, empirical bias
 * correction), then mixedPrecision on the calibration inputs (selection), and the output SQNR of both models on
 * held-out inputs with ONNX Runtime at its default optimization level (integer kernels). The screening table lists
 * the groups whose fallback alone removes most of the output noise ("share": fraction of the W8A8 noise power
 * removed), which is the diagnosis of where the SQNR goes. For det 640x640 the int8/float latency ratio is
 * measured before and after (1 intra-op thread, level 'all', float and quantized runs alternating, medians).
 *
 * Inputs: rendered with ImageMagick + DejaVu fonts (text pages and lines) and espeak-ng + sox (speech), as in
 * bench/ptq-real.ts (bench/assets).
 */
import { table } from '../src/cli/format.js';
import { loadModel, modelToBytes } from '../src/io/model-file.js';
import type { Model } from '../src/ir/model.js';
import { eliminateDeadNodes } from '../src/ir/passes/index.js';
import { defaultRunner } from '../src/ptq/autoquant.js';
import { exportQdq } from '../src/quant/export/qdq.js';
import { type FallbackKind, mixedPrecision } from '../src/quant/mixed-precision.js';
import { quantizeModel } from '../src/quant/quantize.js';
import { compactQdq } from '../src/quant/rewrites/compact.js';
import type { QuantSim } from '../src/quant/sim/quantsim.js';
import { type Feeds, Session } from '../src/runtime/session.js';
import { arg, flag, want } from './assets/args.js';
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

const quick = flag('--quick');
const targetDb = Number(arg('--target') ?? 30);
const fallback = (arg('--fallback') ?? 'float') as FallbackKind;
const latencyWeight = Number(arg('--latency-weight') ?? 0);
const top = Number(arg('--top') ?? 8);
const measureLatency = !flag('--no-latency');
const withWeights = flag('--weights');

const tools = available();
if (!tools.images || !tools.speech) {
  console.log('missing tools: apt-get install -y imagemagick fonts-dejavu espeak-ng sox');
  process.exit(1);
}

const t0 = performance.now();
const log = (s: string) => console.log(`[${((performance.now() - t0) / 1000).toFixed(0)}s] ${s}`);
const fmt = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : v > 0 ? 'inf' : String(v));

/** The exported QDQ model with the byte-only cleanups quantizeModel applies (nothing numeric changes). */
function qdqModel(sim: QuantSim): Model {
  const m = exportQdq(sim).model;
  eliminateDeadNodes(m);
  compactQdq(m);
  return m;
}

async function sqnr(floatBytes: Uint8Array, q: Model, samples: Feeds[]): Promise<Sqnr> {
  const a = await Session.create(floatBytes);
  const b = await Session.create(modelToBytes(q));
  const s = new Sqnr();
  const k = a.outputNames[0]!;
  for (const f of samples) {
    s.add((await a.run(f))[k]!.data as Float32Array, (await b.run(f))[k]!.data as Float32Array);
  }
  await a.release();
  await b.release();
  return s;
}

/** Median latencies of alternating runs of a float and two quantized models on one input (ratios to float). */
async function latency(fModel: Uint8Array, qModels: Uint8Array[], feeds: Feeds, rounds: number) {
  const sessions = [
    await Session.create(fModel, { intraOpNumThreads: 1 }),
    ...(await Promise.all(qModels.map((m) => Session.create(m, { intraOpNumThreads: 1 })))),
  ];
  for (let i = 0; i < 2; i++) for (const s of sessions) await s.run(feeds);
  const times = sessions.map(() => [] as number[]);
  for (let r = 0; r < rounds; r++) {
    const order = sessions.map((_, i) => i);
    if (r % 2) order.reverse();
    for (const i of order) {
      const t = performance.now();
      await sessions[i]!.run(feeds);
      times[i]!.push(performance.now() - t);
    }
  }
  for (const s of sessions) await s.release();
  const med = (x: number[]) => [...x].sort((p, q) => p - q)[x.length >> 1]!;
  const ms = times.map(med);
  return { ms, ratios: ms.slice(1).map((v) => v / ms[0]!) };
}

interface Summary {
  model: string;
  w8a8: number;
  mixed: number;
  selectDb: number;
  met: boolean;
  fallbacks: number;
  activations: number;
  cost: number;
  runs: number;
  seconds: number;
  latency?: string;
  picks: string;
}
const summaries: Summary[] = [];

async function run(
  name: string,
  file: string,
  calib: Feeds[],
  held: Feeds[],
  selectSamples: number,
  screenSamples: number,
  extra?: (before: Model, after: Model) => Promise<string>,
) {
  log(`${name}: quantizing (W8A8, empirical bias correction)`);
  const floatBytes = modelToBytes(loadModel(file));
  const { sim } = await quantizeModel(loadModel(file), calib, defaultRunner, {
    biasCorrection: 'empirical',
  });
  const before = qdqModel(sim);
  const s0 = await sqnr(floatBytes, before, held);
  log(`${name}: W8A8 held-out SQNR ${fmt(s0.db)} dB; mixed precision (${fallback}, target ${targetDb} dB)`);
  let last = 0;
  // The reference is the original float model: bias correction changed sim.model's biases in place.
  const r = await mixedPrecision(sim, loadModel(file), calib.slice(0, selectSamples), {
    targetSqnrDb: targetDb,
    fallback,
    maxSamples: selectSamples,
    screenSamples,
    weights: withWeights,
    latencyWeight,
    ...(arg('--tolerance') ? { tolerance: Number(arg('--tolerance')) } : {}),
    ...(arg('--max-fallbacks') ? { maxFallbacks: Number(arg('--max-fallbacks')) } : {}),
    onProgress: (e) => {
      if (e.phase === 'pick' || e.phase === 'baseline' || performance.now() - last > 30000) {
        last = performance.now();
        log(
          `${name}: ${e.phase} ${e.done ?? ''}${e.total ? `/${e.total}` : ''} ${e.group ?? ''} ` +
            `${e.sqnrDb === undefined ? '' : `${fmt(e.sqnrDb)} dB`} (${e.runs} runs)`,
        );
      }
    },
  });
  const after = qdqModel(sim);
  const s1 = await sqnr(floatBytes, after, held);
  const lat = extra ? await extra(before, after) : undefined;
  const baseNoise = 10 ** (-r.baselineSqnrDb / 10);
  console.log(
    `\n${name}: screening, groups by share of the W8A8 output noise removed when falling back alone ` +
      `(selection samples: baseline ${fmt(r.baselineSqnrDb)} dB; ${r.candidates} groups)\n`,
  );
  const q = (t: string) => sim.quantizers.get(t);
  console.log(
    table(
      ['group (tensor)', 'layer it feeds', 'float alone dB', 'only quantized dB', 'harm share', 'MAC share'],
      r.screening
        .slice(0, top)
        .map((s) => [
          s.group.length > 48 ? `…${s.group.slice(-47)}` : s.group,
          s.layer.length > 44 ? `…${s.layer.slice(-43)}` : s.layer,
          fmt(s.sqnrDb),
          fmt(s.onlySqnrDb),
          fmt(s.harm / baseNoise, 3),
          fmt(s.cost, 4),
        ]),
    ),
  );
  const shares = r.screening.map((s) => s.harm / baseNoise);
  const kept = r.trajectory.filter((t) => !t.rejected);
  console.log(
    `${name}: groups with harm >= 5% of the W8A8 noise: ${shares.filter((x) => x >= 0.05).length}; ` +
      `top-5 harm shares sum ${fmt(
        shares.slice(0, 5).reduce((a, b) => a + b, 0),
        2,
      )}; trajectory ${kept.map((t) => fmt(t.sqnrDb)).join(' → ')} (${r.rejected.length} rejected); ` +
      `pruned ${r.pruned.length}; picks ${r.picks.map((p) => `${p.name}[${q(p.name)?.kind}]`).join(', ')}`,
  );
  summaries.push({
    model: name,
    w8a8: s0.db,
    mixed: s1.db,
    selectDb: r.sqnrDb,
    met: r.met,
    fallbacks: r.picks.length,
    activations: r.activationQuantizers,
    cost: r.cost,
    runs: r.runs,
    seconds: r.seconds,
    latency: lat,
    picks: r.picks.map((p) => p.name).join(', '),
  });
  console.log(
    `SUMMARY ${name}: W8A8 ${fmt(s0.db)} dB -> mixed ${fmt(s1.db)} dB (held-out; selection ${fmt(r.sqnrDb)} dB, ` +
      `met ${r.met}), ${r.picks.length}/${r.activationQuantizers} activation quantizers ${fallback}, ` +
      `MAC share ${fmt(100 * r.cost, 1)}%, ${r.runs} runs in ${fmt(r.seconds, 0)} s${lat ? `, ${lat}` : ''}`,
  );
}

if (want('cls')) {
  const calib = await Promise.all(Array.from({ length: quick ? 16 : 32 }, (_, i) => clsInput(i)));
  const held = await Promise.all(Array.from({ length: 16 }, (_, i) => clsInput(100 + i)));
  await run('cls', MODELS.cls, calib, held, quick ? 16 : 32, 8);
}

if (want('rec')) {
  const calib = await Promise.all(Array.from({ length: quick ? 12 : 24 }, (_, i) => recInput(i + 1)));
  const held = await Promise.all(Array.from({ length: quick ? 8 : 16 }, (_, i) => recInput(1001 + i)));
  await run('rec', MODELS.rec, calib, held, quick ? 6 : 12, 3);
}

if (want('det')) {
  log('det: rendering inputs');
  const calib = await Promise.all(Array.from({ length: quick ? 4 : 8 }, (_, i) => detInput(i + 1, 640, 640)));
  const held = await Promise.all(
    Array.from({ length: quick ? 2 : 4 }, (_, i) => detInput(101 + i, 640, 640)),
  );
  await run('det 640x640', MODELS.det, calib, held, quick ? 2 : 4, 1, async (before, after) => {
    if (!measureLatency) return '';
    const l = await latency(
      modelToBytes(loadModel(MODELS.det)),
      [modelToBytes(before), modelToBytes(after)],
      held[0]!,
      quick ? 9 : 21,
    );
    return (
      `latency int8/float ${fmt(l.ratios[0]!, 3)} before, ${fmt(l.ratios[1]!, 3)} after ` +
      `(${fmt(l.ms[1]!)} / ${fmt(l.ms[2]!)} / float ${fmt(l.ms[0]!)} ms)`
    );
  });
}

if (want('mel') || want('emb')) {
  const clips = await Promise.all(SENTENCES.map((t, i) => speech(t, VOICES[i % VOICES.length])));
  const calibIdx = clips.map((_, i) => i).filter((i) => i % 2 === 0);
  const heldIdx = clips.map((_, i) => i).filter((i) => i % 2 === 1);
  if (want('mel')) {
    await run(
      'oww mel',
      MODELS.mel,
      calibIdx.map((i) => melInput(clips[i]!)),
      heldIdx.map((i) => melInput(clips[i]!)),
      quick ? 3 : 6,
      quick ? 2 : 3,
    );
  }
  if (want('emb')) {
    const mel = await Session.create(MODELS.mel);
    const windows = async (idx: number[]) => {
      const out: Feeds[] = [];
      for (const i of idx)
        out.push(...embeddingWindows(Object.values(await mel.run(melInput(clips[i]!)))[0]!));
      return out;
    };
    const calib = (await windows(calibIdx)).filter((_, i) => i % 2 === 0);
    const held = (await windows(heldIdx)).filter((_, i) => i % 3 === 0);
    await run('oww embedding', MODELS.emb, calib, held, quick ? 16 : 32, quick ? 8 : 16);
  }
}

console.log(
  `\nMixed precision (${fallback} fallback, target ${targetDb} dB, latency weight ${latencyWeight}); SQNR on ` +
    'held-out inputs, ONNX Runtime default level\n',
);
console.log(
  table(
    [
      'model',
      'W8A8 dB',
      'mixed dB',
      'selection dB',
      'met',
      'fallbacks / act. quantizers',
      'MAC share',
      'runs',
      's',
    ],
    summaries.map((s) => [
      s.model,
      fmt(s.w8a8),
      fmt(s.mixed),
      fmt(s.selectDb),
      s.met ? 'yes' : 'no',
      `${s.fallbacks} / ${s.activations}`,
      `${fmt(100 * s.cost, 1)}%`,
      String(s.runs),
      fmt(s.seconds, 0),
    ]),
  ),
);
for (const s of summaries) if (s.latency) console.log(`${s.model}: ${s.latency}`);
log('done');
