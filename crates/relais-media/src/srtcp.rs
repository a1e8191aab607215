//! SRTP key derivation, RTCP that Relais protects and sends itself, and the
//! peer's compound reports cut down before str0m reads them.
//!
//! Relais sends some of a session's RTCP without str0m: the sender reports of
//! the streams its direct egress sends ([`crate::egress`]), and what a
//! publisher gets on what it sends — the transport-wide congestion feedback
//! ([`crate::twcc`]), the NACKs and receiver reports ([`crate::ingress`]).
//! All are protected with the session's own SRTCP keys, taken from its DTLS
//! keying material (RFC 5764 §4.2). AEAD AES-GCM (RFC 7714) is what str0m
//! and browsers prefer; AES-CM with HMAC-SHA1 (RFC 3711) is kept for what a
//! publisher gets, which its congestion control and loss repair need
//! whatever the profile.
//!
//! What a peer sends is str0m's to read, but for one part: the source
//! descriptions (SDES) a publisher staples to its sender reports (RFC 3550
//! §6.1; libwebrtc and str0m both do, about once a second per stream).
//! str0m parses each into fixed-size lists of tens of kilobytes, moved and
//! cloned by value — some 150,000 instructions and as many bytes written per
//! report, where the rest of the report costs a few thousand — and reads
//! nothing in them Relais uses. [`SrtcpKeys::without_descriptions`] opens
//! such a report with the publisher's keys, drops its SDES packets and seals
//! the rest again under the same index: str0m reads the same reports,
//! without the descriptions. Receiver reports are left alone: libwebrtc's
//! carry no SDES (measured with the Python SDK), and opening them all to
//! find none would cost more than it saves.

use std::sync::atomic::{AtomicU32, Ordering};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use aws_lc_rs::cipher::{
    Algorithm, EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_256,
};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use str0m::crypto::dtls::SrtpProfile;

/// RFC 3711 §4.3.1 key derivation labels.
const LABEL_RTP_KEY: u8 = 0x00;
const LABEL_RTP_SALT: u8 = 0x02;
const LABEL_RTCP_KEY: u8 = 0x03;
const LABEL_RTCP_AUTH: u8 = 0x04;
const LABEL_RTCP_SALT: u8 = 0x05;
/// Relais's SRTCP indexes start far above str0m's, which counts from zero on
/// the same keys: the receiver keeps one replay window per SSRC, and str0m's
/// one early report on a stream Relais then reports on must not make a later
/// report of Relais's look replayed.
const FIRST_SRTCP_INDEX: u32 = 1 << 30;
/// AEAD master and session salt length (RFC 7714 §12).
pub(crate) const SALT_LEN: usize = 12;
/// AES-CM master and session salt length (RFC 3711 §8.2).
const CM_SALT_LEN: usize = 14;
const CM_KEY_LEN: usize = 16;
/// HMAC-SHA1 key length, and the 80-bit tag of `AES128_CM_SHA1_80`.
const CM_AUTH_KEY_LEN: usize = 20;
const CM_TAG_LEN: usize = 10;

/// RTCP packet types (RFC 3550 §12.1).
const SENDER_REPORT: u8 = 200;
pub(crate) const SOURCE_DESCRIPTION: u8 = 202;
/// The SRTCP E-flag: the packet is encrypted (RFC 3711 §3.4).
const ENCRYPTED: u32 = 0x8000_0000;
/// AES-GCM's tag length (RFC 7714 §9).
const GCM_TAG_LEN: usize = 16;

/// One direction's SRTCP keys.
pub(crate) struct SrtcpKeys {
    cipher: RtcpCipher,
}

/// A session's keys for the RTCP Relais sends on it.
pub(crate) struct SrtcpSender {
    keys: SrtcpKeys,
    /// The next SRTCP index, shared by everything Relais sends on the session.
    index: AtomicU32,
}

enum RtcpCipher {
    Gcm {
        key: LessSafeKey,
        salt: [u8; SALT_LEN],
    },
    /// Boxed: kilobytes (HMAC state), and rare; the GCM keys sit in every
    /// subscriber session's direct egress.
    CmHmac(Box<CmHmacKeys>),
}

struct CmHmacKeys {
    key: EncryptingKey,
    salt: [u8; CM_SALT_LEN],
    auth: hmac::Key,
}

/// Where a session's master key and salt are in its keying material, for the
/// direction the DTLS `client` (or server) sends in: RFC 5764 §4.2 (client
/// key, server key, client salt, server salt).
pub(crate) fn master(
    material: &[u8],
    key_len: usize,
    salt_len: usize,
    client: bool,
) -> Option<(&[u8], &[u8])> {
    if material.len() != 2 * (key_len + salt_len) {
        return None;
    }
    let (key_at, salt_at) = if client {
        (0, 2 * key_len)
    } else {
        (key_len, 2 * key_len + salt_len)
    };
    Some((
        &material[key_at..key_at + key_len],
        &material[salt_at..salt_at + salt_len],
    ))
}

/// The AEAD algorithm, cipher block and key length of an AES-GCM profile.
pub(crate) fn gcm(
    profile: SrtpProfile,
) -> Option<(
    &'static aws_lc_rs::aead::Algorithm,
    &'static Algorithm,
    usize,
)> {
    match profile {
        SrtpProfile::AEAD_AES_128_GCM => Some((&AES_128_GCM, &AES_128, 16)),
        SrtpProfile::AEAD_AES_256_GCM => Some((&AES_256_GCM, &AES_256, 32)),
        _ => None,
    }
}

/// The AES-GCM SRTP key and salt, and the SRTCP keys, of the direction the
/// DTLS `client` (or server) sends in.
pub(crate) fn gcm_keys(
    material: &[u8],
    profile: SrtpProfile,
    client: bool,
) -> Option<(LessSafeKey, [u8; SALT_LEN], SrtcpSender)> {
    let (aead, block, key_len) = gcm(profile)?;
    let (master_key, master_salt) = master(material, key_len, SALT_LEN, client)?;
    let mut key = vec![0u8; key_len];
    let mut salt = [0u8; SALT_LEN];
    derive(block, master_key, master_salt, LABEL_RTP_KEY, &mut key)?;
    derive(block, master_key, master_salt, LABEL_RTP_SALT, &mut salt)?;
    let rtp = LessSafeKey::new(UnboundKey::new(aead, &key).ok()?);
    let rtcp = SrtcpSender::new(SrtcpKeys::gcm(aead, block, master_key, master_salt)?);
    Some((rtp, salt, rtcp))
}

impl SrtcpSender {
    /// The RTCP sending keys of the side that is the DTLS `client` (or not).
    pub(crate) fn from_keying_material(
        material: &[u8],
        profile: SrtpProfile,
        client: bool,
    ) -> Option<Self> {
        SrtcpKeys::from_keying_material(material, profile, client).map(Self::new)
    }

    fn new(keys: SrtcpKeys) -> Self {
        SrtcpSender {
            keys,
            index: FIRST_SRTCP_INDEX.into(),
        }
    }

    /// Protect one RTCP packet in place, under the session's next index.
    pub(crate) fn protect(&self, packet: &mut Vec<u8>) {
        let index = self.index.fetch_add(1, Ordering::Relaxed) & !ENCRYPTED;
        self.keys.seal(packet, index);
    }
}

impl SrtcpKeys {
    /// The SRTCP keys of the direction the DTLS `client` (or server) sends in.
    pub(crate) fn from_keying_material(
        material: &[u8],
        profile: SrtpProfile,
        client: bool,
    ) -> Option<Self> {
        if let Some((aead, block, key_len)) = gcm(profile) {
            let (master_key, master_salt) = master(material, key_len, SALT_LEN, client)?;
            return Self::gcm(aead, block, master_key, master_salt);
        }
        if profile != SrtpProfile::AES128_CM_SHA1_80 {
            return None;
        }
        let (master_key, master_salt) = master(material, CM_KEY_LEN, CM_SALT_LEN, client)?;
        let derive = |label, out: &mut [u8]| derive(&AES_128, master_key, master_salt, label, out);
        let mut key = [0u8; CM_KEY_LEN];
        let mut auth = [0u8; CM_AUTH_KEY_LEN];
        let mut salt = [0u8; CM_SALT_LEN];
        derive(LABEL_RTCP_KEY, &mut key)?;
        derive(LABEL_RTCP_AUTH, &mut auth)?;
        derive(LABEL_RTCP_SALT, &mut salt)?;
        Some(SrtcpKeys {
            cipher: RtcpCipher::CmHmac(Box::new(CmHmacKeys {
                key: EncryptingKey::ctr(UnboundCipherKey::new(&AES_128, &key).ok()?).ok()?,
                salt,
                auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
            })),
        })
    }

    /// The AES-GCM RTCP keys from a session's master key and salt.
    fn gcm(
        aead: &'static aws_lc_rs::aead::Algorithm,
        block: &'static Algorithm,
        master_key: &[u8],
        master_salt: &[u8],
    ) -> Option<Self> {
        let mut key = vec![0u8; master_key.len()];
        let mut salt = [0u8; SALT_LEN];
        derive(block, master_key, master_salt, LABEL_RTCP_KEY, &mut key)?;
        derive(block, master_key, master_salt, LABEL_RTCP_SALT, &mut salt)?;
        Some(SrtcpKeys {
            cipher: RtcpCipher::Gcm {
                key: LessSafeKey::new(UnboundKey::new(aead, &key).ok()?),
                salt,
            },
        })
    }

    /// Protect one RTCP packet in place under SRTCP `index` (31 bits): the
    /// first 8 bytes (header and sender SSRC) stay clear, the rest is
    /// encrypted, then come the E-flag with the index and the tag (RFC 7714
    /// §9 for GCM: the tag before the index; RFC 3711 §3.4 for AES-CM: the
    /// index, then the tag).
    pub(crate) fn seal(&self, packet: &mut Vec<u8>, index: u32) {
        let e_and_index = (ENCRYPTED | index).to_be_bytes();
        match &self.cipher {
            RtcpCipher::Gcm { key, salt } => {
                let tag = key
                    .seal_in_place_separate_tag(
                        gcm_nonce(packet, index, salt),
                        Aad::from(&gcm_aad(packet, e_and_index)[..]),
                        &mut packet[8..],
                    )
                    .expect("AES-GCM seals any length we send");
                packet.extend_from_slice(tag.as_ref());
                packet.extend_from_slice(&e_and_index);
            }
            RtcpCipher::CmHmac(keys) => {
                let CmHmacKeys { key, salt, auth } = &**keys;
                let context = cm_context(packet, index, salt);
                key.less_safe_encrypt(&mut packet[8..], context)
                    .expect("AES-CTR encrypts any length");
                packet.extend_from_slice(&e_and_index);
                let tag = hmac::sign(auth, packet);
                packet.extend_from_slice(&tag.as_ref()[..CM_TAG_LEN]);
            }
        }
    }

    /// Open an SRTCP packet into `plain` (replacing what it held): the RTCP
    /// packets it carries, whole. Its index, or `None` if it does not
    /// authenticate or was sent unencrypted.
    pub(crate) fn open(&self, packet: &[u8], plain: &mut Vec<u8>) -> Option<u32> {
        // After the body: GCM's tag, then the E-flag and index; AES-CM's the other way round.
        let (tag_len, index_first) = match &self.cipher {
            RtcpCipher::Gcm { .. } => (GCM_TAG_LEN, false),
            RtcpCipher::CmHmac(_) => (CM_TAG_LEN, true),
        };
        let body_end = packet
            .len()
            .checked_sub(tag_len + 4)
            .filter(|&end| end >= 8)?;
        let e_at = if index_first {
            body_end
        } else {
            body_end + tag_len
        };
        let e_and_index: [u8; 4] = packet[e_at..e_at + 4].try_into().ok()?;
        let index = u32::from_be_bytes(e_and_index);
        if index & ENCRYPTED == 0 {
            return None;
        }
        let index = index & !ENCRYPTED;
        match &self.cipher {
            RtcpCipher::Gcm { key, salt } => {
                let tag = &packet[body_end..body_end + GCM_TAG_LEN];
                plain.clear();
                plain.extend_from_slice(&packet[..body_end]);
                let (header, body) = plain.split_at_mut(8);
                key.open_separate_gather(
                    gcm_nonce(header, index, salt),
                    Aad::from(&gcm_aad(header, e_and_index)[..]),
                    &packet[8..body_end],
                    tag,
                    body,
                )
                .ok()?;
            }
            RtcpCipher::CmHmac(keys) => {
                let CmHmacKeys { key, salt, auth } = &**keys;
                let expected = hmac::sign(auth, &packet[..body_end + 4]);
                verify_slices_are_equal(&expected.as_ref()[..CM_TAG_LEN], &packet[body_end + 4..])
                    .ok()?;
                plain.clear();
                plain.extend_from_slice(&packet[..body_end]);
                // Counter mode: decrypting is encrypting again.
                let context = cm_context(plain, index, salt);
                key.less_safe_encrypt(&mut plain[8..], context).ok()?;
            }
        }
        Some(index)
    }

    /// `datagram`, a peer's SRTCP packet, as str0m should read it: a
    /// compound report that starts with a sender report and has source
    /// descriptions in it comes back without them, sealed again in `buf`
    /// under its own index; anything else — a receiver report, feedback
    /// alone, a packet that does not open or does not parse — comes back as
    /// it is.
    ///
    /// The packet sealed again reuses the original's nonce on other bytes:
    /// it never leaves the process (str0m opens it at once), so no one can
    /// set the two side by side.
    pub(crate) fn without_descriptions<'a>(
        &self,
        datagram: &'a [u8],
        buf: &'a mut Vec<u8>,
    ) -> &'a [u8] {
        // Version 2, then the first packet's type, both in the clear.
        let report = datagram.first().is_some_and(|b| b >> 6 == 2)
            && datagram.get(1) == Some(&SENDER_REPORT);
        if !report {
            return datagram;
        }
        let Some(index) = self.open(datagram, buf) else {
            return datagram;
        };
        if !drop_descriptions(buf) {
            return datagram;
        }
        self.seal(buf, index);
        buf
    }
}

/// Take the SDES packets out of the compound RTCP packet in `plain`, the
/// others moved up in order. False, and `plain` left as it is, if it has
/// none or its lengths do not add up.
fn drop_descriptions(plain: &mut Vec<u8>) -> bool {
    // The length of the packet at `at`, from its header's count of words.
    let len_at = |plain: &[u8], at: usize| {
        plain
            .get(at + 2..at + 4)
            .map(|words| (usize::from(u16::from_be_bytes([words[0], words[1]])) + 1) * 4)
    };
    let (mut at, mut descriptions) = (0, false);
    while at < plain.len() {
        let Some(len) = len_at(plain, at) else {
            return false;
        };
        descriptions |= plain[at + 1] == SOURCE_DESCRIPTION;
        at += len;
    }
    if at != plain.len() || !descriptions {
        return false;
    }
    // Each packet kept moves up over those dropped before it; the headers
    // still to read lie after what it overwrites.
    let (mut at, mut to) = (0, 0);
    while let Some(len) = len_at(plain, at) {
        if plain[at + 1] != SOURCE_DESCRIPTION {
            plain.copy_within(at..at + len, to);
            to += len;
        }
        at += len;
    }
    plain.truncate(to);
    true
}

/// RFC 7714 §9.1: 00 00 || SSRC || 00 00 || index, XOR the salt (the SSRC
/// is the sender's, in the packet's bytes 4 to 8).
fn gcm_nonce(packet: &[u8], index: u32, salt: &[u8; SALT_LEN]) -> Nonce {
    let mut iv = [0u8; SALT_LEN];
    iv[2..6].copy_from_slice(&packet[4..8]);
    iv[8..12].copy_from_slice(&index.to_be_bytes());
    nonce(iv, salt)
}

/// RFC 7714 §9.1: the clear header and sender SSRC, then the E-flag and index.
fn gcm_aad(packet: &[u8], e_and_index: [u8; 4]) -> [u8; 12] {
    let mut aad = [0u8; 12];
    aad[..8].copy_from_slice(&packet[..8]);
    aad[8..].copy_from_slice(&e_and_index);
    aad
}

/// IV = salt·2^16 ⊕ SSRC·2^64 ⊕ index·2^16 (RFC 3711 §4.1.1).
fn cm_context(packet: &[u8], index: u32, salt: &[u8; CM_SALT_LEN]) -> EncryptionContext {
    let mut iv = [0u8; 16];
    iv[..CM_SALT_LEN].copy_from_slice(salt);
    for (byte, s) in iv[4..8].iter_mut().zip(&packet[4..8]) {
        *byte ^= s;
    }
    for (byte, i) in iv[10..14].iter_mut().zip(index.to_be_bytes()) {
        *byte ^= i;
    }
    EncryptionContext::Iv128(FixedLength::from(iv))
}

pub(crate) fn nonce(mut iv: [u8; SALT_LEN], salt: &[u8; SALT_LEN]) -> Nonce {
    for (byte, s) in iv.iter_mut().zip(salt) {
        *byte ^= s;
    }
    Nonce::assume_unique_for_key(iv)
}

/// RFC 3711 §4.3.1/§4.3.3 with a key derivation rate of 0: the AES
/// counter-mode keystream under the master key, starting at the master salt
/// with the label XORed into its byte 7 (the 16-byte block's last two bytes
/// count the blocks).
pub(crate) fn derive(
    block: &'static Algorithm,
    master: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) -> Option<()> {
    let mut counter = [0u8; 16];
    counter[..master_salt.len()].copy_from_slice(master_salt);
    counter[7] ^= label;
    let key = EncryptingKey::ctr(UnboundCipherKey::new(block, master).ok()?).ok()?;
    out.fill(0);
    key.less_safe_encrypt(out, EncryptionContext::Iv128(FixedLength::from(counter)))
        .ok()?;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn key_derivation_matches_rfc_3711_test_vectors() {
        // RFC 3711 Appendix B.3 (AES-128, 112-bit master salt).
        let master = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut key = [0u8; 16];
        derive(&AES_128, &master, &salt, LABEL_RTP_KEY, &mut key).unwrap();
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut session_salt = [0u8; 14];
        derive(&AES_128, &master, &salt, LABEL_RTP_SALT, &mut session_salt).unwrap();
        assert_eq!(session_salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        derive(&AES_128, &master, &salt, 0x01, &mut auth).unwrap();
        assert_eq!(
            auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    #[test]
    fn aes_cm_rtcp_matches_libsrtps_test_vector() {
        // libSRTP's AES_CM_128_HMAC_SHA1_80 vector: the RFC 3711 B.3 master
        // key and salt, SSRC 0xcafebabe, SRTCP index 1.
        let mut material = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        material.extend([0u8; 16]); // the other side's key
        material.extend(hex("0EC675AD498AFEEBB6960B3AABE6"));
        material.extend([0u8; 14]);
        let mut sender =
            SrtcpSender::from_keying_material(&material, SrtpProfile::AES128_CM_SHA1_80, true)
                .expect("AES-CM keys");
        sender.index = AtomicU32::new(1);
        let mut packet = hex("81c8000bcafebabeabababababababababababababababab");
        sender.protect(&mut packet);
        assert_eq!(
            packet,
            hex("81c8000bcafebabe7128035be487b9bdbef89041f977a5a880000001993e08cd54d6c1230798")
        );
    }

    #[test]
    fn a_gcm_packet_has_the_rfc_7714_layout() {
        let material = [7u8; 2 * (16 + SALT_LEN)];
        let sender =
            SrtcpSender::from_keying_material(&material, SrtpProfile::AEAD_AES_128_GCM, false)
                .expect("GCM keys");
        let plain = hex("81c8000bcafebabeabababababababababababababababab");
        let mut packet = plain.clone();
        sender.protect(&mut packet);
        // Header and sender SSRC clear, body sealed, 16-byte tag, then E|index.
        assert_eq!(packet.len(), plain.len() + 16 + 4);
        assert_eq!(packet[..8], plain[..8]);
        assert_ne!(packet[8..24], plain[8..24]);
        assert_eq!(
            packet[packet.len() - 4..],
            (0x8000_0000u32 | FIRST_SRTCP_INDEX).to_be_bytes()
        );
    }

    /// A sender report with one block, a CNAME, and a PLI: a publisher's
    /// compound report with feedback stapled on.
    fn compound_report() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let sr = hex(concat!(
            "81c8000ccafebabe",
            "e9d1c3a4000000000001e24000000064000186a0",
            "111111110000000100000002000000030000000400000005"
        ));
        let sdes = hex("81ca0005cafebabe010a6162636465666768696a00000000");
        let pli = hex("81ce0002cafebabe11111111");
        (sr, sdes, pli)
    }

    const PROFILES: [(SrtpProfile, usize); 3] = [
        (SrtpProfile::AEAD_AES_128_GCM, 2 * (16 + SALT_LEN)),
        (SrtpProfile::AEAD_AES_256_GCM, 2 * (32 + SALT_LEN)),
        (
            SrtpProfile::AES128_CM_SHA1_80,
            2 * (CM_KEY_LEN + CM_SALT_LEN),
        ),
    ];

    #[test]
    fn a_compound_report_loses_its_descriptions_and_opens_under_its_index() {
        let (sr, sdes, pli) = compound_report();
        for (profile, len) in PROFILES {
            let material: Vec<u8> = (0..len as u8).collect();
            let peer = SrtcpSender::from_keying_material(&material, profile, true).unwrap();
            let keys = SrtcpKeys::from_keying_material(&material, profile, true).unwrap();
            let mut packet = [&sr[..], &sdes, &pli].concat();
            peer.protect(&mut packet);
            let mut buf = Vec::new();
            let cut = keys.without_descriptions(&packet, &mut buf).to_vec();
            assert_ne!(cut, packet, "{profile:?}");
            let mut plain = Vec::new();
            assert_eq!(
                keys.open(&cut, &mut plain),
                Some(FIRST_SRTCP_INDEX),
                "{profile:?}"
            );
            assert_eq!(plain, [&sr[..], &pli].concat(), "{profile:?}");
            // The other direction's keys do not open it.
            let other = SrtcpKeys::from_keying_material(&material, profile, false).unwrap();
            assert_eq!(other.open(&cut, &mut plain), None, "{profile:?}");
        }
    }

    #[test]
    fn what_has_no_description_or_does_not_open_is_handed_on_as_it_came() {
        let (sr, sdes, pli) = compound_report();
        // A receiver report: the sender report's first 8 bytes, typed 201.
        let mut rr = sr[..8].to_vec();
        rr[..4].copy_from_slice(&hex("80c90001"));
        let (profile, len) = PROFILES[0];
        let material = vec![9u8; len];
        let peer = SrtcpSender::from_keying_material(&material, profile, true).unwrap();
        let keys = SrtcpKeys::from_keying_material(&material, profile, true).unwrap();
        let sealed = |plain: &[u8]| {
            let mut packet = plain.to_vec();
            peer.protect(&mut packet);
            packet
        };
        let mut tampered = sealed(&[&sr[..], &sdes].concat());
        tampered[12] ^= 1;
        let mut bad_length = [&sr[..], &sdes].concat();
        bad_length[3] += 1;
        let cases = [
            ("no description", sealed(&[&sr[..], &pli].concat())),
            ("a receiver report", sealed(&[&rr[..], &sdes].concat())),
            ("feedback alone", sealed(&[&pli[..], &sdes].concat())),
            ("tampered", tampered),
            ("lengths that do not add up", sealed(&bad_length)),
            ("too short", sr[..10].to_vec()),
        ];
        for (what, packet) in cases {
            let mut buf = Vec::new();
            let out = keys.without_descriptions(&packet, &mut buf);
            assert_eq!(out.as_ptr(), packet.as_ptr(), "{what}");
        }
    }

    #[test]
    fn only_known_profiles_and_whole_material_give_rtcp_keys() {
        let gcm = [7u8; 2 * (32 + SALT_LEN)];
        assert!(
            SrtcpSender::from_keying_material(&gcm, SrtpProfile::AEAD_AES_256_GCM, true).is_some()
        );
        assert!(
            SrtcpSender::from_keying_material(&gcm[..10], SrtpProfile::AEAD_AES_256_GCM, true)
                .is_none()
        );
        assert!(SrtcpSender::from_keying_material(
            &[7u8; 60],
            SrtpProfile::AES128_CM_SHA1_80,
            true
        )
        .is_some());
        assert!(SrtcpSender::from_keying_material(
            &[7u8; 59],
            SrtpProfile::AES128_CM_SHA1_80,
            true
        )
        .is_none());
    }
}
