import { commonOptions, usage, type Command } from './common.js';

interface LabModule {
  labCommand(args: string[], out: NodeJS.WritableStream): Promise<number>;
}

export const labCommand: Command = {
  summary: 'boot a 3-node cluster of VMs running the real agent, publish its desired state and watch it (source checkout only)',
  usage: 'bosun lab up|down|status',
  help: 'up: starts Kafka and MinIO (test/services), boots node-a/b/c under qemu, runs bosun in each and shows what they report.\ndown: stops the VMs and the services up started. Needs the source tree (test/lab), not an installed bosun.',
  options: { ...commonOptions },
  async run({ positionals }) {
    const lab = (await import(labModuleUrl()).catch(() => undefined)) as LabModule | undefined;
    if (!lab) throw usage('bosun lab needs the source tree (dist/test/lab); it is not part of an installed bosun');
    return lab.labCommand(positionals, process.stdout);
  },
};

/**
 * dist/test/lab/bosun-lab.js, resolved at run time: the lab is test code and
 * is not part of an installed bosun. This file is dist/src/cli/lab.js as tsc
 * writes it, and part of a file directly in dist/bundle as rpm/bundle writes it.
 */
function labModuleUrl(): string {
  const fromTsc = new URL('.', import.meta.url).pathname.endsWith('/src/cli/');
  return new URL(fromTsc ? '../../test/lab/bosun-lab.js' : '../test/lab/bosun-lab.js', import.meta.url).href;
}
