import { ExitCode, describeError } from '../errors.js';
import { collectHealth } from '../health/collect.js';
import { serveMetrics } from '../health/metrics.js';
import { HealthSchedule } from '../health/schedule.js';
import { Host, LiveProbe, detectDistro } from '../host/index.js';
import { createNotifier, type Notifier } from '../host/notify.js';
import { loadOrCreateIdentity } from '../identity/host-identity.js';
import { createLogger, type Logger } from '../log.js';
import { Redactor } from '../secrets/redact.js';
import type { AgentSettings } from '../spec/agent-settings.js';
import type { NodeSpec } from '../spec/node-spec.js';
import { AGENT_VERSION } from '../version.js';
import { Agent } from './agent.js';

/** How long each boot-time STATUS= line extends systemd's start timeout: a first apply (disks, a restore) takes long. */
const START_EXTEND_USEC = String(15 * 60 * 1_000_000);
/** Health rounds before a spec names its own interval, in seconds. */
const DEFAULT_HEALTH_SECONDS = 30;

/**
 * `bosun run`, as bosun.service starts it: the agent with its systemd
 * notifications (STATUS= while the boot phases run, READY=1 when they are
 * done, WATCHDOG=1 while the loop is sound), the health schedule and the
 * metrics endpoint, until SIGTERM or SIGINT.
 */
export async function runDaemon(settings: AgentSettings, stateDir: string): Promise<number> {
  const redactor = new Redactor();
  const { logger, sink } = createLogger({ redactor, level: settings.log.level });
  const { identity, created } = await loadOrCreateIdentity(stateDir);
  logger.info(
    { node: settings.node, sealingKey: identity.sealingKey, signingKey: identity.signingKey, logSink: sink, identityCreated: created },
    `bosun ${AGENT_VERSION} starting on node ${settings.node}`,
  );
  const notify = createNotifier({ onError: (message) => logger.warn(message) });
  const readiness = new Readiness(notify, logger);
  const probe = new LiveProbe(redactor);
  const ctx = { distro: await detectDistro() };
  // Health rounds follow the applied spec's interval, and one runs right after every apply.
  const health = new HealthSchedule(
    async () => {
      const spec = agent.lastGood;
      if (spec) await agent.report(await collectHealth(spec, probe));
      else await agent.reportProgress();
    },
    (e) => logger.warn({ err: describeError(e) }, 'a health round failed'),
  );
  const onApplied = (spec: NodeSpec) => {
    health.every(spec.health.intervalSeconds);
    void health.runNow();
  };
  const agent = new Agent({
    settings,
    stateDir,
    identity,
    host: new Host({ redactor }),
    probe,
    ctx,
    logger,
    redactor,
    onProgress: (text) => readiness.progress(text),
    onApplied,
    beforeServicePhases: () => readiness.send('host built; starting the service machine'),
  });
  const stopWatchdog = notify.startWatchdog(
    () => agent.healthy(),
    () => logger.error('the main loop is not healthy; no longer feeding the systemd watchdog, which will restart bosun'),
  );
  await notify.status('starting: converging to the last good spec');
  await agent.start();
  if (readiness.sent) await notify.status(agent.summary());
  else await readiness.send(agent.summary());
  const metrics = settings.metrics ? await serveMetrics(parseListen(settings.metrics.listen), () => agent.metrics()) : undefined;
  health.every(agent.lastGood?.health.intervalSeconds ?? DEFAULT_HEALTH_SECONDS);
  await stopSignal();
  logger.info('stopping');
  await notify.stopping('stopping');
  stopWatchdog();
  await health.stop();
  metrics?.close();
  await agent.stop();
  return ExitCode.ok;
}

/**
 * READY=1, sent once: when the host the service machine runs on is built,
 * before the boot-time apply starts the machine (ordered after bosun.service:
 * started before READY, each would wait for the other), or after the
 * boot-time apply when it never gets that far (nothing to do, failed, no spec
 * yet). Until then every STATUS= line also extends the start timeout.
 */
class Readiness {
  readonly #notify: Notifier;
  readonly #logger: Logger;
  #sent = false;

  constructor(notify: Notifier, logger: Logger) {
    this.#notify = notify;
    this.#logger = logger;
  }

  get sent(): boolean {
    return this.#sent;
  }

  progress(text: string): void {
    void this.#notify.send(this.#sent ? { STATUS: text } : { STATUS: text, EXTEND_TIMEOUT_USEC: START_EXTEND_USEC });
  }

  async send(text: string): Promise<void> {
    if (this.#sent) return;
    this.#sent = true;
    await this.#notify.ready(text);
    this.#logger.info({ watchdogMs: this.#notify.watchdogMs ?? null, systemd: this.#notify.enabled }, `ready: ${text}`);
  }
}

/** agent.json's metrics.listen, "127.0.0.1:9559" or "[::1]:9559", as the server takes it. */
function parseListen(listen: string): { host: string; port: number } {
  const colon = listen.lastIndexOf(':');
  return { host: listen.slice(0, colon).replace(/^\[|\]$/g, ''), port: Number(listen.slice(colon + 1)) };
}

function stopSignal(): Promise<void> {
  return new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
}
