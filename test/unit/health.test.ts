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
