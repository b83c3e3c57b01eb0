/**
 * Progress of a backup or restore, as given to `onProgress` and logged.
 * Bytes are logical (file content), so the bar means the same whether the
 * data compressed well or not; `transferredBytes` is what crossed the wire.
 */
export interface Progress {
  operation: 'backup' | 'restore';
  phase: 'preparing' | 'transferring' | 'finishing' | 'done';
  bytesDone: number;
  bytesTotal: number;
  transferredBytes: number;
  filesTotal: number;
  /** bytes per second over the last few seconds */
  rate: number;
  /** seconds left at the current rate; undefined while unknown */
  etaSeconds: number | undefined;
  elapsedSeconds: number;
}

/** Rate over a sliding window of samples, so the ETA follows changes in speed. */
export class ProgressTracker {
  readonly #started = performance.now();
  readonly #samples: Array<[number, number]> = [];
  readonly #windowMs: number;
  #lastEmit = 0;
  bytesDone = 0;
  transferredBytes = 0;
  phase: Progress['phase'] = 'preparing';

  constructor(
    readonly operation: Progress['operation'],
    public bytesTotal: number,
    public filesTotal: number,
    readonly emit: ((p: Progress) => void) | undefined,
    readonly intervalMs = 250,
    windowMs = 5000,
  ) {
    this.#windowMs = windowMs;
  }

  add(bytes: number, transferred = 0): void {
    this.bytesDone += bytes;
    this.transferredBytes += transferred;
    this.maybeEmit();
  }

  snapshot(): Progress {
    const now = performance.now();
    this.#samples.push([now, this.bytesDone]);
    while (this.#samples.length > 2 && now - this.#samples[0]![0] > this.#windowMs) this.#samples.shift();
    const [t0, b0] = this.#samples[0]!;
    const elapsed = (now - this.#started) / 1000;
    const rate = now - t0 > 200 ? ((this.bytesDone - b0) / (now - t0)) * 1000 : elapsed > 0 ? this.bytesDone / elapsed : 0;
    const left = this.bytesTotal - this.bytesDone;
    return {
      operation: this.operation,
      phase: this.phase,
      bytesDone: this.bytesDone,
      bytesTotal: this.bytesTotal,
      transferredBytes: this.transferredBytes,
      filesTotal: this.filesTotal,
      rate,
      etaSeconds: left <= 0 ? 0 : rate > 0 ? left / rate : undefined,
      elapsedSeconds: elapsed,
    };
  }

  maybeEmit(force = false): void {
    if (!this.emit) return;
    const now = performance.now();
    if (!force && now - this.#lastEmit < this.intervalMs) return;
    this.#lastEmit = now;
    this.emit(this.snapshot());
  }
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function formatBytes(n: number): string {
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${UNITS[u]}`;
}

export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/**
 * One line for a terminal, to be written after "\r" by the CLI:
 *   restore  42% [########..........] 430 MiB / 1.0 GiB  312 MiB/s  ETA 0:02
 * It never exceeds `width` columns.
 */
export function renderProgressLine(p: Progress, width = 80): string {
  const pct = p.bytesTotal > 0 ? Math.min(1, p.bytesDone / p.bytesTotal) : p.phase === 'done' ? 1 : 0;
  const eta = p.phase === 'done' ? `in ${formatDuration(p.elapsedSeconds)}` : p.etaSeconds === undefined ? 'ETA --:--' : `ETA ${formatDuration(p.etaSeconds)}`;
  const head = `${p.operation} ${String(Math.floor(pct * 100)).padStart(3)}% `;
  const tail = ` ${formatBytes(p.bytesDone)} / ${formatBytes(p.bytesTotal)}  ${formatBytes(p.rate)}/s  ${eta}`;
  const barWidth = width - head.length - tail.length - 2;
  if (barWidth < 5) return (head + tail.trimStart()).slice(0, width);
  const filled = Math.round(pct * barWidth);
  return `${head}[${'#'.repeat(filled)}${'.'.repeat(barWidth - filled)}]${tail}`;
}

/** One line without the bar, for logs and pipes: "restore 42% 430 MiB / 1.0 GiB 312 MiB/s ETA 0:02". */
export function renderProgressPlain(p: Progress): string {
  const pct = p.bytesTotal > 0 ? Math.min(100, Math.floor((p.bytesDone / p.bytesTotal) * 100)) : p.phase === 'done' ? 100 : 0;
  const eta =
    p.phase === 'done' ? `done in ${formatDuration(p.elapsedSeconds)}` : p.etaSeconds === undefined ? 'ETA --:--' : `ETA ${formatDuration(p.etaSeconds)}`;
  return `${p.operation} ${pct}% ${formatBytes(p.bytesDone)} / ${formatBytes(p.bytesTotal)} ${formatBytes(p.rate)}/s ${eta}`;
}

/**
 * Shows progress on a stream: on a terminal a bar redrawn in place (at most 4
 * times a second); elsewhere a plain line every `plainIntervalMs`, plus the
 * last one. `clear()` blanks the bar before other text is written.
 */
export class ProgressPrinter {
  #last = -Infinity;
  #shown = false;

  constructor(
    readonly out: { write(s: string): unknown; isTTY?: boolean; columns?: number },
    readonly plainIntervalMs = 5000,
  ) {}

  get tty(): boolean {
    return this.out.isTTY === true;
  }

  update(p: Progress): void {
    const now = performance.now();
    const final = p.phase === 'done';
    if (this.tty) {
      if (!final && now - this.#last < 250) return;
      this.#last = now;
      this.out.write(`\r${renderProgressLine(p, Math.max(40, (this.out.columns ?? 80) - 1))}${final ? '\n' : ''}`);
      this.#shown = !final;
      return;
    }
    if (!final && now - this.#last < this.plainIntervalMs) return;
    this.#last = now;
    this.out.write(renderProgressPlain(p) + '\n');
  }

  clear(): void {
    if (this.tty && this.#shown) this.out.write(`\r${' '.repeat(Math.max(40, (this.out.columns ?? 80) - 1))}\r`);
    this.#shown = false;
  }
}
