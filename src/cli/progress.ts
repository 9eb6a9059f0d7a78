/**
 * Progress for long work: a bar with rate and ETA on a TTY, JSON lines on stderr with --json, nothing otherwise
 * (logs stay clean when stderr is a file).
 */
import cliProgress from 'cli-progress';

export interface Progress {
  update(done: number, total?: number): void;
  stop(): void;
}

export function createProgress(stage: string, json: boolean, unit = 'samples'): Progress {
  if (json) {
    const t0 = performance.now();
    let last = 0;
    return {
      update(done, total) {
        const now = performance.now();
        if (now - last < 250 && done !== total) return;
        last = now;
        const rate = done / ((now - t0) / 1000);
        const eta = total !== undefined && rate > 0 ? (total - done) / rate : null;
        process.stderr.write(
          `${JSON.stringify({ event: 'progress', stage, done, total: total ?? null, rate: Number(rate.toFixed(2)), eta: eta === null ? null : Number(eta.toFixed(1)) })}\n`,
        );
      },
      stop() {},
    };
  }
  if (!process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${stage.padEnd(10)} [{bar}] {value}/{total} ${unit} | {rate}/s | ETA {eta_formatted}`,
      hideCursor: true,
      clearOnComplete: false,
    },
    cliProgress.Presets.shades_classic,
  );
  const t0 = performance.now();
  let started = false;
  return {
    update(done, total) {
      if (!started) {
        bar.start(total ?? done, 0, { rate: '0.0' });
        started = true;
      }
      if (total !== undefined) bar.setTotal(total);
      bar.update(done, { rate: (done / ((performance.now() - t0) / 1000)).toFixed(1) });
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
