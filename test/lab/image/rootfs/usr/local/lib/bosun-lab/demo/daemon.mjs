// bosun-demo: the small service the container phase's lab test runs inside a
// systemd-nspawn machine. It reads `key = value` settings from
// /etc/demo/demo.conf (the read-only config bind), answers HTTP on `port`
// (published) and on `admin_port` (never published), records each start in
// the data volume, and rereads its settings on SIGHUP without restarting.
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';

const CONF = '/etc/demo/demo.conf';
const DATA = '/var/lib/demo';
const started = new Date().toISOString();
let reloads = 0;

function readConf() {
  const out = {};
  for (const line of readFileSync(CONF, 'utf8').split('\n')) {
    const m = /^\s*([A-Za-z0-9_.-]+)\s*=\s*(.*?)\s*$/.exec(line);
    if (!m || line.trim().startsWith('#')) continue;
    let v = m[2];
    if (v.startsWith("'") && v.endsWith("'")) v = v.slice(1, -1).replace(/''/g, "'");
    out[m[1]] = v;
  }
  return out;
}

let conf = readConf();
appendFileSync(`${DATA}/starts`, `${started} pid ${process.pid}\n`);

function answer(_req, res) {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ pid: process.pid, started, reloads, greeting: conf.greeting ?? '', version: conf.version ?? '', uid: process.getuid() }));
}

createServer(answer).listen(Number(conf.port ?? 8080), '0.0.0.0');
createServer(answer).listen(Number(conf.admin_port ?? 9090), '0.0.0.0');

process.on('SIGHUP', () => {
  try {
    conf = readConf();
    reloads += 1;
    writeFileSync(`${DATA}/last-reload`, `${new Date().toISOString()} version ${conf.version ?? ''}\n`);
  } catch (e) {
    process.stderr.write(`reload failed, keeping the old settings: ${e}\n`);
  }
});
process.on('SIGTERM', () => process.exit(0));
