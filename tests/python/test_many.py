"""Ten Python-SDK participants in one room, each publishing an audio track.

Every participant publishes a sine of its own frequency (300, 400, ... 1200 Hz) and is
auto-subscribed to the other nine. The test asserts that each of the ten receives audio
frames carrying signal from all nine remote tracks, i.e. the server forwards 90
subscriptions, and that the tone each one hears from a given peer is that peer's tone.

Kept light for two cores and a debug build of the server: audio only, mono; each
participant sends 20 ms frames at 48 kHz and reads what it receives as 100 ms frames at
16 kHz (90 streams land in this one Python process); every wait is bounded. On failure
the message lists each missing subscription and, per participant, the packets its
publisher PC sent and its subscriber PC received per remote track (WebRTC stats), to
tell a server that forwards nothing from a client too starved to decode.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest
from livekit import rtc

from media import play_sine, stop_players
from conftest import CONNECT_TIMEOUT_S, bounded, make_token, wait_for

N = 10
SAMPLE_RATE = 48000
# Receiving: 90 streams in one Python process, so few and small frames (the SDK
# resamples and re-frames natively): 16 kHz mono in 100 ms frames.
RECV_RATE = 16000
RECV_FRAME_MS = 100
FRAMES_WANTED = 5  # 0.5 s of audio with signal from each remote track
# Each 100 ms frame is analysed on its own (10 Hz resolution, tones 100 Hz apart) and
# the median taken: frames are not contiguous (silent ones are skipped), and a frame
# the receiver's jitter buffer concealed or stretched under CPU starvation must not
# decide alone.
ANALYSIS_SAMPLES = RECV_RATE * RECV_FRAME_MS // 1000
TONE_TOLERANCE_HZ = 30.0
SILENCE_RMS = 300.0


def identity(i: int) -> str:
    return f"p{i:02d}"


def tone_hz(i: int) -> float:
    return 300.0 + 100.0 * i


def dominant_frequency(samples: np.ndarray, rate: int = RECV_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    spectrum[0] = 0.0
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(freqs[int(np.argmax(spectrum))])


class Reception:
    """What one participant received from one remote audio track."""

    def __init__(self) -> None:
        self.frames = 0  # frames with signal (RMS above SILENCE_RMS)
        self.samples: list[np.ndarray] = []

    @property
    def done(self) -> bool:
        return self.frames >= FRAMES_WANTED

    def frequency(self) -> float:
        return float(np.median([dominant_frequency(frame) for frame in self.samples]))


async def receive(track: rtc.Track, reception: Reception) -> None:
    stream = rtc.AudioStream(
        track, sample_rate=RECV_RATE, num_channels=1, frame_size_ms=RECV_FRAME_MS
    )
    try:
        async for event in stream:
            frame = event.frame
            data = np.frombuffer(frame.data, dtype=np.int16).astype(np.float64)
            if frame.num_channels > 1:
                data = data.reshape(-1, frame.num_channels)[:, 0]
            if np.sqrt(np.mean(data**2)) < SILENCE_RMS:
                continue  # jitter-buffer warm-up, concealment
            reception.frames += 1
            reception.samples.append(data)
            if reception.done:
                break
    finally:
        await stream.aclose()


def test_tone_plan_is_separable():
    """The analysis tells the ten tones apart on a locally made signal."""
    t = np.arange(ANALYSIS_SAMPLES) / RECV_RATE
    for i in range(N):
        found = dominant_frequency(np.sin(2 * np.pi * tone_hz(i) * t))
        assert abs(found - tone_hz(i)) < TONE_TOLERANCE_HZ / 2
        for j in range(N):
            if j != i:
                assert abs(found - tone_hz(j)) > TONE_TOLERANCE_HZ


async def test_ten_participants_hear_each_other(relais, rooms):
    room_name = f"many-{uuid.uuid4().hex[:8]}"
    # received[i][j]: what participant i got from participant j's track.
    received: list[dict[int, Reception]] = [{} for _ in range(N)]
    receivers: list[asyncio.Task] = []

    def on_subscribed(i: int):
        def handler(
            track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
        ):
            if track.kind != rtc.TrackKind.KIND_AUDIO or not p.identity.startswith("p"):
                return
            j = int(p.identity[1:])
            if j in received[i]:
                return
            received[i][j] = Reception()
            receivers.append(asyncio.create_task(receive(track, received[i][j])))

        return handler

    stop = asyncio.Event()
    sources: list[rtc.AudioSource] = []
    players: list[asyncio.Task] = []
    try:
        participants: list[rtc.Room] = []
        for i in range(N):
            room = rtc.Room()
            room.on("track_subscribed", on_subscribed(i))
            # `rooms` connects with its own Room object; connect ours by hand, with the
            # handler attached before any subscription can happen.
            participants.append(room)
        await bounded(
            asyncio.gather(
                *(
                    _connect(relais, room, identity(i), room_name, rooms)
                    for i, room in enumerate(participants)
                )
            ),
            f"{N} participants connect",
            60,
        )
        await wait_for(
            lambda: all(len(r.remote_participants) == N - 1 for r in participants),
            f"each of {N} participants to see the other {N - 1}",
            30,
        )

        async def publish(i: int, room: rtc.Room) -> None:
            source = rtc.AudioSource(SAMPLE_RATE, 1)
            sources.append(source)
            players.append(
                asyncio.create_task(
                    play_sine(source, stop, hz=tone_hz(i), frame_ms=20, lead=0.1)
                )
            )
            track = rtc.LocalAudioTrack.create_audio_track(f"sine-{i}", source)
            await room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            )

        await bounded(
            asyncio.gather(*(publish(i, r) for i, r in enumerate(participants))),
            f"{N} participants publish audio",
            40,
        )

        def missing() -> list[str]:
            out = []
            for i in range(N):
                for j in range(N):
                    if j == i:
                        continue
                    r = received[i].get(j)
                    if r is None:
                        out.append(f"{identity(i)}<-{identity(j)}: not subscribed")
                    elif not r.done:
                        out.append(f"{identity(i)}<-{identity(j)}: {r.frames} frames")
            return out

        deadline = time.monotonic() + 40
        while missing() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        gaps = missing()
        if gaps:
            details = await bounded(rtp_report(participants), "collect RTP stats", 20)
            pytest.fail(
                f"{len(gaps)} of {N * (N - 1)} subscriptions lack {FRAMES_WANTED} audio frames "
                f"with signal after 40 s: {gaps}\nWebRTC stats:\n{details}",
                pytrace=False,
            )

        wrong = []
        for i in range(N):
            for j, r in received[i].items():
                hz = r.frequency()
                if abs(hz - tone_hz(j)) > TONE_TOLERANCE_HZ:
                    wrong.append(
                        f"{identity(i)}<-{identity(j)}: {hz:.0f} Hz, want {tone_hz(j):.0f}"
                    )
        assert not wrong, f"tones heard from the wrong peer: {wrong}"
    finally:
        await stop_players(stop, players + receivers, *sources, cancel=True)


async def rtp_report(participants: list[rtc.Room]) -> str:
    """Per participant: packets its publisher PC sent, and packets its subscriber PC
    received per remote track (to tell a server that forwards nothing from a client
    that decodes nothing)."""
    lines = []
    for room in participants:
        me = room.local_participant.identity
        owner = {
            pub.sid: p.identity
            for p in room.remote_participants.values()
            for pub in p.track_publications.values()
        }
        try:
            stats = await room.get_rtc_stats()
        except Exception as e:  # noqa: BLE001 - diagnostics only
            lines.append(f"{me}: no stats ({e})")
            continue
        sent = [
            s.outbound_rtp.sent.packets_sent
            for s in stats.publisher_stats
            if s.HasField("outbound_rtp")
        ]
        received = sorted(
            f"{owner.get(s.inbound_rtp.inbound.track_identifier, s.inbound_rtp.inbound.track_identifier)}"
            f"={s.inbound_rtp.received.packets_received}"
            for s in stats.subscriber_stats
            if s.HasField("inbound_rtp")
        )
        lines.append(f"{me}: sent {sent}; received {' '.join(received)}")
    return "\n".join(lines)


async def _connect(relais, room: rtc.Room, ident: str, room_name: str, rooms) -> None:
    token = make_token(ident, room_name)
    rooms.rooms.append(room)  # disconnected by the fixture at the end
    await asyncio.wait_for(
        room.connect(relais.url, token, rtc.RoomOptions()), CONNECT_TIMEOUT_S * 2
    )
