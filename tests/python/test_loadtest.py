"""The benchmark tools run against a real server: `relais-loadtest` joins a room
of Relais over the LiveKit protocol and reports what its subscribers got and
what the server spent; `relais-floor` forwards and reports its own cost.

These check that the tools measure (joins, packets, loss, the server's CPU and
memory), not how fast anything is: figures live in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import API_KEY, API_SECRET, RelaisServer, relais_bin

TOOL_TIMEOUT_S = 60

# A room that lives for a few seconds: joins spread over half a second, a
# 3-second measurement window after 1.5 s of warm-up.
SHORT_RUN = ["--ramp", "0.5", "--warmup", "1.5", "--duration", "3"]


def tool(name: str) -> Path:
    """A workspace binary built next to the server's (`cargo build --workspace --bins`)."""
    path = relais_bin().parent / name
    assert path.is_file(), f"{path} missing: build the workspace's binaries"
    return path


def run_ok(args: list[str], env: dict | None = None, timeout: int = TOOL_TIMEOUT_S) -> str:
    """Run `args` to its end; it must succeed. Its stdout."""
    done = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args[:2])} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def run_json(args: list[str]) -> dict:
    return json.loads(run_ok(args))


def load_test(relais: RelaisServer, *args: str, secret: str = API_SECRET) -> dict:
    """`relais-loadtest` against `relais`; its JSON summary."""
    return run_json(
        [
            str(tool("relais-loadtest")),
            "--url", relais.url,
            "--api-key", API_KEY,
            "--api-secret", secret,
            "--json",
            *args,
        ]
    )


def script_env(out: Path, **variables: str) -> dict:
    """The environment of a benchmark script: the binaries next to the server's, its
    results in `out`, and its own `variables`."""
    return dict(os.environ, BIN=str(relais_bin().parent), OUT=str(out), **variables)


def run_script(name: str, env: dict) -> str:
    """Run a benchmark script of `crates/relais-loadtest/scripts` to its end (120 s at
    most); it must succeed. Its stdout."""
    from conftest import REPO_ROOT

    script = REPO_ROOT / "crates/relais-loadtest/scripts" / name
    return run_ok(["bash", str(script)], env=env, timeout=120)


def needs_udp() -> None:
    if os.environ.get("RELAIS_TCP_ONLY") == "1":
        pytest.skip("the load generator's peers speak ICE over UDP only")


def test_load_generator_joins_publishes_and_measures_the_server(relais: RelaisServer):
    needs_udp()
    assert relais.proc is not None
    summary = load_test(
        relais,
        "--room-prefix", "loadtest",
        "--video-publishers", "1",
        "--audio-publishers", "1",
        "--subscribers", "3",
        "--server-pid", str(relais.proc.pid),
        *SHORT_RUN,
    )
    assert summary["joins_ok"] == 5, summary["failure_examples"]
    assert summary["joins_failed"] == 0
    assert summary["connected"] == 5
    assert summary["publishers_live"] == 2
    # Every subscriber gets both tracks: ~30 video frames of a few packets and
    # 50 audio packets a second, over the 3-second window.
    assert summary["subscribers_measured"] == 3
    assert summary["per_subscriber_packets_min"] > 100, summary
    assert summary["loss_percent"] is not None and summary["loss_percent"] < 5
    assert summary["loss_percent_run"] is not None and summary["loss_percent_run"] < 5
    assert summary["latency_ms_p50"] is not None and summary["latency_ms_p50"] > 0
    assert summary["frame_latency_ms_p50"] is not None
    # What the server spent, read from /proc while the run lasted.
    assert summary["server_cpu_seconds"] > 0
    assert summary["forwarded_packets_per_cpu_second"] > 0
    assert summary["server_peak_rss_kib"] > 0
    assert summary["join_ms_p99"] is not None and summary["join_ms_p99"] > 0
    assert relais.alive()


def test_load_generator_publishes_simulcast_and_gets_the_top_layer(relais: RelaisServer):
    """Three layers at 1/16, 1/4 and all of 1 Mbit/s: ~8, ~28 and ~110 packets
    a second. With nothing limiting them, subscribers get the top layer."""
    needs_udp()
    summary = load_test(
        relais,
        "--room-prefix", "simulcast",
        "--simulcast",
        "--video-bitrate", "1000000",
        "--subscribers", "2",
        *SHORT_RUN,
    )
    assert summary["joins_ok"] == 3, summary["failure_examples"]
    assert summary["simulcast"] is True
    assert summary["per_subscriber_pps"] > 80, summary
    assert summary["loss_percent"] is not None and summary["loss_percent"] < 5


def test_paced_video_reaches_the_subscribers_at_its_rate(relais: RelaisServer):
    """With a pacer (`--pacing-factor`, as a WebRTC sender spreads a frame),
    1 Mbit/s of video still arrives at ~110 packets a second: the pacer holds
    no packet back for good and adds none."""
    needs_udp()
    summary = load_test(
        relais,
        "--room-prefix", "paced",
        "--video-publishers", "1",
        "--audio-publishers", "0",
        "--video-bitrate", "1000000",
        "--pacing-factor", "2.5",
        "--subscribers", "2",
        *SHORT_RUN,
    )
    assert summary["joins_ok"] == 3, summary["failure_examples"]
    assert 80 < summary["per_subscriber_pps"] < 160, summary
    assert summary["loss_percent"] is not None and summary["loss_percent"] < 5


def test_subscribers_that_do_not_decrypt_connect_and_count_what_they_receive(
    relais: RelaisServer,
):
    """`--decoding-subscribers 1`: three of the four subscribers leave their sockets
    to the load generator's counting reader, which counts RTP from its clear header
    and passes STUN, DTLS and RTCP on to the peer connection. They connect (their
    handshakes went through it) and get counted as the decrypting one is."""
    needs_udp()
    summary = load_test(
        relais,
        "--room-prefix", "counting",
        "--video-publishers", "1",
        "--audio-publishers", "1",
        "--subscribers", "4",
        "--decoding-subscribers", "1",
        *SHORT_RUN,
    )
    assert summary["joins_ok"] == 6, summary["failure_examples"]
    assert summary["connected"] == 6
    assert summary["decoding_subscribers_per_room"] == 1
    assert summary["subscribers_measured"] == 4
    # Each got both tracks (~30 frames of a few packets and 50 audio packets a
    # second), the counted ones as many as the decrypting one.
    assert summary["per_subscriber_packets_min"] > 100, summary
    assert summary["per_subscriber_packets_min"] > 0.8 * summary["per_subscriber_packets_max"]
    assert summary["loss_percent"] is not None and summary["loss_percent"] < 5
    # The window's count holds all four subscribers' packets.
    assert summary["forwarded_pps"] > 4 * 100, summary
    # Forwarding latency comes from the one that decrypts.
    assert summary["latency_ms_p50"] is not None and summary["latency_ms_p50"] > 0
    assert relais.alive()


def test_load_generator_counts_refused_joins(relais: RelaisServer):
    """A wrong secret: every join is refused and counted, the run still ends."""
    summary = load_test(
        relais,
        "--subscribers", "2",
        "--ramp", "0.2",
        "--warmup", "0.2",
        "--duration", "0.5",
        secret="not-the-secret",
    )
    assert summary["joins_ok"] == 0
    assert summary["joins_failed"] == 3
    assert summary["failures"] == {"refused": 3}
    assert relais.alive()


def test_a_node_its_participants_left_gives_its_free_heap_back(relais: RelaisServer):
    """Two rooms of 6 join and leave; once the node has had no new participant for 10 s it
    returns malloc's free pages to the system (logged at debug, which the tests run at)."""
    needs_udp()
    trimmed = "free heap pages returned to the system"
    before = relais.log_text().count(trimmed)
    summary = load_test(
        relais,
        "--room-prefix", "heap",
        "--rooms", "2",
        "--video-publishers", "1",
        "--audio-publishers", "1",
        "--subscribers", "4",
        "--ramp", "0.5", "--warmup", "0.5", "--duration", "1",
    )
    assert summary["joins_ok"] == 12, summary["failure_examples"]
    deadline = time.monotonic() + 25
    while relais.log_text().count(trimmed) == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert relais.log_text().count(trimmed) > before, "no trim within 25 s of the last leave"
    assert relais.alive()


def test_floor_forwards_and_reports_its_cost():
    result = run_json(
        [
            str(tool("relais-floor")),
            "--subscribers", "10",
            "--duration", "1",
            "--input-pps", "500",
            "--json",
        ]
    )
    # Every packet that came in left once per subscriber.
    assert result["input_received"] > 100
    assert result["packets_out"] == 10 * result["input_received"]
    assert result["send_errors"] == 0
    assert result["forwarder_cpu_seconds"] > 0
    assert result["forwarded_packets_per_cpu_second"] > 0


def run_compare_script(env: dict, logs: Path, while_running=None) -> tuple[str, str]:
    """Run `compare.sh` to its end (120 s at most), calling `while_running` every 0.1 s
    meanwhile; its stdout and stderr. A process group of its own: on a timeout the
    servers and the namespace's holder go too, terminated first so that the script's
    exit trap gives the threads it moved their CPUs back. Its output goes to files,
    which a pipe nobody reads while it runs could not take."""
    from conftest import REPO_ROOT

    with open(logs / "stdout.txt", "w") as stdout, open(logs / "stderr.txt", "w") as stderr:
        script = subprocess.Popen(
            ["bash", str(REPO_ROOT / "crates/relais-loadtest/scripts/compare.sh")],
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while script.poll() is None:
            if time.monotonic() > deadline:
                os.killpg(script.pid, signal.SIGTERM)
                try:
                    script.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(script.pid, signal.SIGKILL)
                    script.wait()
                pytest.fail(
                    "compare.sh did not finish in 120 s:\n"
                    + (logs / "stderr.txt").read_text()[-3000:]
                )
            if while_running is not None:
                while_running()
            time.sleep(0.1)
    out, err = (logs / "stdout.txt").read_text(), (logs / "stderr.txt").read_text()
    assert script.returncode == 0, err[-3000:]
    return out, err


@pytest.mark.parametrize("apart", [False, True], ids=["one_generator", "publishers_apart"])
def test_compare_script_brackets_the_server_with_the_floor(tmp_path: Path, apart: bool):
    """`compare.sh`, the three-way benchmark (Janus left out), end to end in its own
    network namespace: the strict floor before and after Relais, and the ratio
    taken against their mean cost per packet. With `PUBLISHERS_APART=1` the
    publishers join from a load generator of their own and the subscribers'
    meets them in the same room."""
    needs_udp()
    if os.geteuid() != 0:
        pytest.skip("compare.sh creates a network namespace: needs root")

    out = tmp_path / "run"
    env = script_env(
        out,
        SKIP_JANUS="1",
        SUBS="3",
        RAMP="1",
        WARMUP="1",
        DUR="3",
        PUBLISHERS_APART="1" if apart else "0",
    )
    stdout, stderr = run_compare_script(env, tmp_path)
    assert "strict floor before / after the servers" in stdout, stdout

    relais = json.loads((out / "relais.json").read_text())
    # The subscribers got both publishers' media, wherever the publishers joined from.
    assert relais["per_subscriber_packets_min"] > 0
    summary = json.loads((out / "summary.json").read_text())
    rate = summary["relais_packets_per_cpu_second"]
    assert rate == relais["forwarded_packets_per_cpu_second"]
    publishers = json.loads((out / "relais-publishers.json").read_text()) if apart else None
    if publishers is not None:
        assert publishers["joins_ok"] == 2, publishers["failure_examples"]
        assert relais["joins_ok"] == 3, relais["failure_examples"]
        assert relais["publishers_live"] == 0
        # The table's joins count both generators' participants.
        row = next(line for line in stdout.splitlines() if line.startswith("relais "))
        assert "5/5" in row.split(), stdout
    else:
        assert relais["joins_ok"] == 5, relais["failure_examples"]
    # The publishers' generator says how late its frames were made, so that a run
    # whose load generator fell behind can be told from one whose server did.
    sender = publishers or relais
    assert 0 <= sender["publisher_frame_late_ms_p50"] <= sender["publisher_frame_late_ms_p99"]
    assert "publishers' frames late" in stdout, stdout
    # ... and how busy it was (a generator near a full core sends late, then in bursts).
    assert "load generator's CPU over its window" in stdout, stdout
    assert sender["loadgen_cpu_seconds"] > 0
    before, after = summary["floor_runs"]
    assert before > 0 and after > 0
    # The floor is the mean of the two runs' cost per packet, so it lies between them.
    floor = summary["floor_packets_per_cpu_second"]
    assert min(before, after) <= floor <= max(before, after)
    assert summary["relais_times_floor"] == pytest.approx(floor / rate)


def test_compare_script_pinned_gives_the_server_its_core_alone(tmp_path: Path):
    """`PIN=1`: the server on CPU 1 and, for the run, every other thread that may run
    there confined to the other CPUs (a guest agent's or a kernel thread's turns on
    the server's core would sit in its latency tail); their CPUs given back at the
    end."""
    needs_udp()
    if os.geteuid() != 0:
        pytest.skip("compare.sh creates a network namespace: needs root")
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs CPUs 0 and 1")
    # A bystander allowed on every CPU of the test's, as a machine's daemons are.
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        allowed = os.sched_getaffinity(bystander.pid)
        seen: list[set[int]] = []
        out = tmp_path / "run"
        env = script_env(
            out, SKIP_JANUS="1", PIN="1", SUBS="3", RAMP="1", WARMUP="1", DUR="3"
        )
        _, stderr = run_compare_script(
            env, tmp_path, lambda: seen.append(os.sched_getaffinity(bystander.pid))
        )
        assert allowed - {1} in seen, seen
        assert os.sched_getaffinity(bystander.pid) == allowed
        moved = [line.split()[0] for line in (out / "quiet-core-moved.txt").read_text().splitlines()]
        assert str(bystander.pid) in moved
        assert f"{len(moved)} other threads moved off it" in stderr, stderr[-3000:]
        relais = json.loads((out / "relais.json").read_text())
        assert relais["joins_ok"] == 5, relais["failure_examples"]
        assert relais["per_subscriber_packets_min"] > 0
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize(
    "stay,nodes",
    [(False, 1), (True, 1), (False, 2)],
    ids=["rooms_churn", "subscribers_churn", "cluster_rooms_churn"],
)
def test_soak_script_finds_the_node_at_rest_after_every_round(
    tmp_path: Path, stay: bool, nodes: int
):
    """`soak.sh`, the churn benchmark, end to end: rounds of rooms that fill, carry media
    and empty (or, with STAY=1, of subscribers joining rooms whose publishers stay), and
    after each round the node's rooms, participants and threads read back at rest; with
    two nodes, Redis holds again only the nodes' records and their set."""
    needs_udp()
    if nodes > 1 and shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    from conftest import free_tcp_port

    out = tmp_path / "soak"
    env = script_env(
        out,
        PORT=str(free_tcp_port()),
        ROUNDS="2",
        ROOMS="2",
        SUBS="2",
        RAMP="1",
        DUR="1",
        STAY="1" if stay else "0",
        NODES=str(nodes),
    )
    stdout = run_script("soak.sh", env)
    rows = [json.loads(line) for line in (out / "soak.jsonl").read_text().splitlines()]
    assert [(r["round"], r["node"]) for r in rows] == [
        (n, i) for n in (0, 1, 2) for i in range(nodes)
    ]
    # At rest: nothing, or the two rooms and their two publishers each (over the nodes).
    rest = (2, 4) if stay else (0, 0)
    for n in (0, 1, 2):
        mine = [r for r in rows if r["round"] == n]
        assert (sum(r["rooms"] for r in mine), sum(r["participants"] for r in mine)) == rest, mine
        # Each node's record, the set of nodes: no room claim left behind.
        assert {r["redis_keys"] for r in mine} == ({nodes + 1} if nodes > 1 else {None}), mine
    for row in rows:
        assert row["threads"] == rows[row["node"]]["threads"], row
    for n in (1, 2):
        joined = json.loads((out / f"round-{n}.json").read_text())["joins_ok"]
        assert joined == (4 if stay else 8), f"round {n}: {joined} joined"


def test_beside_script_reports_each_phase_of_a_large_room_beside_meetings(tmp_path: Path):
    """`beside.sh` end to end, small: meetings carry on while a larger room fills and
    empties; every phase is reported with the meetings' forward latency from the
    server's histogram, and every participant joined."""
    needs_udp()
    from conftest import free_tcp_port

    out = tmp_path / "beside"
    env = script_env(
        out,
        PORT=str(free_tcp_port()),
        MEETINGS="2",
        BIG="8",
        BEFORE="2",
        BIG_RAMP="1",
        BIG_STAY="2",
        AFTER="3",
    )
    stdout = run_script("beside.sh", env)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meetings_joins_ok"] == 24
    assert summary["big_joins_ok"] == 10
    phases = {p["phase"]: p for p in summary["phases"]}
    assert list(phases) == [
        "meetings alone",
        "big room joining",
        "big room there",
        "big room leaving",
        "meetings alone after",
    ]
    for name, phase in phases.items():
        # Media flowed through every phase and its latency was read.
        assert phase["packets"] > 0, (name, phase)
        assert phase["over_5ms_percent"] is not None and phase["p99_le_ms"] is not None
        assert phase["shard_busy_percent"] > 0, (name, phase)
    assert "big room there" in stdout

