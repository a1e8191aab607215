//! Access-token handling for Relais, compatible with LiveKit's JWT access tokens.
//!
//! LiveKit access tokens are HS256 JWTs whose `iss` claim names the API key
//! that signed them (see `shared/protocol.md` §4). This crate provides:
//!
//! * [`Claims`] / [`VideoGrant`] and friends: the typed token payload, with the
//!   exact camelCase JSON names LiveKit's SDKs write, and accessors for the
//!   effective permissions (`canPublish` defaults to true, and so on);
//! * [`KeyProvider`]: the API key → secret map, loadable from a map, from the
//!   `LIVEKIT_KEYS` environment syntax, or from a key file;
//! * [`TokenVerifier`]: verification with typed, distinguishable errors;
//! * [`AccessToken`]: a builder to mint tokens (for tests, the CLI and webhooks);
//! * [`generate_api_key`] / [`generate_api_secret`]: fresh credentials.
//!
//! # Unknown fields
//!
//! LiveKit's Go server silently ignores unknown JSON fields everywhere. Relais
//! follows that for the top level of the payload and for the `sip`, `agent`,
//! `inference` and `observability` objects (their unknown members are kept in
//! an `extra` map so that nothing is lost), because SDKs keep adding new claims
//! there. Inside `video`, however, an unknown key is rejected with
//! [`AuthError::UnknownGrantField`]: a misspelt permission (`canPublsh`) would
//! otherwise be silently ignored and the participant would get the default,
//! which for `canPublish`/`canSubscribe` is *allow*.

#![warn(missing_docs)]

mod claims;
mod error;
mod keys;
mod token;
mod verify;

pub use claims::{
    AgentGrant, Claims, InferenceGrant, ObservabilityGrant, RoomAgentDispatch, RoomConfiguration,
    SipGrant, VideoGrant, VIDEO_GRANT_FIELDS,
};
pub use error::{AuthError, KeyError};
pub use keys::{generate_api_key, generate_api_secret, KeyProvider};
pub use token::{AccessToken, DEFAULT_TTL};
pub use verify::{TokenVerifier, LEEWAY_SECS};

#[cfg(test)]
mod tests;
