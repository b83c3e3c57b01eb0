import { pendingPhase } from './types.js';

/*
 * Phases whose executing code is still to come. Each prints, from the spec,
 * what it will do, so `bosun plan` already shows a newcomer the whole boot.
 * Each is replaced by a real observe/plan module when its issue lands.
 */

export const containerPhase = pendingPhase('container', 7, (s) => s.container, (spec, ctx) => {
  const c = spec.container!;
  const limits = Object.entries(c.limits).map(([k, v]) => `${k}=${v}`).join(', ') || 'none';
  return [
    `write ${ctx.distro.nspawnDir}/${c.name}.nspawn: image ${c.image} read-only, private users, ${c.network.mode} network${c.network.ports.length ? `, ports ${c.network.ports.map((p) => `${p.host}->${p.container}/${p.protocol}`).join(' ')}` : ''}, keep ${c.capabilities.join(' ') || 'no extra capabilities'}`,
    `limits for systemd-nspawn@${c.name}.service: ${limits}`,
    ...(c.config ? [`render ${Object.keys(c.config.files).length} config file(s) for ${c.config.mountPoint} with overrides merged; a change triggers ${c.service.onConfigChange} of ${c.service.unit}`] : []),
    `enable and start machine ${c.name}; health: ${c.service.health ? c.service.health.join(' ') : `${c.service.unit} active`}`,
  ];
});
