import { readFile } from 'node:fs/promises';
import { ed25519PrivateFromPem, signEnvelope } from '../bus/envelope.js';
import { ExitCode } from '../errors.js';
import { loadNodeSpec } from '../spec/validate.js';
import { commonOptions, single, usage, type Command } from './common.js';

export const signCommand: Command = {
  summary: 'wrap a spec in an envelope signed with a control-plane Ed25519 key (for control-plane tooling and tests)',
  usage: 'bosun sign <spec> --key <ed25519 private key PEM file> --key-id <id> [--json]',
  help: 'Validates the spec first; prints the envelope to put on bosun.desired with the node id as key.',
  options: { ...commonOptions, key: { type: 'string' }, 'key-id': { type: 'string' } },
  async run({ values, positionals, io }) {
    const file = single(positionals, 'sign needs exactly one spec file');
    if (typeof values.key !== 'string' || typeof values['key-id'] !== 'string') throw usage('sign needs --key and --key-id');
    const spec = await loadNodeSpec(file);
    // The envelope carries the file's own JSON, not the parsed spec with its defaults filled in.
    const raw = JSON.parse(await readFile(file, 'utf8')) as unknown;
    const key = ed25519PrivateFromPem(await readFile(values.key));
    const envelope = signEnvelope(raw, values['key-id'], key);
    if (io.json) io.data({ key: spec.node, envelope });
    else io.out(JSON.stringify(envelope));
    return ExitCode.ok;
  },
};
