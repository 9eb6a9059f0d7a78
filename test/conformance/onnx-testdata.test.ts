/**
 * Conformance over Debian's libonnx-testdata (ONNX 1.12 backend test data, 1,072 cases): every model decodes,
 * converts to the IR and back losslessly; every .pb decodes and round-trips; and ONNX Runtime gives bit-identical
 * outputs for the original and the round-tripped model wherever it can run the original.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { modelFromProto, modelToProto } from '../../src/ir/model.js';
import { tensorFromProto, tensorToProto } from '../../src/ir/tensor.js';
import {
  canonicalModel,
  decodeModelProto,
  decodeTensorProto,
  encodeModelProto,
} from '../../src/onnx/codec.js';
import type { ModelProto, TensorProto, TypeProto } from '../../src/onnx/proto.js';
import { schema } from '../../src/onnx/schema.js';
import {
  createSession,
  diffOutputs,
  type OrtFeeds,
  type OrtOutputs,
  protoToOrt,
  protoValues,
} from '../helpers/ort.js';

const ROOT = '/usr/share/libonnx-testdata/data';
const SUITES = ['node', 'simple', 'pytorch-converted', 'pytorch-operator'];
const MISSING =
  `ONNX backend test data not found at ${ROOT}: run \`npm test\` as root (scripts/setup-test-data.mjs installs it) ` +
  'or `apt-get install libonnx-testdata`';

interface Case {
  suite: string;
  name: string;
  dir: string;
  modelBytes: Uint8Array;
  model: ModelProto;
  roundTripped: Uint8Array;
  inputs: Pb[];
  outputs: Pb[];
}

type PbKind = 'tensor' | 'sequence' | 'optional' | 'map';

interface SequenceLike {
  name?: string;
  elem_type?: number;
  tensor_values?: TensorProto[];
  sequence_values?: SequenceLike[];
  map_values?: MapLike[];
  optional_values?: OptionalLike[];
}
interface MapLike {
  values?: SequenceLike;
}
interface OptionalLike {
  tensor_value?: TensorProto;
  sequence_value?: SequenceLike;
  map_value?: MapLike;
  optional_value?: OptionalLike;
}

interface Pb {
  file: string;
  kind: PbKind;
  tensor?: TensorProto;
}

const dataPresent = fs.existsSync(path.join(ROOT, 'node'));

function listCases(): { suite: string; name: string; dir: string }[] {
  const out: { suite: string; name: string; dir: string }[] = [];
  for (const suite of SUITES) {
    for (const name of fs.readdirSync(path.join(ROOT, suite)).sort()) {
      const dir = path.join(ROOT, suite, name);
      if (fs.existsSync(path.join(dir, 'model.onnx'))) out.push({ suite, name, dir });
    }
  }
  return out;
}

function kindOf(t: TypeProto | undefined): PbKind {
  if (t?.sequence_type) return 'sequence';
  if (t?.optional_type) return 'optional';
  if (t?.map_type) return 'map';
  return 'tensor';
}

const MESSAGE = { sequence: schema.SequenceProto, optional: schema.OptionalProto, map: schema.MapProto };

/** Every TensorProto held (at any depth) in a Sequence/Optional/Map message. */
function nestedTensors(
  kind: PbKind,
  m: SequenceLike | OptionalLike | MapLike,
  out: TensorProto[] = [],
): TensorProto[] {
  if (kind === 'sequence') {
    const s = m as SequenceLike;
    out.push(...(s.tensor_values ?? []));
    for (const x of s.sequence_values ?? []) nestedTensors('sequence', x, out);
    for (const x of s.map_values ?? []) nestedTensors('map', x, out);
    for (const x of s.optional_values ?? []) nestedTensors('optional', x, out);
  } else if (kind === 'optional') {
    const o = m as OptionalLike;
    if (o.tensor_value) out.push(o.tensor_value);
    if (o.sequence_value) nestedTensors('sequence', o.sequence_value, out);
    if (o.map_value) nestedTensors('map', o.map_value, out);
    if (o.optional_value) nestedTensors('optional', o.optional_value, out);
  } else {
    const mp = m as MapLike;
    if (mp.values) nestedTensors('sequence', mp.values, out);
  }
  return out;
}

function firstDiff(a: unknown, b: unknown, at = ''): string | undefined {
  if (a === b) return undefined;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) {
    return `${at || '<root>'}: ${JSON.stringify(a)?.slice(0, 80)} vs ${JSON.stringify(b)?.slice(0, 80)}`;
  }
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  for (const k of keys) {
    const d = firstDiff((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], `${at}.${k}`);
    if (d) return d;
  }
  return undefined;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/** Checks that a TensorProto converts to an IR Tensor holding the same values, and back to the same proto. */
function checkTensor(tp: TensorProto, where: string): string | undefined {
  const t = tensorFromProto(tp, undefined, where);
  const v = protoValues(tp);
  if (t.dtype !== v.dataType) return `${where}: dtype ${t.dtype} vs ${v.dataType}`;
  if (t.dims.join(',') !== v.dims.join(',')) return `${where}: dims [${t.dims}] vs [${v.dims}]`;
  if (v.strings) {
    const s = t.data as Uint8Array[];
    if (s.length !== v.strings.length || s.some((b, i) => !sameBytes(b, v.strings![i]))) {
      return `${where}: string values differ`;
    }
  } else if (!sameBytes(t.raw, v.bytes!)) return `${where}: element bytes differ`;
  const back = schema.TensorProto.toObject(schema.TensorProto.fromObject(tensorToProto(t) as never), {
    longs: String,
  });
  const orig = schema.TensorProto.toObject(schema.TensorProto.fromObject(tp as never), { longs: String });
  const d = firstDiff(orig, back);
  return d ? `${where}: tensorToProto differs at ${d}` : undefined;
}

function graphInputs(m: ModelProto) {
  const inits = new Set((m.graph?.initializer ?? []).map((t) => t.name));
  return (m.graph?.input ?? []).filter((v) => !inits.has(v.name));
}

/** Loads and round-trips a case's model and .pb files; problems go to `failures`. */
function loadCase(
  c: { suite: string; name: string; dir: string },
  failures: string[],
  stats: Stats,
): Case | undefined {
  const id = `${c.suite}/${c.name}`;
  const file = path.join(c.dir, 'model.onnx');
  const modelBytes = fs.readFileSync(file);
  let model: ModelProto;
  let roundTripped: Uint8Array;
  try {
    model = decodeModelProto(modelBytes, file);
    roundTripped = encodeModelProto(modelToProto(modelFromProto(model, { file })));
    const again = decodeModelProto(roundTripped, `${file} (round-tripped)`);
    const a = JSON.stringify(canonicalModel(model));
    const b = JSON.stringify(canonicalModel(again));
    if (a !== b) {
      failures.push(`${id}: round-tripped model differs at ${firstDiff(JSON.parse(a), JSON.parse(b))}`);
      return undefined;
    }
    // Stronger than the canonical comparison: ONNX's C++ serializer and ours write the same bytes (this needs
    // [packed = true] honoured for float_data, int32_data, int64_data, ...).
    if (sameBytes(roundTripped, modelBytes)) stats.byteIdentical++;
    else
      failures.push(
        `${id}: re-encoded model is not byte-identical (${roundTripped.length} vs ${modelBytes.length})`,
      );
  } catch (e) {
    failures.push(`${id}: model round trip failed: ${(e as Error).stack}`);
    return undefined;
  }
  const setDir = path.join(c.dir, 'test_data_set_0');
  const ins = graphInputs(model);
  const outs = model.graph?.output ?? [];
  const readPbs = (prefix: 'input' | 'output'): Pb[] => {
    const pbs: Pb[] = [];
    for (let k = 0; fs.existsSync(path.join(setDir, `${prefix}_${k}.pb`)); k++) {
      const pbFile = path.join(setDir, `${prefix}_${k}.pb`);
      const bytes = fs.readFileSync(pbFile);
      const vi = prefix === 'input' ? ins[k] : outs[k];
      const kind = kindOf(vi?.type);
      const where = `${id}/${prefix}_${k}.pb`;
      stats.pbs++;
      try {
        let tensors: TensorProto[];
        let reencoded: Uint8Array;
        let tensor: TensorProto | undefined;
        let decoded: object;
        if (kind === 'tensor') {
          tensor = decodeTensorProto(bytes, pbFile);
          decoded = tensor;
          tensors = [tensor];
          reencoded = schema.TensorProto.encode(tensor as never).finish();
        } else {
          const type = MESSAGE[kind];
          decoded = type.decode(bytes) as object;
          tensors = nestedTensors(kind, decoded);
          reencoded = type.encode(decoded as never).finish();
          stats.nonTensorPbs++;
        }
        if (!sameBytes(reencoded, bytes)) {
          failures.push(
            `${where}: re-encoded ${kind} .pb is not byte-identical (${reencoded.length} vs ${bytes.length})`,
          );
        }
        const nameOf = (decoded as { name?: string }).name;
        if (vi && nameOf && nameOf !== vi.name)
          failures.push(`${where}: name '${nameOf}' vs graph's '${vi.name}'`);
        for (const [i, tp] of tensors.entries()) {
          const err = checkTensor(tp, `${where}[${i}]`);
          if (err) failures.push(err);
          stats.tensors++;
        }
        pbs.push({ file: pbFile, kind, tensor });
      } catch (e) {
        failures.push(`${where}: ${(e as Error).message}`);
      }
    }
    return pbs;
  };
  return { ...c, modelBytes, model, roundTripped, inputs: readPbs('input'), outputs: readPbs('output') };
}

interface Stats {
  cases: number;
  byteIdentical: number;
  pbs: number;
  nonTensorPbs: number;
  tensors: number;
}

/** The tolerance of the asset survey (script A4): |a-b| <= 1e-7 + 1e-3*|b|, NaN equals NaN; others exact. */
function matchesExpected(actual: OrtOutputs, names: string[], expected: TensorProto[]): boolean {
  for (const [k, tp] of expected.entries()) {
    const a = actual[names[k]];
    if (!a) return false;
    const e = protoToOrt(tp);
    if (a.type !== e.type || a.dims.join(',') !== e.dims.join(',')) return false;
    const x = a.data as ArrayLike<number | bigint | string>;
    const y = e.data as ArrayLike<number | bigint | string>;
    if (x.length !== y.length) return false;
    const float = a.type === 'float32' || a.type === 'float64' || a.type === 'float16';
    for (let i = 0; i < x.length; i++) {
      let p = x[i];
      let q = y[i];
      if (a.type === 'float16') {
        p = f16(p as number);
        q = f16(q as number);
      }
      if (float) {
        const u = p as number;
        const v = q as number;
        if (Number.isNaN(u) && Number.isNaN(v)) continue;
        if (u === v) continue;
        if (!(Math.abs(u - v) <= 1e-7 + 1e-3 * Math.abs(v))) return false;
      } else if (p !== q) return false;
    }
  }
  return true;
}

function f16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? Number.NaN : s * Number.POSITIVE_INFINITY;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

async function runCase(model: Uint8Array, c: Case): Promise<{ outputs: OrtOutputs; outputNames: string[] }> {
  const session = await createSession(model);
  try {
    const feeds: OrtFeeds = {};
    for (const [k, pb] of c.inputs.entries()) {
      if (pb.kind !== 'tensor') throw new Error(`input ${k} is a ${pb.kind}: ORT-node cannot feed it`);
      const name =
        pb.tensor!.name && session.inputNames.includes(pb.tensor!.name)
          ? pb.tensor!.name
          : session.inputNames[k];
      feeds[name] = protoToOrt(pb.tensor!);
    }
    const outputs = (await session.run(feeds)) as OrtOutputs;
    return { outputs, outputNames: [...session.outputNames] };
  } finally {
    await session.release();
  }
}

test('libonnx-testdata: models and .pb files round-trip, ORT outputs are bit-identical', async () => {
  assert.ok(dataPresent, MISSING);
  const started = Date.now();
  const failures: string[] = [];
  const stats: Stats = { cases: 0, byteIdentical: 0, pbs: 0, nonTensorPbs: 0, tensors: 0 };
  const perSuite = new Map<string, { cases: number; runnable: number; identical: number; matched: number }>();
  let nondeterministic = 0;
  for (const c0 of listCases()) {
    stats.cases++;
    const s = perSuite.get(c0.suite) ?? { cases: 0, runnable: 0, identical: 0, matched: 0 };
    perSuite.set(c0.suite, s);
    s.cases++;
    const c = loadCase(c0, failures, stats);
    if (!c) continue;
    let orig: Awaited<ReturnType<typeof runCase>>;
    try {
      orig = await runCase(c.modelBytes, c);
    } catch {
      continue; // ORT cannot run this case (old opsets, preview.training, non-tensor IO, ...)
    }
    s.runnable++;
    const id = `${c.suite}/${c.name}`;
    try {
      const rt = await runCase(c.roundTripped, c);
      const diff = diffOutputs(orig.outputs, rt.outputs);
      if (diff === undefined) s.identical++;
      else {
        // Random ops (Bernoulli, Dropout in training mode, RandomNormal without seed) differ between two runs of
        // the same model: only then is a difference not the round trip's fault.
        const again = await runCase(c.modelBytes, c);
        if (diffOutputs(orig.outputs, again.outputs) !== undefined) nondeterministic++;
        else failures.push(`${id}: round-tripped model gives different output: ${diff}`);
      }
    } catch (e) {
      failures.push(`${id}: ORT runs the original but not the round-tripped model: ${(e as Error).message}`);
    }
    const expected = c.outputs.filter((o) => o.kind === 'tensor').map((o) => o.tensor!);
    if (expected.length === c.outputs.length && expected.length > 0) {
      const names = expected.map((tp, k) =>
        tp.name && tp.name in orig.outputs ? tp.name : orig.outputNames[k],
      );
      if (matchesExpected(orig.outputs, names, expected)) s.matched++;
    }
  }
  const total = { cases: 0, runnable: 0, identical: 0, matched: 0 };
  for (const s of perSuite.values())
    for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += s[k];
  const bySuite = [...perSuite].map(
    ([k, s]) => `${k} ${s.runnable}/${s.identical}/${s.matched} of ${s.cases}`,
  );
  console.log(
    `libonnx-testdata: ${stats.cases} cases (${stats.byteIdentical} re-encode byte-identical), ${stats.pbs} .pb ` +
      `(${stats.nonTensorPbs} sequence/optional/map, ${stats.tensors} tensors); ORT runnable ${total.runnable}, ` +
      `identical ${total.identical}, nondeterministic ${nondeterministic}, matched-expected ${total.matched} ` +
      `[runnable/identical/matched: ${bySuite.join('; ')}] in ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
  assert.deepEqual(failures.slice(0, 30), [], `${failures.length} failures`);
  assert.equal(stats.cases, 1072, 'expected the 1,072 cases of libonnx-testdata 1.12');
  const node = perSuite.get('node')!;
  assert.ok(node.runnable >= 850, `ORT ran only ${node.runnable} node cases (expected about 880)`);
  assert.ok(
    node.matched >= 850,
    `only ${node.matched} node cases matched their expected outputs (expected 856)`,
  );
  assert.equal(total.identical + nondeterministic, total.runnable);
});
