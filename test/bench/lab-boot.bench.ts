// How long a lab guest takes to boot for real against a start from the saved guest state, and what kernel
// command line words change the boot (BENCH_APPEND_B: a variant, e.g. "quiet"), alternating A and B on one
// guest, one boot at a time. Prints the medians; asserts nothing.
//
//   npm run build && node dist/test/bench/lab-boot.bench.js            # BENCH_BOOTS=3 BENCH_APPEND_B="quiet"
import { rmSync } from 'node:fs';
import { labRunDir, startLab } from '../lab/driver.js';
import { median } from '../helpers.js';

const BOOTS = Number(process.env.BENCH_BOOTS ?? 3);
const VARIANT = process.env.BENCH_APPEND_B ?? 'quiet';
const out = (line: string): boolean => process.stdout.write(`${line}\n`);
const name = 'bench-boot';
rmSync(labRunDir(name), { recursive: true, force: true });
const lab = await startLab({ name, nodes: [{ name: 'boot-a', disks: [{ sizeMiB: 512 }, { sizeMiB: 512 }], deferStart: true }], forwards: [] });
const vm = lab.vm('boot-a');
const times: Record<'restore' | 'A' | 'B', number[]> = { restore: [], A: [], B: [] };
try {
  for (let round = 0; round < BOOTS; round++) {
    await vm.resetDisks();
    await vm.start();
    times.restore.push(vm.restoreTimesMs.at(-1)!);
    for (const variant of ['A', 'B'] as const) {
      await vm.kill();
      process.env.BOSUN_LAB_APPEND = variant === 'B' ? VARIANT : '';
      await vm.start();
      times[variant].push(vm.bootTimesMs.at(-1)!);
    }
    await vm.kill();
    out(`round ${round + 1}: restore ${times.restore.at(-1)} ms, boot ${times.A.at(-1)} ms, boot with "${VARIANT}" ${times.B.at(-1)} ms`);
  }
} finally {
  await lab.stop();
}
const [r, a, b] = [median(times.restore), median(times.A), median(times.B)];
out(
  `medians over ${BOOTS}: start from the saved state ${(r / 1000).toFixed(1)} s; boot ${(a / 1000).toFixed(1)} s (${(a / r).toFixed(1)}x the restore); boot with "${VARIANT}" ${(b / 1000).toFixed(1)} s (${(b / a).toFixed(2)} of a plain boot)`,
);
