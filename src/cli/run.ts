import { commonOptions, resolveState, stateOptions, type Command } from './common.js';

export const runCommand: Command = {
  summary: 'the daemon: converge to the last good spec at boot, then follow the desired state on Kafka',
  usage: 'bosun run [--settings FILE] [--state-dir DIR]',
  help: 'Started by bosun.service. Logs go to journald under systemd, else to stdout.',
  options: { ...commonOptions, ...stateOptions },
  async run({ values }) {
    const { settings, stateDir } = await resolveState(values, true);
    // The daemon's modules (kafkajs, node-cron, the metrics server) load only here: every other
    // command, `bosun apply` at boot included, starts without them (seconds on a slow host).
    const { runDaemon } = await import('../daemon/run.js');
    return runDaemon(settings!, stateDir);
  },
};
