//! The single-node coordinator: no Redis, every room is local.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::{BoxFuture, ClusterError, Coordinator, LocalSnapshot, NodeInfo, Placement};

/// Single node: places every room here; refuses new rooms while draining.
pub struct InProcess {
    info: Mutex<NodeInfo>,
    id: String,
    /// Rooms hosted (from the last snapshot, plus rooms placed since).
    rooms: Mutex<HashSet<String>>,
    draining: AtomicBool,
}

impl InProcess {
    /// A coordinator for a node described by `info`.
    pub fn new(info: NodeInfo) -> Self {
        InProcess {
            id: info.id.clone(),
            info: Mutex::new(info),
            rooms: Mutex::new(HashSet::new()),
            draining: AtomicBool::new(false),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Coordinator for InProcess {
    fn node_id(&self) -> &str {
        &self.id
    }

    fn is_clustered(&self) -> bool {
        false
    }

    fn place(
        &self,
        room: &str,
        _forwarded: bool,
    ) -> BoxFuture<'_, Result<Placement, ClusterError>> {
        let hosted = self.rooms().contains(room);
        let (traffic_limit, room_for_new) = {
            let info = self.info.lock().unwrap_or_else(|e| e.into_inner());
            (info.traffic_limit_reached(), info.has_room_for_new_room())
        };
        let result = if self.is_draining() && !hosted {
            Err(ClusterError::Draining)
        } else if let Some(limit) = traffic_limit {
            Err(ClusterError::LimitReached(limit))
        } else if !hosted && !room_for_new {
            Err(ClusterError::NoNodeAvailable)
        } else {
            self.rooms().insert(room.to_string());
            Ok(Placement::Local)
        };
        Box::pin(async move { result })
    }

    fn locate(&self, room: &str) -> BoxFuture<'_, Result<Option<NodeInfo>, ClusterError>> {
        let found = self.rooms().contains(room);
        Box::pin(async move {
            Ok(found.then(|| self.info.lock().unwrap_or_else(|e| e.into_inner()).clone()))
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, ClusterError>> {
        let info = self.info.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move { Ok(vec![info]) })
    }

    fn heartbeat(
        &self,
        snapshot: LocalSnapshot,
    ) -> BoxFuture<'_, Result<Vec<String>, ClusterError>> {
        {
            let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
            info.stats = snapshot.stats;
        }
        *self.rooms() = snapshot.rooms.into_iter().collect();
        Box::pin(async { Ok(Vec::new()) })
    }

    fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.info.lock().unwrap_or_else(|e| e.into_inner()).state = crate::NodeState::Draining;
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn leave(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeLimits, NodeStats};

    fn info() -> NodeInfo {
        NodeInfo::parse(br#"{"id":"ND_x"}"#).unwrap()
    }

    #[tokio::test]
    async fn everything_is_local_until_draining() {
        let c = InProcess::new(info());
        assert_eq!(c.place("a", false).await.unwrap(), Placement::Local);
        c.set_draining();
        // A room that lives here keeps taking participants; a new one is refused.
        assert_eq!(c.place("a", false).await.unwrap(), Placement::Local);
        assert!(matches!(
            c.place("b", false).await,
            Err(ClusterError::Draining)
        ));
        c.heartbeat(LocalSnapshot::default()).await.unwrap();
        assert!(matches!(
            c.place("a", false).await,
            Err(ClusterError::Draining)
        ));
        assert_eq!(c.nodes().await.unwrap().len(), 1);
    }

    fn snapshot(rooms: &[&str], stats: NodeStats) -> LocalSnapshot {
        LocalSnapshot {
            stats,
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn a_node_at_its_limits_refuses_what_they_forbid() {
        let mut me = info();
        me.limits = NodeLimits {
            max_rooms: 2,
            num_tracks: 10,
            bytes_per_sec: 1_000_000,
            ..NodeLimits::default()
        };
        let c = InProcess::new(me);
        // Two rooms: a third is refused, the two keep taking participants.
        let two = NodeStats {
            rooms: 2,
            ..NodeStats::default()
        };
        c.heartbeat(snapshot(&["a", "b"], two.clone()))
            .await
            .unwrap();
        assert_eq!(c.place("a", false).await.unwrap(), Placement::Local);
        assert!(matches!(
            c.place("c", false).await,
            Err(ClusterError::NoNodeAvailable)
        ));
        // Tracks in plus out at the limit: not even the hosted rooms take more.
        let tracks = NodeStats {
            tracks: 4,
            subscribed_tracks: 6,
            ..two.clone()
        };
        c.heartbeat(snapshot(&["a", "b"], tracks)).await.unwrap();
        assert!(matches!(
            c.place("a", false).await,
            Err(ClusterError::LimitReached("num_tracks"))
        ));
        let bytes = NodeStats {
            bytes_in_per_sec: 400_000,
            bytes_out_per_sec: 600_000,
            ..two.clone()
        };
        c.heartbeat(snapshot(&["a", "b"], bytes)).await.unwrap();
        assert!(matches!(
            c.place("b", false).await,
            Err(ClusterError::LimitReached("bytes_per_sec"))
        ));
        // Below every limit again: the rooms here take participants again.
        let below = NodeStats {
            tracks: 4,
            subscribed_tracks: 5,
            bytes_in_per_sec: 400_000,
            bytes_out_per_sec: 599_999,
            ..two
        };
        c.heartbeat(snapshot(&["a", "b"], below)).await.unwrap();
        assert_eq!(c.place("b", false).await.unwrap(), Placement::Local);
    }
}
