//! The room polls only the sessions that are due (a timer queue), not every
//! session after every event: check that with hundreds of idle sessions in the
//! room the busy ones are still driven exactly on time.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{gaps, rtp_info, server_addr, Sim, ROOM};
use relais_media::{JoinParams, ParticipantKey, Shard};
use relais_proto::livekit::{CreateRoomRequest, DisconnectReason, ParticipantPermission};
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
/// (sequence numbers) and the simulation. With a `slack`, the shard's
/// timers are driven as the server drives them ([`Sim::lazy_timers`]).
fn lossy_call(idle: u64, slack: Option<Duration>) -> (Vec<u64>, Sim) {
    let mut sim = Sim::new();
    if let Some(slack) = slack {
        sim.lazy_timers = true;
        sim.config.timer_slack = slack;
        sim.shard = Shard::new(0, sim.config.clone());
    }
    let alice = sim.join("alice");
    let bob = sim.join("bob");
    sim.run_until_connected(Duration::from_secs(2));
    join_idle(&mut sim, idle);
    sim.publish(alice, MediaKind::Video, "cam");
    sim.run_for(Duration::from_secs(1));
    // Counted from here: while media flows.
    sim.timer_wakes = 0;
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
    let (alone, _) = lossy_call(0, None);
    let (crowded, sim) = lossy_call(IDLE, None);
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

/// Driven as the server drives it, the shard wakes for its periodic work
/// (str0m's timers, the NACKs and reports to alice, the layer review) only
/// when no datagram brought it along within the timer slack: less often
/// with the default 10 ms, half as often or less with a slack longer than
/// the gap between alice's frames (33 ms); her losses are repaired as well.
#[test]
fn periodic_work_rides_on_the_wake_ups_datagrams_cause() {
    let (eager, eager_sim) = lossy_call(0, None);
    for slack in [10, 40] {
        let (lazy, lazy_sim) = lossy_call(0, Some(Duration::from_millis(slack)));
        assert_eq!(lazy.len(), eager.len(), "bob gets as many packets");
        let missing = gaps(lazy.iter().copied());
        assert!(missing.len() <= 2, "{missing:?} missing");
        let (eager_wakes, lazy_wakes) = (eager_sim.timer_wakes, lazy_sim.timer_wakes);
        // Not to zero: a frame whose last packet was lost still leaves at
        // the end of its wait, datagram or not.
        let fewer = if slack > 33 { 2 } else { 1 };
        assert!(
            lazy_wakes * fewer < eager_wakes,
            "slack {slack} ms: the shard woke for its timers alone {lazy_wakes} times, {eager_wakes} without the slack"
        );
    }
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

/// A room that closes leaves its shard nothing to wake for. Its entries in
/// the shard's queues went stale, and one left at the front held the shard's
/// `wake_by` in the past: the server's shard woke at once, again and again,
/// until another room on it moved the queue — with no other room, never.
#[test]
fn a_closed_room_leaves_its_shard_nothing_to_wake_for() {
    let mut sim = Sim::new();
    let idle = |sim: &Sim| (sim.shard.wake_by(), sim.shard.poll_timeout());

    join_idle_to(&mut sim, "deleted", 0..2);
    assert!(sim.shard.wake_by().is_some());
    assert!(sim
        .shard
        .close_room(sim.now, "deleted", DisconnectReason::RoomDeleted));
    assert_eq!(idle(&sim), (None, None), "after the API closed the room");

    join_idle_to(&mut sim, "emptied", 10..11);
    sim.shard.remove_participant(
        sim.now,
        ParticipantKey(10_010),
        DisconnectReason::ClientInitiated,
    );
    drive_until_closed(&mut sim, "emptied");
    assert_eq!(idle(&sim), (None, None), "after the empty room timed out");
}

/// Drive the shard's timers until `room` is gone; when it went.
fn drive_until_closed(sim: &mut Sim, room: &str) -> Instant {
    let mut now = sim.now;
    while sim.shard.room(room).is_some() {
        now = sim
            .shard
            .poll_timeout()
            .expect("the room's timeout")
            .max(now);
        sim.shard.handle_timeout(now);
    }
    now
}

/// LiveKit's rule for closing an empty room: one whose last participant left
/// closes after the departure timeout (time to reconnect), one nobody joined
/// after the empty timeout, counted from its creation.
#[test]
fn an_empty_room_closes_after_the_departure_or_the_empty_timeout() {
    let mut sim = Sim::new();
    sim.config.room_defaults.empty_timeout = Duration::from_secs(30);
    sim.config.room_defaults.departure_timeout = Duration::from_secs(2);
    sim.shard = Shard::new(0, sim.config.clone());
    let start = sim.now;

    join_idle_to(&mut sim, "left", 0..1);
    sim.now += Duration::from_secs(5);
    sim.shard.remove_participant(
        sim.now,
        ParticipantKey(10_000),
        DisconnectReason::ClientInitiated,
    );
    let after_leaving = drive_until_closed(&mut sim, "left") - sim.now;
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(3)).contains(&after_leaving),
        "closed {after_leaving:?} after its last participant left"
    );

    let request = CreateRoomRequest {
        name: "unjoined".into(),
        ..Default::default()
    };
    sim.shard.create_room(start, 0, &request);
    let after_creation = drive_until_closed(&mut sim, "unjoined") - start;
    assert!(
        (Duration::from_secs(30)..Duration::from_secs(31)).contains(&after_creation),
        "closed {after_creation:?} after its creation"
    );
}
