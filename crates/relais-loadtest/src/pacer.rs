//! A sender's pacer: encoded packets leave at a fixed rate instead of as a
//! frame's burst, as a WebRTC sender's pacer lets them out.
//!
//! The rate's budget runs on the wall clock, not on the calls: a pacer whose
//! loop was late (the load generator's core busy with a wave of joins) lets out
//! at once what was due in the meantime, as a real sender's pacer, on time,
//! would have. Only a pacer that sat idle is limited to [`IDLE_CREDIT`] of
//! saved budget, so that a new frame after a quiet spell still leaves spread.
//! A budget lost to late calls would instead hold packets back until the queue
//! held seconds of video, then let it all out at the pacing rate: a surge of
//! the publishers' video the server would be blamed for.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::media::Packet;

/// How much budget a pacer that was idle saves (libwebrtc works in 5 ms steps).
const IDLE_CREDIT: Duration = Duration::from_millis(5);

pub struct Pacer {
    /// Bytes per second, or `None`: every packet leaves as soon as it is queued.
    rate: Option<f64>,
    /// Encoded, not yet let out.
    queue: VecDeque<Packet>,
    /// When the next packet may leave.
    send_at: Instant,
}

impl Pacer {
    pub fn new(rate: Option<f64>, now: Instant) -> Self {
        Pacer {
            rate,
            queue: VecDeque::new(),
            send_at: now,
        }
    }

    /// Queue a frame's packets, made at `now`.
    pub fn push(&mut self, now: Instant, packets: Vec<Packet>) {
        if self.queue.is_empty() {
            // Idle until now: the budget it saved is capped.
            self.send_at = self
                .send_at
                .max(now.checked_sub(IDLE_CREDIT).unwrap_or(now));
        }
        self.queue.extend(packets);
    }

    /// The next packet whose time has come by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Packet> {
        if self.send_at > now {
            return None;
        }
        let p = self.queue.pop_front()?;
        if let Some(rate) = self.rate {
            self.send_at += Duration::from_secs_f64(p.payload.len() as f64 / rate);
        }
        Some(p)
    }

    /// When the next queued packet may leave; `None` with nothing queued.
    pub fn next_due(&self) -> Option<Instant> {
        (!self.queue.is_empty()).then_some(self.send_at)
    }

    /// Drop what is queued (the stream stopped).
    pub fn clear(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(packets: usize, size: usize) -> Vec<Packet> {
        (0..packets)
            .map(|_| Packet {
                payload: vec![0; size],
                marker: false,
                timestamp: 0,
            })
            .collect()
    }

    fn drain(p: &mut Pacer, now: Instant) -> usize {
        std::iter::from_fn(|| p.pop_due(now)).count()
    }

    #[test]
    fn a_frame_leaves_spread_at_the_rate() {
        let t0 = Instant::now();
        // 1,000 bytes a packet at 100,000 B/s: one packet every 10 ms.
        let mut p = Pacer::new(Some(100_000.0), t0);
        p.push(t0, frame(5, 1_000));
        assert_eq!(drain(&mut p, t0), 1);
        assert_eq!(p.next_due(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(drain(&mut p, t0 + Duration::from_millis(25)), 2);
        assert_eq!(drain(&mut p, t0 + Duration::from_millis(45)), 2);
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn a_late_call_lets_out_what_was_due_meanwhile() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(100_000.0), t0);
        p.push(t0, frame(10, 1_000));
        assert_eq!(drain(&mut p, t0), 1);
        // The loop comes back 100 ms late: the nine packets due by then leave,
        // and the next frame's packets are not held behind a lost budget.
        let late = t0 + Duration::from_millis(100);
        p.push(late, frame(3, 1_000));
        assert_eq!(drain(&mut p, late), 10);
        assert_eq!(p.next_due(), Some(late + Duration::from_millis(10)));
    }

    #[test]
    fn an_idle_pacer_saves_only_a_little_budget() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(100_000.0), t0);
        // Idle for a second, then a frame: 5 ms of credit is half a packet's
        // time, so one packet leaves now and the rest stay spread.
        let later = t0 + Duration::from_secs(1);
        p.push(later, frame(4, 1_000));
        assert_eq!(drain(&mut p, later), 1);
        assert_eq!(p.next_due(), Some(later + Duration::from_millis(5)));
    }

    #[test]
    fn without_a_rate_everything_leaves_at_once() {
        let t0 = Instant::now();
        let mut p = Pacer::new(None, t0);
        p.push(t0, frame(7, 1_000));
        assert_eq!(drain(&mut p, t0), 7);
    }
}
