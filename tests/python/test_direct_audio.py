"""Direct audio egress (`rtc.direct_audio`): Relais protects and sends forwarded audio
itself, without str0m's drive of the subscriber session, and writes those streams'
sender reports. The real SDK must decode the tone as it does through str0m, over UDP
and over ICE-TCP, with the video (still through str0m) beside it.
"""

from __future__ import annotations

import uuid

import pytest

from conftest import TCP_ONLY, deep_merge
from test_call import check_tone_and_picture, join_pair, send_tone_and_picture
from test_observability import Scraper, start_with_metrics

DIRECT = {"rtc": {"direct_audio": True}}


@pytest.fixture
def room_name() -> str:
    return f"direct-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_audio_sent_directly_is_decoded(relais_factory, rooms, room_name, transport):
    config = deep_merge(DIRECT, TCP_ONLY) if transport == "tcp" else DIRECT
    server, port = start_with_metrics(relais_factory, config)
    metrics = Scraper(port)
    alice, bob = await join_pair(server, rooms, room_name)
    tone, frames = await send_tone_and_picture(alice, bob)
    check_tone_and_picture(tone, frames)
    # 1 s of 20 ms Opus frames at least went out directly.
    direct = await metrics.wait(
        "audio packets sent directly",
        "relais_direct_egress_packets_total",
        lambda v: v >= 50,
    )
    print(f"{transport}: {direct:.0f} audio packets sent directly")


async def test_without_it_nothing_is_sent_directly(relais_factory, rooms, room_name):
    server, port = start_with_metrics(relais_factory)
    metrics = Scraper(port)
    alice, bob = await join_pair(server, rooms, room_name)
    tone, frames = await send_tone_and_picture(alice, bob)
    check_tone_and_picture(tone, frames)
    assert metrics.value("relais_direct_egress_packets_total") == 0
