/**
 * AIMET encodings JSON (src/quant/export/aimet.ts): export → import round trips in the three layouts give back
 * identical scales and zero points (exact: float32 scales survive JSON as doubles), hand-written AIMET files
 * parse with AIMET's sign conventions, and the QDQ models exported from the original and the re-imported
 * QuantSim compute bit-identical outputs in ONNX Runtime.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { GraphBuilder, valueInfo } from '../../../src/ir/builder.js';
import { Model } from '../../../src/ir/model.js';
import { Tensor } from '../../../src/ir/tensor.js';
import { DataType } from '../../../src/onnx/dtype.js';
import { encodingFromRange } from '../../../src/quant/encoding.js';
import {
  type AimetVersion,
  aimetEncodingsJson,
  applyEncodings,
  exportAimetEncodings,
  parseAimetEncodings,
} from '../../../src/quant/export/aimet.js';
import { exportQdq } from '../../../src/quant/export/qdq.js';
import { QuantSim, type QuantSimOptions } from '../../../src/quant/sim/quantsim.js';
import { getTarget } from '../../../src/quant/sim/targets.js';
import { Session } from '../../../src/runtime/session.js';
import { randomF32 } from '../../runtime/helpers.js';

/** x [1, 3, 8, 8] → Conv(W [4,3,3,3], B) → Relu → Flatten → MatMul(W2 [256, 10]) → Add(b2) → y [1, 10]. */
function convNet(): Model {
  const m = new Model();
  m.opsetImports = [{ domain: '', version: 17 }];
  m.graph.name = 'convnet';
  const g = m.graph;
  const b = new GraphBuilder(g);
  g.inputs.push(valueInfo('x', DataType.FLOAT, [1, 3, 8, 8]));
  g.addInitializer(new Tensor('W', DataType.FLOAT, [4, 3, 3, 3], randomF32(108, 1, -0.5, 0.5)));
  g.addInitializer(new Tensor('B', DataType.FLOAT, [4], randomF32(4, 2, -0.1, 0.1)));
  g.addInitializer(new Tensor('W2', DataType.FLOAT, [256, 10], randomF32(2560, 3, -0.1, 0.1)));
  g.addInitializer(new Tensor('b2', DataType.FLOAT, [10], randomF32(10, 4, -0.1, 0.1)));
  b.node('Conv', ['x', 'W', 'B'], { outputs: ['conv'], name: 'conv', attrs: { pads: [1, 1, 1, 1] } });
  b.node('Relu', ['conv'], { outputs: ['relu'], name: 'relu' });
  b.node('Flatten', ['relu'], { outputs: ['flat'], name: 'flatten' });
  b.node('MatMul', ['flat', 'W2'], { outputs: ['mm'], name: 'fc' });
  b.node('Add', ['mm', 'b2'], { outputs: ['y'], name: 'fc_bias' });
  g.outputs.push(valueInfo('y', DataType.FLOAT, [1, 10]));
  return m;
}

/** x [2, 64] → MatMul(W [64, 48]) → y, for blocked weights. */
function matmulNet(): Model {
  const m = new Model();
  m.opsetImports = [{ domain: '', version: 21 }];
  const g = m.graph;
  g.inputs.push(valueInfo('x', DataType.FLOAT, [2, 64]));
  g.addInitializer(new Tensor('W', DataType.FLOAT, [64, 48], randomF32(64 * 48, 5)));
  new GraphBuilder(g).node('MatMul', ['x', 'W'], { outputs: ['y'], name: 'mm' });
  g.outputs.push(valueInfo('y', DataType.FLOAT, [2, 48]));
  return m;
}

const RANGES: Record<string, [number, number]> = {
  x: [-1, 1],
  relu: [0, 3.1],
  mm: [-2.2, 1.7],
  y: [-2.5, 2],
};

function calibratedSim(model: Model, options: QuantSimOptions): QuantSim {
  const sim = new QuantSim(model, options);
  sim.computeParameterEncodings();
  for (const t of sim.calibratedTensors()) {
    const [lo, hi] = RANGES[t] ?? [-1, 1];
    sim.setEncoding(t, encodingFromRange(sim.activationScheme(), [lo], [hi], []));
  }
  sim.finalizeEncodings();
  return sim;
}

function assertSameEncodings(a: QuantSim, b: QuantSim): void {
  assert.deepEqual([...b.quantizers.keys()].sort(), [...a.quantizers.keys()].sort());
  for (const [name, qa] of a.quantizers) {
    const ea = qa.encoding!;
    const eb = b.quantizers.get(name)!.encoding!;
    assert.ok(eb, `${name} has an encoding`);
    assert.deepEqual(eb.scale, ea.scale, `${name} scale`);
    assert.deepEqual(eb.zeroPoint, ea.zeroPoint, `${name} zero point`);
    assert.deepEqual(eb.scaleDims, ea.scaleDims, `${name} scale dims`);
    const { bits, signed, symmetry, narrow, granularity, format } = ea.scheme;
    const s = eb.scheme;
    assert.deepEqual(
      {
        bits: s.bits,
        signed: s.signed,
        symmetry: s.symmetry,
        narrow: s.narrow,
        granularity: s.granularity,
        format: s.format,
      },
      { bits, signed, symmetry, narrow, granularity, format },
      `${name} scheme`,
    );
  }
}

async function runQdq(sim: QuantSim, x: Float32Array, dims: number[]): Promise<Float32Array> {
  const s = await Session.create(exportQdq(sim).model, { graphOptimizationLevel: 'all' });
  try {
    return (await s.run({ x: { dtype: DataType.FLOAT, dims, data: x } })).y.data as Float32Array;
  } finally {
    await s.release();
  }
}

describe('AIMET encodings', () => {
  const options: QuantSimOptions = { target: getTarget('ort-cpu') };

  for (const version of ['0.6.1', '1.0.0', '2.0.0'] as AimetVersion[]) {
    test(`${version}: export → import gives identical encodings, and the QDQ models agree bit for bit in ORT`, async () => {
      const model = convNet();
      const sim = calibratedSim(model, options);
      const json = aimetEncodingsJson(sim, { version });
      const imported = parseAimetEncodings(json);
      assert.equal(imported.version, version);
      assert.deepEqual(imported.skipped, []);
      const sim2 = new QuantSim(model, options);
      const r = applyEncodings(sim2, imported);
      assert.deepEqual(r.unmatched, []);
      assert.deepEqual(r.mismatched, []);
      assert.deepEqual(r.missing, []);
      assert.deepEqual(r.derived, ['flat']); // Flatten's output shares relu's encoding
      assertSameEncodings(sim, sim2);
      const x = randomF32(192, 9);
      assert.deepEqual(await runQdq(sim2, x, [1, 3, 8, 8]), await runQdq(sim, x, [1, 3, 8, 8]));
    });
  }

  test('sign conventions in the written files (AIMET: q = round(x/s - offset); legacy offsets on the unsigned grid)', () => {
    const sim = calibratedSim(convNet(), options);
    const xEnc = sim.quantizers.get('x')!.encoding!; // uint8 asymmetric over [-1, 1]: zero point 128
    assert.equal(xEnc.zeroPoint[0], 128);
    const wEnc = sim.quantizers.get('W')!.encoding!; // int8 symmetric per channel
    const v1 = exportAimetEncodings(sim, { version: '1.0.0' }) as {
      activation_encodings: Record<string, unknown>[];
      param_encodings: Record<string, unknown>[];
    };
    const x1 = v1.activation_encodings.find((e) => e.name === 'x')!;
    assert.deepEqual(x1, {
      name: 'x',
      dtype: 'INT',
      bw: 8,
      is_sym: false,
      enc_type: 'PER_TENSOR',
      scale: [xEnc.scale[0]],
      offset: [-128],
    });
    const w1 = v1.param_encodings.find((e) => e.name === 'W')!;
    assert.equal(w1.is_sym, true);
    assert.equal(w1.enc_type, 'PER_CHANNEL');
    assert.deepEqual(w1.offset, [-128, -128, -128, -128]);
    assert.deepEqual(w1.scale, Array.from(wEnc.scale));
    const bias = v1.param_encodings.find((e) => e.name === 'B')!;
    assert.deepEqual([bias.bw, bias.is_sym, (bias.offset as number[])[0]], [32, true, -(2 ** 31)]);
    const v0 = exportAimetEncodings(sim, { version: '0.6.1' }) as {
      activation_encodings: Record<string, Record<string, unknown>[]>;
    };
    const x0 = v0.activation_encodings.x[0];
    assert.deepEqual(x0, {
      bitwidth: 8,
      dtype: 'int',
      is_symmetric: 'False',
      min: -128 * xEnc.scale[0],
      max: 127 * xEnc.scale[0],
      scale: xEnc.scale[0],
      offset: -128,
    });
    const v2 = exportAimetEncodings(sim, { version: '2.0.0' }) as { encodings: Record<string, unknown>[] };
    assert.deepEqual(
      v2.encodings.find((e) => e.name === 'x'),
      { name: 'x', output_dtype: 'uint8', y_scale: xEnc.scale[0], y_zero_point: 128 },
    );
    assert.deepEqual(
      v2.encodings.find((e) => e.name === 'W'),
      { name: 'W', output_dtype: 'int8', y_scale: Array.from(wEnc.scale), axis: 0 },
    );
  });

  test('hand-written AIMET files in the three layouts read the same, and apply onto a QuantSim', () => {
    const wScale = [0.0021, 0.0042, 0.0033, 0.0017];
    const v100 = {
      version: '1.0.0',
      activation_encodings: [
        {
          name: 'x',
          dtype: 'INT',
          bw: 8,
          is_sym: false,
          enc_type: 'PER_TENSOR',
          scale: [0.0235],
          offset: [-120],
        },
        {
          name: 'relu',
          dtype: 'INT',
          bw: 8,
          is_sym: false,
          enc_type: 'PER_TENSOR',
          scale: [0.0125],
          offset: [0],
        },
        {
          name: 'not_in_model',
          dtype: 'INT',
          bw: 8,
          is_sym: false,
          enc_type: 'PER_TENSOR',
          scale: [1],
          offset: [0],
        },
      ],
      param_encodings: [
        {
          name: 'W',
          dtype: 'INT',
          bw: 8,
          is_sym: true,
          enc_type: 'PER_CHANNEL',
          scale: wScale,
          offset: [-128, -128, -128, -128],
        },
        {
          name: 'W2',
          dtype: 'INT',
          bw: 8,
          is_sym: true,
          enc_type: 'PER_CHANNEL',
          scale: [0.1, 0.2, 0.3],
          offset: [-128, -128, -128],
        },
        {
          name: 'lpbq',
          dtype: 'INT',
          bw: 8,
          compressed_bw: 4,
          is_sym: true,
          enc_type: 'LPBQ',
          scale: [1],
          offset: [-128],
          per_block_int_scale: [1],
          block_size: 32,
        },
      ],
      excluded_layers: [],
      quantizer_args: { activation_bitwidth: 8, param_bitwidth: 8 },
    };
    const v200 = {
      version: '2.0.0',
      producer: { package: 'aimet-onnx', version: '2.0.0' },
      encodings: [
        { name: 'x', output_dtype: 'uint8', y_scale: 0.0235, y_zero_point: 120 },
        { name: 'relu', output_dtype: 'uint8', y_scale: 0.0125 },
        { name: 'W', output_dtype: 'int8', y_scale: wScale, axis: 0 },
        { name: 'fp16_act', output_dtype: 'float16', y_scale: 1 },
      ],
    };
    const v061 = {
      version: '0.6.1',
      activation_encodings: {
        x: [
          {
            bitwidth: 8,
            dtype: 'int',
            is_symmetric: 'False',
            min: -2.82,
            max: 3.1725,
            offset: -120,
            scale: 0.0235,
          },
        ],
        relu: [
          { bitwidth: 8, dtype: 'int', is_symmetric: 'False', min: 0, max: 3.1875, offset: 0, scale: 0.0125 },
        ],
      },
      param_encodings: {
        W: wScale.map((s) => ({
          bitwidth: 8,
          dtype: 'int',
          is_symmetric: 'True',
          min: -128 * s,
          max: 127 * s,
          offset: -128,
          scale: s,
        })),
      },
    };
    const a = parseAimetEncodings(JSON.stringify(v100));
    const b = parseAimetEncodings(v200);
    const c = parseAimetEncodings(JSON.stringify(v061));
    assert.deepEqual(a.skipped, [{ name: 'lpbq', reason: 'LPBQ encodings are not supported' }]);
    assert.deepEqual(b.skipped, []);
    assert.ok(!b.encodings.has('fp16_act'), 'float16 entries carry no parameters');
    for (const [name, zp, signed] of [
      ['x', 120, false],
      ['relu', 0, false],
      ['W', 0, true],
    ] as const) {
      for (const f of [a, b, c]) {
        const e = f.encodings.get(name)!.encoding;
        assert.equal(e.zeroPoint[0], zp, `${f.version} ${name} zero point`);
        assert.equal(e.scheme.signed, signed, `${f.version} ${name} signed`);
        assert.equal(e.scheme.bits, 8);
      }
      assert.deepEqual(a.encodings.get(name)!.encoding.scale, b.encodings.get(name)!.encoding.scale);
      assert.deepEqual(c.encodings.get(name)!.encoding.scale, b.encodings.get(name)!.encoding.scale);
    }
    assert.equal(a.encodings.get('W')!.axisKnown, false);
    assert.equal(b.encodings.get('W')!.axisKnown, true);

    const sim = new QuantSim(convNet(), options);
    const r = applyEncodings(sim, a, { finalize: false });
    assert.deepEqual(r.applied.sort(), ['W', 'relu', 'x']);
    assert.deepEqual(r.unmatched, ['not_in_model']);
    assert.deepEqual(r.mismatched, [
      { name: 'W2', reason: '3 channel scales for a tensor with 10 channels on axis 1' },
    ]);
    assert.deepEqual(r.missing.sort(), ['W2', 'b2', 'mm', 'y']);
    const x = sim.quantizers.get('x')!.encoding!;
    assert.deepEqual(
      [x.scale[0], x.zeroPoint[0], x.scheme.symmetry],
      [Math.fround(0.0235), 120, 'asymmetric'],
    );
    const w = sim.quantizers.get('W')!.encoding!;
    assert.deepEqual(w.scheme.granularity, { kind: 'channel', axis: 0 });
    assert.equal(w.scheme.narrow, true, 'keeps the target’s narrow int8 grid: the file cannot say it');
    assert.deepEqual(Array.from(w.scale), wScale.map(Math.fround));
  });

  test('blocked 4-bit weights: 1.0.0 writes (channel, block) order, 2.0.0 nested [blocks, N]; both round-trip', async () => {
    const model = matmulNet();
    const opts: QuantSimOptions = {
      target: getTarget('ort-cpu'),
      weightOnly: true,
      weights: { bits: 4, signed: true, symmetry: 'symmetric', narrow: false, blockSize: 32 },
    };
    const sim = calibratedSim(model, opts);
    const enc = sim.quantizers.get('W')!.encoding!;
    assert.deepEqual(enc.scaleDims, [2, 48]);
    const v1 = exportAimetEncodings(sim, { version: '1.0.0' }) as {
      param_encodings: Record<string, unknown>[];
    };
    const w1 = v1.param_encodings[0];
    assert.deepEqual([w1.enc_type, w1.block_size, w1.bw, w1.is_sym], ['PER_BLOCK', 32, 4, true]);
    const scale1 = w1.scale as number[];
    for (let n = 0; n < 48; n++)
      for (let blk = 0; blk < 2; blk++) assert.equal(scale1[n * 2 + blk], enc.scale[blk * 48 + n]);
    assert.deepEqual(w1.offset, new Array(96).fill(-8));
    const v2 = exportAimetEncodings(sim, { version: '2.0.0' }) as { encodings: Record<string, unknown>[] };
    const w2 = v2.encodings[0];
    assert.deepEqual(
      [w2.output_dtype, w2.axis, w2.block_size, (w2.y_scale as number[][]).length],
      ['int4', 0, 32, 2],
    );
    for (const version of ['1.0.0', '2.0.0'] as AimetVersion[]) {
      const sim2 = new QuantSim(model, opts);
      const r = applyEncodings(sim2, parseAimetEncodings(aimetEncodingsJson(sim, { version })));
      assert.deepEqual([r.applied, r.mismatched, r.missing], [['W'], [], []]);
      assertSameEncodings(sim, sim2);
      const x = randomF32(128, 3);
      assert.deepEqual(await runQdq(sim2, x, [2, 64]), await runQdq(sim, x, [2, 64]));
    }
    assert.throws(() => exportAimetEncodings(sim, { version: '0.6.1' }), /no 0.6.1 form/);
  });

  test('malformed files are reported clearly', () => {
    assert.throws(() => parseAimetEncodings('{'), /not valid JSON/);
    assert.throws(() => parseAimetEncodings('[]'), /expected a JSON object/);
    assert.throws(() => parseAimetEncodings('{"version": "1.0.0"}'), /no encodings/);
    const f = parseAimetEncodings({
      version: '2.0.0',
      encodings: [
        { name: 'a', output_dtype: 'uint8', y_scale: 0.1, y_zero_point: 3.5 },
        { name: 'b', output_dtype: 'int8', y_scale: [0.1, 0.2] },
      ],
    });
    assert.deepEqual(f.skipped, [
      { name: 'a', reason: 'y_zero_point 3.5 is not an integer (fractional zero points are not supported)' },
      { name: 'b', reason: '2 scales without an axis' },
    ]);
  });
});
