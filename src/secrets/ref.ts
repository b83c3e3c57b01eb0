import type { SealedSecret } from '../spec/common.js';

/**
 * A sealed value named where it is needed (a step's stdin or file content):
 * opened only at the moment it is used, never printed, never placed in argv.
 */
export interface SecretRef {
  secret: SealedSecret;
  /** what the secret is, for plans and errors: "disks.luks.key" */
  label: string;
  /** how the opened bytes are spliced in: as they are (default) or base64, for formats that cannot hold arbitrary bytes */
  encoding?: 'raw' | 'base64';
}

/** File content or stdin: literal text with sealed secrets spliced in at execution time. */
export type Content = string | readonly (string | SecretRef)[];

export function isSecretRef(value: unknown): value is SecretRef {
  return typeof value === 'object' && value !== null && 'secret' in value && 'label' in value;
}
