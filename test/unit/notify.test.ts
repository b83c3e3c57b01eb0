import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createNotifier, statusText } from '../../src/host/notify.js';
import { withTempDir } from '../helpers.js';

/**
 * A stand-in for systemd's notify socket: a unix datagram socket (python, since
 * Node has none) that prints every message and, like the manager, closes the
 * fd a BARRIER=1 message carries, which is what releases systemd-notify.
 */
const LISTENER = `
import socket, sys, os, array
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("listening", flush=True)
while True:
    data, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i"); fds.frombytes(payload[:len(payload) - len(payload) % 4])
            for fd in fds: os.close(fd)
    print(data.decode().replace("\\n", "|"), flush=True)
`;

async function startListener(dir: string): Promise<{ socket: string; lines: string[]; child: ChildProcess }> {
  const socket = join(dir, 'notify.sock');
  const child = spawn('python3', ['-c', LISTENER, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let buf = '';
  await new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const parts = buf.split('\n');
      buf = parts.pop()!;
      for (const p of parts) {
        if (p === 'listening') resolve();
        else lines.push(p);
      }
    });
  });
  return { socket, lines, child };
}

describe('systemd notify through systemd-notify', () => {
  it('delivers STATUS, READY and WATCHDOG in order through the real systemd-notify, which waits on the barrier', async () => {
    await withTempDir(async (dir) => {
      const l = await startListener(dir);
      try {
        const errors: string[] = [];
        const n = createNotifier({
          env: { ...process.env, NOTIFY_SOCKET: l.socket, WATCHDOG_USEC: '3000000', WATCHDOG_PID: String(process.pid) },
          onError: (m) => errors.push(m),
        });
        assert.equal(n.enabled, true);
        assert.equal(n.watchdogMs, 3000);
        await n.status('disks (2 of 4)\nwith a newline');
        await n.ready('version 7 applied');
        const stop = n.startWatchdog(() => true);
        await new Promise((r) => setTimeout(r, 100));
        stop();
        await n.flush();
        assert.deepEqual(errors, []);
        const messages = l.lines.filter((m) => m !== 'BARRIER=1');
        assert.deepEqual(messages, ['STATUS=disks (2 of 4) with a newline', 'READY=1|STATUS=version 7 applied', 'WATCHDOG=1']);
        // every message was followed by the barrier that makes systemd-notify wait for the manager
        assert.equal(l.lines.filter((m) => m === 'BARRIER=1').length, 3);
      } finally {
        l.child.kill();
      }
    });
  });

  it('feeds the watchdog only while the loop is healthy, and says so once when it stops', async () => {
    await withTempDir(async (dir) => {
      const log = join(dir, 'sent');
      const stub = join(dir, 'notify-stub');
      await writeFile(stub, `#!/bin/sh\necho "$*" >> ${log}\n`);
      await chmod(stub, 0o755);
      let healthy = true;
      let unhealthy = 0;
      const n = createNotifier({ env: { NOTIFY_SOCKET: '/nonexistent', WATCHDOG_USEC: '3000000' }, command: stub });
      const stop = n.startWatchdog(
        () => healthy,
        () => (unhealthy += 1),
      );
      await new Promise((r) => setTimeout(r, 2300)); // ticks at 0, 1 s, 2 s
      await n.flush();
      const fed = (await readFile(log, 'utf8')).trim().split('\n');
      assert.ok(fed.length >= 2 && fed.every((l) => l === 'WATCHDOG=1'), fed.join(','));
      healthy = false;
      await new Promise((r) => setTimeout(r, 2100));
      stop();
      await n.flush();
      assert.equal((await readFile(log, 'utf8')).trim().split('\n').length, fed.length, 'no WATCHDOG=1 while unhealthy');
      assert.equal(unhealthy, 1);
    });
  });

  it('is a no-op outside systemd, ignores a watchdog meant for another PID, and reports a failed send once without throwing', async () => {
    const off = createNotifier({ env: {} });
    assert.equal(off.enabled, false);
    assert.equal(off.watchdogMs, undefined);
    await off.ready('x');
    const other = createNotifier({ env: { NOTIFY_SOCKET: '/x', WATCHDOG_USEC: '1000000', WATCHDOG_PID: '1' }, pid: 4242 });
    assert.equal(other.watchdogMs, undefined);
    const errors: string[] = [];
    const broken = createNotifier({ env: { NOTIFY_SOCKET: '/x' }, command: '/nonexistent/systemd-notify', onError: (m) => errors.push(m) });
    await broken.status('a');
    await broken.status('b');
    assert.equal(errors.length, 1);
    assert.match(errors[0]!, /cannot notify systemd/);
    assert.equal(statusText('x'.repeat(300)).length, 200);
  });
});
