//! LiveKit's limits on what rooms and participants carry: name lengths,
//! metadata and attribute sizes (`limit.max_metadata_size` and friends).
//!
//! One set of rules, applied wherever such a value enters the node — the
//! access token at join, a participant's own `UpdateParticipantMetadata`, the
//! room API — so that one participant cannot make every other participant in
//! its room receive half a megabyte per update. 0 means no limit.
//!
//! ```
//! use relais_proto::limits::{FieldLimits, LimitExceeded};
//! let limits = FieldLimits { max_metadata_size: 4, ..FieldLimits::default() };
//! assert_eq!(limits.check_metadata("tiny"), Ok(()));
//! assert_eq!(limits.check_metadata("too big"), Err(LimitExceeded::Metadata));
//! ```

use std::collections::BTreeMap;

/// The limits, in bytes. [`Default`] is LiveKit's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLimits {
    /// Participant or room metadata.
    pub max_metadata_size: u32,
    /// A participant's attributes, keys and values together.
    pub max_attributes_size: u32,
    /// Room names.
    pub max_room_name_length: u32,
    /// Participant identities.
    pub max_participant_identity_length: u32,
    /// Participant display names.
    pub max_participant_name_length: u32,
}

impl Default for FieldLimits {
    fn default() -> Self {
        FieldLimits {
            max_metadata_size: 512 * 1024,
            max_attributes_size: 64 * 1024,
            max_room_name_length: 256,
            max_participant_identity_length: 256,
            max_participant_name_length: 256,
        }
    }
}

/// Which limit a value exceeds. `Display` gives LiveKit's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// A participant's display name.
    #[error("name length exceeds limits")]
    Name,
    /// Participant or room metadata.
    #[error("metadata size exceeds limits")]
    Metadata,
    /// A participant's attributes.
    #[error("attributes size exceeds limits")]
    Attributes,
    /// A room name.
    #[error("room name length exceeds limits")]
    RoomName,
    /// A participant identity.
    #[error("identity length exceeds limits")]
    Identity,
}

fn within(len: usize, limit: u32) -> bool {
    limit == 0 || len <= limit as usize
}

impl FieldLimits {
    /// Participant or room metadata.
    pub fn check_metadata(&self, metadata: &str) -> Result<(), LimitExceeded> {
        within(metadata.len(), self.max_metadata_size)
            .then_some(())
            .ok_or(LimitExceeded::Metadata)
    }

    /// A participant's attributes (the whole set it would have).
    pub fn check_attributes(
        &self,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), LimitExceeded> {
        let size: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        within(size, self.max_attributes_size)
            .then_some(())
            .ok_or(LimitExceeded::Attributes)
    }

    /// A participant's display name, metadata and attributes.
    pub fn check_participant(
        &self,
        name: &str,
        metadata: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), LimitExceeded> {
        if !within(name.len(), self.max_participant_name_length) {
            return Err(LimitExceeded::Name);
        }
        self.check_metadata(metadata)?;
        self.check_attributes(attributes)
    }

    /// A room name.
    pub fn check_room_name(&self, room: &str) -> Result<(), LimitExceeded> {
        within(room.len(), self.max_room_name_length)
            .then_some(())
            .ok_or(LimitExceeded::RoomName)
    }

    /// A participant identity.
    pub fn check_identity(&self, identity: &str) -> Result<(), LimitExceeded> {
        within(identity.len(), self.max_participant_identity_length)
            .then_some(())
            .ok_or(LimitExceeded::Identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_is_inclusive_and_zero_means_none() {
        let limits = FieldLimits {
            max_metadata_size: 3,
            max_attributes_size: 4,
            max_room_name_length: 2,
            max_participant_identity_length: 1,
            max_participant_name_length: 2,
        };
        let attrs = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            limits.check_participant("ab", "abc", &attrs("ab", "cd")),
            Ok(())
        );
        assert_eq!(
            limits.check_participant("abc", "", &BTreeMap::new()),
            Err(LimitExceeded::Name)
        );
        assert_eq!(
            limits.check_participant("", "abcd", &BTreeMap::new()),
            Err(LimitExceeded::Metadata)
        );
        assert_eq!(
            limits.check_participant("", "", &attrs("ab", "cde")),
            Err(LimitExceeded::Attributes)
        );
        assert_eq!(limits.check_room_name("abc"), Err(LimitExceeded::RoomName));
        assert_eq!(limits.check_identity("ab"), Err(LimitExceeded::Identity));
        let none = FieldLimits {
            max_metadata_size: 0,
            max_attributes_size: 0,
            max_room_name_length: 0,
            max_participant_identity_length: 0,
            max_participant_name_length: 0,
        };
        let big = "x".repeat(1 << 20);
        assert_eq!(
            none.check_participant(&big, &big, &attrs(&big, &big)),
            Ok(())
        );
        assert_eq!(
            LimitExceeded::Metadata.to_string(),
            "metadata size exceeds limits"
        );
    }
}
