"""Browser <-> Python: livekit-client in headless Chromium and the Python SDK in one room.

The browser side is `tests/node/browser_client.mjs` (playwright-core driving
/usr/bin/chromium with a fake camera). It connects the way a web app does (token in
the query, `/rtc/v1` first, fallback to `/rtc`, adaptive stream and dynacast on),
publishes its camera (simulcast, livekit-client's default) and reports when the
Python participant's video is decoded.

Asserted, as a user would see it:
- the Python participant receives the browser's camera: at least 10 video frames of a
  non-zero size;
- the browser decodes the Python participant's video: inbound-rtp framesDecoded > 0.

Every wait is bounded (30 s at most). On failure the browser console is printed (pytest
shows it with the report). Node and Chromium run in their own process group, which is
killed at the end whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from media import play_sine, play_video, record_widths, stop_players
from conftest import REPO_ROOT, EventLog, bounded, make_token, wait_for

NODE_DIR = REPO_ROOT / "tests" / "node"
SCRIPT = NODE_DIR / "browser_client.mjs"
CHROMIUM = Path(os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium"))
WAIT_S = 30.0
WIDTH, HEIGHT, FPS = 640, 360, 15

PY, WEB = "python-user", "browser-user"


def _missing_prerequisite() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed"
    for pkg in ("livekit-client", "playwright-core"):
        if not (NODE_DIR / "node_modules" / pkg).is_dir():
            return f"tests/node/node_modules/{pkg} missing (npm ci in tests/node)"
    return None


class BrowserClient:
    """`node browser_client.mjs` as a subprocess: JSON events on stdout, browser
    console on stderr."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict] = []
        self.console: list[str] = []
        self._readers: list[asyncio.Task] = []

    async def start(self, *args: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(SCRIPT),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=NODE_DIR,
            env={**os.environ, "CHROMIUM_BIN": str(CHROMIUM)},
            start_new_session=True,  # its own process group: node and every Chromium process
        )
        self._readers = [
            asyncio.create_task(self._read(self.proc.stdout, self._on_stdout)),
            asyncio.create_task(self._read(self.proc.stderr, self.console.append)),
        ]

    @staticmethod
    async def _read(stream: asyncio.StreamReader, sink) -> None:
        while line := await stream.readline():
            sink(line.decode(errors="replace").rstrip("\n"))

    def _on_stdout(self, line: str) -> None:
        try:
            self.events.append(json.loads(line))
        except json.JSONDecodeError:
            self.console.append(f"[stdout] {line}")

    def event(self, name: str) -> dict | None:
        return next((e for e in self.events if e.get("event") == name), None)

    async def wait_event(self, name: str, timeout: float = WAIT_S) -> dict:
        def seen():
            if (error := self.event("error")) is not None:
                pytest.fail(f"browser client failed: {error['message']}", pytrace=False)
            if self.event(name) is None and self.proc.returncode is not None:
                pytest.fail(
                    f"browser client exited ({self.proc.returncode}) before '{name}'",
                    pytrace=False,
                )
            return self.event(name)

        return await wait_for(seen, f"browser event '{name}'", timeout, 0.1)

    async def close(self) -> int | None:
        """Let the client disconnect (stdin closed), then kill its process group.
        Returns the client's exit code (negative: killed by that signal)."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(BaseException):
                self.proc.stdin.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
        # Whatever is left of the group (Chromium's helpers included) goes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.returncode is None:
            await self.proc.wait()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.gather(*self._readers), 5)
        return self.proc.returncode


def synthetic_picture(index: int) -> np.ndarray:
    img = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    img[..., 3] = 255
    img[: HEIGHT // 2, :, 1] = 200
    x = (index * 8) % (WIDTH - 20)
    img[HEIGHT // 2 :, x : x + 20, :3] = 255
    return img


async def record_frames(track: rtc.Track, count: int) -> list[rtc.VideoFrame]:
    stream = rtc.VideoStream(track)
    frames: list[rtc.VideoFrame] = []
    try:
        async for event in stream:
            frames.append(event.frame)
            if len(frames) >= count:
                break
    finally:
        await stream.aclose()
    return frames


@pytest.fixture
async def browser():
    missing = _missing_prerequisite()
    if missing:
        pytest.fail(f"browser test prerequisites: {missing}", pytrace=False)
    client = BrowserClient()
    try:
        yield client
    finally:
        await client.close()
        # pytest shows captured output only for failing tests: the browser console and
        # the client's events are there when they are needed.
        print(f"--- browser client events ---\n{json.dumps(client.events, indent=1)}")
        print("--- browser console ---\n" + "\n".join(client.console))


@pytest.mark.parametrize(
    "order, python_simulcast, browser_codec, python_codec, direct_egress",
    [
        ("python_first", True, "vp8", rtc.VideoCodec.VP8, True),
        ("browser_first", False, "vp8", rtc.VideoCodec.VP8, True),
        ("python_first", True, "vp9", rtc.VideoCodec.VP8, True),
        ("python_first", True, "vp8", rtc.VideoCodec.VP9, True),
        ("python_first", True, "vp8", rtc.VideoCodec.VP8, False),
    ],
    ids=[
        "python_first-simulcast",
        "browser_first-single_layer",
        "browser_vp9_svc",
        "python_vp9_to_browser",
        "python_first-simulcast-str0m_egress",
    ],
)
async def test_browser_and_python_exchange_video(
    relais, relais_factory, rooms, browser, order, python_simulcast, browser_codec,
    python_codec, direct_egress
):
    """`python_first`: the browser joins a room where Python already publishes, with
    simulcast (the browser's first subscriber offer carries the track). `browser_first`:
    the browser is connected and publishing when Python joins and publishes a single
    layer (the track reaches the browser by renegotiation). The browser publishes with
    livekit-client's defaults (VP8, simulcast, layers q/h/f) or, in `browser_vp9_svc`,
    VP9 — which livekit-client sends as one SVC stream (L3T3_KEY), as the web client of
    our first users does by default. Relais sends the media itself (`rtc.direct_audio`,
    `rtc.direct_video`, the default) or, in `str0m_egress`, through str0m — the video
    then with a measured count of none sent directly."""
    metrics = None
    if not direct_egress:
        from test_observability import Scraper, start_with_metrics

        config = {"rtc": {"direct_audio": False, "direct_video": False}}
        relais, port = start_with_metrics(relais_factory, config)
        metrics = Scraper(port)
    room_name = f"browser-{uuid.uuid4().hex[:8]}"
    stop = asyncio.Event()
    source = rtc.VideoSource(WIDTH, HEIGHT)
    player = asyncio.create_task(
        play_video(source, stop, WIDTH, HEIGHT, FPS, synthetic_picture)
    )
    py: rtc.Room | None = None
    subscribed: EventLog | None = None

    async def python_joins_and_publishes() -> rtc.LocalTrackPublication:
        nonlocal py, subscribed
        py = rtc.Room()
        # Recording starts before the connection: the browser's track may come with it.
        subscribed = EventLog(
            py, "track_subscribed"
        )  # (track, publication, participant)
        rooms.rooms.append(py)  # disconnected by the fixture at the end
        await bounded(
            py.connect(relais.url, make_token(PY, room_name), rtc.RoomOptions()),
            "python connects",
            WAIT_S,
        )
        cam = rtc.LocalVideoTrack.create_video_track("py-pattern", source)
        return await bounded(
            py.local_participant.publish_track(
                cam,
                rtc.TrackPublishOptions(
                    source=rtc.TrackSource.SOURCE_CAMERA,
                    simulcast=python_simulcast,
                    video_codec=python_codec,
                ),
            ),
            "python publishes video",
            WAIT_S,
        )

    try:
        if order == "python_first":
            py_pub = await python_joins_and_publishes()
        await browser.start(
            "--url", relais.url,
            "--token", make_token(WEB, room_name),
            "--remote", PY,
            "--publish-camera",
            "--codec", browser_codec,
            "--timeout", str(int(WAIT_S)),
        )  # fmt: skip
        connected = await browser.wait_event("connected", WAIT_S)
        assert connected["sid"].startswith("PA"), connected
        assert connected["identity"] == WEB
        published = await browser.wait_event("published", WAIT_S)
        assert published["trackSid"].startswith("TR"), published
        if order == "browser_first":
            py_pub = await python_joins_and_publishes()
        started = time.monotonic()
        await wait_for(
            lambda: WEB in py.remote_participants, "python sees the browser", WAIT_S
        )

        # (a) The browser's camera reaches the Python participant.
        track, publication, _ = await subscribed.wait(
            lambda t, pub, p: p.identity == WEB and t.kind == rtc.TrackKind.KIND_VIDEO,
            WAIT_S,
            "python subscribed to the browser's camera",
        )
        assert publication.sid == published["trackSid"]
        assert publication.mime_type.lower() == f"video/{browser_codec}", publication.mime_type
        assert publication.source == rtc.TrackSource.SOURCE_CAMERA
        frames = await bounded(
            record_frames(track, 10),
            "python receives 10 frames of the browser's camera",
            WAIT_S,
        )
        sizes = [(f.width, f.height) for f in frames]
        print(f"python received browser frames of sizes {sorted(set(sizes))}")
        assert len(frames) >= 10
        assert all(w > 0 and h > 0 for w, h in sizes), f"frame sizes {sizes}"

        # (b) The browser decodes the Python participant's video.
        # A little longer than the browser's own wait, which began before `started`:
        # if no frame is decoded, the browser's error (its receiver's stats) is the
        # failure reported.
        remaining = max(5.0, WAIT_S - (time.monotonic() - started)) + 5.0
        decoded = await browser.wait_event("decoded", remaining)
        assert decoded["framesDecoded"] > 0, decoded
        assert decoded["trackSid"] == py_pub.sid, decoded
        assert decoded["frameWidth"] > 0 and decoded["frameHeight"] > 0, decoded
        if metrics is not None:
            out = await metrics.wait(
                "video forwarded",
                "livekit_packet_total",
                lambda v: v > 0,
                direction="outgoing",
                kind="VIDEO",
            )
            direct = metrics.value("relais_direct_egress_packets_total")
            assert direct == 0, f"{direct} of {out} sent directly"

        # The browser leaves cleanly when told to (stdin closed): disconnect, Chromium closed.
        code = await bounded(browser.close(), "browser client exits", WAIT_S)
        assert code == 0, f"browser client exit code {code}"
        assert browser.event("closed") is not None
    finally:
        await stop_players(stop, [player], source, cancel=True)


@contextlib.asynccontextmanager
async def python_plays_a_tone(server, rooms, room_name):
    """Python joins `room_name` and publishes a tone as its microphone until the block ends."""
    stop = asyncio.Event()
    source = rtc.AudioSource(48000, 1)
    player = asyncio.create_task(play_sine(source, stop))
    try:
        py = await rooms.join(server, PY, room_name)
        mic = rtc.LocalAudioTrack.create_audio_track("py-tone", source)
        await bounded(
            py.local_participant.publish_track(
                mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            ),
            "python publishes audio",
            WAIT_S,
        )
        yield py
    finally:
        await stop_players(stop, [player], source)


async def test_browser_sees_the_python_speaker(relais, rooms, browser):
    """Python plays a tone; livekit-client in Chromium lists it among the active speakers
    (SpeakersChanged → ActiveSpeakersChanged)."""
    room_name = f"speaker-{uuid.uuid4().hex[:8]}"
    async with python_plays_a_tone(relais, rooms, room_name):
        await browser.start(
            "--url", relais.url,
            "--token", make_token(WEB, room_name),
            "--expect-speaker", PY,
            "--timeout", str(int(WAIT_S)),
        )  # fmt: skip
        seen = await browser.wait_event("speaker", WAIT_S)
        assert seen["speakers"] == [PY], seen
        code = await bounded(browser.close(), "browser client exits", WAIT_S)
        assert code == 0, f"browser client exit code {code}"


@pytest.mark.parametrize("direct_audio", [False, True])
async def test_browser_receives_the_python_tone(relais_factory, rooms, browser, direct_audio):
    """Python plays a tone; livekit-client in Chromium receives and plays out its audio
    (inbound-rtp: packets received and decrypted, samples produced) — sent directly by
    Relais (`rtc.direct_audio`, the default), and through str0m."""
    from test_observability import Scraper, start_with_metrics

    server, port = start_with_metrics(relais_factory, {"rtc": {"direct_audio": direct_audio}})
    metrics = Scraper(port)
    room_name = f"tone-{uuid.uuid4().hex[:8]}"
    async with python_plays_a_tone(server, rooms, room_name):
        await browser.start(
            "--url", server.url,
            "--token", make_token(WEB, room_name),
            "--expect-audio", PY,
            "--timeout", str(int(WAIT_S)),
        )  # fmt: skip
        heard = await browser.wait_event("audio", WAIT_S)
        assert heard["packetsReceived"] >= 50 and heard["totalSamplesReceived"] > 0, heard
        assert heard["totalAudioEnergy"] > 0, f"the browser played silence: {heard}"
        if direct_audio:
            # The counters reach /metrics a moment after the packets left.
            direct = await metrics.wait(
                "audio packets sent directly",
                "relais_direct_egress_packets_total",
                lambda v: v >= 50,
                kind="AUDIO",
            )
        else:
            direct = metrics.value("relais_direct_egress_packets_total", kind="AUDIO")
            assert direct == 0, direct
        print(f"direct_audio={direct_audio}: {heard}, {direct:.0f} sent directly")
        code = await bounded(browser.close(), "browser client exits", WAIT_S)
        assert code == 0, f"browser client exit code {code}"


async def python_receives_browser_vp9(server, rooms, browser):
    """Python joins a new room, Chromium joins it publishing its camera in VP9 (SVC, as
    livekit-client sends it); returns Python's subscribed track and publication."""
    room_name = f"svc-{uuid.uuid4().hex[:8]}"
    py = await rooms.join(server, PY, room_name)
    subscribed = EventLog(py, "track_subscribed")  # (track, publication, participant)
    await browser.start(
        "--url", server.url,
        "--token", make_token(WEB, room_name),
        "--publish-camera",
        "--codec", "vp9",
        "--timeout", str(int(3 * WAIT_S)),
    )  # fmt: skip
    await browser.wait_event("published", WAIT_S)
    track, publication, _ = await subscribed.wait(
        lambda t, pub, p: p.identity == WEB and t.kind == rtc.TrackKind.KIND_VIDEO,
        WAIT_S,
        "python subscribed to the browser's camera",
    )
    return track, publication


async def test_vp9_svc_subscriber_gets_the_spatial_layer_it_asks_for(relais, rooms, browser):
    """livekit-client publishes VP9 as one SVC stream (L3T3_KEY: 320x180, 640x360 and
    1280x720 in every picture). A Python subscriber that asks for the low quality gets
    pictures of the lowest spatial layer only — the server drops the upper layers'
    packets, closes the sequence gaps and ends each picture on the layer kept — and
    gets the full size back, from a keyframe, when it asks for the high quality."""
    track, publication = await python_receives_browser_vp9(relais, rooms, browser)
    widths: list[int] = []
    recorder = asyncio.create_task(record_widths(track, widths))
    try:
        # The encoder adds its upper layers as its bandwidth estimate grows.
        await wait_for(lambda: max(widths, default=0) > 320, "pictures above 320 wide", WAIT_S)
        await asyncio.sleep(3)
        top = max(widths)
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
        mark = len(widths)
        await wait_for(
            lambda: len(widths) > mark + 40 and max(widths[-30:]) == min(widths[-30:]) < top,
            "only the lowest spatial layer after asking for low quality",
            WAIT_S,
        )
        low = widths[-1]
        print(f"python received widths: top {top}, low {low}")
        assert low <= top // 2, (low, top)
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
        mark = len(widths)
        await wait_for(
            lambda: max(widths[mark:], default=0) > low,
            "larger pictures again after asking for high quality",
            WAIT_S,
        )
    finally:
        recorder.cancel()
        with contextlib.suppress(BaseException):
            await recorder


async def test_vp9_svc_publisher_pauses_when_nobody_receives(relais_factory, rooms, browser):
    """Dynacast for an SVC track: when its only subscriber unsubscribes, the server tells
    livekit-client that no layer is wanted (after the 3 s hold), the browser stops
    encoding and the server receives no more of its video; resubscribing brings it
    back at once."""
    from test_observability import Scraper, start_with_metrics

    server, port = start_with_metrics(relais_factory)
    metrics = Scraper(port)

    def video_in() -> float:
        return metrics.value("livekit_packet_total", direction="incoming", kind="VIDEO")

    track, publication = await python_receives_browser_vp9(server, rooms, browser)
    await bounded(record_frames(track, 10), "python receives the browser's camera", WAIT_S)

    publication.set_subscribed(False)

    def stalled() -> bool:
        before = video_in()
        time.sleep(1.0)
        return video_in() == before > 0

    # The hold (3 s) plus the metrics flush (1 s): the video stops arriving.
    await wait_for(stalled, "the browser stops sending video nobody receives", WAIT_S)
    before = video_in()
    publication.set_subscribed(True)
    await wait_for(lambda: video_in() > before + 50, "video flows again", WAIT_S)


async def test_python_hears_the_browser_microphone(relais, rooms, browser):
    """livekit-client publishes the fake microphone with its defaults (Opus with RED
    offered, DTX): a Python participant — an agent transcribing a web user, say —
    receives its audio and the sound is not silence."""
    room_name = f"mic-{uuid.uuid4().hex[:8]}"
    py = await rooms.join(relais, PY, room_name)
    subscribed = EventLog(py, "track_subscribed")  # (track, publication, participant)
    await browser.start(
        "--url", relais.url,
        "--token", make_token(WEB, room_name),
        "--publish-mic",
        "--timeout", str(int(WAIT_S)),
    )  # fmt: skip
    published = await browser.wait_event("published-mic", WAIT_S)
    track, publication, _ = await subscribed.wait(
        lambda t, pub, p: p.identity == WEB and t.kind == rtc.TrackKind.KIND_AUDIO,
        WAIT_S,
        "python subscribed to the browser's microphone",
    )
    assert publication.sid == published["trackSid"]
    peak = 0
    frames = 0
    stream = rtc.AudioStream(track)
    try:
        deadline = time.monotonic() + WAIT_S
        async for event in stream:
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            peak = max(peak, int(np.abs(samples).max(initial=0)))
            frames += 1
            if (frames >= 300 and peak > 1000) or time.monotonic() > deadline:
                break
    finally:
        await stream.aclose()
    print(f"python received {frames} audio frames from the browser, peak {peak}")
    assert frames >= 300, frames
    assert peak > 1000, f"only silence from the browser's microphone (peak {peak})"


async def test_browser_send_estimate_grows_on_the_servers_feedback(relais, rooms, browser):
    """Chromium's congestion control starts its send-side bandwidth estimate low
    (300 kbit/s) and raises it only on the transport-wide congestion feedback the server
    sends for what it received, its bandwidth probes included. With that feedback
    working, the camera's sender reports an estimate (candidate-pair
    availableOutgoingBitrate) past 1 Mbit/s within seconds, and keeps it there; without
    it the estimate stays at its start, or falls back to it, and the congestion window
    holds the video back. A Python participant
    in the room subscribes, so that dynacast keeps the camera's layers on."""
    room_name = f"browser-bwe-{uuid.uuid4().hex[:8]}"
    await rooms.join(relais, PY, room_name)
    await browser.start(
        "--url", relais.url,
        "--token", make_token(WEB, room_name),
        "--publish-camera",
        "--expect-send-estimate", "1000",
        "--timeout", str(int(WAIT_S)),
    )  # fmt: skip
    await browser.wait_event("published", WAIT_S)
    estimate = await browser.wait_event("send-estimate", WAIT_S + 5)
    print(f"send estimates seen (bit/s): {estimate['seen']}; layers: {estimate['layers']}")
    # Held for 10 s: feedback on the first packets alone lifts it, then it falls back.
    assert estimate["lowest"] >= 1_000_000, estimate
