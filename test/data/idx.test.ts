import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import { encodeIdx, parseIdx, readIdx } from '../../src/data/idx.js';
import { DataType } from '../../src/onnx/dtype.js';
import type { HostTensor } from '../../src/tensor.js';
import { assertQnnxError, hexOf, tempDir } from './helpers.js';

const FASHION = '/usr/share/datasets/fashion-mnist';
const fashionSkip = existsSync(join(FASHION, 'train-labels-idx1-ubyte.gz'))
  ? false
  : `Fashion-MNIST is not installed at ${FASHION}`;

// SHA-256 of the decompressed files (zcat FILE | sha256sum).
const SHA256 = {
  'train-images-idx3-ubyte.gz': 'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
  'train-labels-idx1-ubyte.gz': 'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
  't10k-images-idx3-ubyte.gz': '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
  't10k-labels-idx1-ubyte.gz': '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34',
};

describe('IDX on the real Fashion-MNIST files', { skip: fashionSkip }, () => {
  const load = (name: keyof typeof SHA256) => readIdx(join(FASHION, name));

  it('reads the label files', async () => {
    const train = await load('train-labels-idx1-ubyte.gz');
    assert.equal(train.dtype, DataType.UINT8);
    assert.deepEqual(train.dims, [60000]);
    assert.deepEqual([...(train.data as Uint8Array).subarray(0, 10)], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    const counts = new Array(10).fill(0);
    for (const l of train.data as Uint8Array) counts[l]++;
    assert.deepEqual(counts, new Array(10).fill(6000));
    const test = await load('t10k-labels-idx1-ubyte.gz');
    assert.deepEqual(test.dims, [10000]);
    assert.deepEqual([...(test.data as Uint8Array).subarray(0, 10)], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
  });

  it('reads the image files (pixel statistics)', async () => {
    const train = await load('train-images-idx3-ubyte.gz');
    assert.equal(train.dtype, DataType.UINT8);
    assert.deepEqual(train.dims, [60000, 28, 28]);
    const px = train.data as Uint8Array;
    let sum = 0;
    let sq = 0;
    for (const v of px) {
      const x = v / 255;
      sum += x;
      sq += x * x;
    }
    const mean = sum / px.length;
    const std = Math.sqrt(sq / px.length - mean * mean);
    assert.equal(mean.toFixed(4), '0.2860');
    assert.equal(std.toFixed(4), '0.3530');
    const test = await load('t10k-images-idx3-ubyte.gz');
    assert.deepEqual(test.dims, [10000, 28, 28]);
  });

  it('decodes the exact bytes (re-encoded file hashes match zcat | sha256sum)', async () => {
    for (const [name, sha] of Object.entries(SHA256)) {
      const t = await load(name as keyof typeof SHA256);
      assert.equal(createHash('sha256').update(encodeIdx(t)).digest('hex'), sha, name);
    }
  });
});

describe('IDX element types', () => {
  const tensors: [string, HostTensor][] = [
    ['ubyte', { dtype: DataType.UINT8, dims: [2, 3], data: new Uint8Array([0, 1, 127, 128, 254, 255]) }],
    ['byte', { dtype: DataType.INT8, dims: [6], data: new Int8Array([-128, -1, 0, 1, 126, 127]) }],
    ['short', { dtype: DataType.INT16, dims: [3, 2], data: new Int16Array([-32768, -2, 0, 3, 258, 32767]) }],
    [
      'int',
      {
        dtype: DataType.INT32,
        dims: [1, 2, 3],
        data: new Int32Array([-(2 ** 31), -5, 0, 7, 65539, 2 ** 31 - 1]),
      },
    ],
    [
      'float',
      { dtype: DataType.FLOAT, dims: [2, 3], data: new Float32Array([-1.5, 0, 3.25, Infinity, 1e-30, 7]) },
    ],
    [
      'double',
      {
        dtype: DataType.DOUBLE,
        dims: [6],
        data: new Float64Array([-Math.PI, 0, Math.E, -Infinity, 1e-300, 7]),
      },
    ],
  ];
  const codes: Record<string, number> = {
    ubyte: 8,
    byte: 9,
    short: 0x0b,
    int: 0x0c,
    float: 0x0d,
    double: 0x0e,
  };

  for (const [label, t] of tensors) {
    it(`reads ${label} (plain and gzip'd)`, () => {
      const bytes = encodeIdx(t);
      assert.deepEqual([...bytes.subarray(0, 4)], [0, 0, codes[label], t.dims.length]);
      for (const b of [bytes, new Uint8Array(gzipSync(bytes))]) {
        const back = parseIdx(b, `${label}.idx`);
        assert.equal(back.dtype, t.dtype);
        assert.deepEqual(back.dims, t.dims);
        assert.equal(hexOf(back.data as ArrayBufferView), hexOf(t.data as ArrayBufferView));
      }
    });
  }

  it('reads big-endian values written by hand', () => {
    // 0x0B short, rank 1, dims [2], values 0x0102 and -2.
    const b = new Uint8Array([0, 0, 0x0b, 1, 0, 0, 0, 2, 0x01, 0x02, 0xff, 0xfe]);
    assert.deepEqual([...(parseIdx(b).data as Int16Array)], [0x0102, -2]);
  });
});

describe('IDX bad input', () => {
  const good = encodeIdx({ dtype: DataType.INT32, dims: [2, 2], data: new Int32Array([1, 2, 3, 4]) });
  const cases: [string, Uint8Array, string][] = [
    ['empty file', new Uint8Array(0), 'truncated'],
    ['bad magic', new Uint8Array([1, 2, 8, 1, 0, 0, 0, 1, 0]), 'bad magic'],
    ['unknown type', new Uint8Array([0, 0, 0x0a, 1, 0, 0, 0, 1, 0]), 'element type 0x0a'],
    ['truncated dims', good.subarray(0, 9), 'truncated'],
    ['truncated data', good.subarray(0, good.length - 1), 'truncated'],
    ['extra data', new Uint8Array([...good, 0]), 'size mismatch'],
    ['corrupt gzip', new Uint8Array(gzipSync(good)).subarray(0, 15), 'gzip'],
  ];
  for (const [what, bytes, msg] of cases) {
    it(`refuses ${what} with E_DATA naming the file`, async () => {
      await assertQnnxError(
        () => parseIdx(bytes, 'data/train-idx3-ubyte.gz'),
        'E_DATA',
        'data/train-idx3-ubyte.gz',
        msg,
      );
    });
  }

  it('names the file when reading from disk', async () => {
    const p = join(tempDir(), 'labels-idx1-ubyte');
    writeFileSync(p, good.subarray(0, good.length - 2));
    await assertQnnxError(() => readIdx(p), 'E_DATA', p, 'truncated');
    writeFileSync(p, gzipSync(good));
    assert.deepEqual([...((await readIdx(p)).data as Int32Array)], [1, 2, 3, 4]);
    assert.equal(readFileSync(p)[0], 0x1f);
  });
});
