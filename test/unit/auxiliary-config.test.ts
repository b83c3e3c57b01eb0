import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DISTROS } from '../../src/host/distro.js';
import type { HostProbe } from '../../src/host/probe.js';
import { auxiliaryPhase } from '../../src/phases/auxiliary.js';
import { journalpumpConfig, telegrafConfig } from '../../src/phases/auxiliary-config.js';
import { parseNodeSpec } from '../../src/spec/validate.js';
import type { NodeSpec } from '../../src/spec/node-spec.js';

function spec(auxiliary: unknown[]): NodeSpec {
  const r = parseNodeSpec({ apiVersion: 'bosun/v1', cluster: 'pg-main', node: 'node-a', version: 3, auxiliary });
  assert.ok(r.ok, JSON.stringify(!r.ok && r.problems));
  return r.value;
}

const TELEGRAF = {
  name: 'telegraf',
  unit: 'telegraf.service',
  config: { path: '/etc/telegraf/telegraf.d/bosun.conf' },
  template: { kind: 'telegraf', serviceMetrics: ['http://127.0.0.1:9187/metrics'] },
};
const JOURNALPUMP = {
  name: 'journalpump',
  unit: 'journalpump.service',
  config: { path: '/etc/journalpump/journalpump.json', mode: '0640' },
  template: { kind: 'journalpump', brokers: ['kafka-1.internal:9093', 'kafka-2.internal:9093'], topic: 'logs.pg-main', tls: { ca: '/etc/bosun/kafka-ca.pem' } },
};

function probe(files: Record<string, string>, units: Record<string, { enabled: string; active: string }>): HostProbe {
  return {
    blank: false,
    run: () => Promise.reject(new Error('no probe commands')),
    links: () => Promise.resolve([]),
    stat: () => Promise.resolve(undefined),
    usage: () => Promise.resolve(undefined),
    listDir: () => Promise.resolve([]),
    readFile: (p) => Promise.resolve(files[p] === undefined ? undefined : Buffer.from(files[p])),
    unitState: (u) => Promise.resolve(units[u] ?? { enabled: 'not-found', active: 'inactive' }),
  };
}

async function plan(s: NodeSpec, p: HostProbe): Promise<string[]> {
  const ctx = { distro: DISTROS.fedora };
  return auxiliaryPhase
    .plan(s, await auxiliaryPhase.observe(s, p, ctx), ctx)
    .map((x) => (x.kind === 'write' ? `write ${x.path} ${x.mode.toString(8)}` : x.kind === 'unit' ? `${x.action} ${x.unit}` : x.kind));
}

describe('auxiliary agent configs made from the spec', () => {
  it('telegraf scrapes bosun and the service and watches bosun and the service machine', () => {
    const s = spec([TELEGRAF]);
    assert.equal(
      telegrafConfig(s.auxiliary[0]!.template as Extract<NodeSpec['auxiliary'][0]['template'], { kind: 'telegraf' }>, s),
      [
        '# Written by bosun for node node-a of cluster pg-main; edits are replaced.',
        '[global_tags]',
        '  cluster = "pg-main"',
        '  node = "node-a"',
        '',
        '[agent]',
        '  interval = "30s"',
        '',
        '[[inputs.prometheus]]',
        '  urls = ["http://127.0.0.1:9559/metrics"]',
        '  metric_version = 2',
        '  [inputs.prometheus.tags]',
        '    source = "bosun"',
        '',
        '[[inputs.prometheus]]',
        '  urls = ["http://127.0.0.1:9187/metrics"]',
        '  metric_version = 2',
        '  [inputs.prometheus.tags]',
        '    source = "service"',
        '',
        '[[inputs.systemd_units]]',
        '  pattern = "bosun.service systemd-nspawn@*.service"',
        '',
      ].join('\n'),
    );
  });

  it('journalpump ships the journal to Kafka over TLS', () => {
    const s = spec([JOURNALPUMP]);
    const cfg = JSON.parse(journalpumpConfig(s.auxiliary[0]!.template as Extract<NodeSpec['auxiliary'][0]['template'], { kind: 'journalpump' }>, s)) as unknown;
    assert.deepEqual(cfg, {
      readers: {
        'pg-main-node-a': {
          senders: {
            kafka: {
              output_type: 'kafka',
              kafka_address: 'kafka-1.internal:9093,kafka-2.internal:9093',
              kafka_topic: 'logs.pg-main',
              ssl: true,
              ca: '/etc/bosun/kafka-ca.pem',
            },
          },
        },
      },
    });
  });

  it('writes the made config and starts the agent; restarts it only when the made config changes', async () => {
    const s = spec([TELEGRAF, JOURNALPUMP]);
    assert.deepEqual(await plan(s, probe({}, {})), [
      'write /etc/telegraf/telegraf.d/bosun.conf 644',
      'daemon-reload undefined',
      'enable-now telegraf.service',
      'write /etc/journalpump/journalpump.json 640',
      'enable-now journalpump.service',
    ]);
    const running = { 'telegraf.service': { enabled: 'enabled', active: 'active' }, 'journalpump.service': { enabled: 'enabled', active: 'active' } };
    const files = {
      '/etc/telegraf/telegraf.d/bosun.conf': telegrafConfig(s.auxiliary[0]!.template as never, s),
      '/etc/journalpump/journalpump.json': journalpumpConfig(s.auxiliary[1]!.template as never, s),
    };
    assert.deepEqual(await plan(s, probe(files, running)), [], 'same spec: no write, no restart');
    const changed = spec([{ ...TELEGRAF, template: { ...TELEGRAF.template, intervalSeconds: 10 } }, JOURNALPUMP]);
    assert.deepEqual(await plan(changed, probe(files, running)), ['write /etc/telegraf/telegraf.d/bosun.conf 644', 'restart telegraf.service']);
  });

  it('refuses a template without a path, a template with content, and a bad broker', () => {
    const bad = parseNodeSpec({
      apiVersion: 'bosun/v1',
      cluster: 'c',
      node: 'n',
      version: 1,
      auxiliary: [
        { name: 'a', unit: 'telegraf.service', template: { kind: 'telegraf' } },
        { name: 'b', unit: 'telegraf.service', config: { path: '/x', content: 'y' }, template: { kind: 'telegraf' } },
        { name: 'c', unit: 'journalpump.service', config: { path: '/y' }, template: { kind: 'journalpump', brokers: ['no port'], topic: 't' } },
      ],
    });
    assert.equal(bad.ok, false);
    const paths = !bad.ok ? bad.problems.map((p) => p.path) : [];
    assert.deepEqual(paths.sort(), ['auxiliary[0].config', 'auxiliary[1].config.content', 'auxiliary[2].template.brokers[0]'].sort());
  });
});

describe('auxiliary agents in health', () => {
  it('reports each agent unit state, and a stopped enabled agent as a problem', async () => {
    const { collectHealth } = await import('../../src/health/collect.js');
    const s = spec([TELEGRAF, JOURNALPUMP]);
    const h = await collectHealth(
      s,
      probe({}, { 'telegraf.service': { enabled: 'enabled', active: 'active' }, 'journalpump.service': { enabled: 'enabled', active: 'failed' } }),
    );
    assert.deepEqual(h.auxiliary, [
      { name: 'telegraf', unit: 'telegraf.service', enabled: 'enabled', active: 'active' },
      { name: 'journalpump', unit: 'journalpump.service', enabled: 'enabled', active: 'failed' },
    ]);
    assert.equal(h.ok, false);
    assert.deepEqual(h.problems, ['auxiliary: journalpump (journalpump.service) is failed, expected active']);
  });
});
