//! A shard: the rooms one core owns, and the demultiplexer that finds the
//! session a datagram belongs to — first by the ICE ufrag in a STUN request
//! (the server minted it), then by the remote address it learned from it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use relais_proto::livekit::{
    DataPacket, DisconnectReason, LeaveRequest, SignalRequest, SignalResponse,
};
use str0m::net::Protocol;
use tracing::{debug, info};

use crate::config::MediaConfig;
use crate::fan_out::{InPlace, SessionDriver};
use crate::outgoing::Outgoing;
use crate::participant::{ParticipantKey, PeerRole};
use crate::room::{Addresses, JoinError, JoinParams, Room, RoomEvent, RoomOutput};
use crate::room_table::{RoomId, RoomTable};
use crate::stats::{DropReason, Kind, MediaStats, ShardGauges};
use crate::stun;
use crate::timers::{self, Entry, Queued, TimerQueue};
use crate::HashMap;

#[derive(Debug, Clone)]
struct Route {
    room: RoomId,
    participant: ParticipantKey,
    role: PeerRole,
    ufrag: Arc<str>,
}

/// What the shard asks of the I/O layer, besides sending its datagrams
/// ([`Shard::outgoing`]).
#[derive(Debug)]
pub enum ShardOutput {
    Signal(ParticipantKey, Arc<SignalResponse>),
    /// A `SignalResponse` already encoded in protobuf (a join response).
    EncodedSignal(ParticipantKey, Vec<u8>),
    Disconnect(ParticipantKey, Option<LeaveRequest>),
    Event {
        room: String,
        event: Box<RoomEvent>,
    },
    RoomClosed(String),
}

/// What [`Shard::handle_datagram`] did with a datagram's media.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// Copies written to subscribers, to leave with the next
    /// [`Shard::handle_timeout`] (0 for anything that is not forwarded media,
    /// and for a video packet whose copies wait for the end of their frame).
    pub copies: u64,
    /// The room they were written in: while it is among
    /// [`Shard::rooms_cut`], some of them have not been written out yet.
    pub room: Option<RoomId>,
}

/// The rooms of one core. Sans-IO: see [`Room`].
pub struct Shard {
    pub(crate) index: u8,
    pub(crate) config: MediaConfig,
    pub(crate) rooms: RoomTable,
    by_ufrag: HashMap<Arc<str>, Route>,
    /// Keyed by protocol too: a UDP and a TCP peer may share an address.
    by_addr: HashMap<(Protocol, SocketAddr), Route>,
    addrs_of_ufrag: HashMap<Arc<str>, Vec<(Protocol, SocketAddr)>>,
    pub(crate) room_of: HashMap<ParticipantKey, RoomId>,
    pub(crate) outputs: VecDeque<ShardOutput>,
    /// The datagrams to send; lent to each room the shard calls, so that
    /// copies are written in place (`lend_outgoing`).
    outgoing: Outgoing,
    /// Each room's next deadline ([`Room::poll_timeout`]), refreshed whenever
    /// the room's outputs are collected — after everything done to it.
    timers: TimerQueue<RoomId>,
    /// Each room's latest wake-up ([`Room::wake_by`]), kept the same way: when
    /// the shard must wake at the latest ([`Shard::wake_by`]).
    wakes: TimerQueue<RoomId>,
    /// Scratch list of the rooms due in [`Shard::handle_timeout`].
    due: Vec<RoomId>,
    /// Scratch list of the due rooms whose last turn was cut, to go last.
    resumed: Vec<RoomId>,
    /// The rooms whose last turn was cut ([`Shard::rooms_cut`]).
    cut: Vec<RoomId>,
    /// Counters of the shard itself and of rooms already dropped.
    stats: MediaStats,
    /// Whether joins are taken ([`Shard::set_accepting_joins`]).
    accepting_joins: bool,
    /// Drives a room's many due sessions ([`Shard::set_session_driver`]).
    driver: Box<dyn SessionDriver + Send>,
}

impl Shard {
    pub fn new(index: u8, config: MediaConfig) -> Self {
        Shard {
            index,
            config,
            rooms: RoomTable::default(),
            by_ufrag: HashMap::default(),
            by_addr: HashMap::default(),
            addrs_of_ufrag: HashMap::default(),
            room_of: HashMap::default(),
            outputs: VecDeque::new(),
            outgoing: Outgoing::default(),
            timers: TimerQueue::default(),
            wakes: TimerQueue::default(),
            due: Vec::new(),
            resumed: Vec::new(),
            cut: Vec::new(),
            stats: MediaStats::default(),
            accepting_joins: true,
            driver: Box::new(InPlace),
        }
    }

    /// Who drives a room's sessions when many are due at once (a large
    /// room's fan-out): by default the shard's own thread ([`InPlace`]); the
    /// I/O layer may give threads of its own ([`crate::fan_out`]).
    pub fn set_session_driver(&mut self, driver: Box<dyn SessionDriver + Send>) {
        self.driver = driver;
    }

    /// Counters since the previous call, summed over the shard's rooms.
    pub fn take_stats(&mut self) -> MediaStats {
        let mut total = std::mem::take(&mut self.stats);
        for room in self.rooms.values_mut() {
            total.merge(room.take_stats());
        }
        total
    }

    /// What the shard holds now: rooms, participants, tracks, subscriptions.
    pub fn gauges(&self) -> ShardGauges {
        let mut g = ShardGauges {
            rooms: self.rooms.len() as u64,
            ..Default::default()
        };
        for room in self.rooms.values() {
            g.participants += room.participants.len() as u64;
            for p in room.participants.values() {
                let direct = p.subscriber.direct.as_deref();
                g.direct_streams += direct.map_or(0, |d| d.streams.len() as u64);
            }
            for track in room.tracks.values() {
                let kind = Kind::of(track.kind) as usize;
                g.tracks_published[kind] += 1;
                g.tracks_subscribed[kind] += track.subscribers.len() as u64;
            }
        }
        g
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    pub fn room(&self, name: &str) -> Option<&Room> {
        self.rooms.by_name(name)
    }

    pub fn rooms(&self) -> impl Iterator<Item = &Room> {
        self.rooms.values()
    }

    /// Join `params.key` to `room`, creating the room if needed and `create` allows.
    pub fn join(
        &mut self,
        now: Instant,
        unix_ms: i64,
        room: &str,
        create: bool,
        params: JoinParams,
    ) -> Result<ParticipantKey, JoinError> {
        if !self.accepting_joins {
            return Err(JoinError::Overloaded);
        }
        let id = match self.rooms.id(room) {
            Some(id) => id,
            None if !create => return Err(JoinError::NoSuchRoom),
            None => {
                let created = Room::new(room, self.config.clone(), self.index, now, unix_ms);
                created
                    .span()
                    .in_scope(|| info!(shard = self.index, "room created"));
                self.rooms.insert(created)
            }
        };
        let key = params.key;
        let result = self
            .lend(id)
            .expect("inserted above")
            .join(now, unix_ms, params);
        if result.is_ok() {
            self.room_of.insert(key, id);
        }
        self.collect(id);
        result
    }

    /// A signal message from a participant's WebSocket.
    pub fn handle_signal(&mut self, now: Instant, key: ParticipantKey, req: SignalRequest) {
        let Some(&id) = self.room_of.get(&key) else {
            return;
        };
        if let Some(room) = self.lend(id) {
            room.handle_signal(now, key, req);
        }
        self.collect(id);
    }

    /// The participant's WebSocket closed or it was removed by the API.
    pub fn remove_participant(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        reason: DisconnectReason,
    ) {
        let Some(&id) = self.room_of.get(&key) else {
            return;
        };
        if let Some(room) = self.lend(id) {
            room.remove_participant(now, key, reason);
        }
        self.collect(id);
    }

    /// Server-originated data for a room.
    pub fn send_data(
        &mut self,
        now: Instant,
        room: &str,
        reliable: bool,
        packet: DataPacket,
    ) -> bool {
        let Some(id) = self.rooms.id(room) else {
            return false;
        };
        if let Some(r) = self.lend(id) {
            r.send_data(now, reliable, packet);
        }
        self.collect(id);
        true
    }

    /// One datagram from the network; returns the copies of its media it
    /// made and the room they are in.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        buf: &[u8],
    ) -> Forwarded {
        // Copied out, not cloned: a datagram counts no reference.
        let (room, participant, role) = match self.by_addr.get(&(proto, source)) {
            Some(r) => (r.room, r.participant, r.role),
            None => {
                let Some(route) = stun::local_ufrag(buf).and_then(|u| self.by_ufrag.get(u)) else {
                    self.stats.drop_packet(DropReason::UnknownSession);
                    return Forwarded::default();
                };
                let route = route.clone();
                if let Some(room) = self.rooms.get(route.room) {
                    room.span_for(route.participant).in_scope(
                        || debug!(%source, %proto, ufrag = %route.ufrag, role = ?route.role, "new remote address"),
                    );
                }
                self.by_addr.insert((proto, source), route.clone());
                self.addrs_of_ufrag
                    .entry(route.ufrag.clone())
                    .or_default()
                    .push((proto, source));
                (route.room, route.participant, route.role)
            }
        };
        let addresses = Addresses {
            proto,
            source,
            destination,
        };
        let copies = self.lend(room).map_or(0, |r| {
            r.handle_receive(now, participant, role, buf, addresses)
        });
        self.collect(room);
        Forwarded {
            copies,
            room: Some(room),
        }
    }

    /// Drive every room whose timer is due, and drop closed rooms. A room
    /// whose turn was cut ([`Room::turn_cut`]) is due again at once.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout_while(now, |_| true);
    }

    /// Drive rooms whose timer is due, most overdue first, while `more` says
    /// so. It is asked after each room (at least one is driven) and handed
    /// the shard, whose outputs it may take meanwhile ([`Shard::poll_output`]).
    /// Rooms left over stay due — [`Shard::poll_timeout`] is then not after
    /// `now` — for the caller's next call. A caller with a clock bounds a
    /// round's timer work this way, so that input waiting behind it is not
    /// held up when many rooms come due together; and rooms driven in
    /// different rounds are handed different `now`s, which keeps their timers
    /// from lining up. A room whose last turn was cut goes after the others,
    /// so that one large room's frame does not hold every other room's
    /// copies until it is all sent, and gets its turn even once `more` said
    /// no, so that it is not starved.
    pub fn handle_timeout_while(&mut self, now: Instant, mut more: impl FnMut(&mut Shard) -> bool) {
        let mut due = std::mem::take(&mut self.due);
        let mut resumed = std::mem::take(&mut self.resumed);
        while let Some((entry, id)) = self.timers.pop_due(now) {
            if let Some(room) = self.rooms.get_mut(id) {
                if timers::fire(&mut room.queued, entry) {
                    if room.turn_cut() {
                        resumed.push(id);
                    } else {
                        due.push(id);
                    }
                }
            }
        }
        due.append(&mut resumed);
        self.resumed = resumed;
        let mut go_on = true;
        for id in due.drain(..) {
            let driven = match self.rooms.get_mut(id) {
                // Queued before its deadline moved later: `collect` re-queues it.
                Some(room) if (go_on || room.turn_cut()) && room.poll_timeout() <= now => {
                    lend_outgoing(&mut self.outgoing, room);
                    room.handle_timeout(now, &*self.driver);
                    true
                }
                _ => false,
            };
            self.collect(id);
            if driven {
                self.note_turn(id);
                go_on = more(self);
            }
            if self.rooms.get(id).is_some_and(|r| r.is_closed()) {
                if let Some(mut room) = self.drop_room(id) {
                    self.stats.merge(room.take_stats());
                    let _span = room.span().enter();
                    info!("room closed");
                    self.outputs
                        .push_back(ShardOutput::RoomClosed(room.name().to_string()));
                }
            }
        }
        self.due = due;
    }

    /// The id of the room of that name, as [`Forwarded::room`] names it.
    pub fn room_id(&self, name: &str) -> Option<RoomId> {
        self.rooms.id(name)
    }

    /// The rooms whose last turn was cut: some of the copies written in them
    /// are still to be written out ([`Forwarded::room`]). Few: only a large
    /// room's fan-out fills a turn.
    pub fn rooms_cut(&self) -> &[RoomId] {
        &self.cut
    }

    /// Keep [`Shard::rooms_cut`] in step with a room just driven.
    fn note_turn(&mut self, id: RoomId) {
        let cut = self.rooms.get(id).is_some_and(Room::turn_cut);
        match (cut, self.cut.iter().position(|&r| r == id)) {
            (true, None) => self.cut.push(id),
            (false, Some(i)) => {
                self.cut.swap_remove(i);
            }
            _ => {}
        }
    }

    /// Take joins, or refuse them ([`JoinError::Overloaded`]) while the
    /// shard has no capacity to spare; those already in are not affected.
    /// Whether it has is the caller's judgement (the server's admission policy).
    pub fn set_accepting_joins(&mut self, accepting: bool) {
        self.accepting_joins = accepting;
    }

    /// Shed load, or stop shedding it: while `shedding`, every room sends
    /// subscribers only the lowest simulcast layer ([`Room::set_load_layer_cap`]).
    pub fn set_shedding(&mut self, now: Instant, shedding: bool) {
        let cap = if shedding { 0 } else { usize::MAX };
        for id in self.rooms.ids() {
            if let Some(room) = self.lend(id) {
                room.set_load_layer_cap(now, cap);
            }
            self.collect(id);
        }
    }

    /// When [`Shard::handle_timeout`] next has work (maybe a little early):
    /// call it at the first chance from then on.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// When [`Shard::handle_timeout`] must be called at the latest, if nothing
    /// else wakes the caller before: a periodic deadline may wait for a
    /// datagram's wake-up up to `MediaConfig::timer_slack`, copies never.
    pub fn wake_by(&self) -> Option<Instant> {
        self.wakes.next()
    }

    pub fn poll_output(&mut self) -> Option<ShardOutput> {
        self.outputs.pop_front()
    }

    /// The datagrams to send, in order. The caller sends them when it likes
    /// (after each call, or once a batch has gathered) and then clears them.
    pub fn outgoing(&mut self) -> &mut Outgoing {
        &mut self.outgoing
    }

    /// Room `id`, with the shard's outgoing datagrams lent to it for a
    /// call ([`lend_outgoing`]); [`Shard::collect`] takes them back.
    pub(crate) fn lend(&mut self, id: RoomId) -> Option<&mut Room> {
        let room = self.rooms.get_mut(id)?;
        lend_outgoing(&mut self.outgoing, room);
        Some(room)
    }

    /// Drop room `id`. Its entries in the timer queues go stale, and one at
    /// a queue's front would hold [`Shard::wake_by`] in the past: the caller
    /// would wake at once, again and again, until another room moved the
    /// queue — on a shard whose last room closed, never (it spun at 100 %
    /// of its core). So the fronts are cleared now.
    pub(crate) fn drop_room(&mut self, id: RoomId) -> Option<Room> {
        let room = self.rooms.remove(id)?;
        self.cut.retain(|&r| r != id);
        drop_stale_front(&mut self.timers, &mut self.rooms, |r| &mut r.queued);
        drop_stale_front(&mut self.wakes, &mut self.rooms, |r| &mut r.wake_queued);
        Some(room)
    }

    /// Move a room's outputs out, keeping the routing tables and the room's
    /// place in the timer queue in step.
    pub(crate) fn collect(&mut self, id: RoomId) {
        let Some(room) = self.rooms.get_mut(id) else {
            return;
        };
        let (at, wake_by) = (room.poll_timeout(), room.wake_by());
        requeue(&mut self.timers, &mut self.rooms, id, at, |r| &mut r.queued);
        requeue(&mut self.wakes, &mut self.rooms, id, wake_by, |r| {
            &mut r.wake_queued
        });
        let Some(room) = self.rooms.get_mut(id) else {
            return;
        };
        if std::mem::take(&mut room.outgoing_lent) {
            std::mem::swap(&mut self.outgoing, &mut room.outgoing);
        }
        // Written while not lent (never, in practice): copied.
        if !room.outgoing.is_empty() {
            self.outgoing.append(&mut room.outgoing);
        }
        while let Some(out) = room.poll_output() {
            match out {
                RoomOutput::Signal(k, m) => self.outputs.push_back(ShardOutput::Signal(k, m)),
                RoomOutput::EncodedSignal(k, m) => {
                    self.outputs.push_back(ShardOutput::EncodedSignal(k, m))
                }
                RoomOutput::Disconnect(k, leave) => {
                    self.room_of.remove(&k);
                    self.outputs.push_back(ShardOutput::Disconnect(k, leave));
                }
                RoomOutput::SessionOpened {
                    ufrag,
                    participant,
                    role,
                } => {
                    let ufrag: Arc<str> = ufrag.into();
                    self.by_ufrag.insert(
                        ufrag.clone(),
                        Route {
                            room: id,
                            participant,
                            role,
                            ufrag,
                        },
                    );
                }
                RoomOutput::SessionClosed { ufrag } => {
                    self.by_ufrag.remove(ufrag.as_str());
                    for addr in self
                        .addrs_of_ufrag
                        .remove(ufrag.as_str())
                        .unwrap_or_default()
                    {
                        self.by_addr.remove(&addr);
                    }
                }
                RoomOutput::Event(event) => self.outputs.push_back(ShardOutput::Event {
                    room: room.name().to_string(),
                    event,
                }),
            }
        }
    }
}

/// Queue room `id` at `at` in `queue`, where `slot` keeps the room's
/// entry. A room whose deadline moved later is queued again at it, and
/// entries that are no longer any room's current one leave the front:
/// otherwise each would wake the shard for nothing.
fn requeue(
    queue: &mut TimerQueue<RoomId>,
    rooms: &mut RoomTable,
    id: RoomId,
    at: Instant,
    slot: fn(&mut Room) -> &mut Queued,
) {
    if let Some(room) = rooms.get_mut(id) {
        let queued = slot(room);
        if queued.is_some_and(|(q, _)| q < at) {
            *queued = None;
        }
        queue.schedule(queued, &id, at);
    }
    drop_stale_front(queue, rooms, slot);
    let live = rooms.len();
    queue.compact(live, |entry, id| is_current(rooms, slot, entry, id));
}

/// Take the entries that are no longer any room's current one off the front
/// of `queue`: each would wake the shard for nothing.
fn drop_stale_front(
    queue: &mut TimerQueue<RoomId>,
    rooms: &mut RoomTable,
    slot: fn(&mut Room) -> &mut Queued,
) {
    while queue
        .pop_early_front(|entry, id| !is_current(rooms, slot, entry, id))
        .is_some()
    {}
}

/// Whether `entry` is what room `id` is queued under (`slot` keeps it).
fn is_current(
    rooms: &mut RoomTable,
    slot: fn(&mut Room) -> &mut Queued,
    entry: Entry,
    id: &RoomId,
) -> bool {
    rooms.get_mut(*id).is_some_and(|r| *slot(r) == Some(entry))
}

/// Lend the shard's `outgoing` to `room` for a call: what the room sends is
/// written after the datagrams already queued, in place — the two
/// `Outgoing`s change places (their kept blocks too), and change back when
/// the room's outputs are collected; a room holds no buffer of its own.
fn lend_outgoing(outgoing: &mut Outgoing, room: &mut Room) {
    if !room.outgoing_lent {
        std::mem::swap(outgoing, &mut room.outgoing);
        room.outgoing_lent = true;
    }
}
