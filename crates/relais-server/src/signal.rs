//! One participant's signal WebSocket: decodes `SignalRequest`s for the room,
//! answers pings itself (they never reach the room), and writes the room's
//! `SignalResponse`s in the encoding of the last frame the client sent.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{Sink, Stream, StreamExt};
use prost::Message as _;
use relais_proto::livekit::{
    leave_request, signal_request, signal_response, DisconnectReason, LeaveRequest, Pong,
    SignalRequest, SignalResponse,
};
use tokio::sync::mpsc::UnboundedReceiver;
// The runtime's clock, which tests can pause and advance.
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};
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

/// A room's message on its way to a participant's connection. A broadcast
/// (a batch of participant updates, the active speakers) goes to every
/// participant of the room as one `SignalResponse`; its protobuf encoding is
/// made once, by the first connection to write it, and the others send the
/// same bytes: a room of 700 encodes each update once, not 700 times. A
/// join response comes encoded by the room ([`OutgoingSignal::encoded`]).
#[derive(Debug)]
pub struct OutgoingSignal(Form);

#[derive(Debug)]
enum Form {
    /// A message, encoded in protobuf by the first connection to write it.
    Message {
        response: Arc<SignalResponse>,
        protobuf: OnceLock<Bytes>,
    },
    /// A message the room handed over encoded.
    Encoded(Bytes),
}

impl OutgoingSignal {
    /// `response` for its next recipient: the `last` one made if it carries
    /// the same message (the room lists a broadcast's recipients one after
    /// another), else a new one, which becomes the last.
    pub fn share(last: &mut Option<Arc<Self>>, response: Arc<SignalResponse>) -> Arc<Self> {
        match last {
            Some(shared) if shared.carries(&response) => Arc::clone(shared),
            _ => Arc::clone(last.insert(Arc::new(Self(Form::Message {
                response,
                protobuf: OnceLock::new(),
            })))),
        }
    }

    /// A message the room encoded itself (a join response).
    pub fn encoded(protobuf: Vec<u8>) -> Self {
        Self(Form::Encoded(protobuf.into()))
    }

    fn carries(&self, response: &Arc<SignalResponse>) -> bool {
        matches!(&self.0, Form::Message { response: own, .. } if Arc::ptr_eq(own, response))
    }

    fn encode(&self, encoding: Encoding) -> Message {
        match (&self.0, encoding) {
            (Form::Message { response, protobuf }, Encoding::Protobuf) => Message::Binary(
                protobuf
                    .get_or_init(|| response.encode_to_vec().into())
                    .clone(),
            ),
            (Form::Message { response, .. }, Encoding::Json) => encode(response, encoding),
            (Form::Encoded(bytes), Encoding::Protobuf) => Message::Binary(bytes.clone()),
            (Form::Encoded(bytes), Encoding::Json) => match SignalResponse::decode(bytes.clone()) {
                Ok(response) => encode(&response, encoding),
                Err(_) => Message::Binary(bytes.clone()),
            },
        }
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
            Some(ToSignal::Message(outgoing)) => Step::Send(outgoing.encode(self.encoding)),
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

    /// When the connection is dead unless the client is heard before.
    fn deadline(&self) -> Instant {
        self.last_heard + self.ping_timeout
    }

    /// At the deadline: the end of the connection, or `Continue` if the
    /// client was heard since the deadline was set (then it moves on).
    fn liveness(&self) -> Step {
        if Instant::now() < self.deadline() {
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
///
/// A client that sends nothing for `ping_timeout` is gone: one timer per
/// connection, set for that deadline and moved on when it fires early
/// (a client pings every `ping_interval`, a third of the timeout), so that
/// a live connection costs a timer wake-up per timeout, not one a second.
pub async fn run<S>(
    socket: S,
    room: ShardHandle,
    mut from_room: UnboundedReceiver<ToSignal>,
    ping_timeout: Duration,
) where
    S: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + Unpin,
{
    let (mut sink, mut stream) = socket.split();
    let mut connection = Connection {
        key: room.key(),
        encoding: Encoding::Protobuf,
        last_heard: Instant::now(),
        ping_timeout,
    };
    let deadline = tokio::time::sleep_until(connection.deadline());
    tokio::pin!(deadline);
    loop {
        let step = tokio::select! {
            incoming = stream.next() => connection.incoming(incoming, &room),
            outgoing = from_room.recv() => connection.outgoing(outgoing),
            () = &mut deadline => {
                deadline.as_mut().reset(connection.deadline());
                connection.liveness()
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;
    use relais_media::ParticipantKey;
    use relais_proto::livekit::signal_request;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    const TIMEOUT: Duration = Duration::from_secs(15);

    fn update(identity: &str) -> Arc<SignalResponse> {
        Arc::new(SignalResponse {
            message: Some(signal_response::Message::Update(
                relais_proto::livekit::ParticipantUpdate {
                    participants: vec![relais_proto::livekit::ParticipantInfo {
                        identity: identity.into(),
                        ..Default::default()
                    }],
                },
            )),
        })
    }

    fn payload(message: Message) -> Bytes {
        match message {
            Message::Binary(bytes) => bytes,
            other => panic!("not binary: {other:?}"),
        }
    }

    /// A broadcast's recipients share one encoding; the next message gets
    /// its own, and a JSON connection still gets text.
    #[test]
    fn a_broadcast_is_encoded_once_for_all_its_recipients() {
        let (broadcast, next) = (update("alice"), update("bob"));
        let mut last = None;
        let first = OutgoingSignal::share(&mut last, Arc::clone(&broadcast));
        let second = OutgoingSignal::share(&mut last, Arc::clone(&broadcast));
        assert!(Arc::ptr_eq(&first, &second));
        let (a, b) = (
            payload(first.encode(Encoding::Protobuf)),
            payload(second.encode(Encoding::Protobuf)),
        );
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "the same bytes, not a second encoding"
        );
        assert_eq!(SignalResponse::decode(a).unwrap(), *broadcast);

        let other = OutgoingSignal::share(&mut last, Arc::clone(&next));
        assert!(!Arc::ptr_eq(&other, &first));
        assert_eq!(
            SignalResponse::decode(payload(other.encode(Encoding::Protobuf))).unwrap(),
            *next
        );
        match first.encode(Encoding::Json) {
            Message::Text(text) => assert!(text.as_str().contains("alice")),
            other => panic!("not text: {other:?}"),
        }
    }

    /// A message the room encoded goes out as its bytes, and as JSON to a
    /// client that speaks JSON.
    #[test]
    fn an_encoded_message_is_sent_as_is_or_as_json() {
        let bytes = update("carol").encode_to_vec();
        let outgoing = OutgoingSignal::encoded(bytes.clone());
        assert_eq!(payload(outgoing.encode(Encoding::Protobuf)), bytes);
        match outgoing.encode(Encoding::Json) {
            Message::Text(text) => assert!(text.as_str().contains("carol")),
            other => panic!("not text: {other:?}"),
        }
    }

    fn ping(at: i64) -> Message {
        let request = SignalRequest {
            message: Some(signal_request::Message::Ping(at)),
        };
        Message::Binary(request.encode_to_vec().into())
    }

    /// A connection the client keeps alive with pings lives on; once the
    /// client goes silent it ends at the timeout after the last message
    /// heard, with a leave and a close, and the participant is removed.
    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_gone_at_the_timeout_and_a_pinging_one_stays() {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let (room, removed) = ShardHandle::detached(ParticipantKey(7));
        let (_to_signal, from_room) = tokio::sync::mpsc::unbounded_channel();
        let served = tokio::spawn(run(server, room, from_room, TIMEOUT));

        // Pings every 5 s for a minute, each answered with a pong.
        for i in 0..12 {
            client.send(ping(i)).await.unwrap();
            let Some(Ok(Message::Binary(reply))) = client.next().await else {
                panic!("no pong");
            };
            let reply = SignalResponse::decode(reply.as_ref()).unwrap();
            assert!(matches!(
                reply.message,
                Some(signal_response::Message::Pong(_))
            ));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        assert!(!served.is_finished());
        assert_eq!(removed(), None);

        // Silence from here: the last message was heard 5 s ago.
        let silent_since = Instant::now() - Duration::from_secs(5);
        let Some(Ok(Message::Binary(leave))) = client.next().await else {
            panic!("no leave");
        };
        let gone_after = Instant::now() - silent_since;
        assert!(
            gone_after >= TIMEOUT && gone_after < TIMEOUT + Duration::from_millis(10),
            "ended {gone_after:?} after the last message"
        );
        let leave = SignalResponse::decode(leave.as_ref()).unwrap();
        assert!(matches!(
            leave.message,
            Some(signal_response::Message::Leave(_))
        ));
        assert!(matches!(client.next().await, Some(Ok(Message::Close(_)))));
        served.await.unwrap();
        assert_eq!(removed(), Some(DisconnectReason::SignalClose));
    }
}
