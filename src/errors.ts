/**
 * Every failure qnnx reports on purpose is a QnnxError: a stable machine-readable `code`, a message that names
 * the file, tensor or node concerned, and optional structured context. The CLI prints `message` on one line.
 */
export type QnnxErrorCode =
  | 'E_IO' // a file could not be read or written
  | 'E_PROTOBUF' // the bytes are not valid protobuf for the expected message
  | 'E_NOT_A_MODEL' // valid protobuf, but not an ONNX ModelProto
  | 'E_TENSOR_SIZE' // a tensor's declared size does not match (or exceeds) its data
  | 'E_DTYPE' // unknown or unsupported data type
  | 'E_EXTERNAL_DATA' // missing, escaping or truncated external data
  | 'E_GRAPH_CYCLE' // the graph has a cycle
  | 'E_GRAPH' // a structurally invalid graph (dangling input, duplicate output name, ...)
  | 'E_ATTRIBUTE' // a missing or ill-typed node attribute
  | 'E_SHAPE' // shapes that cannot be inferred or do not agree
  | 'E_OPSET' // an opset conversion that cannot be done
  | 'E_RUNTIME' // ONNX Runtime refused the model or a run failed
  | 'E_GRADIENT' // an op on the path to the loss has no gradient rule, or its attributes are unsupported
  | 'E_TRAIN' // training failed (NaN loss, labels out of range, a bad checkpoint)
  | 'E_DATA' // a data file (npy, npz, idx, image, wav) is invalid
  | 'E_USAGE'; // bad command-line usage or API arguments

export interface QnnxErrorContext {
  file?: string;
  node?: string;
  tensor?: string;
  field?: string;
  [key: string]: unknown;
}

export class QnnxError extends Error {
  override readonly name = 'QnnxError';
  readonly code: QnnxErrorCode;
  readonly context: QnnxErrorContext;

  constructor(
    code: QnnxErrorCode,
    message: string,
    context: QnnxErrorContext = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.code = code;
    this.context = context;
  }

  /** A copy with the file name prefixed to the message (used when a lower layer did not know the file). */
  withFile(file: string): QnnxError {
    if (this.context.file) return this;
    if (this.message.startsWith(`${file}: `)) {
      return new QnnxError(this.code, this.message, { ...this.context, file }, { cause: this.cause });
    }
    return new QnnxError(
      this.code,
      `${file}: ${this.message}`,
      { ...this.context, file },
      { cause: this.cause },
    );
  }
}

export function isQnnxError(e: unknown): e is QnnxError {
  return e instanceof QnnxError;
}
