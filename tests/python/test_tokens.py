"""Access-token compatibility between Relais and the real Python `livekit-api`.

* Tokens minted by `livekit.api.AccessToken` verify in Relais, every claim
  decoded exactly (`relais verify-token` prints what Relais decoded).
* Tokens minted by `relais create-token` pass `livekit.api.TokenVerifier`.
* Bad tokens are rejected with a non-zero exit and a clear message.

The binary is `$RELAIS_BIN`, default `target/debug/relais` under the repo root.
"""

import base64
import datetime
import hashlib
import hmac
import json
import os
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from livekit import api
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomConfiguration

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "APIpyTestKey01"
API_SECRET = "pyTestSecret0123456789abcdefghijklmnopqrstu"
OTHER_KEY = "APIotherKey002"
OTHER_SECRET = "otherSecret0123456789abcdefghijklmnopqrst"
KEYS = f"{API_KEY}: {API_SECRET}, {OTHER_KEY}: {OTHER_SECRET}"


def relais_bin() -> str:
    path = os.environ.get("RELAIS_BIN") or str(ROOT / "target" / "debug" / "relais")
    assert Path(path).exists(), f"relais binary not found at {path}: build it first (cargo build)"
    return path


def clean_env() -> dict:
    """The environment without anything that configures Relais."""
    prefixes = ("LIVEKIT_", "REDIS_")
    names = {"NODE_IP", "UDP_PORT", "RUST_LOG"}
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in names}


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [relais_bin(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else clean_env(),
    )


def verify(token: str, keys: str = KEYS) -> subprocess.CompletedProcess:
    return run("--keys", keys, "verify-token", token)


def verify_ok(token: str, keys: str = KEYS) -> dict:
    p = verify(token, keys)
    assert p.returncode == 0, f"verify-token failed: {p.stderr}"
    return json.loads(p.stdout)


def payload_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, payload: dict, secret: str | None = API_SECRET) -> str:
    """A JWT with an arbitrary header, HMAC-SHA256-signed (or unsigned)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def base_payload(**extra) -> dict:
    now = int(time.time())
    p = {"iss": API_KEY, "sub": "alice", "nbf": now - 5, "exp": now + 600}
    p.update(extra)
    return p


def all_grants_token() -> str:
    grants = api.VideoGrants(
        room_create=True,
        room_list=True,
        room_record=True,
        room_admin=True,
        room_join=True,
        room="py-room",
        destination_room="py-dest",
        can_publish=False,
        can_subscribe=False,
        can_publish_data=False,
        can_publish_sources=["camera", "microphone", "screen_share", "screen_share_audio"],
        can_update_own_metadata=True,
        ingress_admin=True,
        hidden=True,
        recorder=True,
        agent=True,
        can_manage_agent_session=True,
        can_subscribe_metrics=True,
    )
    room_config = RoomConfiguration(
        name="py-room",
        empty_timeout=11,
        departure_timeout=7,
        max_participants=42,
        metadata="room-meta",
        min_playout_delay=100,
        max_playout_delay=2000,
        sync_streams=True,
        agents=[RoomAgentDispatch(agent_name="helper", metadata="job-meta")],
    )
    return (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity("py-identity")
        .with_name("Py Name ✓")
        .with_kind("agent")
        .with_metadata('{"role": "host"}')
        .with_attributes({"hand": "raised", "lang": "fr", "empty": ""})
        .with_grants(grants)
        .with_sip_grants(api.SIPGrants(admin=True, call=True))
        .with_agent_grants(
            api.AgentGrants(admin=True, simulation_admin=True, database_admin=True, dispatch_admin=True)
        )
        .with_inference_grants(api.InferenceGrants(perform=True))
        .with_observability_grants(api.ObservabilityGrants(write=True))
        .with_sha256("q83vEjRWeJA=")
        .with_room_preset("preset-1")
        .with_room_config(room_config)
        .with_ttl(datetime.timedelta(minutes=10))
        .to_jwt()
    )


# --- Python-minted tokens verify in Relais ---------------------------------


def test_python_token_all_fields_decoded_exactly():
    token = all_grants_token()
    out = verify_ok(token)
    payload = payload_of(token)
    # Everything Python wrote comes back identical, unknown claims included.
    assert out["claims"] == payload
    c = out["claims"]
    assert out["identity"] == "py-identity"
    assert out["apiKey"] == API_KEY
    assert c["name"] == "Py Name ✓"
    assert c["kind"] == "agent"
    assert c["metadata"] == '{"role": "host"}'
    assert c["attributes"] == {"hand": "raised", "lang": "fr", "empty": ""}
    assert c["sha256"] == "q83vEjRWeJA="
    assert c["roomPreset"] == "preset-1"
    assert c["video"] == {
        "roomCreate": True,
        "roomList": True,
        "roomRecord": True,
        "roomAdmin": True,
        "roomJoin": True,
        "room": "py-room",
        "destinationRoom": "py-dest",
        "canPublish": False,
        "canSubscribe": False,
        "canPublishData": False,
        "canPublishSources": ["camera", "microphone", "screen_share", "screen_share_audio"],
        "canUpdateOwnMetadata": True,
        "ingressAdmin": True,
        "hidden": True,
        "recorder": True,
        "agent": True,
        "canManageAgentSession": True,
        "canSubscribeMetrics": True,
    }
    assert c["sip"] == {"admin": True, "call": True}
    assert c["agent"]["admin"] is True and c["agent"]["simulationAdmin"] is True
    assert c["agent"]["databaseAdmin"] is True and c["agent"]["dispatchAdmin"] is True
    assert c["inference"] == {"perform": True}
    assert c["observability"] == {"write": True}
    rc = c["roomConfig"]
    assert rc["name"] == "py-room"
    assert rc["emptyTimeout"] == 11 and rc["departureTimeout"] == 7
    assert rc["maxParticipants"] == 42 and rc["metadata"] == "room-meta"
    assert rc["minPlayoutDelay"] == 100 and rc["maxPlayoutDelay"] == 2000
    assert rc["syncStreams"] is True
    assert rc["agents"] == [{"agentName": "helper", "metadata": "job-meta"}]
    # Effective permissions follow the explicit values.
    perms = out["permissions"]
    assert perms["canPublish"] is False
    assert perms["canSubscribe"] is False
    assert perms["canPublishData"] is False
    assert perms["canUpdateOwnMetadata"] is True
    assert perms["roomJoin"] is True and perms["roomAdmin"] is True and perms["hidden"] is True


def test_python_token_defaults():
    token = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity("bob")
        .with_grants(api.VideoGrants(room_join=True, room="r"))
        .to_jwt()
    )
    out = verify_ok(token)
    assert out["claims"] == payload_of(token)
    # Python writes canPublish/canSubscribe/canPublishData: true.
    assert out["permissions"]["canPublish"] is True
    assert out["permissions"]["canSubscribe"] is True
    assert out["permissions"]["canPublishData"] is True
    assert out["permissions"]["canUpdateOwnMetadata"] is False
    # Python: 6 h TTL, nbf and exp, no iat.
    c = out["claims"]
    assert c["exp"] - c["nbf"] == 6 * 3600
    assert "iat" not in c


def test_python_token_other_key_and_jti_fallback():
    token = api.AccessToken(OTHER_KEY, OTHER_SECRET).with_grants(api.VideoGrants(room_list=True)).to_jwt()
    out = verify_ok(token)
    assert out["apiKey"] == OTHER_KEY
    assert out["identity"] == ""  # Python writes sub: "" when no identity
    token = jwt.encode(base_payload(sub="", jti="from-jti"), API_SECRET, algorithm="HS256")
    assert verify_ok(token)["identity"] == "from-jti"


def test_publish_data_defaults_to_can_publish():
    token = jwt.encode(base_payload(video={"roomJoin": True, "room": "r", "canPublish": False}), API_SECRET)
    perms = verify_ok(token)["permissions"]
    assert perms["canPublish"] is False and perms["canPublishData"] is False
    assert perms["canSubscribe"] is True


# --- Relais-minted tokens pass livekit-api's TokenVerifier -----------------


def test_relais_token_passes_python_verifier():
    p = run(
        "--keys",
        KEYS,
        "create-token",
        "--api-key",
        API_KEY,
        "--room",
        "rl-room",
        "--identity",
        "rl-user",
        "--name",
        "Relais User",
        "--metadata",
        "md",
        "--attribute",
        "k1=v1",
        "--attribute",
        "k2=v=2",
        "--kind",
        "standard",
        "--grants",
        "join,publish,subscribe,admin,list,create,record,hidden,recorder,agent,ingress,update-metadata,metrics,agent-session",
        "--sources",
        "camera,microphone",
        "--valid-for",
        "1h",
    )
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    assert token.count(".") == 2
    claims = api.TokenVerifier(API_KEY, API_SECRET).verify(token)
    assert claims.identity == "rl-user"
    assert claims.name == "Relais User"
    assert claims.metadata == "md"
    assert claims.kind == "standard"
    assert claims.attributes == {"k1": "v1", "k2": "v=2"}
    v = claims.video
    assert v.room == "rl-room" and v.room_join and v.room_admin and v.room_list
    assert v.room_create and v.room_record and v.hidden and v.recorder and v.agent
    assert v.ingress_admin and v.can_update_own_metadata and v.can_subscribe_metrics
    assert v.can_manage_agent_session
    assert v.can_publish and v.can_subscribe and v.can_publish_data
    assert v.can_publish_sources == ["camera", "microphone"]
    raw = payload_of(token)
    assert raw["iss"] == API_KEY
    assert 3590 <= raw["exp"] - raw["nbf"] <= 3610
    # ...and Relais itself accepts it.
    assert verify_ok(token)["claims"] == raw


def test_relais_token_subscribe_only_and_dev_key():
    p = run("--dev", "create-token", "--room", "r", "--identity", "viewer", "--grants", "join,subscribe")
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    claims = api.TokenVerifier("devkey", "secret").verify(token)
    assert claims.identity == "viewer"
    assert claims.video.can_subscribe is True
    assert claims.video.can_publish is False
    assert claims.video.can_publish_data is False
    # Default TTL is 6 h, like the SDKs.
    raw = payload_of(token)
    assert raw["exp"] - raw["nbf"] == 6 * 3600
    # Wrong secret: the Python verifier rejects it.
    with pytest.raises(jwt.InvalidSignatureError):
        api.TokenVerifier("devkey", "not-the-secret").verify(token)


def test_create_token_with_explicit_secret_needs_no_config():
    p = run("create-token", "--api-key", "k", "--api-secret", "s", "--grants", "list")
    assert p.returncode == 0, p.stderr
    claims = api.TokenVerifier("k", "s").verify(p.stdout.strip())
    assert claims.video.room_list is True


def test_create_token_usage_errors():
    p = run("--dev", "create-token", "--room", "r")  # join needs an identity
    assert p.returncode != 0 and "--identity" in p.stderr
    p = run("--dev", "create-token", "--grants", "fly")
    assert p.returncode != 0 and "unknown grant" in p.stderr
    p = run("--keys", KEYS, "create-token", "--grants", "list")  # two keys, none chosen
    assert p.returncode != 0 and "--api-key" in p.stderr


# --- bad input -------------------------------------------------------------


def expect_rejected(token: str, *needles: str) -> str:
    p = verify(token)
    assert p.returncode != 0, f"accepted a bad token: {p.stdout}"
    assert p.stdout.strip() == ""
    msg = p.stderr.strip()
    assert msg.startswith("error:"), msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    assert API_SECRET not in msg and OTHER_SECRET not in msg
    return msg


def test_expired_token():
    token = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_identity("late")
        .with_ttl(datetime.timedelta(minutes=-5))
        .to_jwt()
    )
    expect_rejected(token, "expired")


def test_within_leeway_is_accepted():
    now = int(time.time())
    token = jwt.encode(base_payload(exp=now - 20, nbf=now + 20), API_SECRET, algorithm="HS256")
    assert verify_ok(token)["identity"] == "alice"


def test_not_yet_valid():
    token = jwt.encode(base_payload(nbf=int(time.time()) + 600), API_SECRET, algorithm="HS256")
    expect_rejected(token, "not valid yet")


def test_missing_exp():
    payload = base_payload()
    del payload["exp"]
    token = jwt.encode(payload, API_SECRET, algorithm="HS256")
    expect_rejected(token, "exp")


def test_alg_none():
    token = hand_made({"alg": "none", "typ": "JWT"}, base_payload(), secret=None)
    expect_rejected(token, "none", "HS256")


def test_rs256_header():
    token = hand_made({"alg": "RS256", "typ": "JWT"}, base_payload())
    expect_rejected(token, "RS256", "HS256")


def test_hs512_rejected():
    token = jwt.encode(base_payload(), API_SECRET, algorithm="HS512")
    expect_rejected(token, "HS512")


def test_unknown_api_key():
    token = api.AccessToken("APInotConfigured", API_SECRET).with_identity("x").to_jwt()
    expect_rejected(token, "invalid API key", "APInotConfigured")


def test_bad_signature():
    # Signed with another key's secret.
    token = api.AccessToken(API_KEY, OTHER_SECRET).with_identity("x").to_jwt()
    expect_rejected(token, "signature")
    # Tampered payload.
    good = api.AccessToken(API_KEY, API_SECRET).with_identity("x").to_jwt()
    h, _, s = good.split(".")
    forged = f"{h}.{b64url(json.dumps(base_payload(sub='mallory')).encode())}.{s}"
    expect_rejected(forged, "signature")


def test_unknown_grant_field():
    token = jwt.encode(
        base_payload(video={"roomJoin": True, "room": "r", "canPublsh": False}), API_SECRET, algorithm="HS256"
    )
    expect_rejected(token, "unknown grant field", "canPublsh")


def test_malformed_tokens():
    for token in ["", "not-a-jwt", "a.b", "a.b.c.d", "%%%.e30.x"]:
        expect_rejected(token, "malformed")


def test_wrong_claim_type_names_claim():
    token = jwt.encode(base_payload(video={"canPublish": "yes"}), API_SECRET, algorithm="HS256")
    expect_rejected(token, "video")
