#!/usr/bin/env bash
# The measurement set behind docs/benchmarks.md (bounded: ~15 minutes in all).
# Results: one directory per run under $RES (default /tmp/relais-bench-results).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RES=${RES:-/tmp/relais-bench-results}
T="--threads 2"
run() { # name, env...
  local name=$1; shift
  echo "== $name ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
  env "$@" OUT="$RES/$name" EXTRA="$T ${XTRA:-}" timeout 600 "$HERE/compare.sh" 2>&1 | tail -4
}
# Three-way comparison: 1 video + 1 audio publisher, 100 subscribers.
run cmp-v1a1-s100 SUBS=100 DUR=15
# LiveKit's audio shape, scaled down: 10 audio publishers, 100 subscribers.
run cmp-a10-s100 VPUB=0 APUB=10 SUBS=100 DUR=15
# One room, more subscribers (Relais only).
for s in 250 500 1000 2000; do
  run relais-v1a1-s$s SKIP_JANUS=1 SUBS=$s DUR=10 RAMP=$((s / 50 + 2))
done
# More rooms, 1 to 100: each 1 video + 1 audio publisher and 5 subscribers (Relais only).
for r in 1 10 50 100; do
  run relais-rooms$r SKIP_JANUS=1 ROOMS=$r SUBS=5 DUR=10 RAMP=$((r / 5 + 2))
done
# Idle joins: 500 subscribers, no publishers, joining over 10 s (join time, RSS per participant).
run relais-idle-500 SKIP_JANUS=1 VPUB=0 APUB=0 SUBS=500 DUR=3 RAMP=10 WARMUP=2
