// Where a lab file's time goes: the driver appends one JSON line per guest
// boot, restore from saved state and save to $BOSUN_LAB_TIMES (when set; test/run-lanes
// sets it), plus one line per test file with its wall time when it exits.
// `node dist/test/lab/lab-times.js <file>` prints the table run-lanes shows at
// the end of `npm test`: per file, wall seconds, seconds spent getting guests
// running (the union of boot/restore intervals, so parallel boots count once)
// and the rest (the checks themselves).
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';

export type LabTimeKind = 'boot' | 'restore' | 'save' | 'file';

export interface LabTimeRecord {
  file: string;
  lab: string;
  vm: string;
  kind: LabTimeKind;
  /** epoch milliseconds when it started */
  at: number;
  ms: number;
}

let exitHookInstalled = false;

function testFile(): string {
  return basename(process.argv[1] ?? 'unknown').replace(/\.js$/, '.ts');
}

function append(record: LabTimeRecord): void {
  const path = process.env.BOSUN_LAB_TIMES;
  if (!path) return;
  try {
    appendFileSync(path, `${JSON.stringify(record)}\n`);
  } catch {
    /* a report is not worth failing a test for */
  }
}

/** Records a guest boot, restore or save that ended now and took ms. */
export function recordLabTime(what: { lab: string; vm: string; kind: Exclude<LabTimeKind, 'file'>; ms: number }): void {
  if (!process.env.BOSUN_LAB_TIMES) return;
  append({ file: testFile(), ...what, at: Date.now() - what.ms });
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  const startedAt = Date.now() - process.uptime() * 1000;
  process.on('exit', () => append({ file: testFile(), lab: '', vm: '', kind: 'file', at: startedAt, ms: Date.now() - startedAt }));
}

/** Milliseconds covered by the union of [at, at+ms) intervals. */
export function unionMs(intervals: Array<{ at: number; ms: number }>): number {
  const sorted = [...intervals].sort((a, b) => a.at - b.at);
  let total = 0;
  let end = -Infinity;
  for (const { at, ms } of sorted) {
    const stop = at + ms;
    if (stop <= end) continue;
    total += stop - Math.max(at, end);
    end = stop;
  }
  return total;
}

export interface FileLabTime {
  file: string;
  wallS: number;
  boots: number;
  bootGuestS: number;
  restores: number;
  restoreGuestS: number;
  saves: number;
  startingWallS: number;
  checksS: number;
}

export function summarize(records: LabTimeRecord[]): FileLabTime[] {
  const files = [...new Set(records.map((r) => r.file))].sort();
  return files.map((file) => {
    const mine = records.filter((r) => r.file === file);
    const of = (kind: LabTimeKind): LabTimeRecord[] => mine.filter((r) => r.kind === kind);
    const sum = (rs: LabTimeRecord[]): number => rs.reduce((t, r) => t + r.ms, 0) / 1000;
    const wallS = sum(of('file'));
    const startingWallS = unionMs([...of('boot'), ...of('restore'), ...of('save')]) / 1000;
    return {
      file,
      wallS,
      boots: of('boot').length,
      bootGuestS: sum(of('boot')),
      restores: of('restore').length,
      restoreGuestS: sum(of('restore')),
      saves: of('save').length,
      startingWallS,
      checksS: Math.max(0, wallS - startingWallS),
    };
  });
}

export function formatReport(rows: FileLabTime[]): string {
  const head = ['file', 'wall s', 'boots', 'boot guest-s', 'restores', 'restore guest-s', 'starting guests s', 'checks s'];
  const body = rows.map((r) => [
    r.file + (r.saves > 0 ? ' (+ saved the guest state)' : ''),
    r.wallS.toFixed(0),
    String(r.boots),
    r.bootGuestS.toFixed(0),
    String(r.restores),
    r.restoreGuestS.toFixed(0),
    r.startingWallS.toFixed(0),
    r.checksS.toFixed(0),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => (row[i] as string).length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join('  ');
  return [line(head), ...body.map(line)].join('\n');
}

export function readRecords(path: string): LabTimeRecord[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as LabTimeRecord);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const path = process.argv[2];
  if (!path) {
    process.stderr.write('usage: lab-times.js RECORDS.jsonl\n');
    process.exit(2);
  }
  const rows = summarize(readRecords(path));
  process.stdout.write(`${rows.length === 0 ? '(no lab guest was started)' : formatReport(rows)}\n`);
}
