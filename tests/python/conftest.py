"""Shared harness for the end-to-end tests: a real `relais` process, real LiveKit SDKs.

Fixtures
- `relais`: one server per test module, default config.
- `relais_factory`: `start(extra_config=None)` starts a server with the default config
  deep-merged with `extra_config`; all are stopped when the test ends.
- `rooms`: `await rooms.join(server, identity, room, **grants)` connects an `rtc.Room`
  and disconnects it when the test ends.

Helpers: `make_token`, `make_raw_token`, `connect`, `wait_for`, `bounded`, `EventLog`.

Every server is checked at teardown: it must still be running (it did not crash on its
own) and its log must not contain "panicked". When a test fails, the last 200 lines of
the log of each server that was running are attached to the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable

import jwt
import pytest
from livekit import api, rtc

API_KEY = "devkey"
API_SECRET = "secret"

REPO_ROOT = Path(__file__).resolve().parents[2]
# RELAIS_TCP_ONLY=1: every server advertises only its ICE-TCP candidate, so any test
# runs its media over TCP.
TCP_ONLY = {"rtc": {"tcp_only": True}}
STARTUP_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0
CONNECT_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 200


# --------------------------------------------------------------------------- ports


# Ports for servers to listen on come from below the kernel's ephemeral range
# (32768-60999 by default): a port the kernel hands out for binding to 0 is
# also what it gives the next outgoing connection, so between the pick and the
# server's own bind a client socket could take it ("Address already in use",
# seen once in CI). Below that range only explicit binds compete; this walk
# never offers a port twice in a run.
_LISTEN_PORTS = range(20000, 32768)
_next_listen_port = _LISTEN_PORTS.start + os.getpid() % len(_LISTEN_PORTS)


def _free_port(kind: int) -> int:
    global _next_listen_port
    for _ in range(len(_LISTEN_PORTS)):
        port = _next_listen_port
        _next_listen_port += 1
        if _next_listen_port >= _LISTEN_PORTS.stop:
            _next_listen_port = _LISTEN_PORTS.start
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def free_tcp_port() -> int:
    return _free_port(socket.SOCK_STREAM)


def free_udp_port() -> int:
    return _free_port(socket.SOCK_DGRAM)


# --------------------------------------------------------------------------- config


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(str(value))


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for nested dicts/lists of scalars (enough for our configs)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(item, indent + 2))
            elif isinstance(item, dict):
                lines.append(f"{pad}{key}: {{}}")
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: []")
            else:
                lines.append(f"{pad}{key}: {_yaml_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                nested = to_yaml(item, indent + 2).lstrip()
                lines.append(f"{pad}- {nested}")
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}")
    else:
        lines.append(f"{pad}{_yaml_scalar(value)}")
    return "\n".join(lines)


def relais_bin() -> Path:
    return Path(os.environ.get("RELAIS_BIN", REPO_ROOT / "target" / "debug" / "relais"))


# --------------------------------------------------------------------------- server


class RelaisServer:
    """One `relais --config <file>` process on free loopback ports."""

    def __init__(
        self, workdir: Path, extra_config: dict | None = None, name: str = "relais"
    ):
        self.name = name
        self.workdir = workdir
        self.port = free_tcp_port()
        self.udp_port = free_udp_port()
        self.tcp_port = free_tcp_port()
        forced = TCP_ONLY if os.environ.get("RELAIS_TCP_ONLY") == "1" else {}
        self.config = deep_merge(
            {
                "port": self.port,
                "bind_addresses": ["127.0.0.1"],
                "rtc": {
                    "udp_port": self.udp_port,
                    "tcp_port": self.tcp_port,
                    "node_ip": "127.0.0.1",
                },
                "keys": {API_KEY: API_SECRET},
                "logging": {"level": "debug"},
                "room": {"empty_timeout": 5, "departure_timeout": 5},
            },
            deep_merge(forced, extra_config or {}),
        )
        # The config may override the port; follow it.
        self.port = int(self.config["port"])
        self.config_path = workdir / f"{name}.yaml"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.killed = False

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> "RelaisServer":
        binary = relais_bin()
        if not binary.is_file():
            pytest.fail(
                f"relais binary not found at {binary} (set RELAIS_BIN, or run "
                "`cargo build --workspace --bins` first)",
                pytrace=False,
            )
        self.config_path.write_text(to_yaml(self.config) + "\n")
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")  # plain log lines in reports
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(binary), "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                # Same process group as pytest: when scripts/test.sh stops a stage, the
                # servers it started go with it.
            )
        _LIVE_SERVERS.append(self)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.exit_code = code
                _LIVE_SERVERS.remove(self)
                pytest.fail(
                    f"{self.name} exited with code {code} during start-up "
                    f"(config {self.config_path})\n--- log tail ---\n{self.tail()}",
                    pytrace=False,
                )
            try:
                with urllib.request.urlopen(self.http_url + "/", timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last_error = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last_error = f"HTTP {e.code}"
            except (urllib.error.URLError, OSError) as e:
                last_error = str(e)
            time.sleep(0.1)
        self.stop()
        pytest.fail(
            f"{self.name} did not answer 200 on GET / within {STARTUP_TIMEOUT_S:.0f} s "
            f"(last: {last_error})\n--- log tail ---\n{self.tail()}",
            pytrace=False,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_GRACE_S. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(timeout=STOP_GRACE_S)
        if self in _LIVE_SERVERS:
            _LIVE_SERVERS.remove(self)
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def tail(self, lines: int = LOG_TAIL_LINES, since: int = 0, own: bool = False) -> str:
        """The log's last `lines` lines from byte `since`; with `own`, only Relais's
        own lines (its crates' targets), which str0m's per-packet debug lines would
        otherwise push out of a tail."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        kept = [l for l in text.splitlines() if not own or " relais_" in l]
        return "\n".join(kept[-lines:])

    def stop_and_check(self) -> None:
        """Teardown: the server must still be up, stop cleanly, and never have panicked."""
        crashed_code = self.proc.poll() if self.proc else None
        self.stop()
        problems = []
        if crashed_code is not None:
            problems.append(
                f"{self.name} had exited on its own (code {crashed_code}) before teardown"
            )
        if "panicked" in self.log_text():
            problems.append(f"{self.name} log contains 'panicked'")
        if problems:
            pytest.fail(
                "; ".join(problems)
                + f"\n--- log tail ({self.log_path}) ---\n{self.tail()}",
                pytrace=False,
            )
        if self.killed:
            print(
                f"warning: {self.name} ignored SIGTERM for {STOP_GRACE_S:.0f} s and was killed"
            )


_LIVE_SERVERS: list[RelaisServer] = []


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def relais(tmp_path_factory: pytest.TempPathFactory) -> RelaisServer:
    """A server with the default test config, shared by the tests of one module."""
    server = RelaisServer(tmp_path_factory.mktemp("relais")).start()
    yield server
    server.stop_and_check()


@pytest.fixture
def relais_factory(tmp_path: Path) -> Callable[..., RelaisServer]:
    """`start(extra_config=None)`: a fresh server with extra config, stopped at test end."""
    started: list[RelaisServer] = []

    def start(extra_config: dict | None = None) -> RelaisServer:
        server = RelaisServer(tmp_path, extra_config, name=f"relais-{len(started)}")
        started.append(server)
        return server.start()

    yield start
    errors = []
    for server in started:
        try:
            server.stop_and_check()
        except BaseException as e:  # noqa: BLE001 - report every server, then fail once
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


# Attach the server log to the report of a failing test.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    item._relais_log_offsets = {id(s): s.log_size() for s in _LIVE_SERVERS}
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    offsets = getattr(item, "_relais_log_offsets", {})
    for server in list(_LIVE_SERVERS):
        since = offsets.get(id(server), 0)
        for own, what in ((True, "its own lines"), (False, "lines")):
            report.sections.append(
                (
                    f"{server.name} log, last {LOG_TAIL_LINES} {what} since this test "
                    f"began ({server.log_path})",
                    server.tail(since=since, own=own),
                )
            )


# --------------------------------------------------------------------------- tokens


def make_token(
    identity: str,
    room: str,
    *,
    name: str | None = None,
    metadata: str | None = None,
    attributes: dict[str, str] | None = None,
    ttl: datetime.timedelta | None = None,
    api_key: str = API_KEY,
    api_secret: str = API_SECRET,
    **grants: Any,
) -> str:
    """A join token for `identity` in `room`; `grants` are `api.VideoGrants` fields
    (room_join defaults to True)."""
    grants.setdefault("room_join", True)
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_grants(api.VideoGrants(room=room, **grants))
    )
    if name is not None:
        token = token.with_name(name)
    if metadata is not None:
        token = token.with_metadata(metadata)
    if attributes is not None:
        token = token.with_attributes(attributes)
    if ttl is not None:
        token = token.with_ttl(ttl)
    return token.to_jwt()


def make_raw_token(
    claims: dict, secret: str = API_SECRET, *, iss: str = API_KEY
) -> str:
    """A hand-made HS256 JWT, for the malformed tokens the SDK refuses to mint.
    `iss`, `nbf` and a one-hour `exp` are added unless `claims` sets them."""
    now = int(time.time())
    body = {"iss": iss, "nbf": now, "exp": now + 3600}
    body.update(claims)
    return jwt.encode(body, secret, algorithm="HS256")


# --------------------------------------------------------------------------- clients


async def connect(
    url: str,
    token: str,
    *,
    timeout: float = CONNECT_TIMEOUT_S,
    options: rtc.RoomOptions | None = None,
) -> rtc.Room:
    """Connect a new `rtc.Room`, bounded by `timeout` seconds."""
    room = rtc.Room()
    try:
        await asyncio.wait_for(
            room.connect(url, token, options or rtc.RoomOptions()), timeout
        )
    except BaseException:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(room.disconnect(), 5)
        raise
    return room


class Rooms:
    def __init__(self) -> None:
        self.rooms: list[rtc.Room] = []

    async def join(
        self,
        server: RelaisServer,
        identity: str,
        room: str,
        *,
        options: rtc.RoomOptions | None = None,
        **token_args: Any,
    ) -> rtc.Room:
        token = make_token(identity, room, **token_args)
        r = await connect(server.url, token, options=options)
        self.rooms.append(r)
        return r

    async def close(self) -> None:
        for r in self.rooms:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(r.disconnect(), 5)


@pytest.fixture
async def rooms():
    """Connects SDK rooms and disconnects them all when the test ends."""
    holder = Rooms()
    yield holder
    await holder.close()


# --------------------------------------------------------------------------- waiting


async def wait_for(
    condition: Callable[[], Any],
    what: str,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(
                f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False
            )
        await asyncio.sleep(interval)


class EventLog:
    """Records every emission of one `rtc.Room` event. Create it before the action that
    should cause the event; `wait` then finds a match whether it came before or after."""

    def __init__(self, room: rtc.Room, event: str) -> None:
        self.event = event
        self.events: list[tuple] = []
        room.on(event, lambda *args: self.events.append(args))

    def first(self, predicate: Callable[..., bool] | None = None) -> tuple | None:
        for args in self.events:
            if predicate is None or predicate(*args):
                return args
        return None

    def all(self, predicate: Callable[..., bool] | None = None) -> list[tuple]:
        return [args for args in self.events if predicate is None or predicate(*args)]

    async def wait(
        self,
        predicate: Callable[..., bool] | None = None,
        timeout: float = 10.0,
        what: str = "",
    ) -> tuple:
        """The arguments of the first emission that satisfies `predicate`."""
        return await wait_for(
            lambda: self.first(predicate), what or f"event '{self.event}'", timeout
        )


async def bounded(awaitable: Awaitable, what: str, timeout: float = 10.0) -> Any:
    """Await with a timeout that fails the test with a readable message."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"timed out after {timeout:.0f} s: {what}", pytrace=False)


# --------------------------------------------------------------------------- process exit


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


_EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without running native finalizers. The SDK's bundled native library can
    abort ("panic in a function that cannot unwind") while the interpreter tears down,
    after every test has finished and been reported; that must not turn a green run red.
    The exit status is pytest's own."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None:
        return
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
