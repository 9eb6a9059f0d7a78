/**
 * Seeded mutation fuzzing of small real models (openWakeWord heads, Silero VAD, PP-OCR cls) through the loader:
 * every mutation must load (and re-load from its own encoding to the same bytes) or throw a QnnxError; another
 * exception type, a case over 2 s or a hang fails, printing the seed and mutation that reproduce it. The bench
 * script bench/fuzz.ts runs the same core for as many mutations as asked.
 */
import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import {
  caseSeed,
  FUZZ_MODELS,
  formatReport,
  MUTATION_KINDS,
  mutate,
  prepareModel,
  runFuzz,
  tryLoad,
} from '../../bench/fuzz.js';

const MUTATIONS = 3000;

test('mutations are deterministic and really mutate', () => {
  const m = prepareModel(FUZZ_MODELS[0]);
  assert.ok(m.lengths.length > 100, `found ${m.lengths.length} length fields`);
  assert.ok(m.varints.length > 30, `found ${m.varints.length} varint fields`);
  const kinds = new Set<string>();
  for (let i = 0; i < 300; i++) {
    const a = mutate(m, caseSeed(7, i));
    const b = mutate(m, caseSeed(7, i));
    assert.equal(a.description, b.description);
    assert.ok(Buffer.from(a.bytes).equals(Buffer.from(b.bytes)));
    kinds.add(a.kind);
    if (a.kind !== 'bitflip' && a.kind !== 'varint' && a.kind !== 'interesting') {
      assert.ok(!Buffer.from(a.bytes).equals(Buffer.from(m.bytes)), a.description);
    }
  }
  assert.deepEqual([...kinds].sort(), [...MUTATION_KINDS].sort());
  // The original bytes are never modified in place.
  assert.ok(Buffer.from(m.bytes).equals(prepareModel(FUZZ_MODELS[0]).bytes));
});

test(`${MUTATIONS} seeded mutations of real models load or throw a QnnxError`, {
  timeout: 120_000,
}, async () => {
  const report = await runFuzz({ count: MUTATIONS, seed: 20261122, caseLimitMs: 2000 });
  const summary = formatReport(report);
  console.log(summary);
  assert.equal(report.count, MUTATIONS);
  assert.deepEqual(
    report.failures.map((f) => `case ${f.index} seed ${f.seed} ${f.file} [${f.mutation}]: ${f.error}`),
    [],
  );
  // The fuzzer must exercise both outcomes, and more than one error path.
  assert.ok(report.ok > MUTATIONS / 20, `only ${report.ok} mutations loaded`);
  assert.ok(Object.keys(report.byCode).length >= 3, `error codes seen: ${Object.keys(report.byCode)}`);
});

test('corrupt UTF-8 in names loads as U+FFFD and re-encodes to a fixed point (fuzz seeds of 100k run)', () => {
  // bench/fuzz.ts seeds whose bit flips land in a string (an opset domain of Silero v4, a dim_param of PP-OCR cls).
  const file = path.join(os.tmpdir(), 'qnnx-fuzz-utf8.onnx');
  for (const [seed, model] of [
    [776611078, 3],
    [3832739475, 4],
  ] as const) {
    const m = mutate(prepareModel(FUZZ_MODELS[model]), seed);
    assert.deepEqual(tryLoad(m.bytes, file), { status: 'ok' }, `seed ${seed}`);
  }
});
