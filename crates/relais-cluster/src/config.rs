//! `cluster:` configuration.

use serde::{Deserialize, Serialize};

use crate::NodeStats;

/// `cluster:` — how this node takes part in a multi-node deployment. Only
/// used when Redis is configured (the drain deadline is the top-level
/// `drain_timeout`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// Fixed node id; empty = a fresh random `ND_…` id per process.
    pub node_id: String,
    /// `host:port` where other nodes reach this node's HTTP port (signal
    /// relay, RoomService forwarding). Empty = `rtc.node_ip` (or the first
    /// bind address) and `port`.
    pub node_http_address: String,
    /// Heartbeat period in milliseconds. Default 1000.
    pub heartbeat_interval_ms: u64,
    /// How long a node record lives without a heartbeat. Default 5000.
    /// A killed node's rooms are free again after at most this long.
    pub node_ttl_ms: u64,
    /// How long a room claim lives without being refreshed by its owner.
    /// Default 5000.
    pub room_ttl_ms: u64,
    /// Prefix of every Redis key. Default `relais:`.
    pub key_prefix: String,
    /// Timeout of one Redis call in milliseconds. Default 1000.
    pub redis_timeout_ms: u64,
    /// How new rooms are placed.
    pub node_selector: SelectorConfig,
    /// This node's limits, advertised to the others.
    pub limits: NodeLimits,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            node_http_address: String::new(),
            heartbeat_interval_ms: 1000,
            node_ttl_ms: 5000,
            room_ttl_ms: 5000,
            key_prefix: "relais:".into(),
            redis_timeout_ms: 1000,
            node_selector: SelectorConfig::default(),
            limits: NodeLimits::default(),
        }
    }
}

impl ClusterConfig {
    /// A message naming the first unusable value, if any.
    pub fn check(&self) -> Result<(), String> {
        if self.heartbeat_interval_ms < 100 {
            return Err("cluster.heartbeat_interval_ms must be at least 100".into());
        }
        if self.node_ttl_ms < 2 * self.heartbeat_interval_ms {
            return Err("cluster.node_ttl_ms must be at least twice the heartbeat interval".into());
        }
        if self.room_ttl_ms < 2 * self.heartbeat_interval_ms {
            return Err("cluster.room_ttl_ms must be at least twice the heartbeat interval".into());
        }
        if self.redis_timeout_ms == 0 {
            return Err("cluster.redis_timeout_ms must be positive".into());
        }
        if self.node_selector.sysload_limit.is_nan() || self.node_selector.sysload_limit <= 0.0 {
            return Err("cluster.node_selector.sysload_limit must be positive".into());
        }
        if self.node_id.len() > 64
            || self
                .node_id
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err("cluster.node_id: at most 64 of A-Z a-z 0-9 _ -".into());
        }
        Ok(())
    }
}

/// What new rooms are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SortBy {
    /// Any eligible node, at random.
    #[default]
    Random,
    /// Lowest 1-minute load average per CPU.
    Sysload,
    /// Fewest rooms.
    Rooms,
    /// Fewest participants.
    Participants,
}

/// `cluster.node_selector:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectorConfig {
    /// Sort order among eligible nodes.
    pub sort_by: SortBy,
    /// Nodes at or above this load per CPU are skipped while others exist.
    /// Default 0.9.
    pub sysload_limit: f64,
    /// Prefer nodes in this node's `region` when there are any. Default true.
    pub prefer_region: bool,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig {
            sort_by: SortBy::Random,
            sysload_limit: 0.9,
            prefer_region: true,
        }
    }
}

/// A node's limits — 0 = unlimited. `max_rooms` and `max_participants` come
/// from `cluster.limits:`, `num_tracks` and `bytes_per_sec` from the top-level
/// `limit:` section (LiveKit's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NodeLimits {
    /// Most rooms this node takes.
    pub max_rooms: u32,
    /// Most participants this node takes (checked when placing a new room).
    pub max_participants: u32,
    /// Most tracks in and out (published plus subscribed). At the limit the
    /// node takes no new rooms and refuses joins into the rooms it hosts.
    pub num_tracks: u32,
    /// Most UDP bytes per second in and out; at the limit, as `num_tracks`.
    pub bytes_per_sec: u64,
}

impl NodeLimits {
    /// The first traffic limit (`num_tracks`, `bytes_per_sec`) that `stats`
    /// reach, if any: such a node takes no one new, not even into its rooms.
    pub fn traffic_limit_reached(&self, stats: &NodeStats) -> Option<&'static str> {
        let tracks = u64::from(stats.tracks) + u64::from(stats.subscribed_tracks);
        if self.num_tracks > 0 && tracks >= u64::from(self.num_tracks) {
            return Some("num_tracks");
        }
        let bytes = stats
            .bytes_in_per_sec
            .saturating_add(stats.bytes_out_per_sec);
        if self.bytes_per_sec > 0 && bytes >= self.bytes_per_sec {
            return Some("bytes_per_sec");
        }
        None
    }

    /// Whether a node with `stats` can take one more room.
    pub fn has_room_for_new_room(&self, stats: &NodeStats) -> bool {
        (self.max_rooms == 0 || stats.rooms < self.max_rooms)
            && (self.max_participants == 0 || stats.participants < self.max_participants)
            && self.traffic_limit_reached(stats).is_none()
    }
}
