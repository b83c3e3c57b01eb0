import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { transientUnitArgv } from '../../src/host/systemd.js';
import { classifyDnfFailure, refreshPackages, type AttemptReport, type RefreshOptions } from '../../src/host/dnf.js';
import { isBosunError } from '../../src/errors.js';
import { repoRoot, withTempDir } from '../helpers.js';

const FIXTURES = join(repoRoot, 'test/fixtures/dnf');

/**
 * The wrapper against a scripted stand-in for dnf (test/fixtures/dnf/dnf) that
 * prints dnf4's and dnf5's own messages and exits with their codes, and a
 * stand-in rpm database. Time is virtual: sleeps advance the clock.
 */
async function scenario(dir: string, scenarios: string[], extra: Partial<RefreshOptions> = {}) {
  const file = join(dir, 'scenarios');
  await writeFile(file, scenarios.join('\n') + '\n');
  await writeFile(join(dir, 'rpmdb'), 'libreswan 4.12-2.fc40\ncurl 8.6.0-8.fc40\nmdadm 4.3-3.fc40\n');
  await writeFile(join(dir, 'upgrades'), 'libreswan 4.15-1.fc40\ncurl 8.6.0-10.fc40\n');
  process.env.DNF_SCENARIOS = file;
  process.env.FAKE_RPMDB = join(dir, 'rpmdb');
  process.env.DNF_UPGRADES = join(dir, 'upgrades');
  let clock = 1_000_000;
  const sleeps: number[] = [];
  const attempts: AttemptReport[] = [];
  const run = async () => {
    try {
      return {
        ok: true as const,
        result: await refreshPackages({
          packages: ['libreswan', 'curl', 'mdadm'],
          dnf: [join(FIXTURES, 'dnf')],
          rpm: [join(FIXTURES, 'rpm')],
          deadlineMs: 600_000,
          initialDelayMs: 5_000,
          maxDelayMs: 60_000,
          random: () => 0.5,
          now: () => clock,
          sleep: (ms) => {
            sleeps.push(ms);
            clock += ms;
            return Promise.resolve();
          },
          onAttempt: (a) => attempts.push(a),
          ...extra,
        }),
      };
    } catch (e) {
      return { ok: false as const, error: e };
    }
  };
  const out = await run();
  const calls = (await readFile(`${file}.log`, 'utf8')).trim().split('\n');
  return { out, sleeps, attempts, calls };
}

describe('package refresh through dnf', () => {
  it('retries mirror timeouts, connection resets, metadata errors and a held lock with growing backoff, then reports what was updated', async () => {
    await withTempDir(async (dir) => {
      const { out, sleeps, attempts, calls } = await scenario(dir, ['timeout4', 'reset4', 'metadata5', 'lock4', 'ok']);
      assert.ok(out.ok, String(!out.ok && out.error));
      assert.deepEqual(out.result.updated, [
        { name: 'libreswan', from: '4.12-2.fc40', to: '4.15-1.fc40' },
        { name: 'curl', from: '8.6.0-8.fc40', to: '8.6.0-10.fc40' },
      ]);
      assert.deepEqual(out.result.unchanged, ['mdadm']);
      assert.equal(out.result.attempts, 5);
      assert.deepEqual(sleeps, [5_000, 10_000, 20_000, 40_000]);
      assert.deepEqual(
        attempts.map((a) => a.failure?.reason ?? 'ok'),
        ['mirror timeout', 'connection reset', 'mirror error (HTTP 503)', 'another package transaction holds the lock', 'ok'],
      );
      assert.ok(attempts.slice(0, 4).every((a) => a.failure?.kind === 'transient' && a.retryInMs !== undefined));
      assert.equal(calls.length, 5);
      assert.equal(calls[0], '-y --refresh upgrade libreswan curl mdadm');
    });
  });

  for (const [name, reason] of [
    ['nomatch4', /no such package: nosuchpkg/],
    ['nomatch5', /no such package: nosuchpkg/],
    ['conflict4', /dependency conflict: cannot install the best update candidate for package libreswan/],
    ['diskfull4', /disk full: 61MB more needed on \//],
    ['diskfull5', /disk full: 61MB more needed on \//],
    ['unknown', /dnf failed \(exit 1\): Error: something nobody has seen before/],
  ] as const) {
    it(`fails at once on a permanent failure: ${name}`, async () => {
      await withTempDir(async (dir) => {
        const { out, sleeps, calls } = await scenario(dir, [name, 'ok']);
        assert.equal(out.ok, false);
        const e = !out.ok ? out.error : undefined;
        assert.ok(isBosunError(e) && e.code === 'E_PACKAGES', String(e));
        assert.match(e.message, reason);
        assert.match(e.message, /after 1 attempt: .*\(permanent; not retried\)/);
        assert.equal(e.details.kind, 'permanent');
        assert.deepEqual(sleeps, []);
        assert.equal(calls.length, 1, 'dnf ran once');
        assert.equal(await readFile(join(dir, 'rpmdb'), 'utf8'), 'libreswan 4.12-2.fc40\ncurl 8.6.0-8.fc40\nmdadm 4.3-3.fc40\n', 'nothing changed');
      });
    });
  }

  it('gives up at the deadline when the mirrors stay down, without sleeping past it', async () => {
    await withTempDir(async (dir) => {
      const { out, sleeps, calls } = await scenario(dir, ['timeout4'], { deadlineMs: 60_000 });
      assert.equal(out.ok, false);
      const e = !out.ok ? out.error : undefined;
      assert.ok(isBosunError(e));
      assert.match(e.message, /failed after 4 attempts: mirror timeout \(transient; gave up: the 60 s deadline leaves no room for another try\)/);
      assert.deepEqual(sleeps, [5_000, 10_000, 20_000]);
      assert.ok(sleeps.reduce((a, b) => a + b, 0) < 60_000);
      assert.equal(calls.length, 4);
    });
  });

  it('classifies the real messages', () => {
    assert.deepEqual(
      classifyDnfFailure(
        1,
        "Error: Failed to download metadata for repo 'fedora': Cannot download repomd.xml: Cannot download repodata/repomd.xml: All mirrors were tried",
      ),
      { kind: 'transient', reason: 'metadata download failed for fedora' },
    );
    assert.equal(classifyDnfFailure(1, "Curl error (6): Couldn't resolve host name for https://x [Could not resolve host: x]").reason, 'mirror unreachable');
    assert.equal(classifyDnfFailure(1, 'Error: GPG check FAILED').kind, 'permanent');
    assert.equal(classifyDnfFailure(1, "[Errno 28] No space left on device: '/var/cache/dnf/updates'").reason, 'disk full: no space left on device');
    assert.equal(classifyDnfFailure(undefined, '').kind, 'transient');
    // a permanent cause wins over a transient one in the same run
    assert.equal(
      classifyDnfFailure(1, "Errors during downloading metadata for repository 'x':\n  - Curl error (28): Timeout was reached\nNo match for argument: foo")
        .kind,
      'permanent',
    );
  });
});

describe('commands in a transient unit (systemd-run)', () => {
  it('wraps dnf as Host.refreshPackages always did, and adds a unit name and settings when asked', () => {
    assert.deepEqual(transientUnitArgv(['dnf']), [
      'systemd-run',
      '--quiet',
      '--wait',
      '--pipe',
      '--collect',
      '--service-type=exec',
      '-p',
      'KillMode=mixed',
      '--',
      'dnf',
    ]);
    assert.deepEqual(transientUnitArgv(['bosun', 'backup', 'job'], { unit: 'bosun-backup.service', properties: ['CPUWeight=20', 'IOWeight=20'] }), [
      'systemd-run',
      '--quiet',
      '--wait',
      '--pipe',
      '--collect',
      '--service-type=exec',
      '--unit=bosun-backup.service',
      '-p',
      'KillMode=mixed',
      '-p',
      'CPUWeight=20',
      '-p',
      'IOWeight=20',
      '--',
      'bosun',
      'backup',
      'job',
    ]);
  });
});
