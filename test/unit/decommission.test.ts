import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { applyNode } from '../../src/apply-node.js';
import { renderPlanText } from '../../src/engine/render.js';
import { DISTROS } from '../../src/host/distro.js';
import { BlankProbe, type HostProbe } from '../../src/host/probe.js';
import { countKeyslots } from '../../src/phases/decommission.js';
import { DECOMMISSION_FILE, lifecycleOf, readDecommissionRecord } from '../../src/state/decommission.js';
import { changedStages, phasesFor, planNode } from '../../src/phases/index.js';
import type { NodeSpec } from '../../src/spec/node-spec.js';
import { parseNodeSpec } from '../../src/spec/validate.js';
import { createLogger } from '../../src/log.js';
import { Redactor } from '../../src/secrets/redact.js';
import type { Host } from '../../src/host/index.js';
import { loadExample, matchGolden, withTempDir } from '../helpers.js';

const ctx = { distro: DISTROS.fedora };

async function decomSpec(mutate: (s: Record<string, unknown>) => void = () => undefined): Promise<NodeSpec> {
  const raw = JSON.parse(JSON.stringify(await loadExample('node-a'))) as Record<string, unknown>;
  raw.version = 7;
  raw.decommission = { confirmNode: 'node-a' };
  mutate(raw);
  const r = parseNodeSpec(raw);
  if (!r.ok) throw new Error(JSON.stringify(r.problems));
  return r.value;
}

const LUKS2_DUMP = (slots: number): string =>
  [
    'LUKS header information',
    'Version:       \t2',
    '',
    'Data segments:',
    '  0: crypt',
    'Keyslots:',
    ...Array.from({ length: slots }, (_, i) => [`  ${i}: luks2`, '\tKey:        512 bits', '\tPriority:   normal']).flat(),
    'Tokens:',
    'Digests:',
    '  0: pbkdf2',
  ].join('\n');

/** node-a as it runs: machine and telegraf up, two conns loaded, the volume mounted and open with one keyslot. */
function builtHost(keyslots = 1, unitOverrides: Record<string, { enabled: string; active: string }> = {}): HostProbe & { ran: string[][] } {
  const ran: string[][] = [];
  const files: Record<string, string> = {
    '/etc/ipsec.d/bosun-node-b.conf': '# Written by bosun (network phase): IPsec between node-a and node-b.\n',
    '/etc/ipsec.d/bosun-node-b.secrets': '# Written by bosun (network phase). Root-only.\n',
    '/etc/ipsec.d/bosun-node-c.conf': '# Written by bosun (network phase): IPsec between node-a and node-c.\n',
    '/etc/ipsec.d/bosun-other.conf': '# someone else wrote this\n',
  };
  const exists = new Set([
    '/etc/bosun/ipsec-policy.nft',
    '/etc/systemd/system/bosun-ipsec-policy.service',
    '/etc/systemd/system/var-lib-bosun-data.mount',
    '/dev/mapper/data',
  ]);
  const units: Record<string, { enabled: string; active: string }> = {
    'systemd-nspawn@postgres.service': { enabled: 'enabled', active: 'active' },
    'telegraf.service': { enabled: 'enabled', active: 'active' },
    'ipsec.service': { enabled: 'enabled', active: 'active' },
    'bosun-ipsec-policy.service': { enabled: 'enabled', active: 'active' },
    ...unitOverrides,
  };
  return {
    blank: false,
    ran,
    // The files that exist read as bosun wrote them (the network observation reads the policy and its unit).
    readFile: (p) => Promise.resolve(files[p] !== undefined ? Buffer.from(files[p]) : exists.has(p) ? Buffer.from('# Written by bosun\n') : undefined),
    unitState: (u) => Promise.resolve(units[u] ?? { enabled: 'not-found', active: 'inactive' }),
    run: (argv) => {
      ran.push([...argv]);
      const out = (stdout: string, exitCode = 0) => Promise.resolve({ exitCode, stdout, stderr: '' });
      if (argv[0] === 'ipsec' && argv[1] === 'status')
        return out('000 "bosun-node-b": fd00:b05:0:1::a...fd00:b05:0:1::b\n000 "bosun-node-c": ...\n000 "other": ...\n');
      if (argv[0] === 'findmnt') return out('/var/lib/bosun/data /dev/mapper/data xfs', 0);
      if (argv[0] === 'cryptsetup' && argv[1] === 'luksDump') return out(LUKS2_DUMP(keyslots));
      if (argv[0] === 'nft') return out('table inet bosun_ipsec {}');
      return out('');
    },
    links: () => Promise.resolve([]),
    listDir: (d) =>
      Promise.resolve(
        d === '/etc/ipsec.d'
          ? Object.keys(files)
              .map((f) => f.slice('/etc/ipsec.d/'.length))
              .sort()
          : [],
      ),
    stat: (p) => Promise.resolve(exists.has(p) ? { uid: 0, gid: 0, mode: 0o644 } : undefined),
    usage: () => Promise.resolve(undefined),
  };
}

/** The same host after the decommission ran. */
function retiredHost(): HostProbe {
  return {
    blank: false,
    readFile: () => Promise.resolve(undefined),
    unitState: () => Promise.resolve({ enabled: 'disabled', active: 'inactive' }),
    run: (argv) => Promise.resolve(argv[1] === 'luksDump' ? { exitCode: 0, stdout: LUKS2_DUMP(0), stderr: '' } : { exitCode: 1, stdout: '', stderr: '' }),
    links: () => Promise.resolve([]),
    listDir: () => Promise.resolve([]),
    stat: () => Promise.resolve(undefined),
    usage: () => Promise.resolve(undefined),
  };
}

const header = (spec: NodeSpec, observed: 'host' | 'blank') => ({ node: spec.node, cluster: spec.cluster, version: spec.version, distro: 'fedora', observed });

describe('decommission spec', () => {
  it('accepts confirmNode equal to node, erase defaulting to crypto', async () => {
    const spec = await decomSpec();
    assert.deepEqual(spec.decommission, { confirmNode: 'node-a', erase: 'crypto' });
  });

  it('refuses a confirmNode that is not this node, at that path', async () => {
    const raw = JSON.parse(JSON.stringify(await loadExample('node-a'))) as Record<string, unknown>;
    raw.decommission = { confirmNode: 'node-b' };
    const r = parseNodeSpec(raw);
    assert.ok(!r.ok);
    const p = r.problems.find((x) => x.path === 'decommission.confirmNode' || String(x.path).includes('confirmNode'));
    assert.ok(p, JSON.stringify(r.problems));
    assert.match(p.message, /must equal "node" \(node-a\)/);
  });

  it('refuses crypto erase of a volume without LUKS, and accepts erase none', async () => {
    const raw = JSON.parse(JSON.stringify(await loadExample('node-a'))) as { disks: Record<string, unknown> } & Record<string, unknown>;
    delete raw.disks.luks;
    raw.decommission = { confirmNode: 'node-a' };
    const r = parseNodeSpec(raw);
    assert.ok(!r.ok);
    const p = r.problems.find((x) => String(x.path).includes('erase'));
    assert.ok(p, JSON.stringify(r.problems));
    assert.match(p.message, /cannot crypto-erase an unencrypted volume; use erase: none/);
    raw.decommission = { confirmNode: 'node-a', erase: 'none' };
    assert.ok(parseNodeSpec(raw).ok);
  });

  it('plans only the decommission stage: nothing is built', async () => {
    const spec = await decomSpec();
    assert.deepEqual(phasesFor(spec), ['decommission']);
    assert.deepEqual(changedStages(spec, await loadExample('node-a')), ['decommission']);
  });
});

describe('decommission plan', () => {
  it('pins the plan against a blank host (nothing to tear down) and a built one', async () => {
    const spec = await decomSpec();
    const blank = await planNode(spec, new BlankProbe(), ctx);
    assert.equal(blank.length, 0);
    const built = await planNode(spec, builtHost(), ctx);
    const text = renderPlanText(header(spec, 'blank'), blank) + '\n' + renderPlanText(header(spec, 'host'), built);
    await matchGolden('decommission-node-a.txt', text);
    assert.ok(!text.includes('bosun-sealed-v1.'), 'no sealed value in the plan');
    // order: stop the machine before unmounting, unmount before close, close before erase
    const idx = (pred: (s: (typeof built)[number]) => boolean) => built.findIndex(pred);
    const stop = idx((s) => s.kind === 'unit' && s.action === 'stop' && s.unit === 'systemd-nspawn@postgres.service');
    const umount = idx((s) => s.kind === 'unit' && s.action === 'stop' && s.unit === 'var-lib-bosun-data.mount');
    const close = idx((s) => s.kind === 'exec' && s.argv[1] === 'close');
    const erase = idx((s) => s.kind === 'exec' && s.argv[1] === 'luksErase');
    assert.ok(stop >= 0 && stop < umount && umount < close && close < erase, JSON.stringify({ stop, umount, close, erase }));
    // never touches a file in the IPsec dir that bosun did not write
    assert.ok(!built.some((s) => s.kind === 'remove' && s.path.endsWith('bosun-other.conf')));
    // nothing is built: no mkfs, no luksFormat, no open, no start
    assert.ok(
      !built.some(
        (s) =>
          (s.kind === 'exec' && /mkfs|luksFormat|^open$/.test(s.argv[0] + ' ' + s.argv[1])) ||
          (s.kind === 'unit' && (s.action === 'start' || s.action === 'enable' || s.action === 'enable-now')),
      ),
    );
  });

  it('stops an enabled machine that is not running yet: its start may be queued since boot, and disable does not cancel it', async () => {
    const spec = await decomSpec();
    const steps = await planNode(
      spec,
      builtHost(1, {
        'systemd-nspawn@postgres.service': { enabled: 'enabled', active: 'inactive' },
        'telegraf.service': { enabled: 'enabled', active: 'inactive' },
      }),
      ctx,
    );
    const acts = (u: string) => steps.filter((s) => s.kind === 'unit' && s.unit === u).map((s) => (s.kind === 'unit' ? s.action : ''));
    assert.deepEqual(acts('systemd-nspawn@postgres.service'), ['stop', 'disable']);
    assert.deepEqual(acts('telegraf.service'), ['stop', 'disable']);
    // Disabled and stopped (a replay after a cut past these steps): nothing to do for them.
    const later = await planNode(
      spec,
      builtHost(1, {
        'systemd-nspawn@postgres.service': { enabled: 'disabled', active: 'inactive' },
        'telegraf.service': { enabled: 'disabled', active: 'failed' },
      }),
      ctx,
    );
    assert.ok(!later.some((s) => s.kind === 'unit' && (s.unit === 'systemd-nspawn@postgres.service' || s.unit === 'telegraf.service')));
  });

  it('with erase none: stops and leaves, never erases', async () => {
    const spec = await decomSpec((s) => (s.decommission = { confirmNode: 'node-a', erase: 'none' }));
    const steps = await planNode(spec, builtHost(), ctx);
    assert.ok(steps.length > 0);
    assert.ok(!steps.some((s) => s.kind === 'exec' && s.argv.includes('luksErase')));
  });

  it('a host whose keyslots are already gone plans no erase', async () => {
    const spec = await decomSpec();
    const steps = await planNode(spec, builtHost(0), ctx);
    assert.ok(!steps.some((s) => s.kind === 'exec' && s.argv.includes('luksErase')));
  });

  it('counts LUKS2 and LUKS1 keyslots', () => {
    assert.equal(countKeyslots(LUKS2_DUMP(0)), 0);
    assert.equal(countKeyslots(LUKS2_DUMP(3)), 3);
    assert.equal(countKeyslots('LUKS header information for /dev/x\nKey Slot 0: ENABLED\nKey Slot 1: DISABLED\nKey Slot 2: ENABLED\n'), 2);
  });
});

describe('after a decommission', () => {
  const noHost = { redactor: new Redactor() } as unknown as Host<Redactor>;

  it('records the verified result, replays as a no-op, and refuses any later spec that is not a decommission', async () => {
    await withTempDir(async (stateDir) => {
      const { logger } = createLogger({ redactor: new Redactor(), target: 'stderr', level: 'silent' });
      const spec = await decomSpec();
      const first = await applyNode({ spec, stateDir, host: noHost, probe: retiredHost(), ctx, logger });
      assert.equal(first.result, 'unchanged');
      assert.equal(first.decommission?.safeToDelete, true);
      assert.deepEqual(first.decommission?.evidence.luks, [{ device: '/dev/md/data', open: false, keyslots: 0 }]);
      const rec = await readDecommissionRecord(stateDir);
      assert.equal(rec?.state, 'decommissioned');
      assert.deepEqual(lifecycleOf(rec, undefined).state, 'decommissioned');

      const again = await applyNode({ spec, stateDir, host: noHost, probe: retiredHost(), ctx, logger });
      assert.equal(again.decommission?.finishedAt, first.decommission?.finishedAt, 'a replay reports the same status');

      const normal = await loadExample('node-a');
      const later = { ...normal, version: 8 };
      await assert.rejects(
        applyNode({ spec: later, stateDir, host: noHost, probe: builtHost(), ctx, logger }),
        (e: Error & { code?: string }) => e.code === 'E_DECOMMISSIONED' && /decommissioned .*refusing version 8, nothing was changed/.test(e.message),
      );
    });
  });

  it('does not record safe-to-delete when a keyslot is left', async () => {
    await withTempDir(async (stateDir) => {
      const { logger } = createLogger({ redactor: new Redactor(), target: 'stderr', level: 'silent' });
      const spec = await decomSpec();
      const probe: HostProbe = {
        ...retiredHost(),
        run: (argv) => Promise.resolve(argv[1] === 'luksDump' ? { exitCode: 0, stdout: LUKS2_DUMP(1), stderr: '' } : { exitCode: 1, stdout: '', stderr: '' }),
      };
      // a planner that plans nothing: the engine itself is under test, the keyslot was not erased
      const planner = { phases: () => ['decommission'], plan: () => Promise.resolve([]) };
      await assert.rejects(
        applyNode({ spec, stateDir, host: noHost, probe, ctx, logger, planner }),
        (e: Error & { code?: string }) => e.code === 'E_DECOMMISSION_UNVERIFIED',
      );
      const rec = await readDecommissionRecord(stateDir);
      assert.equal(rec?.safeToDelete, false);
      assert.equal(lifecycleOf(rec, spec).state, 'decommissioning');
      // still refuses to rebuild on these disks
      await assert.rejects(
        applyNode({ spec: { ...(await loadExample('node-a')), version: 8 }, stateDir, host: noHost, probe, ctx, logger }),
        (e: Error & { code?: string }) => e.code === 'E_DECOMMISSIONED',
      );
      await writeFile(join(stateDir, DECOMMISSION_FILE), 'not json');
      await assert.rejects(readDecommissionRecord(stateDir), /not valid JSON/);
    });
  });
});
