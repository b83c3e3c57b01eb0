// A worker thread that checks the SHA-256 of every restored file by reading
// it back from the staging tree in order, as its chunks land: what is
// verified is what is on disk, not what was meant to be written. Chunks that
// land early wait until the ones before them are there; holes hash as zeros.
import { createHash, type Hash } from 'node:crypto';
import { closeSync, constants, openSync, readSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import type { DigestFile, DigestIn, DigestOut } from './protocol.js';

interface State {
  file: DigestFile;
  hash: Hash | undefined;
  next: number;
  landed: Set<number>;
  fd: number | undefined;
  done: boolean;
}

let chunkSize = 0;
let states: State[] = [];
let buf = Buffer.alloc(0);
const zero = Buffer.alloc(1 << 16);
let open = 0;
let remaining = 0;

function post(m: DigestOut): void {
  parentPort!.postMessage(m);
}

function verdict(s: State, index: number, ok: boolean, detail?: string): void {
  s.done = true;
  remaining--;
  if (s.fd !== undefined) {
    closeSync(s.fd);
    s.fd = undefined;
    open--;
  }
  s.hash = undefined;
  post({ type: 'verdict', file: index, ok, ...(detail !== undefined ? { detail } : {}) });
}

function advance(s: State, index: number): void {
  if (s.done) return;
  const f = s.file;
  const n = f.holes.length;
  s.hash ??= createHash('sha256');
  try {
    while (s.next < n && (f.holes[s.next] || s.landed.has(s.next))) {
      const k = s.next;
      const len = Math.min(chunkSize, f.size - k * chunkSize);
      if (f.holes[k]) {
        for (let left = len; left > 0; left -= zero.length) s.hash.update(zero.subarray(0, Math.min(left, zero.length)));
      } else {
        if (s.fd === undefined) {
          s.fd = openSync(f.path, constants.O_RDONLY | constants.O_NOFOLLOW);
          open++;
        }
        let got = 0;
        while (got < len) {
          const r = readSync(s.fd, buf, got, len - got, k * chunkSize + got);
          if (r === 0) throw new Error(`short read at byte ${k * chunkSize + got}`);
          got += r;
        }
        s.hash.update(buf.subarray(0, len));
        s.landed.delete(k);
      }
      s.next++;
    }
  } catch (e) {
    verdict(s, index, false, e instanceof Error ? e.message : String(e));
    return;
  }
  if (s.next >= n) {
    const ok = s.hash.digest('hex') === f.sha256;
    verdict(s, index, ok);
  } else if (s.fd !== undefined && open > 64) {
    // Too many files half-read: let this one reopen when its next chunk lands.
    closeSync(s.fd);
    s.fd = undefined;
    open--;
  }
}

parentPort!.on('message', (m: DigestIn) => {
  if (m.type === 'init') {
    chunkSize = m.chunkSize;
    buf = Buffer.allocUnsafe(chunkSize);
    states = m.files.map((file) => ({ file, hash: undefined, next: 0, landed: new Set(), fd: undefined, done: false }));
    remaining = states.length;
    // Empty files and files that are all holes are complete from the start.
    states.forEach((s, i) => {
      if (s.file.holes.every(Boolean)) advance(s, i);
    });
  } else if (m.type === 'written') {
    for (let i = 0; i < m.slices.length; i += 2) {
      const s = states[m.slices[i]!]!;
      s.landed.add(m.slices[i + 1]!);
      if (m.slices[i + 1] === s.next) advance(s, m.slices[i]!);
    }
  } else {
    post({ type: 'finished', pending: remaining });
  }
});
