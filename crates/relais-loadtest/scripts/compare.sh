#!/usr/bin/env bash
# Floor / Relais / Janus side by side, in one run, with the same load.
#
# Everything runs inside a private network namespace this script creates
# (Janus gathers no ICE candidates on loopback): a veth pair with 10.77.0.1
# (servers) and 10.77.0.2 (load generator); traffic never leaves the machine.
# Bounded: each run lasts RAMP + WARMUP + DUR seconds plus a few seconds.
#
#   crates/relais-loadtest/scripts/compare.sh            # defaults below
#   VPUB=1 APUB=1 SUBS=100 DUR=15 crates/relais-loadtest/scripts/compare.sh
#   SKIP_JANUS=1 ...                                      # Relais and the floor only
#   PIN=1 ...                                             # server on CPU 1, load generator on CPU 0;
#                                                         # the floor also placed so ("floor ⇄")
#   PIN=1 QUIET_CORE=0 ...                                # ... leaving the machine's other threads on
#                                                         # CPU 1 (PIN=1 moves them off for the run)
#   PIN=shared ...                                        # server and load generator both on CPU 1,
#                                                         # placed as the strict floor is
#   SERVER_YAML=$'limit:\n  shard_busy_fraction: 0.9' ...  # more of the server's YAML
#   RTC_YAML=$'  fan_out_threads: 0' ...          # more keys of its rtc: section
#   UDP_PORTS=7882 ...                                    # Relais with one UDP port
#   PERF=1 ...                                            # perf record the server over the window
#   PUBLISHERS_APART=1 ...                                # Relais's publishers in a load generator of
#                                                         # their own, at a higher priority (below)
#
# Needs root (unshare/nsenter), iproute2, janus (apt-get install janus) and the
# release binaries: cargo build --release -p relais-server -p relais-loadtest
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-$(mktemp -d /tmp/relais-compare.XXXXXX)}
ROOMS=${ROOMS:-1}
VPUB=${VPUB:-1}
APUB=${APUB:-1}
SUBS=${SUBS:-50}
DUR=${DUR:-15}
RAMP=${RAMP:-3}
WARMUP=${WARMUP:-3}
VBR=${VBR:-1000000}
ABR=${ABR:-32000}
EXTRA=${EXTRA:-}
UDP_PORTS=${UDP_PORTS:-7882-7883}   # Relais: one shard per port; a single port: a receive thread
# PIN=1: the server under test on CPU 1 (the floor always is), the load generator on CPU 0, so that
# they do not compete for a core and "CPU %" is a share of the server's own core.
# PIN=shared: both on CPU 1, where the strict floor's feeder, forwarder and sinks run, so that the
# server's input and its copies' receivers wake threads on its own core as the floor's do (light
# loads only: the two share one core, and the load generator's loss says when that is too little).
PIN=${PIN:-0}
case "$PIN" in
  1) SERVER_CPU=(taskset -c 1); CLIENT_CPU=(taskset -c 0) ;;
  shared) SERVER_CPU=(taskset -c 1); CLIENT_CPU=(taskset -c 1) ;;
  *) SERVER_CPU=(); CLIENT_CPU=() ;;
esac
# PIN=1 gives the server a core of its own, as a media host isolates its media cores: every
# other thread that may run on CPU 1 is confined to the rest of the machine for the run (and
# given its CPUs back at the end). On the VMs of docs/benchmarks.md the guest's own agent runs
# at nice -10 and takes a core for 4-15 ms about once a second, and a kernel memory-monitor
# thread for 1-3 ms twice a second; on the server's core each such turn holds every datagram
# behind it (docs/benchmarks-journal.md, forty-sixth session). QUIET_CORE=0 leaves them.
QUIET_CORE=${QUIET_CORE:-1}
[ "$PIN" = 1 ] || QUIET_CORE=0
SRV=10.77.0.1
CLI=10.77.0.2
if [ -z "${SKIP_JANUS:-}" ] && ! command -v janus >/dev/null; then
  echo "janus is not installed (apt-get install -y janus), or set SKIP_JANUS=1" >&2
  exit 2
fi
mkdir -p "$OUT"
# The load generator and the floor open a socket per subscriber.
ulimit -n 65536 2>/dev/null || true

unshare --net sleep 7200 &
NS=$!
PIDS=()
# Threads moved off CPU 1 (QUIET_CORE): "tid mask" with the affinity each had, in hex; kept
# for the record, the affinities given back at the end.
MOVED="$OUT/quiet-core-moved.txt"
: > "$MOVED"
quiet_core() {
  local t tid line allowed
  for t in /proc/[0-9]*/task/[0-9]*; do
    tid=${t##*/}
    allowed=
    while read -r line; do
      case "$line" in Cpus_allowed:*) allowed=${line##*[[:space:]]}; allowed=${allowed//,/}; break ;; esac
    done 2>/dev/null < "$t/status" || continue
    # Allowed on CPU 1 and elsewhere: per-CPU kernel threads stay, and so do those the kernel
    # does not let move (taskset fails).
    [ -n "$allowed" ] && (( (0x$allowed & 2) && (0x$allowed & ~2) )) || continue
    if taskset -p "$(printf %x $((0x$allowed & ~2)))" "$tid" >/dev/null 2>&1; then
      echo "$tid $allowed" >> "$MOVED"
    fi
  done
}
restore_core() {
  local tid mask
  while read -r tid mask; do taskset -p "$mask" "$tid" >/dev/null 2>&1 || true; done < "$MOVED"
}
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  kill "$NS" 2>/dev/null || true
  restore_core
}
trap cleanup EXIT
if [ "$QUIET_CORE" = 1 ]; then
  quiet_core
  echo "== CPU 1 kept for the server: $(wc -l < "$MOVED") other threads moved off it for the run" >&2
fi
sleep 0.2
in_ns() { nsenter -t "$NS" -n "$@"; }
in_ns ip link set lo up
in_ns ip link add v0 type veth peer name v1
in_ns ip addr add $SRV/24 dev v0
in_ns ip addr add $CLI/24 dev v1
in_ns ip link set v0 up
in_ns ip link set v1 up

wait_http() { # url
  for _ in $(seq 1 100); do
    if in_ns curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server at $1 did not come up" >&2
  return 1
}

LOAD=(--rooms "$ROOMS" --video-publishers "$VPUB" --audio-publishers "$APUB" --subscribers "$SUBS"
      --duration "$DUR" --ramp "$RAMP" --warmup "$WARMUP" --video-bitrate "$VBR" --audio-bitrate "$ABR"
      --local-ip $CLI --json)
# shellcheck disable=SC2206
LOAD+=($EXTRA)

echo "== floor" >&2
# Same fan-out and roughly the same input rate (video ~4 packets x 30 fps, audio 50/s)
# and payload size (video ~1,000 B, audio ~80 B) as the SFU runs below.
PKT_PER_S=$(( ROOMS * (VPUB * 4 * 30 + APUB * 50) ))
[ "$PKT_PER_S" -ge 50 ] || PKT_PER_S=50
if [ "$VPUB" -gt 0 ]; then FLOOR_PAYLOAD=1000; else FLOOR_PAYLOAD=$((ABR / 8 / 50)); fi
# Its copies take the servers' path: over the veth, one destination socket per subscriber
# (18-33 % more CPU per packet than one sink on loopback; docs/benchmarks-journal.md). Its threads
# always share one core, pinned or not: with its feeder and sink on the other core it pays
# their wake-ups (up to 2x per packet), and an unpinned floor lands either way by chance.
# Measured before the servers and again after Relais: a VM's speed drifts within a run, and
# a floor taken on both sides of the server's window is the fairer denominator (the two
# apart say how far it drifted).
strict_floor() { # output file
  in_ns taskset -c 1 "$BIN/relais-floor" --subscribers "$SUBS" --duration 5 --input-pps "$PKT_PER_S" --payload "$FLOOR_PAYLOAD" \
    --ip $SRV --sink-ip $CLI --sink-per-subscriber --json > "$1"
}
strict_floor "$OUT/floor.json"
if [ "$PIN" = 1 ]; then
  # Pinned, the server's input comes from the load generator's core and its copies wake
  # receivers there. The floor placed the same way (feeder and sinks on CPU 0, arrivals at
  # random as from independent publishers) prices those cross-core wake-ups: "floor ⇄".
  in_ns "$BIN/relais-floor" --subscribers "$SUBS" --duration 5 --input-pps "$PKT_PER_S" --payload "$FLOOR_PAYLOAD" \
    --ip $SRV --sink-ip $CLI --sink-per-subscriber --forwarder-cpu 1 --poisson --json > "$OUT/floor-split.json"
fi

echo "== relais" >&2
cat > "$OUT/relais.yaml" <<EOF
port: 7880
bind_addresses: ["$SRV"]
rtc:
  udp_port: "$UDP_PORTS"
  tcp_port: 7881
  node_ip: "$SRV"
${RTC_YAML:-}
keys:
  devkey: secret
logging:
  level: warn
room:
  empty_timeout: 5
prometheus:
  port: 6789
${SERVER_YAML:-}
EOF
# nsenter execs the server: $! is the server's own PID (not a subshell's).
nsenter -t "$NS" -n "${SERVER_CPU[@]}" "$BIN/relais" --config "$OUT/relais.yaml" > "$OUT/relais.log" 2>&1 &
RPID=$!
PIDS+=("$RPID")
wait_http "http://$SRV:7880/"
# PUBLISHERS_APART=1: the publishers join first from a load generator of their own, on the same
# core at a higher priority (nice -10), in rooms named so that the subscribers' generator
# meets them. One generator whose core is full (near 80 % of the server's core it is: every
# copy the server sends, it receives) runs its publishers' timers late and then catches up
# with several frames at once; apart and first in line, the publishers keep time as
# independent clients do (on the Intel host of docs/benchmarks.md the server's p99 near 80 %
# was no better for it, and the starved subscribers' generator joins late). Relais only.
LOAD_RELAIS=("${LOAD[@]}")
if [ "${PUBLISHERS_APART:-0}" = 1 ]; then
  ROOM_PREFIX="apart$$"
  COMMON=(--rooms "$ROOMS" --video-bitrate "$VBR" --audio-bitrate "$ABR" --local-ip $CLI --json
          --shared-rooms --room-prefix "$ROOM_PREFIX")
  # shellcheck disable=SC2206
  COMMON+=($EXTRA)
  # They stay until the subscribers' window has ended: their own ramp, a second, then the
  # subscribers' ramp, warm-up and window, and a margin.
  in_ns "${CLIENT_CPU[@]}" nice -n -10 "$BIN/relais-loadtest" --url "ws://$SRV:7880" --label publishers \
    "${COMMON[@]}" --video-publishers "$VPUB" --audio-publishers "$APUB" --subscribers 0 \
    --ramp "$RAMP" --warmup 0 --duration $((RAMP + WARMUP + DUR + 4)) > "$OUT/relais-publishers.json" &
  PUBLISHERS_PID=$!
  PIDS+=("$PUBLISHERS_PID")
  sleep $((RAMP + 1))
  LOAD_RELAIS=("${COMMON[@]}" --video-publishers 0 --audio-publishers 0 --subscribers "$SUBS"
               --duration "$DUR" --ramp "$RAMP" --warmup "$WARMUP")
fi
# Each server thread's scheduler figures at the window's start and end: its CPU time, its
# time runnable but waiting for a CPU (run delay: what other threads and the host took from
# it) and its involuntary switches, to tell the server's own queueing from the machine's.
threads_snapshot() {
  # Pinned, the kernel's softirq thread of the server's CPU too: the network work the kernel
  # defers there (datagram delivery past its budget) competes with the shard for the CPU.
  local kernel=()
  if [ "$PIN" = 1 ]; then kernel=(/proc/"$(pgrep -x ksoftirqd/1 | head -1)"/task/*); fi
  for t in /proc/"$RPID"/task/* "${kernel[@]}"; do
    printf '%s %s %s %s\n' "${t##*/}" "$(tr -d ' ' < "$t/comm")" "$(cat "$t/schedstat")" \
      "$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$t/status")"
  done 2>/dev/null > "$1" || true
  awk '/^cpu / {print "steal", $9}' /proc/stat >> "$1"
  # Datagrams the namespace's sockets dropped for a full receive buffer: loss that happened at a
  # reader too slow, not on the way; the load generator's sockets (bound to its address,
  # 10.77.0.2, "02004D0A" in /proc/net/udp) apart from the server's.
  in_ns awk 'NR > 1 { if (substr($2, 1, 8) == "02004D0A") c += $NF; else s += $NF }
    END { print "udp_drops_server", s + 0; print "udp_drops_loadgen", c + 0 }' /proc/net/udp >> "$1"
}
# The server's forward-latency histogram and its threads as the measured window starts (after
# ramp and warm-up) and as it ends, so that its latency is taken over the same window as the
# load generator's figures — not over the load generator's leaving after it, when every
# participant's departure is handled at once (and, PUBLISHERS_APART=1, media still flows).
( sleep $((RAMP + WARMUP))
  in_ns curl -fsS "http://$SRV:6789/metrics" > "$OUT/relais-metrics-start.txt" 2>/dev/null || true
  threads_snapshot "$OUT/relais-threads-start.txt"
  sleep "$DUR"
  in_ns curl -fsS "http://$SRV:6789/metrics" > "$OUT/relais-metrics-window-end.txt" 2>/dev/null || true
  threads_snapshot "$OUT/relais-threads-end.txt" ) &
WINDOW_SNAPSHOTS=$!
# PERF=1: a CPU profile of the server over the measured window ($OUT/perf.data).
if [ "${PERF:-0}" = 1 ]; then
  ( sleep $((RAMP + WARMUP)); perf record -F ${PERF_HZ:-1999} ${PERF_CALLGRAPH:--g} -p "$RPID" -o "$OUT/perf.data" -- sleep "$DUR" >/dev/null 2>&1 ) &
fi
in_ns "${CLIENT_CPU[@]}" "$BIN/relais-loadtest" --url "ws://$SRV:7880" --server-pid "$RPID" --label relais "${LOAD_RELAIS[@]}" \
  > "$OUT/relais.json"
if [ -n "${PUBLISHERS_PID:-}" ]; then wait "$PUBLISHERS_PID" || true; fi
wait "$WINDOW_SNAPSHOTS" || true
# The server's own counters (drops by reason, NACKs, keyframe requests) for the record.
in_ns curl -fsS "http://$SRV:6789/metrics" > "$OUT/relais-metrics.txt" 2>/dev/null || true
kill "$RPID" 2>/dev/null || true
wait "$RPID" 2>/dev/null || true
echo "== floor again" >&2
strict_floor "$OUT/floor-after.json"

if [ -z "${SKIP_JANUS:-}" ]; then
  echo "== janus" >&2
  JCFG="$OUT/janus-cfg"
  mkdir -p "$JCFG"
  cp "$HERE/../janus/"*.jcfg "$JCFG/"
  sed -i "s|configs_folder = \".\"|configs_folder = \"$JCFG\"|" "$JCFG/janus.jcfg"
  nsenter -t "$NS" -n "${SERVER_CPU[@]}" janus -C "$JCFG/janus.jcfg" -F "$JCFG" > "$OUT/janus.log" 2>&1 &
  JPID=$!
  PIDS+=("$JPID")
  wait_http "http://$SRV:8088/janus/info"
  in_ns "${CLIENT_CPU[@]}" "$BIN/relais-loadtest" --mode janus --url "http://$SRV:8088/janus" --server-pid "$JPID" \
    --label janus "${LOAD[@]}" > "$OUT/janus.json"
  kill "$JPID" 2>/dev/null || true
fi

python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def load(n):
    p = os.path.join(out, n + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
floor, relais, janus = load("floor"), load("relais"), load("janus")
# PUBLISHERS_APART=1: the publishers' generator (they receive nothing: the load generator's
# publishers do not subscribe) counts in the joins.
publishers = load("relais-publishers")
if relais and publishers:
    relais["joins_ok"] += publishers["joins_ok"]
    relais["participants"] += publishers["participants"]
split = load("floor-split")
# The strict floor before and after the servers: its cost per packet is the two runs' mean.
floors = [f["forwarded_packets_per_cpu_second"] for f in (floor, load("floor-after")) if f]
fl = len(floors) / sum(1 / r for r in floors) if floors else None

def buckets(name, metric="relais_forward_latency_ms"):
    # relais_forward_latency_ms_bucket{...,le="2"} 123  ->  {2.0: 123}, summed over series
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return {}
    got = {}
    for line in open(p):
        if line.startswith(metric + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            le = float("inf") if le == "+Inf" else float(le)
            got[le] = got.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return got

def quantile(q, cumulative):
    # Linear within a bucket, as Prometheus's histogram_quantile.
    les = sorted(cumulative)
    if not les or cumulative[les[-1]] <= 0:
        return None
    rank, lower, below = q * cumulative[les[-1]], 0.0, 0.0
    for le in les:
        if cumulative[le] >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(cumulative[le] - below, 1e-9)
        lower, below = le, cumulative[le]
    return None

# The server's own view of forwarding latency over the measured window.
end, start = buckets("relais-metrics-window-end.txt"), buckets("relais-metrics-start.txt")
window = {le: n - start.get(le, 0.0) for le, n in end.items()}
if relais is not None:
    relais["server_latency_ms_p50"] = quantile(0.5, window)
    relais["server_latency_ms_p99"] = quantile(0.99, window)
print(f"results in {out}")
print(f"{'':<10} {'fwd pkt/s':>10} {'CPU %':>7} {'pkt/CPU-s':>10} {'× floor':>8} {'loss %':>7} {'lat p50':>8} {'lat p99':>8} {'join p99':>8} {'joins':>9} {'KiB/part':>9} {'srv p50':>8} {'srv p99':>8} {'frm p50':>8} {'frm p99':>8} {'aud p99':>8}")
if floor:
    print(f"{'floor':<10} {'':>10} {floor['forwarder_cpu_percent']:>7.1f} {fl:>10.0f} {1.0:>8.2f}")
if floor and split:
    sp = split["forwarded_packets_per_cpu_second"]
    print(f"{'floor ⇄':<10} {'':>10} {split['forwarder_cpu_percent']:>7.1f} {sp:>10.0f} {fl / sp:>8.2f} "
          f"{'':>7} {'':>8} {'':>8} {'':>8} {'':>9} {'':>9} {split['latency_ms_p50']:>8.2f} {split['latency_ms_p99']:>8.2f}")
for name, r in (("relais", relais), ("janus", janus)):
    if not r:
        continue
    f = lambda k, p=1: "-" if r.get(k) is None else f"{r[k]:.{p}f}"
    ppc = r.get("forwarded_packets_per_cpu_second")
    ratio = f"{fl / ppc:.2f}" if (fl and ppc) else "-"
    print(f"{name:<10} {r['forwarded_pps']:>10.0f} {f('server_cpu_percent'):>7} {f('forwarded_packets_per_cpu_second',0):>10} {ratio:>8} "
          f"{f('loss_percent',3):>7} {f('latency_ms_p50',2):>8} {f('latency_ms_p99',2):>8} {f('join_ms_p99',1):>8} "
          f"{r['joins_ok']:>4}/{r['participants']:<4} {f('server_rss_per_participant_kib',1):>9} "
          f"{f('server_latency_ms_p50',2):>8} {f('server_latency_ms_p99',2):>8} "
          f"{f('frame_latency_ms_p50',2):>8} {f('frame_latency_ms_p99',2):>8} {f('audio_latency_ms_p99',2):>8}")

COUNTERS = ("steal", "udp_drops_server", "udp_drops_loadgen")
def threads(name):
    # "tid comm cpu_ns run_delay_ns timeslices involuntary" per thread, "steal ticks" last
    p = os.path.join(out, name)
    got = {}
    for line in open(p) if os.path.exists(p) else ():
        f = line.split()
        if f[0] in COUNTERS:
            got[f[0]] = int(f[1])
        elif len(f) == 6:
            got[f[0]] = (f[1], int(f[2]), int(f[3]), int(f[5]), int(f[4]))
    return got
t0, t1 = threads("relais-threads-start.txt"), threads("relais-threads-end.txt")
if t0 and t1:
    print("server threads over the window (CPU s, run delay s, involuntary switches, times on a CPU); busiest first:")
    rows = [(v[0], (v[1] - t0[k][1]) / 1e9, (v[2] - t0[k][2]) / 1e9, v[3] - t0[k][3], v[4] - t0[k][4])
            for k, v in t1.items() if k not in COUNTERS and k in t0]
    for comm, cpu, delay, inv, slices in sorted(rows, key=lambda r: -r[1])[:8]:
        print(f"  {comm:<16} {cpu:8.2f} {delay:8.3f} {inv:8} {slices:9}")
    if "steal" in t0 and "steal" in t1:
        print(f"  machine steal over the window: {(t1['steal'] - t0['steal']) / 100:.2f} s")
    if all(k in t0 and k in t1 for k in ("udp_drops_server", "udp_drops_loadgen")):
        drops = lambda k: t1[k] - t0[k]
        print(f"  datagrams dropped by full receive buffers: server's sockets {drops('udp_drops_server')}, "
              f"load generator's {drops('udp_drops_loadgen')}")
# How long the shards worked at a time over the window: a datagram that arrives during a
# long round waits for the rest of it.
r_end = buckets("relais-metrics-window-end.txt", "relais_shard_round_ms")
r_start = buckets("relais-metrics-start.txt", "relais_shard_round_ms")
rounds = {le: n - r_start.get(le, 0.0) for le, n in r_end.items()}
if rounds.get(float("inf")):
    total = rounds[float("inf")]
    over = lambda ms: total - rounds.get(ms, total)
    print(f"shard rounds in the window: {total:.0f}, over 1 / 2 / 5 ms: "
          f"{over(1.0):.0f} / {over(2.0):.0f} / {over(5.0):.0f}")
# Loss in the table is the window's; while hundreds join, the server may lose what it does not
# in the steady state.
if relais and None not in (relais.get("loss_percent"), relais.get("loss_percent_run")):
    print(f"relais loss over the window / the whole run (joins included): "
          f"{relais['loss_percent']:.3f} / {relais['loss_percent_run']:.3f} %")
# Whether the load generator kept time: a publisher's frame made late goes out with the next.
sender = publishers or relais
if sender and sender.get("publisher_frame_late_ms_p99") is not None:
    print(f"publishers' frames late p50 / p99 (load generator): {sender['publisher_frame_late_ms_p50']:.2f} / "
          f"{sender['publisher_frame_late_ms_p99']:.2f} ms")
# And how busy it was over its window: near a full core it runs its timers late and then
# sends several frames at once, and the server's queue and latency show the generator's.
busy = [f"{name} {100 * g['loadgen_cpu_seconds'] / g['window_s']:.1f} %"
        for name, g in (("subscribers'" if publishers else "", relais), ("publishers'", publishers))
        if g and g.get("window_s")]
if busy:
    print(f"load generator's CPU over its window (100 % = a core): {', '.join(b.strip() for b in busy)}")
if split and relais and relais.get("forwarded_packets_per_cpu_second"):
    print(f"relais × floor ⇄ (placed as the server): {split['forwarded_packets_per_cpu_second'] / relais['forwarded_packets_per_cpu_second']:.2f}")
if len(floors) == 2:
    print(f"strict floor before / after the servers: {floors[0]:.0f} / {floors[1]:.0f} pkt/CPU-s "
          f"(drift {100 * (floors[1] / floors[0] - 1):+.1f} %)")
# What a run comes to, for scripts that compare runs (ab.sh).
relais_rate = (relais or {}).get("forwarded_packets_per_cpu_second")
json.dump({"floor_packets_per_cpu_second": fl, "floor_runs": floors,
           "relais_packets_per_cpu_second": relais_rate,
           "relais_times_floor": fl / relais_rate if (fl and relais_rate) else None},
          open(os.path.join(out, "summary.json"), "w"), indent=1)
EOF
