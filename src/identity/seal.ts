import { createCipheriv, createDecipheriv, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes, type KeyObject } from 'node:crypto';
import { BosunError } from '../errors.js';

/**
 * Sealed secrets: a value encrypted to one host's X25519 public key, so that it
 * can travel in a spec over Kafka and rest in the state dir without ever being
 * readable elsewhere. The construction is ECIES-like, from node:crypto parts:
 *
 *   ephemeral X25519 key pair (e, E); shared = X25519(e, R)
 *   key = HKDF-SHA256(ikm = shared, salt = E || R, info = "bosun-sealed-v1")
 *   AES-256-GCM(key, random 96-bit nonce, aad = "bosun-sealed-v1")
 *   sealed = "bosun-sealed-v1." + base64url(E || nonce || ciphertext || tag)
 *
 * Binding E and R into the key derivation means a ciphertext opened with the
 * wrong recipient key fails authentication instead of yielding garbage.
 */

export const SEALED_PREFIX = 'bosun-sealed-v1.';
const INFO = Buffer.from('bosun-sealed-v1');
const KEY_LEN = 32;
const NONCE_LEN = 12;
const TAG_LEN = 16;

export function x25519PublicFromString(s: string): KeyObject {
  const m = /^x25519:([A-Za-z0-9_-]{43})$/.exec(s.trim());
  if (!m) throw new BosunError('E_SECRET', 'expected an X25519 public key as printed by `bosun identity` (x25519:<43 base64url characters>)');
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: m[1]! }, format: 'jwk' });
}

export function publicKeyString(kind: 'x25519' | 'ed25519', key: KeyObject): string {
  const jwk = key.export({ format: 'jwk' });
  if (typeof jwk.x !== 'string') throw new BosunError('E_IDENTITY', `not an ${kind} key`);
  return `${kind}:${jwk.x}`;
}

function rawPublic(key: KeyObject): Buffer {
  const jwk = key.export({ format: 'jwk' });
  return Buffer.from(jwk.x as string, 'base64url');
}

function deriveKey(shared: Buffer, ephemeralRaw: Buffer, recipientRaw: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', shared, Buffer.concat([ephemeralRaw, recipientRaw]), INFO, KEY_LEN));
}

export function seal(recipient: KeyObject, plaintext: Uint8Array): string {
  const eph = generateKeyPairSync('x25519');
  const ephRaw = rawPublic(eph.publicKey);
  const key = deriveKey(diffieHellman({ privateKey: eph.privateKey, publicKey: recipient }), ephRaw, rawPublic(recipient));
  const nonce = randomBytes(NONCE_LEN);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(INFO);
  const ct = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  key.fill(0);
  return SEALED_PREFIX + Buffer.concat([ephRaw, nonce, ct, cipher.getAuthTag()]).toString('base64url');
}

/** Open a sealed value with this host's private key. Fails loudly, and without detail, on any tampering. */
export function openSealed(privateKey: KeyObject, publicKey: KeyObject, sealed: string): Buffer {
  if (!sealed.startsWith(SEALED_PREFIX)) throw new BosunError('E_SECRET', 'not a sealed secret (expected the bosun-sealed-v1. prefix)');
  const raw = Buffer.from(sealed.slice(SEALED_PREFIX.length), 'base64url');
  if (raw.length < 32 + NONCE_LEN + TAG_LEN) throw new BosunError('E_SECRET', 'sealed secret is truncated');
  const ephRaw = raw.subarray(0, 32);
  const nonce = raw.subarray(32, 32 + NONCE_LEN);
  const ct = raw.subarray(32 + NONCE_LEN, raw.length - TAG_LEN);
  const tag = raw.subarray(raw.length - TAG_LEN);
  const eph = createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: ephRaw.toString('base64url') }, format: 'jwk' });
  const key = deriveKey(diffieHellman({ privateKey, publicKey: eph }), ephRaw, rawPublic(publicKey));
  try {
    const d = createDecipheriv('aes-256-gcm', key, nonce);
    d.setAAD(INFO);
    d.setAuthTag(tag);
    return Buffer.concat([d.update(ct), d.final()]);
  } catch {
    throw new BosunError('E_SECRET', 'sealed secret cannot be opened by this host (sealed to another key, or altered)');
  } finally {
    key.fill(0);
  }
}
