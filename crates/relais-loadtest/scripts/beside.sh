#!/usr/bin/env bash
# Rooms beside a large one: one shard carries MEETINGS meetings of 12 (1 video + 1 audio
# publisher, 10 subscribers) while a second load generator fills one room with BIG
# subscribers over BIG_RAMP seconds, keeps it BIG_STAY seconds and leaves at once. What the
# meetings see is the server's forward latency (its histogram counts every room's packets; at
# the defaults the meetings' are 98 % of them), read every 250 ms and reported for each phase: the meetings alone, the big room joining, there, leaving, and the
# meetings alone again. A shard that lets one room's joins, frames or departure hold it shows
# here as packets over 5 and 10 ms in the middle phases.
#
#   BIN=/tmp/bin crates/relais-loadtest/scripts/beside.sh
#   MEETINGS=60 BIG=400 BIN=... beside.sh           # the defaults
#   BIG_EXTRA="" BIN=... beside.sh                  # the big room's publisher unpaced
#   BIG_LEAVE=publisher BIG=700 BIN=... beside.sh   # its publisher leaves first, its
#                                                   # subscribers BIG_LINGER s later
#
# When the whole room leaves at once few offers are due (every subscriber goes with its
# publisher); BIG_LEAVE=publisher isolates the departure that makes one for each subscriber
# who stays: the publisher and the subscribers come from two load generators meeting in one
# room by name (--shared-rooms), and the phase "publisher leaving" is the 3 s from half a
# second before its generator ended.
#
# The server gets the last CPU to itself (one core: one shard, reading its own socket), the
# load generators the others, when the machine has two or more. Every client paces its
# video as a WebRTC sender does (`--pacing-factor 2.5`) unless EXTRA / BIG_EXTRA say
# otherwise. Needs a release build's relais and relais-loadtest in BIN; results (the table,
# summary.json, the samples and both generators' JSON) go to $OUT.
set -euo pipefail
BIN=${BIN:?BIN=<dir with relais and relais-loadtest>}
MEETINGS=${MEETINGS:-60}
BIG=${BIG:-400}
BEFORE=${BEFORE:-6}   # seconds of the meetings alone before the big room
BIG_RAMP=${BIG_RAMP:-4}
BIG_STAY=${BIG_STAY:-6}
AFTER=${AFTER:-6}     # seconds after it left (the first one counts as its leaving)
BIG_LEAVE=${BIG_LEAVE:-room}  # room: all at once; publisher: the publisher first
BIG_LINGER=${BIG_LINGER:-4}   # seconds its subscribers stay after the publisher left
EXTRA=${EXTRA:---pacing-factor 2.5 --decoding-subscribers 1}
BIG_EXTRA=${BIG_EXTRA:---pacing-factor 2.5 --decoding-subscribers 5}
PORT=${PORT:-7960}
OUT=${OUT:-$(mktemp -d /tmp/relais-beside.XXXXXX)}
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || true

LAST_CPU=$(($(nproc) - 1))
if [ "$LAST_CPU" -ge 1 ]; then
  SERVER_CPU=(taskset -c "$LAST_CPU"); CLIENT_CPU=(taskset -c "0-$((LAST_CPU - 1))")
else
  SERVER_CPU=(); CLIENT_CPU=()
fi
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

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
prometheus:
  port: $((PORT + 9))
EOF
"${SERVER_CPU[@]}" "$BIN/relais" --config "$OUT/relais.yaml" > "$OUT/relais.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null && break
  sleep 0.1
done

# The server's forward-latency histogram (and its shard's busy time), every 250 ms.
cat > "$OUT/sample.py" <<'EOF'
import json, re, sys, time, urllib.request
out, url = open(sys.argv[1], "w"), sys.argv[2]
le_label = re.compile(r'le="([^"]+)"')
while True:
    t = time.time()
    try:
        text = urllib.request.urlopen(url, timeout=1).read().decode()
    except OSError:
        time.sleep(0.1)
        continue
    buckets, busy = {}, 0.0
    for line in text.splitlines():
        if line.startswith("relais_forward_latency_ms_bucket{"):
            le = le_label.search(line).group(1)
            buckets[le] = buckets.get(le, 0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("relais_shard_busy_microseconds_total{"):
            busy += float(line.rsplit(" ", 1)[1])
    out.write(json.dumps({"t": t, "buckets": buckets, "busy_us": busy}) + "\n")
    out.flush()
    time.sleep(max(0.0, 0.25 - (time.time() - t)))
EOF
"${CLIENT_CPU[@]}" python3 "$OUT/sample.py" "$OUT/samples.jsonl" "http://127.0.0.1:$((PORT + 9))/metrics" &
PIDS+=($!)

LOAD=(--url "ws://127.0.0.1:$PORT" --api-key devkey --api-secret secret --json)
case "$BIG_LEAVE" in
  room) LINGER=0 ;;
  publisher) LINGER=$((1 + BIG_LINGER)) ;;  # the subscribers start a second after it
  *) echo "BIG_LEAVE is room or publisher, not $BIG_LEAVE" >&2; exit 2 ;;
esac
MEETINGS_FOR=$((BEFORE + BIG_RAMP + 1 + BIG_STAY + LINGER + 4 + AFTER))
# shellcheck disable=SC2086
"${CLIENT_CPU[@]}" "$BIN/relais-loadtest" "${LOAD[@]}" --room-prefix meeting --rooms "$MEETINGS" \
  --video-publishers 1 --audio-publishers 1 --subscribers 10 --ramp 3 --warmup 2 \
  --duration "$MEETINGS_FOR" $EXTRA > "$OUT/meetings.json" 2> "$OUT/meetings.err" &
MEETINGS_PID=$!
PIDS+=("$MEETINGS_PID")
sleep $((3 + 2))
T_ALONE=$(date +%s.%N)
sleep "$BEFORE"
T_BIG=$(date +%s.%N)
T_PUBLISHER_GONE=""
if [ "$BIG_LEAVE" = room ]; then
  # shellcheck disable=SC2086
  "${CLIENT_CPU[@]}" "$BIN/relais-loadtest" "${LOAD[@]}" --room-prefix big --rooms 1 \
    --video-publishers 1 --audio-publishers 1 --subscribers "$BIG" --ramp "$BIG_RAMP" --warmup 1 \
    --duration "$BIG_STAY" $BIG_EXTRA > "$OUT/big.json" 2> "$OUT/big.err"
else
  # The publisher's generator ends when its subscribers have been there BIG_STAY seconds.
  # shellcheck disable=SC2086
  "${CLIENT_CPU[@]}" "$BIN/relais-loadtest" "${LOAD[@]}" --shared-rooms --room-prefix big \
    --rooms 1 --video-publishers 1 --audio-publishers 1 --subscribers 0 --ramp 1 --warmup 0 \
    --duration $((BIG_RAMP + 1 + BIG_STAY)) $BIG_EXTRA > "$OUT/big-publisher.json" \
    2> "$OUT/big-publisher.err" &
  PUBLISHER_PID=$!
  PIDS+=("$PUBLISHER_PID")
  sleep 1
  # shellcheck disable=SC2086
  "${CLIENT_CPU[@]}" "$BIN/relais-loadtest" "${LOAD[@]}" --shared-rooms --room-prefix big \
    --rooms 1 --video-publishers 0 --audio-publishers 0 --subscribers "$BIG" --ramp "$BIG_RAMP" \
    --warmup 1 --duration $((BIG_STAY + BIG_LINGER)) $BIG_EXTRA > "$OUT/big.json" \
    2> "$OUT/big.err" &
  SUBSCRIBERS_PID=$!
  PIDS+=("$SUBSCRIBERS_PID")
  wait "$PUBLISHER_PID" || true
  T_PUBLISHER_GONE=$(date +%s.%N)
  wait "$SUBSCRIBERS_PID" || true
fi
T_GONE=$(date +%s.%N)
sleep "$AFTER"
T_END=$(date +%s.%N)
wait "$MEETINGS_PID" || true

python3 - "$OUT" "$T_ALONE" "$T_BIG" "$BIG_RAMP" "$BIG_STAY" "$T_GONE" "$T_END" \
  "$T_PUBLISHER_GONE" <<'EOF'
import json, sys
out = sys.argv[1]
alone, big, ramp, stay, gone, end = (float(v) for v in sys.argv[2:8])
samples = [json.loads(line) for line in open(f"{out}/samples.jsonl")]
if sys.argv[8]:  # the publisher left first; its subscribers joined a second after it
    publisher_gone = float(sys.argv[8])
    joined = big + 1 + ramp + 1
    phases = [("meetings alone", alone, big), ("big room joining", big, joined),
              ("big room there", joined, publisher_gone - 0.5),
              ("publisher leaving", publisher_gone - 0.5, publisher_gone + 2.5),
              ("subscribers leaving", gone - 0.5, gone + 1), ("meetings alone after", gone + 1, end)]
else:
    joined = big + ramp + 1  # the big room's ramp and warm-up
    phases = [("meetings alone", alone, big), ("big room joining", big, joined),
              ("big room there", joined, joined + stay), ("big room leaving", joined + stay, gone + 1),
              ("meetings alone after", gone + 1, end)]
def at(t):
    return min(samples, key=lambda s: abs(s["t"] - t))
def edge(le):
    return float("inf") if le == "+Inf" else float(le)
rows = []
print(f"{'phase':22} {'seconds':>7} {'shard busy':>10} {'packets':>8} {'> 5 ms':>8} {'> 10 ms':>8} "
      f"{'> 20 ms':>8} {'> 50 ms':>8} {'p99 <=':>7}")
for name, a, b in phases:
    first, last = at(a), at(b)
    seconds = last["t"] - first["t"]
    counts = sorted((edge(le), c - first["buckets"].get(le, 0)) for le, c in last["buckets"].items())
    total = counts[-1][1] if counts else 0
    within = dict(counts)
    over = lambda ms: 100 * (total - within.get(ms, total)) / total if total else None
    late = lambda ms: total - within.get(ms, total)  # packets, not a share: a departure is brief
    p99 = next((le for le, c in counts if c >= 0.99 * total), None) if total else None
    busy = 100 * (last["busy_us"] - first["busy_us"]) / 1e6 / seconds if seconds > 0 else None
    rows.append({"phase": name, "seconds": seconds, "shard_busy_percent": busy, "packets": total,
                 "over_5ms_percent": over(5.0), "over_10ms_percent": over(10.0),
                 "over_20ms_packets": late(20.0), "over_50ms_packets": late(50.0), "p99_le_ms": p99})
    fmt = lambda v, f: format(v, f) if v is not None else "-"
    print(f"{name:22} {seconds:7.1f} {fmt(busy, '9.1f')}% {total:8.0f} {fmt(over(5.0), '7.2f')}% "
          f"{fmt(over(10.0), '7.2f')}% {late(20.0):8.0f} {late(50.0):8.0f} {fmt(p99, '>7g')}")
meetings, big_room = (json.load(open(f"{out}/{n}.json")) for n in ("meetings", "big"))
summary = {"phases": rows, "meetings_joins_ok": meetings["joins_ok"], "big_joins_ok": big_room["joins_ok"],
           "meetings_loss_percent": meetings["loss_percent"]}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(f"joins: meetings {meetings['joins_ok']}, big room {big_room['joins_ok']}; "
      f"the meetings' loss over their window {meetings['loss_percent']} %")
EOF
echo "results in $OUT"
