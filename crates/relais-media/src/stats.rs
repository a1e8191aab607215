//! Plain counters the media core keeps while it works, for the I/O layer to
//! export. No metrics library here: the hot path only adds to `u64` fields of
//! the room it is in, and the shard's owner collects them with
//! [`crate::Shard::take_stats`] (about once a second) and hands the deltas to
//! whatever exports them.

use relais_proto::livekit::{TrackSource, TrackType};
use str0m::media::MediaKind;

/// At most this many stream samples wait between two collections; more are dropped.
const MAX_SAMPLES: usize = 4096;

/// Audio or video, as an index into the per-kind counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Audio = 0,
    Video = 1,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Audio, Kind::Video];

    pub(crate) fn of(kind: MediaKind) -> Kind {
        match kind {
            MediaKind::Audio => Kind::Audio,
            MediaKind::Video => Kind::Video,
        }
    }

    /// LiveKit's `TrackType` name, the value of its `kind`/`type` labels.
    pub fn track_type(self) -> &'static str {
        match self {
            Kind::Audio => TrackType::Audio.as_str_name(),
            Kind::Video => TrackType::Video.as_str_name(),
        }
    }
}

/// Which way media flows through the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From publishers to the node (RTCP feedback on it is what the node sends).
    Incoming = 0,
    /// From the node to subscribers (RTCP feedback on it is what the node receives).
    Outgoing = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Incoming, Direction::Outgoing];

    /// LiveKit's `direction` label value.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }
}

/// Why a packet was not forwarded. Only real losses of media count here;
/// a simulcast layer a subscriber does not receive is not a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A datagram from an address and ufrag no session knows.
    UnknownSession = 0,
    /// A datagram str0m could not parse or refused.
    Malformed = 1,
    /// RTP on an SSRC that belongs to no published track.
    UnknownTrack = 2,
    /// RTP of a track whose codec is not known yet.
    NoCodec = 3,
    /// A subscriber waits for a keyframe before it can decode.
    WaitingKeyframe = 4,
    /// The subscriber's m-line, stream or payload type is not negotiated yet.
    NotNegotiated = 5,
}

impl DropReason {
    pub const COUNT: usize = 6;
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::UnknownSession,
        DropReason::Malformed,
        DropReason::UnknownTrack,
        DropReason::NoCodec,
        DropReason::WaitingKeyframe,
        DropReason::NotNegotiated,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::UnknownSession => "unknown_session",
            DropReason::Malformed => "malformed",
            DropReason::UnknownTrack => "unknown_track",
            DropReason::NoCodec => "no_codec",
            DropReason::WaitingKeyframe => "waiting_keyframe",
            DropReason::NotNegotiated => "not_negotiated",
        }
    }
}

/// One stream's quality report from str0m's periodic stats
/// (`MediaIngressStats` on publisher PCs, `MediaEgressStats` on subscriber PCs).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSample {
    pub direction: Direction,
    pub kind: Kind,
    /// The track's `TrackSource`.
    pub source: TrackSource,
    /// Interarrival jitter in microseconds, when reported.
    pub jitter_us: Option<f64>,
    /// Round-trip time in milliseconds, when known.
    pub rtt_ms: Option<f64>,
    /// Packets lost since the previous sample of this stream (estimated from
    /// the loss fraction for incoming streams, reported by the receiver for
    /// outgoing ones).
    pub lost: u64,
}

impl StreamSample {
    /// LiveKit's `source` label value, e.g. `CAMERA`.
    pub fn source_label(&self) -> &'static str {
        self.source.as_str_name()
    }
}

/// Counters since the last collection: deltas the caller adds to its own totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaStats {
    /// RTP packets received from publishers, by [`Kind`].
    pub packets_in: [u64; 2],
    /// RTP bytes (header and payload) received from publishers, by [`Kind`].
    pub bytes_in: [u64; 2],
    /// RTP packets written to subscribers, by [`Kind`].
    pub packets_out: [u64; 2],
    /// RTP bytes (header and payload) written to subscribers, by [`Kind`].
    pub bytes_out: [u64; 2],
    /// Of `packets_out`, by kind, those Relais protected and sent itself
    /// (direct egress, `MediaConfig::direct_audio` / `direct_video`) rather
    /// than through str0m.
    pub direct_out: [u64; 2],
    /// Of `packets_in`, by kind, those Relais opened itself (direct
    /// ingress, `MediaConfig::direct_ingress`) rather than str0m.
    pub direct_in: [u64; 2],
    /// Packets Relais sent again itself, answering a subscriber's NACK for
    /// a stream it sends directly (`MediaConfig::direct_video`).
    pub direct_resent: u64,
    /// Compound RTCP packets from subscribers that Relais read itself
    /// rather than str0m (reports and feedback on streams it sends).
    pub reports_read: u64,
    /// Packets not forwarded, by [`DropReason`].
    pub dropped: [u64; DropReason::COUNT],
    /// NACKs by [`Direction`]: sent to publishers / received from subscribers.
    pub nacks: [u64; 2],
    /// PLIs by [`Direction`]: sent to publishers / received from subscribers.
    pub plis: [u64; 2],
    /// FIRs by [`Direction`]: sent to publishers / received from subscribers.
    pub firs: [u64; 2],
    /// Participants that became ACTIVE (their primary PC connected).
    pub rtc_connected: u64,
    /// Per-stream quality samples (bounded).
    pub samples: Vec<StreamSample>,
}

impl MediaStats {
    /// Add `other` into `self`. By value: counters taken from somewhere must be
    /// taken (reset there), or the next take counts them again.
    pub fn merge(&mut self, mut other: MediaStats) {
        fn add<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += *y;
            }
        }
        add(&mut self.packets_in, &other.packets_in);
        add(&mut self.bytes_in, &other.bytes_in);
        add(&mut self.packets_out, &other.packets_out);
        add(&mut self.bytes_out, &other.bytes_out);
        add(&mut self.dropped, &other.dropped);
        add(&mut self.nacks, &other.nacks);
        add(&mut self.plis, &other.plis);
        add(&mut self.firs, &other.firs);
        self.rtc_connected += other.rtc_connected;
        add(&mut self.direct_out, &other.direct_out);
        add(&mut self.direct_in, &other.direct_in);
        self.direct_resent += other.direct_resent;
        self.reports_read += other.reports_read;
        let room = MAX_SAMPLES.saturating_sub(self.samples.len());
        let n = other.samples.len().min(room);
        self.samples.extend(other.samples.drain(..n));
    }

    #[inline]
    pub(crate) fn drop_packet(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }

    pub(crate) fn sample(&mut self, sample: StreamSample) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(sample);
        }
    }
}

/// What a shard holds right now (gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardGauges {
    pub rooms: u64,
    pub participants: u64,
    /// Published tracks carrying media or announced on a PC, by [`Kind`].
    pub tracks_published: [u64; 2],
    /// Subscriptions (one per subscriber and track), by [`Kind`].
    pub tracks_subscribed: [u64; 2],
    /// Streams Relais sends itself (direct egress): each holds its sender
    /// report state and, for video, its last packets kept for NACKs.
    pub direct_streams: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_and_bounds_samples() {
        let mut a = MediaStats::default();
        let mut b = MediaStats {
            packets_in: [1, 2],
            bytes_out: [3, 4],
            ..Default::default()
        };
        b.drop_packet(DropReason::NoCodec);
        let sample = StreamSample {
            direction: Direction::Outgoing,
            kind: Kind::Video,
            source: TrackSource::Camera,
            jitter_us: Some(1.0),
            rtt_ms: None,
            lost: 2,
        };
        for _ in 0..MAX_SAMPLES + 10 {
            b.sample(sample.clone());
        }
        a.merge(b);
        a.merge(MediaStats {
            packets_in: [1, 0],
            ..Default::default()
        });
        assert_eq!(a.packets_in, [2, 2]);
        assert_eq!(a.bytes_out, [3, 4]);
        assert_eq!(a.dropped[DropReason::NoCodec as usize], 1);
        assert_eq!(a.samples.len(), MAX_SAMPLES);
        assert_eq!(sample.source_label(), "CAMERA");
        assert_eq!(Kind::Video.track_type(), "VIDEO");
    }
}
