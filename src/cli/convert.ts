/** `qnnx convert <in.onnx> -o <out.onnx> [--opset N] [--external-data] [--fold-bn] [--optimize] [--json]` */
import type { Command } from 'commander';
import { QnnxError } from '../errors.js';
import { loadModel, saveModel } from '../io/model-file.js';
import { graphNodeTotal } from '../ir/graph.js';
import type { PassRecord } from '../ir/pass.js';
import { foldBatchNorm, optimize, upgradeOpset } from '../ir/passes/index.js';
import { bytes, count } from './format.js';

interface ConvertOptions {
  output: string;
  opset?: string;
  externalData?: boolean;
  inlineData?: boolean;
  foldBn?: boolean;
  optimize?: boolean;
  json?: boolean;
}

export function registerConvert(
  program: Command,
  run: (fn: () => Promise<void> | void) => Promise<void>,
): void {
  program
    .command('convert')
    .description('rewrite an ONNX model through the qnnx IR, optionally optimizing or raising its opset')
    .argument('<model>', 'input ONNX model (never modified)')
    .requiredOption('-o, --output <file>', 'output ONNX model (written atomically)')
    .option('--opset <n>', 'raise the default-domain opset to at least n (e.g. 13, 19, 21)')
    .option('--external-data', 'store tensors of 1 KiB or more in <output>.data next to the model')
    .option('--inline-data', 'store all tensor data inside the model file (fails past 2 GiB)')
    .option('--fold-bn', 'fold BatchNormalization into the preceding Conv, ConvTranspose or Gemm')
    .option('--optimize', 'remove dead nodes and fold constant subgraphs')
    .option('--json', 'print one JSON object describing the result')
    .action((file: string, opts: ConvertOptions) => run(() => convert(file, opts)));
}

function convert(file: string, opts: ConvertOptions): void {
  if (opts.externalData && opts.inlineData) {
    throw new QnnxError('E_USAGE', '--external-data and --inline-data cannot be used together');
  }
  let opset: number | undefined;
  if (opts.opset !== undefined) {
    opset = Number(opts.opset);
    if (!Number.isInteger(opset) || opset < 1) {
      throw new QnnxError('E_USAGE', `--opset must be a positive integer, got '${opts.opset}'`);
    }
  }
  const t0 = performance.now();
  const model = loadModel(file);
  const nodesBefore = graphNodeTotal(model.graph);
  const opsetBefore = model.opset('') ?? 0;
  const records: PassRecord[] = [];
  if (opts.foldBn) records.push(foldBatchNorm(model));
  if (opts.optimize) records.push(...optimize(model));
  if (opset !== undefined) records.push(upgradeOpset(model, opset));
  const saved = saveModel(model, opts.output, {
    externalData: opts.externalData ? true : opts.inlineData ? false : 'keep',
  });
  const result = {
    input: file,
    output: opts.output,
    bytes: saved.bytes,
    externalData: saved.externalFile
      ? { file: saved.externalFile, bytes: saved.externalBytes, tensors: saved.externalTensors }
      : null,
    opset: { before: opsetBefore, after: model.opset('') ?? 0 },
    nodes: { before: nodesBefore, after: graphNodeTotal(model.graph) },
    passes: records,
    seconds: (performance.now() - t0) / 1000,
  };
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return;
  }
  const lines = [
    `wrote ${opts.output} (${bytes(saved.bytes)}${saved.externalFile ? ` + ${bytes(saved.externalBytes)} external data in ${saved.externalFile}` : ''})`,
    `  nodes ${count(nodesBefore)} -> ${count(result.nodes.after)}; opset ${opsetBefore} -> ${result.opset.after}`,
  ];
  for (const r of records)
    lines.push(`  ${r.pass}: ${r.changed ? summarizeDetails(r.details) : 'no change'}`);
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** One line per pass: scalar details as they are, lists as their length (the full record is in --json). */
function summarizeDetails(details: Record<string, unknown>): string {
  return Object.entries(details)
    .map(([k, v]) => {
      if (Array.isArray(v)) return `${k} ${v.length}`;
      if (v && typeof v === 'object') return `${k} ${JSON.stringify(v)}`;
      return `${k} ${String(v)}`;
    })
    .join(', ');
}
