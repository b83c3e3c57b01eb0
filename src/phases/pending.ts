import type { NodeSpec } from '../spec/node-spec.js';
import { pendingPhase } from './types.js';

/*
 * Phases whose executing code is still to come. Each prints, from the spec,
 * what it will do, so `bosun plan` already shows a newcomer the whole boot.
 * Each is replaced by a real observe/plan module when its issue lands.
 */

export const restorePhase = pendingPhase('restore', 8, (s) => s.restore, (spec: NodeSpec) => {
  const r = spec.restore!;
  const target = spec.disks?.mount.path ?? '(data volume)';
  if (r.from === 'peer') {
    return [`stream a consistent snapshot from peer ${r.peer} over the mesh into ${target}, verify every chunk${r.fallback ? `; fall back to s3://${r.fallback.bucket}/${r.fallback.prefix}` : ''}`, 'mark the data volume restored only after every byte verified'];
  }
  return [`restore backup ${r.backup} from s3://${r.bucket}/${r.prefix} into ${target}: parallel ranged GETs, decrypt, decompress, verify${r.bandwidthLimitMiBps ? `, at most ${r.bandwidthLimitMiBps} MiB/s` : ''}`, 'mark the data volume restored only after every byte verified'];
});
