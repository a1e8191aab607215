//! RoomService operations on one room: what an administrator (LiveKit's room
//! API) can do to it, with the effects connected clients see — leave messages,
//! participant and room updates, server-side mutes, server data and
//! server-initiated RPC.

use std::time::{Duration, Instant};

use prost::Message;
use relais_proto::livekit::{
    self, data_packet, rpc_response, signal_response, CreateRoomRequest, DataPacket,
    DisconnectReason, MuteTrackRequest, ParticipantInfo, ParticipantPermission, RoomUpdate,
    RpcRequest, SendDataRequest, SignalRequest, TrackInfo, TrackUnpublishedResponse,
    UpdateParticipantRequest, UpdateSubscription, UserPacket,
};
use tracing::{debug, info};

use crate::participant::ParticipantKey;
use crate::HashMap;

use super::{Room, RoomEvent, RoomOutput};

/// Why an administrative operation on a room failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No participant with that identity in the room.
    #[error("participant does not exist")]
    ParticipantNotFound,
    /// The participant publishes no track with that SID.
    #[error("track {0} is not published by this participant")]
    TrackNotFound(String),
}

/// How a participant answered a server-initiated RPC, when it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcFailure {
    /// LiveKit RPC error code (1500 application error, 1502 response timeout, …).
    pub code: u32,
    pub message: String,
    pub data: String,
}

/// Receives the outcome of a server-initiated RPC: the response payload, or why not.
pub type RpcReply = Box<dyn FnOnce(Result<String, RpcFailure>) + Send>;

/// LiveKit's "response timeout" RPC error code.
const RPC_RESPONSE_TIMEOUT: u32 = 1502;
/// LiveKit's "recipient disconnected" RPC error code.
const RPC_RECIPIENT_DISCONNECTED: u32 = 1503;
/// LiveKit's "application error" RPC error code.
const RPC_APPLICATION_ERROR: u32 = 1500;

pub(crate) struct PendingServerRpc {
    destination: ParticipantKey,
    deadline: Instant,
    reply: RpcReply,
}

/// Server-initiated RPCs waiting for their response, by request id.
#[derive(Default)]
pub(crate) struct ServerRpcs(HashMap<String, PendingServerRpc>);

impl Room {
    /// The room as RoomService shows it (participant and publisher counts filled in).
    pub fn api_info(&self) -> livekit::Room {
        let mut info = self.info.clone();
        info.num_participants = self.participants.len() as u32;
        info.num_publishers = self
            .participants
            .values()
            .filter(|p| p.info.is_publisher)
            .count() as u32;
        info
    }

    /// Apply `CreateRoom` settings to a room created for it. Zero leaves the
    /// node's default.
    pub fn configure(&mut self, req: &CreateRoomRequest) {
        if req.empty_timeout > 0 {
            self.info.empty_timeout = req.empty_timeout;
        }
        if req.departure_timeout > 0 {
            self.info.departure_timeout = req.departure_timeout;
        }
        if req.max_participants > 0 {
            self.info.max_participants = req.max_participants;
        }
        self.info.metadata = req.metadata.clone();
        // `room_started`, if not collected yet, announces the configured room.
        for out in &mut self.outputs {
            if let RoomOutput::Event(event) = out {
                if let RoomEvent::RoomStarted(info) = event.as_mut() {
                    *info = self.info.clone();
                }
            }
        }
    }

    /// The participant with this identity, if present.
    pub fn participant_key(&self, identity: &str) -> Option<ParticipantKey> {
        self.by_identity.get(identity).copied()
    }

    /// A participant's info, by identity.
    pub fn participant_by_identity(&self, identity: &str) -> Option<&ParticipantInfo> {
        self.participant_key(identity)
            .and_then(|k| self.participants.get(&k))
            .map(|p| &*p.info)
    }

    /// Disconnect everyone with `leave{reason}` and close the room:
    /// `ROOM_DELETED` for `DeleteRoom`, `MIGRATION` (with the `RECONNECT`
    /// action, so SDKs rejoin through their URL) when the room lives on
    /// another node.
    pub fn close(&mut self, now: Instant, reason: DisconnectReason) {
        let keys: Vec<ParticipantKey> = self.participants.keys().copied().collect();
        for key in keys {
            self.remove_participant(now, key, reason);
        }
        self.fail_server_rpcs(now, true);
        info!(room = %self.info.name, ?reason, "room closed by the server");
        self.finish();
    }

    /// Disconnect one participant with `leave{PARTICIPANT_REMOVED}`.
    pub fn remove_by_identity(&mut self, now: Instant, identity: &str) -> Result<(), AdminError> {
        let key = self
            .participant_key(identity)
            .ok_or(AdminError::ParticipantNotFound)?;
        self.remove_participant(now, key, DisconnectReason::ParticipantRemoved);
        Ok(())
    }

    /// Mute (or unmute) a published track from the server: the publisher gets
    /// `SignalResponse.mute`, everyone else an update showing the track muted.
    pub fn mute_track(
        &mut self,
        identity: &str,
        track_sid: &str,
        muted: bool,
    ) -> Result<TrackInfo, AdminError> {
        let key = self
            .participant_key(identity)
            .ok_or(AdminError::ParticipantNotFound)?;
        let track = self
            .tracks
            .get_mut(track_sid)
            .filter(|t| t.publisher == key)
            .ok_or_else(|| AdminError::TrackNotFound(track_sid.to_string()))?;
        track.info.muted = muted;
        let updated = track.info.clone();
        if let Some(p) = self.participants.get_mut(&key) {
            if let Some(t) = p.info.tracks.iter_mut().find(|t| t.sid == track_sid) {
                *t = updated.clone();
            }
            p.touch();
        }
        self.signal(
            key,
            signal_response::Message::Mute(MuteTrackRequest {
                sid: track_sid.to_string(),
                muted,
            }),
        );
        self.broadcast_participant(key, false, false);
        Ok(updated)
    }

    /// `UpdateParticipant`: name, metadata and attributes (an empty attribute
    /// value deletes the key; empty name or metadata keep theirs), and the
    /// permission. Tracks the new permission no longer allows are unpublished
    /// (the publisher gets `track_unpublished`). Everyone, the participant
    /// included, gets the new info.
    pub fn admin_update_participant(
        &mut self,
        now: Instant,
        req: &UpdateParticipantRequest,
    ) -> Result<ParticipantInfo, AdminError> {
        let key = self
            .participant_key(&req.identity)
            .ok_or(AdminError::ParticipantNotFound)?;
        let Some(p) = self.participants.get_mut(&key) else {
            return Err(AdminError::ParticipantNotFound);
        };
        if !req.name.is_empty() {
            p.info.name = req.name.clone();
        }
        if !req.metadata.is_empty() {
            p.info.metadata = req.metadata.clone();
        }
        for (k, v) in &req.attributes {
            if v.is_empty() {
                p.info.attributes.remove(k);
            } else {
                p.info.attributes.insert(k.clone(), v.clone());
            }
        }
        let mut revoked = Vec::new();
        if let Some(permission) = &req.permission {
            p.permission = permission.clone();
            p.info.permission = Some(permission.clone());
            revoked = p
                .info
                .tracks
                .iter()
                .filter(|t| !may_publish(permission, t.source))
                .map(|t| t.sid.clone())
                .collect();
            p.pending_tracks
                .retain(|(_, t)| may_publish(permission, t.source));
        }
        p.touch();
        for sid in revoked {
            self.revoke_track(now, key, &sid);
        }
        self.broadcast_participant(key, true, true);
        self.process_events(now);
        Ok(self.participants[&key].info.clone())
    }

    /// Take a track away from its publisher: `track_unpublished` to it, the
    /// track gone from every subscriber.
    fn revoke_track(&mut self, now: Instant, key: ParticipantKey, sid: &str) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        p.forget_published(sid);
        let info = p.info.clone();
        info!(participant = %info.identity, track = %sid, "track unpublished by the room API");
        self.signal(
            key,
            signal_response::Message::TrackUnpublished(TrackUnpublishedResponse {
                track_sid: sid.to_string(),
            }),
        );
        self.unpublish(now, sid, &info);
    }

    /// `UpdateSubscriptions`: as if the participant had sent `subscription`.
    pub fn admin_update_subscriptions(
        &mut self,
        now: Instant,
        identity: &str,
        update: UpdateSubscription,
    ) -> Result<(), AdminError> {
        let key = self
            .participant_key(identity)
            .ok_or(AdminError::ParticipantNotFound)?;
        self.handle_signal(
            now,
            key,
            SignalRequest {
                message: Some(livekit::signal_request::Message::Subscription(update)),
            },
        );
        Ok(())
    }

    /// `SendData`: a user packet from the server (no sender identity) to
    /// everyone or to the named identities (or deprecated SIDs).
    pub fn admin_send_data(&mut self, now: Instant, req: SendDataRequest) {
        let mut destinations = req.destination_identities;
        for sid in &req.destination_sids {
            if let Some(p) = self.participants.values().find(|p| &p.info.sid == sid) {
                if !destinations.contains(&p.info.identity) {
                    destinations.push(p.info.identity.clone());
                }
            }
        }
        let addressed = !destinations.is_empty();
        let kind = data_packet::Kind::try_from(req.kind).unwrap_or(data_packet::Kind::Reliable);
        let packet = DataPacket {
            kind: kind as i32,
            destination_identities: destinations.clone(),
            value: Some(data_packet::Value::User(UserPacket {
                payload: req.data,
                topic: req.topic,
                nonce: req.nonce,
                destination_identities: destinations,
                ..Default::default()
            })),
            ..Default::default()
        };
        if addressed
            && packet
                .destination_identities
                .iter()
                .all(|id| !self.by_identity.contains_key(id))
        {
            debug!(room = %self.info.name, "SendData: none of the destinations is in the room");
            return;
        }
        self.send_data(now, kind == data_packet::Kind::Reliable, packet);
    }

    /// `UpdateRoomMetadata`: set it and send every participant `room_update`.
    pub fn set_metadata(&mut self, metadata: String) -> livekit::Room {
        self.info.metadata = metadata;
        let info = self.api_info();
        self.signal_each(
            |_, _| true,
            signal_response::Message::RoomUpdate(RoomUpdate {
                room: Some(info.clone()),
            }),
        );
        info
    }

    /// `PerformRpc`: send `rpc_request` to the participant, from a caller
    /// identity that is the request id (as LiveKit does), and call `reply`
    /// once its `rpc_response` arrives — or with a timeout or disconnection
    /// failure, noticed the next time the room sees data or an RPC.
    #[allow(clippy::too_many_arguments)]
    pub fn perform_server_rpc(
        &mut self,
        now: Instant,
        destination_identity: &str,
        method: &str,
        payload: &str,
        response_timeout_ms: u32,
        reply: RpcReply,
    ) -> Result<(), AdminError> {
        self.fail_server_rpcs(now, false);
        let key = self
            .participant_key(destination_identity)
            .ok_or(AdminError::ParticipantNotFound)?;
        let id = uuid_v4();
        let packet = DataPacket {
            kind: data_packet::Kind::Reliable as i32,
            participant_identity: id.clone(),
            destination_identities: vec![destination_identity.to_string()],
            value: Some(data_packet::Value::RpcRequest(RpcRequest {
                id: id.clone(),
                method: method.to_string(),
                payload: payload.to_string(),
                response_timeout_ms,
                version: 1,
                ..Default::default()
            })),
            ..Default::default()
        };
        debug!(room = %self.info.name, participant = %destination_identity, %method, request = %id, "server rpc");
        self.server_rpcs.0.insert(
            id,
            PendingServerRpc {
                destination: key,
                deadline: now + Duration::from_millis(u64::from(response_timeout_ms)),
                reply,
            },
        );
        self.send_data(now, true, packet);
        Ok(())
    }

    /// Consume `rpc_ack` / `rpc_response` packets that answer a server RPC.
    /// Returns true when the packet was for the server (do not forward it).
    pub(crate) fn take_server_rpc_reply(
        &mut self,
        now: Instant,
        from: ParticipantKey,
        bytes: &[u8],
    ) -> bool {
        if self.server_rpcs.0.is_empty() {
            return false;
        }
        self.fail_server_rpcs(now, false);
        let Ok(packet) = DataPacket::decode(bytes) else {
            return false;
        };
        match packet.value {
            Some(data_packet::Value::RpcAck(ack)) => self
                .server_rpcs
                .0
                .get(&ack.request_id)
                .is_some_and(|p| p.destination == from),
            Some(data_packet::Value::RpcResponse(response)) => {
                let ours = self
                    .server_rpcs
                    .0
                    .get(&response.request_id)
                    .is_some_and(|p| p.destination == from);
                if !ours {
                    return false;
                }
                let Some(pending) = self.server_rpcs.0.remove(&response.request_id) else {
                    return false;
                };
                let outcome = match response.value {
                    Some(rpc_response::Value::Payload(payload)) => Ok(payload),
                    None => Ok(String::new()),
                    Some(rpc_response::Value::Error(e)) => Err(RpcFailure {
                        code: e.code,
                        message: e.message,
                        data: e.data,
                    }),
                    Some(rpc_response::Value::CompressedPayload(_)) => Err(RpcFailure {
                        code: RPC_APPLICATION_ERROR,
                        message: "compressed RPC payloads are not supported".into(),
                        data: String::new(),
                    }),
                };
                (pending.reply)(outcome);
                true
            }
            _ => false,
        }
    }

    /// Fail server RPCs past their deadline or whose participant left (all of
    /// them when `all`).
    fn fail_server_rpcs(&mut self, now: Instant, all: bool) {
        let failed: Vec<(String, u32)> = self
            .server_rpcs
            .0
            .iter()
            .filter_map(|(id, p)| {
                if all || !self.participants.contains_key(&p.destination) {
                    Some((id.clone(), RPC_RECIPIENT_DISCONNECTED))
                } else if p.deadline <= now {
                    Some((id.clone(), RPC_RESPONSE_TIMEOUT))
                } else {
                    None
                }
            })
            .collect();
        for (id, code) in failed {
            if let Some(p) = self.server_rpcs.0.remove(&id) {
                let message = if code == RPC_RESPONSE_TIMEOUT {
                    "Response timeout"
                } else {
                    "Recipient disconnected"
                };
                (p.reply)(Err(RpcFailure {
                    code,
                    message: message.into(),
                    data: String::new(),
                }));
            }
        }
    }
}

fn may_publish(permission: &ParticipantPermission, source: i32) -> bool {
    permission.can_publish
        && (permission.can_publish_sources.is_empty()
            || permission.can_publish_sources.contains(&source))
}

/// A random (version 4) UUID, as LiveKit's RPC request ids are.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
