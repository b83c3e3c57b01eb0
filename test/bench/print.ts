// What every benchmark's command line and output share: a size argument ("256MiB", "1GiB") and a line on stdout.

const KiB = 1024;

export function out(line = ''): void {
  process.stdout.write(line + '\n');
}

/** "512KiB", "256MiB", "1GiB", "1.5g", "2TiB" or a plain number of bytes. */
export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(k|m|g|t)?i?b?$/i.exec(s.trim());
  if (!m) throw new Error(`not a size: ${s} (e.g. 256MiB, 1GiB, 8GiB)`);
  const unit = { k: KiB, m: KiB ** 2, g: KiB ** 3, t: KiB ** 4 }[(m[2] ?? '').toLowerCase() as 'k'] ?? 1;
  return Math.round(Number(m[1]) * unit);
}
