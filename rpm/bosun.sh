#!/bin/sh
# bosun: the agent lives in /usr/lib/bosun (bundled by rpm/bundle) and runs under the system's node.
exec /usr/bin/node /usr/lib/bosun/dist/bundle/cli.js "$@"
