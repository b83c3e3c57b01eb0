// Lab checks that fail leave evidence: the guests' journals and serial logs,
// saved under .cache/lab/artifacts/<prefix>-<label>/ and named in the error,
// plus digest.txt there: the failure and, per guest, the lines most likely to
// say why (the agent's own last lines, kernel trouble, failed units). CI
// shows only the tail of a run's output, so test/run-lanes prints the
// digests written during the run at its very end.
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Lab } from './driver.js';

export function journalGuard(prefix: string, lab: () => Lab | undefined): (label: string, fn: () => Promise<void>) => Promise<void> {
  return async (label, fn) => {
    try {
      await fn();
    } catch (err) {
      const l = lab();
      const where = l ? await l.collectJournals(`${prefix}-${label}`).catch((e: unknown) => `(collecting journals failed: ${String(e)})`) : '(no lab)';
      if (l && !where.startsWith('(')) await writeDigest(where, `${prefix}-${label}`, err).catch(() => undefined);
      if (err instanceof Error) err.message += `\n[lab] journals and serial logs: ${where}`;
      throw err;
    }
  };
}

/** Agent lines that say nothing about a failure (kafkajs debug chatter). */
const NOISE = /kafka: Response |kafka: Request /;
/** Kernel and systemd lines that explain a dead or stuck guest. */
const TROUBLE =
  /Out of memory|oom-kill|Killed process|BUG:|Call Trace|segfault|I\/O error|hung_task|blocked for more than|Main process exited|Failed with result|code=(exited|killed|dumped)/;

/** IKE daemon lines that explain a missing SA: a peer found dead, an SA deleted or (re)established. */
const IKE = / (pluto|charon|charon-systemd)\[\d+\]: .*(DPD|liveness|dead|delet|establish|retransmit|timeout|restart|initiat)/i;

/** Cuts a long line: a digest is for reading in a CI log. */
const cut = (line: string, n = 300) => (line.length > n ? `${line.slice(0, n)} …` : line);

/** Writes <dir>/digest.txt: the failure's message (its first lines), then per guest its last agent lines, its last IKE events and any kernel/unit trouble. */
export async function writeDigest(dir: string, label: string, err: unknown): Promise<void> {
  const message = (err instanceof Error ? err.message : String(err))
    .split('\n')
    .slice(0, 24)
    .map((l) => cut(l));
  const out = [`== lab failure digest: ${label} (${new Date().toISOString()})`, ...message.map((l) => `  ${l}`)];
  const vms = (await readdir(dir, { withFileTypes: true }))
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort();
  for (const vm of vms) {
    const journal = await readFile(join(dir, vm, 'journal.txt'), 'utf8').catch(() => '');
    const lines = journal.split('\n');
    const agent = lines.filter((l) => / bosun\[\d+\]: /.test(l) && !NOISE.test(l)).slice(-8);
    const trouble = lines.filter((l) => TROUBLE.test(l)).slice(-5);
    const ike = lines.filter((l) => IKE.test(l)).slice(-6);
    const failedUnits = (await readFile(join(dir, vm, 'boots.txt'), 'utf8').catch(() => ''))
      .split('\n')
      .filter((l) => /\bfailed\b/.test(l) && /\.(service|mount|scope)\b/.test(l))
      .slice(0, 4);
    const note = journal.startsWith('could not run') ? `  (no journal: ${cut(journal.split('\n')[0] ?? '', 200)})` : undefined;
    out.push(`-- ${vm}: last agent lines${agent.length === 0 ? ': none' : ''}`, ...(note ? [note] : []), ...agent.map((l) => `  ${cut(l)}`));
    if (ike.length > 0) out.push(`-- ${vm}: last IKE lines`, ...ike.map((l) => `  ${cut(l, 200)}`));
    if (trouble.length > 0) out.push(`-- ${vm}: kernel/unit trouble`, ...trouble.map((l) => `  ${cut(l)}`));
    if (failedUnits.length > 0) out.push(`-- ${vm}: failed units`, ...failedUnits.map((l) => `  ${cut(l.trim())}`));
  }
  await writeFile(join(dir, 'digest.txt'), out.join('\n') + '\n');
}
