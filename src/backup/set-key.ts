import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import { join } from 'node:path';
import { z } from 'zod';
import { ensureDir, readFileIfExists, writeFileAtomic } from '../host/files.js';
import type { HostIdentity } from '../identity/host-identity.js';
import { publicKeyString, seal, x25519PublicFromString } from '../identity/seal.js';
import { BackupError } from './errors.js';
import { setKeyId } from './format.js';

/*
 * The set key of version 2 (FORMAT.md, "Keys"): 32 random bytes that every
 * backup of one epoch of a set is written under, so that a later backup can
 * reference the chunks an earlier one stored. The creating host keeps it
 * between backups, sealed to its own identity, in the state dir:
 *
 *   <stateDir>/backup/set-key-<16 hex of SHA-256(bucket "\0" prefix)>.json  (0600)
 *   {"format":"bosun-backup-set-key-v1","bucket","prefix","recipient","keyId",
 *    "sealedToHost","sealedToRecipient","createdAt"}
 *
 * A new recipient, or a file that is gone (a new host), starts a new epoch: a
 * fresh key, and the first backup under it stores everything again.
 */

export const SET_KEY_FORMAT = 'bosun-backup-set-key-v1';

/** A set key in memory: the key itself, its public name, and the key sealed to the backup's recipient (the header's sealedDataKey). */
export interface SetKey {
  key: Buffer;
  keyId: string;
  sealed: string;
}

const SetKeyFile = z.strictObject({
  format: z.literal(SET_KEY_FORMAT),
  bucket: z.string(),
  prefix: z.string(),
  recipient: z.string(),
  keyId: z.string(),
  sealedToHost: z.string(),
  sealedToRecipient: z.string(),
  createdAt: z.string(),
});

/** A fresh set key sealed to `recipient`. */
export function newSetKey(recipient: KeyObject): SetKey {
  const key = randomBytes(32);
  return { key, keyId: setKeyId(key), sealed: seal(recipient, key) };
}

export interface SetKeyTarget {
  bucket: string;
  prefix: string;
  /** x25519:… */
  recipient: string;
}

/** Names a backup set in file names: 16 hex digits of SHA-256(bucket "\0" prefix). */
function setName(target: Pick<SetKeyTarget, 'bucket' | 'prefix'>): string {
  return createHash('sha256').update(`${target.bucket}\0${target.prefix}`).digest('hex').slice(0, 16);
}

export function setKeyPath(stateDir: string, target: Pick<SetKeyTarget, 'bucket' | 'prefix'>): string {
  return join(stateDir, 'backup', `set-key-${setName(target)}.json`);
}

/** The set's resume log (known-chunks.ts, ResumeLog), beside its key. */
export function resumeLogPath(stateDir: string, target: Pick<SetKeyTarget, 'bucket' | 'prefix'>): string {
  return join(stateDir, 'backup', `resume-${setName(target)}.jsonl`);
}

/**
 * The host's set key for this bucket and prefix, made (and stored) if there is
 * none or if the recipient changed. `created` says a new epoch starts.
 */
export async function loadOrCreateSetKey(stateDir: string, target: SetKeyTarget, identity: HostIdentity): Promise<SetKey & { created: boolean }> {
  const path = setKeyPath(stateDir, target);
  const raw = await readFileIfExists(path);
  if (raw) {
    const file = parseSetKeyFile(path, raw);
    if (file.recipient === target.recipient && file.bucket === target.bucket && file.prefix === target.prefix) {
      const key = Buffer.from(identity.open(file.sealedToHost));
      if (setKeyId(key) !== file.keyId) throw new BackupError('key', `${path}: the key does not match its key id (the file was altered)`);
      return { key, keyId: file.keyId, sealed: file.sealedToRecipient, created: false };
    }
  }
  const fresh = newSetKey(x25519PublicFromString(target.recipient));
  const file: z.infer<typeof SetKeyFile> = {
    format: SET_KEY_FORMAT,
    bucket: target.bucket,
    prefix: target.prefix,
    recipient: publicKeyString('x25519', x25519PublicFromString(target.recipient)),
    keyId: fresh.keyId,
    sealedToHost: seal(x25519PublicFromString(identity.sealingKey), fresh.key),
    sealedToRecipient: fresh.sealed,
    createdAt: new Date().toISOString(),
  };
  await ensureDir(join(stateDir, 'backup'), 0o700);
  await writeFileAtomic(path, JSON.stringify(file, null, 2) + '\n', { mode: 0o600 });
  return { ...fresh, created: true };
}

function parseSetKeyFile(path: string, raw: Buffer): z.infer<typeof SetKeyFile> {
  try {
    return SetKeyFile.parse(JSON.parse(raw.toString('utf8')));
  } catch {
    throw new BackupError('format', `${path} is not a ${SET_KEY_FORMAT} file; move it away to start a new epoch (the next backup then stores everything)`);
  }
}
