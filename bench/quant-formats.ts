/**
 * Number formats and granularities compared on synthetic distributions, with the research notes' paper values
 * next to ours (/work/shared/research/algorithms.md S10, S17), and the cost of each encoding analyzer.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/quant-formats.js
 *
 * 1. Activations-like data (2*10^5 values streamed in 10 batches, so MSE/OCTAV/percentile/entropy use
 *    histograms): SQNR of int8 / int4 (symmetric, full signed grid) and float8 E4M3FN / E5M2, per tensor, under
 *    each analyzer. Paper: S10's MSE-optimal SQNR (its INT8/E4M3/E5M2 columns; it assumes all E4M3 codes finite,
 *    see test/quant/paper.test.ts for the < 0.05 dB difference).
 * 2. Weights (S17's 256x1024, per-row scale U(0.2, 2), one observation: exact statistics): int4 / int8 narrow
 *    symmetric per tensor / per channel / per vector (V = 16) / two-level (M = 4) / float8 per channel, under
 *    minmax / mse / octav. Paper: S17's max-calibration table (the minmax column).
 * 3. Analyzer cost: ms per 10^6 values observed (10 batches of 10^5) plus computeEncoding, per tensor and per
 *    channel (64 channels).
 */
import { table } from '../src/cli/format.js';
import { type AnalyzerKind, createAnalyzer } from '../src/quant/analyzers/index.js';
import { fakeQuantize, sqnrDb } from '../src/quant/quantizer.js';
import { type Granularity, intScheme, type QuantScheme } from '../src/quant/scheme.js';
import {
  gaussian,
  gaussianWithOutliers,
  laplace,
  rowScaledWeights,
  studentT,
} from '../test/quant/synthetic.js';

const t0 = performance.now();

function scheme(format: string, g: Granularity = { kind: 'tensor' }, narrow = false): QuantScheme {
  if (format === 'int8') return intScheme(8, { granularity: g, narrow });
  if (format === 'int4') return intScheme(4, { granularity: g, narrow });
  return { ...intScheme(8, { granularity: g }), format: format as QuantScheme['format'] };
}

function calibrated(
  kind: AnalyzerKind,
  s: QuantScheme,
  x: Float32Array,
  dims: number[],
  batches: number,
): number {
  let a: ReturnType<typeof createAnalyzer>;
  try {
    a = createAnalyzer(kind, s);
  } catch {
    return Number.NaN; // the analyzer does not support this format or granularity
  }
  const per = x.length / batches;
  const bdims = [...dims];
  bdims[0] /= batches;
  for (let k = 0; k < batches; k++) a.observe(x.subarray(k * per, (k + 1) * per), bdims);
  return sqnrDb(x, fakeQuantize(x, dims, a.computeEncoding()));
}

const fmt = (v: number) => (Number.isNaN(v) ? 'n/a' : v.toFixed(2));

// ---------------------------------------------------------------------------------------------------------------
// 1. distributions x formats x analyzers (per tensor)
// ---------------------------------------------------------------------------------------------------------------

const N = 200000;
const dists: [string, Float32Array, Record<string, number>][] = [
  ['N(0,1)', gaussian(N, 1), { int8: 40.5, float8e4m3fn: 31.6, float8e5m2: 25.6 }],
  ['Laplace(1)', laplace(N, 2), { int8: 35.6, float8e4m3fn: 31.6, float8e5m2: 25.6 }],
  ['Student-t 3', studentT(N, 3), { int8: 23.7, float8e4m3fn: 31.6, float8e5m2: 25.6 }],
  ['N(0,1)+0.1% x50', gaussianWithOutliers(N, 4), { int8: 17.3, float8e4m3fn: 31.6, float8e5m2: 26.2 }],
];
const KINDS: AnalyzerKind[] = ['minmax', 'percentile', 'entropy', 'mse', 'octav'];
{
  const rows: (string | number)[][] = [];
  for (const [name, x, paper] of dists) {
    for (const f of ['int8', 'int4', 'float8e4m3fn', 'float8e5m2']) {
      const vals = KINDS.map((k) => calibrated(k, scheme(f), x, [N], 10));
      rows.push([name, f, ...vals.map(fmt), paper[f] !== undefined ? paper[f].toFixed(1) : '']);
    }
  }
  console.log('SQNR (dB), per tensor, 2e5 values in 10 batches (histograms); paper = S10 MSE-optimal\n');
  console.log(table(['distribution', 'format', ...KINDS, 'paper (mse)'], rows));
}

// ---------------------------------------------------------------------------------------------------------------
// 2. weights: granularities
// ---------------------------------------------------------------------------------------------------------------

{
  const dims = [256, 1024];
  const W = rowScaledWeights(256, 1024, 3, 'gaussian');
  const vec = (M: number, rounding: 'ceil' | 'round'): Granularity => ({
    kind: 'vector',
    axis: 1,
    size: 16,
    channelAxis: 0,
    scaleBits: M,
    scaleRounding: rounding,
  });
  const grans: [string, Granularity, Record<number, number>][] = [
    ['per-tensor', { kind: 'tensor' }, { 4: 12.01, 8: 37.07 }],
    ['per-channel', { kind: 'channel', axis: 0 }, { 4: 16.96, 8: 42.13 }],
    ['per-vector V=16', { kind: 'block', axis: 1, size: 16 }, { 4: 21.41, 8: 46.58 }],
    ['2-level M=4 round', vec(4, 'round'), { 4: 21.25, 8: 37.76 }],
    ['2-level M=4 ceil', vec(4, 'ceil'), { 8: 45.88 }],
  ];
  const rows: (string | number)[][] = [];
  for (const bits of [4, 8]) {
    for (const [name, g, paper] of grans) {
      const s = scheme(`int${bits}`, g, true);
      const vals = (['minmax', 'mse', 'octav'] as const).map((k) => calibrated(k, s, W, dims, 1));
      rows.push([`int${bits} narrow`, name, ...vals.map(fmt), paper[bits]?.toFixed(2) ?? '']);
    }
  }
  for (const f of ['float8e4m3fn', 'float8e5m2']) {
    const s = scheme(f, { kind: 'channel', axis: 0 });
    const vals = (['minmax', 'mse', 'octav'] as const).map((k) => calibrated(k, s, W, dims, 1));
    rows.push([f, 'per-channel', ...vals.map(fmt), '']);
  }
  console.log(
    '\nSQNR (dB), VS-Quant weights 256x1024 Gaussian, row scales U(0.2, 2) (exact); paper = S17 max calibration\n',
  );
  console.log(table(['format', 'granularity', 'minmax', 'mse', 'octav', 'paper (minmax)'], rows));
}

// ---------------------------------------------------------------------------------------------------------------
// 3. analyzer cost
// ---------------------------------------------------------------------------------------------------------------

{
  const x = gaussian(1e6, 9);
  // warm-up (JIT) on a small input, so that the first analyzer timed does not pay for it
  for (const kind of ['minmax', 'percentile', 'mse', 'octav'] as AnalyzerKind[]) {
    for (const g of [{ kind: 'tensor' }, { kind: 'channel', axis: 1 }] as Granularity[]) {
      const a = createAnalyzer(kind, intScheme(8, { granularity: g }));
      for (let k = 0; k < 3; k++) a.observe(x.subarray(k * 6400, (k + 1) * 6400), [100, 64]);
      a.computeEncoding();
    }
  }
  const rows: (string | number)[][] = [];
  for (const kind of [
    'minmax',
    'moving-average',
    'percentile',
    'entropy',
    'mse',
    'octav',
  ] as AnalyzerKind[]) {
    const row: (string | number)[] = [kind];
    for (const g of [{ kind: 'tensor' }, { kind: 'channel', axis: 1 }] as Granularity[]) {
      const a = createAnalyzer(kind, intScheme(8, { granularity: g }));
      const start = performance.now();
      for (let k = 0; k < 10; k++) a.observe(x.subarray(k * 1e5, (k + 1) * 1e5), [1e5 / 64, 64]);
      const observed = performance.now();
      a.computeEncoding();
      const done = performance.now();
      row.push(
        (observed - start).toFixed(1),
        (done - observed).toFixed(1),
        `${(a.retainedBytes() / 1024).toFixed(0)} KiB`,
      );
    }
    rows.push(row);
  }
  console.log('\nAnalyzer cost, 10^6 values (10 batches of 10^5, int8), ms\n');
  console.log(
    table(
      ['analyzer', 'tensor: observe', 'encode', 'state', '64 channels: observe', 'encode', 'state'],
      rows,
    ),
  );
}

console.log(`\ntotal ${((performance.now() - t0) / 1000).toFixed(1)} s`);
