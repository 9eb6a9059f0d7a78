import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import sharp from 'sharp';
import { type ImageSpec, imageTargetSize, loadImage } from '../../src/data/image.js';
import { DataType } from '../../src/onnx/dtype.js';
import { assertQnnxError, runPython, tempDir } from './helpers.js';

// A 4x3 RGB image with distinct values: pixel (x, y) = (10x + 40y + 1, 200 - 15x - 3y, (77x + 60y) % 256).
const W = 4;
const H = 3;
function pixel(x: number, y: number): [number, number, number] {
  return [10 * x + 40 * y + 1, 200 - 15 * x - 3 * y, (77 * x + 60 * y) % 256];
}
function rgbBytes(): Buffer {
  const b = Buffer.alloc(W * H * 3);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) b.set(pixel(x, y), (y * W + x) * 3);
  return b;
}

async function writePng(
  dir: string,
  name: string,
  raw: Buffer,
  w: number,
  h: number,
  channels: 1 | 2 | 3 | 4,
) {
  const p = join(dir, name);
  await sharp(raw, { raw: { width: w, height: h, channels } })
    .png()
    .toFile(p);
  return p;
}

function pilSkipReason(): string | false {
  const r = spawnSync('/usr/bin/python3', ['-c', 'import PIL'], { encoding: 'utf8' });
  return r.status === 0 ? false : '/usr/bin/python3 has no PIL (Pillow)';
}

describe('image preprocessing', () => {
  const dir = tempDir();
  let png: string;
  const ready = (async () => {
    png = await writePng(dir, 'rgb.png', rgbBytes(), W, H, 3);
  })();

  it('NCHW RGB float32 with scale, mean and std gives exact values', async () => {
    await ready;
    const mean = [0.485, 0.456, 0.406];
    const std = [0.229, 0.224, 0.225];
    const spec: ImageSpec = {
      width: W,
      height: H,
      channels: 3,
      layout: 'NCHW',
      channelOrder: 'RGB',
      scale: 1 / 255,
      mean,
      std,
    };
    const t = await loadImage(png, spec);
    assert.equal(t.dtype, DataType.FLOAT);
    assert.deepEqual(t.dims, [1, 3, H, W]);
    const d = t.data as Float32Array;
    for (let c = 0; c < 3; c++)
      for (let y = 0; y < H; y++)
        for (let x = 0; x < W; x++) {
          const want = Math.fround((pixel(x, y)[c]! * (1 / 255) - mean[c]!) / std[c]!);
          assert.equal(d[c * H * W + y * W + x], want, `c${c} y${y} x${x}`);
        }
  });

  it('NHWC BGR uint8 gives the raw bytes reordered', async () => {
    await ready;
    const t = await loadImage(png, {
      width: W,
      height: H,
      channels: 3,
      layout: 'NHWC',
      channelOrder: 'BGR',
      dtype: 'uint8',
    });
    assert.equal(t.dtype, DataType.UINT8);
    assert.deepEqual(t.dims, [1, H, W, 3]);
    const want: number[] = [];
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) want.push(...pixel(x, y).reverse());
    assert.deepEqual([...(t.data as Uint8Array)], want);
  });

  it('keeps the size when no width/height are given, and accepts encoded bytes', async () => {
    await ready;
    const bytes = await sharp(png).png().toBuffer();
    const t = await loadImage(new Uint8Array(bytes), { channels: 3, layout: 'NCHW', scale: 2 });
    assert.deepEqual(t.dims, [1, 3, H, W]);
    assert.equal((t.data as Float32Array)[0], pixel(0, 0)[0] * 2);
  });

  it('one channel: ITU-R 601 luma as PIL convert("L"); grey sources pass through', async () => {
    await ready;
    const t = await loadImage(png, { channels: 1, layout: 'NCHW', dtype: 'uint8' });
    assert.deepEqual(t.dims, [1, 1, H, W]);
    const want: number[] = [];
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++) {
        const [r, g, b] = pixel(x, y);
        want.push((19595 * r + 38470 * g + 7471 * b + 32768) >> 16);
      }
    assert.deepEqual([...(t.data as Uint8Array)], want);
    const grey = Buffer.from([0, 17, 100, 255, 3, 250]);
    const gp = await writePng(dir, 'grey.png', grey, 3, 2, 1);
    const g1 = await loadImage(gp, { channels: 1, layout: 'NHWC', dtype: 'uint8' });
    assert.deepEqual([...(g1.data as Uint8Array)], [...grey]);
    const g3 = await loadImage(gp, { channels: 3, layout: 'NCHW', dtype: 'uint8' });
    assert.deepEqual([...(g3.data as Uint8Array)], [...grey, ...grey, ...grey]);
  });

  it('one channel matches PIL exactly', { skip: pilSkipReason() }, async () => {
    await ready;
    const out = runPython(
      'import sys; from PIL import Image; print(list(Image.open(sys.argv[1]).convert("L").getdata()))',
      [png],
    );
    const t = await loadImage(png, { channels: 1, layout: 'NCHW', dtype: 'uint8' });
    assert.deepEqual([...(t.data as Uint8Array)], JSON.parse(out));
  });

  it('drops alpha and reduces 16-bit images to 8 bits', async () => {
    await ready;
    const rgba = Buffer.alloc(W * H * 4);
    const rgb = rgbBytes();
    for (let i = 0; i < W * H; i++) {
      rgba.set(rgb.subarray(i * 3, i * 3 + 3), i * 4);
      rgba[i * 4 + 3] = i * 20;
    }
    const ap = await writePng(dir, 'rgba.png', rgba, W, H, 4);
    const spec: ImageSpec = { channels: 3, layout: 'NHWC', dtype: 'uint8' };
    assert.deepEqual([...((await loadImage(ap, spec)).data as Uint8Array)], [...rgb]);
    const p16 = join(dir, 'rgb16.png');
    await sharp(rgb, { raw: { width: W, height: H, channels: 3 } })
      .toColourspace('rgb16')
      .png()
      .toFile(p16);
    assert.equal((await sharp(p16).metadata()).depth, 'ushort');
    assert.deepEqual([...((await loadImage(p16, spec)).data as Uint8Array)], [...rgb]);
  });

  it('resizes: nearest 2x upscale replicates pixels', async () => {
    await ready;
    const t = await loadImage(png, {
      width: 2 * W,
      height: 2 * H,
      channels: 3,
      layout: 'NHWC',
      dtype: 'uint8',
      kernel: 'nearest',
    });
    assert.deepEqual(t.dims, [1, 2 * H, 2 * W, 3]);
    const d = t.data as Uint8Array;
    for (let y = 0; y < 2 * H; y++)
      for (let x = 0; x < 2 * W; x++)
        assert.deepEqual(
          [...d.subarray((y * 2 * W + x) * 3, (y * 2 * W + x) * 3 + 3)],
          pixel(x >> 1, y >> 1),
        );
  });

  it("fit 'contain' letterboxes with the background value; 'cover' crops", async () => {
    const wide = await writePng(dir, 'wide.png', Buffer.alloc(4 * 2 * 3, 50), 4, 2, 3);
    const t = await loadImage(wide, {
      width: 4,
      height: 4,
      fit: 'contain',
      background: 114,
      channels: 3,
      layout: 'NCHW',
      dtype: 'uint8',
    });
    const d = t.data as Uint8Array;
    for (let c = 0; c < 3; c++)
      for (let y = 0; y < 4; y++)
        for (let x = 0; x < 4; x++)
          assert.equal(d[c * 16 + y * 4 + x], y === 0 || y === 3 ? 114 : 50, `c${c} y${y} x${x}`);
    const cover = await loadImage(wide, {
      width: 2,
      height: 2,
      fit: 'cover',
      channels: 3,
      layout: 'NCHW',
      dtype: 'uint8',
    });
    assert.deepEqual([...(cover.data as Uint8Array)], new Array(12).fill(50));
  });

  it('variable width: fixed height, width rounded up to a multiple, clamped to maxWidth', async () => {
    const spec: ImageSpec = {
      height: 48,
      widthMultiple: 8,
      maxWidth: 320,
      channels: 3,
      layout: 'NCHW',
      scale: 1 / 127.5,
      mean: [1],
      std: [1],
    };
    assert.deepEqual(imageTargetSize(spec, 100, 20), { width: 240, height: 48, resizeWidth: 240 });
    assert.deepEqual(imageTargetSize(spec, 31, 20), { width: 80, height: 48, resizeWidth: 80 });
    assert.deepEqual(imageTargetSize(spec, 1000, 20), { width: 320, height: 48, resizeWidth: 320 });
    assert.deepEqual(imageTargetSize(spec, 2, 48), { width: 8, height: 48, resizeWidth: 8 });
    assert.deepEqual(imageTargetSize({ ...spec, widthRounding: 'pad' }, 31, 20), {
      width: 80,
      height: 48,
      resizeWidth: 74,
    });
    const line = await writePng(dir, 'line.png', Buffer.alloc(31 * 20 * 3, 200), 31, 20, 3);
    const t = await loadImage(line, spec);
    assert.deepEqual(t.dims, [1, 3, 48, 80]);
    for (const v of t.data as Float32Array) assert.ok(Math.abs(v - (200 / 127.5 - 1)) < 0.02, String(v));
    const long = await writePng(dir, 'long.png', Buffer.alloc(500 * 10 * 3, 9), 500, 10, 3);
    assert.deepEqual((await loadImage(long, spec)).dims, [1, 3, 48, 320]);
  });

  it("variable width 'pad': natural width, right padding with the background", async () => {
    const raw = Buffer.alloc(13 * 48 * 3);
    for (let i = 0; i < raw.length; i++) raw[i] = (i * 7) % 251;
    const p = await writePng(dir, 'pad.png', raw, 13, 48, 3);
    const t = await loadImage(p, {
      height: 48,
      widthMultiple: 8,
      widthRounding: 'pad',
      background: 255,
      channels: 3,
      layout: 'NHWC',
      dtype: 'uint8',
    });
    assert.deepEqual(t.dims, [1, 48, 16, 3]);
    const d = t.data as Uint8Array;
    for (let y = 0; y < 48; y++)
      for (let x = 0; x < 16; x++)
        for (let c = 0; c < 3; c++)
          assert.equal(
            d[(y * 16 + x) * 3 + c],
            x < 13 ? raw[(y * 13 + x) * 3 + c] : 255,
            `y${y} x${x} c${c}`,
          );
  });

  it('decodes JPEG and WebP', async () => {
    await ready;
    for (const fmt of ['jpeg', 'webp'] as const) {
      const p = join(dir, `img.${fmt}`);
      await sharp(png)[fmt]({ quality: 100 }).toFile(p);
      const t = await loadImage(p, { width: 8, height: 6, channels: 3, layout: 'NCHW', scale: 1 / 255 });
      assert.deepEqual(t.dims, [1, 3, 6, 8]);
    }
  });

  it('refuses corrupt and missing files and bad specs', async () => {
    await ready;
    const bad = join(dir, 'corrupt.png');
    writeFileSync(bad, Buffer.from('\x89PNG\r\n\x1a\n this is not really a png'));
    const spec: ImageSpec = { width: 4, height: 4, channels: 3, layout: 'NCHW' };
    await assertQnnxError(() => loadImage(bad, spec), 'E_DATA', bad, 'cannot decode image');
    const text = join(dir, 'text.jpg');
    writeFileSync(text, 'hello');
    await assertQnnxError(() => loadImage(text, spec), 'E_DATA', text);
    await assertQnnxError(() => loadImage(join(dir, 'missing.png'), spec), 'E_IO', 'missing.png');
    await assertQnnxError(() => loadImage(png, { ...spec, channels: 2 as 1 }), 'E_USAGE', 'channels');
    await assertQnnxError(() => loadImage(png, { ...spec, mean: [1, 2] }), 'E_USAGE', 'mean');
    await assertQnnxError(
      () => loadImage(png, { ...spec, widthMultiple: 8 }),
      'E_USAGE',
      'width or widthMultiple',
    );
    await assertQnnxError(
      () => loadImage(png, { ...spec, dtype: 'uint8', scale: 1 / 255 }),
      'E_USAGE',
      'uint8',
    );
  });
});
