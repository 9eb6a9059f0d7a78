/**
 * Codec benchmark: decode + encode of a generated model of at least 1 GiB with external data, against the raw
 * disk read/write throughput measured in the same run, and the peak RSS of the decode+encode process.
 *
 *   npm run bench:codec [-- --gib 1.0]
 *
 * Each phase runs in its own child process so its peak RSS is its own. Targets (issue 2): codec throughput at
 * least half the raw throughput, peak RSS at most 1.3x the model size.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { table } from '../src/cli/format.js';
import { loadModel, saveModel } from '../src/io/model-file.js';
import { GraphBuilder, valueInfo } from '../src/ir/builder.js';
import { Model } from '../src/ir/model.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType } from '../src/onnx/dtype.js';

const self = fileURLToPath(import.meta.url);
const CHUNK = 16 * 2 ** 20;

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/** Writes a model whose initializers (16 MiB each) live in external data: `count` tensors. */
function generate(dir: string, count: number): string {
  const model = new Model();
  model.irVersion = 10;
  model.opsetImports = [{ domain: '', version: 17 }];
  model.producerName = 'qnnx bench/codec.ts';
  const g = model.graph;
  g.name = 'bench';
  g.inputs.push(valueInfo('x', DataType.FLOAT, [CHUNK / 4]));
  const b = new GraphBuilder(g);
  let cur = 'x';
  const data = new Float32Array(CHUNK / 4);
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(i) * 0.01;
  for (let i = 0; i < count; i++) {
    const name = `w${i}`;
    data[0] = i; // distinct tensors
    const t = new Tensor(name, DataType.FLOAT, [CHUNK / 4], data.slice());
    g.addInitializer(t);
    cur = b.op('Add', [cur, name]);
  }
  g.outputs.push(valueInfo(cur, DataType.FLOAT, [CHUNK / 4]));
  const file = path.join(dir, 'big.onnx');
  saveModel(model, file, { externalData: true });
  return file;
}

function rawRead(file: string): number {
  const fd = fs.openSync(file, 'r');
  const size = fs.fstatSync(fd).size;
  const buf = Buffer.allocUnsafe(size);
  const t0 = performance.now();
  let off = 0;
  while (off < size) off += fs.readSync(fd, buf, off, Math.min(CHUNK * 4, size - off), off);
  const s = (performance.now() - t0) / 1000;
  fs.closeSync(fd);
  return size / s;
}

function rawWrite(file: string, size: number): number {
  const buf = Buffer.alloc(size, 7);
  const t0 = performance.now();
  const fd = fs.openSync(file, 'w');
  let off = 0;
  while (off < size) off += fs.writeSync(fd, buf, off, Math.min(CHUNK * 4, size - off), off);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  return size / ((performance.now() - t0) / 1000);
}

function codec(file: string, out: string): { decode: number; encode: number } {
  const t0 = performance.now();
  const m = loadModel(file);
  const t1 = performance.now();
  saveModel(m, out, { externalData: true });
  const t2 = performance.now();
  return { decode: (t1 - t0) / 1000, encode: (t2 - t1) / 1000 };
}

function dropCaches(): boolean {
  try {
    execFileSync('sync');
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

function child(args: string[]): Record<string, number> {
  const out = execFileSync(process.execPath, [self, '--child', ...args], {
    encoding: 'utf8',
    maxBuffer: 1 << 20,
  });
  return JSON.parse(out.trim().split('\n').pop()!);
}

function maxRssBytes(): number {
  return process.resourceUsage().maxRSS * 1024;
}

if (process.argv.includes('--child')) {
  const mode = arg('--child', '');
  const file = arg('--file', '');
  let result: Record<string, number>;
  if (mode === 'read') result = { bps: rawRead(file), rss: maxRssBytes() };
  else if (mode === 'write') result = { bps: rawWrite(file, Number(arg('--size', '0'))), rss: maxRssBytes() };
  else {
    const r = codec(file, arg('--out', ''));
    result = { ...r, rss: maxRssBytes() };
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
} else {
  const gib = Number(arg('--gib', '1'));
  const count = Math.ceil((gib * 2 ** 30) / CHUNK);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qnnx-bench-codec-'));
  try {
    process.stderr.write(`generating ${count} x 16 MiB tensors in ${dir} ...\n`);
    const file = generate(dir, count);
    const dataFile = `${file}.data`;
    const size = fs.statSync(dataFile).size;
    // Alternate raw and codec runs (3 rounds) and keep the best of each: a write right after a large delete or
    // a cache drop can take twice as long on this virtual disk, so single runs are too noisy to compare.
    const rawOut = path.join(dir, 'raw-write.bin');
    let cold = true;
    let read = { bps: 0, rss: 0 };
    let write = { bps: 0, rss: 0 };
    let c = { decode: Number.POSITIVE_INFINITY, encode: Number.POSITIVE_INFINITY, rss: 0 };
    for (let round = 0; round < 3; round++) {
      cold = dropCaches() && cold;
      const r = child(['read', '--file', dataFile]);
      if (r.bps > read.bps) read = { bps: r.bps, rss: r.rss };
      const w = child(['write', '--file', rawOut, '--size', String(size)]);
      fs.rmSync(rawOut);
      if (w.bps > write.bps) write = { bps: w.bps, rss: w.rss };
      dropCaches();
      const k = child(['codec', '--file', file, '--out', path.join(dir, 'out.onnx')]);
      c = {
        decode: Math.min(c.decode, k.decode),
        encode: Math.min(c.encode, k.encode),
        rss: Math.max(c.rss, k.rss),
      };
      fs.rmSync(path.join(dir, 'out.onnx'));
      fs.rmSync(path.join(dir, 'out.onnx.data'));
    }
    const decodeBps = size / c.decode;
    const encodeBps = size / c.encode;
    const mb = (bps: number) => (bps / 2 ** 20).toFixed(0);
    const rows = [
      ['read (decode)', mb(read.bps), mb(decodeBps), (decodeBps / read.bps).toFixed(2), '>= 0.50'],
      ['write (encode)', mb(write.bps), mb(encodeBps), (encodeBps / write.bps).toFixed(2), '>= 0.50'],
    ];
    const model = (size / 2 ** 30).toFixed(2);
    console.log(
      `\nmodel: ${count} tensors, ${model} GiB external data; best of 3 alternating rounds, page cache ${cold ? 'dropped before each read' : 'warm (could not drop)'}`,
    );
    console.log(table(['phase', 'raw MiB/s', 'qnnx MiB/s', 'ratio', 'target'], rows));
    console.log(
      `\npeak RSS of decode+encode: ${(c.rss / 2 ** 30).toFixed(2)} GiB = ${(c.rss / size).toFixed(2)}x model size (target <= 1.30)`,
    );
    console.log(
      `codec: decode_s=${c.decode.toFixed(2)} encode_s=${c.encode.toFixed(2)} read_ratio=${(decodeBps / read.bps).toFixed(2)} write_ratio=${(encodeBps / write.bps).toFixed(2)} rss_ratio=${(c.rss / size).toFixed(2)}`,
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
