// The lab-time report at the end of `npm test` (test/lab/lab-times.ts): parallel guest starts count once in
// a file's "starting guests" seconds, and what is left of the file's wall time is its checks.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatReport, summarize, unionMs, type LabTimeRecord } from '../lab/lab-times.js';

const record = (file: string, kind: LabTimeRecord['kind'], at: number, ms: number, vm = 'a'): LabTimeRecord => ({ file, lab: 'l', vm, kind, at, ms });

describe('lab-time report', () => {
  it('counts overlapping intervals once and disjoint ones each', () => {
    assert.equal(unionMs([]), 0);
    assert.equal(
      unionMs([
        { at: 0, ms: 10 },
        { at: 5, ms: 10 },
      ]),
      15,
    );
    assert.equal(
      unionMs([
        { at: 20, ms: 5 },
        { at: 0, ms: 10 },
      ]),
      15,
    );
    assert.equal(
      unionMs([
        { at: 0, ms: 30 },
        { at: 5, ms: 5 },
      ]),
      30,
      'an interval inside another adds nothing',
    );
  });

  it("splits a file's wall time into starting guests and the checks, per file", () => {
    const rows = summarize([
      record('b.test.ts', 'file', 0, 100_000),
      record('b.test.ts', 'boot', 0, 40_000, 'x'),
      record('b.test.ts', 'boot', 10_000, 40_000, 'y'),
      record('b.test.ts', 'restore', 60_000, 5_000),
      record('a.test.ts', 'file', 0, 20_000),
      record('a.test.ts', 'restore', 0, 3_000),
    ]);
    assert.deepEqual(
      rows.map((r) => r.file),
      ['a.test.ts', 'b.test.ts'],
    );
    const b = rows[1]!;
    assert.deepEqual([b.wallS, b.boots, b.bootGuestS, b.restores, b.restoreGuestS, b.startingWallS, b.checksS], [100, 2, 80, 1, 5, 55, 45]);
    assert.match(formatReport(rows), /^file +wall s +boots .*\na\.test\.ts +20 +0 +0 +1 +3 +3 +17\n/);
  });
});
