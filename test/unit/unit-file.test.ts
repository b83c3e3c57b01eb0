import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, cp, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { repoRoot, withTempDir } from '../helpers.js';

const run = promisify(execFile);
const UNIT = join(repoRoot, 'units/bosun.service');

/**
 * `systemd-analyze verify` on bosun.service in a root that holds this host's
 * systemd units and a /usr/bin/bosun (verify checks the ExecStart binary).
 * verify exits 0 on unknown keys and only prints them, so any output fails.
 */
async function verify(unitText: string): Promise<{ code: number; output: string }> {
  return withTempDir(async (root) => {
    const units = join(root, 'usr/lib/systemd/system');
    await mkdir(join(root, 'usr/bin'), { recursive: true });
    await cp('/usr/lib/systemd/system', units, { recursive: true });
    await writeFile(join(units, 'bosun.service'), unitText);
    await writeFile(join(root, 'usr/bin/bosun'), '#!/bin/sh\n');
    await chmod(join(root, 'usr/bin/bosun'), 0o755);
    try {
      const r = await run('systemd-analyze', ['verify', `--root=${root}`, 'bosun.service'], { env: { ...process.env, SYSTEMD_LOG_COLOR: '0' } });
      return { code: 0, output: (r.stdout + r.stderr).trim() };
    } catch (e) {
      const err = e as { code?: number | string; stdout?: string; stderr?: string };
      if (err.code === 'ENOENT') throw new Error('systemd-analyze is missing: install systemd (test/setup/install does)', { cause: e });
      return { code: Number(err.code), output: `${err.stdout ?? ''}${err.stderr ?? ''}`.trim() };
    }
  });
}

describe('units/bosun.service', () => {
  it('passes systemd-analyze verify with no warning', async () => {
    const r = await verify(await readFile(UNIT, 'utf8'));
    assert.deepEqual(r, { code: 0, output: '' });
  });

  it('the check catches a mistake (an unknown key, a bad value)', async () => {
    const text = await readFile(UNIT, 'utf8');
    const typo = await verify(text.replace('WatchdogSec=', 'WatchDogSec='));
    assert.match(typo.output, /Unknown key 'WatchDogSec'/);
    const bad = await verify(text.replace(/^Type=notify$/m, 'Type=notifyy'));
    assert.match(bad.output, /Failed to parse service type|notifyy/);
  });

  it('is a notify service with a watchdog, a start limit and restart on failure, ordered before the service machine', async () => {
    const text = await readFile(UNIT, 'utf8');
    const keys = new Map<string, string>();
    for (const line of text.split('\n')) {
      const m = /^([A-Za-z]+)=(.*)$/.exec(line);
      if (m) keys.set(m[1]!, m[2]!);
    }
    for (const [k, v] of Object.entries({
      Type: 'notify',
      NotifyAccess: 'all',
      Restart: 'on-failure',
      WatchdogSec: '60s',
      Wants: 'network-online.target',
      Before: 'machines.target',
      ExecStart: '/usr/bin/bosun run',
    }))
      assert.equal(keys.get(k), v, k);
    assert.match(keys.get('After') ?? '', /network-online\.target/);
    assert.ok(keys.has('StartLimitIntervalSec') && keys.has('StartLimitBurst'));
    const dropIn = await readFile(join(repoRoot, 'units/bosun-nspawn.conf'), 'utf8');
    assert.match(dropIn, /^After=bosun\.service$/m);
  });

  it('its systemd-analyze security exposure stays at or below 5.5 (9.6 without the hardening)', async () => {
    await withTempDir(async (dir) => {
      await writeFile(join(dir, 'bosun.service'), await readFile(UNIT, 'utf8'));
      const r = await run('systemd-analyze', ['security', '--offline=yes', '--no-pager', join(dir, 'bosun.service')], {
        env: { ...process.env, SYSTEMD_LOG_COLOR: '0' },
      }).catch((e: { stdout?: string }) => ({ stdout: e.stdout ?? '' }));
      const m = /Overall exposure level for bosun\.service: (\d+\.\d)/.exec(r.stdout);
      assert.ok(m, r.stdout.slice(-500));
      assert.ok(Number(m[1]) <= 5.5, `exposure ${m[1]}`);
    });
  });
});
