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
use tokio_tungstenite::tungstenite::Message;
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

/// Serve the WebSocket until either side ends the session.
pub async fn run(
    socket: Socket,
    room: ShardHandle,
    mut from_room: UnboundedReceiver<ToSignal>,
    ping_timeout: Duration,
) {
    let (mut sink, mut stream) = socket.split();
    let mut encoding = Encoding::Protobuf;
    let mut last_heard = Instant::now();
    let mut liveness = tokio::time::interval(Duration::from_secs(1));
    let key = room.key();
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let request = match incoming {
                    Some(Ok(Message::Binary(bytes))) => {
                        encoding = Encoding::Protobuf;
                        SignalRequest::decode(bytes.as_ref()).map_err(|e| e.to_string())
                    }
                    Some(Ok(Message::Text(text))) => {
                        encoding = Encoding::Json;
                        serde_json::from_str::<SignalRequest>(text.as_str()).map_err(|e| e.to_string())
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        last_heard = Instant::now();
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        debug!(?key, "signal connection closed by client");
                        room.remove(DisconnectReason::ClientInitiated);
                        return;
                    }
                    Some(Err(e)) => {
                        // Includes messages over the size limit.
                        warn!(?key, error = %e, "signal connection failed");
                        let _ = send(&mut sink, encode(&leave(DisconnectReason::UnknownReason), encoding)).await;
                        let _ = send(&mut sink, close(CloseCode::Invalid, "signal message rejected")).await;
                        room.remove(DisconnectReason::SignalClose);
                        return;
                    }
                };
                last_heard = Instant::now();
                match request {
                    Ok(req) => match pong(&req) {
                        Some(reply) => {
                            if send(&mut sink, encode(&reply, encoding)).await.is_err() {
                                room.remove(DisconnectReason::SignalClose);
                                return;
                            }
                        }
                        None => room.signal(req),
                    },
                    Err(e) => {
                        warn!(?key, error = %e, "malformed signal message; closing");
                        let _ = send(&mut sink, encode(&leave(DisconnectReason::UnknownReason), encoding)).await;
                        let _ = send(&mut sink, close(CloseCode::Invalid, "malformed signal message")).await;
                        room.remove(DisconnectReason::SignalClose);
                        return;
                    }
                }
            }
            outgoing = from_room.recv() => {
                match outgoing {
                    Some(ToSignal::Message(response)) => {
                        if send(&mut sink, encode(&response, encoding)).await.is_err() {
                            room.remove(DisconnectReason::SignalClose);
                            return;
                        }
                    }
                    Some(ToSignal::Close(leave_request)) => {
                        if let Some(leave_request) = leave_request {
                            let response = SignalResponse {
                                message: Some(signal_response::Message::Leave(leave_request)),
                            };
                            let _ = send(&mut sink, encode(&response, encoding)).await;
                        }
                        let _ = send(&mut sink, close(CloseCode::Normal, "")).await;
                        return;
                    }
                    None => return,
                }
            }
            _ = liveness.tick() => {
                if last_heard.elapsed() > ping_timeout {
                    debug!(?key, "no signal message within ping timeout");
                    let _ = send(&mut sink, encode(&leave(DisconnectReason::SignalClose), encoding)).await;
                    let _ = send(&mut sink, close(CloseCode::Normal, "ping timeout")).await;
                    room.remove(DisconnectReason::SignalClose);
                    return;
                }
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
