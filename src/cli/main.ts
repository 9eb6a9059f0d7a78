#!/usr/bin/env node
/** The `qnnx` command line. Each command lives in its own file; this one wires them and handles errors. */
import { Command } from 'commander';
import { registerConvert } from './convert.js';
import { reportError } from './errors.js';
import { registerEval } from './eval.js';
import { registerInspect } from './inspect.js';
import { registerQuantize } from './quantize.js';
import { registerTrain } from './train.js';

const VERSION = '0.1.0';

export async function main(argv: string[]): Promise<number> {
  const debug = argv.includes('--debug');
  const json = argv.includes('--json');
  let code = 0;
  const run = async (fn: () => Promise<void> | void) => {
    try {
      await fn();
    } catch (e) {
      code = reportError(e, debug, json);
    }
  };
  const program = new Command();
  program
    .name('qnnx')
    .description('Quantize, fine-tune and inspect ONNX models, run by ONNX Runtime.')
    .version(VERSION)
    .option('--debug', 'print stack traces on errors')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) })
    .showHelpAfterError('(run with --help for usage)');
  registerInspect(program, run);
  registerConvert(program, run);
  registerEval(program, run);
  registerQuantize(program, run);
  registerTrain(program, run);
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    return reportError(e, debug, json);
  }
  return code;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.exitCode = reportError(e, process.argv.includes('--debug'), false);
  },
);
