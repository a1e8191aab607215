"""First milestone: a call between two Python-SDK participants through Relais.

Alice publishes a sine-wave audio track and a 640x360 video track of synthetic frames;
Bob, auto-subscribed, receives audio whose dominant frequency matches and video frames of
that size and picture; Alice sends reliable and lossy data with a topic and Bob receives
them with her identity; while Alice's tone plays both see her as the active speaker, and
when it stops she is no longer one; Alice performs an RPC on Bob and gets the reply; Alice's metadata
and attribute changes reach Bob; Alice disconnects and Bob sees participant_disconnected.

Every wait is bounded (at most 20 s), so a broken server fails fast instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import numpy as np
import pytest
from livekit import rtc

from media import play_sine, play_video, publish_tone, record_widths, stop_players
from conftest import EventLog, bounded, wait_for

SAMPLE_RATE = 48000
TONE_HZ = 440.0
TONE_TOLERANCE_HZ = 20.0
WIDTH, HEIGHT = 640, 360
FPS = 20

ALICE, BOB = "alice", "bob"


@pytest.fixture
def room_name() -> str:
    return f"call-{uuid.uuid4().hex[:8]}"


async def join_pair(relais, rooms, room_name, **alice_grants):
    """Bob joins first, then Alice; returns once each sees the other."""
    bob = await rooms.join(relais, BOB, room_name)
    alice = await rooms.join(relais, ALICE, room_name, **alice_grants)
    await wait_for(lambda: ALICE in bob.remote_participants, "bob to see alice", 10)
    await wait_for(lambda: BOB in alice.remote_participants, "alice to see bob", 10)
    return alice, bob


# --------------------------------------------------------------------------- media sources


def synthetic_picture(index: int) -> np.ndarray:
    """Top half solid red; bottom half black with a white bar that moves every frame."""
    img = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    img[..., 3] = 255
    img[: HEIGHT // 2, :, 0] = 220
    x = (index * 16) % (WIDTH - 40)
    img[HEIGHT // 2 :, x : x + 40, :3] = 255
    return img


# --------------------------------------------------------------------------- media sinks


async def record_tone(track: rtc.Track, seconds: float = 1.0) -> np.ndarray:
    """`seconds` of mono samples, starting at the first frame that is not silence."""
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    chunks: list[np.ndarray] = []
    have = 0
    try:
        async for event in stream:
            frame = event.frame
            data = np.frombuffer(frame.data, dtype=np.int16)
            if frame.num_channels > 1:
                data = data.reshape(-1, frame.num_channels)[:, 0]
            data = data.astype(np.float64)
            if not chunks and np.sqrt(np.mean(data**2)) < 300:
                continue  # jitter-buffer warm-up / silence before the first packet
            chunks.append(data)
            have += len(data)
            if have >= seconds * SAMPLE_RATE:
                break
    finally:
        await stream.aclose()
    return np.concatenate(chunks)[: int(seconds * SAMPLE_RATE)]


def dominant_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    spectrum[0] = 0.0
    freqs = np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)
    return float(freqs[int(np.argmax(spectrum))])


async def record_frames(track: rtc.Track, count: int = 15) -> list[rtc.VideoFrame]:
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


async def publish_camera(
    room: rtc.Room, source: rtc.VideoSource, name: str, **options
) -> rtc.LocalVideoTrack:
    """Publish `source` as a camera track whose encoder keeps the resolution (these
    tests are about forwarding, not the encoder's adaptation); `options` are further
    `TrackPublishOptions` fields."""
    cam = rtc.LocalVideoTrack.create_video_track(name, source)
    await bounded(
        room.local_participant.publish_track(
            cam,
            rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA,
                degradation_preference=rtc.DegradationPreference.MAINTAIN_RESOLUTION,
                **options,
            ),
        ),
        f"publish {name}",
        20,
    )
    return cam


def test_analysis_helpers_detect_the_tone():
    """The receiving side's own arithmetic, checked on a locally made signal, so a
    media failure is never blamed on the FFT."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    assert abs(dominant_frequency(np.sin(2 * np.pi * TONE_HZ * t)) - TONE_HZ) < 2
    assert abs(dominant_frequency(np.sin(2 * np.pi * 600 * t)) - TONE_HZ) > 100


# --------------------------------------------------------------------------- tests


async def test_two_participants_see_each_other(relais, rooms, room_name):
    bob = await rooms.join(relais, BOB, room_name)
    joined = EventLog(bob, "participant_connected")
    alice = await rooms.join(relais, ALICE, room_name)

    (participant,) = await joined.wait(
        lambda p: p.identity == ALICE, 10, "bob: alice connected"
    )
    assert participant.sid.startswith("PA"), participant.sid
    # Alice learns of Bob from her join response.
    await wait_for(lambda: BOB in alice.remote_participants, "alice to list bob", 10)
    assert alice.remote_participants[BOB].sid.startswith("PA")
    assert alice.local_participant.identity == ALICE
    assert alice.name == bob.name == room_name


async def test_audio_and_video_reach_subscriber(relais, rooms, room_name):
    alice, bob = await join_pair(relais, rooms, room_name)
    tone, frames = await send_tone_and_picture(alice, bob)
    check_tone_and_picture(tone, frames)


async def send_tone_and_picture(
    alice: rtc.Room, bob: rtc.Room, while_playing=None
) -> tuple[np.ndarray, list[rtc.VideoFrame]]:
    """Alice publishes the tone and the 640x360 picture; returns what Bob receives:
    1 s of audio and 15 video frames. `while_playing` (a coroutine function) is
    awaited after that, with the media still flowing."""
    subscribed = EventLog(bob, "track_subscribed")  # (track, publication, participant)
    stop = asyncio.Event()
    audio_source = rtc.AudioSource(SAMPLE_RATE, 1)
    video_source = rtc.VideoSource(WIDTH, HEIGHT)
    players = [
        asyncio.create_task(play_sine(audio_source, stop, hz=TONE_HZ)),
        asyncio.create_task(
            play_video(video_source, stop, WIDTH, HEIGHT, FPS, synthetic_picture)
        ),
    ]
    try:
        mic = rtc.LocalAudioTrack.create_audio_track("sine", audio_source)
        await bounded(
            alice.local_participant.publish_track(
                mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            ),
            "alice publishes audio",
            20,
        )
        await publish_camera(
            alice,
            video_source,
            "pattern",
            simulcast=False,
            video_encoding=rtc.VideoEncoding(max_bitrate=1_500_000, max_framerate=FPS),
        )

        def subscribed_kind(kind):
            return subscribed.first(
                lambda track, pub, p: track.kind == kind and p.identity == ALICE
            )

        audio_track, audio_pub, _ = await wait_for(
            lambda: subscribed_kind(rtc.TrackKind.KIND_AUDIO),
            "bob subscribed to audio",
            20,
        )
        video_track, video_pub, _ = await wait_for(
            lambda: subscribed_kind(rtc.TrackKind.KIND_VIDEO),
            "bob subscribed to video",
            20,
        )
        assert audio_pub.sid.startswith("TR") and video_pub.sid.startswith("TR")
        assert audio_pub.source == rtc.TrackSource.SOURCE_MICROPHONE
        assert video_pub.source == rtc.TrackSource.SOURCE_CAMERA

        tone, frames = await bounded(
            asyncio.gather(record_tone(audio_track), record_frames(video_track)),
            "bob receives 1 s of audio with signal and 15 video frames",
            20,
        )
        if while_playing is not None:
            await while_playing()
    finally:
        await stop_players(stop, players, audio_source, video_source, cancel=True)
    return tone, frames


def check_tone_and_picture(tone: np.ndarray, frames: list[rtc.VideoFrame]) -> None:
    rms = float(np.sqrt(np.mean(tone**2)))
    assert rms > 1000, f"received audio is nearly silent (rms {rms:.0f})"
    freq = dominant_frequency(tone)
    assert abs(freq - TONE_HZ) <= TONE_TOLERANCE_HZ, f"dominant frequency {freq:.1f} Hz"

    sizes = [(f.width, f.height) for f in frames]
    assert set(sizes) == {(WIDTH, HEIGHT)}, f"received frame sizes {sizes}"
    rgba = frames[-1].convert(rtc.VideoBufferType.RGBA)
    img = (
        np.frombuffer(rgba.data, dtype=np.uint8).reshape(HEIGHT, WIDTH, 4).astype(float)
    )
    top = img[: HEIGHT // 2, :, :3].mean(axis=(0, 1))
    assert top[0] > 150 and top[1] < 100 and top[2] < 100, (
        f"top half should be red, mean RGB {top}"
    )


@pytest.mark.parametrize(
    "codec, mime",
    [
        (rtc.VideoCodec.H264, "video/H264"),
        (rtc.VideoCodec.VP9, "video/VP9"),
        (rtc.VideoCodec.AV1, "video/AV1"),
    ],
)
async def test_other_video_codecs_are_forwarded(relais, rooms, room_name, codec, mime):
    """VP8 is covered above; a publisher choosing H.264, VP9 or AV1 (no simulcast) is
    forwarded too: Bob decodes frames of the published size and sees the codec."""
    alice, bob = await join_pair(relais, rooms, room_name)
    subscribed = EventLog(bob, "track_subscribed")
    stop = asyncio.Event()
    source = rtc.VideoSource(WIDTH, HEIGHT)
    player = asyncio.create_task(
        play_video(source, stop, WIDTH, HEIGHT, FPS, synthetic_picture)
    )
    try:
        await publish_camera(alice, source, "codec", video_codec=codec, simulcast=False)
        track, publication, _ = await subscribed.wait(
            lambda t, pub, p: t.kind == rtc.TrackKind.KIND_VIDEO, 20, "bob subscribes"
        )
        frames = await bounded(record_frames(track, 10), f"bob decodes {mime}", 20)
        assert {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}
        assert publication.mime_type.lower() == mime.lower(), publication.mime_type
    finally:
        await stop_players(stop, [player], source)


async def test_subscriber_chooses_its_simulcast_layer(relais, rooms, room_name):
    """Bob asks for the low quality of Alice's simulcast video (UpdateTrackSettings, what
    adaptive stream and quality pickers send) and then for the high one again: the
    frames he decodes change size accordingly. At 1280x720 the SDK sends three layers,
    320x180 (q), 640x360 (h) and 1280x720 (f)."""
    width, height = 1280, 720
    big_picture = np.zeros((height, width, 4), dtype=np.uint8)
    big_picture[: height // 2, :, 0] = 255
    big_picture[:, :, 3] = 255
    alice, bob = await join_pair(relais, rooms, room_name)
    subscribed = EventLog(bob, "track_subscribed")
    stop = asyncio.Event()
    source = rtc.VideoSource(width, height)
    player = asyncio.create_task(
        play_video(source, stop, width, height, FPS, lambda i: big_picture)
    )
    try:
        await publish_camera(alice, source, "layers", simulcast=True)
        track, publication, _ = await subscribed.wait(
            lambda t, pub, p: t.kind == rtc.TrackKind.KIND_VIDEO, 20, "bob subscribes"
        )
        assert publication.simulcasted
        widths: list[int] = []
        watcher = asyncio.create_task(record_widths(track, widths))
        try:
            await wait_for(lambda: widths, "bob decodes video", 20)
            publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
            mark = len(widths)
            await wait_for(
                lambda: 320 in widths[mark:], "bob decodes the 320x180 layer after LOW", 15
            )
            publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
            mark = len(widths)
            await wait_for(
                lambda: any(w > 320 for w in widths[mark:]),
                "bob decodes a larger layer after HIGH",
                20,
            )
            print(f"layer widths seen: {sorted(set(widths))}")
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
    finally:
        await stop_players(stop, [player], source)


async def test_publisher_send_estimate_grows_on_the_servers_feedback(relais, rooms, room_name):
    """The SDK's congestion control (libwebrtc's) raises its send-side bandwidth estimate
    only on the transport-wide congestion feedback Relais sends for what it received,
    probes included: with 720p simulcast to send, the publisher's candidate pair reports
    an estimate (available_outgoing_bitrate) past 1 Mbit/s, which holds for 10 s. Without
    the feedback it stays at its start (the browser test shows the same for
    livekit-client)."""
    width, height = 1280, 720
    picture = np.zeros((height, width, 4), dtype=np.uint8)
    picture[: height // 2, :, 2] = 255
    picture[:, :, 3] = 255
    alice, bob = await join_pair(relais, rooms, room_name)
    stop = asyncio.Event()
    source = rtc.VideoSource(width, height)
    player = asyncio.create_task(play_video(source, stop, width, height, FPS, lambda i: picture))

    async def estimate(track: rtc.LocalVideoTrack) -> float | None:
        for s in await track.get_stats():
            if s.WhichOneof("stats") == "candidate_pair":
                pair = s.candidate_pair.candidate_pair
                if pair.nominated and pair.available_outgoing_bitrate > 0:
                    return pair.available_outgoing_bitrate
        return None

    try:
        cam = await publish_camera(alice, source, "bwe", simulcast=True)
        seen: list[float | None] = []
        reached = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            seen.append(await estimate(cam))
            if reached is None and (seen[-1] or 0) >= 1_000_000:
                reached = len(seen)
            if reached is not None and len(seen) - reached >= 20:
                break
            await asyncio.sleep(0.5)
        print(f"send estimates seen (bit/s): {seen}")
        assert reached is not None, f"the estimate never reached 1 Mbit/s: {seen}"
        held = seen[reached - 1 :]
        assert len(held) > 20 and min(held) >= 1_000_000, f"not held for 10 s: {seen}"
    finally:
        await stop_players(stop, [player], source)


async def test_dynacast_stops_layers_nobody_receives(relais, rooms, room_name):
    """Alice publishes with dynacast on. When Bob, her only subscriber, asks for the low
    quality, the server tells her (SubscribedQualityUpdate) and her encoder stops the two
    upper layers; when he asks for high again they come back."""
    width, height = 1280, 720
    picture = np.zeros((height, width, 4), dtype=np.uint8)
    picture[:, : width // 2, 1] = 255
    picture[:, :, 3] = 255
    bob = await rooms.join(relais, BOB, room_name)
    alice = await rooms.join(
        relais, ALICE, room_name, options=rtc.RoomOptions(dynacast=True)
    )
    await wait_for(lambda: ALICE in bob.remote_participants, "bob to see alice", 10)
    subscribed = EventLog(bob, "track_subscribed")
    stop = asyncio.Event()
    source = rtc.VideoSource(width, height)
    player = asyncio.create_task(
        play_video(source, stop, width, height, FPS, lambda i: picture)
    )

    async def active_layers(cam) -> set[str]:
        stats = await cam.get_stats()
        return {
            s.outbound_rtp.outbound.rid
            for s in stats
            if s.HasField("outbound_rtp") and s.outbound_rtp.outbound.active
        }

    async def until_layers(cam, want: set[str], what: str, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        seen: set[str] = set()
        while asyncio.get_running_loop().time() < deadline:
            seen = await active_layers(cam)
            if seen == want:
                return
            await asyncio.sleep(0.25)
        raise AssertionError(f"{what}: alice's active layers are {seen}, want {want}")

    try:
        cam = await publish_camera(alice, source, "dynacast", simulcast=True)
        _, publication, _ = await subscribed.wait(
            lambda t, pub, p: t.kind == rtc.TrackKind.KIND_VIDEO, 20, "bob subscribes"
        )
        await until_layers(cam, {"q", "h", "f"}, "bob receives the top layer", 15)
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
        await until_layers(cam, {"q"}, "bob asked for LOW", 15)
        publication.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
        await until_layers(cam, {"q", "h", "f"}, "bob asked for HIGH again", 10)
    finally:
        await stop_players(stop, [player], source)


async def test_active_speaker_follows_the_sound(relais, rooms, room_name):
    alice, bob = await join_pair(relais, rooms, room_name)
    seen_by = {
        who: [] for who in (ALICE, BOB)
    }  # every active_speakers_changed, as lists of identities
    for who, room in ((ALICE, alice), (BOB, bob)):
        room.on(
            "active_speakers_changed",
            lambda speakers, who=who: seen_by[who].append([s.identity for s in speakers]),
        )
    stop = asyncio.Event()
    _, player = await publish_tone(alice, stop)
    try:
        for who in (BOB, ALICE):
            await wait_for(
                lambda who=who: [ALICE] in seen_by[who], f"{who} sees alice speaking", 10
            )
        assert all(BOB not in speakers for speakers in seen_by[BOB]), seen_by[BOB]
    finally:
        stop.set()
        await player
    # Silence: within a few intervals alice is no longer an active speaker.
    before = len(seen_by[BOB])
    await wait_for(
        lambda: [] in seen_by[BOB][before:], "bob sees alice stop speaking", 10
    )
    assert ALICE in bob.remote_participants  # she stopped talking, she did not leave


async def test_connection_quality_is_reported(relais, rooms, room_name):
    """Every participant learns its own connection quality and that of the publishers
    it receives (ConnectionQualityUpdate, as LiveKit sends it): on loopback, excellent.
    Bob publishes nothing, so Alice is not told his."""
    alice, bob = await join_pair(relais, rooms, room_name)
    excellent = rtc.ConnectionQuality.QUALITY_EXCELLENT
    stop = asyncio.Event()
    _, player = await publish_tone(alice, stop)
    try:
        await wait_for(
            lambda: alice.local_participant.connection_quality == excellent
            and bob.local_participant.connection_quality == excellent
            and bob.remote_participants[ALICE].connection_quality == excellent,
            "each learns its own quality, bob alice's",
            15,
        )
        # Told with alice's own, if at all: it would have come by now.
        await asyncio.sleep(1)
        assert (
            alice.remote_participants[BOB].connection_quality
            == rtc.ConnectionQuality.QUALITY_UNKNOWN
        )
    finally:
        await stop_players(stop, [player])


async def test_reliable_and_lossy_data_with_topic(relais, rooms, room_name):
    alice, bob = await join_pair(relais, rooms, room_name)
    received = EventLog(bob, "data_received")  # (rtc.DataPacket,)

    await bounded(
        alice.local_participant.publish_data(
            b"reliable-hello", reliable=True, topic="chat"
        ),
        "alice publishes reliable data",
    )
    (packet,) = await received.wait(
        lambda p: p.data == b"reliable-hello", 15, "bob receives the reliable packet"
    )
    assert packet.participant is not None and packet.participant.identity == ALICE
    assert packet.topic == "chat"
    assert packet.kind == rtc.DataPacketKind.KIND_RELIABLE

    # Lossy may drop a packet: send several, require at least one.
    for i in range(10):
        await bounded(
            alice.local_participant.publish_data(
                f"lossy-{i}".encode(), reliable=False, topic="pos"
            ),
            "alice publishes lossy data",
        )
        await asyncio.sleep(0.05)
    (packet,) = await received.wait(
        lambda p: p.data.startswith(b"lossy-"), 15, "bob receives a lossy packet"
    )
    assert packet.participant is not None and packet.participant.identity == ALICE
    assert packet.topic == "pos"
    assert packet.kind == rtc.DataPacketKind.KIND_LOSSY


async def test_chat_text_streams(relais, rooms, room_name):
    """Chat as current SDKs send it: text streams (DataPacket stream header, chunks and
    trailer) on topic `lk.chat`, short and long enough to be split into many chunks."""
    alice, bob = await join_pair(relais, rooms, room_name)
    received: list[tuple[str, str]] = []

    def on_text(reader, sender: str) -> None:
        async def read() -> None:
            received.append((sender, await reader.read_all()))

        asyncio.ensure_future(read())

    bob.register_text_stream_handler("lk.chat", on_text)
    # The first message is repeated until it arrives: the data channels may still be
    # opening right after the join.
    hello = "hello from alice"
    for _ in range(20):
        await alice.local_participant.send_text(hello, topic="lk.chat")
        await asyncio.sleep(0.5)
        if (ALICE, hello) in received:
            break
    assert (ALICE, hello) in received, received
    long_text = "".join(f"line {i}: relais carries chat\n" for i in range(4000))  # ~120 kB
    await alice.local_participant.send_text(long_text, topic="lk.chat")
    await wait_for(lambda: (ALICE, long_text) in received, "bob reads the long text", 10)


async def test_rpc_round_trip(relais, rooms, room_name):
    alice, bob = await join_pair(relais, rooms, room_name)
    calls: list[tuple[str, str]] = []

    async def echo(data: rtc.RpcInvocationData) -> str:
        calls.append((data.caller_identity, data.payload))
        return "echo:" + data.payload

    bob.local_participant.register_rpc_method("echo", echo)
    reply = await bounded(
        alice.local_participant.perform_rpc(
            destination_identity=BOB, method="echo", payload="hi", response_timeout=10
        ),
        "alice's RPC to bob",
        20,
    )
    assert reply == "echo:hi"
    assert calls == [(ALICE, "hi")]


async def test_metadata_and_attributes_reach_other_participant(
    relais, rooms, room_name
):
    alice, bob = await join_pair(relais, rooms, room_name, can_update_own_metadata=True)
    metadata = EventLog(bob, "participant_metadata_changed")  # (participant, old, new)
    attributes = EventLog(
        bob, "participant_attributes_changed"
    )  # (changed, participant)

    await bounded(
        alice.local_participant.set_metadata("status: presenting"), "set_metadata"
    )
    await metadata.wait(
        lambda p, old, new: p.identity == ALICE and new == "status: presenting",
        10,
        "bob sees alice's metadata",
    )

    await bounded(
        alice.local_participant.set_attributes({"hand": "up"}), "set_attributes"
    )
    await attributes.wait(
        lambda changed, p: p.identity == ALICE and changed.get("hand") == "up",
        10,
        "bob sees alice's attributes",
    )
    seen = bob.remote_participants[ALICE]
    assert seen.metadata == "status: presenting"
    assert seen.attributes.get("hand") == "up"


async def test_messages_larger_than_a_websocket_fragment_arrive_whole(
    relais, rooms, room_name
):
    """Relais writes a signal message over 4 KiB as a fragmented WebSocket message (as
    LiveKit's server does); the SDK must reassemble a join response and an update, text
    with multi-byte characters included."""
    big = "métadonnée " * 600  # 7.2 KB: travels in the token, so under the URI limit
    bob = await rooms.join(relais, BOB, room_name, metadata=big)
    alice = await rooms.join(relais, ALICE, room_name, can_update_own_metadata=True)
    await wait_for(lambda: BOB in alice.remote_participants, "alice to see bob", 10)
    # Alice learnt Bob from her join response.
    assert alice.remote_participants[BOB].metadata == big

    # Bob learns of Alice (who publishes nothing) with the next batch of updates.
    await wait_for(lambda: ALICE in bob.remote_participants, "bob to see alice", 10)

    bigger = "état " * 4000  # 24 KB
    metadata = EventLog(bob, "participant_metadata_changed")  # (participant, old, new)
    await bounded(alice.local_participant.set_metadata(bigger), "set_metadata")
    await metadata.wait(
        lambda p, old, new: p.identity == ALICE and new == bigger,
        10,
        "bob sees alice's large metadata",
    )


async def test_disconnect_is_seen_by_other_participant(relais, rooms, room_name):
    alice, bob = await join_pair(relais, rooms, room_name)
    left = EventLog(bob, "participant_disconnected")  # (participant,)

    await bounded(alice.disconnect(), "alice disconnects", 10)
    await left.wait(lambda p: p.identity == ALICE, 10, "bob sees alice leave")
    assert ALICE not in bob.remote_participants
    assert bob.isconnected()


async def test_subscription_limit_holds_a_track_back_until_a_slot_frees(
    relais_factory, rooms, room_name
):
    """`limit.subscription_limit_audio: 1` (LiveKit's key): bob receives one of the
    two voices in the room; when that one stops, he receives the other."""
    server = relais_factory({"limit": {"subscription_limit_audio": 1}})
    bob = await rooms.join(server, BOB, room_name)
    subscribed = EventLog(bob, "track_subscribed")  # (track, publication, participant)
    unsubscribed = EventLog(bob, "track_unsubscribed")
    stop = asyncio.Event()
    players, published = [], {}
    try:
        for who in (ALICE, "carol"):
            room = await rooms.join(server, who, room_name)
            publication, player = await publish_tone(room, stop)
            players.append(player)
            published[who] = (room, publication)
        _, _, first = await subscribed.wait(what="bob's first subscription", timeout=15)
        # The second voice is announced to bob but waits for a slot.
        await wait_for(
            lambda: len(bob.remote_participants) == 2
            and all(p.track_publications for p in bob.remote_participants.values()),
            "bob sees both publications",
            10,
        )
        await asyncio.sleep(2)
        assert len(subscribed.all()) == 1, [p.identity for _, _, p in subscribed.all()]
        # The voice bob hears stops: the other takes its place.
        room, publication = published[first.identity]
        await bounded(
            room.local_participant.unpublish_track(publication.sid), "unpublish", 10
        )
        await unsubscribed.wait(what="bob loses the first voice", timeout=10)
        await wait_for(
            lambda: len(subscribed.all()) == 2, "bob subscribed to the other voice", 15
        )
        other = subscribed.all()[1][2].identity
        assert {first.identity, other} == {ALICE, "carol"}
    finally:
        await stop_players(stop, players)
