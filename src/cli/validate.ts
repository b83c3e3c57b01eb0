import { readFile } from 'node:fs/promises';
import { ExitCode } from '../errors.js';
import { parseAgentSettings, parseJsonText, parseNodeSpec, type Problem } from '../spec/validate.js';
import { commonOptions, usage, type Command } from './common.js';

interface FileResult {
  file: string;
  ok: boolean;
  problems: Problem[];
  node?: string;
  version?: number;
}

export const validateCommand: Command = {
  summary: 'check a NodeSpec (or, with --kind settings, an agent.json) and list every problem by path',
  usage: 'bosun validate <file>... [--kind spec|settings] [--json]',
  help: 'Exit 0 when every file is valid, 3 when any is not. Nothing is changed.',
  options: { ...commonOptions, kind: { type: 'string' } },
  async run({ values, positionals, io }) {
    if (positionals.length === 0) throw usage('validate needs at least one file');
    const kind = (values.kind as string | undefined) ?? 'spec';
    if (kind !== 'spec' && kind !== 'settings') throw usage('--kind is "spec" or "settings"');
    const results: FileResult[] = [];
    for (const file of positionals) results.push(await validateFile(file, kind));
    if (io.json) io.data({ ok: results.every((result) => result.ok), files: results });
    else {
      for (const result of results) {
        if (result.ok) io.out(`${result.file}: valid (node ${result.node}${result.version !== undefined ? `, version ${result.version}` : ''})`);
        else {
          io.out(`${result.file}: invalid, ${result.problems.length} problem${result.problems.length === 1 ? '' : 's'}:`);
          for (const problem of result.problems) io.out(`  ${problem.path}: ${problem.message}`);
        }
      }
    }
    return results.every((result) => result.ok) ? ExitCode.ok : ExitCode.invalid;
  },
};

/** One file's verdict; a file that cannot be read is a problem of that file, not an error of the command. */
async function validateFile(file: string, kind: 'spec' | 'settings'): Promise<FileResult> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    return { file, ok: false, problems: [{ path: '(file)', message: `cannot read: ${(e as NodeJS.ErrnoException).code ?? 'error'}` }] };
  }
  const json = parseJsonText(text);
  const parsed = !json.ok ? json : kind === 'spec' ? parseNodeSpec(json.value) : parseAgentSettings(json.value);
  if (!parsed.ok) return { file, ok: false, problems: parsed.problems };
  const document = parsed.value as { node: string; version?: number };
  return { file, ok: true, problems: [], node: document.node, version: document.version };
}
