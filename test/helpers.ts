import { spawn } from 'node:child_process';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Planner } from '../src/engine/apply.js';
import type { Step } from '../src/engine/step.js';
import { PHASES } from '../src/phases/index.js';
import type { NodeSpec } from '../src/spec/node-spec.js';
import { parseNodeSpec } from '../src/spec/validate.js';

/** The repository root, from the compiled location dist/test/helpers.js. */
export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
export const cliPath = join(repoRoot, 'dist/src/cli.js');
export const examplesDir = join(repoRoot, 'examples');
export const goldenDir = join(repoRoot, 'test/unit/golden');

/** One of examples/<node>.json, parsed (it must be valid). */
export async function loadExample(node: string): Promise<NodeSpec> {
  const r = parseNodeSpec(JSON.parse(await readFile(join(examplesDir, `${node}.json`), 'utf8')));
  assert.ok(r.ok);
  return r.value;
}

/** Compare with a pinned file under test/unit/golden; UPDATE_GOLDEN=1 rewrites it (review the diff before committing). */
export async function matchGolden(name: string, actual: string): Promise<void> {
  const file = join(goldenDir, name);
  if (process.env.UPDATE_GOLDEN === '1') await writeFile(file, actual);
  assert.equal(actual, await readFile(file, 'utf8'), `${name} differs from the pinned file; if the change is intended run with UPDATE_GOLDEN=1`);
}

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'bosun-test-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run a node script to completion, with optional stdin, bounded in time. */
export function runNode(args: string[], opts: { input?: string; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env: { ...process.env, JOURNAL_STREAM: '', ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.end(opts.input ?? '');
  });
}

export const runCli = (args: string[], opts: { input?: string; env?: Record<string, string> } = {}): Promise<Run> => runNode([cliPath, ...args], opts);

/** Poll until `check` is true or the deadline passes. */
export async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A planner that always plans the given steps, grouped by their phase (tests of the engine itself). */
export function fixedPlanner(steps: Step[]): Planner {
  return {
    phases: () => [...new Set(PHASES.map((phase) => phase.name))].filter((name) => steps.some((s) => s.phase === name)),
    plan: (_spec, phase) => Promise.resolve(steps.filter((s) => s.phase === phase)),
  };
}

/** The median of xs (the mean of the middle two for an even count). */
export function median(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
