/**
 * NumPy `.npz` archives (what numpy.savez / savez_compressed write): a ZIP of `.npy` members. Keys are the
 * member names without the `.npy` suffix. Both stored and deflated members are read; writing stores members
 * uncompressed by default, deflated with `{ compress: true }`.
 */
import { unzipSync, type Zippable, zipSync } from 'fflate';
import { QnnxError } from '../errors.js';
import type { HostTensor } from '../tensor.js';
import { readDataFile } from './files.js';
import { encodeNpy, parseNpy } from './npy.js';

function dataError(file: string, what: string, cause?: unknown): QnnxError {
  return new QnnxError('E_DATA', `${file}: ${what}`, { file }, { cause });
}

/**
 * Parse a .npz archive into a Map from key (member name without `.npy`) to tensor, in archive order. Member
 * errors are reported as `<name>[<member>]: ...`. Directory entries are skipped; a member that is not a .npy
 * file is refused.
 */
export function parseNpz(bytes: Uint8Array, name = '<npz>'): Map<string, HostTensor> {
  if (bytes.length < 4 || bytes[0] !== 0x50 || bytes[1] !== 0x4b)
    throw dataError(name, 'not a .npz file (bad magic, expected a ZIP archive starting with PK)');
  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(bytes);
  } catch (e) {
    throw dataError(name, `corrupt or truncated .npz (ZIP) archive: ${(e as Error).message}`, e);
  }
  const out = new Map<string, HostTensor>();
  for (const [member, data] of Object.entries(files)) {
    if (member.endsWith('/')) continue;
    const key = member.endsWith('.npy') ? member.slice(0, -4) : member;
    if (out.has(key)) throw dataError(name, `duplicate .npz key '${key}'`);
    const memberName = `${name}[${member}]`;
    try {
      out.set(key, parseNpy(data, memberName));
    } catch (e) {
      if (e instanceof QnnxError && e.code === 'E_DATA')
        throw new QnnxError('E_DATA', e.message, { ...e.context, file: name, member }, { cause: e.cause });
      throw e;
    }
  }
  return out;
}

export interface EncodeNpzOptions {
  /** Deflate members (like numpy.savez_compressed). Default false: stored (like numpy.savez). */
  compress?: boolean;
}

/** Encode tensors as a .npz archive; each key becomes member `<key>.npy`. */
export function encodeNpz(
  tensors: ReadonlyMap<string, HostTensor>,
  options: EncodeNpzOptions = {},
): Uint8Array {
  const zippable: Zippable = {};
  for (const [key, t] of tensors) {
    if (key === '' || key.includes('\0'))
      throw new QnnxError('E_USAGE', `invalid .npz key ${JSON.stringify(key)}`, { tensor: key });
    const member = `${key}.npy`;
    if (member in zippable) throw new QnnxError('E_USAGE', `duplicate .npz key '${key}'`, { tensor: key });
    try {
      zippable[member] = encodeNpy(t);
    } catch (e) {
      if (e instanceof QnnxError)
        throw new QnnxError(
          e.code,
          `tensor '${key}': ${e.message}`,
          { ...e.context, tensor: key },
          { cause: e },
        );
      throw e;
    }
  }
  return zipSync(zippable, { level: options.compress ? 6 : 0 });
}

/** Read and parse a .npz file from disk. */
export async function readNpz(file: string): Promise<Map<string, HostTensor>> {
  return parseNpz(await readDataFile(file), file);
}
