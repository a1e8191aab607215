#!/usr/bin/env bash
# Churn: one Relais process, many rounds of rooms that fill, carry media and
# empty again. After each round (everyone gone, its rooms closed) the server
# should be back where it was: the same rooms (none), participants (none),
# threads, open files and metric series, and a resident memory that stops
# growing once the allocator's pools are warm. One line per round; a leak is
# a column that keeps climbing.
#
#   BIN=/tmp/bin crates/relais-loadtest/scripts/soak.sh
#   ROUNDS=60 ROOMS=50 BIN=... soak.sh      # more rounds, more rooms each
#   STAY=1 BIN=... soak.sh                  # the rooms and publishers stay;
#                                           # rounds of subscribers come and go
#
# With STAY=1 the rooms live through the whole run, their publishers joined
# once (a load generator of their own), and only the subscribers churn: what a
# room keeps of each participant that left must go with it.
#
# BIN holds a release build's relais and relais-loadtest. The server runs on
# loopback (HTTP on $PORT, UDP $PORT+2, ICE-TCP $PORT+1, metrics $PORT+9),
# with rooms that close 1 s after their last participant leaves. Results (the
# table and one JSON object per round) go to $OUT.
set -euo pipefail
BIN=${BIN:?BIN=<dir with relais and relais-loadtest>}
ROUNDS=${ROUNDS:-30}
ROOMS=${ROOMS:-20} VPUB=${VPUB:-1} APUB=${APUB:-1} SUBS=${SUBS:-5}
DUR=${DUR:-5} RAMP=${RAMP:-3}
STAY=${STAY:-0}
PORT=${PORT:-7940}
OUT=${OUT:-$(mktemp -d /tmp/relais-soak.XXXXXX)}
mkdir -p "$OUT"
METRICS="http://127.0.0.1:$((PORT + 9))/metrics"

cat > "$OUT/relais.yaml" <<EOF
port: $PORT
bind_addresses: ["127.0.0.1"]
rtc:
  udp_port: $((PORT + 2))
  tcp_port: $((PORT + 1))
  node_ip: 127.0.0.1
keys:
  devkey: secret
logging:
  level: warn
room:
  empty_timeout: 1
  departure_timeout: 1
prometheus:
  port: $((PORT + 9))
EOF
"$BIN/relais" --config "$OUT/relais.yaml" > "$OUT/relais.log" 2>&1 &
PID=$!
PUBLISHERS_PID=
# The server drains before it exits: wait for it, so that the next run finds
# its ports free.
trap 'kill $PID $PUBLISHERS_PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null && break
  sleep 0.1
done
if ! kill -0 $PID 2>/dev/null || ! curl -fsS -o /dev/null "http://127.0.0.1:$PORT/"; then
  echo "relais did not come up on port $PORT:" >&2
  tail -5 "$OUT/relais.log" >&2
  exit 1
fi

gauge() { # metric name: its value in the last scrape (labels or not)
  awk -v m="$1" '$1 == m || index($1, m "{") == 1 {print $2; found = 1}
    END {if (!found) print "absent"}' "$OUT/scrape.txt"
}
# The server at rest: memory, threads, files, metric series, the rooms and
# participants it still holds, and its CPU seconds since the last sample (the
# round's joins, media and departures, and its rest after them).
sample() { # round
  curl -fsS "$METRICS" > "$OUT/scrape.txt"
  local rss hwm threads fds series cpu
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$PID/status)
  hwm=$(awk '/^VmHWM/ {print $2}' /proc/$PID/status)
  threads=$(ls /proc/$PID/task | wc -l)
  fds=$(ls /proc/$PID/fd | wc -l)
  series=$(grep -cv '^#' "$OUT/scrape.txt")
  cpu=$(awk '{printf "%.2f", ($14 + $15) / '"$(getconf CLK_TCK)"'}' /proc/$PID/stat)
  printf '%5s %9s %9s %7s %5s %7s %6s %6s %8.2f\n' "$1" "$rss" "$hwm" "$threads" "$fds" "$series" \
    "$(gauge livekit_room_total)" "$(gauge livekit_participant_total)" \
    "$(awk -v a="$cpu" -v b="$LAST_CPU" 'BEGIN {print a - b}')" | tee -a "$OUT/soak.txt"
  LAST_CPU=$cpu
  printf '{"round":%s,"rss_kib":%s,"hwm_kib":%s,"threads":%s,"fds":%s,"series":%s,"rooms":%s,"participants":%s,"cpu_s":%s}\n' \
    "$1" "$rss" "$hwm" "$threads" "$fds" "$series" "$(gauge livekit_room_total)" \
    "$(gauge livekit_participant_total)" "$cpu" >> "$OUT/soak.jsonl"
}
# What stays between rounds: nothing, or (STAY=1) the rooms and their publishers.
if [ "$STAY" = 1 ]; then
  REST_ROOMS=$ROOMS REST_PARTICIPANTS=$((ROOMS * (VPUB + APUB)))
  ROUND_LOAD=(--video-publishers 0 --audio-publishers 0 --shared-rooms --room-prefix soak)
else
  REST_ROOMS=0 REST_PARTICIPANTS=0
  ROUND_LOAD=(--video-publishers "$VPUB" --audio-publishers "$APUB")
fi
# Rooms close a second after their last participant left; wait for the node to
# be back at rest (the gauges are flushed every second) before taking figures.
settle() {
  for _ in $(seq 1 50); do
    sleep 0.5
    curl -fsS "$METRICS" > "$OUT/scrape.txt"
    [ "$(gauge livekit_room_total)" = "$REST_ROOMS" ] &&
      [ "$(gauge livekit_participant_total)" = "$REST_PARTICIPANTS" ] && break
  done
  sleep 1
}

LAST_CPU=0
printf '%5s %9s %9s %7s %5s %7s %6s %6s %8s\n' round "RSS KiB" "peak KiB" threads fds series rooms parts "CPU s" \
  | tee "$OUT/soak.txt"
if [ "$STAY" = 1 ]; then
  # Publishers for longer than the rounds take; stopped with the server.
  "$BIN/relais-loadtest" --url "ws://127.0.0.1:$PORT" --rooms "$ROOMS" --video-publishers "$VPUB" \
    --audio-publishers "$APUB" --subscribers 0 --ramp "$RAMP" --duration $((ROUNDS * (DUR + 30))) \
    --shared-rooms --room-prefix soak --json > "$OUT/publishers.json" 2> "$OUT/publishers.err" &
  PUBLISHERS_PID=$!
  sleep "$RAMP"
  settle
fi
sample 0
for round in $(seq 1 "$ROUNDS"); do
  "$BIN/relais-loadtest" --url "ws://127.0.0.1:$PORT" --rooms "$ROOMS" "${ROUND_LOAD[@]}" \
    --subscribers "$SUBS" --duration "$DUR" --ramp "$RAMP" --warmup 1 \
    --json > "$OUT/round-$round.json" 2> "$OUT/round-$round.err" || true
  settle
  sample "$round"
done
python3 - "$OUT" "$ROOMS" "$VPUB" "$APUB" "$SUBS" "$STAY" <<'PY'
import json, sys
out, rooms, vpub, apub, subs, stay = sys.argv[1], *map(int, sys.argv[2:])
rows = [json.loads(l) for l in open(f"{out}/soak.jsonl")]
joined = failed = 0
for r in rows[1:]:
    s = json.load(open(f"{out}/round-{r['round']}.json"))
    joined += s["joins_ok"]; failed += s["joins_failed"]
per_round = rooms * (subs if stay else vpub + apub + subs)
if stay:
    print(f"{len(rows) - 1} rounds of {subs} subscribers joining each of {rooms} rooms of "
          f"{vpub + apub} publishers that stay: {joined} joins, {failed} failed")
else:
    print(f"{len(rows) - 1} rounds of {rooms} rooms of {vpub + apub + subs}: {joined} joins, {failed} failed")
if len(rows) > 6:
    # The first rounds warm the allocator's pools; growth is taken over the rest.
    a, b = rows[5], rows[-1]
    n = b["round"] - a["round"]
    print(f"rounds {a['round']}-{b['round']}: RSS {a['rss_kib']} -> {b['rss_kib']} KiB "
          f"({(b['rss_kib'] - a['rss_kib']) / n:+.1f} KiB per round, "
          f"{(b['rss_kib'] - a['rss_kib']) / n / per_round * 1024:+.1f} B per join); "
          f"threads {a['threads']} -> {b['threads']}, fds {a['fds']} -> {b['fds']}, "
          f"series {a['series']} -> {b['series']}")
last = rows[-1]
print(f"after the last round: {last['rooms']} rooms, {last['participants']} participants open")
PY
echo "results in $OUT"
