//! A `JoinResponse` encoded without copying the room into it.
//!
//! A newcomer's `JoinResponse` lists every other participant of the room. Built
//! as a message, each of their infos is cloned into it (strings, tracks,
//! attributes) and then encoded: a wave of N joins clones ~N²/2 infos. Here
//! each info comes already encoded (the room keeps it so until it changes)
//! and is copied in whole.

use crate::livekit::JoinResponse;
use crate::Message;

/// A length-delimited field's key: its number, then wire type 2.
const fn key(field: u8) -> u8 {
    field << 3 | 2
}

/// `SignalResponse { join }` in protobuf, its `other_participants` the
/// encoded `ParticipantInfo`s of `others` (`join`'s own must be empty). The
/// bytes are those prost writes for the whole message: the fields in order
/// of their numbers, `others` as field 3 between `participant` (2) and
/// `server_version` (4).
///
/// ```
/// use relais_proto::livekit::{signal_response, JoinResponse, ParticipantInfo, SignalResponse};
/// use relais_proto::{encode_join_response, Message};
///
/// let others = [ParticipantInfo { identity: "bob".into(), ..Default::default() }];
/// let join = JoinResponse { server_version: "1.9.0".into(), ..Default::default() };
/// let encoded: Vec<Vec<u8>> = others.iter().map(Message::encode_to_vec).collect();
/// let bytes = encode_join_response(join.clone(), &encoded);
/// let whole = JoinResponse { other_participants: others.to_vec(), ..join };
/// let message = SignalResponse { message: Some(signal_response::Message::Join(whole)) };
/// assert_eq!(bytes, message.encode_to_vec());
/// ```
pub fn encode_join_response(mut join: JoinResponse, others: &[impl AsRef<[u8]>]) -> Vec<u8> {
    debug_assert!(join.other_participants.is_empty());
    let room = join.room.take();
    let participant = join.participant.take();
    // Sized first and written once: in a large room the message is hundreds
    // of KiB, and a buffer grown by doubling (then copied behind a length
    // prefix) would write it about three times over.
    let body_len = room.as_ref().map_or(0, |m| field_len(m.encoded_len()))
        + participant
            .as_ref()
            .map_or(0, |m| field_len(m.encoded_len()))
        + others
            .iter()
            .map(|o| field_len(o.as_ref().len()))
            .sum::<usize>()
        + join.encoded_len();
    let mut signal = Vec::with_capacity(field_len(body_len));
    // `SignalResponse.join` is field 1 (of its `message` oneof).
    signal.push(key(1));
    prost::encode_length_delimiter(body_len, &mut signal).expect("a Vec grows as needed");
    if let Some(room) = room {
        field(key(1), &room, &mut signal);
    }
    if let Some(participant) = participant {
        field(key(2), &participant, &mut signal);
    }
    for other in others {
        let other = other.as_ref();
        signal.push(key(3));
        prost::encode_length_delimiter(other.len(), &mut signal).expect("a Vec grows as needed");
        signal.extend_from_slice(other);
    }
    // Fields 1 to 3 are empty now: the rest, in their order.
    join.encode(&mut signal).expect("a Vec grows as needed");
    debug_assert_eq!(signal.len(), field_len(body_len));
    signal
}

/// The bytes a length-delimited field of `len` bytes takes: key, length, value.
fn field_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

fn field(key: u8, message: &impl Message, buf: &mut Vec<u8>) {
    buf.push(key);
    message
        .encode_length_delimited(buf)
        .expect("a Vec grows as needed");
}
