import { createHash } from 'node:crypto';
import type { NodeSpec } from '../../spec/node-spec.js';

/**
 * The UUID of something a plan creates (md array, LUKS header, filesystem) is
 * derived from the cluster, node, spec version and role rather than drawn at
 * random, so `bosun plan` shows exactly the UUIDs `bosun apply` will use, and
 * the mdadm.conf, crypttab and mount unit a plan writes can name a device
 * before it exists. Formatted as an RFC 9562 version-8 (custom) UUID.
 */
export function plannedUuid(spec: Pick<NodeSpec, 'cluster' | 'node' | 'version'>, role: string): string {
  const h = createHash('sha256').update(`bosun-uuid\0${spec.cluster}\0${spec.node}\0${spec.version}\0${role}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x80;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}
