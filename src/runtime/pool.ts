/**
 * WorkerPool (Node only): ORT sessions in worker threads, so runs do not block the main event loop
 * (onnxruntime-node's `run` is synchronous on the calling thread; see session.ts).
 *
 * Each worker opens its own session for the same model; the model bytes go to each worker once, at start.
 * Per run, feeds are structured-cloned to the worker (one copy; or transferred with `transferInputs`, which
 * detaches the caller's buffers) and outputs are transferred back without a copy.
 *
 * Size defaults to 1. More workers only help with spare cores: each has its own session (its own copy of the
 * weights and arena), and the machine this was built on gives about one core of real throughput, where two
 * workers are no faster than one (measured: 16 concurrent PP-OCR cls runs took 22 ms with one worker, 26 ms with
 * two; a pool round trip costs about 0.07 ms against 0.02 ms for an in-process run). The point of the pool here is a responsive event loop (progress output,
 * I/O, prefetching the next samples) while ORT computes.
 *
 * Idle workers are unref'd, so an idle pool does not keep the process alive. But do not end the process
 * (`process.exit`) while runs are in flight: onnxruntime-node 1.30 aborts the process when a worker thread is torn
 * down in the middle of a native run. Await `close()` (or `terminate()`) first.
 *
 * The worker script is `pool-worker.js` next to this file (the compiled dist/ layout).
 */
import { Worker } from 'node:worker_threads';
import { QnnxError } from '../errors.js';
import { Model } from '../ir/model.js';
import type { HostTensor } from '../tensor.js';
import { deserializeError, type FromWorker, type ToWorker, type WorkerInit } from './pool-protocol.js';
import {
  type Feeds,
  feedEntries,
  type ModelSource,
  modelBytes,
  type Runner,
  type SerializableSessionOptions,
  type ValueMeta,
} from './session.js';
import { addTaps } from './taps.js';

const WORKER_URL = new URL('./pool-worker.js', import.meta.url);

export interface PoolOptions extends SerializableSessionOptions {
  /** Number of worker threads, each with its own session (default 1). */
  size?: number;
  /**
   * Transfer feed buffers to the worker instead of copying them. The caller's typed arrays are then detached
   * (length 0) after `run`. Only buffers the feed views cover entirely are transferred; others are copied.
   */
  transferInputs?: boolean;
}

interface Job {
  id: number;
  message: ToWorker & { type: 'run' };
  transfer: ArrayBuffer[];
  resolve: (out: Record<string, HostTensor>) => void;
  reject: (e: unknown) => void;
}

interface Slot {
  worker: Worker;
  ready: boolean;
  job?: Job;
  exited: Promise<void>;
  closing: boolean;
}

interface ReadyInfo {
  inputs: ValueMeta[];
  outputs: ValueMeta[];
  defaultOutputNames: string[];
  name: string;
}

export class WorkerPool implements Runner {
  readonly size: number;
  readonly name: string;
  readonly inputs: readonly ValueMeta[];
  readonly outputs: readonly ValueMeta[];
  readonly defaultOutputNames: readonly string[];
  private readonly init: WorkerInit;
  private readonly transferInputs: boolean;
  private slots: Slot[] = [];
  private queue: Job[] = [];
  private nextId = 1;
  private state: 'open' | 'closing' | 'closed' = 'open';
  private drained?: () => void;

  private constructor(init: WorkerInit, size: number, transferInputs: boolean, info: ReadyInfo) {
    this.init = init;
    this.size = size;
    this.transferInputs = transferInputs;
    this.name = info.name;
    this.inputs = info.inputs;
    this.outputs = info.outputs;
    this.defaultOutputNames = info.defaultOutputNames;
  }

  /** Starts `size` workers and waits until every one has its session. */
  static async create(source: ModelSource, options: PoolOptions = {}): Promise<WorkerPool> {
    const { size = 1, transferInputs = false, ...sessionOptions } = options;
    if (!Number.isInteger(size) || size < 1) {
      throw new QnnxError('E_USAGE', `worker pool size must be a positive integer, got ${size}`);
    }
    let model: Uint8Array | string;
    const opts: SerializableSessionOptions = { ...sessionOptions };
    if (source instanceof Model) {
      opts.name ??= source.graph.name ? `model '${source.graph.name}'` : 'model';
      const tapped = opts.taps?.length
        ? addTaps(source, opts.taps, { unknownType: opts.tapUnknownType })
        : source;
      if (opts.taps?.length) opts.taps = [];
      model = modelBytes(tapped);
    } else {
      model = source;
    }
    const init: WorkerInit = { model, options: opts };
    const starts = Array.from({ length: size }, () => startWorker(init));
    const results = await Promise.allSettled(starts.map((s) => s.ready));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      await Promise.all(starts.map((s) => endWorker(s.slot)));
      throw (failed as PromiseRejectedResult).reason;
    }
    const pool = new WorkerPool(
      init,
      size,
      transferInputs,
      (results[0] as PromiseFulfilledResult<ReadyInfo>).value,
    );
    for (const s of starts) pool.adopt(s.slot);
    return pool;
  }

  /** Jobs waiting or running. */
  get pending(): number {
    return this.queue.length + this.slots.filter((s) => s.job).length;
  }

  private adopt(slot: Slot): void {
    this.slots.push(slot);
    if (slot.ready) slot.worker.unref(); // an idle pool does not keep the process alive
    slot.worker.on('message', (m: FromWorker) => this.onMessage(slot, m));
    slot.worker.on('error', (e) => this.onWorkerGone(slot, e));
    slot.worker.on('exit', (code) => this.onWorkerGone(slot, code));
  }

  private onMessage(slot: Slot, m: FromWorker): void {
    if (m.type !== 'result' && m.type !== 'failed') return;
    const job = slot.job;
    if (!job || job.id !== m.id) return;
    slot.job = undefined;
    slot.worker.unref();
    if (m.type === 'result') job.resolve(m.outputs);
    else job.reject(deserializeError(m.error));
    this.dispatch();
  }

  private onWorkerGone(slot: Slot, why: Error | number): void {
    if (!this.slots.includes(slot)) return;
    this.slots = this.slots.filter((s) => s !== slot);
    if (slot.job) {
      const reason = typeof why === 'number' ? `exited with code ${why}` : `failed: ${why.message}`;
      slot.job.reject(
        new QnnxError('E_RUNTIME', `${this.name}: a pool worker ${reason} during a run`, {}, { cause: why }),
      );
      slot.job = undefined;
    }
    if (slot.closing || this.state !== 'open' || !slot.ready) {
      this.dispatch(); // (a replacement that failed to start is not replaced again)
      return;
    }
    // replace the lost worker, then carry on with the queue
    const s = startWorker(this.init);
    this.adopt(s.slot);
    s.ready.then(
      () => {
        if (!s.slot.job) s.slot.worker.unref();
        this.dispatch();
      },
      (e) => {
        this.slots = this.slots.filter((x) => x !== s.slot);
        if (this.slots.length === 0) for (const job of this.queue.splice(0)) job.reject(e);
      },
    );
  }

  private dispatch(): void {
    if (this.slots.length === 0) {
      const err = new QnnxError('E_RUNTIME', `${this.name}: the worker pool has no live workers left`);
      for (const job of this.queue.splice(0)) job.reject(err);
    }
    for (const slot of this.slots) {
      if (this.queue.length === 0) break;
      if (!slot.ready || slot.job || slot.closing) continue;
      const job = this.queue.shift()!;
      slot.job = job;
      slot.worker.ref();
      try {
        slot.worker.postMessage(job.message, job.transfer);
      } catch (e) {
        slot.job = undefined;
        slot.worker.unref();
        job.reject(
          new QnnxError(
            'E_USAGE',
            `${this.name}: the feeds cannot be sent to a worker: ${(e as Error).message}`,
          ),
        );
      }
    }
    if (this.queue.length === 0 && this.slots.every((s) => !s.job)) this.drained?.();
  }

  /**
   * Runs the model in a worker. Resolves with outputs owned by the caller; errors are QnnxErrors as from
   * Session.run. The main event loop stays free while the worker computes.
   */
  run(feeds: Feeds, outputNames?: readonly string[]): Promise<Record<string, HostTensor>> {
    if (this.state !== 'open') {
      return Promise.reject(new QnnxError('E_RUNTIME', `${this.name}: the worker pool is closed`));
    }
    const plain: Record<string, HostTensor> = {};
    const transfer = new Set<ArrayBuffer>();
    for (const [name, t] of feedEntries(feeds)) {
      plain[name] = t;
      if (this.transferInputs && !Array.isArray(t.data)) {
        const b = t.data.buffer;
        if (b instanceof ArrayBuffer && t.data.byteOffset === 0 && t.data.byteLength === b.byteLength)
          transfer.add(b);
      }
    }
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      const message: ToWorker & { type: 'run' } = { type: 'run', id, feeds: plain, outputNames };
      this.queue.push({ id, message, transfer: [...transfer], resolve, reject });
      this.dispatch();
    });
  }

  /** Finishes queued and running jobs, releases every worker's session and ends the workers. */
  async close(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'closing';
    if (this.pending > 0) {
      await new Promise<void>((resolve) => {
        this.drained = resolve;
        this.dispatch();
      });
    }
    for (const slot of this.slots) slot.worker.ref();
    await Promise.all(this.slots.map(endWorker));
    this.slots = [];
    this.state = 'closed';
  }

  /**
   * Rejects every queued and running job now and ends the workers. A worker in the middle of a native ORT run
   * finishes that run first and then exits: it is never killed mid-run, because terminating a worker thread
   * while onnxruntime-node computes in it aborts the whole process ("terminate called after throwing an
   * instance of 'Napi::Error'", seen with onnxruntime-node 1.30). The returned promise waits for the exits.
   */
  async terminate(): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'closed';
    const err = new QnnxError('E_RUNTIME', `${this.name}: the worker pool was terminated`);
    for (const job of this.queue.splice(0)) job.reject(err);
    const slots = this.slots;
    this.slots = [];
    for (const s of slots) {
      s.job?.reject(err);
      s.job = undefined;
    }
    this.drained?.();
    await Promise.all(slots.map(endWorker));
  }
}

/** Asks a worker to release its session and exit (after any run in progress), and waits for the exit. */
function endWorker(slot: Slot): Promise<void> {
  slot.closing = true;
  try {
    slot.worker.postMessage({ type: 'close' } satisfies ToWorker);
  } catch {
    // already gone
  }
  return slot.exited;
}

/** Starts one worker; `ready` resolves with its session's metadata or rejects with its init error. */
function startWorker(init: WorkerInit): { slot: Slot; ready: Promise<ReadyInfo> } {
  const worker = new Worker(WORKER_URL, { workerData: init });
  const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  const slot: Slot = { worker, ready: false, exited, closing: false };
  const ready = new Promise<ReadyInfo>((resolve, reject) => {
    const onMessage = (m: FromWorker) => {
      if (m.type === 'ready') {
        slot.ready = true;
        cleanup();
        resolve(m);
      } else if (m.type === 'init-failed') {
        cleanup();
        reject(deserializeError(m.error));
      }
    };
    const onError = (e: Error) => {
      cleanup();
      reject(new QnnxError('E_RUNTIME', `a pool worker failed to start: ${e.message}`, {}, { cause: e }));
    };
    const onExit = (code: number) => {
      cleanup();
      reject(new QnnxError('E_RUNTIME', `a pool worker exited with code ${code} while starting`));
    };
    const cleanup = () => {
      worker.off('message', onMessage);
      worker.off('error', onError);
      worker.off('exit', onExit);
    };
    worker.on('message', onMessage);
    worker.on('error', onError);
    worker.on('exit', onExit);
  });
  return { slot, ready };
}
