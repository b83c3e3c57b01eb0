import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { validate } from 'node-cron';
import { HealthSchedule, cronFor } from '../../src/health/schedule.js';
import { parseUnitShow } from '../../src/host/probe.js';

describe('health schedule', () => {
  it('turns intervals into evenly spaced cron expressions', () => {
    assert.equal(cronFor(30), '*/30 * * * * *');
    assert.equal(cronFor(5), '*/5 * * * * *');
    assert.equal(cronFor(7), '*/6 * * * * *');
    assert.equal(cronFor(60), '0 */1 * * * *');
    assert.equal(cronFor(300), '0 */5 * * * *');
    assert.equal(cronFor(3600), '0 0 * * * *');
    for (const s of [5, 7, 30, 59, 60, 90, 300, 3600]) assert.ok(validate(cronFor(s)), cronFor(s));
  });

  it('runs a round at once on request, queues one more (not more) behind a running round, and survives a round that throws', async () => {
    const errors: unknown[] = [];
    let rounds = 0;
    let release: () => void = () => {};
    let fail = false;
    const h = new HealthSchedule(
      async () => {
        rounds += 1;
        if (fail) throw new Error('probe failed');
        await new Promise<void>((r) => (release = r));
      },
      (e) => errors.push(e),
    );
    try {
      const first = h.runNow();
      assert.equal(rounds, 1, 'the round starts at once, not at the next tick');
      const second = h.runNow();
      const third = h.runNow();
      release();
      await new Promise((r) => setImmediate(r));
      assert.equal(rounds, 2, 'requests during a round add exactly one more round');
      release();
      await Promise.all([first, second, third]);
      assert.equal(rounds, 2);
      fail = true;
      await h.runNow();
      assert.equal(rounds, 3);
      assert.match(String(errors[0]), /probe failed/);
      fail = false;
      const after = h.runNow();
      release();
      await after;
      assert.equal(rounds, 4, 'a round that threw does not stop the next');
      h.every(30);
      h.every(30);
      assert.equal(h.intervalSeconds, 30);
      h.every(5);
      assert.equal(h.intervalSeconds, 5);
    } finally {
      await h.stop();
    }
    await h.runNow();
    assert.equal(rounds, 4, 'nothing runs after stop');
  });
});

describe('metrics endpoint', () => {
  it('serves Prometheus text on loopback', async () => {
    const { serveMetrics } = await import('../../src/health/metrics.js');
    const server = await serveMetrics({ host: '127.0.0.1', port: 0 }, () => [
      { name: 'bosun_applied_version', help: 'spec version applied', type: 'gauge', value: 7 },
      { name: 'bosun_refused_total', help: 'messages refused', type: 'counter', value: 2, labels: { reason: 'bad-signature' } },
      { name: 'bosun_refused_total', help: 'messages refused', type: 'counter', value: 1, labels: { reason: 'wrong "node"' } },
    ]);
    try {
      const { port } = server.address() as { port: number };
      const res = await fetch(`http://127.0.0.1:${port}/metrics`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
      assert.equal(
        await res.text(),
        '# HELP bosun_applied_version spec version applied\n# TYPE bosun_applied_version gauge\nbosun_applied_version 7\n# HELP bosun_refused_total messages refused\n# TYPE bosun_refused_total counter\nbosun_refused_total{reason="bad-signature"} 2\nbosun_refused_total{reason="wrong \\"node\\""} 1\n',
      );
      assert.equal((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
    } finally {
      server.close();
    }
  });
});

describe('unit state from systemctl show', () => {
  it('words it as is-enabled and is-active do', () => {
    assert.deepEqual(parseUnitShow('LoadState=loaded\nActiveState=active\nUnitFileState=enabled\n'), { enabled: 'enabled', active: 'active' });
    // systemd prints the properties in its own order, not the order asked for
    assert.deepEqual(parseUnitShow('ActiveState=failed\nUnitFileState=disabled\nLoadState=loaded'), { enabled: 'disabled', active: 'failed' });
    assert.deepEqual(parseUnitShow('LoadState=loaded\nActiveState=activating\nUnitFileState=enabled-runtime\n'), {
      enabled: 'enabled-runtime',
      active: 'activating',
    });
  });
  it('says not-found for a unit systemd does not know, unknown where there is no unit file state', () => {
    assert.deepEqual(parseUnitShow('LoadState=not-found\nActiveState=inactive\nUnitFileState=\n'), { enabled: 'not-found', active: 'inactive' });
    assert.deepEqual(parseUnitShow('LoadState=loaded\nActiveState=active\nUnitFileState=\n'), { enabled: 'unknown', active: 'active' });
    assert.deepEqual(parseUnitShow(''), { enabled: 'unknown', active: 'unknown' });
  });
});
