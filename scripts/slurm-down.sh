#!/usr/bin/env bash
# Stop the one-node cluster of scripts/slurm-up.sh: slurmd and slurmctld of outputs/slurm/, and munged if that
# script started it. Idempotent; state and logs stay under outputs/slurm/ (make clean removes them).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${COLQ_SLURM_DIR:-$ROOT/outputs/slurm}

say() { echo "slurm-down: $*" >&2; }

stop() {  # stop <name> <pid file>: SIGTERM, wait up to 10 s, then SIGKILL
  local name=$1 pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name ($pid) did not stop in 10 s: SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
    fi
    say "stopped $name ($pid)"
  fi
  rm -f "$pidfile"
}

stop slurmd "$DIR/slurmd.pid"
stop slurmctld "$DIR/slurmctld.pid"
if [ -e "$DIR/.munged-started-here" ]; then
  stop munged /run/munge/munged.pid
  rm -f "$DIR/.munged-started-here"
fi
