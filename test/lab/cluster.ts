// The three-node lab behind `bosun lab up|down`: node-a, node-b and node-c
// (addresses as in examples/node-*.json), each with two data disks, joined by
// the private hub, with the repository at /opt/bosun. labUp() boots them and
// runs `bosun plan` for each node's example spec in it, streaming the output
// line by line with a "[node-x] " prefix. The lab is detached by default: it
// keeps running after this process exits, with its state (pids, sockets) in
// .cache/lab/run/<name>/, so labDown() from any other process stops it.
import type { Writable } from 'node:stream';
import { GUEST_BOSUN, listLabs, startLab, stopLabByName, type DiskSpec, type ExecResult, type Forward, type Lab } from './driver.js';

export const CLUSTER_NODES: ReadonlyArray<{ name: string; ipv6: string }> = [
  { name: 'node-a', ipv6: 'fd00:b05:0:1::a/64' },
  { name: 'node-b', ipv6: 'fd00:b05:0:1::b/64' },
  { name: 'node-c', ipv6: 'fd00:b05:0:1::c/64' },
];

export interface LabUpOptions {
  /** Where the nodes' output goes, each line prefixed with "[node-x] " (default process.stdout). */
  out?: Writable;
  /** Run dir name under .cache/lab/run/ (default 'cluster'). */
  name?: string;
  /** Data disks per node (default two of 1 GiB). */
  disks?: DiskSpec[];
  /** Keep running after this process exits (default true). */
  detached?: boolean;
  /** Host services reachable at 10.0.2.100 (default Kafka lab 19094, S3 19000). */
  forwards?: Array<number | Forward>;
  /** What to run in each node once booted (default: bosun plan for its example spec); null runs nothing. */
  command?: ((node: string) => string[]) | null;
  bootTimeoutMs?: number;
}

export interface LabUpResult {
  lab: Lab;
  /** Exit status of the command per node. */
  results: Record<string, ExecResult>;
}

export const planCommand = (node: string): string[] => [...GUEST_BOSUN, 'plan', `/opt/bosun/examples/${node}.json`];

/** Splits a byte stream into lines and writes each with a prefix. */
function prefixer(out: Writable, prefix: string): { write: (data: Buffer) => void; end: () => void } {
  let partial = '';
  return {
    write(data: Buffer) {
      const text = partial + data.toString('utf8');
      const lines = text.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) out.write(`${prefix}${line}\n`);
    },
    end() {
      if (partial !== '') out.write(`${prefix}${partial}\n`);
      partial = '';
    },
  };
}

export async function labUp(opts: LabUpOptions = {}): Promise<LabUpResult> {
  const out = opts.out ?? process.stdout;
  const disks = opts.disks ?? [{ sizeMiB: 1024 }, { sizeMiB: 1024 }];
  const lab = await startLab({
    name: opts.name ?? 'cluster',
    nodes: CLUSTER_NODES.map((n) => ({ name: n.name, ipv6: n.ipv6, disks })),
    detached: opts.detached ?? true,
    ...(opts.forwards ? { forwards: opts.forwards } : {}),
    ...(opts.bootTimeoutMs !== undefined ? { bootTimeoutMs: opts.bootTimeoutMs } : {}),
    onProgress: (line) => out.write(`[lab] ${line}\n`),
  });
  const results: Record<string, ExecResult> = {};
  const command = opts.command === undefined ? planCommand : opts.command;
  if (command) {
    await Promise.all(
      lab.vms.map(async (vm) => {
        const stdout = prefixer(out, `[${vm.name}] `);
        const stderr = prefixer(out, `[${vm.name}] `);
        const argv = command(vm.name);
        out.write(`[${vm.name}] $ ${argv.join(' ')}\n`);
        const r = await vm.exec(argv, { timeoutMs: 600_000, onOutput: (fd, data) => (fd === 1 ? stdout : stderr).write(data) });
        stdout.end();
        stderr.end();
        out.write(`[${vm.name}] exit ${r.exitCode ?? r.signal}\n`);
        results[vm.name] = r;
      }),
    );
  }
  if (lab.detached) {
    lab.release();
    out.write(`[lab] '${lab.name}' is running: ${lab.vms.map((v) => `${v.name} ${v.ipv6} (serial log ${v.serialLog})`).join('; ')}\n`);
  }
  return { lab, results };
}

/** Stops the lab named name (default 'cluster'), or every lab with a state file if name is '*'. */
export async function labDown(name = 'cluster'): Promise<{ stopped: string[] }> {
  const names = name === '*' ? listLabs() : [name];
  const stopped: string[] = [];
  for (const n of names) stopped.push(...(await stopLabByName(n)).stopped.map((s) => `${n}: ${s}`));
  return { stopped };
}
