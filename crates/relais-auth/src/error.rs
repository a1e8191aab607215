//! Error types.

use thiserror::Error;

/// Errors raised while building a [`crate::KeyProvider`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// An API key has an empty secret.
    #[error("API key {0:?} has an empty secret")]
    EmptySecret(String),
    /// An API key is the empty string.
    #[error("an API key is empty")]
    EmptyKey,
    /// The `LIVEKIT_KEYS`-style text could not be parsed.
    #[error(
        "invalid keys syntax: {0} (expected `key: secret` pairs, one per line or comma separated)"
    )]
    Syntax(String),
    /// The same API key was given twice with different secrets.
    #[error("API key {0:?} is given twice with different secrets")]
    Duplicate(String),
    /// The key file could not be read.
    #[error("cannot read key file {path}: {message}")]
    Io {
        /// Path of the key file.
        path: String,
        /// The I/O error message.
        message: String,
    },
    /// The key file is not a YAML map of strings.
    #[error("invalid key file {path}: {message}")]
    KeyFile {
        /// Path of the key file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// No key is configured at all.
    #[error("no API keys configured")]
    NoKeys,
}

/// Errors raised while verifying or minting an access token.
///
/// Every variant's message is meant to be shown to the client (e.g. in a 401
/// body) and never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The token is not a well-formed JWT (wrong number of parts, bad base64,
    /// header or payload not JSON, a claim of the wrong type, ...).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names an algorithm other than HS256 (including `none`).
    #[error("unsupported token algorithm {0:?}: only HS256 is accepted")]
    WrongAlgorithm(String),
    /// The token has no `iss` claim, so no key can be chosen.
    #[error("invalid API key: token has no iss claim")]
    MissingIssuer,
    /// The `iss` claim names an API key that is not configured.
    #[error("invalid API key: {0:?}")]
    UnknownKey(String),
    /// The HMAC signature does not match the secret of the `iss` key.
    #[error("invalid token signature")]
    BadSignature,
    /// The token has no `exp` claim (LiveKit requires one).
    #[error("token has no exp claim: an expiry is required")]
    MissingExpiry,
    /// `exp` is in the past (beyond the leeway).
    #[error("token is expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// The `video` grant has a member that is not a LiveKit video grant.
    #[error("unknown grant field {0:?} in video grant")]
    UnknownGrantField(String),
    /// A claim has a value of the wrong type or shape.
    #[error("invalid claim {claim}: {message}")]
    InvalidClaim {
        /// The claim (or claim path) at fault.
        claim: String,
        /// What was wrong.
        message: String,
    },
    /// Minting failed (e.g. empty secret).
    #[error("cannot sign token: {0}")]
    Signing(String),
}
