import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { DoneSet } from '../../src/backup/journal.js';
import { isBosunError } from '../../src/errors.js';
import { planToJson, renderPlanText } from '../../src/engine/render.js';
import type { Step } from '../../src/engine/step.js';
import { DISTROS } from '../../src/host/distro.js';
import { BlankProbe, type HostProbe } from '../../src/host/probe.js';
import { phasesFor } from '../../src/phases/index.js';
import { MARKER_FORMAT } from '../../src/backup/marker.js';
import { restorePhase } from '../../src/phases/restore/index.js';
import type { NodeSpec } from '../../src/spec/node-spec.js';
import { loadExample, matchGolden } from '../helpers.js';

const DATA = '/var/lib/bosun/data';
const ctx = { distro: DISTROS.fedora };

/** The data volume as the phase sees it: files by path, directory listings derived from them. */
class VolumeProbe implements HostProbe {
  readonly blank = false;
  readonly #blank = new BlankProbe();

  constructor(readonly files: Record<string, string>) {}

  readFile(path: string): Promise<Buffer | undefined> {
    const v = this.files[path];
    return Promise.resolve(v === undefined ? undefined : Buffer.from(v));
  }

  listDir(dir: string): Promise<string[]> {
    const names = Object.keys(this.files)
      .filter((p) => p.startsWith(`${dir}/`))
      .map((p) => p.slice(dir.length + 1).split('/')[0]!);
    return Promise.resolve([...new Set(names)].sort());
  }

  unitState = (): ReturnType<HostProbe['unitState']> => this.#blank.unitState();
  run = (): ReturnType<HostProbe['run']> => this.#blank.run();
  links = (): ReturnType<HostProbe['links']> => this.#blank.links();
  stat = (): ReturnType<HostProbe['stat']> => this.#blank.stat();
  usage = (): ReturnType<HostProbe['usage']> => this.#blank.usage();
}

const asProbe = (p: VolumeProbe): HostProbe => p;

async function plan(spec: NodeSpec, probe: HostProbe): Promise<Step[]> {
  return restorePhase.plan(spec, await restorePhase.observe(spec, probe, ctx), ctx);
}

function text(spec: NodeSpec, steps: Step[]): string {
  return renderPlanText({ node: spec.node, cluster: spec.cluster, version: spec.version, distro: 'fedora', observed: 'host' }, steps);
}

const BACKUP = '20261122T063737Z-0a22cf7b';
const marker = (over: Record<string, unknown> = {}): string =>
  JSON.stringify({
    format: MARKER_FORMAT,
    source: 's3://bosun-backups-eu1/pg-main/',
    requested: 'latest',
    backupId: BACKUP,
    manifestDigest: 'ab'.repeat(32),
    target: DATA,
    bytes: 1,
    files: 1,
    completedAt: '2026-11-22T06:40:00.000Z',
    ...over,
  });

function journal(done: number, of: number, state = 'fetching'): string {
  const d = new DoneSet(of);
  for (let i = 0; i < done; i++) d.add(i);
  return JSON.stringify({
    format: 'bosun-restore-journal-v1',
    backupId: BACKUP,
    manifestDigest: 'ab'.repeat(32),
    chunks: of,
    done: d.encode(),
    state,
    updatedAt: '2026-11-22T06:40:00.000Z',
  });
}

function refused(pattern: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(isBosunError(e), String(e));
    assert.equal(e.code, 'E_REFUSED');
    assert.match(e.message, pattern);
    assert.match(e.message, /nothing was changed/);
    return true;
  };
}

describe('restore phase planning', () => {
  it('runs after disks and network and before the container', async () => {
    const stages = phasesFor(await loadExample('node-a'));
    assert.ok(stages.indexOf('restore') > stages.indexOf('network'));
    assert.ok(stages.indexOf('restore') > stages.indexOf('disks/mount'));
    assert.ok(stages.indexOf('restore') < stages.indexOf('container'));
  });

  it('blank data volume: one restore step, secrets only as references (golden)', async () => {
    const spec = await loadExample('node-a');
    const steps = await plan(spec, new BlankProbe());
    assert.equal(steps.length, 1);
    const s = steps[0]!;
    assert.equal(s.kind, 'restore');
    if (s.kind !== 'restore' || s.from !== 'object-storage') return assert.fail('an object-storage restore step');
    assert.equal(s.target, DATA);
    assert.equal(s.marker, `${DATA}/.bosun-restored.json`);
    assert.equal(s.backupKey?.label, 'restore.backupKey');
    assert.equal(s.credentials?.secretAccessKey.label, 'restore.credentials.secretAccessKey');
    const json = JSON.stringify(planToJson({ node: spec.node, cluster: spec.cluster, version: spec.version, distro: 'fedora', observed: 'host' }, steps));
    assert.doesNotMatch(json, /bosun-sealed-v1/, 'no sealed value in the printed plan');
    assert.match(json, /<redacted:restore.backupKey>/);
    await matchGolden('restore-blank.txt', text(spec, steps));
    // An empty fresh filesystem (lost+found only) is the same as blank.
    assert.deepEqual(await plan(spec, asProbe(new VolumeProbe({ [`${DATA}/lost+found/x`]: '' }))), steps);
  });

  it('already restored (marker for this source and backup): nothing to do', async () => {
    const spec = await loadExample('node-a');
    const probe = asProbe(new VolumeProbe({ [`${DATA}/.bosun-restored.json`]: marker(), [`${DATA}/base/1`]: 'data', [`${DATA}/PG_VERSION`]: '16' }));
    assert.deepEqual(await plan(spec, probe), []);
    // A spec naming that exact backup id is satisfied too.
    const pinned = { ...spec, restore: { ...spec.restore!, backup: BACKUP } } as NodeSpec;
    assert.deepEqual(await plan(pinned, probe), []);
  });

  it('half-restored (a journal and a staging dir): a step that continues it (golden)', async () => {
    const spec = await loadExample('node-a');
    const steps = await plan(
      spec,
      asProbe(new VolumeProbe({ [`${DATA}/.bosun-restore.journal`]: journal(37, 120), [`${DATA}/.bosun-restore/base/1`]: 'partial' })),
    );
    assert.equal(steps.length, 1);
    assert.equal(steps[0]!.kind, 'restore');
    assert.match(steps[0]!.why, /continue the interrupted restore of backup 20261122T063737Z-0a22cf7b \(37 of 120 chunks written/);
    await matchGolden('restore-half.txt', text(spec, steps));
    // Killed during the commit, with part of the tree already moved up: still continued, not refused as foreign data.
    const committing = await plan(
      spec,
      asProbe(
        new VolumeProbe({
          [`${DATA}/.bosun-restore.journal`]: journal(120, 120, 'committing'),
          [`${DATA}/base/1`]: 'moved',
          [`${DATA}/.bosun-restore/PG_VERSION`]: '16',
        }),
      ),
    );
    assert.match(committing[0]!.why, /120 of 120 chunks written, committing/);
  });

  it('refuses a volume restored from another backup or source, foreign data, and a marker it did not write', async () => {
    const spec = await loadExample('node-a');
    const pinned = { ...spec, restore: { ...spec.restore!, backup: '20250101T000000Z-00000000' } } as NodeSpec;
    await assert.rejects(
      plan(pinned, asProbe(new VolumeProbe({ [`${DATA}/.bosun-restored.json`]: marker() }))),
      refused(/already holds backup 20261122T063737Z-0a22cf7b of s3:\/\/bosun-backups-eu1\/pg-main\/.*asks for backup 20250101T000000Z-00000000/),
    );
    await assert.rejects(
      plan(spec, asProbe(new VolumeProbe({ [`${DATA}/.bosun-restored.json`]: marker({ source: 's3://elsewhere/x/' }) }))),
      refused(/already holds backup .* of s3:\/\/elsewhere\/x\//),
    );
    await assert.rejects(
      plan(spec, asProbe(new VolumeProbe({ [`${DATA}/PG_VERSION`]: '16', [`${DATA}/base/1`]: 'x' }))),
      refused(/holds data that no bosun restore wrote \(PG_VERSION, base\)/),
    );
    await assert.rejects(
      plan(spec, asProbe(new VolumeProbe({ [`${DATA}/.bosun-restored.json`]: '{"hello":1}' }))),
      refused(/is not a restore marker bosun wrote/),
    );
  });

  it('from a peer: a snapshot step pinned to the peer key, with the object-storage fallback; the peer command method', async () => {
    const spec = await loadExample('node-b');
    const steps = await plan(spec, new BlankProbe());
    assert.equal(steps.length, 1);
    const s = steps[0]!;
    if (s.kind !== 'restore' || s.from !== 'peer') return assert.fail('a peer restore step');
    assert.equal(s.method, 'snapshot');
    assert.equal(s.peerAddress, 'fd00:b05:0:1::a');
    assert.equal(s.port, 7433);
    assert.equal(s.peerKey, spec.restore?.from === 'peer' ? spec.restore.peerKey : undefined);
    assert.equal(s.fallback?.bucket, 'bosun-backups-eu1');
    assert.equal(s.fallback?.credentials?.secretAccessKey.label, 'restore.fallback.credentials.secretAccessKey');
    assert.doesNotMatch(
      JSON.stringify(planToJson({ node: spec.node, cluster: spec.cluster, version: spec.version, distro: 'fedora', observed: 'host' }, steps)),
      /bosun-sealed-v1/,
    );

    const cmd = await loadExample('node-b');
    if (cmd.restore?.from !== 'peer') return assert.fail();
    cmd.restore.method = 'command';
    cmd.restore.command = { argv: ['pg_basebackup', '-h', '{peerAddress}', '-D', '{target}'] };
    const [c] = await plan(cmd, new BlankProbe());
    if (c?.kind !== 'restore' || c.from !== 'peer') return assert.fail('a peer restore step');
    assert.deepEqual([c.method, c.argv], ['command', ['pg_basebackup', '-h', '{peerAddress}', '-D', '{target}']]);
  });

  it('from a peer: done once a marker from the peer or from its fallback is there; a snapshot without the peer key is a spec error', async () => {
    const spec = await loadExample('node-b');
    const peerMarker = marker({ source: 'peer://node-a', requested: 'snapshot' });
    assert.deepEqual(await plan(spec, asProbe(new VolumeProbe({ [`${DATA}/.bosun-restored.json`]: peerMarker, [`${DATA}/pgdata/PG_VERSION`]: '16' }))), []);
    assert.deepEqual(await plan(spec, asProbe(new VolumeProbe({ [`${DATA}/.bosun-restored.json`]: marker() }))), []);
    await assert.rejects(
      plan(spec, asProbe(new VolumeProbe({ [`${DATA}/.bosun-restored.json`]: marker({ source: 'peer://node-c' }) }))),
      refused(/already holds .* peer:\/\/node-c.* a copy from peer node-a/),
    );
    if (spec.restore?.from !== 'peer') return assert.fail();
    delete spec.restore.peerKey;
    await assert.rejects(plan(spec, new BlankProbe()), /restore.peerKey: required/);
  });
});

describe('sparse slice writer', () => {
  it('a slice that ends in zero blocks still reaches its end, and its zero blocks stay holes', async () => {
    const { writeSlice } = await import('../../src/backup/slice-writer.js');
    const { openSync, closeSync, statSync } = await import('node:fs');
    const { withTempDir } = await import('../helpers.js');
    await withTempDir(async (dir) => {
      const slice = Buffer.alloc(4 * 1024 * 1024);
      slice.fill(7, 0, 100_000);
      const fd = openSync(join(dir, 'f'), 'w');
      try {
        writeSlice(fd, slice, 8 * 1024 * 1024, true, Buffer.alloc(1 << 16));
      } finally {
        closeSync(fd);
      }
      const st = statSync(join(dir, 'f'));
      assert.equal(st.size, 12 * 1024 * 1024, 'the file reaches the end of the slice');
      assert.ok(st.blocks * 512 <= 256 * 1024, `${st.blocks * 512} bytes allocated: the zero blocks were written`);
      const back = await readFile(join(dir, 'f'));
      assert.ok(back.subarray(8 * 1024 * 1024).equals(slice));
    });
  });

  it('writes a slice in pieces of at most WRITE_PIECE bytes, each where it belongs, sparse or not', async () => {
    const { writeSlice, WRITE_PIECE } = await import('../../src/backup/slice-writer.js');
    const { openSync, closeSync, writeSync } = await import('node:fs');
    const { randomBytes } = await import('node:crypto');
    const { withTempDir } = await import('../helpers.js');
    await withTempDir(async (dir) => {
      for (const sparse of [false, true]) {
        // Data, a run of zero blocks, data again: 4 MiB and a bit.
        const slice = randomBytes(4 * 1024 * 1024 + 5);
        slice.fill(0, 2 * 1024 * 1024, 2 * 1024 * 1024 + 64 * 1024);
        const path = join(dir, `f-${sparse}`);
        const fd = openSync(path, 'w');
        const calls: Array<[number, number]> = [];
        try {
          writeSlice(
            fd,
            slice,
            3 * 1024 * 1024,
            sparse,
            Buffer.alloc(1 << 16),
            (f, buf, off, len, pos) => (calls.push([len, pos]), writeSync(f, buf, off, len, pos)),
          );
        } finally {
          closeSync(fd);
        }
        for (const [len] of calls) assert.ok(len > 0 && len <= WRITE_PIECE, `a write of ${len} bytes`);
        assert.ok(calls.length >= Math.ceil((slice.length - 64 * 1024) / WRITE_PIECE), `${calls.length} writes`);
        const written = calls.reduce((n, [len]) => n + len, 0);
        assert.equal(written, sparse ? slice.length - 64 * 1024 : slice.length, 'every byte once (zero blocks skipped when sparse)');
        const back = await readFile(path);
        assert.ok(back.subarray(3 * 1024 * 1024).equals(slice), `sparse=${sparse}: the file holds the slice at its offset`);
      }
    });
  });
});
