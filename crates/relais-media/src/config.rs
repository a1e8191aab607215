//! Node-wide settings every WebRTC session of a shard is built from.

use relais_proto::limits::FieldLimits;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use str0m::config::CryptoProvider;
use str0m::config::DtlsCert;
use str0m::ice::IceCreds;
use str0m::net::{Protocol, TcpType};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Rtc};

use crate::MediaError;

/// See [`MediaConfig::server_version`].
pub const LIVEKIT_COMPATIBLE_VERSION: &str = "1.9.0";

/// How often str0m reports per-stream statistics (NACKs, loss, jitter, RTT).
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// str0m's interval between sender reports of a kind Relais sends itself on
/// a session: a day, i.e. none after the first.
const NO_STR0M_REPORTS: Duration = Duration::from_secs(86_400);

/// Relais's own version, reported in `ServerInfo.debug_info`.
pub const RELAIS_VERSION: &str = concat!("relais ", env!("CARGO_PKG_VERSION"));

/// What a shard needs to build sessions and answer joins.
#[derive(Clone)]
pub struct MediaConfig {
    /// ICE host candidates, in every SDP and trickled: the node's UDP mux port
    /// and, with ICE over TCP, its passive TCP port.
    pub candidates: Vec<Candidate>,
    /// One DTLS certificate per node: generating one per session costs milliseconds.
    pub dtls_cert: DtlsCert,
    pub crypto: Arc<CryptoProvider>,
    /// The LiveKit server version whose behaviour Relais follows, reported as
    /// `ServerInfo.version`: clients gate features on it (RPC needs ≥ 1.8.0).
    pub server_version: String,
    pub node_id: String,
    pub region: String,
    pub room_defaults: RoomDefaults,
    /// Sizes a participant's own name, metadata and attribute updates may have.
    pub field_limits: FieldLimits,
    /// Most video and audio tracks one participant receives at once.
    pub subscription_limits: SubscriptionLimits,
    /// How long a participant may stay silent on signaling before it is removed.
    pub ping_timeout: Duration,
    pub ping_interval: Duration,
    /// A room whose timeout round finds at least this many sessions due hands
    /// them to the shard's session driver in chunks ([`crate::fan_out`]);
    /// fewer are driven in place, where handing out would cost more than it saves.
    pub fan_out_min_sessions: usize,
    /// A room driving its due sessions on the shard's own thread stops once
    /// they have written this many datagrams in one call, and the rest wait
    /// for its next turn ([`crate::Room::handle_timeout`]): a large room's
    /// frame — a keyframe to 400 subscribers is thousands of copies — then
    /// holds the shard a turn at a time, and the datagrams and rooms that
    /// queued meanwhile go between its turns. Zero drives them all at once.
    /// Default 256 (a few hundred microseconds of copies).
    pub drive_turn_datagrams: usize,
    /// Send forwarded audio without str0m (`crate::egress`): Relais protects
    /// and sends the copies and their sender reports itself.
    pub direct_audio: bool,
    /// The same for forwarded video: Relais also keeps each stream's recent
    /// packets and answers the subscriber's NACKs with RTX itself.
    pub direct_video: bool,
    /// Read publishers' RTP without str0m once str0m has shown the stream
    /// (`crate::ingress`): Relais opens the packets, and sends the NACKs and
    /// receiver reports on them itself.
    pub direct_ingress: bool,
    /// The caller's clock (`Instant`, as handed to the core) at one wall-clock
    /// time: the NTP time of the sender reports Relais writes.
    pub clock_epoch: (Instant, SystemTime),
    /// Publisher sessions' str0m deadlines are rounded up to a grid this fine
    /// (from `clock_epoch`), so that their periodic feedback falls due together
    /// across the shard; zero turns it off. Default 5 ms: a NACK or a feedback
    /// report leaves at most that much later.
    pub publisher_timer_grid: Duration,
    /// How late a room's periodic work may run: str0m's own timers, what
    /// Relais sends publishers on what they send (NACKs, receiver reports),
    /// the layer review. A shard sleeps until the earliest such deadline plus
    /// this ([`crate::Shard::wake_by`]), so that the work mostly rides on a
    /// wake-up some packet causes meanwhile instead of one of its own; copies
    /// leaving (now, or after a frame's wait) are never put off. Default
    /// 10 ms; zero wakes on every deadline.
    pub timer_slack: Duration,
}

/// LiveKit's `limit.subscription_limit_video` / `_audio`: most tracks of each
/// kind one participant receives at once (0 = no limit). Tracks beyond wait,
/// in the order asked for, and are subscribed as others end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionLimits {
    pub video: u32,
    pub audio: u32,
}

/// Room settings used when a room is created by a join.
#[derive(Debug, Clone, Copy)]
pub struct RoomDefaults {
    pub empty_timeout: Duration,
    pub departure_timeout: Duration,
    /// 0 means unlimited.
    pub max_participants: u32,
}

impl Default for RoomDefaults {
    fn default() -> Self {
        RoomDefaults {
            empty_timeout: Duration::from_secs(300),
            departure_timeout: Duration::from_secs(20),
            max_participants: 0,
        }
    }
}

impl MediaConfig {
    /// Build a config with a freshly generated node certificate.
    pub fn new(candidates: Vec<Candidate>, node_id: String) -> Result<Self, MediaError> {
        let crypto = Arc::new(crate::dtls::crypto_provider());
        let dtls_cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or(MediaError::Certificate)?;
        Ok(MediaConfig {
            candidates,
            dtls_cert,
            crypto,
            server_version: LIVEKIT_COMPATIBLE_VERSION.to_string(),
            node_id,
            region: String::new(),
            room_defaults: RoomDefaults::default(),
            field_limits: FieldLimits::default(),
            subscription_limits: SubscriptionLimits::default(),
            ping_timeout: Duration::from_secs(15),
            ping_interval: Duration::from_secs(5),
            fan_out_min_sessions: 128,
            drive_turn_datagrams: 256,
            direct_audio: true,
            direct_video: true,
            direct_ingress: true,
            clock_epoch: (Instant::now(), SystemTime::now()),
            publisher_timer_grid: Duration::from_millis(5),
            timer_slack: Duration::from_millis(10),
        })
    }

    /// A new ICE-lite, RTP-mode peer connection answering on our candidates.
    ///
    /// A participant's subscriber connection (`publisher == false`) leaves out
    /// the transport-wide sequence number extension: its feedback (TWCC, 10–20
    /// RTCP packets a second from every receiving client) only serves a
    /// sender's bandwidth estimate, which Relais does not run for subscribers,
    /// and registering each forwarded copy for it is work per copy. A
    /// publisher connection leaves it out of str0m's map too, but not out of
    /// the negotiation: the client's estimate of its uplink needs the
    /// feedback, which Relais sends itself (`crate::twcc`).
    pub(crate) fn build_rtc(&self, creds: IceCreds, now: Instant, publisher: bool) -> Rtc {
        // The standard map without the transport-wide sequence number (the
        // map has no removal).
        let mut exts = ExtensionMap::empty();
        for (id, ext) in ExtensionMap::standard().iter() {
            if *ext != Extension::TransportSequenceNumber {
                exts.set(id, ext.clone());
            }
        }
        let mut builder = Rtc::builder().set_extension_map(exts);
        if !publisher && self.direct_audio {
            // Relais reports on the audio it sends itself (`crate::egress`);
            // str0m's reports would say nothing was sent. Its first report
            // still goes out at the start (str0m has no switch for it).
            builder = builder.set_rtcp_report_interval_audio(NO_STR0M_REPORTS);
        }
        if publisher && self.direct_ingress {
            // Relais reports on the streams it reads itself, which str0m
            // stops seeing after their first packets; the publisher's
            // answers to those reports' reference times (extended reports)
            // reach Relais as raw packets (a publisher session's RTCP is a
            // few packets a second; its RTP mostly bypasses str0m).
            builder = builder
                .set_rtcp_report_interval_audio(NO_STR0M_REPORTS)
                .set_rtcp_report_interval_video(NO_STR0M_REPORTS)
                .enable_raw_packets(true);
        }
        if !publisher && self.direct_video {
            // As for audio; and the subscriber's NACKs must reach Relais,
            // which alone has the packets: str0m hands over the RTCP it
            // decrypts as raw packets (a subscriber session carries little).
            builder = builder
                .set_rtcp_report_interval_video(NO_STR0M_REPORTS)
                .enable_raw_packets(true);
        }
        let mut rtc = builder
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_crypto_provider(self.crypto.clone())
            .set_dtls_cert(self.dtls_cert.clone())
            .set_local_ice_credentials(creds)
            // Coarse: str0m's per-stream stats feed NACK, loss, jitter and RTT metrics.
            .set_stats_interval(Some(STATS_INTERVAL))
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .enable_vp9(true)
            .enable_av1(true)
            .build(now);
        for candidate in &self.candidates {
            rtc.add_local_candidate(candidate.clone());
        }
        rtc
    }
}

/// A UDP host candidate on `addr` (the mux port).
pub fn udp_host_candidate(addr: SocketAddr) -> Result<Candidate, MediaError> {
    Candidate::host(addr, Protocol::Udp).map_err(|e| MediaError::Candidate(e.to_string()))
}

/// A passive TCP host candidate on `addr` (RFC 6544): clients connect to it,
/// the server never connects out.
pub fn tcp_passive_candidate(addr: SocketAddr) -> Result<Candidate, MediaError> {
    Candidate::builder()
        .tcp()
        .host(addr)
        .tcptype(TcpType::Passive)
        .build()
        .map_err(|e| MediaError::Candidate(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_as_clients_read_them() {
        let addr: SocketAddr = "192.0.2.7:7881".parse().unwrap();
        let tcp = tcp_passive_candidate(addr).unwrap().to_sdp_string();
        assert!(tcp.contains(" tcp "), "{tcp}");
        assert!(
            tcp.contains(" 192.0.2.7 7881 typ host tcptype passive"),
            "{tcp}"
        );
        let udp = udp_host_candidate(addr).unwrap().to_sdp_string();
        assert!(udp.contains(" udp ") && !udp.contains("tcptype"), "{udp}");
    }
}
