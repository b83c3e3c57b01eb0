// A worker thread that opens (decrypt, decompress, verify) and seals
// (hash, compress, encrypt) chunks, so that the main thread only moves bytes
// between the network and the disk. Buffers travel both ways by transfer,
// never by copy.
import { parentPort, workerData } from 'node:worker_threads';
import { ChunkOpenError, isAllZero, openChunk, sealChunk, sha256, type Codec } from '../format.js';
import type { ChunkJob, ChunkReply, ChunkWorkerData } from './protocol.js';

const data = workerData as ChunkWorkerData;
const key = Buffer.from(data.key);
const zero = Buffer.alloc(1 << 16);

/** A buffer that owns its whole ArrayBuffer, so it can be transferred; copied only if it does not. */
function own(b: Buffer): ArrayBuffer {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer) return b.buffer;
  const copy = new ArrayBuffer(b.length);
  new Uint8Array(copy).set(b);
  return copy;
}

parentPort!.on('message', (job: ChunkJob) => {
  if (job.op === 'open') {
    const record = Buffer.from(job.buffer, 0, job.length);
    try {
      const plain = openChunk(key, data.backupId, record, { codec: job.codec as Codec, plainLength: job.plainLength, sha256: job.sha256 });
      // The plaintext goes back in the record's own buffer (it is never larger than the
      // buffer's capacity), so the main thread reuses a few buffers instead of
      // collecting a new one per chunk.
      if (plain.length <= job.buffer.byteLength) {
        Buffer.from(job.buffer).set(plain);
        const reply: ChunkReply = { id: job.id, ok: true, plain: job.buffer, plainLength: plain.length, buffer: job.buffer };
        parentPort!.postMessage(reply, [job.buffer]);
      } else {
        const out = own(plain);
        const reply: ChunkReply = { id: job.id, ok: true, plain: out, plainLength: plain.length, buffer: job.buffer };
        parentPort!.postMessage(reply, [out, job.buffer]);
      }
    } catch (e) {
      const reply: ChunkReply = { id: job.id, ok: false, why: e instanceof ChunkOpenError ? e.why : 'auth', buffer: job.buffer };
      parentPort!.postMessage(reply, [job.buffer]);
    }
    return;
  }
  const plain = Buffer.from(job.buffer, 0, job.length);
  if (isAllZero(plain, zero)) {
    const reply: ChunkReply = { id: job.id, ok: true, zero: true, buffer: job.buffer };
    parentPort!.postMessage(reply, [job.buffer]);
    return;
  }
  const hash = sha256(plain);
  const sealed = sealChunk(key, data.backupId, plain, { level: job.level, hash });
  const record = Buffer.concat(sealed.record, sealed.length);
  const out = own(record);
  const reply: ChunkReply = { id: job.id, ok: true, sealed: { record: out, codec: sealed.identity.codec, sha256: hash }, buffer: job.buffer };
  parentPort!.postMessage(reply, [out, job.buffer]);
});
