import { hostname } from 'node:os';
import { BosunError, ExitCode, isBosunError } from '../errors.js';
import { readIdentity } from '../identity/host-identity.js';
import { createLogger } from '../log.js';
import { Redactor } from '../secrets/redact.js';
import { commonOptions, resolveState, single, stateOptions, storeFlags, storeOptions, usage, type Command, type OptionValues } from './common.js';

export const restoreCommand: Command = {
  summary: 'restore a backup from object storage into a missing or empty directory: verified, resumable',
  usage: 'bosun restore <target> --bucket B [--prefix P] [--backup ID|latest] (--key-file PEM | --identity) [--bandwidth-limit MiB/s] [--marker FILE] [--json]',
  help: [
    "Fetches with many ranged GETs in flight, decrypts, decompresses and checks every chunk's SHA-256 before writing it. Writes into a",
    'staging directory (.<name>.bosun-restore beside a missing target, <target>/.bosun-restore in an empty one) and moves it into',
    'place only when every byte verified. Killed, it continues where it stopped when run again with the same arguments.',
    "  --key-file PEM         the backup key pair's private half (bosun backup keygen); must be 0600",
    "  --identity             the backup is sealed to this host's own key (state dir identity)",
    '  --backup ID            a backup id, or latest (default)',
    '  --bandwidth-limit N    at most N MiB/s over all downloads',
    '  --concurrency N        ranged GETs in flight (default 8)',
    '  --verify               also read every restored file back and check its SHA-256',
    '  --trust ed25519:KEY    only accept a manifest signed by this key (repeatable)',
    '  --marker FILE          write a JSON completion record here once everything verified',
    'Store and credentials as for bosun backup create. Progress: a bar on a terminal, else a plain line every 5 s, on stderr.',
    'Exit codes: 0 restored, 1 failed (E_INTEGRITY: corrupt, missing or truncated data; E_TRANSPORT: the store kept failing;',
    'E_SECRET: wrong key), 6 the target is not empty.',
  ].join('\n'),
  options: {
    ...commonOptions,
    ...stateOptions,
    ...storeOptions,
    backup: { type: 'string' },
    identity: { type: 'boolean' },
    'bandwidth-limit': { type: 'string' },
    concurrency: { type: 'string' },
    verify: { type: 'boolean' },
    trust: { type: 'string', multiple: true },
    marker: { type: 'string' },
  },
  async run({ values, positionals, io }) {
    const target = single(positionals, 'restore needs exactly one target directory');
    if (typeof values.bucket !== 'string') throw usage('restore needs --bucket');
    // The backup library and the S3 client load only for the commands that use them.
    const { ProgressPrinter, createS3Client, formatBytes, restoreFromObjectStorage, trustSigners } = await import('../backup/index.js');
    const { resolveStore } = await import('../backup/store.js');
    const limits = restoreLimits(values);
    const { settings, stateDir } = await resolveState(values, false);
    const redactor = new Redactor();
    const openDataKey = await dataKeyOpener(values, stateDir);
    const store = await resolveStore(settings?.objectStorage, storeFlags(values), redactor);
    const progress = new ProgressPrinter(process.stderr);
    const { logger } = createLogger({ redactor, target: 'stderr', level: values.verbose ? 'info' : 'warn' });
    const client = createS3Client(store);
    // SIGINT or SIGTERM ends the restore with a message that says how to go on: run again, it continues where it stopped.
    const abort = new AbortController();
    const onSignal = (): void => abort.abort(new BosunError('E_EXEC', 'interrupted; run the same command again to continue'));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      const restored = await restoreFromObjectStorage({
        client,
        bucket: values.bucket,
        prefix: (values.prefix as string | undefined) ?? '',
        backupId: (values.backup as string | undefined) ?? 'latest',
        target,
        openDataKey,
        logger,
        redactor,
        onProgress: (update) => progress.update(update),
        signal: abort.signal,
        ...(limits.trust.length > 0 ? { verifyManifest: trustSigners(limits.trust) } : {}),
        ...(limits.bandwidthMiB !== undefined ? { bandwidthLimit: limits.bandwidthMiB * 1024 * 1024 } : {}),
        ...(limits.concurrency !== undefined ? { concurrency: limits.concurrency } : {}),
        ...(values.verify ? { verifyFiles: true } : {}),
        lease: { host: settings?.node ?? hostname() },
        ...(typeof values.marker === 'string' ? { markerPath: values.marker } : {}),
      });
      progress.clear();
      if (io.json) io.data({ ok: true, ...restored });
      else {
        const resumed = restored.resumedChunks > 0 ? `, continuing an interrupted restore (${restored.resumedChunks} chunks were already in place)` : '';
        const retried = restored.retries > 0 ? `; ${restored.retries} failed requests to the store were retried` : '';
        io.out(
          `restored backup ${restored.backupId} into ${restored.target}: ${restored.files} files, ${formatBytes(restored.bytes)} in ${restored.seconds.toFixed(1)}s (${formatBytes(restored.bytes / Math.max(restored.seconds, 1e-3))}/s)${resumed}${retried}`,
        );
      }
      return ExitCode.ok;
    } catch (e) {
      progress.clear();
      if (abort.signal.aborted && isBosunError(abort.signal.reason)) throw abort.signal.reason;
      throw e;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      client.destroy();
    }
  },
};

/** The flags that bound a restore, checked before anything is read or fetched. */
function restoreLimits(values: OptionValues): { bandwidthMiB: number | undefined; concurrency: number | undefined; trust: string[] } {
  if ((values['key-file'] === undefined) === (values.identity === undefined)) throw usage('restore needs exactly one of --key-file PEM or --identity');
  const bandwidthMiB = positiveNumber(values['bandwidth-limit'], '--bandwidth-limit');
  const concurrency = positiveNumber(values.concurrency, '--concurrency');
  if (concurrency !== undefined && (!Number.isInteger(concurrency) || concurrency > 64)) throw usage('--concurrency is a whole number from 1 to 64');
  const trust = (values.trust as unknown as string[] | undefined) ?? [];
  for (const key of trust)
    if (!/^ed25519:[A-Za-z0-9_-]{43}$/.test(key)) throw usage(`--trust expects an Ed25519 key as printed by bosun identity (ed25519:…), not "${key}"`);
  return { bandwidthMiB, concurrency, trust };
}

function positiveNumber(value: unknown, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const number = Number(value);
  if (typeof value !== 'string' || !Number.isFinite(number) || number <= 0) throw usage(`${flag} expects a positive number`);
  return number;
}

/** Opens the backup's sealed data key: with the backup key pair's private half, or with this host's identity. */
export async function dataKeyOpener(values: OptionValues, stateDir: string): Promise<(sealed: string) => Buffer> {
  if (typeof values['key-file'] === 'string') {
    const { parseBackupKey, readPrivateFile } = await import('../backup/store.js');
    const key = parseBackupKey(await readPrivateFile(values['key-file'], 'backup key file'), 'backup key file');
    return (sealed) => key.open(sealed);
  }
  const identity = await readIdentity(stateDir);
  if (!identity) throw new BosunError('E_IDENTITY', `no host identity in ${stateDir} to open the backup with`);
  return (sealed) => identity.open(sealed);
}
