// Host side of the lab's command channel: a unix socket that qemu serves
// (-chardev socket,server=on) and that the guest agent reads through the
// virtio-serial port bosun.agent. JSON lines; see image/guest-agent.mjs for
// the guest side and README.md for the protocol.
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';

export interface PingReply {
  bootId: string;
  uptimeMs: number;
  pid: number;
}

export interface ExecRequest {
  argv: string[];
  stdin?: string | Buffer;
  /** Enforced in the guest: the command's process group is killed after this long. */
  timeoutMs?: number;
  env?: Record<string, string>;
  cwd?: string;
  /** Receive output as it comes (fd 1 or 2); the result's stdout/stderr are then empty. */
  onOutput?: (fd: 1 | 2, data: Buffer) => void;
}

export interface ExecResult {
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
  durationMs: number;
}

interface Pending {
  onEvent?: (event: Record<string, unknown>) => void;
  resolve: (reply: Record<string, unknown>) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class ChannelError extends Error {
  constructor(
    message: string,
    readonly code: 'ECLOSED' | 'ETIMEDOUT' | 'EAGENT' | 'ECONNECT',
  ) {
    super(message);
    this.name = 'ChannelError';
  }
}

/**
 * One connection to a VM's agent socket. Requests may overlap; replies are
 * matched by id, and replies to ids this connection did not send (left over
 * from an earlier connection or boot) are ignored.
 */
export class AgentChannel {
  readonly #path: string;
  readonly #label: string;
  #socket: Socket | undefined;
  #connecting: Promise<Socket> | undefined;
  #buffer = '';
  readonly #pending = new Map<string, Pending>();
  readonly #prefix = randomBytes(4).toString('hex');
  #seq = 0;
  #closed = false;

  constructor(path: string, label: string) {
    this.#path = path;
    this.#label = label;
  }

  #connect(): Promise<Socket> {
    if (this.#socket) return Promise.resolve(this.#socket);
    if (this.#closed) return Promise.reject(new ChannelError(`${this.#label}: channel closed`, 'ECLOSED'));
    this.#connecting ??= new Promise<Socket>((resolve, reject) => {
      const socket = connect(this.#path);
      socket.once('connect', () => {
        this.#socket = socket;
        this.#connecting = undefined;
        this.#buffer = '';
        socket.setEncoding('utf8');
        socket.on('data', (chunk: string) => this.#onData(chunk));
        // A bare newline ends whatever half line an earlier connection left in the guest.
        socket.write('\n');
        resolve(socket);
      });
      socket.on('error', (err) => {
        this.#connecting = undefined;
        if (this.#socket !== socket) reject(new ChannelError(`${this.#label}: cannot connect to ${this.#path}: ${err.message}`, 'ECONNECT'));
      });
      socket.once('close', () => {
        if (this.#socket === socket) this.#socket = undefined;
        this.#failAll(`${this.#label}: agent connection closed (qemu stopped?)`);
      });
    });
    return this.#connecting;
  }

  #failAll(why: string): void {
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      this.#pending.delete(id);
      p.reject(new ChannelError(why, 'ECLOSED'));
    }
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    for (;;) {
      const nl = this.#buffer.indexOf('\n');
      if (nl < 0) return;
      const line = this.#buffer.slice(0, nl);
      this.#buffer = this.#buffer.slice(nl + 1);
      let reply: Record<string, unknown>;
      try {
        reply = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      const id = typeof reply.id === 'string' ? reply.id : undefined;
      const p = id === undefined ? undefined : this.#pending.get(id);
      if (!p || id === undefined) continue;
      if (typeof reply.event === 'string') {
        p.onEvent?.(reply);
        continue;
      }
      clearTimeout(p.timer);
      this.#pending.delete(id);
      if (reply.ok === true) p.resolve(reply);
      else p.reject(new ChannelError(`${this.#label}: agent: ${String(reply.error)}`, 'EAGENT'));
    }
  }

  async request(body: Record<string, unknown>, timeoutMs: number, onEvent?: (event: Record<string, unknown>) => void): Promise<Record<string, unknown>> {
    const socket = await this.#connect();
    const id = `${this.#prefix}-${++this.#seq}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new ChannelError(`${this.#label}: no reply to '${String(body.op)}' within ${timeoutMs} ms`, 'ETIMEDOUT'));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer, ...(onEvent ? { onEvent } : {}) });
      socket.write(JSON.stringify({ ...body, id }) + '\n');
    });
  }

  async ping(timeoutMs: number): Promise<PingReply> {
    const r = await this.request({ op: 'ping' }, timeoutMs);
    return { bootId: String(r.bootId), uptimeMs: Number(r.uptimeMs), pid: Number(r.pid) };
  }

  async exec(req: ExecRequest, slackMs = 15_000): Promise<ExecResult> {
    const timeoutMs = req.timeoutMs ?? 120_000;
    const body: Record<string, unknown> = { op: 'exec', argv: req.argv, timeoutMs };
    if (req.stdin !== undefined) body.stdin = Buffer.from(req.stdin).toString('base64');
    if (req.env) body.env = req.env;
    if (req.cwd !== undefined) body.cwd = req.cwd;
    const onOutput = req.onOutput;
    if (onOutput) body.stream = true;
    const r = await this.request(
      body,
      timeoutMs + slackMs,
      onOutput &&
        ((ev) => {
          if (ev.event === 'output' && typeof ev.data === 'string') onOutput(ev.fd === 2 ? 2 : 1, Buffer.from(ev.data, 'base64'));
        }),
    );
    const stdoutBytes = Buffer.from(typeof r.stdout === 'string' ? r.stdout : '', 'base64');
    return {
      exitCode: typeof r.exitCode === 'number' ? r.exitCode : null,
      signal: typeof r.signal === 'string' ? r.signal : null,
      timedOut: r.timedOut === true,
      stdout: stdoutBytes.toString('utf8'),
      stderr: Buffer.from(typeof r.stderr === 'string' ? r.stderr : '', 'base64').toString('utf8'),
      stdoutBytes,
      durationMs: Number(r.durationMs ?? 0),
    };
  }

  /** Drops the connection (pending requests fail); the next request connects again. */
  disconnect(): void {
    this.#socket?.destroy();
    this.#socket = undefined;
  }

  close(): void {
    this.#closed = true;
    this.disconnect();
    this.#failAll(`${this.#label}: channel closed`);
  }
}
