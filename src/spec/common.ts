import { z } from 'zod';

/** A DNS-label-safe identifier: node ids, cluster names, array and volume names. */
export const Identifier = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'expected lowercase letters, digits and dashes (1-63 characters, not starting or ending with a dash)');

export const AbsolutePath = z
  .string()
  .regex(/^\/[^\0]*$/, 'expected an absolute path')
  .refine((p) => !p.split('/').includes('..'), 'must not contain ".." components');

/** A path relative to some directory bosun owns; never escapes it. */
export const RelativePath = z
  .string()
  .min(1)
  .refine((p) => !p.startsWith('/') && !p.split('/').includes('..') && !p.includes('\0'), 'expected a relative path without ".." components');

export const Ipv6Address = z.ipv6({ message: 'expected an IPv6 address' });

export const Port = z.number().int().min(1).max(65535);

/** Octal permission bits written as a string, e.g. "0750". */
export const FileMode = z.string().regex(/^0?[0-7]{3,4}$/, 'expected an octal mode such as "0750"');

/** A user or group: a name, or a numeric id. */
export const Principal = z.union([z.string().regex(/^[a-z_][a-z0-9_-]{0,31}\$?$/, 'expected a user or group name'), z.number().int().min(0).max(4294967294)]);

/**
 * A secret in a spec is never plaintext: it is sealed to the host's X25519 key
 * (`bosun seal --to <key>`) and opened in memory at apply time only.
 */
export const SEALED_SECRET_HINT = 'expected a sealed secret {"sealed": "bosun-sealed-v1…"} made by `bosun seal`; plaintext secrets are refused';
export const SealedSecret = z.strictObject(
  {
    sealed: z.string().regex(/^bosun-sealed-v1\.[A-Za-z0-9_-]{40,}$/, 'expected a value made by `bosun seal` (bosun-sealed-v1.…)'),
  },
  { error: (iss) => (iss.code === 'invalid_type' ? SEALED_SECRET_HINT : undefined) },
);
export type SealedSecret = z.infer<typeof SealedSecret>;

export function isSealedSecret(v: unknown): v is SealedSecret {
  return typeof v === 'object' && v !== null && typeof (v as { sealed?: unknown }).sealed === 'string' && Object.keys(v).length === 1;
}
