//! Just enough codec knowledge for a forwarder: where a video keyframe starts,
//! and the VP8 payload-descriptor fields that must stay continuous when a
//! subscriber is switched from one simulcast layer to another.

/// The video and audio codecs the media core forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecKind {
    Opus,
    Vp8,
    Vp9,
    H264,
    Av1,
    Other,
}

impl CodecKind {
    /// Map a str0m codec to ours.
    pub fn from_str0m(codec: str0m::format::Codec) -> Self {
        use str0m::format::Codec;
        match codec {
            Codec::Opus => CodecKind::Opus,
            Codec::Vp8 => CodecKind::Vp8,
            Codec::Vp9 => CodecKind::Vp9,
            Codec::H264 => CodecKind::H264,
            Codec::Av1 => CodecKind::Av1,
            _ => CodecKind::Other,
        }
    }

    /// The MIME type LiveKit reports in `TrackInfo.mime_type`.
    pub fn mime_type(self) -> &'static str {
        match self {
            CodecKind::Opus => "audio/opus",
            CodecKind::Vp8 => "video/VP8",
            CodecKind::Vp9 => "video/VP9",
            CodecKind::H264 => "video/H264",
            CodecKind::Av1 => "video/AV1",
            CodecKind::Other => "",
        }
    }

    /// True when `payload` (an RTP payload of this codec) begins a keyframe.
    ///
    /// Audio is always decodable, so every audio packet counts as a keyframe.
    pub fn starts_keyframe(self, payload: &[u8]) -> bool {
        match self {
            CodecKind::Opus | CodecKind::Other => true,
            CodecKind::Vp8 => Vp8Header::parse(payload).is_some_and(|h| h.keyframe),
            CodecKind::H264 => h264_has_idr(payload),
            CodecKind::Vp9 => vp9_starts_keyframe(payload),
            CodecKind::Av1 => av1_starts_keyframe(payload),
        }
    }
}

/// The fields of a VP8 RTP payload descriptor (RFC 7741 §4.2) that a
/// forwarder rewrites or inspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Header {
    /// 15-bit (or 7-bit) picture id, if present.
    pub picture_id: Option<u16>,
    /// True when the picture id uses the 15-bit form.
    pub picture_id_15bit: bool,
    /// TL0PICIDX, if present.
    pub tl0_pic_idx: Option<u8>,
    /// Temporal layer index, if present.
    pub temporal_id: Option<u8>,
    /// True when this packet starts a keyframe (S=1, PID=0, P bit clear).
    pub keyframe: bool,
}

impl Vp8Header {
    /// Parse the descriptor at the start of `payload`; `None` if it is truncated.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let first = *payload.first()?;
        let extended = first & 0x80 != 0;
        let start = first & 0x10 != 0;
        let partition = first & 0x07;
        let mut at = 1;
        let mut header = Vp8Header {
            picture_id: None,
            picture_id_15bit: false,
            tl0_pic_idx: None,
            temporal_id: None,
            keyframe: false,
        };
        if extended {
            let x = *payload.get(at)?;
            at += 1;
            if x & 0x80 != 0 {
                let b = *payload.get(at)?;
                if b & 0x80 != 0 {
                    let lo = *payload.get(at + 1)?;
                    header.picture_id = Some((u16::from(b & 0x7f) << 8) | u16::from(lo));
                    header.picture_id_15bit = true;
                    at += 2;
                } else {
                    header.picture_id = Some(u16::from(b));
                    at += 1;
                }
            }
            if x & 0x40 != 0 {
                header.tl0_pic_idx = Some(*payload.get(at)?);
                at += 1;
            }
            if x & 0x30 != 0 {
                let t = *payload.get(at)?;
                if x & 0x20 != 0 {
                    header.temporal_id = Some(t >> 6);
                }
                at += 1;
            }
        }
        if start && partition == 0 {
            // First byte of the VP8 payload header: bit 0 is the inverse key frame flag.
            header.keyframe = payload.get(at).is_some_and(|b| b & 0x01 == 0);
        }
        Some(header)
    }
}

/// New values for the VP8 descriptor fields a forwarder renumbers (see
/// [`crate::forward::Rewrite`]): written into each subscriber's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Rewrite {
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
}

impl Vp8Rewrite {
    /// Write the new values into the descriptor at the start of `payload`,
    /// keeping the picture id's width (RFC 7741 §4.2: a 7-bit id keeps its
    /// low bits); a field the descriptor lacks, or a truncated one, is left.
    pub fn apply(&self, payload: &mut [u8]) {
        let Some(&first) = payload.first() else {
            return;
        };
        if first & 0x80 == 0 || payload.len() < 3 {
            return;
        }
        let x = payload[1];
        let mut at = 2;
        if x & 0x80 != 0 {
            let wide = payload[2] & 0x80 != 0;
            if let Some(id) = self.picture_id {
                if wide && payload.len() > 3 {
                    payload[2] = 0x80 | ((id >> 8) as u8 & 0x7f);
                    payload[3] = id as u8;
                } else if !wide {
                    payload[2] = id as u8 & 0x7f;
                }
            }
            at += if wide { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            if let (Some(tl0), Some(byte)) = (self.tl0_pic_idx, payload.get_mut(at)) {
                *byte = tl0;
            }
        }
    }
}

/// True when an H.264 RTP payload (RFC 6184) carries an IDR slice or the SPS
/// that precedes one.
fn h264_has_idr(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        5 | 7 => true,
        // STAP-A: walk the aggregated NAL units.
        24 => {
            let mut at = 1;
            while at + 2 < payload.len() {
                let size = usize::from(u16::from_be_bytes([payload[at], payload[at + 1]]));
                let Some(&nal) = payload.get(at + 2) else {
                    return false;
                };
                if matches!(nal & 0x1f, 5 | 7) {
                    return true;
                }
                at += 2 + size;
            }
            false
        }
        // FU-A: the start fragment names the NAL type.
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && matches!(fu & 0x1f, 5 | 7)),
        _ => false,
    }
}

/// The layer fields of a VP9 RTP payload descriptor (RFC 9628 §4.2), present
/// when the stream is layered (L=1), as browsers send SVC (`L3T3_KEY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp9Layer {
    /// Spatial layer (SID).
    pub spatial: u8,
    /// Temporal layer (TID).
    pub temporal: u8,
    /// B: the first packet of this layer's frame.
    pub begins_frame: bool,
    /// E: the last packet of this layer's frame.
    pub ends_frame: bool,
}

impl Vp9Layer {
    /// The layer of a VP9 payload, or `None` if it is not layered or truncated.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let first = *payload.first()?;
        if first & 0x20 == 0 {
            return None;
        }
        let mut at = 1;
        if first & 0x80 != 0 {
            // Picture id: 7 bits, or 15 when its first bit (M) is set.
            at += if *payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        let layer = *payload.get(at)?;
        Some(Vp9Layer {
            spatial: (layer >> 1) & 0x07,
            temporal: layer >> 5,
            begins_frame: first & 0x08 != 0,
            ends_frame: first & 0x04 != 0,
        })
    }
}

/// VP9 payload descriptor (draft-ietf-payload-vp9): B=1 and P=0 on a
/// non-layered or base-layer packet.
fn vp9_starts_keyframe(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0)
}

/// AV1 aggregation header: N=1 marks the first packet of a coded video sequence.
fn av1_starts_keyframe(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_with_15bit_picture_id() {
        // X=1 S=1 PID=0 | I=1 L=1 T=1 | M=1 picture id 0x1234 | tl0 7 | tid 1 | payload P=0
        let p = [0x90, 0xe0, 0x80 | 0x12, 0x34, 7, 0x40, 0x10];
        let h = Vp8Header::parse(&p).unwrap();
        assert_eq!(h.picture_id, Some(0x1234));
        assert!(h.picture_id_15bit);
        assert_eq!(h.tl0_pic_idx, Some(7));
        assert_eq!(h.temporal_id, Some(1));
        assert!(h.keyframe);
    }

    #[test]
    fn vp8_delta_frame_and_continuation_are_not_keyframes() {
        let delta = [0x90, 0x80, 0x05, 0x01];
        assert!(!Vp8Header::parse(&delta).unwrap().keyframe);
        let continuation = [0x80, 0x80, 0x05, 0x00];
        assert!(!Vp8Header::parse(&continuation).unwrap().keyframe);
        assert!(Vp8Header::parse(&[0x90, 0x80]).is_none());
    }

    #[test]
    fn vp8_rewrite_keeps_the_descriptor_shape() {
        let rewrite = Vp8Rewrite {
            picture_id: Some(0x0abc),
            tl0_pic_idx: Some(9),
        };
        let mut wide = [0x90, 0xe0, 0x80 | 0x12, 0x34, 7, 0x40, 0x10];
        rewrite.apply(&mut wide);
        let h = Vp8Header::parse(&wide).unwrap();
        assert_eq!((h.picture_id, h.tl0_pic_idx), (Some(0x0abc), Some(9)));
        assert!(h.picture_id_15bit && h.keyframe);
        assert_eq!(h.temporal_id, Some(1));
        // 7-bit id: its low bits; no TL0PICIDX to write.
        let mut narrow = [0x90, 0x80, 0x05, 0x01];
        rewrite.apply(&mut narrow);
        assert_eq!(narrow, [0x90, 0x80, 0x3c, 0x01]);
        // No extension: untouched.
        let mut plain = [0x10, 0x00, 0x00];
        rewrite.apply(&mut plain);
        assert_eq!(plain, [0x10, 0x00, 0x00]);
    }

    #[test]
    fn vp9_layer_fields() {
        // I=1 with a 15-bit picture id, L=1, B=1, E=0: SID 2, TID 1.
        let p = [0xa8, 0x81, 0x23, (1 << 5) | (2 << 1), 0x00];
        assert_eq!(
            Vp9Layer::parse(&p),
            Some(Vp9Layer {
                spatial: 2,
                temporal: 1,
                begins_frame: true,
                ends_frame: false
            })
        );
        // 7-bit picture id, E=1, SID 0.
        assert_eq!(
            Vp9Layer::parse(&[0xa4, 0x05, 0x00]).map(|l| (l.spatial, l.ends_frame)),
            Some((0, true))
        );
        // Not layered (L=0), or truncated.
        assert_eq!(Vp9Layer::parse(&[0x88, 0x05, 0x00]), None);
        assert_eq!(Vp9Layer::parse(&[0xa8, 0x81]), None);
    }

    #[test]
    fn h264_idr_detection() {
        assert!(CodecKind::H264.starts_keyframe(&[0x65, 0x00]));
        assert!(CodecKind::H264.starts_keyframe(&[0x7c, 0x85]));
        assert!(!CodecKind::H264.starts_keyframe(&[0x7c, 0x05]));
        assert!(CodecKind::H264.starts_keyframe(&[0x78, 0x00, 0x02, 0x67, 0x42]));
        assert!(!CodecKind::H264.starts_keyframe(&[0x41, 0x00]));
    }
}
