/** Data sources for calibration, evaluation and training: NumPy, IDX, images, WAV, and file-set iteration. */
export { readDataFile } from './files.js';
export { compareCodeUnits, glob, hasGlobChars } from './glob.js';
export { encodeIdx, isGzip, parseIdx, readIdx } from './idx.js';
export { type ImageSpec, imageTargetSize, loadImage, type ResizeKernel, validateImageSpec } from './image.js';
export { encodeNpy, NPY_DATA_TYPES, type NpyHeader, parseNpy, parseNpyHeader, readNpy } from './npy.js';
export { type EncodeNpzOptions, encodeNpz, parseNpz, readNpz } from './npz.js';
export {
  type DataSource,
  type DataSourceOptions,
  openDataSource,
  resolveDataFiles,
  type Sample,
  type SampleInfo,
  type SampleKind,
  sampleKindOf,
  type WavSourceOptions,
} from './source.js';
export {
  type EncodeWavOptions,
  encodeWav,
  parseWav,
  readWav,
  type WavAudio,
  type WavOptions,
  type WavScale,
  type WavToTensorOptions,
  wavToTensor,
} from './wav.js';
