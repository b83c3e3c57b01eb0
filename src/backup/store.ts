import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { z } from 'zod';
import { BosunError } from '../errors.js';
import type { Redactor } from '../secrets/redact.js';
import { readFileIfExists } from '../host/files.js';
import { openSealed } from '../identity/seal.js';
import type { ObjectStorageSettings } from '../spec/agent-settings.js';
import type { S3ClientOptions } from './s3-transport.js';

/**
 * Where the object store is and how to log in, for the CLI and the restore
 * phase alike. Precedence, field by field: what the caller gives (command-line
 * flags; credentials sealed in the spec), then agent.json's objectStorage
 * (credentials from its root-only credentialsFile), then the environment
 * (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION; for credentials the
 * SDK's own chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles, ...).
 * Every credential read is registered with the redactor.
 */
export interface StoreOverrides {
  endpoint?: string;
  region?: string;
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

const CredentialsFile = z.strictObject({ accessKeyId: z.string().min(1), secretAccessKey: z.string().min(1) });

export async function resolveStore(
  settings: ObjectStorageSettings | undefined,
  over: StoreOverrides,
  redactor: Redactor,
  env: NodeJS.ProcessEnv = process.env,
): Promise<S3ClientOptions> {
  const endpoint = over.endpoint ?? settings?.endpoint ?? (env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined);
  const region = over.region ?? settings?.region ?? (env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1');
  let credentials = over.credentials;
  if (!credentials && settings?.credentialsFile) credentials = await readCredentialsFile(settings.credentialsFile);
  if (credentials) {
    redactor.add(credentials.secretAccessKey);
    redactor.add(credentials.accessKeyId);
  }
  return {
    ...(endpoint !== undefined ? { endpoint } : {}),
    region,
    forcePathStyle: settings?.forcePathStyle ?? true,
    ...(credentials ? { credentials } : {}),
  };
}

/** {"accessKeyId": …, "secretAccessKey": …} from a file only its owner can read; nothing of its content goes into an error. */
export async function readCredentialsFile(path: string): Promise<{ accessKeyId: string; secretAccessKey: string }> {
  const st = await stat(path).catch(() => undefined);
  if (!st) throw new BosunError('E_SECRET', `object storage credentials file ${path} does not exist or cannot be read`);
  if ((st.mode & 0o077) !== 0)
    throw new BosunError('E_SECRET', `object storage credentials file ${path} is readable by others (mode 0${(st.mode & 0o777).toString(8)}); make it 0600`);
  const raw = await readFileIfExists(path);
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw?.toString('utf8') ?? '');
  } catch {
    throw new BosunError('E_SECRET', `object storage credentials file ${path} is not JSON`);
  }
  const r = CredentialsFile.safeParse(parsed);
  if (!r.success) throw new BosunError('E_SECRET', `object storage credentials file ${path} must hold {"accessKeyId": "…", "secretAccessKey": "…"}`);
  return r.data;
}

/**
 * A backup key pair's private half: PKCS#8 PEM of an X25519 key (what
 * `bosun backup keygen` writes). The opened data key never leaves the caller.
 */
export function parseBackupKey(pem: Buffer, what: string): { privateKey: KeyObject; publicKey: KeyObject; open(sealed: string): Buffer } {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch {
    throw new BosunError('E_SECRET', `${what} is not a PEM private key`);
  }
  if (privateKey.asymmetricKeyType !== 'x25519')
    throw new BosunError('E_SECRET', `${what} holds an ${privateKey.asymmetricKeyType ?? 'unknown'} key; a backup key is X25519 (bosun backup keygen)`);
  const publicKey = createPublicKey(privateKey);
  return { privateKey, publicKey, open: (sealed) => openSealed(privateKey, publicKey, sealed) };
}

/** A key file must be the caller's alone: refuse one that group or others can read. */
export async function readPrivateFile(path: string, what: string): Promise<Buffer> {
  const st = await stat(path).catch(() => undefined);
  if (!st) throw new BosunError('E_READ', `${what} ${path} does not exist or cannot be read`);
  if ((st.mode & 0o077) !== 0) throw new BosunError('E_SECRET', `${what} ${path} is readable by others (mode 0${(st.mode & 0o777).toString(8)}); make it 0600`);
  const b = await readFileIfExists(path);
  if (!b) throw new BosunError('E_READ', `${what} ${path} cannot be read`);
  return b;
}
