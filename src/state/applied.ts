import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../host/files.js';
import type { NodeSpec } from '../spec/node-spec.js';
import { parseNodeSpec, type Problem } from '../spec/validate.js';
import { readJsonFile } from './json-file.js';

/**
 * The last good state: `<stateDir>/applied.json` (which version, when, how many
 * steps) and `<stateDir>/spec.json` (that spec itself). Both are written only
 * when an apply finished every phase; the agent starts from them at boot.
 */
export interface AppliedRecord {
  format: 1;
  specVersion: number;
  specDigest: string;
  /** steps this apply ran (0 when the host already matched) */
  steps: number;
  appliedAt: string;
}

export function appliedRecordPath(stateDir: string): string {
  return join(stateDir, 'applied.json');
}

export function lastGoodSpecPath(stateDir: string): string {
  return join(stateDir, 'spec.json');
}

export function readApplied(stateDir: string): Promise<AppliedRecord | undefined> {
  return readJsonFile<AppliedRecord>(appliedRecordPath(stateDir), 'inspect it, then remove it to re-plan from the host as it is');
}

/** An apply finished: the spec first, then the record that names it, so the record never points at a spec that is not there. */
export async function recordApplied(
  stateDir: string,
  applied: Pick<AppliedRecord, 'specVersion' | 'specDigest' | 'steps'>,
  spec: unknown,
): Promise<AppliedRecord> {
  const record: AppliedRecord = { format: 1, ...applied, appliedAt: new Date().toISOString() };
  await writeFileAtomic(lastGoodSpecPath(stateDir), JSON.stringify(spec, null, 2) + '\n', { mode: 0o600 });
  await writeFileAtomic(appliedRecordPath(stateDir), JSON.stringify(record, null, 2) + '\n', { mode: 0o600 });
  return record;
}

export type LastGoodSpec = { ok: true; spec: NodeSpec } | { ok: false; problems: Problem[] };

/**
 * The last good spec, validated again (this build's schema may be stricter
 * than the one that wrote it); undefined when nothing was applied yet.
 */
export async function readLastGoodSpec(stateDir: string): Promise<LastGoodSpec | undefined> {
  const text = await readFile(lastGoodSpecPath(stateDir), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const parsed = parseNodeSpec(JSON.parse(text));
  return parsed.ok ? { ok: true, spec: parsed.value } : { ok: false, problems: parsed.problems };
}
