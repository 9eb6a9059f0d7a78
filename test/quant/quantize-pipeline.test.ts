/**
 * The PTQ pipeline end to end on the bundled Fashion-MNIST CNN (quantizeModel: BN folding, QuantSim placement,
 * calibration over the 256 bundled calibration images, QDQ export), checked in ONNX Runtime on the 1000 bundled
 * test images: accuracy, the integer kernels ORT fuses, integer kernels vs the float simulation of the same QDQ
 * model, file size, --exclude, the power-of-two NPU target, w4a8 and fp8.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { openDataSource, readNpy } from '../../src/data/index.js';
import { loadModel, saveModel } from '../../src/io/model-file.js';
import type { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { type QuantizeOptions, quantizeModel } from '../../src/quant/quantize.js';
import { fakeQuantize, sqnrDb } from '../../src/quant/quantizer.js';
import type { QuantSim } from '../../src/quant/sim/quantsim.js';
import { type GraphOptimizationLevel, Session, type SessionOptions } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const EX = path.join(ROOT, 'examples', 'fashion-mnist');
const MODEL = path.join(EX, 'model.onnx');
const CALIB = path.join(EX, 'calib');
/** Float top-1 accuracy on the 1000 bundled test images, in percent (examples/fashion-mnist/README.md). */
const FLOAT_ACC = 92.1;
const CONV2 = '/features/features.4/Conv';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qnnx-ptq-pipeline-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

let testSet: Promise<{ x: HostTensor; y: BigInt64Array }> | undefined;
function testData() {
  testSet ??= (async () => ({
    x: await readNpy(path.join(EX, 'test-images.npy')),
    y: (await readNpy(path.join(EX, 'test-labels.npy'))).data as BigInt64Array,
  }))();
  return testSet;
}

interface Quantized {
  model: Model;
  sim: QuantSim;
  report: Awaited<ReturnType<typeof quantizeModel>>['report'];
  file: string;
}

const cache = new Map<string, Promise<Quantized>>();
/** quantizeModel over the 256 calibration images, saved to a temp file (memoized per options). */
function quantized(options: QuantizeOptions = {}): Promise<Quantized> {
  const key = JSON.stringify(options);
  let p = cache.get(key);
  if (!p) {
    p = (async () => {
      const data = await openDataSource(CALIB, { inputName: 'input' });
      const r = await quantizeModel(
        loadModel(MODEL),
        data,
        (m) => Session.create(m, { graphOptimizationLevel: 'all', enableCpuMemArena: false }),
        options,
        data.size,
      );
      const file = path.join(tmp, `q${cache.size}.onnx`);
      saveModel(r.model, file);
      return { ...r, file };
    })();
    cache.set(key, p);
  }
  return p;
}

/** Logits of the 1000 test images (one batch). */
async function logits(
  file: string,
  level: GraphOptimizationLevel = 'all',
  extra: SessionOptions = {},
): Promise<Float32Array> {
  const { x } = await testData();
  const s = await Session.create(file, { graphOptimizationLevel: level, ...extra });
  try {
    return (await s.run({ input: x }, ['logits'])).logits.data as Float32Array;
  } finally {
    await s.release();
  }
}

async function accuracyPct(l: Float32Array): Promise<number> {
  const { y } = await testData();
  let correct = 0;
  for (let i = 0; i < y.length; i++) {
    let best = 0;
    for (let k = 1; k < 10; k++) if (l[i * 10 + k] > l[i * 10 + best]) best = k;
    if (BigInt(best) === y[i]) correct++;
  }
  return (100 * correct) / y.length;
}

/** Op types of ORT's optimized graph of a model (domain-qualified outside the default domain). */
async function optimizedOps(file: string): Promise<string[]> {
  const out = path.join(tmp, `${path.basename(file, '.onnx')}.optimized.onnx`);
  const s = await Session.create(file, { graphOptimizationLevel: 'all', optimizedModelFilePath: out });
  await s.release();
  return loadModel(out).graph.nodes.map((n) => (n.domain ? `${n.domain}:${n.opType}` : n.opType));
}

const FLOAT_CONVS = new Set(['Conv', 'com.microsoft:FusedConv', 'com.microsoft.nchwc:Conv']);

/** Names of the tensors every DequantizeLinear reads its quantized data from. */
function dequantizedInitializers(m: Model): Map<string, DataType> {
  const out = new Map<string, DataType>();
  for (const n of m.graph.nodes) {
    if (n.opType !== 'DequantizeLinear') continue;
    const t = m.graph.initializer(n.inputs[0]);
    if (t) out.set(t.name, t.dtype);
  }
  return out;
}

describe('quantizeModel on the Fashion-MNIST CNN (w8a8, ort-cpu, minmax)', () => {
  test('accuracy on the 1000 bundled test images is within 0.5 points of float', async () => {
    const floatAcc = await accuracyPct(await logits(MODEL));
    assert.equal(floatAcc, FLOAT_ACC);
    const q = await quantized();
    const acc = await accuracyPct(await logits(q.file));
    // measured: 92.2 % (922/1000)
    assert.ok(Math.abs(acc - floatAcc) <= 0.5, `quantized ${acc} % vs float ${floatAcc} %`);
    assert.equal(q.report.calibration.samples, 256);
    assert.equal(q.report.calibration.mode, 'reduce');
    assert.deepEqual(q.report.quantizers, { activations: 5, shared: 3, weights: 4, biases: 4, constants: 0 });
  });

  test("ORT's optimized graph runs QLinearConv and QGemm and no float Conv", async () => {
    const ops = await optimizedOps((await quantized()).file);
    assert.equal(ops.filter((o) => o === 'com.microsoft:QLinearConv').length, 2, ops.join(' '));
    assert.equal(ops.filter((o) => o === 'com.microsoft:QGemm').length, 2, ops.join(' '));
    assert.ok(!ops.some((o) => FLOAT_CONVS.has(o)), `float convolution left: ${ops.join(' ')}`);
    assert.ok(!ops.includes('Gemm'), ops.join(' '));
  });

  test('integer kernels (level all) and the float simulation (level basic) agree within one output LSB', async () => {
    const q = await quantized();
    const enc = q.sim.quantizers.get('logits')?.encoding;
    assert.ok(enc, 'the logits output has a quantizer');
    const lsb = enc.scale[0];
    const ints = await logits(q.file, 'all');
    const sim = await logits(q.file, 'basic');
    assert.equal(ints.length, sim.length);
    let worst = 0;
    let at = -1;
    for (let i = 0; i < ints.length; i++) {
      const d = Math.abs(ints[i] - sim[i]);
      if (d > worst) {
        worst = d;
        at = i;
      }
    }
    // measured: max |difference| = 1 LSB exactly (0.2207) on a few elements, 0 on the rest
    assert.ok(worst <= lsb * (1 + 1e-6), `element ${at}: ${ints[at]} vs ${sim[at]} (LSB ${lsb})`);
  });

  test('weights are stored as int8 initializers and the file shrinks below 0.3x', async () => {
    const q = await quantized();
    const dq = dequantizedInitializers(q.model);
    const weights = [...dq].filter(([name]) => (q.model.graph.initializer(name)?.dims.length ?? 0) >= 2);
    assert.equal(weights.length, 4, 'the two Conv and two Gemm weights');
    for (const [name, dtype] of weights) assert.equal(dtype, DataType.INT8, name);
    const biases = [...dq].filter(([name]) => q.model.graph.initializer(name)?.dims.length === 1);
    assert.equal(biases.filter(([, t]) => t === DataType.INT32).length, 4, 'int32 biases');
    let floatElements = 0;
    for (const t of q.model.graph.initializers.values())
      if (t.dtype === DataType.FLOAT) floatElements += t.size;
    assert.ok(floatElements < 1000, `${floatElements} float elements left (scales only expected)`);
    const ratio = fs.statSync(q.file).size / fs.statSync(MODEL).size;
    // measured: 0.265 (219 KB vs 828 KB)
    assert.ok(ratio < 0.3, `size ratio ${ratio.toFixed(3)}`);
    assert.ok(q.report.weightBytes.after < q.report.weightBytes.before * 0.26);
  });
});

describe('--exclude', () => {
  async function checkConv2Float(q: Quantized): Promise<void> {
    assert.ok(
      q.report.skipped.some((s) => s.node === CONV2 && s.opType === 'Conv'),
      JSON.stringify(q.report.skipped),
    );
    const conv = q.model.graph.nodes.find((n) => n.name === CONV2);
    assert.ok(conv);
    const w = q.model.graph.initializer(conv.inputs[1]);
    assert.ok(w, `${CONV2} reads its weight from an initializer, not from a DequantizeLinear`);
    assert.equal(w.dtype, DataType.FLOAT);
    const ops = await optimizedOps(q.file);
    assert.equal(ops.filter((o) => o === 'com.microsoft:QLinearConv').length, 1, ops.join(' '));
    assert.equal(ops.filter((o) => FLOAT_CONVS.has(o)).length, 1, ops.join(' '));
    const acc = await accuracyPct(await logits(q.file));
    assert.ok(Math.abs(acc - FLOAT_ACC) <= 0.5, `${acc}`);
  }

  test('a /regex/ naming one Conv leaves that Conv float', async () => {
    await checkConv2Float(await quantized({ exclude: ['/features\\.4\\/Conv$/'] }));
  });

  // PyTorch-exported names start with '/' and contain '/', but are names, not /regex/flags literals.
  test('an exact PyTorch-style node name (leading "/") leaves that Conv float', async () => {
    await checkConv2Float(await quantized({ exclude: [CONV2] }));
  });
});

describe('other targets and presets', () => {
  test('npu-symmetric-pow2: every scale is a power of two and every zero point is 0', async () => {
    const q = await quantized({ target: 'npu-symmetric-pow2' });
    const m = q.model;
    let scales = 0;
    for (const n of m.graph.nodes) {
      if (n.opType !== 'QuantizeLinear' && n.opType !== 'DequantizeLinear') continue;
      const s = m.graph.initializer(n.inputs[1]);
      assert.ok(s, `${n.name}: scale is an initializer`);
      for (const v of s.data as Float32Array) {
        assert.ok(v > 0 && Number.isInteger(Math.log2(v)), `${n.name}: scale ${v} is not a power of two`);
        scales++;
      }
      const zp = n.inputs[2] ? m.graph.initializer(n.inputs[2]) : undefined;
      const zeros = zp ? Array.from(zp.data as ArrayLike<number>) : [];
      assert.ok(
        zeros.every((v) => v === 0),
        `${n.name}: zero points ${zeros.slice(0, 4)}`,
      );
    }
    assert.ok(scales > 20, `${scales} scales checked`);
    for (const qz of q.sim.quantizers.values()) {
      if (qz.kind === 'activation') assert.equal(qz.scheme.signed, true, qz.tensor);
    }
    // measured: 91.8 % (int8 symmetric activations, per-tensor power-of-two scales)
    const acc = await accuracyPct(await logits(q.file));
    assert.ok(acc >= FLOAT_ACC - 1, `${acc}`);
  });

  test('w4a8: opset 21, int4 weights, 90.7 % on the 1000 test images (float 92.1 %)', async () => {
    const q = await quantized({ preset: 'w4a8' });
    assert.ok((q.model.opset('') ?? 0) >= 21, `opset ${q.model.opset('')}`);
    const int4 = [...dequantizedInitializers(q.model).values()].filter((t) => t === DataType.INT4).length;
    assert.equal(int4, 4, 'the four Conv/Gemm weights are int4');
    for (const qz of q.sim.quantizers.values()) if (qz.kind === 'weight') assert.equal(qz.scheme.bits, 4);
    // half the bytes of int8 weights (206,922 int4 values packed two per byte)
    assert.ok(
      q.report.weightBytes.after < q.report.weightBytes.before * 0.14,
      JSON.stringify(q.report.weightBytes),
    );
    const acc = await accuracyPct(await logits(q.file));
    // measured: 90.7 % (907/1000), -1.4 points: 4-bit per-channel weights with round-to-nearest and no AdaRound
    assert.ok(acc >= 89.5, `w4a8 accuracy ${acc} %`);
  });

  /**
   * S10 (algorithms.md): FP8 E4M3 has an almost distribution-independent SQNR of about 31.6 dB, and INT8 is at
   * least as accurate as FP8 on well-behaved (no outlier) distributions such as these CNN weights and activations.
   */
  test('fp8 (E4M3FN): weight SQNR ~31.6 dB as S10 predicts, and below int8 end to end', async () => {
    const q = await quantized({ preset: 'fp8' });
    assert.ok((q.model.opset('') ?? 0) >= 19);
    const g = q.sim.model.graph;
    for (const qz of q.sim.quantizers.values()) {
      if (qz.kind !== 'weight') continue;
      assert.equal(qz.scheme.format, 'float8e4m3fn');
      const t = g.initializer(qz.tensor)!;
      const x = t.data as Float32Array;
      const sqnr = sqnrDb(x, fakeQuantize(x, t.dims, qz.encoding!));
      // measured: 31.87 (conv2, 4,608 values), 31.58 (fc1, 200,704), 31.83 (fc2, 1,280); conv1 (144 values, 9 per
      // channel, each channel's max exact) 34.2. S10: 31.6 dB within +-0.5 dB on >= 2*10^5 values.
      if (t.size >= 4096) assert.ok(Math.abs(sqnr - 31.6) <= 1.0, `${qz.tensor}: ${sqnr.toFixed(2)} dB`);
      else assert.ok(sqnr >= 30.6, `${qz.tensor}: ${sqnr.toFixed(2)} dB`);
    }
    const ref = await logits(MODEL);
    // ORT's QDQ fusion (level extended/all) rejects float8 QDQ around Conv ("Type 'tensor(float8e4m3fn)' of input
    // parameter ... of operator (QLinearConv) ... is invalid"), so the fp8 model runs at level basic.
    const fp8 = await logits(q.file, 'basic');
    const int8 = await logits((await quantized()).file);
    const fp8Sqnr = sqnrDb(ref, fp8);
    const int8Sqnr = sqnrDb(ref, int8);
    // measured: fp8 26.96 dB, int8 37.05 dB; nine quantization points of ~31.6 dB each
    assert.ok(fp8Sqnr > 22 && fp8Sqnr < 31.6, `fp8 logits SQNR ${fp8Sqnr.toFixed(2)} dB`);
    assert.ok(int8Sqnr > fp8Sqnr, `int8 ${int8Sqnr.toFixed(2)} dB vs fp8 ${fp8Sqnr.toFixed(2)} dB`);
    const acc = await accuracyPct(fp8);
    assert.ok(Math.abs(acc - FLOAT_ACC) <= 1, `fp8 accuracy ${acc} %`);
  });

  // onnxruntime-node 1.30 at level 'extended'/'all' mis-optimizes float8 QDQ: (1) its QDQ selectors fuse the
  // float8 Q/DQ around Conv into QLinearConv, which fails type checking, so session creation fails; (2) with that
  // fusion turned off ('session.disable_quant_qdq': '1') the session loads but ReluQuantFusion deletes the Relu in
  // front of each float8 QuantizeLinear (valid only for a zero point at the bottom of an integer grid; float8's
  // zero point 0 is mid-range), so negative values pass and the logits are wrong (SQNR vs level basic: -5 dB).
  // Only level 'basic' runs float8 exports correctly; Session switches to it for float8 QDQ models.
  test('fp8 model runs correctly in a default Session (level all)', async () => {
    const q = await quantized({ preset: 'fp8' });
    const a = await logits(q.file, 'all');
    const b = await logits(q.file, 'basic');
    const agreement = sqnrDb(b, a);
    assert.ok(agreement > 35, `fp8 at level all vs basic: ${agreement.toFixed(2)} dB`);
  });
});
