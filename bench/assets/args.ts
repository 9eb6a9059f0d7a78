/** Command-line flags shared by the benchmarks: `--name value` or `--name=value`, and `--only a,b,c`. */
const argv = process.argv.slice(2);

/** The value of `--name value` / `--name=value`, or undefined. */
export function arg(name: string): string | undefined {
  const i = argv.findIndex((a) => a === name || a.startsWith(`${name}=`));
  if (i < 0) return undefined;
  return argv[i]!.includes('=') ? argv[i]!.split('=')[1] : argv[i + 1];
}

/** Whether a bare flag is present. */
export function flag(name: string): boolean {
  return argv.includes(name);
}

/** `--only a,b`: whether part `s` is wanted (every part without `--only`). */
export function want(s: string): boolean {
  const only = arg('--only');
  return only === undefined || only.split(',').includes(s);
}
