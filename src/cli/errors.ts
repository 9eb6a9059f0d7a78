/**
 * How the CLI ends: one clear line on stderr for every error, a documented exit code, a stack trace only with
 * --debug.
 */
import { CommanderError } from 'commander';
import { isQnnxError } from '../errors.js';

/** Exit codes (documented in docs/cli.md). */
export const EXIT = {
  ok: 0,
  /** The input was refused (bad model, bad data, failed run): a QnnxError. */
  failed: 1,
  /** Wrong command-line usage. */
  usage: 2,
  /** A bug in qnnx: an unexpected exception. */
  internal: 70,
} as const;

export function reportError(e: unknown, debug: boolean, json: boolean): number {
  if (e instanceof CommanderError) return e.exitCode === 0 ? EXIT.ok : EXIT.usage;
  if (isQnnxError(e)) {
    if (json) {
      process.stderr.write(
        `${JSON.stringify({ error: { code: e.code, message: e.message, ...e.context } })}\n`,
      );
    } else {
      process.stderr.write(`qnnx: error ${e.code}: ${oneLine(e.message)}\n`);
    }
    if (debug && e.stack) process.stderr.write(`${e.stack}\n`);
    return e.code === 'E_USAGE' ? EXIT.usage : EXIT.failed;
  }
  const msg = e instanceof Error ? e.message : String(e);
  process.stderr.write(
    `qnnx: internal error: ${oneLine(msg)} (this is a bug; rerun with --debug for the stack)\n`,
  );
  if (debug && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
  return EXIT.internal;
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ');
}
