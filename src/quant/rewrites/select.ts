/**
 * Node selection helpers of the PTQ pipeline (src/quant/quantize.ts): exact-name exclusion patterns, the first
 * Convs of an image model (left float by `rewrites.firstConvFloat`), and a target with some ops left float.
 */
import type { Model } from '../../ir/model.js';
import { getTarget, type TargetProfile } from '../sim/targets.js';
import { Constants, isDefaultDomain, label } from './common.js';

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
