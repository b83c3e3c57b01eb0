import { BosunError, describeError } from '../errors.js';
import type { HostIdentity } from '../identity/host-identity.js';
import type { Redactor } from './redact.js';
import { isSecretRef, type Content, type SecretRef } from './ref.js';

/**
 * Open the sealed value a reference names with this host's key. The opened
 * bytes are registered with the redactor before they are returned, so no log
 * line or error can carry them from then on.
 */
export function openSecretRef(ref: SecretRef, identity: HostIdentity | undefined, redactor: Redactor): Buffer {
  if (!identity) throw new BosunError('E_SECRET', `${ref.label} is sealed but this host has no identity to open it`);
  let value: Buffer;
  try {
    value = identity.open(ref.secret.sealed);
  } catch (e) {
    throw new BosunError('E_SECRET', `${ref.label}: ${describeError(e)}`);
  }
  redactor.add(value);
  return value;
}

/** Content as bytes, with every sealed part opened (and registered with the redactor) and spliced in. */
export function spliceSecrets(content: Content, identity: HostIdentity | undefined, redactor: Redactor): Buffer {
  if (typeof content === 'string') return Buffer.from(content);
  return Buffer.concat(
    content.map((part) => {
      if (!isSecretRef(part)) return Buffer.from(part);
      const value = openSecretRef(part, identity, redactor);
      return part.encoding === 'base64' ? Buffer.from(value.toString('base64')) : value;
    }),
  );
}
