"""Direct egress (`rtc.direct_audio`, `rtc.direct_video`, both on by default): Relais
protects and sends forwarded media itself, without str0m's drive of the subscriber
session, and writes those streams' sender reports (and, for video, answers NACKs with
RTX). The real SDK must decode the tone and the picture as it does through str0m, over
UDP and over ICE-TCP; and with both options off, nothing is sent directly.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from livekit import rtc

from conftest import TCP_ONLY, EventLog, bounded, deep_merge
from media import stop_players
from test_call import (
    FPS,
    HEIGHT,
    WIDTH,
    check_tone_and_picture,
    join_pair,
    publish_camera,
    send_tone_and_picture,
    synthetic_picture,
)
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


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "str0m"])
async def test_a_rotated_camera_arrives_rotated(relais_factory, rooms, room_name, direct):
    """A phone held sideways: Alice's frames are captured with a 90° rotation, which the
    encoder sends as the video orientation header extension; Bob's SDK must report the
    rotation on the frames it decodes, whether Relais or str0m wrote the extension."""
    server = relais_factory(AUDIO_AND_VIDEO if direct else NEITHER)
    alice, bob = await join_pair(server, rooms, room_name)
    subscribed = EventLog(bob, "track_subscribed")  # (track, publication, participant)
    stop = asyncio.Event()
    source = rtc.VideoSource(WIDTH, HEIGHT)

    async def play_rotated() -> None:
        while not stop.is_set():
            frame = rtc.VideoFrame(
                WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, synthetic_picture(0).tobytes()
            )
            source.capture_frame(frame, rotation=rtc.VideoRotation.VIDEO_ROTATION_90)
            await asyncio.sleep(1 / FPS)

    player = asyncio.create_task(play_rotated())
    try:
        await publish_camera(alice, source, "sideways", simulcast=False)
        track, _, _ = await subscribed.wait(
            lambda t, pub, p: t.kind == rtc.TrackKind.KIND_VIDEO, 20, "bob subscribed"
        )
        stream = rtc.VideoStream(track)
        rotations = []
        try:

            async def read() -> None:
                async for event in stream:
                    rotations.append(event.rotation)
                    if len(rotations) >= 10:
                        return

            await bounded(read(), "bob decodes 10 frames", 20)
        finally:
            await stream.aclose()
        print(f"rotations seen: {sorted(set(rotations))}")
        assert rotations[-1] == rtc.VideoRotation.VIDEO_ROTATION_90, rotations
    finally:
        await stop_players(stop, [player], source, cancel=True)
