"""Wire compatibility of Relais' protobuf types with LiveKit's (`livekit-protocol`).

Two checks, both driven by the real Python package at test time (no pasted bytes):

(a) Schema: every message and enum in Relais' FILE_DESCRIPTOR_SET (dumped by the
    `wire_roundtrip` example) is compared with the descriptor the `livekit-protocol`
    package carries: field names, numbers, types, type names, labels, proto3 `optional`,
    oneof membership and enum values must all match. Relais may define fewer fields only
    where listed in DOCUMENTED_MISSING_FIELDS, and fewer messages only where listed in
    DOCUMENTED_MISSING_MESSAGES (those omissions are also commented in the .proto files).

(b) Bytes: messages are built with the Python package (each SignalRequest and
    SignalResponse oneof variant, DataPacket with each oneof case, JoinResponse,
    ParticipantInfo, TrackInfo, Room, WrappedJoinRequest, ... plus a generated, fully
    populated vector for every message and every top-level oneof case), serialized, piped
    through `wire_roundtrip` (decode with Relais' prost types, re-encode) and compared
    byte for byte. The proto3-JSON path (pbjson) is checked too: lowerCamel and
    snake_case input, JSON with all no-presence fields emitted, and our JSON output
    parsed back by Python.

Known, documented byte-order difference: prost writes a `oneof` at the position of its
lowest field number, Go/Python write fields strictly by number. Only `DataPacket`
interleaves a oneof (2, 3, 6..15, 18) with plain fields (4, 5, 16, 17). For DataPacket
vectors where that matters the test asserts equality after a per-message stable sort of
fields by number (same records, same content) and semantic equality; the DataPacket
vectors that avoid interleaving must match byte for byte.

Binaries: `$RELAIS_TARGET_DIR/examples/wire_roundtrip` (default `target/debug`, relative
to the repo root); build them with `cargo build --workspace --examples`.
"""

from __future__ import annotations

import base64
import gzip
import os
import subprocess
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor

# Importing the modules registers LiveKit's descriptors in the default pool.
from livekit.protocol import (  # noqa: F401
    agent,
    agent_dispatch,
    egress,
    ingress,
    metrics,
    models,
    room,
    rtc,
    webhook,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# LiveKit messages of the covered files that Relais deliberately does not define.
# (Server-internal RTP state, never on the client or API wire; see livekit_models.proto.)
DOCUMENTED_MISSING_MESSAGES = {
    "livekit.RTPDrift",
    "livekit.RTPStats",
    "livekit.RTCPSenderReportState",
    "livekit.RTPForwarderState",
    "livekit.DependencyDescriptorForwarderState",
    "livekit.RTPMungerState",
    "livekit.VP8MungerState",
}

# LiveKit fields that Relais' versions of a message omit (see the .proto comments).
DOCUMENTED_MISSING_FIELDS = {
    # Placeholder: egress request types are not modelled.
    "livekit.RoomEgress": {"room", "participant", "tracks"},
    # livekit_egress.proto subset.
    "livekit.EgressInfo": {
        "egress", "replay", "room_composite", "web", "participant", "track_composite",
        "track", "stream", "file", "segments", "stream_results", "file_results",
        "segment_results", "image_results",
    },
    # livekit_ingress.proto subset.
    "livekit.IngressInfo": {"audio", "video"},
    "livekit.IngressState": {"video", "audio"},
}

# Files whose every message Relais must define (apart from the documented omissions).
COVERED_FILES = [models, rtc, room, webhook, metrics]

# Messages whose oneof interleaves with plain fields: prost's byte order may differ.
ONEOF_ORDER_EXCEPTIONS = {"livekit.DataPacket"}


# --------------------------------------------------------------------------- helpers


def target_dir() -> Path:
    d = Path(os.environ.get("RELAIS_TARGET_DIR", "target/debug"))
    return d if d.is_absolute() else REPO_ROOT / d


def roundtrip_bin() -> Path:
    exe = target_dir() / "examples" / "wire_roundtrip"
    if not exe.exists():
        pytest.fail(f"{exe} missing: run `cargo build --workspace --examples`")
    return exe


class RoundTrip:
    """A long-running `wire_roundtrip` process speaking the line protocol."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [str(roundtrip_bin())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def call(self, mode: str, name: str, data: bytes) -> bytes:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{mode} {name} {base64.b64encode(data).decode()}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "wire_roundtrip exited"
        status, _, rest = line.rstrip("\n").partition(" ")
        if status != "ok":
            raise AssertionError(f"wire_roundtrip {mode} {name}: {rest}")
        return base64.b64decode(rest)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def rt():
    r = RoundTrip()
    yield r
    r.close()


@pytest.fixture(scope="module")
def ours() -> dict[str, descriptor_pb2.DescriptorProto | descriptor_pb2.EnumDescriptorProto]:
    """Relais' message and enum descriptors, by full name (".livekit.X" without dot)."""
    raw = subprocess.run(
        [str(roundtrip_bin()), "dump_descriptors"], check=True, capture_output=True
    ).stdout
    fds = descriptor_pb2.FileDescriptorSet.FromString(raw)
    out: dict = {}

    def walk(prefix, msgs, enums):
        for e in enums:
            out[f"{prefix}.{e.name}"] = e
        for m in msgs:
            full = f"{prefix}.{m.name}"
            if not m.options.map_entry:
                out[full] = m
            walk(full, m.nested_type, m.enum_type)

    for f in fds.file:
        if f.package == "livekit":
            walk("livekit", f.message_type, f.enum_type)
            for s in f.service:
                out[f"livekit.{s.name}"] = s
    return out


POOL = descriptor_pool.Default()


def real_proto(full: str):
    """LiveKit's descriptor proto for a message, enum or service full name."""
    for finder, proto_cls in (
        (POOL.FindMessageTypeByName, descriptor_pb2.DescriptorProto),
        (POOL.FindEnumTypeByName, descriptor_pb2.EnumDescriptorProto),
        (POOL.FindServiceByName, descriptor_pb2.ServiceDescriptorProto),
    ):
        try:
            d = finder(full)
        except KeyError:
            continue
        p = proto_cls()
        d.CopyToProto(p)
        return p
    return None


def msg_class(full: str):
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full))


# --------------------------------------------------------------------------- (a) schema


def field_facts(m: descriptor_pb2.DescriptorProto, f: descriptor_pb2.FieldDescriptorProto):
    oneof = None
    if f.HasField("oneof_index"):
        oneof = m.oneof_decl[f.oneof_index].name
    return {
        "name": f.name,
        "number": f.number,
        "label": descriptor_pb2.FieldDescriptorProto.Label.Name(f.label),
        "type": descriptor_pb2.FieldDescriptorProto.Type.Name(f.type),
        "type_name": f.type_name,
        "proto3_optional": f.proto3_optional,
        "oneof": oneof,
    }


def test_descriptor_set_is_livekit_package(ours):
    assert "livekit.SignalRequest" in ours and "livekit.RoomService" in ours
    assert len(ours) > 150


def test_every_message_and_enum_matches_livekit(ours):
    problems = []
    for full, ourp in sorted(ours.items()):
        real = real_proto(full)
        if real is None:
            problems.append(f"{full}: not a LiveKit type")
            continue
        if isinstance(ourp, descriptor_pb2.EnumDescriptorProto):
            a = [(v.name, v.number) for v in ourp.value]
            b = [(v.name, v.number) for v in real.value]
            if a != b:
                problems.append(f"enum {full}: ours {a} != livekit {b}")
        elif isinstance(ourp, descriptor_pb2.ServiceDescriptorProto):
            a = [(x.name, x.input_type, x.output_type, x.client_streaming, x.server_streaming)
                 for x in ourp.method]
            b = [(x.name, x.input_type, x.output_type, x.client_streaming, x.server_streaming)
                 for x in real.method]
            if a != b:
                problems.append(f"service {full}: ours {a} != livekit {b}")
        else:
            real_by_number = {f.number: field_facts(real, f) for f in real.field}
            ours_by_number = {f.number: field_facts(ourp, f) for f in ourp.field}
            for num, facts in ours_by_number.items():
                if num not in real_by_number:
                    problems.append(f"{full}: field {facts['name']}={num} not in LiveKit")
                elif facts != real_by_number[num]:
                    problems.append(
                        f"{full}: field {num}: ours {facts} != livekit {real_by_number[num]}"
                    )
            allowed = DOCUMENTED_MISSING_FIELDS.get(full, set())
            for num, facts in real_by_number.items():
                if num not in ours_by_number and facts["name"] not in allowed:
                    problems.append(f"{full}: missing LiveKit field {facts['name']}={num}")
            # Nested map entries (key/value types) are compared through the field type
            # names above and here.
            ours_maps = {n.name: n for n in ourp.nested_type if n.options.map_entry}
            real_maps = {n.name: n for n in real.nested_type if n.options.map_entry}
            for name, entry in ours_maps.items():
                a = [field_facts(entry, f) for f in entry.field]
                b = [field_facts(real_maps[name], f) for f in real_maps[name].field] \
                    if name in real_maps else None
                if a != b:
                    problems.append(f"{full}.{name}: ours {a} != livekit {b}")
    assert not problems, "\n".join(problems)


def test_covered_files_fully_defined(ours):
    missing = []
    for mod in COVERED_FILES:
        fdp = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(fdp)

        def walk(prefix, msgs, enums):
            for e in enums:
                if f"{prefix}.{e.name}" not in ours:
                    missing.append(f"{prefix}.{e.name}")
            for m in msgs:
                full = f"{prefix}.{m.name}"
                if m.options.map_entry:
                    continue
                if full not in ours and full not in DOCUMENTED_MISSING_MESSAGES:
                    missing.append(full)
                if full not in DOCUMENTED_MISSING_MESSAGES:
                    walk(full, m.nested_type, m.enum_type)

        walk("livekit", fdp.message_type, fdp.enum_type)
        for s in fdp.service:
            if f"livekit.{s.name}" not in ours:
                missing.append(f"livekit.{s.name}")
    assert not missing, f"LiveKit types not defined by Relais: {missing}"


def test_documented_omissions_are_real(ours):
    """The allow-lists must not hide anything: each entry really exists in LiveKit."""
    for full in DOCUMENTED_MISSING_MESSAGES:
        assert real_proto(full) is not None, full
        assert full not in ours, f"{full} is defined now: drop it from the list"
    for full, names in DOCUMENTED_MISSING_FIELDS.items():
        real = real_proto(full)
        assert real is not None, full
        real_names = {f.name for f in real.field}
        assert names <= real_names, (full, names - real_names)
        assert not names & {f.name for f in ours[full].field}, (full, "defined now")


# --------------------------------------------------------------------------- wire helpers


def read_varint(b: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def canonical(data: bytes, desc, *, field_order: bool, maps: bool) -> bytes:
    """Normalise the encoder freedoms protobuf allows, recursively through messages.

    field_order: stable-sort each message's fields by number (prost writes a oneof at
        its lowest number; Go/Python write strictly by number).
    maps: drop default key/value records inside map entries (prost omits them; upb and
        Go write both) and sort map entries by their bytes (map order is unspecified;
        upb even sorts integer keys in descending order).
    """
    records = []
    i = 0
    while i < len(data):
        start = i
        key, i = read_varint(data, i)
        num, wt = key >> 3, key & 7
        fd = desc.fields_by_number.get(num) if desc else None
        default = False
        if wt == 0:
            value, i = read_varint(data, i)
            default = value == 0
            body = data[start:i]
        elif wt == 1:
            i += 8
            default = data[i - 8:i] == bytes(8)
            body = data[start:i]
        elif wt == 5:
            i += 4
            default = data[i - 4:i] == bytes(4)
            body = data[start:i]
        elif wt == 2:
            key_end = i
            ln, i = read_varint(data, i)
            payload = data[i:i + ln]
            i += ln
            default = ln == 0
            if fd is not None and fd.type == FieldDescriptor.TYPE_MESSAGE:
                payload = canonical(payload, fd.message_type, field_order=field_order, maps=maps)
            body = data[start:key_end] + _varint(len(payload)) + payload
        else:
            raise ValueError(f"wire type {wt}")
        if maps and desc is not None and desc.GetOptions().map_entry and default:
            continue
        records.append((num, body))
    if field_order:
        records.sort(key=lambda r: r[0])
    if maps and desc is not None:
        # Sort the entries of each map field among themselves, in place.
        for fnum, fd in desc.fields_by_number.items():
            if fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
                idx = [k for k, r in enumerate(records) if r[0] == fnum]
                bodies = sorted(records[k][1] for k in idx)
                for k, b in zip(idx, bodies):
                    records[k] = (fnum, b)
    return b"".join(body for _, body in records)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def reachable_types(msg) -> set[str]:
    """Full names of the message types present in a populated message."""
    names = {msg.DESCRIPTOR.full_name}
    for fd, value in msg.ListFields():
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if fd.message_type.GetOptions().map_entry:
            vals = value.values() if fd.message_type.fields_by_name["value"].type == \
                FieldDescriptor.TYPE_MESSAGE else []
        elif fd.is_repeated:
            vals = value
        else:
            vals = [value]
        for v in vals:
            names |= reachable_types(v)
    return names


def has_map_freedom(msg) -> bool:
    """True if a populated map could legitimately encode differently (order/defaults)."""
    for fd, value in msg.ListFields():
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        entry = fd.message_type
        if entry.GetOptions().map_entry:
            vfd = entry.fields_by_name["value"]
            if len(value) > 1 and entry.fields_by_name["key"].type != FieldDescriptor.TYPE_STRING:
                return True
            for k in value:
                v = value[k]
                if not k or (vfd.type != FieldDescriptor.TYPE_MESSAGE and not v):
                    return True
                if vfd.type == FieldDescriptor.TYPE_MESSAGE and (
                        not v.ByteSize() or has_map_freedom(v)):
                    return True
        else:
            for v in (value if fd.is_repeated else [value]):
                if has_map_freedom(v):
                    return True
    return False


def check_pb(rt: RoundTrip, msg, strict: bool = False) -> None:
    """Relais must re-encode the Python bytes identically.

    With strict=False, only the two documented encoder freedoms are tolerated, and only
    when the message actually exercises them: oneof position in DataPacket, and map
    entry order / default key-value elision.
    """
    name = msg.DESCRIPTOR.full_name
    data = msg.SerializeToString(deterministic=True)
    back = rt.call("pb", name, data)
    if back == data:
        return
    detail = f"{name}: bytes differ\n python: {data.hex()}\n relais: {back.hex()}"
    assert not strict, detail
    parsed = type(msg).FromString(back)
    assert parsed == msg, f"{name}: decoded content differs\n{detail}"
    allow_order = bool(reachable_types(msg) & ONEOF_ORDER_EXCEPTIONS)
    allow_maps = has_map_freedom(msg)
    d = msg.DESCRIPTOR
    assert canonical(back, d, field_order=allow_order, maps=allow_maps) == \
        canonical(data, d, field_order=allow_order, maps=allow_maps), (
        f"{detail}\n(beyond the tolerated differences: oneof order={allow_order}, "
        f"maps={allow_maps})")


def check_json(rt: RoundTrip, msg) -> None:
    name = msg.DESCRIPTOR.full_name
    cls = type(msg)
    variants = {
        "lowerCamel": json_format.MessageToJson(msg),
        "snake_case": json_format.MessageToJson(msg, preserving_proto_field_name=True),
        "all fields": json_format.MessageToJson(
            msg, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        ),
    }
    for label, text in variants.items():
        out = rt.call("json", name, text.encode())
        parsed = json_format.Parse(out.decode(), cls())
        assert parsed == msg, f"{name} JSON ({label}) round trip differs:\n{text}\n{out!r}"
        pb = rt.call("json2pb", name, text.encode())
        assert cls.FromString(pb) == msg, f"{name} JSON ({label}) -> protobuf differs"
    ours = rt.call("pb2json", name, msg.SerializeToString(deterministic=True)).decode()
    assert json_format.Parse(ours, cls()) == msg, f"{name}: our JSON differs:\n{ours}"
    # We write lowerCamel names.
    for fd, _ in msg.ListFields():
        if fd.name != fd.json_name:
            assert f'"{fd.json_name}"' in ours, (name, fd.name, ours)


# --------------------------------------------------------------------------- generated vectors


def fill(msg, ours, depth: int = 0, oneof_choice: dict[str, str] | None = None):
    """Populate every field Relais defines (first case of each oneof unless chosen)."""
    desc = msg.DESCRIPTOR
    # Every LiveKit field except the documented omissions: a field Relais numbers
    # differently is then an unknown field to Relais and the bytes cannot match.
    skip = DOCUMENTED_MISSING_FIELDS.get(desc.full_name, set())
    our_numbers = {f.number for f in desc.fields if f.name not in skip}
    chosen = dict(oneof_choice or {})
    for o in desc.oneofs:
        if o.name not in chosen:
            cands = [f.name for f in o.fields if f.number in our_numbers]
            if cands:
                chosen[o.name] = cands[0]
    for fd in desc.fields:
        if fd.number not in our_numbers:
            continue
        o = fd.containing_oneof
        if o is not None and not _synthetic(o) and chosen.get(o.name) != fd.name:
            continue
        set_field(msg, fd, ours, depth)
    return msg


def _synthetic(o) -> bool:
    return len(o.fields) == 1 and o.fields[0].has_presence and o.name.startswith("_")


def scalar(fd, i: int = 0):
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return f"{fd.name}-{i}-é"
    if t == FieldDescriptor.TYPE_BYTES:
        return bytes([0, 255, i]) + fd.name.encode()
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t == FieldDescriptor.TYPE_ENUM:
        return fd.enum_type.values[-1 - (i % len(fd.enum_type.values))].number
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return -7 - i
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return -123456789012 - i
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return 4000000000 + i
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return 2**63 + 5 + i
    if t == FieldDescriptor.TYPE_FLOAT:
        return 0.5 + i
    if t == FieldDescriptor.TYPE_DOUBLE:
        return 1.25 + i
    raise AssertionError(fd)


def set_field(msg, fd, ours, depth):
    if fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
        kfd = fd.message_type.fields_by_name["key"]
        vfd = fd.message_type.fields_by_name["value"]
        container = getattr(msg, fd.name)
        for i in range(2):
            key = scalar(kfd, i) if kfd.type != FieldDescriptor.TYPE_STRING else f"k{i}"
            if vfd.type == FieldDescriptor.TYPE_MESSAGE:
                if depth < 3:
                    fill(container[key], ours, depth + 1)
                else:
                    container[key].SetInParent()
            else:
                container[key] = scalar(vfd, i)
        return
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        if fd.message_type.full_name == "google.protobuf.Timestamp":
            items = [getattr(msg, fd.name).add()] * 1 if fd.is_repeated \
                else [getattr(msg, fd.name)]
            for ts in items:
                ts.seconds, ts.nanos = 1700000000, 5000
            return
        if fd.is_repeated:
            if depth < 3:
                for _ in range(2):
                    fill(getattr(msg, fd.name).add(), ours, depth + 1)
            return
        sub = getattr(msg, fd.name)
        if depth < 4:
            fill(sub, ours, depth + 1)
        sub.SetInParent()
        return
    if fd.is_repeated:
        getattr(msg, fd.name).extend([scalar(fd, 0), scalar(fd, 1)])
    else:
        setattr(msg, fd.name, scalar(fd))


def generated_vectors(ours):
    """(id, message) for every Relais message: one per top-level oneof case, else one."""
    out = []
    for full, d in sorted(ours.items()):
        if not isinstance(d, descriptor_pb2.DescriptorProto):
            continue
        cls = msg_class(full)
        desc = cls.DESCRIPTOR
        skip = DOCUMENTED_MISSING_FIELDS.get(full, set())
        our_numbers = {f.number for f in desc.fields if f.name not in skip}
        oneofs = [o for o in desc.oneofs if not _synthetic(o)]
        if oneofs:
            for o in oneofs:
                for f in o.fields:
                    if f.number in our_numbers:
                        out.append((f"{full}.{f.name}", fill(cls(), ours, 0, {o.name: f.name})))
        else:
            out.append((full, fill(cls(), ours)))
        out.append((f"{full}(empty)", cls()))
    return out


def test_generated_vectors_protobuf(rt, ours):
    vectors = generated_vectors(ours)
    assert len(vectors) > 300
    failures = []
    for vid, msg in vectors:
        try:
            check_pb(rt, msg)
        except AssertionError as e:
            failures.append(f"{vid}: {e}")
    assert not failures, "\n".join(failures)


def test_generated_vectors_json(rt, ours):
    failures = []
    for vid, msg in generated_vectors(ours):
        try:
            check_json(rt, msg)
        except AssertionError as e:
            failures.append(f"{vid}: {e}")
    assert not failures, "\n".join(failures[:20])


# --------------------------------------------------------------------------- hand-written vectors


def sample_track(sid="TR_VCabcdefghijkm", video=True) -> models.TrackInfo:
    return models.TrackInfo(
        sid=sid,
        type=models.TrackType.VIDEO if video else models.TrackType.AUDIO,
        name="camera" if video else "mic",
        muted=False,
        width=1280 if video else 0,
        height=720 if video else 0,
        source=models.TrackSource.CAMERA if video else models.TrackSource.MICROPHONE,
        layers=[
            models.VideoLayer(quality=models.VideoQuality.LOW, width=320, height=180,
                              bitrate=150_000, ssrc=1111, rid="q"),
            models.VideoLayer(quality=models.VideoQuality.HIGH, width=1280, height=720,
                              bitrate=1_700_000, ssrc=3333, spatial_layer=2, rid="f"),
        ] if video else [],
        mime_type="video/VP8" if video else "audio/opus",
        mid="1",
        codecs=[models.SimulcastCodecInfo(
            mime_type="video/VP8", mid="1", cid="track-cid",
            video_layer_mode=models.VideoLayer.Mode.ONE_SPATIAL_LAYER_PER_STREAM)],
        stream="camera",
        version=models.TimedVersion(unix_micro=1_700_000_000_123_456, ticks=3),
        audio_features=[] if video else [models.AudioTrackFeature.TF_NO_DTX,
                                         models.AudioTrackFeature.TF_ECHO_CANCELLATION],
        encryption=models.Encryption.Type.NONE,
    )


def sample_participant(identity="alice", sid="PA_abcdefghijkm") -> models.ParticipantInfo:
    return models.ParticipantInfo(
        sid=sid,
        identity=identity,
        state=models.ParticipantInfo.State.ACTIVE,
        tracks=[sample_track(), sample_track("TR_AMabcdefghijkm", video=False)],
        metadata='{"role":"host"}',
        joined_at=1_700_000_000,
        joined_at_ms=1_700_000_000_123,
        name=identity.title(),
        version=7,
        permission=models.ParticipantPermission(
            can_subscribe=True, can_publish=True, can_publish_data=True,
            can_publish_sources=[models.TrackSource.CAMERA, models.TrackSource.MICROPHONE],
            can_update_metadata=True),
        region="eu",
        is_publisher=True,
        kind=models.ParticipantInfo.Kind.STANDARD,
        attributes={"hand": "raised", "b": "2", "a": "1"},
        kind_details=[models.ParticipantInfo.KindDetail.FORWARDED],
        data_tracks=[models.DataTrackInfo(pub_handle=1, sid="DTR_abcdefghijkm", name="t")],
        client_protocol=2,
        capabilities=[models.ClientInfo.Capability.CAP_PACKET_TRAILER],
    )


def sample_room() -> models.Room:
    return models.Room(
        sid="RM_abcdefghijkm", name="standup", empty_timeout=300, departure_timeout=20,
        max_participants=50, creation_time=1_700_000_000, creation_time_ms=1_700_000_000_001,
        turn_password="", enabled_codecs=[models.Codec(mime="audio/opus"),
                                          models.Codec(mime="video/VP9", fmtp_line="profile-id=0")],
        metadata="m", num_participants=2, num_publishers=1, active_recording=False,
        version=models.TimedVersion(unix_micro=5, ticks=1),
    )


def sample_join_response() -> rtc.JoinResponse:
    return rtc.JoinResponse(
        room=sample_room(),
        participant=sample_participant(),
        other_participants=[sample_participant("bob", "PA_bobbobbobbob")],
        server_version="1.9.0",
        ice_servers=[rtc.ICEServer(urls=["turn:1.2.3.4:3478?transport=udp"],
                                   username="u", credential="c")],
        subscriber_primary=True,
        client_configuration=models.ClientConfiguration(
            resume_connection=models.ClientConfigSetting.ENABLED,
            disabled_codecs=models.DisabledCodecs(codecs=[models.Codec(mime="video/H265")])),
        server_region="eu",
        ping_timeout=15,
        ping_interval=5,
        server_info=models.ServerInfo(edition=models.ServerInfo.Edition.Standard,
                                      version="0.1.0", protocol=17, node_id="ND_x"),
        sif_trailer=b"\x01\x02",
        enabled_publish_codecs=[models.Codec(mime="video/VP8")],
        fast_publish=True,
    )


def sdp(kind="offer", id_=3):
    return rtc.SessionDescription(type=kind, sdp="v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n", id=id_,
                                  mid_to_track_id={"0": "TR_AMx", "1": "TR_VCy"})


def sample_join_request() -> rtc.JoinRequest:
    return rtc.JoinRequest(
        client_info=models.ClientInfo(sdk=models.ClientInfo.SDK.JS, version="2.21.0",
                                      protocol=17, os="linux", browser="firefox",
                                      client_protocol=2),
        connection_settings=rtc.ConnectionSettings(auto_subscribe=True, adaptive_stream=True,
                                                   subscriber_allow_pause=False),
        metadata="md",
        participant_attributes={"x": "1"},
        add_track_requests=[rtc.AddTrackRequest(cid="c1", name="mic",
                                                type=models.TrackType.AUDIO,
                                                source=models.TrackSource.MICROPHONE)],
        publisher_offer=sdp(),
        reconnect=False,
        reconnect_reason=models.ReconnectReason.RR_UNKNOWN,
    )


def signal_request_variants():
    add_track = rtc.AddTrackRequest(
        cid="cid-1", name="camera", type=models.TrackType.VIDEO, width=1280, height=720,
        source=models.TrackSource.CAMERA,
        layers=[models.VideoLayer(quality=models.VideoQuality.LOW, width=320, height=180)],
        simulcast_codecs=[rtc.SimulcastCodec(codec="vp8", cid="cid-1")],
        stream="camera", backup_codec_policy=models.BackupCodecPolicy.SIMULCAST,
        packet_trailer_features=[models.PacketTrailerFeature.PTF_FRAME_ID])
    return {
        "offer": sdp(),
        "answer": sdp("answer", 4),
        "trickle": rtc.TrickleRequest(
            candidateInit='{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0"}',
            target=rtc.SignalTarget.SUBSCRIBER, final=True),
        "add_track": add_track,
        "mute": rtc.MuteTrackRequest(sid="TR_VCx", muted=True),
        "subscription": rtc.UpdateSubscription(
            track_sids=["TR_1"], subscribe=True,
            participant_tracks=[models.ParticipantTracks(participant_sid="PA_1",
                                                         track_sids=["TR_1", "TR_2"])]),
        "track_setting": rtc.UpdateTrackSettings(track_sids=["TR_1"], disabled=False,
                                                 width=640, height=360, fps=30, priority=1),
        "leave": rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED,
                                  action=rtc.LeaveRequest.Action.DISCONNECT),
        "update_layers": rtc.UpdateVideoLayers(track_sid="TR_1", layers=[models.VideoLayer(
            quality=models.VideoQuality.MEDIUM)]),
        "subscription_permission": rtc.SubscriptionPermission(
            all_participants=False, track_permissions=[rtc.TrackPermission(
                participant_identity="bob", all_tracks=True)]),
        "sync_state": rtc.SyncState(
            answer=sdp("answer", 2), offer=sdp("offer", 2),
            subscription=rtc.UpdateSubscription(track_sids=["TR_1"], subscribe=True),
            publish_tracks=[rtc.TrackPublishedResponse(cid="c", track=sample_track())],
            data_channels=[rtc.DataChannelInfo(label="_reliable", id=1,
                                               target=rtc.SignalTarget.PUBLISHER)],
            track_sids_disabled=["TR_2"],
            datachannel_receive_states=[rtc.DataChannelReceiveState(publisher_sid="PA_1",
                                                                    last_seq=42)]),
        "simulate": rtc.SimulateScenario(
            switch_candidate_protocol=rtc.CandidateProtocol.TCP),
        "ping": 1_700_000_000_000,
        "update_metadata": rtc.UpdateParticipantMetadata(
            metadata="m", name="Alice", attributes={"hand": "up", "z": "1"}, request_id=9),
        "ping_req": rtc.Ping(timestamp=1_700_000_000_000, rtt=42),
        "update_audio_track": rtc.UpdateLocalAudioTrack(
            track_sid="TR_AM1", features=[models.AudioTrackFeature.TF_STEREO,
                                          models.AudioTrackFeature.TF_NO_DTX]),
        "update_video_track": rtc.UpdateLocalVideoTrack(track_sid="TR_VC1", width=640,
                                                        height=480),
        "publish_data_track_request": rtc.PublishDataTrackRequest(
            pub_handle=3, name="telemetry", encryption=models.Encryption.Type.GCM,
            frame_encoding=models.DataTrackFrameEncoding(custom="x-proto")),
        "unpublish_data_track_request": rtc.UnpublishDataTrackRequest(pub_handle=3),
        "update_data_subscription": rtc.UpdateDataSubscription(
            updates=[rtc.UpdateDataSubscription.Update(
                track_sid="DTR_1", subscribe=True,
                options=models.DataTrackSubscriptionOptions(target_fps=10))]),
        "store_data_blob_request": rtc.StoreDataBlobRequest(
            request_id=1, blob=models.DataBlob(key=models.DataBlobKey(generic="k"),
                                               contents=b"\x00blob")),
        "get_data_blob_request": rtc.GetDataBlobRequest(
            request_id=2, participant_identity="bob", key=models.DataBlobKey(generic="k")),
    }


def signal_response_variants():
    return {
        "join": sample_join_response(),
        "answer": sdp("answer", 5),
        "offer": sdp("offer", 6),
        "trickle": rtc.TrickleRequest(candidateInit="{}", target=rtc.SignalTarget.PUBLISHER),
        "update": rtc.ParticipantUpdate(participants=[sample_participant()]),
        "track_published": rtc.TrackPublishedResponse(cid="cid-1", track=sample_track()),
        "leave": rtc.LeaveRequest(
            can_reconnect=True, reason=models.DisconnectReason.STATE_MISMATCH,
            action=rtc.LeaveRequest.Action.RECONNECT,
            regions=rtc.RegionSettings(regions=[rtc.RegionInfo(region="eu", url="wss://x",
                                                               distance=100)])),
        "mute": rtc.MuteTrackRequest(sid="TR_1", muted=True),
        "speakers_changed": rtc.SpeakersChanged(speakers=[
            models.SpeakerInfo(sid="PA_1", level=0.75, active=True),
            models.SpeakerInfo(sid="PA_2", level=0.0, active=False)]),
        "room_update": rtc.RoomUpdate(room=sample_room()),
        "connection_quality": rtc.ConnectionQualityUpdate(updates=[rtc.ConnectionQualityInfo(
            participant_sid="PA_1", quality=models.ConnectionQuality.EXCELLENT, score=4.5)]),
        "stream_state_update": rtc.StreamStateUpdate(stream_states=[rtc.StreamStateInfo(
            participant_sid="PA_1", track_sid="TR_1", state=rtc.StreamState.PAUSED)]),
        "subscribed_quality_update": rtc.SubscribedQualityUpdate(
            track_sid="TR_1",
            subscribed_qualities=[rtc.SubscribedQuality(quality=models.VideoQuality.HIGH,
                                                        enabled=True)],
            subscribed_codecs=[rtc.SubscribedCodec(codec="vp8", qualities=[
                rtc.SubscribedQuality(quality=models.VideoQuality.LOW, enabled=True),
                rtc.SubscribedQuality(quality=models.VideoQuality.MEDIUM, enabled=False)])]),
        "subscription_permission_update": rtc.SubscriptionPermissionUpdate(
            participant_sid="PA_1", track_sid="TR_1", allowed=False),
        "refresh_token": "eyJhbGciOiJIUzI1NiJ9.e30.sig",
        "track_unpublished": rtc.TrackUnpublishedResponse(track_sid="TR_1"),
        "pong": 1_700_000_000_001,
        "reconnect": rtc.ReconnectResponse(
            ice_servers=[rtc.ICEServer(urls=["stun:x"])],
            client_configuration=models.ClientConfiguration(
                force_relay=models.ClientConfigSetting.DISABLED),
            server_info=models.ServerInfo(version="0.1.0", protocol=17),
            last_message_seq=12),
        "pong_resp": rtc.Pong(last_ping_timestamp=1_700_000_000_000,
                              timestamp=1_700_000_000_002),
        "subscription_response": rtc.SubscriptionResponse(
            track_sid="TR_1", err=models.SubscriptionError.SE_TRACK_NOTFOUND),
        "request_response": rtc.RequestResponse(
            request_id=0, reason=rtc.RequestResponse.Reason.NOT_ALLOWED, message="no",
            add_track=rtc.AddTrackRequest(cid="c", type=models.TrackType.DATA)),
        "track_subscribed": rtc.TrackSubscribed(track_sid="TR_1"),
        "room_moved": rtc.RoomMovedResponse(
            room=sample_room(), token="tok", participant=sample_participant(),
            other_participants=[sample_participant("bob", "PA_b")]),
        "media_sections_requirement": rtc.MediaSectionsRequirement(num_audios=2, num_videos=3),
        "subscribed_audio_codec_update": rtc.SubscribedAudioCodecUpdate(
            track_sid="TR_1", subscribed_audio_codecs=[
                models.SubscribedAudioCodec(codec="opus", enabled=True)]),
        "publish_data_track_response": rtc.PublishDataTrackResponse(
            info=models.DataTrackInfo(pub_handle=1, sid="DTR_1", name="n")),
        "unpublish_data_track_response": rtc.UnpublishDataTrackResponse(
            info=models.DataTrackInfo(pub_handle=1, sid="DTR_1")),
        "data_track_subscriber_handles": rtc.DataTrackSubscriberHandles(sub_handles={
            7: rtc.DataTrackSubscriberHandles.PublishedDataTrack(
                publisher_identity="a", publisher_sid="PA_1", track_sid="DTR_1")}),
        "store_data_blob_response": rtc.StoreDataBlobResponse(
            request_id=1, key=models.DataBlobKey(generic="k")),
        "get_data_blob_response": rtc.GetDataBlobResponse(
            request_id=2, blob=models.DataBlob(contents=b"abc")),
    }


def data_packet_cases():
    ds = models.DataStream
    return {
        "user": models.UserPacket(
            participant_sid="PA_1", participant_identity="alice", payload=b"\x00hello",
            destination_identities=["bob"], topic="chat", id="m1", start_time=1,
            end_time=2, nonce=bytes(range(16))),
        "speaker": models.ActiveSpeakerUpdate(speakers=[models.SpeakerInfo(sid="PA_1",
                                                                           level=0.5)]),
        "sip_dtmf": models.SipDTMF(code=5, digit="5"),
        "transcription": models.Transcription(
            transcribed_participant_identity="alice", track_id="TR_AM1",
            segments=[models.TranscriptionSegment(id="s1", text="hi", start_time=10,
                                                  end_time=20, final=True, language="en")]),
        "metrics": metrics.MetricsBatch(
            timestamp_ms=1_700_000_000_000, str_data=["alice"],
            time_series=[metrics.TimeSeriesMetric(
                label=metrics.MetricLabel.PUBLISHER_RTT, participant_identity=4096,
                samples=[metrics.MetricSample(timestamp_ms=1, value=0.5)])]),
        "chat_message": models.ChatMessage(id="c1", timestamp=1_700_000_000_000,
                                           edit_timestamp=1_700_000_000_500, message="hello",
                                           generated=True),
        "rpc_request": models.RpcRequest(id="r1", method="greet", payload='{"a":1}',
                                         response_timeout_ms=5000, version=1),
        "rpc_ack": models.RpcAck(request_id="r1"),
        "rpc_response": models.RpcResponse(request_id="r1", error=models.RpcError(
            code=1500, message="boom", data="d")),
        "stream_header": ds.Header(
            stream_id="st1", timestamp=1_700_000_000_000, topic="lk.chat",
            mime_type="text/plain", total_length=5, attributes={"k": "v"},
            text_header=ds.TextHeader(operation_type=ds.OperationType.UPDATE, version=2,
                                      reply_to_stream_id="st0", attached_stream_ids=["a"]),
            inline_content=b"hello", compression=ds.CompressionType.DEFLATE_RAW),
        "stream_chunk": ds.Chunk(stream_id="st1", chunk_index=0, content=b"hello", version=1),
        "stream_trailer": ds.Trailer(stream_id="st1", reason="done", attributes={"x": "y"}),
        "encrypted_packet": models.EncryptedPacket(
            encryption_type=models.Encryption.Type.GCM, iv=b"\x01" * 12, key_index=2,
            encrypted_value=b"\xde\xad\xbe\xef"),
    }


def test_data_packet_oneof_cases_cover_every_case():
    want = {f.name for f in models.DataPacket.DESCRIPTOR.oneofs_by_name["value"].fields}
    assert set(data_packet_cases()) == want


@pytest.mark.parametrize("case", sorted(data_packet_cases()))
def test_data_packet_each_case(rt, case):
    value = data_packet_cases()[case]
    number = models.DataPacket.DESCRIPTOR.fields_by_name[case].number
    # Byte for byte: kind + the case, plus sequence/sid when they follow the case.
    strict = models.DataPacket(kind=models.DataPacket.Kind.LOSSY)
    getattr(strict, case).CopyFrom(value)
    if number < 16:
        strict.sequence = 77
        strict.participant_sid = "PA_1"
    check_pb(rt, strict, strict=True)
    check_json(rt, strict)
    # Fully populated: as forwarded by a server (identity, destinations, sequence, sid).
    full = models.DataPacket(kind=models.DataPacket.Kind.RELIABLE, participant_identity="alice",
                             destination_identities=["bob", "carol"], sequence=78,
                             participant_sid="PA_1")
    getattr(full, case).CopyFrom(value)
    check_pb(rt, full)
    check_json(rt, full)


def test_signal_request_variants_cover_oneof():
    want = {f.name for f in rtc.SignalRequest.DESCRIPTOR.oneofs_by_name["message"].fields}
    assert set(signal_request_variants()) == want


def test_signal_response_variants_cover_oneof():
    want = {f.name for f in rtc.SignalResponse.DESCRIPTOR.oneofs_by_name["message"].fields}
    assert set(signal_response_variants()) == want


def _signal(cls, case, value):
    msg = cls()
    if isinstance(value, (int, str)):
        setattr(msg, case, value)
    else:
        getattr(msg, case).CopyFrom(value)
    return msg


@pytest.mark.parametrize("case", sorted(signal_request_variants()))
def test_signal_request_variant(rt, case):
    msg = _signal(rtc.SignalRequest, case, signal_request_variants()[case])
    assert msg.WhichOneof("message") == case
    check_pb(rt, msg, strict=True)
    check_json(rt, msg)


@pytest.mark.parametrize("case", sorted(signal_response_variants()))
def test_signal_response_variant(rt, case):
    msg = _signal(rtc.SignalResponse, case, signal_response_variants()[case])
    assert msg.WhichOneof("message") == case
    check_pb(rt, msg, strict=True)
    check_json(rt, msg)


def test_map_encoder_freedoms(rt):
    """Realistic messages whose maps legitimately encode differently (see check_pb)."""
    delete_attr = rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(
        attributes={"hand": "", "z": "1"}, request_id=1))
    handles = rtc.SignalResponse(data_track_subscriber_handles=rtc.DataTrackSubscriberHandles(
        sub_handles={7: rtc.DataTrackSubscriberHandles.PublishedDataTrack(publisher_identity="a"),
                     2: rtc.DataTrackSubscriberHandles.PublishedDataTrack(publisher_sid="b")}))
    for msg in (delete_attr, handles):
        check_pb(rt, msg)
        check_json(rt, msg)
    # The decoded attribute map keeps the empty value (it means "delete the key").
    back = rt.call("pb", "livekit.SignalRequest", delete_attr.SerializeToString())
    assert rtc.SignalRequest.FromString(back).update_metadata.attributes["hand"] == ""


def test_core_messages(rt):
    for msg in (sample_join_response(), sample_participant(), sample_track(),
                sample_track(video=False), sample_room(), sample_join_request()):
        check_pb(rt, msg, strict=True)
        check_json(rt, msg)


@pytest.mark.parametrize("compressed", [False, True])
def test_wrapped_join_request(rt, compressed):
    inner = sample_join_request().SerializeToString(deterministic=True)
    wrapped = rtc.WrappedJoinRequest(
        compression=rtc.WrappedJoinRequest.Compression.GZIP if compressed
        else rtc.WrappedJoinRequest.Compression.NONE,
        join_request=gzip.compress(inner) if compressed else inner)
    check_pb(rt, wrapped, strict=True)
    check_json(rt, wrapped)
    # The inner JoinRequest round-trips too.
    assert rt.call("pb", "livekit.JoinRequest", inner) == inner


def test_room_service_and_webhook_messages(rt):
    msgs = [
        room.CreateRoomRequest(
            name="r", room_preset="p", empty_timeout=60, departure_timeout=10,
            max_participants=5, node_id="ND_1", metadata="m", tags={"t": "1"},
            min_playout_delay=1, max_playout_delay=2, sync_streams=True, replay_enabled=True,
            agents=[agent_dispatch.RoomAgentDispatch(agent_name="a", metadata="m",
                                                     attributes={"k": "v"})]),
        room.ListRoomsResponse(rooms=[sample_room()]),
        room.RoomParticipantIdentity(room="r", identity="alice", revoke_token_ts=5),
        room.UpdateParticipantRequest(room="r", identity="alice", metadata="m",
                                      permission=models.ParticipantPermission(can_publish=True),
                                      name="A", attributes={"a": "1"}),
        room.SendDataRequest(room="r", data=b"x", kind=models.DataPacket.Kind.RELIABLE,
                             destination_identities=["bob"], topic="t", nonce=bytes(16)),
        room.MuteRoomTrackResponse(track=sample_track()),
        room.PerformRpcRequest(room="r", destination_identity="bob", method="m",
                               payload="p", response_timeout_ms=1000),
        webhook.WebhookEvent(
            event="participant_joined", room=sample_room(), participant=sample_participant(),
            track=sample_track(), id="EV_abcdefghijkm", created_at=1_700_000_000,
            egress_info=egress.EgressInfo(egress_id="EG_1", room_id="RM_1", room_name="r",
                                          status=egress.EgressStatus.EGRESS_COMPLETE,
                                          started_at=1, ended_at=2, updated_at=3, error=""),
            job=agent.Job(id="AJ_1", type=agent.JobType.JT_ROOM, room=sample_room(),
                          agent_name="a", state=agent.JobState(status=agent.JobStatus.JS_RUNNING)),
            room_end_reason=models.RoomEndReason.ROOM_END_API_DELETE),
    ]
    for msg in msgs:
        check_pb(rt, msg, strict=True)
        check_json(rt, msg)
