//! A room's due sessions handed to a session driver in chunks: driven on
//! other threads, in any order, everything still reaches everyone.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Sim;
use relais_media::fan_out::{DriveChunk, SessionDriver};
use relais_media::Shard;
use str0m::media::MediaKind;

/// Drives every chunk on a thread of its own, last chunk first, and counts.
struct OnThreads {
    rounds: Arc<AtomicUsize>,
    chunks: Arc<AtomicUsize>,
}

impl SessionDriver for OnThreads {
    fn threads(&self) -> usize {
        3
    }

    fn drive(&self, chunks: &mut [DriveChunk<'_>]) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.chunks.fetch_add(chunks.len(), Ordering::Relaxed);
        std::thread::scope(|scope| {
            for chunk in chunks.iter_mut().rev() {
                scope.spawn(|| chunk.drive());
            }
        });
    }
}

#[test]
fn sessions_driven_in_chunks_on_other_threads_deliver_everything() {
    let mut sim = Sim::new();
    let mut config = sim.config.clone();
    // Every round with two or more due sessions goes to the driver.
    config.fan_out_min_sessions = 2;
    sim.shard = Shard::new(0, config);
    let rounds = Arc::new(AtomicUsize::new(0));
    let chunks = Arc::new(AtomicUsize::new(0));
    sim.shard.set_session_driver(Box::new(OnThreads {
        rounds: rounds.clone(),
        chunks: chunks.clone(),
    }));
    let subscribers = 7;
    for i in 0..=subscribers {
        sim.join(&format!("p{i}"));
    }
    // Joining, ICE, DTLS and the subscriber offers all run through chunks too.
    sim.run_until_connected(Duration::from_secs(3));
    sim.publish(0, MediaKind::Audio, "mic");
    sim.publish(0, MediaKind::Video, "cam");
    sim.run_for(Duration::from_secs(2));

    let rounds = rounds.load(Ordering::Relaxed);
    let chunks = chunks.load(Ordering::Relaxed);
    assert!(rounds > 50, "{rounds} rounds went to the driver");
    assert!(chunks > 2 * rounds, "{chunks} chunks in {rounds} rounds");
    for (cid, least) in [("mic", 80), ("cam", 100)] {
        let sid = sim.track_sid(0, cid);
        let sent = sim.client(0).track(cid).sent.len();
        for s in 1..=subscribers {
            let rx = sim.client(s).received(&sid);
            assert!(
                rx.len() >= least && rx.len() + 10 >= sent,
                "p{s} received {} of {sent} on {cid}",
                rx.len()
            );
            for w in rx.windows(2) {
                assert_eq!(w[1].seq, w[0].seq + 1, "p{s}: {cid} out of order");
                assert_eq!(w[1].source_seq(), w[0].source_seq() + 1, "p{s}: {cid} gap");
            }
        }
    }
}
