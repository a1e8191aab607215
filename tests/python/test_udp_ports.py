"""`rtc.udp_port` as a range: one shard per port, each reading its own socket.

Two rooms open at once go to different shards: in each, Alice's tone and picture reach
Bob, and their peer connections talk to the port of their room's shard only (the remote
ICE candidates the SDK reports), so the two rooms' media never share a socket. The same
over ICE-TCP, whose frames reach such a shard through its queue and doorbell.
"""

from __future__ import annotations

import socket
import uuid

from conftest import bounded
from test_call import check_tone_and_picture, join_pair, send_tone_and_picture

SHARDS = 2


def free_udp_ports(count: int) -> int:
    """The first of `count` consecutive free loopback UDP ports."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            if base + count > 65535:
                continue
            others = []
            try:
                for port in range(base + 1, base + count):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    others.append(s)
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            finally:
                for s in others:
                    s.close()
            return base
    raise RuntimeError(f"no {count} consecutive free UDP ports")


def shard_of(room: str) -> int:
    """The server's room placement before the room directory: FNV-1a of the name,
    modulo the shard count (kept to pick names that used to collide)."""
    h = 0xCBF29CE484222325
    for b in room.encode():
        h = ((h ^ b) * 0x100000001B3) % (1 << 64)
    return h % SHARDS


def room_on_shard(shard: int) -> str:
    while True:
        name = f"ports-{uuid.uuid4().hex[:8]}"
        if shard_of(name) == shard:
            return name


async def server_ports(room) -> set[int]:
    """The server's UDP ports among the ICE candidates of `room`'s peer connections."""
    stats = await bounded(room.get_rtc_stats(), "rtc stats", 10)
    ports = set()
    for s in stats.publisher_stats + stats.subscriber_stats:
        if s.HasField("remote_candidate"):
            candidate = s.remote_candidate.candidate
            if candidate.protocol == "udp":
                ports.add(candidate.port)
    return ports


async def test_each_shard_has_its_own_port(relais_factory, rooms):
    """Rooms open at once are spread over the shards, whatever their names: two rooms
    whose names hash alike (the placement before the room directory) land on the two
    shards, and each room's media uses its shard's port only."""
    first = free_udp_ports(SHARDS)
    relais = relais_factory({"rtc": {"udp_port": f"{first}-{first + SHARDS - 1}"}})
    used = []
    for _ in range(SHARDS):
        alice, bob = await join_pair(relais, rooms, room_on_shard(0))
        tone, frames = await send_tone_and_picture(alice, bob)
        check_tone_and_picture(tone, frames)
        ports = await server_ports(alice) | await server_ports(bob)
        assert len(ports) == 1, f"one room's media uses ports {ports}"
        used.append(ports.pop())
    assert sorted(used) == [first + s for s in range(SHARDS)], (
        f"rooms open at once share a shard: ports {used}"
    )


async def test_ice_tcp_reaches_shards_that_read_their_own_port(relais_factory, rooms):
    """ICE-TCP frames are queued for the shard and ring its doorbell (it sleeps on its
    UDP socket, which carries nothing here)."""
    first = free_udp_ports(SHARDS)
    relais = relais_factory(
        {"rtc": {"udp_port": f"{first}-{first + SHARDS - 1}", "tcp_only": True}}
    )
    for _ in range(SHARDS):
        alice, bob = await join_pair(relais, rooms, room_on_shard(0))
        tone, frames = await send_tone_and_picture(alice, bob)
        check_tone_and_picture(tone, frames)
        assert await server_ports(bob) == set(), "no UDP candidate is advertised"
