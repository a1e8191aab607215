//! The I/O around the sans-IO media core: one OS thread per shard, each owning
//! its [`Shard`] outright (no lock on the media path). Both directions use the
//! UDP sockets in batches ([`crate::udp`]). Datagrams reach a shard one of two
//! ways ([`UdpSockets`]):
//!
//! - **one port for the node**: a UDP receive thread hands datagrams, in
//!   batches, to the shards owning their sessions. Routing costs no lookup
//!   shared with other threads: the first STUN packet of a session carries a
//!   ufrag whose first two hex digits name the shard; the receive thread
//!   remembers the remote address from then on.
//! - **one port per shard** (`rtc.udp_port` a range): each shard advertises its
//!   own port and reads its own socket; nothing is handed between threads,
//!   which saves a wake-up of the receive thread and one of the shard per batch.
//!
//! ICE-TCP connections ([`crate::tcp`]) are routed like the shared port's
//! datagrams, once, by their first frame, and hand their frames to the shards'
//! queues.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel as channel;
use crossbeam_queue::ArrayQueue;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::metrics::gauge;
use relais_media::outgoing::Outgoing;
use relais_media::{
    JoinError, JoinParams, MediaConfig, ParticipantKey, RoomId, Shard, ShardOutput,
};
use relais_proto::livekit::{DisconnectReason, LeaveRequest, SignalRequest};
use str0m::net::Protocol;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};
use tracing::{debug, error, info, warn, Span};

use crate::doorbell::Doorbell;
use crate::events::EventSinks;
use crate::fan_out::{FanOutCounts, FanOutPool, ThreadedDriver};
use crate::metrics::{self, ReceiveMetrics, ShardMetrics};
use crate::node::NodeState;
use crate::room_directory::RoomDirectory;
use crate::shedding::{Admission, LoadShedding};
use crate::signal::OutgoingSignal;
use crate::tcp::TcpLink;
use crate::udp;

/// What a shard sends to a participant's WebSocket task.
#[derive(Debug)]
pub enum ToSignal {
    Message(Arc<OutgoingSignal>),
    /// Send the leave (if any) and close. Boxed: the channel's slots are all
    /// the size of the largest message, and each connection keeps a block of 32.
    Close(Option<Box<LeaveRequest>>),
}

/// Work for a shard thread.
enum Command {
    Join {
        room: String,
        create: bool,
        params: Box<JoinParams>,
        signal: tokio_mpsc::UnboundedSender<ToSignal>,
        /// The participant's span (`room{..}:participant{..}`) once admitted,
        /// or the shard that hosts the room (see [`RoomDirectory`]).
        reply: oneshot::Sender<Result<Result<Span, JoinError>, usize>>,
    },
    Signal(ParticipantKey, Box<SignalRequest>),
    Remove(ParticipantKey, DisconnectReason),
    /// A room API operation, run on the shard thread; it replies on its own oneshot.
    Admin(AdminTask),
}

/// One received datagram (or ICE-TCP frame) on its way to a shard. `data`
/// comes from, and goes back to, the node's [`Pool`] (or, for a shard that
/// reads its own socket, the shard's spare buffers): the media path
/// allocates nothing per packet.
pub(crate) struct Datagram {
    pub proto: Protocol,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub data: Vec<u8>,
    /// When the receive thread got it (forward latency).
    pub received: Instant,
    /// With the first frame of an ICE-TCP connection: its write side, so that
    /// the shard knows it before it answers that frame.
    pub opened: Option<TcpLink>,
}

/// The datagrams of one `recvmmsg` that belong to one shard: one channel
/// message, and at most one wake-up, per shard per system call.
type Batch = VecDeque<Datagram>;

/// Datagrams a shard may have queued before the receive thread drops more for
/// it: a stalled shard loses its own packets instead of stalling the others.
const SHARD_DATAGRAM_QUEUE: usize = 8192;
/// RTP and RTCP older than this when their shard gets to them are skipped: a
/// shard that fell behind sheds the fan-out of media nobody can play any more
/// (and feedback about it that is as late) and catches up, instead of
/// forwarding everything seconds late. STUN and DTLS (handshakes, consent,
/// data channels) are always handled, so connections survive the overload.
const STALE_MEDIA_AFTER: Duration = Duration::from_millis(300);
/// Longer than any datagram can have waited in a socket: an arrival stamp
/// further back means the wall clock moved, and is ignored.
const MAX_SOCKET_WAIT: Duration = Duration::from_secs(60);
/// Work items a shard handles before it looks at its timers again.
const MAX_BATCH: usize = 256;
/// Longest a shard's round spends on rooms' timers and what they output
/// (rooms left over run in the next rounds). Rooms' timers tend to come due
/// together — at the same period, and once handled in one round, handed the
/// same `now` — and 55 meetings' timers driven at once took 4–14 ms here,
/// held up every packet queued behind them and made most of the forward
/// latency's p99. At 1 ms, 90 meetings' rounds still spent up to the whole
/// budget on timers (publishers share a 5 ms timer grid) while datagrams
/// waited in the socket.
const TIMER_BUDGET: Duration = Duration::from_micros(250);
/// Longest a shard spends on commands (joins, signal messages, departures)
/// while datagrams wait: the datagrams at hand go before the next command.
/// Commands go first otherwise, and most take 30–250 µs; but a wave of joins
/// queues them by the dozen (19–30 joins, answers and offers back to back,
/// 8–11 ms, with 150 meetings joining over 5 s) and a large room's departure
/// by the hundred (256 leaves, 20–32 ms), and every other room's media on the
/// shard waited behind them. A turn bounds that wait; a single long command
/// (one leave of a room of 400 took 10 ms) is not cut.
const COMMAND_TURN: Duration = Duration::from_micros(500);
/// How long the copies a round forwarded may wait behind its timer work
/// before they are sent on their own: short timer work (most rounds) goes
/// out with them in one `sendmmsg`; long work does not hold them back.
const TIMER_HOLDS_COPIES: Duration = Duration::from_micros(50);
/// Receive buffers kept for reuse.
const BUFFER_POOL: usize = 16384;
/// Receive buffers a shard that reads its own socket keeps for itself: what
/// one read and the batch being handled hold, so that its datagrams' buffers
/// go round without touching the node's shared pool.
const OWN_SPARE_BUFFERS: usize = 2 * udp::BATCH;
/// Empty batches kept for reuse.
const BATCH_POOL: usize = 1024;
/// Larger than any datagram WebRTC sends (str0m keeps to ~1200 bytes).
pub(crate) const RECEIVE_BUFFER: usize = 2048;

/// See [`Command::Admin`]: gets the shard, the time and the Unix time in ms.
type AdminTask = Box<dyn FnOnce(&mut Shard, Instant, i64) + Send>;

/// Receive buffers and batches, taken by the receive thread (and ICE-TCP
/// connections) and given back by the shards. Lock-free; once warm, nothing is
/// allocated per packet.
struct Pool {
    buffers: ArrayQueue<Vec<u8>>,
    batches: ArrayQueue<Batch>,
}

impl Pool {
    fn buffer(&self) -> Vec<u8> {
        self.buffers
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(RECEIVE_BUFFER))
    }

    fn batch(&self) -> Batch {
        self.batches.pop().unwrap_or_default()
    }

    fn recycle_buffer(&self, buffer: Vec<u8>) {
        // A full pool drops the buffer: the pool only bounds allocation, not memory.
        let _ = self.buffers.push(buffer);
    }

    /// Give back a batch and the buffers still in it.
    fn recycle_batch(&self, mut batch: Batch) {
        for datagram in batch.drain(..) {
            self.recycle_buffer(datagram.data);
        }
        let _ = self.batches.push(batch);
    }
}

/// The producers' end (the UDP receive thread, ICE-TCP connections) of one
/// shard's datagram queue. The queue is bounded in datagrams (not batches,
/// whose sizes vary): `queued` is raised here and lowered by the shard as it
/// takes batches.
struct DatagramQueue {
    batches: channel::Sender<Batch>,
    queued: Arc<AtomicUsize>,
    /// Rung after each batch when the shard sleeps on its own socket.
    doorbell: Option<Arc<Doorbell>>,
}

impl DatagramQueue {
    /// Hand `batch` to the shard; gives it back if the shard is too far behind.
    fn offer(&self, batch: Batch) -> Result<(), channel::TrySendError<Batch>> {
        let len = batch.len();
        // Reserve, then check: with several producers (the UDP receive thread
        // and ICE-TCP connections) the bound is never exceeded.
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > SHARD_DATAGRAM_QUEUE {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return Err(channel::TrySendError::Full(batch));
        }
        self.batches.try_send(batch).inspect_err(|_| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
        })?;
        if let Some(doorbell) = &self.doorbell {
            doorbell.ring();
        }
        Ok(())
    }
}

/// The way in for a shard's commands.
#[derive(Clone)]
struct CommandQueue {
    commands: channel::Sender<Command>,
    /// Rung after each command when the shard sleeps on its own socket.
    doorbell: Option<Arc<Doorbell>>,
}

impl CommandQueue {
    /// Queue `command`; false if the shard thread is gone.
    fn send(&self, command: Command) -> bool {
        let sent = self.commands.send(command).is_ok();
        if let Some(doorbell) = &self.doorbell {
            doorbell.ring();
        }
        sent
    }
}

/// The node's media UDP sockets (see the module's documentation).
pub enum UdpSockets {
    /// One socket for every shard, read by a receive thread.
    Shared(UdpSocket),
    /// One socket per shard, in shard order.
    PerShard(Vec<UdpSocket>),
}

/// Handle to all shards; cheap to clone.
#[derive(Clone)]
pub struct Shards {
    senders: Arc<Vec<CommandQueue>>,
    datagrams: Arc<Vec<DatagramQueue>>,
    pool: Arc<Pool>,
    next_key: Arc<AtomicU64>,
    /// Liveness, readiness and draining, fed by the shard threads' heartbeats.
    node: Arc<NodeState>,
    /// Which shard hosts which room.
    directory: Arc<RoomDirectory>,
}

/// What a shard thread shares with the rest of the node.
struct ShardContext {
    events: EventSinks,
    node: Arc<NodeState>,
    directory: Arc<RoomDirectory>,
    /// `limit.shard_busy_fraction` (0 = none).
    busy_limit: f64,
}

impl Shards {
    /// Start a shard thread per config (each config holds its shard's ICE
    /// candidates) on `sockets`; with a shared socket, also the UDP receive
    /// thread. Room events go to `events` (webhooks), from the shard threads.
    /// With `fan_out`, a shard drives a large room's sessions on those
    /// helper threads too ([`crate::fan_out`]).
    pub fn start(
        configs: Vec<MediaConfig>,
        sockets: UdpSockets,
        events: EventSinks,
        busy_limit: f64,
        fan_out: Option<Arc<FanOutPool>>,
    ) -> io::Result<Shards> {
        let count = configs.len();
        // Per shard: the socket it sends on, and whether it reads it itself.
        let (shard_sockets, shared) = match sockets {
            UdpSockets::Shared(socket) => {
                let socket = Arc::new(socket);
                (vec![socket.clone(); count], Some(socket))
            }
            UdpSockets::PerShard(sockets) if sockets.len() == count => {
                (sockets.into_iter().map(Arc::new).collect(), None)
            }
            UdpSockets::PerShard(sockets) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} UDP sockets for {count} shards", sockets.len()),
                ))
            }
        };
        let mut senders = Vec::with_capacity(count);
        let mut datagrams = Vec::with_capacity(count);
        let pool = Arc::new(Pool {
            buffers: ArrayQueue::new(BUFFER_POOL),
            batches: ArrayQueue::new(BATCH_POOL),
        });
        let node = Arc::new(NodeState::new(count));
        let directory = Arc::new(RoomDirectory::new(count));
        for (index, (config, socket)) in configs.into_iter().zip(shard_sockets).enumerate() {
            let (tx, rx) = channel::unbounded();
            // Every batch holds a datagram or more, so `queued` is the binding limit.
            let (datagram_tx, datagram_rx) = channel::bounded(SHARD_DATAGRAM_QUEUE);
            let queued = Arc::new(AtomicUsize::new(0));
            // With its own socket, the shard reads it and sleeps on it.
            let own = match shared {
                Some(_) => None,
                None => {
                    socket.set_nonblocking(true)?;
                    Some((socket.local_addr()?, Arc::new(Doorbell::new()?)))
                }
            };
            let doorbell = own.as_ref().map(|(_, doorbell)| doorbell.clone());
            let shard_pool = pool.clone();
            let shard_queued = queued.clone();
            let mut shard = Shard::new(index as u8, config);
            let fan_out_counts = fan_out.as_ref().map(|pool| {
                let (driver, counts) = ThreadedDriver::new(pool.clone(), socket.clone());
                shard.set_session_driver(Box::new(driver));
                counts
            });
            let context = ShardContext {
                events: events.clone(),
                node: node.clone(),
                directory: directory.clone(),
                busy_limit,
            };
            std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || {
                    crate::thread_class::media();
                    let own_socket = own.map(|(local, doorbell)| {
                        OwnSocket::new(socket.clone(), local, doorbell, &shard_pool)
                    });
                    let inbox = Inbox::new(rx, datagram_rx, shard_queued, shard_pool, own_socket);
                    let outbox = Outbox::new(socket, fan_out_counts);
                    run_shard(shard, inbox, outbox, context)
                })?;
            senders.push(CommandQueue {
                commands: tx,
                doorbell: doorbell.clone(),
            });
            datagrams.push(DatagramQueue {
                batches: datagram_tx,
                queued,
                doorbell,
            });
        }
        let shards = Shards {
            senders: Arc::new(senders),
            datagrams: Arc::new(datagrams),
            pool,
            next_key: Arc::new(AtomicU64::new(1)),
            node,
            directory,
        };
        if let Some(socket) = shared {
            let local = socket.local_addr()?;
            let receiver = shards.clone();
            std::thread::Builder::new()
                .name("udp-recv".into())
                .spawn(move || {
                    crate::thread_class::media();
                    let reader = SocketReader::new(socket, local, || receiver.pool.buffer());
                    receiver.receive_loop(reader)
                })?;
        }
        Ok(shards)
    }

    /// Run `attempt` on the shard that hosts `room`, or should host it if
    /// none does. An attempt answers `Err(owner)` when the room turned out to
    /// be on another shard (it closed and reopened meanwhile, or a concurrent
    /// join created it there): it is tried again there. `None` if a shard
    /// thread is gone or the room kept moving.
    pub(crate) async fn on_room_shard<R, Fut>(
        &self,
        room: &str,
        attempt: impl FnMut(usize) -> Fut,
    ) -> Option<R>
    where
        Fut: std::future::Future<Output = Option<Result<R, usize>>>,
    {
        self.directory.on_owner(room, attempt).await
    }

    /// The shard that hosts `room`, or the one a new room would go to.
    pub(crate) fn shard_for_room(&self, room: &str) -> usize {
        self.directory.route(room)
    }

    /// Which shard hosts which room.
    pub(crate) fn directory(&self) -> &Arc<RoomDirectory> {
        &self.directory
    }

    /// The node's health as the shard threads report it.
    pub fn node(&self) -> &Arc<NodeState> {
        &self.node
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
        if !self.senders.get(index)?.send(Command::Admin(task)) {
            return None;
        }
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
        let key = params.key;
        let (shard, joined) = self
            .on_room_shard(room, |shard| {
                let (reply, answer) = oneshot::channel();
                let sent = self.senders[shard].send(Command::Join {
                    room: room.to_string(),
                    create,
                    params: Box::new(params.clone()),
                    signal: signal.clone(),
                    reply,
                });
                async move {
                    if !sent {
                        return None;
                    }
                    Some(answer.await.ok()?.map(|joined| (shard, joined)))
                }
            })
            .await
            .ok_or(JoinError::Closed)?;
        Ok(ShardHandle {
            sender: self.senders[shard].clone(),
            key,
            span: joined?,
        })
    }

    /// A receive buffer from the pool (it goes back once the shard handled it).
    pub(crate) fn buffer(&self) -> Vec<u8> {
        self.pool.buffer()
    }

    /// The shard named by the ufrag of a STUN request, if it is one of ours.
    pub(crate) fn shard_of_stun(&self, packet: &[u8]) -> Option<usize> {
        relais_media::stun::local_ufrag(packet)
            .and_then(|u| u.get(..2))
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .filter(|s| *s < self.senders.len())
    }

    /// Queue one ICE-TCP frame for `shard`; gives it back when the shard's
    /// queue is full (or the shard is gone).
    pub(crate) fn offer_frame(&self, shard: usize, datagram: Datagram) -> Result<(), Datagram> {
        let mut batch = self.pool.batch();
        batch.push_back(datagram);
        self.datagrams[shard].offer(batch).map_err(|e| {
            let mut batch = e.into_inner();
            let datagram = batch.pop_front().expect("pushed above");
            let _ = self.pool.batches.push(batch);
            datagram
        })
    }

    fn receive_loop(&self, mut reader: SocketReader) {
        let mut shard_of_addr = AddressRoutes::default();
        // Wake up now and then to hand over the counters even when idle.
        let _ = reader
            .socket
            .set_read_timeout(Some(metrics::FLUSH_INTERVAL));
        // Per shard, the datagrams of the current system call.
        let mut batches: Vec<Batch> = (0..self.count()).map(|_| self.pool.batch()).collect();
        loop {
            reader.read(
                || self.pool.buffer(),
                |datagram, metrics| match self.route(&mut shard_of_addr, &datagram) {
                    Some(shard) => batches[shard].push_back(datagram),
                    None => {
                        metrics.unroutable += 1;
                        self.pool.recycle_buffer(datagram.data);
                    }
                },
            );
            shard_of_addr.forget_silent(Instant::now());
            for (shard, batch) in batches.iter_mut().enumerate() {
                if batch.is_empty() {
                    continue;
                }
                let batch = std::mem::replace(batch, self.pool.batch());
                match self.datagrams[shard].offer(batch) {
                    Ok(()) => {}
                    Err(channel::TrySendError::Full(batch)) => {
                        reader.metrics.shard_queue_full += batch.len() as u64;
                        self.pool.recycle_batch(batch);
                    }
                    Err(channel::TrySendError::Disconnected(_)) => {
                        error!(shard, "shard thread is gone");
                        return;
                    }
                }
            }
        }
    }

    /// The shard of `datagram`: named by the ufrag of a STUN request, else
    /// the shard its source last sent STUN for.
    fn route(&self, shard_of_addr: &mut AddressRoutes, datagram: &Datagram) -> Option<usize> {
        match self.shard_of_stun(&datagram.data) {
            Some(shard) => {
                shard_of_addr.learn(datagram.source, shard, datagram.received);
                Some(shard)
            }
            None => shard_of_addr.shard_of(datagram.source),
        }
    }
}

/// How long an address keeps its shard without a STUN request: a connected
/// client checks consent with one every few seconds, and stops sending
/// after 30 s without consent (RFC 7675), so an address silent for this long
/// belongs to no live session.
const ADDRESS_ROUTE_TTL: Duration = Duration::from_secs(60);

/// The shard each remote address last sent STUN for, on the shared receive
/// thread. Addresses silent for [`ADDRESS_ROUTE_TTL`] are forgotten: every
/// peer connection brings a new one (a client's port), and the map grew by
/// two entries a join for as long as the node ran (seen after a churn run).
#[derive(Default)]
struct AddressRoutes {
    shards: HashMap<SocketAddr, (usize, Instant)>,
    /// When silent addresses were last looked for.
    swept: Option<Instant>,
}

impl AddressRoutes {
    fn learn(&mut self, source: SocketAddr, shard: usize, at: Instant) {
        self.shards.insert(source, (shard, at));
    }

    fn shard_of(&self, source: SocketAddr) -> Option<usize> {
        self.shards.get(&source).map(|&(shard, _)| shard)
    }

    /// Drop the addresses no STUN came from for the TTL; a pass over the map
    /// at most once a tenth of the TTL.
    fn forget_silent(&mut self, now: Instant) {
        let step = ADDRESS_ROUTE_TTL / 10;
        if self
            .swept
            .is_some_and(|at| now.saturating_duration_since(at) < step)
        {
            return;
        }
        self.swept = Some(now);
        self.shards
            .retain(|_, &mut (_, at)| now.saturating_duration_since(at) < ADDRESS_ROUTE_TTL);
    }
}

/// Reads a UDP socket, [`udp::BATCH`] datagrams per system call, into pool
/// buffers, and counts what it reads.
struct SocketReader {
    socket: Arc<UdpSocket>,
    /// The socket's own address: the datagrams' destination.
    local: SocketAddr,
    receiver: udp::Receiver,
    metrics: ReceiveMetrics,
}

impl SocketReader {
    /// Built on the thread that reads: the receiver's headers hold raw pointers.
    fn new(socket: Arc<UdpSocket>, local: SocketAddr, fresh: impl FnMut() -> Vec<u8>) -> Self {
        SocketReader {
            local,
            socket,
            receiver: udp::Receiver::new(fresh),
            metrics: ReceiveMetrics::new(Instant::now()),
        }
    }

    /// One `recvmmsg` (it blocks as the socket does): each datagram goes to
    /// `deliver`, its buffer replaced by one from `fresh`. Returns how many.
    fn read(
        &mut self,
        mut fresh: impl FnMut() -> Vec<u8>,
        mut deliver: impl FnMut(Datagram, &mut ReceiveMetrics),
    ) -> usize {
        let result = self.receiver.receive(&self.socket);
        let read_at = Instant::now();
        let wall_clock = SystemTime::now();
        self.metrics.syscalls += 1;
        self.metrics.flush_if_due(read_at);
        let count = match result {
            Ok(count) => count,
            Err(e) => {
                let quiet = matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                );
                if !quiet {
                    // ICMP errors (port unreachable) surface here on Linux; keep going.
                    debug!(error = %e, "udp receive error");
                }
                return 0;
            }
        };
        for i in 0..count {
            self.metrics.datagrams += 1;
            self.metrics.bytes += self.receiver.datagram(i).len() as u64;
            let Some(source) = self.receiver.source(i) else {
                self.metrics.unroutable += 1;
                continue;
            };
            // The kernel's arrival stamp: how long the datagram waited in the
            // socket counts toward its age (stale media, forward latency).
            let waited = self
                .receiver
                .arrival(i)
                .and_then(|arrival| wall_clock.duration_since(arrival).ok())
                .filter(|w| *w < MAX_SOCKET_WAIT)
                .unwrap_or_default();
            let datagram = Datagram {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                data: self.receiver.take(i, fresh()),
                received: read_at.checked_sub(waited).unwrap_or(read_at),
                opened: None,
            };
            deliver(datagram, &mut self.metrics);
        }
        count
    }
}

/// A shard's own UDP socket (one port per shard, non-blocking): read without
/// waiting while the shard works, slept on with the doorbell when it has
/// nothing to do.
struct OwnSocket {
    reader: SocketReader,
    doorbell: Arc<Doorbell>,
    /// Which of the socket and the queue to look at first next time.
    socket_first: bool,
    /// The last read emptied the socket (it returned fewer datagrams than it
    /// asked for, which `recvmmsg` does only when no more were queued): it is
    /// not read again until `ppoll` says it is readable. At light load a wake-up
    /// brings one datagram; without this the round would end with a second
    /// read that finds nothing, a system call per wake-up for no datagram.
    /// Nor is the socket read after a sleep that a ring or the timeout ended
    /// with it still empty.
    drained: bool,
    /// Buffers of handled datagrams, for the next reads (see [`OWN_SPARE_BUFFERS`]).
    spare: Vec<Vec<u8>>,
}

impl OwnSocket {
    /// Built on the shard's thread (see [`SocketReader::new`]).
    fn new(
        socket: Arc<UdpSocket>,
        local: SocketAddr,
        doorbell: Arc<Doorbell>,
        pool: &Pool,
    ) -> Self {
        OwnSocket {
            reader: SocketReader::new(socket, local, || pool.buffer()),
            doorbell,
            socket_first: false,
            drained: false,
            spare: Vec::with_capacity(OWN_SPARE_BUFFERS),
        }
    }
}

/// A joined participant's way to its shard.
#[derive(Clone)]
pub struct ShardHandle {
    sender: CommandQueue,
    key: ParticipantKey,
    span: Span,
}

impl ShardHandle {
    /// The participant's span in the media core: `room{room, room_sid}:
    /// participant{participant, participant_sid}`.
    pub fn span(&self) -> &Span {
        &self.span
    }

    pub fn key(&self) -> ParticipantKey {
        self.key
    }

    pub fn signal(&self, req: SignalRequest) {
        self.sender.send(Command::Signal(self.key, Box::new(req)));
    }

    pub fn remove(&self, reason: DisconnectReason) {
        self.sender.send(Command::Remove(self.key, reason));
    }
}

#[cfg(test)]
impl ShardHandle {
    /// A handle to no shard, for tests: returns it and a way to read why the
    /// participant was removed through it, once it was.
    pub(crate) fn detached(
        key: ParticipantKey,
    ) -> (ShardHandle, impl Fn() -> Option<DisconnectReason>) {
        let (commands, queue) = channel::unbounded();
        let handle = ShardHandle {
            sender: CommandQueue {
                commands,
                doorbell: None,
            },
            key,
            span: Span::none(),
        };
        let removed = move || {
            queue.try_iter().find_map(|command| match command {
                Command::Remove(_, reason) => Some(reason),
                _ => None,
            })
        };
        (handle, removed)
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a shard thread reads: control commands, and batches of datagrams
/// whose buffers it returns to the pool once handled.
struct Inbox {
    commands: channel::Receiver<Command>,
    datagrams: channel::Receiver<Batch>,
    /// Datagrams queued for this shard (see [`DatagramQueue`]).
    queued: Arc<AtomicUsize>,
    /// The batch being worked through, front first.
    current: Batch,
    pool: Arc<Pool>,
    /// With one port per shard: the shard's socket, read here.
    own_socket: Option<OwnSocket>,
    /// When the commands handled back to back since the last datagram began.
    command_turn: Option<Instant>,
    /// A turn of commands ran out ([`COMMAND_TURN`]): the datagrams at hand
    /// go before the next command.
    datagrams_first: bool,
}

enum Work {
    Command(Command),
    Datagram(Datagram),
}

impl Inbox {
    fn new(
        commands: channel::Receiver<Command>,
        datagrams: channel::Receiver<Batch>,
        queued: Arc<AtomicUsize>,
        pool: Arc<Pool>,
        own_socket: Option<OwnSocket>,
    ) -> Self {
        Inbox {
            commands,
            datagrams,
            queued,
            current: Batch::new(),
            pool,
            own_socket,
            command_turn: None,
            datagrams_first: false,
        }
    }

    /// The next piece of work, waiting at most `wait`; `Err` once every sender is gone.
    fn next(&mut self, wait: Duration) -> Result<Option<Work>, ()> {
        if let Some(work) = self.try_next() {
            return Ok(Some(work));
        }
        if let Some(own) = &mut self.own_socket {
            let (commands, datagrams) = (&self.commands, &self.datagrams);
            let readable = own.doorbell.sleep(&own.reader.socket, wait, || {
                !commands.is_empty() || !datagrams.is_empty()
            });
            own.drained = !readable;
            return match self.commands.try_recv() {
                Ok(command) => Ok(Some(Work::Command(command))),
                Err(channel::TryRecvError::Disconnected) => Err(()),
                Err(channel::TryRecvError::Empty) => Ok(self.try_next()),
            };
        }
        channel::select! {
            recv(self.datagrams) -> batch => Ok(batch.ok().and_then(|b| {
                self.start(b);
                self.current.pop_front().map(Work::Datagram)
            })),
            recv(self.commands) -> c => c.map(|c| Some(Work::Command(c))).map_err(|_| ()),
            default(wait) => Ok(None),
        }
    }

    /// Work already queued, without waiting. Commands (signal messages, joins,
    /// API calls) go first, a turn at a time: a shard busy with media must not
    /// leave a participant's offer waiting behind a stream of datagrams, nor a
    /// wave of joins hold every room's media ([`COMMAND_TURN`]).
    fn try_next(&mut self) -> Option<Work> {
        if !self.datagrams_first {
            if let Some(command) = self.next_command() {
                return Some(Work::Command(command));
            }
        }
        self.command_turn = None;
        if self.current.is_empty() {
            // A shard's own socket and its queue (ICE-TCP frames) take turns,
            // so that a busy one never starves the other.
            let socket_first = self.own_socket.as_mut().is_some_and(|own| {
                own.socket_first = !own.socket_first;
                own.socket_first
            });
            if socket_first {
                self.read_own_socket();
            }
            if self.current.is_empty() && !self.take_queued() && !socket_first {
                self.read_own_socket();
            }
        }
        let datagram = self.current.pop_front();
        if self.current.is_empty() {
            // The datagrams at hand are done (or there were none): commands
            // may go first again.
            self.datagrams_first = false;
        }
        match datagram {
            Some(d) => Some(Work::Datagram(d)),
            None => self.next_command().map(Work::Command),
        }
    }

    /// A queued command, counted into the current turn of commands; the one
    /// taken once the turn has lasted [`COMMAND_TURN`] is its last.
    fn next_command(&mut self) -> Option<Command> {
        let command = self.commands.try_recv().ok()?;
        let now = Instant::now();
        let began = *self.command_turn.get_or_insert(now);
        if now.duration_since(began) >= COMMAND_TURN {
            self.datagrams_first = true;
            self.command_turn = None;
        }
        Some(command)
    }

    /// Make the next queued batch the current one; false if none is queued.
    fn take_queued(&mut self) -> bool {
        match self.datagrams.try_recv() {
            Ok(batch) => {
                self.start(batch);
                true
            }
            Err(_) => false,
        }
    }

    /// Fill the (empty) current batch from the shard's own socket, if it has one.
    fn read_own_socket(&mut self) {
        if let Some(own) = self.own_socket.as_mut().filter(|own| !own.drained) {
            let (current, pool, spare) = (&mut self.current, &self.pool, &mut own.spare);
            let count = own.reader.read(
                || spare.pop().unwrap_or_else(|| pool.buffer()),
                |datagram, _| current.push_back(datagram),
            );
            own.drained = count < udp::BATCH;
        }
    }

    /// Give back the buffer of a handled datagram: to the shard's own spare
    /// buffers while they have room, else to the node's pool.
    fn recycle(&mut self, buffer: Vec<u8>) {
        match &mut self.own_socket {
            Some(own) if own.spare.len() < OWN_SPARE_BUFFERS => own.spare.push(buffer),
            _ => self.pool.recycle_buffer(buffer),
        }
    }

    /// Make `batch` the current one (the current one is used up).
    fn start(&mut self, batch: Batch) {
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let used = std::mem::replace(&mut self.current, batch);
        self.pool.recycle_batch(used);
    }
}

/// Sends what a shard queues in its [`Outgoing`], in batches of up to
/// [`udp::BATCH`] datagrams: once a batch has gathered, and whenever the
/// shard is done with a round of work. ICE-TCP packets go to their
/// connection's write queue.
struct Outbox {
    socket: Arc<UdpSocket>,
    sender: udp::Sender,
    /// The write queues of this shard's ICE-TCP connections, by remote address.
    tcp: HashMap<SocketAddr, TcpLink>,
    /// When the media packets whose copies are queued were received, and
    /// the room of each: their forward latency is taken when the queue is
    /// next handed to the kernel ([`Outbox::send`]) — for a room whose turn
    /// was cut, once its last turn is.
    waiting: Vec<(Instant, RoomId)>,
    /// The shard's rooms whose turn was cut, as of the last [`flush`].
    rooms_cut: Vec<RoomId>,
    /// What the shard's session driver sent on its threads, if it has helpers.
    fan_out: Option<Arc<Mutex<FanOutCounts>>>,
}

impl Outbox {
    /// An outbox on the shard's socket, with no TCP connection yet.
    fn new(socket: Arc<UdpSocket>, fan_out: Option<Arc<Mutex<FanOutCounts>>>) -> Self {
        Outbox {
            socket,
            sender: udp::Sender::new(),
            tcp: HashMap::new(),
            waiting: Vec::with_capacity(MAX_BATCH),
            rooms_cut: Vec::new(),
            fan_out,
        }
    }

    /// Send what is queued once it makes a batch.
    fn send_if_full(&mut self, out: &mut Outgoing, metrics: &mut ShardMetrics) {
        if out.len() >= udp::BATCH {
            self.send(out, metrics);
        }
    }

    fn send_tcp(&mut self, destination: SocketAddr, contents: &[u8], metrics: &mut ShardMetrics) {
        let Some(link) = self.tcp.get(&destination) else {
            metrics.tcp_not_connected += 1;
            return;
        };
        match link.try_send(contents.to_vec()) {
            Ok(()) => {}
            Err(tokio_mpsc::error::TrySendError::Full(_)) => metrics.tcp_write_queue_full += 1,
            Err(tokio_mpsc::error::TrySendError::Closed(_)) => {
                metrics.tcp_not_connected += 1;
                self.tcp.remove(&destination);
            }
        }
    }

    /// Forget connections that closed while the shard had nothing to send them.
    fn forget_closed_tcp(&mut self) {
        self.tcp.retain(|_, link| !link.is_closed());
    }

    /// A media packet received at `received` had copies written to
    /// subscribers that leave in this round (those of a video packet that
    /// does not end its frame wait for the frame's last packet, whose own
    /// sample covers them).
    fn forwarded(&mut self, received: Instant, room: RoomId) {
        self.waiting.push((received, room));
    }

    /// Timer work that began at `started` has gone on until `now`: the
    /// copies of media forwarded earlier in the round, if still queued, leave
    /// once it has taken [`TIMER_HOLDS_COPIES`].
    fn timer_work_went_on(
        &mut self,
        started: Instant,
        now: Instant,
        out: &mut Outgoing,
        metrics: &mut ShardMetrics,
    ) {
        if !self.waiting.is_empty() && now.saturating_duration_since(started) >= TIMER_HOLDS_COPIES
        {
            self.send(out, metrics);
        }
    }

    /// Hand the queued datagrams to the kernel. The media packets waiting
    /// had all their copies queued (the session driver's threads send theirs
    /// before the round goes on) unless their room's turn was cut, so the
    /// others have left now: their latency is taken.
    fn send(&mut self, out: &mut Outgoing, metrics: &mut ShardMetrics) {
        if !out.is_empty() {
            if out.has_tcp() {
                for (d, contents) in out.iter() {
                    if d.proto == Protocol::Tcp {
                        self.send_tcp(d.destination, contents, metrics);
                    }
                }
            }
            metrics.sent(self.sender.send(&self.socket, out));
            out.clear();
        }
        if !self.waiting.is_empty() {
            let now = Instant::now();
            let rooms_cut = &self.rooms_cut;
            self.waiting.retain(|&(received, room)| {
                let left = !rooms_cut.contains(&room);
                if left {
                    metrics.forwarded(now.saturating_duration_since(received));
                }
                !left
            });
        }
    }

    /// The end of a round: everything queued is sent.
    fn finish_round(&mut self, out: &mut Outgoing, metrics: &mut ShardMetrics) {
        self.send(out, metrics);
        if let Some(counts) = &self.fan_out {
            if let Ok(mut counts) = counts.lock() {
                metrics.fanned_out(std::mem::take(&mut *counts));
            }
        }
    }
}

fn run_shard(mut shard: Shard, mut inbox: Inbox, mut outbox: Outbox, context: ShardContext) {
    let index = usize::from(shard.index());
    info!(shard = index, "shard started");
    let mut signals: HashMap<ParticipantKey, tokio_mpsc::UnboundedSender<ToSignal>> =
        HashMap::new();
    let mut metrics = ShardMetrics::new(index, Instant::now());
    let mut shedding = LoadShedding::new();
    let mut admission = Admission::new(context.busy_limit);
    gauge!(metrics::SHARD_SHEDDING, "shard" => index.to_string()).set(0.0);
    gauge!(metrics::SHARD_ACCEPTING_JOINS, "shard" => index.to_string()).set(1.0);
    // The last timer round stopped at its budget with rooms still due.
    let mut timer_work_cut = false;
    loop {
        let now = Instant::now();
        context.node.heartbeat(index, now);
        if metrics.due(now) {
            if let Some(shed) = shedding.update(now, metrics.stale_media) {
                if shed {
                    warn!(
                        shard = index,
                        stale = metrics.stale_media,
                        "shard falls behind: shedding load (lowest simulcast layers only, joins refused)"
                    );
                } else {
                    info!(shard = index, "shard keeps up again: shedding stopped");
                }
                shard.set_shedding(now, shed);
                gauge!(metrics::SHARD_SHEDDING, "shard" => index.to_string())
                    .set(f64::from(u8::from(shed)));
            }
            let busy = metrics.busy_fraction(now);
            let changed = admission.update(shedding.is_shedding(), busy);
            context
                .directory
                .report(index, busy, admission.is_accepting());
            if let Some(accepting) = changed {
                if accepting {
                    info!(shard = index, "shard takes joins again");
                } else {
                    warn!(shard = index, busy = %format!("{busy:.2}"), "shard at capacity: joins refused");
                }
                shard.set_accepting_joins(accepting);
                gauge!(metrics::SHARD_ACCEPTING_JOINS, "shard" => index.to_string())
                    .set(f64::from(u8::from(accepting)));
            }
            outbox.forget_closed_tcp();
            if let Some(waited) = crate::thread_class::run_delay() {
                metrics.waited_for_cpu(waited);
            }
            let gauges = metrics.flush(now, shard.take_stats(), shard.gauges());
            context.node.set_load(index, &gauges);
            metrics.worked(now.elapsed());
        }
        // Until the latest the timers allow: a datagram that comes first
        // takes the periodic work along (`poll_timeout` below). Timer work a
        // round's budget cut short goes on at once, as the datagrams'.
        let wake_by = if timer_work_cut {
            Some(now)
        } else {
            shard.wake_by()
        };
        let wait = wake_by
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        let Ok(mut first) = inbox.next(wait) else {
            return;
        };
        let busy_since = Instant::now();
        // Handle it and whatever else is queued, then look at timers.
        // A bounded batch, so that timers (retransmissions, keyframe requests,
        // liveness) still run when the queue never empties.
        for _ in 0..MAX_BATCH {
            let Some(work) = first.take().or_else(|| inbox.try_next()) else {
                break;
            };
            match work {
                Work::Datagram(mut d) => {
                    if let Some(link) = d.opened.take() {
                        outbox.tcp.insert(d.source, link);
                    }
                    let now = Instant::now();
                    let stale = is_rtp_or_rtcp(&d.data)
                        && now.saturating_duration_since(d.received) > STALE_MEDIA_AFTER;
                    if stale {
                        metrics.stale_media += 1;
                    } else {
                        let forwarded =
                            shard.handle_datagram(now, d.proto, d.source, d.destination, &d.data);
                        if let Some(room) = forwarded.room.filter(|_| forwarded.copies > 0) {
                            outbox.forwarded(d.received, room);
                        }
                    }
                    inbox.recycle(d.data);
                }
                Work::Command(command) => {
                    handle_command(&mut shard, &mut signals, &context.directory, command)
                }
            }
            flush(
                &mut shard,
                &mut signals,
                &mut outbox,
                &context,
                &mut metrics,
            );
        }
        let now = Instant::now();
        timer_work_cut = false;
        if shard.poll_timeout().is_some_and(|t| t <= now) {
            let until = now + TIMER_BUDGET;
            shard.handle_timeout_while(now, |shard| {
                flush(shard, &mut signals, &mut outbox, &context, &mut metrics);
                let at = Instant::now();
                outbox.timer_work_went_on(now, at, shard.outgoing(), &mut metrics);
                timer_work_cut = at >= until;
                !timer_work_cut
            });
        }
        flush(
            &mut shard,
            &mut signals,
            &mut outbox,
            &context,
            &mut metrics,
        );
        // Nothing waits in the outbox while the shard sleeps.
        outbox.finish_round(shard.outgoing(), &mut metrics);
        metrics.worked(busy_since.elapsed());
    }
}

/// (S)RTP or (S)RTCP, as opposed to STUN and DTLS: RFC 7983's first byte 128–191.
fn is_rtp_or_rtcp(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| (128..=191).contains(b))
}

fn handle_command(
    shard: &mut Shard,
    signals: &mut HashMap<ParticipantKey, tokio_mpsc::UnboundedSender<ToSignal>>,
    directory: &RoomDirectory,
    command: Command,
) {
    let now = Instant::now();
    let index = usize::from(shard.index());
    match command {
        Command::Join {
            room,
            create,
            params,
            signal,
            reply,
        } => {
            if shard.room(&room).is_none() {
                if let Err(owner) = directory.claim(&room, index) {
                    let _ = reply.send(Err(owner));
                    return;
                }
            }
            let key = params.key;
            signals.insert(key, signal);
            let result = shard
                .join(now, unix_ms(), &room, create, *params)
                .map(|key| {
                    shard
                        .room(&room)
                        .map_or_else(Span::none, |r| Span::clone(&r.span_for(key)))
                });
            if result.is_err() {
                signals.remove(&key);
                if shard.room(&room).is_none() {
                    directory.release(&room, index);
                }
            }
            let _ = reply.send(Ok(result));
        }
        Command::Signal(key, req) => shard.handle_signal(now, key, *req),
        Command::Remove(key, reason) => shard.remove_participant(now, key, reason),
        Command::Admin(task) => task(shard, now, unix_ms()),
    }
}

/// Route the shard's outputs; its datagrams leave once they make a batch.
fn flush(
    shard: &mut Shard,
    signals: &mut HashMap<ParticipantKey, tokio_mpsc::UnboundedSender<ToSignal>>,
    outbox: &mut Outbox,
    context: &ShardContext,
    metrics: &mut ShardMetrics,
) {
    outbox.rooms_cut.clear();
    outbox.rooms_cut.extend_from_slice(shard.rooms_cut());
    outbox.send_if_full(shard.outgoing(), metrics);
    let mut broadcast = None;
    while let Some(out) = shard.poll_output() {
        match out {
            ShardOutput::Signal(key, message) => {
                if let Some(tx) = signals.get(&key) {
                    let outgoing = OutgoingSignal::share(&mut broadcast, message);
                    let _ = tx.send(ToSignal::Message(outgoing));
                }
            }
            ShardOutput::EncodedSignal(key, message) => {
                if let Some(tx) = signals.get(&key) {
                    let outgoing = Arc::new(OutgoingSignal::encoded(message));
                    let _ = tx.send(ToSignal::Message(outgoing));
                }
            }
            ShardOutput::Disconnect(key, leave) => {
                if let Some(tx) = signals.remove(&key) {
                    let _ = tx.send(ToSignal::Close(leave.map(Box::new)));
                }
            }
            ShardOutput::Event { room, event } => {
                debug!(%room, ?event, "room event");
                crate::metrics::room_event(&event);
                context.events.room_event(shard, &room, &event);
            }
            ShardOutput::RoomClosed(room) => {
                debug!(%room, "room closed");
                context.directory.release(&room, usize::from(shard.index()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(pool: &Pool, len: usize, first: u8) -> Batch {
        let mut batch = pool.batch();
        for i in 0..len {
            batch.push_back(Datagram {
                proto: Protocol::Udp,
                source: "192.0.2.1:5000".parse().unwrap(),
                destination: "192.0.2.2:7882".parse().unwrap(),
                data: vec![first + i as u8],
                received: Instant::now(),
                opened: None,
            });
        }
        batch
    }

    #[test]
    fn an_address_silent_for_its_ttl_loses_its_shard() {
        let mut routes = AddressRoutes::default();
        let (quiet, talking): (SocketAddr, SocketAddr) = (
            "127.0.0.1:5001".parse().unwrap(),
            "127.0.0.1:5002".parse().unwrap(),
        );
        let start = Instant::now();
        routes.learn(quiet, 1, start);
        routes.learn(talking, 0, start);
        routes.forget_silent(start);
        assert_eq!(
            (routes.shard_of(quiet), routes.shard_of(talking)),
            (Some(1), Some(0))
        );

        // The talking one sends STUN again half-way; then the TTL runs out
        // for the quiet one only.
        let half = start + ADDRESS_ROUTE_TTL / 2;
        routes.learn(talking, 0, half);
        let later = start + ADDRESS_ROUTE_TTL;
        routes.forget_silent(later);
        assert_eq!(
            (routes.shard_of(quiet), routes.shard_of(talking)),
            (None, Some(0))
        );

        // Passes over the map are spaced: right after one, nothing goes.
        routes.learn(quiet, 1, start);
        routes.forget_silent(later + ADDRESS_ROUTE_TTL / 20);
        assert_eq!(routes.shard_of(quiet), Some(1));
        routes.forget_silent(later + ADDRESS_ROUTE_TTL / 10);
        assert_eq!(routes.shard_of(quiet), None);
    }

    #[test]
    fn only_rtp_and_rtcp_can_be_skipped_as_stale() {
        // VP8 with the marker bit, Opus with an extension, a receiver report.
        assert!(is_rtp_or_rtcp(&[0x80, 0xe0, 0, 1]));
        assert!(is_rtp_or_rtcp(&[0x90, 111, 0, 1]));
        assert!(is_rtp_or_rtcp(&[0x81, 201, 0, 7]));
        // STUN binding request, DTLS handshake and application data, nothing.
        assert!(!is_rtp_or_rtcp(&[0x00, 0x01, 0, 0]));
        assert!(!is_rtp_or_rtcp(&[22, 0xfe, 0xfd]));
        assert!(!is_rtp_or_rtcp(&[23, 0xfe, 0xfd]));
        assert!(!is_rtp_or_rtcp(&[]));
    }

    /// A shard's inbox (with the socket `own` makes, if any) on a small pool,
    /// and the producers' ends of its queues.
    fn inbox_with(
        own: impl FnOnce(&Pool) -> Option<OwnSocket>,
    ) -> (Inbox, DatagramQueue, channel::Sender<Command>) {
        let pool = Arc::new(Pool {
            buffers: ArrayQueue::new(16),
            batches: ArrayQueue::new(16),
        });
        let (command_tx, command_rx) = channel::unbounded();
        let (batch_tx, batch_rx) = channel::bounded(SHARD_DATAGRAM_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let own_socket = own(&pool);
        let queue = DatagramQueue {
            batches: batch_tx,
            queued: queued.clone(),
            doorbell: own_socket.as_ref().map(|own| own.doorbell.clone()),
        };
        let inbox = Inbox::new(command_rx, batch_rx, queued, pool, own_socket);
        (inbox, queue, command_tx)
    }

    /// An inbox whose shard reads its own (non-blocking) socket, bound at the
    /// returned address.
    fn inbox_with_own_socket() -> (Inbox, DatagramQueue, channel::Sender<Command>, SocketAddr) {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        socket.set_nonblocking(true).unwrap();
        let local = socket.local_addr().unwrap();
        let (inbox, queue, command_tx) = inbox_with(|pool| {
            Some(OwnSocket::new(
                socket,
                local,
                Arc::new(Doorbell::new().unwrap()),
                pool,
            ))
        });
        (inbox, queue, command_tx, local)
    }

    #[test]
    fn the_queue_is_bounded_in_datagrams_and_commands_go_first() {
        let (mut inbox, queue, command_tx) = inbox_with(|_| None);
        let pool = inbox.pool.clone();
        let queued = inbox.queued.clone();

        assert!(queue.offer(batch(&pool, 2, 0)).is_ok());
        assert!(queue.offer(batch(&pool, 3, 2)).is_ok());
        // The limit counts datagrams, however they are batched.
        let too_many = batch(&pool, SHARD_DATAGRAM_QUEUE - 4, 0);
        assert!(matches!(
            queue.offer(too_many),
            Err(channel::TrySendError::Full(b)) if b.len() == SHARD_DATAGRAM_QUEUE - 4
        ));
        assert_eq!(queued.load(Ordering::Relaxed), 5);

        let datagram = |inbox: &mut Inbox| match inbox.try_next() {
            Some(Work::Datagram(d)) => d.data[0],
            _ => panic!("expected a datagram"),
        };
        assert_eq!(datagram(&mut inbox), 0);
        // Taking a batch off the queue frees its room at once.
        assert_eq!(queued.load(Ordering::Relaxed), 3);
        // A command that arrives mid-batch goes before the rest of the batch.
        command_tx
            .send(Command::Remove(
                ParticipantKey(1),
                DisconnectReason::ClientInitiated,
            ))
            .unwrap();
        assert!(matches!(inbox.try_next(), Some(Work::Command(_))));
        for expected in 1..5 {
            assert_eq!(datagram(&mut inbox), expected);
        }
        assert!(inbox.try_next().is_none());
        assert_eq!(queued.load(Ordering::Relaxed), 0);
    }
    #[test]
    fn a_long_turn_of_commands_lets_the_datagrams_at_hand_go_next() {
        let (mut inbox, queue, command_tx) = inbox_with(|_| None);
        let pool = inbox.pool.clone();
        assert!(queue.offer(batch(&pool, 3, 0)).is_ok());
        for key in 0..3 {
            command_tx
                .send(Command::Remove(
                    ParticipantKey(key),
                    DisconnectReason::ClientInitiated,
                ))
                .unwrap();
        }
        let next = |inbox: &mut Inbox| match inbox.try_next() {
            Some(Work::Command(_)) => "command".to_string(),
            Some(Work::Datagram(d)) => format!("datagram {}", d.data[0]),
            None => "none".to_string(),
        };
        // Commands first, until handling them has taken a turn's length.
        assert_eq!(next(&mut inbox), "command");
        std::thread::sleep(COMMAND_TURN);
        assert_eq!(next(&mut inbox), "command");
        // Then the batch of datagrams at hand, whole, before the last command.
        assert_eq!(next(&mut inbox), "datagram 0");
        assert_eq!(next(&mut inbox), "datagram 1");
        assert_eq!(next(&mut inbox), "datagram 2");
        assert_eq!(next(&mut inbox), "command");
        assert_eq!(next(&mut inbox), "none");
    }

    #[test]
    fn media_that_waited_in_the_socket_is_old_when_read() {
        let pool = Pool {
            buffers: ArrayQueue::new(16),
            batches: ArrayQueue::new(16),
        };
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        udp::stamp_arrivals(&socket).unwrap();
        let local = socket.local_addr().unwrap();
        let mut reader = SocketReader::new(socket, local, || pool.buffer());
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The kernel starts stamping on arrival a moment after the option is set.
        std::thread::sleep(Duration::from_millis(100));
        let rtp = [0x80, 111, 0, 1];
        // A shard busy elsewhere reads it only after the stale limit: it must
        // be seen as stale, i.e. aged from its arrival, not from the read.
        let mut ages = Vec::new();
        for _ in 0..5 {
            peer.send_to(&rtp, local).unwrap();
            std::thread::sleep(STALE_MEDIA_AFTER + Duration::from_millis(50));
            let mut received = Vec::new();
            assert_eq!(reader.read(|| pool.buffer(), |d, _| received.push(d)), 1);
            let age = received[0].received.elapsed();
            assert!(is_rtp_or_rtcp(&received[0].data));
            if age > STALE_MEDIA_AFTER {
                return;
            }
            ages.push(age);
        }
        panic!("aged from the read, not the arrival: {ages:?}");
    }

    #[test]
    fn own_socket_and_queue_take_turns() {
        let (mut inbox, queue, _command_tx, local) = inbox_with_own_socket();
        let pool = inbox.pool.clone();
        // Two busy sources: frames queued (0, 1, 2), and more datagrams on the
        // socket (100, 101, ...) than one read takes.
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..3u8 {
            assert!(queue.offer(batch(&pool, 1, i)).is_ok());
        }
        let on_socket = udp::BATCH + 6;
        for i in 0..on_socket {
            peer.send_to(&[100 + i as u8], local).unwrap();
        }
        let mut seen = Vec::new();
        while let Ok(Some(Work::Datagram(d))) = inbox.next(Duration::from_millis(200)) {
            seen.push(d.data[0]);
        }
        // One read's worth of the socket, a frame, the rest of the socket, the other frames.
        assert_eq!(seen.len(), on_socket + 3, "{seen:?}");
        assert_eq!(seen[udp::BATCH], 0, "{seen:?}");
        assert_eq!(seen[udp::BATCH + 7..], [1, 2], "{seen:?}");
    }

    #[test]
    fn an_own_socket_shard_recycles_its_buffers_without_the_node_pool() {
        let (mut inbox, _queue, _command_tx, local) = inbox_with_own_socket();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut first_round = Vec::new();
        for round in 0..3u8 {
            for i in 0..5u8 {
                peer.send_to(&[round, i], local).unwrap();
            }
            for i in 0..5u8 {
                let Ok(Some(Work::Datagram(d))) = inbox.next(Duration::from_millis(500)) else {
                    panic!("datagram {i} of round {round} not read");
                };
                assert_eq!(d.data, [round, i]);
                if round == 0 {
                    first_round.push(d.data.as_ptr());
                }
                inbox.recycle(d.data);
            }
            // The handled buffers are the shard's, not the node's.
            assert_eq!(inbox.pool.buffers.len(), 0, "round {round}");
        }
        let spare = &inbox.own_socket.as_ref().unwrap().spare;
        assert!(first_round
            .iter()
            .all(|p| spare.iter().any(|b| b.as_ptr() == *p)));
        // Beyond what one read and one batch hold, buffers go back to the node.
        for _ in spare.len()..OWN_SPARE_BUFFERS + 3 {
            inbox.recycle(Vec::with_capacity(RECEIVE_BUFFER));
        }
        assert_eq!(
            inbox.own_socket.as_ref().unwrap().spare.len(),
            OWN_SPARE_BUFFERS
        );
        assert_eq!(inbox.pool.buffers.len(), 3);
    }

    #[test]
    fn a_socket_emptied_is_read_again_only_after_a_poll() {
        let (mut inbox, _queue, _command_tx, local) = inbox_with_own_socket();
        let reads = |inbox: &Inbox| inbox.own_socket.as_ref().unwrap().reader.metrics.syscalls;
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        // A read that takes all that is queued (fewer than a batch) emptied
        // the socket: the next look does not read again, a poll must say
        // that something came (and finds what arrived in between).
        peer.send_to(&[0], local).unwrap();
        assert!(matches!(inbox.try_next(), Some(Work::Datagram(d)) if d.data == [0]));
        assert_eq!(reads(&inbox), 1);
        peer.send_to(&[1], local).unwrap();
        assert!(inbox.try_next().is_none());
        assert_eq!(reads(&inbox), 1);
        let Ok(Some(Work::Datagram(d))) = inbox.next(Duration::from_secs(5)) else {
            panic!("the poll did not see the datagram");
        };
        assert_eq!(d.data, [1]);
        assert_eq!(reads(&inbox), 2);
        // A full batch may have left more behind: the next look reads again.
        for i in 0..=udp::BATCH {
            peer.send_to(&[i as u8], local).unwrap();
        }
        let Ok(Some(Work::Datagram(d))) = inbox.next(Duration::from_secs(5)) else {
            panic!("the poll did not see the datagrams");
        };
        assert_eq!(d.data, [0]);
        assert_eq!(reads(&inbox), 3);
        for i in 1..udp::BATCH {
            assert!(matches!(inbox.try_next(), Some(Work::Datagram(d)) if d.data == [i as u8]));
        }
        assert_eq!(reads(&inbox), 3);
        let last = udp::BATCH as u8;
        assert!(matches!(inbox.try_next(), Some(Work::Datagram(d)) if d.data == [last]));
        assert_eq!(reads(&inbox), 4);
        // Nothing is queued: no read, and a sleep that the timeout ends saw
        // nothing and reads nothing.
        assert!(inbox.try_next().is_none());
        assert!(matches!(inbox.next(Duration::from_millis(20)), Ok(None)));
        assert_eq!(reads(&inbox), 4);
    }

    #[test]
    fn tcp_packets_go_to_their_connection_and_a_full_queue_drops() {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let mut outbox = Outbox::new(socket, None);
        let mut metrics = ShardMetrics::new(0, Instant::now());
        let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let mut out = Outgoing::default();
        let tcp = |out: &mut Outgoing, contents: &[u8]| {
            out.push(
                Protocol::Tcp,
                "192.0.2.2:7881".parse().unwrap(),
                peer,
                contents,
            )
        };

        tcp(&mut out, b"before");
        outbox.send(&mut out, &mut metrics);
        assert_eq!(metrics.tcp_not_connected, 1);

        let (link, mut queue) = tokio_mpsc::channel(2);
        outbox.tcp.insert(peer, link);
        for packet in [b"one", b"two", b"six"] {
            tcp(&mut out, packet);
        }
        outbox.send(&mut out, &mut metrics);
        assert!(out.is_empty());
        assert_eq!(queue.try_recv().unwrap(), b"one");
        assert_eq!(queue.try_recv().unwrap(), b"two");
        assert!(queue.try_recv().is_err());
        assert_eq!(metrics.tcp_write_queue_full, 1);
        // Nothing went to the UDP socket.
        assert_eq!(metrics.sent.datagrams + metrics.sent.dropped, 0);

        drop(queue);
        outbox.forget_closed_tcp();
        assert!(outbox.tcp.is_empty());
    }

    /// An outbox on a loopback socket, a queuer of 100-byte UDP datagrams to
    /// a sink socket, and the sink (kept open for the test's length).
    fn udp_outbox() -> (Outbox, impl Fn(&mut Outgoing), UdpSocket) {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (source, destination) = (socket.local_addr().unwrap(), sink.local_addr().unwrap());
        let outbox = Outbox::new(socket, None);
        let queue =
            move |out: &mut Outgoing| out.push(Protocol::Udp, source, destination, &[0x80; 100]);
        (outbox, queue, sink)
    }

    /// Two rooms' ids, from a shard that holds them.
    fn two_rooms() -> [RoomId; 2] {
        let config = MediaConfig::new(Vec::new(), "test".into()).unwrap();
        let mut shard = Shard::new(0, config);
        ["one", "two"].map(|name| {
            let req = relais_proto::livekit::CreateRoomRequest {
                name: name.into(),
                ..Default::default()
            };
            shard.create_room(Instant::now(), 0, &req);
            shard.room_id(name).unwrap()
        })
    }

    #[test]
    fn forward_latency_is_taken_when_the_last_copy_is_handed_to_the_kernel() {
        let [room, _] = two_rooms();
        let (mut outbox, queue, _sink) = udp_outbox();
        let mut out = Outgoing::default();
        let mut metrics = ShardMetrics::new(0, Instant::now());
        // A packet's copies are queued, then it waits: nothing has left yet.
        for _ in 1..udp::BATCH {
            queue(&mut out);
        }
        outbox.send_if_full(&mut out, &mut metrics);
        outbox.forwarded(Instant::now(), room);
        assert_eq!(metrics.sent.datagrams, 0);
        std::thread::sleep(Duration::from_millis(5));
        // The next packet's first copy fills the batch: the first packet's
        // copies leave with it and its latency is taken, the second's is not.
        queue(&mut out);
        outbox.send_if_full(&mut out, &mut metrics);
        assert_eq!(metrics.sent.datagrams, udp::BATCH as u64);
        assert_eq!(metrics.latency_count, 1);
        assert!(
            metrics.latency_sum_ns >= 5_000_000,
            "{}",
            metrics.latency_sum_ns
        );
        queue(&mut out);
        outbox.send_if_full(&mut out, &mut metrics);
        outbox.forwarded(Instant::now(), room);
        assert_eq!(
            metrics.latency_count, 1,
            "sampled before its last copy left"
        );
        outbox.finish_round(&mut out, &mut metrics);
        assert_eq!(metrics.sent.datagrams, udp::BATCH as u64 + 1);
        assert_eq!(metrics.latency_count, 2);
        outbox.finish_round(&mut out, &mut metrics);
        assert_eq!(metrics.latency_count, 2, "one sample per forwarded packet");
    }

    #[test]
    fn a_room_cut_mid_frame_is_timed_when_its_last_turn_has_left() {
        let [large, small] = two_rooms();
        let (mut outbox, queue, _sink) = udp_outbox();
        let mut out = Outgoing::default();
        let mut metrics = ShardMetrics::new(0, Instant::now());
        // Both rooms' packets forwarded; the large room's turn is cut with
        // copies still to write: only the small room's packet has left.
        outbox.forwarded(Instant::now(), large);
        outbox.forwarded(Instant::now(), small);
        outbox.rooms_cut.push(large);
        queue(&mut out);
        outbox.finish_round(&mut out, &mut metrics);
        assert_eq!(metrics.latency_count, 1);
        std::thread::sleep(Duration::from_millis(5));
        // Its last turn: the large room's packet is timed, from when it came.
        outbox.rooms_cut.clear();
        queue(&mut out);
        outbox.finish_round(&mut out, &mut metrics);
        assert_eq!(metrics.latency_count, 2);
        assert!(
            metrics.latency_sum_ns >= 5_000_000,
            "{}",
            metrics.latency_sum_ns
        );
    }

    #[test]
    fn forwarded_copies_wait_for_short_timer_work_only() {
        let [room, _] = two_rooms();
        let (mut outbox, copy, _sink) = udp_outbox();
        let mut out = Outgoing::default();
        let mut metrics = ShardMetrics::new(0, Instant::now());
        let started = Instant::now();
        // A timer's own output (a report) goes out with the round, whenever.
        copy(&mut out);
        outbox.timer_work_went_on(
            started,
            started + TIMER_HOLDS_COPIES * 4,
            &mut out,
            &mut metrics,
        );
        assert_eq!(metrics.sent.datagrams, 0);
        // A forwarded packet's copies wait while the timer work is short...
        copy(&mut out);
        outbox.forwarded(started, room);
        outbox.timer_work_went_on(
            started,
            started + TIMER_HOLDS_COPIES / 2,
            &mut out,
            &mut metrics,
        );
        assert_eq!(metrics.sent.datagrams, 0);
        // ...and leave, with what is queued, once it is not.
        outbox.timer_work_went_on(
            started,
            started + TIMER_HOLDS_COPIES,
            &mut out,
            &mut metrics,
        );
        assert_eq!(metrics.sent.datagrams, 2);
        assert_eq!(metrics.latency_count, 1);
        // Sent once: what the timers queue next waits for the round's end.
        copy(&mut out);
        outbox.timer_work_went_on(
            started,
            started + TIMER_HOLDS_COPIES * 2,
            &mut out,
            &mut metrics,
        );
        assert_eq!(metrics.sent.datagrams, 2);
        outbox.finish_round(&mut out, &mut metrics);
        assert_eq!(metrics.sent.datagrams, 3);
    }
}
