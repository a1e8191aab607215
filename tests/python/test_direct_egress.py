"""Direct egress (`rtc.direct_audio`, `rtc.direct_video`, both on by default): Relais
protects and sends forwarded media itself, without str0m's drive of the subscriber
session, and writes those streams' sender reports (and, for video, answers NACKs with
RTX). The real SDK must decode the tone and the picture as it does through str0m, over
UDP and over ICE-TCP; and with both options off, nothing is sent directly.
"""

from __future__ import annotations

import uuid

import pytest

from conftest import TCP_ONLY, deep_merge
from test_call import check_tone_and_picture, join_pair, send_tone_and_picture
from test_observability import Scraper, start_with_metrics

AUDIO = {"rtc": {"direct_audio": True, "direct_video": False}}
AUDIO_AND_VIDEO = {"rtc": {"direct_audio": True, "direct_video": True}}
NEITHER = {"rtc": {"direct_audio": False, "direct_video": False}}
METRIC = "relais_direct_egress_packets_total"


@pytest.fixture
def room_name() -> str:
    return f"direct-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("kinds", ["audio", "audio+video"])
async def test_media_sent_directly_is_decoded(
    relais_factory, rooms, room_name, transport, kinds
):
    direct = AUDIO if kinds == "audio" else AUDIO_AND_VIDEO
    config = deep_merge(direct, TCP_ONLY) if transport == "tcp" else direct
    server, port = start_with_metrics(relais_factory, config)
    metrics = Scraper(port)
    alice, bob = await join_pair(server, rooms, room_name)
    tone, frames = await send_tone_and_picture(alice, bob)
    check_tone_and_picture(tone, frames)
    # 1 s of 20 ms Opus frames at least went out directly; video too, if asked for
    # (every decoded frame was at least one packet), and only then.
    audio = await metrics.wait(
        "audio packets sent directly", METRIC, lambda v: v >= 50, kind="AUDIO"
    )
    if kinds == "audio":
        video = metrics.value(METRIC, kind="VIDEO")
        assert video == 0, video
    else:
        video = await metrics.wait(
            "video packets sent directly",
            METRIC,
            lambda v: v >= len(frames),
            kind="VIDEO",
        )
    print(f"{transport}, {kinds}: {audio:.0f} audio, {video:.0f} video packets sent directly")


async def test_without_it_nothing_is_sent_directly(relais_factory, rooms, room_name):
    server, port = start_with_metrics(relais_factory, NEITHER)
    metrics = Scraper(port)
    alice, bob = await join_pair(server, rooms, room_name)
    tone, frames = await send_tone_and_picture(alice, bob)
    check_tone_and_picture(tone, frames)
    assert metrics.value(METRIC) == 0
