//! The one error type of the room API, and how each face shows it: a Twirp
//! code with its HTTP status, or a gRPC status code.

use std::collections::BTreeMap;

/// Why a room API call failed. Every message is meant for the caller and never
/// contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No token, or a token that does not verify (401 / `UNAUTHENTICATED`).
    #[error("{0}")]
    Unauthenticated(String),
    /// The token's grants do not cover the call (403 / `PERMISSION_DENIED`).
    #[error("{0}")]
    PermissionDenied(String),
    /// A request field is missing or out of range (400 / `INVALID_ARGUMENT`).
    #[error("{0}")]
    InvalidArgument(String),
    /// The body could not be decoded (400 / `INVALID_ARGUMENT`).
    #[error("{0}")]
    Malformed(String),
    /// No such room, participant or track (404 / `NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// Unknown path, wrong HTTP method or content type (Twirp only, 404).
    #[error("{0}")]
    BadRoute(String),
    /// The operation is refused in the current state (412 / `FAILED_PRECONDITION`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Not supported by Relais (501 / `UNIMPLEMENTED`).
    #[error("{0}")]
    Unimplemented(String),
    /// A wait ran out (408 / `DEADLINE_EXCEEDED`).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A size limit was exceeded (413 for an oversized body / `RESOURCE_EXHAUSTED`).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The node cannot serve the call right now (503 / `UNAVAILABLE`).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a broken invariant (500 / `INTERNAL`).
    #[error("{0}")]
    Internal(String),
    /// The participant answered a server-initiated RPC with an error.
    #[error("rpc error {code}: {message}")]
    Rpc {
        /// The RPC error code (LiveKit's built-in codes are 1400–1503; others are the application's).
        code: u32,
        /// The error message the participant gave.
        message: String,
        /// Optional error data the participant gave.
        data: String,
    },
}

/// LiveKit's built-in RPC error codes.
pub mod rpc_codes {
    /// The handler raised an error.
    pub const APPLICATION_ERROR: u32 = 1500;
    /// No acknowledgement in time.
    pub const CONNECTION_TIMEOUT: u32 = 1501;
    /// No response in time.
    pub const RESPONSE_TIMEOUT: u32 = 1502;
    /// The recipient left.
    pub const RECIPIENT_DISCONNECTED: u32 = 1503;
    /// The response payload is too large.
    pub const RESPONSE_PAYLOAD_TOO_LARGE: u32 = 1504;
    /// The recipient has no handler for the method.
    pub const UNSUPPORTED_METHOD: u32 = 1400;
    /// The recipient does not exist.
    pub const RECIPIENT_NOT_FOUND: u32 = 1401;
    /// The request payload is too large.
    pub const REQUEST_PAYLOAD_TOO_LARGE: u32 = 1402;
    /// The recipient does not speak this RPC version.
    pub const UNSUPPORTED_VERSION: u32 = 1404;
}

impl ApiError {
    /// The Twirp error code (`"not_found"`, …).
    pub fn twirp_code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::PermissionDenied(_) => "permission_denied",
            ApiError::InvalidArgument(_) => "invalid_argument",
            ApiError::Malformed(_) => "malformed",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRoute(_) => "bad_route",
            ApiError::FailedPrecondition(_) => "failed_precondition",
            ApiError::Unimplemented(_) => "unimplemented",
            ApiError::DeadlineExceeded(_) => "deadline_exceeded",
            ApiError::ResourceExhausted(_) => "resource_exhausted",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::Rpc { code, .. } => match *code {
                rpc_codes::CONNECTION_TIMEOUT | rpc_codes::RESPONSE_TIMEOUT => "deadline_exceeded",
                rpc_codes::RECIPIENT_DISCONNECTED => "unavailable",
                rpc_codes::RECIPIENT_NOT_FOUND => "not_found",
                rpc_codes::UNSUPPORTED_METHOD | rpc_codes::UNSUPPORTED_VERSION => "unimplemented",
                rpc_codes::REQUEST_PAYLOAD_TOO_LARGE | rpc_codes::RESPONSE_PAYLOAD_TOO_LARGE => {
                    "resource_exhausted"
                }
                _ => "unknown",
            },
        }
    }

    /// The HTTP status Twirp pairs with [`ApiError::twirp_code`]. An oversized
    /// request body answers 413 (Payload Too Large) rather than Twirp's 429.
    pub fn http_status(&self) -> u16 {
        if matches!(self, ApiError::ResourceExhausted(_)) {
            return 413;
        }
        twirp_status(self.twirp_code())
    }

    /// The gRPC status code for the tonic face.
    pub fn grpc_code(&self) -> tonic::Code {
        grpc_code_for(self.twirp_code())
    }

    /// Twirp `meta`: for an RPC error, its code, message and data.
    pub fn meta(&self) -> BTreeMap<String, String> {
        let mut meta = BTreeMap::new();
        if let ApiError::Rpc {
            code,
            message,
            data,
        } = self
        {
            meta.insert("rpc_code".into(), code.to_string());
            meta.insert("rpc_message".into(), message.clone());
            if !data.is_empty() {
                meta.insert("rpc_data".into(), data.clone());
            }
        }
        meta
    }

    /// The Twirp JSON error body `{"code","msg","meta"}`.
    pub fn twirp_body(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "code": self.twirp_code(),
            "msg": self.to_string(),
            "meta": self.meta(),
        });
        body.to_string().into_bytes()
    }

    /// The same error as a gRPC status.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), self.to_string())
    }

    /// `not_found` "requested room does not exist", as LiveKit words it.
    pub fn room_not_found() -> Self {
        ApiError::NotFound("requested room does not exist".into())
    }

    /// `not_found` "participant does not exist", as LiveKit words it.
    pub fn participant_not_found() -> Self {
        ApiError::NotFound("participant does not exist".into())
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}

/// Twirp's code → gRPC status code (the two share names).
pub fn grpc_code_for(twirp_code: &str) -> tonic::Code {
    match twirp_code {
        "unauthenticated" => tonic::Code::Unauthenticated,
        "permission_denied" => tonic::Code::PermissionDenied,
        "invalid_argument" | "malformed" => tonic::Code::InvalidArgument,
        "not_found" => tonic::Code::NotFound,
        "bad_route" | "unimplemented" => tonic::Code::Unimplemented,
        "failed_precondition" => tonic::Code::FailedPrecondition,
        "deadline_exceeded" => tonic::Code::DeadlineExceeded,
        "resource_exhausted" => tonic::Code::ResourceExhausted,
        "unavailable" => tonic::Code::Unavailable,
        "internal" => tonic::Code::Internal,
        "canceled" => tonic::Code::Cancelled,
        "already_exists" => tonic::Code::AlreadyExists,
        "aborted" => tonic::Code::Aborted,
        "out_of_range" => tonic::Code::OutOfRange,
        "data_loss" => tonic::Code::DataLoss,
        _ => tonic::Code::Unknown,
    }
}

/// Twirp's code → HTTP status table.
pub fn twirp_status(code: &str) -> u16 {
    match code {
        "canceled" | "deadline_exceeded" => 408,
        "invalid_argument" | "malformed" | "out_of_range" => 400,
        "not_found" | "bad_route" => 404,
        "already_exists" | "aborted" => 409,
        "permission_denied" => 403,
        "unauthenticated" => 401,
        "resource_exhausted" => 429,
        "failed_precondition" => 412,
        "unimplemented" => 501,
        "unavailable" => 503,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        assert_eq!(ApiError::room_not_found().twirp_code(), "not_found");
        assert_eq!(ApiError::room_not_found().http_status(), 404);
        assert_eq!(ApiError::BadRoute("x".into()).http_status(), 404);
        assert_eq!(ApiError::Unauthenticated("x".into()).http_status(), 401);
        assert_eq!(ApiError::PermissionDenied("x".into()).http_status(), 403);
        assert_eq!(ApiError::Malformed("x".into()).http_status(), 400);
        assert_eq!(ApiError::FailedPrecondition("x".into()).http_status(), 412);
        assert_eq!(ApiError::Unimplemented("x".into()).http_status(), 501);
        assert_eq!(ApiError::ResourceExhausted("x".into()).http_status(), 413);
        assert_eq!(
            ApiError::PermissionDenied("x".into()).grpc_code(),
            tonic::Code::PermissionDenied
        );
        let rpc = ApiError::Rpc {
            code: 1502,
            message: "Response timeout".into(),
            data: String::new(),
        };
        assert_eq!(rpc.twirp_code(), "deadline_exceeded");
        assert_eq!(rpc.http_status(), 408);
        let body: serde_json::Value =
            serde_json::from_slice(&ApiError::room_not_found().twirp_body()).unwrap();
        assert_eq!(body["code"], "not_found");
        assert_eq!(body["msg"], "requested room does not exist");
        assert!(body["meta"].is_object());
    }
}
