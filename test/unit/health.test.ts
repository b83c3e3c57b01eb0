import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { validate } from 'node-cron';
import { cronFor } from '../../src/health/schedule.js';

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
