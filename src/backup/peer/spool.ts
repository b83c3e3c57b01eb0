import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../../host/files.js';
import { errnoOf } from '../errors.js';
import { TransportError, type ByteRange, type GetResult, type Transport } from '../transport.js';

/**
 * Backup objects as files under a local directory: where a peer server spools
 * the snapshot it makes (createBackup writes through `put`), and what it then
 * serves (`get`, ranged, streamed from disk). Keys are checked by the caller
 * (the server only maps keys of the form backups/<id>/… and packs/<id>-…); this class refuses
 * anything with "." or ".." segments as well.
 */
export class DirTransport implements Transport {
  constructor(readonly root: string) {}

  #path(key: string): string {
    if (key === '' || key.startsWith('/') || key.split('/').some((s) => s === '' || s === '.' || s === '..'))
      throw new TransportError('fatal', `bad object key ${JSON.stringify(key)}`);
    return join(this.root, key);
  }

  describe(key: string): string {
    return `file://${join(this.root, key)}`;
  }

  async size(key: string): Promise<number> {
    try {
      const st = await stat(this.#path(key));
      if (!st.isFile()) throw new TransportError('not-found', `${this.describe(key)} does not exist`);
      return st.size;
    } catch (e) {
      if (e instanceof TransportError) throw e;
      if (errnoOf(e) === 'ENOENT' || errnoOf(e) === 'ENOTDIR') throw new TransportError('not-found', `${this.describe(key)} does not exist`);
      throw new TransportError('fatal', `${this.describe(key)}: ${errnoOf(e) ?? String(e)}`);
    }
  }

  async get(key: string, range?: ByteRange): Promise<GetResult> {
    const size = await this.size(key);
    if (range && range.start >= size) throw new TransportError('range', `${this.describe(key)}: the requested range starts past its end`);
    const start = range?.start ?? 0;
    const end = Math.min(range?.end ?? size - 1, size - 1);
    const body = end < start ? emptyBody() : createReadStream(this.#path(key), { start, end, highWaterMark: 1024 * 1024 });
    return { body, objectSize: size };
  }

  async put(key: string, body: Buffer): Promise<void> {
    // Not forced to disk object by object: the server syncs the whole spool
    // once the snapshot is complete (see server.ts).
    await writeFileAtomic(this.#path(key), body, { mode: 0o600, durable: false });
  }
}

async function* emptyBody(): AsyncGenerator<Uint8Array> {}
