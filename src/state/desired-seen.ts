import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../host/files.js';

/**
 * `<stateDir>/desired-seen.json`: per partition of the desired topic, the
 * highest offset the agent has examined (and, for a refusal, reported). The
 * agent reads its partition from the beginning at every start; this keeps it
 * from reporting the same refusal again after a restart.
 */
export type DesiredSeen = Record<string, string>;

const SEEN_FILE = 'desired-seen.json';

export async function readDesiredSeen(stateDir: string): Promise<DesiredSeen> {
  const text = await readFile(join(stateDir, SEEN_FILE), 'utf8').catch(() => '{}');
  return JSON.parse(text) as DesiredSeen;
}

/** Not fsynced: losing it in a power cut only means a refusal may be reported once more. */
export async function writeDesiredSeen(stateDir: string, seen: DesiredSeen): Promise<void> {
  await writeFileAtomic(join(stateDir, SEEN_FILE), JSON.stringify(seen) + '\n', { mode: 0o600, durable: false });
}
