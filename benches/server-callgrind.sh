#!/usr/bin/env bash
# The whole server under callgrind, at light load: instructions and simulated
# cache misses per forwarded copy, over everything its threads do — the
# shard's loop, the system calls' wrappers, timers, the signaling runtime —
# where benches/cold-lines.sh sees the forward bench's function alone. The
# server runs a room of 7 (1 video + 1 audio publisher, 5 subscribers) from
# the load generator on loopback; callgrind collects 20 s once the joins are
# done, and the server's own counter says how many copies left meanwhile.
# Counts, not times: two builds compare on any host, busy or not (a slower
# run batches more per wake-up, so compare runs made alike).
#
#   benches/server-callgrind.sh                       # target/release
#   BIN=/tmp/bin-old benches/server-callgrind.sh      # another build
#   KEEP=/tmp/new.cg benches/server-callgrind.sh      # keep the profile, for
#       callgrind_annotate (its count of copies goes into KEEP.copies)
#
# Needs valgrind (apt-get install valgrind), curl, and BIN holding `relais`
# and `relais-loadtest` (cargo build --release -p relais-server -p relais-loadtest).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
WINDOW=${WINDOW:-20}
PORT=${PORT:-7990}
OUT=$(mktemp -d)
cleanup() {
  [[ -n ${LOAD:-} ]] && kill "$LOAD" 2>/dev/null || true
  [[ -n ${SERVER:-} ]] && kill -INT "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT
valgrind --tool=callgrind --cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,8,64 \
  --instr-atstart=no --callgrind-out-file="$OUT/cg.out" \
  "$BIN/relais" --bind 127.0.0.1 --node-ip 127.0.0.1 --port "$PORT" --keys "devkey: secret" \
  --udp-port "$((PORT + 2))-$((PORT + 3))" \
  --config-body "$(printf 'logging:\n  level: warn\nrtc:\n  tcp_port: %d\nprometheus:\n  port: %d\n' \
    $((PORT + 1)) $((PORT + 9)))" >"$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 120); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
  sleep 1
done
"$BIN/relais-loadtest" --url "ws://127.0.0.1:$PORT" --api-key devkey --api-secret secret \
  --rooms 1 --video-publishers 1 --audio-publishers 1 --subscribers 5 \
  --duration $((WINDOW + 25)) --pacing-factor 2.5 >"$OUT/load.log" 2>&1 &
LOAD=$!
sleep 20
copies() {
  curl -s "http://127.0.0.1:$((PORT + 9))/metrics" |
    awk '/^livekit_packet_total/ && /direction="outgoing"/ {s += $NF} END {printf "%d\n", s}'
}
before=$(copies)
callgrind_control -i on "$SERVER" >/dev/null 2>&1
sleep "$WINDOW"
callgrind_control -i off "$SERVER" >/dev/null 2>&1
after=$(copies)
wait "$LOAD" || true
LOAD=
kill -INT "$SERVER"
wait "$SERVER" || true
SERVER=
if [[ -n ${KEEP:-} ]]; then
  cp "$OUT/cg.out" "$KEEP"
  echo $((after - before)) >"$KEEP.copies"
fi
python3 - "$OUT/cg.out" $((after - before)) <<'EOF'
import sys
path, copies = sys.argv[1], int(sys.argv[2])
totals = next(l for l in open(path) if l.startswith("totals:")).split()[1:]
ir, dr, dw, i1mr, d1mr, d1mw, ilmr, dlmr, dlmw = map(int, totals)
if copies <= 0:
    sys.exit("no copies counted: did the load generator connect?")
print(f"{copies} copies in the window; per copy: {ir / copies:.0f} instructions, "
      f"{i1mr / copies:.1f} L1i misses, {(d1mr + d1mw) / copies:.1f} L1d misses "
      f"({d1mw / copies:.1f} of them writes), {(ilmr + dlmr + dlmw) / copies:.2f} last-level")
EOF
