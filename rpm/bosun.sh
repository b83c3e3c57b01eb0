#!/bin/sh
# bosun: the agent lives in /usr/lib/bosun (bundled by rpm/bundle) and runs under the system's node.
# --max-semi-space-size=8 (V8's default is 16 MiB per semi-space): a smaller young generation, and fewer
# short-lived objects promoted to the old generation, which V8 lets grow to ~2.7x its live size before
# collecting it. Peak RSS of an 8 GiB restore (26 000 files), one machine, 2026-12-04: median 311 MiB over
# 12 runs against 340 MiB over 10 without it, same CPU (docs/performance.md). test/bench runs its restores
# with the flags of this line (test/bench/node-flags.ts).
exec /usr/bin/node --max-semi-space-size=8 /usr/lib/bosun/dist/bundle/cli.js "$@"
