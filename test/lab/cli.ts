// Lab commands until `bosun lab` is wired up (and a debugging aid after):
//
//   node dist/test/lab/cli.js up [--name N] [--no-plan]   boot node-a/b/c (detached) and run bosun plan in each
//   node dist/test/lab/cli.js down [--name N | --all]     stop a lab started by any process
//   node dist/test/lab/cli.js status                      labs with a state file and whether their VMs run
//   node dist/test/lab/cli.js exec [--name N] NODE -- CMD [ARGS...]   run a command in a VM of a running lab
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentChannel } from './channel.js';
import { labDown, labUp } from './cluster.js';
import { labRunDir, listLabs, processMatches, type LabState } from './driver.js';

function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
}

function readState(name: string): LabState {
  return JSON.parse(readFileSync(join(labRunDir(name), 'state.json'), 'utf8')) as LabState;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...args] = argv;
  switch (cmd) {
    case 'up': {
      const name = option(args, '--name') ?? 'cluster';
      const noPlan = args.includes('--no-plan');
      const { results } = await labUp({ name, ...(noPlan ? { command: null } : {}) });
      return Object.values(results).every((r) => r.exitCode === 0) ? 0 : 1;
    }
    case 'down': {
      const { stopped } = await labDown(args.includes('--all') ? '*' : (option(args, '--name') ?? 'cluster'));
      process.stdout.write(stopped.length > 0 ? `stopped ${stopped.join(', ')}\n` : 'nothing was running\n');
      return 0;
    }
    case 'status': {
      for (const name of listLabs()) {
        const state = readState(name);
        const vms = state.vms.map((v) => `${v.name}=${v.pid !== null && processMatches(v.pid, v.agentSocket) ? `up(pid ${v.pid})` : 'down'}`);
        process.stdout.write(`${name}: ${vms.join(' ')}${state.detached ? ' (detached)' : ` (owned by pid ${state.ownerPid})`}\n`);
      }
      return 0;
    }
    case 'exec': {
      const name = option(args, '--name') ?? 'cluster';
      const sep = args.indexOf('--');
      const node = args[0];
      const command = sep >= 0 ? args.slice(sep + 1) : args.slice(1);
      const vm = readState(name).vms.find((v) => v.name === node);
      if (!vm || command.length === 0) {
        process.stderr.write('usage: exec [--name LAB] NODE -- COMMAND [ARGS...]\n');
        return 2;
      }
      const channel = new AgentChannel(vm.agentSocket, vm.name);
      try {
        const r = await channel.exec({
          argv: command,
          timeoutMs: 3_600_000,
          onOutput: (fd, data) => (fd === 1 ? process.stdout : process.stderr).write(data),
        });
        return r.exitCode ?? 128;
      } finally {
        channel.close();
      }
    }
    default:
      process.stderr.write('usage: cli.js up|down|status|exec (see the top of test/lab/cli.ts)\n');
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
