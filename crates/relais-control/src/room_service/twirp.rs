//! The Twirp face: `POST /twirp/livekit.RoomService/<Method>`.
//!
//! * `Content-Type` (the part before `;`, case-insensitive) chooses the
//!   encoding: `application/protobuf` or `application/json` (proto3 JSON,
//!   lowerCamel or snake_case names, unknown fields ignored). Replies use the
//!   request's encoding; JSON replies are pbjson's proto3 JSON (lowerCamel,
//!   defaults omitted), which LiveKit's SDKs parse.
//! * Errors are Twirp JSON `{"code","msg","meta"}` with
//!   `Content-Type: application/json` and the code's HTTP status.
//! * Bodies over [`MAX_REQUEST_BYTES`] are refused with 413 `resource_exhausted`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::debug;

use super::{ApiError, RoomBackend, RoomService, MAX_REQUEST_BYTES};

/// Path prefix of the service.
pub const PREFIX: &str = "/twirp/livekit.RoomService/";

/// The body encoding of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/protobuf`
    Protobuf,
    /// `application/json`
    Json,
}

impl Encoding {
    /// The encoding a `Content-Type` value names, if supported.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let mime = value.split(';').next().unwrap_or("").trim();
        if mime.eq_ignore_ascii_case("application/protobuf") {
            Some(Encoding::Protobuf)
        } else if mime.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// The Twirp routes (anything under `/twirp/` that is not a known method is `bad_route`).
pub fn router<B: RoomBackend>(service: Arc<RoomService<B>>) -> Router {
    Router::new()
        .route("/twirp/livekit.RoomService/{method}", any(handle::<B>))
        .route("/twirp/{*rest}", any(bad_route_handler))
        .route("/twirp", any(bad_route_handler))
        .with_state(service)
}

/// The Twirp error response for `err`.
pub fn error_response(err: &ApiError) -> Response {
    let status =
        StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, err.twirp_body()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn bad_route_handler(request: Request) -> Response {
    error_response(&ApiError::BadRoute(format!(
        "no handler for path {:?}",
        request.uri().path()
    )))
}

/// Every method of `livekit.RoomService`, as named in Twirp paths.
pub const METHODS: &[&str] = &[
    "CreateRoom",
    "ListRooms",
    "DeleteRoom",
    "ListParticipants",
    "GetParticipant",
    "RemoveParticipant",
    "MutePublishedTrack",
    "UpdateParticipant",
    "UpdateSubscriptions",
    "SendData",
    "UpdateRoomMetadata",
    "ForwardParticipant",
    "MoveParticipant",
    "PerformRpc",
];

async fn handle<B: RoomBackend>(
    State(service): State<Arc<RoomService<B>>>,
    Path(method): Path<String>,
    request: Request,
) -> Response {
    match serve(&service, &method, request).await {
        Ok(response) => response,
        Err(err) => {
            debug!(%method, code = err.twirp_code(), error = %err, "twirp call failed");
            error_response(&err)
        }
    }
}

async fn serve<B: RoomBackend>(
    service: &RoomService<B>,
    method: &str,
    request: Request,
) -> Result<Response, ApiError> {
    if !METHODS.contains(&method) {
        return Err(ApiError::BadRoute(format!(
            "no handler for path \"{PREFIX}{method}\""
        )));
    }
    if request.method() != Method::POST {
        return Err(ApiError::BadRoute(format!(
            "unsupported method {} (only POST is allowed)",
            request.method()
        )));
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = Encoding::from_content_type(content_type).ok_or_else(|| {
        ApiError::BadRoute(format!(
            "unexpected Content-Type: {content_type:?} (use application/protobuf or application/json)"
        ))
    })?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BYTES as u64) {
        discard(request.into_body()).await;
        return Err(too_large());
    }
    let auth = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_body(request.into_body()).await?;
    let auth = auth.as_deref();
    let s = service;
    let e = encoding;
    let b = &body;
    match method {
        "CreateRoom" => reply(e, &s.create_room(auth, decode(e, b)?).await?),
        "ListRooms" => reply(e, &s.list_rooms(auth, decode(e, b)?).await?),
        "DeleteRoom" => reply(e, &s.delete_room(auth, decode(e, b)?).await?),
        "ListParticipants" => reply(e, &s.list_participants(auth, decode(e, b)?).await?),
        "GetParticipant" => reply(e, &s.get_participant(auth, decode(e, b)?).await?),
        "RemoveParticipant" => reply(e, &s.remove_participant(auth, decode(e, b)?).await?),
        "MutePublishedTrack" => reply(e, &s.mute_published_track(auth, decode(e, b)?).await?),
        "UpdateParticipant" => reply(e, &s.update_participant(auth, decode(e, b)?).await?),
        "UpdateSubscriptions" => reply(e, &s.update_subscriptions(auth, decode(e, b)?).await?),
        "SendData" => reply(e, &s.send_data(auth, decode(e, b)?).await?),
        "UpdateRoomMetadata" => reply(e, &s.update_room_metadata(auth, decode(e, b)?).await?),
        "ForwardParticipant" => reply(e, &s.forward_participant(auth, decode(e, b)?).await?),
        "MoveParticipant" => reply(e, &s.move_participant(auth, decode(e, b)?).await?),
        "PerformRpc" => reply(e, &s.perform_rpc(auth, decode(e, b)?).await?),
        _ => Err(ApiError::BadRoute(format!(
            "no handler for path \"{PREFIX}{method}\""
        ))),
    }
}

/// Read and drop what a refused oversized request still sends (up to
/// [`DISCARD_LIMIT`], within [`DISCARD_TIMEOUT`]). A client that writes its
/// whole body before reading (most HTTP clients) would otherwise get a reset
/// connection instead of the 413, when the socket closes with unread data.
async fn discard(mut body: Body) {
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DISCARD_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, drain).await;
}

/// At most this much of a refused body is read (then the connection closes).
const DISCARD_LIMIT: usize = 8 * MAX_REQUEST_BYTES;
/// At most this long is spent reading a refused body.
const DISCARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn too_large() -> ApiError {
    ApiError::ResourceExhausted(format!(
        "request body is larger than {} bytes",
        MAX_REQUEST_BYTES
    ))
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => {
            // axum wraps the limit error of an inner layer; look one level down too.
            let inner_limit = std::error::Error::source(&*e)
                .is_some_and(|s| s.downcast_ref::<LengthLimitError>().is_some());
            if inner_limit {
                Err(too_large())
            } else {
                Err(ApiError::Malformed(format!(
                    "failed to read request body: {e}"
                )))
            }
        }
    }
}

/// Decode a request body in `encoding`. An empty body is the default message.
pub fn decode<T>(encoding: Encoding, body: &[u8]) -> Result<T, ApiError>
where
    T: Message + Default + DeserializeOwned,
{
    match encoding {
        Encoding::Protobuf => T::decode(body).map_err(|e| {
            ApiError::Malformed(format!("the request could not be decoded as protobuf: {e}"))
        }),
        Encoding::Json => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(T::default());
            }
            serde_json::from_slice(body).map_err(|e| {
                ApiError::Malformed(format!("the request could not be decoded as JSON: {e}"))
            })
        }
    }
}

fn reply<T: Message + Serialize>(encoding: Encoding, message: &T) -> Result<Response, ApiError> {
    let body = match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(message)
            .map_err(|e| ApiError::Internal(format!("failed to encode the reply: {e}")))?,
    };
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(encoding.content_type()),
    );
    Ok(response)
}
