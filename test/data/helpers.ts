/** Shared helpers for the data-source tests: temp dirs, NumPy via Debian's python, error assertions. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { isQnnxError, type QnnxErrorCode } from '../../src/errors.js';
import { DataType } from '../../src/onnx/dtype.js';
import type { HostTensor } from '../../src/tensor.js';

/** A fresh temp directory, removed when the test file finishes. */
export function tempDir(prefix = 'qnnx-data-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const PYTHON = '/usr/bin/python3';
let numpyChecked: string | false | undefined;

/** The skip reason when /usr/bin/python3 with numpy is unavailable, else false. */
export function numpySkipReason(): string | false {
  if (numpyChecked === undefined) {
    const r = spawnSync(PYTHON, ['-c', 'import numpy; print(numpy.__version__)'], { encoding: 'utf8' });
    numpyChecked =
      r.status === 0
        ? false
        : `${PYTHON} with numpy is not available (${(r.stderr || String(r.error)).trim()})`;
  }
  return numpyChecked;
}

/** Run a python script (with numpy) with arguments; returns stdout, throws with stderr on failure. */
export function runPython(script: string, args: string[] = []): string {
  const r = spawnSync(PYTHON, ['-c', script, ...args], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`python failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** Whether a command exists on PATH. */
export function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).status === 0;
}

/** Assert that fn throws (or rejects with) a QnnxError with the code, whose message contains each string. */
export async function assertQnnxError(
  fn: () => unknown,
  code: QnnxErrorCode,
  ...contains: string[]
): Promise<void> {
  let threw = false;
  try {
    await fn();
  } catch (e) {
    threw = true;
    assert.ok(isQnnxError(e), `expected QnnxError, got ${e instanceof Error ? e.stack : String(e)}`);
    assert.equal(e.code, code, `code of: ${e.message}`);
    for (const s of contains)
      assert.ok(e.message.includes(s), `message ${JSON.stringify(e.message)} lacks ${s}`);
  }
  assert.ok(threw, `expected a QnnxError ${code}, nothing was thrown`);
}

/** Hex of the bytes behind a typed array. */
export function hexOf(a: ArrayBufferView): string {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');
}

/** One sample tensor of each supported dtype, with edge values, dims [2, 4]. */
export function sampleTensors(): Map<string, HostTensor> {
  const dims = [2, 4];
  return new Map<string, HostTensor>([
    [
      'f4',
      {
        dtype: DataType.FLOAT,
        dims,
        data: new Float32Array([0, -0, 1.5, -3.25, Infinity, -Infinity, NaN, 3.4e38]),
      },
    ],
    [
      'f8',
      {
        dtype: DataType.DOUBLE,
        dims,
        data: new Float64Array([0, -0, Math.PI, -1e-300, Infinity, -Infinity, NaN, 1.7e308]),
      },
    ],
    [
      'f2',
      {
        dtype: DataType.FLOAT16,
        dims,
        data: new Uint16Array([0x0000, 0x8000, 0x3c00, 0xc100, 0x7c00, 0xfc00, 0x7e00, 0x0001]),
      },
    ],
    ['i1', { dtype: DataType.INT8, dims, data: new Int8Array([-128, 127, 0, -1, 1, 5, -5, 100]) }],
    ['u1', { dtype: DataType.UINT8, dims, data: new Uint8Array([0, 255, 1, 128, 127, 2, 3, 4]) }],
    ['i2', { dtype: DataType.INT16, dims, data: new Int16Array([-32768, 32767, 0, -1, 1, 256, -256, 1000]) }],
    ['u2', { dtype: DataType.UINT16, dims, data: new Uint16Array([0, 65535, 1, 256, 32768, 2, 3, 4]) }],
    [
      'i4',
      {
        dtype: DataType.INT32,
        dims,
        data: new Int32Array([-2147483648, 2147483647, 0, -1, 1, 65536, -65536, 7]),
      },
    ],
    [
      'u4',
      { dtype: DataType.UINT32, dims, data: new Uint32Array([0, 4294967295, 1, 65536, 2147483648, 2, 3, 4]) },
    ],
    [
      'i8',
      {
        dtype: DataType.INT64,
        dims,
        data: new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 0n, -1n, 1n, 2n ** 40n, -(2n ** 40n), 9n]),
      },
    ],
    [
      'u8',
      {
        dtype: DataType.UINT64,
        dims,
        data: new BigUint64Array([0n, 2n ** 64n - 1n, 1n, 2n ** 63n, 2n ** 32n, 2n, 3n, 4n]),
      },
    ],
    ['b1', { dtype: DataType.BOOL, dims, data: new Uint8Array([0, 1, 1, 0, 0, 0, 1, 1]) }],
  ]);
}
