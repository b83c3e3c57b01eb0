import { ExitCode } from '../errors.js';
import { seal, x25519PublicFromString } from '../identity/seal.js';
import { commonOptions, usage, type Command } from './common.js';

export const sealCommand: Command = {
  summary: "seal a secret read from stdin to a host's public key",
  usage: 'printf %s "$SECRET" | bosun seal --to x25519:... [--json]',
  help: 'The secret is read from stdin, never from the command line (argv is visible to every local user). Prints {"sealed": "..."} ready to paste into a spec.',
  options: { ...commonOptions, to: { type: 'string' } },
  async run({ values, io }) {
    if (typeof values.to !== 'string') throw usage('seal needs --to <x25519 public key>');
    const recipient = x25519PublicFromString(values.to);
    if (process.stdin.isTTY) throw usage('seal reads the secret from stdin; pipe it in');
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    const secret = Buffer.concat(chunks);
    if (secret.length === 0) throw usage('nothing to seal: stdin was empty');
    const sealed = { sealed: seal(recipient, secret) };
    // The plaintext does not outlive the sealing in this process's memory.
    secret.fill(0);
    if (io.json) io.data(sealed);
    else io.out(JSON.stringify(sealed));
    return ExitCode.ok;
  },
};
