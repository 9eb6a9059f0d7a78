/**
 * Specialization of control flow: bind graph inputs to constants (e.g. Silero VAD's sample-rate input `sr` to
 * 16000) and fix symbolic input dims, then fold constants and inline every If whose condition became a constant,
 * repeatedly. Silero's whole network lives in If branches chosen by `sr` and by shape checks; once they are
 * inlined, its Convs are in the main graph where QuantSim places quantizers (it never looks into subgraphs).
 * If nodes whose condition stays dynamic, Loop and Scan are kept as they are (their bodies stay float).
 *
 * The specialized model no longer has the bound inputs: it computes exactly what the original computes for
 * those input values (the taken branch, unchanged), so outputs are bit-identical for the bound values.
 */
import { GraphBuilder } from '../../ir/builder.js';
import { type Graph, Node } from '../../ir/graph.js';
import type { Model } from '../../ir/model.js';
import type { PassRecord } from '../../ir/pass.js';
import { eliminateDeadNodes, foldConstants } from '../../ir/passes/index.js';
import { Tensor } from '../../ir/tensor.js';
import { DataType } from '../../onnx/dtype.js';
import type { HostTensor } from '../../tensor.js';
import { Constants, isDefaultDomain } from './common.js';

/** Replaces graph inputs by constant initializers holding `values`. */
export function bindInputs(model: Model, values: Record<string, HostTensor>): PassRecord {
  const g = model.graph;
  const bound: string[] = [];
  for (const [name, v] of Object.entries(values)) {
    const i = g.inputs.findIndex((x) => x.name === name);
    if (i < 0) continue;
    g.inputs.splice(i, 1);
    g.addInitializer(new Tensor(name, v.dtype, [...v.dims], v.data));
    bound.push(name);
  }
  return { pass: 'bind-inputs', changed: bound.length > 0, details: { bound } };
}

/** Gives graph inputs fixed dims (their symbolic dims become numbers). */
export function fixInputShapes(model: Model, shapes: Record<string, number[]>): PassRecord {
  const fixed: string[] = [];
  for (const v of model.graph.inputs) {
    const dims = shapes[v.name];
    const tt = v.type?.tensor_type;
    if (!dims || !tt) continue;
    tt.shape = { dim: dims.map((d) => ({ dim_value: d })) };
    fixed.push(v.name);
  }
  return { pass: 'fix-input-shapes', changed: fixed.length > 0, details: { fixed } };
}

function renameEverywhere(g: Graph, from: string, to: string): void {
  for (const n of g.allNodes()) {
    n.inputs = n.inputs.map((i) => (i === from ? to : i));
    n.outputs = n.outputs.map((o) => (o === from ? to : o));
  }
  for (const sg of g.allGraphs()) {
    for (const o of sg.outputs) if (o.name === from) o.name = to;
    for (const v of sg.valueInfo) if (v.name === from) v.name = to;
  }
}

/** The single number a one-element constant holds (bool as 0/1), else undefined. */
function scalar(consts: Constants, name: string | undefined): number | undefined {
  const t = consts.get(name);
  if (t?.size !== 1 || t.dtype === DataType.STRING) return undefined;
  const v = (t.data as ArrayLike<number | bigint>)[0];
  return v === undefined ? undefined : Number(v);
}

/**
 * Evaluates a one-element value computed from one-element constants by comparison and logic ops (the shape and
 * sample-rate checks in front of If nodes; constant folding does not evaluate these ops).
 */
function evaluate(
  name: string,
  consts: Constants,
  producers: Map<string, Node>,
  depth = 0,
): number | undefined {
  const c = scalar(consts, name);
  if (c !== undefined || depth > 16) return c;
  const p = producers.get(name);
  if (!p || !isDefaultDomain(p)) return undefined;
  const arg = (i: number) => evaluate(p.inputs[i] ?? '', consts, producers, depth + 1);
  const [a, b] = [arg(0), p.inputs.length > 1 ? arg(1) : undefined];
  if (a === undefined) return undefined;
  switch (p.opType) {
    case 'Identity':
    case 'Squeeze':
    case 'Unsqueeze':
    case 'Reshape':
      return a;
    case 'Cast':
      return p.attrInt('to', 0) === DataType.BOOL ? Number(a !== 0) : a;
    case 'Not':
      return Number(a === 0);
  }
  if (b === undefined) return undefined;
  switch (p.opType) {
    case 'Equal':
      return Number(a === b);
    case 'Greater':
      return Number(a > b);
    case 'Less':
      return Number(a < b);
    case 'GreaterOrEqual':
      return Number(a >= b);
    case 'LessOrEqual':
      return Number(a <= b);
    case 'And':
      return Number(a !== 0 && b !== 0);
    case 'Or':
      return Number(a !== 0 || b !== 0);
    case 'Xor':
      return Number((a !== 0) !== (b !== 0));
    default:
      return undefined;
  }
}

/** Inlines every If of the main graph whose condition is a constant (or evaluates to one). */
export function inlineConstantIf(model: Model): PassRecord {
  const g = model.graph;
  const consts = new Constants(g);
  const producers = g.producers();
  const inlined: string[] = [];
  for (const n of [...g.nodes]) {
    if (n.opType !== 'If' || !isDefaultDomain(n)) continue;
    const v = evaluate(n.inputs[0] ?? '', consts, producers);
    if (v === undefined) continue;
    const cond = v !== 0;
    const attr = n.attr(cond ? 'then_branch' : 'else_branch');
    const branch = attr?.value as Graph | undefined;
    if (!branch || branch.outputs.length !== n.outputs.length) continue;
    const b = new GraphBuilder(g);
    // Names the branch defines that already exist outside get fresh names.
    const outer = new Set<string>();
    for (const name of g.definedNames()) outer.add(name);
    for (const other of g.nodes)
      if (other !== n) for (const sg of other.subgraphs()) for (const x of sg.allNames()) outer.add(x);
    for (const name of branch.definedNames()) {
      if (outer.has(name)) renameEverywhere(branch, name, b.uniqueName(name));
    }
    const produced = new Set(branch.nodes.flatMap((m) => m.outputs));
    const extra: Node[] = [];
    branch.outputs.forEach((bo, i) => {
      const o = n.outputs[i]!;
      if (!o) return;
      if (produced.has(bo.name) && !branch.outputs.some((x, j) => j !== i && x.name === bo.name)) {
        renameEverywhere(branch, bo.name, o);
      } else {
        extra.push(new Node('Identity', [bo.name], [o], [], b.uniqueName(`${o}_inlined`)));
      }
    });
    for (const [name, t] of branch.initializers) g.addInitializer(t.name === name ? t : t.clone(name));
    g.valueInfo.push(...branch.valueInfo);
    const at = g.nodes.indexOf(n);
    g.nodes.splice(at, 1, ...branch.nodes, ...extra);
    inlined.push(n.name || n.outputs[0] || 'If');
  }
  if (inlined.length) g.sort();
  return { pass: 'inline-constant-if', changed: inlined.length > 0, details: { inlined } };
}

/**
 * Binds `inputs`, fixes `shapes`, then repeats constant folding + If inlining + dead-node elimination until no
 * If can be inlined any more.
 */
export function specializeControlFlow(
  model: Model,
  options: { inputs?: Record<string, HostTensor>; shapes?: Record<string, number[]>; maxRounds?: number },
): PassRecord {
  const records: PassRecord[] = [];
  if (options.inputs) records.push(bindInputs(model, options.inputs));
  let total = 0;
  let shapesFixed = false;
  for (let round = 0; round < (options.maxRounds ?? 16); round++) {
    foldConstants(model);
    const r = inlineConstantIf(model);
    eliminateDeadNodes(model);
    total += (r.details.inlined as string[]).length;
    if (!r.changed) {
      // Fix the input dims only once the branches for other input values are gone: those branches may not
      // type-check with these dims (Silero's 8 kHz branch), and then shape checks can fold.
      if (shapesFixed || !options.shapes) break;
      records.push(fixInputShapes(model, options.shapes));
      shapesFixed = true;
    }
  }
  const ifsLeft = [...model.graph.allNodes()].filter((n) => n.opType === 'If').length;
  return {
    pass: 'specialize-control-flow',
    changed: total > 0 || records.some((r) => r.changed),
    details: { ifsInlined: total, ifsLeft, bound: records[0]?.details.bound ?? [] },
  };
}
