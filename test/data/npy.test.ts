import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { encodeNpy, parseNpy, parseNpyHeader, readNpy } from '../../src/data/npy.js';
import { DataType } from '../../src/onnx/dtype.js';
import type { HostTensor } from '../../src/tensor.js';
import { assertQnnxError, hexOf, numpySkipReason, runPython, sampleTensors, tempDir } from './helpers.js';

/** Build a .npy file by hand from the NPY spec: magic, version, header length, header text, data. */
function handNpy(header: string, data: Uint8Array, version: 1 | 2 | 3 = 1): Uint8Array {
  const prefix = version === 1 ? 10 : 12;
  const headerBytes = Buffer.from(header, version === 3 ? 'utf8' : 'latin1');
  const total = Math.ceil((prefix + headerBytes.length + 1) / 64) * 64;
  const hlen = total - prefix;
  const out = new Uint8Array(total + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version, 0]);
  const dv = new DataView(out.buffer);
  if (version === 1) dv.setUint16(8, hlen, true);
  else dv.setUint32(8, hlen, true);
  out.fill(0x20, prefix, total - 1);
  out.set(headerBytes, prefix);
  out[total - 1] = 0x0a;
  out.set(data, total);
  return out;
}

describe('npy round trip', () => {
  for (const [key, t] of sampleTensors()) {
    it(`encodes and parses ${key} exactly`, () => {
      for (const dims of [t.dims, [8], [2, 2, 2], [1, 8, 1]]) {
        const src = { ...t, dims };
        const bytes = encodeNpy(src);
        assert.deepEqual([...bytes.subarray(0, 8)], [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
        const hlen = bytes[8]! | (bytes[9]! << 8);
        assert.equal((10 + hlen) % 64, 0, 'data starts at a multiple of 64');
        assert.equal(bytes[10 + hlen - 1], 0x0a, 'header ends with a newline');
        const back = parseNpy(bytes, `${key}.npy`);
        assert.equal(back.dtype, t.dtype);
        assert.deepEqual(back.dims, dims);
        assert.equal(back.data.constructor, t.data.constructor);
        assert.equal(hexOf(back.data as ArrayBufferView), hexOf(t.data as ArrayBufferView));
      }
    });
  }

  it('handles scalars and empty arrays', () => {
    const scalar: HostTensor = { dtype: DataType.DOUBLE, dims: [], data: new Float64Array([2.5]) };
    const s = parseNpy(encodeNpy(scalar));
    assert.deepEqual(s.dims, []);
    assert.deepEqual([...(s.data as Float64Array)], [2.5]);
    assert.match(new TextDecoder().decode(encodeNpy(scalar).subarray(10, 80)), /'shape': \(\)/);
    const empty: HostTensor = { dtype: DataType.INT32, dims: [0, 3], data: new Int32Array(0) };
    const e = parseNpy(encodeNpy(empty));
    assert.deepEqual(e.dims, [0, 3]);
    assert.equal(e.data.length, 0);
    assert.match(
      new TextDecoder().decode(encodeNpy({ ...empty, dims: [0] }).subarray(10, 80)),
      /'shape': \(0,\)/,
    );
  });

  it('returns a zero-copy view when aligned and a copy when not', () => {
    const t: HostTensor = { dtype: DataType.FLOAT, dims: [3], data: new Float32Array([1, 2, 3]) };
    const bytes = encodeNpy(t);
    const aligned = parseNpy(bytes);
    assert.equal((aligned.data as Float32Array).buffer, bytes.buffer);
    const shifted = new Uint8Array(bytes.length + 1);
    shifted.set(bytes, 1);
    const unaligned = parseNpy(shifted.subarray(1));
    assert.notEqual((unaligned.data as Float32Array).buffer, shifted.buffer);
    assert.deepEqual([...(unaligned.data as Float32Array)], [1, 2, 3]);
  });

  it('refuses tensors it cannot write', async () => {
    await assertQnnxError(
      () => encodeNpy({ dtype: DataType.BFLOAT16, dims: [1], data: new Uint16Array(1) }),
      'E_DTYPE',
      'bfloat16',
    );
    await assertQnnxError(
      () => encodeNpy({ dtype: DataType.FLOAT, dims: [2, 2], data: new Float32Array(3) }),
      'E_TENSOR_SIZE',
    );
  });
});

describe('npy hand-made files (NPY format spec)', () => {
  it('reads a v1.0 little-endian C-order file', () => {
    const data = new Uint8Array(new Int16Array([1, -2, 3, -4, 5, -6]).buffer);
    const t = parseNpy(handNpy("{'descr': '<i2', 'fortran_order': False, 'shape': (2, 3), }", data));
    assert.equal(t.dtype, DataType.INT16);
    assert.deepEqual(t.dims, [2, 3]);
    assert.deepEqual([...(t.data as Int16Array)], [1, -2, 3, -4, 5, -6]);
  });

  it('reads big-endian data', () => {
    const data = new Uint8Array([0x00, 0x00, 0x01, 0x02, 0xff, 0xff, 0xff, 0xfe]);
    const t = parseNpy(handNpy("{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }", data));
    assert.deepEqual([...(t.data as Int32Array)], [0x0102, -2]);
    const f = parseNpy(
      handNpy(
        "{'descr': '>f8', 'fortran_order': False, 'shape': (1,), }",
        new Uint8Array([0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18]),
      ),
    );
    assert.deepEqual([...(f.data as Float64Array)], [Math.PI]);
  });

  it('transposes Fortran-order data to C order', () => {
    // The 2x3 matrix [[1,2,3],[4,5,6]] stored column-major: 1 4 2 5 3 6.
    const data = new Uint8Array(new Float32Array([1, 4, 2, 5, 3, 6]).buffer);
    const t = parseNpy(handNpy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", data));
    assert.deepEqual(t.dims, [2, 3]);
    assert.deepEqual([...(t.data as Float32Array)], [1, 2, 3, 4, 5, 6]);
  });

  it('reads v2.0 and v3.0 headers, double quotes, Python 2 long shapes and "?" bools', () => {
    const data = new Uint8Array([1, 2, 3, 4]);
    const v2 = parseNpy(handNpy("{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }", data, 2));
    assert.deepEqual([...(v2.data as Uint8Array)], [1, 2, 3, 4]);
    const v3 = parseNpy(handNpy('{"descr": "|u1", "fortran_order": False, "shape": (2, 2)}', data, 3));
    assert.deepEqual(v3.dims, [2, 2]);
    const py2 = parseNpy(handNpy("{'descr': '|u1', 'fortran_order': False, 'shape': (2L, 2L), }", data));
    assert.deepEqual(py2.dims, [2, 2]);
    const b = parseNpy(
      handNpy("{'descr': '|?', 'fortran_order': False, 'shape': (4,), }", new Uint8Array([0, 1, 0, 1])),
    );
    assert.equal(b.dtype, DataType.BOOL);
    assert.equal(
      parseNpyHeader(handNpy("{'descr': '<f2', 'fortran_order': False, 'shape': (), }", new Uint8Array(2)))
        .dtype,
      DataType.FLOAT16,
    );
  });
});

describe('npy bad input', () => {
  const good = encodeNpy({ dtype: DataType.FLOAT, dims: [2, 2], data: new Float32Array([1, 2, 3, 4]) });
  const hdr = (descr: string, extra = '') =>
    `{'descr': ${descr}, 'fortran_order': False, 'shape': (2,), ${extra}}`;
  const cases: [string, Uint8Array, string][] = [
    ['empty file', new Uint8Array(0), 'not a .npy file'],
    ['bad magic', new TextEncoder().encode('PK\x03\x04 this is not numpy at all'), 'bad magic'],
    ['truncated header', good.subarray(0, 30), 'truncated'],
    ['truncated prefix', good.subarray(0, 8), 'truncated'],
    ['truncated data', good.subarray(0, good.length - 1), 'truncated'],
    ['extra data', new Uint8Array([...good, 0]), 'size mismatch'],
    [
      'unsupported version',
      new Uint8Array([...good.subarray(0, 6), 4, 0, ...good.subarray(8)]),
      'version 4.0',
    ],
    ['complex dtype', handNpy(hdr("'<c8'"), new Uint8Array(16)), "unsupported .npy dtype '<c8'"],
    ['unicode dtype', handNpy(hdr("'<U3'"), new Uint8Array(24)), "unsupported .npy dtype '<U3'"],
    ['datetime dtype', handNpy(hdr("'<M8[s]'"), new Uint8Array(16)), 'unsupported .npy dtype'],
    ['object array', handNpy(hdr("'|O'"), new Uint8Array(16)), 'object arrays are not supported'],
    ['structured', handNpy(hdr("[('a', '<i4'), ('b', '<f4')]"), new Uint8Array(16)), 'structured'],
    [
      'malformed header',
      handNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,", new Uint8Array(8)),
      'malformed',
    ],
    ['missing key', handNpy("{'descr': '<f4', 'shape': (2,)}", new Uint8Array(8)), 'malformed'],
    [
      'negative dim',
      handNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}", new Uint8Array(8)),
      'bad shape',
    ],
    ['bad byte order', handNpy(hdr("'|f4'"), new Uint8Array(8)), 'malformed .npy dtype'],
  ];
  for (const [what, bytes, msg] of cases) {
    it(`refuses ${what} with E_DATA naming the file`, async () => {
      await assertQnnxError(() => parseNpy(bytes, 'calib/sample-7.npy'), 'E_DATA', 'calib/sample-7.npy', msg);
    });
  }

  it('reports a missing file as E_IO', async () => {
    await assertQnnxError(() => readNpy('/nonexistent/x.npy'), 'E_IO', '/nonexistent/x.npy');
  });

  it('reads from disk and names the file in errors', async () => {
    const dir = tempDir();
    const p = join(dir, 'trunc.npy');
    writeFileSync(p, good.subarray(0, good.length - 3));
    await assertQnnxError(() => readNpy(p), 'E_DATA', p, 'truncated');
    writeFileSync(p, good);
    assert.deepEqual([...((await readNpy(p)).data as Float32Array)], [1, 2, 3, 4]);
  });
});

// Reference files written by real NumPy: exact bytes of each array in little-endian C order.
const NUMPY_WRITE = `
import json, os, sys
import numpy as np
from numpy.lib import format as fmt
out = sys.argv[1]
cases = []
def ref(a):
    c = np.ascontiguousarray(a)
    le = c.astype(c.dtype.newbyteorder('<')) if c.dtype.byteorder == '>' else c
    return le.tobytes().hex()
def save(name, a, version=None):
    path = os.path.join(out, name + '.npy')
    if version is None:
        np.save(path, a)
    else:
        with open(path, 'wb') as f:
            fmt.write_array(f, a, version=version)
    cases.append({'name': name, 'shape': list(a.shape), 'descr': a.dtype.str, 'hex': ref(a), 'fortran': bool(a.flags.f_contiguous and not a.flags.c_contiguous)})
rng = np.random.default_rng(1234)
base = {
  'f2': np.array([0, -0.0, 1, -2.5, np.inf, -np.inf, np.nan, 65504, 6e-8, 0.1, 3.14159, -7], dtype=np.float16),
  'f4': rng.standard_normal(12).astype(np.float32),
  'f8': np.concatenate([rng.standard_normal(9), [np.inf, np.nan, -0.0]]),
  'i1': np.array([-128, 127, 0, -1, 1, 2, 3, 4, 5, 6, 7, 8], dtype=np.int8),
  'u1': np.arange(0, 256, 22, dtype=np.uint8)[:12],
  'i2': np.array([-32768, 32767, 0, -1, 1, 2, 3, 4, 5, 6, 7, 8], dtype=np.int16),
  'u2': np.array([0, 65535, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=np.uint16),
  'i4': np.array([-2**31, 2**31-1, 0, -1, 1, 2, 3, 4, 5, 6, 7, 8], dtype=np.int32),
  'u4': np.array([0, 2**32-1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=np.uint32),
  'i8': np.array([-2**63, 2**63-1, 0, -1, 1, 2**40, 3, 4, 5, 6, 7, 8], dtype=np.int64),
  'u8': np.array([0, 2**64-1, 1, 2**63, 3, 4, 5, 6, 7, 8, 9, 10], dtype=np.uint64),
  'b1': np.array([True, False] * 6),
}
for k, a in base.items():
    a = a.reshape(3, 4)
    save(k, a)
    if a.dtype.itemsize > 1:
        save(k + '_be', a.astype(a.dtype.newbyteorder('>')))
    save(k + '_fortran', np.asfortranarray(a.reshape(2, 3, 2)))
save('f4_v2', base['f4'], version=(2, 0))
save('f4_v3', base['f4'].reshape(2, 6), version=(3, 0))
save('scalar', np.float64(2.5))
save('empty', np.zeros((0, 3), dtype=np.float32))
save('big', rng.standard_normal((17, 31, 5)).astype(np.float32))
save('fortran_big', np.asfortranarray(rng.integers(-1000, 1000, size=(4, 5, 6, 7)).astype(np.int32)))
np.save(os.path.join(out, 'bad_complex.npy'), np.zeros(3, dtype=np.complex64))
np.save(os.path.join(out, 'bad_object.npy'), np.array([1, 'a', None], dtype=object), allow_pickle=True)
np.save(os.path.join(out, 'bad_struct.npy'), np.zeros(3, dtype=[('a', '<i4'), ('b', '<f4')]))
np.save(os.path.join(out, 'bad_unicode.npy'), np.array(['abc', 'de']))
json.dump(cases, open(os.path.join(out, 'cases.json'), 'w'))
`;

const NUMPY_READ = `
import json, os, sys
import numpy as np
d = sys.argv[1]
cases = json.load(open(os.path.join(d, 'ours.json')))
for c in cases:
    a = np.load(os.path.join(d, c['name'] + '.npy'))
    assert a.dtype.str == c['descr'], (c['name'], a.dtype.str, c['descr'])
    assert list(a.shape) == c['shape'], (c['name'], a.shape)
    assert a.tobytes().hex() == c['hex'], c['name']
print('OK', len(cases))
`;

describe('npy files written by NumPy', { skip: numpySkipReason() }, () => {
  it('parses every dtype, big-endian, Fortran order, v2.0/v3.0 headers, scalars and empty arrays', () => {
    const dir = tempDir();
    runPython(NUMPY_WRITE, [dir]);
    const cases = JSON.parse(readFileSync(join(dir, 'cases.json'), 'utf8')) as {
      name: string;
      shape: number[];
      descr: string;
      hex: string;
      fortran: boolean;
    }[];
    assert.equal(cases.length, 39);
    const fortran = cases.filter((c) => c.fortran).length;
    assert.ok(fortran >= 12, `${fortran} Fortran-order cases`);
    for (const c of cases) {
      const file = join(dir, `${c.name}.npy`);
      const t = parseNpy(readFileSync(file), file);
      assert.deepEqual(t.dims, c.shape, c.name);
      assert.equal(hexOf(t.data as ArrayBufferView), c.hex, c.name);
      // Re-encoding gives NumPy's own little-endian descr.
      const again = parseNpyHeader(encodeNpy(t));
      assert.equal(again.descr.slice(1), c.descr.slice(1), c.name);
    }
  });

  it('refuses complex, object, structured and unicode arrays from NumPy', async () => {
    const dir = tempDir();
    runPython(NUMPY_WRITE, [dir]);
    for (const [name, msg] of [
      ['bad_complex', "'<c8'"],
      ['bad_object', 'object arrays'],
      ['bad_struct', 'structured'],
      ['bad_unicode', "'<U3'"],
    ] as const) {
      const file = join(dir, `${name}.npy`);
      await assertQnnxError(() => readNpy(file), 'E_DATA', file, msg);
    }
  });

  it('writes files NumPy reads back exactly', () => {
    const dir = tempDir();
    const ours: { name: string; descr: string; shape: number[]; hex: string }[] = [];
    const descr: Record<string, string> = { i1: '|i1', u1: '|u1', b1: '|b1' };
    for (const [key, t] of sampleTensors()) {
      for (const dims of [t.dims, [8], [2, 1, 4]]) {
        const name = `${key}_${dims.join('x')}`;
        writeFileSync(join(dir, `${name}.npy`), encodeNpy({ ...t, dims }));
        ours.push({
          name,
          descr: descr[key] ?? `<${key}`,
          shape: dims,
          hex: hexOf(t.data as ArrayBufferView),
        });
      }
    }
    writeFileSync(join(dir, 'ours.json'), JSON.stringify(ours));
    assert.match(runPython(NUMPY_READ, [dir]), /^OK 36/);
  });
});
