"""Direct ingress (`rtc.direct_ingress`, on by default): once str0m has shown Relais a
publisher's stream, Relais opens that stream's packets itself, forwards them, and sends
the publisher its NACKs and receiver reports (whose reference times give the round trip). The real SDK's tone and picture must be
decoded as they are through str0m, over UDP and over ICE-TCP; with the option off,
nothing is opened directly.
"""

from __future__ import annotations

import uuid

import pytest

from conftest import TCP_ONLY
from test_call import check_tone_and_picture, join_pair, send_tone_and_picture
from test_observability import Scraper, start_with_metrics

METRIC = "relais_direct_ingress_packets_total"


@pytest.fixture
def room_name() -> str:
    return f"ingress-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_media_read_directly_is_decoded(relais_factory, rooms, room_name, transport):
    server, port = start_with_metrics(relais_factory, TCP_ONLY if transport == "tcp" else {})
    metrics = Scraper(port)
    alice, bob = await join_pair(server, rooms, room_name)
    tone, frames = await send_tone_and_picture(alice, bob)
    check_tone_and_picture(tone, frames)
    # 1 s of 20 ms Opus frames at least was read directly, and every decoded frame
    # was at least one video packet.
    audio = await metrics.wait("audio read directly", METRIC, lambda v: v >= 50, kind="AUDIO")
    video = await metrics.wait(
        "video read directly", METRIC, lambda v: v >= len(frames), kind="VIDEO"
    )
    # The publisher answers the reference times sent with Relais's receiver reports:
    # the round trip to it is measured (samples every 5 s, per stream).
    await metrics.wait(
        "publisher round trips",
        "livekit_rtt_ms_count",
        lambda v: v > 0,
        timeout=20,
        direction="incoming",
    )
    print(f"{transport}: {audio:.0f} audio, {video:.0f} video packets read directly")


async def test_without_it_nothing_is_read_directly(relais_factory, rooms, room_name):
    server, port = start_with_metrics(relais_factory, {"rtc": {"direct_ingress": False}})
    metrics = Scraper(port)
    alice, bob = await join_pair(server, rooms, room_name)
    tone, frames = await send_tone_and_picture(alice, bob)
    check_tone_and_picture(tone, frames)
    assert metrics.value(METRIC) == 0
