import { canonicalJson } from '../canonical-json.js';
import { describeError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Redactor } from '../secrets/redact.js';
import type { NodeSpec } from '../spec/node-spec.js';

export interface PeerServingOptions {
  stateDir: string;
  logger: Logger;
  redactor: Redactor;
  /** aborted when the agent stops: no server starts after that */
  signal: AbortSignal;
  /** publish an event on bosun.events */
  event: (body: Record<string, unknown>) => Promise<void>;
}

/**
 * The snapshot server for peers restoring from this node (spec.peerServe),
 * kept in step with the applied spec.
 */
export class PeerServing {
  readonly #options: PeerServingOptions;
  /** the server running now, and the settings it runs with (see sync) */
  #server: { key: string; stop(): Promise<void> } | undefined;

  constructor(options: PeerServingOptions) {
    this.#options = options;
  }

  /**
   * Serve snapshots to the peers the spec names (spec.peerServe), on the mesh
   * address; restart the server only when its settings changed; stop it when
   * the spec no longer asks for it. A server that cannot start is reported and
   * does not fail the apply: the host itself is as the spec says.
   */
  async sync(spec: NodeSpec): Promise<void> {
    const { logger, redactor, stateDir } = this.#options;
    // A node being retired serves no one: its data volume is going away.
    const key =
      spec.peerServe && !spec.decommission ? canonicalJson({ serve: spec.peerServe, address: spec.network?.ipsec?.address, data: spec.disks?.mount.path }) : '';
    if ((this.#server?.key ?? '') === key) return;
    await this.#server?.stop().catch(() => undefined);
    this.#server = undefined;
    if (!key || this.#options.signal.aborted) return;
    try {
      // The peer server (TLS, the snapshot reader) loads only on a node that serves.
      const { PeerServer, hostTlsCredential, peerServerOptions } = await import('../backup/peer/index.js');
      const options = peerServerOptions(spec, { stateDir, credential: await hostTlsCredential(stateDir, spec.node), logger, redactor })!;
      const server = new PeerServer(options);
      const at = await server.start();
      this.#server = { key, stop: () => server.stop() };
      logger.info(
        { port: at.port },
        `serving data volume snapshots to ${spec.peerServe!.clients.map((client) => client.node).join(', ')} on [${at.host}]:${at.port}`,
      );
    } catch (e) {
      const message = redactor.redact(describeError(e));
      logger.error(`cannot serve snapshots to peers: ${message}`);
      await this.#options.event({ kind: 'peer-serve-failed', version: spec.version, message });
    }
  }

  async stop(): Promise<void> {
    await this.#server?.stop().catch(() => undefined);
  }
}
