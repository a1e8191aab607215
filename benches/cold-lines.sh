#!/usr/bin/env bash
# Cache lines a forwarded packet touches from a cold start, counted by
# callgrind's cache simulation: what a packet costs when its shard wakes on a
# core that ran something else meanwhile (small rooms at light load, where
# the shard sleeps between packets). The forward bench overwrites 16 MiB
# between packets (RELAIS_BENCH_COLD=1, outside the counted function), so the
# last-level misses inside `forward_packets` are the packet's own lines: code
# (instruction fetches) and data. Split by who touches them: str0m (with its
# ICE and DTLS crates), Relais's media core, aws-lc, libc's mem* and malloc.
# Caches simulated as one Zen 4 / recent Intel core's: 32 KiB L1s, 1 MiB L2
# as the last level.
#
#   benches/cold-lines.sh                   # 300 packets to 5 subscribers
#   PACKETS=300 SUBS="5 50" BIN=/tmp/forward-old benches/cold-lines.sh
#
# Needs valgrind (apt-get install valgrind) and python3. BIN: a forward bench
# binary (default: the one benches/forward-bin.sh builds).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PACKETS=${PACKETS:-300}
SUBS=${SUBS:-5}
BIN=${BIN:-$("$ROOT/benches/forward-bin.sh")}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for subs in $SUBS; do
  RELAIS_BENCH_COLD=1 RELAIS_BENCH_PACKETS=$PACKETS RELAIS_BENCH_SUBS=$subs valgrind --tool=callgrind \
    --cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,8,64 \
    --callgrind-out-file="$OUT/cg.$subs" --toggle-collect='*forward_packets*' "$BIN" >"$OUT/said.$subs" 2>"$OUT/log.$subs"
  echo "$(cat "$OUT/said.$subs"), cold:"
  callgrind_annotate --auto=no --show=Ir,ILmr,DLmr,DLmw --threshold=100 "$OUT/cg.$subs" 2>/dev/null |
    python3 -c '
import collections, re, sys
packets = int(sys.argv[1])
rows = collections.defaultdict(lambda: [0, 0, 0])
number = r"([\d,]+|\.)\s*(?:\([^)]*\))?\s+"
for line in sys.stdin:
    m = re.match(r"\s*" + number * 4 + r"(\S.*)$", line)
    if not m or "PROGRAM TOTALS" in line:
        continue
    ir, code, rd, wr = (int(g.replace(",", "").replace(".", "0")) for g in m.groups()[:4])
    path, _, function = m.group(5).partition(":")
    def owner():
        if "aws-lc" in path or function.startswith("aws_lc"):
            return "aws-lc (SRTP cipher)"
        for crate in ("str0m", "is", "dimpl"):
            if function.startswith(crate + "::") or f"/{crate}-0." in path:
                return "str0m (with its ICE and DTLS crates)"
        if "relais_media" in function or "relais-media" in path:
            return "relais-media"
        if "malloc" in path:
            return "malloc"
        if re.search(r"mem(move|cpy|set|cmp)", path):
            return "libc mem*"
        return "other (std containers, hashing, the bench)"
    row = rows[owner()]
    row[0] += ir; row[1] += code; row[2] += rd + wr
print("  %-42s %12s %10s %10s" % ("per packet", "instructions", "code lines", "data lines"))
for name, (ir, code, data) in sorted(rows.items(), key=lambda r: -(r[1][1] + r[1][2])):
    print(f"  {name:<42} {ir / packets:12.0f} {code / packets:10.0f} {data / packets:10.0f}")
total = [sum(r[i] for r in rows.values()) / packets for i in range(3)]
print("  %-42s %12.0f %10.0f %10.0f  (%.0f KiB)" % ("all", *total, (total[1] + total[2]) * 64 / 1024))
' "$PACKETS"
done
