import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { compareModels } from '../../src/eval/compare.js';
import { analyzeSensitivity, groupQuantizers, type SensitivityReport } from '../../src/eval/sensitivity.js';
import { exportQdq } from '../../src/quant/export/qdq.js';
import type { QuantSim } from '../../src/quant/sim/quantsim.js';
import { Session } from '../../src/runtime/session.js';
import { assertQnnxError } from '../runtime/helpers.js';
import { fashionQuantized, testImages, testLabels } from './helpers.js';

const CONV1 = '/features/features.0/Conv';
const CONV2 = '/features/features.4/Conv';
const GEMM1 = '/classifier/classifier.1/Gemm';
const GEMM2 = '/classifier/classifier.3/Gemm';

describe('per-layer sensitivity of the quantized Fashion-MNIST model', () => {
  let sim: QuantSim;
  let labels: BigInt64Array;
  let report: SensitivityReport;
  before(async () => {
    sim = (await fashionQuantized()).sim;
    labels = await testLabels();
    report = await analyzeSensitivity(sim, await testImages(), { labels, maxSamples: 200 });
  });

  test('quantizers are grouped by the node they feed, through MaxPool/Flatten/Relu', () => {
    const groups = groupQuantizers(sim);
    assert.deepEqual(
      groups.map((g) => [g.layer, g.opType, g.quantizers]),
      [
        [
          CONV1,
          'Conv',
          ['input', '/features/features.0/Conv_W_folded', '/features/features.0/Conv_B_folded'],
        ],
        [
          CONV2,
          'Conv',
          [
            '/features/features.2/Relu_output_0',
            '/features/features.3/MaxPool_output_0',
            '/features/features.4/Conv_W_folded',
            '/features/features.4/Conv_B_folded',
          ],
        ],
        [
          GEMM1,
          'Gemm',
          [
            '/features/features.6/Relu_output_0',
            '/features/features.7/MaxPool_output_0',
            '/classifier/classifier.0/Flatten_output_0',
            'classifier.1.weight',
            'classifier.1.bias',
          ],
        ],
        // the graph output 'logits' feeds nothing: it belongs to the Gemm producing it
        [
          GEMM2,
          'Gemm',
          ['/classifier/classifier.2/Relu_output_0', 'classifier.3.weight', 'classifier.3.bias', 'logits'],
        ],
      ],
    );
    assert.equal(
      groups.reduce((n, g) => n + g.quantizers.length, 0),
      sim.quantizers.size,
      'every quantizer in exactly one group',
    );
  });

  test('report: 4 layers x 2 modes, each partial model closer to float than the fully quantized one', () => {
    const r = report;
    assert.equal(r.samples, 200);
    assert.equal(r.outputName, 'logits');
    assert.equal(r.runs, 2 + 4 * 2);
    assert.deepEqual(r.omitted, []);
    assert.equal(r.layers.length, 4);
    // The first 200 test images: 186 right with the float model (measured, see the eval docs).
    assert.equal(r.float.accuracy, 186 / 200);
    assert.ok(Number.isFinite(r.quantized.sqnrDb) && r.quantized.sqnrDb > 25, `${r.quantized.sqnrDb}`);
    for (const l of r.layers) {
      // One layer alone adds less noise than all of them; leaving one layer float removes some noise.
      assert.ok(l.only!.sqnrDb > r.quantized.sqnrDb, `${l.layer} only ${l.only!.sqnrDb}`);
      assert.ok(l.allBut!.sqnrDb > r.quantized.sqnrDb, `${l.layer} all but ${l.allBut!.sqnrDb}`);
      assert.ok(Math.abs(l.only!.accuracy! - r.float.accuracy!) <= 0.03, `${l.layer} ${l.only!.accuracy}`);
    }
    // Most harmful first: ascending SQNR with only that layer quantized.
    for (let i = 1; i < r.layers.length; i++)
      assert.ok(r.layers[i - 1]!.only!.sqnrDb <= r.layers[i]!.only!.sqnrDb);
    // Independent quantization noises add up: the noise powers of the `only` runs should sum to about the noise
    // of the fully quantized model. Correlation between layers' errors makes this approximate: 1.5 dB.
    const sum = r.layers.reduce((s, l) => s + 10 ** (-l.only!.sqnrDb / 10), 0);
    assert.ok(Math.abs(-10 * Math.log10(sum) - r.quantized.sqnrDb) < 1.5, `${-10 * Math.log10(sum)}`);
    console.log(
      `float acc ${r.float.accuracy}, quantized SQNR ${r.quantized.sqnrDb.toFixed(2)} dB acc ${r.quantized.accuracy}; ` +
        r.layers
          .map(
            (l) => `${l.layer}: only ${l.only!.sqnrDb.toFixed(2)} / all-but ${l.allBut!.sqnrDb.toFixed(2)}`,
          )
          .join('; ') +
        `; ${r.seconds.toFixed(2)} s`,
    );
  });

  test('the enabled flags are restored', () => {
    for (const q of sim.quantizers.values()) assert.equal(q.enabled, true, q.tensor);
  });

  test("an 'only' entry equals compareModels of the float model and that QDQ export", async () => {
    const layer = report.layers.find((l) => l.layer === CONV2)!;
    const mine = new Set(layer.quantizers);
    for (const q of sim.quantizers.values()) q.enabled = mine.has(q.tensor);
    const { model } = exportQdq(sim);
    for (const q of sim.quantizers.values()) q.enabled = true;
    const float = await Session.create(sim.model, { graphOptimizationLevel: 'basic' });
    const qdq = await Session.create(model, { graphOptimizationLevel: 'basic' });
    try {
      const c = await compareModels(float, qdq, await testImages(200), { labels, allowExtraLabels: true });
      // Same runs, same per-sample float64 accumulation order: identical up to the last bit.
      assert.equal(c.outputs.logits!.sqnrDb, layer.only!.sqnrDb);
      assert.equal(c.accuracy, layer.only!.accuracy);
    } finally {
      await Promise.all([float.release(), qdq.release()]);
    }
  });

  test('maxLayers and modes limit the runs; disabled quantizers stay out', async () => {
    const r = await analyzeSensitivity(sim, await testImages(), {
      maxLayers: 2,
      modes: ['allBut'],
      maxSamples: 50,
    });
    assert.equal(r.samples, 50);
    assert.equal(r.runs, 2 + 2);
    assert.deepEqual(r.omitted, [GEMM1, GEMM2]);
    assert.deepEqual(r.layers.map((l) => l.layer).sort(), [CONV1, CONV2]);
    for (const l of r.layers) assert.equal(l.only, undefined);
    // sorted by the SQNR gained when the layer stays float, largest first
    assert.ok(r.layers[0]!.allBut!.sqnrDb >= r.layers[1]!.allBut!.sqnrDb);

    sim.quantizers.get('logits')!.enabled = false;
    try {
      const groups = groupQuantizers(sim);
      assert.ok(!groups.some((g) => g.quantizers.includes('logits')));
      const s = await analyzeSensitivity(sim, await testImages(20), { modes: ['only'], maxLayers: 1 });
      assert.equal(sim.quantizers.get('logits')!.enabled, false, 'a disabled quantizer stays disabled');
      assert.equal(s.layers.length, 1);
    } finally {
      sim.quantizers.get('logits')!.enabled = true;
    }
  });

  test('errors: missing encodings, bad options, unknown output', async () => {
    const q = sim.quantizers.get('classifier.3.weight')!;
    const enc = q.encoding;
    q.encoding = undefined;
    try {
      await assertQnnxError(
        async () => analyzeSensitivity(sim, await testImages(5)),
        'E_USAGE',
        'missing: classifier.3.weight',
      );
    } finally {
      q.encoding = enc;
    }
    await assertQnnxError(
      async () => analyzeSensitivity(sim, await testImages(5), { maxLayers: 0 }),
      'E_USAGE',
    );
    await assertQnnxError(
      async () => analyzeSensitivity(sim, await testImages(5), { outputName: 'probs' }),
      'E_USAGE',
      "output 'probs' not found",
    );
    await assertQnnxError(async () => analyzeSensitivity(sim, []), 'E_DATA', 'no samples');
  });
});
