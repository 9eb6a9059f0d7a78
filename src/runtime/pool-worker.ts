/**
 * The body of one worker-pool thread (Node only): opens its own ORT session for the model it was given once in
 * `workerData`, then answers run requests one at a time. Output buffers are transferred back, not copied.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { HostTensor } from '../tensor.js';
import { type FromWorker, serializeError, type ToWorker, type WorkerInit } from './pool-protocol.js';
import { Session } from './session.js';

const port = parentPort;
if (!port) throw new Error('pool-worker.js must run in a worker thread (see WorkerPool in pool.ts)');

const post = (m: FromWorker, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);

function transferables(outputs: Record<string, HostTensor>): ArrayBuffer[] {
  const seen = new Set<ArrayBuffer>();
  for (const t of Object.values(outputs)) {
    if (Array.isArray(t.data)) continue;
    const b = t.data.buffer;
    if (b instanceof ArrayBuffer) seen.add(b);
  }
  return [...seen];
}

async function main(): Promise<void> {
  const init = workerData as WorkerInit;
  let session: Session;
  try {
    session = await Session.create(init.model, init.options);
  } catch (e) {
    post({ type: 'init-failed', error: serializeError(e) });
    port!.close();
    return;
  }
  // one message at a time: ORT runs are synchronous in this thread anyway
  let queue: Promise<void> = Promise.resolve();
  port!.on('message', (m: ToWorker) => {
    queue = queue.then(async () => {
      if (m.type === 'run') {
        try {
          const outputs = await session.run(m.feeds, m.outputNames);
          post({ type: 'result', id: m.id, outputs }, transferables(outputs));
        } catch (e) {
          post({ type: 'failed', id: m.id, error: serializeError(e) });
        }
      } else if (m.type === 'close') {
        await session.release();
        post({ type: 'closed' });
        port!.close();
      }
    });
  });
  post({
    type: 'ready',
    inputs: [...session.inputs],
    outputs: [...session.outputs],
    defaultOutputNames: [...session.defaultOutputNames],
    name: session.name,
  });
}

void main();
