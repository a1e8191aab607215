//! Synthetic media: VP8-shaped video frames and Opus-sized audio packets,
//! each payload ending in a 16-byte trailer that the receiving side reads back
//! (stream tag, source sequence number, send time).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Trailer: magic (2) | stream tag (2) | source seq (4) | send time, µs since the epoch (8).
pub const TRAILER_LEN: usize = 16;
const MAGIC: u16 = 0x524c; // "RL"

/// Largest RTP payload we write (leaves room for RTP header, extensions, SRTP tag in 1200 B).
pub const MAX_PAYLOAD: usize = 1100;

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub fn write_trailer(buf: &mut Vec<u8>, tag: u16, seq: u32) {
    buf.extend_from_slice(&MAGIC.to_be_bytes());
    buf.extend_from_slice(&tag.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&unix_micros().to_be_bytes());
}

/// Set the trailer's send time to now: a paced packet leaves after it was made.
pub fn stamp_send_time(payload: &mut [u8]) {
    if let Some(time) = payload.len().checked_sub(8).map(|at| &mut payload[at..]) {
        time.copy_from_slice(&unix_micros().to_be_bytes());
    }
}

/// The trailer of a received payload: (stream tag, source seq, send time µs).
pub fn read_trailer(payload: &[u8]) -> Option<(u16, u32, u64)> {
    let n = payload.len();
    if n < TRAILER_LEN {
        return None;
    }
    let t = &payload[n - TRAILER_LEN..];
    if u16::from_be_bytes([t[0], t[1]]) != MAGIC {
        return None;
    }
    Some((
        u16::from_be_bytes([t[2], t[3]]),
        u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        u64::from_be_bytes([t[8], t[9], t[10], t[11], t[12], t[13], t[14], t[15]]),
    ))
}

/// One packet the encoder wants sent.
pub struct Packet {
    pub payload: Vec<u8>,
    pub marker: bool,
    pub timestamp: u32,
}

/// A fake encoder for one RTP stream.
pub struct Encoder {
    pub video: bool,
    pub tag: u16,
    /// Bits per second, trailer and descriptors included.
    bitrate: u64,
    /// Bytes per second a sender's pacer lets out, if paced (video).
    pub pacing_rate: Option<f64>,
    pub interval: Duration,
    frame: u64,
    /// Keyframe every this many frames (video).
    gop: u64,
    seq: u32,
    timestamp: u32,
    picture_id: u16,
    pub force_keyframe: bool,
}

impl Encoder {
    /// `pacing_factor` × the bitrate is the rate packets leave at, as a WebRTC
    /// sender's pacer spreads a frame (libwebrtc's factor is 2.5); 0 sends each
    /// frame as one burst.
    pub fn video(tag: u16, bitrate: u64, keyframe_interval: Duration, pacing_factor: f64) -> Self {
        let interval = Duration::from_micros(33_333);
        Encoder {
            video: true,
            tag,
            bitrate,
            pacing_rate: (pacing_factor > 0.0).then(|| pacing_factor * bitrate as f64 / 8.0),
            interval,
            frame: 0,
            gop: (keyframe_interval.as_micros() / interval.as_micros()).max(1) as u64,
            seq: 0,
            timestamp: rand_u32(),
            picture_id: (rand_u32() & 0x7fff) as u16,
            force_keyframe: true,
        }
    }

    pub fn audio(tag: u16, bitrate: u64) -> Self {
        Encoder {
            video: false,
            tag,
            bitrate,
            pacing_rate: None,
            interval: Duration::from_millis(20),
            frame: 0,
            gop: 1,
            seq: 0,
            timestamp: rand_u32(),
            picture_id: 0,
            force_keyframe: false,
        }
    }

    /// Packets of the next frame.
    pub fn next_frame(&mut self) -> Vec<Packet> {
        let frame = self.frame;
        self.frame += 1;
        if !self.video {
            // 20 ms of Opus: bitrate / 50 packets, at least the trailer and a TOC byte.
            let size = ((self.bitrate / 8 / 50) as usize).max(TRAILER_LEN + 4);
            let mut p = Vec::with_capacity(size);
            p.push(0xfc); // Opus TOC: CELT FB 20 ms, one frame
            p.resize(size - TRAILER_LEN, 0x5a);
            write_trailer(&mut p, self.tag, self.seq);
            self.seq = self.seq.wrapping_add(1);
            let ts = self.timestamp;
            self.timestamp = self.timestamp.wrapping_add(960);
            return vec![Packet {
                payload: p,
                marker: false,
                timestamp: ts,
            }];
        }
        let key = std::mem::take(&mut self.force_keyframe) || frame.is_multiple_of(self.gop);
        // Keyframes are 5× a delta frame; the average over a GOP is the bitrate.
        let per_gop = self.bitrate as f64 / 8.0 * self.gop as f64 / 30.0;
        let delta = per_gop / (self.gop as f64 - 1.0 + 5.0);
        let size = if key { delta * 5.0 } else { delta } as usize;
        let per_packet = MAX_PAYLOAD - TRAILER_LEN - 4;
        let count = size.div_ceil(per_packet).max(1);
        let chunk = (size / count).max(1);
        let ts = self.timestamp;
        self.timestamp = self.timestamp.wrapping_add(3000);
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let first = i == 0;
            let mut p = Vec::with_capacity(chunk + 4 + 10 + TRAILER_LEN);
            // VP8 payload descriptor (RFC 7741): X=1, S on the first packet, PID=0;
            // I=1 with a 15-bit picture id.
            p.push(if first { 0x90 } else { 0x80 });
            p.push(0x80);
            p.push(0x80 | (self.picture_id >> 8) as u8);
            p.push(self.picture_id as u8);
            if first {
                // VP8 payload header: P=0 on keyframes, show_frame=1; keyframe start code.
                p.extend_from_slice(&[if key { 0x10 } else { 0x11 }, 0x02, 0x00]);
                if key {
                    p.extend_from_slice(&[0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
                }
            }
            p.resize(p.len().max(4 + chunk), 0x55);
            write_trailer(&mut p, self.tag, self.seq);
            self.seq = self.seq.wrapping_add(1);
            out.push(Packet {
                payload: p,
                marker: i == count - 1,
                timestamp: ts,
            });
        }
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        out
    }
}

pub fn rand_u32() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(unix_micros());
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_round_trips() {
        let mut v = vec![1, 2, 3];
        write_trailer(&mut v, 7, 42);
        let (tag, seq, t) = read_trailer(&v).unwrap();
        assert_eq!((tag, seq), (7, 42));
        assert!(t > 0);
        assert!(read_trailer(&[0; 8]).is_none());
        // Restamped when it leaves: tag and sequence stay, the time moves on.
        std::thread::sleep(Duration::from_millis(2));
        stamp_send_time(&mut v);
        let (tag, seq, later) = read_trailer(&v).unwrap();
        assert_eq!((tag, seq), (7, 42));
        assert!(later >= t + 2_000, "{later} vs {t}");
    }

    #[test]
    fn only_paced_video_has_a_pacing_rate() {
        let paced = Encoder::video(1, 1_000_000, Duration::from_secs(2), 2.5);
        assert_eq!(paced.pacing_rate, Some(312_500.0));
        assert_eq!(
            Encoder::video(1, 1_000_000, Duration::from_secs(2), 0.0).pacing_rate,
            None
        );
        assert_eq!(Encoder::audio(2, 32_000).pacing_rate, None);
    }

    #[test]
    fn video_bitrate_and_keyframes() {
        let mut e = Encoder::video(1, 1_000_000, Duration::from_secs(2), 0.0);
        let mut bytes = 0;
        let mut keys = 0;
        for _ in 0..60 {
            let pkts = e.next_frame();
            assert!(pkts.last().unwrap().marker);
            if pkts[0].payload[4] & 0x01 == 0 {
                keys += 1;
            }
            bytes += pkts.iter().map(|p| p.payload.len()).sum::<usize>();
            assert!(pkts.iter().all(|p| p.payload.len() <= MAX_PAYLOAD));
        }
        assert_eq!(keys, 1);
        let bps = bytes as f64 * 8.0 / 2.0;
        assert!((800_000.0..1_200_000.0).contains(&bps), "{bps}");
    }

    #[test]
    fn audio_packet_size() {
        let mut e = Encoder::audio(2, 32_000);
        let p = e.next_frame();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].payload.len(), 80);
    }
}
