// Accuracy of examples/fashion-mnist/model.onnx under onnxruntime-node on the bundled
// test-images.npy / test-labels.npy. Called by tools/train_fashion_cnn.py; standalone:
//   node tools/verify_fashion_onnx.mjs [examples/fashion-mnist]
// Prints "correct=K total=N accuracy=P%".
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import ort from 'onnxruntime-node';

function readNpy(path) {
  const buf = readFileSync(path);
  if (buf.toString('latin1', 1, 6) !== 'NUMPY') throw new Error(`${path}: not a .npy file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLen;
  const header = buf.toString('latin1', major === 1 ? 10 : 12, start);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/
    .exec(header)[1]
    .split(',')
    .filter((s) => s.trim() !== '')
    .map((s) => Number(s));
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${path}: fortran order unsupported`);
  const bytes = buf.subarray(start);
  const copy = new Uint8Array(bytes).buffer;
  if (descr === '<f4') return { shape, data: new Float32Array(copy) };
  if (descr === '<i8') return { shape, data: new BigInt64Array(copy) };
  throw new Error(`${path}: unsupported dtype ${descr}`);
}

const dir = process.argv[2] ?? 'examples/fashion-mnist';
const images = readNpy(join(dir, 'test-images.npy'));
const labels = readNpy(join(dir, 'test-labels.npy'));
const session = await ort.InferenceSession.create(join(dir, 'model.onnx'), {
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
});
const input = new ort.Tensor('float32', images.data, images.shape);
const { logits } = await session.run({ input });
const [n, classes] = logits.dims;
let correct = 0;
for (let i = 0; i < n; i++) {
  let best = 0;
  for (let c = 1; c < classes; c++) {
    if (logits.data[i * classes + c] > logits.data[i * classes + best]) best = c;
  }
  if (BigInt(best) === labels.data[i]) correct++;
}
console.log(`correct=${correct} total=${n} accuracy=${((correct / n) * 100).toFixed(1)}%`);
