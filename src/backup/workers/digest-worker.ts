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

let states: State[] = [];
let buf = Buffer.alloc(0);
const zero = Buffer.alloc(1 << 16);
let open = 0;
let remaining = 0;

function post(m: DigestOut): void {
  parentPort!.postMessage(m);
}

function verdict(state: State, index: number, ok: boolean, detail?: string): void {
  state.done = true;
  remaining--;
  if (state.fd !== undefined) {
    closeSync(state.fd);
    state.fd = undefined;
    open--;
  }
  state.hash = undefined;
  post({ type: 'verdict', file: index, ok, ...(detail !== undefined ? { detail } : {}) });
}

function advance(state: State, index: number): void {
  if (state.done) return;
  const file = state.file;
  const n = file.holes.length;
  state.hash ??= createHash('sha256');
  try {
    while (state.next < n && (file.holes[state.next] || state.landed.has(state.next))) {
      const k = state.next;
      const start = file.bounds[k]!;
      const len = file.bounds[k + 1]! - start;
      if (file.holes[k]) {
        for (let left = len; left > 0; left -= zero.length) state.hash.update(zero.subarray(0, Math.min(left, zero.length)));
      } else {
        if (state.fd === undefined) {
          state.fd = openSync(file.path, constants.O_RDONLY | constants.O_NOFOLLOW);
          open++;
        }
        let got = 0;
        while (got < len) {
          const bytesRead = readSync(state.fd, buf, got, len - got, start + got);
          if (bytesRead === 0) throw new Error(`short read at byte ${start + got}`);
          got += bytesRead;
        }
        state.hash.update(buf.subarray(0, len));
        state.landed.delete(k);
      }
      state.next++;
    }
  } catch (e) {
    verdict(state, index, false, e instanceof Error ? e.message : String(e));
    return;
  }
  if (state.next >= n) {
    const ok = state.hash.digest('hex') === file.sha256;
    verdict(state, index, ok);
  } else if (state.fd !== undefined && open > 64) {
    // Too many files half-read: let this one reopen when its next chunk lands.
    closeSync(state.fd);
    state.fd = undefined;
    open--;
  }
}

parentPort!.on('message', (m: DigestIn) => {
  if (m.type === 'init') {
    buf = Buffer.allocUnsafe(m.maxPiece);
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
