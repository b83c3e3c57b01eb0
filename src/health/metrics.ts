import { createServer, type Server } from 'node:http';

/**
 * The agent's figures in Prometheus text format, on loopback only, for the
 * metrics agent beside it (telegraf's prometheus input) to scrape.
 */
export type Sample = { name: string; help: string; type: 'gauge' | 'counter'; value: number; labels?: Record<string, string> };

export function renderMetrics(samples: readonly Sample[]): string {
  const out: string[] = [];
  const seen = new Set<string>();
  for (const s of samples) {
    if (!seen.has(s.name)) {
      out.push(`# HELP ${s.name} ${s.help}`, `# TYPE ${s.name} ${s.type}`);
      seen.add(s.name);
    }
    const labels =
      s.labels && Object.keys(s.labels).length > 0
        ? `{${Object.entries(s.labels)
            .map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`)
            .join(',')}}`
        : '';
    out.push(`${s.name}${labels} ${Number.isFinite(s.value) ? s.value : 'NaN'}`);
  }
  return out.join('\n') + '\n';
}

export function serveMetrics(listen: { host: string; port: number }, collect: () => Sample[]): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '/').split('?')[0] !== '/metrics') {
      res.writeHead(404).end('not found\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(renderMetrics(collect()));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => resolve(server));
  });
}
