//! The token payload: [`Claims`] and the grant objects it carries.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::AuthError;

/// Every member name LiveKit defines for the `video` grant object (protocol.md §4).
///
/// A `video` object with any other member is rejected with
/// [`AuthError::UnknownGrantField`].
pub const VIDEO_GRANT_FIELDS: &[&str] = &[
    "roomCreate",
    "roomList",
    "roomRecord",
    "roomAdmin",
    "roomJoin",
    "room",
    "canPublish",
    "canSubscribe",
    "canPublishData",
    "canPublishSources",
    "canUpdateOwnMetadata",
    "ingressAdmin",
    "hidden",
    "recorder",
    "agent",
    "canSubscribeMetrics",
    "canManageAgentSession",
    "destinationRoom",
];

/// The payload of a LiveKit access token.
///
/// JSON names are exactly LiveKit's (camelCase). Absent members stay `None` /
/// empty and are not written back, so `serde_json::to_value(claims)` reproduces
/// the payload an SDK wrote. Unknown top-level claims (e.g. newer SDKs'
/// `agentEndpoint`) are kept in [`Claims::extra`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// Expiry, Unix seconds. Required by the verifier.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_secs"
    )]
    pub exp: Option<u64>,
    /// Not-before, Unix seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_secs"
    )]
    pub nbf: Option<u64>,
    /// Issued-at, Unix seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_opt_secs"
    )]
    pub iat: Option<u64>,
    /// Issuer: the API key that signed the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Subject: the participant identity. Python writes `""` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// JWT id; the identity falls back to it when `sub` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Participant display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Participant metadata (opaque string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Participant attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, String>>,
    /// Participant kind: `standard`, `ingress`, `egress`, `sip`, `agent`, `connector`, `bridge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Lowercase `KindDetail` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind_details: Option<Vec<String>>,
    /// Webhooks only: standard base64 of the SHA-256 of the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Name of a room preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_preset: Option<String>,
    /// A `RoomConfiguration` in proto JSON, kept verbatim; see [`Claims::room_configuration`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_config: Option<Value>,
    /// The video (room) grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoGrant>,
    /// SIP grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<SipGrant>,
    /// Agent (cloud agents) grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentGrant>,
    /// Inference grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<InferenceGrant>,
    /// Observability grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<ObservabilityGrant>,
    /// Top-level claims Relais does not know (kept, never interpreted).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `video` grant: what the holder may do with rooms and inside a room.
///
/// Boolean members are `Option<bool>` so that "absent" and "false" stay
/// distinguishable; use the accessor methods for effective permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VideoGrant {
    /// May create rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_create: Option<bool>,
    /// May list rooms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_list: Option<bool>,
    /// May record (egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_record: Option<bool>,
    /// Admin of the room named in `room`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_admin: Option<bool>,
    /// May join the room named in `room`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_join: Option<bool>,
    /// The room name (empty when absent).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub room: String,
    /// May publish; default true when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    /// May subscribe; default true when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    /// May publish data; defaults to the effective `canPublish`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    /// When non-empty, the only track sources that may be published
    /// (`camera`, `microphone`, `screen_share`, `screen_share_audio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish_sources: Option<Vec<String>>,
    /// May update its own name/metadata/attributes; default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_update_own_metadata: Option<bool>,
    /// Ingress administration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_admin: Option<bool>,
    /// Invisible to other participants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<bool>,
    /// Recorder participant (deprecated in LiveKit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorder: Option<bool>,
    /// May register as an agent worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<bool>,
    /// May subscribe to metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe_metrics: Option<bool>,
    /// May manage an agent session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_manage_agent_session: Option<bool>,
    /// Target room for forward/move (empty when absent).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination_room: String,
}

impl VideoGrant {
    /// A grant to join `room` (publish/subscribe left at their defaults).
    pub fn join(room: impl Into<String>) -> Self {
        Self {
            room_join: Some(true),
            room: room.into(),
            ..Self::default()
        }
    }

    /// Effective `canPublish` (true when absent).
    pub fn can_publish(&self) -> bool {
        self.can_publish.unwrap_or(true)
    }

    /// Effective `canSubscribe` (true when absent).
    pub fn can_subscribe(&self) -> bool {
        self.can_subscribe.unwrap_or(true)
    }

    /// Effective `canPublishData` (the effective `canPublish` when absent).
    pub fn can_publish_data(&self) -> bool {
        self.can_publish_data.unwrap_or_else(|| self.can_publish())
    }

    /// Effective `canUpdateOwnMetadata` (false when absent).
    pub fn can_update_own_metadata(&self) -> bool {
        self.can_update_own_metadata.unwrap_or(false)
    }

    /// Whether a track of `source` (`camera`, `microphone`, `screen_share`,
    /// `screen_share_audio`) may be published: requires `canPublish`, and when
    /// `canPublishSources` is non-empty the source must be listed.
    pub fn can_publish_source(&self, source: &str) -> bool {
        if !self.can_publish() {
            return false;
        }
        match &self.can_publish_sources {
            Some(sources) if !sources.is_empty() => sources.iter().any(|s| s == source),
            _ => true,
        }
    }

    /// `roomJoin` (false when absent).
    pub fn is_room_join(&self) -> bool {
        self.room_join.unwrap_or(false)
    }

    /// `roomAdmin` (false when absent).
    pub fn is_room_admin(&self) -> bool {
        self.room_admin.unwrap_or(false)
    }

    /// `roomCreate` (false when absent).
    pub fn is_room_create(&self) -> bool {
        self.room_create.unwrap_or(false)
    }

    /// `roomList` (false when absent).
    pub fn is_room_list(&self) -> bool {
        self.room_list.unwrap_or(false)
    }

    /// `roomRecord` (false when absent).
    pub fn is_room_record(&self) -> bool {
        self.room_record.unwrap_or(false)
    }

    /// `hidden` (false when absent).
    pub fn is_hidden(&self) -> bool {
        self.hidden.unwrap_or(false)
    }

    /// `recorder` (false when absent).
    pub fn is_recorder(&self) -> bool {
        self.recorder.unwrap_or(false)
    }

    /// `agent` (false when absent).
    pub fn is_agent(&self) -> bool {
        self.agent.unwrap_or(false)
    }

    /// `ingressAdmin` (false when absent).
    pub fn is_ingress_admin(&self) -> bool {
        self.ingress_admin.unwrap_or(false)
    }

    /// `canSubscribeMetrics` (false when absent).
    pub fn can_subscribe_metrics(&self) -> bool {
        self.can_subscribe_metrics.unwrap_or(false)
    }

    /// `canManageAgentSession` (false when absent).
    pub fn can_manage_agent_session(&self) -> bool {
        self.can_manage_agent_session.unwrap_or(false)
    }

    /// Parses a `video` JSON object, rejecting unknown members with
    /// [`AuthError::UnknownGrantField`] and wrong types with
    /// [`AuthError::InvalidClaim`].
    pub fn from_json(value: &Value) -> Result<Self, AuthError> {
        check_video_fields(value)?;
        serde_json::from_value(value.clone()).map_err(|e| AuthError::InvalidClaim {
            claim: "video".into(),
            message: e.to_string(),
        })
    }
}

/// Rejects any member of a `video` object that is not in [`VIDEO_GRANT_FIELDS`].
pub(crate) fn check_video_fields(value: &Value) -> Result<(), AuthError> {
    match value {
        Value::Object(map) => {
            if let Some(k) = map
                .keys()
                .find(|k| !VIDEO_GRANT_FIELDS.contains(&k.as_str()))
            {
                return Err(AuthError::UnknownGrantField(k.clone()));
            }
            Ok(())
        }
        Value::Null => Ok(()),
        other => Err(AuthError::InvalidClaim {
            claim: "video".into(),
            message: format!("expected an object, got {}", json_type(other)),
        }),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `sip` grant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SipGrant {
    /// Manage SIP resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
    /// Make outbound calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<bool>,
    /// Members Relais does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `agent` grant (cloud agents).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentGrant {
    /// Create/update/delete agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
    /// Manage simulations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulation_admin: Option<bool>,
    /// Access the agent databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_admin: Option<bool>,
    /// Members Relais does not know (e.g. `dispatchAdmin`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `inference` grant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferenceGrant {
    /// Perform inference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perform: Option<bool>,
    /// Members Relais does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `observability` grant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservabilityGrant {
    /// Publish observability data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<bool>,
    /// Members Relais does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The parts of a `RoomConfiguration` (proto JSON) Relais uses.
///
/// Accepts lowerCamel (what Python and Node write) and snake_case names, and
/// numbers written as JSON numbers or strings. Other members are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomConfiguration {
    /// Room name.
    #[serde(default)]
    pub name: String,
    /// Seconds to keep an empty room open.
    #[serde(default, alias = "empty_timeout", deserialize_with = "de_u32")]
    pub empty_timeout: u32,
    /// Seconds to keep the room after the last participant left.
    #[serde(default, alias = "departure_timeout", deserialize_with = "de_u32")]
    pub departure_timeout: u32,
    /// Maximum participants (0 = unlimited).
    #[serde(default, alias = "max_participants", deserialize_with = "de_u32")]
    pub max_participants: u32,
    /// Minimum playout delay (ms).
    #[serde(default, alias = "min_playout_delay", deserialize_with = "de_u32")]
    pub min_playout_delay: u32,
    /// Maximum playout delay (ms).
    #[serde(default, alias = "max_playout_delay", deserialize_with = "de_u32")]
    pub max_playout_delay: u32,
    /// Synchronise audio/video streams.
    #[serde(default, alias = "sync_streams")]
    pub sync_streams: bool,
    /// Room metadata.
    #[serde(default)]
    pub metadata: String,
    /// Agents to dispatch when the room is created.
    #[serde(default)]
    pub agents: Vec<RoomAgentDispatch>,
    /// Members Relais does not interpret (`egress`, `tags`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One `RoomAgentDispatch` of a [`RoomConfiguration`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomAgentDispatch {
    /// Agent name.
    #[serde(default, alias = "agent_name")]
    pub agent_name: String,
    /// Job metadata.
    #[serde(default)]
    pub metadata: String,
    /// Members Relais does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// NumericDate: integer seconds; a fractional value (allowed by RFC 7519) is
/// truncated.
fn de_opt_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    Some(f) if f >= 0.0 && f.is_finite() => Ok(Some(f as u64)),
                    _ => Err(D::Error::custom(format!(
                        "{n} is not a non-negative number of seconds"
                    ))),
                }
            }
        }
        other => Err(D::Error::custom(format!(
            "expected a number of seconds, got {}",
            json_type(&other)
        ))),
    }
}

fn de_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| D::Error::custom(format!("{n} is not a uint32"))),
        Value::String(s) => s
            .parse::<u32>()
            .map_err(|_| D::Error::custom(format!("{s:?} is not a uint32"))),
        other => Err(D::Error::custom(format!(
            "expected a uint32, got {}",
            json_type(&other)
        ))),
    }
}

impl Claims {
    /// The participant identity: `sub`, or `jti` when `sub` is absent or empty.
    pub fn identity(&self) -> &str {
        match self.sub.as_deref() {
            Some(s) if !s.is_empty() => s,
            _ => self.jti.as_deref().unwrap_or(""),
        }
    }

    /// The API key that issued the token (`iss`), or "" if absent.
    pub fn api_key(&self) -> &str {
        self.iss.as_deref().unwrap_or("")
    }

    /// The video grant, or an empty (all-default) one when absent.
    pub fn video_or_default(&self) -> VideoGrant {
        self.video.clone().unwrap_or_default()
    }

    /// Effective `canPublish` (true when the grant or the member is absent).
    pub fn can_publish(&self) -> bool {
        self.video.as_ref().is_none_or(VideoGrant::can_publish)
    }

    /// Effective `canSubscribe` (true when the grant or the member is absent).
    pub fn can_subscribe(&self) -> bool {
        self.video.as_ref().is_none_or(VideoGrant::can_subscribe)
    }

    /// Effective `canPublishData` (the effective `canPublish` when absent).
    pub fn can_publish_data(&self) -> bool {
        self.video.as_ref().is_none_or(VideoGrant::can_publish_data)
    }

    /// Effective `canUpdateOwnMetadata` (false when absent).
    pub fn can_update_own_metadata(&self) -> bool {
        self.video
            .as_ref()
            .is_some_and(VideoGrant::can_update_own_metadata)
    }

    /// The typed `roomConfig`, if present.
    pub fn room_configuration(&self) -> Result<Option<RoomConfiguration>, AuthError> {
        match &self.room_config {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                serde_json::from_value(v.clone())
                    .map(Some)
                    .map_err(|e| AuthError::InvalidClaim {
                        claim: "roomConfig".into(),
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Parses a JWT payload (already signature-checked) into claims.
    ///
    /// Unknown members of `video` are rejected; a claim of the wrong type gives
    /// [`AuthError::InvalidClaim`] naming it.
    pub fn from_payload(payload: &Value) -> Result<Self, AuthError> {
        let map = payload
            .as_object()
            .ok_or_else(|| AuthError::Malformed("payload is not a JSON object".into()))?;
        if let Some(video) = map.get("video") {
            check_video_fields(video)?;
        }
        // Decode member by member first, so an error names the claim at fault.
        for (name, value) in map {
            let probe = Value::Object(Map::from_iter([(name.clone(), value.clone())]));
            if let Err(e) = serde_json::from_value::<Claims>(probe) {
                return Err(AuthError::InvalidClaim {
                    claim: name.clone(),
                    message: e.to_string(),
                });
            }
        }
        serde_json::from_value(payload.clone()).map_err(|e| AuthError::Malformed(e.to_string()))
    }
}
