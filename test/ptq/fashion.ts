/** The bundled Fashion-MNIST CNN's test set (examples/fashion-mnist), read once, and top-1 accuracy on it. */
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readNpy } from '../../src/data/index.js';
import type { Model } from '../../src/ir/model.js';
import { Session } from '../../src/runtime/session.js';

const EX = fileURLToPath(new URL('../../../examples/fashion-mnist/', import.meta.url));

let testSet: Promise<{ x: Awaited<ReturnType<typeof readNpy>>; y: BigInt64Array }> | undefined;
function testData() {
  testSet ??= (async () => ({
    x: await readNpy(path.join(EX, 'test-images.npy')),
    y: (await readNpy(path.join(EX, 'test-labels.npy'))).data as BigInt64Array,
  }))();
  return testSet;
}

/** Top-1 accuracy (percent) of a Fashion-MNIST model on the 1,000 bundled test images. */
export async function accuracyPct(model: Model): Promise<number> {
  const { x, y } = await testData();
  const s = await Session.create(model, { graphOptimizationLevel: 'all' });
  const l = (await s.run({ input: x }, ['logits'])).logits.data as Float32Array;
  await s.release();
  let correct = 0;
  for (let i = 0; i < y.length; i++) {
    let best = 0;
    for (let k = 1; k < 10; k++) if (l[i * 10 + k] > l[i * 10 + best]) best = k;
    if (BigInt(best) === y[i]) correct++;
  }
  return (100 * correct) / y.length;
}
