//! The room polls only the sessions that are due (a timer queue), not every
//! session after every event: check that with hundreds of idle sessions in the
//! room the busy ones are still driven exactly on time.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{gaps, rtp_info, server_addr, Sim, ROOM};
use relais_media::{JoinParams, ParticipantKey};
use relais_proto::livekit::ParticipantPermission;
use str0m::media::MediaKind;

const IDLE: u64 = 300;

/// Participants whose clients never connect: joined, then silent.
fn join_idle(sim: &mut Sim, n: u64) {
    join_idle_to(sim, ROOM, 0..n);
}

fn join_idle_to(sim: &mut Sim, room: &str, numbers: std::ops::Range<u64>) {
    for i in numbers {
        let params = JoinParams {
            key: ParticipantKey(10_000 + i),
            identity: format!("idle-{i}"),
            name: String::new(),
            metadata: String::new(),
            attributes: BTreeMap::new(),
            permission: ParticipantPermission {
                can_subscribe: true,
                ..Default::default()
            },
            kind: 0,
            auto_subscribe: false,
            protocol: 16,
            client_info: None,
        };
        sim.shard
            .join(sim.now, 0, room, true, params)
            .expect("join");
    }
}

/// Alice publishes video to bob while `idle` silent participants share the
/// room; the network loses 15 of alice's packets (one in ten) to the server, which only the
/// server's NACK timer on alice's session gets back. Returns what bob received
/// (sequence numbers) and the simulation.
fn lossy_call(idle: u64) -> (Vec<u64>, Sim) {
    let mut sim = Sim::new();
    let alice = sim.join("alice");
    let bob = sim.join("bob");
    sim.run_until_connected(Duration::from_secs(2));
    join_idle(&mut sim, idle);
    sim.publish(alice, MediaKind::Video, "cam");
    sim.run_for(Duration::from_secs(1));
    let sid = sim.track_sid(alice, "cam");

    let alice_pub = sim.client(alice).pub_addr;
    let mut seen = 0u32;
    let mut lost = HashSet::new();
    sim.drop_filter = Some(Box::new(move |d| {
        if d.source != alice_pub || d.destination != server_addr() || lost.len() >= 15 {
            return false;
        }
        let Some(rtp) = rtp_info(&d.contents) else {
            return false;
        };
        seen += 1;
        // One in ten: within what the sending str0m resends (it drops its
        // queued resends above 15 % of its bytes), so that every loss can come
        // back and the test is about the NACK timers, not that budget.
        seen.is_multiple_of(10) && lost.insert(rtp.seq)
    }));
    sim.run_for(Duration::from_secs(3));
    // Losses are repaired on time, while packets are still being lost: all
    // but the last ~150 ms (a NACK interval, the timer grid, a round trip and
    // the resend) are back by now.
    let so_far: Vec<u64> = sim
        .client(bob)
        .received(&sid)
        .iter()
        .map(|r| r.seq)
        .collect();
    let newest = so_far.iter().copied().max().unwrap_or(0);
    let late: Vec<u64> = gaps(so_far)
        .into_iter()
        .filter(|&s| s + 10 < newest)
        .collect();
    assert!(
        late.is_empty(),
        "losses older than ~150 ms still missing: {late:?}"
    );
    sim.drop_filter = None;
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.dropped.len(), 15, "the network dropped 15 packets");
    let rx = sim
        .client(bob)
        .received(&sid)
        .iter()
        .map(|r| r.seq)
        .collect();
    (rx, sim)
}

#[test]
fn busy_and_idle_sessions_are_driven_on_time_among_many() {
    let (alone, _) = lossy_call(0);
    let (crowded, sim) = lossy_call(IDLE);
    assert!(
        alone.len() > 100,
        "bob receives alice's video: {}",
        alone.len()
    );
    // The sessions' timers (NACKs to alice, pacing and reports to bob) fire
    // exactly as without the crowd: bob gets the very same packets.
    assert_eq!(crowded, alone, "the idle participants change nothing");
    let missing = gaps(alone.iter().copied());
    assert!(
        missing.len() <= 2,
        "the server NACKed alice and forwarded the repairs: {missing:?} missing"
    );
    assert!(!sim.clients.iter().any(|c| c.disconnected));
    let room = sim.shard.room(common::ROOM).expect("room");
    assert_eq!(room.num_participants() as u64, IDLE + 2);
}

/// Rooms that come due together can be driven a few per call: the caller
/// bounds a round's timer work, the rooms left over stay due and go first
/// next time, and none is driven twice before the others.
#[test]
fn rooms_due_together_are_driven_as_the_caller_allows() {
    let mut sim = Sim::new();
    let rooms = ["r1", "r2", "r3"];
    for (n, room) in (0..).zip(rooms) {
        join_idle_to(&mut sim, room, n * 10..n * 10 + 2);
    }
    let now = sim.now + Duration::from_secs(1);
    let due = |sim: &Sim| {
        rooms
            .iter()
            .filter(|r| sim.shard.room(r).expect("room").poll_timeout() <= now)
            .count()
    };
    assert_eq!(due(&sim), 3, "all three rooms' checks are due");

    let mut calls = 0;
    while sim.shard.poll_timeout().is_some_and(|t| t <= now) {
        sim.shard.handle_timeout_while(now, |_| false);
        calls += 1;
        assert_eq!(due(&sim), 3 - calls, "one room per call");
    }
    assert_eq!(calls, 3);

    // Without a bound, one call drives every due room.
    let later = now + Duration::from_secs(1);
    sim.shard.handle_timeout(later);
    assert!(sim.shard.poll_timeout().is_some_and(|t| t > later));
}
