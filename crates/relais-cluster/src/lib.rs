//! relais-cluster: many Relais nodes, one coordinator.
//!
//! One interface, [`Coordinator`], with two implementations:
//!
//! * [`InProcess`]: the single-node default. No Redis; every room is local.
//! * [`RedisCoordinator`]: many nodes sharing one Redis. A node registry with
//!   heartbeats and stats (keys expire by TTL, so a dead node disappears on its
//!   own), room placement by a configurable [`SelectorConfig`], and an atomic
//!   room claim so a room never lives on two nodes.
//!
//! The coordinator is never on the media or signal path of participants who
//! already joined: it is asked once per *new* participant (and per RoomService
//! call), and the node's heartbeat task feeds it a [`LocalSnapshot`]. When Redis
//! is unreachable, rooms this node hosts keep running and keep accepting
//! participants; the node re-registers and re-claims them when Redis returns.
//!
//! Layering: `relais-server → relais-cluster → relais-proto`. This crate knows
//! nothing of shards or sockets; see `docs/cluster.md` for the keys, messages
//! and sequences.

#![warn(missing_docs)]

mod config;
mod local;
mod node;
mod redis_coordinator;
mod select;
pub mod sysload;

use std::future::Future;
use std::pin::Pin;

pub use config::{ClusterConfig, NodeLimits, SelectorConfig, SortBy};
pub use local::InProcess;
pub use node::{LocalSnapshot, NodeInfo, NodeState, NodeStats};
pub use redis_coordinator::{RedisCoordinator, RedisSettings};
pub use select::select_node;

/// A boxed, `Send` future (keeps [`Coordinator`] object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a new participant of a room is served.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// On this node.
    Local,
    /// On another node; relay the participant's signal connection there.
    Remote(Box<NodeInfo>),
}

/// Why the coordinator could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The node is draining and the room does not live here.
    #[error("node is shutting down")]
    Draining,
    /// No node can take a new room (all draining, full or gone).
    #[error("no node available for a new room")]
    NoNodeAvailable,
    /// The room's node has reached a traffic limit (`limit.num_tracks` or
    /// `limit.bytes_per_sec`) and takes no one new.
    #[error("node limit reached: {0}")]
    LimitReached(&'static str),
    /// The shared state (Redis) could not be reached or answered nonsense.
    #[error("cluster state unavailable: {0}")]
    Unavailable(String),
    /// A forwarded join reached a node that does not own the room.
    #[error("room {room} now lives on node {owner}")]
    Moved {
        /// The room.
        room: String,
        /// Its owner.
        owner: String,
    },
}

/// The cluster as one node sees it.
pub trait Coordinator: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> &str;

    /// Whether other nodes may exist (false for [`InProcess`]).
    fn is_clustered(&self) -> bool;

    /// Where a new participant of `room` goes: look up the room's owner, or
    /// pick a node and claim the room for it atomically. `forwarded` is true
    /// when another node already placed the room here and relayed the join.
    fn place(&self, room: &str, forwarded: bool) -> BoxFuture<'_, Result<Placement, ClusterError>>;

    /// The node that hosts `room`, if any node does (no claim is made).
    fn locate(&self, room: &str) -> BoxFuture<'_, Result<Option<NodeInfo>, ClusterError>>;

    /// Every live node, this one included, as last seen.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, ClusterError>>;

    /// One heartbeat: publish stats, refresh the claims of the rooms this node
    /// hosts, release those it no longer hosts, and reload the node list.
    ///
    /// Returns the rooms hosted here that another live node has claimed in the
    /// meantime (possible only after this node alone lost Redis for longer
    /// than the room TTL): their participants belong on the owner, and the
    /// caller should move them there so the room lives on one node again.
    fn heartbeat(
        &self,
        snapshot: LocalSnapshot,
    ) -> BoxFuture<'_, Result<Vec<String>, ClusterError>>;

    /// A signal relay from this node could not reach `node` (refused or no
    /// answer): place no new room there from here while its record may still
    /// outlive its process (one node TTL), unless another process takes its
    /// id. Rooms already placed there are not moved.
    fn report_unreachable(&self, _node: &NodeInfo) {}

    /// Stop taking new rooms (rooms already here keep running).
    fn set_draining(&self);

    /// Whether [`Coordinator::set_draining`] was called.
    fn is_draining(&self) -> bool;

    /// Leave the cluster: release every room claim and the node record.
    fn leave(&self) -> BoxFuture<'_, ()>;
}
