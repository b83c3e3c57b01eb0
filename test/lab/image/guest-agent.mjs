// bosun lab guest agent: runs commands for the lab driver on the host.
//
// Part of the image recipe (copied to /usr/local/lib/bosun-lab/ and started by
// bosun-lab-agent.service under the host's own node binary). It talks over the
// virtio-serial port /dev/virtio-ports/bosun.agent, one JSON object a line in
// each direction (see test/lab/README.md, "Command channel"):
//
//   -> {"id":"a1","op":"ping"}
//   <- {"id":"a1","ok":true,"bootId":"...","uptimeMs":1234,"pid":321}
//   -> {"id":"a2","op":"exec","argv":["uname","-r"],"stdin":"<base64>","timeoutMs":5000}
//   <- {"id":"a2","ok":true,"exitCode":0,"signal":null,"timedOut":false,"stdout":"<base64>","stderr":"<base64>","durationMs":12}
//   <- {"id":"a3","ok":false,"error":"..."}          (bad request, spawn failure)
//
// With "stream":true an exec also sends its output as it comes, before the
// final reply (whose stdout/stderr are then empty):
//   <- {"id":"a4","event":"output","fd":1,"data":"<base64>"}
//
// Requests run concurrently; responses are written one at a time, whole lines.
// When nobody is connected on the host side, read() on the port returns 0:
// the agent then drops any half-read line and polls until the host comes back,
// so a driver may disconnect and reconnect at will (responses to requests of
// an earlier connection may still arrive; the driver ignores unknown ids).
import { spawn } from 'node:child_process';
import { close, open, read, readFileSync, write } from 'node:fs';

const PORT = process.env.BOSUN_AGENT_PORT || '/dev/virtio-ports/bosun.agent';
const MAX_LINE = 64 * 1024 * 1024;
const MAX_OUTPUT = 256 * 1024 * 1024;
const ENV = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/root',
  LANG: 'C.UTF-8',
  TERM: 'dumb',
  SYSTEMD_PAGER: '',
  SYSTEMD_COLORS: '0',
  // Our stdio are socketpairs, which makes bash believe rshd started it and read
  // bashrc (which fails under `set -u`); bash skips that when SHLVL is already 1+.
  SHLVL: '1',
};

let fd = -1;
let pending = [];
let pendingBytes = 0;
const outQueue = [];
let writing = false;

function note(message) {
  process.stderr.write(`bosun-lab-agent: ${message}\n`);
}

function openPort() {
  open(PORT, 'r+', (err, opened) => {
    if (err) {
      note(`cannot open ${PORT} (${err.code}); retrying`);
      setTimeout(openPort, 1000);
      return;
    }
    fd = opened;
    note(`listening on ${PORT}`);
    readLoop();
    flush();
  });
}

function reopen(why) {
  note(`${why}; reopening ${PORT}`);
  const old = fd;
  fd = -1;
  if (old >= 0) close(old, () => setTimeout(openPort, 500));
  else setTimeout(openPort, 500);
}

function readLoop() {
  const buf = Buffer.allocUnsafe(256 * 1024);
  read(fd, buf, 0, buf.length, null, (err, n) => {
    if (err) {
      reopen(`read failed (${err.code})`);
      return;
    }
    if (n === 0) {
      // Host side not connected: forget a half line, poll until it is back.
      pending = [];
      pendingBytes = 0;
      setTimeout(readLoop, 200);
      return;
    }
    onData(buf.subarray(0, n));
    readLoop();
  });
}

function onData(chunk) {
  let start = 0;
  for (;;) {
    const nl = chunk.indexOf(10, start);
    if (nl < 0) break;
    pending.push(chunk.subarray(start, nl));
    const line = Buffer.concat(pending).toString('utf8');
    pending = [];
    pendingBytes = 0;
    start = nl + 1;
    handleLine(line);
  }
  if (start < chunk.length) {
    const rest = Buffer.from(chunk.subarray(start));
    pending.push(rest);
    pendingBytes += rest.length;
    if (pendingBytes > MAX_LINE) {
      note('request line too long; dropped');
      pending = [];
      pendingBytes = 0;
    }
  }
}

function send(obj) {
  outQueue.push(Buffer.from(JSON.stringify(obj) + '\n'));
  flush();
}

function flush() {
  if (writing || fd < 0 || outQueue.length === 0) return;
  writing = true;
  const buf = outQueue[0];
  const target = fd;
  write(target, buf, 0, buf.length, null, (err, n) => {
    writing = false;
    if (err) {
      // Keep the message; it goes out after the port is open again.
      if (fd === target) reopen(`write failed (${err.code})`);
      return;
    }
    if (n < buf.length) outQueue[0] = buf.subarray(n);
    else outQueue.shift();
    flush();
  });
}

function bootId() {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

function handleLine(line) {
  if (line.trim() === '') return; // the driver sends a bare newline to resync
  let req;
  try {
    req = JSON.parse(line);
  } catch {
    note(`unparsable request line (${line.length} chars) ignored`);
    return;
  }
  const id = req && (typeof req.id === 'string' || typeof req.id === 'number') ? req.id : null;
  if (id === null) return;
  try {
    if (req.op === 'ping') {
      send({ id, ok: true, bootId: bootId(), uptimeMs: Math.round(process.uptime() * 1000), pid: process.pid });
    } else if (req.op === 'exec') {
      runExec(id, req);
    } else {
      send({ id, ok: false, error: `unknown op '${String(req.op)}'` });
    }
  } catch (err) {
    send({ id, ok: false, error: err instanceof Error ? err.message : String(err) });
  }
}

function runExec(id, req) {
  const argv = req.argv;
  if (!Array.isArray(argv) || argv.length === 0 || !argv.every((a) => typeof a === 'string')) {
    send({ id, ok: false, error: 'exec needs argv: a non-empty array of strings' });
    return;
  }
  const started = Date.now();
  const env = { ...ENV, ...(req.env && typeof req.env === 'object' ? req.env : {}) };
  let child;
  try {
    child = spawn(argv[0], argv.slice(1), {
      cwd: typeof req.cwd === 'string' ? req.cwd : '/',
      env,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true, // own process group, so a timeout kills the whole tree
    });
  } catch (err) {
    send({ id, ok: false, error: `spawn ${argv[0]}: ${err instanceof Error ? err.message : String(err)}` });
    return;
  }
  const out = [];
  const errOut = [];
  let size = 0;
  let timedOut = false;
  let done = false;
  const stream = req.stream === true;
  const collect = (list, fdNo) => (d) => {
    if (stream) {
      send({ id, event: 'output', fd: fdNo, data: d.toString('base64') });
      return;
    }
    size += d.length;
    if (size <= MAX_OUTPUT) list.push(d);
  };
  child.stdout.on('data', collect(out, 1));
  child.stderr.on('data', collect(errOut, 2));
  child.stdin.on('error', () => {}); // the command may not read its stdin
  const timeoutMs = Number.isFinite(req.timeoutMs) && req.timeoutMs > 0 ? req.timeoutMs : 0;
  const timer =
    timeoutMs > 0
      ? setTimeout(() => {
          timedOut = true;
          try {
            process.kill(-child.pid, 'SIGKILL');
          } catch {
            child.kill('SIGKILL');
          }
        }, timeoutMs)
      : null;
  child.on('error', (err) => {
    if (done) return;
    done = true;
    if (timer) clearTimeout(timer);
    send({ id, ok: false, error: `spawn ${argv[0]}: ${err.message}` });
  });
  child.on('close', (code, signal) => {
    if (done) return;
    done = true;
    if (timer) clearTimeout(timer);
    send({
      id,
      ok: true,
      exitCode: code,
      signal,
      timedOut,
      truncated: size > MAX_OUTPUT,
      stdout: Buffer.concat(out).toString('base64'),
      stderr: Buffer.concat(errOut).toString('base64'),
      durationMs: Date.now() - started,
    });
  });
  child.stdin.end(typeof req.stdin === 'string' ? Buffer.from(req.stdin, 'base64') : undefined);
}

process.on('uncaughtException', (err) => {
  note(`uncaught: ${err.stack || err.message}`);
  process.exit(1); // systemd restarts the agent
});
openPort();
