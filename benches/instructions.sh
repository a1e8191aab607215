#!/usr/bin/env bash
# Instructions per forwarded packet, counted by callgrind: a figure that does
# not move with the machine's load, for before/after comparisons that timed
# benchmarks on a shared 2-core VM cannot settle (the same binary timed at
# 49-82 us per packet to 100 subscribers within minutes). Counts only
# `forward_packets` in benches/forward.rs: a publisher's packet into the shard
# (SRTP decrypt, forwarding decisions, the timeout round) and every copy out
# (rewrite, SRTP encrypt); no system calls — the kernel's share is not in it.
#
#   benches/instructions.sh                 # 2,000 packets to 10 and to 100 subscribers
#   PACKETS=5000 SUBS="10" BIN=/tmp/forward-old benches/instructions.sh
#
# Needs valgrind (apt-get install valgrind). BIN: a forward bench binary
# (default: the one benches/forward-bin.sh builds).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PACKETS=${PACKETS:-2000}
SUBS=${SUBS:-10 100}
BIN=${BIN:-$("$ROOT/benches/forward-bin.sh")}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for subs in $SUBS; do
  said=$(RELAIS_BENCH_PACKETS=$PACKETS RELAIS_BENCH_SUBS=$subs valgrind --tool=callgrind \
    --callgrind-out-file="$OUT/cg.$subs" --toggle-collect='*forward_packets*' "$BIN" 2>"$OUT/log.$subs")
  ir=$(sed -n 's/^==[0-9]*== Collected : //p' "$OUT/log.$subs")
  copies=$(echo "$said" | sed -n 's/.* packets, \([0-9]*\) copies/\1/p')
  echo "$said: $ir instructions, $((ir / PACKETS)) per packet, $((ir / copies)) per copy"
done
