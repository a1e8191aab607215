"""ICE over TCP: passive TCP host candidates, RFC 4571 framing on `rtc.tcp_port`.

With `rtc.tcp_only` the server advertises its TCP candidate and no UDP one, so the
Python SDK's libwebrtc can only reach it by connecting to the TCP port: the call
below proves media (tone and picture, both directions of ICE/DTLS/SRTP) flows over
TCP, and the UDP socket receives nothing. The second test throws garbage at the TCP
port first: every bad connection is closed within seconds, and a call still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import uuid

import pytest

from conftest import TCP_ONLY, wait_for
from test_call import check_tone_and_picture, join_pair, send_tone_and_picture
from test_observability import Scraper, start_with_metrics

# The server closes a connection that sent no STUN request within 3 s.
CLOSE_WITHIN_S = 6.0


@pytest.fixture
def room_name() -> str:
    return f"tcp-{uuid.uuid4().hex[:8]}"


async def call_over_tcp(server, rooms, room_name, metrics: Scraper) -> None:
    alice, bob = await join_pair(server, rooms, room_name)
    tone, frames = await send_tone_and_picture(alice, bob)
    check_tone_and_picture(tone, frames)
    # Alice's publisher and Bob's subscriber connection at least, all over TCP.
    assert metrics.value("relais_ice_tcp_connections_total") >= 2
    assert metrics.value("relais_ice_tcp_open_connections") >= 2
    assert metrics.value("relais_udp_datagrams_received_total") == 0


async def test_call_over_tcp_only(relais_factory, rooms, room_name):
    server, port = start_with_metrics(relais_factory, TCP_ONLY)
    await call_over_tcp(server, rooms, room_name, Scraper(port))


def stun_request(username: str) -> bytes:
    """A STUN binding request with only a USERNAME (no integrity: ours never answer it)."""
    name = username.encode()
    attr = struct.pack("!HH", 0x0006, len(name)) + name + b"\0" * (-len(name) % 4)
    return struct.pack("!HHI", 0x0001, len(attr), 0x2112A442) + os.urandom(12) + attr


def framed(packet: bytes) -> bytes:
    return struct.pack("!H", len(packet)) + packet


async def closed_by_server(port: int, send: bytes) -> float:
    """Connect, send `send`, and return how long the server took to close."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    try:
        writer.write(send)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(4096), CLOSE_WITHIN_S):
                pass  # the server never answers garbage, but read until EOF anyway
        return loop.time() - started
    finally:
        writer.close()
        with contextlib.suppress(BaseException):
            await writer.wait_closed()


async def test_garbage_on_the_tcp_port_is_shed(relais_factory, rooms, room_name):
    server, port = start_with_metrics(relais_factory, TCP_ONLY)
    metrics = Scraper(port)
    tcp = server.config["rtc"]["tcp_port"]

    cases = {
        "silent": b"",
        "not stun": framed(os.urandom(40)),
        "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "oversized frame": b"\xff\xff" + os.urandom(100),
        "half a frame": b"\x00\x64" + os.urandom(10),
        "half a length": b"\x00",
    }
    took = await asyncio.gather(*(closed_by_server(tcp, b) for b in cases.values()))
    for (case, _), seconds in zip(cases.items(), took):
        assert seconds < CLOSE_WITHIN_S, f"{case}: closed after {seconds:.1f} s"

    # A STUN request for a session that does not exist, then garbage frames: the
    # connection is routed to a shard, which drops every frame.
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp)
    writer.write(framed(stun_request("00nosuchsession:remote")))
    for _ in range(200):
        writer.write(framed(os.urandom(300)))
    await writer.drain()
    # A burst of connections that close at once.
    bursts = [await asyncio.open_connection("127.0.0.1", tcp) for _ in range(50)]
    for _, w in bursts:
        w.close()
    writer.close()

    await wait_for(
        lambda: metrics.value("relais_ice_tcp_closed_total", reason="no_stun") >= 4,
        "silent, not-STUN and truncated connections counted",
        10,
    )
    assert metrics.value("relais_ice_tcp_closed_total", reason="frame_too_large") >= 2
    assert server.alive()

    await call_over_tcp(server, rooms, room_name, metrics)
    assert server.alive()
