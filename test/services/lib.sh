# shellcheck shell=bash disable=SC2034 # the variables are used by the sourcing scripts
# Shared by test/services/{up,down,status,run-with-services}; sourced, not run.
#
# Test services for the integration tests, built from the package registries
# only (Maven Central through mvn, the Go module proxy through go):
#   - Apache Kafka, KRaft mode, one combined broker+controller on loopback
#   - MinIO (S3 API) on loopback, plus s5cmd as an S3 speed reference and
#     restic as a backup reference
# What is built (Kafka's jars, the Maven and Go caches, the MinIO, s5cmd and
# restic binaries) lives in the build cache shared by every clone on this machine,
# keyed by the pinned versions; what runs (data, logs, pid files, the env
# file) lives in the clone's own cache directory.

set -euo pipefail

SERVICES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SERVICES_DIR/../.." && pwd)

# ---- pinned versions (a bump here rebuilds into a new cache entry) ----------
# Kafka: newest release whose full jar set is on Maven Central (4.4.0 lacks
# kafka-tools-api there).
KAFKA_VERSION=4.3.1
# MinIO publishes no semver tags, so the module proxy only has pseudo-versions;
# this is the newest master commit (2026-02-12) and builds with Go 1.26.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
S5CMD_VERSION=v2.3.0
# restic: newest release the module proxy serves (v0.19.1, 2026-07; needs Go 1.25+).
RESTIC_VERSION=v0.19.1

# ---- layout -----------------------------------------------------------------
CACHE_DIR=${BOSUN_CACHE_DIR:-$REPO_ROOT/.cache/services}
if [[ -n ${BOSUN_BUILD_CACHE:-} ]]; then
  BUILD_CACHE=$BOSUN_BUILD_CACHE
elif [[ -n ${XDG_CACHE_HOME:-} || -n ${HOME:-} ]]; then
  BUILD_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/bosun-build
else
  BUILD_CACHE=$REPO_ROOT/.cache/build
fi
SERVICES_BUILD=$BUILD_CACHE/services
LOG_DIR=$CACHE_DIR/logs
RUN_DIR=$CACHE_DIR/run          # pid files of the services `up` started
STATE_FILE=$CACHE_DIR/env       # KEY=value lines, read by test/services/env.ts
LOCK_FILE=$CACHE_DIR/.lock

KAFKA_HOME=$CACHE_DIR/kafka-$KAFKA_VERSION
KAFKA_JARS=$SERVICES_BUILD/kafka-$KAFKA_VERSION-jars-$(sha256sum "$SERVICES_DIR/kafka/pom.xml" | cut -c1-12)
KAFKA_M2=$SERVICES_BUILD/m2
KAFKA_DATA=$KAFKA_HOME/data
KAFKA_LOG=$LOG_DIR/kafka.log
KAFKA_PID_FILE=$RUN_DIR/kafka.pid

GO_HOME=$SERVICES_BUILD/go      # GOPATH, GOMODCACHE, GOCACHE (shared by builds)
MINIO_BIN=$SERVICES_BUILD/bin/minio-$MINIO_VERSION/minio
S5CMD_BIN=$SERVICES_BUILD/bin/s5cmd-$S5CMD_VERSION/s5cmd
RESTIC_BIN=$SERVICES_BUILD/bin/restic-$RESTIC_VERSION/restic
MINIO_DATA=$CACHE_DIR/minio-data
MINIO_LOG=$LOG_DIR/minio.log
MINIO_PID_FILE=$RUN_DIR/minio.pid

# ---- ports and addresses (override through the environment) -----------------
KAFKA_PORT=${KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-19093}
KAFKA_LAB_PORT=${KAFKA_LAB_PORT:-19094}
# Lab VMs reach the host's loopback through qemu guestfwd at this address. The
# broker only advertises it on the LAB listener; nothing here connects to it.
KAFKA_LAB_HOST=${KAFKA_LAB_HOST:-10.0.2.100}
S3_PORT=${S3_PORT:-19000}
S3_CONSOLE_PORT=${S3_CONSOLE_PORT:-$((S3_PORT + 1))}

# Fixed test credentials for the throwaway MinIO (not secrets).
TEST_S3_ACCESS_KEY=bosun-test
TEST_S3_SECRET_KEY=bosun-test-secret
TEST_S3_BUCKET=bosun-test
TEST_S3_REGION=us-east-1

# Seconds to wait for a started service to answer the readiness probe.
SERVICES_TIMEOUT=${BOSUN_SERVICES_TIMEOUT:-120}

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

need_cmd() { # need_cmd CMD HINT
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH; $2"
}

# pid_alive PIDFILE MARKER: true if the pid in PIDFILE runs a command line
# containing MARKER (so a recycled pid is never mistaken for our service).
pid_alive() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"
}

# port_open HOST PORT: a TCP connect succeeds within 2 s.
port_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# stop_pid PIDFILE MARKER NAME: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
  local pidfile=$1 marker=$2 name=$3 pid i
  if ! pid_alive "$pidfile" "$marker"; then
    rm -f "$pidfile"
    return 0
  fi
  pid=$(<"$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    pid_alive "$pidfile" "$marker" || break
    sleep 0.1
  done
  if pid_alive "$pidfile" "$marker"; then
    log "$name did not stop within 30 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidfile"
}

# Markers looked for in /proc/PID/cmdline.
kafka_marker() { printf '%s' "$KAFKA_HOME/server.properties"; }
minio_marker() { printf '%s' "$MINIO_DATA"; }

# with_lock: serialize up/down across concurrent callers. The lock fd is
# closed for every service started under it (see `9>&-` at the launches).
with_lock() {
  mkdir -p "$CACHE_DIR"
  exec 9>"$LOCK_FILE"
  if ! flock -w 900 9; then
    die "could not lock $LOCK_FILE within 15 minutes (another test/services/up still running?)"
  fi
}
