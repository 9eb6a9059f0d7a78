/**
 * Post-training quantization with the rewrites of this folder, as a reference for where each belongs in
 * quantize.ts (prepare → rewrite → QuantSim → calibrate → export → post-export rewrite):
 *
 *  1. foldConstants, foldBatchNorm (existing passes);
 *  2. foldAffineIntoConv (exact), convTransposeToDepthToSpace (exact);
 *  3. eliminateDeadNodes, upgradeOpset (existing passes), then optionally resizeNearestToExpand (exact, off);
 *  4. nodes left float: the user's exclusions, the scalar affine chains `absorbAffineIntoQdq` will remove, and
 *     optionally the first Conv on a graph input with ≤ 4 channels (a 3-channel Conv is slower in int8);
 *  5. optional bias correction for weight rounding (one extra float pass over the samples for E[x]);
 *  6. QuantSim, weight encodings, calibration, exportQdq (existing);
 *  7. absorbAffineIntoQdq, eliminateDeadNodes on the exported model.
 *
 * Samples must be re-iterable (an array) when bias correction is on.
 */
import type { Model } from '../../ir/model.js';
import type { PassRecord } from '../../ir/pass.js';
import { eliminateDeadNodes, foldBatchNorm, foldConstants, upgradeOpset } from '../../ir/passes/index.js';
import type { Feeds, Runner } from '../../runtime/session.js';
import { copyModelStructure } from '../../runtime/taps.js';
import { parseRangeMethod } from '../analyzers/index.js';
import { exportQdq, requiredOpset } from '../export/qdq.js';
import { buildSim, type QuantizeOptions } from '../quantize.js';
import { calibrate, calibrationPlan } from '../sim/calibrate.js';
import type { QuantSim } from '../sim/quantsim.js';
import { getTarget, type TargetProfile } from '../sim/targets.js';
import { absorbAffineIntoQdq, absorbableAffineChains } from './affine-absorb.js';
import { foldAffineIntoConv } from './affine-into-conv.js';
import { correctWeightRoundingBias, empiricalBiasCorrection, inputChannelMeans } from './bias-correction.js';
import { Constants, isDefaultDomain, label } from './common.js';
import { compactQdq } from './compact.js';
import { convTransposeToDepthToSpace } from './convtranspose.js';
import { resizeNearestToExpand } from './resize.js';

export interface RewriteOptions {
  /** Exact fold of constant affine chains into unpadded Convs (default true). */
  foldAffine?: boolean;
  /** ConvTranspose(k = s) → Conv1x1 + DepthToSpace (default true). */
  convTranspose?: boolean;
  /**
   * Nearest integer-factor Resize → Unsqueeze + Expand + Reshape (exact; default false: ORT 1.30's uint8 Expand
   * is slower than its uint8 Resize, 27 ms vs 11 ms on PP-OCRv4 det 640x640).
   */
  resizeToExpand?: boolean;
  /** Leave scalar affine chains float and absorb them into the DQ parameters after export (default true). */
  absorbAffine?: boolean;
  /** Leave Convs reading a graph input with ≤ 4 channels float (default false). */
  firstConvFloat?: boolean;
  /** Bias correction for weight rounding (default true). */
  biasCorrection?: boolean;
  /** Passes of empirical bias correction after calibration (default 0: off; see empiricalBiasCorrection). */
  empiricalBiasCorrection?: number;
  /** Convs corrected per measurement in empirical bias correction (default 1). */
  layersPerStep?: number;
  /** Post-export byte savings (compactQdq): zero points always, short names when 'names' (default 'zero-points'). */
  compact?: 'none' | 'zero-points' | 'names';
  /** Ops removed from the target's data-movement list, i.e. left float (e.g. ['Resize']). */
  floatOps?: string[];
}

export interface RewriteQuantizeResult {
  model: Model;
  sim: QuantSim;
  passes: PassRecord[];
  excluded: string[];
}

/** An exclude/include pattern matching exactly this node name (names may contain '/', which patterns treat as regex). */
export function exactNamePattern(name: string): string {
  return `/^${name.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$/`;
}

/** Convs whose data input is a graph input with at most `maxChannels` channels (an image's first layer). */
export function firstConvs(model: Model, maxChannels = 4): string[] {
  const g = model.graph;
  const consts = new Constants(g);
  const inputs = new Set(g.inputs.map((v) => v.name));
  return g.nodes
    .filter((n) => {
      if (n.opType !== 'Conv' || !isDefaultDomain(n) || !inputs.has(n.inputs[0] ?? '')) return false;
      const w = consts.get(n.inputs[1]);
      return w !== undefined && w.dims[1]! * n.attrInt('group', 1) <= maxChannels;
    })
    .map(label);
}

/** The target with `floatOps` removed from every op list (so those ops stay float). */
export function targetWithFloatOps(
  target: string | TargetProfile | undefined,
  floatOps: string[],
): TargetProfile {
  const t = typeof target === 'object' ? structuredClone(target) : getTarget(target ?? 'ort-cpu');
  if (floatOps.length === 0) return t;
  const drop = (xs: string[]) => xs.filter((x) => !floatOps.includes(x));
  return {
    ...t,
    name: `${t.name}+float(${floatOps.join(',')})`,
    quantizedOps: drop(t.quantizedOps),
    sharedEncodingOps: drop(t.sharedEncodingOps),
    fusedActivations: drop(t.fusedActivations),
  };
}

/** Quantizes `model` (prepared and rewritten in place) with the rewrites; returns the QDQ model. */
export async function quantizeWithRewrites(
  model: Model,
  samples: readonly Feeds[],
  makeRunner: (m: Model) => Promise<Runner & { release?: () => Promise<void> }>,
  options: QuantizeOptions = {},
  rewrites: RewriteOptions = {},
): Promise<RewriteQuantizeResult> {
  const target = targetWithFloatOps(options.target, rewrites.floatOps ?? []);
  const opts: QuantizeOptions = { ...options, target };
  const passes: PassRecord[] = [];
  const opset = requiredOpset(buildSim(model, opts));
  passes.push(foldConstants(model));
  if (options.foldBatchNorm ?? true) passes.push(foldBatchNorm(model));
  if (rewrites.foldAffine ?? true) passes.push(foldAffineIntoConv(model));
  if (rewrites.convTranspose ?? true) passes.push(convTransposeToDepthToSpace(model));
  passes.push(eliminateDeadNodes(model));
  if ((model.opset('') ?? 0) < opset) passes.push(upgradeOpset(model, opset));
  // After the opset upgrade: the rewrite writes opset-13 Unsqueeze (axes as an input) when the model is at 13+.
  if (rewrites.resizeToExpand ?? false) passes.push(resizeNearestToExpand(model));

  const excluded: string[] = [];
  if (rewrites.absorbAffine ?? true) excluded.push(...absorbableAffineChains(model).nodes);
  if (rewrites.firstConvFloat) excluded.push(...firstConvs(model));
  opts.exclude = [...(options.exclude ?? []), ...excluded.map(exactNamePattern)];

  const reference = copyModelStructure(model);
  if (rewrites.biasCorrection ?? true) {
    const probe = buildSim(model, opts);
    probe.computeParameterEncodings();
    const means = await inputChannelMeans(model, samples, makeRunner);
    passes.push(
      correctWeightRoundingBias(model, means, (w) => {
        const q = probe.quantizers.get(w);
        return q?.kind === 'weight' && q.enabled ? q.encoding : undefined;
      }),
    );
  }

  const sim = buildSim(model, opts);
  sim.computeParameterEncodings();
  const method = parseRangeMethod(options.range ?? 'minmax');
  const plan = calibrationPlan(sim, method);
  if (sim.calibratedTensors().length > 0) {
    const runner = await makeRunner(plan.model);
    try {
      await calibrate(sim, plan, runner, samples, { method, onProgress: options.onProgress });
    } finally {
      await runner.release?.();
    }
  }
  const exportModel = (record: boolean) => {
    sim.finalizeEncodings();
    const m = exportQdq(sim).model;
    if (rewrites.absorbAffine ?? true) {
      const r = absorbAffineIntoQdq(m);
      if (record) passes.push(r);
    }
    return m;
  };
  if (rewrites.empiricalBiasCorrection) {
    passes.push(
      await empiricalBiasCorrection(model, reference, samples, makeRunner, {
        iterations: rewrites.empiricalBiasCorrection,
        layersPerStep: rewrites.layersPerStep,
        exportModel: () => exportModel(false),
      }),
    );
  }
  const exported = exportModel(true);
  passes.push(eliminateDeadNodes(exported));
  const compact = rewrites.compact ?? 'zero-points';
  if (compact !== 'none') passes.push(compactQdq(exported, { shortNames: compact === 'names' }));
  return { model: exported, sim, passes, excluded };
}
