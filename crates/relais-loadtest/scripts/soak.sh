#!/usr/bin/env bash
# Churn: one Relais process (or several sharing a Redis), many rounds of rooms
# that fill, carry media and empty again. After each round (everyone gone, its
# rooms closed) the server should be back where it was: the same rooms (none),
# participants (none), threads, open files and metric series, and a resident
# memory that stops growing once the allocator's pools are warm. One line per
# node and round; a leak is a column that keeps climbing.
#
#   BIN=/tmp/bin crates/relais-loadtest/scripts/soak.sh
#   ROUNDS=60 ROOMS=50 BIN=... soak.sh      # more rounds, more rooms each
#   STAY=1 BIN=... soak.sh                  # the rooms and publishers stay;
#                                           # rounds of subscribers come and go
#   NODES=2 BIN=... soak.sh                 # a cluster: two nodes, one Redis
#   HEAP=1 BIN=... soak.sh                  # and the bytes malloc hands out
#   NODES=2 RESTART=kill BIN=... soak.sh    # the last node killed and started
#                                           # again between rounds (or =term)
#   REST=12 BIN=... soak.sh                 # seconds at rest before each sample
#
# With STAY=1 the rooms live through the whole run, their publishers joined
# once (a load generator of their own), and only the subscribers churn: what a
# room keeps of each participant that left must go with it.
#
# With NODES > 1 a `redis-server` (no persistence) runs too, and every
# participant enters through the first node, which places each room on one of
# the nodes and relays the signalling of the rooms placed elsewhere. At rest
# Redis must hold the nodes' records and their set, one claim per open room,
# and nothing else: its key count is a column. RESTART=term (a drain, as a
# deployment does) or RESTART=kill (a crash) stops the last node before each
# round from the second on and starts it again at once, with the same
# configuration; the round's joins then show whether the cluster sent rooms to
# the process that is gone.
#
# RSS alone cannot tell a leak from an allocator that keeps freed pages: with
# HEAP=1 each sample also attaches gdb to every node for a moment and has glibc
# print its statistics (malloc_stats), whose "in use" total is what malloc has
# not had back: the program's blocks and what malloc's per-thread caches keep.
# A leak grows it; fragmentation grows only the RSS. A node gives its heap's
# free pages back once it has had no new participant for 10 s after losing
# some: REST=12 samples after that.
#
# BIN holds a release build's relais and relais-loadtest. Node i listens on
# loopback (HTTP on $PORT+20i, ICE-TCP +1, UDP +2, metrics +9; Redis on
# $PORT+19), with rooms that close 1 s after their last participant leaves.
# Results (the table and one JSON object per node and round) go to $OUT.
set -euo pipefail
BIN=${BIN:?BIN=<dir with relais and relais-loadtest>}
ROUNDS=${ROUNDS:-30}
ROOMS=${ROOMS:-20} VPUB=${VPUB:-1} APUB=${APUB:-1} SUBS=${SUBS:-5}
DUR=${DUR:-5} RAMP=${RAMP:-3}
STAY=${STAY:-0}
NODES=${NODES:-1}
HEAP=${HEAP:-0}
RESTART=${RESTART:-}
REST=${REST:-0}
PORT=${PORT:-7940}
OUT=${OUT:-$(mktemp -d /tmp/relais-soak.XXXXXX)}
mkdir -p "$OUT"
REDIS_PORT=$((PORT + 19))
node_port() { echo $((PORT + 20 * $1)); }
URL="ws://127.0.0.1:$PORT"

PIDS=()
PUBLISHERS_PID=
# The servers drain before they exit: wait for them, so that the next run
# finds their ports free.
stop_all() {
  kill "${PIDS[@]}" $PUBLISHERS_PID 2>/dev/null || true
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$NODES" -gt 1 ]; then redis-cli -p "$REDIS_PORT" shutdown nosave > /dev/null 2>&1 || true; fi
}
trap stop_all EXIT

if [ "$NODES" -gt 1 ]; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --dir "$OUT" --logfile "$OUT/redis.log"
  for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
fi
start_node() { # index
  local p
  p=$(node_port "$1")
  cat > "$OUT/relais-$1.yaml" <<EOF
port: $p
bind_addresses: ["127.0.0.1"]
rtc:
  udp_port: $((p + 2))
  tcp_port: $((p + 1))
  node_ip: 127.0.0.1
keys:
  devkey: secret
logging:
  level: warn
room:
  empty_timeout: 1
  departure_timeout: 1
prometheus:
  port: $((p + 9))
EOF
  if [ "$NODES" -gt 1 ]; then
    printf 'redis:\n  address: 127.0.0.1:%s\ncluster:\n  node_id: soak-%s\n' \
      "$REDIS_PORT" "$1" >> "$OUT/relais-$1.yaml"
  fi
  "$BIN/relais" --config "$OUT/relais-$1.yaml" >> "$OUT/relais-$1.log" 2>&1 &
  PIDS[$1]=$!
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$p/" 2>/dev/null && break
    sleep 0.1
  done
  if ! kill -0 "${PIDS[$1]}" 2>/dev/null || ! curl -fsS -o /dev/null "http://127.0.0.1:$p/"; then
    echo "relais did not come up on port $p:" >&2
    tail -5 "$OUT/relais-$1.log" >&2
    exit 1
  fi
}
for i in $(seq 0 $((NODES - 1))); do start_node "$i"; done

scrape_all() {
  for i in "${!PIDS[@]}"; do
    curl -fsS "http://127.0.0.1:$(($(node_port "$i") + 9))/metrics" > "$OUT/scrape-$i.txt"
  done
}
gauge() { # node, metric name: its value in the node's last scrape (labels or not)
  awk -v m="$2" '$1 == m || index($1, m "{") == 1 {print $2; found = 1}
    END {if (!found) print "absent"}' "$OUT/scrape-$1.txt"
}
total() { # metric name: its sum over the nodes ("absent" if one lacks it)
  local sum=0 v i
  for i in "${!PIDS[@]}"; do
    v=$(gauge "$i" "$1")
    [ "$v" = absent ] && { echo absent; return; }
    sum=$((sum + v))
  done
  echo "$sum"
}
redis_keys() {
  if [ "$NODES" -gt 1 ]; then redis-cli -p "$REDIS_PORT" dbsize; else echo -; fi
}
heap_kib() { # node: the bytes its malloc has handed out and not had back, in KiB
  [ "$HEAP" = 1 ] || { echo -; return; }
  gdb -p "${PIDS[$1]}" -batch -ex 'call (void) malloc_stats()' > /dev/null 2>&1 || true
  # malloc_stats writes to the node's stderr, its log; the last total is this one.
  awk '/^Total \(incl\. mmap\):/ {total = 1; next}
    total && /^in use bytes/ {v = $NF; total = 0} END {print (v == "" ? "-" : int(v / 1024))}' \
    "$OUT/relais-$1.log"
}
json_number() { case $1 in ''|*[!0-9.]*) echo null ;; *) echo "$1" ;; esac; }
# Each node at rest: memory, threads, files, metric series, the rooms and
# participants it still holds, and its CPU seconds since the last sample (the
# round's joins, media and departures, and its rest after them); and the keys
# Redis holds.
declare -A LAST_CPU
sample() { # round
  scrape_all
  local keys i pid rss hwm threads fds series cpu rooms parts heap
  keys=$(redis_keys)
  for i in "${!PIDS[@]}"; do
    pid=${PIDS[$i]}
    rss=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)
    hwm=$(awk '/^VmHWM/ {print $2}' /proc/$pid/status)
    threads=$(ls /proc/$pid/task | wc -l)
    fds=$(ls /proc/$pid/fd | wc -l)
    series=$(grep -cv '^#' "$OUT/scrape-$i.txt")
    cpu=$(awk '{printf "%.2f", ($14 + $15) / '"$(getconf CLK_TCK)"'}' /proc/$pid/stat)
    rooms=$(gauge "$i" livekit_room_total)
    parts=$(gauge "$i" livekit_participant_total)
    heap=$(heap_kib "$i")
    printf '%5s %4s %9s %9s %9s %7s %5s %7s %6s %6s %8.2f %6s\n' "$1" "$i" "$rss" "$hwm" "$heap" \
      "$threads" "$fds" "$series" "$rooms" "$parts" \
      "$(awk -v a="$cpu" -v b="${LAST_CPU[$i]:-0}" 'BEGIN {print a - b}')" "$keys" \
      | tee -a "$OUT/soak.txt"
    LAST_CPU[$i]=$cpu
    printf '{"round":%s,"node":%s,"rss_kib":%s,"hwm_kib":%s,"heap_kib":%s,"threads":%s,"fds":%s,"series":%s,"rooms":%s,"participants":%s,"cpu_s":%s,"redis_keys":%s}\n' \
      "$1" "$i" "$rss" "$hwm" "$(json_number "$heap")" "$threads" "$fds" "$series" \
      "$(json_number "$rooms")" \
      "$(json_number "$parts")" "$cpu" "$(json_number "$keys")" \
      >> "$OUT/soak.jsonl"
  done
}
# What stays between rounds: nothing, or (STAY=1) the rooms and their publishers.
if [ "$STAY" = 1 ]; then
  REST_ROOMS=$ROOMS REST_PARTICIPANTS=$((ROOMS * (VPUB + APUB)))
  ROUND_LOAD=(--video-publishers 0 --audio-publishers 0 --shared-rooms --room-prefix soak)
else
  REST_ROOMS=0 REST_PARTICIPANTS=0
  ROUND_LOAD=(--video-publishers "$VPUB" --audio-publishers "$APUB")
fi
# In a cluster Redis holds at rest each node's record, their set, and a claim
# per open room.
REST_KEYS=-
if [ "$NODES" -gt 1 ]; then REST_KEYS=$((NODES + 1 + REST_ROOMS)); fi
# Rooms close a second after their last participant left, and their claims go
# with their node's next heartbeat; wait for the nodes to be back at rest (the
# gauges are flushed every second) before taking figures.
settle() {
  for _ in $(seq 1 50); do
    sleep 0.5
    scrape_all
    [ "$(total livekit_room_total)" = "$REST_ROOMS" ] &&
      [ "$(total livekit_participant_total)" = "$REST_PARTICIPANTS" ] &&
      [ "$(redis_keys)" = "$REST_KEYS" ] && break
  done
  sleep 1
}

printf '%5s %4s %9s %9s %9s %7s %5s %7s %6s %6s %8s %6s\n' round node "RSS KiB" "peak KiB" \
  "heap KiB" threads fds series rooms parts "CPU s" redis | tee "$OUT/soak.txt"
if [ "$STAY" = 1 ]; then
  # Publishers for longer than the rounds take; stopped with the servers.
  "$BIN/relais-loadtest" --url "$URL" --rooms "$ROOMS" --video-publishers "$VPUB" \
    --audio-publishers "$APUB" --subscribers 0 --ramp "$RAMP" --duration $((ROUNDS * (DUR + 30))) \
    --shared-rooms --room-prefix soak --json > "$OUT/publishers.json" 2> "$OUT/publishers.err" &
  PUBLISHERS_PID=$!
  sleep "$RAMP"
fi
# (In a cluster, also every node registered and known to the others.)
settle
sample 0
for round in $(seq 1 "$ROUNDS"); do
  if [ -n "$RESTART" ] && [ "$round" -gt 1 ]; then
    last=$((NODES - 1))
    kill -s "${RESTART^^}" "${PIDS[$last]}"
    wait "${PIDS[$last]}" 2>/dev/null || true
    start_node "$last"
    LAST_CPU[$last]=0
    settle
  fi
  "$BIN/relais-loadtest" --url "$URL" --rooms "$ROOMS" "${ROUND_LOAD[@]}" \
    --subscribers "$SUBS" --duration "$DUR" --ramp "$RAMP" --warmup 1 \
    --json > "$OUT/round-$round.json" 2> "$OUT/round-$round.err" || true
  settle
  sleep "$REST"
  sample "$round"
done
python3 - "$OUT" "$ROOMS" "$VPUB" "$APUB" "$SUBS" "$STAY" "$NODES" "$RESTART" <<'PY'
import json, sys
out, restart = sys.argv[1], sys.argv[-1]
rooms, vpub, apub, subs, stay, nodes = map(int, sys.argv[2:-1])
rows = [json.loads(l) for l in open(f"{out}/soak.jsonl")]
rounds = sorted({r["round"] for r in rows})
joined = failed = 0
for n in rounds[1:]:
    s = json.load(open(f"{out}/round-{n}.json"))
    joined += s["joins_ok"]; failed += s["joins_failed"]
per_round = rooms * (subs if stay else vpub + apub + subs)
where = f" on {nodes} nodes" if nodes > 1 else ""
if stay:
    print(f"{len(rounds) - 1} rounds of {subs} subscribers joining each of {rooms} rooms of "
          f"{vpub + apub} publishers that stay{where}: {joined} joins, {failed} failed")
else:
    print(f"{len(rounds) - 1} rounds of {rooms} rooms of {vpub + apub + subs}{where}: "
          f"{joined} joins, {failed} failed")
for node in range(nodes):
    mine = [r for r in rows if r["node"] == node]
    label = f"node {node}: " if nodes > 1 else ""
    if restart and node == nodes - 1:
        print(f"{label}a new process every round ({restart}): no growth to take")
    elif len(mine) > 6:
        # The first rounds warm the allocator's pools; growth is taken over the rest.
        a, b = mine[5], mine[-1]
        n = b["round"] - a["round"]
        grow = (b["rss_kib"] - a["rss_kib"]) / n
        # With several nodes a join touches the entry node and the room's: no
        # per-join figure.
        per_join = "" if nodes > 1 else f", {grow / per_round * 1024:+.1f} B per join"
        heap = ""
        if a["heap_kib"] is not None and b["heap_kib"] is not None:
            heap = (f"heap in use {a['heap_kib']} -> {b['heap_kib']} KiB "
                    f"({(b['heap_kib'] - a['heap_kib']) / n:+.1f} KiB per round); ")
        print(f"{label}rounds {a['round']}-{b['round']}: RSS {a['rss_kib']} -> {b['rss_kib']} KiB "
              f"({grow:+.1f} KiB per round{per_join}); {heap}threads {a['threads']} -> {b['threads']}, fds {a['fds']} -> "
              f"{b['fds']}, series {a['series']} -> {b['series']}")
    last = mine[-1]
    print(f"{label}after the last round: {last['rooms']} rooms, {last['participants']} participants open")
if nodes > 1:
    print(f"Redis keys after each round: {sorted({r['redis_keys'] for r in rows if r['round'] > 0})}")
PY
echo "results in $OUT"
