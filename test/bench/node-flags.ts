// The node flags the product runs with: /usr/bin/bosun (rpm/bosun.sh) passes
// them to node, and the benchmarks start their restore and backup children
// with the same ones, so the memory they print is what a host sees.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../helpers.js';

/** The `--flag` words between node and the script on rpm/bosun.sh's exec line. */
export function productNodeFlags(): string[] {
  const script = readFileSync(join(repoRoot, 'rpm/bosun.sh'), 'utf8');
  const line = script.split('\n').find((l) => /^exec \/usr\/bin\/node /.test(l));
  if (!line) throw new Error('rpm/bosun.sh has no "exec /usr/bin/node ..." line to take the node flags from');
  const words = line.split(/\s+/).slice(2);
  return words.slice(
    0,
    words.findIndex((w) => !w.startsWith('--')),
  );
}
