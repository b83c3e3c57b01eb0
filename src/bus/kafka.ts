import { readFile } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import kafkajs, { type ISocketFactory, type KafkaConfig, type SASLOptions, type logCreator } from 'kafkajs';
import type { AgentSettings } from '../spec/agent-settings.js';
import type { Logger } from '../log.js';
import { fixKafkajsIdleSpin } from './kafkajs-idle.js';

const { Kafka, logLevel } = kafkajs;
export type Kafka = InstanceType<typeof Kafka>;

/** kafkajs log entries into bosun's logger, at one level lower: kafkajs is chatty about retries it handles itself. */
function kafkaLogs(logger: Logger): logCreator {
  return () =>
    ({ level, log }) => {
      const { message, ...extra } = log as { message: string } & Record<string, unknown>;
      const fields = { kafka: extra.logger, broker: extra.broker, error: extra.error };
      if (level === logLevel.ERROR) logger.warn(fields, `kafka: ${message}`);
      else if (level === logLevel.WARN) logger.info(fields, `kafka: ${message}`);
      else logger.debug(fields, `kafka: ${message}`);
    };
}

/**
 * The sockets of one kafkajs client, so that stopping the client really
 * closes them. kafkajs's disconnect() is not enough when it runs during a
 * broker outage: it waits for its fetch loop, which retries until the broker
 * is back, then reconnects to leave the group, and leaves those new
 * connections open (seen in test/integration/agent.test.ts: two sockets per
 * consumer stopped mid-outage, for good). closeAll() destroys every socket
 * the client has and any it opens later.
 */
export class SocketTracker {
  readonly #open = new Set<net.Socket>();
  #closed = false;

  readonly factory: ISocketFactory = ({ host, port, ssl, onConnect }) => {
    const socket = ssl
      ? tls.connect({ host, port, ...(net.isIP(host) ? {} : { servername: host }), ...ssl }, onConnect)
      : net.connect({ host, port }, onConnect);
    socket.setKeepAlive(true, 60_000);
    if (this.#closed) {
      // kafkajs attaches its handlers right after this returns; the error reaches them as a failed connect.
      setImmediate(() => socket.destroy(new Error('this Kafka client has been closed')));
      return socket;
    }
    this.#open.add(socket);
    socket.once('close', () => this.#open.delete(socket));
    return socket;
  };

  /** sockets not yet closed */
  get open(): number {
    return this.#open.size;
  }

  /** Destroys the sockets open now; new ones may still be opened (a stalled producer given up, a new one made). */
  destroyOpen(): void {
    for (const s of this.#open) s.destroy();
    this.#open.clear();
  }

  closeAll(): void {
    this.#closed = true;
    this.destroyOpen();
  }
}

/**
 * A kafkajs client from AgentSettings: TLS files and the SASL password are read from root-only files, never from settings.
 * With `sockets`, every connection the client opens is tracked there (SocketTracker).
 */
export async function createKafka(settings: AgentSettings, logger: Logger, sockets?: SocketTracker): Promise<Kafka> {
  const k = settings.kafka;
  const config: KafkaConfig = {
    clientId: k.clientId ?? `bosun-${settings.node}`,
    brokers: k.brokers,
    logCreator: kafkaLogs(logger.child({ component: 'kafka' })),
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { initialRetryTime: 300, retries: 8, maxRetryTime: 30_000 },
  };
  if (k.tls === true) config.ssl = true;
  else if (k.tls && typeof k.tls === 'object') {
    config.ssl = {
      rejectUnauthorized: k.tls.rejectUnauthorized,
      ca: k.tls.caFile ? [await readFile(k.tls.caFile, 'utf8')] : undefined,
      cert: k.tls.certFile ? await readFile(k.tls.certFile, 'utf8') : undefined,
      key: k.tls.keyFile ? await readFile(k.tls.keyFile, 'utf8') : undefined,
    };
  }
  if (k.sasl) {
    const password = (await readFile(k.sasl.passwordFile, 'utf8')).trim();
    config.sasl = { mechanism: k.sasl.mechanism, username: k.sasl.username, password } as SASLOptions;
  }
  if (sockets) config.socketFactory = sockets.factory;
  if (!fixKafkajsIdleSpin()) logger.warn('kafkajs request queue not as expected: its idle timer fix is not applied (an idle agent may use more CPU)');
  return new Kafka(config);
}
