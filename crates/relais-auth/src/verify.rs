//! Verifying access tokens.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::{AuthError, Claims, KeyProvider};

/// Clock-skew leeway applied to `exp` and `nbf`, in seconds (LiveKit: 60 s).
pub const LEEWAY_SECS: u64 = 60;

const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Verifies LiveKit access tokens against a [`KeyProvider`].
///
/// Checks, in order: JWT shape, `alg` = HS256, `iss` names a configured key,
/// signature, `exp` present, `exp`/`nbf` with [`LEEWAY_SECS`] leeway, and the
/// claims' types (unknown `video` members are rejected).
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    keys: KeyProvider,
    leeway: u64,
}

impl TokenVerifier {
    /// A verifier for the given keys, with the standard 60 s leeway.
    pub fn new(keys: KeyProvider) -> Self {
        Self {
            keys,
            leeway: LEEWAY_SECS,
        }
    }

    /// The keys this verifier accepts.
    pub fn keys(&self) -> &KeyProvider {
        &self.keys
    }

    /// Verifies `token` and returns its claims.
    ///
    /// The participant identity is [`Claims::identity`] (`sub`, else `jti`).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(
                "expected three dot-separated parts (header.payload.signature)".into(),
            ));
        };
        let header = decode_part(h, "header")?;
        match header.get("alg") {
            Some(Value::String(alg)) if alg == "HS256" => {}
            Some(Value::String(alg)) => return Err(AuthError::WrongAlgorithm(alg.clone())),
            Some(_) => return Err(AuthError::Malformed("header alg is not a string".into())),
            None => return Err(AuthError::Malformed("header has no alg".into())),
        }
        let unverified = decode_part(p, "payload")?;
        let iss = match unverified.get("iss") {
            Some(Value::String(iss)) if !iss.is_empty() => iss.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(AuthError::MissingIssuer)
            }
            Some(_) => {
                return Err(AuthError::InvalidClaim {
                    claim: "iss".into(),
                    message: "expected a string".into(),
                })
            }
        };
        let secret = self
            .keys
            .secret(&iss)
            .ok_or_else(|| AuthError::UnknownKey(iss.clone()))?;
        let key = DecodingKey::from_secret(secret.as_bytes())
            .map_err(|_| AuthError::UnknownKey(iss.clone()))?;

        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let data = decode::<Value>(token, &key, &validation).map_err(|e| {
            match (map_jwt_error(e), unverified.get("exp")) {
                // jsonwebtoken reports an unparsable exp as missing; the
                // signature is already checked at that point, so say which.
                (AuthError::MissingExpiry, Some(v)) if !v.is_null() => AuthError::InvalidClaim {
                    claim: "exp".into(),
                    message: "expected a number of seconds".into(),
                },
                (other, _) => other,
            }
        })?;
        Claims::from_payload(&data.claims)
    }
}

fn decode_part(part: &str, what: &str) -> Result<Value, AuthError> {
    let bytes = B64
        .decode(part)
        .map_err(|_| AuthError::Malformed(format!("{what} is not base64url")))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed(format!("{what} is not JSON")))?;
    if !v.is_object() {
        return Err(AuthError::Malformed(format!("{what} is not a JSON object")));
    }
    Ok(v)
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingExpiry,
        ErrorKind::MissingRequiredClaim(c) => AuthError::InvalidClaim {
            claim: c.clone(),
            message: "missing".into(),
        },
        ErrorKind::InvalidClaimFormat(c) => AuthError::InvalidClaim {
            claim: c.clone(),
            message: "expected a number of seconds".into(),
        },
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::WrongAlgorithm("unknown".into())
        }
        _ => AuthError::Malformed(e.to_string()),
    }
}
