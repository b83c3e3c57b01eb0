// A minimal QMP client (qemu's JSON machine protocol on the VM's qmp.sock):
// one connection per use, capabilities negotiated, one command at a time,
// asynchronous events skipped. The lab uses it to save a running guest
// (stop, migrate to a file) and to plug disks into a restored one.
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export class QmpError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QmpError';
  }
}

type Reply = { return?: unknown; error?: { class: string; desc: string }; event?: string; QMP?: unknown };

export class Qmp {
  readonly #socket: Socket;
  readonly #label: string;
  #buffered = '';
  #waiting: Array<(reply: Reply) => void> = [];
  #replies: Reply[] = [];
  #closed: Error | undefined;

  private constructor(socket: Socket, label: string) {
    this.#socket = socket;
    this.#label = label;
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => this.#onData(text));
    socket.on('error', (err) => (this.#closed = err));
    socket.on('close', () => {
      this.#closed ??= new QmpError(`${label}: QMP connection closed`);
      for (const wake of this.#waiting.splice(0)) wake({ error: { class: 'Closed', desc: this.#closed.message } });
    });
  }

  /** Connects to path (retrying until timeoutMs: qemu creates the socket shortly after it starts) and negotiates capabilities. */
  static async connect(path: string, label: string, timeoutMs = 30_000): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path, () => resolve(s));
          s.once('error', reject);
        });
        const qmp = new Qmp(socket, label);
        await qmp.#next(); // the greeting
        await qmp.execute('qmp_capabilities');
        return qmp;
      } catch (err) {
        if (Date.now() > deadline) throw new QmpError(`${label}: no QMP on ${path}: ${err instanceof Error ? err.message : String(err)}`);
        await sleep(100);
      }
    }
  }

  #onData(text: string): void {
    this.#buffered += text;
    let nl: number;
    while ((nl = this.#buffered.indexOf('\n')) >= 0) {
      const line = this.#buffered.slice(0, nl).trim();
      this.#buffered = this.#buffered.slice(nl + 1);
      if (line === '') continue;
      const reply = JSON.parse(line) as Reply;
      if (reply.event !== undefined) continue;
      const wake = this.#waiting.shift();
      if (wake) wake(reply);
      else this.#replies.push(reply);
    }
  }

  #next(): Promise<Reply> {
    const ready = this.#replies.shift();
    if (ready) return Promise.resolve(ready);
    if (this.#closed) return Promise.reject(this.#closed);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  /** Runs one command and returns its result; a QMP error becomes a QmpError naming the command. */
  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    this.#socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    const reply = await this.#next();
    if (reply.error) throw new QmpError(`${this.#label}: ${command}: ${reply.error.desc}`);
    return reply.return;
  }

  /** Polls query-status until the run state is one of states (e.g. after an incoming migration). */
  async waitForStatus(states: string[], timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { status } = (await this.execute('query-status')) as { status: string };
      if (states.includes(status)) return status;
      if (Date.now() > deadline) throw new QmpError(`${this.#label}: still '${status}' after ${timeoutMs / 1000} s (waiting for ${states.join(' or ')})`);
      await sleep(100);
    }
  }

  close(): void {
    this.#socket.destroy();
  }
}
