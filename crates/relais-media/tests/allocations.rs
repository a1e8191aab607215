//! The forwarding path allocates nothing per packet: what the shard
//! allocates is counted (its calls only — the simulated clients' str0m,
//! on the same thread, allocates for every packet it sends and receives)
//! over the same seconds of a call with few packets — two a video frame,
//! an audio frame every 20 ms — and then with many: ten a video frame, an
//! audio frame every 5 ms. What the second run allocates more, divided by
//! the packets it forwards more, is what a packet costs the heap; the rest
//! (reports, feedback, statistics, signalling) comes with time, not with
//! packets.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::Sim;
use str0m::media::MediaKind;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IN_SHARD: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if IN_SHARD.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SUBSCRIBERS: usize = 4;

/// Packets the shard received from the publisher and allocations it made
/// in `measured` of a call, after `warm_up`: one publisher of a camera
/// (`packets_per_frame`, 30 frames a second) and a microphone (a frame
/// every `audio_interval`), four subscribers.
fn call(
    packets_per_frame: u32,
    audio_interval: Duration,
    warm_up: Duration,
    measured: Duration,
) -> (u64, u64) {
    let mut sim = Sim::new();
    sim.shard_scope = |inside| IN_SHARD.with(|s| s.set(inside));
    let alice = sim.join("alice");
    for i in 0..SUBSCRIBERS {
        sim.join(&format!("sub{i}"));
    }
    sim.run_until_connected(Duration::from_secs(5));
    sim.publish(alice, MediaKind::Video, "cam");
    sim.publish(alice, MediaKind::Audio, "mic");
    sim.client_mut(alice).track_mut("cam").packets_per_frame = packets_per_frame;
    sim.client_mut(alice).track_mut("mic").frame_interval = audio_interval;
    sim.run_for(warm_up);
    let (packets, allocations) = (sim.rtp_to_shard.len(), ALLOCATIONS.load(Ordering::Relaxed));
    sim.run_for(measured);
    let copies: usize = (1..=SUBSCRIBERS).map(|i| sim.client(i).rtp_in.len()).sum();
    assert!(copies > 0, "nothing forwarded");
    (
        (sim.rtp_to_shard.len() - packets) as u64,
        ALLOCATIONS.load(Ordering::Relaxed) - allocations,
    )
}

#[test]
fn forwarding_a_packet_allocates_nothing() {
    // Long enough for every buffer the path reuses to have been made: a
    // video layer keeps its last 256 packets for NACKs.
    let warm_up = Duration::from_secs(6);
    let measured = Duration::from_secs(5);
    let (few_packets, few) = call(2, Duration::from_millis(20), warm_up, measured);
    let (many_packets, many) = call(10, Duration::from_millis(5), warm_up, measured);
    let extra = many_packets - few_packets;
    let per_packet = many.saturating_sub(few) as f64 / extra as f64;
    println!(
        "{few} allocations for {few_packets} packets in, {many} for {many_packets}: \
         {per_packet:.3} per packet more"
    );
    assert!(extra > 1_500, "the runs differ by {extra} packets only");
    assert!(
        per_packet < 0.01,
        "{per_packet:.3} allocations per packet forwarded to {SUBSCRIBERS} subscribers"
    );
}
