/**
 * mulberry32: a small, fast, seeded generator of uniform floats in [0, 1). The one PRNG behind data shuffling,
 * test data and benchmarks, so seeds mean the same thing everywhere. (Weight initialisation uses the builder's
 * per-parameter xoshiro streams, src/train/builder/prng.ts.)
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
