// The container section of a spec that runs the lab image's demo service
// (/var/lib/machines/bosun-demo: an HTTP server that answers on 8080 and
// reloads its config on SIGHUP) in a locked-down nspawn machine, as the
// faults and scenario tests deploy it.

/**
 * The demo's health check in bash alone: the service answers 200 on the port its config names, within 5 s.
 * The image's health.mjs checks the same, but starting node costs a TCG guest ~2 s of CPU, and the agent
 * runs the check every health round on every guest (a third of a round's cost; container.test keeps
 * health.mjs, as a spec's own command).
 */
const DEMO_HEALTH = [
  '/bin/bash',
  '-c',
  [
    `pattern="^[[:space:]]*port[[:space:]]*=[[:space:]]*'?([0-9]+)'?[[:space:]]*$"; port=8080`,
    'while IFS= read -r line; do [[ $line =~ $pattern ]] && port=${BASH_REMATCH[1]}; done < /etc/demo/demo.conf',
    `exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && IFS= read -t 5 -r status <&3 && [[ $status == "HTTP/1."?" 200 "* ]]`,
  ].join('\n'),
];

/** The demo service's container section: its port published on the host's `hostPort`, `greeting` in its config. */
export function demoContainer(hostPort: number, greeting: string): Record<string, unknown> {
  return {
    name: 'demo',
    image: '/var/lib/machines/bosun-demo',
    service: { unit: 'demo.service', onConfigChange: 'reload', health: DEMO_HEALTH },
    limits: { memoryMax: '256M', cpuQuota: '100%', ioWeight: 200, tasksMax: 200 },
    network: { mode: 'private', ports: [{ host: hostPort, container: 8080 }] },
    config: {
      mountPoint: '/etc/demo',
      files: { 'demo.conf': { format: 'conf', settings: { port: 8080, admin_port: 9090, greeting, version: '1' }, required: ['port', 'admin_port'] } },
    },
    dataMountPoint: '/var/lib/demo',
  };
}
