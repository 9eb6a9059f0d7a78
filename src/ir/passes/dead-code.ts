/**
 * Dead-node elimination. ONNX Runtime executes every node, even those whose outputs nothing reads, so removing
 * them saves real time. Keeps nodes that (transitively) feed a graph output, including uses from inside
 * subgraphs; cleans subgraphs recursively; drops initializers and value_info nothing refers to any more.
 */
import { type Graph, implicitInputs, outerScopeNames } from '../graph.js';
import type { Model } from '../model.js';
import type { PassRecord } from '../pass.js';

/** Ops with side effects or randomness are still removed when unused; ONNX has no side-effecting standard ops. */
export function eliminateDeadNodes(model: Model): PassRecord {
  const stats = { nodesRemoved: 0, initializersRemoved: 0, valueInfoRemoved: 0 };
  cleanGraph(model.graph, new Set(), stats, true);
  return {
    pass: 'dead-node-elimination',
    changed: stats.nodesRemoved + stats.initializersRemoved + stats.valueInfoRemoved > 0,
    details: stats,
  };
}

function cleanGraph(
  g: Graph,
  extraLive: Set<string>,
  stats: { nodesRemoved: number; initializersRemoved: number; valueInfoRemoved: number },
  isMain: boolean,
): void {
  const producers = g.producers();
  const live = new Set<string>([...g.outputs.map((o) => o.name), ...extraLive]);
  const keep = new Set<(typeof g.nodes)[number]>();
  const work = [...live];
  while (work.length) {
    const name = work.pop()!;
    const p = producers.get(name);
    if (!p || keep.has(p)) continue;
    keep.add(p);
    for (const i of [...p.inputs, ...implicitInputs(p)]) {
      if (i && !live.has(i)) {
        live.add(i);
        work.push(i);
      }
    }
  }
  const before = g.nodes.length;
  g.nodes = g.nodes.filter((n) => keep.has(n));
  stats.nodesRemoved += before - g.nodes.length;
  for (const n of g.nodes) {
    for (const sg of n.subgraphs()) cleanGraph(sg, new Set(), stats, false);
  }
  // Initializers: keep those still used here or by subgraphs (outer-scope references). Main-graph initializers
  // that are also graph inputs are part of the model's interface and stay.
  const used = new Set<string>(g.outputs.map((o) => o.name));
  for (const n of g.nodes) {
    for (const i of n.inputs) used.add(i);
    for (const sg of n.subgraphs()) for (const o of outerScopeNames(sg)) used.add(o);
  }
  const inputNames = new Set(g.inputs.map((v) => v.name));
  for (const name of [...g.initializers.keys()]) {
    if (!used.has(name) && !(isMain && inputNames.has(name))) {
      g.initializers.delete(name);
      stats.initializersRemoved++;
    }
  }
  const defined = g.definedNames();
  const vBefore = g.valueInfo.length;
  g.valueInfo = g.valueInfo.filter((v) => defined.has(v.name) || used.has(v.name));
  stats.valueInfoRemoved += vBefore - g.valueInfo.length;
}
