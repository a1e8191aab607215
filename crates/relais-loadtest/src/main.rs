//! `relais-loadtest`: simulated participants on str0m (no browser) against any
//! LiveKit-compatible server (`--mode livekit`, the default) or Janus's
//! VideoRoom (`--mode janus`), with the same publishers, subscribers and
//! bitrates. Reports joins, join time, packets/bytes per subscriber, loss,
//! forwarding latency and — with `--server-pid` — the server's CPU seconds and
//! memory over the measurement window, hence forwarded packets per CPU-second.
//!
//! One tokio runtime; each participant is one task owning its WebSocket (or
//! Janus session), its str0m `Rtc`s and their UDP sockets, woken by socket
//! readiness, signal messages or its own next deadline — never a busy poll.

mod counting;
mod janus;
mod livekit;
mod media;
mod pacer;
mod peer;
mod stats;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use counting::CountingReader;
use media::Encoder;
use stats::{percentile, proc_sample, ProcSample, Report, Samples, Shared, Streams};

#[derive(Clone, Copy, Debug, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// LiveKit signaling (`/rtc` WebSocket, protobuf) — Relais or LiveKit.
    Livekit,
    /// Janus VideoRoom over Janus's HTTP API.
    Janus,
}

/// Load generator for LiveKit-compatible SFUs (and Janus, for comparison).
#[derive(Parser, Debug, Clone)]
#[command(name = "relais-loadtest", version)]
struct Args {
    /// Signaling protocol of the server under test.
    #[arg(long, value_enum, default_value = "livekit")]
    mode: Mode,
    /// Server URL: `ws://host:7880` (livekit) or `http://host:8088/janus` (janus).
    #[arg(long)]
    url: Option<String>,
    #[arg(long, default_value = "devkey", env = "LIVEKIT_API_KEY")]
    api_key: String,
    #[arg(
        long,
        default_value = "secret",
        env = "LIVEKIT_API_SECRET",
        hide_env_values = true
    )]
    api_secret: String,
    /// Number of rooms; each gets the publishers and subscribers below.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Video publishers per room (one VP8 track each).
    #[arg(long, default_value_t = 1)]
    video_publishers: usize,
    /// Audio publishers per room (one Opus track each).
    #[arg(long, default_value_t = 0)]
    audio_publishers: usize,
    /// Subscribers per room (subscribe to every track, publish nothing).
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Per room, how many subscribers decrypt what they receive (forwarding
    /// latency, loss by the publisher's sequence numbers). The others count
    /// packets, bytes and loss from the RTP header, in clear in SRTP, without
    /// decrypting: the load generator then costs far less than the server it
    /// measures. Their loss is read from the server's outgoing sequence
    /// numbers (no gap for what it skips on purpose): what was lost on either
    /// side of it and not repaired — they ask for no resends. They are spread
    /// evenly over the room's join order, the last to join among them: a
    /// server that sends a packet's copies in the order its subscribers
    /// joined is measured at its last copy too, not only at its first.
    /// Default: all.
    #[arg(long)]
    decoding_subscribers: Option<usize>,
    /// Measurement window in seconds (after the ramp and the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Joins are spread evenly over this many seconds (publishers first).
    #[arg(long, default_value_t = 2.0)]
    ramp: f64,
    /// Seconds between the last join and the start of the measurement window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Publish video as three simulcast layers (q, h, f at 1/16, 1/4, 1 of the bitrate).
    #[arg(long)]
    simulcast: bool,
    /// Video bitrate, bits per second (top layer with --simulcast).
    #[arg(long, default_value_t = 1_000_000)]
    video_bitrate: u64,
    /// Audio bitrate, bits per second (50 packets/s).
    #[arg(long, default_value_t = 32_000)]
    audio_bitrate: u64,
    /// Keyframe interval, seconds.
    #[arg(long, default_value_t = 2.0)]
    keyframe_interval: f64,
    /// Video leaves at this many times its bitrate, spread as a WebRTC sender's
    /// pacer spreads a frame (libwebrtc: 2.5); 0 (the default, as every recorded
    /// figure) sends each frame as one burst.
    #[arg(long, default_value_t = 0.0)]
    pacing_factor: f64,
    /// PID of the server: CPU seconds and memory from /proc over the run.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Local IP for the clients' UDP sockets.
    #[arg(long, default_value = "127.0.0.1")]
    local_ip: IpAddr,
    /// Receive buffer each client socket asks for, KiB (the kernel caps it at
    /// net.core.rmem_max; 0: the system's default). A generator that falls
    /// behind for a moment — as it does while hundreds join — must not be
    /// where packets are lost.
    #[arg(long, default_value_t = 1024)]
    receive_buffer_kib: usize,
    /// Limit for each join step (connect, JoinResponse, Janus requests), seconds.
    #[arg(long, default_value_t = 10.0)]
    join_timeout: f64,
    /// Limit for the peer connection to connect after the join, seconds.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Room name prefix (LiveKit) / first room number (Janus).
    #[arg(long, default_value = "lt")]
    room_prefix: String,
    /// Name the rooms `<prefix>-<n>`, without the run's random id, so that
    /// load generators run one after another (or side by side) meet in the
    /// same rooms: publishers that stay while rounds of subscribers come and go.
    #[arg(long)]
    shared_rooms: bool,
    #[arg(long, default_value_t = 5000)]
    janus_room_base: u64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Free-form label copied into the summary (e.g. "relais release").
    #[arg(long, default_value = "")]
    label: String,
}

/// Run-wide settings shared by the participants.
pub struct Ctx {
    pub url: String,
    pub api_key: String,
    pub api_secret: String,
    pub local_ip: IpAddr,
    /// Bytes of receive buffer each client socket asks for (`None`: the default).
    pub receive_buffer: Option<usize>,
    pub join_timeout: Duration,
    pub connect_timeout: Duration,
    pub end: Instant,
    pub shared: Arc<Shared>,
    /// Reads the sockets of the subscribers that do not decrypt.
    pub counting: CountingReader,
    pub simulcast: bool,
    pub video_bitrate: u64,
    pub audio_bitrate: u64,
    pub keyframe_interval: Duration,
    pub pacing_factor: f64,
    pub publishers_per_room: usize,
    tags: AtomicU64,
}

impl Ctx {
    pub fn next_tag(&self) -> u16 {
        self.tags.fetch_add(1, Ordering::Relaxed) as u16
    }

    /// A video encoder for a new stream of `bitrate` bits per second.
    pub fn video_encoder(&self, bitrate: u64) -> Encoder {
        Encoder::video(
            self.next_tag(),
            bitrate,
            self.keyframe_interval,
            self.pacing_factor,
        )
    }
}

/// One participant to simulate.
#[derive(Debug, Clone)]
pub struct Spec {
    pub identity: String,
    pub room: String,
    pub room_no: u64,
    pub video: bool,
    pub audio: bool,
    pub subscribe: bool,
    /// A subscriber that decrypts (see `--decoding-subscribers`).
    pub decode: bool,
}

#[derive(Serialize, Default)]
struct Summary {
    label: String,
    mode: Option<Mode>,
    url: String,
    nproc: usize,
    cpu_model: String,
    rooms: usize,
    video_publishers_per_room: usize,
    audio_publishers_per_room: usize,
    subscribers_per_room: usize,
    /// Of those, how many decrypt (the others count from the RTP header).
    decoding_subscribers_per_room: usize,
    participants: usize,
    simulcast: bool,
    video_bitrate: u64,
    audio_bitrate: u64,
    pacing_factor: f64,
    /// What each client socket asked for (the kernel may have given less).
    receive_buffer_kib: usize,
    window_s: f64,
    joins_ok: u64,
    joins_failed: u64,
    failures: BTreeMap<String, u64>,
    failure_examples: Vec<String>,
    unfinished: usize,
    join_ms_p50: Option<f64>,
    join_ms_p99: Option<f64>,
    join_ms_max: Option<f64>,
    connected: u64,
    connect_ms_p50: Option<f64>,
    connect_ms_p99: Option<f64>,
    publishers_live: u64,
    window_packets_sent: u64,
    window_bytes_sent: u64,
    window_packets_received: u64,
    window_bytes_received: u64,
    forwarded_pps: f64,
    subscribers_measured: usize,
    per_subscriber_packets_mean: f64,
    per_subscriber_packets_min: u64,
    per_subscriber_packets_max: u64,
    per_subscriber_bytes_mean: f64,
    per_subscriber_pps: f64,
    /// Over the measurement window.
    loss_percent: Option<f64>,
    /// Over the whole run, the joins included.
    loss_percent_run: Option<f64>,
    latency_ms_p50: Option<f64>,
    latency_ms_p99: Option<f64>,
    latency_ms_max: Option<f64>,
    /// Latency of the packets ending a video frame: when a subscriber has the whole frame.
    frame_latency_ms_p50: Option<f64>,
    frame_latency_ms_p99: Option<f64>,
    /// Latency of the audio packets alone.
    audio_latency_ms_p50: Option<f64>,
    audio_latency_ms_p99: Option<f64>,
    /// How late the publishers made their frames (see `Report::frame_late`).
    publisher_frame_late_ms_p50: Option<f64>,
    publisher_frame_late_ms_p99: Option<f64>,
    send_dropped: u64,
    server_pid: Option<u32>,
    server_cpu_seconds: Option<f64>,
    server_cpu_percent: Option<f64>,
    forwarded_packets_per_cpu_second: Option<f64>,
    server_rss_before_kib: Option<u64>,
    server_rss_joined_kib: Option<u64>,
    server_rss_per_participant_kib: Option<f64>,
    /// The server's CPU from before the first join to half a second after
    /// the ramp (joins, handshakes, the room's updates), per joined participant.
    server_cpu_ms_per_join: Option<f64>,
    server_peak_rss_kib: Option<u64>,
    loadgen_cpu_seconds: f64,
    loadavg_start: f64,
    loadavg_end: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let summary = rt.block_on(run(args.clone()))?;
    // Stragglers were aborted; don't wait for blocking tasks.
    rt.shutdown_timeout(Duration::from_secs(2));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(&summary);
    }
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

async fn run(args: Args) -> anyhow::Result<Summary> {
    let shared = Arc::new(Shared::default());
    let url = args.url.clone().unwrap_or_else(|| match args.mode {
        Mode::Livekit => "ws://127.0.0.1:7880".into(),
        Mode::Janus => "http://127.0.0.1:8088/janus".into(),
    });
    let mut specs = Vec::new();
    let run_id = media::rand_u32() & 0xffff;
    // Publishers of every room first, then subscribers.
    for pass in 0..2 {
        for r in 0..args.rooms {
            let room = if args.shared_rooms {
                format!("{}-{r}", args.room_prefix)
            } else {
                format!("{}-{run_id:04x}-{r}", args.room_prefix)
            };
            let room_no = args.janus_room_base + r as u64;
            let mut push = |identity: String, video, audio, subscribe, decode| {
                specs.push(Spec {
                    identity,
                    room: room.clone(),
                    room_no,
                    video,
                    audio,
                    subscribe,
                    decode,
                })
            };
            if pass == 0 {
                for i in 0..args.video_publishers {
                    push(format!("vpub-{r}-{i}"), true, false, false, true);
                }
                for i in 0..args.audio_publishers {
                    push(format!("apub-{r}-{i}"), false, true, false, true);
                }
            } else {
                let decoding = args.decoding_subscribers.unwrap_or(args.subscribers);
                for i in 0..args.subscribers {
                    let decode = spread_evenly(i, decoding, args.subscribers);
                    push(format!("sub-{r}-{i}"), false, false, true, decode);
                }
            }
        }
    }
    let total = specs.len();
    let start = Instant::now();
    let ramp = Duration::from_secs_f64(args.ramp.max(0.0));
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let window = Duration::from_secs_f64(args.duration.max(0.1));
    let window_start = start + ramp + warmup;
    let window_end = window_start + window;
    let ctx = Arc::new(Ctx {
        url: url.clone(),
        api_key: args.api_key.clone(),
        api_secret: args.api_secret.clone(),
        local_ip: args.local_ip,
        receive_buffer: (args.receive_buffer_kib > 0).then_some(args.receive_buffer_kib << 10),
        join_timeout: Duration::from_secs_f64(args.join_timeout),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        end: window_end + Duration::from_millis(300),
        shared: shared.clone(),
        counting: CountingReader::start(shared.clone())?,
        simulcast: args.simulcast,
        video_bitrate: args.video_bitrate,
        audio_bitrate: args.audio_bitrate,
        keyframe_interval: Duration::from_secs_f64(args.keyframe_interval.max(0.1)),
        pacing_factor: args.pacing_factor.max(0.0),
        publishers_per_room: args.video_publishers + args.audio_publishers,
        tags: AtomicU64::new(1),
    });
    let server_before = args.server_pid.and_then(proc_sample);
    let loadavg_start = stats::loadavg();

    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} joined {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ticker = {
        let pb = pb.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let rx = Shared::get(&shared.packets_received);
                let now = Instant::now();
                let pps = (rx - last.1) as f64 / (now - last.0).as_secs_f64();
                last = (now, rx);
                pb.set_position(Shared::get(&shared.joins_ok) + Shared::get(&shared.joins_failed));
                pb.set_message(format!(
                    "failed {} connected {} rx {:.0} pkt/s{}",
                    Shared::get(&shared.joins_failed),
                    Shared::get(&shared.connected),
                    pps,
                    if shared.measuring.load(Ordering::Relaxed) {
                        " [measuring]"
                    } else {
                        ""
                    }
                ));
            }
        })
    };

    let http = janus::client();
    let feeds = Arc::new(janus::Feeds::default());
    let mut handles = Vec::with_capacity(total);
    for (i, spec) in specs.iter().cloned().enumerate() {
        let at = start + ramp.mul_f64(i as f64 / total.max(1) as f64);
        let ctx = ctx.clone();
        let http = http.clone();
        let feeds = feeds.clone();
        let mode = args.mode;
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            match mode {
                Mode::Livekit => livekit::run(ctx, spec).await,
                Mode::Janus => {
                    let room = spec.room_no;
                    janus::run(ctx, spec, room, feeds, http).await
                }
            }
        }));
    }

    // After the ramp: memory with everyone joined.
    tokio::time::sleep_until((start + ramp + Duration::from_millis(500).min(warmup)).into()).await;
    let server_joined = args.server_pid.and_then(proc_sample);
    tokio::time::sleep_until(window_start.into()).await;
    let s0 = snapshot(&shared, args.server_pid);
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep_until(window_end.into()).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let s1 = snapshot(&shared, args.server_pid);
    let loadavg_end = stats::loadavg();
    let server_end = args.server_pid.and_then(proc_sample);

    // Collect reports; nothing may hang: stragglers are aborted.
    let deadline = ctx.end + ctx.join_timeout + Duration::from_secs(3);
    let mut reports = Vec::with_capacity(total);
    let mut unfinished = 0;
    for h in handles {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(deadline.into(), h).await {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(_)) => unfinished += 1,
            Err(_) => {
                abort.abort();
                unfinished += 1;
            }
        }
    }
    ticker.abort();
    pb.finish_and_clear();

    let secs = (s1.at - s0.at).as_secs_f64();
    let mut sum = Summary {
        label: args.label.clone(),
        mode: Some(args.mode),
        url,
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpu_model(),
        rooms: args.rooms,
        video_publishers_per_room: args.video_publishers,
        audio_publishers_per_room: args.audio_publishers,
        subscribers_per_room: args.subscribers,
        decoding_subscribers_per_room: args
            .decoding_subscribers
            .unwrap_or(args.subscribers)
            .min(args.subscribers),
        participants: total,
        simulcast: args.simulcast,
        pacing_factor: args.pacing_factor.max(0.0),
        receive_buffer_kib: args.receive_buffer_kib,
        video_bitrate: args.video_bitrate,
        audio_bitrate: args.audio_bitrate,
        window_s: secs,
        joins_ok: Shared::get(&shared.joins_ok),
        joins_failed: Shared::get(&shared.joins_failed),
        unfinished,
        connected: Shared::get(&shared.connected),
        publishers_live: Shared::get(&shared.published),
        window_packets_sent: s1.sent - s0.sent,
        window_bytes_sent: s1.sent_bytes - s0.sent_bytes,
        window_packets_received: s1.rx - s0.rx,
        window_bytes_received: s1.rx_bytes - s0.rx_bytes,
        forwarded_pps: (s1.rx - s0.rx) as f64 / secs,
        send_dropped: Shared::get(&shared.send_dropped),
        server_pid: args.server_pid,
        loadgen_cpu_seconds: s1.self_cpu - s0.self_cpu,
        loadavg_start,
        loadavg_end,
        ..Default::default()
    };
    for r in &reports {
        if let Some(f) = r.failure {
            let key = serde_json::to_value(f)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            *sum.failures.entry(key).or_default() += 1;
            if sum.failure_examples.len() < 5 {
                sum.failure_examples
                    .push(r.failure_detail.clone().unwrap_or_default());
            }
        }
    }
    let ms = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (
            percentile(&v, 50.0),
            percentile(&v, 99.0),
            v.last().copied(),
        )
    };
    let (p50, p99, max) = ms(reports.iter().filter_map(|r| r.join_ms).collect());
    (sum.join_ms_p50, sum.join_ms_p99, sum.join_ms_max) = (p50, p99, max);
    let (p50, p99, _) = ms(reports.iter().filter_map(|r| r.connect_ms).collect());
    (sum.connect_ms_p50, sum.connect_ms_p99) = (p50, p99);
    let subs: Vec<&Report> = reports
        .iter()
        .filter(|r| r.subscriber && r.join_ms.is_some())
        .collect();
    sum.subscribers_measured = subs.len();
    // Latency samples are in microseconds.
    let ms = |v: u32| f64::from(v) / 1e3;
    if !subs.is_empty() {
        let n = subs.len() as f64;
        sum.per_subscriber_packets_mean =
            subs.iter().map(|r| r.packets_received).sum::<u64>() as f64 / n;
        sum.per_subscriber_packets_min = subs.iter().map(|r| r.packets_received).min().unwrap_or(0);
        sum.per_subscriber_packets_max = subs.iter().map(|r| r.packets_received).max().unwrap_or(0);
        sum.per_subscriber_bytes_mean =
            subs.iter().map(|r| r.bytes_received).sum::<u64>() as f64 / n;
        sum.per_subscriber_pps = sum.forwarded_pps / n;
        let loss = |streams: fn(&Report) -> &Streams| {
            let (e, got) = subs.iter().fold((0, 0), |(e, g), r| {
                let (e2, g2) = streams(r).expected_received();
                (e + e2, g + g2)
            });
            (e > 0).then(|| 100.0 * (e - got) as f64 / e as f64)
        };
        sum.loss_percent = loss(|r| &r.window_streams);
        sum.loss_percent_run = loss(|r| &r.streams);
        let sorted = |samples: fn(&Report) -> &Samples| {
            let mut all: Vec<u32> = subs
                .iter()
                .flat_map(|r| samples(r).values.iter().copied())
                .collect();
            all.sort_unstable();
            all
        };
        let lat = sorted(|r| &r.latency);
        sum.latency_ms_p50 = percentile(&lat, 50.0).map(ms);
        sum.latency_ms_p99 = percentile(&lat, 99.0).map(ms);
        sum.latency_ms_max = lat.last().copied().map(ms);
        let frames = sorted(|r| &r.frame_latency);
        sum.frame_latency_ms_p50 = percentile(&frames, 50.0).map(ms);
        sum.frame_latency_ms_p99 = percentile(&frames, 99.0).map(ms);
        let audio = sorted(|r| &r.audio_latency);
        sum.audio_latency_ms_p50 = percentile(&audio, 50.0).map(ms);
        sum.audio_latency_ms_p99 = percentile(&audio, 99.0).map(ms);
    }
    let mut late: Vec<u32> = reports
        .iter()
        .flat_map(|r| r.frame_late.values.iter().copied())
        .collect();
    late.sort_unstable();
    sum.publisher_frame_late_ms_p50 = percentile(&late, 50.0).map(ms);
    sum.publisher_frame_late_ms_p99 = percentile(&late, 99.0).map(ms);
    if let (Some(a), Some(b)) = (&s0.server, &s1.server) {
        let cpu = b.cpu_seconds_since(a);
        sum.server_cpu_seconds = Some(cpu);
        sum.server_cpu_percent = Some(100.0 * cpu / secs);
        if cpu > 0.0 {
            sum.forwarded_packets_per_cpu_second = Some(sum.window_packets_received as f64 / cpu);
        }
    }
    if let (Some(before), Some(joined)) = (server_before, server_joined) {
        sum.server_rss_before_kib = Some(before.rss_kib);
        sum.server_rss_joined_kib = Some(joined.rss_kib);
        let ok = sum.joins_ok.max(1) as f64;
        sum.server_rss_per_participant_kib =
            Some((joined.rss_kib as f64 - before.rss_kib as f64) / ok);
        sum.server_cpu_ms_per_join = Some(joined.cpu_seconds_since(&before) * 1e3 / ok);
    }
    sum.server_peak_rss_kib = server_end.map(|s| s.hwm_kib);
    Ok(sum)
}

struct Snap {
    at: Instant,
    sent: u64,
    sent_bytes: u64,
    rx: u64,
    rx_bytes: u64,
    self_cpu: f64,
    server: Option<ProcSample>,
}

/// Whether the `i`th of `of` subscribers is one of the `chosen` spread
/// evenly among them, the last one included (all of them if `chosen >= of`).
fn spread_evenly(i: usize, chosen: usize, of: usize) -> bool {
    (i + 1) * chosen % of < chosen
}

fn snapshot(shared: &Shared, pid: Option<u32>) -> Snap {
    Snap {
        at: Instant::now(),
        sent: Shared::get(&shared.packets_sent),
        sent_bytes: Shared::get(&shared.bytes_sent),
        rx: Shared::get(&shared.packets_received),
        rx_bytes: Shared::get(&shared.bytes_received),
        self_cpu: stats::self_cpu_seconds(),
        server: pid.and_then(proc_sample),
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn print_table(s: &Summary) {
    let rows: Vec<(&str, String)> = vec![
        ("label", s.label.clone()),
        ("mode / url", format!("{:?} {}", s.mode.unwrap_or(Mode::Livekit), s.url)),
        ("machine", format!("{} cores, {}", s.nproc, s.cpu_model)),
        (
            "load",
            format!(
                "{} rooms × ({} video pub, {} audio pub, {} sub, {} decoding){}; video {} bps, audio {} bps",
                s.rooms,
                s.video_publishers_per_room,
                s.audio_publishers_per_room,
                s.subscribers_per_room,
                s.decoding_subscribers_per_room,
                if s.simulcast { ", simulcast" } else { "" },
                s.video_bitrate,
                s.audio_bitrate
            ),
        ),
        (
            "joins",
            format!(
                "{} ok, {} failed {:?}, {} unfinished",
                s.joins_ok, s.joins_failed, s.failures, s.unfinished
            ),
        ),
        (
            "join time p50 / p99 / max",
            format!(
                "{} / {} / {} ms",
                opt(s.join_ms_p50, 1),
                opt(s.join_ms_p99, 1),
                opt(s.join_ms_max, 1)
            ),
        ),
        (
            "connected (ICE+DTLS)",
            format!(
                "{}; p50 {} / p99 {} ms",
                s.connected,
                opt(s.connect_ms_p50, 1),
                opt(s.connect_ms_p99, 1)
            ),
        ),
        ("window", format!("{:.1} s", s.window_s)),
        (
            "sent (window)",
            format!("{} packets, {} bytes", s.window_packets_sent, s.window_bytes_sent),
        ),
        (
            "received (window)",
            format!(
                "{} packets, {} bytes = {:.0} forwarded pkt/s",
                s.window_packets_received, s.window_bytes_received, s.forwarded_pps
            ),
        ),
        (
            "per subscriber (run)",
            format!(
                "{} subs: packets mean {:.0} (min {}, max {}), bytes mean {:.0}; {:.1} pkt/s in window",
                s.subscribers_measured,
                s.per_subscriber_packets_mean,
                s.per_subscriber_packets_min,
                s.per_subscriber_packets_max,
                s.per_subscriber_bytes_mean,
                s.per_subscriber_pps
            ),
        ),
        (
            "loss in window / whole run",
            format!(
                "{} / {} %",
                opt(s.loss_percent, 3),
                opt(s.loss_percent_run, 3)
            ),
        ),
        (
            "latency p50 / p99 / max",
            format!(
                "{} / {} / {} ms",
                opt(s.latency_ms_p50, 2),
                opt(s.latency_ms_p99, 2),
                opt(s.latency_ms_max, 2)
            ),
        ),
        (
            "video frame latency p50 / p99",
            format!(
                "{} / {} ms",
                opt(s.frame_latency_ms_p50, 2),
                opt(s.frame_latency_ms_p99, 2)
            ),
        ),
        (
            "audio latency p50 / p99",
            format!(
                "{} / {} ms",
                opt(s.audio_latency_ms_p50, 2),
                opt(s.audio_latency_ms_p99, 2)
            ),
        ),
        (
            "publishers' frames late p50 / p99",
            format!(
                "{} / {} ms",
                opt(s.publisher_frame_late_ms_p50, 2),
                opt(s.publisher_frame_late_ms_p99, 2)
            ),
        ),
        (
            "server CPU (window)",
            format!(
                "{} s = {} % of one core",
                opt(s.server_cpu_seconds, 2),
                opt(s.server_cpu_percent, 1)
            ),
        ),
        (
            "forwarded pkt per CPU-second",
            opt(s.forwarded_packets_per_cpu_second, 0),
        ),
        (
            "server RSS before / joined / peak",
            format!(
                "{} / {} / {} KiB; {} KiB per participant",
                s.server_rss_before_kib.map_or("-".into(), |v| v.to_string()),
                s.server_rss_joined_kib.map_or("-".into(), |v| v.to_string()),
                s.server_peak_rss_kib.map_or("-".into(), |v| v.to_string()),
                opt(s.server_rss_per_participant_kib, 1)
            ),
        ),
        (
            "server CPU per join (ramp)",
            format!("{} ms", opt(s.server_cpu_ms_per_join, 2)),
        ),
        (
            "load generator CPU (window)",
            format!(
                "{:.2} s; loadavg {:.2} → {:.2}; send drops {}",
                s.loadgen_cpu_seconds, s.loadavg_start, s.loadavg_end, s.send_dropped
            ),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<34} {v}");
    }
    for e in &s.failure_examples {
        println!("{:<34} {e}", "failure example");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_subscribers_are_spread_over_the_join_order() {
        let chosen = |n, of| {
            (0..of)
                .filter(|&i| spread_evenly(i, n, of))
                .collect::<Vec<_>>()
        };
        assert_eq!(chosen(5, 1000), [199, 399, 599, 799, 999]);
        assert_eq!(chosen(2, 10), [4, 9]);
        assert_eq!(chosen(1, 10), [9]);
        assert_eq!(chosen(3, 3), [0, 1, 2]);
        assert_eq!(chosen(7, 3), [0, 1, 2]);
        assert_eq!(chosen(0, 10), Vec::<usize>::new());
        assert_eq!(chosen(3, 1000).len(), 3);
    }

    #[test]
    fn cli_parses() {
        let a = Args::try_parse_from([
            "relais-loadtest",
            "--rooms",
            "2",
            "--subscribers",
            "5",
            "--simulcast",
            "--server-pid",
            "1",
            "--json",
        ])
        .unwrap();
        assert_eq!(a.rooms, 2);
        assert!(a.simulcast && a.json);
        assert_eq!(a.mode, Mode::Livekit);
    }

    /// A server that accepts TCP and never answers: the run ends on time with
    /// timeouts, no hang and no panic.
    #[test]
    fn stalled_server_is_reported_not_hung() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let args = Args::try_parse_from([
            "relais-loadtest",
            "--url",
            &format!("ws://127.0.0.1:{port}"),
            "--subscribers",
            "3",
            "--duration",
            "0.5",
            "--ramp",
            "0.1",
            "--warmup",
            "0.1",
            "--join-timeout",
            "1",
        ])
        .unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let started = Instant::now();
        let s = rt.block_on(run(args)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(8));
        assert_eq!(s.joins_ok, 0);
        assert_eq!(s.joins_failed, 4);
        assert_eq!(s.failures.get("timeout"), Some(&4));
        drop(listener);
    }

    /// Nothing listening: refused connections are failures, not panics.
    #[test]
    fn refused_connection_is_reported() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let args = Args::try_parse_from([
            "relais-loadtest",
            "--mode",
            "janus",
            "--url",
            &format!("http://127.0.0.1:{port}/janus"),
            "--subscribers",
            "2",
            "--duration",
            "0.3",
            "--ramp",
            "0",
            "--warmup",
            "0",
            "--join-timeout",
            "1",
        ])
        .unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let s = rt.block_on(run(args)).unwrap();
        assert_eq!(s.joins_ok, 0);
        assert_eq!(s.joins_failed, 3);
    }
}
