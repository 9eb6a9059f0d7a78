import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import sharp from 'sharp';
import { glob } from '../../src/data/glob.js';
import { encodeIdx } from '../../src/data/idx.js';
import { encodeNpy } from '../../src/data/npy.js';
import { encodeNpz } from '../../src/data/npz.js';
import { openDataSource, type Sample, sampleKindOf } from '../../src/data/source.js';
import { encodeWav } from '../../src/data/wav.js';
import { DataType } from '../../src/onnx/dtype.js';
import type { HostTensor } from '../../src/tensor.js';
import { assertQnnxError, tempDir } from './helpers.js';

function f32(dims: number[], start = 0): HostTensor {
  const n = dims.reduce((a, b) => a * b, 1);
  return { dtype: DataType.FLOAT, dims, data: Float32Array.from({ length: n }, (_, i) => start + i) };
}

async function collect(it: AsyncIterable<Sample>): Promise<Sample[]> {
  const out: Sample[] = [];
  for await (const s of it) out.push(s);
  return out;
}

describe('glob', () => {
  const root = tempDir();
  for (const p of [
    'a/x1.npy',
    'a/x2.npy',
    'a/b/y.npy',
    'a/b/c/z.npy',
    'a/.hidden/h.npy',
    'a/.dot.npy',
    'a/b/note.txt',
    'q.npy',
  ])
    mkdirSync(join(root, p, '..'), { recursive: true });
  for (const p of [
    'a/x1.npy',
    'a/x2.npy',
    'a/b/y.npy',
    'a/b/c/z.npy',
    'a/.hidden/h.npy',
    'a/.dot.npy',
    'a/b/note.txt',
    'q.npy',
  ])
    writeFileSync(join(root, p), '');

  it('matches *, ?, [..] and ** like a shell, skipping hidden entries', async () => {
    const rel = async (pat: string) => (await glob(join(root, pat))).map((p) => p.slice(root.length + 1));
    assert.deepEqual(await rel('a/*.npy'), ['a/x1.npy', 'a/x2.npy']);
    assert.deepEqual(await rel('a/x?.npy'), ['a/x1.npy', 'a/x2.npy']);
    assert.deepEqual(await rel('a/x[!1].npy'), ['a/x2.npy']);
    assert.deepEqual(await rel('a/x[1-1].np[y]'), ['a/x1.npy']);
    assert.deepEqual(await rel('a/**/*.npy'), ['a/b/c/z.npy', 'a/b/y.npy', 'a/x1.npy', 'a/x2.npy']);
    assert.deepEqual(await rel('**/z.npy'), ['a/b/c/z.npy']);
    assert.deepEqual(await rel('a/.*.npy'), ['a/.dot.npy']);
    assert.deepEqual(await rel('*/b/*'), ['a/b/note.txt', 'a/b/y.npy']);
    assert.deepEqual(await rel('a/x1.npy'), ['a/x1.npy']);
    assert.deepEqual(await rel('nothing/*.npy'), []);
  });

  it('knows the file kinds', () => {
    const kinds = [
      'a.npy',
      'b.NPZ',
      'c.png',
      'd.JPEG',
      'e.wav',
      'train-images-idx3-ubyte.gz',
      't10k-labels-idx1-ubyte',
      'x.idx',
      'y.txt',
      'z.gz',
    ];
    assert.deepEqual(kinds.map(sampleKindOf), [
      'npy',
      'npz',
      'image',
      'image',
      'wav',
      'idx',
      'idx',
      'idx',
      undefined,
      undefined,
    ]);
  });
});

describe('openDataSource', () => {
  it('reads a directory of .npy files in sorted order, variable shapes, limit, get and entries', async () => {
    const dir = tempDir();
    // Written out of order; widths differ (dynamic axis).
    for (const [i, w] of [
      [2, 12],
      [0, 10],
      [1, 7],
    ] as const)
      writeFileSync(join(dir, `s${i}.npy`), encodeNpy(f32([1, 3, 2, w], i * 1000)));
    writeFileSync(join(dir, '.DS_Store'), 'junk');
    const src = await openDataSource(dir, { inputName: 'pixel_values' });
    assert.equal(src.kind, 'npy');
    assert.equal(src.size, 3);
    assert.deepEqual(src.files, [join(dir, 's0.npy'), join(dir, 's1.npy'), join(dir, 's2.npy')]);
    const samples = await collect(src);
    assert.deepEqual(
      samples.map((s) => [...s.keys()]),
      [['pixel_values'], ['pixel_values'], ['pixel_values']],
    );
    assert.deepEqual(
      samples.map((s) => s.get('pixel_values')!.dims),
      [
        [1, 3, 2, 10],
        [1, 3, 2, 7],
        [1, 3, 2, 12],
      ],
    );
    assert.equal((samples[2]!.get('pixel_values')!.data as Float32Array)[0], 2000);
    // Deterministic: a second pass gives the same.
    assert.deepEqual(
      (await collect(src)).map((s) => s.get('pixel_values')!.dims[3]),
      [10, 7, 12],
    );
    const limited = await openDataSource(dir, { inputName: 'x', limit: 2 });
    assert.equal(limited.size, 2);
    assert.equal((await collect(limited)).length, 2);
    assert.deepEqual((await limited.get(1)).get('x')!.dims, [1, 3, 2, 7]);
    await assertQnnxError(() => limited.get(2), 'E_USAGE', 'out of range');
    const entries = [];
    for await (const e of src.entries()) entries.push(e.info);
    assert.deepEqual(
      entries,
      [0, 1, 2].map((i) => ({ index: i, file: join(dir, `s${i}.npy`) })),
    );
  });

  it('accepts globs and lists (list order kept, duplicates dropped)', async () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'sub'));
    writeFileSync(join(dir, 'a.npy'), encodeNpy(f32([2], 1)));
    writeFileSync(join(dir, 'sub', 'b.npy'), encodeNpy(f32([2], 2)));
    writeFileSync(join(dir, 'sub', 'c.npy'), encodeNpy(f32([2], 3)));
    const g = await openDataSource(join(dir, '**', '*.npy'), { inputName: 'x' });
    assert.deepEqual(g.files, [join(dir, 'a.npy'), join(dir, 'sub', 'b.npy'), join(dir, 'sub', 'c.npy')]);
    const firstOf = async (s: AsyncIterable<Sample>) =>
      (await collect(s)).map((m) => (m.get('x')!.data as Float32Array)[0]);
    const list = await openDataSource(
      [join(dir, 'sub', 'c.npy'), join(dir, 'a.npy'), join(dir, 'sub', '*.npy')],
      { inputName: 'x' },
    );
    assert.deepEqual(await firstOf(list), [3, 1, 2]);
    const rec = await openDataSource(dir, { inputName: 'x', recursive: true });
    assert.equal(rec.size, 3);
    assert.equal((await openDataSource(dir, { inputName: 'x' })).size, 1);
  });

  it('maps .npz members to input names, checking inputNames', async () => {
    const dir = tempDir();
    for (let i = 0; i < 2; i++) {
      const m = new Map<string, HostTensor>([
        [
          'input_ids',
          { dtype: DataType.INT64, dims: [1, 4 + i], data: new BigInt64Array(4 + i).fill(BigInt(i)) },
        ],
        [
          'attention_mask',
          { dtype: DataType.INT64, dims: [1, 4 + i], data: new BigInt64Array(4 + i).fill(1n) },
        ],
        ['labels', f32([1])],
      ]);
      writeFileSync(join(dir, `b${i}.npz`), encodeNpz(m, { compress: i === 1 }));
    }
    const all = await collect(await openDataSource(dir));
    assert.deepEqual([...all[0]!.keys()], ['input_ids', 'attention_mask', 'labels']);
    const src = await openDataSource(dir, { inputNames: ['attention_mask', 'input_ids'] });
    const s = await collect(src);
    assert.deepEqual([...s[1]!.keys()], ['attention_mask', 'input_ids']);
    assert.deepEqual(s[1]!.get('input_ids')!.dims, [1, 5]);
    const missing = await openDataSource(dir, { inputNames: ['input_ids', 'token_type_ids'] });
    await assertQnnxError(
      () => collect(missing),
      'E_DATA',
      join(dir, 'b0.npz'),
      "missing input 'token_type_ids'",
    );
  });

  it('splits batches along axis 0 (npy with split, IDX always) across files', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'a.npy'), encodeNpy(f32([4, 3], 0)));
    writeFileSync(join(dir, 'b.npy'), encodeNpy(f32([2, 3], 100)));
    const src = await openDataSource(dir, { inputName: 'x', split: true });
    assert.equal(src.size, 6);
    const s = await collect(src);
    assert.deepEqual(
      s.map((m) => m.get('x')!.dims),
      new Array(6).fill([1, 3]),
    );
    assert.deepEqual([...(s[3]!.get('x')!.data as Float32Array)], [9, 10, 11]);
    assert.deepEqual([...((await src.get(5)).get('x')!.data as Float32Array)], [103, 104, 105]);
    const infos = [];
    for await (const e of src.entries()) infos.push([e.info.file.slice(dir.length + 1), e.info.item]);
    assert.deepEqual(infos, [
      ['a.npy', 0],
      ['a.npy', 1],
      ['a.npy', 2],
      ['a.npy', 3],
      ['b.npy', 0],
      ['b.npy', 1],
    ]);

    const idxDir = tempDir();
    const images = {
      dtype: DataType.UINT8,
      dims: [5, 2, 2],
      data: Uint8Array.from({ length: 20 }, (_, i) => i),
    };
    const labels = { dtype: DataType.UINT8, dims: [5], data: new Uint8Array([9, 0, 0, 3, 0]) };
    writeFileSync(join(idxDir, 'train-images-idx3-ubyte'), encodeIdx(images));
    writeFileSync(join(idxDir, 'train-labels-idx1-ubyte'), encodeIdx(labels));
    const img = await openDataSource(join(idxDir, '*images*'), { inputName: 'image', limit: 4 });
    assert.equal(img.kind, 'idx');
    assert.equal(img.size, 4);
    const first = await img.get(1);
    assert.deepEqual(first.get('image')!.dims, [1, 2, 2]);
    assert.deepEqual([...(first.get('image')!.data as Uint8Array)], [4, 5, 6, 7]);
    const lab = await collect(
      await openDataSource(join(idxDir, 'train-labels-idx1-ubyte'), { inputName: 'label' }),
    );
    assert.deepEqual(
      lab.map((m) => [...(m.get('label')!.data as Uint8Array)]),
      [[9], [0], [0], [3], [0]],
    );
    await assertQnnxError(() => openDataSource(idxDir, { inputName: 'x' }), 'E_DATA', 'different ranks');
  });

  it('reads the real Fashion-MNIST test set as a source', {
    skip: !existsSync('/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz'),
  }, async () => {
    const src = await openDataSource('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz', {
      inputName: 'input',
      limit: 3,
      transform: (s) => {
        const t = s.get('input')!;
        const data = Float32Array.from(t.data as Uint8Array, (v) => v / 255);
        return new Map([['input', { dtype: DataType.FLOAT, dims: [1, 1, 28, 28], data }]]);
      },
    });
    assert.equal(src.size, 3);
    const s = await collect(src);
    assert.deepEqual(s[2]!.get('input')!.dims, [1, 1, 28, 28]);
    assert.equal(s[2]!.get('input')!.dtype, DataType.FLOAT);
  });

  it('preprocesses images and wavs', async () => {
    const dir = tempDir();
    await sharp(Buffer.alloc(6 * 4 * 3, 51), { raw: { width: 6, height: 4, channels: 3 } })
      .png()
      .toFile(join(dir, 'a.png'));
    await sharp(Buffer.alloc(12 * 4 * 3, 102), { raw: { width: 12, height: 4, channels: 3 } })
      .jpeg({ quality: 100 })
      .toFile(join(dir, 'b.jpg'));
    const src = await openDataSource(dir, {
      inputName: 'x',
      image: { height: 8, widthMultiple: 4, maxWidth: 64, channels: 3, layout: 'NCHW', scale: 1 / 255 },
    });
    assert.equal(src.kind, 'image');
    const s = await collect(src);
    assert.deepEqual(
      s.map((m) => m.get('x')!.dims),
      [
        [1, 3, 8, 12],
        [1, 3, 8, 24],
      ],
    );
    assert.ok(Math.abs((s[0]!.get('x')!.data as Float32Array)[0]! - 0.2) < 1e-6);
    await assertQnnxError(() => openDataSource(dir, { inputName: 'x' }), 'E_USAGE', 'options.image');

    const wdir = tempDir();
    writeFileSync(
      join(wdir, 'a.wav'),
      encodeWav({ sampleRate: 16000, samples: [new Float32Array([0.5, -0.25, 0])] }),
    );
    writeFileSync(
      join(wdir, 'b.wav'),
      encodeWav({ sampleRate: 16000, samples: [new Float32Array(5).fill(0.125)] }),
    );
    const w = await collect(
      await openDataSource(wdir, { inputName: 'audio', wav: { scale: 'int16', sampleRate: 16000 } }),
    );
    assert.deepEqual(
      w.map((m) => m.get('audio')!.dims),
      [
        [1, 3],
        [1, 5],
      ],
    );
    assert.deepEqual([...(w[0]!.get('audio')!.data as Float32Array)], [16384, -8192, 0]);
    const wrongRate = await openDataSource(wdir, { inputName: 'audio', wav: { sampleRate: 8000 } });
    await assertQnnxError(
      () => collect(wrongRate),
      'E_DATA',
      join(wdir, 'a.wav'),
      '16000 Hz, expected 8000 Hz',
    );
  });

  it('applies transform with sample info', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'a.npy'), encodeNpy(f32([2])));
    const src = await openDataSource(dir, {
      inputName: 'x',
      transform: async (s, info) =>
        new Map([
          ...s,
          ['idx', { dtype: DataType.INT64, dims: [], data: new BigInt64Array([BigInt(info.index)]) }],
        ]),
    });
    const [s] = await collect(src);
    assert.deepEqual([...s!.keys()], ['x', 'idx']);
  });

  it('gives clear errors', async () => {
    const empty = tempDir();
    await assertQnnxError(() => openDataSource(empty, { inputName: 'x' }), 'E_DATA', empty, 'no data files');
    await assertQnnxError(
      () => openDataSource(join(empty, '*.npy'), { inputName: 'x' }),
      'E_DATA',
      'no files match',
    );
    await assertQnnxError(
      () => openDataSource(join(empty, 'nope.npy'), { inputName: 'x' }),
      'E_IO',
      'nope.npy',
    );
    await assertQnnxError(() => openDataSource([], { inputName: 'x' }), 'E_USAGE');
    const dir = tempDir();
    writeFileSync(join(dir, 'a.npy'), encodeNpy(f32([2])));
    writeFileSync(join(dir, 'labels.txt'), 'cat\n');
    await assertQnnxError(
      () => openDataSource(dir, { inputName: 'x' }),
      'E_DATA',
      join(dir, 'labels.txt'),
      'unknown data file type',
    );
    const mixed = tempDir();
    writeFileSync(join(mixed, 'a.npy'), encodeNpy(f32([2])));
    writeFileSync(join(mixed, 'b.wav'), encodeWav({ sampleRate: 8000, samples: [new Float32Array(2)] }));
    await assertQnnxError(
      () => openDataSource(mixed, { inputName: 'x' }),
      'E_DATA',
      'mixed data file kinds',
      'npy',
      'wav',
    );
    await assertQnnxError(() => openDataSource(join(mixed, '*.npy')), 'E_USAGE', 'inputName');
    await assertQnnxError(
      () => openDataSource(join(mixed, '*.npy'), { inputName: 'x', limit: -1 }),
      'E_USAGE',
      'limit',
    );
    const bad = tempDir();
    writeFileSync(join(bad, 'a.npy'), encodeNpy(f32([2])).subarray(0, 70));
    const src = await openDataSource(bad, { inputName: 'x' });
    await assertQnnxError(() => collect(src), 'E_DATA', join(bad, 'a.npy'), 'truncated');
  });
});
