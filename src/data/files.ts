/** Reading data files with QnnxError E_IO on failure. */
import { readFile } from 'node:fs/promises';
import { QnnxError } from '../errors.js';

/** Read a whole file; a missing or unreadable file is QnnxError E_IO naming the file. */
export async function readDataFile(file: string): Promise<Uint8Array> {
  try {
    const buf = await readFile(file);
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : (e as Error).message;
    throw new QnnxError('E_IO', `${file}: cannot read (${why})`, { file }, { cause: e });
  }
}
