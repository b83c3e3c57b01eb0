// Running the real agent's `bosun apply` in a lab guest, and cutting the
// guest's power while it runs: shared by the disks and faults lab tests.
import assert from 'node:assert/strict';
import { seal, x25519PublicFromString } from '../../src/identity/seal.js';
import { GUEST_BOSUN, type Vm } from './driver.js';

export const SPEC_PATH = '/root/spec.json';

export interface ApplyResult {
  code: number;
  out: Record<string, unknown>;
  /** stderr and stdout together: with --json an error is on stdout */
  stderr: string;
  ms: number;
}

/** The parts of the engine's journal (src/state/journal.ts) these tests look at. */
export interface JournalView {
  format?: number;
  specVersion?: number;
  donePhases: string[];
  stepsDone?: number;
  runs?: number;
  bootId?: string;
  current?: { phase: string; next: number; inFlight?: number; steps: GuestStep[] };
}

export interface GuestStep {
  kind: string;
  phase?: string;
  argv?: string[];
  path?: string;
  unit?: string;
  action?: string;
}

/** A shell script in the guest; fails the test with its stderr unless it exits 0. */
export async function guestSh(vm: Vm, script: string, timeoutMs = 120_000): Promise<string> {
  const r = await vm.exec(['sh', '-c', script], { timeoutMs });
  assert.equal(r.exitCode, 0, `${script}\n${r.stderr}`);
  return r.stdout.trim();
}

/** Seal secrets to this guest's sealing key (the host identity lives on the root overlay): one `bosun identity` for all. */
export async function sealTo(vm: Vm, ...secrets: string[]): Promise<{ sealed: string }[]> {
  const r = await vm.exec([...GUEST_BOSUN, 'identity', '--json']);
  assert.equal(r.exitCode, 0, r.stderr);
  const key = x25519PublicFromString((JSON.parse(r.stdout) as { sealingKey: string }).sealingKey);
  return secrets.map((s) => ({ sealed: seal(key, Buffer.from(s)) }));
}

/** Keep the spec on the root overlay, where a reboot or a power cut does not erase it. */
export async function writeSpec(vm: Vm, spec: unknown): Promise<void> {
  const w = await vm.exec(['sh', '-c', `cat > ${SPEC_PATH} && sync`], { stdin: JSON.stringify(spec) });
  assert.equal(w.exitCode, 0, w.stderr);
}

export async function applyIn(vm: Vm, spec: unknown, extra: string[] = []): Promise<ApplyResult> {
  await writeSpec(vm, spec);
  const t = Date.now();
  const r = await vm.exec([...GUEST_BOSUN, 'apply', SPEC_PATH, '--json', ...extra], { timeoutMs: 600_000 });
  return {
    code: r.exitCode ?? -1,
    out: r.stdout.trim() ? (JSON.parse(r.stdout) as Record<string, unknown>) : {},
    stderr: `${r.stderr}\n${r.stdout}`,
    ms: Date.now() - t,
  };
}

/** The guest's apply journal: undefined when there is none; `{ unreadable }` when it is not JSON. */
export async function readGuestJournal(vm: Vm, stateDir = '/var/lib/bosun'): Promise<JournalView | undefined | { unreadable: string }> {
  // cat alone, no shell: applyThenCut polls this while the apply it watches runs on the same vCPU.
  const r = await vm.exec(['cat', `${stateDir}/journal.json`], { timeoutMs: 30_000 });
  if (r.stdout.trim() === '') return undefined;
  try {
    return JSON.parse(r.stdout) as JournalView;
  } catch {
    return { unreadable: r.stdout.slice(0, 400) };
  }
}

/** "disks step 4/9 mdadm --create …" for a person reading the results. */
export function describeJournalPoint(j: JournalView | undefined): string {
  if (!j) return 'no journal (before the first write, or after completion)';
  const cur = j.current;
  if (!cur) return `between stages (done: ${j.donePhases.join(', ') || 'none'})`;
  if (cur.inFlight === undefined && cur.next >= cur.steps.length) return `${cur.phase}: all ${cur.steps.length} steps done, stage not yet marked finished`;
  const step = cur.steps[cur.inFlight ?? cur.next];
  const what = !step
    ? 'end of stage'
    : step.argv
      ? step.argv.slice(0, 3).join(' ')
      : step.path
        ? `${step.kind} ${step.path}`
        : step.unit
          ? `${step.action ?? step.kind} ${step.unit}`
          : step.kind;
  return `${cur.phase} step ${(cur.inFlight ?? cur.next) + 1}/${cur.steps.length}${cur.inFlight !== undefined ? ' (running)' : ''}: ${what}`;
}

export interface CutResult {
  /** the journal as last seen by polling, just before the cut */
  seen: JournalView | undefined;
  /** ms from launching `bosun apply` to the cut */
  cutAfterMs: number;
  /** the apply had already exited when the power went */
  finishedFirst: boolean;
  /** the apply's log (stdout and stderr) up to the cut */
  log: string;
}

/**
 * Launch `bosun apply` of the spec at SPEC_PATH in the guest, poll its journal,
 * and cut the power (SIGKILL to qemu) once `when` holds, `jitterMs` later.
 * `when` also sees the apply's log so far (it says how many steps it plans).
 * Returns what the journal said last; the VM is off afterwards.
 */
export async function applyThenCut(
  vm: Vm,
  when: (journal: JournalView | undefined, elapsedMs: number, log: string) => boolean,
  opts: { jitterMs?: number | ((log: string) => number); deadlineMs?: number; pollMs?: number } = {},
): Promise<CutResult> {
  const t0 = Date.now();
  let finished = false;
  let log = '';
  const running = vm.exec([...GUEST_BOSUN, 'apply', SPEC_PATH], { timeoutMs: 600_000, onOutput: (_fd, data) => (log += data.toString('utf8')) }).then(
    () => (finished = true),
    () => undefined,
  );
  let seen: JournalView | undefined;
  const deadline = t0 + (opts.deadlineMs ?? 300_000);
  for (;;) {
    const j = await readGuestJournal(vm);
    if (j && !('unreadable' in j)) seen = j;
    if (finished || when(seen, Date.now() - t0, log) || Date.now() > deadline) break;
    // Every poll is a process in the guest, on the vCPU the apply needs: 2 a second, not 4.
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 500));
  }
  const jitter = typeof opts.jitterMs === 'function' ? opts.jitterMs(log) : (opts.jitterMs ?? 0);
  if (jitter > 0) await new Promise((r) => setTimeout(r, jitter));
  const cutAfterMs = Date.now() - t0;
  const finishedFirst = finished;
  await vm.powerCut();
  void running;
  return { seen, cutAfterMs, finishedFirst, log };
}

/** "applying version 1: about 23 steps in 6 phases" → 23 */
export function plannedSteps(log: string): number | undefined {
  const m = /about (\d+) steps in \d+ phases/.exec(log);
  return m ? Number(m[1]) : undefined;
}
