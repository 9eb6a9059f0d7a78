/**
 * Post-training quantization, end to end: prepare the float model (Constant nodes to initializers, BatchNorm
 * folded, dead nodes removed, opset raised), place quantizers (QuantSim), compute weight encodings, calibrate
 * activations with ONNX Runtime, and export QDQ ONNX. Runs anywhere a Runner can be created (Node by default).
 */
import { QnnxError } from '../errors.js';
import type { Model } from '../ir/model.js';
import type { PassRecord } from '../ir/pass.js';
import { eliminateDeadNodes, foldBatchNorm, foldConstants, upgradeOpset } from '../ir/passes/index.js';
import type { Feeds, Runner } from '../runtime/session.js';
import { parseRangeMethod, type RangeMethod } from './analyzers/index.js';
import { exportQdq, requiredOpset } from './export/qdq.js';
import { getPreset, type PresetName } from './presets.js';
import { absorbAffineIntoQdq, absorbableAffineChains } from './rewrites/affine-absorb.js';
import { foldAffineIntoConv } from './rewrites/affine-into-conv.js';
import { compactQdq } from './rewrites/compact.js';
import { convTransposeToDepthToSpace } from './rewrites/convtranspose.js';
import { exactNamePattern } from './rewrites/pipeline.js';
import { calibrate, calibrationPlan } from './sim/calibrate.js';
import { QuantSim, type QuantSimOptions } from './sim/quantsim.js';
import { getTarget, type TargetProfile } from './sim/targets.js';

export interface QuantizeOptions {
  preset?: PresetName;
  /** A built-in target name or a parsed profile. Default 'ort-cpu'. */
  target?: string | TargetProfile;
  /** Weight granularity: 'tensor', 'channel', 'block:N' or 'vector:N' (per-vector, 4-bit... scales: 'vector:N:M'). */
  granularity?: string;
  /** Weight bits override (2-16). */
  weightBits?: number;
  weightSigned?: boolean;
  /** Activation bits override (8 or 16). */
  activationBits?: number;
  activationSigned?: boolean;
  /** Range method: minmax, moving-average[:m], percentile:P, mse, octav, entropy. Default minmax. */
  range?: string;
  exclude?: string[];
  include?: string[];
  /** Fold BatchNormalization before quantizing (default true). */
  foldBatchNorm?: boolean;
  onProgress?: (done: number, total: number | undefined) => void;
}

export interface QuantizeReport {
  preset: string;
  target: string;
  range: string;
  opset: { before: number; after: number };
  quantizers: { activations: number; shared: number; weights: number; biases: number; constants: number };
  skipped: { node: string; opType: string; reason: string }[];
  calibration: { samples: number; seconds: number; mode: string };
  weightBytes: { before: number; after: number };
  passes: PassRecord[];
}

/** Parses --granularity into the QuantSim weight override. */
export function parseGranularity(s: string | undefined): QuantSimOptions['weights'] {
  if (!s) return {};
  if (s === 'tensor' || s === 'channel') return { granularity: s };
  const m = /^(block|vector):(\d+)(?::(\d+))?$/.exec(s);
  if (!m) {
    throw new QnnxError(
      'E_USAGE',
      `--granularity must be tensor, channel, block:N or vector:N[:M], got '${s}'`,
    );
  }
  const size = Number(m[2]);
  if (size < 2) throw new QnnxError('E_USAGE', `block/vector size must be at least 2, got ${size}`);
  if (m[1] === 'block') return { blockSize: size };
  return { vector: { size, scaleBits: m[3] ? Number(m[3]) : 4 } };
}

/** Prepares a float model for quantization in place; returns the pass records. */
/**
 * `rewrites`: also apply the exact rewrites for integer kernels (affine folds into Convs, ConvTranspose(k = s) to
 * Conv + DepthToSpace); tests of those rewrites turn it off to apply them one at a time.
 */
export function prepareModel(model: Model, opset: number, foldBn = true, rewrites = true): PassRecord[] {
  const records: PassRecord[] = [];
  records.push(foldConstants(model));
  if (foldBn) records.push(foldBatchNorm(model));
  // Exact rewrites that let more of the model run in integer kernels (research part C).
  if (rewrites) {
    records.push(foldAffineIntoConv(model));
    records.push(convTransposeToDepthToSpace(model));
  }
  records.push(eliminateDeadNodes(model));
  if ((model.opset('') ?? 0) < opset) records.push(upgradeOpset(model, opset));
  return records;
}

export function buildSim(model: Model, options: QuantizeOptions): QuantSim {
  const preset = getPreset(options.preset ?? 'w8a8');
  if (!preset.sim) {
    throw new QnnxError('E_USAGE', `preset '${options.preset}' does not use calibration; use its own export`);
  }
  const target = typeof options.target === 'object' ? options.target : getTarget(options.target ?? 'ort-cpu');
  const weights = { ...preset.sim.weights, ...parseGranularity(options.granularity) };
  if (options.weightBits) weights.bits = options.weightBits;
  if (options.weightSigned !== undefined) weights.signed = options.weightSigned;
  const activations = { ...preset.sim.activations };
  if (options.activationBits) activations.bits = options.activationBits;
  if (options.activationSigned !== undefined) {
    activations.signed = options.activationSigned;
    activations.symmetry = options.activationSigned ? 'symmetric' : 'asymmetric';
  }
  return new QuantSim(model, {
    target,
    weights,
    activations,
    weightOnly: preset.sim.weightOnly,
    exclude: options.exclude,
    include: options.include,
  });
}

/**
 * Quantizes `model` (modified in place by the preparation passes) and returns the QDQ model and a report.
 * `makeRunner` creates an ONNX Runtime session for the calibration model.
 */
export async function quantizeModel(
  model: Model,
  samples: AsyncIterable<Feeds> | Iterable<Feeds>,
  makeRunner: (m: Model) => Promise<Runner & { release?: () => Promise<void> }>,
  options: QuantizeOptions = {},
  sampleCount?: number,
): Promise<{ model: Model; sim: QuantSim; report: QuantizeReport }> {
  const opsetBefore = model.opset('') ?? 0;
  const method: RangeMethod = parseRangeMethod(options.range ?? 'minmax');
  // Place once to learn the opset the export needs, then prepare and place for real.
  const probe = buildSim(model, options);
  const passes = prepareModel(model, requiredOpset(probe), options.foldBatchNorm ?? true);
  // Scalar affine chains (z = a·t + b) stay float here and are absorbed into the quantization parameters after
  // export, so they cost nothing at run time.
  const absorbable = absorbableAffineChains(model).nodes.map(exactNamePattern);
  let sim = buildSim(model, { ...options, exclude: [...(options.exclude ?? []), ...absorbable] });
  // Weights behind Constant nodes get quantizers only after preparation: the opset may need raising again.
  if ((model.opset('') ?? 0) < requiredOpset(sim)) {
    passes.push(upgradeOpset(model, requiredOpset(sim)));
    sim = buildSim(model, { ...options, exclude: [...(options.exclude ?? []), ...absorbable] });
  }
  if (sim.quantizers.size === 0 && hasSubgraphs(model)) {
    // A control-flow model whose computation lives in If/Loop/Scan bodies: they stay float (see docs/quantize.md).
    return { model, sim, report: emptyReport(options, sim, opsetBefore, model, passes) };
  }
  if (sim.quantizers.size === 0) {
    const ops = [...new Set(model.graph.nodes.map((n) => n.opType))].join(', ');
    throw new QnnxError(
      'E_USAGE',
      `the model has no quantizable ops for target '${sim.target.name}' (its ops: ${ops}); nothing would be quantized`,
      { reason: 'nothing-to-quantize' },
    );
  }
  sim.computeParameterEncodings();
  const plan = calibrationPlan(sim, method);
  const t0 = performance.now();
  let used = 0;
  if (sim.calibratedTensors().length > 0) {
    const runner = await makeRunner(plan.model);
    try {
      used = await calibrate(
        sim,
        plan,
        runner,
        samples,
        { method, onProgress: options.onProgress },
        sampleCount,
      );
    } finally {
      await runner.release?.();
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  sim.finalizeEncodings();
  const exported = exportQdq(sim);
  passes.push(absorbAffineIntoQdq(exported.model));
  passes.push(eliminateDeadNodes(exported.model));
  passes.push(compactQdq(exported.model));
  const qs = [...sim.quantizers.values()];
  const report: QuantizeReport = {
    preset: options.preset ?? 'w8a8',
    target: sim.target.name,
    range: options.range ?? 'minmax',
    opset: { before: opsetBefore, after: exported.model.opset('') ?? 0 },
    quantizers: {
      activations: qs.filter((q) => q.kind === 'activation' && !q.sharedWith).length,
      shared: qs.filter((q) => q.sharedWith).length,
      weights: qs.filter((q) => q.kind === 'weight').length,
      biases: qs.filter((q) => q.kind === 'bias').length,
      constants: qs.filter((q) => q.kind === 'constant').length,
    },
    skipped: sim.skipped.filter((k) => !absorbable.includes(exactNamePattern(k.node))),
    calibration: { samples: used, seconds, mode: plan.mode },
    weightBytes: { before: exported.weightBytesBefore, after: exported.weightBytesAfter },
    passes,
  };
  return { model: exported.model, sim, report };
}

function hasSubgraphs(model: Model): boolean {
  return model.graph.nodes.some((n) => n.subgraphs().length > 0);
}

function emptyReport(
  options: QuantizeOptions,
  sim: QuantSim,
  opsetBefore: number,
  model: Model,
  passes: PassRecord[],
): QuantizeReport {
  return {
    preset: options.preset ?? 'w8a8',
    target: sim.target.name,
    range: options.range ?? 'minmax',
    opset: { before: opsetBefore, after: model.opset('') ?? 0 },
    quantizers: { activations: 0, shared: 0, weights: 0, biases: 0, constants: 0 },
    skipped: [
      {
        node: '',
        opType: 'If/Loop/Scan',
        reason: 'the computation is inside control-flow subgraphs, left float',
      },
    ],
    calibration: { samples: 0, seconds: 0, mode: 'none' },
    weightBytes: { before: 0, after: 0 },
    passes,
  };
}
