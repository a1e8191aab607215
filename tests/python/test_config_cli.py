"""Configuration loading and the tool subcommands of the `relais` binary.

`relais check-config` loads the configuration exactly as the server would
(file/body, environment, flags, --dev defaults), prints the effective settings
as JSON with secrets redacted, and exits 0; errors print `error: <message>` and
exit 2. The binary is `$RELAIS_BIN`, default `target/debug/relais`.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from livekit import api

ROOT = Path(__file__).resolve().parents[2]
KEYS_YAML = "keys:\n  APIcfgKey: cfgSecret0123456789abcdefghijklmnopqrstuvw\n"


def relais_bin() -> str:
    path = os.environ.get("RELAIS_BIN") or str(ROOT / "target" / "debug" / "relais")
    assert Path(path).exists(), f"relais binary not found at {path}: build it first (cargo build)"
    return path


def clean_env(**extra: str) -> dict:
    prefixes = ("LIVEKIT_", "REDIS_")
    names = {"NODE_IP", "UDP_PORT", "RUST_LOG"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in names}
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [relais_bin(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else clean_env(),
    )


def check_config(*args: str, env: dict | None = None) -> dict:
    p = run(*args, "check-config", env=env)
    assert p.returncode == 0, f"check-config failed ({p.returncode}): {p.stderr}"
    return json.loads(p.stdout)


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "relais.yaml"
    path.write_text(text)
    return str(path)


def expect_config_error(tmp_path: Path, text: str, *needles: str) -> str:
    p = run("--config", config_file(tmp_path, text), "check-config")
    assert p.returncode != 0, f"accepted a bad config: {p.stdout}"
    assert p.returncode == 2
    msg = p.stderr.strip()
    assert msg.startswith("error:"), msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


# --- defaults, dev mode, overrides -----------------------------------------


def test_defaults_from_file(tmp_path):
    c = check_config("--config", config_file(tmp_path, KEYS_YAML))
    assert c["port"] == 7880
    assert c["bind_addresses"] == []
    assert c["rtc"]["udp_port"] is None
    assert c["rtc"]["tcp_port"] == 7881
    assert (c["rtc"]["port_range_start"], c["rtc"]["port_range_end"]) == (50000, 60000)
    assert c["room"] == {"auto_create": True, "empty_timeout": 300, "departure_timeout": 20, "max_participants": 0}
    assert c["logging"]["level"] == "info"
    assert c["development"] is False
    assert c["api_keys"] == ["APIcfgKey"]
    assert c["warnings"] == []
    # Secrets never appear in the output.
    assert "cfgSecret" not in json.dumps(c)
    assert c["keys"] == {"APIcfgKey": "***"}


def test_dev_mode():
    c = check_config("--dev")
    assert c["development"] is True
    assert c["api_keys"] == ["devkey"]
    assert c["bind_addresses"][0] == "127.0.0.1"
    assert set(c["bind_addresses"]) <= {"127.0.0.1", "::1"}
    assert c["rtc"]["udp_port"] == 7882
    assert c["logging"]["level"] == "debug"
    # --bind wins over the dev default.
    c = check_config("--dev", "--bind", "0.0.0.0")
    assert c["bind_addresses"] == ["0.0.0.0"]


def test_full_livekit_style_file(tmp_path):
    text = """
port: 7990
bind_addresses:
  - 127.0.0.1
rtc:
  udp_port: 7992
  tcp_port: 7991
  port_range_start: 51000
  port_range_end: 52000
  use_external_ip: true
  node_ip: 192.0.2.10
  fan_out_threads: 3
redis:
  address: localhost:6379
  username: ru
  password: redis-pass-xyz
  db: 3
keys:
  APIa: secretA0123456789
  APIb: secretB0123456789
room:
  auto_create: false
  empty_timeout: 30
  departure_timeout: 2
  max_participants: 8
webhook:
  api_key: APIa
  urls:
    - http://127.0.0.1:9/hook
logging:
  level: warn
  json: true
prometheus:
  port: 6789
  password: prom-pass-xyz
region: eu-1
"""
    c = check_config("--config", config_file(tmp_path, text))
    assert c["port"] == 7990
    assert c["rtc"] == {
        "udp_port": 7992,
        "tcp_port": 7991,
        "tcp_only": False,
        "port_range_start": 51000,
        "port_range_end": 52000,
        "use_external_ip": True,
        "node_ip": "192.0.2.10",
        "fan_out_threads": 3,
        "fan_out_min_sessions": 128,
        "drive_turn_datagrams": 256,
        "direct_audio": True,
        "direct_video": True,
        "direct_ingress": True,
        "timer_slack_ms": 10,
    }
    assert c["redis"]["address"] == "localhost:6379" and c["redis"]["db"] == 3
    assert c["room"] == {"auto_create": False, "empty_timeout": 30, "departure_timeout": 2, "max_participants": 8}
    assert c["webhook"] == {"api_key": "APIa", "urls": ["http://127.0.0.1:9/hook"]}
    assert c["logging"] == {"level": "warn", "json": True}
    assert c["prometheus"]["port"] == 6789
    assert c["region"] == "eu-1"
    assert c["api_keys"] == ["APIa", "APIb"]
    out = json.dumps(c)
    for secret in ["secretA", "secretB", "redis-pass-xyz", "prom-pass-xyz"]:
        assert secret not in out


def test_env_and_flag_overrides(tmp_path):
    path = config_file(tmp_path, KEYS_YAML + "port: 1000\nrtc:\n  udp_port: 1001\n")
    env = clean_env(
        LIVEKIT_KEYS="envkey: envsecret0123456789",
        NODE_IP="198.51.100.7",
        REDIS_HOST="redis.example:6380",
        REDIS_PASSWORD="pw-from-env",
        UDP_PORT="1002",
    )
    c = check_config("--config", path, "--port", "2000", env=env)
    assert c["port"] == 2000
    assert c["rtc"]["udp_port"] == 1002
    assert c["rtc"]["node_ip"] == "198.51.100.7"
    assert c["redis"]["address"] == "redis.example:6380"
    assert c["redis"]["password"] == "***"
    assert c["api_keys"] == ["envkey"]  # LIVEKIT_KEYS replaces the file's keys
    # A flag beats the environment.
    c = check_config("--config", path, "--udp-port", "3000", "--node-ip", "203.0.113.1", env=env)
    assert c["rtc"]["udp_port"] == 3000
    assert c["rtc"]["node_ip"] == "203.0.113.1"
    # A range (one shard per port), as LiveKit's udp_port accepts it.
    c = check_config("--config", path, env=clean_env(UDP_PORT="7990-7993"))
    assert c["rtc"]["udp_port"] == "7990-7993"


def test_livekit_config_env_holds_yaml_content():
    env = clean_env(LIVEKIT_CONFIG=KEYS_YAML + "port: 7111\n")
    c = check_config(env=env)
    assert c["port"] == 7111
    assert c["api_keys"] == ["APIcfgKey"]
    c = check_config("--config-body", KEYS_YAML + "port: 7222\n")
    assert c["port"] == 7222


def test_multi_key_env_syntax():
    env = clean_env(LIVEKIT_KEYS="k1: s1-0123456789\nk2: s2-0123456789, k3: s3-0123456789")
    assert check_config(env=env)["api_keys"] == ["k1", "k2", "k3"]


def test_key_file(tmp_path):
    kf = tmp_path / "keys.yaml"
    kf.write_text("APIfromFile: fileSecret0123456789\n")
    kf.chmod(0o600)
    c = check_config("--key-file", str(kf))
    assert c["api_keys"] == ["APIfromFile"]
    c = check_config("--config", config_file(tmp_path, f"key_file: {kf}\n"))
    assert c["api_keys"] == ["APIfromFile"]


# --- errors -----------------------------------------------------------------


def test_missing_keys_is_an_error():
    p = run("check-config")
    assert p.returncode == 2
    assert "no API keys configured" in p.stderr
    # The server refuses to start too.
    p = run()
    assert p.returncode == 2
    assert "no API keys configured" in p.stderr


def test_empty_secret_is_an_error(tmp_path):
    expect_config_error(tmp_path, "keys:\n  k: ''\n", "empty secret")


def test_malformed_yaml(tmp_path):
    expect_config_error(tmp_path, KEYS_YAML + "port: [1, 2\n", "invalid YAML")
    expect_config_error(tmp_path, "- just\n- a list\n", "map")


def test_malformed_yaml_does_not_echo_secrets(tmp_path):
    msg = expect_config_error(tmp_path, "keys:\n  k: topSecretValue42\nrtc: [\n", "invalid YAML")
    assert "topSecretValue42" not in msg


def test_port_not_a_number(tmp_path):
    expect_config_error(tmp_path, KEYS_YAML + "port: abc\n", "`port`")


def test_udp_port_out_of_range(tmp_path):
    expect_config_error(tmp_path, KEYS_YAML + "rtc: {udp_port: 70000}\n", "rtc.udp_port", "70000")


@pytest.mark.parametrize(
    "text,key",
    [
        ("rtc:\n  tcp_port: -1\n", "rtc.tcp_port"),
        ("rtc:\n  use_external_ip: sometimes\n", "rtc.use_external_ip"),
        ("rtc:\n  node_ip: not-an-ip\n", "rtc.node_ip"),
        ("rtc:\n  port_range_start: 60001\n  port_range_end: 60000\n", "rtc.port_range_start"),
        ("room:\n  empty_timeout: soon\n", "room.empty_timeout"),
        ("room:\n  auto_create: 3\n", "room.auto_create"),
        ("redis:\n  db: x\n", "redis.db"),
        ("logging:\n  level: chatty\n", "logging.level"),
        ("bind_addresses: [localhost-ish]\n", "bind_addresses[0]"),
        ("webhook:\n  urls: [http://x]\n", "webhook.api_key"),
        ("webhook:\n  api_key: nope\n  urls: [http://x]\n", "webhook.api_key"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    expect_config_error(tmp_path, KEYS_YAML + text, key)


def test_bad_flag_value():
    p = run("--dev", "--port", "70000", "check-config")
    assert p.returncode == 2
    assert "--port" in p.stderr


def test_missing_config_file(tmp_path):
    p = run("--config", str(tmp_path / "nope.yaml"), "check-config")
    assert p.returncode == 2
    assert "nope.yaml" in p.stderr


def test_unknown_keys_warn_but_load(tmp_path):
    text = KEYS_YAML + "port: 7333\nrtc:\n  udpport: 7882\n  tcp_port: 7334\nturn:\n  enabled: false\n"
    p = run("--config", config_file(tmp_path, text), "check-config")
    assert p.returncode == 0, p.stderr
    c = json.loads(p.stdout)
    assert c["port"] == 7333 and c["rtc"]["tcp_port"] == 7334
    assert "rtc.udpport" in p.stderr and "WARN" in p.stderr
    assert "turn" in p.stderr
    assert any("rtc.udpport" in w for w in c["warnings"])


# --- generate-keys / create-token -----------------------------------------------


def test_generate_keys_shape():
    p = run("generate-keys")
    assert p.returncode == 0, p.stderr
    m = re.fullmatch(r"API Key: (API[A-Za-z0-9]{12})\nAPI Secret: ([A-Za-z0-9]{43})\n", p.stdout)
    assert m, p.stdout
    again = run("generate-keys").stdout
    assert again != p.stdout
    # The generated pair works end to end.
    key, secret = m.groups()
    t = run("create-token", "--api-key", key, "--api-secret", secret, "--room", "r", "--identity", "i")
    assert t.returncode == 0, t.stderr
    claims = api.TokenVerifier(key, secret).verify(t.stdout.strip())
    assert claims.identity == "i" and claims.video.room == "r" and claims.video.room_join


def test_create_token_with_configured_key_verifies(tmp_path):
    path = config_file(tmp_path, KEYS_YAML)
    p = run("--config", path, "create-token", "--room", "cfg-room", "--identity", "cfg-user", "--valid-for", "10m")
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    claims = api.TokenVerifier("APIcfgKey", "cfgSecret0123456789abcdefghijklmnopqrstuvw").verify(token)
    assert claims.identity == "cfg-user"
    assert claims.video.room == "cfg-room" and claims.video.room_join is True
    v = run("--config", path, "verify-token", token)
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout)["identity"] == "cfg-user"


def test_help_lists_commands():
    p = run("--help")
    assert p.returncode == 0
    for word in ["generate-keys", "create-token", "check-config", "--dev", "--config", "--keys", "--bind"]:
        assert word in p.stdout
