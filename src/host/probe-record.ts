import type { ExecResult } from './exec.js';
import type { HostProbe, VolumeUsage } from './probe.js';

/*
 * A probe that records every question a phase asks and the host's answer, and
 * one that answers from such a recording. `bosun plan --record-probe FILE`
 * writes one on a real host; the disks re-run benchmark replays it natively
 * to measure the agent's own observe + plan time apart from the tools' time.
 *
 * A recording holds what the host answered, which can include file contents
 * a phase read (crypttab, conn files): it is written 0600 like any state file.
 */

export type ProbeOp = 'readFile' | 'unitState' | 'run' | 'links' | 'listDir' | 'stat' | 'usage';

export interface ProbeEntry {
  op: ProbeOp;
  args: unknown[];
  /** the answer; a readFile Buffer is stored as { base64 } */
  result: unknown;
  /** wall time of the question on the recorded host */
  ms: number;
}

export interface ProbeRecording {
  format: 'bosun-probe-recording-v1';
  entries: ProbeEntry[];
}

const keyOf = (op: ProbeOp, args: unknown[]): string => JSON.stringify([op, args]);

export class RecordingProbe implements HostProbe {
  readonly entries: ProbeEntry[] = [];

  constructor(private readonly inner: HostProbe) {}

  get blank(): boolean {
    return this.inner.blank;
  }

  private async record<T>(op: ProbeOp, args: unknown[], call: () => Promise<T>, encode: (v: T) => unknown = (v) => v): Promise<T> {
    const t = performance.now();
    const value = await call();
    this.entries.push({ op, args, result: encode(value), ms: Math.round((performance.now() - t) * 1000) / 1000 });
    return value;
  }

  readFile(path: string): Promise<Buffer | undefined> {
    return this.record(
      'readFile',
      [path],
      () => this.inner.readFile(path),
      (b) => (b === undefined ? null : { base64: b.toString('base64') }),
    );
  }

  unitState(unit: string): Promise<{ enabled: string; active: string }> {
    return this.record('unitState', [unit], () => this.inner.unitState(unit));
  }

  run(argv: readonly string[]): Promise<ExecResult> {
    return this.record('run', [argv], () => this.inner.run(argv));
  }

  links(dir: string): Promise<{ name: string; target: string }[]> {
    return this.record('links', [dir], () => this.inner.links(dir));
  }

  listDir(dir: string): Promise<string[]> {
    return this.record('listDir', [dir], () => this.inner.listDir(dir));
  }

  stat(path: string): Promise<{ uid: number; gid: number; mode: number } | undefined> {
    return this.record(
      'stat',
      [path],
      () => this.inner.stat(path),
      (s) => s ?? null,
    );
  }

  usage(path: string): Promise<VolumeUsage | undefined> {
    return this.record(
      'usage',
      [path],
      () => this.inner.usage(path),
      (u) => u ?? null,
    );
  }

  recording(): ProbeRecording {
    return { format: 'bosun-probe-recording-v1', entries: this.entries };
  }
}

/**
 * Answers each question with the recorded answer to the same question, in
 * the order they were recorded; a question asked more often than recorded
 * gets the last answer again. A question never recorded is an error: the
 * replay would otherwise measure a different plan than the host's.
 */
export class ReplayProbe implements HostProbe {
  readonly blank = false;
  private readonly answers = new Map<string, unknown[]>();
  private readonly used = new Map<string, number>();

  constructor(recording: ProbeRecording) {
    if (recording.format !== 'bosun-probe-recording-v1') throw new Error(`not a probe recording: format ${String(recording.format)}`);
    for (const e of recording.entries) {
      const k = keyOf(e.op, e.args);
      const list = this.answers.get(k) ?? [];
      list.push(e.result);
      this.answers.set(k, list);
    }
  }

  /** Starts the answers over, for replaying the same plan again. */
  rewind(): void {
    this.used.clear();
  }

  private answer(op: ProbeOp, args: unknown[]): unknown {
    const k = keyOf(op, args);
    const list = this.answers.get(k);
    if (!list) throw new Error(`replay: question not in the recording: ${op} ${JSON.stringify(args)}`);
    const i = this.used.get(k) ?? 0;
    this.used.set(k, i + 1);
    return list[Math.min(i, list.length - 1)];
  }

  readFile(path: string): Promise<Buffer | undefined> {
    const r = this.answer('readFile', [path]) as { base64: string } | null;
    return Promise.resolve(r === null ? undefined : Buffer.from(r.base64, 'base64'));
  }

  unitState(unit: string): Promise<{ enabled: string; active: string }> {
    return Promise.resolve(this.answer('unitState', [unit]) as { enabled: string; active: string });
  }

  run(argv: readonly string[]): Promise<ExecResult> {
    return Promise.resolve(this.answer('run', [argv]) as ExecResult);
  }

  links(dir: string): Promise<{ name: string; target: string }[]> {
    return Promise.resolve(this.answer('links', [dir]) as { name: string; target: string }[]);
  }

  listDir(dir: string): Promise<string[]> {
    return Promise.resolve(this.answer('listDir', [dir]) as string[]);
  }

  stat(path: string): Promise<{ uid: number; gid: number; mode: number } | undefined> {
    const r = this.answer('stat', [path]) as { uid: number; gid: number; mode: number } | null;
    return Promise.resolve(r ?? undefined);
  }

  usage(path: string): Promise<VolumeUsage | undefined> {
    const r = this.answer('usage', [path]) as VolumeUsage | null;
    return Promise.resolve(r ?? undefined);
  }
}
