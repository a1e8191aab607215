//! What a node publishes about itself.

use serde::{Deserialize, Serialize};

use crate::NodeLimits;

/// A node's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Takes new rooms.
    #[default]
    Serving,
    /// Shutting down: keeps its rooms until they empty, takes no new ones.
    Draining,
}

/// Load figures, refreshed every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStats {
    /// CPUs available to the process.
    pub num_cpus: u32,
    /// 1-minute load average.
    pub load_avg_1m: f64,
    /// `load_avg_1m / num_cpus`.
    pub sysload: f64,
    /// Rooms hosted.
    pub rooms: u32,
    /// Participants connected to hosted rooms.
    pub participants: u32,
    /// Published tracks in hosted rooms (tracks in).
    pub tracks: u32,
    /// Subscriptions to those tracks (tracks out).
    pub subscribed_tracks: u32,
    /// UDP bytes received per second.
    pub bytes_in_per_sec: u64,
    /// UDP bytes sent per second.
    pub bytes_out_per_sec: u64,
    /// Signal connections relayed to other nodes.
    pub relayed: u32,
}

/// The record each node keeps under `<prefix>node:<id>` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Random per process: tells two processes with the same id apart.
    #[serde(default)]
    pub instance: String,
    /// `host:port` of the node's HTTP port.
    #[serde(default)]
    pub http_address: String,
    /// Region name (may be empty).
    #[serde(default)]
    pub region: String,
    /// Lifecycle state.
    #[serde(default)]
    pub state: NodeState,
    /// Process start, Unix ms (node's clock).
    #[serde(default)]
    pub started_at_ms: i64,
    /// Last heartbeat, Unix ms (node's clock; informative only — liveness is
    /// the key's TTL in Redis, so a node with a wrong clock is still judged
    /// correctly).
    #[serde(default)]
    pub updated_at_ms: i64,
    /// Software version.
    #[serde(default)]
    pub version: String,
    /// Advertised limits.
    #[serde(default)]
    pub limits: NodeLimits,
    /// Load.
    #[serde(default)]
    pub stats: NodeStats,
}

impl NodeInfo {
    /// Whether this node can take one more room under its own limits.
    pub fn has_room_for_new_room(&self) -> bool {
        self.limits.has_room_for_new_room(&self.stats)
    }

    /// The traffic limit this node has reached, if any (see
    /// [`NodeLimits::traffic_limit_reached`]).
    pub fn traffic_limit_reached(&self) -> Option<&'static str> {
        self.limits.traffic_limit_reached(&self.stats)
    }

    /// Parse a record read from Redis; `None` (and the caller logs) when it is
    /// not ours or is corrupt.
    pub fn parse(raw: &[u8]) -> Option<NodeInfo> {
        let info: NodeInfo = serde_json::from_slice(raw).ok()?;
        if info.id.is_empty() || info.id.len() > 64 {
            return None;
        }
        Some(info)
    }
}

/// What the server tells the coordinator every heartbeat.
#[derive(Debug, Clone, Default)]
pub struct LocalSnapshot {
    /// Load figures.
    pub stats: NodeStats,
    /// Names of the rooms this node hosts right now.
    pub rooms: Vec<String>,
}
