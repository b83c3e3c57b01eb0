import { join } from 'node:path';
import { BosunError } from '../errors.js';
import { writeFileAtomic } from '../host/files.js';
import type { NodeSpec } from '../spec/node-spec.js';
import { readJsonFile } from './json-file.js';

/**
 * `<stateDir>/decommissioned.json`: the decommission record. Written as
 * "decommissioning" before the decommission phase changes anything and as the
 * verified result after it (src/phases/decommission.ts verifies); while it is
 * there the host refuses every spec that is not a decommission. The engine,
 * the agent's status and `bosun status` read it.
 */
export const DECOMMISSION_FILE = 'decommissioned.json';

export interface DecommissionRecord {
  format: 1;
  /** decommissioning: written when the phase starts, so a host cut off half-way still refuses to rebuild */
  state: 'decommissioning' | 'decommissioned';
  node: string;
  specVersion: number;
  erase: 'crypto' | 'none';
  safeToDelete: boolean;
  finishedAt: string;
  evidence: {
    container: { unit: string; active: string; enabled: string } | null;
    auxiliary: { unit: string; active: string; enabled: string }[];
    /** bosun conns still loaded or on disk (0 = left the mesh) */
    ipsecConnsLeft: number;
    dataVolumeMounted: boolean;
    luks: { device: string; open: boolean; keyslots: number | null }[];
  };
  /** what did not verify, in words; empty when safeToDelete */
  problems: string[];
}

export interface Lifecycle {
  state: 'serving' | 'decommissioning' | 'decommissioned';
  safeToDelete: boolean;
  specVersion?: number;
  finishedAt?: string;
  erase?: 'crypto' | 'none';
  evidence?: DecommissionRecord['evidence'];
  problems?: string[];
}

export async function readDecommissionRecord(stateDir: string): Promise<DecommissionRecord | undefined> {
  const record = await readJsonFile<DecommissionRecord>(
    join(stateDir, DECOMMISSION_FILE),
    'this host may have been decommissioned: inspect it before anything else',
  );
  return record?.state === 'decommissioned' || record?.state === 'decommissioning' ? record : undefined;
}

export async function writeDecommissionRecord(stateDir: string, record: DecommissionRecord): Promise<void> {
  await writeFileAtomic(join(stateDir, DECOMMISSION_FILE), JSON.stringify(record, null, 2) + '\n', { mode: 0o600 });
}

/** Before the phase runs: from here on the host refuses to build again, even if the phase is cut off half-way. */
export async function markDecommissioning(spec: NodeSpec, stateDir: string): Promise<void> {
  if (await readDecommissionRecord(stateDir)) return;
  const rec: DecommissionRecord = {
    format: 1,
    state: 'decommissioning',
    node: spec.node,
    specVersion: spec.version,
    erase: spec.decommission?.erase ?? 'crypto',
    safeToDelete: false,
    finishedAt: '',
    evidence: { container: null, auxiliary: [], ipsecConnsLeft: -1, dataVolumeMounted: true, luks: [] },
    problems: ['the decommission has not finished'],
  };
  await writeDecommissionRecord(stateDir, rec);
}

/** A decommissioned host never builds again: refuse any spec that is not a decommission. */
export async function assertNotDecommissioned(spec: NodeSpec, stateDir: string): Promise<void> {
  if (spec.decommission) return;
  const rec = await readDecommissionRecord(stateDir);
  if (!rec) return;
  throw new BosunError(
    'E_DECOMMISSIONED',
    `this host ${rec.state === 'decommissioned' ? `was decommissioned (version ${rec.specVersion}, ${rec.erase === 'crypto' ? 'its disks crypto-erased' : 'not erased'}, at ${rec.finishedAt})` : `is being decommissioned (version ${rec.specVersion})`}; it never builds again: refusing version ${spec.version}, nothing was changed. Boot a new host instead.`,
    { decommissionedVersion: rec.specVersion, version: spec.version },
  );
}

/** The lifecycle part of a status report. */
export function lifecycleOf(record: DecommissionRecord | undefined, wanted: NodeSpec | undefined): Lifecycle {
  if (record)
    return {
      state: record.state === 'decommissioned' && record.safeToDelete ? 'decommissioned' : 'decommissioning',
      safeToDelete: record.safeToDelete,
      specVersion: record.specVersion,
      finishedAt: record.finishedAt,
      erase: record.erase,
      evidence: record.evidence,
      problems: record.problems,
    };
  if (wanted?.decommission) return { state: 'decommissioning', safeToDelete: false, specVersion: wanted.version };
  return { state: 'serving', safeToDelete: false };
}
