/**
 * The ONNX Runtime API the runtime layer needs, as a structural interface: `onnxruntime-node` and
 * `onnxruntime-web` both satisfy it (their `InferenceSession` and `Tensor` come from `onnxruntime-common`).
 *
 * This module imports nothing Node-only. The default backend (onnxruntime-node) and the Node model-file reader are
 * loaded with dynamic imports of non-literal specifiers, so bundlers for browsers neither follow nor include them;
 * browser code passes `onnxruntime-web` as `backend` (or calls `setDefaultBackend` once).
 */
import { QnnxError } from '../errors.js';
import type { Model } from '../ir/model.js';

/** A tensor as onnxruntime-common represents it (CPU data only). */
export interface OrtTensorLike {
  readonly type: string;
  readonly dims: readonly number[];
  readonly data: unknown;
}

export interface OrtTensorConstructor {
  new (type: string, data: unknown, dims?: readonly number[]): OrtTensorLike;
}

export interface OrtValueMetadata {
  readonly name: string;
  readonly isTensor: boolean;
  readonly type?: string;
  readonly shape?: ReadonlyArray<number | string>;
}

/** The part of onnxruntime-common's `InferenceSession` instance used here. */
export interface OrtSessionLike {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** Present in onnxruntime 1.22+; older backends leave it out. */
  readonly inputMetadata?: readonly OrtValueMetadata[];
  readonly outputMetadata?: readonly OrtValueMetadata[];
  run(
    feeds: Record<string, OrtTensorLike>,
    fetches: readonly string[],
  ): Promise<Record<string, OrtTensorLike>>;
  release(): Promise<void>;
}

/** An ONNX Runtime module: `import * as ort from 'onnxruntime-web'` (or `-node`) satisfies this. */
export interface OrtBackend {
  InferenceSession: {
    create(source: string | Uint8Array, options?: Record<string, unknown>): Promise<OrtSessionLike>;
  };
  Tensor: OrtTensorConstructor;
}

let defaultBackend: OrtBackend | undefined;

/** Sets the backend used when `Session.create` is given none (e.g. onnxruntime-web in a browser). */
export function setDefaultBackend(backend: OrtBackend | undefined): void {
  defaultBackend = backend;
}

// Non-literal specifiers: resolved by Node at run time, left alone by bundlers.
const NODE_BACKEND_MODULE: string = 'onnxruntime-node';
const NODE_MODEL_FILE_MODULE: string = '../io/model-file.js';

/** The default backend: the one set with `setDefaultBackend`, else onnxruntime-node (imported on first use). */
export async function loadDefaultBackend(): Promise<OrtBackend> {
  if (defaultBackend) return defaultBackend;
  let mod: Record<string, unknown>;
  try {
    mod = (await import(NODE_BACKEND_MODULE)) as Record<string, unknown>;
  } catch (e) {
    throw new QnnxError(
      'E_RUNTIME',
      `cannot load onnxruntime-node (${e instanceof Error ? e.message : String(e)}); ` +
        'outside Node, pass an ONNX Runtime module as the `backend` option',
      {},
      { cause: e },
    );
  }
  const ort = (mod.InferenceSession ? mod : mod.default) as OrtBackend;
  defaultBackend = ort;
  return ort;
}

/** Reads a model file into the IR with the Node file layer (external data included). Node only. */
export async function loadModelFile(file: string): Promise<Model> {
  let io: { loadModel(file: string): Model };
  try {
    io = (await import(NODE_MODEL_FILE_MODULE)) as typeof io;
  } catch (e) {
    throw new QnnxError(
      'E_RUNTIME',
      `${file}: reading a model file into the graph IR needs Node's file system; pass a Model or its bytes instead`,
      { file },
      { cause: e },
    );
  }
  return io.loadModel(file);
}
