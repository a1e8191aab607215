//! Picking a node for a new room.

use rand::seq::SliceRandom;

use crate::{NodeInfo, NodeState, SelectorConfig, SortBy};

/// The node a new room should go to, or `None` when no node is eligible.
///
/// Eligible: serving (not draining), under its own limits, not `exclude`.
/// Among those, nodes under `sysload_limit` are preferred while any exist; then
/// nodes in `local_region` (when `prefer_region` and any exist); then the
/// lowest by `sort_by` (ties broken at random).
pub fn select_node<'a>(
    nodes: &'a [NodeInfo],
    local_region: &str,
    selector: &SelectorConfig,
    exclude: Option<&str>,
) -> Option<&'a NodeInfo> {
    let mut eligible: Vec<&NodeInfo> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Serving)
        .filter(|n| Some(n.id.as_str()) != exclude)
        .filter(|n| n.has_room_for_new_room())
        .collect();
    if eligible
        .iter()
        .any(|n| n.stats.sysload < selector.sysload_limit)
    {
        eligible.retain(|n| n.stats.sysload < selector.sysload_limit);
    }
    if selector.prefer_region
        && !local_region.is_empty()
        && eligible.iter().any(|n| n.region == local_region)
    {
        eligible.retain(|n| n.region == local_region);
    }
    eligible.shuffle(&mut rand::rng());
    match selector.sort_by {
        SortBy::Random => eligible.first().copied(),
        SortBy::Sysload => eligible
            .into_iter()
            .min_by(|a, b| a.stats.sysload.total_cmp(&b.stats.sysload)),
        SortBy::Rooms => eligible.into_iter().min_by_key(|n| n.stats.rooms),
        SortBy::Participants => eligible.into_iter().min_by_key(|n| n.stats.participants),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeLimits, NodeStats};

    fn node(id: &str, region: &str, sysload: f64, rooms: u32, participants: u32) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            instance: "i".into(),
            http_address: "127.0.0.1:1".into(),
            region: region.into(),
            state: NodeState::Serving,
            started_at_ms: 0,
            updated_at_ms: 0,
            version: String::new(),
            limits: NodeLimits::default(),
            stats: NodeStats {
                sysload,
                rooms,
                participants,
                ..Default::default()
            },
        }
    }

    fn sel(sort_by: SortBy) -> SelectorConfig {
        SelectorConfig {
            sort_by,
            ..Default::default()
        }
    }

    #[test]
    fn sorts_by_the_configured_figure() {
        let nodes = [
            node("a", "", 0.5, 3, 10),
            node("b", "", 0.1, 5, 30),
            node("c", "", 0.3, 1, 20),
        ];
        assert_eq!(
            select_node(&nodes, "", &sel(SortBy::Sysload), None)
                .unwrap()
                .id,
            "b"
        );
        assert_eq!(
            select_node(&nodes, "", &sel(SortBy::Rooms), None)
                .unwrap()
                .id,
            "c"
        );
        assert_eq!(
            select_node(&nodes, "", &sel(SortBy::Participants), None)
                .unwrap()
                .id,
            "a"
        );
        assert!(select_node(&nodes, "", &sel(SortBy::Random), None).is_some());
    }

    #[test]
    fn skips_draining_excluded_full_and_overloaded_nodes() {
        let mut draining = node("d", "", 0.0, 0, 0);
        draining.state = NodeState::Draining;
        let mut full = node("f", "", 0.0, 2, 0);
        full.limits.max_rooms = 2;
        let mut full_p = node("g", "", 0.0, 0, 7);
        full_p.limits.max_participants = 7;
        let hot = node("h", "", 1.5, 0, 0);
        let mut full_t = node("t", "", 0.0, 0, 0);
        full_t.limits.num_tracks = 100;
        full_t.stats.tracks = 10;
        full_t.stats.subscribed_tracks = 90;
        let mut full_b = node("b", "", 0.0, 0, 0);
        full_b.limits.bytes_per_sec = 1_000;
        full_b.stats.bytes_out_per_sec = 1_000;
        let ok = node("o", "", 0.2, 9, 9);
        let nodes = [
            draining,
            full,
            full_p,
            full_t,
            full_b,
            hot.clone(),
            ok.clone(),
        ];
        for _ in 0..20 {
            assert_eq!(
                select_node(&nodes, "", &sel(SortBy::Rooms), None)
                    .unwrap()
                    .id,
                "o"
            );
        }
        // An overloaded node is still used when it is the only one.
        let only_hot = [hot];
        assert_eq!(
            select_node(&only_hot, "", &sel(SortBy::Random), None)
                .unwrap()
                .id,
            "h"
        );
        assert!(select_node(&[ok], "", &sel(SortBy::Random), Some("o")).is_none());
        assert!(select_node(&[], "", &sel(SortBy::Random), None).is_none());
    }

    #[test]
    fn prefers_the_local_region() {
        let nodes = [node("eu", "eu", 0.5, 9, 9), node("us", "us", 0.0, 0, 0)];
        for _ in 0..20 {
            assert_eq!(
                select_node(&nodes, "eu", &sel(SortBy::Rooms), None)
                    .unwrap()
                    .id,
                "eu"
            );
        }
        // No node in the region: any region will do.
        assert_eq!(
            select_node(&nodes, "ap", &sel(SortBy::Rooms), None)
                .unwrap()
                .id,
            "us"
        );
        let no_pref = SelectorConfig {
            sort_by: SortBy::Rooms,
            prefer_region: false,
            ..Default::default()
        };
        assert_eq!(select_node(&nodes, "eu", &no_pref, None).unwrap().id, "us");
    }
}
