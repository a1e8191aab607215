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
        let result = if self.is_draining() && !self.rooms().contains(room) {
            Err(ClusterError::Draining)
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
}
