/** `qnnx inspect <model.onnx> [--json]` */
import type { Command } from 'commander';
import { loadModel } from '../io/model-file.js';
import { inspectModel, type ModelSummary } from '../ir/inspect.js';
import { bytes, count, shape, table } from './format.js';

export function registerInspect(
  program: Command,
  run: (fn: () => Promise<void> | void) => Promise<void>,
): void {
  program
    .command('inspect')
    .description('print what an ONNX model contains: versions, inputs/outputs, op census, parameters, data')
    .argument('<model>', 'ONNX model file')
    .option('--json', 'print one JSON object (see docs/inspect.md for its fields)')
    .action((file: string, opts: { json?: boolean }) =>
      run(() => {
        const summary = inspectModel(loadModel(file));
        if (opts.json) process.stdout.write(`${JSON.stringify({ file, ...summary })}\n`);
        else process.stdout.write(`${renderSummary(file, summary)}\n`);
      }),
    );
}

export function renderSummary(file: string, s: ModelSummary): string {
  const out: string[] = [];
  out.push(`${file}`);
  out.push(
    `  IR version ${s.irVersion}; opsets ${Object.entries(s.opsets)
      .map(([d, v]) => `${d} ${v}`)
      .join(', ')}`,
  );
  const prod = [s.producer.name, s.producer.version].filter(Boolean).join(' ');
  if (prod) out.push(`  producer ${prod}`);
  out.push(
    `  ${count(s.nodes)} nodes, ${count(s.parameters)} parameters in ${count(s.initializers)} initializers, ` +
      `${s.subgraphs} subgraphs`,
  );
  out.push('');
  const io = [
    ...s.inputs.map((v) => ['input', v.name, v.dtype, shape(v.shape)]),
    ...s.outputs.map((v) => ['output', v.name, v.dtype, shape(v.shape)]),
  ];
  out.push(table(['', 'name', 'dtype', 'shape'], io, ['l', 'l', 'l', 'l']));
  out.push('');
  out.push(
    table(
      ['op', 'count'],
      Object.entries(s.opCounts).map(([k, v]) => [k, v]),
    ),
  );
  out.push('');
  out.push(
    table(
      ['dtype', 'bytes'],
      Object.entries(s.bytesByDtype).map(([k, v]) => [k, bytes(v)]),
    ),
  );
  if (s.externalData.length) {
    out.push('');
    out.push(
      table(
        ['external data', 'tensors', 'bytes'],
        s.externalData.map((e) => [e.location, e.tensors, bytes(e.bytes)]),
      ),
    );
  }
  for (const f of s.functions) {
    out.push('');
    out.push(`function ${f.domain ? `${f.domain}::` : ''}${f.name}: ${JSON.stringify(f.opCounts)}`);
  }
  return out.join('\n');
}
