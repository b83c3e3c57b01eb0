#!/usr/bin/env node
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ed25519PrivateFromPem, signEnvelope } from './bus/envelope.js';
import { applyNode } from './apply-node.js';
import { collectHealth } from './health/collect.js';
import { Journal } from './state/journal.js';
import { Redactor } from './secrets/redact.js';
import { planToJson, renderPlanText } from './engine/render.js';
import { BosunError, ExitCode, describeError, isBosunError } from './errors.js';
import { BlankProbe, DISTROS, Host, LiveProbe, detectDistro, isDistroId, type Distro } from './host/index.js';
import { writeFileAtomic } from './host/files.js';
import { RecordingProbe } from './host/probe-record.js';
import { loadOrCreateIdentity, readIdentity } from './identity/host-identity.js';
import { publicKeyString, seal, x25519PublicFromString } from './identity/seal.js';
import { createLogger } from './log.js';
import { planNode } from './phases/index.js';
import { readLastGoodSpec } from './state/applied.js';
import { lifecycleOf, readDecommissionRecord } from './state/decommission.js';
import { readRestoreProgress } from './state/restore-progress.js';
import { loadAgentSettings, loadNodeSpec, parseAgentSettings, parseJsonText, parseNodeSpec, type Problem } from './spec/validate.js';
import type { AgentSettings } from './spec/agent-settings.js';

const DEFAULT_SETTINGS = '/etc/bosun/agent.json';
const DEFAULT_STATE_DIR = '/var/lib/bosun';

interface Output {
  json: boolean;
  out(text: string): void;
  data(value: unknown): void;
}

interface Command {
  summary: string;
  usage: string;
  help: string;
  options: NonNullable<ParseArgsConfig['options']>;
  run(args: { values: Record<string, string | boolean | undefined>; positionals: string[]; io: Output }): Promise<number>;
}

const common = {
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;
const stateOpts = {
  'state-dir': { type: 'string' },
  settings: { type: 'string' },
} as const;

const COMMANDS: Record<string, Command> = {
  validate: {
    summary: 'check a NodeSpec (or, with --kind settings, an agent.json) and list every problem by path',
    usage: 'bosun validate <file>... [--kind spec|settings] [--json]',
    help: 'Exit 0 when every file is valid, 3 when any is not. Nothing is changed.',
    options: { ...common, kind: { type: 'string' } },
    async run({ values, positionals, io }) {
      if (positionals.length === 0) throw usage('validate needs at least one file');
      const kind = (values.kind as string | undefined) ?? 'spec';
      if (kind !== 'spec' && kind !== 'settings') throw usage('--kind is "spec" or "settings"');
      const results: { file: string; ok: boolean; problems: Problem[]; node?: string; version?: number }[] = [];
      for (const file of positionals) {
        let text: string;
        try {
          text = await readFile(file, 'utf8');
        } catch (e) {
          results.push({ file, ok: false, problems: [{ path: '(file)', message: `cannot read: ${(e as NodeJS.ErrnoException).code ?? 'error'}` }] });
          continue;
        }
        const json = parseJsonText(text);
        const r = !json.ok ? json : kind === 'spec' ? parseNodeSpec(json.value) : parseAgentSettings(json.value);
        if (r.ok) {
          const v = r.value as { node: string; version?: number };
          results.push({ file, ok: true, problems: [], node: v.node, version: v.version });
        } else results.push({ file, ok: false, problems: r.problems });
      }
      if (io.json) io.data({ ok: results.every((r) => r.ok), files: results });
      else {
        for (const r of results) {
          if (r.ok) io.out(`${r.file}: valid (node ${r.node}${r.version !== undefined ? `, version ${r.version}` : ''})`);
          else {
            io.out(`${r.file}: invalid, ${r.problems.length} problem${r.problems.length === 1 ? '' : 's'}:`);
            for (const p of r.problems) io.out(`  ${p.path}: ${p.message}`);
          }
        }
      }
      return results.every((r) => r.ok) ? ExitCode.ok : ExitCode.invalid;
    },
  },

  plan: {
    summary: 'print the exact ordered steps applying a spec would take, without changing anything',
    usage: 'bosun plan <spec> [--blank] [--distro fedora|debian] [--content] [--record-probe FILE] [--json]',
    help: [
      'Observes this host read-only (files, unit states) and prints every command with its argv and every',
      'file with its path and mode, in order, with why. Secrets print as <redacted:...>.',
      '  --blank    plan as for a blank host, without looking at this one',
      '  --distro   plan for this distribution instead of the one detected',
      '  --content  also print the content of every file written',
      '  --record-probe FILE  also write every question asked of the host and its answer (mode 0600: it',
      '             can hold file contents); the disks re-run benchmark replays it to time the agent alone',
    ].join('\n'),
    options: { ...common, blank: { type: 'boolean' }, distro: { type: 'string' }, content: { type: 'boolean' }, 'record-probe': { type: 'string' } },
    async run({ values, positionals, io }) {
      const file = single(positionals, 'plan needs exactly one spec file');
      const spec = await loadNodeSpec(file);
      const distro = await pickDistro(values.distro as string | undefined);
      const redactor = new Redactor();
      const base = values.blank ? new BlankProbe() : new LiveProbe(redactor);
      const recordTo = values['record-probe'] as string | undefined;
      const probe = recordTo ? new RecordingProbe(base) : base;
      const steps = await planNode(spec, probe, { distro });
      if (probe instanceof RecordingProbe) await writeFileAtomic(recordTo!, JSON.stringify(probe.recording()), { mode: 0o600 });
      const header = { node: spec.node, cluster: spec.cluster, version: spec.version, distro: distro.id, observed: values.blank ? ('blank' as const) : ('host' as const) };
      if (io.json) io.data(planToJson(header, steps));
      else io.out(renderPlanText(header, steps, values.content === true).trimEnd());
      return ExitCode.ok;
    },
  },

  apply: {
    summary: 'plan and apply a spec to this host now, resuming an unfinished apply of the same spec',
    usage: 'bosun apply <spec> [--state-dir DIR] [--settings FILE] [--root DIR] [--distro ...] [--json]',
    help: [
      'Refuses a spec for another node (per agent.json), an older version than the one applied, and a plan',
      'with phases not implemented yet; in each case nothing is changed. Progress is journalled in the state',
      'dir after every step, so an apply killed half-way continues where it stopped when run again.',
      '  --root DIR  write files under DIR instead of / (image builds, tests); commands still run on the host',
    ].join('\n'),
    options: { ...common, ...stateOpts, root: { type: 'string' }, distro: { type: 'string' } },
    async run({ values, positionals, io }) {
      const file = single(positionals, 'apply needs exactly one spec file');
      const spec = await loadNodeSpec(file);
      const { settings, stateDir } = await resolveState(values, false);
      if (settings && settings.node !== spec.node) {
        throw new BosunError('E_WRONG_NODE', `spec is for node ${spec.node} but this host is ${settings.node}; nothing was changed`);
      }
      const redactor = new Redactor();
      const { logger } = createLogger({ redactor, target: 'stderr', level: settings?.log.level ?? 'info' });
      const { identity } = await loadOrCreateIdentity(stateDir);
      const root = values.root as string | undefined;
      const outcome = await applyNode({
        spec,
        stateDir,
        host: new Host({ redactor, root }),
        probe: new LiveProbe(redactor, root ?? ''),
        ctx: { distro: await pickDistro(values.distro as string | undefined) },
        identity,
        logger,
        ...(settings?.objectStorage ? { objectStorage: settings.objectStorage } : {}),
      });
      if (io.json) io.data({ ok: true, ...outcome });
      else io.out(`version ${outcome.specVersion}: ${outcome.result === 'unchanged' ? 'nothing to do' : `${outcome.steps} steps applied${outcome.resumedAt !== undefined ? ` (resumed at phase ${outcome.resumedAt})` : ''}`}${outcome.decommission ? `; decommissioned, safe to delete: ${outcome.decommission.safeToDelete ? 'yes' : 'no'}` : ''}`);
      return ExitCode.ok;
    },
  },

  run: {
    summary: 'the daemon: converge to the last good spec at boot, then follow the desired state on Kafka',
    usage: 'bosun run [--settings FILE] [--state-dir DIR]',
    help: 'Started by bosun.service. Logs go to journald under systemd, else to stdout.',
    options: { ...common, ...stateOpts },
    async run({ values }) {
      const { settings, stateDir } = await resolveState(values, true);
      // The daemon's modules (kafkajs, node-cron, the metrics server) load only here: every other
      // command, `bosun apply` at boot included, starts without them (seconds on a slow host).
      const { runDaemon } = await import('./daemon/run.js');
      return runDaemon(settings!, stateDir);
    },
  },

  status: {
    summary: 'what this host has applied, what is in progress, and its public keys',
    usage: 'bosun status [--state-dir DIR] [--settings FILE] [--health] [--json]',
    help: 'Reads the state dir only; never creates or changes anything.\n  --health  also observe the host (read-only) and report the health of what the last good spec built',
    options: { ...common, ...stateOpts, health: { type: 'boolean' } },
    async run({ values, io }) {
      const { settings, stateDir } = await resolveState(values, false);
      const journal = new Journal(stateDir);
      const [applied, inProgress, identity, restore, decommission] = await Promise.all([journal.readApplied(), journal.read(), readIdentity(stateDir), readRestoreProgress(stateDir), readDecommissionRecord(stateDir)]);
      const { formatBytes } = await import('./backup/progress.js');
      let health: Record<string, unknown> | null = null;
      if (values.health) {
        const lastGood = await readLastGoodSpec(stateDir);
        if (lastGood?.ok) health = await collectHealth(lastGood.spec, new LiveProbe(new Redactor()), { distro: await detectDistro() });
      }
      const status = {
        node: settings?.node,
        stateDir,
        identity: identity ? { sealingKey: identity.sealingKey, signingKey: identity.signingKey } : null,
        applied: applied ?? null,
        inProgress: inProgress
          ? {
              specVersion: inProgress.specVersion,
              donePhases: inProgress.donePhases,
              phase: inProgress.current?.phase ?? null,
              step: inProgress.current ? inProgress.current.next + 1 : null,
              steps: inProgress.current?.steps.length ?? null,
              runs: inProgress.runs,
              interrupted: inProgress.current?.inFlight !== undefined,
              lastError: inProgress.lastError ?? null,
              updatedAt: inProgress.updatedAt,
            }
          : null,
        restore: restore ?? null,
        lifecycle: lifecycleOf(decommission, undefined),
        ...(values.health ? { health } : {}),
      };
      if (io.json) io.data(status);
      else {
        io.out(`node:        ${status.node ?? '(no agent.json)'}`);
        io.out(`state dir:   ${stateDir}`);
        io.out(`identity:    ${identity ? identity.sealingKey : 'none yet (made on first run)'}`);
        if (decommission) io.out(`lifecycle:   ${status.lifecycle.state}${status.lifecycle.safeToDelete ? ', safe to delete' : ''}${decommission.finishedAt ? ` (finished ${decommission.finishedAt})` : ''}${decommission.problems.length > 0 ? `: ${decommission.problems.join('; ')}` : ''}`);
        io.out(`applied:     ${applied ? `version ${applied.specVersion} at ${applied.appliedAt} (${applied.steps} steps)` : 'nothing yet'}`);
        if (status.inProgress) {
          const p = status.inProgress;
          io.out(`in progress: version ${p.specVersion}${p.phase ? `, phase ${p.phase} step ${p.step} of ${p.steps}` : ''}${p.interrupted ? ' (interrupted)' : ''}${p.lastError ? `, failed: ${p.lastError.message}` : ''}`);
        }
        if (restore) {
          io.out(`restore:     ${restore.state} ${restore.percent}% of ${formatBytes(restore.bytesTotal)} (${restore.source} backup ${restore.backupId ?? restore.backup} into ${restore.target})${restore.state === 'running' ? `, ${formatBytes(restore.rate)}/s, ETA ${restore.etaSeconds ?? '?'}s` : ''}${restore.error ? `: ${restore.error}` : ''}, at ${restore.updatedAt}`);
        }
        if (values.health) {
          const h = health as { ok?: boolean; problems?: string[] } | null;
          io.out(`health:      ${!h ? 'nothing applied yet' : h.ok ? 'ok' : `${h.problems?.length} problem(s)`}`);
          for (const p of h?.problems ?? []) io.out(`  ${p}`);
        }
      }
      return ExitCode.ok;
    },
  },

  identity: {
    summary: "print this host's public keys, making them on first use",
    usage: 'bosun identity [--state-dir DIR] [--json]',
    help: 'The x25519 key is what the control plane seals secrets to (bosun seal --to ...); the ed25519 key verifies this host\'s reports.',
    options: { ...common, ...stateOpts },
    async run({ values, io }) {
      const { stateDir } = await resolveState(values, false);
      const { identity, created } = await loadOrCreateIdentity(stateDir);
      if (io.json) io.data({ sealingKey: identity.sealingKey, signingKey: identity.signingKey, created });
      else {
        io.out(identity.sealingKey);
        io.out(identity.signingKey);
      }
      return ExitCode.ok;
    },
  },

  sign: {
    summary: 'wrap a spec in an envelope signed with a control-plane Ed25519 key (for control-plane tooling and tests)',
    usage: 'bosun sign <spec> --key <ed25519 private key PEM file> --key-id <id> [--json]',
    help: 'Validates the spec first; prints the envelope to put on bosun.desired with the node id as key.',
    options: { ...common, key: { type: 'string' }, 'key-id': { type: 'string' } },
    async run({ values, positionals, io }) {
      const file = single(positionals, 'sign needs exactly one spec file');
      if (typeof values.key !== 'string' || typeof values['key-id'] !== 'string') throw usage('sign needs --key and --key-id');
      const spec = await loadNodeSpec(file);
      const raw = JSON.parse(await readFile(file, 'utf8')) as unknown;
      const key = ed25519PrivateFromPem(await readFile(values.key));
      const envelope = signEnvelope(raw, values['key-id'], key);
      if (io.json) io.data({ key: spec.node, envelope });
      else io.out(JSON.stringify(envelope));
      return ExitCode.ok;
    },
  },

  lab: {
    summary: 'boot a 3-node cluster of VMs running the real agent, publish its desired state and watch it (source checkout only)',
    usage: 'bosun lab up|down|status',
    help: 'up: starts Kafka and MinIO (test/services), boots node-a/b/c under qemu, runs bosun in each and shows what they report.\ndown: stops the VMs and the services up started. Needs the source tree (test/lab), not an installed bosun.',
    options: { ...common },
    async run({ positionals }) {
      // Resolved at run time: the lab is test code and is not part of an installed bosun. From dist/src/cli.js
      // and from the bundle's dist/bundle/cli.js alike this is dist/test/lab.
      const where = new URL('../test/lab/bosun-lab.js', import.meta.url).href;
      const mod = (await import(where).catch(() => undefined)) as { labCommand(args: string[], out: NodeJS.WritableStream): Promise<number> } | undefined;
      if (!mod) throw usage('bosun lab needs the source tree (dist/test/lab); it is not part of an installed bosun');
      return mod.labCommand(positionals, process.stdout);
    },
  },

  backup: {
    summary: 'make an encrypted, verified backup of a directory in object storage, or a backup key pair',
    usage: 'bosun backup create <dir> --bucket B [--prefix P] (--to x25519:KEY | --key-file PEM) [--sign] [--endpoint URL] [--region R] [--json]\n       bosun backup keygen --out FILE [--json]',
    help: [
      'create: walks <dir>, cuts files into 4 MiB chunks, compresses (zstd) and encrypts (AES-256-GCM) each, uploads packs, then the',
      'manifest, then latest.json (format: src/backup/FORMAT.md). The data key is fresh per backup and sealed to the recipient key.',
      '  --to KEY        the backup key pair\'s public half (x25519:…, as printed by keygen)',
      '  --key-file PEM  or take the public half from the private key file',
      '  --sign          sign the manifest with this host\'s identity (a restore can require it with --trust)',
      '  --prefix P      the backup set inside the bucket (e.g. pg-main/)',
      '  --host LABEL    a label for the creating host in the manifest (default: agent.json node, else hostname)',
      'Store: --endpoint/--region, else agent.json objectStorage, else AWS_ENDPOINT_URL / AWS_REGION; credentials from',
      'agent.json objectStorage.credentialsFile, else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Credentials are never printed.',
      'Progress goes to stderr: a bar on a terminal, else a plain line every 5 s.',
      'keygen: writes a new X25519 backup key pair\'s private half to FILE (0600, refuses to overwrite) and prints its public half.',
    ].join('\n'),
    options: { ...common, ...stateOpts, bucket: { type: 'string' }, prefix: { type: 'string' }, to: { type: 'string' }, 'key-file': { type: 'string' }, sign: { type: 'boolean' }, endpoint: { type: 'string' }, region: { type: 'string' }, host: { type: 'string' }, out: { type: 'string' }, verbose: { type: 'boolean', short: 'v' } },
    async run({ values, positionals, io }) {
      const [sub, ...rest] = positionals;
      if (sub === 'keygen') {
        if (rest.length > 0) throw usage('backup keygen takes no positional arguments');
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
      if (sub !== 'create') throw usage('backup needs a subcommand: create or keygen');
      if (rest.length !== 1) throw usage('backup create needs exactly one directory');
      const source = rest[0]!;
      if (typeof values.bucket !== 'string') throw usage('backup create needs --bucket');
      if ((values.to === undefined) === (values['key-file'] === undefined)) throw usage('backup create needs exactly one of --to x25519:KEY or --key-file PEM');
      // The backup library and the S3 client load only for the commands that use them.
      const { ProgressPrinter, S3Transport, createBackup, createS3Client, formatBytes } = await import('./backup/index.js');
      const { parseBackupKey, readPrivateFile, resolveStore } = await import('./backup/store.js');
      const recipient = typeof values.to === 'string' ? x25519PublicFromString(values.to) : parseBackupKey(await readPrivateFile(values['key-file'] as string, 'backup key file'), 'backup key file').publicKey;
      const { settings, stateDir } = await resolveState(values, false);
      const redactor = new Redactor();
      const store = await resolveStore(settings?.objectStorage, storeFlags(values), redactor);
      const progress = new ProgressPrinter(process.stderr);
      const { logger } = createLogger({ redactor, target: 'stderr', level: values.verbose ? 'info' : 'warn' });
      const signer = values.sign ? (await loadOrCreateIdentity(stateDir)).identity : undefined;
      const client = createS3Client(store);
      try {
        const r = await createBackup({
          source,
          transport: new S3Transport({ client, bucket: values.bucket, prefix: (values.prefix as string | undefined) ?? '' }),
          recipient,
          ...(signer ? { signer } : {}),
          host: (values.host as string | undefined) ?? settings?.node ?? hostname(),
          logger,
          onProgress: (p) => progress.update(p),
        });
        progress.clear();
        if (io.json) io.data({ ok: true, ...r });
        else io.out(`backup ${r.backupId}: ${r.stats.files} files, ${formatBytes(r.stats.bytes)} (${formatBytes(r.stats.storedBytes)} stored in ${r.stats.packs} packs) in ${r.seconds.toFixed(1)}s`);
        return ExitCode.ok;
      } finally {
        progress.clear();
        client.destroy();
      }
    },
  },

  restore: {
    summary: 'restore a backup from object storage into a missing or empty directory: verified, resumable',
    usage: 'bosun restore <target> --bucket B [--prefix P] [--backup ID|latest] (--key-file PEM | --identity) [--bandwidth-limit MiB/s] [--marker FILE] [--json]',
    help: [
      'Fetches with many ranged GETs in flight, decrypts, decompresses and checks every chunk\'s SHA-256 before writing it. Writes into a',
      'staging directory (.<name>.bosun-restore beside a missing target, <target>/.bosun-restore in an empty one) and moves it into',
      'place only when every byte verified. Killed, it continues where it stopped when run again with the same arguments.',
      '  --key-file PEM         the backup key pair\'s private half (bosun backup keygen); must be 0600',
      '  --identity             the backup is sealed to this host\'s own key (state dir identity)',
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
      ...common,
      ...stateOpts,
      bucket: { type: 'string' },
      prefix: { type: 'string' },
      backup: { type: 'string' },
      'key-file': { type: 'string' },
      identity: { type: 'boolean' },
      'bandwidth-limit': { type: 'string' },
      concurrency: { type: 'string' },
      verify: { type: 'boolean' },
      trust: { type: 'string', multiple: true },
      marker: { type: 'string' },
      endpoint: { type: 'string' },
      region: { type: 'string' },
      verbose: { type: 'boolean', short: 'v' },
    },
    async run({ values, positionals, io }) {
      const target = single(positionals, 'restore needs exactly one target directory');
      if (typeof values.bucket !== 'string') throw usage('restore needs --bucket');
      const { ProgressPrinter, createS3Client, formatBytes, restoreFromObjectStorage, trustSigners } = await import('./backup/index.js');
      const { parseBackupKey, readPrivateFile, resolveStore } = await import('./backup/store.js');
      if ((values['key-file'] === undefined) === (values.identity === undefined)) throw usage('restore needs exactly one of --key-file PEM or --identity');
      const limit = positiveNumber(values['bandwidth-limit'], '--bandwidth-limit');
      const concurrency = positiveNumber(values.concurrency, '--concurrency');
      if (concurrency !== undefined && (!Number.isInteger(concurrency) || concurrency > 64)) throw usage('--concurrency is a whole number from 1 to 64');
      const trust = (values.trust as unknown as string[] | undefined) ?? [];
      for (const k of trust) if (!/^ed25519:[A-Za-z0-9_-]{43}$/.test(k)) throw usage(`--trust expects an Ed25519 key as printed by bosun identity (ed25519:…), not "${k}"`);
      const { settings, stateDir } = await resolveState(values, false);
      const redactor = new Redactor();
      let openDataKey: (sealed: string) => Buffer;
      if (typeof values['key-file'] === 'string') {
        const key = parseBackupKey(await readPrivateFile(values['key-file'], 'backup key file'), 'backup key file');
        openDataKey = (sealed) => key.open(sealed);
      } else {
        const id = await readIdentity(stateDir);
        if (!id) throw new BosunError('E_IDENTITY', `no host identity in ${stateDir} to open the backup with`);
        openDataKey = (sealed) => id.open(sealed);
      }
      const store = await resolveStore(settings?.objectStorage, storeFlags(values), redactor);
      const progress = new ProgressPrinter(process.stderr);
      const { logger } = createLogger({ redactor, target: 'stderr', level: values.verbose ? 'info' : 'warn' });
      const client = createS3Client(store);
      const abort = new AbortController();
      const onSignal = (): void => abort.abort(new BosunError('E_EXEC', 'interrupted; run the same command again to continue'));
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        const r = await restoreFromObjectStorage({
          client,
          bucket: values.bucket,
          prefix: (values.prefix as string | undefined) ?? '',
          backupId: (values.backup as string | undefined) ?? 'latest',
          target,
          openDataKey,
          logger,
          redactor,
          onProgress: (p) => progress.update(p),
          signal: abort.signal,
          ...(trust.length > 0 ? { verifyManifest: trustSigners(trust) } : {}),
          ...(limit !== undefined ? { bandwidthLimit: limit * 1024 * 1024 } : {}),
          ...(concurrency !== undefined ? { concurrency } : {}),
          ...(values.verify ? { verifyFiles: true } : {}),
          ...(typeof values.marker === 'string' ? { markerPath: values.marker } : {}),
        });
        progress.clear();
        if (io.json) io.data({ ok: true, ...r });
        else io.out(`restored backup ${r.backupId} into ${r.target}: ${r.files} files, ${formatBytes(r.bytes)} in ${r.seconds.toFixed(1)}s (${formatBytes(r.bytes / Math.max(r.seconds, 1e-3))}/s)${r.resumedChunks > 0 ? `, continuing an interrupted restore (${r.resumedChunks} chunks were already in place)` : ''}${r.retries > 0 ? `; ${r.retries} failed requests to the store were retried` : ''}`);
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
  },

  seal: {
    summary: "seal a secret read from stdin to a host's public key",
    usage: 'printf %s "$SECRET" | bosun seal --to x25519:... [--json]',
    help: 'The secret is read from stdin, never from the command line (argv is visible to every local user). Prints {"sealed": "..."} ready to paste into a spec.',
    options: { ...common, to: { type: 'string' } },
    async run({ values, io }) {
      if (typeof values.to !== 'string') throw usage('seal needs --to <x25519 public key>');
      const recipient = x25519PublicFromString(values.to);
      if (process.stdin.isTTY) throw usage('seal reads the secret from stdin; pipe it in');
      const chunks: Buffer[] = [];
      for await (const c of process.stdin) chunks.push(c as Buffer);
      const secret = Buffer.concat(chunks);
      if (secret.length === 0) throw usage('nothing to seal: stdin was empty');
      const sealed = { sealed: seal(recipient, secret) };
      secret.fill(0);
      if (io.json) io.data(sealed);
      else io.out(JSON.stringify(sealed));
      return ExitCode.ok;
    },
  },
};

function usage(message: string): BosunError {
  return new BosunError('E_USAGE', message);
}

function positiveNumber(v: unknown, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || !Number.isFinite(n) || n <= 0) throw usage(`${flag} expects a positive number`);
  return n;
}

function storeFlags(values: Record<string, unknown>): { endpoint?: string; region?: string } {
  return { ...(typeof values.endpoint === 'string' ? { endpoint: values.endpoint } : {}), ...(typeof values.region === 'string' ? { region: values.region } : {}) };
}

function single(positionals: string[], message: string): string {
  if (positionals.length !== 1) throw usage(message);
  return positionals[0]!;
}

async function pickDistro(name: string | undefined): Promise<Distro> {
  if (name === undefined) return detectDistro();
  if (!isDistroId(name)) throw usage(`--distro is one of ${Object.keys(DISTROS).join(', ')}`);
  return DISTROS[name];
}

/** agent.json (required for the daemon; used when present otherwise) and the state dir to use. */
async function resolveState(values: Record<string, unknown>, settingsRequired: boolean): Promise<{ settings?: AgentSettings; stateDir: string }> {
  const explicit = (values.settings as string | undefined) ?? (process.env.BOSUN_SETTINGS || undefined);
  const file = explicit ?? DEFAULT_SETTINGS;
  let settings: AgentSettings | undefined;
  try {
    settings = await loadAgentSettings(file);
  } catch (e) {
    const missing = isBosunError(e) && e.code === 'E_READ';
    if (!missing || explicit !== undefined || settingsRequired) throw e;
  }
  const stateDir = (values['state-dir'] as string | undefined) ?? process.env.BOSUN_STATE_DIR ?? settings?.stateDir ?? DEFAULT_STATE_DIR;
  return { settings, stateDir };
}

function topHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  return [
    'bosun: lays out disks, the IPsec mesh and the service container of this host, restores its data,',
    'and keeps it at the desired state it receives over Kafka.',
    '',
    'usage: bosun <command> [options]   (bosun <command> --help for more)',
    '',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    'exit codes: 0 ok, 1 failed, 2 usage, 3 invalid input, 4 not implemented yet, 5 locked by another bosun, 6 refused: the host is not what the spec expects',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const io: Output = {
    json,
    out: (t) => void process.stdout.write(t + '\n'),
    data: (v) => void process.stdout.write(JSON.stringify(v, null, 2) + '\n'),
  };
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.out(topHelp());
    return name === undefined ? ExitCode.usage : ExitCode.ok;
  }
  const cmd = COMMANDS[name];
  try {
    if (!cmd) throw usage(`unknown command "${name}"; try bosun --help`);
    let parsed;
    try {
      parsed = parseArgs({ args: rest, options: cmd.options, allowPositionals: true, strict: true });
    } catch (e) {
      throw usage(`${describeError(e)}\nusage: ${cmd.usage}`);
    }
    if (parsed.values.help) {
      io.out(`usage: ${cmd.usage}\n\n${cmd.summary}.\n${cmd.help}`);
      return ExitCode.ok;
    }
    return await cmd.run({ values: parsed.values as Record<string, string | boolean | undefined>, positionals: parsed.positionals, io });
  } catch (e) {
    return reportError(e, io);
  }
}

function reportError(e: unknown, io: Output): number {
  const err = isBosunError(e) ? e : new BosunError('E_EXEC', `unexpected error: ${describeError(e)}`);
  const problems = (err.details.problems as Problem[] | undefined) ?? [];
  if (io.json) io.data({ ok: false, error: { code: err.code, message: err.message, details: err.details } });
  else {
    process.stderr.write(`bosun: ${err.message}\n`);
    for (const p of problems) process.stderr.write(`  ${p.path}: ${p.message}\n`);
    if (!isBosunError(e) && process.env.BOSUN_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`);
  }
  return err.exitCode;
}

process.exitCode = await main(process.argv.slice(2));
