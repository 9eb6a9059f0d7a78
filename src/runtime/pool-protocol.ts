/**
 * Messages between the worker pool (pool.ts) and its workers (pool-worker.ts), and QnnxError (de)serialization
 * across the thread boundary. No Node imports: the shapes are plain structured-clone data.
 */
import { isQnnxError, QnnxError, type QnnxErrorCode, type QnnxErrorContext } from '../errors.js';
import type { HostTensor } from '../tensor.js';
import type { SerializableSessionOptions, ValueMeta } from './session.js';

/** `workerData` of each pool worker: the model (bytes or a path) and the session options. */
export interface WorkerInit {
  model: Uint8Array | string;
  options: SerializableSessionOptions;
}

export interface SerializedError {
  code: QnnxErrorCode;
  message: string;
  context: QnnxErrorContext;
  stack?: string;
}

export type ToWorker =
  | { type: 'run'; id: number; feeds: Record<string, HostTensor>; outputNames?: readonly string[] }
  | { type: 'close' };

export type FromWorker =
  | { type: 'ready'; inputs: ValueMeta[]; outputs: ValueMeta[]; defaultOutputNames: string[]; name: string }
  | { type: 'init-failed'; error: SerializedError }
  | { type: 'result'; id: number; outputs: Record<string, HostTensor> }
  | { type: 'failed'; id: number; error: SerializedError }
  | { type: 'closed' };

function cloneableContext(ctx: QnnxErrorContext): QnnxErrorContext {
  const out: QnnxErrorContext = {};
  for (const [k, v] of Object.entries(ctx)) {
    if (v === null || ['string', 'number', 'boolean', 'undefined'].includes(typeof v)) out[k] = v;
    else out[k] = String(v);
  }
  return out;
}

export function serializeError(e: unknown): SerializedError {
  if (isQnnxError(e))
    return { code: e.code, message: e.message, context: cloneableContext(e.context), stack: e.stack };
  const message = e instanceof Error ? e.message : String(e);
  return { code: 'E_RUNTIME', message, context: {}, stack: e instanceof Error ? e.stack : undefined };
}

export function deserializeError(s: SerializedError): QnnxError {
  const e = new QnnxError(s.code, s.message, s.context);
  if (s.stack)
    e.stack = `${e.name}: ${s.message}\n    (in pool worker)\n${s.stack.split('\n').slice(1).join('\n')}`;
  return e;
}
