import { execa } from 'execa';

/**
 * sd_notify for a Node daemon. Node cannot send on a unix datagram socket, so
 * each message goes through systemd-notify(1), a short-lived child. Two facts
 * make that sound (systemd >= 246; Fedora and Debian bookworm ship 252+):
 *
 * - The unit must accept messages from any of its processes
 *   (NotifyAccess=all): the sender is the child, not the main PID.
 * - A message from a process that has already exited may not be attributed to
 *   any unit and is then dropped. systemd-notify, unless given --no-block,
 *   sends BARRIER=1 after the message and waits until the manager has read
 *   both, so the child is still alive when its message is attributed.
 *
 * Messages are sent one at a time, in order. A failed send is reported once
 * through `onError` and never throws: losing a STATUS line must not stop the
 * agent (a lost WATCHDOG=1 is covered by the next one, a third of the interval
 * later).
 */
export interface Notifier {
  /** false outside systemd (no NOTIFY_SOCKET): every call is then a no-op */
  readonly enabled: boolean;
  /** the watchdog interval systemd asked for, in ms (WATCHDOG_USEC for this process), or undefined */
  readonly watchdogMs: number | undefined;
  send(fields: Record<string, string>): Promise<void>;
  status(text: string): Promise<void>;
  ready(status: string): Promise<void>;
  stopping(status: string): Promise<void>;
  /**
   * Feed the watchdog every third of its interval while `healthy()` says the
   * main loop is sound. When it is not, the feeding stops and systemd restarts
   * the unit once the interval runs out. Returns a function that stops feeding.
   */
  startWatchdog(healthy: () => boolean, onUnhealthy?: () => void): () => void;
  /** resolves when every message queued so far has been sent (tests, shutdown) */
  flush(): Promise<void>;
}

export interface NotifierOptions {
  env?: NodeJS.ProcessEnv;
  pid?: number;
  /** the systemd-notify binary (tests pass a stand-in) */
  command?: string;
  onError?: (message: string) => void;
}

/** Text for STATUS=: one line, no control characters, bounded. */
export function statusText(text: string): string {
  const oneLine = [...text]
    .map((c) => (c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f ? ' ' : c))
    .join('')
    .replace(/ {2,}/g, ' ')
    .trim();
  return oneLine.length > 200 ? `${oneLine.slice(0, 197)}...` : oneLine;
}

export function createNotifier(opts: NotifierOptions = {}): Notifier {
  const env = opts.env ?? process.env;
  const pid = opts.pid ?? process.pid;
  const command = opts.command ?? 'systemd-notify';
  const enabled = typeof env.NOTIFY_SOCKET === 'string' && env.NOTIFY_SOCKET.length > 0;
  const usec = Number(env.WATCHDOG_USEC);
  const forUs = env.WATCHDOG_PID === undefined || Number(env.WATCHDOG_PID) === pid;
  const watchdogMs = enabled && Number.isFinite(usec) && usec > 0 && forUs ? Math.floor(usec / 1000) : undefined;
  let queue: Promise<void> = Promise.resolve();
  let reported = false;

  const childEnv: NodeJS.ProcessEnv = { ...env };
  // The child talks to the manager only: keep it from feeding a watchdog of its own PID.
  delete childEnv.WATCHDOG_PID;
  delete childEnv.WATCHDOG_USEC;

  const send = (fields: Record<string, string>): Promise<void> => {
    if (!enabled) return Promise.resolve();
    const args = Object.entries(fields).map(([k, v]) => `${k}=${k === 'STATUS' ? statusText(v) : v}`);
    queue = queue.then(async () => {
      try {
        await execa(command, args, { env: childEnv, extendEnv: false, timeout: 15_000, stdin: 'ignore', stdout: 'ignore', stderr: 'pipe' });
        reported = false;
      } catch (e) {
        if (!reported) {
          reported = true;
          const err = e as { shortMessage?: string; stderr?: string; message?: string };
          opts.onError?.(
            `cannot notify systemd (${command} ${args.map((a) => a.split('=')[0]).join(' ')}): ${(err.stderr || err.shortMessage || err.message || String(e)).trim()}`,
          );
        }
      }
    });
    return queue;
  };

  return {
    enabled,
    watchdogMs,
    send,
    status: (text) => send({ STATUS: text }),
    ready: (status) => send({ READY: '1', STATUS: status }),
    stopping: (status) => send({ STOPPING: '1', STATUS: status }),
    flush: () => queue,
    startWatchdog(healthy, onUnhealthy) {
      if (watchdogMs === undefined) return () => undefined;
      let warned = false;
      const tick = () => {
        if (healthy()) {
          warned = false;
          void send({ WATCHDOG: '1' });
        } else if (!warned) {
          warned = true;
          onUnhealthy?.();
        }
      };
      tick();
      const timer = setInterval(tick, Math.max(1000, Math.floor(watchdogMs / 3)));
      return () => clearInterval(timer);
    },
  };
}
