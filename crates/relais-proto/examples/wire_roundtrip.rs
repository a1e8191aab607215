//! Round-trip helper for the wire-compatibility test
//! (`tests/python/test_wire_compat.py`).
//!
//! * `wire_roundtrip dump_descriptors` writes [`relais_proto::FILE_DESCRIPTOR_SET`]
//!   to stdout.
//! * `wire_roundtrip` (no argument) reads lines `<mode> <Message> <base64>`
//!   from stdin and answers each with `ok <base64>` or `err <reason>`:
//!   - `pb`: decode protobuf with Relais' type, re-encode protobuf;
//!   - `json`: parse proto3 JSON, write proto3 JSON;
//!   - `pb2json`: decode protobuf, write proto3 JSON;
//!   - `json2pb`: parse proto3 JSON, encode protobuf.
//!
//! `<Message>` is a full name such as `livekit.SignalRequest` or
//! `livekit.DataStream.Header` (the `livekit.` prefix is optional).

use std::io::{BufRead, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use relais_proto::Message;
use serde::{de::DeserializeOwned, Serialize};

fn run<T>(mode: &str, input: &[u8]) -> Result<Vec<u8>, String>
where
    T: Message + Default + Serialize + DeserializeOwned,
{
    let from_pb = |b: &[u8]| T::decode(b).map_err(|e| format!("decode: {e}"));
    let from_json = |b: &[u8]| {
        let s = std::str::from_utf8(b).map_err(|e| format!("utf8: {e}"))?;
        serde_json::from_str::<T>(s).map_err(|e| format!("json parse: {e}"))
    };
    let to_json = |m: &T| serde_json::to_vec(m).map_err(|e| format!("json write: {e}"));
    match mode {
        "pb" => Ok(from_pb(input)?.encode_to_vec()),
        "json" => to_json(&from_json(input)?),
        "pb2json" => to_json(&from_pb(input)?),
        "json2pb" => Ok(from_json(input)?.encode_to_vec()),
        other => Err(format!("unknown mode {other}")),
    }
}

macro_rules! dispatcher {
    ($(($full:expr, $ty:ty)),* $(,)?) => {
        fn handle(mode: &str, name: &str, input: &[u8]) -> Result<Vec<u8>, String> {
            let full = if name.starts_with("livekit.") {
                name.to_string()
            } else {
                format!("livekit.{name}")
            };
            $(
                if full == $full {
                    return run::<$ty>(mode, input);
                }
            )*
            Err(format!("unknown message {name}"))
        }
    };
}

relais_proto::for_each_message!(dispatcher);

fn main() {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if std::env::args().nth(1).as_deref() == Some("dump_descriptors") {
        out.write_all(relais_proto::FILE_DESCRIPTOR_SET)
            .expect("write descriptors");
        return;
    }
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("read stdin");
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        let (mode, name, data) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let reply = B64
            .decode(data)
            .map_err(|e| format!("base64: {e}"))
            .and_then(|bytes| handle(mode, name, &bytes));
        match reply {
            Ok(bytes) => writeln!(out, "ok {}", B64.encode(bytes)),
            Err(e) => writeln!(out, "err {}", e.replace('\n', " ")),
        }
        .expect("write stdout");
        out.flush().expect("flush stdout");
    }
}
