import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseAgentSettings, parseNodeSpec, type Problem } from '../../src/spec/index.js';
import { examplesDir } from '../helpers.js';

async function example(name: string): Promise<Record<string, any>> {
  return JSON.parse(await readFile(join(examplesDir, name), 'utf8')) as Record<string, any>;
}

function problems(input: unknown): Problem[] {
  const r = parseNodeSpec(input);
  assert.equal(r.ok, false, 'expected the spec to be rejected');
  return r.ok ? [] : r.problems;
}

describe('NodeSpec', () => {
  for (const n of ['node-a', 'node-b', 'node-c']) {
    it(`accepts the example ${n}`, async () => {
      const r = parseNodeSpec(await example(`${n}.json`));
      assert.ok(r.ok, r.ok ? '' : JSON.stringify(r.problems));
      assert.equal(r.value.node, n);
    });
  }

  it('rejects a broken spec whole, listing every problem by path', async () => {
    const s = await example('node-a.json');
    s.disks.raid.level = 5;
    s.network.ipsec.peers[1].address = 'not-an-ip';
    s.container.limits.memoryMax = 12;
    s.version = 0;
    s.disks.wipe = true;
    delete s.cluster;
    assert.deepEqual(problems(s), [
      { path: 'cluster', message: 'required (expected string)' },
      { path: 'version', message: 'too small: expected number to be >=1' },
      { path: 'disks.raid.level', message: 'expected one of 0,1,10' },
      { path: 'disks.wipe', message: 'unknown field' },
      { path: 'network.ipsec.peers[1].address', message: 'expected an IPv6 address' },
      { path: 'container.limits.memoryMax', message: 'expected string' },
    ]);
  });

  it('refuses a plaintext secret without repeating it', async () => {
    const s = await example('node-a.json');
    s.disks.luks.key = 'correct-horse-battery-staple';
    s.network.ipsec.peers[0].psk = 'another-plaintext-psk';
    const ps = problems(s);
    assert.deepEqual(
      ps.map((p) => p.path),
      ['disks.luks.key', 'network.ipsec.peers[0].psk'],
    );
    assert.match(ps[0]!.message, /plaintext keys are refused/);
    assert.match(ps[1]!.message, /plaintext secrets are refused/);
    const text = JSON.stringify(ps);
    assert.ok(!text.includes('correct-horse') && !text.includes('another-plaintext'), 'a problem quoted the secret');
  });

  it('checks relations between fields', async () => {
    const s = await example('node-b.json');
    s.network.ipsec.peers[1].node = 'node-b';
    s.network.ipsec.peers[1].address = s.network.ipsec.peers[0].address;
    s.restore.peer = 'node-b';
    s.disks.raid = undefined;
    assert.deepEqual(problems(s), [
      { path: 'disks.devices', message: '2 devices selected but no raid level given; a single volume uses exactly one device' },
      { path: 'network.ipsec.peers[1].address', message: 'address is used twice (by another peer or by this node)' },
      { path: 'network.ipsec.peers[1].node', message: 'a node cannot be its own peer' },
      { path: 'restore.peer', message: 'a node cannot restore from itself' },
    ]);
  });

  it('requires a PSK per peer when auth is psk, and the raid device count', async () => {
    const s = await example('node-c.json');
    delete s.network.ipsec.peers[0].psk;
    s.disks.devices = { paths: ['/dev/nvme1n1'] };
    assert.deepEqual(problems(s), [
      { path: 'disks.raid', message: 'RAID 1 needs at least 2 devices, 1 selected' },
      { path: 'network.ipsec.peers[0].psk', message: 'required when auth is "psk"' },
    ]);
  });

  it('fills defaults so later code never guesses', () => {
    const r = parseNodeSpec({ apiVersion: 'bosun/v1', cluster: 'c', node: 'n', version: 1 });
    assert.ok(r.ok);
    assert.deepEqual(r.value.auxiliary, []);
    assert.equal(r.value.health.intervalSeconds, 30);
  });

  it('rejects paths that climb out of their directory', () => {
    const r = parseNodeSpec({
      apiVersion: 'bosun/v1',
      cluster: 'c',
      node: 'n',
      version: 1,
      auxiliary: [{ name: 'x', unit: 'x.service', config: { path: '/etc/../root/.ssh/authorized_keys', content: '' } }],
    });
    assert.equal(r.ok, false);
    assert.deepEqual(r.ok ? [] : r.problems, [{ path: 'auxiliary[0].config.path', message: 'must not contain ".." components' }]);
  });
});

describe('AgentSettings', () => {
  it('accepts the example and fills defaults', async () => {
    const r = parseAgentSettings(await example('agent.json'));
    assert.ok(r.ok, r.ok ? '' : JSON.stringify(r.problems));
    const min = parseAgentSettings({
      node: 'node-a',
      kafka: { brokers: ['127.0.0.1:9092'] },
      trustedKeys: [{ id: 'k', publicKey: `ed25519:${'A'.repeat(43)}` }],
    });
    assert.ok(min.ok);
    assert.equal(min.value.stateDir, '/var/lib/bosun');
    assert.equal(min.value.topics.desired, 'bosun.desired');
  });

  it('needs at least one trusted key and well-formed brokers', () => {
    const r = parseAgentSettings({ node: 'node-a', kafka: { brokers: ['kafka'] }, trustedKeys: [], sasl: {} });
    assert.equal(r.ok, false);
    assert.deepEqual(r.ok ? [] : r.problems, [
      { path: 'kafka.brokers[0]', message: 'expected host:port' },
      { path: 'trustedKeys', message: 'too small: expected array to have >=1 items' },
      { path: 'sasl', message: 'unknown field' },
    ]);
  });
});
