import type { ParseArgsConfig } from 'node:util';
import { BosunError, isBosunError } from '../errors.js';
import { DISTROS, detectDistro, isDistroId, type Distro } from '../host/index.js';
import type { AgentSettings } from '../spec/agent-settings.js';
import { loadAgentSettings } from '../spec/validate.js';

const DEFAULT_SETTINGS = '/etc/bosun/agent.json';
const DEFAULT_STATE_DIR = '/var/lib/bosun';

/** Where a command's output goes: text lines for people, or one JSON document with --json. */
export interface Io {
  json: boolean;
  out(text: string): void;
  data(value: unknown): void;
}

export type OptionValues = Record<string, string | boolean | undefined>;

/** One `bosun <command>`: its help, its options (node:util parseArgs), and what it does; resolves to the exit code. */
export interface Command {
  summary: string;
  usage: string;
  help: string;
  options: NonNullable<ParseArgsConfig['options']>;
  run(args: { values: OptionValues; positionals: string[]; io: Io }): Promise<number>;
}

/** Every command takes these. */
export const commonOptions = {
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** Commands that read agent.json or the state dir. */
export const stateOptions = {
  'state-dir': { type: 'string' },
  settings: { type: 'string' },
} as const;

/** Commands that reach a backup store: where the backups are, the store's endpoint, a key file, the progress line. */
export const storeOptions = {
  bucket: { type: 'string' },
  prefix: { type: 'string' },
  'key-file': { type: 'string' },
  endpoint: { type: 'string' },
  region: { type: 'string' },
  verbose: { type: 'boolean', short: 'v' },
} as const;

export function usage(message: string): BosunError {
  return new BosunError('E_USAGE', message);
}

export function single(positionals: string[], message: string): string {
  if (positionals.length !== 1) throw usage(message);
  return positionals[0]!;
}

/** --distro, else the distribution this host runs. */
export async function pickDistro(name: string | undefined): Promise<Distro> {
  if (name === undefined) return detectDistro();
  if (!isDistroId(name)) throw usage(`--distro is one of ${Object.keys(DISTROS).join(', ')}`);
  return DISTROS[name];
}

/** agent.json (required for the daemon; used when present otherwise) and the state dir to use. */
export async function resolveState(values: Record<string, unknown>, settingsRequired: boolean): Promise<{ settings?: AgentSettings; stateDir: string }> {
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

/** The store flags of backup create and restore (--endpoint, --region), for resolveStore. */
export function storeFlags(values: Record<string, unknown>): { endpoint?: string; region?: string } {
  return {
    ...(typeof values.endpoint === 'string' ? { endpoint: values.endpoint } : {}),
    ...(typeof values.region === 'string' ? { region: values.region } : {}),
  };
}
