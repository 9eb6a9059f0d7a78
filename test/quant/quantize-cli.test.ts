/**
 * `qnnx quantize` as a user runs it: `node dist/src/cli/main.js quantize ...` in a child process. Success prints
 * the summary table (or one JSON object with --json) and writes the model; every refused input exits with 1 or 2,
 * prints exactly one line on stderr that names the sample, file or node concerned, shows no stack trace, and
 * leaves no output file and no temporary file behind.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { encodeNpy } from '../../src/data/index.js';
import { saveModel } from '../../src/io/model-file.js';
import { GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import type { HostTensor } from '../../src/tensor.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const MODEL = path.join(ROOT, 'examples', 'fashion-mnist', 'model.onnx');
const CALIB = path.join(ROOT, 'examples', 'fashion-mnist', 'calib');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qnnx-quantize-cli-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
/** Inputs made by the tests live here; outputs go to a fresh, otherwise empty directory per run. */
const inputs = path.join(tmp, 'inputs');
fs.mkdirSync(inputs);

let runs = 0;
function quantize(args: string[]): {
  status: number | null;
  stdout: string;
  stderr: string;
  out: string;
  dir: string;
} {
  const dir = path.join(tmp, `out${runs++}`);
  fs.mkdirSync(dir);
  const out = path.join(dir, 'model.q.onnx');
  const r = spawnSync(process.execPath, [CLI, 'quantize', ...args, '-o', out], {
    encoding: 'utf8',
    cwd: ROOT,
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, out, dir };
}

function npyDir(name: string, samples: HostTensor[]): string {
  const dir = path.join(inputs, name);
  fs.mkdirSync(dir);
  samples.forEach((t, i) => {
    fs.writeFileSync(path.join(dir, `${String(i).padStart(4, '0')}.npy`), encodeNpy(t));
  });
  return dir;
}

function floatSample(fill: (x: Float32Array) => void = () => {}): HostTensor {
  const data = new Float32Array(784);
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(i) * 0.8;
  fill(data);
  return { dtype: DataType.FLOAT, dims: [1, 1, 28, 28], data };
}

/** A float model of a single op (no Conv/Gemm/MatMul): nothing to quantize for ort-cpu. */
function singleOpModel(op: string): string {
  const model = new Model();
  model.opsetImports = [{ domain: '', version: 13 }];
  const g = model.graph;
  g.name = `only-${op}`;
  g.inputs.push(valueInfo('input', DataType.FLOAT, ['N', 1, 28, 28]));
  new GraphBuilder(g).node(op, ['input'], { outputs: ['y'], name: `${op.toLowerCase()}_0` });
  g.outputs.push(valueInfo('y', DataType.FLOAT, ['N', 1, 28, 28]));
  const file = path.join(inputs, `only-${op.toLowerCase()}.onnx`);
  saveModel(model, file);
  return file;
}

/** The refusal contract: exit 1/2, one stderr line naming `mentions`, no stack, no output, no temp file. */
function assertRefused(r: ReturnType<typeof quantize>, mentions: RegExp, code?: 1 | 2): void {
  const lines = r.stderr.split('\n').filter((l) => l.length > 0);
  assert.ok(r.status === 1 || r.status === 2, `exit ${r.status}; stderr: ${r.stderr}`);
  if (code !== undefined) assert.equal(r.status, code, r.stderr);
  assert.equal(lines.length, 1, `exactly one stderr line, got:\n${r.stderr}`);
  assert.match(lines[0], /^qnnx: error E_[A-Z_]+: /, lines[0]);
  assert.doesNotMatch(r.stderr, /^\s+at .+:\d+:\d+\)?$/m, 'no stack trace');
  assert.doesNotMatch(r.stderr, /internal error/);
  assert.match(lines[0], mentions);
  assert.equal(r.stdout, '', 'nothing on stdout');
  assert.ok(!fs.existsSync(r.out), 'no output file');
  assert.deepEqual(fs.readdirSync(r.dir), [], 'no temporary files left in the output directory');
}

describe('qnnx quantize: success', () => {
  test('prints the summary table and writes the quantized model', () => {
    const r = quantize([MODEL, '--calib', CALIB, '--samples', '16']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^preset \/ target +w8a8 \/ ort-cpu$/m);
    // 16 samples of 3 KiB: one run of 16 (--calib-batch auto)
    assert.match(r.stdout, /^calibration +16 samples, minmax, [\d.]+ s \(reduce, batch 16 \(auto\)\)$/m);
    assert.match(r.stdout, /^quantizers +4 weights, 4 biases, 5 activations \(\+3 shared\), 0 constants$/m);
    assert.match(r.stdout, /^size +[\d.]+ KiB -> [\d.]+ KiB \(2\d\.\d%\)$/m);
    assert.match(r.stdout, /^opset +13 -> 13$/m);
    // the written model against the float file, on the first 8 calibration samples
    const db = Number(/^output SQNR +([\d.]+) dB on 8 calibration samples$/m.exec(r.stdout)?.[1]);
    assert.ok(db > 30 && db < 60, r.stdout);
    assert.ok(fs.existsSync(r.out));
    assert.deepEqual(fs.readdirSync(r.dir), ['model.q.onnx'], 'only the output file');
    assert.ok(fs.statSync(r.out).size < 0.3 * fs.statSync(MODEL).size);
  });

  test('--json prints one JSON object', () => {
    const r = quantize([MODEL, '--calib', CALIB, '--samples', '16', '--range', 'percentile:99.99', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.split('\n').filter((l) => l.length > 0);
    assert.equal(lines.length, 1, r.stdout);
    const j = JSON.parse(lines[0]);
    assert.equal(j.output, r.out);
    assert.equal(j.input, MODEL);
    assert.equal(j.preset, 'w8a8');
    assert.equal(j.target, 'ort-cpu');
    assert.equal(j.range, 'percentile:99.99');
    assert.deepEqual(j.calibration.samples, 16);
    assert.equal(j.calibration.mode, 'taps');
    assert.equal(j.quantizers.weights, 4);
    assert.equal(j.bytesAfter, fs.statSync(r.out).size);
    assert.ok(j.bytesAfter < 0.3 * j.bytesBefore);
    assert.equal(j.sqnr.samples, 8);
    assert.ok(j.sqnr.outputs.logits > 25, JSON.stringify(j.sqnr));
    assert.equal(j.noiseGain, undefined);
    assert.deepEqual(fs.readdirSync(r.dir), ['model.q.onnx']);
  });
});

describe('qnnx quantize --first-conv-float', () => {
  test('the Conv reading the 1-channel image stays float, and the summary says so', () => {
    const r = quantize([MODEL, '--calib', CALIB, '--samples', '16', '--first-conv-float', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.quantizers.weights, 3);
    assert.deepEqual(j.skipped, [
      { node: '/features/features.0/Conv', opType: 'Conv', reason: 'first conv left float (firstConvFloat)' },
    ]);
    assert.ok(j.sqnr.outputs.logits > 30, JSON.stringify(j.sqnr));
  });
});

describe('qnnx quantize --noise-gain', () => {
  test('reports the gain, the per-quantizer SQNR a 30 dB output needs, and what the quantizers are worth', () => {
    const r = quantize([MODEL, '--calib', CALIB, '--samples', '32', '--noise-gain', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    const g = j.noiseGain;
    assert.equal(g.levelDb, 40);
    assert.equal(g.targetDb, 30);
    assert.equal(g.samples, 8);
    assert.equal(g.outputName, 'logits');
    assert.deepEqual(
      g.entries.map((e: { site: string; tensors: number }) => [e.site, e.tensors]),
      [
        ['weights', 4],
        ['activations', 5],
        ['all', 9],
      ],
    );
    // a small CNN: a few dB of gain, so int8 (worth ~45 dB here) clears 30 dB with room to spare
    assert.ok(g.gainDb > 0 && g.gainDb < 15, `gain ${g.gainDb}`);
    assert.ok(Math.abs(g.gainDb - (40 - g.outputSqnrDb)) < 1e-9);
    assert.ok(g.neededDb.all > 30 && g.neededDb.all < 45, JSON.stringify(g.neededDb));
    assert.ok(Math.abs(g.worthDb - (j.sqnr.outputs.logits + g.gainDb)) < 1e-9);
    assert.ok(g.worthDb > g.neededDb.all, `worth ${g.worthDb} vs needed ${g.neededDb.all}`);
  });

  test('with bias correction the float model comes from a plain run: the same gain as without', () => {
    const plain = JSON.parse(
      quantize([MODEL, '--calib', CALIB, '--samples', '32', '--noise-gain', '--json']).stdout,
    );
    const r = quantize([MODEL, '--calib', CALIB, '--samples', '32', '--noise-gain', '--bias-correction']);
    assert.equal(r.status, 0, r.stderr);
    const gain = Number(/^noise gain +([\d.]+) dB/m.exec(r.stdout)?.[1]);
    assert.ok(Math.abs(gain - plain.noiseGain.gainDb) < 0.051, `${gain} vs ${plain.noiseGain.gainDb}`);
    assert.match(
      r.stdout,
      /^needed for 30 dB +[\d.]+ dB per weight, [\d.]+ dB per activation, [\d.]+ dB for all; these quantizers are worth [\d.]+ dB$/m,
    );
  });
});

describe('qnnx quantize --calib-batch', () => {
  test('batches of 16 samples per run write the same model as one sample per run', () => {
    const one = quantize([MODEL, '--calib', CALIB, '--samples', '40', '--calib-batch', '1', '--json']);
    const auto = quantize([MODEL, '--calib', CALIB, '--samples', '40', '--json']);
    assert.deepEqual(JSON.parse(auto.stdout).calibration.batch, { batchSize: 16, auto: true });
    assert.ok(
      Buffer.compare(fs.readFileSync(one.out), fs.readFileSync(auto.out)) === 0,
      'auto: identical file',
    );
    const many = quantize([MODEL, '--calib', CALIB, '--samples', '40', '--calib-batch', '16', '--json']);
    assert.equal(many.status, 0, many.stderr);
    assert.deepEqual(JSON.parse(many.stdout).calibration.batch, { batchSize: 16 });
    assert.equal(JSON.parse(many.stdout).calibration.samples, 40);
    assert.ok(Buffer.compare(fs.readFileSync(one.out), fs.readFileSync(many.out)) === 0, 'identical files');
  });

  test('a batch size that is not a positive integer is refused', () => {
    assertRefused(quantize([MODEL, '--calib', CALIB, '--calib-batch', '0']), /--calib-batch.*'0'/, 2);
    assertRefused(quantize([MODEL, '--calib', CALIB, '--calib-batch', 'many']), /--calib-batch.*'many'/, 2);
  });
});

describe('qnnx quantize --target-sqnr (mixed precision)', () => {
  test('falls back the fewest activations to reach the target, and says so', () => {
    const r = quantize([MODEL, '--calib', CALIB, '--samples', '32', '--target-sqnr', '42', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const m = JSON.parse(r.stdout).mixedPrecision;
    assert.equal(m.fallback, 'float');
    assert.ok(m.baselineSqnrDb < 42, `baseline ${m.baselineSqnrDb}`);
    assert.equal(m.met, true);
    assert.ok(m.sqnrDb >= 42 && m.picks.length >= 1 && m.picks.length <= 16, JSON.stringify(m.picks));
    assert.ok(fs.statSync(r.out).size < 0.3 * fs.statSync(MODEL).size);
  });

  test('an unknown fallback kind is refused', () => {
    assertRefused(
      quantize([MODEL, '--calib', CALIB, '--target-sqnr', '40', '--fallback', 'fp8']),
      /--fallback.*'fp8'/,
      2,
    );
  });
});

describe('qnnx quantize --weight-only', () => {
  test('int4 per channel with bias correction from --calib: every layer replaced, under 0.15x the bytes', () => {
    const r = quantize([
      MODEL,
      '--weight-only',
      '--granularity',
      'channel',
      '--calib',
      CALIB,
      '--samples',
      '32',
      '--json',
    ]);
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.preset, 'weight-only-int4');
    assert.equal(j.granularity, 'channel');
    assert.deepEqual(j.opset, { before: 13, after: 21 });
    assert.equal(j.replaced, 4, 'two Convs and two Gemms');
    assert.equal(j.biasCorrection.corrected, 4);
    assert.equal(j.bytesAfter, fs.statSync(r.out).size);
    assert.ok(j.bytesAfter < 0.15 * j.bytesBefore, `${j.bytesAfter} / ${j.bytesBefore}`);
  });

  test('a granularity it cannot use is refused', () => {
    assertRefused(
      quantize([MODEL, '--weight-only', '--granularity', 'vector:16']),
      /channel or block:N.*vector:16/,
      2,
    );
  });
});

describe('qnnx quantize: refused inputs', () => {
  test('calibration data of the wrong shape ([1,3,28,28])', () => {
    const data = new Float32Array(3 * 784);
    const dir = npyDir('shape', [{ dtype: DataType.FLOAT, dims: [1, 3, 28, 28], data }]);
    const r = quantize([MODEL, '--calib', dir]);
    assertRefused(r, /0000\.npy|sample 0\b/);
    assert.match(r.stderr, /\[1, 3, 28, 28\]/);
  });

  test('calibration data of the wrong dtype (int32)', () => {
    const dir = npyDir('dtype', [{ dtype: DataType.INT32, dims: [1, 1, 28, 28], data: new Int32Array(784) }]);
    const r = quantize([MODEL, '--calib', dir]);
    assertRefused(r, /0000\.npy|sample 0\b/);
    assert.match(r.stderr, /int32/);
  });

  test('a NaN in a sample', () => {
    const dir = npyDir('nan', [floatSample(), floatSample(), floatSample((x) => (x[88] = Number.NaN))]);
    assertRefused(quantize([MODEL, '--calib', dir]), /0002\.npy|sample 2\b/, 1);
  });

  test('an Infinity in a sample', () => {
    const dir = npyDir('inf', [floatSample((x) => (x[5] = Number.POSITIVE_INFINITY)), floatSample()]);
    const r = quantize([MODEL, '--calib', dir]);
    assertRefused(r, /0000\.npy|sample 0\b/, 1);
    assert.match(r.stderr, /Infinity/);
  });

  test('an empty calibration folder', () => {
    const dir = path.join(inputs, 'empty');
    fs.mkdirSync(dir);
    assertRefused(quantize([MODEL, '--calib', dir]), /empty/, 1);
  });

  for (const op of ['Tanh', 'Identity']) {
    test(`a model with no quantizable ops (only ${op})`, () => {
      const file = singleOpModel(op);
      assertRefused(
        quantize([file, '--calib', CALIB, '--samples', '4']),
        new RegExp(`only-${op.toLowerCase()}\\.onnx`),
      );
    });
  }

  test('a model with no quantizable ops is refused cleanly (exit 2, one line)', () => {
    const file = singleOpModel('Softsign');
    assertRefused(quantize([file, '--calib', CALIB, '--samples', '4']), /no quantizable ops/, 2);
  });

  test('an unknown preset', () => {
    assertRefused(quantize([MODEL, '--calib', CALIB, '--preset', 'w3a5']), /'w3a5'/, 2);
  });

  test('an unknown target', () => {
    assertRefused(quantize([MODEL, '--calib', CALIB, '--target', 'tpu-v9']), /'tpu-v9'/, 2);
  });

  test('a missing calibration folder', () => {
    const missing = path.join(inputs, 'no-such-calib');
    assertRefused(quantize([MODEL, '--calib', missing]), /no-such-calib/, 1);
  });

  test('a missing model file', () => {
    const missing = path.join(inputs, 'no-such-model.onnx');
    assertRefused(quantize([missing, '--calib', CALIB]), /no-such-model\.onnx/, 1);
  });
});
