#!/usr/bin/env bash
# Prints the path of the forward bench's binary, built first if need be
# (`cargo bench --no-run`): what benches/instructions.sh and
# benches/cold-lines.sh run under valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p relais-bench --bench forward --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "forward" and m.get("executable"):
        print(m["executable"])'
