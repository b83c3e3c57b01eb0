import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Step } from '../../src/engine/step.js';
import { DISTROS } from '../../src/host/distro.js';
import { BlankProbe, type HostProbe } from '../../src/host/probe.js';
import { auxiliaryPhase } from '../../src/phases/auxiliary.js';
import { ObservationReuse, PHASES, planNode } from '../../src/phases/index.js';
import type { NodeSpec } from '../../src/spec/node-spec.js';
import { examplesDir, loadExample, matchGolden, runCli } from '../helpers.js';

describe('plan of the example cluster', () => {
  for (const node of ['node-a', 'node-b', 'node-c']) {
    it(`pins the full ordered boot plan of ${node}`, async () => {
      const r = await runCli(['plan', join(examplesDir, `${node}.json`), '--blank', '--distro', 'fedora']);
      assert.equal(r.code, 0, r.stderr);
      await matchGolden(`plan-${node}.txt`, r.stdout);
    });
  }

  it('prints machine-readable steps with modes and argv, and no secret material', async () => {
    const r = await runCli(['plan', join(examplesDir, 'node-a.json'), '--blank', '--distro', 'fedora', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const plan = JSON.parse(r.stdout) as { steps: { n: number; phase: string; kind: string; argv?: string[]; mode?: string }[] };
    assert.deepEqual([...new Set(plan.steps.map((s) => s.phase))], ['packages', 'disks', 'network', 'restore', 'container', 'auxiliary']);
    assert.deepEqual(plan.steps[0]!.argv, ['dnf', '-y', '--refresh', 'upgrade', 'postgresql-server', 'postgresql-contrib']);
    assert.equal(plan.steps.find((s) => s.kind === 'write')!.mode, '0644');
    assert.ok(!r.stdout.includes('bosun-sealed-v1.'), 'sealed values do not belong in a plan either');
  });

  it('reloads systemd once per phase that writes units, before its enables, and no enable or disable reloads again', async () => {
    for (const node of ['node-a', 'node-b', 'node-c']) {
      const r = await runCli(['plan', join(examplesDir, `${node}.json`), '--blank', '--distro', 'fedora', '--json']);
      assert.equal(r.code, 0, r.stderr);
      const steps = (JSON.parse(r.stdout) as { steps: { phase: string; kind: string; path?: string; argv?: string[] }[] }).steps;
      const unitChanges = steps.filter((s) => s.argv?.[0] === 'systemctl' && (s.argv[1] === 'enable' || s.argv[1] === 'disable'));
      assert.ok(unitChanges.length >= 3, `${node}: the boot plan enables units`);
      for (const s of unitChanges) assert.ok(s.argv!.includes('--no-reload'), `${node}: ${s.argv!.join(' ')} would reload systemd itself`);
      for (const phase of new Set(steps.map((s) => s.phase))) {
        const own = steps.filter((s) => s.phase === phase);
        const reloads = own.flatMap((s, i) => (s.argv?.join(' ') === 'systemctl daemon-reload' ? [i] : []));
        assert.ok(reloads.length <= 1, `${node}/${phase}: ${reloads.length} reloads`);
        const lastUnitWrite = own.findLastIndex((s) => s.kind === 'write' && /^\/etc\/systemd\/system\//.test(s.path ?? ''));
        const firstStart = own.findIndex((s) => s.argv?.[0] === 'systemctl' && (s.argv[1] === 'start' || s.argv.includes('--now') || s.argv[1] === 'enable'));
        if (lastUnitWrite >= 0) {
          assert.equal(reloads.length, 1, `${node}/${phase} writes units but does not reload systemd`);
          assert.ok(
            reloads[0]! > lastUnitWrite && (firstStart < 0 || reloads[0]! < firstStart),
            `${node}/${phase}: the reload must come after the unit files and before their enable/start`,
          );
        }
      }
    }
  });

  it('uses the distro module for package commands', async () => {
    const steps = await planNode(await loadExample('node-a'), new BlankProbe(), { distro: DISTROS.debian });
    const exec = steps.filter((s): s is Extract<Step, { kind: 'exec' }> => s.kind === 'exec' && s.phase === 'packages');
    assert.deepEqual(
      exec.map((s) => s.argv[0]),
      ['apt-get', 'apt-get'],
    );
  });
});

describe('auxiliary phase', () => {
  const probe = (files: Record<string, string>, units: Record<string, { enabled: string; active: string }>): HostProbe => ({
    blank: false,
    run: () => Promise.reject(new Error('the auxiliary phase runs no probe commands')),
    links: () => Promise.resolve([]),
    stat: () => Promise.resolve(undefined),
    usage: () => Promise.resolve(undefined),
    listDir: () => Promise.resolve([]),
    readFile: (p) => Promise.resolve(files[p] === undefined ? undefined : Buffer.from(files[p])),
    unitState: (u) => Promise.resolve(units[u] ?? { enabled: 'not-found', active: 'inactive' }),
  });

  async function planWith(p: HostProbe, mutate: (s: NodeSpec) => void = () => undefined): Promise<string[]> {
    const spec = await loadExample('node-a');
    mutate(spec);
    const steps = auxiliaryPhase.plan(spec, await auxiliaryPhase.observe(spec, p, { distro: DISTROS.fedora }), { distro: DISTROS.fedora });
    return steps.map((s) =>
      s.kind === 'write' ? `write ${s.path}` : s.kind === 'unit' ? `${s.action} ${s.unit}` : s.kind === 'exec' ? s.argv.join(' ') : s.kind,
    );
  }

  it('does nothing when config and unit already match', async () => {
    const spec = await loadExample('node-a');
    const cfg = spec.auxiliary[0]!.config!;
    assert.deepEqual(await planWith(probe({ [cfg.path]: cfg.content! }, { 'telegraf.service': { enabled: 'enabled', active: 'active' } })), []);
  });

  it('rewrites a changed config and restarts the running agent', async () => {
    const spec = await loadExample('node-a');
    const cfg = spec.auxiliary[0]!.config!;
    assert.deepEqual(await planWith(probe({ [cfg.path]: 'old' }, { 'telegraf.service': { enabled: 'enabled', active: 'active' } })), [
      `write ${cfg.path}`,
      'restart telegraf.service',
    ]);
  });

  it('starts a stopped agent without a restart, and stops a disabled one', async () => {
    const spec = await loadExample('node-a');
    const cfg = spec.auxiliary[0]!.config!;
    assert.deepEqual(await planWith(probe({ [cfg.path]: cfg.content! }, { 'telegraf.service': { enabled: 'enabled', active: 'failed' } })), [
      'daemon-reload undefined',
      'enable-now telegraf.service',
    ]);
    assert.deepEqual(await planWith(probe({}, { 'telegraf.service': { enabled: 'enabled', active: 'active' } }), (s) => (s.auxiliary[0]!.enabled = false)), [
      'systemctl disable --now telegraf.service',
    ]);
  });
});

describe('observation reuse between stages', () => {
  it('hands an observation on to the next stage of the same phase and spec until the host changes', async () => {
    const spec = await loadExample('node-a');
    const observe = 'disks';
    const r = new ObservationReuse();
    assert.equal(r.get(observe, spec), undefined);
    r.planned(observe, spec, 'seen');
    assert.deepEqual(r.get(observe, spec), { observed: 'seen' });
    assert.equal(r.get('network', spec), undefined, 'another phase observes for itself');
    assert.equal(r.get(observe, await loadExample('node-a')), undefined, 'another spec observes afresh');
    r.clear();
    assert.equal(r.get(observe, spec), undefined, 'steps ran: observe again');
  });

  it("observes the disks once for all four disks stages when nothing runs in between (bosun plan, the apply's first pass)", async () => {
    const spec = await loadExample('node-a');
    const disks = PHASES.filter((p) => p.name === 'disks');
    assert.equal(disks.length, 4);
    const saved = disks.map((p) => p.observe.bind(p));
    let observed = 0;
    try {
      for (const p of disks) {
        const original = p.observe.bind(p);
        (p as { observe: typeof p.observe }).observe = (...args) => {
          observed++;
          return original(...args);
        };
      }
      const steps = await planNode(spec, new BlankProbe(), { distro: DISTROS.fedora });
      assert.ok(steps.filter((s) => s.phase === 'disks').length >= 10, 'every disks stage planned its steps');
      assert.equal(observed, 1);
    } finally {
      disks.forEach((p, i) => ((p as { observe: typeof p.observe }).observe = saved[i]!));
    }
  });
});
