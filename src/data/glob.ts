/**
 * A small glob matcher for data-file specs (node:fs glob is not stable in Node 20).
 *
 * Syntax, per path segment ('/'-separated; '\\' too on Windows): `*` any run of characters, `?` one
 * character, `[abc]` / `[a-z]` / `[!abc]` (or `[^abc]`) a character class, and a segment that is exactly `**`
 * matches zero or more directories. Wildcards do not match a leading '.' (hidden files and directories) unless
 * the pattern segment itself starts with '.'; `**` never descends into hidden directories or through symbolic
 * links to directories (so link cycles cannot loop). Only files (or links to files) are returned, sorted by
 * plain code-unit order of the path, without duplicates. A pattern without wildcards returns the path itself
 * when it is a file.
 */
import type { Dirent } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

/** True when the string contains a glob wildcard (`*`, `?` or `[`). */
export function hasGlobChars(s: string): boolean {
  return /[*?[]/.test(s);
}

/** Convert one path segment pattern (no separators) to an anchored RegExp. */
export function segmentToRegExp(seg: string): RegExp {
  let re = '';
  for (let i = 0; i < seg.length; i++) {
    const c = seg[i]!;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const close = seg.indexOf(']', i + 2);
      if (close < 0) {
        re += '\\[';
        continue;
      }
      let body = seg.slice(i + 1, close);
      let neg = false;
      if (body[0] === '!' || body[0] === '^') {
        neg = true;
        body = body.slice(1);
      }
      re += `[${neg ? '^' : ''}${body.replace(/[\\\]^]/g, (m) => `\\${m}`)}]`;
      i = close;
    } else re += c.replace(/[.+^${}()|\\\]]/g, (m) => `\\${m}`);
  }
  return new RegExp(`^${re}$`, 's');
}

function splitPath(p: string): string[] {
  return p.split(process.platform === 'win32' ? /[\\/]/ : /\//);
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

async function list(dir: string): Promise<Dirent[]> {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
}

async function walk(dir: string, segs: readonly string[], out: Set<string>): Promise<void> {
  if (segs.length === 0) {
    if (await isFile(dir)) out.add(dir);
    return;
  }
  const [seg, ...rest] = segs as [string, ...string[]];
  if (seg === '' || seg === '.') return walk(dir, rest, out);
  if (seg === '**') {
    await walk(dir, rest, out); // zero directories
    for (const e of await list(dir)) {
      if (e.isDirectory() && !e.name.startsWith('.')) await walk(join(dir, e.name), segs, out);
    }
    return;
  }
  if (!hasGlobChars(seg)) return walk(join(dir, seg), rest, out);
  const re = segmentToRegExp(seg);
  const dotOk = seg.startsWith('.');
  for (const e of await list(dir)) {
    if (e.name.startsWith('.') && !dotOk) continue;
    if (!re.test(e.name)) continue;
    const child = join(dir, e.name);
    if (rest.length === 0) {
      if (e.isFile() || (e.isSymbolicLink() && (await isFile(child)))) out.add(child);
    } else if (e.isDirectory() || (e.isSymbolicLink() && (await isDir(child)))) {
      await walk(child, rest, out);
    }
  }
}

/** The files matching a glob pattern, sorted. Relative patterns give paths relative to the cwd. */
export async function glob(pattern: string): Promise<string[]> {
  const segs = splitPath(pattern);
  let base: string;
  let i = 0;
  if (segs[0] === '') {
    base = '/';
    i = 1;
  } else if (process.platform === 'win32' && /^[a-zA-Z]:$/.test(segs[0]!)) {
    base = `${segs[0]}\\`;
    i = 1;
  } else base = '';
  const fixed: string[] = [];
  while (i < segs.length && !hasGlobChars(segs[i]!)) fixed.push(segs[i++]!);
  if (i === segs.length) {
    const p = base + fixed.join('/');
    return (await isFile(p)) ? [p] : [];
  }
  const start = base + fixed.join('/');
  const out = new Set<string>();
  await walk(start === '' ? '.' : start, segs.slice(i), out);
  const files = [...out].map((p) => (start === '' && p.startsWith('./') ? p.slice(2) : p));
  return files.sort(compareCodeUnits);
}

/** Plain code-unit string order (locale-independent, deterministic). */
export function compareCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
