"""Webhooks, judged by the real receiver: `livekit.api.WebhookReceiver`.

A local aiohttp server receives Relais' deliveries and verifies every one with
`WebhookReceiver(TokenVerifier("devkey", "secret")).receive(body, authorization)`
(JWT signature, `sha256` claim of the exact body, proto3-JSON parse). The tests then
check what LiveKit users rely on:

- the exact ordered event sequence of a join / publish / leave cycle, ending with
  `room_finished` after the room's departure timeout (its last participant left);
- unique `EV_` ids, sane `created_at`, one room sid throughout, LiveKit's payload
  shapes (track events carry only the participant's sid and identity);
- a participant whose connection never became active: `participant_connection_aborted`;
- a receiver that fails (HTTP 500) gets the same event again, still in order;
- a slow receiver does not hold up signalling or data between participants.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
import pytest
from aiohttp import web
from livekit import api, rtc
from livekit.protocol.models import ParticipantInfo

from conftest import (
    API_KEY,
    API_SECRET,
    EventLog,
    bounded,
    free_tcp_port,
    make_token,
    wait_for,
)


@dataclass
class Delivery:
    event: api.WebhookEvent | None
    error: str | None
    headers: dict
    body: str
    received_at: float


@dataclass
class Sink:
    """An aiohttp webhook receiver. `respond(event, nth_attempt)` → (status, delay_s)."""

    respond: Callable[[api.WebhookEvent | None, int], tuple[int, float]] = lambda e, n: (200, 0)
    deliveries: list[Delivery] = field(default_factory=list)
    answered: list[Delivery] = field(default_factory=list)  # answered 2xx
    # When set, every request is held until the gate opens (at most 8 s: the
    # server's own request timeout is 10 s).
    gate: asyncio.Event | None = None
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> "Sink":
        receiver = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))

        async def hook(request: web.Request) -> web.Response:
            body = await request.text()
            auth = request.headers.get("Authorization", "")
            event, error = None, None
            try:
                event = receiver.receive(body, auth)
            except Exception as e:  # noqa: BLE001 - recorded and asserted on
                error = f"{type(e).__name__}: {e}"
            d = Delivery(event, error, dict(request.headers), body, time.time())
            self.deliveries.append(d)
            nth = sum(1 for x in self.deliveries if x.event and event and x.event.id == event.id)
            status, delay = self.respond(event, nth)
            if delay:
                await asyncio.sleep(delay)
            if self.gate is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.gate.wait(), 8)
            if 200 <= status < 300:
                self.answered.append(d)
            return web.Response(status=status)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        self.port = free_tcp_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    def accepted(self, room: str) -> list[api.WebhookEvent]:
        """Events of `room` the receiver answered 2xx, in arrival order."""
        return [d.event for d in self.answered if d.event and d.event.room.name == room]

    def names(self, room: str) -> list[str]:
        return [e.event for e in self.accepted(room)]

    def check_all_verified(self) -> None:
        errors = [d.error for d in self.deliveries if d.error]
        assert not errors, f"deliveries the SDK receiver rejected: {errors}"
        for d in self.deliveries:
            headers = {k.lower(): v for k, v in d.headers.items()}
            assert headers["content-type"] == "application/webhook+json"
            assert headers["user-agent"] == "LiveKit"
            assert not headers["authorization"].lower().startswith("bearer")


@pytest.fixture
async def sinks():
    started: list[Sink] = []

    async def start(**kwargs) -> Sink:
        s = await Sink(**kwargs).start()
        started.append(s)
        return s

    yield start
    for s in started:
        await s.stop()


def webhook_config(sink: Sink, close_after: int = 1) -> dict:
    """Rooms close `close_after` seconds after their last participant left (the
    departure timeout) or, nobody joined, after their creation (the empty timeout)."""
    return {
        "webhook": {"api_key": API_KEY, "urls": [sink.url]},
        "room": {"empty_timeout": close_after, "departure_timeout": close_after},
    }


@pytest.fixture
def room_name() -> str:
    return f"hook-{uuid.uuid4().hex[:8]}"


async def wait_names(sink: Sink, room: str, expected: list[str], timeout: float = 20.0):
    await wait_for(
        lambda: len(sink.names(room)) >= len(expected),
        f"{len(expected)} webhook events for {room} (have {sink.names(room)})",
        timeout,
    )
    await asyncio.sleep(0.5)  # nothing unexpected trails behind
    assert sink.names(room) == expected


async def join(server, identity: str, room: str) -> rtc.Room:
    r = rtc.Room()
    await asyncio.wait_for(r.connect(server.url, make_token(identity, room)), 15)
    return r


# --------------------------------------------------------------------------- tests


async def test_call_cycle_event_sequence(relais_factory, sinks, room_name):
    sink = await sinks()
    server = relais_factory(webhook_config(sink))
    started = time.time()

    bob = await join(server, "bob", room_name)
    await wait_for(lambda: "participant_joined" in sink.names(room_name), "bob joined event")
    alice = await join(server, "alice", room_name)
    try:
        await wait_for(lambda: "alice" in bob.remote_participants, "bob to see alice")
        subscribed = EventLog(bob, "track_subscribed")
        source = rtc.AudioSource(48000, 1)
        mic = rtc.LocalAudioTrack.create_audio_track("mic", source)
        pub = await bounded(
            alice.local_participant.publish_track(
                mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            ),
            "alice publishes",
            20,
        )
        await wait_for(
            lambda: "track_published" in sink.names(room_name), "track_published event", 20
        )
        await subscribed.wait(timeout=15, what="bob subscribed to alice's track")

        left = EventLog(bob, "participant_disconnected")
        await asyncio.wait_for(alice.disconnect(), 10)
        await left.wait(lambda p: p.identity == "alice", 10, "bob sees alice leave")
    finally:
        if alice.isconnected():
            await asyncio.wait_for(alice.disconnect(), 10)
    await asyncio.wait_for(bob.disconnect(), 10)

    expected = [
        "room_started",
        "participant_joined",
        "participant_joined",
        "track_published",
        "track_unpublished",
        "participant_left",
        "participant_left",
        "room_finished",
    ]
    await wait_names(sink, room_name, expected, timeout=20)
    sink.check_all_verified()
    events = sink.accepted(room_name)
    finished = time.time()

    # Who, in which order.
    joined = [e.participant.identity for e in events if e.event == "participant_joined"]
    departed = [e.participant.identity for e in events if e.event == "participant_left"]
    assert joined == ["bob", "alice"]
    assert departed == ["alice", "bob"]
    for e in events:
        if e.event == "participant_joined":
            assert e.participant.state == ParticipantInfo.ACTIVE
            assert e.participant.sid.startswith("PA_")

    # Track events: the track, and only sid + identity of its publisher.
    published = next(e for e in events if e.event == "track_published")
    unpublished = next(e for e in events if e.event == "track_unpublished")
    assert published.track.sid == pub.sid == unpublished.track.sid
    assert published.track.sid.startswith("TR_")
    assert published.participant.identity == "alice"
    assert published.participant.sid == joined_sid(events, "alice")
    assert published.participant.name == "" and published.participant.joined_at == 0
    assert published.room.name == room_name

    # One room sid throughout; unique ids; created_at within the test's span.
    sids = {e.room.sid for e in events}
    assert len(sids) == 1 and next(iter(sids)).startswith("RM_"), sids
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("EV_") for i in ids), ids
    for e in events:
        assert started - 2 <= e.created_at <= finished + 2, (e.event, e.created_at)
    created = [e.created_at for e in events]
    assert created == sorted(created)


def joined_sid(events, identity: str) -> str:
    return next(
        e.participant.sid
        for e in events
        if e.event == "participant_joined" and e.participant.identity == identity
    )


async def test_connection_never_active_is_aborted(relais_factory, sinks, room_name):
    """A client that gets its join response and goes away before connecting media."""
    sink = await sinks()
    server = relais_factory(webhook_config(sink))
    token = make_token("ghost", room_name)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{server.url}/rtc?access_token={token}&protocol=15&auto_subscribe=1"
        ) as ws:
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
    await wait_names(
        sink, room_name, ["room_started", "participant_connection_aborted", "room_finished"]
    )
    sink.check_all_verified()
    aborted = sink.accepted(room_name)[1]
    assert aborted.participant.identity == "ghost"
    assert aborted.participant.sid.startswith("PA_")


async def test_failed_delivery_is_retried_in_order(relais_factory, sinks, room_name):
    # Every event is refused twice with HTTP 500, then accepted.
    sink = await sinks(respond=lambda event, nth: (500 if nth <= 2 else 200, 0))
    server = relais_factory(webhook_config(sink))
    bob = await join(server, "bob", room_name)
    await wait_for(
        lambda: "participant_joined" in sink.names(room_name), "participant_joined", 15
    )
    await asyncio.wait_for(bob.disconnect(), 10)
    expected = ["room_started", "participant_joined", "participant_left", "room_finished"]
    await wait_names(sink, room_name, expected, timeout=30)
    sink.check_all_verified()
    # Each accepted event was delivered three times with the same id and body.
    for e in sink.accepted(room_name):
        tries = [d for d in sink.deliveries if d.event and d.event.id == e.id]
        assert len(tries) == 3, (e.event, len(tries))
        assert len({d.body for d in tries}) == 1
    # And nothing overtook a failing event: arrivals are grouped per event, in order.
    arrival_ids = [d.event.id for d in sink.deliveries if d.event.room.name == room_name]
    grouped = [arrival_ids[i] for i in range(0, len(arrival_ids), 3)]
    assert grouped == [e.id for e in sink.accepted(room_name)]
    assert all(arrival_ids[i] == arrival_ids[i - i % 3] for i in range(len(arrival_ids)))


async def test_slow_receiver_does_not_delay_the_call(relais_factory, sinks, room_name):
    # The receiver holds every request until released: the room's events queue up.
    gate = asyncio.Event()
    sink = await sinks(gate=gate)
    server = relais_factory(webhook_config(sink, close_after=5))
    bob = await join(server, "bob", room_name)
    alice = await join(server, "alice", room_name)
    try:
        await wait_for(lambda: "alice" in bob.remote_participants, "bob to see alice", 10)
        got: list[bytes] = []
        bob.on("data_received", lambda packet: got.append(packet.data))
        for i in range(5):
            await alice.local_participant.publish_data(f"m{i}".encode(), reliable=True)
        await wait_for(lambda: len(got) == 5, "bob to receive alice's data", 10)
        # Signalling and data went on while the first delivery was still held.
        assert len(sink.deliveries) == 1, [d.event.event for d in sink.deliveries]
        assert sink.deliveries[0].event.event == "room_started"
        assert sink.answered == [], "the receiver was not holding the delivery"
    finally:
        gate.set()
        await asyncio.wait_for(alice.disconnect(), 10)
        await asyncio.wait_for(bob.disconnect(), 10)
    # Released, everything arrives, in order.
    await wait_names(
        sink,
        room_name,
        [
            "room_started",
            "participant_joined",
            "participant_joined",
            "participant_left",
            "participant_left",
            "room_finished",
        ],
        timeout=20,
    )
    sink.check_all_verified()


def test_webhook_api_key_must_be_a_configured_key(tmp_path):
    """`webhook.api_key` not among `keys`: the server refuses to start, naming the key."""
    import subprocess

    from conftest import RelaisServer, relais_bin, to_yaml

    server = RelaisServer(
        tmp_path,
        {"webhook": {"api_key": "nokey", "urls": ["http://127.0.0.1:9/hook"]}},
    )
    server.config_path.write_text(to_yaml(server.config) + "\n")
    p = subprocess.run(
        [str(relais_bin()), "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert "webhook.api_key" in out, out
    assert API_SECRET not in out
