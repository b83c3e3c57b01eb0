import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isBosunError } from '../../src/errors.js';
import type { Step } from '../../src/engine/step.js';
import { DISTROS } from '../../src/host/distro.js';
import { containerPhase, planContainer, type ObservedContainer } from '../../src/phases/container/index.js';
import {
  configDir,
  INIT_CAPS,
  keptCaps,
  limitsDropIn,
  MANIFEST,
  mergedSettings,
  NSPAWN_DEFAULT_CAPS,
  renderConfig,
  renderLimitsDropIn,
  renderManifest,
  renderNspawn,
  renderStartDropIn,
  startDropIn,
} from '../../src/phases/container/render.js';
import { parseNodeSpec } from '../../src/spec/validate.js';
import type { NodeSpec } from '../../src/spec/node-spec.js';
import { examplesDir, matchGolden } from '../helpers.js';

const ctx = { distro: DISTROS.debian };

async function raw(node = 'node-a'): Promise<any> {
  return JSON.parse(await readFile(join(examplesDir, `${node}.json`), 'utf8'));
}

function parse(r: unknown): NodeSpec {
  const p = parseNodeSpec(r);
  assert.ok(p.ok, p.ok ? '' : JSON.stringify(p.problems));
  return p.value;
}

async function example(mutate: (s: any) => void = () => undefined, node = 'node-a'): Promise<NodeSpec> {
  const r = await raw(node);
  mutate(r);
  return parse(r);
}

/** The problems validation reports for a mutated example, as "path: message". */
async function problems(mutate: (s: any) => void): Promise<string[]> {
  const r = await raw();
  mutate(r);
  const p = parseNodeSpec(r);
  assert.equal(p.ok, false, 'the spec should be refused');
  return p.ok ? [] : p.problems.map((x) => `${x.path}: ${x.message}`);
}

/** Everything the phase writes for a spec, in one text to pin. */
function allFiles(spec: NodeSpec): string {
  const c = spec.container!;
  const parts: [string, string][] = [
    [`/etc/systemd/nspawn/${c.name}.nspawn`, renderNspawn(spec)],
    [startDropIn(c), renderStartDropIn(spec)],
    [limitsDropIn(c), renderLimitsDropIn(spec)],
    ...Object.entries(renderConfig(c)).map(([f, t]): [string, string] => [`${configDir(c)}/${f}`, t]),
  ];
  return parts.map(([p, t]) => `==> ${p} <==\n${t}`).join('\n');
}

/** What a host that has applied `spec` fully, with the machine running, looks like to the phase. */
function builtFor(spec: NodeSpec): ObservedContainer {
  const c = spec.container!;
  const config = renderConfig(c);
  return {
    imageExists: true,
    nspawn: renderNspawn(spec),
    startDropIn: renderStartDropIn(spec),
    limitsDropIn: renderLimitsDropIn(spec),
    configDirExists: true,
    config,
    manifest: renderManifest(config),
    unit: { enabled: 'enabled', active: 'active' },
    machinesTargetEnabled: true,
  };
}

/** Observation of `before` applied, planned for `after`. */
function change(before: NodeSpec, after: NodeSpec): { steps: Step[]; action: string; shown: string[] } {
  const obs = builtFor(before);
  // The config files the new spec names, as the host has them now.
  obs.config = Object.fromEntries(Object.keys(after.container!.config?.files ?? {}).map((f) => [f, renderConfig(before.container!)[f]]));
  const r = planContainer(after, obs, ctx);
  return { ...r, shown: r.steps.map(show) };
}

/** How a command inside the machine shows (see machineArgv). */
const IN = '/bin/sh -c leader=$(machinectl show --property=Leader --value "$1") && shift && exec nsenter --target "$leader" --all -- "$@" sh postgres';
const HEALTH = `${IN} pg_isready -q -h /run/postgresql`;

const show = (s: Step): string =>
  s.kind === 'exec'
    ? s.argv.join(' ')
    : s.kind === 'unit'
      ? `systemctl ${s.action} ${s.unit ?? ''}`.trim()
      : s.kind === 'write' || s.kind === 'remove' || s.kind === 'mkdir'
        ? `${s.kind} ${s.path}`
        : s.kind;

describe('container phase: rendered files', () => {
  it('pins the .nspawn file, both drop-ins and the merged config of the example', async () => {
    await matchGolden('container-node-a.txt', allFiles(await example()));
    for (const node of ['node-b', 'node-c'])
      assert.equal(allFiles(await example(undefined, node)), allFiles(await example()), `${node} runs the same container`);
  });

  it('pins a host-network service with a properties file and no data volume', async () => {
    const spec = await example((s) => {
      s.container = {
        name: 'kafka',
        image: '/var/lib/machines/kafka-3',
        service: { unit: 'kafka.service', onConfigChange: 'restart' },
        network: { mode: 'host' },
        capabilities: ['CAP_NET_BIND_SERVICE', 'CAP_IPC_LOCK'],
        config: {
          mountPoint: '/etc/kafka',
          files: {
            'server.properties': {
              format: 'properties',
              settings: { 'log.dirs': '/var/lib/kafka', 'num.partitions': 3, 'auto.create.topics.enable': false, listeners: 'PLAINTEXT://:9092' },
              required: ['log.dirs'],
            },
          },
          overrides: { 'server.properties': { 'num.partitions': 12, 'auto.create.topics.enable': null } },
        },
      };
    });
    await matchGolden('container-kafka.txt', allFiles(spec));
  });

  it("keeps only the init baseline and the spec's capabilities; adds one nspawn does not give by default", async () => {
    const spec = await example((s) => (s.container.capabilities = ['CAP_NET_BIND_SERVICE', 'CAP_IPC_LOCK']));
    const text = renderNspawn(spec);
    const dropped = /^DropCapability=(.*)$/m.exec(text)![1]!.split(' ');
    const kept = keptCaps(spec.container!);
    assert.deepEqual(
      [...dropped, ...kept.filter((c) => (NSPAWN_DEFAULT_CAPS as readonly string[]).includes(c))].sort(),
      [...NSPAWN_DEFAULT_CAPS].sort(),
      'every default capability is either kept or dropped',
    );
    for (const c of INIT_CAPS) assert.ok(!dropped.includes(c), `${c} stays for the init`);
    assert.ok(!dropped.includes('CAP_NET_BIND_SERVICE'));
    assert.ok(dropped.includes('CAP_SYS_PTRACE') && dropped.includes('CAP_NET_RAW') && dropped.includes('CAP_SYS_BOOT'));
    assert.match(text, /^Capability=CAP_IPC_LOCK$/m);
    assert.match(text, /^PrivateUsers=pick$/m);
    assert.match(text, /^ReadOnly=yes$/m);
    assert.match(text, /^NoNewPrivileges=yes$/m);
    assert.match(text, /^ResolvConf=off$/m);
  });

  it('binds only the config directory (read-only) and the data volume (read-write), both id-mapped', async () => {
    const text = renderNspawn(await example());
    const binds = text.split('\n').filter((l) => /^(Bind|BindReadOnly|TemporaryFileSystem|Overlay|OverlayReadOnly)=/.test(l));
    assert.deepEqual(binds, ['BindReadOnly=/etc/bosun/container/postgres:/etc/postgresql:idmap', 'Bind=/var/lib/bosun/data:/var/lib/pgsql/data:idmap']);
  });

  it('writes systemd-visible dollars as $$ in the link script, so systemd does not expand them', async () => {
    const dropIn = renderStartDropIn(await example());
    const post = dropIn.split('\n').find((l) => l.startsWith('ExecStartPost='))!;
    assert.doesNotMatch(post.replace(/\$\$/g, ''), /\$/, 'every $ is doubled');
    assert.match(post, /ip addr replace 169\.254\.240\.2\/30 dev host0/);
    const host = renderStartDropIn(await example((s) => ((s.container.network = { mode: 'host' }), (s.container.name = 'postgres'))));
    assert.doesNotMatch(host, /ExecStartPost/, 'no link to configure on the host network');
  });
});

describe('container phase: overrides', () => {
  it('merges user overrides on top: changes, additions and removals of settings that are not required', async () => {
    const spec = await example((s) => {
      s.container.config.overrides['postgresql.conf'] = { max_connections: 50, work_mem: '64MB', shared_buffers: null, wal_level: 'replica' };
    });
    const merged = Object.fromEntries(mergedSettings(spec.container!, 'postgresql.conf'));
    assert.equal(merged.max_connections, 50);
    assert.equal(merged.work_mem, '64MB');
    assert.equal('shared_buffers' in merged, false, 'null removes a setting');
    assert.equal(merged.wal_level, 'replica', 'restating a required value is allowed');
    assert.deepEqual(Object.keys(merged), [...Object.keys(merged)].sort(), 'keys are sorted');
    const text = renderConfig(spec.container!)['postgresql.conf']!;
    assert.match(text, /^max_connections = 50$/m);
    assert.match(text, /^listen_addresses = '\*'$/m);
  });

  it('refuses an override that changes or removes a required setting, with the path of each', async () => {
    const p = await problems((s) => {
      s.container.config.overrides['postgresql.conf'] = { wal_level: 'minimal', archive_mode: null, max_connections: 10 };
    });
    assert.deepEqual(p, [
      'container.config.overrides.postgresql.conf.wal_level: required by the platform: an override cannot change it',
      'container.config.overrides.postgresql.conf.archive_mode: required by the platform: an override cannot remove it',
    ]);
  });

  it('refuses overrides of unknown files, unsafe keys and values with newlines', async () => {
    const p = await problems((s) => {
      s.container.config.overrides['pg_hba.conf'] = { x: 1 };
      s.container.config.overrides['postgresql.conf'] = { 'bad key': 1, work_mem: '16MB\nwal_level = minimal' };
    });
    assert.deepEqual(p, [
      'container.config.overrides.postgresql.conf.bad key: expected a key of letters, digits, "_", "." or "-"',
      'container.config.overrides.postgresql.conf.work_mem: control characters (such as a newline) are not allowed in a value',
      'container.config.overrides.pg_hba.conf: overrides a file that is not in config.files',
    ]);
  });

  it('refuses a required key without a setting, ports on the host network, a port published twice', async () => {
    assert.deepEqual(await problems((s) => s.container.config.files['postgresql.conf'].required.push('hba_file')), [
      'container.config.files.postgresql.conf.required[3]: marked required but this file has no such setting',
    ]);
    assert.deepEqual(await problems((s) => (s.container.network.mode = 'host')), [
      'container.network.ports: ports are published only from a private network; with "host" the service is on the host\'s ports already',
    ]);
    assert.deepEqual(await problems((s) => s.container.network.ports.push({ host: 5432, container: 5433 })), [
      'container.network.ports[1].host: tcp port 5432 is published twice',
    ]);
    assert.deepEqual(await problems((s) => (s.container.dataMountPoint = '/etc/postgresql/data')), [
      'container.config.mountPoint: the config directory and the data volume cannot sit inside each other',
    ]);
  });
});

describe('container phase: what a change costs', () => {
  it('plans the whole machine on a blank host: files, daemon-reload, enable, start, then wait for health', async () => {
    const spec = await example();
    const steps = containerPhase.plan(spec, await containerPhase.observe(spec, { blank: true } as never, ctx), ctx);
    assert.deepEqual(steps.map(show), [
      'mkdir /etc/bosun/container/postgres',
      'write /etc/bosun/container/postgres/postgresql.conf',
      `write /etc/bosun/container/postgres/${MANIFEST}`,
      'write /etc/systemd/nspawn/postgres.nspawn',
      'write /etc/systemd/system/systemd-nspawn@postgres.service.d/10-bosun-machine.conf',
      'write /etc/systemd/system/systemd-nspawn@postgres.service.d/20-bosun-limits.conf',
      'systemctl daemon-reload',
      'systemctl enable machines.target',
      'systemctl enable systemd-nspawn@postgres.service',
      'systemctl start systemd-nspawn@postgres.service',
      HEALTH,
    ]);
    const last = steps.at(-1) as Extract<Step, { kind: 'exec' }>;
    assert.equal(last.retryForSeconds, 300);
  });

  it('does nothing when nothing changed', async () => {
    const spec = await example();
    assert.deepEqual(change(spec, spec), { steps: [], action: 'none', shown: [] });
  });

  it('reloads the service inside, without touching the machine, when only its config changed', async () => {
    const before = await example();
    const after = await example((s) => (s.container.config.overrides['postgresql.conf'].max_connections = 500));
    const r = change(before, after);
    assert.equal(r.action, 'reload');
    assert.deepEqual(r.shown, ['write /etc/bosun/container/postgres/postgresql.conf', `${IN} systemctl reload postgresql.service`, HEALTH]);
    const restart = change(
      before,
      await example((s) => ((s.container.service.onConfigChange = 'restart'), (s.container.config.overrides['postgresql.conf'].max_connections = 500))),
    );
    assert.equal(restart.action, 'restart-service');
    assert.ok(restart.shown.includes(`${IN} systemctl restart postgresql.service`));
    assert.ok(!restart.shown.some((s) => s.includes('systemd-nspawn@postgres.service') && s.startsWith('systemctl restart')), 'the machine keeps running');
  });

  it('removes a config file dropped from the spec and reloads', async () => {
    const before = await example((s) => (s.container.config.files['extra.conf'] = { format: 'conf', settings: { a: 1 } }));
    const r = change(before, await example());
    assert.equal(r.action, 'reload');
    assert.deepEqual(r.shown.slice(0, 2), ['remove /etc/bosun/container/postgres/extra.conf', `write /etc/bosun/container/postgres/${MANIFEST}`]);
  });

  it('applies a limit change live: new drop-in, daemon-reload, set-property --runtime, no restart', async () => {
    const before = await example();
    const r = change(before, await example((s) => ((s.container.limits.memoryMax = '8G'), delete s.container.limits.cpuQuota)));
    assert.equal(r.action, 'live-limits');
    assert.deepEqual(r.shown, [
      'write /etc/systemd/system/systemd-nspawn@postgres.service.d/20-bosun-limits.conf',
      'systemctl daemon-reload',
      'systemctl set-property --runtime systemd-nspawn@postgres.service MemoryMax=8G CPUQuota= IOWeight=500 TasksMax=4096',
    ]);
  });

  it('restarts the machine when its .nspawn settings or start line change, and only then', async () => {
    const before = await example();
    const ports = change(before, await example((s) => s.container.network.ports.push({ host: 9187, container: 9187 })));
    assert.equal(ports.action, 'restart');
    assert.deepEqual(ports.shown, ['write /etc/systemd/nspawn/postgres.nspawn', 'systemctl restart systemd-nspawn@postgres.service', HEALTH]);
    const image = change(before, await example((s) => (s.container.image = '/var/lib/machines/postgresql-17')));
    assert.equal(image.action, 'restart');
    assert.deepEqual(image.shown.slice(0, 3), [
      'write /etc/systemd/system/systemd-nspawn@postgres.service.d/10-bosun-machine.conf',
      'systemctl daemon-reload',
      'systemctl restart systemd-nspawn@postgres.service',
    ]);
    const both = change(
      before,
      await example(
        (s) => (
          (s.container.capabilities = ['CAP_NET_BIND_SERVICE']),
          (s.container.limits.tasksMax = 100),
          (s.container.config.overrides['postgresql.conf'].work_mem = '1MB')
        ),
      ),
    );
    assert.equal(both.action, 'restart', 'a restart covers the limit and the config change');
    assert.ok(!both.shown.some((s) => s.includes('set-property') || s.includes('reload postgresql')));
  });

  it('starts a stopped machine instead of reloading it', async () => {
    const spec = await example();
    const obs = { ...builtFor(spec), unit: { enabled: 'enabled', active: 'failed' } };
    const r = planContainer(spec, obs, ctx);
    assert.equal(r.action, 'start');
    assert.deepEqual(r.steps.map(show), ['systemctl start systemd-nspawn@postgres.service', HEALTH]);
  });

  it('refuses, changing nothing, when the image is not on the host', async () => {
    const spec = await example();
    assert.throws(
      () => planContainer(spec, { ...builtFor(spec), imageExists: false }, ctx),
      (e: unknown) => isBosunError(e) && e.code === 'E_REFUSED' && /image \/var\/lib\/machines\/postgresql-16 is not on this host/.test(e.message),
    );
  });

  it('re-runs when the data volume path moves, since it is bound into the machine', async () => {
    const a = await example();
    const b = await example((s) => (s.disks.mount.path = '/srv/data'));
    assert.notDeepEqual(containerPhase.section(a), containerPhase.section(b));
  });
});
