// The restore phase on a real kernel: the real agent builds RAID1 + LUKS2 +
// xfs from blank disks, then restores a backup made on the host into the
// LUKS volume from MinIO on the host (reached at 10.0.2.100 through
// guestfwd), and the restored tree is checked in the guest file by file
// (SHA-256, mode, owner, symlink, hard link, sparse file). A second apply
// finds the completion marker and restores nothing. One VM.
//
//   npx tsc -p tsconfig.json && BOSUN_LAB_KEEP=30 node --test dist/test/lab/restore.test.js
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { chmod, chown, link, lstat, mkdir, mkdtemp, open, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createBackup, createS3Client, S3Transport, type BackupResult } from '../../src/backup/index.js';
import { publicKeyString, seal, x25519PublicFromString } from '../../src/identity/seal.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import { GUEST_HOST_ADDRESS, labRunDir, startLab, type Lab, type Vm } from './driver.js';
import { journalGuard } from './guard.js';

const LAB = 'restore-luks';
const NODE = 'restore-a';
const BOSUN = ['node', '/opt/bosun/dist/src/cli.js'];
const DISK = (n: number) => `/dev/disk/by-id/virtio-bosun-disk${n}`;
const DATA = '/var/lib/bosun/data';
const MiB = 1024 * 1024;
const RUN = randomUUID().slice(0, 8);
const figures: Record<string, unknown> = {};
let lab: Lab | undefined;
let vm: Vm;
let services: ServiceEnv;
let work: string;
let backup: BackupResult;
let expected: string;
const backupKey = generateKeyPairSync('x25519');
const prefix = `bosun-lab/restore/${RUN}/`;

async function sh(script: string, timeoutMs = 120_000): Promise<string> {
  const r = await vm.exec(['sh', '-c', script], { timeoutMs });
  assert.equal(r.exitCode, 0, `${script}\n${r.stderr}`);
  return r.stdout.trim();
}

/**
 * One line per entry, sorted by path: what must survive a restore. The same
 * listing is made on the host (from the source) and in the guest (by a shell
 * pipeline), so the comparison does not trust any bosun code.
 *   f <path> <mode> <uid>:<gid> <size> <sha256>   regular file
 *   l <path> <uid>:<gid> -> <target>               symlink
 *   d <path> <mode> <uid>:<gid>                    directory
 * plus "h <a> <b>" for each pair of names of one inode.
 */
const GUEST_LISTING = `cd ${DATA} && {
  find . -mindepth 1 \\( -name .bosun-restored.json -o -name lost+found \\) -prune -o -type f -printf 'f %P %m %U:%G %s ' -exec sh -c 'sha256sum < "$1" | cut -d" " -f1' _ {} \\; ;
  find . -mindepth 1 \\( -name .bosun-restored.json -o -name lost+found \\) -prune -o -type l -printf 'l %P %U:%G -> %l\\n' ;
  find . -mindepth 1 \\( -name .bosun-restored.json -o -name lost+found \\) -prune -o -type d -printf 'd %P %m %U:%G\\n' ;
  find . -mindepth 1 -type f -links +1 -printf '%i %P\\n' | sort -n | awk '$1==p {print "h " q " " $2} {p=$1; q=$2}' ;
} | LC_ALL=C sort`;

async function hostListing(root: string): Promise<string> {
  const lines: string[] = [];
  const inodes = new Map<number, string>();
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await readdir(join(root, rel))).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const st = await lstat(join(root, p));
      const own = `${st.uid}:${st.gid}`;
      if (st.isDirectory()) {
        lines.push(`d ${p} ${(st.mode & 0o7777).toString(8)} ${own}`);
        await walk(p);
      } else if (st.isSymbolicLink()) lines.push(`l ${p} ${own} -> ${await readlink(join(root, p))}`);
      else if (st.isFile()) {
        lines.push(`f ${p} ${(st.mode & 0o7777).toString(8)} ${own} ${st.size} ${createHash('sha256').update(await readFile(join(root, p))).digest('hex')}`);
        if (st.nlink > 1) {
          const first = inodes.get(st.ino);
          if (first === undefined) inodes.set(st.ino, p);
          else lines.push(`h ${first} ${p}`);
        }
      }
    }
  };
  await walk('');
  return lines.sort((a, b) => (Buffer.from(a) < Buffer.from(b) ? -1 : 1)).join('\n');
}

/** A tree with every kind of entry the format carries. */
async function makeSource(src: string): Promise<void> {
  await mkdir(join(src, 'base/16384'), { recursive: true });
  await mkdir(join(src, 'pg_wal'), { mode: 0o700 });
  await writeFile(join(src, 'base/16384/2619'), randomBytes(9 * MiB + 123));
  await writeFile(join(src, 'base/16384/text'), Buffer.from('row,value\n'.repeat(400_000)));
  await writeFile(join(src, 'pg_wal/000000010000000000000001'), Buffer.alloc(4 * MiB));
  await writeFile(join(src, 'PG_VERSION'), '16\n');
  await writeFile(join(src, 'empty'), '');
  const sparse = await open(join(src, 'sparse.img'), 'w');
  await sparse.write(randomBytes(64 * 1024), 0, 64 * 1024, 20 * MiB);
  await sparse.truncate(48 * MiB);
  await sparse.close();
  await symlink('base/16384/2619', join(src, 'current'));
  await symlink('/nowhere/at/all', join(src, 'dangling'));
  await link(join(src, 'PG_VERSION'), join(src, 'base/PG_VERSION.link'));
  await chmod(join(src, 'base/16384/2619'), 0o600);
  await chmod(join(src, 'PG_VERSION'), 0o640);
  await chmod(join(src, 'sparse.img'), 0o4755);
  for (const p of ['base', 'base/16384', 'base/16384/2619', 'base/16384/text', 'pg_wal', 'pg_wal/000000010000000000000001', 'PG_VERSION', 'sparse.img']) await chown(join(src, p), 1234, 1234);
  await chmod(src, 0o700);
}

async function sealTo(secret: Buffer | string): Promise<{ sealed: string }> {
  const r = await vm.exec([...BOSUN, 'identity', '--json']);
  assert.equal(r.exitCode, 0, r.stderr);
  const key = (JSON.parse(r.stdout) as { sealingKey: string }).sealingKey;
  return { sealed: seal(x25519PublicFromString(key), typeof secret === 'string' ? Buffer.from(secret) : secret) };
}

async function apply(spec: unknown): Promise<{ code: number; out: Record<string, unknown>; stderr: string; ms: number }> {
  const w = await vm.exec(['sh', '-c', 'cat > /root/spec.json'], { stdin: JSON.stringify(spec) });
  assert.equal(w.exitCode, 0);
  const t = Date.now();
  const r = await vm.exec([...BOSUN, 'apply', '/root/spec.json', '--json'], { timeoutMs: 900_000 });
  return { code: r.exitCode ?? -1, out: r.stdout.trim() ? (JSON.parse(r.stdout) as Record<string, unknown>) : {}, stderr: `${r.stderr}\n${r.stdout}`, ms: Date.now() - t };
}

/** Runs a check; on failure saves the guests' journals under .cache/lab/artifacts/restore-<label>/ and names the directory in the error. */
const guarded = journalGuard('restore', () => lab);

describe('restore phase in a VM', { timeout: 30 * 60_000 }, () => {
  before(
    async () => {
      services = await requireServices();
      work = await mkdtemp(join(tmpdir(), 'bosun-lab-restore-'));
      const src = join(work, 'src');
      await mkdir(src);
      await makeSource(src);
      expected = await hostListing(src);
      const client = createS3Client({ endpoint: services.s3.endpoint, region: services.s3.region, credentials: { accessKeyId: services.s3.accessKeyId, secretAccessKey: services.s3.secretAccessKey } });
      try {
        backup = await createBackup({ source: src, transport: new S3Transport({ client, bucket: services.s3.bucket, prefix }), recipient: backupKey.publicKey, host: 'lab-host' });
      } finally {
        client.destroy();
      }
      figures.backup = { id: backup.backupId, bytes: backup.stats.bytes, stored: backup.stats.storedBytes, chunks: backup.stats.chunks };
      rmSync(labRunDir(LAB), { recursive: true, force: true });
      const s3Port = Number(new URL(services.s3.endpoint).port || 80);
      const t = Date.now();
      lab = await startLab({ name: LAB, nodes: [{ name: NODE, disks: [512, 512].map((sizeMiB) => ({ sizeMiB })) }], forwards: [{ guestPort: s3Port, hostPort: s3Port }] });
      figures.labStartMs = Date.now() - t;
      vm = lab.vm(NODE);
      // The endpoint comes from agent.json, as on a real host; the credentials are sealed in the spec.
      const settings = {
        node: NODE,
        kafka: { brokers: [`${GUEST_HOST_ADDRESS}:19094`] },
        trustedKeys: [{ id: 'lab', publicKey: publicKeyString('ed25519', generateKeyPairSync('ed25519').publicKey) }],
        objectStorage: { endpoint: `http://${GUEST_HOST_ADDRESS}:${s3Port}`, region: services.s3.region },
      };
      await vm.exec(['sh', '-c', 'mkdir -p /etc/bosun && cat > /etc/bosun/agent.json'], { stdin: JSON.stringify(settings) });
    },
    { timeout: 20 * 60_000 },
  );

  after(async () => {
    process.stderr.write(`[lab] restore figures: ${JSON.stringify(figures)}\n`);
    await lab?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('builds RAID1 + LUKS2 + xfs, restores the backup into the LUKS volume with every file intact, and skips the restore on a re-apply', () =>
    guarded('luks', async () => {
      const spec = {
        apiVersion: 'bosun/v1',
        cluster: 'lab',
        node: NODE,
        version: 1,
        disks: {
          devices: { paths: [DISK(1), DISK(2)] },
          raid: { level: 1, name: 'data' },
          luks: { name: 'data', key: await sealTo(randomBytes(64).toString('base64')) },
          filesystem: { type: 'xfs' },
          mount: { path: DATA, owner: 1234, group: 1234, mode: '0750' },
        },
        restore: {
          from: 'object-storage',
          bucket: services.s3.bucket,
          prefix,
          backup: 'latest',
          credentials: { accessKeyId: await sealTo(services.s3.accessKeyId), secretAccessKey: await sealTo(services.s3.secretAccessKey) },
          backupKey: await sealTo(backupKey.privateKey.export({ format: 'pem', type: 'pkcs8' })),
        },
      };
      const first = await apply(spec);
      assert.equal(first.code, 0, first.stderr);
      assert.equal(first.out.result, 'applied');
      figures.applyMs = first.ms;
      assert.match(first.stderr, /restore: manifest verified/);
      // The restore's own time in the guest, from its log line (figures only).
      figures.restoreSeconds = /"seconds":([\d.]+)[^\n]*"msg":"restore: complete"/.exec(first.stderr)?.[1] ?? null;
      assert.equal(await sh(`findmnt -n -o FSTYPE,SOURCE ${DATA}`), 'xfs    /dev/mapper/data');
      assert.match(await sh('cryptsetup status data'), /is active/);

      // The restored tree, as the guest sees it on the LUKS volume.
      assert.equal(await sh(GUEST_LISTING), expected);
      assert.equal(await sh(`stat -c '%u:%g %a' ${DATA}`), '1234:1234 750', 'the mount point keeps the owner and mode the spec gives it');
      const sparseKiB = Number(await sh(`du -k ${DATA}/sparse.img | cut -f1`));
      assert.ok(sparseKiB < 8 * 1024, `sparse.img takes ${sparseKiB} KiB: its holes were filled`);
      const marker = JSON.parse(await sh(`cat ${DATA}/.bosun-restored.json`)) as Record<string, unknown>;
      assert.equal(marker.backupId, backup.backupId);
      assert.equal(marker.source, `s3://${services.s3.bucket}/${prefix}`);
      assert.equal(await sh(`ls -a ${DATA} | grep -cE '^[.]bosun-restore([.]journal)?$' || true`), '0', 'no staging directory or journal is left');

      // Secrets never reach the output or the state dir's world-readable files.
      const everything = `${first.stderr}\n${await sh('cat /var/lib/bosun/restore-progress.json; journalctl -b --no-pager | tail -n 2000')}`;
      assert.ok(!everything.includes(services.s3.secretAccessKey), 'the S3 secret key leaked');
      assert.ok(!everything.includes('PRIVATE KEY'), 'the backup key leaked');
      const status = JSON.parse(await sh(`${BOSUN.join(' ')} status --json`)) as { restore: { state: string; percent: number; backupId: string } };
      assert.equal(status.restore.state, 'done');
      assert.equal(status.restore.percent, 100);
      assert.equal(status.restore.backupId, backup.backupId);

      // A second apply sees the marker: the restore phase plans nothing and nothing is fetched.
      const plan = await vm.exec([...BOSUN, 'plan', '/root/spec.json', '--json']);
      assert.equal(plan.exitCode, 0, plan.stderr);
      assert.deepEqual((JSON.parse(plan.stdout) as { steps: { phase: string }[] }).steps.filter((s) => s.phase === 'restore'), []);
      const again = await apply({ ...spec, version: 2 });
      assert.equal(again.code, 0, again.stderr);
      assert.doesNotMatch(again.stderr, /restore: manifest verified|restore 1\//, 'the restore ran again');
      figures.reapplyMs = again.ms;
      assert.equal(await sh(GUEST_LISTING), expected);
    }));
});
