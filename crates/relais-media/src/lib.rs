//! The sans-IO media core of Relais.
//!
//! Everything here is a state machine in the style of str0m, on which it is
//! built: the caller feeds in time ([`Shard::handle_timeout`]), datagrams
//! ([`Shard::handle_datagram`]) and signal messages ([`Shard::handle_signal`]),
//! and drains what comes out: datagrams to send ([`Shard::outgoing`], written
//! in place), and with [`Shard::poll_output`] signal messages to deliver and
//! lifecycle events. No sockets, no threads, no
//! clock: a test can drive a whole room deterministically.
//!
//! * [`Shard`] — the rooms one core owns and the demultiplexer (ICE ufrag,
//!   then protocol and remote address; UDP and ICE-TCP alike).
//! * [`Room`] — participants, their publisher and subscriber peer connections,
//!   published tracks and subscriptions; LiveKit's signaling semantics.
//! * [`forward::TrackForwarder`] — per-subscriber simulcast layer choice and
//!   sequence-number/timestamp/VP8 picture-id rewriting.

pub mod codec;
pub mod config;
mod dtls;
mod dynacast;
mod egress;
pub mod fan_out;
pub mod forward;
mod ingress;
pub mod outgoing;
mod participant;
mod payload;
mod quality;
mod receive_register;
pub mod room;
mod room_table;
mod rtp_header;
mod sdp_order;
pub mod shard;
mod shard_admin;
mod speakers;
mod srtcp;
pub mod stats;
pub mod stun;
mod subscriber_rtcp;
mod timers;
mod twcc;

/// The media core's maps: std's, with foldhash's hasher (seeded per process)
/// instead of SipHash — several times faster on the small keys looked up per
/// packet (SSRCs, addresses, participant keys).
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use config::{
    tcp_passive_candidate, udp_host_candidate, MediaConfig, RoomDefaults, SubscriptionLimits,
};
pub use participant::{ParticipantKey, PeerRole};
pub use room::{Addresses, JoinError, JoinParams, Room, RoomEvent, RoomOutput};
pub use room::{AdminError, RpcFailure, RpcReply};
pub use room_table::RoomId;
pub use shard::{Forwarded, Shard, ShardOutput};
pub use stats::{MediaStats, ShardGauges};

/// Errors building the media core.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("could not generate the node's DTLS certificate")]
    Certificate,
    #[error("invalid ICE candidate: {0}")]
    Candidate(String),
}
