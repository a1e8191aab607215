#!/usr/bin/env bash
# A profile-guided build of the server (rustc's PGO): built once instrumented,
# run under the load generator's benchmark shapes on loopback, then built again
# with the counts that run left (-Cprofile-use). The compiler then lays the
# forwarding's code out together and orders its branches by what they did under
# load: a packet that wakes a shard on a cold core touches fewer lines of code.
#
#   crates/relais-loadtest/scripts/build-pgo.sh          # -> target/pgo/relais
#   OUT=/tmp/pgo PORT=17880 UDP_PORTS=17882-17883 ...    # elsewhere, other ports
#
# Needs llvm-profdata of the LLVM major version rustc is built with
# (`rustc -vV`): rustup's `llvm-tools` component, Debian's llvm-<major>, or
# LLVM_PROFDATA=/path. Two release builds (the instrumented one and the final
# one, each in a target directory of its own) and about two minutes of load,
# each shape bounded. No root needed: everything runs on 127.0.0.1.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
OUT=${OUT:-$ROOT/target/pgo}
PORT=${PORT:-7880}
UDP_PORTS=${UDP_PORTS:-7882-7883}
cd "$ROOT"

profdata() {
  if [ -n "${LLVM_PROFDATA:-}" ]; then echo "$LLVM_PROFDATA"; return; fi
  local sysroot host major
  sysroot=$(rustc --print sysroot)
  host=$(rustc -vV | sed -n 's/^host: //p')
  if [ -x "$sysroot/lib/rustlib/$host/bin/llvm-profdata" ]; then
    echo "$sysroot/lib/rustlib/$host/bin/llvm-profdata"; return
  fi
  major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  for candidate in "llvm-profdata-$major" "/usr/lib/llvm-$major/bin/llvm-profdata"; do
    if command -v "$candidate" >/dev/null; then command -v "$candidate"; return; fi
  done
  echo "no llvm-profdata for LLVM $major: rustup component add llvm-tools," \
       "or apt-get install llvm-$major, or set LLVM_PROFDATA" >&2
  exit 2
}
PROFDATA=$(profdata)

mkdir -p "$OUT"
echo "== instrumented build ($OUT/gen) and the load generator" >&2
RUSTFLAGS="-Cprofile-generate=$OUT/raw" CARGO_TARGET_DIR="$OUT/gen" \
  cargo build --release --locked -p relais-server
cargo build --release --locked -p relais-loadtest
# Only the server's run counts: build scripts and proc macros built with the
# same flags left counts of their own.
rm -rf "$OUT/raw"

cat > "$OUT/train.yaml" <<EOF
port: $PORT
bind_addresses: ["127.0.0.1"]
rtc:
  udp_port: "$UDP_PORTS"
  tcp_port: $((PORT + 1))
  node_ip: "127.0.0.1"
keys:
  devkey: secret
logging:
  level: warn
EOF
ulimit -n 65536 2>/dev/null || true
"$OUT/gen/release/relais" --config "$OUT/train.yaml" > "$OUT/train-server.log" 2>&1 &
SERVER=$!
trap 'kill -9 $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break
  sleep 0.1
done

# The shapes docs/benchmarks.md measures: small rooms at light load, meetings,
# one large room (its fan-out on the helper threads too).
shape() { # label, load generator options...
  local label=$1; shift
  echo "== training: $label" >&2
  timeout 180 target/release/relais-loadtest --url "ws://127.0.0.1:$PORT" \
    --server-pid "$SERVER" "$@" > "$OUT/train-$label.txt"
}
shape room-of-7 --rooms 1 --video-publishers 1 --audio-publishers 1 --subscribers 5 \
  --duration 20 --ramp 4 --pacing-factor 2.5
shape rooms-of-7 --rooms 10 --video-publishers 1 --audio-publishers 1 --subscribers 5 \
  --duration 15 --ramp 4 --pacing-factor 2.5
shape meetings --rooms 30 --video-publishers 1 --audio-publishers 1 --subscribers 10 \
  --duration 10 --ramp 6
shape room-of-1000 --rooms 1 --video-publishers 1 --audio-publishers 1 --subscribers 1000 \
  --duration 10 --ramp 22 --threads 2 --decoding-subscribers 5

# The counts are written when the server exits: a graceful stop, not a kill.
kill -TERM "$SERVER"
for _ in $(seq 300); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$SERVER" 2>/dev/null; then
  echo "the instrumented server did not stop within 30 s: no profile" >&2
  exit 1
fi
trap - EXIT
"$PROFDATA" merge -o "$OUT/relais.profdata" "$OUT/raw"
# Named by its content: cargo sees the flags change (and rebuilds) exactly
# when the counts do, as it does not watch the file itself.
PROFILE="$OUT/relais-$(sha256sum "$OUT/relais.profdata" | cut -c1-12).profdata"
mv "$OUT/relais.profdata" "$PROFILE"

echo "== optimized build ($OUT/use)" >&2
RUSTFLAGS="-Cprofile-use=$PROFILE" CARGO_TARGET_DIR="$OUT/use" \
  cargo build --release --locked -p relais-server
cp "$OUT/use/release/relais" "$OUT/relais"
echo "$OUT/relais" >&2
