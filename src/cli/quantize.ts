/** `qnnx quantize <in.onnx> -o <out.onnx> --calib <dir|glob> [--preset ...] ...` */
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { type DataSource, openDataSource, readNpy } from '../data/index.js';
import { isQnnxError, QnnxError } from '../errors.js';
import { compareModels, type Labels, measureNoiseGain, type NoiseGainReport } from '../eval/index.js';
import { loadModel, saveModel } from '../io/model-file.js';
import type { Model } from '../ir/model.js';
import { autoQuantize } from '../ptq/autoquant.js';
import { exportDynamicInt8 } from '../quant/export/dynamic.js';
import { convertToFloat16 } from '../quant/export/fp16.js';
import { exportWeightOnly } from '../quant/export/matmulnbits.js';
import { correctWeightOnlyBias } from '../quant/export/weight-only.js';
import { PRESETS, type PresetName } from '../quant/presets.js';
import { prepareModel, type QuantizeOptions, quantizeModel } from '../quant/quantize.js';
import { getTarget, parseTarget, TARGETS, type TargetProfile } from '../quant/sim/targets.js';
import { Session } from '../runtime/session.js';
import { bytes, table } from './format.js';
import { createProgress } from './progress.js';

interface QuantizeCliOptions {
  output: string;
  calib?: string;
  preset: string;
  weights?: string;
  activations?: string;
  granularity?: string;
  range?: string;
  target?: string;
  exclude?: string[];
  include?: string[];
  samples?: string;
  calibBatch?: string;
  inputName?: string;
  weightOnly?: string | boolean;
  cle?: boolean;
  biasCorrection?: string | boolean;
  adaround?: boolean;
  seqMse?: boolean;
  softmaxBias?: boolean;
  targetSqnr?: string;
  fallback?: string;
  maxFallbacks?: string;
  noiseGain?: boolean;
  firstConvFloat?: boolean;
  auto?: boolean;
  allowedDrop?: string;
  evalData?: string;
  evalLabels?: string;
  foldBn: boolean;
  json?: boolean;
}

const collect = (v: string, prev: string[] = []) => [...prev, ...v.split(',').filter(Boolean)];

export function registerQuantize(
  program: Command,
  run: (fn: () => Promise<void> | void) => Promise<void>,
): void {
  program
    .command('quantize')
    .description('post-training quantization: calibrate on sample data and write a QDQ ONNX model')
    .argument('<model>', 'float ONNX model (never modified)')
    .requiredOption('-o, --output <file>', 'quantized ONNX model (written atomically)')
    .option(
      '--calib <data>',
      'calibration data: a directory or glob of .npy (one sample each), .npz, images, .wav',
    )
    .option('--preset <name>', `${Object.keys(PRESETS).join('|')}`, 'w8a8')
    .option('--weights <type>', 'weight type override: int8, int4, int16 (float8: --preset fp8)')
    .option(
      '--activations <type>',
      'activation type override: uint8, int8, uint16, int16 (float8: --preset fp8)',
    )
    .option('--granularity <g>', 'weight granularity: tensor, channel, block:N, vector:N[:M]')
    .option(
      '--range <method>',
      'activation range: minmax, moving-average[:m], percentile:P, mse, octav, entropy',
      'minmax',
    )
    .option(
      '--target <name|file.json>',
      `target profile: ${Object.keys(TARGETS).join(', ')} or a JSON file`,
      'ort-cpu',
    )
    .option(
      '--exclude <nodes>',
      'node names, op types or /regex/ to leave float (repeatable, comma-separated)',
      collect,
    )
    .option('--include <nodes>', 'quantize only these nodes / op types / /regex/', collect)
    .option('--samples <n>', 'use at most n calibration samples')
    .option(
      '--calib-batch <n|auto>',
      "calibration samples per ONNX Runtime run (minmax, dynamic batch axis; same encodings, less overhead); auto: up to 16 while a run's inputs stay within 1 MiB",
      'auto',
    )
    .option('--input-name <name>', 'model input the .npy samples feed (default: the first input)')
    .option(
      '--weight-only [form]',
      'weight-only compression of Conv/ConvTranspose/Gemm/MatMul weights (int4 DequantizeLinear; MatMuls as matmulnbits (default) or blocked-dq); bits from --weights (default int4), --granularity channel or block:N (default: channels for convs, blocks of 32 for MatMul), --range minmax|mse; with --calib, bias correction',
    )
    .option('--cle', 'cross-layer equalization with high-bias absorption before quantizing')
    .option(
      '--bias-correction [kind]',
      'correct the bias shift weight quantization causes: empirical (default) or analytic (from BatchNorm statistics)',
    )
    .option('--adaround', 'AdaRound: learned rounding of the weights, layer by layer (algorithms.md S13 E)')
    .option('--seq-mse', 'sequential MSE: per-layer weight encodings minimizing output error')
    .option(
      '--softmax-bias',
      'softmax bias correction: restore the row sums of quantized softmax outputs feeding MatMuls (S08)',
    )
    .option(
      '--target-sqnr <dB>',
      'mixed precision: leave the fewest activations float (or --fallback int16) until the output SQNR on the first calibration samples reaches dB',
    )
    .option(
      '--fallback <kind>',
      'with --target-sqnr: float (fastest on ONNX Runtime CPU) or int16 (NPUs)',
      'float',
    )
    .option('--max-fallbacks <n>', 'with --target-sqnr: most quantizer groups to fall back', '16')
    .option(
      '--noise-gain',
      'also measure what the model can reach: the per-quantizer SQNR an output SQNR of --target-sqnr (default 30 dB) needs',
    )
    .option(
      '--auto',
      'AutoQuant: plain PTQ, then + CLE, then + AdaRound; stop at the first within --allowed-drop',
    )
    .option(
      '--allowed-drop <x>',
      'with --auto: accuracy points (with --eval-labels), else dB below 40 dB SQNR',
      '1',
    )
    .option('--eval-data <data>', 'with --auto: evaluation inputs (same forms as --calib)')
    .option('--eval-labels <file.npy>', 'with --auto: integer labels, one per output row')
    .option('--no-fold-bn', 'do not fold BatchNormalization before quantizing')
    .option(
      '--first-conv-float',
      'leave Convs that read a graph input with <= 4 channels float (ONNX Runtime CPU: PP-OCR det 0.50 -> 0.39x float latency; slower on Fashion-MNIST)',
    )
    .option('--json', 'print one JSON object; progress as JSON lines on stderr')
    .action((file: string, opts: QuantizeCliOptions) => run(() => quantizeCommand(file, opts)));
}

function typeOverride(
  kind: 'weights' | 'activations',
  s: string | undefined,
): Partial<QuantizeOptions> & { act?: object } {
  if (!s) return {};
  const m = /^(u?int)(\d+)$/.exec(s);
  if (m) {
    const bits = Number(m[2]);
    const signed = m[1] === 'int';
    return kind === 'weights'
      ? { weightBits: bits, weightSigned: signed }
      : { activationBits: bits, activationSigned: signed };
  }
  throw new QnnxError('E_USAGE', `--${kind} must look like int8, uint8, int4 or int16, got '${s}'`);
}

function loadTarget(spec: string): TargetProfile {
  if (spec.endsWith('.json')) {
    let text: string;
    try {
      text = fs.readFileSync(spec, 'utf8');
    } catch {
      throw new QnnxError('E_IO', `${spec}: cannot read the target profile`, { file: spec });
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new QnnxError('E_USAGE', `${spec}: not valid JSON (${(e as Error).message})`, { file: spec });
    }
    return parseTarget(json, spec);
  }
  return getTarget(spec);
}

async function quantizeCommand(file: string, opts: QuantizeCliOptions): Promise<void> {
  if (!(opts.preset in PRESETS)) {
    throw new QnnxError(
      'E_USAGE',
      `unknown preset '${opts.preset}' (known: ${Object.keys(PRESETS).join(', ')})`,
    );
  }
  if (opts.weightOnly || opts.preset === 'int8-dynamic' || opts.preset === 'fp16')
    return await uncalibrated(file, opts);
  if (!opts.calib) throw new QnnxError('E_USAGE', '--calib is required for calibrated presets');
  const limit = opts.samples === undefined ? undefined : Number(opts.samples);
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) {
    throw new QnnxError('E_USAGE', `--samples must be a positive integer, got '${opts.samples}'`);
  }
  const calibBatch = (opts.calibBatch ?? 'auto') === 'auto' ? 'auto' : Number(opts.calibBatch);
  if (calibBatch !== 'auto' && (!Number.isInteger(calibBatch) || calibBatch < 1)) {
    throw new QnnxError(
      'E_USAGE',
      `--calib-batch must be a positive integer or auto, got '${opts.calibBatch}'`,
    );
  }
  if (opts.activations === 'fp8' || opts.weights === 'fp8') {
    throw new QnnxError('E_USAGE', 'use --preset fp8 for float8 quantization');
  }
  const target = loadTarget(opts.target ?? 'ort-cpu');
  const t0 = performance.now();
  const model = loadModel(file);
  const bytesBefore = fs.statSync(file).size;
  const inputName = opts.inputName ?? model.graph.inputs.find((v) => !model.graph.initializer(v.name))?.name;
  if (!inputName) throw new QnnxError('E_USAGE', `${file}: the model has no inputs`, { file });
  const data = await openDataSource(opts.calib, { inputName, limit });
  const progress = createProgress('calibrate', opts.json ?? false);
  const options: QuantizeOptions = {
    preset: opts.preset as PresetName,
    target,
    granularity: opts.granularity,
    range: opts.range,
    exclude: opts.exclude,
    include: opts.include,
    foldBatchNorm: opts.foldBn,
    ...(opts.firstConvFloat ? { rewrites: { firstConvFloat: true } } : {}),
    calibrationBatch: calibBatch,
    cle: opts.cle,
    biasCorrection: biasCorrectionKind(opts.biasCorrection),
    adaround: opts.adaround,
    seqMse: opts.seqMse,
    softmaxBias: opts.softmaxBias,
    mixedPrecision: mixedPrecisionOptions(opts),
    onProgress: (d, t) => progress.update(d, t),
    ...typeOverride('weights', opts.weights),
    ...typeOverride('activations', opts.activations),
  };
  let result: Awaited<ReturnType<typeof quantizeModel>>;
  let autoSteps: unknown[] | undefined;
  try {
    // ORT's memory arena stays on: calibration with it is about 2x faster (bench/calibration-cost.ts); it keeps
    // its peak, which stays flat over samples of one shape.
    const makeRunner = makeRunnerFor(file);
    if (opts.auto) {
      if (!opts.evalData) throw new QnnxError('E_USAGE', '--auto needs --eval-data');
      const allowedDrop = Number(opts.allowedDrop ?? 1);
      if (!(allowedDrop >= 0)) {
        throw new QnnxError('E_USAGE', `--allowed-drop must be a number >= 0, got '${opts.allowedDrop}'`);
      }
      const samples = await openDataSource(opts.evalData, { inputName, split: true });
      const labels = opts.evalLabels ? ((await readNpy(opts.evalLabels)).data as Labels) : undefined;
      const { cle: _c, adaround: _a, seqMse: _s, biasCorrection: _b, ...base } = options;
      const r = await autoQuantize(model, data, { samples, labels }, { ...base, allowedDrop, makeRunner });
      autoSteps = r.report.steps;
      result = { model: r.model, sim: r.sim, report: r.report.quantize };
    } else result = await quantizeModel(model, data, makeRunner, options, data.size);
  } catch (e) {
    // Name the calibration file a failing sample came from, and the model when nothing can be quantized.
    if (isQnnxError(e) && typeof e.context.sample === 'number' && data.kind !== 'idx') {
      const sampleFile = data.files[e.context.sample];
      if (sampleFile)
        throw new QnnxError(
          e.code,
          `${sampleFile}: ${e.message}`,
          { ...e.context, file: sampleFile },
          { cause: e },
        );
    }
    if (isQnnxError(e) && e.context.reason === 'nothing-to-quantize') throw e.withFile(file);
    throw e;
  } finally {
    progress.stop();
  }
  const saved = saveModel(result.model, opts.output, { externalData: 'keep' });
  const check = await outputSqnr(file, result.model, data);
  const targetDb = options.mixedPrecision?.targetSqnrDb ?? 30;
  const gain = opts.noiseGain
    ? await noiseGain(file, result.sim, data, options, makeRunnerFor(file), check, targetDb)
    : undefined;
  const seconds = (performance.now() - t0) / 1000;
  const r = result.report;
  const summary = {
    input: file,
    output: opts.output,
    bytesBefore,
    bytesAfter: saved.bytes + saved.externalBytes,
    ...r,
    ...(autoSteps ? { autoQuant: autoSteps } : {}),
    sqnr: check,
    ...(gain ? { noiseGain: gain } : {}),
    seconds,
  };
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    return;
  }
  const q = r.quantizers;
  process.stdout.write(
    `${table(
      ['', 'value'],
      [
        ['model', `${file} -> ${opts.output}`],
        ['preset / target', `${r.preset} / ${r.target}`],
        [
          'size',
          `${bytes(bytesBefore)} -> ${bytes(summary.bytesAfter)} (${((summary.bytesAfter / bytesBefore) * 100).toFixed(1)}%)`,
        ],
        ['opset', `${r.opset.before} -> ${r.opset.after}`],
        [
          'quantizers',
          `${q.weights} weights, ${q.biases} biases, ${q.activations} activations (+${q.shared} shared), ${q.constants} constants`,
        ],
        [
          'calibration',
          `${r.calibration.samples} samples, ${r.range}, ${r.calibration.seconds.toFixed(2)} s (${r.calibration.mode}` +
            `${batchNote(r.calibration.batch)})`,
        ],
        [
          'left float',
          r.skipped.length ? r.skipped.map((s) => s.node || s.opType).join(', ') : 'none excluded',
        ],
        ...(autoSteps ?? []).map((step) => {
          const t = step as {
            step: string;
            accuracy?: number;
            sqnrDb?: number;
            drop: number;
            withinDrop: boolean;
          };
          const acc = t.accuracy === undefined ? '' : `accuracy ${t.accuracy.toFixed(2)} %, `;
          const sq = t.sqnrDb === undefined ? '' : `SQNR ${t.sqnrDb.toFixed(2)} dB, `;
          return [
            'autoquant step',
            `${t.step}: ${acc}${sq}drop ${t.drop.toFixed(2)}${t.withinDrop ? ' (within)' : ''}`,
          ];
        }),
        ...(r.mixedPrecision
          ? [
              [
                'mixed precision',
                `${r.mixedPrecision.picks.length} ${r.mixedPrecision.fallback} fallbacks, SQNR ` +
                  `${r.mixedPrecision.baselineSqnrDb.toFixed(1)} -> ${r.mixedPrecision.sqnrDb.toFixed(1)} dB ` +
                  `(target ${r.mixedPrecision.targetSqnrDb} dB${r.mixedPrecision.met ? ', met' : ', not met'})`,
              ],
            ]
          : []),
        [
          'output SQNR',
          `${Object.entries(check.outputs)
            .slice(0, 3)
            .map(([k, v]) => `${fmtDb(v)} dB${Object.keys(check.outputs).length > 1 ? ` (${k})` : ''}`)
            .join(', ')} on ${check.samples} calibration sample${check.samples === 1 ? '' : 's'}`,
        ],
        ...(gain
          ? [
              [
                'noise gain',
                `${fmtDb(gain.gainDb)} dB (${gain.levelDb} dB noise on every quantized tensor -> ` +
                  `${fmtDb(gain.outputSqnrDb)} dB at the output)`,
              ],
              [
                `needed for ${gain.targetDb} dB`,
                `${fmtDb(gain.neededDb.weights)} dB per weight, ${fmtDb(gain.neededDb.activations)} dB per ` +
                  `activation, ${fmtDb(gain.neededDb.all)} dB for all; these quantizers are worth ` +
                  `${fmtDb(gain.worthDb)} dB`,
              ],
            ]
          : []),
        ['time', `${seconds.toFixed(2)} s`],
      ],
      ['l', 'l'],
    )}\n`,
  );
}

function makeRunnerFor(file: string) {
  return (m: Model) => Session.create(m, { graphOptimizationLevel: 'all', name: file });
}

const fmtDb = (v: number | undefined) =>
  v === undefined ? '?' : Number.isFinite(v) ? v.toFixed(1) : v > 0 ? 'inf' : String(v);

/** Calibration samples the summary's output SQNR and the noise-gain analysis run on. */
const CHECK_SAMPLES = 8;

/** Output SQNR of the written model against the float file, on the first calibration samples (in-sample). */
async function outputSqnr(
  file: string,
  quantized: Model,
  data: DataSource,
): Promise<{ samples: number; outputs: Record<string, number> }> {
  const reference = await Session.create(loadModel(file), { name: file });
  try {
    const candidate = await Session.create(quantized, { name: 'the quantized model' });
    try {
      const c = await compareModels(reference, candidate, data, { limit: CHECK_SAMPLES, warmup: 0 });
      return {
        samples: c.samples,
        outputs: Object.fromEntries(Object.entries(c.outputs).map(([k, v]) => [k, v.sqnrDb])),
      };
    } finally {
      await candidate.release();
    }
  } finally {
    await reference.release();
  }
}

interface NoiseGainSummary {
  levelDb: number;
  targetDb: number;
  samples: number;
  outputName: string;
  outputSqnrDb: number;
  gainDb: number;
  neededDb: { weights?: number; activations?: number; all?: number };
  /** The written model's output SQNR plus the gain: what its quantizers are worth on the noise scale. */
  worthDb?: number;
  entries: NoiseGainReport['entries'];
}

/**
 * --noise-gain: measureNoiseGain at the written model's quantizer positions. Techniques that change the float
 * model's weights or biases (CLE, bias correction, AdaRound, softmax bias) leave the sim's model no longer float,
 * so a plain run of the same placement (and the same fallbacks) provides the float model.
 */
async function noiseGain(
  file: string,
  sim: Awaited<ReturnType<typeof quantizeModel>>['sim'],
  data: DataSource,
  options: QuantizeOptions,
  makeRunner: ReturnType<typeof makeRunnerFor>,
  check: { outputs: Record<string, number> },
  targetDb: number,
): Promise<NoiseGainSummary> {
  let gainSim = sim;
  if (options.cle || options.biasCorrection || options.adaround || options.softmaxBias) {
    const {
      cle: _c,
      biasCorrection: _b,
      adaround: _a,
      softmaxBias: _s,
      seqMse: _q,
      mixedPrecision: _m,
      onProgress: _p,
      ...plain
    } = options;
    gainSim = (await quantizeModel(loadModel(file), data, makeRunner, plain, data.size)).sim;
    for (const [k, q] of gainSim.quantizers) q.enabled = sim.quantizers.get(k)?.enabled ?? q.enabled;
  }
  const r = await measureNoiseGain(gainSim, data, { maxSamples: CHECK_SAMPLES, targetDb });
  const by = (site: string) => r.entries.find((e) => e.site === site);
  const all = by('all') ?? r.entries[0]!;
  const written = check.outputs[r.outputName];
  return {
    levelDb: r.levelDb,
    targetDb,
    samples: r.samples,
    outputName: r.outputName,
    outputSqnrDb: all.outputSqnrDb,
    gainDb: all.gainDb,
    neededDb: {
      weights: by('weights')?.levelForTargetDb,
      activations: by('activations')?.levelForTargetDb,
      all: by('all')?.levelForTargetDb,
    },
    ...(written === undefined ? {} : { worthDb: written + all.gainDb }),
    entries: r.entries,
  };
}

/** --target-sqnr, --fallback and --max-fallbacks as mixed-precision options (undefined without --target-sqnr). */
function mixedPrecisionOptions(opts: QuantizeCliOptions): QuantizeOptions['mixedPrecision'] {
  if (opts.targetSqnr === undefined) return undefined;
  const target = Number(opts.targetSqnr);
  if (!Number.isFinite(target)) {
    throw new QnnxError('E_USAGE', `--target-sqnr must be a number of dB, got '${opts.targetSqnr}'`);
  }
  const fallback = opts.fallback ?? 'float';
  if (fallback !== 'float' && fallback !== 'int16') {
    throw new QnnxError('E_USAGE', `--fallback must be float or int16, got '${fallback}'`);
  }
  const maxFallbacks = Number(opts.maxFallbacks ?? 16);
  if (!Number.isInteger(maxFallbacks) || maxFallbacks < 0) {
    throw new QnnxError('E_USAGE', `--max-fallbacks must be an integer >= 0, got '${opts.maxFallbacks}'`);
  }
  // The library's pick tolerance (2 % noise) is kept: quantizers harmful only together (the openWakeWord
  // melspectrogram) need picks that change little on their own; the cap bounds what a plateau can cost.
  return { targetSqnrDb: target, fallback, maxFallbacks };
}

/**
 * Presets that need no calibration data: dynamic int8, fp16 and weight-only compression (which uses --calib,
 * when given, for bias correction).
 */
async function uncalibrated(file: string, opts: QuantizeCliOptions): Promise<void> {
  const t0 = performance.now();
  const model = loadModel(file);
  const bytesBefore = fs.statSync(file).size;
  let out: Model;
  let detail: Record<string, unknown>;
  if (opts.weightOnly) {
    const form = opts.weightOnly === true ? 'matmulnbits' : opts.weightOnly;
    if (form !== 'matmulnbits' && form !== 'blocked-dq') {
      throw new QnnxError('E_USAGE', `--weight-only must be matmulnbits or blocked-dq, got '${form}'`);
    }
    const bits = opts.weights ? Number(/^u?int(\d+)$/.exec(opts.weights)?.[1]) : 4;
    if (bits !== 4 && bits !== 8)
      throw new QnnxError('E_USAGE', '--weight-only supports int4 and int8 weights');
    if (opts.calib === undefined && opts.samples !== undefined) {
      throw new QnnxError('E_USAGE', '--samples needs --calib');
    }
    const g = opts.granularity ?? '';
    const block = /^block:(\d+)$/.exec(g)?.[1];
    if (g && g !== 'channel' && !block) {
      throw new QnnxError('E_USAGE', `--weight-only takes --granularity channel or block:N, got '${g}'`);
    }
    const range = opts.range === undefined || opts.range === 'minmax' ? 'minmax' : opts.range;
    if (range !== 'minmax' && range !== 'mse') {
      throw new QnnxError('E_USAGE', `--weight-only takes --range minmax or mse, got '${range}'`);
    }
    // BatchNorm folds into the Convs first: ONNX Runtime cannot fold it once a DequantizeLinear feeds the weight.
    const opsetBefore = model.opset('') ?? 0;
    prepareModel(model, form === 'blocked-dq' ? 21 : opsetBefore, opts.foldBn);
    const r = exportWeightOnly(model, {
      bits,
      blockSize: block ? Number(block) : 32,
      granularity: g === 'channel' ? 'channel' : block ? 'block' : undefined,
      range,
      form,
      exclude: opts.exclude,
    });
    let correction: Record<string, unknown> | undefined;
    if (opts.calib) {
      const inputName =
        opts.inputName ?? model.graph.inputs.find((v) => !model.graph.initializer(v.name))?.name;
      const limit = opts.samples === undefined ? undefined : Number(opts.samples);
      const data = await openDataSource(opts.calib, { inputName, limit });
      const c = await correctWeightOnlyBias(model, r, data, (m) => Session.create(m, { name: file }));
      correction = { corrected: c.corrected, skipped: c.skipped.length, relativeShift: c.relativeShift };
    }
    out = r.model;
    detail = {
      preset: `weight-only-int${bits}`,
      form,
      granularity: g || 'default',
      range,
      opset: { before: opsetBefore, after: out.opset('') ?? 0 },
      replaced: r.replaced,
      skipped: r.skipped,
      ...(correction ? { biasCorrection: correction } : {}),
    };
  } else if (opts.preset === 'int8-dynamic') {
    const r = exportDynamicInt8(model, { exclude: opts.exclude });
    out = r.model;
    detail = { preset: opts.preset, replaced: r.replaced };
  } else {
    const r = convertToFloat16(model, {});
    out = r.model;
    detail = { preset: opts.preset };
  }
  const saved = saveModel(out, opts.output, { externalData: 'keep' });
  const bytesAfter = saved.bytes + saved.externalBytes;
  const summary = {
    input: file,
    output: opts.output,
    bytesBefore,
    bytesAfter,
    ...detail,
    seconds: (performance.now() - t0) / 1000,
  };
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    return;
  }
  process.stdout.write(
    `${table(
      ['', 'value'],
      [
        ['model', `${file} -> ${opts.output}`],
        ['preset', String(detail.preset)],
        [
          'size',
          `${bytes(bytesBefore)} -> ${bytes(bytesAfter)} (${((bytesAfter / bytesBefore) * 100).toFixed(1)}%)`,
        ],
        ['time', `${summary.seconds.toFixed(2)} s`],
      ],
      ['l', 'l'],
    )}\n`,
  );
}

function biasCorrectionKind(v: string | boolean | undefined): QuantizeOptions['biasCorrection'] {
  if (v === undefined || v === false) return undefined;
  if (v === true) return 'empirical';
  if (v === 'empirical' || v === 'analytic') return v;
  throw new QnnxError('E_USAGE', `--bias-correction must be empirical or analytic, got '${v}'`);
}

/** ", batch N" (with the reason when batching was asked for and not used); nothing at the default batch 1. */
function batchNote(b: { batchSize: number; reason?: string; auto?: true } | undefined): string {
  if (!b || (b.batchSize === 1 && (!b.reason || b.auto))) return '';
  return `, batch ${b.batchSize}${b.auto ? ' (auto)' : ''}${b.reason ? `: ${b.reason}` : ''}`;
}
