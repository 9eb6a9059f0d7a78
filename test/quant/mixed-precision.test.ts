/**
 * Automatic mixed precision (src/quant/mixed-precision.ts) on a three-MatMul network with one planted outlier
 * activation: channel 0 of the first MatMul's output is 300x larger than the others, and the second MatMul
 * ignores it (a zero row, which quantizes exactly: a dead channel). Per-tensor uint8 then spends its grid on
 * channel 0 and the other 15 channels of that tensor get a step 300x too coarse: that one quantizer costs most of
 * the output SQNR, while every other tensor is well behaved.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { GraphBuilder, valueInfo } from '../../src/ir/builder.js';
import { Model } from '../../src/ir/model.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType } from '../../src/onnx/dtype.js';
import { exportQdq } from '../../src/quant/export/qdq.js';
import { mixedPrecision, mixedPrecisionGroups, widenEncoding } from '../../src/quant/mixed-precision.js';
import { quantizeModel } from '../../src/quant/quantize.js';
import type { QuantSim } from '../../src/quant/sim/quantsim.js';
import { type Feeds, Session } from '../../src/runtime/session.js';
import { gaussian } from './synthetic.js';

const D = 16;
const OUTLIER = 300;

function network(): Model {
  const m = new Model();
  m.opsetImports = [{ domain: '', version: 13 }];
  m.irVersion = 8;
  const g = m.graph;
  g.name = 'outlier';
  const b = new GraphBuilder(g);
  g.inputs.push(valueInfo('x', DataType.FLOAT, ['N', D]));
  const w = (seed: number) => {
    const v = gaussian(D * D, seed, 1 / Math.sqrt(D));
    return v;
  };
  const w1 = w(1);
  for (let i = 0; i < D; i++) w1[i * D] *= OUTLIER; // column 0: output channel 0 of `a`
  const w2 = w(2);
  for (let j = 0; j < D; j++) w2[j] = 0; // row 0: the next layer ignores channel 0
  g.addInitializer(new Tensor('w1', DataType.FLOAT, [D, D], w1));
  g.addInitializer(new Tensor('w2', DataType.FLOAT, [D, D], w2));
  g.addInitializer(new Tensor('w3', DataType.FLOAT, [D, D], w(3)));
  b.node('MatMul', ['x', 'w1'], { outputs: ['a'], name: 'mm1' });
  b.node('MatMul', ['a', 'w2'], { outputs: ['h'], name: 'mm2' });
  b.node('MatMul', ['h', 'w3'], { outputs: ['y'], name: 'mm3' });
  g.outputs.push(valueInfo('y', DataType.FLOAT, ['N', D]));
  return m;
}

function samples(n: number, seed: number): Feeds[] {
  return Array.from({ length: n }, (_, i) => ({
    x: { dtype: DataType.FLOAT, dims: [4, D], data: gaussian(4 * D, seed + i) },
  }));
}

async function quantized(): Promise<QuantSim> {
  const { sim } = await quantizeModel(network(), samples(16, 100), (m) => Session.create(m));
  return sim;
}

/** Enabled flags, bits and scales of every quantizer, for exact before/after comparisons. */
function snapshot(sim: QuantSim) {
  return [...sim.quantizers.values()].map((q) => ({
    tensor: q.tensor,
    enabled: q.enabled,
    bits: q.scheme.bits,
    scale: Array.from(q.encoding?.scale ?? []),
    zeroPoint: Array.from(q.encoding?.zeroPoint ?? []),
  }));
}

describe('mixed precision', () => {
  test('groups: activations with their shared followers, weights on request, MAC shares', async () => {
    const sim = await quantized();
    const acts = mixedPrecisionGroups(sim, { inputDims: { x: [4, D] } });
    assert.deepEqual(acts.map((g) => g.name).sort(), ['a', 'h', 'x', 'y']);
    const withWeights = mixedPrecisionGroups(sim, { weights: true, inputDims: { x: [4, D] } });
    assert.deepEqual(
      withWeights
        .filter((g) => g.kind === 'weight')
        .map((g) => g.name)
        .sort(),
      ['w1', 'w2', 'w3'],
    );
    // `a` sits between mm1 and mm2: two of the three equal MatMuls lose their integer kernels.
    const a = acts.find((g) => g.name === 'a')!;
    assert.ok(Math.abs(a.cost - 2 / 3) < 1e-9, `cost ${a.cost}`);
  });

  test('float fallback: picks the planted outlier first and reaches the target; the sim keeps the choice', async () => {
    const sim = await quantized();
    const r = await mixedPrecision(sim, undefined, samples(8, 500), { targetSqnrDb: 30 });
    // Far below the target before: the outlier tensor leaves ~0 dB (the 15 live channels are quantization noise).
    assert.ok(r.baselineSqnrDb < 25, `baseline ${r.baselineSqnrDb}`);
    assert.equal(r.screening[0]!.group, 'a');
    assert.equal(r.picks[0]!.name, 'a');
    assert.equal(r.picks.length, 1);
    assert.ok(r.met && r.sqnrDb >= 30, `final ${r.sqnrDb}`);
    // The switchable model and the plain export of the chosen configuration compute the same thing (both at
    // graphOptimizationLevel 'basic'): the last trajectory point equals the verified SQNR to rounding.
    assert.ok(Math.abs(r.trajectory.at(-1)!.sqnrDb - r.sqnrDb) < 0.01);
    assert.deepEqual(r.tensors, ['a']);
    assert.equal(r.activationQuantizers, 4);
    assert.equal(sim.quantizers.get('a')!.enabled, false);
    assert.ok(['x', 'h', 'y', 'w1'].every((t) => sim.quantizers.get(t)!.enabled));
    // The exported model has no Q/DQ on `a` any more.
    const qdq = exportQdq(sim).model;
    assert.ok(!qdq.graph.nodes.some((n) => n.opType === 'QuantizeLinear' && n.inputs[0] === 'a'));
  });

  test('int16 fallback: widens the outlier tensor to uint16 over the same range, opset raised to 21', async () => {
    const sim = await quantized();
    const a8 = sim.quantizers.get('a')!.encoding!;
    const r = await mixedPrecision(sim, undefined, samples(8, 500), { targetSqnrDb: 30, fallback: 'int16' });
    assert.deepEqual(
      r.picks.map((p) => p.name),
      ['a'],
    );
    assert.ok(r.met, `final ${r.sqnrDb}`);
    assert.deepEqual(r.opset, { before: 13, after: 21 });
    const q = sim.quantizers.get('a')!;
    assert.ok(q.enabled);
    assert.equal(q.scheme.bits, 16);
    // Same range: scale shrinks by (2^16 - 1) / (2^8 - 1) = 257 (float32 rounding: 1e-5 relative).
    assert.ok(Math.abs(a8.scale[0]! / q.encoding!.scale[0]! - 257) < 257e-5);
    const qdq = exportQdq(sim).model;
    const qa = qdq.graph.nodes.find((n) => n.opType === 'QuantizeLinear' && n.inputs[0] === 'a')!;
    assert.equal(qdq.graph.initializer(qa.inputs[2]!)!.dtype, DataType.UINT16);
  });

  test('apply: false restores flags, schemes and encodings exactly', async () => {
    const sim = await quantized();
    const before = snapshot(sim);
    const r = await mixedPrecision(sim, undefined, samples(4, 500), { fallback: 'int16', apply: false });
    assert.ok(r.picks.length >= 1);
    assert.deepEqual(snapshot(sim), before);
  });

  test('unreachable target: best configuration kept, met false, no error', async () => {
    const sim = await quantized();
    const r = await mixedPrecision(sim, undefined, samples(4, 500), { targetSqnrDb: 200 });
    assert.equal(r.met, false);
    assert.ok(r.sqnrDb > r.baselineSqnrDb + 10, `${r.baselineSqnrDb} -> ${r.sqnrDb}`);
    assert.equal(r.picks[0]!.name, 'a');
    // Only improving picks are kept: the trajectory of kept picks rises monotonically.
    const kept = r.trajectory.filter((t) => !t.rejected).map((t) => t.sqnrDb);
    for (let i = 1; i < kept.length; i++) assert.ok(kept[i]! > kept[i - 1]!);
    assert.equal(r.pruned.length, 0);
    // The sim holds that configuration.
    assert.deepEqual(
      [...sim.quantizers.values()]
        .filter((q) => !q.enabled && q.kind === 'activation')
        .map((q) => q.tensor)
        .sort(),
      [...r.tensors].sort(),
    );
  });

  test('maxFallbacks 0 and a met target change nothing; bad options are usage errors', async () => {
    const sim = await quantized();
    const before = snapshot(sim);
    const none = await mixedPrecision(sim, undefined, samples(4, 500), { maxFallbacks: 0 });
    assert.equal(none.picks.length, 0);
    assert.equal(none.met, false);
    const easy = await mixedPrecision(sim, undefined, samples(4, 500), { targetSqnrDb: -10 });
    assert.equal(easy.picks.length, 0);
    assert.ok(easy.met);
    assert.deepEqual(snapshot(sim), before);
    await assert.rejects(mixedPrecision(sim, undefined, samples(1, 1), { fallback: 'int4' as never }), {
      code: 'E_USAGE',
    });
    await assert.rejects(mixedPrecision(sim, undefined, [], {}), { code: 'E_DATA' });
  });

  test('widenEncoding keeps the range of an asymmetric uint8 encoding', () => {
    const enc = {
      scheme: {
        format: 'int' as const,
        bits: 8,
        signed: false,
        symmetry: 'asymmetric' as const,
        narrow: false,
        granularity: { kind: 'tensor' as const },
        scaleType: 'float' as const,
      },
      scale: Float32Array.of(0.1),
      zeroPoint: Int32Array.of(50),
      scaleDims: [],
    };
    const w = widenEncoding(enc);
    assert.equal(w.scheme.bits, 16);
    // [-5, 20.5] on uint8 -> the same interval on uint16 (float32 scale: 1e-6 relative).
    const lo = (0 - w.zeroPoint[0]!) * w.scale[0]!;
    const hi = (65535 - w.zeroPoint[0]!) * w.scale[0]!;
    assert.ok(Math.abs(lo + 5) < 2e-3 && Math.abs(hi - 20.5) < 2e-3, `[${lo}, ${hi}]`);
  });
});
