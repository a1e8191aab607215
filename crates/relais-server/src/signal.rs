//! One participant's signal WebSocket: decodes `SignalRequest`s for the room,
//! answers pings itself (they never reach the room), and writes the room's
//! `SignalResponse`s in the encoding of the last frame the client sent.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use prost::Message as _;
use relais_proto::livekit::{
    leave_request, signal_request, signal_response, DisconnectReason, LeaveRequest, Pong,
    SignalRequest, SignalResponse,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, warn};

use crate::shards::{ShardHandle, ToSignal};
use crate::websocket::{send, Socket};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn encode(response: &SignalResponse, encoding: Encoding) -> Message {
    match encoding {
        Encoding::Protobuf => Message::Binary(response.encode_to_vec().into()),
        Encoding::Json => match serde_json::to_string(response) {
            Ok(text) => Message::Text(text.into()),
            Err(_) => Message::Binary(response.encode_to_vec().into()),
        },
    }
}

fn leave(reason: DisconnectReason) -> SignalResponse {
    SignalResponse {
        message: Some(signal_response::Message::Leave(LeaveRequest {
            reason: reason as i32,
            action: leave_request::Action::Disconnect as i32,
            ..Default::default()
        })),
    }
}

/// Answer a ping at the edge, or `None` if the request is for the room.
fn pong(req: &SignalRequest) -> Option<SignalResponse> {
    let message = match req.message.as_ref()? {
        signal_request::Message::Ping(_) => signal_response::Message::Pong(unix_ms()),
        signal_request::Message::PingReq(ping) => signal_response::Message::PongResp(Pong {
            last_ping_timestamp: ping.timestamp,
            timestamp: unix_ms(),
        }),
        _ => return None,
    };
    Some(SignalResponse {
        message: Some(message),
    })
}

/// What the connection does after one event. Deciding it is synchronous, so
/// that no `SignalRequest`/`SignalResponse` (hundreds of bytes each) lives in
/// the connection's task across an await: that task is kept per participant.
enum Step {
    Continue,
    /// Send, then go on; a failed send ends the session.
    Send(Message),
    /// Send what there is (best effort), tell the room why if it must be
    /// told, and end.
    End {
        messages: [Option<Message>; 2],
        remove: Option<DisconnectReason>,
    },
}

/// One signal connection's state between events.
struct Connection {
    key: relais_media::ParticipantKey,
    encoding: Encoding,
    last_heard: Instant,
    ping_timeout: Duration,
}

impl Connection {
    fn incoming(
        &mut self,
        incoming: Option<Result<Message, tungstenite::Error>>,
        room: &ShardHandle,
    ) -> Step {
        let key = self.key;
        let request = match incoming {
            Some(Ok(Message::Binary(bytes))) => {
                self.encoding = Encoding::Protobuf;
                SignalRequest::decode(bytes.as_ref()).map_err(|e| e.to_string())
            }
            Some(Ok(Message::Text(text))) => {
                self.encoding = Encoding::Json;
                serde_json::from_str::<SignalRequest>(text.as_str()).map_err(|e| e.to_string())
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                self.last_heard = Instant::now();
                return Step::Continue;
            }
            Some(Ok(Message::Close(_))) | None => {
                debug!(?key, "signal connection closed by client");
                return Step::End {
                    messages: [None, None],
                    remove: Some(DisconnectReason::ClientInitiated),
                };
            }
            Some(Err(e)) => {
                // Includes messages over the size limit.
                warn!(?key, error = %e, "signal connection failed");
                return self.refuse(close(CloseCode::Invalid, "signal message rejected"));
            }
        };
        self.last_heard = Instant::now();
        match request {
            Ok(req) => match pong(&req) {
                Some(reply) => Step::Send(encode(&reply, self.encoding)),
                None => {
                    room.signal(req);
                    Step::Continue
                }
            },
            Err(e) => {
                warn!(?key, error = %e, "malformed signal message; closing");
                self.refuse(close(CloseCode::Invalid, "malformed signal message"))
            }
        }
    }

    fn outgoing(&self, outgoing: Option<ToSignal>) -> Step {
        match outgoing {
            Some(ToSignal::Message(response)) => Step::Send(encode(&response, self.encoding)),
            Some(ToSignal::Close(leave_request)) => Step::End {
                messages: [
                    leave_request.map(|leave_request| {
                        let response = SignalResponse {
                            message: Some(signal_response::Message::Leave(*leave_request)),
                        };
                        encode(&response, self.encoding)
                    }),
                    Some(close(CloseCode::Normal, "")),
                ],
                remove: None,
            },
            None => Step::End {
                messages: [None, None],
                remove: None,
            },
        }
    }

    fn liveness(&self) -> Step {
        if self.last_heard.elapsed() <= self.ping_timeout {
            return Step::Continue;
        }
        debug!(key = ?self.key, "no signal message within ping timeout");
        Step::End {
            messages: [
                Some(encode(&leave(DisconnectReason::SignalClose), self.encoding)),
                Some(close(CloseCode::Normal, "ping timeout")),
            ],
            remove: Some(DisconnectReason::SignalClose),
        }
    }

    /// End a session whose client sent what cannot be served.
    fn refuse(&self, close: Message) -> Step {
        Step::End {
            messages: [
                Some(encode(
                    &leave(DisconnectReason::UnknownReason),
                    self.encoding,
                )),
                Some(close),
            ],
            remove: Some(DisconnectReason::SignalClose),
        }
    }
}

/// Serve the WebSocket until either side ends the session.
pub async fn run(
    socket: Socket,
    room: ShardHandle,
    mut from_room: UnboundedReceiver<ToSignal>,
    ping_timeout: Duration,
) {
    let (mut sink, mut stream) = socket.split();
    let mut connection = Connection {
        key: room.key(),
        encoding: Encoding::Protobuf,
        last_heard: Instant::now(),
        ping_timeout,
    };
    let mut liveness = tokio::time::interval(Duration::from_secs(1));
    loop {
        let step = tokio::select! {
            incoming = stream.next() => connection.incoming(incoming, &room),
            outgoing = from_room.recv() => connection.outgoing(outgoing),
            _ = liveness.tick() => connection.liveness(),
        };
        match step {
            Step::Continue => {}
            Step::Send(message) => {
                if send(&mut sink, message).await.is_err() {
                    room.remove(DisconnectReason::SignalClose);
                    return;
                }
            }
            Step::End { messages, remove } => {
                for message in messages.into_iter().flatten() {
                    let _ = send(&mut sink, message).await;
                }
                if let Some(reason) = remove {
                    room.remove(reason);
                }
                return;
            }
        }
    }
}

/// Answer a resume attempt for a session this node does not keep: a single
/// `leave{STATE_MISMATCH, RECONNECT}` makes the SDK perform a full join.
pub async fn refuse_resume(mut socket: Socket) {
    let response = SignalResponse {
        message: Some(signal_response::Message::Leave(LeaveRequest {
            can_reconnect: true,
            reason: DisconnectReason::StateMismatch as i32,
            action: leave_request::Action::Reconnect as i32,
            ..Default::default()
        })),
    };
    let _ = send(&mut socket, encode(&response, Encoding::Protobuf)).await;
    let _ = send(&mut socket, close(CloseCode::Normal, "")).await;
}

fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
