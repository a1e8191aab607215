//! Data packets: from a participant's data channel to the others' (with
//! LiveKit's destination and permission rules), and from the server.

use std::time::Instant;

use prost::Message;
use relais_proto::livekit::{data_packet, DataPacket};
use tracing::debug;

use crate::participant::{DataKind, ParticipantKey, PeerRole};

use super::Room;

impl Room {
    /// A data packet from a publisher's `_reliable` or `_lossy` channel: stamp
    /// the sender, then deliver on the same kind of channel to its recipients.
    pub(super) fn on_data(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        kind: DataKind,
        bytes: &[u8],
    ) {
        if self.take_server_rpc_reply(now, key, bytes) {
            return;
        }
        // Its recipients must know the sender: a listener still waiting for
        // the next batch of updates is announced now.
        if self.listener_updates.contains_key(&key) {
            self.broadcast_participant(key, false, true);
        }
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if !p.permission.can_publish_data {
            debug!(participant = %p.info.identity, "data from a participant without canPublishData");
            return;
        }
        let Ok(mut packet) = DataPacket::decode(bytes) else {
            debug!(participant = %p.info.identity, "undecodable data packet");
            return;
        };
        if kind == DataKind::Reliable && packet.sequence != 0 {
            if packet.sequence <= p.last_reliable_seq {
                return;
            }
            p.last_reliable_seq = packet.sequence;
        }
        if matches!(packet.value, Some(data_packet::Value::Metrics(_))) {
            return;
        }
        packet.kind = match kind {
            DataKind::Reliable => data_packet::Kind::Reliable,
            DataKind::Lossy => data_packet::Kind::Lossy,
        } as i32;
        let (identity, psid) = if p.is_hidden() {
            (String::new(), String::new())
        } else {
            (p.info.identity.clone(), p.info.sid.clone())
        };
        packet.participant_identity = identity.clone();
        packet.participant_sid = psid.clone();
        if let Some(data_packet::Value::User(user)) = &mut packet.value {
            user.participant_identity = identity;
            user.participant_sid = psid;
            if packet.destination_identities.is_empty() {
                packet.destination_identities = user.destination_identities.clone();
            } else {
                user.destination_identities = packet.destination_identities.clone();
            }
        }
        let encoded = packet.encode_to_vec();
        let destinations = packet.destination_identities;
        self.deliver_data(now, Some(key), kind, &encoded, &destinations);
    }

    /// Send an encoded DataPacket to everyone but `from`, or to the named identities.
    fn deliver_data(
        &mut self,
        now: Instant,
        from: Option<ParticipantKey>,
        kind: DataKind,
        encoded: &[u8],
        destinations: &[String],
    ) {
        let recipients: Vec<ParticipantKey> = if destinations.is_empty() {
            self.participants
                .keys()
                .copied()
                .filter(|k| Some(*k) != from)
                .collect()
        } else {
            destinations
                .iter()
                .filter_map(|id| self.by_identity.get(id).copied())
                .filter(|k| Some(*k) != from)
                .collect()
        };
        for key in recipients {
            let Some(p) = self.participants.get_mut(&key) else {
                continue;
            };
            let channel = match kind {
                DataKind::Reliable => p.subscriber_reliable,
                DataKind::Lossy => p.subscriber_lossy,
            };
            let Some(mut ch) = channel.and_then(|id| p.subscriber.rtc.channel(id)) else {
                continue;
            };
            if let Err(e) = ch.write(true, encoded) {
                debug!(participant = %p.info.identity, error = %e, "data channel write failed");
            }
            self.drain(now, key, PeerRole::Subscriber);
        }
    }

    /// Send a server-originated data packet (RoomService SendData).
    pub fn send_data(&mut self, now: Instant, reliable: bool, packet: DataPacket) {
        let room_span = self.span.clone();
        let _room = room_span.enter();
        let kind = if reliable {
            DataKind::Reliable
        } else {
            DataKind::Lossy
        };
        let encoded = packet.encode_to_vec();
        self.deliver_data(now, None, kind, &encoded, &packet.destination_identities);
        self.process_events(now);
    }
}
