import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { hostname } from 'node:os';
import { BosunError, ExitCode, describeError } from '../errors.js';
import { writeFileAtomic } from '../host/files.js';
import { loadOrCreateIdentity } from '../identity/host-identity.js';
import { publicKeyString, x25519PublicFromString } from '../identity/seal.js';
import { createLogger } from '../log.js';
import type { ManagedTransport } from '../backup/transport.js';
import { Redactor } from '../secrets/redact.js';
import { commonOptions, resolveState, stateOptions, storeFlags, storeOptions, usage, type Command, type Io, type OptionValues } from './common.js';

export const backupCommand: Command = {
  summary: 'make an encrypted, verified backup of a directory in object storage, or a backup key pair',
  usage:
    'bosun backup create <dir> --bucket B [--prefix P] (--to x25519:KEY | --key-file PEM) [--sign] [--endpoint URL] [--region R] [--json]\n       bosun backup verify --bucket B [--prefix P] (--key-file PEM | --identity) [--backup ID] [--sample PERCENT] [--json]\n       bosun backup list --bucket B [--prefix P] [--json]\n       bosun backup prune --bucket B [--prefix P] [--keep-last N] [--keep-daily D] [--keep-weekly W] [--apply] [--json]\n       bosun backup keygen --out FILE [--json]',
  help: [
    'create: walks <dir>, cuts files into 4 MiB chunks, compresses (zstd) and encrypts (AES-256-GCM) each, uploads packs, then the',
    'manifest, then latest.json (format: src/backup/FORMAT.md). The data key is fresh per backup and sealed to the recipient key.',
    "  --to KEY        the backup key pair's public half (x25519:…, as printed by keygen)",
    '  --key-file PEM  or take the public half from the private key file',
    "  --sign          sign the manifest with this host's identity (a restore can require it with --trust)",
    '  --prefix P      the backup set inside the bucket (e.g. pg-main/)',
    '  --host LABEL    a label for the creating host in the manifest (default: agent.json node, else hostname)',
    'Store: --endpoint/--region, else agent.json objectStorage, else AWS_ENDPOINT_URL / AWS_REGION; credentials from',
    'agent.json objectStorage.credentialsFile, else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Credentials are never printed.',
    'Progress goes to stderr: a bar on a terminal, else a plain line every 5 s.',
    'verify: re-reads every chunk of a backup (latest, or --backup ID; --sample 10 checks a random 10 %) from the store and checks it',
    'as a restore would (tag, length, SHA-256 against the signed manifest), writing nothing. Lists every bad or missing object with',
    'its byte range and the files it touches; exit 1 if there is one.',
    'list: the backups of a set, newest first, from object names alone (no key needed): id, time, objects, bytes, complete or not, latest.',
    'prune: applies a retention (default --keep-last 7 --keep-daily 7 --keep-weekly 4) and says what it would delete; --apply deletes.',
    'Never deleted: the latest backup, and any backup a running backup or restore holds a lease on (locks/ in the set).',
    "keygen: writes a new X25519 backup key pair's private half to FILE (0600, refuses to overwrite) and prints its public half.",
    "job: the agent's scheduled backup, run by the agent itself (a job on stdin, the result as one JSON line on stdout); not for hand use.",
  ].join('\n'),
  options: {
    ...commonOptions,
    ...stateOptions,
    ...storeOptions,
    to: { type: 'string' },
    sign: { type: 'boolean' },
    host: { type: 'string' },
    out: { type: 'string' },
    backup: { type: 'string' },
    identity: { type: 'boolean' },
    sample: { type: 'string' },
    'keep-last': { type: 'string' },
    'keep-daily': { type: 'string' },
    'keep-weekly': { type: 'string' },
    apply: { type: 'boolean' },
  },
  async run({ values, positionals, io }) {
    const [subcommand, ...rest] = positionals;
    if (subcommand === 'keygen') {
      if (rest.length > 0) throw usage('backup keygen takes no positional arguments');
      return keygen(values, io);
    }
    if (subcommand === 'job') {
      if (rest.length > 0) throw usage('backup job takes no positional arguments (the job comes on stdin)');
      return job(values, io);
    }
    if (subcommand === 'verify') {
      if (rest.length > 0) throw usage('backup verify takes no positional arguments');
      return verify(values, io);
    }
    if (subcommand === 'list' || subcommand === 'prune') {
      if (rest.length > 0) throw usage(`backup ${subcommand} takes no positional arguments`);
      return subcommand === 'list' ? list(values, io) : prune(values, io);
    }
    if (subcommand !== 'create') throw usage('backup needs a subcommand: create, verify, list, prune or keygen');
    if (rest.length !== 1) throw usage('backup create needs exactly one directory');
    return create(rest[0]!, values, io);
  },
};

async function keygen(values: OptionValues, io: Io): Promise<number> {
  if (typeof values.out !== 'string') throw usage('backup keygen needs --out FILE for the private key');
  const pair = generateKeyPairSync('x25519');
  try {
    await writeFileAtomic(values.out, pair.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600, exclusive: true });
  } catch (e) {
    throw new BosunError('E_WRITE', `cannot write ${values.out}: ${(e as NodeJS.ErrnoException).code ?? describeError(e)} (keygen never overwrites a key)`);
  }
  const publicKey = publicKeyString('x25519', createPublicKey(pair.privateKey));
  if (io.json) io.data({ publicKey, keyFile: values.out });
  else io.out(publicKey);
  return ExitCode.ok;
}

async function create(source: string, values: OptionValues, io: Io): Promise<number> {
  if (typeof values.bucket !== 'string') throw usage('backup create needs --bucket');
  if ((values.to === undefined) === (values['key-file'] === undefined)) throw usage('backup create needs exactly one of --to x25519:KEY or --key-file PEM');
  // The backup library and the S3 client load only for the commands that use them.
  const { ProgressPrinter, S3Transport, createBackup, createS3Client, formatBytes } = await import('../backup/index.js');
  const { parseBackupKey, readPrivateFile, resolveStore } = await import('../backup/store.js');
  const recipient =
    typeof values.to === 'string'
      ? x25519PublicFromString(values.to)
      : parseBackupKey(await readPrivateFile(values['key-file'] as string, 'backup key file'), 'backup key file').publicKey;
  const { settings, stateDir } = await resolveState(values, false);
  const redactor = new Redactor();
  const store = await resolveStore(settings?.objectStorage, storeFlags(values), redactor);
  const progress = new ProgressPrinter(process.stderr);
  const { logger } = createLogger({ redactor, target: 'stderr', level: values.verbose ? 'info' : 'warn' });
  const signer = values.sign ? (await loadOrCreateIdentity(stateDir)).identity : undefined;
  const client = createS3Client(store);
  try {
    const backup = await createBackup({
      source,
      transport: new S3Transport({ client, bucket: values.bucket, prefix: (values.prefix as string | undefined) ?? '' }),
      recipient,
      ...(signer ? { signer } : {}),
      host: (values.host as string | undefined) ?? settings?.node ?? hostname(),
      logger,
      onProgress: (update) => progress.update(update),
    });
    progress.clear();
    if (io.json) io.data({ ok: true, ...backup });
    else
      io.out(
        `backup ${backup.backupId}: ${backup.stats.files} files, ${formatBytes(backup.stats.bytes)} (${formatBytes(backup.stats.storedBytes)} stored in ${backup.stats.packs} packs) in ${backup.seconds.toFixed(1)}s`,
      );
    return ExitCode.ok;
  } finally {
    progress.clear();
    client.destroy();
  }
}

/** `bosun backup job`: one scheduled backup for the agent (src/backup/job.ts); the job, with the store's credentials, on stdin. */
async function job(values: OptionValues, io: Io): Promise<number> {
  const { BACKUP_JOB_FORMAT, BackupJob, runBackupJob } = await import('../backup/job.js');
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new BosunError('E_USAGE', 'backup job: stdin is not a JSON job');
  }
  const checked = BackupJob.safeParse(parsed);
  // The job holds credentials: name the fields that are wrong, never their values.
  if (!checked.success)
    throw new BosunError(
      'E_USAGE',
      `backup job: not a ${BACKUP_JOB_FORMAT} job (wrong or missing: ${checked.error.issues.map((issue) => issue.path.join('.') || 'the job').join(', ')})`,
    );
  const { stateDir } = await resolveState(values, false);
  const redactor = new Redactor();
  const { logger } = createLogger({ redactor, target: 'stderr', level: 'warn' });
  const result = await runBackupJob(checked.data, { signer: (await loadOrCreateIdentity(stateDir)).identity, stateDir, redactor, logger });
  io.data(result);
  return ExitCode.ok;
}

async function verify(values: OptionValues, io: Io): Promise<number> {
  if (typeof values.bucket !== 'string') throw usage('backup verify needs --bucket');
  if ((values['key-file'] === undefined) === (values.identity === undefined)) throw usage('backup verify needs exactly one of --key-file PEM or --identity');
  const sample = values.sample === undefined ? 100 : Number(values.sample);
  if (!(sample > 0 && sample <= 100)) throw usage(`--sample expects a percentage in (0, 100], not "${String(values.sample)}"`);
  const { S3Transport, createS3Client, resolveBackupId } = await import('../backup/index.js');
  const { resolveStore } = await import('../backup/store.js');
  const { verifyBackup } = await import('../backup/verify.js');
  const { dataKeyOpener } = await import('./restore.js');
  const { settings, stateDir } = await resolveState(values, false);
  const redactor = new Redactor();
  const openDataKey = await dataKeyOpener(values, stateDir);
  const client = createS3Client(await resolveStore(settings?.objectStorage, storeFlags(values), redactor));
  try {
    const transport = new S3Transport({ client, bucket: values.bucket, prefix: (values.prefix as string | undefined) ?? '' });
    const backupId = await resolveBackupId(transport, (values.backup as string | undefined) ?? 'latest');
    const report = await verifyBackup({ transport, backupId, openDataKey, sample: sample / 100 });
    if (io.json) io.data({ ok: report.problems.length === 0, ...report });
    else {
      io.out(`backup ${report.backupId} (${report.createdAt}): ${report.chunksChecked} of ${report.chunks} chunks in ${report.packs} packs checked`);
      for (const p of report.problems)
        io.out(
          `  ${p.failure}: ${p.object}${p.range ? ` bytes ${p.range[0]}-${p.range[1]}` : ''}${p.files.length > 0 ? ` (files: ${p.files.join(', ')})` : ''}`,
        );
      io.out(report.problems.length === 0 ? 'every checked chunk verified' : `${report.problems.length} problems: this backup does not restore as it is`);
    }
    return report.problems.length === 0 ? ExitCode.ok : ExitCode.failed;
  } finally {
    client.destroy();
  }
}

/** The set named by --bucket/--prefix, as a store bosun may list and delete in; `use` runs with it, then the client is closed. */
async function withSet<T>(values: OptionValues, command: string, use: (transport: ManagedTransport, node?: string) => Promise<T>): Promise<T> {
  if (typeof values.bucket !== 'string') throw usage(`backup ${command} needs --bucket`);
  const { S3Transport, createS3Client } = await import('../backup/index.js');
  const { resolveStore } = await import('../backup/store.js');
  const { settings } = await resolveState(values, false);
  const client = createS3Client(await resolveStore(settings?.objectStorage, storeFlags(values), new Redactor()));
  try {
    return await use(new S3Transport({ client, bucket: values.bucket, prefix: (values.prefix as string | undefined) ?? '' }), settings?.node);
  } finally {
    client.destroy();
  }
}

async function list(values: OptionValues, io: Io): Promise<number> {
  const { listBackups } = await import('../backup/prune.js');
  const { formatBytes } = await import('../backup/index.js');
  const listed = await withSet(values, 'list', (transport) => listBackups(transport));
  if (io.json) io.data({ ok: true, ...listed });
  else {
    for (const b of listed.backups)
      io.out(
        `${b.backupId}  ${b.createdAt}  ${String(b.objects).padStart(5)} objects  ${formatBytes(b.bytes).padStart(10)}${b.complete ? '' : '  incomplete'}${b.backupId === listed.latest ? '  latest' : ''}`,
      );
    if (listed.backups.length === 0) io.out('no backups in this set');
  }
  return ExitCode.ok;
}

function count(values: OptionValues, flag: string, fallback: number, min: number): number {
  const raw = values[flag];
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw usage(`--${flag} expects a whole number of at least ${min}, not "${String(raw)}"`);
  return n;
}

async function prune(values: OptionValues, io: Io): Promise<number> {
  const policy = { last: count(values, 'keep-last', 7, 1), daily: count(values, 'keep-daily', 7, 0), weekly: count(values, 'keep-weekly', 4, 0) };
  const { pruneBackups } = await import('../backup/prune.js');
  const { formatBytes } = await import('../backup/index.js');
  const report = await withSet(values, 'prune', (transport, node) =>
    pruneBackups({ transport, policy, host: node ?? hostname(), apply: values.apply === true }),
  );
  if (io.json) io.data({ ok: true, ...report });
  else {
    for (const b of report.kept) io.out(`keep  ${b.backupId}  (${b.reasons.join(', ')})`);
    for (const b of report.dropped) io.out(`${report.applied ? 'deleted' : 'would delete'}  ${b.backupId}  ${formatBytes(b.bytes)}`);
    for (const b of report.incomplete)
      io.out(`${report.applied ? 'deleted' : 'would delete'}  ${b.backupId}  ${formatBytes(b.bytes)} (incomplete: a run that did not finish)`);
    io.out(report.applied ? `freed ${formatBytes(report.bytesFreed)}` : `would free ${formatBytes(report.bytesFreed)}; nothing was deleted (--apply deletes)`);
  }
  return ExitCode.ok;
}
