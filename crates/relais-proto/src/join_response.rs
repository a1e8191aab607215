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
/// let bytes = encode_join_response(join.clone(), others.iter().map(Message::encode_to_vec));
/// let whole = JoinResponse { other_participants: others.to_vec(), ..join };
/// let message = SignalResponse { message: Some(signal_response::Message::Join(whole)) };
/// assert_eq!(bytes, message.encode_to_vec());
/// ```
pub fn encode_join_response(
    mut join: JoinResponse,
    others: impl Iterator<Item = impl AsRef<[u8]>>,
) -> Vec<u8> {
    debug_assert!(join.other_participants.is_empty());
    let mut body = Vec::new();
    if let Some(room) = join.room.take() {
        field(key(1), &room, &mut body);
    }
    if let Some(participant) = join.participant.take() {
        field(key(2), &participant, &mut body);
    }
    for other in others {
        let other = other.as_ref();
        body.push(key(3));
        prost::encode_length_delimiter(other.len(), &mut body).expect("a Vec grows as needed");
        body.extend_from_slice(other);
    }
    // Fields 1 to 3 are empty now: the rest, in their order.
    body.extend_from_slice(&join.encode_to_vec());
    // `SignalResponse.join` is field 1 (of its `message` oneof).
    let mut signal = Vec::with_capacity(body.len() + 6);
    signal.push(key(1));
    prost::encode_length_delimiter(body.len(), &mut signal).expect("a Vec grows as needed");
    signal.extend_from_slice(&body);
    signal
}

fn field(key: u8, message: &impl Message, buf: &mut Vec<u8>) {
    buf.push(key);
    message
        .encode_length_delimited(buf)
        .expect("a Vec grows as needed");
}
