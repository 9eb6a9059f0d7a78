/**
 * Real-looking inputs for the real-model PTQ bench and tests, rendered on demand and cached under the system temp
 * directory: text pages and text lines with ImageMagick (`convert`, DejaVu fonts) for PP-OCR, and speech with
 * espeak-ng + sox (16 kHz mono 16-bit, 1 s of silence on each side) for Silero VAD and openWakeWord.
 *
 * Everything is deterministic: texts, fonts, sizes and positions come from a seeded PRNG, so a cached file is
 * the same file that would be rendered again. `available()` tells whether the tools are installed.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const CACHE_DIR = path.join(os.tmpdir(), 'qnnx-ptq-assets');

const FONT_DIR = '/usr/share/fonts/truetype/dejavu';
const FONTS = [
  'DejaVuSans.ttf',
  'DejaVuSans-Bold.ttf',
  'DejaVuSerif.ttf',
  'DejaVuSerif-Italic.ttf',
  'DejaVuSansMono.ttf',
  'DejaVuSansCondensed.ttf',
  'DejaVuSerifCondensed-Bold.ttf',
  'DejaVuSans-Oblique.ttf',
];

const WORDS = (
  'invoice total amount due date customer number order shipping address street city account balance ' +
  'payment received thank you for your business quantity price description item reference page of report ' +
  'summary quarterly revenue growth percent model quantization integer kernel latency memory bandwidth ' +
  'the quick brown fox jumps over lazy dog receipt store open monday friday phone email www example com ' +
  'chapter section figure table results method data training validation test accuracy error rate'
).split(' ');

/** mulberry32: a small seeded PRNG returning floats in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)]!;
}

/** A line of `n` words with some numbers and capitals mixed in. */
export function textLine(r: () => number, n: number): string {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const u = r();
    if (u < 0.15) out.push(String(Math.floor(r() * 100000)));
    else if (u < 0.22) out.push(`$${(r() * 1000).toFixed(2)}`);
    else {
      const w = pick(r, WORDS);
      out.push(u < 0.4 ? w[0]!.toUpperCase() + w.slice(1) : w);
    }
  }
  return out.join(' ');
}

function run(cmd: string, args: string[], input?: Buffer): Buffer {
  const p = spawnSync(cmd, args, { input, maxBuffer: 1 << 28 });
  if (p.error) throw p.error;
  if (p.status !== 0) throw new Error(`${cmd} failed (${p.status}): ${p.stderr.toString().slice(0, 400)}`);
  return p.stdout;
}

function has(cmd: string, args: string[]): boolean {
  const p = spawnSync(cmd, args, { stdio: 'ignore' });
  return !p.error && p.status === 0;
}

/** Whether ImageMagick (with the DejaVu fonts) and espeak-ng + sox are installed. */
export function available(): { images: boolean; speech: boolean } {
  return {
    images: has('convert', ['-version']) && fs.existsSync(path.join(FONT_DIR, FONTS[0]!)),
    speech: has('espeak-ng', ['--version']) && has('sox', ['--version']),
  };
}

function cached(name: string, make: (file: string) => void): string {
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  const file = path.join(CACHE_DIR, name);
  if (!fs.existsSync(file)) {
    const tmp = `${file}.${process.pid}.tmp`;
    make(tmp);
    fs.renameSync(tmp, file);
  }
  return file;
}

/**
 * A page of text lines (PNG, `width` x `height`): 6-30 lines in mixed fonts, sizes 16-44 pt, dark ink on a light
 * background, some lines indented, a few in a second column, a slight blur on some pages (scan-like).
 */
export function renderPage(seed: number, width: number, height: number): string {
  return cached(`page-${width}x${height}-${seed}.png`, (file) => {
    const r = prng(seed * 7919 + width);
    const bg = 225 + Math.floor(r() * 31);
    const args = ['-size', `${width}x${height}`, `xc:rgb(${bg},${bg},${Math.max(200, bg - 10)})`];
    let y = 20 + Math.floor(r() * 40);
    while (y < height - 20) {
      const size = Math.round((16 + r() * 28) * Math.sqrt(width / 640));
      const font = path.join(FONT_DIR, pick(r, FONTS));
      const ink = Math.floor(r() * 90);
      const x = 10 + Math.floor(r() * width * 0.25);
      const words = 2 + Math.floor(r() * Math.max(2, ((width - x) / size) * 0.3));
      args.push('-font', font, '-pointsize', String(size));
      args.push('-fill', `rgb(${ink},${ink},${Math.min(255, ink + Math.floor(r() * 80))})`);
      args.push('-annotate', `+${x}+${y + size}`, textLine(r, words));
      if (r() < 0.15 && x < width / 3) {
        args.push('-annotate', `+${Math.floor(width * 0.6)}+${y + size}`, textLine(r, 2));
      }
      y += Math.round(size * (1.3 + r() * 1.2));
      if (r() < 0.1) y += Math.round(size * 2);
    }
    if (r() < 0.4) args.push('-blur', `0x${(0.3 + r() * 0.6).toFixed(2)}`);
    args.push(`png:${file}`);
    run('convert', args);
  });
}

/** One line of text (PNG, tight box with a small margin, about 48 px high): a crop as a detector would cut. */
export function renderLine(seed: number): string {
  return cached(`line-${seed}.png`, (file) => {
    const r = prng(seed * 104729 + 17);
    const bg = 215 + Math.floor(r() * 41);
    const ink = Math.floor(r() * 80);
    const font = path.join(FONT_DIR, pick(r, FONTS));
    const text = textLine(r, 2 + Math.floor(r() * 4));
    const args = ['-background', `rgb(${bg},${bg},${bg})`, '-fill', `rgb(${ink},${ink},${ink})`];
    args.push('-font', font, '-pointsize', String(30 + Math.floor(r() * 8)));
    args.push(`label:${text}`, '-bordercolor', `rgb(${bg},${bg},${bg})`, '-border', '4x4');
    if (r() < 0.3) args.push('-blur', '0x0.5');
    args.push(`png:${file}`);
    run('convert', args);
  });
}

/** Voices and rates used for speech clips (espeak-ng). */
export const VOICES = ['en-us', 'en-gb', 'en+f3', 'en-us+m5', 'en-gb-x-rp'];

/**
 * `text` spoken by espeak-ng (voice, words per minute), resampled by sox to 16 kHz mono 16-bit with `pad`
 * seconds of silence on each side. Returns the WAV path.
 */
export function speak(text: string, voice = 'en-us', rate = 150, pad = 1): string {
  const slug = text.toLowerCase().replace(/[^a-z0-9]+/g, '_');
  return cached(`speech-${slug}-${voice.replace(/[^a-z0-9]+/gi, '_')}-${rate}-${pad}.wav`, (file) => {
    const wav = run('espeak-ng', ['-v', voice, '-s', String(rate), '--stdout', text]);
    run(
      'sox',
      ['-t', 'wav', '-', '-r', '16000', '-c', '1', '-b', '16', '-t', 'wav', file, 'pad', `${pad}`, `${pad}`],
      wav,
    );
  });
}

/** Sentences for VAD and wake-word calibration/evaluation. */
export const SENTENCES = [
  'alexa',
  'hey jarvis',
  'what is the weather like today',
  'set a timer for five minutes',
  'good morning everyone',
  'the quick brown fox jumps over the lazy dog',
  'please turn off the lights in the kitchen',
  'how far is it to the nearest station',
  'alexa play some music',
  'hey jarvis open the door',
  'one two three four five six seven',
  'remind me to call my mother tomorrow',
];
