import { chown } from 'node:fs/promises';
import { BosunError } from '../../errors.js';
import type { Redactor } from '../../secrets/redact.js';
import { runCommand } from '../../host/exec.js';
import { writeFileAtomic } from '../../host/files.js';
import type { Logger } from '../../log.js';
import { errnoOf } from '../errors.js';
import { readJournal, removeJournal, writeJournal } from '../journal.js';
import { chooseLayout, clearStaging, commitLayout, ensureStaging } from '../target.js';
import { PeerRestoreError } from './client.js';

/**
 * The alternative peer method: a service's own tool copies the data from the
 * peer (e.g. `pg_basebackup -h {peerAddress} -D {target} -X stream`). bosun
 * only substitutes the placeholders, runs the command (argv, no shell) into
 * the same staging directory as every other restore, and commits and marks it
 * only when the command exited 0. Such tools cannot resume, so an
 * interrupted run starts over.
 *
 * Placeholders, anywhere inside an argument: {peer} (node name),
 * {peerAddress} (mesh address), {target} (the directory the tool must fill: the
 * staging directory, empty), {node} (this node's name). "{{" and "}}" are
 * literal braces. Any other {name} is an error, so a typo cannot reach the tool.
 */
export interface RestoreCommandVars {
  peer: string;
  peerAddress: string;
  target: string;
  node?: string;
}

const PLACEHOLDER = /\{\{|\}\}|\{([A-Za-z]*)\}|[{}]/g;

export function substituteRestoreCommand(argv: readonly string[], vars: RestoreCommandVars): string[] {
  if (argv.length === 0) throw new BosunError('E_INVALID_SPEC', 'the restore command is empty');
  const table: Record<string, string | undefined> = { peer: vars.peer, peerAddress: vars.peerAddress, target: vars.target, node: vars.node };
  return argv.map((arg, i) =>
    arg.replace(PLACEHOLDER, (m, name: string | undefined) => {
      if (m === '{{') return '{';
      if (m === '}}') return '}';
      const v = name !== undefined && name !== '' ? table[name] : undefined;
      if (v === undefined)
        throw new BosunError(
          'E_INVALID_SPEC',
          `restore command argument ${i} ("${arg}"): unknown placeholder ${m}; expected {peer}, {peerAddress}, {target} or {node} (write {{ and }} for literal braces)`,
        );
      return v;
    }),
  );
}

export interface CommandRestoreOptions {
  /** argv with placeholders */
  argv: readonly string[];
  peer: string;
  peerAddress: string;
  node?: string;
  target: string;
  markerPath?: string;
  /** more fields for the marker (the restore phase's format and source) */
  markerExtra?: Record<string, unknown>;
  redactor: Redactor;
  logger?: Logger;
  timeoutSeconds?: number;
  /** owner of the staging directory, for a tool that runs as the service's user */
  owner?: { uid: number; gid: number };
}

export interface CommandRestoreResult {
  target: string;
  argv: string[];
  seconds: number;
}

const COMMAND_ID = 'command';

/** Run a service's restore command into staging, then commit and mark the restore. */
export async function restoreWithCommand(options: CommandRestoreOptions): Promise<CommandRestoreResult> {
  const started = performance.now();
  const details = { peer: options.peer, address: options.peerAddress };
  let layout;
  try {
    layout = await chooseLayout(options.target);
  } catch (e) {
    throw new PeerRestoreError('target', 'target', false, e instanceof Error ? e.message : String(e), details, { cause: e });
  }
  const argv = substituteRestoreCommand(options.argv, {
    peer: options.peer,
    peerAddress: options.peerAddress,
    target: layout.staging,
    ...(options.node !== undefined ? { node: options.node } : {}),
  });
  const earlier = await readJournal(layout.journal);
  if (earlier?.backupId === COMMAND_ID && earlier.state === 'committing') {
    options.logger?.info({ target: options.target }, 'restore command: finishing the commit of an earlier run');
  } else {
    if (earlier) options.logger?.warn({ previous: earlier.backupId }, 'restore command: starting over (an interrupted copy cannot be continued)');
    await clearStaging(layout);
    await ensureStaging(layout);
    if (options.owner) await chown(layout.staging, options.owner.uid, options.owner.gid);
    await writeJournal(layout.journal, { backupId: COMMAND_ID, manifestDigest: '', chunks: 0, done: '', state: 'fetching' });
    options.logger?.info({ argv: options.redactor.redact(JSON.stringify(argv)), target: options.target }, 'restore command: running');
    try {
      await runCommand(argv, options.redactor, { timeoutSeconds: options.timeoutSeconds ?? 24 * 3600 });
    } catch (e) {
      throw new PeerRestoreError(
        'transport',
        'transfer',
        true,
        `the restore command against ${options.peer} failed: ${e instanceof Error ? e.message : String(e)}`,
        details,
        { cause: e },
      );
    }
    await runCommand(['sync', '-f', layout.staging], options.redactor, { check: false }).catch(() => undefined);
    await writeJournal(layout.journal, { backupId: COMMAND_ID, manifestDigest: '', chunks: 0, done: '', state: 'committing' });
  }
  await commitLayout(layout);
  if (options.markerPath) {
    const marker = { ...options.markerExtra, method: 'command', peer: options.peer, target: options.target, completedAt: new Date().toISOString() };
    await writeFileAtomic(options.markerPath, JSON.stringify(marker) + '\n', { mode: 0o644 });
  }
  await removeJournal(layout.journal).catch((e: unknown) => {
    if (errnoOf(e) !== 'ENOENT') throw e;
  });
  return { target: options.target, argv, seconds: (performance.now() - started) / 1000 };
}
