//! The Redis coordinator against a real `redis-server` (started on a free
//! port, stopped at the end). Skipped with a message when `redis-server` is
//! not installed (scripts/test.sh installs it).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use relais_cluster::{
    ClusterConfig, ClusterError, Coordinator, LocalSnapshot, NodeInfo, Placement, RedisCoordinator,
    RedisSettings,
};

struct Redis {
    port: u16,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Redis {
    fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("redis-server not installed: skipping");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("relais-cluster-test-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let redis = Redis {
            port,
            _dir: TempDir(dir),
        };
        for _ in 0..100 {
            if redis.cli(&["ping"]).trim() == "PONG" {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start");
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn settings(&self) -> RedisSettings {
        RedisSettings {
            address: format!("127.0.0.1:{}", self.port),
            ..Default::default()
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.cli(&["shutdown", "nosave"]);
    }
}

fn config(prefix: &str) -> ClusterConfig {
    ClusterConfig {
        key_prefix: prefix.into(),
        heartbeat_interval_ms: 100,
        node_ttl_ms: 600,
        room_ttl_ms: 600,
        ..Default::default()
    }
}

fn node(id: &str, instance: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        instance: instance.into(),
        http_address: format!("{}.test:7880", id.to_lowercase()),
        region: String::new(),
        state: Default::default(),
        started_at_ms: 0,
        updated_at_ms: 0,
        version: String::new(),
        limits: Default::default(),
        stats: Default::default(),
    }
}

/// Nodes A and B, registered, each having seen the other.
async fn two_nodes(redis: &Redis, prefix: &str) -> (RedisCoordinator, RedisCoordinator) {
    let a = coordinator(redis, prefix, "A");
    let b = coordinator(redis, prefix, "B");
    a.heartbeat(snapshot(&[])).await.unwrap();
    b.heartbeat(snapshot(&[])).await.unwrap();
    a.heartbeat(snapshot(&[])).await.unwrap();
    (a, b)
}

fn snapshot(rooms: &[&str]) -> LocalSnapshot {
    LocalSnapshot {
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

fn coordinator(redis: &Redis, prefix: &str, id: &str) -> RedisCoordinator {
    RedisCoordinator::new(
        &redis.settings(),
        config(prefix),
        node(id, &format!("inst-{id}")),
    )
    .unwrap()
}

#[tokio::test]
async fn registry_placement_claims_and_failover() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, "t1:").await;
    assert_eq!(a.nodes().await.unwrap().len(), 2);
    // The set of nodes expires if every node stops (20 × node_ttl).
    let index_ttl: i64 = redis.cli(&["pttl", "t1:nodes"]).trim().parse().unwrap();
    assert!((1..=12_000).contains(&index_ttl), "{index_ttl}");

    // One room, placed from both sides at once: exactly one owner.
    let (pa, pb) = tokio::join!(a.place("r1", false), b.place("r1", false));
    let owner_a = match pa.unwrap() {
        Placement::Local => "A".to_string(),
        Placement::Remote(n) => n.id,
    };
    let owner_b = match pb.unwrap() {
        Placement::Local => "B".to_string(),
        Placement::Remote(n) => n.id,
    };
    assert_eq!(owner_a, owner_b, "both nodes must agree on the owner");
    assert_eq!(a.locate("r1").await.unwrap().unwrap().id, owner_a);
    assert_eq!(redis.cli(&["get", "t1:room:r1"]).trim(), owner_a);
    assert!(
        redis
            .cli(&["pttl", "t1:room:r1"])
            .trim()
            .parse::<i64>()
            .unwrap()
            > 0
    );

    // The owner dies (no more heartbeats): within node_ttl the room is free
    // and the survivor takes it.
    let (survivor, dead) = if owner_a == "A" { (&b, "A") } else { (&a, "B") };
    tokio::time::sleep(Duration::from_millis(800)).await;
    survivor.heartbeat(snapshot(&[])).await.unwrap();
    assert!(!survivor.nodes().await.unwrap().iter().any(|n| n.id == dead));
    assert_eq!(survivor.place("r1", false).await.unwrap(), Placement::Local);
    assert_eq!(redis.cli(&["get", "t1:room:r1"]).trim(), survivor.node_id());

    // A closed room is released by the next heartbeats after the grace time.
    survivor.heartbeat(snapshot(&["r1"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    survivor.heartbeat(snapshot(&[])).await.unwrap();
    assert_eq!(redis.cli(&["exists", "t1:room:r1"]).trim(), "0");

    // Leaving deletes the node record, and its answer reads as one.
    survivor.leave().await;
    assert!(
        survivor.is_reachable(),
        "leave's reply was taken for a Redis failure"
    );
    assert_eq!(
        redis
            .cli(&["exists", &format!("t1:node:{}", survivor.node_id())])
            .trim(),
        "0"
    );
}

#[tokio::test]
async fn foreign_and_corrupt_values_are_contained() {
    let Some(redis) = Redis::start() else { return };
    let a = coordinator(&redis, "t2:", "A");
    a.heartbeat(snapshot(&[])).await.unwrap();
    // A room claimed by a node that does not exist, by garbage, by a hash.
    redis.cli(&["set", "t2:room:ghost", "ND_nobody"]);
    redis.cli(&["set", "t2:room:junk", "\u{1}\u{2}{not json"]);
    redis.cli(&["hset", "t2:room:hash", "x", "y"]);
    // A node record without TTL, a corrupt one, one with another id inside.
    redis.cli(&[
        "set",
        "t2:node:NOTTL",
        r#"{"id":"NOTTL","http_address":"1.2.3.4:1"}"#,
    ]);
    redis.cli(&["set", "t2:node:BAD", "{{{", "px", "60000"]);
    redis.cli(&["set", "t2:node:LIE", r#"{"id":"OTHER"}"#, "px", "60000"]);
    redis.cli(&[
        "zadd",
        "t2:nodes",
        "99999999999999",
        "BAD",
        "99999999999999",
        "LIE",
    ]);
    redis.cli(&["set", "t2:room:nottl", "NOTTL"]);
    redis.cli(&["set", "t2:room:bad", "BAD"]);
    redis.cli(&["set", "t2:room:lie", "LIE"]);
    a.heartbeat(snapshot(&[])).await.unwrap();
    let nodes = a.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1, "only the real node is listed: {nodes:?}");
    for room in ["ghost", "junk", "hash", "nottl", "bad", "lie"] {
        assert_eq!(
            a.place(room, false).await.unwrap(),
            Placement::Local,
            "{room}"
        );
        assert_eq!(redis.cli(&["get", &format!("t2:room:{room}")]).trim(), "A");
    }
    // The node record itself overwritten with garbage: the next heartbeat repairs it.
    redis.cli(&["set", "t2:node:A", "garbage"]);
    a.heartbeat(snapshot(&[])).await.unwrap();
    assert!(redis.cli(&["get", "t2:node:A"]).contains("\"id\":\"A\""));
}

#[tokio::test]
async fn duplicate_node_id_never_takes_rooms() {
    let Some(redis) = Redis::start() else { return };
    let first = coordinator(&redis, "t3:", "SAME");
    // Configured with the same id, on another machine.
    let elsewhere = NodeInfo {
        http_address: "other.test:7880".into(),
        ..node("SAME", "other")
    };
    let second = RedisCoordinator::new(&redis.settings(), config("t3:"), elsewhere).unwrap();
    first.heartbeat(snapshot(&[])).await.unwrap();
    second.heartbeat(snapshot(&[])).await.unwrap();
    // The first registration stands.
    assert!(redis.cli(&["get", "t3:node:SAME"]).contains("inst-SAME"));
    assert!(matches!(
        second.place("r", false).await,
        Err(ClusterError::Unavailable(_))
    ));
    assert_eq!(first.place("r", false).await.unwrap(), Placement::Local);
}

#[tokio::test]
async fn redis_outage_keeps_local_rooms_and_recovers() {
    let Some(redis) = Redis::start() else { return };
    let a = coordinator(&redis, "t4:", "A");
    a.heartbeat(snapshot(&[])).await.unwrap();
    assert_eq!(a.place("live", false).await.unwrap(), Placement::Local);
    redis.cli(&["shutdown", "nosave"]);
    // Down: the hosted room is still placed here, a new one is refused, fast.
    let started = std::time::Instant::now();
    assert!(a.heartbeat(snapshot(&["live"])).await.is_err());
    assert_eq!(a.place("live", false).await.unwrap(), Placement::Local);
    assert!(a.place("new", false).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    // Back (empty, as after a restart without persistence): re-registers and re-claims.
    let port = redis.port.to_string();
    let status = Command::new("redis-server")
        .args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--daemonize", "yes"])
        .arg("--dir")
        .arg(&redis._dir.0)
        .status()
        .unwrap();
    assert!(status.success());
    let mut ok = false;
    for _ in 0..50 {
        if a.heartbeat(snapshot(&["live"])).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "did not reconnect");
    assert_eq!(redis.cli(&["get", "t4:room:live"]).trim(), "A");
    assert!(redis.cli(&["exists", "t4:node:A"]).trim() == "1");
}

#[tokio::test]
async fn a_room_claimed_elsewhere_while_partitioned_is_reported_for_moving() {
    let Some(redis) = Redis::start() else { return };
    let a = coordinator(&redis, "t6:", "A");
    let b = coordinator(&redis, "t6:", "B");
    a.heartbeat(snapshot(&[])).await.unwrap();
    b.heartbeat(snapshot(&[])).await.unwrap();
    // A hosts r1 and r2 and holds their claims.
    assert!(a
        .heartbeat(snapshot(&["r1", "r2"]))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(redis.cli(&["get", "t6:room:r1"]).trim(), "A");
    // A loses Redis alone: its claims run out and r1 is placed on B for a new
    // joiner (as B's `place` would claim it once A's claim is gone).
    redis.cli(&["set", "t6:room:r1", "B", "px", "60000"]);
    // A is back: its heartbeat keeps r2, reports r1 as claimed by a live node,
    // and does not take the claim back.
    let lost = a.heartbeat(snapshot(&["r1", "r2"])).await.unwrap();
    assert_eq!(lost, vec!["r1".to_string()]);
    assert_eq!(redis.cli(&["get", "t6:room:r1"]).trim(), "B");
    assert_eq!(redis.cli(&["get", "t6:room:r2"]).trim(), "A");
    // Once A has closed its copy, nothing is reported any more.
    assert!(a.heartbeat(snapshot(&["r2"])).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_process_restarted_at_a_dead_nodes_address_takes_its_place_at_once() {
    let Some(redis) = Redis::start() else { return };
    let ttl = |key: &str| redis.cli(&["pttl", key]).trim().parse::<i64>().unwrap();
    // Two nodes; then both processes die (no leave), their records still live.
    let a = coordinator(&redis, "t7:", "A");
    let b = coordinator(&redis, "t7:", "B");
    a.heartbeat(snapshot(&[])).await.unwrap();
    b.heartbeat(snapshot(&["r-of-b"])).await.unwrap();
    assert_eq!(redis.cli(&["get", "t7:room:r-of-b"]).trim(), "B");
    drop((a, b));

    // A comes back under its configured id, at its address: registered at
    // once, not refused as a duplicate until the old record expires.
    let a2 =
        RedisCoordinator::new(&redis.settings(), config("t7:"), node("A", "restarted")).unwrap();
    a2.heartbeat(snapshot(&[])).await.unwrap();
    assert!(redis.cli(&["get", "t7:node:A"]).contains("restarted"));
    // A room another node placed here is taken (a duplicate refuses it).
    assert_eq!(a2.place("new", true).await.unwrap(), Placement::Local);

    // B's process comes back with a new id (the default: random per process)
    // at B's address: B's record goes at once, and with it B's claim on its room.
    // A process with this id, at B's address.
    let at_b = |id: &str| {
        let me = NodeInfo {
            http_address: node("B", "").http_address,
            ..node(id, &id.to_lowercase())
        };
        RedisCoordinator::new(&redis.settings(), config("t7:"), me).unwrap()
    };
    let b2 = at_b("B2");
    assert!(ttl("t7:node:B") > 0, "B's old record is still live before");
    b2.heartbeat(snapshot(&[])).await.unwrap();
    assert_eq!(redis.cli(&["exists", "t7:node:B"]).trim(), "0");
    let live: Vec<String> = b2
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert!(!live.contains(&"B".to_string()), "{live:?}");
    assert!(live.contains(&"A".to_string()) && live.contains(&"B2".to_string()));
    // B's room is free for a live node (the selector picks A or B2).
    let owner = match a2.place("r-of-b", false).await.unwrap() {
        Placement::Local => "A".to_string(),
        Placement::Remote(n) => n.id,
    };
    assert_eq!(redis.cli(&["get", "t7:room:r-of-b"]).trim(), owner);
    assert!(owner == "A" || owner == "B2", "{owner}");

    // Only a first registration takes over: two running nodes configured
    // with one address do not evict each other at every heartbeat.
    let c = at_b("C");
    c.heartbeat(snapshot(&[])).await.unwrap();
    b2.heartbeat(snapshot(&[])).await.unwrap();
    c.heartbeat(snapshot(&[])).await.unwrap();
    assert_eq!(redis.cli(&["exists", "t7:node:B2"]).trim(), "1");
    assert_eq!(redis.cli(&["exists", "t7:node:C"]).trim(), "1");
}

#[tokio::test]
async fn a_node_a_relay_could_not_reach_gets_no_new_room_from_here() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = two_nodes(&redis, "t8:").await;
    let placed_on_b = |placements: &[Placement]| {
        placements
            .iter()
            .filter(|p| matches!(p, Placement::Remote(n) if n.id == "B"))
            .count()
    };
    let place_twenty = |round: &'static str| {
        let a = &a;
        async move {
            let mut placements = Vec::new();
            for i in 0..20 {
                placements.push(a.place(&format!("{round}-{i}"), false).await.unwrap());
            }
            placements
        }
    };
    // Both nodes take new rooms (the selector picks at random: 20 all on A
    // has a chance of one in a million).
    assert!(placed_on_b(&place_twenty("before").await) > 0);
    // A relay to B failed: no new room from A goes there.
    let b_record = a
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.id == "B")
        .unwrap();
    a.report_unreachable(&b_record);
    assert_eq!(placed_on_b(&place_twenty("after").await), 0);
    // One node TTL later B, still heartbeating, is picked again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    b.heartbeat(snapshot(&[])).await.unwrap();
    a.heartbeat(snapshot(&[])).await.unwrap();
    assert!(placed_on_b(&place_twenty("later").await) > 0);
}
