/**
 * Min/max calibration plans (src/quant/sim/calibrate.ts): the reduced plan (reductions only where a range cannot be
 * derived, no ReduceMin on non-negative outputs, statistics packed into one output per rank) must give exactly the
 * encodings that tapping the full activations gives. Encodings are compared bit for bit (tolerance 0): the plan
 * only changes where ranges are computed, never their values.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { openDataSource } from '../../../src/data/index.js';
import { isQnnxError } from '../../../src/errors.js';
import { loadModel } from '../../../src/io/model-file.js';
import { GraphBuilder, valueInfo } from '../../../src/ir/builder.js';
import { Graph } from '../../../src/ir/graph.js';
import { Model } from '../../../src/ir/model.js';
import { DataType } from '../../../src/onnx/dtype.js';
import type { RangeMethod } from '../../../src/quant/analyzers/index.js';
import type { Encoding } from '../../../src/quant/encoding.js';
import { requiredOpset } from '../../../src/quant/export/qdq.js';
import { buildSim, prepareModel } from '../../../src/quant/quantize.js';
import type { QuantScheme } from '../../../src/quant/scheme.js';
import {
  AUTO_BATCH,
  type CalibrationBatching,
  type CalibrationPlanOptions,
  calibrate,
  calibrationPlan,
  deriveRange,
} from '../../../src/quant/sim/calibrate.js';
import type { QuantSim } from '../../../src/quant/sim/quantsim.js';
import { type Feeds, type Runner, Session } from '../../../src/runtime/session.js';
import type { HostTensor } from '../../../src/tensor.js';
import { mulberry32 } from '../../helpers/ort.js';

const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
const EX = path.join(ROOT, 'examples', 'fashion-mnist');

async function fashionSamples(): Promise<Feeds[]> {
  const src = await openDataSource(path.join(EX, 'calib'), { inputName: 'input' });
  const out: Feeds[] = [];
  for await (const s of src) out.push(s);
  return out;
}

/** Calibrates a fresh sim with a plan layout and returns every calibrated tensor's encoding. */
async function encodingsWith(
  makeSim: () => QuantSim,
  samples: Feeds[],
  method: RangeMethod,
  options: CalibrationPlanOptions,
): Promise<{ encodings: Map<string, Encoding>; reductions?: number; outputs: number }> {
  const sim = makeSim();
  const plan = calibrationPlan(sim, method, options);
  const runner = await Session.create(plan.model);
  try {
    await calibrate(sim, plan, runner, samples, { method });
  } finally {
    await runner.release();
  }
  const encodings = new Map(sim.calibratedTensors().map((t) => [t, sim.quantizers.get(t)!.encoding!]));
  return { encodings, reductions: plan.reductions, outputs: plan.model.graph.outputs.length };
}

function assertSameEncodings(a: Map<string, Encoding>, b: Map<string, Encoding>, what: string): void {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: calibrated tensors`);
  for (const [t, ea] of a) {
    const eb = b.get(t)!;
    assert.deepEqual([...eb.scale], [...ea.scale], `${what}: scale of ${t}`);
    assert.deepEqual([...eb.zeroPoint], [...ea.zeroPoint], `${what}: zero point of ${t}`);
  }
}

describe('min/max calibration plans', () => {
  for (const method of [{ kind: 'minmax' }, { kind: 'moving-average', momentum: 0.01 }] as RangeMethod[]) {
    test(`Fashion-MNIST (${method.kind}): the reduced plan gives the encodings of full-activation taps`, async () => {
      const samples = await fashionSamples();
      // prepared as quantizeModel prepares it
      const makeSim = () => {
        const model = loadModel(path.join(EX, 'model.onnx'));
        prepareModel(model, requiredOpset(buildSim(model, {})));
        return buildSim(model, {});
      };
      const taps = await encodingsWith(makeSim, samples, method, { forceTaps: true });
      const reduced = await encodingsWith(makeSim, samples, method, {});
      const every = await encodingsWith(makeSim, samples, method, { layout: 'every-tensor' });
      assert.equal(taps.encodings.size, 5);
      assertSameEncodings(taps.encodings, reduced.encodings, 'reduced plan vs taps');
      assertSameEncodings(taps.encodings, every.encodings, 'every-tensor plan vs taps');
      // The three Relu outputs need only ReduceMax; the logits (Gemm) and the input need both.
      assert.equal(reduced.reductions, 7);
      assert.equal(every.reductions, 8);
      // logits plus one statistics output per rank (rank 4 after the convolutions, rank 2 after the Gemms)
      assert.equal(reduced.outputs, 3);
    });
  }
});

/**
 * A graph with every derivable step (HardSwish as Add/Clip/Mul, then Div, Mul by a negative constant, Sub, Sub
 * from a constant, Relu, Clip) between two Convs, plus non-negative outputs (Sigmoid, Relu of a non-ranged value).
 */
function chainModel(inputDims: (number | string)[] = [1, 4, 9, 9]): { model: Model; calibrated: string[] } {
  const m = new Model();
  m.irVersion = 8;
  m.opsetImports = [{ domain: '', version: 17 }];
  const g = new Graph();
  g.name = 'chain';
  m.graph = g;
  g.inputs.push(valueInfo('x', DataType.FLOAT, inputDims));
  const b = new GraphBuilder(g);
  const rng = mulberry32(7);
  const w1 = b.floats(
    'w1',
    [6, 4, 3, 3],
    Array.from({ length: 216 }, () => rng() - 0.5),
  );
  const w2 = b.floats(
    'w2',
    [3, 6, 1, 1],
    Array.from({ length: 18 }, () => rng() - 0.5),
  );
  const c = (v: number) => b.floats('c', [], [v]);
  const y = b.op('Conv', ['x', w1], { pads: [1, 1, 1, 1] }, 'conv1');
  const a = b.op('Add', [y, c(3)], {}, 'add3');
  const clip = b.op('Clip', [a, c(0), c(6)], {}, 'clip6');
  const hs = b.op('Mul', [y, clip], {}, 'hswish');
  const d = b.op('Div', [hs, c(6)], {}, 'div6');
  const neg = b.op('Mul', [c(-0.7), d], {}, 'mulneg');
  const sub = b.op('Sub', [neg, c(0.25)], {}, 'sub');
  const rsub = b.op('Sub', [c(1.5), sub], {}, 'rsub');
  const relu = b.op('Relu', [rsub], {}, 'relu');
  const clip2 = b.op('Clip', [rsub, c(-1), c(0.5)], {}, 'clip2');
  const z = b.op('Conv', [relu, w2], {}, 'conv2');
  const sig = b.op('Sigmoid', [z], {}, 'sig');
  const relu2 = b.op('Relu', [b.op('Mul', [z, z], {}, 'square')], {}, 'relu2');
  for (const o of [sig, relu2, clip2]) g.outputs.push(valueInfo(o, DataType.FLOAT));
  const calibrated = ['x', y, clip, hs, d, neg, sub, rsub, relu, clip2, z, sig, relu2];
  return { model: m, calibrated };
}

/** A minimal QuantSim stand-in: the calibrated tensors of chainModel with a uint8 per-tensor scheme. */
function chainSim(model: Model, calibrated: string[], scheme: QuantScheme): QuantSim {
  const quantizers = new Map(
    calibrated.map((t) => [t, { tensor: t, scheme, encoding: undefined as unknown }]),
  );
  return {
    model,
    quantizers,
    calibratedTensors: () => [...calibrated],
    setEncoding: (t: string, e: Encoding) => {
      quantizers.get(t)!.encoding = e;
    },
  } as unknown as QuantSim;
}

const UINT8: QuantScheme = {
  format: 'int',
  bits: 8,
  signed: false,
  symmetry: 'asymmetric',
  narrow: false,
  granularity: { kind: 'tensor' },
  scaleType: 'float',
};

function chainSamples(n: number, seed: number, size = 9): Feeds[] {
  const rng = mulberry32(seed);
  return Array.from({ length: n }, (_, i) => {
    const data = new Float32Array(4 * size * size);
    for (let k = 0; k < data.length; k++) data[k] = (rng() - 0.5) * (2 + i);
    return new Map([['x', { dtype: DataType.FLOAT, dims: [1, 4, size, size], data } as HostTensor]]);
  });
}

describe('range derivation', () => {
  test('every derived range equals the min/max of the tapped tensor, sample by sample (exact)', async () => {
    const { model, calibrated } = chainModel();
    const sim = chainSim(model, calibrated, UINT8);
    const plan = calibrationPlan(sim, { kind: 'minmax' });
    const kinds = new Map([...plan.ranges!].map(([t, s]) => [t, s.kind]));
    assert.equal(kinds.get('x'), 'reduced');
    assert.ok((plan.ranges!.get('x') as { finite?: unknown }).finite, 'the input has a NaN check');
    assert.deepEqual(plan.fromFeeds, []);
    for (const t of ['conv1', 'hswish', 'conv2', 'sig', 'relu2'].map((n) => `${n}_out`))
      assert.equal(kinds.get(t), 'reduced', t);
    for (const t of ['add3', 'clip6', 'div6', 'mulneg', 'sub', 'rsub', 'relu', 'clip2'].map(
      (n) => `${n}_out`,
    ))
      assert.equal(kinds.get(t), 'derived', t);
    // ReduceMax for the five and the input; ReduceMin only for the input, the Conv outputs and the HardSwish product
    assert.equal(plan.reductions, 10);

    const tapped = calibrationPlan(sim, { kind: 'minmax' }, { forceTaps: true });
    const taps = await Session.create(tapped.model);
    try {
      for (const feeds of chainSamples(6, 11)) {
        const out = await taps.run(feeds);
        const range = (t: string): Float64Array => {
          const x = (t === 'x' ? (feeds as Map<string, HostTensor>).get('x')! : out[t]).data as Float32Array;
          let lo = Number.POSITIVE_INFINITY;
          let hi = Number.NEGATIVE_INFINITY;
          for (const v of x) {
            lo = Math.min(lo, v);
            hi = Math.max(hi, v);
          }
          return Float64Array.of(lo, hi);
        };
        for (const [t, src] of plan.ranges!) {
          if (src.kind !== 'derived' || !calibrated.includes(t)) continue;
          const r = range(src.from);
          deriveRange(src.steps, r);
          // + 0 folds -0 into 0: the encoding's range always includes 0, so the sign of a zero bound is moot
          assert.deepEqual(
            [...r].map((v) => v + 0),
            [...range(t)].map((v) => v + 0),
            `derived range of ${t}`,
          );
        }
      }
    } finally {
      await taps.release();
    }
  });

  for (const method of [{ kind: 'minmax' }, { kind: 'moving-average', momentum: 0.3 }] as RangeMethod[]) {
    test(`chain graph (${method.kind}): reduced plan, every-tensor plan and taps give the same encodings`, async () => {
      const samples = chainSamples(8, 3);
      const { model, calibrated } = chainModel();
      const makeSim = () => chainSim(model, calibrated, UINT8);
      const taps = await encodingsWith(makeSim, samples, method, { forceTaps: true });
      const reduced = await encodingsWith(makeSim, samples, method, {});
      const every = await encodingsWith(makeSim, samples, method, { layout: 'every-tensor' });
      assertSameEncodings(taps.encodings, reduced.encodings, 'reduced plan vs taps');
      assertSameEncodings(taps.encodings, every.encodings, 'every-tensor plan vs taps');
    });
  }

  for (const [size, covers] of [
    [8, true],
    [7, false],
  ] as const) {
    test(`Relu -> MaxPool 2x2/2 on ${size}x${size}: the maximum is ${covers ? '' : 'not '}read after the pool`, async () => {
      const m = new Model();
      m.irVersion = 8;
      m.opsetImports = [{ domain: '', version: 17 }];
      const g = new Graph();
      m.graph = g;
      g.inputs.push(valueInfo('x', DataType.FLOAT, [1, 2, size, size]));
      const b = new GraphBuilder(g);
      const r = b.op('Relu', ['x'], {}, 'relu');
      const p = b.op('MaxPool', [r], { kernel_shape: [2, 2], strides: [2, 2] }, 'pool');
      g.outputs.push(valueInfo(p, DataType.FLOAT));
      const sim = chainSim(m, [r], UINT8);
      const plan = calibrationPlan(sim, { kind: 'minmax' });
      const reduceMax = plan.model.graph.nodes.filter((n) => n.opType === 'ReduceMax');
      assert.deepEqual(
        reduceMax.map((n) => n.inputs[0]),
        [covers ? p : r],
      );
      // The largest value sits in the last row, which a 2x2/2 pool over 7 rows never reads.
      const samples = [0, 1, 2].map((i) => {
        const data = new Float32Array(2 * size * size).map((_, k) => ((k * 37 + i) % 11) - 5);
        data[2 * size * size - 1] = 100 + i;
        return new Map([['x', { dtype: DataType.FLOAT, dims: [1, 2, size, size], data } as HostTensor]]);
      });
      const taps = await encodingsWith(
        () => chainSim(m, [r], UINT8),
        samples,
        { kind: 'minmax' },
        { forceTaps: true },
      );
      const reduced = await encodingsWith(() => chainSim(m, [r], UINT8), samples, { kind: 'minmax' }, {});
      assertSameEncodings(taps.encodings, reduced.encodings, 'reduced plan vs taps');
    });
  }
});

/** The rows (first input dim) of every run a runner makes. */
function countingRunner(runner: Runner, rows: number[]): Runner {
  return {
    name: runner.name,
    inputs: runner.inputs,
    outputs: runner.outputs,
    run: (feeds, names) => {
      const first = feeds instanceof Map ? [...feeds.values()][0] : Object.values(feeds)[0];
      rows.push(first.dims[0]);
      return runner.run(feeds, names);
    },
  };
}

interface BatchedRun {
  encodings: Map<string, Encoding>;
  used: number;
  /** Rows of each ORT run. */
  rows: number[];
  progress: number[];
  batching: CalibrationBatching[];
}

/** Calibrates a fresh sim with `batchSize` and returns the encodings, the runs and the progress calls. */
async function calibrateBatched(
  makeSim: () => QuantSim,
  samples: Feeds[],
  method: RangeMethod,
  batchSize: number | 'auto' | undefined,
  extra: { forceTaps?: boolean; limit?: number } = {},
): Promise<BatchedRun> {
  const sim = makeSim();
  const plan = calibrationPlan(sim, method, { forceTaps: extra.forceTaps });
  const session = await Session.create(plan.model);
  const rows: number[] = [];
  const progress: number[] = [];
  const batching: CalibrationBatching[] = [];
  let used: number;
  try {
    used = await calibrate(
      sim,
      plan,
      countingRunner(session, rows),
      samples,
      {
        method,
        batchSize,
        limit: extra.limit,
        onProgress: (done) => progress.push(done),
        onBatching: (b) => batching.push(b),
      },
      samples.length,
    );
  } finally {
    await session.release();
  }
  const encodings = new Map(sim.calibratedTensors().map((t) => [t, sim.quantizers.get(t)!.encoding!]));
  return { encodings, used, rows, progress, batching };
}

function fashionSim(): QuantSim {
  const model = loadModel(path.join(EX, 'model.onnx'));
  prepareModel(model, requiredOpset(buildSim(model, {})));
  return buildSim(model, {});
}

const range1 = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

describe('batched calibration', () => {
  test('Fashion-MNIST minmax: batches of 7 (not dividing 256) give the batch-1 encodings bit for bit', async () => {
    const samples = await fashionSamples();
    assert.equal(samples.length, 256);
    const one = await calibrateBatched(fashionSim, samples, { kind: 'minmax' }, undefined);
    const seven = await calibrateBatched(fashionSim, samples, { kind: 'minmax' }, 7);
    assertSameEncodings(one.encodings, seven.encodings, 'batch 7 vs batch 1');
    assert.equal(one.used, 256);
    assert.equal(seven.used, 256);
    assert.deepEqual(one.rows, new Array(256).fill(1));
    // 36 runs of 7 and one of 4
    assert.deepEqual(seven.rows, [...new Array(36).fill(7), 4]);
    // progress counts samples, not runs
    assert.deepEqual(seven.progress, range1(256));
    assert.deepEqual(seven.batching, [{ batchSize: 7 }]);
    // tapping the activations instead of reducing them: the same
    const taps = await calibrateBatched(fashionSim, samples, { kind: 'minmax' }, 16, { forceTaps: true });
    assertSameEncodings(one.encodings, taps.encodings, 'taps at batch 16 vs batch 1');
    assert.equal(taps.rows.length, 16);
    // a limit counts samples
    const limited = await calibrateBatched(fashionSim, samples, { kind: 'minmax' }, 4, { limit: 10 });
    assert.equal(limited.used, 10);
    assert.deepEqual(limited.rows, [4, 4, 2]);
  });

  test("batchSize 'auto': up to 16 samples while a run's inputs stay within 1 MiB, sized on the first sample", async () => {
    assert.deepEqual(AUTO_BATCH, { samples: 16, inputBytes: 1 << 20 });
    const samples = await fashionSamples();
    const one = await calibrateBatched(fashionSim, samples, { kind: 'minmax' }, 1);
    const auto = await calibrateBatched(fashionSim, samples, { kind: 'minmax' }, 'auto');
    assertSameEncodings(one.encodings, auto.encodings, 'auto vs batch 1');
    // 3 KiB images: the 16-sample cap
    assert.deepEqual(auto.rows, new Array(16).fill(16));
    assert.deepEqual(auto.batching, [{ batchSize: 16, auto: true }]);
    const { model, calibrated } = chainModel(['N', 4, 'H', 'W']);
    const makeSim = () => chainSim(model, calibrated, UINT8);
    // 4×128×128 floats = 256 KiB a sample: 4 per run
    const mid = await calibrateBatched(makeSim, chainSamples(6, 5, 128), { kind: 'minmax' }, 'auto');
    assert.deepEqual(mid.rows, [4, 2]);
    assert.deepEqual(mid.batching, [{ batchSize: 4, auto: true }]);
    // 1 MiB a sample: one per run, and why
    const big = await calibrateBatched(makeSim, chainSamples(2, 5, 256), { kind: 'minmax' }, 'auto');
    assert.deepEqual(big.rows, [1, 1]);
    assert.equal(big.batching.length, 1);
    assert.equal(big.batching[0]!.batchSize, 1);
    assert.equal(big.batching[0]!.auto, true);
    assert.match(big.batching[0]!.reason ?? '', /automatic: a sample's inputs are 1024 KiB/);
    // a method that cannot batch: batch 1 with its own reason
    const pct = await calibrateBatched(
      fashionSim,
      samples.slice(0, 8),
      { kind: 'percentile', percentile: 99 },
      'auto',
    );
    assert.deepEqual(pct.rows, new Array(8).fill(1));
    assert.match(pct.batching[0]!.reason ?? '', /percentile/);
  });

  test('moving-average and histogram methods run at batch 1 and say why', async () => {
    const samples = (await fashionSamples()).slice(0, 24);
    for (const method of [
      { kind: 'moving-average', momentum: 0.01 },
      { kind: 'percentile', percentile: 99.9 },
    ] as RangeMethod[]) {
      const one = await calibrateBatched(fashionSim, samples, method, undefined);
      const asked = await calibrateBatched(fashionSim, samples, method, 8);
      assertSameEncodings(one.encodings, asked.encodings, `${method.kind}: batchSize 8 vs 1`);
      assert.deepEqual(asked.rows, new Array(24).fill(1), method.kind);
      assert.equal(asked.batching.length, 1);
      assert.equal(asked.batching[0].batchSize, 1);
      assert.match(asked.batching[0].reason ?? '', new RegExp(method.kind));
    }
  });

  test('samples of another shape start a new batch; a fixed batch dim means batch 1', async () => {
    const { model, calibrated } = chainModel(['N', 4, 'H', 'W']);
    const makeSim = () => chainSim(model, calibrated, UINT8);
    const samples = [
      ...chainSamples(3, 5, 9),
      ...chainSamples(2, 6, 7),
      ...chainSamples(5, 7, 9),
      ...chainSamples(1, 8, 11),
    ];
    const one = await calibrateBatched(makeSim, samples, { kind: 'minmax' }, 1);
    const four = await calibrateBatched(makeSim, samples, { kind: 'minmax' }, 4);
    assertSameEncodings(one.encodings, four.encodings, 'mixed shapes, batch 4 vs batch 1');
    assert.deepEqual(four.rows, [3, 2, 4, 1, 1]);
    assert.deepEqual(four.progress, range1(11));
    assert.equal(four.used, 11);

    const fixed = chainModel([1, 4, 9, 9]);
    const r = await calibrateBatched(
      () => chainSim(fixed.model, fixed.calibrated, UINT8),
      chainSamples(5, 5, 9),
      { kind: 'minmax' },
      4,
    );
    assert.deepEqual(r.rows, [1, 1, 1, 1, 1]);
    assert.equal(r.batching[0].batchSize, 1);
    assert.match(r.batching[0].reason ?? '', /fixed batch dim of 1/);
  });

  test('a non-finite value in sample k of a batch is reported as sample k', async () => {
    const samples = await fashionSamples();
    // NaN in the input of sample 11 (the 4th sample of the second batch of 8)
    const bad = samples.slice(0, 20).map((s) => new Map(s as Map<string, HostTensor>));
    const x = bad[11].get('input')!;
    const data = (x.data as Float32Array).slice();
    data[300] = Number.NaN;
    bad[11].set('input', { ...x, data });
    const sampleOf = async (run: Promise<unknown>): Promise<unknown> => {
      try {
        await run;
      } catch (e) {
        assert.ok(isQnnxError(e), String(e));
        assert.match(e.message, new RegExp(`^calibration sample ${e.context.sample}: tensor '\\w+' holds`));
        return e.context.sample;
      }
      assert.fail('no error');
    };
    for (const batchSize of [1, 8]) {
      await assert.rejects(calibrateBatched(fashionSim, bad, { kind: 'minmax' }, batchSize), {
        message: "calibration sample 11: tensor 'input' holds NaN at element 300; check the input data",
      });
      assert.equal(
        await sampleOf(calibrateBatched(fashionSim, bad, { kind: 'minmax' }, batchSize)),
        11,
        `input NaN, batch ${batchSize}`,
      );
    }
    // finite inputs that overflow to Infinity inside the graph (a reduced statistic), sample 6 of batches of 4
    const { model, calibrated } = chainModel(['N', 4, 9, 9]);
    const chain = chainSamples(9, 3);
    ((chain[6] as Map<string, HostTensor>).get('x')!.data as Float32Array).fill(3e38);
    for (const batchSize of [1, 4]) {
      const rows: number[] = [];
      const sim = chainSim(model, calibrated, UINT8);
      const plan = calibrationPlan(sim, { kind: 'minmax' });
      const session = await Session.create(plan.model);
      try {
        const e = await sampleOf(
          calibrate(sim, plan, countingRunner(session, rows), chain, {
            method: { kind: 'minmax' },
            batchSize,
          }),
        );
        assert.equal(e, 6, `overflow, batch ${batchSize}`);
      } finally {
        await session.release();
      }
      // batch 4: [0..3] batched, then [4..7] batched, found non-finite and redone one by one up to sample 6
      if (batchSize === 4) assert.deepEqual(rows, [4, 4, 1, 1, 1]);
    }
  });
});
