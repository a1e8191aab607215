//! The server side of a signal WebSocket: the HTTP/1.1 upgrade, and a sender
//! that keeps each connection's write buffer small.
//!
//! tungstenite writes a message as one frame into a buffer that keeps its
//! largest size for the life of the connection. A join response lists the
//! room's participants, so in a room of 500 every connection pinned ~13 KiB
//! on average for a message sent once. [`send`] writes a message larger than
//! [`FRAGMENT`] as a fragmented message (RFC 6455 §5.4), as LiveKit's own
//! server does, so the buffer never holds more than one fragment. axum's
//! upgrade hides the raw sink that fragments need, hence this module. Only
//! HTTP/1.1 upgrades are served (every SDK's; WebSockets over HTTP/2 are not
//! offered, as LiveKit's server does not offer them either).

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

/// An accepted WebSocket.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Largest frame [`send`] writes; LiveKit's server fragments at the same size.
pub const FRAGMENT: usize = 4096;

/// Read buffer of a signal WebSocket, kept for the connection's life. Most
/// client messages are smaller (pings, trickles); an offer takes a few reads.
/// tungstenite zeroes the whole buffer before every read (its default is
/// 128 KiB), so a small one also saves that work per message.
pub const READ_BUFFER: usize = 1024;

/// A request that asked to become a WebSocket (RFC 6455 §4.2.1); the
/// extractor refuses any other with a 4xx.
pub struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

/// Why a request cannot become a WebSocket.
pub struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// True if the comma-separated `name` header lists `token`.
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Refused> {
        let bad = |text| Err(Refused(StatusCode::BAD_REQUEST, text));
        if parts.method != Method::GET {
            return Err(Refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade must be a GET",
            ));
        }
        if !lists(&parts.headers, header::CONNECTION, "upgrade") {
            return bad("the Connection header must include 'upgrade'");
        }
        if !lists(&parts.headers, header::UPGRADE, "websocket") {
            return bad("the Upgrade header must be 'websocket'");
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
        {
            return bad("Sec-WebSocket-Version must be 13");
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return bad("Sec-WebSocket-Key is missing");
        };
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(Refused(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        Ok(Upgrade { on_upgrade, accept })
    }
}

impl Upgrade {
    /// Answer `101 Switching Protocols` and, once hyper hands the connection
    /// over, serve it with `serve` on a task of its own.
    pub fn on_upgrade<F, Fut>(self, max_message: usize, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_upgrade_or_else(max_message, || {}, serve)
    }

    /// [`Upgrade::on_upgrade`], with `failed` run instead of `serve` if the
    /// client is gone before the connection is handed over.
    pub fn on_upgrade_or_else<F, Fut>(
        self,
        max_message: usize,
        failed: impl FnOnce() + Send + 'static,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message))
            .read_buffer_size(READ_BUFFER)
            // Each frame goes to the socket as it is written: nothing collects.
            .write_buffer_size(0);
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    serve(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await)
                        .await
                }
                Err(e) => {
                    debug!(error = %e, "WebSocket upgrade failed");
                    failed()
                }
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        response
    }
}

/// Send `message` and flush; a data message larger than [`FRAGMENT`] leaves
/// as fragments (text split between characters).
pub async fn send<S>(sink: &mut S, message: Message) -> Result<(), Error>
where
    S: Sink<Message, Error = Error> + Unpin,
{
    let (payload, mut opcode) = match message {
        Message::Binary(b) if b.len() > FRAGMENT => (b, Data::Binary),
        Message::Text(t) if t.len() > FRAGMENT => (Bytes::from(t), Data::Text),
        other => return sink.send(other).await,
    };
    let text = opcode == Data::Text;
    let mut start = 0;
    while start < payload.len() {
        let mut end = (start + FRAGMENT).min(payload.len());
        // A UTF-8 continuation byte (10xxxxxx) does not begin a character.
        while text && end < payload.len() && payload[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        let last = end == payload.len();
        let frame = Frame::message(payload.slice(start..end), OpCode::Data(opcode), last);
        sink.feed(Message::Frame(frame)).await?;
        opcode = Data::Continue;
        start = end;
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `send` passes to the sink, as (opcode, final, payload) per frame.
    async fn frames_of(message: Message) -> Vec<(OpCode, bool, Vec<u8>)> {
        let mut sent: Vec<Message> = Vec::new();
        let mut sink = (&mut sent).sink_map_err(|never| match never {});
        send(&mut sink, message).await.unwrap();
        sent.into_iter()
            .map(|m| match m {
                Message::Frame(f) => (f.header().opcode, f.header().is_final, f.payload().to_vec()),
                Message::Binary(b) => (OpCode::Data(Data::Binary), true, b.to_vec()),
                Message::Text(t) => (OpCode::Data(Data::Text), true, t.as_bytes().to_vec()),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn joined(frames: &[(OpCode, bool, Vec<u8>)]) -> Vec<u8> {
        frames.iter().flat_map(|(_, _, p)| p.clone()).collect()
    }

    #[tokio::test]
    async fn small_messages_leave_whole() {
        let frames = frames_of(Message::Binary(vec![7; FRAGMENT].into())).await;
        assert_eq!(
            frames,
            vec![(OpCode::Data(Data::Binary), true, vec![7; FRAGMENT])]
        );
    }

    #[tokio::test]
    async fn large_binary_leaves_in_fragments_that_add_up() {
        let payload: Vec<u8> = (0..2 * FRAGMENT + 10).map(|i| i as u8).collect();
        let frames = frames_of(Message::Binary(payload.clone().into())).await;
        let shape: Vec<_> = frames
            .iter()
            .map(|(op, fin, p)| (*op, *fin, p.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (OpCode::Data(Data::Binary), false, FRAGMENT),
                (OpCode::Data(Data::Continue), false, FRAGMENT),
                (OpCode::Data(Data::Continue), true, 10),
            ]
        );
        assert_eq!(joined(&frames), payload);
    }

    #[tokio::test]
    async fn large_text_splits_between_characters() {
        // "é" is two bytes: with one ASCII byte first, every character
        // straddles a FRAGMENT boundary.
        let text = format!("a{}", "é".repeat(FRAGMENT));
        let frames = frames_of(Message::Text(text.clone().into())).await;
        assert!(frames.len() > 2);
        assert_eq!(frames[0].0, OpCode::Data(Data::Text));
        for (_, _, payload) in &frames {
            assert!(payload.len() <= FRAGMENT);
            assert!(
                std::str::from_utf8(payload).is_ok(),
                "a fragment split a character"
            );
        }
        assert!(frames.last().unwrap().1);
        assert_eq!(joined(&frames), text.into_bytes());
    }
}
