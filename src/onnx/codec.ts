/**
 * Decode and encode ONNX protobuf messages. Decoding never copies tensor bytes: `raw_data` is a view into the
 * input buffer. Every failure becomes a QnnxError naming the file.
 */
import { QnnxError } from '../errors.js';
import type { GraphProto, ModelProto, TensorProto } from './proto.js';
import { has, toNumber } from './proto.js';
import { schema } from './schema.js';

type MessageType = (typeof schema)[keyof typeof schema];

function decodeWith<T>(type: MessageType, bytes: Uint8Array, file: string, what: string): T {
  try {
    return type.decode(bytes) as unknown as T;
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    throw new QnnxError('E_PROTOBUF', `${file}: not a valid ${what} (protobuf decoding failed: ${reason})`, {
      file,
    });
  }
}

/** Decodes a ModelProto and checks it is one: IR version and graph present, opset imports sane. */
export function decodeModelProto(bytes: Uint8Array, file = '<buffer>'): ModelProto {
  if (bytes.length === 0) throw new QnnxError('E_NOT_A_MODEL', `${file}: the file is empty`, { file });
  const m = decodeWith<ModelProto>(schema.ModelProto, bytes, file, 'ONNX model');
  if (!has(m, 'ir_version')) {
    throw new QnnxError('E_NOT_A_MODEL', `${file}: not an ONNX model (ModelProto.ir_version is missing)`, {
      file,
      field: 'ir_version',
    });
  }
  if (!m.graph) {
    throw new QnnxError('E_NOT_A_MODEL', `${file}: not an ONNX model (ModelProto.graph is missing)`, {
      file,
      field: 'graph',
    });
  }
  if (toNumber(m.ir_version) >= 3 && !m.opset_import?.length) {
    throw new QnnxError(
      'E_NOT_A_MODEL',
      `${file}: not an ONNX model (no opset_import, required since IR version 3)`,
      {
        file,
        field: 'opset_import',
      },
    );
  }
  checkStrings(m, file);
  return m;
}

/**
 * Refuses names that were not valid UTF-8: protobufjs decodes them to lone surrogates, which would be written
 * back as U+FFFD, silently renaming values.
 */
function checkStrings(m: ModelProto, file: string): void {
  const bad = (s: string | undefined) => s !== undefined && !s.isWellFormed();
  const visitGraph = (g: GraphProto | undefined, path: string): void => {
    if (!g) return;
    for (const [i, n] of (g.node ?? []).entries()) {
      for (const s of [n.name, n.op_type, n.domain, ...(n.input ?? []), ...(n.output ?? [])]) {
        if (bad(s)) {
          throw new QnnxError(
            'E_PROTOBUF',
            `${file}: ${path}/node[${i}] has a name that is not valid UTF-8`,
            { file },
          );
        }
      }
      for (const a of n.attribute ?? []) {
        visitGraph(a.g, `${path}/node[${i}].${a.name}`);
        for (const sg of a.graphs ?? []) visitGraph(sg, `${path}/node[${i}].${a.name}`);
      }
    }
    for (const v of [
      ...(g.input ?? []),
      ...(g.output ?? []),
      ...(g.value_info ?? []),
      ...(g.initializer ?? []),
    ]) {
      if (bad(v.name))
        throw new QnnxError('E_PROTOBUF', `${file}: ${path} has a value name that is not valid UTF-8`, {
          file,
        });
    }
  };
  visitGraph(m.graph, 'graph');
}

export function encodeModelProto(m: ModelProto): Uint8Array {
  return schema.ModelProto.encode(m as never).finish();
}

export function decodeTensorProto(bytes: Uint8Array, file = '<buffer>'): TensorProto {
  return decodeWith<TensorProto>(schema.TensorProto, bytes, file, 'ONNX TensorProto');
}

export function encodeTensorProto(t: TensorProto): Uint8Array {
  return schema.TensorProto.encode(t as never).finish();
}

/** Canonical JSON-able form of a message, for equality checks in tests and tools (int64 as strings). */
export function canonicalModel(m: ModelProto): unknown {
  return schema.ModelProto.toObject(schema.ModelProto.fromObject(m as never), {
    longs: String,
    bytes: String,
    enums: Number,
    defaults: false,
    arrays: false,
  });
}
