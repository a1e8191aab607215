//! Reading an RTP header where it lies (RFC 3550 §5.1, header extensions
//! RFC 8285): in a datagram before anything else handles it — the
//! transport-wide number for the congestion feedback ([`crate::twcc`]), a
//! publisher's packet that Relais opens itself ([`crate::ingress`]). SRTP
//! leaves the header in the clear, so this works on protected packets.

/// A datagram's RTP header, checked to lie whole within it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtpHeader<'a> {
    packet: &'a [u8],
    /// Fixed header, CSRCs and header extension.
    len: usize,
    /// The extension block's elements and whether they are in the one-byte
    /// form (else two-byte).
    extensions: Option<(&'a [u8], bool)>,
}

impl<'a> RtpHeader<'a> {
    /// The header of `packet` if it is RTP version 2 — not RTCP, which shares
    /// the port (RFC 5761) with packet types 200–204: 72–76 in the RTP
    /// payload type's seven bits (64–95 are kept clear of either).
    pub(crate) fn parse(packet: &'a [u8]) -> Option<Self> {
        if packet.len() < 12 || packet[0] >> 6 != 2 || (64..=95).contains(&(packet[1] & 0x7f)) {
            return None;
        }
        let mut len = 12 + 4 * usize::from(packet[0] & 0x0f);
        let mut extensions = None;
        if packet[0] & 0x10 != 0 {
            let profile = u16::from_be_bytes([*packet.get(len)?, *packet.get(len + 1)?]);
            let words = usize::from(u16::from_be_bytes([
                *packet.get(len + 2)?,
                *packet.get(len + 3)?,
            ]));
            let elements = packet.get(len + 4..len + 4 + 4 * words)?;
            len += 4 + 4 * words;
            extensions = match profile {
                0xbede => Some((elements, true)),
                p if p & 0xfff0 == 0x1000 => Some((elements, false)),
                _ => None,
            };
        }
        if len > packet.len() {
            return None;
        }
        Some(RtpHeader {
            packet,
            len,
            extensions,
        })
    }

    /// The header's length: where the payload starts.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The header's bytes.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        &self.packet[..self.len]
    }

    /// What follows the header: the payload (with SRTP's tag).
    pub(crate) fn body(&self) -> &'a [u8] {
        &self.packet[self.len..]
    }

    pub(crate) fn padding(&self) -> bool {
        self.packet[0] & 0x20 != 0
    }

    pub(crate) fn marker(&self) -> bool {
        self.packet[1] & 0x80 != 0
    }

    pub(crate) fn seq(&self) -> u16 {
        u16::from_be_bytes([self.packet[2], self.packet[3]])
    }

    pub(crate) fn timestamp(&self) -> u32 {
        u32::from_be_bytes([
            self.packet[4],
            self.packet[5],
            self.packet[6],
            self.packet[7],
        ])
    }

    pub(crate) fn ssrc(&self) -> u32 {
        u32::from_be_bytes([
            self.packet[8],
            self.packet[9],
            self.packet[10],
            self.packet[11],
        ])
    }

    /// The data of header extension element `id`, if the packet has it.
    pub(crate) fn extension(&self, id: u8) -> Option<&'a [u8]> {
        let (ext, one_byte) = self.extensions?;
        let mut i = 0;
        while i < ext.len() {
            if ext[i] == 0 {
                i += 1; // padding
                continue;
            }
            let (element, len, data_at) = if one_byte {
                // 15 is reserved: it ends the block.
                if ext[i] >> 4 == 15 {
                    return None;
                }
                (ext[i] >> 4, usize::from(ext[i] & 0x0f) + 1, i + 1)
            } else {
                (ext[i], usize::from(*ext.get(i + 1)?), i + 2)
            };
            let data = ext.get(data_at..data_at + len)?;
            if element == id {
                return Some(data);
            }
            i = data_at + len;
        }
        None
    }
}

/// The extended number (rollover counter above the 16 bits) of `seq`: the
/// one nearest `highest`, the highest extended so far (RFC 3711 §3.3.1's
/// guess); `seq` itself for the first.
pub(crate) fn extend_seq(highest: Option<u64>, seq: u16) -> u64 {
    let Some(highest) = highest else {
        return u64::from(seq);
    };
    let candidate = (highest & !0xffff) | u64::from(seq);
    if candidate + 0x8000 < highest {
        candidate + 0x1_0000
    } else if candidate > highest + 0x8000 && candidate >= 0x1_0000 {
        candidate - 0x1_0000
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_and_either_extension_form() {
        let mut one = vec![0x90, 0xe0 | 0x60, 0x12, 0x34, 0, 0, 0x0b, 0xb8, 0, 0, 0, 7];
        // One-byte form: id 1 (one byte), padding, id 3 (two bytes).
        one.extend_from_slice(&[0xbe, 0xde, 0, 2, 0x10, 0x85, 0, 0x31, 0xab, 0xcd, 0, 0]);
        one.extend_from_slice(b"payload");
        let h = RtpHeader::parse(&one).expect("rtp");
        assert_eq!(h.len(), 24);
        assert!(h.marker());
        assert_eq!(h.seq(), 0x1234);
        assert_eq!(h.timestamp(), 3000);
        assert_eq!(h.ssrc(), 7);
        assert_eq!(h.extension(1), Some(&[0x85][..]));
        assert_eq!(h.extension(3), Some(&[0xab, 0xcd][..]));
        assert_eq!(h.extension(2), None);
        assert_eq!(&one[h.len()..], b"payload");

        let mut two = vec![0x90, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        two.extend_from_slice(&[0x10, 0x00, 0, 1, 5, 2, 0xab, 0xcd]);
        let h = RtpHeader::parse(&two).expect("rtp");
        assert_eq!(h.extension(5), Some(&[0xab, 0xcd][..]));
        assert_eq!(h.len(), two.len());
    }

    #[test]
    fn rtcp_and_truncated_packets_are_not_rtp() {
        // A receiver report: packet type 201.
        assert!(RtpHeader::parse(&[0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2]).is_none());
        assert!(RtpHeader::parse(&[0x80, 0x60, 0, 1]).is_none());
        // The extension claims more words than there are.
        let short = [
            0x90, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0xbe, 0xde, 0, 4, 0x10,
        ];
        assert!(RtpHeader::parse(&short).is_none());
        // Fifteen CSRCs claimed, none there.
        assert!(RtpHeader::parse(&[0x8f, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9]).is_none());
    }

    #[test]
    fn numbers_extend_across_the_wrap_both_ways() {
        assert_eq!(extend_seq(None, 65_000), 65_000);
        assert_eq!(extend_seq(Some(65_535), 0), 65_536);
        assert_eq!(extend_seq(Some(65_536), 65_534), 65_534);
        assert_eq!(
            extend_seq(Some(3 * 65_536 + 2), 65_530),
            2 * 65_536 + 65_530
        );
        // Near zero nothing goes below it.
        assert_eq!(extend_seq(Some(10), 65_530), 65_530);
    }
}
