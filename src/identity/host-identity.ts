import { createPrivateKey, createPublicKey, generateKeyPairSync, sign as edSign, type KeyObject } from 'node:crypto';
import { join } from 'node:path';
import { BosunError } from '../errors.js';
import { ensureDir, readFileIfExists, writeFileAtomic } from '../host/files.js';
import { openSealed, publicKeyString } from './seal.js';

/**
 * A host's identity: an X25519 key pair that secrets are sealed to, and an
 * Ed25519 key pair that signs what the host reports. Made once, on first run,
 * in the state dir (0600, root-only) and never replaced by bosun: a new key
 * would orphan every secret the control plane sealed to the old one.
 */
export interface HostIdentity {
  /** "x25519:<base64url>", published in status; the control plane seals to it */
  readonly sealingKey: string;
  /** "ed25519:<base64url>", verifies this host's signed reports */
  readonly signingKey: string;
  open(sealed: string): Buffer;
  sign(data: Uint8Array): Buffer;
}

const SEAL_FILE = 'identity/x25519.pem';
/** the Ed25519 identity key under the state dir (also the host's TLS key for peer restores: src/backup/peer/cert.ts) */
export const SIGN_FILE = 'identity/ed25519.pem';

export async function loadOrCreateIdentity(stateDir: string): Promise<{ identity: HostIdentity; created: boolean }> {
  await ensureDir(stateDir, 0o700);
  await ensureDir(join(stateDir, 'identity'), 0o700);
  const sealPriv = await loadOrCreateKey(join(stateDir, SEAL_FILE), 'x25519');
  const signPriv = await loadOrCreateKey(join(stateDir, SIGN_FILE), 'ed25519');
  const sealPub = createPublicKey(sealPriv.key);
  const signPub = createPublicKey(signPriv.key);
  const identity: HostIdentity = {
    sealingKey: publicKeyString('x25519', sealPub),
    signingKey: publicKeyString('ed25519', signPub),
    open: (sealed) => openSealed(sealPriv.key, sealPub, sealed),
    sign: (data) => edSign(null, data, signPriv.key),
  };
  return { identity, created: sealPriv.created || signPriv.created };
}

/** Read the identity without creating it (for `status` on a host that never ran). */
export async function readIdentity(stateDir: string): Promise<HostIdentity | undefined> {
  const a = await readFileIfExists(join(stateDir, SEAL_FILE));
  const b = await readFileIfExists(join(stateDir, SIGN_FILE));
  if (!a || !b) return undefined;
  return (await loadOrCreateIdentity(stateDir)).identity;
}

async function loadOrCreateKey(path: string, type: 'x25519' | 'ed25519'): Promise<{ key: KeyObject; created: boolean }> {
  const existing = await readFileIfExists(path);
  if (existing) return { key: parseKey(path, existing, type), created: false };
  const { privateKey } = type === 'x25519' ? generateKeyPairSync('x25519') : generateKeyPairSync('ed25519');
  const pem = privateKey.export({ format: 'pem', type: 'pkcs8' });
  try {
    await writeFileAtomic(path, pem, { mode: 0o600, exclusive: true });
    return { key: privateKey, created: true };
  } catch (e) {
    // Another bosun process made it first: use theirs, never overwrite.
    const again = await readFileIfExists(path);
    if (again) return { key: parseKey(path, again, type), created: false };
    throw e;
  }
}

function parseKey(path: string, pem: Buffer, type: string): KeyObject {
  try {
    const key = createPrivateKey(pem);
    if (key.asymmetricKeyType !== type) throw new Error('wrong type');
    return key;
  } catch {
    throw new BosunError(
      'E_IDENTITY',
      `identity key ${path} is not a valid ${type} private key; refusing to replace it (move it away only if every secret sealed to it can be re-sealed)`,
      { path },
    );
  }
}
