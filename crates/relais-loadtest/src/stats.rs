//! Counters shared by all simulated participants, per-participant reports, and
//! the server process's CPU and memory from /proc.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Live counters, read by the progress bar and at the measurement window's edges.
#[derive(Default)]
pub struct Shared {
    pub joins_ok: AtomicU64,
    pub joins_failed: AtomicU64,
    pub connected: AtomicU64,
    pub published: AtomicU64,
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub send_dropped: AtomicU64,
    /// Inside the measurement window: latency samples are kept.
    pub measuring: AtomicBool,
}

impl Shared {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Why a participant did not get in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// No answer in time (connect, handshake or first message).
    Timeout,
    /// The server said no (HTTP status on the upgrade, Janus error, leave before join).
    Refused,
    /// The connection closed or failed.
    Dropped,
    /// ICE/DTLS never connected in time after the join.
    MediaTimeout,
    /// Anything else (bad message, local error).
    Other,
}

/// One received stream (a subscriber-side SSRC), as runs of one source stream
/// each (a stream tag: a publisher's track or simulcast layer). A forwarder
/// that switches simulcast layers ends a run: the layer it left is not
/// expected any more, so its sequence numbers after the switch are not loss.
#[derive(Debug, Clone, Copy)]
pub struct StreamRx {
    /// The current run: its tag, min and max source seq, packets.
    pub tag: u16,
    pub first: u32,
    pub last: u32,
    pub count: u64,
    /// Finished runs: packets expected and received.
    pub done: (u64, u64),
}

impl StreamRx {
    /// A run of source stream `tag` from `seq`, after runs that made `done`.
    fn start(tag: u16, seq: u32, done: (u64, u64)) -> Self {
        StreamRx {
            tag,
            first: seq,
            last: seq,
            count: 0,
            done,
        }
    }

    /// (expected, received) of the current run.
    fn run(&self) -> (u64, u64) {
        let expected = u64::from(self.last - self.first) + 1;
        (expected, self.count.min(expected))
    }
}

/// A subscriber's received streams by its SSRC (a few: a list, searched).
#[derive(Debug, Default)]
pub struct Streams(Vec<(u32, StreamRx)>);

impl Streams {
    fn record(&mut self, ssrc: u32, tag: u16, seq: u32) {
        let at = match self.0.iter().position(|(s, _)| *s == ssrc) {
            Some(at) => at,
            None => {
                self.0.push((ssrc, StreamRx::start(tag, seq, (0, 0))));
                self.0.len() - 1
            }
        };
        let s = &mut self.0[at].1;
        if s.tag != tag {
            let (expected, received) = s.run();
            *s = StreamRx::start(tag, seq, (s.done.0 + expected, s.done.1 + received));
        }
        s.first = s.first.min(seq);
        s.last = s.last.max(seq);
        s.count += 1;
    }

    /// (expected, received) over every stream: in each run, from the first to
    /// the last source seq seen.
    pub fn expected_received(&self) -> (u64, u64) {
        self.0.iter().fold((0, 0), |(e, r), (_, s)| {
            let (expected, received) = s.run();
            (e + s.done.0 + expected, r + s.done.1 + received)
        })
    }
}

/// What one participant saw.
#[derive(Debug, Default)]
pub struct Report {
    pub subscriber: bool,
    pub failure: Option<Failure>,
    pub failure_detail: Option<String>,
    /// Connect start → JoinResponse (or Janus "joined").
    pub join_ms: Option<f64>,
    /// Connect start → the receiving (or publishing) PC connected.
    pub connect_ms: Option<f64>,
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    /// What arrived over the whole run, joins included, for its loss.
    pub streams: Streams,
    /// What arrived in the measurement window, for its loss: the steady
    /// state, without what the server lost while hundreds joined.
    pub window_streams: Streams,
    /// Forwarding latency of every packet, µs (measurement window only).
    pub latency: Samples,
    /// Forwarding latency of the packets that end a video frame (RTP marker):
    /// when a subscriber has the whole frame, the packets before it having
    /// left no later than it. µs, measurement window only.
    pub frame_latency: Samples,
    /// Forwarding latency of audio packets alone: in a large room they share
    /// the server's rounds with a video frame's many copies, and each is
    /// heard as it comes. µs, measurement window only.
    pub audio_latency: Samples,
    /// A publisher's frames: how long after it was due each was made (its
    /// timer's lateness; a load generator whose core is full sends late, then
    /// several frames at once). µs, measurement window only.
    pub frame_late: Samples,
}

/// What a received media packet is, for the latencies kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Audio,
    /// A video packet carrying its frame's RTP marker.
    FrameEnd,
    /// Any other video packet.
    Video,
}

const MAX_SAMPLES: usize = 20_000;

/// A uniform sample of at most [`MAX_SAMPLES`] values out of all recorded.
#[derive(Debug, Default)]
pub struct Samples {
    pub values: Vec<u32>,
    pub seen: u64,
}

impl Samples {
    pub fn record(&mut self, us: u64) {
        self.seen += 1;
        let us = us.min(u32::MAX as u64) as u32;
        if self.values.len() < MAX_SAMPLES {
            self.values.push(us);
        } else {
            // Keep a uniform sample without a random generator: replace by a hash of the count.
            let i =
                (self.seen.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 33) as usize % self.seen as usize;
            if i < MAX_SAMPLES {
                self.values[i] = us;
            }
        }
    }
}

impl Report {
    /// A received packet: `tag` names its source stream (0 when unknown),
    /// `seq` its extended sequence number.
    pub fn record_rx(&mut self, ssrc: u32, tag: u16, seq: u32, bytes: usize, measuring: bool) {
        self.packets_received += 1;
        self.bytes_received += bytes as u64;
        self.streams.record(ssrc, tag, seq);
        if measuring {
            self.window_streams.record(ssrc, tag, seq);
        }
    }

    /// A received packet's forwarding latency.
    pub fn record_latency(&mut self, us: u64, packet: Received) {
        self.latency.record(us);
        match packet {
            Received::Audio => self.audio_latency.record(us),
            Received::FrameEnd => self.frame_latency.record(us),
            Received::Video => {}
        }
    }
}

/// Percentile of a sorted slice (nearest rank).
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// CPU time (user + system) and memory of a process, from /proc.
#[derive(Debug, Clone, Default)]
pub struct ProcSample {
    /// All threads', dead ones included, in clock ticks (10 ms): coarse.
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Each live thread's time on a CPU (`schedstat`, nanoseconds), by thread id.
    threads: Vec<(u32, u64)>,
}

impl ProcSample {
    /// CPU seconds the process used since `earlier`. From the threads' own
    /// nanosecond counts when every thread of `earlier` still lives (a thread
    /// new since then counts whole); else from the clock ticks, which also
    /// hold the dead threads' time. A server at 1 % of a core uses 20 ticks
    /// in 20 s, so ticks alone would put ±5 % on its cost per packet.
    pub fn cpu_seconds_since(&self, earlier: &ProcSample) -> f64 {
        let ns_then = |tid: u32| {
            earlier
                .threads
                .binary_search_by_key(&tid, |&(t, _)| t)
                .ok()
                .map(|i| earlier.threads[i].1)
        };
        let all_alive = !earlier.threads.is_empty()
            && earlier
                .threads
                .iter()
                .all(|(tid, _)| self.threads.binary_search_by_key(tid, |&(t, _)| t).is_ok());
        if !all_alive {
            return self.cpu_seconds - earlier.cpu_seconds;
        }
        let ns: u64 = self
            .threads
            .iter()
            .map(|&(tid, now)| now.saturating_sub(ns_then(tid).unwrap_or(0)))
            .sum();
        ns as f64 / 1e9
    }
}

/// Each thread's time on a CPU (the first field of its `schedstat`), sorted by id.
fn thread_runtimes(pid: u32) -> Vec<(u32, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<(u32, u64)> = tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid = task.file_name().to_str()?.parse().ok()?;
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            Some((tid, schedstat.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    threads.sort_unstable();
    threads
}

pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "pid (comm) ": state is field 3; utime 14, stime 15 (1-based).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample {
        cpu_seconds: (utime + stime) as f64 / tck,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        threads: thread_runtimes(pid),
    })
}

/// This process's own CPU seconds (user + system), all threads.
pub fn self_cpu_seconds() -> f64 {
    proc_sample(std::process::id())
        .map(|s| s.cpu_seconds)
        .unwrap_or(0.0)
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
    }

    #[test]
    fn own_process_sample() {
        let s = proc_sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
    }

    /// Use `ms` of CPU time on this thread (however long that takes).
    fn spin(ms: u64) {
        let thread_ns = || {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: writes a live timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
        };
        let until = thread_ns() + ms * 1_000_000;
        while thread_ns() < until {
            std::hint::black_box(0);
        }
    }

    #[test]
    fn each_thread_is_read_in_nanoseconds() {
        // SAFETY: no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        spin(35);
        let sample = proc_sample(std::process::id()).unwrap();
        let (_, ns) = sample
            .threads
            .iter()
            .find(|(tid, _)| *tid == me)
            .expect("this thread listed");
        assert!(*ns >= 35_000_000, "{ns} ns");
        assert!(sample.threads.windows(2).all(|w| w[0].0 < w[1].0));
    }

    fn sample(ticks: f64, threads: &[(u32, u64)]) -> ProcSample {
        ProcSample {
            cpu_seconds: ticks,
            threads: threads.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn cpu_since_counts_nanoseconds_and_new_threads_and_falls_back_to_ticks() {
        let before = sample(1.20, &[(10, 1_000_000_000), (11, 500)]);
        // Thread 10 used 60 ms, 11 nothing, 12 is new with 25 ms: 85 ms,
        // where the ticks say 80.
        let after = sample(1.28, &[(10, 1_060_000_000), (11, 500), (12, 25_000_000)]);
        assert!((after.cpu_seconds_since(&before) - 0.085).abs() < 1e-12);
        // Thread 11 died: its time since `before` is in the ticks only.
        let later = sample(1.31, &[(10, 1_070_000_000), (12, 26_000_000)]);
        assert!((later.cpu_seconds_since(&before) - 0.11).abs() < 1e-12);
        // No threads read (another system): the ticks.
        let unread = sample(1.00, &[]);
        assert!((after.cpu_seconds_since(&unread) - 0.28).abs() < 1e-12);
    }

    #[test]
    fn frame_and_audio_latencies_count_only_their_packets() {
        let mut r = Report::default();
        r.record_latency(900, Received::Video);
        r.record_latency(1_200, Received::FrameEnd);
        r.record_latency(300, Received::Audio);
        r.record_latency(700, Received::Video);
        assert_eq!(r.latency.values, [900, 1_200, 300, 700]);
        assert_eq!(r.frame_latency.values, [1_200]);
        assert_eq!(r.audio_latency.values, [300]);
    }

    #[test]
    fn samples_stay_bounded_and_keep_counting() {
        let mut s = Samples::default();
        for us in 0..(2 * MAX_SAMPLES as u64) {
            s.record(us);
        }
        assert_eq!(s.values.len(), MAX_SAMPLES);
        assert_eq!(s.seen, 2 * MAX_SAMPLES as u64);
        // Later values replaced some of the first ones.
        assert!(s.values.iter().any(|&v| v as usize >= MAX_SAMPLES));
    }

    #[test]
    fn loss_from_streams() {
        let mut r = Report::default();
        for seq in [10, 11, 13, 14] {
            r.record_rx(1, 1, seq, 100, false);
        }
        assert_eq!(r.streams.expected_received(), (5, 4));
    }

    #[test]
    fn the_window_counts_its_own_loss_apart_from_the_run() {
        let mut r = Report::default();
        // 12 and 13 lost before the window, 17 in it.
        for (seq, measuring) in [
            (10, false),
            (11, false),
            (14, false),
            (15, true),
            (16, true),
        ] {
            r.record_rx(1, 1, seq, 100, measuring);
        }
        for seq in [18, 19] {
            r.record_rx(1, 1, seq, 100, true);
        }
        assert_eq!(r.streams.expected_received(), (10, 7));
        assert_eq!(r.window_streams.expected_received(), (5, 4));
        assert_eq!(r.packets_received, 7);
    }

    #[test]
    fn a_layer_switch_is_not_loss_but_a_gap_within_a_layer_is() {
        let mut r = Report::default();
        // Subscriber SSRC 9: layer tag 3 (seq 100..=104), then tag 1 from 50
        // with 52 lost, then tag 3 again much later (its seqs in between were
        // not sent to this subscriber).
        for (tag, seq) in [(3, 100), (3, 101), (3, 102), (3, 103), (3, 104)] {
            r.record_rx(9, tag, seq, 100, false);
        }
        for seq in [50, 51, 53] {
            r.record_rx(9, 1, seq, 100, false);
        }
        for seq in [400, 401] {
            r.record_rx(9, 3, seq, 100, false);
        }
        assert_eq!(r.streams.expected_received(), (5 + 4 + 2, 5 + 3 + 2));
    }
}
