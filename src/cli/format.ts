/** Plain-text tables and number formatting for CLI output. */

export function table(headers: string[], rows: (string | number)[][], align?: ('l' | 'r')[]): string {
  const cells = [headers, ...rows.map((r) => r.map(String))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const a = align ?? headers.map((_, i) => (i === 0 ? 'l' : 'r'));
  const fmt = (r: string[]) =>
    r
      .map((c, i) => (a[i] === 'r' ? c.padStart(widths[i]) : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [fmt(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(fmt)].join('\n');
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

export function count(n: number): string {
  return n.toLocaleString('en-US');
}

export function shape(s: (number | string | null)[] | null): string {
  if (s === null) return '?';
  return `[${s.map((d) => (d === null ? '?' : String(d))).join(', ')}]`;
}
