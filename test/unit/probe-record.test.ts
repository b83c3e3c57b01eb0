import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { DISTROS } from '../../src/host/distro.js';
import type { HostProbe } from '../../src/host/probe.js';
import { RecordingProbe, ReplayProbe, type ProbeRecording } from '../../src/host/probe-record.js';
import { planNode } from '../../src/phases/index.js';
import { parseNodeSpec } from '../../src/spec/validate.js';
import { examplesDir } from '../helpers.js';

/** A host with a few answers of every kind; anything else is absent or fails. */
const host: HostProbe = {
  blank: false,
  run: (argv) => Promise.resolve(argv[0] === 'lsblk' ? { exitCode: 0, stdout: '{"blockdevices":[]}', stderr: '' } : { exitCode: 1, stdout: '', stderr: 'no' }),
  links: (dir) => Promise.resolve(dir === '/dev/disk/by-id' ? [{ name: '/dev/disk/by-id/nvme-x', target: '/dev/nvme0n1' }] : []),
  stat: (p) => Promise.resolve(p === '/srv' ? { uid: 0, gid: 0, mode: 0o755 } : undefined),
  usage: () => Promise.resolve(undefined),
  listDir: () => Promise.resolve(['a', 'b']),
  readFile: (p) => Promise.resolve(p.endsWith('.conf') ? Buffer.from([0, 1, 2, 255]) : undefined),
  unitState: () => Promise.resolve({ enabled: 'enabled', active: 'active' }),
};

describe('probe recording and replay', () => {
  it('replays a recorded plan to the same steps, after a round trip through JSON', async () => {
    const r = parseNodeSpec(JSON.parse(await readFile(join(examplesDir, 'node-a.json'), 'utf8')));
    assert.ok(r.ok);
    // its match rule wants NVMe disks this fake host does not have; restore and the container use that volume
    delete r.value.disks;
    delete r.value.restore;
    delete r.value.container;
    const rec = new RecordingProbe(host);
    const live = await planNode(r.value, rec, { distro: DISTROS.fedora });
    assert.ok(rec.entries.length > 5, `a node plan asks the host several questions (got ${rec.entries.length})`);
    assert.ok(rec.entries.every((e) => e.ms >= 0));
    const replay = new ReplayProbe(JSON.parse(JSON.stringify(rec.recording())) as ProbeRecording);
    assert.deepEqual(await planNode(r.value, replay, { distro: DISTROS.fedora }), live);
    replay.rewind();
    assert.deepEqual(await planNode(r.value, replay, { distro: DISTROS.fedora }), live);
  });

  it('keeps binary file contents and absent files apart', async () => {
    const rec = new RecordingProbe(host);
    await rec.readFile('/etc/x.conf');
    await rec.readFile('/etc/none');
    const replay = new ReplayProbe(JSON.parse(JSON.stringify(rec.recording())) as ProbeRecording);
    assert.deepEqual(await replay.readFile('/etc/x.conf'), Buffer.from([0, 1, 2, 255]));
    assert.equal(await replay.readFile('/etc/none'), undefined);
  });

  it('refuses a question the recording does not hold, and a file that is not a recording', async () => {
    const replay = new ReplayProbe({ format: 'bosun-probe-recording-v1', entries: [] });
    await assert.rejects(async () => replay.run(['lsblk']), /question not in the recording: run \[\["lsblk"\]\]/);
    assert.throws(() => new ReplayProbe({ format: 'other' } as unknown as ProbeRecording), /not a probe recording/);
  });
});
