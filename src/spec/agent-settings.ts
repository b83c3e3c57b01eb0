import { z } from 'zod';
import { AbsolutePath, Identifier } from './common.js';

/**
 * AgentSettings: the local file /etc/bosun/agent.json, written when the host
 * image is made. It says who this host is and whom to trust; everything else
 * arrives as a signed NodeSpec. Secrets here are file paths (root-only files),
 * never values, so the settings file itself can be world-readable.
 */

const BrokerAddress = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$/, 'expected host:port');

export const KafkaSettings = z.strictObject({
  brokers: z.array(BrokerAddress).min(1),
  clientId: z.string().min(1).optional(),
  tls: z
    .union([
      z.boolean(),
      z.strictObject({
        caFile: AbsolutePath.optional(),
        certFile: AbsolutePath.optional(),
        keyFile: AbsolutePath.optional(),
        /** never false in production; only for lab brokers with self-made certificates */
        rejectUnauthorized: z.boolean().default(true),
      }),
    ])
    .default(false),
  sasl: z
    .strictObject({
      mechanism: z.enum(['plain', 'scram-sha-256', 'scram-sha-512']),
      username: z.string().min(1),
      passwordFile: AbsolutePath,
    })
    .optional(),
});

export const TopicSettings = z.strictObject({
  desired: z.string().min(1).default('bosun.desired'),
  status: z.string().min(1).default('bosun.status'),
  events: z.string().min(1).default('bosun.events'),
});

export const TrustedKey = z.strictObject({
  /** a name for the key, reported when a message is accepted or refused */
  id: z.string().min(1).max(64),
  /** Ed25519 public key of the control plane, as printed by bosun: "ed25519:<base64url>" */
  publicKey: z.string().regex(/^ed25519:[A-Za-z0-9_-]{43}$/, 'expected "ed25519:" and 43 base64url characters'),
});

export const ObjectStorageSettings = z.strictObject({
  endpoint: z.url().optional(),
  region: z.string().min(1).default('us-east-1'),
  forcePathStyle: z.boolean().default(true),
  /** a root-only file with {"accessKeyId": …, "secretAccessKey": …}; absent = the SDK's default chain */
  credentialsFile: AbsolutePath.optional(),
});

export const AgentSettings = z.strictObject({
  node: Identifier,
  stateDir: AbsolutePath.default('/var/lib/bosun'),
  kafka: KafkaSettings,
  topics: TopicSettings.default({ desired: 'bosun.desired', status: 'bosun.status', events: 'bosun.events' }),
  /** control-plane keys whose signatures this agent accepts; several at once allow rotation */
  trustedKeys: z.array(TrustedKey).min(1),
  objectStorage: ObjectStorageSettings.optional(),
  /** Prometheus text endpoint for the local metrics agent; loopback only */
  metrics: z
    .union([
      z.literal(false),
      z.strictObject({ listen: z.string().regex(/^(127\.\d+\.\d+\.\d+|\[::1\]):\d{1,5}$/, 'expected a loopback host:port such as 127.0.0.1:9559') }),
    ])
    .default({ listen: '127.0.0.1:9559' }),
  log: z.strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info') }).default({ level: 'info' }),
});

export type AgentSettings = z.infer<typeof AgentSettings>;
export type TrustedKey = z.infer<typeof TrustedKey>;
export type ObjectStorageSettings = z.infer<typeof ObjectStorageSettings>;
