// The lab hub as its own process, for labs that outlive the process that
// started them (`bosun lab up`): node dist/test/lab/hub-main.js <run dir>.
// Reads <run dir>/hub-config.json ({nodes, pcap}), writes <run dir>/hub.json
// ({pid, ports}) once listening, and answers one JSON line per connection on
// <run dir>/hub.sock: {op: counters|reset|cut|heal|attach, node?, vmPort?}.
import { readFileSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Hub } from './hub.js';

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: hub-main.js <lab run dir>\n');
  process.exit(2);
}
const config = JSON.parse(readFileSync(join(dir, 'hub-config.json'), 'utf8')) as { nodes: string[]; pcap: string | null };
const hub = await Hub.start(config.nodes, config.pcap ? { pcapPath: config.pcap } : {});
const socketPath = join(dir, 'hub.sock');
rmSync(socketPath, { force: true });

async function handle(req: Record<string, unknown>): Promise<Record<string, unknown>> {
  const node = typeof req.node === 'string' ? req.node : '';
  switch (req.op) {
    case 'counters':
      return { counters: await hub.counters() };
    case 'reset':
      await hub.resetCounters();
      return {};
    case 'cut':
      await hub.cut(node);
      return {};
    case 'heal':
      await hub.heal(node);
      return {};
    case 'attach':
      hub.attach(node, Number(req.vmPort));
      return {};
    default:
      throw new Error(`unknown op '${String(req.op)}'`);
  }
}

const server = createServer((conn) => {
  let buf = '';
  conn.setEncoding('utf8');
  conn.on('error', () => {});
  conn.on('data', (d: string) => {
    buf += d;
    const nl = buf.indexOf('\n');
    if (nl < 0) return;
    const line = buf.slice(0, nl);
    buf = '';
    let req: Record<string, unknown>;
    try {
      req = JSON.parse(line) as Record<string, unknown>;
    } catch {
      conn.end(JSON.stringify({ ok: false, error: 'bad JSON' }) + '\n');
      return;
    }
    handle(req).then(
      (r) => conn.end(JSON.stringify({ ok: true, ...r }) + '\n'),
      (err: unknown) => conn.end(JSON.stringify({ ok: false, error: err instanceof Error ? err.message : String(err) }) + '\n'),
    );
  });
});
server.listen(socketPath, () => {
  writeFileSync(join(dir, 'hub.json.tmp'), JSON.stringify({ pid: process.pid, ports: hub.ports() }));
  renameSync(join(dir, 'hub.json.tmp'), join(dir, 'hub.json'));
});

function shutdown(): void {
  hub.stop();
  server.close();
  rmSync(socketPath, { force: true });
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
