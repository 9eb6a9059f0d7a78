/**
 * Session: one ONNX Runtime inference session over a model, with HostTensor feeds and results, checked inputs,
 * and every failure as a QnnxError (E_RUNTIME) that names the model and the input or node concerned.
 *
 * The backend is any ONNX Runtime module (`{ InferenceSession, Tensor }`): onnxruntime-node by default, loaded on
 * first use with a dynamic import, or onnxruntime-web passed as `backend` in a browser. This file imports nothing
 * Node-only.
 *
 * Facts about onnxruntime-node 1.30 that shape this API (measured, see the research notes B.5):
 * - Inputs are zero-copy: ORT reads the feed typed arrays in place. Do not modify them until `run` resolves.
 * - Outputs are copied once by ORT into fresh buffers; the returned HostTensors own them (no second copy here).
 * - `run` blocks the event loop for the whole native run (the promise only defers it by a `setImmediate`).
 *   Use the worker pool (pool.ts) to keep a Node process responsive.
 * - Every node executes even when only some outputs are fetched; prune the graph to save time.
 * - int4/uint4 outputs crash the process when fetched, so they are never fetched; bfloat16/float8 inputs or outputs
 *   make session creation fail (reported as E_RUNTIME with the reason).
 */
import { isQnnxError, QnnxError, type QnnxErrorContext } from '../errors.js';
import type { ValueInfo } from '../ir/graph.js';
import { Model, modelFromProto, modelToProto } from '../ir/model.js';
import { decodeModelProto, encodeModelProto } from '../onnx/codec.js';
import { DataType, dataTypeName, isKnownDataType } from '../onnx/dtype.js';
import { has, toNumber } from '../onnx/proto.js';
import type { HostTensor } from '../tensor.js';
import {
  loadDefaultBackend,
  loadModelFile,
  type OrtBackend,
  type OrtSessionLike,
  type OrtTensorLike,
  type OrtValueMetadata,
} from './backend.js';
import { addTaps, type TapOptions } from './taps.js';
import { dataTypeOfOrt, fromOrtTensor, isFetchableOutputType, toOrtTensor } from './tensor-convert.js';
import { elemTypeOf } from './value-types.js';

/** A model as a Model (IR), its encoded bytes, or a file path (a URL with onnxruntime-web). */
export type ModelSource = Model | Uint8Array | string;

/** Inputs by name, as a plain object or a Map (the data layer's samples are Maps). */
export type Feeds = Readonly<Record<string, HostTensor>> | ReadonlyMap<string, HostTensor>;

export type GraphOptimizationLevel = 'disabled' | 'basic' | 'extended' | 'all';

/** Options that can cross a worker boundary (everything but the backend). */
export interface SerializableSessionOptions {
  /** Threads inside one op (default 1: this is a shared machine; ORT's own default is all cores). */
  intraOpNumThreads?: number;
  /** Threads across ops in parallel execution mode (default 1). */
  interOpNumThreads?: number;
  /** Default 'all'; QDQ models need 'extended' or 'all' to run integer kernels. */
  graphOptimizationLevel?: GraphOptimizationLevel;
  /** Default ['cpu']. Names or ORT's provider option objects. */
  executionProviders?: (string | Record<string, unknown>)[];
  /** ORT's memory arena keeps its peak size; turn it off for calibration over inputs of varying shapes. */
  enableCpuMemArena?: boolean;
  enableMemPattern?: boolean;
  executionMode?: 'sequential' | 'parallel';
  /** Where ORT writes the optimized graph (handy to see which fusions happened). */
  optimizedModelFilePath?: string;
  enableProfiling?: boolean;
  profileFilePrefix?: string;
  /**
   * ORT's log level for this session: 0 verbose .. 4 fatal. Default 4, because every ORT error reaches the
   * caller as a QnnxError anyway; use 2 to see ORT's warnings.
   */
  logSeverityLevel?: 0 | 1 | 2 | 3 | 4;
  /** ORT config entries; `session.intra_op.allow_spinning` and `session.inter_op.allow_spinning` default to '0'. */
  extra?: Record<string, string>;
  /** Intermediate values to expose as extra outputs (see taps.ts). A file path source then needs Node. */
  taps?: readonly string[];
  /** How taps of values with unknown element type are handled (see TapOptions). */
  tapUnknownType?: TapOptions['unknownType'];
  /** Name used in messages (default: the file path, else the graph name). */
  name?: string;
}

export interface SessionOptions extends SerializableSessionOptions {
  /** An ONNX Runtime module; default onnxruntime-node (or whatever `setDefaultBackend` set). */
  backend?: OrtBackend;
}

/** An input or output of a session. */
export interface ValueMeta {
  name: string;
  /** False for sequences, maps and optionals (which this layer cannot feed or fetch). */
  isTensor: boolean;
  /** Element type; undefined when unknown. */
  dtype?: DataType;
  /**
   * Dims: numbers, or strings for symbolic dims ('' when unnamed). Undefined when the rank is unknown (ORT's own
   * metadata cannot tell an unknown shape from a scalar, so a model known only to ORT reports scalars as unknown).
   */
  shape?: (number | string)[];
}

/** Anything that runs feeds to outputs: a Session or a WorkerPool. */
export interface Runner {
  readonly name: string;
  readonly inputs: readonly ValueMeta[];
  readonly outputs: readonly ValueMeta[];
  run(feeds: Feeds, outputNames?: readonly string[]): Promise<Record<string, HostTensor>>;
}

/** Encodes a Model to bytes with all tensor data inline (what ORT loads from memory). */
export function modelBytes(model: Model): Uint8Array {
  return encodeModelProto(modelToProto(model, {}));
}

/** The entries of Feeds, whichever form they come in. */
export function feedEntries(feeds: Feeds): [string, HostTensor][] {
  return feeds instanceof Map ? [...(feeds as ReadonlyMap<string, HostTensor>)] : Object.entries(feeds);
}

function metaFromValueInfo(v: ValueInfo): ValueMeta {
  if (!v.type) return { name: v.name, isTensor: true };
  const tt = v.type.tensor_type;
  if (!tt) return { name: v.name, isTensor: false };
  const meta: ValueMeta = { name: v.name, isTensor: true };
  const t = elemTypeOf(v.type);
  if (t !== undefined && isKnownDataType(t)) meta.dtype = t;
  if (tt.shape) {
    meta.shape = (tt.shape.dim ?? []).map((d) =>
      has(d, 'dim_value') ? toNumber(d.dim_value) : has(d, 'dim_param') ? (d.dim_param as string) : '',
    );
  }
  return meta;
}

function metaFromOrt(m: OrtValueMetadata, ir: ValueMeta | undefined): ValueMeta {
  if (!m.isTensor) return { name: m.name, isTensor: false };
  const meta: ValueMeta = { name: m.name, isTensor: true };
  const dtype = (m.type !== undefined ? dataTypeOfOrt(m.type) : undefined) ?? ir?.dtype;
  if (dtype !== undefined) meta.dtype = dtype;
  const shape = ir?.shape ?? (m.shape?.length ? [...m.shape] : undefined);
  if (shape) meta.shape = shape;
  return meta;
}

function errorText(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).trim();
}

/** Adds an explanation to ORT's bare "Unsupported data type: 16" (a bf16/fp8 graph input or output). */
function explainOrtMessage(msg: string): string {
  const m = /Unsupported data type: (\d+)/.exec(msg);
  if (!m) return msg;
  const t = Number(m[1]);
  return (
    `${msg} (${dataTypeName(t)}: ONNX Runtime's JS API cannot pass ${dataTypeName(t)} graph inputs or outputs; ` +
    'cast them to float32/float16 at the model boundary)'
  );
}

export class Session implements Runner {
  /** The name used in messages. */
  readonly name: string;
  readonly inputs: readonly ValueMeta[];
  readonly outputs: readonly ValueMeta[];
  /** Outputs fetched when `run` is given no names: every output ORT can return to JS. */
  readonly defaultOutputNames: readonly string[];
  /** Outputs that are never fetched (int4/uint4: onnxruntime-node crashes on them). */
  readonly unfetchableOutputs: readonly string[];
  /** The tapped intermediate values, also listed in `outputs`. */
  readonly taps: readonly string[];
  private readonly ort: OrtSessionLike;
  private readonly backend: OrtBackend;
  private readonly context: QnnxErrorContext;
  private readonly inputByName: Map<string, ValueMeta>;
  private readonly outputByName: Map<string, ValueMeta>;
  private readonly inflight = new Set<Promise<unknown>>();
  private isReleased = false;

  private constructor(
    ort: OrtSessionLike,
    backend: OrtBackend,
    name: string,
    context: QnnxErrorContext,
    ir: Model | undefined,
    taps: readonly string[],
  ) {
    this.ort = ort;
    this.backend = backend;
    this.name = name;
    this.context = context;
    this.taps = taps;
    const irMeta = new Map<string, ValueMeta>();
    if (ir)
      for (const v of [...ir.graph.inputs, ...ir.graph.outputs]) irMeta.set(v.name, metaFromValueInfo(v));
    const build = (names: readonly string[], ortMeta: readonly OrtValueMetadata[] | undefined): ValueMeta[] =>
      names.map((n, i) => {
        const m = ortMeta?.[i];
        if (m && m.name === n) return metaFromOrt(m, irMeta.get(n));
        return irMeta.get(n) ?? { name: n, isTensor: true };
      });
    this.inputs = build(ort.inputNames, ort.inputMetadata);
    this.outputs = build(ort.outputNames, ort.outputMetadata);
    this.inputByName = new Map(this.inputs.map((m) => [m.name, m]));
    this.outputByName = new Map(this.outputs.map((m) => [m.name, m]));
    this.unfetchableOutputs = this.outputs.filter((m) => !isFetchableOutputType(m.dtype)).map((m) => m.name);
    this.defaultOutputNames = this.outputs.filter((m) => isFetchableOutputType(m.dtype)).map((m) => m.name);
  }

  /**
   * Creates a session. A Model is encoded in memory; bytes are passed as they are; a path is handed to ORT, which
   * reads the file and its external data itself (with taps, the file is read into the IR through the Node file
   * layer first).
   */
  static async create(source: ModelSource, options: SessionOptions = {}): Promise<Session> {
    const backend = options.backend ?? (await loadDefaultBackend());
    const taps = [...new Set(options.taps ?? [])];
    const file = typeof source === 'string' ? source : undefined;
    let ir: Model | undefined = source instanceof Model ? source : undefined;
    const name =
      options.name ??
      file ??
      (ir?.graph.name
        ? `model '${ir.graph.name}'`
        : source instanceof Uint8Array
          ? 'model (bytes)'
          : 'model');
    const context: QnnxErrorContext = file ? { file } : {};
    let load: string | Uint8Array;
    try {
      if (taps.length > 0) {
        if (!ir) {
          ir =
            typeof source === 'string'
              ? await loadModelFile(source)
              : modelFromProto(decodeModelProto(source as Uint8Array, name), { file: name });
        }
        ir = addTaps(ir, taps, { unknownType: options.tapUnknownType });
      }
      load = ir ? modelBytes(ir) : (source as string | Uint8Array);
    } catch (e) {
      if (isQnnxError(e))
        throw file ? e.withFile(file) : new QnnxError(e.code, `${name}: ${e.message}`, e.context);
      throw e;
    }
    let ort: OrtSessionLike;
    let opts = options;
    // ONNX Runtime 1.30 mis-handles float8 QDQ above level 'basic': it fuses float8 Q/DQ into QLinearConv (session
    // creation fails), or with QDQ fusion disabled removes the Relu before a float8 Q (silently wrong outputs).
    if (
      ir &&
      (options.graphOptimizationLevel ?? 'all') !== 'basic' &&
      options.graphOptimizationLevel !== 'disabled'
    ) {
      if (hasFloat8Qdq(ir)) opts = { ...options, graphOptimizationLevel: 'basic' };
    }
    try {
      try {
        ort = await backend.InferenceSession.create(load, ortSessionOptions(opts));
      } catch (first) {
        if (ir || opts.graphOptimizationLevel === 'basic' || opts.graphOptimizationLevel === 'disabled')
          throw first;
        const probe =
          typeof source === 'string'
            ? await loadModelFile(source)
            : modelFromProto(decodeModelProto(source as Uint8Array, name));
        if (!hasFloat8Qdq(probe)) throw first;
        ort = await backend.InferenceSession.create(
          load,
          ortSessionOptions({ ...opts, graphOptimizationLevel: 'basic' }),
        );
      }
    } catch (e) {
      throw new QnnxError(
        'E_RUNTIME',
        `${name}: ONNX Runtime cannot create a session: ${explainOrtMessage(errorText(e))}`,
        context,
        { cause: e },
      );
    }
    return new Session(ort, backend, name, context, ir, taps);
  }

  get inputNames(): string[] {
    return this.inputs.map((m) => m.name);
  }

  get outputNames(): string[] {
    return this.outputs.map((m) => m.name);
  }

  get released(): boolean {
    return this.isReleased;
  }

  private error(message: string, extra: QnnxErrorContext = {}, cause?: unknown): QnnxError {
    return new QnnxError('E_RUNTIME', `${this.name}: ${message}`, { ...this.context, ...extra }, { cause });
  }

  /** Checks the feeds against the inputs: names, element types, ranks and fixed dims. */
  private checkFeeds(entries: [string, HostTensor][]): void {
    const given = new Set<string>();
    for (const [name, t] of entries) {
      const meta = this.inputByName.get(name);
      if (!meta) {
        throw this.error(
          `'${name}' is not an input of the model (inputs: ${this.inputNames.map((n) => `'${n}'`).join(', ')})`,
          { tensor: name },
        );
      }
      given.add(name);
      if (!meta.isTensor) throw this.error(`input '${name}' is not a tensor input`, { tensor: name });
      if (meta.dtype !== undefined && t.dtype !== meta.dtype) {
        throw this.error(
          `input '${name}' is ${dataTypeName(t.dtype)}, the model expects ${dataTypeName(meta.dtype)}`,
          { tensor: name },
        );
      }
      const shape = meta.shape;
      if (shape) {
        const want = `[${shape.map((d) => (typeof d === 'string' ? d || '?' : d)).join(', ')}]`;
        if (t.dims.length !== shape.length) {
          throw this.error(
            `input '${name}' has rank ${t.dims.length} (dims [${t.dims.join(', ')}]), the model expects rank ` +
              `${shape.length} ${want}`,
            { tensor: name },
          );
        }
        shape.forEach((d, i) => {
          if (typeof d === 'number' && d !== t.dims[i]) {
            throw this.error(
              `input '${name}' has dims [${t.dims.join(', ')}], the model expects ${want} (axis ${i} must be ${d})`,
              { tensor: name },
            );
          }
        });
      }
    }
    const missing = this.inputs.filter((m) => !given.has(m.name)).map((m) => m.name);
    if (missing.length > 0) {
      const list = missing.map((n) => `'${n}'`).join(', ');
      throw this.error(`missing input${missing.length > 1 ? 's' : ''} ${list}`, { tensor: missing[0] });
    }
  }

  /**
   * Runs the model. `outputNames` defaults to `defaultOutputNames`. Feed data is read in place by ORT: do not
   * change it before the promise settles. The returned tensors own their (ORT-copied) buffers.
   */
  async run(feeds: Feeds, outputNames?: readonly string[]): Promise<Record<string, HostTensor>> {
    if (this.isReleased) throw this.error('the session has been released');
    const entries = feedEntries(feeds);
    this.checkFeeds(entries);
    const fetches = outputNames ?? this.defaultOutputNames;
    if (fetches.length === 0) throw this.error('no outputs to fetch');
    for (const name of fetches) {
      const meta = this.outputByName.get(name);
      if (!meta) {
        throw this.error(
          `'${name}' is not an output of the model (outputs: ${this.outputNames.map((n) => `'${n}'`).join(', ')})`,
          { tensor: name },
        );
      }
      if (!isFetchableOutputType(meta.dtype) || !meta.isTensor) {
        throw new QnnxError(
          'E_DTYPE',
          `${this.name}: output '${name}' is ${meta.isTensor ? dataTypeName(meta.dtype!) : 'not a tensor'}, which ` +
            'ONNX Runtime for Node cannot return; dequantize or cast it in the graph',
          { ...this.context, tensor: name },
        );
      }
    }
    const ortFeeds: Record<string, OrtTensorLike> = {};
    for (const [name, t] of entries) {
      try {
        ortFeeds[name] = toOrtTensor(this.backend.Tensor, t, name);
      } catch (e) {
        if (isQnnxError(e))
          throw new QnnxError(e.code, `${this.name}: ${e.message}`, { ...this.context, ...e.context });
        throw e;
      }
    }
    const pending = this.ort.run(ortFeeds, fetches);
    this.inflight.add(pending);
    let result: Record<string, OrtTensorLike>;
    try {
      result = await pending;
    } catch (e) {
      throw this.runError(e, entries);
    } finally {
      this.inflight.delete(pending);
    }
    const out: Record<string, HostTensor> = {};
    for (const name of fetches) out[name] = fromOrtTensor(result[name], name);
    return out;
  }

  private runError(e: unknown, entries: [string, HostTensor][]): QnnxError {
    const msg = explainOrtMessage(errorText(e));
    const extra: QnnxErrorContext = {};
    const node = /Name:'([^']*)'/.exec(msg)?.[1];
    if (node) extra.node = node;
    let input = /for input: (\S+)/.exec(msg)?.[1];
    const unsupported = /Tensor\.type is not supported: (\w+)/.exec(msg)?.[1];
    if (!input && unsupported) {
      input = entries.find(([, t]) => dataTypeName(t.dtype) === unsupported)?.[0];
    }
    if (input) extra.tensor = input;
    const where = input ? ` (input '${input}')` : node ? ` (node '${node}')` : '';
    return this.error(`ONNX Runtime run failed${where}: ${msg}`, extra, e);
  }

  /** Releases the ORT session (after runs in flight finish). Idempotent. */
  async release(): Promise<void> {
    if (this.isReleased) return;
    this.isReleased = true;
    await Promise.allSettled([...this.inflight]);
    await this.ort.release();
  }
}

/** The ORT session options for our options (defaults for a shared CPU machine). */
export function ortSessionOptions(o: SerializableSessionOptions): Record<string, unknown> {
  const out: Record<string, unknown> = {
    intraOpNumThreads: o.intraOpNumThreads ?? 1,
    interOpNumThreads: o.interOpNumThreads ?? 1,
    graphOptimizationLevel: o.graphOptimizationLevel ?? 'all',
    executionProviders: o.executionProviders ?? ['cpu'],
    logSeverityLevel: o.logSeverityLevel ?? 4,
    extra: {
      'session.intra_op.allow_spinning': '0',
      'session.inter_op.allow_spinning': '0',
      ...o.extra,
    },
  };
  if (o.enableCpuMemArena !== undefined) out.enableCpuMemArena = o.enableCpuMemArena;
  if (o.enableMemPattern !== undefined) out.enableMemPattern = o.enableMemPattern;
  if (o.executionMode !== undefined) out.executionMode = o.executionMode;
  if (o.optimizedModelFilePath !== undefined) out.optimizedModelFilePath = o.optimizedModelFilePath;
  if (o.enableProfiling !== undefined) out.enableProfiling = o.enableProfiling;
  if (o.profileFilePrefix !== undefined) out.profileFilePrefix = o.profileFilePrefix;
  return out;
}

/** Whether a model quantizes to a float8 type anywhere (QuantizeLinear/DequantizeLinear with float8 zero points). */
export function hasFloat8Qdq(model: Model): boolean {
  const fp8 = new Set([
    DataType.FLOAT8E4M3FN,
    DataType.FLOAT8E4M3FNUZ,
    DataType.FLOAT8E5M2,
    DataType.FLOAT8E5M2FNUZ,
  ]);
  for (const g of model.graph.allGraphs()) {
    for (const n of g.nodes) {
      if (n.opType !== 'QuantizeLinear' && n.opType !== 'DequantizeLinear') continue;
      const zp = n.inputs[2] ? g.initializer(n.inputs[2]) : undefined;
      if (zp && fp8.has(zp.dtype)) return true;
      if (n.opType === 'QuantizeLinear') {
        const to = n.attrInt('output_dtype');
        if (to !== undefined && fp8.has(to)) return true;
      }
    }
  }
  return false;
}
