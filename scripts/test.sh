#!/usr/bin/env bash
# Runs every test of Relais: the README's test command, and all that CI runs.
#
# Stages: setup (system packages, Python venv, npm packages: each only when missing),
# cargo build, cargo test, cargo fmt --check, cargo clippy, pytest, node --test.
# Every test stage runs even when an earlier one failed; the script exits non-zero at
# the end if any stage failed, after a summary. Details: docs/testing.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# Upper bounds (seconds) so a hang fails the run instead of eating CI's time.
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1500}
CARGO_TEST_TIMEOUT=${CARGO_TEST_TIMEOUT:-900}
CLIPPY_TIMEOUT=${CLIPPY_TIMEOUT:-900}
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-900}
NODE_TIMEOUT=${NODE_TIMEOUT:-600}

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

VENV=$ROOT/.venv
PY_REQS=tests/python/requirements.txt
NODE_DIR=tests/node

RESULTS=()  # one "ok|FAILED  stage ..." line per stage, in order
FAILED=()
STAGE_PID=
RUN_START=$SECONDS

banner() {
  printf '\n======== %s ========\n' "$*"
}

cleanup() {
  # A stage still running here means the script was interrupted: stop its whole
  # process group (timeout(1) leads one), which holds any server a test started.
  if [[ -n $STAGE_PID ]] && kill -0 "$STAGE_PID" 2>/dev/null; then
    echo "test.sh: stopping the running stage (process group $STAGE_PID)" >&2
    kill -TERM -- "-$STAGE_PID" 2>/dev/null || true
    sleep 2
    kill -KILL -- "-$STAGE_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "test.sh: need root (or sudo) to run: $*" >&2
    return 1
  fi
}

APT_UPDATED=
apt_install() {
  if [[ -z $APT_UPDATED ]]; then
    as_root apt-get update -q
    APT_UPDATED=1
  fi
  as_root apt-get install -y -q "$@"
}

# file_hash FILE...: one hash of the files that exist (a missing file hashes as absent).
file_hash() {
  local f
  for f in "$@"; do
    if [[ -f $f ]]; then
      printf '%s\n' "$f"
      cat "$f"
    fi
  done | sha256sum | cut -d' ' -f1
}

# ---------------------------------------------------------------------------- setup

setup_system_packages() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [[ -x /usr/bin/chromium ]] || command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  # The benchmark script's test (tests/python/test_loadtest.py) builds a veth pair and polls
  # the server over HTTP.
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if [[ -f $NODE_DIR/package.json ]]; then
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
  fi
  if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt_install "${missing[@]}"
  else
    echo "system packages present: redis-server, chromium, python3, iproute2, curl"
  fi
}

setup_python() {
  local want have=""
  want=$(file_hash "$PY_REQS")
  [[ -f $VENV/.requirements.sha256 ]] && have=$(<"$VENV/.requirements.sha256")
  if [[ -x $VENV/bin/python && $want == "$have" ]]; then
    echo "Python venv up to date ($VENV)"
    return 0
  fi
  if [[ ! -x $VENV/bin/python ]]; then
    if ! python3 -m venv "$VENV"; then
      rm -rf "$VENV"
      apt_install python3-venv
      python3 -m venv "$VENV"
    fi
  fi
  "$VENV/bin/python" -m pip install -q -r "$PY_REQS"
  echo "$want" >"$VENV/.requirements.sha256"
  echo "Python venv ready ($VENV)"
}

setup_node() {
  if [[ ! -f $NODE_DIR/package.json ]]; then
    echo "no $NODE_DIR/package.json: skipping npm install"
    return 0
  fi
  local want have="" stamp=$NODE_DIR/node_modules/.relais-install.sha256
  want=$(file_hash "$NODE_DIR/package.json" "$NODE_DIR/package-lock.json")
  [[ -f $stamp ]] && have=$(<"$stamp")
  if [[ $want == "$have" ]]; then
    echo "node_modules up to date ($NODE_DIR)"
    return 0
  fi
  if [[ -f $NODE_DIR/package-lock.json ]]; then
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund)
  else
    (cd "$NODE_DIR" && npm install --no-audit --no-fund)
  fi
  echo "$want" >"$stamp"
}

banner "setup"
setup_system_packages
setup_python
setup_node

# ---------------------------------------------------------------------------- stages

# run_stage NAME LIMIT CMD...: runs CMD under timeout(1) in its own process group and
# records the result; never stops the script.
LAST_RC=0
run_stage() {
  local name=$1 limit=$2
  shift 2
  banner "$name"
  echo "+ $*"
  local start=$SECONDS rc=0
  timeout --kill-after=15 "$limit" "$@" &
  STAGE_PID=$!
  wait "$STAGE_PID" || rc=$?
  STAGE_PID=
  LAST_RC=$rc
  local took=$((SECONDS - start))
  if ((rc == 0)); then
    RESULTS+=("ok      $name (${took}s)")
    echo "---- $name: ok (${took}s)"
  else
    local why="exit $rc"
    ((rc == 124 || rc == 137)) && why="timed out after ${limit}s"
    FAILED+=("$name ($why)")
    RESULTS+=("FAILED  $name ($why, ${took}s)")
    echo "---- $name: FAILED, $why (${took}s)"
  fi
}

# fail_stage NAME REASON: records a stage that could not run.
fail_stage() {
  banner "$1"
  echo "---- $1: FAILED, $2"
  FAILED+=("$1 ($2)")
  RESULTS+=("FAILED  $1 ($2)")
}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
export RELAIS_TARGET_DIR=$TARGET_DIR/debug
export RELAIS_BIN=$RELAIS_TARGET_DIR/relais

# One cargo profile (debug) for the binaries, the examples, the unit tests and the
# end-to-end tests.
run_stage "cargo build" "$BUILD_TIMEOUT" cargo build --workspace --bins --examples
BUILD_OK=$((LAST_RC == 0))
run_stage "cargo test" "$CARGO_TEST_TIMEOUT" cargo test --workspace
run_stage "cargo fmt" 300 cargo fmt --all -- --check
run_stage "cargo clippy" "$CLIPPY_TIMEOUT" cargo clippy --workspace --all-targets -- -D warnings

if ((BUILD_OK)) && [[ -x $RELAIS_BIN ]]; then
  run_stage "pytest" "$PYTEST_TIMEOUT" "$VENV/bin/python" -m pytest tests/python -v -ra --durations=10
  if ((LAST_RC == 5)); then
    echo "pytest collected no tests (exit 5): that counts as a failure"
  fi
else
  fail_stage "pytest" "not run: the build failed or $RELAIS_BIN is missing"
fi

mapfile -t NODE_TESTS < <(
  if [[ -d $NODE_DIR ]]; then
    find "$NODE_DIR" -name node_modules -prune -o -type f \
      \( -name '*.test.js' -o -name '*.test.mjs' -o -name '*.test.cjs' \
      -o -name 'test-*.js' -o -name 'test-*.mjs' -o -name 'test-*.cjs' \
      -o -name '*_test.js' -o -name '*_test.mjs' -o -name '*-test.js' -o -name '*-test.mjs' \) \
      -print | sort
  fi
)
if ((${#NODE_TESTS[@]} == 0)); then
  banner "node --test"
  echo "no test files under $NODE_DIR: skipped"
elif ((BUILD_OK)) && [[ -x $RELAIS_BIN ]]; then
  run_stage "node --test" "$NODE_TIMEOUT" node --test "${NODE_TESTS[@]}"
else
  fail_stage "node --test" "not run: the build failed or $RELAIS_BIN is missing"
fi

# ---------------------------------------------------------------------------- summary

banner "summary"
for line in "${RESULTS[@]}"; do
  echo "  $line"
done
elapsed=$((SECONDS - RUN_START))
if ((${#FAILED[@]})); then
  echo "test.sh: ${#FAILED[@]} stage(s) failed in ${elapsed}s: ${FAILED[*]}"
  exit 1
fi
echo "test.sh: all stages ok in ${elapsed}s"
