//! Per-subscriber rewriting of one published track.
//!
//! A subscriber sees one continuous RTP stream per track even though the
//! publisher may send several simulcast layers, each with its own SSRC,
//! sequence numbers, timestamps and VP8 picture ids. [`TrackForwarder`]
//! decides which incoming packets reach the subscriber and rewrites their
//! numbering so that the outgoing stream has no jumps when the layer changes.
//!
//! A VP9 SVC stream (one SSRC carrying every spatial layer, as browsers send
//! `L3T3_KEY`) is thinned instead: packets above the subscriber's spatial
//! layer are dropped, the numbering closes the gaps they leave, and the last
//! packet of the highest layer kept carries the marker bit that ends a picture.

use std::collections::VecDeque;
use std::time::Instant;

use crate::codec::{Vp8Header, Vp9Layer};

/// Sequence offsets remembered for packets that arrive after later ones.
const OFFSET_HISTORY: usize = 32;

/// What to do with one incoming packet for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Not for this subscriber (another layer, or stale).
    Drop,
    /// The wanted layer has not shown a keyframe yet: ask the publisher for one.
    NeedKeyframe,
    /// Send it with these rewritten fields.
    Send(Rewrite),
}

/// Rewritten RTP fields of a forwarded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    /// Extended outgoing sequence number (ROC in the upper bits).
    pub seq: u64,
    /// Outgoing RTP timestamp.
    pub timestamp: u32,
    /// Rewritten VP8 picture id and TL0PICIDX, when the packet carries them.
    pub vp8_picture_id: Option<u16>,
    pub vp8_tl0_pic_idx: Option<u8>,
    /// The marker bit to send.
    pub marker: bool,
}

/// One incoming packet, as the forwarder needs to see it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming {
    /// Index of the simulcast layer it arrived on (0 when not simulcast).
    pub layer: usize,
    /// Extended sequence number on that layer.
    pub seq: u64,
    pub timestamp: u32,
    /// Whether this packet starts a keyframe.
    pub keyframe: bool,
    pub vp8: Option<Vp8Header>,
    /// VP9 SVC layer fields, when the stream is layered.
    pub svc: Option<Vp9Layer>,
    pub marker: bool,
    pub arrival: Instant,
    /// Clock rate of the codec, to carry timestamps across a layer switch.
    pub clock_rate: u32,
}

/// The sequence/timestamp/picture-id state of one subscriber's view of a track.
#[derive(Debug, Clone)]
pub struct TrackForwarder {
    target_layer: usize,
    /// The subscriber disabled the track (e.g. its video is not on screen).
    paused: bool,
    current_layer: Option<usize>,
    /// Incoming sequence number at which the current layer was entered;
    /// older packets of that layer would collide with the previous layer's.
    switch_seq: u64,
    seq_offset: u64,
    ts_offset: u32,
    pic_offset: u16,
    tl0_offset: u8,
    /// Incoming sequence number from which `seq_offset` applies; earlier
    /// packets use the offsets in `offset_history` (first seq, offset).
    offset_since: u64,
    offset_history: VecDeque<(u64, u64)>,
    /// Highest VP9 spatial layer wanted, and the one being forwarded
    /// (`None`: every layer, untouched).
    spatial_target: Option<u8>,
    spatial_now: Option<u8>,
    last: Option<LastSent>,
}

#[derive(Debug, Clone, Copy)]
struct LastSent {
    seq: u64,
    timestamp: u32,
    picture_id: Option<u16>,
    tl0_pic_idx: Option<u8>,
    at: Instant,
}

impl TrackForwarder {
    /// A forwarder that wants `target_layer` and has forwarded nothing yet.
    pub fn new(target_layer: usize) -> Self {
        TrackForwarder {
            target_layer,
            paused: false,
            current_layer: None,
            switch_seq: 0,
            seq_offset: 0,
            ts_offset: 0,
            pic_offset: 0,
            tl0_offset: 0,
            offset_since: 0,
            offset_history: VecDeque::new(),
            spatial_target: None,
            spatial_now: None,
            last: None,
        }
    }

    /// The highest VP9 spatial layer this subscriber should receive (`None`:
    /// all). Going down takes effect at the next picture; going up waits for a
    /// keyframe ([`TrackForwarder::wants_keyframe`]), as the upper layers of
    /// pictures in between reference frames the subscriber never got.
    pub fn set_spatial_target(&mut self, target: Option<u8>) {
        self.spatial_target = target;
    }

    pub fn spatial_layer(&self) -> Option<u8> {
        self.spatial_now
    }

    /// Whether a switch up to the spatial target waits for a keyframe.
    pub fn spatial_up_pending(&self) -> bool {
        match (self.spatial_now, self.spatial_target) {
            (Some(now), Some(target)) => target > now,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// The layer this subscriber should receive. The switch happens on the next
    /// keyframe of that layer; until then the current layer keeps flowing.
    pub fn set_target_layer(&mut self, layer: usize) {
        self.target_layer = layer;
    }

    /// Stop or resume forwarding. A resumed stream restarts on a keyframe of
    /// the target layer and its numbering continues where it stopped, so the
    /// subscriber sees a pause, not loss.
    pub fn set_paused(&mut self, paused: bool) {
        if paused {
            self.current_layer = None;
        }
        self.paused = paused;
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn target_layer(&self) -> usize {
        self.target_layer
    }

    pub fn current_layer(&self) -> Option<usize> {
        self.current_layer
    }

    /// True while the subscriber waits for a keyframe on its target layer.
    pub fn wants_keyframe(&self) -> bool {
        !self.paused && (self.current_layer != Some(self.target_layer) || self.spatial_up_pending())
    }

    /// Decide about one packet and, if it goes out, compute its new numbering.
    pub fn forward(&mut self, p: &Incoming) -> Forward {
        if self.paused {
            return Forward::Drop;
        }
        if self.current_layer == Some(p.layer) {
            if p.seq < self.switch_seq {
                return Forward::Drop;
            }
            return self.forward_in_layer(p);
        }
        if p.layer != self.target_layer {
            return Forward::Drop;
        }
        if !p.keyframe {
            return Forward::NeedKeyframe;
        }
        self.enter_layer(p);
        if p.svc.is_some() {
            // A keyframe starts every spatial layer afresh.
            self.spatial_now = self.spatial_target;
        }
        self.forward_in_layer(p)
    }

    /// A packet of the layer being forwarded: thinned to the spatial layer.
    fn forward_in_layer(&mut self, p: &Incoming) -> Forward {
        let Some(svc) = p.svc else {
            // Not layered: there is no spatial layer to wait for.
            self.spatial_now = None;
            return self.send(p, p.marker);
        };
        // Spatial changes take effect where a picture starts: its base layer's
        // first packet.
        if svc.spatial == 0 && svc.begins_frame && self.spatial_now != self.spatial_target {
            let down = match (self.spatial_target, self.spatial_now) {
                (Some(target), Some(now)) => target < now,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if down || p.keyframe {
                self.spatial_now = self.spatial_target;
            }
        }
        match self.spatial_now {
            None => self.send(p, p.marker),
            Some(max) if svc.spatial > max => {
                self.skip(p.seq);
                Forward::Drop
            }
            // The highest layer kept ends the picture (or the publisher's own
            // marker does, when it sent fewer layers).
            Some(max) => self.send(p, p.marker || (svc.spatial == max && svc.ends_frame)),
        }
    }

    fn send(&mut self, p: &Incoming, marker: bool) -> Forward {
        match self.rewrite(p, marker) {
            Some(r) => Forward::Send(r),
            None => Forward::Drop,
        }
    }

    /// `seq` is not sent: later packets move down by one so that the
    /// subscriber sees no gap (and asks for no retransmission).
    fn skip(&mut self, seq: u64) {
        if seq < self.offset_since {
            // Late, and its place was already given to later packets.
            return;
        }
        if seq > self.offset_since {
            if self.offset_history.len() == OFFSET_HISTORY {
                self.offset_history.pop_front();
            }
            self.offset_history
                .push_back((self.offset_since, self.seq_offset));
        }
        self.seq_offset = self.seq_offset.wrapping_sub(1);
        self.offset_since = seq + 1;
    }

    /// The sequence offset for incoming `seq`, `None` if it is older than the
    /// history kept.
    fn offset_for(&self, seq: u64) -> Option<u64> {
        if seq >= self.offset_since {
            return Some(self.seq_offset);
        }
        self.offset_history
            .iter()
            .rev()
            .find(|(since, _)| seq >= *since)
            .map(|(_, offset)| *offset)
    }

    fn enter_layer(&mut self, p: &Incoming) {
        self.current_layer = Some(p.layer);
        self.switch_seq = p.seq;
        self.offset_since = p.seq;
        self.offset_history.clear();
        match self.last {
            None => {
                // Start below 2^16 so the receiver's SRTP rollover counter begins at 0.
                self.seq_offset = u64::from(p.seq as u16).wrapping_sub(p.seq);
                self.ts_offset = 0;
                self.pic_offset = 0;
                self.tl0_offset = 0;
            }
            Some(last) => {
                self.seq_offset = (last.seq + 1).wrapping_sub(p.seq);
                let elapsed = p.arrival.saturating_duration_since(last.at);
                let ticks = (elapsed.as_micros() as u64 * u64::from(p.clock_rate) / 1_000_000)
                    .max(1) as u32;
                self.ts_offset = last.timestamp.wrapping_add(ticks).wrapping_sub(p.timestamp);
                if let (Some(vp8), Some(last_pic)) = (p.vp8, last.picture_id) {
                    if let Some(pic) = vp8.picture_id {
                        self.pic_offset = last_pic.wrapping_add(1).wrapping_sub(pic);
                    }
                    if let (Some(tl0), Some(last_tl0)) = (vp8.tl0_pic_idx, last.tl0_pic_idx) {
                        self.tl0_offset = last_tl0.wrapping_add(1).wrapping_sub(tl0);
                    }
                }
            }
        }
    }

    fn rewrite(&mut self, p: &Incoming, marker: bool) -> Option<Rewrite> {
        let seq = p.seq.wrapping_add(self.offset_for(p.seq)?);
        let timestamp = p.timestamp.wrapping_add(self.ts_offset);
        let (vp8_picture_id, vp8_tl0_pic_idx) = match p.vp8 {
            Some(h) => (
                h.picture_id.map(|id| {
                    let mask = if h.picture_id_15bit { 0x7fff } else { 0x7f };
                    id.wrapping_add(self.pic_offset) & mask
                }),
                h.tl0_pic_idx.map(|t| t.wrapping_add(self.tl0_offset)),
            ),
            None => (None, None),
        };
        let newer = self.last.is_none_or(|l| seq > l.seq);
        if newer {
            self.last = Some(LastSent {
                seq,
                timestamp,
                picture_id: vp8_picture_id.or(self.last.and_then(|l| l.picture_id)),
                tl0_pic_idx: vp8_tl0_pic_idx.or(self.last.and_then(|l| l.tl0_pic_idx)),
                at: p.arrival,
            });
        }
        Some(Rewrite {
            seq,
            timestamp,
            vp8_picture_id,
            vp8_tl0_pic_idx,
            marker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pkt(layer: usize, seq: u64, ts: u32, keyframe: bool, at: Instant) -> Incoming {
        Incoming {
            layer,
            seq,
            timestamp: ts,
            keyframe,
            vp8: None,
            svc: None,
            marker: false,
            arrival: at,
            clock_rate: 90_000,
        }
    }

    /// One packet of a VP9 SVC picture: spatial layer `spatial`, the first
    /// and/or last of that layer's frame; the publisher's marker on the last
    /// packet of the top layer (2).
    fn svc(
        seq: u64,
        spatial: u8,
        begins: bool,
        ends: bool,
        keyframe: bool,
        at: Instant,
    ) -> Incoming {
        Incoming {
            svc: Some(Vp9Layer {
                spatial,
                temporal: 0,
                begins_frame: begins,
                ends_frame: ends,
            }),
            marker: spatial == 2 && ends,
            ..pkt(
                0,
                seq,
                seq as u32 * 100,
                keyframe && spatial == 0 && begins,
                at,
            )
        }
    }

    /// A picture of three spatial layers, two packets each, from `seq`.
    fn picture(seq: u64, keyframe: bool, at: Instant) -> Vec<Incoming> {
        (0..3u8)
            .flat_map(|s| {
                let first = seq + u64::from(s) * 2;
                [
                    svc(first, s, true, false, keyframe, at),
                    svc(first + 1, s, false, true, keyframe, at),
                ]
            })
            .collect()
    }

    /// (outgoing seq, marker) of what `f` sends of `packets`.
    fn sent(f: &mut TrackForwarder, packets: &[Incoming]) -> Vec<(u64, bool)> {
        packets
            .iter()
            .filter_map(|p| match f.forward(p) {
                Forward::Send(r) => Some((r.seq, r.marker)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn svc_down_at_the_next_picture_without_gaps_and_marker_on_the_top_kept() {
        let t0 = Instant::now();
        let mut f = TrackForwarder::new(0);
        // Everything while no spatial target is set: untouched.
        let all = sent(&mut f, &picture(100, true, t0));
        assert_eq!(all.len(), 6);
        assert_eq!(all.iter().filter(|(_, m)| *m).count(), 1);
        let first = all[0].0;
        // Down to layer 0: from the next picture on, two packets a picture,
        // numbered without gaps, the second ending the picture.
        f.set_spatial_target(Some(0));
        assert!(!f.wants_keyframe(), "going down needs no keyframe");
        let low = sent(
            &mut f,
            &[picture(106, false, t0), picture(112, false, t0)].concat(),
        );
        assert_eq!(
            low,
            [
                (first + 6, false),
                (first + 7, true),
                (first + 8, false),
                (first + 9, true)
            ]
        );
        // Layer 1: up again waits for a keyframe, then continues the numbering.
        f.set_spatial_target(Some(1));
        assert!(f.wants_keyframe());
        assert_eq!(
            sent(&mut f, &picture(118, false, t0)).len(),
            2,
            "still layer 0"
        );
        let up = sent(&mut f, &picture(124, true, t0));
        assert_eq!(
            up,
            [
                (first + 12, false),
                (first + 13, false),
                (first + 14, false),
                (first + 15, true)
            ]
        );
        assert!(!f.wants_keyframe());
        assert_eq!(f.spatial_layer(), Some(1));
    }

    #[test]
    fn a_spatial_target_leaves_streams_without_layers_alone() {
        let t0 = Instant::now();
        let mut f = TrackForwarder::new(0);
        // Shedding caps every track at layer 0, then lifts the cap: a VP8 stream
        // never waits for a spatial keyframe.
        f.set_spatial_target(Some(0));
        let mut marked = pkt(0, 1, 0, true, t0);
        marked.marker = true;
        assert!(matches!(f.forward(&marked), Forward::Send(r) if r.marker));
        f.set_spatial_target(None);
        assert!(matches!(
            f.forward(&pkt(0, 2, 0, false, t0)),
            Forward::Send(_)
        ));
        assert!(!f.wants_keyframe());
        assert!(!f.spatial_up_pending());
    }

    #[test]
    fn svc_late_packets_keep_the_numbering_of_their_place() {
        let t0 = Instant::now();
        let mut f = TrackForwarder::new(0);
        f.set_spatial_target(Some(0));
        let p1 = picture(10, true, t0);
        let p2 = picture(16, false, t0);
        // Picture 1's second base-layer packet arrives after picture 2's first.
        let order = [
            &p1[0], &p1[2], &p1[3], &p1[4], &p1[5], &p2[0], &p1[1], &p2[1],
        ];
        let out: Vec<(u64, bool)> = order
            .iter()
            .filter_map(|p| match f.forward(p) {
                Forward::Send(r) => Some((r.seq, r.marker)),
                _ => None,
            })
            .collect();
        let base = out[0].0;
        assert_eq!(
            out,
            [
                (base, false),
                (base + 2, false),
                (base + 1, true),
                (base + 3, true)
            ]
        );
    }

    #[test]
    fn waits_for_keyframe_then_keeps_numbering_continuous_across_a_switch() {
        let t0 = Instant::now();
        let mut f = TrackForwarder::new(0);
        assert_eq!(
            f.forward(&pkt(0, 70_000, 1000, false, t0)),
            Forward::NeedKeyframe
        );
        let Forward::Send(a) = f.forward(&pkt(0, 70_001, 1000, true, t0)) else {
            panic!("keyframe must pass");
        };
        assert!(a.seq < 65_536, "first outgoing seq starts with ROC 0");
        let Forward::Send(b) = f.forward(&pkt(0, 70_002, 4000, false, t0)) else {
            panic!()
        };
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(b.timestamp, 4000);

        // Switch to layer 1: its packets are dropped until its keyframe.
        f.set_target_layer(1);
        assert_eq!(f.forward(&pkt(1, 5, 777, false, t0)), Forward::NeedKeyframe);
        let Forward::Send(c) = f.forward(&pkt(0, 70_003, 7000, false, t0)) else {
            panic!("old layer keeps flowing until the switch")
        };
        let later = t0 + Duration::from_millis(33);
        let Forward::Send(d) = f.forward(&pkt(1, 6, 50_000, true, later)) else {
            panic!()
        };
        assert_eq!(d.seq, c.seq + 1);
        assert_eq!(d.timestamp, 7000 + 2970);
        assert_eq!(
            f.forward(&pkt(0, 70_004, 10_000, true, later)),
            Forward::Drop
        );
        // A late packet of the new layer from before the switch point is dropped.
        assert_eq!(f.forward(&pkt(1, 5, 47_000, false, later)), Forward::Drop);
    }

    #[test]
    fn a_paused_stream_resumes_on_a_keyframe_without_a_gap() {
        let t0 = Instant::now();
        let mut f = TrackForwarder::new(0);
        let Forward::Send(a) = f.forward(&pkt(0, 100, 1000, true, t0)) else {
            panic!("keyframe must pass");
        };
        f.set_paused(true);
        assert!(!f.wants_keyframe(), "a paused stream asks for nothing");
        assert_eq!(f.forward(&pkt(0, 101, 4000, true, t0)), Forward::Drop);
        assert_eq!(f.forward(&pkt(0, 150, 9000, false, t0)), Forward::Drop);
        f.set_paused(false);
        assert!(f.wants_keyframe());
        assert_eq!(
            f.forward(&pkt(0, 151, 12_000, false, t0)),
            Forward::NeedKeyframe
        );
        let later = t0 + Duration::from_millis(500);
        let Forward::Send(b) = f.forward(&pkt(0, 152, 15_000, true, later)) else {
            panic!("keyframe after resume must pass");
        };
        assert_eq!(b.seq, a.seq + 1, "numbering continues: no loss seen");
        assert_eq!(
            b.timestamp,
            1000 + 45_000,
            "timestamps follow the pause's length"
        );
    }

    #[test]
    fn vp8_picture_ids_continue_across_a_switch() {
        let t0 = Instant::now();
        let vp8 = |pic: u16, tl0: u8, key: bool| Vp8Header {
            picture_id: Some(pic),
            picture_id_15bit: true,
            tl0_pic_idx: Some(tl0),
            temporal_id: Some(0),
            keyframe: key,
        };
        let mut f = TrackForwarder::new(0);
        let mut p = pkt(0, 1, 0, true, t0);
        p.vp8 = Some(vp8(100, 10, true));
        f.forward(&p);
        f.set_target_layer(1);
        let mut q = pkt(1, 500, 0, true, t0);
        q.vp8 = Some(vp8(32_000, 200, true));
        let Forward::Send(r) = f.forward(&q) else {
            panic!()
        };
        assert_eq!(r.vp8_picture_id, Some(101));
        assert_eq!(r.vp8_tl0_pic_idx, Some(11));
    }
}
