//! Minting access tokens.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;

use crate::{AuthError, Claims, VideoGrant};

/// LiveKit SDKs' default token lifetime: 6 hours.
pub const DEFAULT_TTL: Duration = Duration::from_secs(6 * 3600);

/// Builder for a signed HS256 access token, like the SDKs' `AccessToken`.
///
/// `iss` is the API key; `nbf`, `iat` and `exp` (= now + ttl) are always set;
/// `sub` is written only when an identity is set.
#[derive(Clone)]
pub struct AccessToken {
    api_key: String,
    api_secret: String,
    ttl: Duration,
    claims: Claims,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("api_key", &self.api_key)
            .field("ttl", &self.ttl)
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl AccessToken {
    /// A token signed by `api_key` with `api_secret`, TTL [`DEFAULT_TTL`].
    pub fn new(api_key: impl Into<String>, api_secret: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            api_secret: api_secret.into(),
            ttl: DEFAULT_TTL,
            claims: Claims::default(),
        }
    }

    /// Sets the participant identity (`sub`).
    pub fn with_identity(mut self, identity: impl Into<String>) -> Self {
        let id = identity.into();
        self.claims.sub = (!id.is_empty()).then_some(id);
        self
    }

    /// Sets the display name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.claims.name = Some(name.into());
        self
    }

    /// Sets the lifetime (exp = now + ttl).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the video grant.
    pub fn with_grant(mut self, grant: VideoGrant) -> Self {
        self.claims.video = Some(grant);
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: impl Into<String>) -> Self {
        self.claims.metadata = Some(metadata.into());
        self
    }

    /// Sets the attributes.
    pub fn with_attributes<I, K, V>(mut self, attributes: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.claims.attributes = Some(
            attributes
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect::<BTreeMap<_, _>>(),
        );
        self
    }

    /// Sets the participant kind (`standard`, `agent`, ...).
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.claims.kind = Some(kind.into());
        self
    }

    /// Sets the `sha256` claim (webhooks: standard base64 of the body's SHA-256).
    pub fn with_sha256(mut self, sha256: impl Into<String>) -> Self {
        self.claims.sha256 = Some(sha256.into());
        self
    }

    /// Sets `roomConfig` (proto JSON of a RoomConfiguration).
    pub fn with_room_config(mut self, config: Value) -> Self {
        self.claims.room_config = Some(config);
        self
    }

    /// Mutable access to every other claim (`exp`, `nbf`, `iat` and `iss`
    /// are overwritten by [`AccessToken::to_jwt`]).
    pub fn claims_mut(&mut self) -> &mut Claims {
        &mut self.claims
    }

    /// Signs the token.
    pub fn to_jwt(&self) -> Result<String, AuthError> {
        if self.api_key.is_empty() {
            return Err(AuthError::Signing("API key is empty".into()));
        }
        let key = EncodingKey::from_secret(self.api_secret.as_bytes())
            .map_err(|_| AuthError::Signing("API secret is empty".into()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| AuthError::Signing(e.to_string()))?
            .as_secs();
        let mut claims = self.claims.clone();
        claims.iss = Some(self.api_key.clone());
        claims.nbf = Some(now);
        claims.iat = Some(now);
        claims.exp = Some(now.saturating_add(self.ttl.as_secs()));
        encode(&Header::new(Algorithm::HS256), &claims, &key)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }
}
