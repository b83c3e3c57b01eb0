#!/bin/sh
# bosun: the agent lives in /usr/lib/bosun (bundled by rpm/bundle) and runs under the system's node.
# --max-semi-space-size=8 (V8's default is 16 MiB per semi-space): a smaller young generation, and fewer
# short-lived objects promoted to the old generation, which V8 lets grow to ~2.7x its live size before
# collecting it. Peak RSS of an 8 GiB restore (26 000 files), one machine, 2026-12-04: median 311 MiB over
# 12 runs against 340 MiB over 10 without it, same CPU (docs/performance.md).
# --heap-growing-percent=20: after a full collection V8 lets the old generation grow by 20 % of what
# lived, not by up to several times it, before the next; the peak of an 8 GiB restore otherwise held
# ~65 MiB of garbage never collected (V8 heap 121 MiB at the peak, 40 MiB of it live). Peak RSS of an
# 8 GiB restore, same runs, 2026-12-05: 214-219 MiB against 283-289 MiB; a 1 GiB restore took as long
# (median 3.94 s against 3.90 s over 4 rounds). test/bench runs its restores with the flags of this line
# (test/bench/node-flags.ts).
exec /usr/bin/node --max-semi-space-size=8 --heap-growing-percent=20 /usr/lib/bosun/dist/bundle/cli.js "$@"
