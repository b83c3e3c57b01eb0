import { constants } from 'node:fs';
import { mkdir, open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { BosunError } from '../errors.js';

/**
 * One apply at a time changes a host. The lock is a file created with O_EXCL
 * that names its owner by boot id, pid and the pid's start time. A lock whose
 * owner is gone (crash, kill -9, power cut, reboot, or a recycled pid) is
 * taken over; a live owner, including this very process, is respected.
 */
export async function acquireLock(stateDir: string): Promise<() => Promise<void>> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const path = join(stateDir, 'lock');
  const me = await ownerOf(process.pid);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
      // Not fsynced: after a power cut the lock names a process of another boot and is taken over anyway.
      await fh.writeFile(`${me}\n`);
      await fh.close();
      return async () => {
        await unlink(path).catch(() => undefined);
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const recorded = (await readFile(path, 'utf8').catch(() => '')).trim();
      const pid = Number(recorded.split(' ')[1]);
      if (recorded !== '' && Number.isInteger(pid) && recorded === (await ownerOf(pid))) {
        throw new BosunError('E_LOCKED', `another bosun apply (pid ${pid}) is changing this host; ${path} is its lock`, { pid, path });
      }
      await unlink(path).catch(() => undefined);
    }
  }
  throw new BosunError('E_LOCKED', `cannot take the lock ${path}`, { path });
}

/** "<boot id> <pid> <start time>" of a live process, or "" if it does not exist. */
async function ownerOf(pid: number): Promise<string> {
  const boot = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => 'unknown-boot')).trim();
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (stat === undefined) return '';
  // Field 22 (start time) counted after the parenthesised command name, which may hold spaces.
  const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '0';
  return `${boot} ${pid} ${start}`;
}
