"""A room's fan-out on helper threads (`rtc.fan_out_threads`, `rtc.fan_out_min_sessions`).

A shard hands the sessions due in a round to the node's helper threads once at least
`fan_out_min_sessions` are due (128 by default: a large room). With the threshold at 1,
every round of the real SDK's call below goes through the helpers, so its subscriber and
publisher sessions are driven there, off the shard thread, their datagrams sent by the
helper that drove them — or, over ICE-TCP, handed back to the shard thread, which owns
the TCP connections. A helper is called in only for a round of two chunks or more: a
third participant, subscribed to alice too, makes each of her packets due at two
subscriber sessions at once (in a two-person call that took the chance meeting of a
copy and a publisher's own timer in one round).
"""

from __future__ import annotations

import uuid

import pytest

from conftest import TCP_ONLY, deep_merge
from test_call import check_tone_and_picture, join_pair, send_tone_and_picture
from test_observability import Scraper, start_with_metrics

FAN_OUT = {"rtc": {"fan_out_threads": 2, "fan_out_min_sessions": 1}}


@pytest.fixture
def room_name() -> str:
    return f"fan-out-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_call_runs_through_the_fan_out_helpers(
    relais_factory, rooms, room_name, transport
):
    config = deep_merge(FAN_OUT, TCP_ONLY) if transport == "tcp" else FAN_OUT
    server, port = start_with_metrics(relais_factory, config)
    metrics = Scraper(port)
    alice, bob = await join_pair(server, rooms, room_name)
    await rooms.join(server, "carol", room_name)

    async def a_helper_drove_chunks():
        # A helper takes a chunk only if it wakes before the shard thread has
        # driven them all (a two-person call's rounds are a few sessions): so
        # the media keeps flowing until one has.
        await metrics.wait(
            "chunks driven by a helper thread",
            "relais_fan_out_helper_chunks_total",
            lambda v: v > 0,
            timeout=60,
        )

    tone, frames = await send_tone_and_picture(
        alice, bob, while_playing=a_helper_drove_chunks
    )
    check_tone_and_picture(tone, frames)
    sessions = await metrics.wait(
        "sessions driven in chunks",
        "relais_fan_out_sessions_total",
        lambda v: v > 100,
    )
    if transport == "tcp":
        assert metrics.value("relais_udp_datagrams_received_total") == 0
    print(f"{transport}: {sessions:.0f} sessions driven in chunks")
