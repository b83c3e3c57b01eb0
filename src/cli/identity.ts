import { ExitCode } from '../errors.js';
import { loadOrCreateIdentity } from '../identity/host-identity.js';
import { commonOptions, resolveState, stateOptions, type Command } from './common.js';

export const identityCommand: Command = {
  summary: "print this host's public keys, making them on first use",
  usage: 'bosun identity [--state-dir DIR] [--json]',
  help: "The x25519 key is what the control plane seals secrets to (bosun seal --to ...); the ed25519 key verifies this host's reports.",
  options: { ...commonOptions, ...stateOptions },
  async run({ values, io }) {
    const { stateDir } = await resolveState(values, false);
    const { identity, created } = await loadOrCreateIdentity(stateDir);
    if (io.json) io.data({ sealingKey: identity.sealingKey, signingKey: identity.signingKey, created });
    else {
      io.out(identity.sealingKey);
      io.out(identity.signingKey);
    }
    return ExitCode.ok;
  },
};
