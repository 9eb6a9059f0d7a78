/**
 * Weight-only compression (src/quant/export/matmulnbits.ts exportWeightOnly, Conv side in weight-only.ts) of
 * PP-OCRv4 det and rec: file bytes, output SQNR against the float model on rendered inputs, agreement with our own
 * simulation, and latency.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/weight-only.js [--only det,rec] [--quick] [--rounds N]
 *
 * Every variant starts from the float model prepared as `qnnx quantize` prepares it (prepareModel: constants
 * folded, BatchNormalization and affine chains folded into the Convs, opset 21), except the "not prepared" row.
 * - bytes: the exported file over the float file as shipped;
 * - SQNR: output of the exported model against the float model, pooled over held-out inputs (det: 640x640 pages
 *   and one 1248x1760 page, its probability map; rec: rendered text lines, its CTC probabilities);
 * - sim: max |y - y_sim| / max |y_sim| between ONNX Runtime on the exported model and on the float model whose
 *   weights hold our dequantized values (weightOnlySimulation), on the first input;
 * - latency: onnxruntime-node, 1 intra-op thread, level 'all', exported and float sessions run alternately
 *   (which goes first alternates), ratio of medians; det at 640x640, rec on one line. Noisy on a shared machine.
 *   The float baseline is the prepared float model (the "not prepared" row: the float file as shipped).
 *   "folded": the exported model with `session.disable_quant_qdq = 1`, which lets ORT's constant folding turn the
 *   DequantizeLinear weights back into float initializers at load time.
 */
import { table } from '../src/cli/format.js';
import { loadModel, modelToBytes } from '../src/io/model-file.js';
import type { Model } from '../src/ir/model.js';
import {
  exportWeightOnly,
  type WeightOnlyOptions,
  weightOnlySimulation,
} from '../src/quant/export/matmulnbits.js';
import { correctWeightOnlyBias } from '../src/quant/export/weight-only.js';
import { prepareModel } from '../src/quant/quantize.js';
import { type Feeds, Session } from '../src/runtime/session.js';
import { detInput, MODELS, recInput, Sqnr } from './assets/inputs.js';
import { alternatingLatency } from './assets/latency.js';
import { available } from './assets/render.js';

const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const onlyArg = argv.find((a) => a.startsWith('--only'));
const only = onlyArg
  ? new Set((onlyArg.split('=')[1] ?? argv[argv.indexOf(onlyArg) + 1] ?? '').split(','))
  : undefined;
const roundsArg = argv.find((a) => a.startsWith('--rounds'));
const rounds = roundsArg
  ? Number(roundsArg.split('=')[1] ?? argv[argv.indexOf(roundsArg) + 1])
  : quick
    ? 5
    : 11;
const variantArg = argv.find((a) => a.startsWith('--variants'));
const variantFilter = variantArg
  ? new RegExp(variantArg.split('=')[1] ?? argv[argv.indexOf(variantArg) + 1]!)
  : undefined;

if (!available().images) {
  console.log(
    'missing tools: ImageMagick convert + fonts-dejavu (apt-get install -y imagemagick fonts-dejavu)',
  );
  process.exit(1);
}

const t0 = performance.now();
const log = (s: string) => console.error(`[${((performance.now() - t0) / 1000).toFixed(0)}s] ${s}`);
const fmt = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : v > 0 ? 'inf' : String(v));

interface Variant {
  format: string;
  options: WeightOnlyOptions;
  /** Skip prepareModel (BatchNorm stays a separate op, Constant nodes stay). */
  raw?: boolean;
  /** Only for models with MatMuls. */
  matmul?: boolean;
  /** Empirical bias correction (correctWeightOnlyBias) on the calibration inputs. */
  bc?: boolean;
}

const VARIANTS: Variant[] = [
  {
    format: 'MatMul only: MatMulNBits int4 b32 (before this change)',
    options: { ops: ['MatMul'] },
    matmul: true,
  },
  { format: 'int8 per channel (MatMul: MatMulNBits int8 b32)', options: { bits: 8 } },
  { format: 'int8 per channel + bias correction', options: { bits: 8 }, bc: true },
  { format: 'default: int4 per channel, dw int8, MatMul b32', options: {} },
  { format: 'int4 per channel, depthwise int8', options: { granularity: 'channel' } },
  { format: 'int4 per channel, depthwise int4', options: { granularity: 'channel', depthwiseBits: 4 } },
  { format: 'int4 per channel, mse ranges', options: { granularity: 'channel', range: 'mse' } },
  { format: 'int4 per channel, not prepared', options: { granularity: 'channel' }, raw: true },
  { format: 'int4 per channel + bias correction', options: { granularity: 'channel' }, bc: true },
  {
    format: 'int4 per channel, mse ranges + bias correction',
    options: { granularity: 'channel', range: 'mse' },
    bc: true,
  },
  {
    format: 'int4 per channel, dw int4 + bias correction',
    options: { granularity: 'channel', depthwiseBits: 4 },
    bc: true,
  },
  { format: 'int4 block 32', options: { granularity: 'block', blockSize: 32 } },
  {
    format: 'int4 block 32, fp16 scales',
    options: { granularity: 'block', blockSize: 32, scaleType: 'float16' },
  },
  { format: 'int4 block 32 + bias correction', options: { granularity: 'block', blockSize: 32 }, bc: true },
  { format: 'int4 block 64', options: { granularity: 'block', blockSize: 64 } },
  { format: 'int4 block 64 + bias correction', options: { granularity: 'block', blockSize: 64 }, bc: true },
  { format: 'int4 block 128', options: { granularity: 'block', blockSize: 128 } },
  { format: 'int4 block 128 + bias correction', options: { granularity: 'block', blockSize: 128 }, bc: true },
  {
    format: 'int4 per channel, MatMul blocked-dq',
    options: { granularity: 'channel', form: 'blocked-dq' },
    matmul: true,
  },
];

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

/** Per time step, the argmax class of rec's [1, T, C] output. */
function argmaxSteps(d: Float32Array, C: number): number[] {
  const out: number[] = [];
  for (let t = 0; t * C < d.length; t++) {
    let best = 0;
    for (let c = 1; c < C; c++) if (d[t * C + c]! > d[t * C + best]!) best = c;
    out.push(best);
  }
  return out;
}

/** CTC greedy decode: repeats collapsed, blanks (class 0) removed. */
function ctc(steps: number[]): string {
  const seq: number[] = [];
  let prev = -1;
  for (const s of steps) {
    if (s !== prev && s !== 0) seq.push(s);
    prev = s;
  }
  return seq.join(',');
}

/** Task-level agreement: det, mean and min text IoU; rec, lines decoded identically and time steps agreeing. */
function task(name: string, ref: Float32Array[], y: Float32Array[], C: number): string {
  if (name === 'det') {
    const ious = ref.map((r, i) => textIou(r, y[i]!));
    return `IoU ${(ious.reduce((a, b) => a + b, 0) / ious.length).toFixed(3)} (min ${Math.min(...ious).toFixed(3)})`;
  }
  let same = 0;
  let steps = 0;
  let agree = 0;
  for (let i = 0; i < ref.length; i++) {
    const a = argmaxSteps(ref[i]!, C);
    const b = argmaxSteps(y[i]!, C);
    if (ctc(a) === ctc(b)) same++;
    steps += a.length;
    for (let t = 0; t < a.length; t++) if (a[t] === b[t]) agree++;
  }
  return `text ${same}/${ref.length}, steps ${((100 * agree) / steps).toFixed(1)} %`;
}

function outputOf(r: Record<string, { data: unknown }>, s: Session): Float32Array {
  return r[s.outputNames[0]!]!.data as Float32Array;
}

async function outputs(s: Session, feeds: Feeds[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const f of feeds) out.push(outputOf(await s.run(f), s));
  return out;
}

function relErr(y: Float32Array, ref: Float32Array): number {
  let e = 0;
  let m = 0;
  for (let i = 0; i < y.length; i++) {
    e = Math.max(e, Math.abs(y[i]! - ref[i]!));
    m = Math.max(m, Math.abs(ref[i]!));
  }
  return e / m;
}

/** Median latency ratio (b / a) of alternating runs on the same feeds, after warm-up. */
async function latencyRatio(a: Session, b: Session, feeds: Feeds, n: number): Promise<number> {
  return (await alternatingLatency(a, b, feeds, n)).ratio;
}

/** Op counts of ONNX Runtime's optimized graph (level 'all'), read back from the file it writes. */
async function optimizedOps(
  bytes: Uint8Array,
  extra?: Record<string, string>,
): Promise<Record<string, number>> {
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qnnx-wo-'));
  const file = path.join(dir, 'opt.onnx');
  try {
    const s = await Session.create(bytes, { optimizedModelFilePath: file, extra });
    await s.release();
    const ops: Record<string, number> = {};
    for (const n of loadModel(file).graph.nodes) ops[n.opType] = (ops[n.opType] ?? 0) + 1;
    return ops;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const rows: string[][] = [];
const notes: string[] = [];

for (const [name, file] of [
  ['det', MODELS.det],
  ['rec', MODELS.rec],
] as const) {
  if (only && !only.has(name)) continue;
  log(`${name}: rendering inputs`);
  const held: Feeds[] =
    name === 'det'
      ? [
          ...(await Promise.all(
            Array.from({ length: quick ? 2 : 3 }, (_, i) => detInput(101 + i, 640, 640)),
          )),
          ...(quick ? [] : [await detInput(201, 1248, 1760)]),
        ]
      : await Promise.all(Array.from({ length: quick ? 6 : 16 }, (_, i) => recInput(1001 + i)));
  const calib: Feeds[] =
    name === 'det'
      ? await Promise.all(Array.from({ length: 4 }, (_, i) => detInput(1 + i, 640, 640)))
      : await Promise.all(Array.from({ length: 16 }, (_, i) => recInput(1 + i)));
  const floatBytes = modelToBytes(loadModel(file));
  const floatSession = await Session.create(floatBytes);
  const ref = await outputs(floatSession, held);
  log(`${name}: ${calib.length} calibration inputs (bias correction), ${held.length} held-out inputs`);
  const outDims = (await floatSession.run(held[0]!))[floatSession.outputNames[0]!]!.dims;
  const C = Number(outDims[outDims.length - 1]);
  const prepared = loadModel(file);
  prepareModel(prepared, 21);
  const hasMatMul = prepared.graph.nodes.some((n) => n.opType === 'MatMul');
  // Latency baseline: the prepared float model (the same graph without the DequantizeLinears; the affine folds
  // alone make it faster than the file as shipped).
  const preparedSession = await Session.create(prepared);
  for (const v of VARIANTS) {
    if (v.matmul && !hasMatMul) continue;
    if (variantFilter && !variantFilter.test(v.format)) continue;
    const source: Model = v.raw ? loadModel(file) : prepared;
    const t = performance.now();
    const r = exportWeightOnly(source, v.options);
    const bc = v.bc ? await correctWeightOnlyBias(source, r, calib, (m) => Session.create(m)) : undefined;
    const seconds = (performance.now() - t) / 1000;
    const bytes = modelToBytes(r.model);
    const q = await Session.create(bytes);
    const y = await outputs(q, held);
    const s = new Sqnr();
    for (let i = 0; i < y.length; i++) s.add(ref[i]!, y[i]!);
    // The simulation: dequantized weights in the float model, plus the bias shifts where they were corrected.
    const simModel = weightOnlySimulation(source, r, bc);
    const simSession = await Session.create(simModel);
    const ySim = outputOf(await simSession.run(held[0]!), simSession);
    await simSession.release();
    const base = v.raw ? floatSession : preparedSession;
    const lat = rounds > 0 ? await latencyRatio(base, q, held[0]!, rounds) : Number.NaN;
    // ORT keeps DequantizeLinear nodes out of constant folding unless QDQ handling is off: then the weights are
    // folded back to float initializers at load (same numbers, float speed, the file stays small).
    let latFolded = Number.NaN;
    if (rounds > 0) {
      const qf = await Session.create(bytes, { extra: { 'session.disable_quant_qdq': '1' } });
      const yf = outputOf(await qf.run(held[0]!), qf);
      if (relErr(yf, y[0]!) > 1e-3)
        notes.push(`${name} ${v.format}: folded run differs by ${relErr(yf, y[0]!)}`);
      latFolded = await latencyRatio(base, qf, held[0]!, rounds);
      await qf.release();
    }
    if (v.format === 'int4 per channel, depthwise int8' || v.format === 'int4 block 32, fp16 scales') {
      const ops = await optimizedOps(bytes);
      const folded = await optimizedOps(bytes, { 'session.disable_quant_qdq': '1' });
      const list = (o: Record<string, number>) =>
        Object.entries(o)
          .filter(([k]) => /Dequantize|Cast|Conv|MatMul/.test(k))
          .map(([k, c]) => `${c} ${k}`)
          .join(', ');
      notes.push(
        `${name} ${v.format}: exported ${r.model.graph.nodes.filter((n) => n.opType === 'DequantizeLinear').length} ` +
          `DequantizeLinear; ORT 'all' graph: ${list(ops)}; with session.disable_quant_qdq=1: ${list(folded)}`,
      );
    }
    await q.release();
    const byGran = new Map<string, number>();
    for (const l of r.layers) {
      const k = `${l.op === 'MatMul' ? 'MatMul' : 'conv'} int${l.bits} ${l.granularity}`;
      byGran.set(k, (byGran.get(k) ?? 0) + 1);
    }
    rows.push([
      name,
      v.format,
      (bytes.length / floatBytes.length).toFixed(3),
      fmt(s.db),
      fmt(s.worst),
      task(name, ref, y, C),
      relErr(y[0]!, ySim).toExponential(1),
      fmt(lat, 2),
      fmt(latFolded, 2),
    ]);
    log(
      `${name} ${v.format}: ${bytes.length} B (${(bytes.length / floatBytes.length).toFixed(3)}), SQNR ${fmt(s.db)} dB, ` +
        `${task(name, ref, y, C)}, latency x${fmt(lat, 2)} (folded x${fmt(latFolded, 2)}), export ${seconds.toFixed(1)} s; ${[...byGran].map(([k, c]) => `${c} ${k}`).join(', ')}` +
        (r.opsetUpgrade ? `; opset ${r.opsetUpgrade.from} -> ${r.opsetUpgrade.to}` : '') +
        (bc
          ? `; bias correction: ${bc.corrected} layers, ${bc.skipped.length} skipped, shift ${fmt(bc.relativeShift, 3)}`
          : ''),
    );
  }
  await floatSession.release();
  await preparedSession.release();
}

console.log(
  `\nWeight-only PP-OCRv4 (bytes: exported file / float file as shipped; SQNR of the output vs float, pooled and ` +
    `worst input; sim: ORT exported vs ORT on our dequantized weights, max abs err / max abs; latency: ` +
    `exported / float, 1 thread, median of ${rounds} alternating runs)\n`,
);
console.log(
  table(['model', 'format', 'bytes', 'SQNR dB', 'worst dB', 'task', 'sim', 'latency', 'folded'], rows, [
    'l',
    'l',
    'r',
    'r',
    'r',
    'l',
    'r',
    'r',
    'r',
  ]),
);
for (const n of notes) console.log(`\n${n}`);
