import type { NodeSpec } from '../spec/node-spec.js';
import type { AuxiliaryAgent } from '../spec/node-spec.js';

type Template = NonNullable<AuxiliaryAgent['template']>;
type Telegraf = Extract<Template, { kind: 'telegraf' }>;
type Journalpump = Extract<Template, { kind: 'journalpump' }>;

/** A TOML basic string. */
function tomlString(s: string): string {
  return JSON.stringify(s);
}

/**
 * telegraf's configuration: bosun's metrics endpoint and the service's,
 * scraped in Prometheus format, and the state of the units that matter, each
 * tagged with the cluster and node. Deterministic: the same spec gives the same
 * bytes, so an unchanged spec never restarts telegraf.
 */
export function telegrafConfig(t: Telegraf, spec: Pick<NodeSpec, 'cluster' | 'node'>): string {
  const lines = [
    `# Written by bosun for node ${spec.node} of cluster ${spec.cluster}; edits are replaced.`,
    '[global_tags]',
    `  cluster = ${tomlString(spec.cluster)}`,
    `  node = ${tomlString(spec.node)}`,
    '',
    '[agent]',
    `  interval = "${t.intervalSeconds}s"`,
    '',
    '[[inputs.prometheus]]',
    `  urls = [${tomlString(t.bosunMetrics)}]`,
    '  metric_version = 2',
    '  [inputs.prometheus.tags]',
    '    source = "bosun"',
  ];
  if (t.serviceMetrics.length > 0) {
    lines.push(
      '',
      '[[inputs.prometheus]]',
      `  urls = [${t.serviceMetrics.map(tomlString).join(', ')}]`,
      '  metric_version = 2',
      '  [inputs.prometheus.tags]',
      '    source = "service"',
    );
  }
  if (t.units.length > 0) lines.push('', '[[inputs.systemd_units]]', `  pattern = ${tomlString(t.units.join(' '))}`);
  return lines.join('\n') + '\n';
}

/** journalpump's configuration: one reader (the whole journal, or the listed units) and one Kafka sender. */
export function journalpumpConfig(j: Journalpump, spec: Pick<NodeSpec, 'cluster' | 'node'>): string {
  const kafka: Record<string, unknown> = {
    output_type: 'kafka',
    kafka_address: j.brokers.join(','),
    kafka_topic: j.topic,
  };
  if (j.tls) {
    kafka.ssl = true;
    kafka.ca = j.tls.ca;
    if (j.tls.cert) kafka.certfile = j.tls.cert;
    if (j.tls.key) kafka.keyfile = j.tls.key;
  }
  const reader: Record<string, unknown> = { senders: { kafka } };
  if (j.units.length > 0) reader.units_to_match = j.units;
  return JSON.stringify({ readers: { [`${spec.cluster}-${spec.node}`]: reader } }, null, 2) + '\n';
}

/** The content of an auxiliary agent's config file: given, or made from its template. */
export function auxiliaryConfigContent(a: AuxiliaryAgent, spec: Pick<NodeSpec, 'cluster' | 'node'>): string | undefined {
  if (a.template?.kind === 'telegraf') return telegrafConfig(a.template, spec);
  if (a.template?.kind === 'journalpump') return journalpumpConfig(a.template, spec);
  return a.config?.content;
}
