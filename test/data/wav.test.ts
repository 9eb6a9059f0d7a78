import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { encodeWav, parseWav, readWav, wavToTensor } from '../../src/data/wav.js';
import { DataType } from '../../src/onnx/dtype.js';
import { assertQnnxError, hasCommand, tempDir } from './helpers.js';

interface WavParts {
  formatTag: number;
  channels: number;
  rate: number;
  bits: number;
  data: Uint8Array;
  /** Sub-format code for WAVE_FORMAT_EXTENSIBLE. */
  sub?: number;
  /** Chunks placed before 'data' (id, payload). */
  extra?: [string, Uint8Array][];
  /** Override the declared data size. */
  dataSize?: number;
}

/** Build a WAV file by hand, following the RIFF/WAVE layout. */
function makeWav(p: WavParts): Uint8Array {
  const chunks: [string, Uint8Array, number?][] = [];
  const ext = p.sub !== undefined;
  const fmt = new Uint8Array(ext ? 40 : 16);
  const f = new DataView(fmt.buffer);
  f.setUint16(0, p.formatTag, true);
  f.setUint16(2, p.channels, true);
  f.setUint32(4, p.rate, true);
  f.setUint32(8, (p.rate * p.channels * p.bits) / 8, true);
  f.setUint16(12, (p.channels * p.bits) / 8, true);
  f.setUint16(14, p.bits, true);
  if (ext) {
    f.setUint16(16, 22, true);
    f.setUint16(18, p.bits, true);
    f.setUint32(20, 0, true);
    f.setUint16(24, p.sub!, true);
    fmt.set([0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71], 26);
  }
  chunks.push(['fmt ', fmt]);
  for (const e of p.extra ?? []) chunks.push(e);
  chunks.push(['data', p.data, p.dataSize]);
  const size = chunks.reduce((s, [, d]) => s + 8 + d.length + (d.length & 1), 12);
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  const put = (o: number, s: string) =>
    out.set(
      [...s].map((c) => c.charCodeAt(0)),
      o,
    );
  put(0, 'RIFF');
  dv.setUint32(4, size - 8, true);
  put(8, 'WAVE');
  let o = 12;
  for (const [id, d, declared] of chunks) {
    put(o, id);
    dv.setUint32(o + 4, declared ?? d.length, true);
    out.set(d, o + 8);
    o += 8 + d.length + (d.length & 1);
  }
  return out;
}

describe('wav hand-made files', () => {
  it('16-bit PCM stereo, planar output, unit and int16 scales', () => {
    const pcm = new Int16Array([0, -32768, 16384, 32767, -1, 100]); // L R L R L R
    const w = makeWav({ formatTag: 1, channels: 2, rate: 16000, bits: 16, data: new Uint8Array(pcm.buffer) });
    const a = parseWav(w, 'stereo.wav');
    assert.equal(a.sampleRate, 16000);
    assert.equal(a.channels, 2);
    assert.equal(a.frames, 3);
    assert.equal(a.format, 'pcm');
    assert.deepEqual([...a.samples[0]!], [0, 0.5, -1 / 32768]);
    assert.deepEqual([...a.samples[1]!], [-1, 32767 / 32768, 100 / 32768]);
    const i = parseWav(w, 'stereo.wav', { scale: 'int16' });
    assert.deepEqual([...i.samples[0]!], [0, 16384, -1]);
    assert.deepEqual([...i.samples[1]!], [-32768, 32767, 100]);
    const mono = wavToTensor(i);
    assert.equal(mono.dtype, DataType.FLOAT);
    assert.deepEqual(mono.dims, [1, 3]);
    assert.deepEqual([...(mono.data as Float32Array)], [-16384, 24575.5, 49.5]);
    assert.deepEqual([...(wavToTensor(i, { channel: 1 }).data as Float32Array)], [-32768, 32767, 100]);
  });

  it('8-bit unsigned, 24-bit and 32-bit PCM, 32/64-bit float, EXTENSIBLE, odd chunks', () => {
    const u8 = parseWav(
      makeWav({ formatTag: 1, channels: 1, rate: 8000, bits: 8, data: new Uint8Array([0, 128, 255]) }),
    );
    assert.deepEqual([...u8.samples[0]!], [-1, 0, 127 / 128]);
    const s24 = new Uint8Array([0x00, 0x00, 0x80, 0xff, 0xff, 0x7f, 0x01, 0x00, 0x00, 0xff, 0xff, 0xff]);
    const a24 = parseWav(makeWav({ formatTag: 1, channels: 2, rate: 48000, bits: 24, data: s24 }));
    assert.deepEqual([...a24.samples[0]!], [-1, 1 / 8388608]);
    assert.deepEqual([...a24.samples[1]!], [Math.fround(8388607 / 8388608), -1 / 8388608]);
    const s32 = new Int32Array([-2147483648, 1 << 30]);
    const a32 = parseWav(
      makeWav({ formatTag: 1, channels: 1, rate: 8000, bits: 32, data: new Uint8Array(s32.buffer) }),
    );
    assert.deepEqual([...a32.samples[0]!], [-1, 0.5]);
    const f32 = new Float32Array([0.25, -1.5, 0.1]);
    const af = parseWav(
      makeWav({ formatTag: 3, channels: 1, rate: 8000, bits: 32, data: new Uint8Array(f32.buffer) }),
    );
    assert.equal(af.format, 'float');
    assert.deepEqual([...af.samples[0]!], [...f32]);
    const f64 = new Float64Array([0.125, -0.5]);
    assert.deepEqual(
      [
        ...parseWav(
          makeWav({ formatTag: 3, channels: 1, rate: 8000, bits: 64, data: new Uint8Array(f64.buffer) }),
        ).samples[0]!,
      ],
      [0.125, -0.5],
    );
    // WAVE_FORMAT_EXTENSIBLE with a PCM sub-format, 3 channels, an odd-sized LIST chunk before the data.
    const pcm = new Int16Array([1, 2, 3, 4, 5, 6]);
    const ext = parseWav(
      makeWav({
        formatTag: 0xfffe,
        sub: 1,
        channels: 3,
        rate: 22050,
        bits: 16,
        data: new Uint8Array(pcm.buffer),
        extra: [['LIST', new Uint8Array([1, 2, 3])]],
      }),
      'ext.wav',
      { scale: 'int16' },
    );
    assert.equal(ext.channels, 3);
    assert.deepEqual(
      ext.samples.map((c) => [...c]),
      [
        [1, 4],
        [2, 5],
        [3, 6],
      ],
    );
    // 8-bit mono with an odd number of samples (pad byte after data).
    assert.equal(
      parseWav(makeWav({ formatTag: 1, channels: 1, rate: 8000, bits: 8, data: new Uint8Array([1, 2, 3]) }))
        .frames,
      3,
    );
  });
});

describe('wav round trip', () => {
  it('encodeWav writes 16-bit PCM that parses back to the quantized samples', () => {
    const n = 1000;
    const l = new Float32Array(n);
    const r = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      l[i] = Math.sin((2 * Math.PI * 440 * i) / 16000) * 0.8;
      r[i] = ((i % 200) - 100) / 100; // includes -1 and 0.99
    }
    const bytes = encodeWav({ sampleRate: 16000, samples: [l, r] });
    assert.equal(bytes.length, 44 + n * 4);
    const a = parseWav(bytes, 'rt.wav');
    assert.equal(a.sampleRate, 16000);
    assert.equal(a.channels, 2);
    assert.equal(a.frames, n);
    for (let i = 0; i < n; i++) {
      assert.equal(a.samples[0]![i], Math.fround(Math.round(l[i]! * 32768) / 32768) + 0);
      assert.equal(
        a.samples[1]![i],
        Math.fround(Math.max(-32768, Math.min(32767, Math.round(r[i]! * 32768))) / 32768) + 0,
      );
    }
    // int16-scaled input and output are the same integers.
    const ints = new Float32Array([-32768, -1, 0, 1, 32767, 40000, -40000]);
    const back = parseWav(encodeWav({ sampleRate: 8000, samples: [ints] }, { scale: 'int16' }), 'i.wav', {
      scale: 'int16',
    });
    assert.deepEqual([...back.samples[0]!], [-32768, -1, 0, 1, 32767, 32767, -32768]);
  });
});

describe('wav written by sox', {
  skip: hasCommand('sox') ? false : 'sox is not installed (skipping the sox-generated WAV case)',
}, () => {
  const encodings: [string, string[], string][] = [
    ['u8', ['-e', 'unsigned-integer', '-b', '8'], 'pcm'],
    ['s16', ['-e', 'signed-integer', '-b', '16'], 'pcm'],
    ['s24', ['-e', 'signed-integer', '-b', '24'], 'pcm'],
    ['s32', ['-e', 'signed-integer', '-b', '32'], 'pcm'],
    ['f32', ['-e', 'floating-point', '-b', '32'], 'float'],
  ];
  for (const [label, enc, format] of encodings) {
    for (const channels of [1, 2, 3]) {
      it(`${label}, ${channels} channel(s): samples equal sox's own raw conversion`, async () => {
        const dir = tempDir();
        const wav = join(dir, `${label}.wav`);
        const synth = ['sine', '440', 'sine', '660', 'square', '100'].slice(0, channels * 2);
        execFileSync('sox', [
          '-D',
          '-r',
          '16000',
          '-n',
          '-c',
          String(channels),
          ...enc,
          wav,
          'synth',
          '0.05',
          ...synth,
          'vol',
          '0.9',
        ]);
        const a = await readWav(wav);
        assert.equal(a.sampleRate, 16000);
        assert.equal(a.channels, channels);
        assert.equal(a.frames, 800);
        assert.equal(a.format, format);
        const raw = join(dir, `${label}.raw`);
        const rawEnc =
          format === 'float' ? ['-e', 'floating-point', '-b', '32'] : ['-e', 'signed-integer', '-b', '32'];
        execFileSync('sox', ['-D', wav, '-t', 'raw', ...rawEnc, '-L', raw]);
        const buf = readFileSync(raw);
        const ref =
          format === 'float'
            ? new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4)
            : new Int32Array(buf.buffer, buf.byteOffset, buf.length / 4);
        assert.equal(ref.length, 800 * channels);
        for (let f = 0; f < 800; f++)
          for (let c = 0; c < channels; c++) {
            const want =
              format === 'float' ? ref[f * channels + c]! : Math.fround(ref[f * channels + c]! / 2147483648);
            assert.equal(a.samples[c]![f], want, `frame ${f} channel ${c}`);
          }
        let peak = 0;
        for (const v of a.samples[0]!) peak = Math.max(peak, Math.abs(v));
        assert.ok(peak > 0.85 && peak < 0.95, `peak ${peak}`);
      });
    }
  }
});

describe('wav bad input', () => {
  const pcm = new Uint8Array(new Int16Array([1, 2, 3, 4]).buffer);
  const good = makeWav({ formatTag: 1, channels: 2, rate: 16000, bits: 16, data: pcm });
  const cases: [string, Uint8Array, string][] = [
    ['empty file', new Uint8Array(0), 'not a WAV file'],
    ['bad magic', new TextEncoder().encode('OggS this is not a wav file'), 'bad magic'],
    ['RIFX', new Uint8Array([...new TextEncoder().encode('RIFX'), ...good.subarray(4)]), 'RIFX'],
    ['truncated data', good.subarray(0, good.length - 2), 'truncated'],
    ['truncated header', good.subarray(0, 30), 'truncated'],
    ['missing data chunk', good.subarray(0, 36), "no 'data' chunk"],
    ['A-law', makeWav({ formatTag: 6, channels: 1, rate: 8000, bits: 8, data: new Uint8Array(4) }), 'A-law'],
    [
      '12-bit PCM',
      makeWav({ formatTag: 1, channels: 1, rate: 8000, bits: 12, data: new Uint8Array(4) }),
      '12-bit',
    ],
    [
      'partial frame',
      makeWav({ formatTag: 1, channels: 2, rate: 8000, bits: 16, data: new Uint8Array(6) }),
      'whole number',
    ],
    [
      'unknown EXTENSIBLE sub-format',
      makeWav({ formatTag: 0xfffe, sub: 2, channels: 1, rate: 8000, bits: 16, data: new Uint8Array(4) }),
      'ADPCM',
    ],
  ];
  for (const [what, bytes, msg] of cases) {
    it(`refuses ${what} with E_DATA naming the file`, async () => {
      await assertQnnxError(() => parseWav(bytes, 'clips/hey.wav'), 'E_DATA', 'clips/hey.wav', msg);
    });
  }

  it('names the file on disk', async () => {
    const p = join(tempDir(), 'cut.wav');
    writeFileSync(p, good.subarray(0, good.length - 1));
    await assertQnnxError(() => readWav(p), 'E_DATA', p, 'truncated');
    await assertQnnxError(() => readWav(join(p, 'nope.wav')), 'E_IO');
  });
});
