import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { applyNode, type NodeApplyRequest } from '../../src/apply-node.js';
import { EXEC_STEP_TIMEOUT_SECONDS } from '../../src/engine/execute.js';
import { lastGoodSpecPath } from '../../src/state/applied.js';
import { Journal } from '../../src/state/journal.js';
import { Redactor } from '../../src/secrets/redact.js';
import type { Step } from '../../src/engine/step.js';
import { isBosunError } from '../../src/errors.js';
import { BlankProbe, DISTROS, Host } from '../../src/host/index.js';
import type { ExecOptions, ExecResult } from '../../src/host/exec.js';
import { loadOrCreateIdentity } from '../../src/identity/host-identity.js';
import { seal, x25519PublicFromString } from '../../src/identity/seal.js';
import { createLogger } from '../../src/log.js';
import { parseNodeSpec } from '../../src/spec/validate.js';
import type { NodeSpec } from '../../src/spec/node-spec.js';
import { fixedPlanner, repoRoot, runNode, waitFor, withTempDir } from '../helpers.js';

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );
const lines = async (p: string) => ((await readFile(p, 'utf8').catch(() => '')).match(/\n/g) ?? []).length;

function spec(version = 1): NodeSpec {
  const r = parseNodeSpec({ apiVersion: 'bosun/v1', cluster: 'test', node: 'node-a', version });
  assert.ok(r.ok);
  return r.value;
}

function request(stateDir: string, steps: Step[], extra: Partial<NodeApplyRequest> = {}): NodeApplyRequest & { logLines: string[] } {
  const redactor = extra.host?.redactor ?? new Redactor();
  const logLines: string[] = [];
  const { logger } = createLogger({
    redactor,
    target: 'journald',
    loadJournald: () => new Proxy({}, { get: () => (msg: string) => logLines.push(msg) }) as never,
  });
  return {
    spec: spec(),
    stateDir,
    host: new Host({ redactor }),
    probe: new BlankProbe(),
    ctx: { distro: DISTROS.fedora },
    logger,
    planner: fixedPlanner(steps),
    logLines,
    ...extra,
  };
}

const sh = (script: string, why = 'test'): Step => ({ kind: 'exec', phase: 'packages', argv: ['sh', '-c', script], why });

/** Run the fixture apply and SIGKILL it, with its whole process group (as a power cut would), while its blocking step runs. */
async function killApplyMidStep(state: string, dir: string): Promise<void> {
  const child = spawn(process.execPath, [join(repoRoot, 'dist/test/unit/fixtures/apply-child.js'), state, dir], { stdio: 'ignore', detached: true });
  const exited = new Promise((r) => child.on('exit', r));
  await waitFor('the blocking step to start', () => exists(`${dir}/step3.started`));
  process.kill(-child.pid!, 'SIGKILL');
  await exited;
}

describe('apply engine', () => {
  it('tells the planner the host changed before planning the phase after one that ran steps', async () => {
    await withTempDir(async (dir) => {
      const events: string[] = [];
      const inner = fixedPlanner([sh(`echo 1 >> ${dir}/order`), { kind: 'write', phase: 'auxiliary', path: `${dir}/f`, mode: 0o600, content: 'x', why: 'w' }]);
      const planner = {
        phases: (s: NodeSpec) => inner.phases(s),
        plan: (s: NodeSpec, p: Parameters<typeof inner.plan>[1]) => (events.push(`plan ${p}`), inner.plan(s, p)),
        changed: () => events.push('changed'),
      };
      await applyNode(request(join(dir, 'state'), [], { planner }));
      // first pass plans everything (nothing runs), then each phase with steps is announced before it runs
      assert.deepEqual(events, ['plan packages', 'plan auxiliary', 'changed', 'plan auxiliary', 'changed']);
    });
  });

  it('calls beforeServicePhases once, after the host is built and before the machine and the units after it start', async () => {
    await withTempDir(async (dir) => {
      const mark = (phase: Step['phase'], what: string): Step => ({ kind: 'exec', phase, argv: ['sh', '-c', `echo ${what} >> ${dir}/order`], why: what });
      const steps = [mark('disks', 'disks'), mark('restore', 'restore'), mark('container', 'machine'), mark('auxiliary', 'aux')];
      const hook = async () => writeFile(`${dir}/order`, 'ready\n', { flag: 'a' });
      await applyNode(request(join(dir, 'state'), steps, { beforeServicePhases: hook }));
      assert.equal(await readFile(`${dir}/order`, 'utf8'), 'disks\nrestore\nready\nmachine\naux\n');
      // a resumed apply past the container stage, or a spec without one, never calls it: the daemon sends READY after the apply then
      await applyNode(request(join(dir, 'state2'), [mark('disks', 'disks2')], { beforeServicePhases: hook }));
      assert.equal(await readFile(`${dir}/order`, 'utf8'), 'disks\nrestore\nready\nmachine\naux\ndisks2\n');
    });
  });

  it('runs steps in order, records the last good state and removes the journal', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      const out = await applyNode(
        request(state, [
          sh(`echo 1 >> ${dir}/order`),
          { kind: 'write', phase: 'auxiliary', path: `${dir}/f`, mode: 0o600, content: 'x', why: 'w' },
          sh(`echo 2 >> ${dir}/order`),
        ]),
      );
      assert.equal(out.result, 'applied');
      assert.equal(out.steps, 3);
      assert.equal(await readFile(`${dir}/order`, 'utf8'), '1\n2\n');
      assert.equal((await stat(`${dir}/f`)).mode & 0o777, 0o600);
      const j = new Journal(state);
      assert.equal(await j.read(), undefined);
      assert.equal((await j.readApplied())?.specVersion, 1);
      assert.equal((await stat(lastGoodSpecPath(state))).mode & 0o777, 0o600);
    });
  });

  it('reports per-phase durations: planning, time inside the steps, and the slowest step', async () => {
    await withTempDir(async (dir) => {
      const out = await applyNode(
        request(join(dir, 'state'), [
          sh('sleep 0.3', 'slow'),
          sh('true', 'fast'),
          { kind: 'write', phase: 'auxiliary', path: `${dir}/f`, mode: 0o600, content: 'x', why: 'w' },
        ]),
      );
      const t = out.timings;
      assert.ok(t, 'timings are reported');
      assert.deepEqual(
        t.phases.map((p) => [p.phase, p.steps]),
        [
          ['packages', 2],
          ['auxiliary', 1],
        ],
      );
      const pk = t.phases[0]!;
      assert.ok(pk.stepMs >= 280, `packages stepMs ${pk.stepMs}`);
      assert.ok(pk.ms >= pk.stepMs + pk.planMs, 'the phase lasts at least its planning plus its steps');
      assert.match(pk.slowest?.step ?? '', /sleep 0\.3/);
      assert.ok(pk.slowest!.ms >= 280);
      assert.ok(out.durationMs >= t.planMs + t.phases.reduce((n, p) => n + p.ms, 0) - 2);
      const again = await applyNode(request(join(dir, 'state2'), []));
      assert.deepEqual(again.timings?.phases, [], 'nothing ran: no phase timings');
    });
  });

  it('resumes after a SIGKILL mid-apply: finished phases are not run again, the interrupted one is planned afresh', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      await killApplyMidStep(state, dir);

      const journal = await new Journal(state).read();
      assert.ok(journal, 'journal must survive the kill');
      assert.deepEqual(journal.donePhases, ['packages']);
      assert.equal(journal.current?.phase, 'disks');
      assert.equal(journal.current?.next, 1, 'the first disks step is recorded as done');
      assert.equal(journal.current?.inFlight, 1, 'the second disks step is recorded as running');
      assert.equal(await exists(`${dir}/out/result.conf`), false);

      const status = await runNode([join(repoRoot, 'dist/src/cli.js'), 'status', '--state-dir', state, '--json']);
      assert.equal(status.code, 0, status.stderr);
      const p = (JSON.parse(status.stdout) as { inProgress: { phase: string; step: number; interrupted: boolean } }).inProgress;
      assert.deepEqual([p.phase, p.step, p.interrupted], ['disks', 2, true]);

      await writeFile(`${dir}/release`, '');
      const again = await runNode([join(repoRoot, 'dist/test/unit/fixtures/apply-child.js'), state, dir]);
      assert.equal(again.code, 0, again.stderr);
      const outcome = JSON.parse(again.stdout) as { result: string; resumedAt: string; steps: number };
      assert.equal(outcome.result, 'applied');
      assert.equal(outcome.resumedAt, 'disks');
      assert.equal(outcome.steps, 6, '2 steps before the kill, 4 after');
      assert.match(again.stderr, /resuming the unfinished apply of version 1 at phase disks \(stopped at its step 2 of 2, while running\)/);
      assert.equal(await lines(`${dir}/step1.log`), 1, 'the finished phase did not run again');
      assert.equal(await lines(`${dir}/step2.log`), 2, 'the interrupted phase was planned and run again');
      assert.equal(await lines(`${dir}/step3.log`), 2);
      assert.equal(await lines(`${dir}/step5.log`), 1);
      assert.equal(await readFile(`${dir}/out/result.conf`, 'utf8'), 'done\n');
      assert.equal(await new Journal(state).read(), undefined);
    });
  });

  it('after a restart of the host, finished stages are observed and run again: what they made at runtime is gone', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      await killApplyMidStep(state, dir);
      // Pretend the journal was written during an earlier boot.
      const j = JSON.parse(await readFile(join(state, 'journal.json'), 'utf8')) as { bootId: string };
      assert.match(j.bootId, /\S/);
      await writeFile(join(state, 'journal.json'), JSON.stringify({ ...j, bootId: 'an-earlier-boot' }));
      await writeFile(`${dir}/release`, '');
      const again = await runNode([join(repoRoot, 'dist/test/unit/fixtures/apply-child.js'), state, dir]);
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stderr, /the host restarted since this apply began: every stage is observed and run again/);
      assert.equal(await lines(`${dir}/step1.log`), 2, 'the finished phase ran again after the restart');
      assert.equal(await lines(`${dir}/step5.log`), 1);
    });
  });

  it('a failed step stops the apply, keeps the last good state, and the next run retries from that phase', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      const steps: Step[] = [
        sh(`echo ran >> ${dir}/s1`),
        { ...sh(`echo ran >> ${dir}/s2; [ -e ${dir}/fixed ] || { echo 'mirror timed out' >&2; exit 7; }`, 'flaky'), phase: 'disks' },
        { ...sh(`echo ran >> ${dir}/s3`), phase: 'auxiliary' },
      ];
      await assert.rejects(applyNode(request(state, steps)), (e) => {
        assert.ok(isBosunError(e));
        assert.equal(e.code, 'E_EXEC');
        assert.match(e.message, /disks step 1\/1 \(flaky\) failed: .*exited with 7: mirror timed out/);
        return true;
      });
      const j = new Journal(state);
      assert.equal(await j.readApplied(), undefined, 'nothing is recorded as applied');
      assert.deepEqual([(await j.read())?.lastError?.phase, (await j.read())?.donePhases], ['disks', ['packages']]);
      assert.equal(await lines(`${dir}/s3`), 0, 'no step after the failure ran');
      await writeFile(`${dir}/fixed`, '');
      const out = await applyNode(request(state, steps));
      assert.equal(out.resumedAt, 'disks');
      assert.deepEqual([await lines(`${dir}/s1`), await lines(`${dir}/s2`), await lines(`${dir}/s3`)], [1, 2, 1]);
    });
  });

  it('a command step that hangs fails with E_TIMEOUT after its limit (30 min when the phase set none); the last good state stays', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      const seen: (number | undefined)[] = [];
      class RecordingHost extends Host<Redactor> {
        override exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
          seen.push(opts.timeoutSeconds);
          return super.exec(argv, opts);
        }
      }
      const host = new RecordingHost({ redactor: new Redactor() });
      await applyNode(request(state, [sh('true')], { host }));
      assert.deepEqual(seen, [EXEC_STEP_TIMEOUT_SECONDS], 'a step without its own limit gets the default');
      assert.equal(EXEC_STEP_TIMEOUT_SECONDS, 1800);
      const started = Date.now();
      await assert.rejects(
        applyNode({
          ...request(
            state,
            [{ kind: 'exec', phase: 'packages', argv: ['sh', '-c', `echo started > ${dir}/hang; exec sleep 60`], why: 'a tool that hangs', timeoutSeconds: 1 }],
            { host },
          ),
          spec: spec(2),
        }),
        (e) => {
          assert.ok(isBosunError(e));
          assert.equal(e.code, 'E_TIMEOUT');
          assert.match(e.message, /packages step 1\/1 \(a tool that hangs\) failed: sh -c .*: timed out after 1s/);
          return true;
        },
      );
      assert.ok(Date.now() - started < 20_000, 'the hung command was killed, not waited for');
      assert.equal(await readFile(`${dir}/hang`, 'utf8'), 'started\n');
      assert.equal((await new Journal(state).readApplied())?.specVersion, 1, 'version 1 stays the last good state');
    });
  });

  it('a new spec abandons an unfinished plan and plans afresh', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      await assert.rejects(applyNode(request(state, [sh('exit 1')])));
      const r = request(state, [sh(`echo new >> ${dir}/new`)], { spec: spec(2) });
      const out = await applyNode(r);
      assert.equal(out.resumedAt, undefined);
      assert.equal(await lines(`${dir}/new`), 1);
      assert.ok(r.logLines.some((l) => /abandoning the unfinished apply of version 1/.test(l)));
    });
  });

  it('refuses an older version, and a changed spec under an applied version; nothing runs', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      await applyNode(request(state, [], { spec: spec(5) }));
      await assert.rejects(applyNode(request(state, [sh(`touch ${dir}/ran`)], { spec: spec(4) })), /version 4 is older than version 5/);
      const changed = { ...spec(5), cluster: 'other' };
      await assert.rejects(applyNode(request(state, [sh(`touch ${dir}/ran`)], { spec: changed })), /already applied with different content/);
      assert.equal(await exists(`${dir}/ran`), false);
      const same = await applyNode(request(state, [], { spec: spec(5) }));
      assert.equal(same.result, 'unchanged');
    });
  });

  it('refuses a plan with phases not implemented yet before changing anything', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      const steps: Step[] = [sh(`touch ${dir}/ran`), { kind: 'pending', phase: 'disks', issue: 5, why: 'make RAID' }];
      await assert.rejects(applyNode(request(state, steps)), (e) => isBosunError(e) && e.code === 'E_NOT_IMPLEMENTED' && /disks/.test(e.message));
      assert.equal(await exists(`${dir}/ran`), false);
      assert.equal(await new Journal(state).read(), undefined);
    });
  });

  it('opens sealed secrets only at execution time and keeps them out of errors, logs and the journal', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      const { identity } = await loadOrCreateIdentity(state);
      const secretValue = 'psk-0123456789-abcdef';
      const sealed = { sealed: seal(x25519PublicFromString(identity.sealingKey), Buffer.from(secretValue)) };
      const steps: Step[] = [
        {
          kind: 'write',
          phase: 'network',
          path: `${dir}/ipsec.secrets`,
          mode: 0o600,
          content: [': PSK "', { secret: sealed, label: 'network.ipsec.peers[0].psk' }, '"\n'],
          why: 'psk file',
        },
        {
          kind: 'exec',
          phase: 'network',
          argv: ['sh', '-c', 'k=$(cat); echo "bad key $k" >&2; exit 3'],
          stdin: [{ secret: sealed, label: 'psk' }],
          why: 'a tool that echoes its input',
        },
      ];
      const req = request(state, steps, { identity });
      let message = '';
      await assert.rejects(applyNode(req), (e) => ((message = (e as Error).message), true));
      assert.equal(await readFile(`${dir}/ipsec.secrets`, 'utf8'), `: PSK "${secretValue}"\n`);
      assert.equal((await stat(`${dir}/ipsec.secrets`)).mode & 0o777, 0o600);
      assert.match(message, /bad key <redacted>/);
      const journalText = await readFile(join(state, 'journal.json'), 'utf8');
      for (const text of [message, journalText, req.logLines.join('\n')]) assert.ok(!text.includes(secretValue), 'secret leaked');
    });
  });

  it('lets one bosun at a time change the host', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      const slow = applyNode(request(state, [sh(`touch ${dir}/started; sleep 1`)]));
      await waitFor('first apply to start', () => exists(`${dir}/started`));
      await assert.rejects(applyNode(request(state, [])), (e) => isBosunError(e) && e.code === 'E_LOCKED');
      await slow;
      await writeFile(join(state, 'lock'), 'old-boot 1 1\n'); // left by a process of an earlier boot
      assert.equal((await applyNode(request(state, []))).result, 'unchanged');
    });
  });
});
