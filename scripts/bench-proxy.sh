#!/usr/bin/env bash
# Runs the shared side-by-side proxy benchmark with this agent as the candidate.
# ROUNDS, DURATION, SCENARIOS and the other knobs of run.sh pass through.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
harness=${BENCH_HARNESS:-$here/../shared/bench/proxy/run.sh}
[ -x "$harness" ] || { echo "benchmark harness not found at $harness (set BENCH_HARNESS)" >&2; exit 1; }
CANDIDATE_CMD="$here/scripts/bench-candidate.sh" \
CANDIDATE_NAME=${CANDIDATE_NAME:-singularity-edge} \
CANDIDATE_HTTP_PORT=${CANDIDATE_HTTP_PORT:-23080} \
CANDIDATE_TLS_PORT=${CANDIDATE_TLS_PORT:-23443} \
CANDIDATE_PASSTHROUGH_PORT=${CANDIDATE_PASSTHROUGH_PORT:-${CANDIDATE_TLS_PORT:-23443}} \
exec "$harness"
