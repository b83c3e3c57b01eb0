#!/bin/sh
# bosun: the agent lives in /usr/lib/bosun and runs under the system's node.
exec /usr/bin/node /usr/lib/bosun/dist/src/cli.js "$@"
