"""Many nodes, one Redis: three real `relais` processes against one real `redis-server`.

- Two Python-SDK participants joining through *different* nodes meet in one room and
  hear each other's audio (the non-owner node relays the signal connection; media goes
  straight to the owner). RoomService through the third node lists the room and reaches
  the owner (ListParticipants, RemoveParticipant).
- The gRPC face (a real `grpcio` client with LiveKit's own protobuf classes) acts on the
  whole cluster too, through a node that does not host the room.
- kill -9 of the room's owner: within 10 s new joins land on a live node and media flows.
- Redis stopped and restarted mid-call: audio keeps flowing, the owner keeps serving its
  room, and every node re-registers and re-claims its rooms on its own.
- One node cut off from Redis alone (through a TCP proxy the test cuts): its room is
  placed again elsewhere for a newcomer; when the node reaches Redis again it sees the
  room owned by a live node and moves its participants there (`leave{MIGRATION,
  RECONNECT}`), so the room ends up on one node with everyone in it.
- SIGTERM drains: no new rooms on the draining node, its room runs until the deadline,
  then the process exits 0.

One redis-server per module (free port, no persistence), stopped in teardown; each test
uses its own key prefix and stops every relais it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from livekit import api, rtc

from media import play_sine
from conftest import (
    API_KEY,
    API_SECRET,
    EventLog,
    RelaisServer,
    _LIVE_SERVERS,
    bounded,
    connect,
    free_tcp_port,
    make_token,
    wait_for,
)

SAMPLE_RATE = 48000
HEARTBEAT_MS = 500
TTL_MS = 3000

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


# --------------------------------------------------------------------------- redis


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_tcp_port()

    def start(self) -> "RedisServer":
        subprocess.run(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli("ping") == "PONG":
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.cli("shutdown", "nosave")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.cli("ping") == "PONG":
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        p = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return p.stdout.strip()


class TcpProxy:
    """Forwards a local port to Redis; `cut()` drops every connection and refuses new
    ones (one node losing Redis alone), `restore()` accepts again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_tcp_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def restore(self) -> "TcpProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


# --------------------------------------------------------------------------- nodes


class Cluster:
    def __init__(self, redis: RedisServer, workdir: Path) -> None:
        self.redis = redis
        self.workdir = workdir
        self.prefix = f"t{uuid.uuid4().hex[:8]}:"
        self.nodes: list[RelaisServer] = []
        self.killed: list[RelaisServer] = []

    def start(self, name: str, **extra) -> RelaisServer:
        config = {
            "redis": {"address": f"127.0.0.1:{self.redis.port}"},
            "cluster": {
                "node_id": name,
                "key_prefix": self.prefix,
                "heartbeat_interval_ms": HEARTBEAT_MS,
                "node_ttl_ms": TTL_MS,
                "room_ttl_ms": TTL_MS,
            },
            "room": {"empty_timeout": 5, "departure_timeout": 2},
        }
        config.update(extra)
        server = RelaisServer(self.workdir, config, name=name).start()
        self.nodes.append(server)
        return server

    def by_id(self, node_id: str) -> RelaisServer:
        return next(n for n in self.nodes if n.name == node_id)

    def owner(self, room: str) -> str:
        return self.redis.cli("get", f"{self.prefix}room:{room}")

    def record(self, node_id: str) -> dict:
        raw = self.redis.cli("get", f"{self.prefix}node:{node_id}")
        return json.loads(raw) if raw else {}

    def registered(self) -> set[str]:
        return set(self.redis.cli("zrange", f"{self.prefix}nodes", "0", "-1").split())

    def kill(self, server: RelaisServer) -> None:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        server.killed = True
        self.killed.append(server)
        if server in _LIVE_SERVERS:
            _LIVE_SERVERS.remove(server)

    def teardown(self) -> None:
        problems = []
        for server in self.nodes:
            if server in self.killed or (
                server.proc
                and server.proc.poll() is not None
                and getattr(server, "drained", False)
            ):
                if "panicked" in server.log_text():
                    problems.append(f"{server.name} log contains 'panicked'")
                continue
            try:
                server.stop_and_check()
            except BaseException as e:  # noqa: BLE001 - report every server
                problems.append(str(e))
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def cluster(redis, tmp_path):
    c = Cluster(redis, tmp_path)
    yield c
    c.teardown()


@pytest.fixture
def three(cluster):
    nodes = [cluster.start(n) for n in ("node-a", "node-b", "node-c")]
    # Everyone sees everyone before the test places rooms.
    deadline = time.monotonic() + 10
    while cluster.registered() != {"node-a", "node-b", "node-c"}:
        assert time.monotonic() < deadline, f"registry: {cluster.registered()}"
        time.sleep(0.1)
    time.sleep(2 * HEARTBEAT_MS / 1000)
    return nodes


class Participants:
    def __init__(self) -> None:
        self.rooms: list[rtc.Room] = []
        self.tasks: list[asyncio.Task] = []

    async def join(
        self, server: RelaisServer, identity: str, room: str, timeout=15
    ) -> rtc.Room:
        r = await connect(server.url, make_token(identity, room), timeout=timeout)
        self.rooms.append(r)
        return r

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for r in self.rooms:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(r.disconnect(), 5)


@pytest.fixture
async def people():
    p = Participants()
    yield p
    await p.close()


# --------------------------------------------------------------------------- media


class Ear:
    """Counts audible audio frames of every audio track a room subscribes to."""

    def __init__(self, room: rtc.Room, people: Participants) -> None:
        self.audible = 0
        self.people = people
        room.on("track_subscribed", self._on_track)
        for p in room.remote_participants.values():
            for pub in p.track_publications.values():
                if pub.track is not None and pub.kind == rtc.TrackKind.KIND_AUDIO:
                    self._on_track(pub.track, pub, p)

    def _on_track(self, track, publication, participant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self.people.tasks.append(asyncio.create_task(self._listen(track)))

    async def _listen(self, track) -> None:
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        try:
            async for event in stream:
                data = np.frombuffer(event.frame.data, dtype=np.int16).astype(
                    np.float64
                )
                if data.size and np.sqrt(np.mean(data**2)) > 300:
                    self.audible += 1
        finally:
            with contextlib.suppress(BaseException):
                await stream.aclose()

    async def hears(self, frames: int, what: str, timeout: float = 15) -> None:
        target = self.audible + frames
        await wait_for(lambda: self.audible >= target, what, timeout)


async def publish_tone(room: rtc.Room, people: Participants) -> asyncio.Event:
    stop = asyncio.Event()
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    people.tasks.append(asyncio.create_task(play_sine(source, stop)))
    track = rtc.LocalAudioTrack.create_audio_track("tone", source)
    await bounded(
        room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        ),
        "publish audio",
        20,
    )
    return stop


async def call(people, via_a, via_b, room_name, alice="alice", bob="bob"):
    """Alice joins through `via_a`, Bob through `via_b`; Alice's tone reaches Bob."""
    a = await people.join(via_a, alice, room_name)
    b = await people.join(via_b, bob, room_name)
    await wait_for(lambda: bob in a.remote_participants, f"{alice} sees {bob}", 10)
    await wait_for(lambda: alice in b.remote_participants, f"{bob} sees {alice}", 10)
    ear = Ear(b, people)
    await publish_tone(a, people)
    await ear.hears(50, f"{bob} hears {alice}'s audio")
    return a, b, ear


def twirp_json(server: RelaisServer, method: str, body: dict, token: str) -> dict:
    req = urllib.request.Request(
        f"{server.http_url}/twirp/livekit.RoomService/{method}",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def grpc_call(server: RelaisServer, method: str, request, reply_type, token: str):
    """One unary call of `livekit.RoomService` over gRPC (h2c) on the node's main port."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary(
            f"/livekit.RoomService/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reply_type.FromString,
        )
        return call(request, metadata=[("authorization", f"Bearer {token}")], timeout=10)


def other_than(nodes, *names):
    return [n for n in nodes if n.name not in names]


# --------------------------------------------------------------------------- tests


async def test_participants_on_different_nodes_meet_and_hear_each_other(
    cluster, three, people
):
    a, b, c = three
    room = f"meet-{uuid.uuid4().hex[:6]}"
    alice, bob, ear = await call(people, a, b, room)
    owner = cluster.owner(room)
    assert owner in {"node-a", "node-b", "node-c"}, owner
    # Exactly one node hosts the room; the other entry node relayed its client.
    relayed = [n for n in (a, b) if n.name != owner]
    assert relayed, "both clients joined the owner directly?"
    for n in relayed:
        assert "relaying signal connection" in n.log_text(), n.name

    # The owner's registry record carries its load: rooms, participants, the
    # published audio track, and the media bytes/s flowing through it.
    seen = {}

    def loaded():
        stats = seen["stats"] = cluster.record(owner).get("stats", {})
        return (
            stats.get("rooms", 0) >= 1
            and stats.get("participants", 0) >= 2
            and stats.get("tracks", 0) >= 1
            and stats.get("bytes_in_per_sec", 0) > 1000
            and stats.get("bytes_out_per_sec", 0) > 1000
        ) and stats

    try:
        stats = await wait_for(loaded, "owner's record shows its load", 15)
    except BaseException:
        print(f"owner {owner}: last record seen {seen}")
        raise
    print(f"owner {owner} stats: {stats}")

    # RoomService through the third node acts on the whole cluster.
    async with api.LiveKitAPI(c.http_url, API_KEY, API_SECRET) as lk:
        listed = await lk.room.list_rooms(api.ListRoomsRequest())
        names = {r.name: r for r in listed.rooms}
        assert room in names, f"ListRooms through {c.name}: {list(names)}"
        assert names[room].num_participants == 2
        parts = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        assert {p.identity for p in parts.participants} == {"alice", "bob"}
        # The JSON face (what the Node server SDK speaks) is merged and forwarded too.
        token = make_token("admin", room, room_list=True, room_admin=True)
        rooms_json = twirp_json(c, "ListRooms", {}, token)
        assert room in {r["name"] for r in rooms_json.get("rooms", [])}, rooms_json
        parts_json = twirp_json(c, "ListParticipants", {"room": room}, token)
        assert {p["identity"] for p in parts_json["participants"]} == {"alice", "bob"}
        gone = EventLog(alice, "participant_disconnected")
        await lk.room.remove_participant(
            api.RoomParticipantIdentity(room=room, identity="bob")
        )
        await gone.wait(lambda p: p.identity == "bob", 10, "alice sees bob removed")


async def test_grpc_room_service_through_a_node_without_the_room(
    cluster, three, people
):
    import grpc
    from livekit.protocol import models as proto_models
    from livekit.protocol import room as proto_room

    a, b, c = three
    room = f"grpc-{uuid.uuid4().hex[:6]}"
    alice, bob, ear = await call(people, a, a, room)
    owner = cluster.owner(room)
    via = other_than(three, owner)[0]
    token = make_token("admin", room, room_list=True, room_admin=True)

    def over_grpc(method, request, reply_type):
        return asyncio.to_thread(grpc_call, via, method, request, reply_type, token)

    listed = await over_grpc("ListRooms", proto_room.ListRoomsRequest(), proto_room.ListRoomsResponse)
    rooms = {r.name: r for r in listed.rooms}
    assert room in rooms and rooms[room].num_participants == 2, (via.name, list(rooms))
    parts = await over_grpc(
        "ListParticipants",
        proto_room.ListParticipantsRequest(room=room),
        proto_room.ListParticipantsResponse,
    )
    assert {p.identity for p in parts.participants} == {"alice", "bob"}

    # Effects reach the owner's participants: data, metadata, removal.
    at_bob = EventLog(bob, "data_received")
    for i in range(20):
        await over_grpc(
            "SendData",
            proto_room.SendDataRequest(
                room=room, data=f"via grpc {i}".encode(), topic="grpc",
                kind=proto_models.DataPacket.Kind.RELIABLE, destination_identities=["bob"],
            ),
            proto_room.SendDataResponse,
        )
        if at_bob.first(lambda p: p.data.startswith(b"via grpc")):
            break
        await asyncio.sleep(0.25)
    (packet,) = await at_bob.wait(lambda p: p.data.startswith(b"via grpc"), 5, "bob gets data")
    assert packet.topic == "grpc"
    updated = await over_grpc(
        "UpdateRoomMetadata",
        proto_room.UpdateRoomMetadataRequest(room=room, metadata="set over grpc"),
        proto_models.Room,
    )
    assert updated.metadata == "set over grpc"
    await wait_for(lambda: alice.metadata == "set over grpc", "alice sees the metadata", 10)

    # Errors keep their gRPC codes across nodes.
    with pytest.raises(grpc.RpcError) as missing:
        await over_grpc(
            "GetParticipant",
            proto_room.RoomParticipantIdentity(room=room, identity="nobody"),
            proto_models.ParticipantInfo,
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND, missing.value
    list_only = make_token("lister", room, room_list=True)
    with pytest.raises(grpc.RpcError) as denied:
        await asyncio.to_thread(
            grpc_call, via, "RemoveParticipant",
            proto_room.RoomParticipantIdentity(room=room, identity="bob"),
            proto_room.RemoveParticipantResponse, list_only,
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, denied.value

    gone = EventLog(alice, "participant_disconnected")
    await over_grpc(
        "RemoveParticipant",
        proto_room.RoomParticipantIdentity(room=room, identity="bob"),
        proto_room.RemoveParticipantResponse,
    )
    await gone.wait(lambda p: p.identity == "bob", 10, "alice sees bob removed over grpc")
    assert "forwarding RoomService call to the room's node" in via.log_text()


async def test_owner_killed_room_moves_to_a_live_node(cluster, three, people):
    a, b, c = three
    room = f"kill-{uuid.uuid4().hex[:6]}"
    await call(people, a, b, room)
    owner = cluster.owner(room)
    victim = cluster.by_id(owner)
    survivors = other_than(three, owner)
    cluster.kill(victim)
    killed_at = time.monotonic()
    # Rejoin through the survivors until the room is placed on a live node.
    joined = None
    while joined is None:
        assert time.monotonic() - killed_at < 10, (
            "no live node took the room within 10 s"
        )
        try:
            joined = await people.join(survivors[0], "alice2", room, timeout=5)
        except Exception:  # noqa: BLE001 - refused while the owner's record lives
            await asyncio.sleep(0.25)
    took = time.monotonic() - killed_at
    new_owner = cluster.owner(room)
    assert new_owner in {s.name for s in survivors}, new_owner
    # Its record expired (that freed the room); the registry index is pruned by the
    # survivors' next heartbeat, which may come a moment after the join.
    await wait_for(
        lambda: victim.name not in cluster.registered(),
        "the dead node leaves the registry",
        max(0.5, 10 - (time.monotonic() - killed_at)),
    )
    print(f"room re-placed on {new_owner} {took:.1f} s after kill -9 of {owner}")
    bob2 = await people.join(survivors[1], "bob2", room)
    await wait_for(lambda: "alice2" in bob2.remote_participants, "bob2 sees alice2", 10)
    ear = Ear(bob2, people)
    await publish_tone(joined, people)
    await ear.hears(50, "bob2 hears alice2 on the new owner")


async def test_redis_restart_mid_call_keeps_media_and_recovers(cluster, three, people):
    a, b, c = three
    room = f"outage-{uuid.uuid4().hex[:6]}"
    alice, bob, ear = await call(people, a, b, room)
    owner = cluster.owner(room)
    owner_node = cluster.by_id(owner)
    non_owner = other_than(three, owner)[0]

    cluster.redis.stop()
    try:
        await ear.hears(150, "audio keeps flowing with Redis down", 10)
        # The owner keeps taking participants into its own room.
        carol = await people.join(owner_node, "carol", room)
        await wait_for(
            lambda: "alice" in carol.remote_participants, "carol sees alice", 10
        )
        # A node that does not host the room cannot place it: refused, fast.
        started = time.monotonic()
        with pytest.raises(Exception):
            await people.join(non_owner, "dave", room, timeout=8)
        assert time.monotonic() - started < 8
        await asyncio.sleep(3 * TTL_MS / 1000)  # longer than every TTL
        await ear.hears(100, "audio still flows after every TTL passed", 10)
    finally:
        cluster.redis.start()
    # Every node re-registers and the owner re-claims its room, on their own.
    await wait_for(
        lambda: cluster.registered() == {"node-a", "node-b", "node-c"},
        "re-registration",
        10,
    )
    await wait_for(lambda: cluster.owner(room) == owner, "owner re-claims its room", 10)
    await ear.hears(50, "audio flows after Redis returned")
    erin = await people.join(non_owner, "erin", room)
    await wait_for(
        lambda: "alice" in erin.remote_participants, "erin lands in the same room", 10
    )
    for n in three:
        assert "Redis reachable again" in n.log_text(), n.name


async def test_node_partitioned_from_redis_hands_its_room_to_the_new_owner(
    cluster, people
):
    proxy = TcpProxy(cluster.redis.port).restore()
    try:
        # node-b reaches Redis through the proxy; alone when the room is placed, it hosts it.
        b = cluster.start("node-b", redis={"address": f"127.0.0.1:{proxy.port}"})
        room = f"split-{uuid.uuid4().hex[:6]}"
        alice, bob, ear = await call(people, b, b, room)
        assert cluster.owner(room) == "node-b"
        a = cluster.start("node-a")
        await wait_for(
            lambda: cluster.registered() == {"node-a", "node-b"}, "node-a registers", 10
        )

        proxy.cut()
        # node-b's record and claim run out; the call on node-b goes on meanwhile.
        await wait_for(
            lambda: cluster.registered() == {"node-a"}, "node-b expires", 3 * TTL_MS / 1000
        )
        await wait_for(lambda: cluster.owner(room) == "", "node-b's claim expires", 10)
        await ear.hears(50, "audio keeps flowing on the cut-off node")
        # A newcomer through node-a: the room is placed again, on node-a (a split).
        carol = await people.join(a, "carol", room)
        assert cluster.owner(room) == "node-a"
        assert "alice" not in carol.remote_participants

        proxy.restore()
        # node-b is back, finds its room owned by node-a and moves alice and bob there.
        await wait_for(
            lambda: {"alice", "bob"} <= set(carol.remote_participants),
            "carol sees alice and bob after the merge",
            20,
        )
        assert "participants moved there" in b.log_text()
        assert cluster.owner(room) == "node-a"
        carol_ear = Ear(carol, people)
        await carol_ear.hears(50, "carol hears alice's tone after the merge", 20)
        async with api.LiveKitAPI(a.http_url, API_KEY, API_SECRET) as lk:
            listed = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
            assert [r.num_participants for r in listed.rooms] == [3], listed
    finally:
        proxy.cut()


async def test_sigterm_drains_until_deadline_then_exits_0(cluster, people):
    deadline_s = 4
    a = cluster.start("node-a", drain_timeout=deadline_s)
    room = f"drain-{uuid.uuid4().hex[:6]}"
    # node-a is alone when the room is placed, so it hosts it.
    alice, bob, ear = await call(people, a, a, room)
    assert cluster.owner(room) == "node-a"
    cluster.start("node-b")
    await wait_for(
        lambda: cluster.registered() == {"node-a", "node-b"}, "node-b registers", 10
    )
    await asyncio.sleep(2 * HEARTBEAT_MS / 1000)

    a.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    a.drained = True
    # Still serving its room while draining.
    await ear.hears(100, "audio flows while node-a drains", deadline_s)
    assert a.alive(), "node-a exited before its deadline with participants present"
    # No new rooms on node-a: a new room asked of node-a lands on node-b.
    other = f"drain-new-{uuid.uuid4().hex[:6]}"
    zed = await people.join(a, "zed", other)
    assert zed.connection_state == rtc.ConnectionState.CONN_CONNECTED
    assert cluster.owner(other) == "node-b"
    # Then it exits 0 by itself shortly after the deadline.
    code = await asyncio.to_thread(a.proc.wait, deadline_s + 10)
    took = time.monotonic() - signalled
    assert code == 0, f"exit code {code}"
    assert deadline_s - 0.5 <= took <= deadline_s + 8, took
    assert "node-a" not in cluster.registered()
    if a in _LIVE_SERVERS:
        _LIVE_SERVERS.remove(a)


def test_cluster_config_is_checked_and_redis_password_never_printed(tmp_path):
    """`cluster:` values are validated by name; the Redis password stays out of output."""
    from conftest import relais_bin

    def check(text: str) -> subprocess.CompletedProcess:
        path = tmp_path / "relais.yaml"
        path.write_text(text)
        return subprocess.run(
            [str(relais_bin()), "--config", str(path), "check-config"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    base = (
        "keys: {devkey: secretsecretsecretsecretsecretsecret}\nrtc: {udp_port: 7882}\n"
    )
    good = check(
        base + "redis: {address: '127.0.0.1:1', password: hunter2-secret}\n"
        "cluster: {node_id: n1, node_selector: {sort_by: participants}, limits: {max_rooms: 5}}\n"
    )
    assert good.returncode == 0, good.stderr
    assert "hunter2-secret" not in good.stdout + good.stderr
    assert (
        '"sort_by": "participants"' in good.stdout
        or '"sort_by":"participants"' in good.stdout
    )
    bad = check(base + "cluster: {heartbeat_interval_ms: 10}\n")
    assert bad.returncode == 2 and "cluster.heartbeat_interval_ms" in bad.stderr, (
        bad.stderr
    )
    bad = check(base + "cluster: {node_selector: {sort_by: fastest}}\n")
    assert bad.returncode == 2 and "cluster.node_selector.sort_by" in bad.stderr, (
        bad.stderr
    )


async def test_redis_round_trips_and_errors_are_measured(cluster):
    from conftest import free_tcp_port
    from test_observability import Scraper

    port = free_tcp_port()
    node = cluster.start("metered", prometheus={"port": port})
    scraper = Scraper(port)
    await scraper.wait(
        "heartbeat round trips recorded",
        "relais_redis_rtt_ms_count",
        lambda v: v >= 2,
        op="heartbeat",
    )
    assert scraper.value("relais_redis_errors_total") == 0
    cluster.redis.stop()
    try:
        await scraper.wait(
            "failed heartbeats counted while Redis is down",
            "relais_redis_errors_total",
            lambda v: v >= 1,
            op="heartbeat",
        )
        assert node.alive()
    finally:
        cluster.redis.start()
