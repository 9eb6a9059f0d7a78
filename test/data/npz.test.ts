import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { zipSync } from 'fflate';
import { encodeNpy } from '../../src/data/npy.js';
import { encodeNpz, parseNpz, readNpz } from '../../src/data/npz.js';
import { DataType } from '../../src/onnx/dtype.js';
import { assertQnnxError, hexOf, numpySkipReason, runPython, sampleTensors, tempDir } from './helpers.js';

describe('npz round trip', () => {
  for (const compress of [false, true]) {
    it(`keeps every dtype (${compress ? 'deflated' : 'stored'})`, () => {
      const tensors = sampleTensors();
      const bytes = encodeNpz(tensors, { compress });
      // Stored: ZIP local header compression method 0; deflated: 8.
      assert.equal(bytes[8], compress ? 8 : 0);
      const back = parseNpz(bytes, 'all.npz');
      assert.deepEqual([...back.keys()], [...tensors.keys()]);
      for (const [k, t] of tensors) {
        const b = back.get(k)!;
        assert.equal(b.dtype, t.dtype, k);
        assert.deepEqual(b.dims, t.dims, k);
        assert.equal(hexOf(b.data as ArrayBufferView), hexOf(t.data as ArrayBufferView), k);
      }
    });
  }

  it('compresses compressible data', () => {
    const t = new Map([['z', { dtype: DataType.FLOAT, dims: [1000], data: new Float32Array(1000) }]]);
    assert.ok(encodeNpz(t, { compress: true }).length < encodeNpz(t).length / 4);
  });

  it('refuses bad archives with E_DATA naming the file (and member)', async () => {
    const good = encodeNpz(sampleTensors());
    await assertQnnxError(
      () => parseNpz(new TextEncoder().encode('not a zip file'), 'in.npz'),
      'E_DATA',
      'in.npz',
      'bad magic',
    );
    await assertQnnxError(
      () => parseNpz(good.subarray(0, good.length - 30), 'in.npz'),
      'E_DATA',
      'in.npz',
      'ZIP',
    );
    const badMember = zipSync(
      { 'x.npy': encodeNpy(sampleTensors().get('f4')!).subarray(0, 70) },
      { level: 0 },
    );
    await assertQnnxError(() => parseNpz(badMember, 'in.npz'), 'E_DATA', 'in.npz[x.npy]', 'truncated');
    const notNpy = zipSync({ 'readme.txt': new TextEncoder().encode('hello') });
    await assertQnnxError(
      () => parseNpz(notNpy, 'in.npz'),
      'E_DATA',
      'in.npz[readme.txt]',
      'not a .npy file',
    );
    await assertQnnxError(() => readNpz('/nonexistent/in.npz'), 'E_IO', '/nonexistent/in.npz');
  });
});

const NUMPY_WRITE = `
import json, os, sys
import numpy as np
d = sys.argv[1]
rng = np.random.default_rng(7)
arrays = {
  'input_ids': rng.integers(0, 30000, size=(1, 12)).astype(np.int64),
  'attention_mask': np.ones((1, 12), dtype=np.int64),
  'pixel_values': rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
  'half': rng.standard_normal((5,)).astype(np.float16),
  'flags': np.array([True, False, True]),
  'fortran': np.asfortranarray(rng.standard_normal((3, 4))),
  'big_endian': np.arange(6, dtype='>i4').reshape(2, 3),
}
np.savez(os.path.join(d, 'stored.npz'), **arrays)
np.savez_compressed(os.path.join(d, 'deflated.npz'), **arrays)
np.savez(os.path.join(d, 'positional.npz'), np.arange(3), np.eye(2))
ref = {k: {'shape': list(a.shape), 'hex': np.ascontiguousarray(a).astype(a.dtype.newbyteorder('<')).tobytes().hex()} for k, a in arrays.items()}
json.dump(ref, open(os.path.join(d, 'ref.json'), 'w'))
`;

const NUMPY_READ = `
import json, os, sys
import numpy as np
d = sys.argv[1]
ref = json.load(open(os.path.join(d, 'ref.json')))
for name in ['ours_stored.npz', 'ours_deflated.npz']:
    with np.load(os.path.join(d, name)) as z:
        assert sorted(z.files) == sorted(ref), (z.files, list(ref))
        for k, r in ref.items():
            a = z[k]
            assert list(a.shape) == r['shape'], k
            assert a.astype(a.dtype.newbyteorder('<')).tobytes().hex() == r['hex'], k
print('OK')
`;

describe('npz files written by NumPy', { skip: numpySkipReason() }, () => {
  it('parses numpy.savez and numpy.savez_compressed archives, and NumPy reads ours', () => {
    const dir = tempDir();
    runPython(NUMPY_WRITE, [dir]);
    const ref = JSON.parse(readFileSync(join(dir, 'ref.json'), 'utf8')) as Record<
      string,
      { shape: number[]; hex: string }
    >;
    for (const name of ['stored.npz', 'deflated.npz']) {
      const file = join(dir, name);
      const z = parseNpz(readFileSync(file), file);
      assert.deepEqual([...z.keys()].sort(), Object.keys(ref).sort());
      for (const [k, r] of Object.entries(ref)) {
        assert.deepEqual(z.get(k)!.dims, r.shape, `${name} ${k}`);
        assert.equal(hexOf(z.get(k)!.data as ArrayBufferView), r.hex, `${name} ${k}`);
      }
      assert.equal(z.get('input_ids')!.dtype, DataType.INT64);
      assert.equal(z.get('half')!.dtype, DataType.FLOAT16);
      assert.equal(z.get('flags')!.dtype, DataType.BOOL);
      writeFileSync(join(dir, `ours_${name}`), encodeNpz(z, { compress: name === 'deflated.npz' }));
    }
    const pos = parseNpz(readFileSync(join(dir, 'positional.npz')));
    assert.deepEqual([...pos.keys()], ['arr_0', 'arr_1']);
    assert.deepEqual([...(pos.get('arr_1')!.data as Float64Array)], [1, 0, 0, 1]);
    assert.equal(runPython(NUMPY_READ, [dir]).trim(), 'OK');
  });
});
