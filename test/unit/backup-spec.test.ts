import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { validate as nodeCronAccepts } from 'node-cron';
import { isoWeekOf, planRetention, type BackupRef } from '../../src/backup/retention.js';
import { splayOffsetSeconds } from '../../src/daemon/backups.js';
import { BackupRetention, cronProblem } from '../../src/spec/backup-spec.js';
import { parseNodeSpec } from '../../src/spec/validate.js';
import { loadExample } from '../helpers.js';

const RECIPIENT = 'x25519:932uUFE8IdahTmT30rSDZKsHj2-W5shkDvBw33K7UFg';

/** node-a of the examples with a backup section (`consistency` and the rest as given). */
async function withBackup(
  backup: Record<string, unknown>,
  change: (spec: Record<string, any>) => void = () => undefined,
): Promise<ReturnType<typeof parseNodeSpec>> {
  const spec = JSON.parse(JSON.stringify(await loadExample('node-a'))) as Record<string, any>;
  spec.backup = { schedule: '0 3 * * *', target: { bucket: 'backups', prefix: 'pg-main/', recipient: RECIPIENT }, ...backup };
  change(spec);
  return parseNodeSpec(spec);
}

const problems = (result: ReturnType<typeof parseNodeSpec>): string[] => (result.ok ? [] : result.problems.map((p) => `${p.path}: ${p.message}`));

describe('the backup section of a spec', () => {
  it('accepts hooks, a snapshot command, or crash-consistent by name, with defaults filled in', async () => {
    for (const consistency of [
      {
        method: 'hooks',
        quiesce: ['systemctl', 'freeze', 'systemd-nspawn@postgres.service'],
        release: ['systemctl', 'thaw', 'systemd-nspawn@postgres.service'],
      },
      { method: 'snapshot', argv: ['pg_basebackup', '-D', '{spool}'], spoolDir: '/var/lib/bosun/backup-spool' },
      { method: 'crash-consistent' },
    ]) {
      const result = await withBackup({ consistency });
      assert.deepEqual(problems(result), [], JSON.stringify(consistency));
      assert.ok(result.ok);
      assert.deepEqual(result.value.backup!.retention, { last: 7, daily: 7, weekly: 4 });
      assert.equal(result.value.backup!.splaySeconds, 300);
      assert.equal(result.value.backup!.prune, false);
    }
  });

  it('refuses a backup that says nothing about consistency: a live volume copied as is must be asked for', async () => {
    assert.match(problems(await withBackup({})).join('\n'), /^backup\.consistency: /m);
  });

  it('refuses a spool inside the data volume, a backup without disks, and a recipient that is not a key', async () => {
    const spool = await withBackup({ consistency: { method: 'snapshot', argv: ['x'], spoolDir: '/var/lib/bosun/data/spool' } });
    assert.match(problems(spool).join('\n'), /backup\.consistency\.spoolDir: must be outside the data volume \(\/var\/lib\/bosun\/data\)/);
    const noDisks = await withBackup({ consistency: { method: 'crash-consistent' } }, (spec) => {
      delete spec.disks;
      delete spec.restore;
      delete spec.container.dataMountPoint;
    });
    assert.ok(problems(noDisks).includes('backup: backups are of the data volume: add "disks"'), problems(noDisks).join('\n'));
    const badKey = await withBackup({ consistency: { method: 'crash-consistent' }, target: { bucket: 'backups', recipient: 'ed25519:abc' } });
    assert.match(problems(badKey).join('\n'), /backup\.target\.recipient: expected an X25519 public key/);
  });

  it('refuses plaintext credentials', async () => {
    const result = await withBackup({
      consistency: { method: 'crash-consistent' },
      target: { bucket: 'backups', recipient: RECIPIENT, credentials: { accessKeyId: 'AKIA', secretAccessKey: 'secret' } },
    });
    assert.match(problems(result).join('\n'), /backup\.target\.credentials\.accessKeyId: expected a sealed secret/);
    assert.doesNotMatch(problems(result).join('\n'), /AKIA|secret"/);
  });
});

describe('cron expressions in a backup schedule', () => {
  const good = ['0 3 * * *', '*/15 * * * *', '0 0 */6 * * *', '30 2 * * 1-5', '0 4 1,15 * *', '0 0 * * 7', '5-55/10 * * * *'];
  const bad = [
    '',
    '* * * *',
    '0 3 * * * * *',
    '60 * * * *',
    '0 24 * * *',
    '0 3 0 * *',
    '0 3 * 13 *',
    '0 3 * * 8',
    '0 3 * JAN *',
    '*/0 * * * *',
    '10-5 * * * *',
    '0 3 * * MON',
  ];

  it('accepts what node-cron schedules, in 5 fields or 6 with seconds', () => {
    for (const expression of good) {
      assert.equal(cronProblem(expression), undefined, expression);
      assert.ok(nodeCronAccepts(expression), `node-cron refuses ${expression}`);
    }
  });

  it('refuses wrong field counts, numbers out of range, backwards ranges, zero steps and names, with the field named', () => {
    for (const expression of bad) assert.ok(cronProblem(expression), `accepted: "${expression}"`);
    assert.equal(cronProblem('0 24 * * *'), 'hour "24" is outside 0-23');
    assert.equal(cronProblem('0 3 * JAN *'), 'month "JAN" is not *, a number or a range (names are not accepted)');
    assert.equal(cronProblem('* * * *'), 'expected 5 fields (minute hour day month weekday) or 6 (seconds first), got 4');
  });
});

describe('retention', () => {
  const policy = (p: Partial<BackupRetention>): BackupRetention => ({ last: 1, daily: 0, weekly: 0, ...p });
  /** one backup at each of the given UTC times, ids in time order */
  const backups = (...times: string[]): BackupRef[] => times.map((createdAt, i) => ({ backupId: `b${String(i).padStart(2, '0')}`, createdAt }));
  const kept = (plan: ReturnType<typeof planRetention>): string[] => plan.keep.map((b) => `${b.backupId}:${b.reasons.join('+')}`);

  it('keeps the newest N, and drops the rest newest first', () => {
    const plan = planRetention(backups('2026-12-01T03:00:00Z', '2026-12-02T03:00:00Z', '2026-12-03T03:00:00Z'), policy({ last: 2 }));
    assert.deepEqual(kept(plan), ['b02:last', 'b01:last']);
    assert.deepEqual(
      plan.drop.map((b) => b.backupId),
      ['b00'],
    );
  });

  it('keeps the newest backup of each of the last D days that have one, skipping days without', () => {
    const set = backups('2026-12-01T01:00:00Z', '2026-12-01T13:00:00Z', '2026-12-03T01:00:00Z', '2026-12-03T13:00:00Z', '2026-12-04T01:00:00Z');
    assert.deepEqual(kept(planRetention(set, policy({ daily: 3 }))), ['b04:last+daily', 'b03:daily', 'b01:daily']);
  });

  it('keeps the newest of each ISO week, weeks starting on Monday', () => {
    // 2026-11-29 is a Sunday (week 48), 2026-11-30 a Monday (week 49).
    const set = backups('2026-11-28T00:00:00Z', '2026-11-29T23:00:00Z', '2026-11-30T00:00:00Z', '2026-12-06T12:00:00Z');
    assert.deepEqual(kept(planRetention(set, policy({ weekly: 2 }))), ['b03:last+weekly', 'b01:weekly']);
    assert.equal(isoWeekOf(new Date('2026-11-29T23:00:00Z')), '2026-W48');
    assert.equal(isoWeekOf(new Date('2026-11-30T00:00:00Z')), '2026-W49');
    assert.equal(isoWeekOf(new Date('2027-01-01T00:00:00Z')), '2026-W53', 'a Friday in the last ISO week of 2026');
    assert.equal(isoWeekOf(new Date('2024-12-30T00:00:00Z')), '2025-W01', 'a Monday in the first ISO week of 2025');
  });

  it('never drops the newest backup, and an empty set plans nothing', () => {
    const set = backups('2026-12-01T03:00:00Z', '2026-12-02T03:00:00Z');
    assert.equal(planRetention(set, policy({ last: 1 })).keep[0]!.backupId, 'b01');
    assert.deepEqual(planRetention([], policy({ last: 3, daily: 3 })), { keep: [], drop: [] });
  });
});

describe('the splay of a scheduled backup', () => {
  it("is fixed per node, within the spec's window, spread across a fleet, and 0 when the window is", async () => {
    const result = await withBackup({ consistency: { method: 'crash-consistent' }, splaySeconds: 300 });
    assert.ok(result.ok);
    const offsets = Array.from({ length: 100 }, (_, i) => splayOffsetSeconds({ ...result.value, node: `node-${i}` }));
    assert.ok(
      offsets.every((s) => Number.isInteger(s) && s >= 0 && s <= 300),
      String(offsets),
    );
    assert.ok(new Set(offsets).size > 70, `only ${new Set(offsets).size} distinct offsets for 100 nodes`);
    assert.equal(splayOffsetSeconds(result.value), splayOffsetSeconds(result.value));
    assert.equal(splayOffsetSeconds({ ...result.value, backup: { ...result.value.backup!, splaySeconds: 0 } }), 0);
  });
});
