// The container section of a spec that runs the lab image's demo service
// (/var/lib/machines/bosun-demo: an HTTP server that answers on 8080 and
// reloads its config on SIGHUP) in a locked-down nspawn machine, as the
// faults and scenario tests deploy it.

/** The demo service's container section: its port published on the host's `hostPort`, `greeting` in its config. */
export function demoContainer(hostPort: number, greeting: string): Record<string, unknown> {
  return {
    name: 'demo',
    image: '/var/lib/machines/bosun-demo',
    service: { unit: 'demo.service', onConfigChange: 'reload', health: ['/usr/local/bin/node', '/usr/local/lib/bosun-lab/demo/health.mjs'] },
    limits: { memoryMax: '256M', cpuQuota: '100%', ioWeight: 200, tasksMax: 200 },
    network: { mode: 'private', ports: [{ host: hostPort, container: 8080 }] },
    config: {
      mountPoint: '/etc/demo',
      files: { 'demo.conf': { format: 'conf', settings: { port: 8080, admin_port: 9090, greeting, version: '1' }, required: ['port', 'admin_port'] } },
    },
    dataMountPoint: '/var/lib/demo',
  };
}
