import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Command } from 'commander';
import { type EvalResult, registerEval, renderEval, runEval } from '../../src/cli/eval.js';
import { encodeIdx, encodeNpy } from '../../src/data/index.js';
import { isQnnxError } from '../../src/errors.js';
import { saveModel } from '../../src/io/model-file.js';
import { DataType } from '../../src/onnx/dtype.js';
import { assertQnnxError } from '../runtime/helpers.js';
import { CALIB, FLOAT_ACCURACY, fashionQuantized, IMAGES, LABELS, MODEL, testLabels } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'qnnx-eval-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const QDQ = join(dir, 'model.qdq.onnx');

/**
 * Runs `qnnx eval ...` through commander in this process, capturing its output. Errors are reported by
 * reportError, which writes to the real stderr (one line; it shows in the test log).
 */
async function cli(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string; error?: unknown }> {
  const program = new Command().exitOverride();
  let code = 0;
  let error: unknown;
  let stdout = '';
  let stderr = '';
  const io = {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s), isTTY: false },
  };
  registerEval(
    program,
    async (fn) => {
      try {
        await fn();
      } catch (e) {
        error = e;
        code = isQnnxError(e) ? (e.code === 'E_USAGE' ? 2 : 1) : 70;
      }
    },
    io,
  );
  await program.parseAsync(['eval', ...args], { from: 'user' });
  return { code, stdout, stderr, error };
}

describe('qnnx eval', () => {
  let quantized: EvalResult;
  before(async () => {
    saveModel((await fashionQuantized()).qdq, QDQ);
    quantized = await runEval(QDQ, { data: IMAGES, reference: MODEL, labels: LABELS });
  });

  test('the int8 QDQ model against the float model on the 1000 test images', () => {
    const r = quantized;
    assert.equal(r.samples, 1000);
    assert.equal(r.split, true, 'a [1000,1,28,28] file for a dynamic-batch input is split automatically');
    assert.equal(r.inputName, 'input');
    assert.deepEqual(Object.keys(r.outputs!), ['logits']);
    const m = r.outputs!.logits!;
    assert.deepEqual(m.dims, [1, 10]);
    // 8-bit quantization of a small CNN: measured 37.05 dB; the bound leaves room for changes in calibration.
    assert.ok(m.sqnrDb > 30 && m.sqnrDb < 60, `${m.sqnrDb}`);
    assert.equal(r.referenceAccuracy, FLOAT_ACCURACY);
    assert.equal(r.referenceCorrect, 921);
    assert.equal(r.scoredRows, 1000);
    assert.ok(Math.abs(r.accuracy! - FLOAT_ACCURACY) <= 0.01, `${r.accuracy}`);
    assert.ok(r.agreement! > 0.98, `${r.agreement}`);
    assert.equal(r.latencyMs.runs, 1000);
    assert.equal(r.referenceLatencyMs!.runs, 1000);
    assert.ok(r.speedup! > 0);
    const text = renderEval(r);
    assert.match(text, /^logits {2}\[1, 10\] +\d+\.\d\d /m);
    assert.match(text, /^reference +92\.10 % +921\/1000$/m);
    assert.match(text, /^latency per sample \(ms\)/m);
    console.log(
      `int8 QDQ vs float: SQNR ${m.sqnrDb.toFixed(2)} dB, MSE ${m.mse.toExponential(3)}, max abs ${m.maxAbs.toFixed(3)}, ` +
        `accuracy ${r.accuracy} vs ${r.referenceAccuracy}, agreement ${r.agreement}, median latency ` +
        `${r.latencyMs.median.toFixed(4)} ms vs ${r.referenceLatencyMs!.median.toFixed(4)} ms`,
    );
  });

  test('--json: one object on stdout; SQNR of identical models is the string "Infinity"', async () => {
    const { code, stdout, stderr } = await cli([
      MODEL,
      '--data',
      IMAGES,
      '--reference',
      MODEL,
      '--labels',
      LABELS,
      '--samples',
      '200',
      '--json',
    ]);
    assert.equal(code, 0, stderr);
    const lines = stdout.trim().split('\n');
    assert.equal(lines.length, 1);
    const j = JSON.parse(lines[0]!);
    assert.equal(j.samples, 200);
    assert.equal(j.outputs.logits.sqnrDb, 'Infinity');
    assert.equal(j.outputs.logits.mse, 0);
    assert.equal(j.outputs.logits.maxAbs, 0);
    assert.equal(j.accuracy, j.referenceAccuracy);
    assert.equal(j.scoredRows, 200, 'with --samples only the first labels are used');
    assert.equal(j.agreement, 1);
    for (const k of ['median', 'mean', 'min', 'max', 'p90', 'runs']) {
      assert.equal(typeof j.latencyMs[k], 'number', k);
      assert.equal(typeof j.referenceLatencyMs[k], 'number', k);
    }
    const progress = stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.deepEqual(progress.at(-1), { progress: { stage: 'eval', done: 200, total: 200 } });
  });

  test('without --reference: accuracy and latency of the model alone', async () => {
    const r = await runEval(MODEL, { data: IMAGES, labels: LABELS, samples: '1000' });
    assert.equal(r.accuracy, FLOAT_ACCURACY);
    assert.equal(r.outputs, null);
    assert.equal(r.referenceAccuracy, null);
    assert.equal(r.referenceLatencyMs, null);
    // IDX labels (uint8), as Fashion-MNIST ships them
    const idx = join(dir, 't10k-labels-idx1-ubyte');
    const raw = await testLabels();
    writeFileSync(
      idx,
      encodeIdx({ dtype: DataType.UINT8, dims: [1000], data: Uint8Array.from(raw, Number) }),
    );
    const i = await runEval(MODEL, { data: IMAGES, labels: idx });
    assert.equal(i.accuracy, FLOAT_ACCURACY);
    const { code, stdout } = await cli([MODEL, '--data', CALIB, '--samples', '5']);
    assert.equal(code, 0);
    assert.match(stdout, /examples\/fashion-mnist\/calib: 5 samples -> input 'input'/);
  });

  test('--no-split feeds the whole [1000,1,28,28] file as one batch; --split on one-sample files', async () => {
    const r = await runEval(MODEL, { data: IMAGES, labels: LABELS, split: false });
    assert.equal(r.samples, 1);
    assert.equal(r.split, false);
    assert.equal(r.accuracy, FLOAT_ACCURACY, 'one label per output row: 1000 rows');
    const s = await runEval(MODEL, { data: CALIB, split: true, samples: '3' });
    assert.equal(s.samples, 3);
  });

  test('errors: labels count, output, input name, label type, options', async () => {
    const short = join(dir, 'labels-999.npy');
    writeFileSync(short, encodeNpy({ dtype: DataType.INT64, dims: [999], data: new BigInt64Array(999) }));
    await assertQnnxError(
      () => runEval(MODEL, { data: IMAGES, labels: short }),
      'E_DATA',
      'labels count mismatch',
      '999 labels for 1000 samples',
    );
    const floats = join(dir, 'labels-float.npy');
    writeFileSync(floats, encodeNpy({ dtype: DataType.FLOAT, dims: [2], data: new Float32Array(2) }));
    await assertQnnxError(
      () => runEval(MODEL, { data: IMAGES, labels: floats }),
      'E_DATA',
      'labels must be integers',
      'float',
    );
    await assertQnnxError(
      () => runEval(MODEL, { data: IMAGES, reference: MODEL, output: 'probs' }),
      'E_USAGE',
      "output 'probs' not found",
    );
    await assertQnnxError(
      () => runEval(MODEL, { data: IMAGES, inputName: 'x' }),
      'E_USAGE',
      "--input-name 'x' is not an input",
    );
    await assertQnnxError(() => runEval(MODEL, { data: IMAGES, samples: '0' }), 'E_USAGE', '--samples');
    await assertQnnxError(
      () => runEval(MODEL, { data: IMAGES, labels: MODEL }),
      'E_USAGE',
      '--labels must be',
    );
    const { code, error } = await cli([MODEL, '--data', IMAGES, '--labels', short]);
    assert.equal(code, 1);
    assert.match(String(error), /labels count mismatch/);
  });

  const wired = readFileSync('src/cli/main.ts', 'utf8').includes('registerEval');
  test('the installed CLI: node dist/src/cli/main.js eval', {
    skip: !wired && 'main.ts does not wire eval yet',
  }, () => {
    const p = spawnSync(
      process.execPath,
      [
        'dist/src/cli/main.js',
        'eval',
        QDQ,
        '--data',
        IMAGES,
        '--reference',
        MODEL,
        '--labels',
        LABELS,
        '--json',
      ],
      { encoding: 'utf8' },
    );
    assert.equal(p.status, 0, p.stderr);
    const j = JSON.parse(p.stdout);
    assert.equal(j.samples, 1000);
    assert.equal(j.referenceAccuracy, FLOAT_ACCURACY);
    assert.ok(j.outputs.logits.sqnrDb > 30);
    const bad = spawnSync(
      process.execPath,
      ['dist/src/cli/main.js', 'eval', MODEL, '--data', IMAGES, '--samples', 'x'],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--samples must be an integer/);
  });
});
