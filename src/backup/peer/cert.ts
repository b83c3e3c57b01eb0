import { X509Certificate, createHash, createPrivateKey, createPublicKey, sign, type KeyObject } from 'node:crypto';
import { join } from 'node:path';
import { BosunError } from '../../errors.js';
import { readFileIfExists } from '../../host/files.js';
import { SIGN_FILE } from '../../identity/host-identity.js';
import { publicKeyString } from '../../identity/seal.js';

/**
 * TLS credentials made from a host's Ed25519 identity key, so the mesh needs
 * no certificate authority: each side presents a self-signed X.509
 * certificate whose public key IS its host identity key, and each side pins
 * the other's key (from the NodeSpec / control plane). Chain validation is not
 * used at all; what authenticates a peer is TLS 1.3's CertificateVerify (the
 * peer signed the handshake transcript with the private half of the key in its
 * certificate) plus the pin check on that key.
 *
 * node:crypto can parse certificates but not make them, so this file has a
 * small DER encoder for the one shape needed (RFC 5280 v3 certificate, no
 * extensions, Ed25519 per RFC 8410). The certificate is deterministic (fixed
 * validity, serial from the key, Ed25519 signatures are deterministic), so a
 * host presents the same certificate on every start.
 */
export interface TlsCredential {
  /** PKCS#8 PEM of the Ed25519 private key; kept in memory only, never logged */
  key: string;
  /** PEM of the self-signed certificate */
  cert: string;
  /** "ed25519:<base64url>", what the other side pins */
  publicKey: string;
}

const OID_ED25519 = Buffer.from([0x06, 0x03, 0x2b, 0x65, 0x70]);
const OID_CN = Buffer.from([0x06, 0x03, 0x55, 0x04, 0x03]);

function len(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** one DER TLV */
export function der(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), len(body.length), body]);
}

const seq = (...c: Buffer[]): Buffer => der(0x30, ...c);

function name(cn: string): Buffer {
  return seq(der(0x31, seq(OID_CN, der(0x0c, Buffer.from(cn, 'utf8')))));
}

/** positive INTEGER from unsigned big-endian bytes */
function uint(bytes: Buffer): Buffer {
  let b = bytes;
  while (b.length > 1 && b[0] === 0 && (b[1]! & 0x80) === 0) b = b.subarray(1);
  if ((b[0]! & 0x80) !== 0) b = Buffer.concat([Buffer.from([0]), b]);
  return der(0x02, b);
}

/** A self-signed X.509 v3 certificate (DER) for an Ed25519 private key. */
export function selfSignedCertificate(privateKey: KeyObject, commonName: string): Buffer {
  if (privateKey.asymmetricKeyType !== 'ed25519' || privateKey.type !== 'private')
    throw new BosunError('E_IDENTITY', 'a TLS credential needs an Ed25519 private key');
  const spki = createPublicKey(privateKey).export({ format: 'der', type: 'spki' });
  const alg = seq(OID_ED25519);
  const serial = createHash('sha256').update(spki).digest().subarray(0, 16);
  serial[0] = serial[0]! & 0x7f;
  const validity = seq(der(0x17, Buffer.from('000101000000Z', 'latin1')), der(0x18, Buffer.from('99991231235959Z', 'latin1')));
  const tbs = seq(der(0xa0, der(0x02, Buffer.from([2]))), uint(serial), alg, name(commonName), validity, name(commonName), spki);
  const signature = sign(null, tbs, privateKey);
  return seq(tbs, alg, der(0x03, Buffer.from([0]), signature));
}

function pem(label: string, derBytes: Buffer): string {
  const b64 = derBytes.toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

/** TLS key + certificate for a host's Ed25519 identity key (a KeyObject or its PKCS#8 PEM). */
export function tlsCredential(privateKey: KeyObject | string | Buffer, commonName = 'bosun-host'): TlsCredential {
  const key = typeof privateKey === 'string' || Buffer.isBuffer(privateKey) ? createPrivateKey(privateKey) : privateKey;
  const certDer = selfSignedCertificate(key, commonName);
  return {
    key: key.export({ format: 'pem', type: 'pkcs8' }).toString(),
    cert: pem('CERTIFICATE', certDer),
    publicKey: publicKeyString('ed25519', createPublicKey(key)),
  };
}

/** The "ed25519:…" key in a peer's certificate, or undefined if it has none or another kind of key. */
export function certificateKey(cert: X509Certificate | undefined): string | undefined {
  if (!cert) return undefined;
  const k = cert.publicKey;
  if (k.asymmetricKeyType !== 'ed25519') return undefined;
  return publicKeyString('ed25519', k);
}

/** A credential as given (one made already), or made from a private key (KeyObject or PEM). */
export function asCredential(identity: KeyObject | string | Buffer | TlsCredential, commonName?: string): TlsCredential {
  if (typeof identity === 'string' || Buffer.isBuffer(identity)) return tlsCredential(identity, commonName);
  if ('cert' in identity && typeof identity.cert === 'string') return identity;
  return tlsCredential(identity as KeyObject, commonName);
}

/**
 * The TLS credential of this host, from the Ed25519 identity key in the
 * agent's state dir (made by loadOrCreateIdentity). The key stays in memory;
 * an error names the file, never its content.
 */
export async function hostTlsCredential(stateDir: string, commonName = 'bosun-host'): Promise<TlsCredential> {
  const path = join(stateDir, SIGN_FILE);
  const pemBytes = await readFileIfExists(path);
  if (!pemBytes) throw new BosunError('E_IDENTITY', `no host identity key at ${path}: the agent makes it on its first run`, { path });
  let key: KeyObject;
  try {
    key = createPrivateKey(pemBytes);
  } catch {
    throw new BosunError('E_IDENTITY', `${path} is not a private key`, { path });
  } finally {
    pemBytes.fill(0);
  }
  return tlsCredential(key, commonName);
}
