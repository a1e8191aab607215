#!/usr/bin/env bash
# Two or more builds of Relais compared the way docs/benchmarks.md does it:
# run by run, alternated (A B A B ...), each run with its own floor, so that a
# host whose speed drifts within minutes moves every build alike. One line per
# run; a ratio is only worth comparing with others of the same round.
#
#   crates/relais-loadtest/scripts/ab.sh /tmp/bin-new /tmp/bin-old
#   ROUNDS=4 ROOMS=30 crates/relais-loadtest/scripts/ab.sh /tmp/bin-new /tmp/bin-old
#   PERF=1 PERF_CALLGRAPH=" " ROUNDS=1 ... ab.sh ...     # a profile per run ($OUT_DIR/*/perf.data)
#
# Each directory holds a release build's relais, relais-floor and
# relais-loadtest (cp target/release/{relais,relais-floor,relais-loadtest} DIR).
# The shape defaults to the standing set's meetings, pinned; every variable of
# compare.sh (ROOMS, VPUB, APUB, SUBS, DUR, RAMP, EXTRA, PIN, UDP_PORTS, ...)
# passes through ("late p99": whether the load generator made its publishers' frames on
# time). Results stay in OUT_DIR (one compare.sh directory per run).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ]; then
  echo "usage: $0 BIN_DIR [BIN_DIR ...]" >&2
  exit 2
fi
for dir in "$@"; do
  for exe in relais relais-floor relais-loadtest; do
    if [ ! -x "$dir/$exe" ]; then
      echo "$dir/$exe is missing" >&2
      exit 2
    fi
  done
done
ROUNDS=${ROUNDS:-2}
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/relais-ab.XXXXXX)}
mkdir -p "$OUT_DIR"
export PIN=${PIN:-1} UDP_PORTS=${UDP_PORTS:-7882} SKIP_JANUS=${SKIP_JANUS:-1}
export ROOMS=${ROOMS:-30} VPUB=${VPUB:-1} APUB=${APUB:-1} SUBS=${SUBS:-10}
export DUR=${DUR:-15} RAMP=${RAMP:-5}
export EXTRA=${EXTRA:---pacing-factor 2.5 --decoding-subscribers 2}

printf '%-5s %-24s %10s %10s %7s %7s %9s %7s %9s %8s %9s\n' round build "pkt/CPU-s" "floor" "×floor" "CPU %" "srv p99" "loss %" "KiB/part" "×placed" "late p99"
for round in $(seq 1 "$ROUNDS"); do
  for dir in "$@"; do
    name=$(basename "$dir")
    out="$OUT_DIR/$round-$name"
    if ! BIN=$dir OUT=$out "$HERE/compare.sh" >"$out.txt" 2>"$out.err"; then
      echo "round $round, $name: compare.sh failed (see $out.err)" >&2
      continue
    fi
    python3 - "$out" "$round" "$name" <<'PY'
import json, sys
out, round_, name = sys.argv[1:]
relais = json.load(open(f"{out}/relais.json"))
summary = json.load(open(f"{out}/summary.json"))
def get(d, key):
    return d.get(key, d.get("server", {}).get(key))
rate = get(relais, "forwarded_packets_per_cpu_second") or 0
floor_rate = summary["floor_packets_per_cpu_second"] or 0
# compare.sh prints the server's own latency (from its histogram) in its
# table, and the ratio to the floor placed as the server (PIN=1) below it.
# And how late the load generator made its publishers' frames (p99, ms).
p99, placed, late = "?", "-", "-"
for line in open(f"{out}.txt"):
    if line.startswith("relais ") and p99 == "?":
        p99 = line.split()[-4]  # then frm p50, frm p99, aud p99
    elif line.startswith("relais × floor ⇄"):
        placed = line.split()[-1]
    elif line.startswith("publishers' frames late"):
        late = line.split()[-2]
def fmt(v, digits):
    return "?" if v is None else f"{v:.{digits}f}"
print(f"{round_:<5} {name:<24} {rate:>10.0f} {floor_rate:>10.0f} "
      f"{(floor_rate / rate if rate else 0):>7.2f} {fmt(get(relais, 'server_cpu_percent'), 1):>7} "
      f"{p99:>9} {fmt(get(relais, 'loss_percent'), 3):>7} "
      f"{fmt(get(relais, 'server_rss_per_participant_kib'), 1):>9} {placed:>8} {late:>9}")
PY
  done
done
echo "runs in $OUT_DIR"
