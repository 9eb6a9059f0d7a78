/**
 * Shared fixtures of the eval tests: the bundled Fashion-MNIST model and data, its quantized form (QuantSim with
 * encodings and QDQ model), and a weights-with-noise copy of the float model.
 */
import { type DataSource, openDataSource, readNpy } from '../../src/data/index.js';
import { loadModel } from '../../src/io/model-file.js';
import type { Model } from '../../src/ir/model.js';
import { DataType } from '../../src/onnx/dtype.js';
import { quantizeModel } from '../../src/quant/quantize.js';
import type { QuantSim } from '../../src/quant/sim/quantsim.js';
import { Session } from '../../src/runtime/session.js';
import { mulberry32 } from '../helpers/ort.js';

export const FASHION = 'examples/fashion-mnist';
export const MODEL = `${FASHION}/model.onnx`;
export const IMAGES = `${FASHION}/test-images.npy`;
export const LABELS = `${FASHION}/test-labels.npy`;
export const CALIB = `${FASHION}/calib`;
/** Top-1 accuracy of the float model on the 1000 bundled test images (examples/fashion-mnist/README.md). */
export const FLOAT_ACCURACY = 0.921;

export function testImages(limit?: number): Promise<DataSource> {
  return openDataSource(IMAGES, { inputName: 'input', split: true, limit });
}

export async function testLabels(): Promise<BigInt64Array> {
  return (await readNpy(LABELS)).data as BigInt64Array;
}

/** Standard normal numbers from a seeded PRNG (Box-Muller). */
export function gaussian(seed: number): () => number {
  const u = mulberry32(seed);
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

/**
 * The float model with every float initializer of rank >= 2 (the Conv and Gemm weights) perturbed by Gaussian
 * noise of `relative` times the tensor's own standard deviation.
 */
export function perturbedModel(relative: number, seed = 1): Model {
  const m = loadModel(MODEL);
  const g = gaussian(seed);
  for (const t of m.graph.initializers.values()) {
    if (t.dtype !== DataType.FLOAT || t.dims.length < 2) continue;
    const x = Float32Array.from(t.data as Float32Array);
    let s = 0;
    for (const v of x) s += v * v;
    const std = Math.sqrt(s / x.length);
    for (let i = 0; i < x.length; i++) x[i] += relative * std * g();
    t.data = x;
  }
  return m;
}

/**
 * The Fashion-MNIST model quantized by the PTQ pipeline (quantizeModel: BN folding, ort-cpu placement with int8
 * per-channel weights and uint8 activations, min/max calibration over the 256 bundled calibration images):
 * the QuantSim with its encodings and the exported QDQ model.
 */
export async function fashionQuantized(): Promise<{ sim: QuantSim; qdq: Model }> {
  const model = loadModel(MODEL);
  const calib = await openDataSource(CALIB, { inputName: 'input' });
  const { sim, model: qdq } = await quantizeModel(model, calib, (m) => Session.create(m), {}, calib.size);
  return { sim, qdq };
}
