//! The I/O around the sans-IO media core: one OS thread per shard, each owning
//! its [`Shard`] outright (no lock on the media path), and one UDP receive
//! thread that hands each datagram to the shard owning its session.
//!
//! Routing a datagram to a shard costs no lookup shared with other threads: the
//! first STUN packet of a session carries a ufrag whose first two hex digits
//! name the shard; the receive thread remembers the remote address from then on.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relais_media::{JoinError, JoinParams, MediaConfig, ParticipantKey, Shard, ShardOutput};
use relais_proto::livekit::{DisconnectReason, LeaveRequest, SignalRequest, SignalResponse};
use str0m::net::Protocol;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};
use tracing::{debug, error, info};

use crate::events::EventSinks;

/// What a shard sends to a participant's WebSocket task.
#[derive(Debug)]
pub enum ToSignal {
    Message(Box<SignalResponse>),
    /// Send the leave (if any) and close.
    Close(Option<LeaveRequest>),
}

/// Work for a shard thread.
enum Command {
    Datagram {
        source: SocketAddr,
        destination: SocketAddr,
        data: Vec<u8>,
    },
    Join {
        room: String,
        create: bool,
        params: Box<JoinParams>,
        signal: tokio_mpsc::UnboundedSender<ToSignal>,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    Signal(ParticipantKey, Box<SignalRequest>),
    Remove(ParticipantKey, DisconnectReason),
    /// A room API operation, run on the shard thread; it replies on its own oneshot.
    Admin(AdminTask),
}

/// See [`Command::Admin`]: gets the shard, the time and the Unix time in ms.
type AdminTask = Box<dyn FnOnce(&mut Shard, Instant, i64) + Send>;

/// Handle to all shards; cheap to clone.
#[derive(Clone)]
pub struct Shards {
    senders: Arc<Vec<mpsc::Sender<Command>>>,
    next_key: Arc<AtomicU64>,
}

impl Shards {
    /// Start `count` shard threads and the UDP receive thread on `socket`.
    /// Room events go to `events` (webhooks), from the shard threads.
    pub fn start(
        count: usize,
        config: MediaConfig,
        socket: UdpSocket,
        events: EventSinks,
    ) -> io::Result<Shards> {
        let socket = Arc::new(socket);
        let local = socket.local_addr()?;
        let mut senders = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::channel();
            let shard = Shard::new(index as u8, config.clone());
            let socket = socket.clone();
            let events = events.clone();
            std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || run_shard(shard, rx, socket, events))?;
            senders.push(tx);
        }
        let shards = Shards {
            senders: Arc::new(senders),
            next_key: Arc::new(AtomicU64::new(1)),
        };
        let receiver = shards.clone();
        std::thread::Builder::new()
            .name("udp-recv".into())
            .spawn(move || receiver.receive_loop(&socket, local))?;
        Ok(shards)
    }

    /// The shard that owns `room`: a stable hash, so every join meets the same room.
    pub(crate) fn shard_for_room(&self, room: &str) -> usize {
        // FNV-1a: stable across processes and versions, unlike the std hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in room.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % self.senders.len() as u64) as usize
    }

    pub fn new_participant_key(&self) -> ParticipantKey {
        ParticipantKey(self.next_key.fetch_add(1, Ordering::Relaxed))
    }

    /// How many shard threads there are.
    pub(crate) fn count(&self) -> usize {
        self.senders.len()
    }

    /// Run `f` on shard `index`'s thread and return its result; `None` if the
    /// thread is gone.
    pub(crate) async fn run_on<R: Send + 'static>(
        &self,
        index: usize,
        f: impl FnOnce(&mut Shard, Instant, i64) -> R + Send + 'static,
    ) -> Option<R> {
        let (reply, answer) = oneshot::channel();
        let task: AdminTask = Box::new(move |shard, now, unix_ms| {
            let _ = reply.send(f(shard, now, unix_ms));
        });
        self.senders.get(index)?.send(Command::Admin(task)).ok()?;
        answer.await.ok()
    }

    /// Join a room; resolves once the JoinResponse is queued on `signal`.
    pub async fn join(
        &self,
        room: &str,
        create: bool,
        params: JoinParams,
        signal: tokio_mpsc::UnboundedSender<ToSignal>,
    ) -> Result<ShardHandle, JoinError> {
        let shard = self.shard_for_room(room);
        let (reply, answer) = oneshot::channel();
        let key = params.key;
        let command = Command::Join {
            room: room.to_string(),
            create,
            params: Box::new(params),
            signal,
            reply,
        };
        if self.senders[shard].send(command).is_err() {
            return Err(JoinError::Closed);
        }
        answer.await.map_err(|_| JoinError::Closed)??;
        Ok(ShardHandle {
            sender: self.senders[shard].clone(),
            key,
        })
    }

    fn receive_loop(&self, socket: &UdpSocket, local: SocketAddr) {
        let mut shard_of_addr: HashMap<SocketAddr, usize> = HashMap::new();
        let mut buf = vec![0u8; 2048];
        loop {
            let (len, source) = match socket.recv_from(&mut buf) {
                Ok(v) => v,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors (port unreachable) surface here on Linux; keep going.
                    debug!(error = %e, "udp receive error");
                    continue;
                }
            };
            let datagram = &buf[..len];
            let shard = match relais_media::stun::local_ufrag(datagram)
                .and_then(|u| u.get(..2))
                .and_then(|hex| usize::from_str_radix(hex, 16).ok())
                .filter(|s| *s < self.senders.len())
            {
                Some(s) => {
                    shard_of_addr.insert(source, s);
                    s
                }
                None => match shard_of_addr.get(&source) {
                    Some(s) => *s,
                    None => continue,
                },
            };
            let command = Command::Datagram {
                source,
                destination: local,
                data: datagram.to_vec(),
            };
            if self.senders[shard].send(command).is_err() {
                error!(shard, "shard thread is gone");
                return;
            }
        }
    }
}

/// A joined participant's way to its shard.
#[derive(Clone)]
pub struct ShardHandle {
    sender: mpsc::Sender<Command>,
    key: ParticipantKey,
}

impl ShardHandle {
    pub fn key(&self) -> ParticipantKey {
        self.key
    }

    pub fn signal(&self, req: SignalRequest) {
        let _ = self.sender.send(Command::Signal(self.key, Box::new(req)));
    }

    pub fn remove(&self, reason: DisconnectReason) {
        let _ = self.sender.send(Command::Remove(self.key, reason));
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn run_shard(
    mut shard: Shard,
    commands: mpsc::Receiver<Command>,
    socket: Arc<UdpSocket>,
    events: EventSinks,
) {
    info!(shard = shard.index(), "shard started");
    let mut signals: HashMap<ParticipantKey, tokio_mpsc::UnboundedSender<ToSignal>> =
        HashMap::new();
    loop {
        let now = Instant::now();
        let wait = shard
            .poll_timeout()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        match commands.recv_timeout(wait) {
            Ok(command) => handle_command(&mut shard, &mut signals, command),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // Drain whatever else is queued before looking at timers.
        while let Ok(command) = commands.try_recv() {
            handle_command(&mut shard, &mut signals, command);
            flush(&mut shard, &mut signals, &socket, &events);
        }
        let now = Instant::now();
        if shard.poll_timeout().is_some_and(|t| t <= now) {
            shard.handle_timeout(now);
        }
        flush(&mut shard, &mut signals, &socket, &events);
    }
}

fn handle_command(
    shard: &mut Shard,
    signals: &mut HashMap<ParticipantKey, tokio_mpsc::UnboundedSender<ToSignal>>,
    command: Command,
) {
    let now = Instant::now();
    match command {
        Command::Datagram {
            source,
            destination,
            data,
        } => shard.handle_datagram(now, Protocol::Udp, source, destination, &data),
        Command::Join {
            room,
            create,
            params,
            signal,
            reply,
        } => {
            let key = params.key;
            signals.insert(key, signal);
            let result = shard
                .join(now, unix_ms(), &room, create, *params)
                .map(|_| ());
            if result.is_err() {
                signals.remove(&key);
            }
            let _ = reply.send(result);
        }
        Command::Signal(key, req) => shard.handle_signal(now, key, *req),
        Command::Remove(key, reason) => shard.remove_participant(now, key, reason),
        Command::Admin(task) => task(shard, now, unix_ms()),
    }
}

fn flush(
    shard: &mut Shard,
    signals: &mut HashMap<ParticipantKey, tokio_mpsc::UnboundedSender<ToSignal>>,
    socket: &UdpSocket,
    events: &EventSinks,
) {
    while let Some(out) = shard.poll_output() {
        match out {
            ShardOutput::Transmit(t) => {
                if let Err(e) = socket.send_to(&t.contents, t.destination) {
                    debug!(destination = %t.destination, error = %e, "udp send failed");
                }
            }
            ShardOutput::Signal(key, message) => {
                if let Some(tx) = signals.get(&key) {
                    let _ = tx.send(ToSignal::Message(message));
                }
            }
            ShardOutput::Disconnect(key, leave) => {
                if let Some(tx) = signals.remove(&key) {
                    let _ = tx.send(ToSignal::Close(leave));
                }
            }
            ShardOutput::Event { room, event } => {
                debug!(%room, ?event, "room event");
                events.room_event(shard, &room, &event);
            }
            ShardOutput::RoomClosed(room) => {
                debug!(%room, "room closed");
            }
        }
    }
}
