// `bosun lab up|down|status`: the README's main job on a fresh machine. Starts
// the test services (Kafka, MinIO), boots node-a, node-b and node-c as VMs with
// the real agent running in each, publishes their desired state and shows what
// every agent reports until all three have applied it. `down` stops the VMs
// and the services `up` started.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { labDown, labUp } from './cluster.js';
import { runControlPlane } from './control-plane.js';
import { labRunDir, listLabs, processMatches, repoRoot, type LabState } from './driver.js';

const NAME = 'cluster';

function services(cmd: 'up' | 'down', out: Writable, extraEnv: Record<string, string> = {}): void {
  const r = spawnSync('bash', [join(repoRoot(), 'test/services', cmd)], { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, ...extraEnv } });
  if (r.status !== 0) throw new Error(`test/services/${cmd} failed (exit ${r.status})`);
  out.write(`[lab] test services ${cmd === 'up' ? 'up' : 'stopped'}\n`);
}

export async function labCommand(args: string[], out: Writable): Promise<number> {
  const [cmd] = args;
  const startedFile = join(labRunDir(NAME), 'services-started');
  switch (cmd) {
    case 'up': {
      const tmp = join(repoRoot(), '.cache', 'lab-services-started');
      rmSync(tmp, { force: true });
      services('up', out, { BOSUN_UP_STARTED_FILE: tmp });
      const { lab } = await labUp({ name: NAME, command: null, out });
      if (existsSync(tmp)) writeFileSync(startedFile, readFileSync(tmp));
      const ok = await runControlPlane(lab, labRunDir(NAME), out);
      out.write(
        `[lab] the cluster keeps running; see it with 'node dist/test/lab/cli.js exec node-a -- journalctl -u bosun-lab-agent-run -f', stop it with 'bosun lab down'\n`,
      );
      return ok ? 0 : 1;
    }
    case 'down': {
      const { stopped } = await labDown(NAME);
      out.write(stopped.length > 0 ? `[lab] stopped ${stopped.join(', ')}\n` : '[lab] no VMs were running\n');
      if (existsSync(startedFile)) {
        const started = readFileSync(startedFile, 'utf8').split('\n').filter(Boolean);
        if (started.length > 0) spawnSync('bash', [join(repoRoot(), 'test/services/down'), ...new Set(started)], { stdio: 'inherit' });
        rmSync(startedFile, { force: true });
      }
      return 0;
    }
    case 'status': {
      for (const name of listLabs()) {
        const state = JSON.parse(readFileSync(join(labRunDir(name), 'state.json'), 'utf8')) as LabState;
        out.write(`${name}: ${state.vms.map((v) => `${v.name} ${v.pid !== null && processMatches(v.pid, v.agentSocket) ? 'up' : 'down'}`).join(', ')}\n`);
      }
      return 0;
    }
    default:
      out.write('usage: bosun lab up|down|status\n');
      return 2;
  }
}
