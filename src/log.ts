import { createRequire } from 'node:module';
import { pino, type Logger } from 'pino';
import type { SecretScrubber } from './host/exec.js';

export type { Logger } from 'pino';
export type LogTarget = 'auto' | 'journald' | 'stdout' | 'stderr';

/** The methods of the systemd-journald binding bosun uses, one per syslog priority. */
interface JournaldBinding {
  emerg(msg: string, fields?: Record<string, string>): void;
  alert(msg: string, fields?: Record<string, string>): void;
  crit(msg: string, fields?: Record<string, string>): void;
  err(msg: string, fields?: Record<string, string>): void;
  warning(msg: string, fields?: Record<string, string>): void;
  notice(msg: string, fields?: Record<string, string>): void;
  info(msg: string, fields?: Record<string, string>): void;
  debug(msg: string, fields?: Record<string, string>): void;
}

export interface LoggerOptions {
  level?: string;
  redactor: SecretScrubber;
  target?: LogTarget;
  /** where to say that the journald binding could not load (once); stderr by default */
  warn?: (line: string) => void;
  /** inject a binding (tests); by default the native systemd-journald addon */
  loadJournald?: () => JournaldBinding;
}

export interface BosunLogger {
  logger: Logger;
  /** where lines actually go, after any fallback */
  sink: 'journald' | 'stdout' | 'stderr';
}

/** pino level number -> syslog priority, and the binding method that sets it. */
export function journalPriority(level: number): { priority: number; method: keyof JournaldBinding } {
  if (level >= 60) return { priority: 2, method: 'crit' };
  if (level >= 50) return { priority: 3, method: 'err' };
  if (level >= 40) return { priority: 4, method: 'warning' };
  if (level >= 30) return { priority: 6, method: 'info' };
  return { priority: 7, method: 'debug' };
}

/**
 * A pino record as journal fields: PHASE, SPEC_VERSION, STEP, ERROR_CODE ...
 * Journal field names are upper-case letters, digits and underscores and must
 * not start with an underscore (those are trusted fields journald sets itself).
 */
export function toJournalFields(record: Record<string, unknown>): {
  message: string;
  priority: number;
  method: keyof JournaldBinding;
  fields: Record<string, string>;
} {
  const { level, msg, time: _time, pid: _pid, hostname: _hostname, ...rest } = record;
  const { priority, method } = journalPriority(typeof level === 'number' ? level : 30);
  const fields: Record<string, string> = {};
  for (const [k, v] of Object.entries(rest)) {
    if (v === undefined) continue;
    const name = k
      .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
      .toUpperCase()
      .replace(/[^A-Z0-9_]/g, '_')
      .replace(/^_+/, '');
    if (name === '' || name === 'PRIORITY' || name === 'MESSAGE' || name === 'SYSLOG_IDENTIFIER') continue;
    fields[name] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  return { message: typeof msg === 'string' ? msg : '', priority, method, fields };
}

function loadNativeJournald(): JournaldBinding {
  const require = createRequire(import.meta.url);
  const Journald = require('systemd-journald') as new (defaults: Record<string, string>) => JournaldBinding;
  return new Journald({ syslog_identifier: 'bosun' });
}

/**
 * Logging: JSON lines through pino. Under systemd (JOURNAL_STREAM is set) each
 * line goes to journald through the native binding with structured fields; if
 * the binding cannot load, that is said once and lines go to stdout, which
 * systemd also captures. Every line passes the redactor last, whatever put a
 * secret into it.
 */
export function createLogger(opts: LoggerOptions): BosunLogger {
  const warn = opts.warn ?? ((line: string) => process.stderr.write(line + '\n'));
  let target = opts.target ?? 'auto';
  if (target === 'auto') target = process.env.JOURNAL_STREAM ? 'journald' : 'stdout';
  const hooks = { streamWrite: (s: string) => opts.redactor.redact(s) };
  const base = { level: opts.level ?? 'info', base: { pid: process.pid }, hooks };

  if (target === 'journald') {
    try {
      const journal = (opts.loadJournald ?? loadNativeJournald)();
      const stream = {
        write(line: string) {
          try {
            const f = toJournalFields(JSON.parse(line) as Record<string, unknown>);
            journal[f.method](f.message, f.fields);
          } catch {
            process.stdout.write(line);
          }
        },
      };
      return { logger: pino(base, stream), sink: 'journald' };
    } catch (e) {
      warn(`bosun: journald logging unavailable (${e instanceof Error ? e.message.split('\n')[0] : String(e)}); logging to stdout instead`);
      target = 'stdout';
    }
  }
  const fd = target === 'stderr' ? 2 : 1;
  return { logger: pino(base, pino.destination({ fd, sync: true })), sink: target === 'stderr' ? 'stderr' : 'stdout' };
}
