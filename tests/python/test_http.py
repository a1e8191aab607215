"""Plain-HTTP face of the server: health check, token validation, the /rtc/v1 fallback.

Contract: shared protocol notes §0, §1.2, §1.3, §4 (LiveKit's own behaviour).
"""

from __future__ import annotations

import datetime
import uuid

import aiohttp
import pytest

from conftest import API_SECRET, make_raw_token, make_token

TIMEOUT = aiohttp.ClientTimeout(total=10)


async def get(server, path: str, *, params=None, headers=None):
    """GET `path`; returns (status, headers, body text). Never follows redirects."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(
            server.http_url + path, params=params, headers=headers, allow_redirects=False
        ) as resp:
            return resp.status, resp.headers, await resp.text()


def room_name() -> str:
    return f"http-{uuid.uuid4().hex[:8]}"


def valid_token() -> str:
    return make_token("alice", room_name())


def assert_plain_text_reason(status: int, headers, body: str) -> None:
    assert body.strip(), f"HTTP {status} without a reason in the body"
    content_type = headers.get("Content-Type", "")
    assert content_type.startswith("text/plain"), (
        f"HTTP {status} reason should be plain text, got Content-Type {content_type!r}: {body!r}"
    )


async def test_health_check(relais):
    status, _, _ = await get(relais, "/")
    assert status == 200


async def test_validate_with_query_token(relais):
    status, headers, body = await get(
        relais, "/rtc/validate", params={"access_token": valid_token()}
    )
    assert (status, body.strip()) == (200, "success")
    # livekit-client fetches validate cross-origin.
    assert headers.get("Access-Control-Allow-Origin") == "*"


async def test_validate_with_bearer_header(relais):
    status, _, body = await get(
        relais, "/rtc/validate", headers={"Authorization": f"Bearer {valid_token()}"}
    )
    assert (status, body.strip()) == (200, "success")


def _bad_signature() -> str:
    return make_token("alice", room_name(), api_secret=API_SECRET + "-wrong")


def _expired() -> str:
    # exp one hour ago: far outside the 60 s leeway.
    return make_token("alice", room_name(), ttl=datetime.timedelta(hours=-1))


def _unknown_key() -> str:
    return make_token("alice", room_name(), api_key="nosuchkey")


def _no_room_join() -> str:
    return make_token("alice", room_name(), room_join=False)


def _garbage() -> str:
    return "not-a-jwt"


@pytest.mark.parametrize(
    "make_bad_token",
    [_bad_signature, _expired, _unknown_key, _no_room_join, _garbage],
    ids=["bad-signature", "expired", "unknown-api-key", "no-roomJoin", "not-a-jwt"],
)
@pytest.mark.parametrize("via", ["query", "bearer"])
async def test_validate_rejects_unauthorized(relais, make_bad_token, via):
    token = make_bad_token()
    if via == "query":
        status, headers, body = await get(relais, "/rtc/validate", params={"access_token": token})
    else:
        status, headers, body = await get(
            relais, "/rtc/validate", headers={"Authorization": f"Bearer {token}"}
        )
    assert status == 401, f"expected 401, got {status}: {body!r}"
    assert_plain_text_reason(status, headers, body)
    assert body.strip() != "success"


async def test_validate_without_token_is_401(relais):
    status, headers, body = await get(relais, "/rtc/validate")
    assert status == 401, f"expected 401, got {status}: {body!r}"
    assert_plain_text_reason(status, headers, body)


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "", "video": {"roomJoin": True, "room": "some-room"}},
        {"sub": "alice", "video": {"roomJoin": True}},
        {"sub": "alice", "video": {"roomJoin": True, "room": ""}},
    ],
    ids=["empty-identity", "no-room", "empty-room"],
)
async def test_validate_bad_request(relais, claims):
    token = make_raw_token(claims)
    status, headers, body = await get(relais, "/rtc/validate", params={"access_token": token})
    assert status == 400, f"expected 400, got {status}: {body!r}"
    assert_plain_text_reason(status, headers, body)


@pytest.mark.parametrize("path", ["/rtc/v1", "/rtc/v1/validate"])
async def test_v1_path_is_404_so_sdks_fall_back(relais, path):
    """Until single-PC signalling exists, /rtc/v1 must answer a 404 that every SDK reads
    as "fall back to /rtc" (and not as "room does not exist")."""
    status, headers, body = await get(relais, path, params={"access_token": valid_token()})
    assert status == 404, f"expected 404, got {status}: {body!r}"
    assert headers.get("Access-Control-Allow-Origin") == "*"
    assert "requested room does not exist" not in body


async def test_rtc_without_websocket_upgrade_is_client_error(relais):
    status, _, body = await get(relais, "/rtc", params={"access_token": valid_token()})
    assert 400 <= status < 500, f"expected 4xx, got {status}: {body!r}"
