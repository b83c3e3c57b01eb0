#!/usr/bin/env node
import { readFile } from 'node:fs/promises';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { Agent, AGENT_VERSION } from './agent.js';
import { ed25519PrivateFromPem, signEnvelope } from './bus/envelope.js';
import { applySpec } from './engine/apply.js';
import { collectHealth } from './health/collect.js';
import { scheduleHealth } from './health/schedule.js';
import { serveMetrics } from './health/metrics.js';
import { Journal } from './engine/journal.js';
import { Redactor } from './engine/redact.js';
import { planToJson, renderPlanText } from './engine/render.js';
import { BosunError, ExitCode, describeError, isBosunError } from './errors.js';
import { BlankProbe, DISTROS, Host, LiveProbe, detectDistro, isDistroId, type Distro } from './host/index.js';
import { loadOrCreateIdentity, readIdentity } from './identity/host-identity.js';
import { seal, x25519PublicFromString } from './identity/seal.js';
import { createLogger } from './log.js';
import { createNotifier } from './host/notify.js';
import { planNode } from './phases/index.js';
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
    usage: 'bosun plan <spec> [--blank] [--distro fedora|debian] [--content] [--json]',
    help: [
      'Observes this host read-only (files, unit states) and prints every command with its argv and every',
      'file with its path and mode, in order, with why. Secrets print as <redacted:...>.',
      '  --blank    plan as for a blank host, without looking at this one',
      '  --distro   plan for this distribution instead of the one detected',
      '  --content  also print the content of every file written',
    ].join('\n'),
    options: { ...common, blank: { type: 'boolean' }, distro: { type: 'string' }, content: { type: 'boolean' } },
    async run({ values, positionals, io }) {
      const file = single(positionals, 'plan needs exactly one spec file');
      const spec = await loadNodeSpec(file);
      const distro = await pickDistro(values.distro as string | undefined);
      const redactor = new Redactor();
      const probe = values.blank ? new BlankProbe() : new LiveProbe(redactor);
      const steps = await planNode(spec, probe, { distro });
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
      const outcome = await applySpec({
        spec,
        stateDir,
        host: new Host({ redactor, root }),
        probe: new LiveProbe(redactor, root ?? ''),
        ctx: { distro: await pickDistro(values.distro as string | undefined) },
        identity,
        logger,
      });
      if (io.json) io.data({ ok: true, ...outcome });
      else io.out(`version ${outcome.specVersion}: ${outcome.result === 'unchanged' ? 'nothing to do' : `${outcome.steps} steps applied${outcome.resumedAt !== undefined ? ` (resumed at phase ${outcome.resumedAt})` : ''}`}`);
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
      const redactor = new Redactor();
      const { logger, sink } = createLogger({ redactor, level: settings!.log.level });
      const { identity, created } = await loadOrCreateIdentity(stateDir);
      logger.info({ node: settings!.node, sealingKey: identity.sealingKey, signingKey: identity.signingKey, logSink: sink, identityCreated: created }, `bosun ${AGENT_VERSION} starting on node ${settings!.node}`);
      // systemd: STATUS= while the boot phases run, READY=1 when they are done, WATCHDOG=1 while the loop is sound.
      const notify = createNotifier({ onError: (m) => logger.warn(m) });
      const START_EXTEND_USEC = String(15 * 60 * 1_000_000);
      const probe = new LiveProbe(redactor);
      const ctx = { distro: await detectDistro() };
      let ready = false;
      const onProgress = (text: string) => void notify.send(ready ? { STATUS: text } : { STATUS: text, EXTEND_TIMEOUT_USEC: START_EXTEND_USEC });
      const agent = new Agent({ settings: settings!, stateDir, identity, host: new Host({ redactor }), probe, ctx, logger, redactor, onProgress });
      const stopWatchdog = notify.startWatchdog(
        () => agent.healthy(),
        () => logger.error('the main loop is not healthy; no longer feeding the systemd watchdog, which will restart bosun'),
      );
      await notify.status('starting: converging to the last good spec');
      await agent.start();
      ready = true;
      await notify.ready(agent.summary());
      logger.info({ watchdogMs: notify.watchdogMs ?? null, systemd: notify.enabled }, `ready: ${agent.summary()}`);
      const m = settings!.metrics;
      const metrics = m ? await serveMetrics({ host: m.listen.slice(0, m.listen.lastIndexOf(':')).replace(/^\[|\]$/g, ''), port: Number(m.listen.slice(m.listen.lastIndexOf(':') + 1)) }, () => agent.metrics()) : undefined;
      const health = scheduleHealth(agent.lastGood?.health.intervalSeconds ?? 30, async () => {
        const spec = agent.lastGood;
        if (spec) await agent.report(await collectHealth(spec, probe, ctx));
      });
      await new Promise<void>((resolve) => {
        process.once('SIGTERM', resolve);
        process.once('SIGINT', resolve);
      });
      logger.info('stopping');
      await notify.stopping('stopping');
      stopWatchdog();
      await health.stop();
      metrics?.close();
      await agent.stop();
      return ExitCode.ok;
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
      const [applied, inProgress, identity] = await Promise.all([journal.readApplied(), journal.read(), readIdentity(stateDir)]);
      let health: Record<string, unknown> | null = null;
      if (values.health) {
        const lastGood = await readFile(journal.lastGoodSpecPath, 'utf8').catch(() => undefined);
        const parsed = lastGood === undefined ? undefined : parseNodeSpec(JSON.parse(lastGood));
        if (parsed?.ok) health = await collectHealth(parsed.value, new LiveProbe(new Redactor()), { distro: await detectDistro() });
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
        ...(values.health ? { health } : {}),
      };
      if (io.json) io.data(status);
      else {
        io.out(`node:        ${status.node ?? '(no agent.json)'}`);
        io.out(`state dir:   ${stateDir}`);
        io.out(`identity:    ${identity ? identity.sealingKey : 'none yet (made on first run)'}`);
        io.out(`applied:     ${applied ? `version ${applied.specVersion} at ${applied.appliedAt} (${applied.steps} steps)` : 'nothing yet'}`);
        if (status.inProgress) {
          const p = status.inProgress;
          io.out(`in progress: version ${p.specVersion}${p.phase ? `, phase ${p.phase} step ${p.step} of ${p.steps}` : ''}${p.interrupted ? ' (interrupted)' : ''}${p.lastError ? `, failed: ${p.lastError.message}` : ''}`);
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
      // Resolved at run time: the lab is test code and is not part of an installed bosun.
      const where = new URL('../test/lab/bosun-lab.js', import.meta.url).href;
      const mod = (await import(where).catch(() => undefined)) as { labCommand(args: string[], out: NodeJS.WritableStream): Promise<number> } | undefined;
      if (!mod) throw usage('bosun lab needs the source tree (dist/test/lab); it is not part of an installed bosun');
      return mod.labCommand(positionals, process.stdout);
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
  const explicit = (values.settings as string | undefined) ?? process.env.BOSUN_SETTINGS;
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
