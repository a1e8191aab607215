"""Synthetic media for the SDK participants of the end-to-end tests: a sine tone and a
moving picture, pushed at real-time pace."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

import numpy as np
from livekit import rtc


async def play_sine(
    source: rtc.AudioSource,
    stop: asyncio.Event,
    *,
    hz: float = 440.0,
    sample_rate: int = 48000,
    frame_ms: int = 10,
    lead: float = 0.2,
) -> None:
    """Push mono frames of a sine at `hz` until `stop`, at most `lead` seconds ahead of
    real time (the SDK buffers what is ahead)."""
    frame_samples = sample_rate * frame_ms // 1000
    t = np.arange(frame_samples)
    sent = 0
    start = time.monotonic()
    while not stop.is_set():
        samples = 0.5 * 32767 * np.sin(2 * np.pi * hz * (sent + t) / sample_rate)
        frame = rtc.AudioFrame(
            samples.astype(np.int16).tobytes(), sample_rate, 1, frame_samples
        )
        await source.capture_frame(frame)
        sent += frame_samples
        ahead = start + sent / sample_rate - lead - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)


async def publish_tone(
    room: rtc.Room, stop: asyncio.Event, *, hz: float = 440.0
) -> tuple[rtc.LocalTrackPublication, asyncio.Task]:
    """Publish a microphone track on `room` that plays a sine at `hz` until `stop`;
    returns its publication and the task that plays it."""
    source = rtc.AudioSource(48000, 1)
    player = asyncio.create_task(play_sine(source, stop, hz=hz))
    track = rtc.LocalAudioTrack.create_audio_track("voice", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    try:
        publication = await asyncio.wait_for(
            room.local_participant.publish_track(track, options), 20
        )
    except BaseException:
        stop.set()
        await player
        raise
    return publication, player


async def record_widths(track: rtc.Track, widths: list[int]) -> None:
    """Append the width of every decoded frame of `track` to `widths` (until cancelled)."""
    stream = rtc.VideoStream(track)
    try:
        async for event in stream:
            widths.append(event.frame.width)
    finally:
        await stream.aclose()


async def play_video(
    source: rtc.VideoSource,
    stop: asyncio.Event,
    width: int,
    height: int,
    fps: int,
    picture: Callable[[int], np.ndarray],
) -> None:
    """Push RGBA frames `picture(0), picture(1), …` at `fps` until `stop`."""
    index = 0
    while not stop.is_set():
        frame = rtc.VideoFrame(
            width, height, rtc.VideoBufferType.RGBA, picture(index).tobytes()
        )
        source.capture_frame(frame)
        index += 1
        await asyncio.sleep(1 / fps)


async def stop_players(
    stop: asyncio.Event,
    players: Iterable[asyncio.Task],
    *sources: rtc.AudioSource | rtc.VideoSource,
    cancel: bool = False,
) -> None:
    """End the players started with `stop` (cancelled first if `cancel`), then close their
    sources. Never raises: it runs in `finally` blocks, after the assertion that matters."""
    stop.set()
    for task in players:
        if cancel:
            task.cancel()
        with contextlib.suppress(BaseException):
            await task
    for source in sources:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(source.aclose(), 5)
