// A worker thread that opens (decrypt, decompress, verify) and seals
// (hash, compress, encrypt) chunks, so that the main thread only moves bytes
// between the network and the disk. The bytes stay in a shared slot; only
// small job messages travel.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parentPort, workerData } from 'node:worker_threads';
import { ChunkOpenError, chunkDigest, isAllZero, openChunkInto, sealChunk, type ChunkScheme, type Codec } from '../format.js';
import { writeSlice } from '../slice-writer.js';
import type { ChunkJob, ChunkReply, ChunkWorkerData, SliceTarget } from './protocol.js';

const data = workerData as ChunkWorkerData;
const scheme: ChunkScheme =
  data.scheme.format === 'bosun-backup-v1'
    ? { format: data.scheme.format, key: Buffer.from(data.scheme.key), backupId: data.scheme.backupId }
    : { format: data.scheme.format, key: Buffer.from(data.scheme.key), idKey: Buffer.from(data.scheme.idKey) };
const zero = Buffer.alloc(1 << 16);
const slot = (n: number, length: number): Buffer => Buffer.from(data.slots, n * data.slotSize, length);
const scratch = Buffer.allocUnsafe(data.slotSize);

// Decrypting allocates a small buffer per 64 KiB piece; V8 collects such
// off-heap garbage only after ~64 MiB of it piles up. A young-generation
// collection every 16 MiB opened keeps that pile (and the worker's RSS) small
// at the cost of well under a millisecond each.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as ((o?: { type: 'minor' | 'major' }) => void) | undefined;
let sinceGc = 0;

/** Write the plaintext; a failure is answered with its errno code (ENOSPC must reach the restore as such). */
function write(id: number, plain: Buffer, to: SliceTarget): ChunkReply | undefined {
  try {
    writeSlice(to.fd, plain, to.pos, to.sparse, zero);
    return undefined;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return { id, ok: false, why: 'write', ...(code !== undefined ? { code } : {}), message: e instanceof Error ? e.message : String(e) };
  }
}

function handle(job: ChunkJob): ChunkReply {
  sinceGc += job.length;
  if (gc && sinceGc >= 16 * 1024 * 1024) {
    sinceGc = 0;
    gc({ type: 'minor' });
  }
  if (job.op === 'write') return write(job.id, slot(job.slot, job.length), job.write) ?? { id: job.id, ok: true, op: 'write' };
  if (job.op === 'open') {
    let n: number;
    try {
      n = openChunkInto(
        scheme,
        slot(job.slot, job.length),
        { codec: job.codec as Codec, plainLength: job.plainLength, digest: job.digest },
        slot(job.slot, data.slotSize),
        scratch,
      );
    } catch (e) {
      return { id: job.id, ok: false, why: e instanceof ChunkOpenError ? e.why : 'auth' };
    }
    if (job.write) {
      const failed = write(job.id, slot(job.slot, n), job.write);
      if (failed) return failed;
    }
    return { id: job.id, ok: true, op: 'open', plainLength: n };
  }
  const plain = slot(job.slot, job.length);
  if (job.op === 'digest') {
    if (isAllZero(plain, zero)) return { id: job.id, ok: true, op: 'digest', zero: true };
    return { id: job.id, ok: true, op: 'digest', zero: false, digest: chunkDigest(scheme, plain) };
  }
  // sealChunk's output is in buffers of its own; the slot is overwritten only afterwards.
  const sealed = sealChunk(scheme, plain, { level: job.level, digest: job.digest });
  if (sealed.length > data.slotSize) return { id: job.id, ok: false, why: 'length' };
  let off = 0;
  const out = slot(job.slot, sealed.length);
  for (const part of sealed.record) {
    out.set(part, off);
    off += part.length;
  }
  return { id: job.id, ok: true, op: 'seal', recordLength: sealed.length, codec: sealed.identity.codec };
}

parentPort!.on('message', (job: ChunkJob) => parentPort!.postMessage(handle(job)));
