import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { BackupError } from './errors.js';
import { getWhole } from './restore/manifest.js';
import { DEFAULT_RETRY } from './retry.js';
import type { ManagedTransport } from './transport.js';

/*
 * Leases in a backup set: `locks/<kind>-<host>-<random>.json`, written by
 * whoever is about to read or write backups there, so that a prune never
 * deletes what a running backup or restore still needs.
 *
 *   {"format":"bosun-lease-v1","kind":"backup"|"restore"|"prune","host":…,
 *    "backupIds":[…],"createdAt":…,"expiresAt":…}
 *
 * A lease is live until `expiresAt` (its holder rewrites it with a later one
 * while it works); an expired one is ignored and removed by the next prune.
 * Both sides write first and list after, so on a store that lists what was
 * written (S3 and MinIO are strongly consistent) at least one of two
 * concurrent parties sees the other:
 *
 * - a backup or restore that finds a live prune lease withdraws its own and
 *   waits for the prune to end, then tries again;
 * - a prune keeps every backup named by a live backup or restore lease.
 *
 * If both see each other, the backup or restore waits and the prune keeps
 * its backups: safe either way.
 */

export const LEASE_FORMAT = 'bosun-lease-v1';
export const LEASE_DIR = 'locks/';

const LeaseBody = z.strictObject({
  format: z.literal(LEASE_FORMAT),
  kind: z.enum(['backup', 'restore', 'prune']),
  host: z.string(),
  backupIds: z.array(z.string()),
  createdAt: z.string(),
  expiresAt: z.string(),
});
export type LeaseBody = z.infer<typeof LeaseBody>;

export interface LiveLease extends LeaseBody {
  key: string;
}

/** The leases in the set: live ones, and the keys of expired or unreadable ones (which a prune removes). */
export async function readLeases(transport: ManagedTransport, now = Date.now()): Promise<{ live: LiveLease[]; stale: string[] }> {
  const live: LiveLease[] = [];
  const stale: string[] = [];
  for (const object of await transport.list(LEASE_DIR)) {
    let body: LeaseBody | undefined;
    try {
      body = LeaseBody.parse(JSON.parse((await getWhole(transport, object.key, 64 * 1024, DEFAULT_RETRY)).toString('utf8')));
    } catch {
      body = undefined; // deleted meanwhile, or not a lease: stale once it is old
    }
    if (body && Date.parse(body.expiresAt) > now) live.push({ ...body, key: object.key });
    else if (!body && now - object.lastModified.getTime() < 60_000) continue;
    else stale.push(object.key);
  }
  return { live, stale };
}

export interface Lease {
  readonly key: string;
  /** Add backup ids this lease protects (a backup names its own id once it has one), and push expiry out. */
  extend(backupIds?: readonly string[]): Promise<void>;
  release(): Promise<void>;
}

export interface LeaseOptions {
  kind: LeaseBody['kind'];
  host: string;
  backupIds: readonly string[];
  /** how long the lease lives without a renewal (default 15 min); it is renewed every third of that */
  ttlSeconds?: number;
  /** how long a backup or restore waits for a running prune (default 30 min) */
  waitSeconds?: number;
  signal?: AbortSignal;
}

/**
 * Takes a lease. A backup or restore lease waits while a prune holds one
 * (withdrawing its own meanwhile); a prune lease is always taken, and the
 * prune reads the others' leases after it (readLeases). The lease renews
 * itself until released.
 */
export async function takeLease(transport: ManagedTransport, options: LeaseOptions): Promise<Lease> {
  const ttl = (options.ttlSeconds ?? 900) * 1000;
  const key = `${LEASE_DIR}${options.kind}-${options.host.replace(/[^A-Za-z0-9._-]/g, '_')}-${randomBytes(6).toString('hex')}.json`;
  const createdAt = new Date().toISOString();
  let backupIds = [...options.backupIds];
  const write = (): Promise<void> =>
    transport.put(
      key,
      Buffer.from(
        JSON.stringify({
          format: LEASE_FORMAT,
          kind: options.kind,
          host: options.host,
          backupIds,
          createdAt,
          expiresAt: new Date(Date.now() + ttl).toISOString(),
        } satisfies LeaseBody),
      ),
    );
  const deadline = Date.now() + (options.waitSeconds ?? 1800) * 1000;
  for (;;) {
    await write();
    if (options.kind === 'prune') break;
    const prunes = (await readLeases(transport)).live.filter((lease) => lease.kind === 'prune' && lease.key !== key);
    if (prunes.length === 0) break;
    await transport.delete([key]);
    if (Date.now() > deadline)
      throw new BackupError(
        'transport',
        `${transport.describe(LEASE_DIR)}: a prune by ${prunes[0]!.host} has held the backup set for too long; try again later`,
      );
    await new Promise((wake) => setTimeout(wake, 5_000));
    options.signal?.throwIfAborted();
  }
  let renewing: Promise<void> = Promise.resolve();
  const timer = setInterval(() => {
    renewing = write().catch(() => undefined);
  }, ttl / 3);
  timer.unref();
  return {
    key,
    async extend(more = []) {
      backupIds = [...new Set([...backupIds, ...more])];
      await write();
    },
    async release() {
      clearInterval(timer);
      await renewing;
      await transport.delete([key]);
    },
  };
}
