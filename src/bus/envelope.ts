import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { BosunError } from '../errors.js';
import type { TrustedKey } from '../spec/agent-settings.js';
import { parseJsonText, parseNodeSpec, type Problem } from '../spec/validate.js';
import type { NodeSpec } from '../spec/node-spec.js';

/**
 * The signed envelope a desired state travels in on `bosun.desired`:
 *
 *   { "format": "bosun-envelope-v1", "keyId": "<trusted key id>",
 *     "payload": "<base64url of the NodeSpec JSON bytes>", "signature": "<base64url Ed25519>" }
 *
 * The signature covers the domain tag "bosun-envelope-v1\0" followed by the
 * exact payload bytes, so what is verified is exactly what is parsed, and a
 * signature made for another purpose can never pass as an envelope's.
 */

export const ENVELOPE_FORMAT = 'bosun-envelope-v1';
const DOMAIN = Buffer.from(`${ENVELOPE_FORMAT}\0`);

export interface Envelope {
  format: typeof ENVELOPE_FORMAT;
  keyId: string;
  payload: string;
  signature: string;
}

export function signEnvelope(spec: unknown, keyId: string, privateKey: KeyObject): Envelope {
  const payload = Buffer.from(JSON.stringify(spec));
  return {
    format: ENVELOPE_FORMAT,
    keyId,
    payload: payload.toString('base64url'),
    signature: sign(null, Buffer.concat([DOMAIN, payload]), privateKey).toString('base64url'),
  };
}

export function ed25519PublicFromString(s: string): KeyObject {
  const m = /^ed25519:([A-Za-z0-9_-]{43})$/.exec(s);
  if (!m) throw new BosunError('E_INVALID_SETTINGS', 'expected an Ed25519 public key "ed25519:<43 base64url characters>"');
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: m[1]! }, format: 'jwk' });
}

export function ed25519PrivateFromPem(pem: string | Buffer): KeyObject {
  const key = createPrivateKey(pem);
  if (key.asymmetricKeyType !== 'ed25519') throw new BosunError('E_IDENTITY', 'expected an Ed25519 private key');
  return key;
}

/** Why a message was refused: a stable reason code for events and metrics, and words for people. */
export type Refusal =
  | { reason: 'malformed'; message: string }
  | { reason: 'unknown-key'; message: string }
  | { reason: 'bad-signature'; message: string }
  | { reason: 'invalid-spec'; message: string; problems: Problem[] }
  | { reason: 'wrong-node'; message: string }
  | { reason: 'stale-version'; message: string };

export type Verified = { ok: true; spec: NodeSpec; keyId: string } | { ok: false; refusal: Refusal };

/**
 * Everything an agent checks before it acts on a message, in an order that
 * never parses unsigned input as a spec: envelope shape, trusted key,
 * signature, spec schema, node id, version.
 */
export function verifyEnvelope(raw: Buffer | string | null, opts: { node: string; trusted: readonly TrustedKey[]; lastApplied?: number }): Verified {
  const refuse = (r: Refusal): Verified => ({ ok: false, refusal: r });
  if (raw === null) return refuse({ reason: 'malformed', message: 'empty message (a tombstone); ignored' });
  const text = typeof raw === 'string' ? raw : raw.toString('utf8');
  const json = parseJsonText(text);
  if (!json.ok) return refuse({ reason: 'malformed', message: 'the envelope is not JSON' });
  const env = json.value as Partial<Envelope>;
  if (
    typeof env !== 'object' ||
    env === null ||
    env.format !== ENVELOPE_FORMAT ||
    typeof env.keyId !== 'string' ||
    typeof env.payload !== 'string' ||
    typeof env.signature !== 'string'
  ) {
    return refuse({ reason: 'malformed', message: `not a ${ENVELOPE_FORMAT} envelope` });
  }
  const trusted = opts.trusted.find((k) => k.id === env.keyId);
  // The id is unsigned input: quoted escaped (no raw quotes, newlines or terminal escapes in events and logs) and cut short.
  if (!trusted) return refuse({ reason: 'unknown-key', message: `signed with key ${JSON.stringify(env.keyId.slice(0, 64))}, which this agent does not trust` });
  const payload = Buffer.from(env.payload, 'base64url');
  const signature = Buffer.from(env.signature, 'base64url');
  let good: boolean;
  try {
    good = signature.length === 64 && verify(null, Buffer.concat([DOMAIN, payload]), ed25519PublicFromString(trusted.publicKey), signature);
  } catch {
    good = false;
  }
  if (!good) return refuse({ reason: 'bad-signature', message: `the signature does not verify against trusted key "${trusted.id}"` });
  const body = parseJsonText(payload.toString('utf8'));
  if (!body.ok) return refuse({ reason: 'invalid-spec', message: 'the signed payload is not JSON', problems: body.problems });
  const spec = parseNodeSpec(body.value);
  if (!spec.ok)
    return refuse({
      reason: 'invalid-spec',
      message: `the signed spec is invalid (${spec.problems.length} problem${spec.problems.length === 1 ? '' : 's'})`,
      problems: spec.problems,
    });
  if (spec.value.node !== opts.node) return refuse({ reason: 'wrong-node', message: `the spec is for node ${spec.value.node}, not ${opts.node}` });
  if (opts.lastApplied !== undefined && spec.value.version <= opts.lastApplied) {
    return refuse({ reason: 'stale-version', message: `version ${spec.value.version} is not newer than version ${opts.lastApplied}, already applied` });
  }
  return { ok: true, spec: spec.value, keyId: trusted.id };
}
