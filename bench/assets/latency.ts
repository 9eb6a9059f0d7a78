/**
 * Interleaved latency of two runners on the same feeds: warm-up, then rounds in which both run once, the order
 * alternating per round (so neither always gets the warmer cache); medians and the ratio b / a.
 */
import type { Feeds } from '../../src/runtime/session.js';

interface Runnable {
  run(feeds: Feeds): Promise<unknown>;
}

export interface AlternatingLatency {
  /** Median ms of `a` and of `b`. */
  a: number;
  b: number;
  /** median(b) / median(a). */
  ratio: number;
  /** min(b) / min(a). */
  minRatio: number;
}

export async function alternatingLatency(
  a: Runnable,
  b: Runnable,
  feeds: Feeds,
  rounds: number,
): Promise<AlternatingLatency> {
  for (let i = 0; i < 2; i++) {
    await a.run(feeds);
    await b.run(feeds);
  }
  const ta: number[] = [];
  const tb: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const order: [Runnable, number[]][] =
      i % 2
        ? [
            [a, ta],
            [b, tb],
          ]
        : [
            [b, tb],
            [a, ta],
          ];
    for (const [s, arr] of order) {
      const t = performance.now();
      await s.run(feeds);
      arr.push(performance.now() - t);
    }
  }
  const med = (x: number[]) => [...x].sort((p, q) => p - q)[x.length >> 1]!;
  return { a: med(ta), b: med(tb), ratio: med(tb) / med(ta), minRatio: Math.min(...tb) / Math.min(...ta) };
}
