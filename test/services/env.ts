// Where the integration tests find their services (Kafka, S3).
//
// Values come from the environment (KAFKA_BROKERS, S3_ENDPOINT, ... as
// exported by test/services/run-with-services, or set by hand to use other
// services), falling back to the state file that test/services/up writes
// (<repo>/.cache/services/env, or $BOSUN_CACHE_DIR/env). Missing services are
// an error, never a reason to skip: tests call requireServices() in a
// before() hook, so they fail with a message that says what to run.
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface S3Env {
  endpoint: string;
  region: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
}

export interface ServiceEnv {
  /** Bootstrap brokers for clients on this host, e.g. ['127.0.0.1:19092']. */
  kafkaBrokers: string[];
  /** The LAB listener as lab VMs see it (e.g. ['10.0.2.100:19094']); empty if unknown. Never connect to it from the host. */
  kafkaLabBrokers: string[];
  /** Where the LAB listener is bound on this host (e.g. '127.0.0.1:19094'); undefined for an external Kafka. */
  kafkaLabListener: string | undefined;
  s3: S3Env;
  /** Path of the s5cmd binary built by test/services/up, if any. */
  s5cmd: string | undefined;
  /** Path of the restic binary built by test/services/up (BOSUN_SERVICES_RESTIC=1), if any. */
  restic: string | undefined;
  logs: { kafka: string | undefined; s3: string | undefined };
  /** The state file that was read (whether or not it existed). */
  stateFile: string;
}

const UP = 'test/services/up';

/** The repository root: the nearest ancestor of this file holding test/services/up (works from test/ and dist/test/). */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'test', 'services', 'up'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find the repository root (a directory with ${UP}) above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}

export function stateFilePath(): string {
  const cache = process.env.BOSUN_CACHE_DIR || join(repoRoot(), '.cache', 'services');
  return join(cache, 'env');
}

/** Parses the KEY=value lines that `up` writes (values as bash printf %q prints simple strings). */
export function parseStateFile(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    let value = line.slice(eq + 1);
    if (value.length >= 2 && value.startsWith("'") && value.endsWith("'")) value = value.slice(1, -1);
    else value = value.replace(/\\(.)/g, '$1');
    out.set(line.slice(0, eq), value);
  }
  return out;
}

function list(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

/**
 * The services' settings, from env vars first and the state file second.
 * Throws (naming test/services/up) if Kafka or S3 is not configured.
 */
export function serviceEnv(): ServiceEnv {
  const stateFile = stateFilePath();
  const state = existsSync(stateFile) ? parseStateFile(readFileSync(stateFile, 'utf8')) : new Map<string, string>();
  const get = (key: string): string | undefined => {
    const v = process.env[key];
    if (v !== undefined && v !== '') return v;
    const s = state.get(key);
    return s === undefined || s === '' ? undefined : s;
  };

  const kafkaBrokers = list(get('KAFKA_BROKERS'));
  const endpoint = get('S3_ENDPOINT');
  const missing: string[] = [];
  if (kafkaBrokers.length === 0) missing.push('KAFKA_BROKERS');
  if (endpoint === undefined) missing.push('S3_ENDPOINT');
  if (missing.length > 0) {
    throw new Error(
      `integration test services are not up: ${missing.join(' and ')} not set and not in ${stateFile}. ` +
        `Run '${UP}' first (or run the tests through 'test/services/run-with-services', as 'npm run test:integration' does).`,
    );
  }
  return {
    kafkaBrokers,
    kafkaLabBrokers: list(get('KAFKA_LAB_BROKERS')),
    kafkaLabListener: get('KAFKA_LAB_LISTENER'),
    s3: {
      endpoint: endpoint as string,
      region: get('S3_REGION') ?? 'us-east-1',
      bucket: get('S3_BUCKET') ?? 'bosun-test',
      accessKeyId: get('S3_ACCESS_KEY') ?? 'bosun-test',
      secretAccessKey: get('S3_SECRET_KEY') ?? 'bosun-test-secret',
    },
    s5cmd: get('S5CMD'),
    restic: get('RESTIC'),
    logs: { kafka: get('KAFKA_LOG'), s3: get('MINIO_LOG') },
    stateFile,
  };
}

/** host:port -> [host, port]; accepts [v6]:port. */
export function splitHostPort(address: string, defaultPort?: number): [string, number] {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(address) ?? /^([^:]+)(?::(\d+))?$/.exec(address);
  const port = m?.[2] !== undefined ? Number(m[2]) : defaultPort;
  if (!m?.[1] || port === undefined || !Number.isInteger(port)) throw new Error(`not a host:port address: '${address}'`);
  return [m[1], port];
}

function tcpCheck(host: string, port: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no TCP answer within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.end();
      resolve();
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * serviceEnv() plus a TCP connect to the first Kafka broker and the S3
 * endpoint, so a stale state file fails fast with a clear message instead
 * of a client timeout. Use in before() hooks.
 */
export async function requireServices(timeoutMs = 3000): Promise<ServiceEnv> {
  const env = serviceEnv();
  const url = new URL(env.s3.endpoint);
  const checks: Array<[string, string, number, string | undefined]> = [
    ['Kafka', ...splitHostPort(env.kafkaBrokers[0] as string, 9092), env.logs.kafka],
    ['S3', url.hostname.replace(/^\[|\]$/g, ''), Number(url.port || (url.protocol === 'https:' ? 443 : 80)), env.logs.s3],
  ];
  const failures: string[] = [];
  await Promise.all(
    checks.map(async ([name, host, port, log]) => {
      try {
        await tcpCheck(host, port, timeoutMs);
      } catch (err) {
        const why = err instanceof Error ? err.message : String(err);
        failures.push(`${name} at ${host}:${port} is not reachable (${why})${log ? `; its log: ${log}` : ''}`);
      }
    }),
  );
  if (failures.length > 0) {
    throw new Error(`${failures.join('; ')}. Start the services with '${UP}' (state file: ${env.stateFile}).`);
  }
  return env;
}
