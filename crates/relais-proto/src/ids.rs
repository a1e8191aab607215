//! LiveKit-style identifiers: a prefix followed by 12 random characters of
//! the shortuuid base57 alphabet, e.g. `RM_xY3k…`, `PA_…`, `TR_VC…`.

use rand::Rng;

use crate::livekit::{TrackSource, TrackType};

/// The shortuuid base57 alphabet (no `0`, `1`, `I`, `O`, `l`).
pub const ALPHABET: &[u8; 57] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Number of random characters after the prefix.
pub const RANDOM_LEN: usize = 12;

/// Room SID prefix.
pub const ROOM_PREFIX: &str = "RM_";
/// Participant SID prefix.
pub const PARTICIPANT_PREFIX: &str = "PA_";
/// Track SID prefix (followed by the type and source letters).
pub const TRACK_PREFIX: &str = "TR_";
/// Node id prefix.
pub const NODE_PREFIX: &str = "ND_";
/// Connection id prefix.
pub const CONNECTION_PREFIX: &str = "CO_";
/// Webhook event id prefix.
pub const EVENT_PREFIX: &str = "EV_";
/// Data track SID prefix.
pub const DATA_TRACK_PREFIX: &str = "DTR_";

/// Returns `prefix` followed by 12 random base57 characters.
pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(prefix.len() + RANDOM_LEN);
    s.push_str(prefix);
    for _ in 0..RANDOM_LEN {
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    s
}

/// A new room SID (`RM_…`).
pub fn room_sid() -> String {
    new_id(ROOM_PREFIX)
}

/// A new participant SID (`PA_…`).
pub fn participant_sid() -> String {
    new_id(PARTICIPANT_PREFIX)
}

/// A new track SID: `TR_` + `V`/`A` (video/audio) + `C`/`M`/`S`/`s`
/// (camera, microphone, screen share, screen share audio) + 12 characters.
///
/// As in LiveKit, a `DATA` type adds no type letter and an `UNKNOWN` source
/// adds no source letter.
pub fn track_sid(kind: TrackType, source: TrackSource) -> String {
    let mut prefix = String::from(TRACK_PREFIX);
    match kind {
        TrackType::Audio => prefix.push('A'),
        TrackType::Video => prefix.push('V'),
        TrackType::Data => {}
    }
    match source {
        TrackSource::Camera => prefix.push('C'),
        TrackSource::Microphone => prefix.push('M'),
        TrackSource::ScreenShare => prefix.push('S'),
        TrackSource::ScreenShareAudio => prefix.push('s'),
        TrackSource::Unknown => {}
    }
    new_id(&prefix)
}

/// A new data track SID (`DTR_…`).
pub fn data_track_sid() -> String {
    new_id(DATA_TRACK_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_alphabet() {
        let id = room_sid();
        assert!(id.starts_with("RM_"));
        assert_eq!(id.len(), 3 + RANDOM_LEN);
        assert!(id[3..].bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(room_sid(), room_sid());
        assert!(participant_sid().starts_with("PA_"));
        assert!(data_track_sid().starts_with("DTR_"));
    }

    #[test]
    fn track_sid_letters() {
        let v = track_sid(TrackType::Video, TrackSource::Camera);
        assert!(v.starts_with("TR_VC"));
        assert_eq!(v.len(), 5 + RANDOM_LEN);
        assert!(track_sid(TrackType::Audio, TrackSource::Microphone).starts_with("TR_AM"));
        assert!(track_sid(TrackType::Video, TrackSource::ScreenShare).starts_with("TR_VS"));
        assert!(track_sid(TrackType::Audio, TrackSource::ScreenShareAudio).starts_with("TR_As"));
        let plain = track_sid(TrackType::Data, TrackSource::Unknown);
        assert_eq!(plain.len(), 3 + RANDOM_LEN);
        assert!(plain.starts_with("TR_"));
    }
}
