/**
 * `qnnx train` end to end: the compiled CLI trains a tiny builder spec on a slice of Fashion-MNIST for one epoch
 * and writes an ONNX model that runs; bad input (labels out of range, a missing data file, an unknown layer) gives
 * one error line, a non-zero exit code and no output file.
 *
 * The CLI runs as a child process: `node dist/src/cli/main.js train ...` once main.ts registers the command;
 * until then, a stand-in entry point with the same wiring (commander + registerTrain + reportError) is used.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { encodeIdx, readIdx } from '../../src/data/index.js';
import { DataType } from '../../src/onnx/dtype.js';
import type { HostTensor } from '../../src/tensor.js';
import { ort, runModel } from '../helpers/ort.js';

const FASHION = '/usr/share/datasets/fashion-mnist';
const TRAIN_N = 640;
const TEST_N = 200;
const dir = mkdtempSync(join(tmpdir(), 'qnnx-train-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const MAIN = resolve('dist/src/cli/main.js');
const mainHasTrain = existsSync(MAIN) && readFileSync(MAIN, 'utf8').includes('registerTrain');

/** The entry point to spawn: main.js when it knows `train`, else a stand-in with main.ts's wiring. */
function entry(): string {
  if (mainHasTrain) return MAIN;
  const require = createRequire(import.meta.url);
  const url = (p: string) => pathToFileURL(resolve(p)).href;
  const shim = join(dir, 'qnnx-train.mjs');
  writeFileSync(
    shim,
    `import { Command } from ${JSON.stringify(pathToFileURL(require.resolve('commander')).href)};
import { registerTrain } from ${JSON.stringify(url('dist/src/cli/train.js'))};
import { reportError } from ${JSON.stringify(url('dist/src/cli/errors.js'))};
const argv = process.argv.slice(2);
const debug = argv.includes('--debug');
const json = argv.includes('--json');
let code = 0;
const run = async (fn) => { try { await fn(); } catch (e) { code = reportError(e, debug, json); } };
const program = new Command().name('qnnx').option('--debug').exitOverride()
  .configureOutput({ writeErr: (s) => process.stderr.write(s) }).showHelpAfterError('(run with --help for usage)');
registerTrain(program, run);
try { await program.parseAsync(argv, { from: 'user' }); } catch (e) { code = reportError(e, debug, json); }
process.exitCode = code;
`,
  );
  return shim;
}

function qnnx(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [entry(), 'train', ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function slice(t: HostTensor, n: number): HostTensor {
  const per = t.dims.slice(1).reduce((a, d) => a * d, 1);
  return { dtype: t.dtype, dims: [n, ...t.dims.slice(1)], data: (t.data as Uint8Array).slice(0, n * per) };
}

const SPEC = {
  input: [1, 28, 28],
  layers: [
    { conv2d: { filters: 4, kernel: 3, stride: 2, padding: 1 } },
    { batchNorm: {} },
    'relu',
    { maxPool: { kernel: 2 } },
    'flatten',
    { dense: { units: 10 } },
  ],
};

const DATA = join(dir, 'fashion');
const IMAGES = join(dir, 'images-idx3-ubyte');
const LABELS = join(dir, 'labels-idx1-ubyte');
const BAD_LABELS = join(dir, 'bad-labels-idx1-ubyte');
const SPEC_FILE = join(dir, 'tiny.json');

before(async () => {
  const { mkdirSync } = await import('node:fs');
  mkdirSync(DATA);
  for (const [split, n] of [
    ['train', TRAIN_N],
    ['t10k', TEST_N],
  ] as const) {
    const x = slice(await readIdx(join(FASHION, `${split}-images-idx3-ubyte.gz`)), n);
    const y = slice(await readIdx(join(FASHION, `${split}-labels-idx1-ubyte.gz`)), n);
    writeFileSync(join(DATA, `${split}-images-idx3-ubyte`), encodeIdx(x));
    writeFileSync(join(DATA, `${split}-labels-idx1-ubyte`), encodeIdx(y));
    if (split === 'train') {
      writeFileSync(IMAGES, encodeIdx(x));
      writeFileSync(LABELS, encodeIdx(y));
      const bad = Uint8Array.from(y.data as Uint8Array);
      bad[37] = 12;
      writeFileSync(BAD_LABELS, encodeIdx({ dtype: DataType.UINT8, dims: [n], data: bad }));
    }
  }
  writeFileSync(SPEC_FILE, JSON.stringify(SPEC));
});

const NORM = ['--scale', '1/255', '--mean', '0.2860', '--std', '0.3530'];

describe('qnnx train', () => {
  test('trains a builder spec on a Fashion-MNIST directory for one epoch and writes a model that runs', async () => {
    const out = join(dir, 'trained.onnx');
    const r = qnnx([
      SPEC_FILE,
      '--data',
      DATA,
      '--epochs',
      '1',
      '--batch-size',
      '32',
      ...NORM,
      '--json',
      '-o',
      out,
    ]);
    assert.equal(r.code, 0, r.stderr);
    const result = JSON.parse(r.stdout);
    assert.equal(result.built, true);
    assert.equal(result.steps, TRAIN_N / 32);
    assert.equal(result.data.trainSamples, TRAIN_N);
    assert.equal(result.data.testSamples, TEST_N, 'the t10k split of the directory is the test set');
    assert.ok(result.testAccuracy > 0.3, `one epoch on ${TRAIN_N} images: ${result.testAccuracy}`);
    // Metrics as JSON lines on stderr: one per epoch (and the step lines, every 50 steps by default).
    const lines = r.stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const epochs = lines.filter((l) => l.type === 'epoch');
    assert.equal(epochs.length, 1);
    assert.ok(epochs[0].test.accuracy === result.testAccuracy);
    // The written model is a plain inference model.
    assert.ok(existsSync(out));
    const x = new Float32Array(3 * 784).fill(0.5);
    const y = await runModel(out, { input: new ort.Tensor('float32', x, [3, 1, 28, 28]) });
    assert.deepEqual(y.logits.dims, [3, 10]);
  });

  test('IDX files with --labels, sgd with a schedule, human-readable output', () => {
    const out = join(dir, 'trained-sgd.onnx');
    const r = qnnx([
      SPEC_FILE,
      '--data',
      IMAGES,
      '--labels',
      LABELS,
      '--epochs',
      '1',
      '--optimizer',
      'sgd',
      '--lr',
      '0.05',
      '--schedule',
      'warmup:5,cosine',
      ...NORM,
      '-o',
      out,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /^optimizer +sgd lr 0\.05 momentum 0\.9 weight decay 0, schedule warmup:5,cosine, batch 64$/m,
    );
    assert.match(r.stdout, /^training +1 epochs, 10 steps$/m);
    assert.match(r.stderr, /^epoch 1\/1 {2}loss \d+\.\d{4} {2}[\d,]+ samples\/s/m);
    assert.ok(existsSync(out));
  });

  test('--help documents the builder spec with the Fashion-MNIST example', () => {
    const r = spawnSync(process.execPath, [entry(), 'train', '--help'], { encoding: 'utf8' });
    assert.equal(r.status, 0);
    assert.match(r.stdout, /Builder spec/);
    assert.match(r.stdout, /Worked example: Fashion-MNIST/);
    assert.match(r.stdout, /conv2d: 2-D convolution/);
    assert.match(r.stdout, /--scale 1\/255 --mean 0\.2860 --std 0\.3530/);
  });

  const bad: [string, () => string[], number, RegExp][] = [
    [
      'labels out of range',
      () => [SPEC_FILE, '--data', IMAGES, '--labels', BAD_LABELS, '--epochs', '1', ...NORM],
      1,
      /^qnnx: error E_DATA: .*bad-labels-idx1-ubyte: label 12 of sample 37 is outside \[0, 10\) \(the model has 10 outputs\)$/,
    ],
    [
      'missing data file',
      () => [SPEC_FILE, '--data', join(dir, 'nope-images-idx3-ubyte'), '--labels', LABELS, '--epochs', '1'],
      1,
      /^qnnx: error E_IO: .*nope-images-idx3-ubyte: cannot read training data \(no such file or directory\)$/,
    ],
    [
      'unknown layer',
      () => {
        const f = join(dir, 'unknown.json');
        writeFileSync(
          f,
          JSON.stringify({ input: [1, 28, 28], layers: ['flatten', { dense3d: { units: 10 } }] }),
        );
        return [f, '--data', DATA, '--epochs', '1'];
      },
      2,
      /^qnnx: error E_USAGE: .*unknown\.json: layers\[1\]: unknown layer 'dense3d' \(known: conv2d, dense, /,
    ],
    [
      'bad option value',
      () => [SPEC_FILE, '--data', DATA, '--epochs', '1', '--optimizer', 'lamb'],
      2,
      /^qnnx: error E_USAGE: --optimizer must be sgd, adam or adamw, got 'lamb'$/,
    ],
  ];
  for (const [name, args, code, re] of bad) {
    test(`bad input: ${name}`, () => {
      const out = join(dir, `${name.replace(/\W+/g, '-')}.onnx`);
      const r = qnnx([...args(), '-o', out]);
      assert.equal(r.code, code, r.stderr);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
      assert.match(lines[0], re);
      assert.equal(r.stdout, '');
      assert.ok(!existsSync(out), 'no output file');
    });
  }
});
