#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { BosunError, ExitCode, describeError, isBosunError } from './errors.js';
import type { Problem } from './spec/validate.js';
import { applyCommand } from './cli/apply.js';
import { backupCommand } from './cli/backup.js';
import { usage, type Command, type Io, type OptionValues } from './cli/common.js';
import { identityCommand } from './cli/identity.js';
import { labCommand } from './cli/lab.js';
import { planCommand } from './cli/plan.js';
import { restoreCommand } from './cli/restore.js';
import { runCommand } from './cli/run.js';
import { sealCommand } from './cli/seal.js';
import { signCommand } from './cli/sign.js';
import { statusCommand } from './cli/status.js';
import { validateCommand } from './cli/validate.js';

/** Every command, in the order the top help lists them. */
const COMMANDS: Record<string, Command> = {
  validate: validateCommand,
  plan: planCommand,
  apply: applyCommand,
  run: runCommand,
  status: statusCommand,
  identity: identityCommand,
  sign: signCommand,
  lab: labCommand,
  backup: backupCommand,
  restore: restoreCommand,
  seal: sealCommand,
};

function topHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length));
  return [
    'bosun: lays out disks, the IPsec mesh and the service container of this host, restores its data,',
    'and keeps it at the desired state it receives over Kafka.',
    '',
    'usage: bosun <command> [options]   (bosun <command> --help for more)',
    '',
    ...Object.entries(COMMANDS).map(([name, command]) => `  ${name.padEnd(width)}  ${command.summary}`),
    '',
    'exit codes: 0 ok, 1 failed, 2 usage, 3 invalid input, 4 not implemented yet, 5 locked by another bosun, 6 refused: the host is not what the spec expects',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const io: Io = {
    json,
    out: (text) => void process.stdout.write(text + '\n'),
    data: (value) => void process.stdout.write(JSON.stringify(value, null, 2) + '\n'),
  };
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.out(topHelp());
    return name === undefined ? ExitCode.usage : ExitCode.ok;
  }
  const command = COMMANDS[name];
  try {
    if (!command) throw usage(`unknown command "${name}"; try bosun --help`);
    let parsed;
    try {
      parsed = parseArgs({ args: rest, options: command.options, allowPositionals: true, strict: true });
    } catch (e) {
      throw usage(`${describeError(e)}\nusage: ${command.usage}`);
    }
    if (parsed.values.help) {
      io.out(`usage: ${command.usage}\n\n${command.summary}.\n${command.help}`);
      return ExitCode.ok;
    }
    return await command.run({ values: parsed.values as OptionValues, positionals: parsed.positionals, io });
  } catch (e) {
    return reportError(e, io);
  }
}

function reportError(e: unknown, io: Io): number {
  const err = isBosunError(e) ? e : new BosunError('E_EXEC', `unexpected error: ${describeError(e)}`);
  const problems = (err.details.problems as Problem[] | undefined) ?? [];
  if (io.json) io.data({ ok: false, error: { code: err.code, message: err.message, details: err.details } });
  else {
    process.stderr.write(`bosun: ${err.message}\n`);
    for (const problem of problems) process.stderr.write(`  ${problem.path}: ${problem.message}\n`);
    if (!isBosunError(e) && process.env.BOSUN_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`);
  }
  return err.exitCode;
}

process.exitCode = await main(process.argv.slice(2));
