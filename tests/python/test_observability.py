"""Observability: Prometheus metrics during a real call, health/readiness during a drain,
and JSON logs that carry room and participant fields.

Metrics are scraped from `prometheus.port` (`/metrics`) and parsed from the text format.
Shard threads hand their counters to the exporter once a second, so every check on a
counter polls until it moves (bounded).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import (
    API_KEY,
    API_SECRET,
    _LIVE_SERVERS,
    bounded,
    connect,
    free_tcp_port,
    make_token,
    wait_for,
)
from livekit import api, rtc
from media import play_sine, play_video, publish_tone
from test_call import FPS, HEIGHT, SAMPLE_RATE, WIDTH, synthetic_picture

DOCS = Path(__file__).resolve().parents[2] / "docs"
METRIC_NAME = re.compile(r"\b((?:livekit|relais)_[a-z0-9_]+)")
LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# --------------------------------------------------------------------------- helpers


def http_get(
    url: str, headers: dict | None = None, timeout: float = 5
) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def rtc_refusal(server, token: str) -> tuple[int, str]:
    """Status and text of a refused `/rtc` upgrade (the SDKs show only the status)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(
            "GET",
            f"/rtc?access_token={token}",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        response = conn.getresponse()
        if response.status == 101:  # admitted: the connection is a WebSocket now
            return 101, ""
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def rtc_status(server, token: str) -> int:
    """Status of a WebSocket upgrade request to `/rtc` (refusals come before the upgrade)."""
    return rtc_refusal(server, token)[0]


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"unparsable metrics line: {line!r}"
        labels = dict(LABEL.findall(m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples


class Scraper:
    def __init__(self, port: int, auth: tuple[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.headers = {}
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def scrape(self) -> list[tuple[str, dict, float]]:
        status, body = http_get(self.url, self.headers)
        assert status == 200, f"/metrics answered {status}: {body[:200]}"
        return parse_metrics(body)

    def value(self, name: str, **labels: str) -> float:
        """Sum of the series of `name` whose labels include `labels` (0 if none)."""
        return sum(
            v
            for n, ls, v in self.scrape()
            if n == name and all(ls.get(k) == want for k, want in labels.items())
        )

    async def wait(
        self, what: str, name: str, predicate, timeout: float = 15, **labels
    ):
        value = None

        def check():
            nonlocal value
            value = self.value(name, **labels)
            return predicate(value)

        try:
            await wait_for(check, what, timeout, interval=0.25)
        except BaseException:
            print(f"{name}{labels} = {value}")
            raise
        return value


def start_with_metrics(relais_factory, extra: dict | None = None):
    port = free_tcp_port()
    config = {"prometheus": {"port": port}}
    config.update(extra or {})
    return relais_factory(config), port


# --------------------------------------------------------------------------- metrics


async def test_metrics_move_during_a_call(relais_factory, rooms):
    server, port = start_with_metrics(relais_factory)
    m = Scraper(port)

    # Idle node: LiveKit's names with node_id/node_type, nothing counted yet.
    samples = m.scrape()
    rooms_total = [s for s in samples if s[0] == "livekit_room_total"]
    assert rooms_total, "livekit_room_total missing"
    assert rooms_total[0][1]["node_id"].startswith("ND_")
    assert rooms_total[0][1]["node_type"] == "SERVER"
    assert rooms_total[0][2] == 0
    assert m.value("livekit_participant_join_total", state="signal_connected") == 0

    room = "metrics-room"
    bob = await rooms.join(server, "bob", room)
    alice = await rooms.join(server, "alice", room)
    await m.wait(
        "two signal joins",
        "livekit_participant_join_total",
        lambda v: v == 2,
        state="signal_connected",
    )
    await m.wait(
        "two ACTIVE participants",
        "livekit_participant_join_total",
        lambda v: v >= 2,
        state="rtc_connected",
    )
    await m.wait("one room", "livekit_room_total", lambda v: v == 1)
    await m.wait("two participants", "livekit_participant_total", lambda v: v == 2)
    assert m.value("livekit_session_join_latency_ms_count") == 2

    stop = asyncio.Event()
    audio = rtc.AudioSource(SAMPLE_RATE, 1)
    video = rtc.VideoSource(WIDTH, HEIGHT)
    players = [
        asyncio.create_task(play_sine(audio, stop)),
        asyncio.create_task(
            play_video(video, stop, WIDTH, HEIGHT, FPS, synthetic_picture)
        ),
    ]
    try:
        await bounded(
            alice.local_participant.publish_track(
                rtc.LocalAudioTrack.create_audio_track("mic", audio),
                rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
            ),
            "alice publishes audio",
            20,
        )
        await bounded(
            alice.local_participant.publish_track(
                rtc.LocalVideoTrack.create_video_track("cam", video),
                rtc.TrackPublishOptions(
                    source=rtc.TrackSource.SOURCE_CAMERA,
                    simulcast=False,
                    video_encoding=rtc.VideoEncoding(
                        max_bitrate=500_000, max_framerate=FPS
                    ),
                ),
            ),
            "alice publishes video",
            20,
        )
        for kind in ("AUDIO", "VIDEO"):
            await m.wait(
                f"one {kind} track published",
                "livekit_track_published_total",
                lambda v: v == 1,
                kind=kind,
            )
            await m.wait(
                f"bob subscribed to {kind}",
                "livekit_track_subscribed_total",
                lambda v: v == 1,
                kind=kind,
            )

        # Packets and bytes flow both ways, for both kinds.
        for direction in ("incoming", "outgoing"):
            for kind in ("AUDIO", "VIDEO"):
                await m.wait(
                    f"{direction} {kind} packets",
                    "livekit_packet_total",
                    lambda v: v > 20,
                    direction=direction,
                    kind=kind,
                )
        first = m.value("livekit_packet_total", direction="outgoing", kind="VIDEO")
        await m.wait(
            "outgoing video keeps flowing",
            "livekit_packet_total",
            lambda v: v > first,
            direction="outgoing",
            kind="VIDEO",
        )
        # Bob's two subscriptions are sent by Relais itself (the default).
        await m.wait("two direct streams", "relais_direct_streams", lambda v: v == 2)
        # Bob's receiver reports on them are read by Relais itself, not str0m
        # (libwebrtc sends several a second).
        await m.wait(
            "bob's reports read by Relais",
            "relais_subscriber_reports_read_total",
            lambda v: v >= 3,
        )
        # What they say is sampled: the round trip to Bob on the video Relais
        # sends him (its sender reports echoed in his receiver reports).
        await m.wait(
            "round trip to bob sampled",
            "livekit_rtt_ms_count",
            lambda v: v > 0,
            direction="outgoing",
            type="VIDEO",
        )
        packets_in = m.value("livekit_packet_total", direction="incoming")
        bytes_in = m.value("livekit_packet_bytes", direction="incoming")
        assert bytes_in > 12 * packets_in, (bytes_in, packets_in)
        # Flushed by another thread on its own second: only check that it counts.
        assert m.value("relais_udp_datagrams_received_total") > 0
        assert m.value("relais_udp_datagrams_sent_total") > 0
        assert m.value("relais_udp_receive_syscalls_total") > 0
        assert m.value("relais_shard_busy_microseconds_total") > 0
        assert m.value("relais_shard_round_ms_count") > 0
        # How long the shards waited for their cores: exposed per shard (its value is
        # the machine's business).
        assert any(
            n == "relais_shard_run_delay_microseconds_total" and "shard" in ls
            for n, ls, _ in m.scrape()
        )
        # Forward latency: one sample per forwarded packet (not per copy, not
        # per RTCP or STUN datagram), from its arrival to its copy's send.
        await m.wait(
            "forward latency sampled",
            "relais_forward_latency_ms_count",
            lambda v: v > 20,
        )
        # Samples are recorded at once, packet counters flushed each second;
        # the histogram's own series are read from one scrape.
        scraped = {(n, ls.get("le")): v for n, ls, v in m.scrape() if "forward_latency_ms" in n}
        samples = scraped[("relais_forward_latency_ms_count", None)]
        assert scraped[("relais_forward_latency_ms_bucket", "+Inf")] == samples
        mean_ms = scraped[("relais_forward_latency_ms_sum", None)] / samples
        assert 0 < mean_ms < 100, mean_ms
        packets_in = m.value("livekit_packet_total", direction="incoming")
        assert samples <= packets_in + 400, (samples, packets_in)

        # A subscriber joining makes the node ask the publisher for a keyframe (PLI).
        plis = m.value("livekit_pli_total", direction="incoming")
        carol = await rooms.join(server, "carol", room)
        await wait_for(
            lambda: "alice" in carol.remote_participants, "carol sees alice", 10
        )
        await m.wait(
            "a PLI towards the publisher",
            "livekit_pli_total",
            lambda v: v > plis,
            direction="incoming",
        )
        await m.wait(
            "carol subscribed to the video",
            "livekit_track_subscribed_total",
            lambda v: v == 2,
            kind="VIDEO",
        )
        # str0m's stats (every 5 s) feed jitter/RTT histograms per stream.
        await m.wait(
            "jitter samples", "livekit_jitter_us_count", lambda v: v > 0, timeout=20
        )
    finally:
        stop.set()
        for p in players:
            p.cancel()

    await bounded(carol.disconnect(), "carol leaves")
    await bounded(alice.disconnect(), "alice leaves")
    await bounded(bob.disconnect(), "bob leaves")
    await m.wait("no participant left", "livekit_participant_total", lambda v: v == 0)
    await m.wait("no track left", "livekit_track_published_total", lambda v: v == 0)
    # The room closes after its empty timeout (5 s in tests) and reports its lifetime.
    await m.wait("room closed", "livekit_room_total", lambda v: v == 0, timeout=20)
    await m.wait(
        "room duration observed",
        "livekit_room_duration_seconds_count",
        lambda v: v == 1,
    )

    # Every family served is documented in docs/operations.md.
    documented = documented_metrics()
    served = {re.sub(r"_(bucket|sum|count)$", "", n) for n, _, _ in m.scrape()}
    missing = {n for n in served if n.startswith(("livekit_", "relais_"))} - documented
    assert not missing, f"served but not in docs/operations.md: {sorted(missing)}"


def documented_metrics() -> set[str]:
    return set(METRIC_NAME.findall((DOCS / "operations.md").read_text()))


def test_dashboard_uses_documented_metrics():
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {
        re.sub(r"_(bucket|sum|count)$", "", n)
        for e in exprs
        for n in METRIC_NAME.findall(e)
    }
    assert len(used) > 20
    assert used <= documented_metrics(), sorted(used - documented_metrics())


async def test_join_refusals_are_counted(relais_factory):
    server, port = start_with_metrics(relais_factory, {"room": {"auto_create": False}})
    m = Scraper(port)
    assert rtc_status(server, "not-a-token") == 401
    assert rtc_status(server, make_token("dave", "nowhere")) == 404
    await m.wait(
        "refusals counted",
        "livekit_participant_join_total",
        lambda v: v == 2,
        state="signal_failed",
    )
    assert m.value("relais_join_refused_total", reason="unauthorized") == 1
    assert m.value("relais_join_refused_total", reason="no_such_room") == 1


def test_metrics_basic_auth(relais_factory):
    port = free_tcp_port()
    server = relais_factory(
        {"prometheus": {"port": port, "username": "prom", "password": "scrape-pw"}}
    )
    status, _ = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 401
    status, _ = http_get(
        f"http://127.0.0.1:{port}/metrics",
        {"Authorization": "Basic " + base64.b64encode(b"prom:wrong").decode()},
    )
    assert status == 401
    samples = Scraper(port, ("prom", "scrape-pw")).scrape()
    assert any(n == "livekit_room_total" for n, _, _ in samples)
    assert "scrape-pw" not in server.log_text()


# --------------------------------------------------------------------------- health


def test_health_endpoints_when_serving(relais_factory):
    server = relais_factory()
    assert http_get(server.http_url + "/") == (200, "OK")
    assert http_get(server.http_url + "/healthz")[0] == 200
    assert http_get(server.http_url + "/readyz") == (200, "ready")


async def test_readiness_flips_during_drain(relais_factory, rooms):
    server, port = start_with_metrics(relais_factory, {"drain_timeout": 30})
    m = Scraper(port)
    room = await rooms.join(server, "stayer", "drain-room")
    assert http_get(server.http_url + "/readyz")[0] == 200
    await wait_for(lambda: m.value("relais_node_ready") == 1, "ready gauge", 5)

    server.proc.send_signal(signal.SIGTERM)
    await wait_for(
        lambda: http_get(server.http_url + "/readyz")[0] == 503,
        "/readyz 503 after SIGTERM",
        5,
    )
    assert http_get(server.http_url + "/readyz")[1] == "draining"
    # Still serving the participant: liveness and LiveKit's health check stay 200.
    assert http_get(server.http_url + "/")[0] == 200
    assert http_get(server.http_url + "/healthz")[0] == 200
    assert server.alive()
    await wait_for(lambda: m.value("relais_node_draining") == 1, "draining gauge", 5)
    assert m.value("relais_node_ready") == 0
    # No new room while draining (the room already here stays open to its participants).
    assert rtc_status(server, make_token("late", "another-room")) == 503
    await m.wait(
        "draining refusal counted",
        "relais_join_refused_total",
        lambda v: v == 1,
        reason="draining",
    )

    # The last participant leaves: the node exits on its own, cleanly.
    await bounded(room.disconnect(), "participant leaves")
    deadline = time.monotonic() + 10
    while server.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert server.proc.poll() == 0, (
        "relais did not exit after its last participant left"
    )
    # It stopped as asked: the teardown must not count that as a crash.
    assert "panicked" not in server.log_text()
    server.proc = None
    if server in _LIVE_SERVERS:
        _LIVE_SERVERS.remove(server)


# --------------------------------------------------------------------------- limits


async def test_node_track_limit_turns_newcomers_away_not_those_in(relais_factory, rooms):
    """`limit.num_tracks` (LiveKit's key) counts tracks in and out: at the limit
    the node refuses joins — into new rooms and into its own — with 503 and the
    reason, while the call in progress goes on; below it again, joins resume."""
    server, port = start_with_metrics(relais_factory, {"limit": {"num_tracks": 2}})
    m = Scraper(port)
    alice = await rooms.join(server, "alice", "limited")
    bob = await rooms.join(server, "bob", "limited")
    received = asyncio.Event()
    bob.on(
        "track_subscribed",
        lambda track, *_: asyncio.ensure_future(count_audio(track, received)),
    )
    stop = asyncio.Event()
    _, player = await publish_tone(alice, stop)
    try:
        await bounded(received.wait(), "bob hears alice", 15)
        # One track in, one out: the limit. The node learns it within a
        # heartbeat; a probe into another room is refused from then on.
        await wait_for(
            lambda: rtc_refusal(server, make_token("probe", "elsewhere"))[0] == 503,
            "joins refused at the track limit",
            10,
        )
        status, text = rtc_refusal(server, make_token("carol", "limited"))
        assert (status, text) == (503, "node limit reached: num_tracks"), (status, text)
        with pytest.raises(Exception) as refused:
            await connect(server.url, make_token("carol", "limited"), timeout=10)
        assert "503" in str(refused.value), str(refused.value)
        assert m.value("relais_join_refused_total", reason="node_limit") >= 2
        # Nor does it create rooms (LiveKit refuses the call as well).
        lkapi = api.LiveKitAPI(server.http_url, API_KEY, API_SECRET)
        try:
            with pytest.raises(api.TwirpError) as create:
                await lkapi.room.create_room(api.CreateRoomRequest(name="another"))
            assert create.value.code == "unavailable", create.value
            assert "node limit reached" in create.value.message, create.value
        finally:
            await lkapi.aclose()
        # Those already in are not touched: bob still hears alice.
        received.clear()
        await bounded(received.wait(), "bob still hears alice", 10)
        assert bob.connection_state == rtc.ConnectionState.CONN_CONNECTED
    finally:
        stop.set()
        await player
    # Bob leaves: one track left, joins are taken again.
    await bob.disconnect()
    await wait_for(
        lambda: rtc_refusal(server, make_token("probe", "elsewhere"))[0] != 503,
        "joins taken again below the limit",
        10,
    )
    carol = await rooms.join(server, "carol", "limited")
    assert carol.connection_state == rtc.ConnectionState.CONN_CONNECTED


async def test_a_shard_busier_than_its_limit_refuses_joins(relais_factory, rooms):
    """`limit.shard_busy_fraction`: a shard that worked more than that fraction
    of the last second takes no one new (503, reason `overloaded`, gauge 0),
    and those in the call stay. A tiny limit makes any work "too busy"."""
    server, port = start_with_metrics(
        relais_factory, {"limit": {"shard_busy_fraction": 0.000001}}
    )
    m = Scraper(port)
    alice = await rooms.join(server, "alice", "busy")
    await wait_for(
        lambda: any(
            n == "relais_shard_accepting_joins" and v == 0 for n, _, v in m.scrape()
        ),
        "the room's shard stops taking joins",
        10,
    )
    status, text = rtc_refusal(server, make_token("bob", "busy"))
    assert status == 503 and "overloaded" in text, (status, text)
    assert m.value("relais_join_refused_total", reason="overloaded") == 1
    await asyncio.sleep(1.5)
    assert alice.connection_state == rtc.ConnectionState.CONN_CONNECTED


async def count_audio(track: rtc.Track, received: asyncio.Event) -> None:
    """Set `received` whenever a frame of `track` arrives (until it ends)."""
    if track.kind != rtc.TrackKind.KIND_AUDIO:
        return
    async for _ in rtc.AudioStream(track):
        received.set()


# --------------------------------------------------------------------------- logs


async def test_json_logs_carry_room_and_participant(relais_factory, rooms):
    server = relais_factory({"logging": {"json": True, "level": "debug"}})
    token = make_token("json-alice", "json-room")
    room = await rooms.join(server, "json-alice", "json-room")
    sid = room.local_participant.sid
    room_sid = await room.sid
    await bounded(room.disconnect(), "leave")
    await wait_for(lambda: "participant left" in server.log_text(), "leave logged", 10)

    lines = [ln for ln in server.log_text().splitlines() if ln.strip()]
    assert lines
    records = []
    for ln in lines:
        try:
            records.append(json.loads(ln))
        except json.JSONDecodeError:
            pytest.fail(f"log line is not JSON: {ln!r}", pytrace=False)
    for r in records:
        assert {"timestamp", "level", "target", "fields"} <= r.keys(), r

    def spans(r):
        return {s["name"]: s for s in r.get("spans", [])}

    joining = [
        r for r in records if r["fields"].get("message") == "participant joining"
    ]
    assert joining, "no 'participant joining' line"
    s = spans(joining[0])
    assert s["room"]["room"] == "json-room"
    assert s["room"]["room_sid"] == room_sid
    assert s["participant"]["participant"] == "json-alice"
    assert s["participant"]["participant_sid"] == sid
    # Every line the media core writes about this participant names it and its room.
    about = [r for r in records if "participant" in spans(r)]
    assert len(about) >= 3
    for r in about:
        assert spans(r)["participant"]["participant_sid"] == sid, r
        assert spans(r)["room"]["room_sid"] == room_sid, r
    # The signal task's lines too.
    accepted = [
        r for r in records if r["fields"].get("message") == "signal connection accepted"
    ]
    assert accepted and spans(accepted[0])["participant"]["participant"] == "json-alice"
    text = server.log_text()
    # The token (or its signature) is never logged.
    assert token not in text and token.rsplit(".", 1)[1] not in text


async def test_human_logs_and_component_levels(relais_factory, rooms):
    server = relais_factory(
        {"logging": {"level": "warn", "component_levels": {"relais_media": "debug"}}}
    )
    await rooms.join(server, "plain", "plain-room")
    await wait_for(
        lambda: "participant joining" in server.log_text(), "join logged", 10
    )
    text = server.log_text()
    line = next(ln for ln in text.splitlines() if "participant joining" in ln)
    assert "room{room=plain-room room_sid=RM_" in line, line
    assert "participant{participant=plain participant_sid=PA_" in line, line
    # relais_server logs at info ("relais listening") are below its warn level.
    assert "relais listening" not in text
    assert "DEBUG" in text  # relais_media at debug


async def test_a_span_filter_logs_one_room_at_debug(relais_factory, rooms):
    # Span filters take the dynamic filter; targets and levels alone a static one.
    server = relais_factory({"logging": {"level": "info,[room{room=loud}]=debug"}})
    await rooms.join(server, "one", "loud")
    await rooms.join(server, "two", "quiet")
    await wait_for(
        lambda: server.log_text().count("participant joining") >= 2, "joins logged", 10
    )
    debug = [ln for ln in server.log_text().splitlines() if " DEBUG " in ln]
    assert any("room{room=loud" in ln for ln in debug), "no debug line about the loud room"
    assert not any("room{room=quiet" in ln for ln in debug), "the quiet room logged at debug"
    assert "relais listening" in server.log_text()  # info elsewhere
    # A span named without fields: a static filter would take "[participant]"
    # for a target and log nothing at debug.
    server = relais_factory({"logging": {"level": "warn,[participant]=debug"}})
    await rooms.join(server, "three", "any")
    await wait_for(lambda: " DEBUG " in server.log_text(), "debug lines in a participant", 10)
