import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DataType } from '../../src/onnx/dtype.js';
import type { OrtTensorLike } from '../../src/runtime/backend.js';
import {
  fromOrtTensor,
  hasOrtType,
  isFetchableOutputType,
  ortTypeOf,
  toOrtTensor,
} from '../../src/runtime/tensor-convert.js';
import { assertQnnxError, plainOrt } from './helpers.js';

const { ort } = plainOrt();

describe('tensor-convert', () => {
  test('numeric inputs are wrapped without a copy', () => {
    const data = new Float32Array([1, 2, 3, 4, 5, 6]);
    const t = toOrtTensor(ort.Tensor, { dtype: DataType.FLOAT, dims: [2, 3], data }, 'x');
    assert.equal(t.type, 'float32');
    assert.deepEqual(t.dims, [2, 3]);
    assert.equal(t.data, data);
    const h = { dtype: DataType.FLOAT16, dims: [2], data: new Uint16Array([0x3c00, 0x4000]) };
    const t16 = toOrtTensor(ort.Tensor, h, 'h');
    assert.equal(t16.type, 'float16');
    assert.equal((t16.data as Uint16Array).buffer, h.data.buffer);
    const i64 = new BigInt64Array([1n, -1n]);
    assert.equal(toOrtTensor(ort.Tensor, { dtype: DataType.INT64, dims: [2], data: i64 }).data, i64);
    const bool = new Uint8Array([1, 0]);
    const tb = toOrtTensor(ort.Tensor, { dtype: DataType.BOOL, dims: [2], data: bool });
    assert.equal(tb.type, 'bool');
    assert.equal(tb.data, bool);
  });

  test('outputs become HostTensors without a copy', () => {
    const data = new Float32Array([1, 2]);
    const h = fromOrtTensor(new ort.Tensor('float32', data, [1, 2]), 'y');
    assert.equal(h.data, data);
    assert.equal(h.dtype, DataType.FLOAT);
    assert.deepEqual(h.dims, [1, 2]);
  });

  test('a float16 output given as another 16-bit view is re-viewed, not copied', () => {
    const bits = new Int16Array([0x3c00, 0x4000]); // stands in for Float16Array on platforms that have it
    const fake: OrtTensorLike = { type: 'float16', dims: [2], data: bits };
    const h = fromOrtTensor(fake, 'y');
    assert.ok(h.data instanceof Uint16Array);
    assert.equal((h.data as Uint16Array).buffer, bits.buffer);
    assert.deepEqual(Array.from(h.data as Uint16Array), [0x3c00, 0x4000]);
  });

  test('strings are UTF-8 encoded and decoded', () => {
    const enc = new TextEncoder();
    const t = toOrtTensor(ort.Tensor, {
      dtype: DataType.STRING,
      dims: [2],
      data: [enc.encode('ä'), enc.encode('')],
    });
    assert.deepEqual(t.data, ['ä', '']);
    const back = fromOrtTensor(t, 's');
    assert.deepEqual(back.data, [enc.encode('ä'), new Uint8Array(0)]);
  });

  test('invalid UTF-8 in a string input is E_DTYPE naming the input and element', async () => {
    await assertQnnxError(
      () =>
        toOrtTensor(ort.Tensor, { dtype: DataType.STRING, dims: [1], data: [new Uint8Array([0xff])] }, 'txt'),
      'E_DTYPE',
      "'txt'",
      'element 0',
    );
  });

  test('types without an ORT JS tensor are E_DTYPE', async () => {
    for (const t of [
      DataType.BFLOAT16,
      DataType.FLOAT8E4M3FN,
      DataType.FLOAT8E5M2,
      DataType.FLOAT4E2M1,
      DataType.INT2,
      DataType.COMPLEX64,
    ]) {
      assert.equal(hasOrtType(t), false);
      await assertQnnxError(() => ortTypeOf(t, 'w'), 'E_DTYPE', "'w'");
    }
    await assertQnnxError(
      () => toOrtTensor(ort.Tensor, { dtype: DataType.BFLOAT16, dims: [1], data: new Uint16Array(1) }, 'x'),
      'E_DTYPE',
      'bfloat16',
      'Cast',
    );
  });

  test('int4/uint4 are valid inputs for the API but never fetchable outputs', () => {
    assert.equal(hasOrtType(DataType.INT4), true);
    assert.equal(isFetchableOutputType(DataType.INT4), false);
    assert.equal(isFetchableOutputType(DataType.UINT4), false);
    assert.equal(isFetchableOutputType(DataType.FLOAT), true);
    assert.equal(isFetchableOutputType(undefined), true);
  });

  test('size and storage mismatches are caught before ORT sees them', async () => {
    await assertQnnxError(
      () => toOrtTensor(ort.Tensor, { dtype: DataType.FLOAT, dims: [3], data: new Float32Array(2) }, 'x'),
      'E_TENSOR_SIZE',
      "'x'",
    );
    await assertQnnxError(
      () => toOrtTensor(ort.Tensor, { dtype: DataType.FLOAT, dims: [2], data: new Float64Array(2) }, 'x'),
      'E_DTYPE',
      'Float32Array',
    );
    await assertQnnxError(
      () => toOrtTensor(ort.Tensor, { dtype: DataType.FLOAT, dims: [-1], data: new Float32Array(0) }, 'x'),
      'E_TENSOR_SIZE',
    );
  });
});
