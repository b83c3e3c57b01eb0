import { readFile } from 'node:fs/promises';
import type { z } from 'zod';
import { BosunError, type ErrorCode } from '../errors.js';
import { NodeSpec } from './node-spec.js';
import { AgentSettings } from './agent-settings.js';

/** One problem in an input document, located by its path. */
export interface Problem {
  path: string;
  message: string;
}

/** `disks.raid.level`, `network.ipsec.peers[1].address`; `(root)` for the document itself. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out === '' ? String(seg) : `.${String(seg)}`;
  }
  return out === '' ? '(root)' : out;
}

/**
 * Turn zod issues into problems a person can act on. Messages never quote the
 * offending value: it may be a secret pasted into the wrong field.
 */
export function toProblems(error: z.ZodError): Problem[] {
  const problems: Problem[] = [];
  for (const issue of error.issues) {
    const path = formatPath(issue.path);
    switch (issue.code) {
      case 'invalid_type': {
        const missing = /received undefined/.test(issue.message);
        const custom = !issue.message.startsWith('Invalid input');
        problems.push({ path, message: missing ? `required (expected ${issue.expected})` : custom ? issue.message : `expected ${issue.expected}` });
        break;
      }
      case 'invalid_value':
        problems.push({ path, message: `expected one of ${issue.values.map((v) => (typeof v === 'string' ? `"${v}"` : String(v))).join(',')}` });
        break;
      case 'unrecognized_keys':
        for (const key of issue.keys) problems.push({ path: formatPath([...issue.path, key]), message: 'unknown field' });
        break;
      case 'invalid_union': {
        // Report the branch that got furthest, so a sealed secret with a typo says
        // what is wrong with it rather than "matched none of 2 shapes".
        const best = issue.errors
          .map((branch) => branch.map((i) => ({ ...i, path: [...issue.path, ...i.path] })))
          .sort((a, b) => depth(b) - depth(a) || a.length - b.length)[0];
        if (best && best.length > 0 && depth(best) > issue.path.length) {
          problems.push(...toProblems({ issues: best } as unknown as z.ZodError));
        } else {
          const expected = [
            ...new Set(
              issue.errors.flatMap((b) => b.filter((i) => i.code === 'invalid_type' && i.path.length === 0).map((i) => (i as { expected: string }).expected)),
            ),
          ];
          const generic = issue.message === 'Invalid input';
          problems.push({
            path,
            message: !generic ? lowerFirst(issue.message) : expected.length > 0 ? `expected ${expected.join(' or ')}` : 'does not match any allowed shape',
          });
        }
        break;
      }
      default:
        problems.push({ path, message: lowerFirst(issue.message) });
    }
  }
  return dedupe(problems);
}

function depth(issues: readonly z.core.$ZodIssue[]): number {
  return Math.max(0, ...issues.map((i) => i.path.length));
}

function lowerFirst(s: string): string {
  // "Too small" -> "too small", but an acronym such as "RAID" stays as written.
  return /^[A-Z][a-z]/.test(s) ? s[0]!.toLowerCase() + s.slice(1) : s;
}

function dedupe(problems: Problem[]): Problem[] {
  const seen = new Set<string>();
  return problems.filter((p) => {
    const k = `${p.path}\0${p.message}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

export type ParseResult<T> = { ok: true; value: T } | { ok: false; problems: Problem[] };

/**
 * Paths of every own "__proto__" key in a parsed document. JSON.parse makes such
 * a key an ordinary property, but copying it into a record (as zod does for
 * `z.record` fields such as config file settings) sets the copy's prototype
 * instead: the entry would vanish from the parsed spec without a word. So the
 * name is refused outright, wherever it appears.
 */
function protoKeys(input: unknown): (string | number)[][] {
  // Each visited value keeps a link to its parent, so a deeply nested document costs linear time and memory.
  interface Node {
    v: unknown;
    key: string | number | undefined;
    parent: Node | undefined;
  }
  const pathOf = (n: Node | undefined, last: string): (string | number)[] => {
    const out: (string | number)[] = [last];
    for (; n && n.key !== undefined; n = n.parent) out.push(n.key);
    return out.reverse();
  };
  const found: (string | number)[][] = [];
  const seen = new Set<object>();
  const stack: Node[] = [{ v: input, key: undefined, parent: undefined }];
  while (stack.length > 0) {
    const node = stack.pop()!;
    const value = node.v;
    if (typeof value !== 'object' || value === null || seen.has(value)) continue;
    seen.add(value);
    if (Array.isArray(value)) {
      value.forEach((item, i) => stack.push({ v: item, key: i, parent: node }));
      continue;
    }
    for (const key of Object.keys(value)) {
      if (key === '__proto__') found.push(pathOf(node, key));
      else stack.push({ v: (value as Record<string, unknown>)[key], key, parent: node });
    }
  }
  return found;
}

function parseWith<S extends z.ZodType>(schema: S, input: unknown): ParseResult<z.output<S>> {
  const proto = protoKeys(input).map((p) => ({ path: formatPath(p), message: 'the field name "__proto__" is not allowed' }));
  const r = schema.safeParse(input);
  if (proto.length === 0) return r.success ? { ok: true, value: r.data } : { ok: false, problems: toProblems(r.error) };
  const paths = new Set(proto.map((p) => p.path));
  return { ok: false, problems: [...proto, ...(r.success ? [] : toProblems(r.error).filter((p) => !paths.has(p.path)))] };
}

export const parseNodeSpec = (input: unknown): ParseResult<NodeSpec> => parseWith(NodeSpec, input);
export const parseAgentSettings = (input: unknown): ParseResult<AgentSettings> => parseWith(AgentSettings, input);

/** Parse JSON text; a syntax error becomes a problem at the document root with line and column. */
export function parseJsonText(text: string): ParseResult<unknown> {
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    const pos = /position (\d+)/.exec(msg);
    let where = '';
    if (pos) {
      const before = text.slice(0, Number(pos[1]));
      const line = before.split('\n').length;
      where = ` at line ${line}, column ${before.length - before.lastIndexOf('\n')}`;
    }
    return { ok: false, problems: [{ path: '(root)', message: `not valid JSON${where}` }] };
  }
}

async function loadFile<T>(file: string, parse: (v: unknown) => ParseResult<T>, code: ErrorCode, what: string): Promise<T> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    const reason = (e as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new BosunError('E_READ', `cannot read ${what} ${file}: ${reason}`, { file });
  }
  const json = parseJsonText(text);
  const r = json.ok ? parse(json.value) : json;
  if (!r.ok) {
    throw new BosunError(code, `${what} ${file} is invalid (${r.problems.length} problem${r.problems.length === 1 ? '' : 's'})`, {
      file,
      problems: r.problems,
    });
  }
  return r.value;
}

export const loadNodeSpec = (file: string): Promise<NodeSpec> => loadFile(file, parseNodeSpec, 'E_INVALID_SPEC', 'spec');
export const loadAgentSettings = (file: string): Promise<AgentSettings> => loadFile(file, parseAgentSettings, 'E_INVALID_SETTINGS', 'settings');
