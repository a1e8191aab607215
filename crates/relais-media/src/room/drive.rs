//! Driving the room's str0m sessions: a datagram in, a timeout round, the
//! sessions due in it (in place, or in chunks on the shard's helpers), and
//! each session's output loop.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use relais_proto::livekit::DisconnectReason;
use str0m::net::Receive;
use str0m::{Input, Output};
use tracing::{debug, info, warn, Span};

use crate::egress;
use crate::fan_out::{DriveChunk, DueSession, SessionDriver};
use crate::ingress::Receipt;
use crate::outgoing::Outgoing;
use crate::participant::{Participant, ParticipantKey, PeerRole, PeerSession, UNWRITTEN_KEPT};
use crate::stats::DropReason;
use crate::stun;
use crate::subscriber_rtcp;
use crate::timers;
use crate::HashMap;

use super::{Addresses, PendingEvent, Room, SessionTimers, LAYER_CHECK_INTERVAL};

/// Due sessions unlisted and warmed together, then driven on the caller's
/// thread: enough for their reads to overlap, few enough that a turn cut
/// short has read little it does not drive.
const DRIVE_WINDOW: usize = 32;

impl Room {
    /// Datagram for one of this room's sessions (the shard found which).
    /// Returns how many copies of its media were written to subscribers to be
    /// sent when those sessions are next driven, in [`Room::handle_timeout`];
    /// copies of a video packet that does not end its frame wait for the one
    /// that does ([`FRAME_WAIT`](super::FRAME_WAIT)) and are not counted.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        role: PeerRole,
        datagram: &[u8],
        addresses: Addresses,
    ) -> u64 {
        let before = self.copies_leaving;
        if role == PeerRole::Subscriber
            && subscriber_rtcp::is_rtcp(datagram)
            && self.read_subscriber_rtcp(now, key, datagram)
        {
            return self.copies_leaving - before;
        }
        let Some(p) = self.participants.get_mut(&key) else {
            return 0;
        };
        let (session, span) = p.session_and_span_mut(role);
        let Some(session) = session else {
            return 0;
        };
        if let Some(direct) = session.direct.as_deref_mut() {
            if stun::nominates(datagram) {
                direct.nominated = Some((addresses.proto, addresses.source));
            }
            // Every datagram, before str0m: the feedback must count them all.
            // The session's deadline follows when it is drained below.
            if let Some(feedback) = direct.feedback.as_mut() {
                feedback.record(datagram, now);
            }
            let receipt = direct
                .ingress
                .as_deref_mut()
                .map(|ingress| ingress.receive(datagram, now, &mut self.opened));
            if let Some(receipt @ (Receipt::Opened(_) | Receipt::Consumed | Receipt::Refused)) =
                receipt
            {
                // str0m is not driven: the feedback, NACKs or report this
                // packet makes due move the session's deadline.
                let str0m_due = direct.str0m_due;
                let due = session.next_due(str0m_due, now);
                if due < session.deadline {
                    session.deadline = due;
                    self.timers.schedule(&mut session.queued, &(key, role), due);
                }
                match receipt {
                    Receipt::Opened(opened) => {
                        // Lent to the forwarding, which reads it while it
                        // changes the room.
                        let mut payload = std::mem::take(&mut self.opened);
                        self.on_opened(now, key, opened, &mut payload);
                        self.opened = payload;
                    }
                    Receipt::Refused => self.stats.drop_packet(DropReason::Malformed),
                    _ => {}
                }
                return self.copies_leaving - before;
            }
        }
        // The participant's span for str0m's work only: what Relais reads
        // itself above logs nothing on its way, or names whom it logs about.
        let span = span.clone();
        let _span = span.enter();
        // Parsed for str0m only: what Relais reads itself never needs it (a
        // `Receive` is hundreds of bytes, moved by copy).
        let Addresses {
            proto,
            source,
            destination,
        } = addresses;
        let report_keys = session.direct.as_deref().and_then(|d| d.report_keys.get());
        let datagram = match report_keys {
            Some(keys) => keys.without_descriptions(datagram, &mut self.reports),
            None => datagram,
        };
        let Ok(receive) = Receive::new(proto, source, destination, datagram) else {
            self.stats.drop_packet(DropReason::Malformed);
            return 0;
        };
        if let Err(e) = session.rtc.handle_input(Input::Receive(now, receive)) {
            self.stats.drop_packet(DropReason::Malformed);
            debug!(?role, error = %e, "bad datagram");
        }
        self.drain(now, key, role);
        self.process_events(now);
        self.settle_timers();
        self.copies_leaving - before
    }

    /// Drive the sessions whose deadline has passed; check room timers. With
    /// many sessions due (a large room's fan-out), `driver` drives them, on
    /// as many threads as it has (see [`crate::fan_out`]). Driven on the
    /// caller's thread, they stop once they have written
    /// [`MediaConfig::drive_turn_datagrams`](crate::MediaConfig::drive_turn_datagrams):
    /// the rest stay due, first in line, as do the queued offers past a
    /// turn's (`Room::send_queued_offers`), and [`Room::turn_cut`] says so.
    pub fn handle_timeout(&mut self, now: Instant, driver: &dyn SessionDriver) {
        // The room's span is entered only around what may log (str0m's work,
        // the room's reviews): a round that only sends copies Relais writes
        // itself enters none, as a datagram it reads itself does not.
        // Collect first: a session driven here may want time again at `now`,
        // which is the next call's business, not a loop in this one.
        let mut due = std::mem::take(&mut self.due);
        due.append(&mut self.due_now);
        while let Some(&(until, key)) = self.frame_waits.front() {
            if until > now {
                break;
            }
            self.frame_waits.pop_front();
            let Some(session) = self.participants.get_mut(&key).map(|p| &mut p.subscriber) else {
                continue;
            };
            if session.frame_wait == Some(until) {
                session.frame_wait = None;
                session.deadline = session.deadline.min(until);
                if !session.listed {
                    session.listed = true;
                    due.push((key, PeerRole::Subscriber));
                }
            }
        }
        while let Some((entry, (key, role))) = self.timers.pop_due(now) {
            let Some(p) = self.participants.get_mut(&key) else {
                continue;
            };
            let Some(session) = p.session_mut(role) else {
                continue;
            };
            if timers::fire(&mut session.queued, entry) && !session.listed {
                session.listed = true;
                due.push((key, role));
            }
        }
        let offers_left = self.send_queued_offers(now);
        let in_chunks = driver.threads() > 1 && due.len() >= self.config.fan_out_min_sessions;
        let driven = if in_chunks {
            // Copies forwarded while these are driven list their sessions
            // anew (a chunk warms its own, where it is driven).
            self.set_listed(&due, false, false);
            self.drive_in_chunks(now, &due, driver);
            due.len()
        } else {
            self.drive_in_place(now, &due)
        };
        // The rest wait for the room's next turn, ahead of any copies
        // forwarded meanwhile (`due_now` was emptied above).
        self.turn_cut = driven < due.len() || offers_left;
        if driven < due.len() {
            self.due_now_since = now;
            self.due_now.extend(due.drain(driven..));
        }
        self.process_events(now);

        // Peer connections that str0m gave up on (ICE timeout, DTLS failure):
        // that only happens while str0m handles input or time, and a failed
        // drain queues its session at once, so the due ones are all to check.
        for (key, _) in due.drain(..) {
            let Some(p) = self.participants.get(&key) else {
                continue;
            };
            let sessions = || p.publisher.iter().chain([&p.subscriber]);
            let reason = if sessions().any(|s| s.failed) {
                DisconnectReason::MediaFailure
            } else if sessions().any(|s| !s.rtc.is_alive()) {
                DisconnectReason::ConnectionTimeout
            } else {
                continue;
            };
            self.remove_participant(now, key, reason);
        }
        self.due = due;
        self.settle_timers();
        let participants = &self.participants;
        self.timers
            .compact(2 * participants.len(), |entry, (key, role)| {
                participants
                    .get(key)
                    .and_then(|p| p.session(*role))
                    .is_some_and(|s| s.queued == Some(entry))
            });

        if now >= self.next_layer_check {
            let room_span = self.span.clone();
            let _room = room_span.enter();
            self.next_layer_check = next_tick(self.next_layer_check, LAYER_CHECK_INTERVAL, now);
            self.update_layer_targets(now);
            self.update_speakers(now);
            self.update_dynacast(now);
            self.update_qualities(now);
            self.flush_listener_updates(now);
        }
        if self.closes_at().is_some_and(|at| now >= at) {
            let (timeout, _) = self.closing_timeout();
            self.span.in_scope(|| info!(timeout, "closing empty room"));
            self.finish();
        }
    }

    /// Re-queue the sessions at the front of the timer heap whose entry is
    /// earlier than their deadline, drop stale ones, and drop the frame waits
    /// at the front whose frame has left: each would wake the shard for
    /// nothing.
    fn settle_timers(&mut self) {
        let participants = &mut self.participants;
        while let Some(&(until, key)) = self.frame_waits.front() {
            if participants
                .get(&key)
                .is_some_and(|p| p.subscriber.frame_wait == Some(until))
            {
                break;
            }
            self.frame_waits.pop_front();
        }
        while let Some((entry, (key, role))) = self.timers.pop_early_front(|entry, &(key, role)| {
            participants
                .get(&key)
                .and_then(|p| p.session(role))
                .is_none_or(|s| s.queued != Some(entry) || s.deadline > entry.0)
        }) {
            let Some(session) = participants.get_mut(&key).and_then(|p| p.session_mut(role)) else {
                continue;
            };
            if timers::fire(&mut session.queued, entry) {
                self.timers
                    .schedule(&mut session.queued, &(key, role), session.deadline);
            }
        }
    }

    /// Drive the due sessions on the caller's thread, in order, until they
    /// have written a turn's datagrams; returns how many were driven. They
    /// are taken a window at a time, unlisted (copies forwarded while they
    /// are driven list them anew) and warmed together before any is driven;
    /// those after the turn are left listed and unread.
    fn drive_in_place(&mut self, now: Instant, due: &[(ParticipantKey, PeerRole)]) -> usize {
        let turn = self.config.drive_turn_datagrams;
        let written_before = self.outgoing.len();
        for (start, window) in (0..).step_by(DRIVE_WINDOW).zip(due.chunks(DRIVE_WINDOW)) {
            self.set_listed(window, false, true);
            for (i, &(key, role)) in window.iter().enumerate() {
                if turn > 0 && self.outgoing.len().saturating_sub(written_before) >= turn {
                    self.set_listed(&window[i..], true, false);
                    return start + i;
                }
                self.drive_one(now, key, role);
            }
        }
        due.len()
    }

    /// Mark sessions as on a list of due sessions, or off; with `warm`, read
    /// ahead what sending their copies reads first ([`egress::warm`]).
    fn set_listed(&mut self, sessions: &[(ParticipantKey, PeerRole)], listed: bool, warm: bool) {
        for &(key, role) in sessions {
            if let Some(session) = self
                .participants
                .get_mut(&key)
                .and_then(|p| p.session_mut(role))
            {
                session.listed = listed;
                if warm {
                    egress::warm(session);
                }
            }
        }
    }

    /// Drive one due session: its direct copies, and str0m if it has work.
    fn drive_one(&mut self, now: Instant, key: ParticipantKey, role: PeerRole) {
        let Some(session) = ready_session(&mut self.participants, &mut self.timers, now, key, role)
        else {
            return;
        };
        if egress::send_direct_only(session, now, &mut self.outgoing) {
            let wake_at = session.deadline;
            self.timers
                .schedule(&mut session.queued, &(key, role), wake_at);
            return;
        }
        let room_span = self.span.clone();
        let _room = room_span.enter();
        give_time(session, key, role, now);
        self.drain(now, key, role);
    }

    /// Hand the due sessions to `driver` in chunks of about an equal share
    /// per thread (two per thread, so that one slow chunk is evened out).
    fn drive_in_chunks(
        &mut self,
        now: Instant,
        due: &[(ParticipantKey, PeerRole)],
        driver: &dyn SessionDriver,
    ) {
        let mut ready: usize = 0;
        for &(key, role) in due {
            if let Some(session) =
                ready_session(&mut self.participants, &mut self.timers, now, key, role)
            {
                session.ready = true;
                ready += 1;
            }
        }
        let size = ready.div_ceil(2 * driver.threads()).max(1);
        let mut chunks = Vec::with_capacity(ready.div_ceil(size));
        let buffers = &mut self.chunk_buffers;
        let mut new_chunk = || {
            DriveChunk::new(
                now,
                Span::clone(&self.span),
                size,
                buffers.pop().unwrap_or_default(),
            )
        };
        let mut chunk = new_chunk();
        // The ready sessions are borrowed from the participant map at once,
        // each on its own: a scan of the room, cheap next to driving most of it.
        for p in self.participants.values_mut() {
            let key = p.key;
            let sessions = p.publisher.iter_mut().map(|s| (PeerRole::Publisher, s));
            for (role, session) in sessions.chain([(PeerRole::Subscriber, &mut p.subscriber)]) {
                if !std::mem::take(&mut session.ready) {
                    continue;
                }
                chunk.sessions.push(DueSession {
                    key,
                    role,
                    session,
                    wake_at: now,
                });
                if chunk.len() == size {
                    let next = new_chunk();
                    chunks.push(std::mem::replace(&mut chunk, next));
                }
            }
        }
        if !chunk.is_empty() {
            chunks.push(chunk);
        }
        driver.drive(&mut chunks);
        for mut chunk in chunks {
            self.outgoing.append(&mut chunk.outgoing);
            self.chunk_buffers.push(chunk.outgoing);
            for due in chunk.sessions {
                self.timers
                    .schedule(&mut due.session.queued, &(due.key, due.role), due.wake_at);
            }
            self.events.extend(chunk.events);
        }
    }

    /// Run str0m's output loop for one session until it asks for time.
    pub(super) fn drain(&mut self, now: Instant, key: ParticipantKey, role: PeerRole) {
        let Some(session) = self
            .participants
            .get_mut(&key)
            .and_then(|p| p.session_mut(role))
        else {
            return;
        };
        drain_session(
            session,
            key,
            role,
            now,
            &mut self.outgoing,
            &mut self.events,
            &mut self.timers,
        );
    }
}

fn drain_session(
    session: &mut PeerSession,
    key: ParticipantKey,
    role: PeerRole,
    now: Instant,
    out: &mut Outgoing,
    events: &mut VecDeque<PendingEvent>,
    timers: &mut SessionTimers,
) {
    let wake_at = poll_session(session, key, role, now, out, events);
    timers.schedule(&mut session.queued, &(key, role), wake_at);
}

/// The session of `key` and `role` if it is due at `now`. One that is not
/// (it was queued before str0m moved its deadline later) is queued again.
fn ready_session<'a>(
    participants: &'a mut HashMap<ParticipantKey, Participant>,
    timers: &mut SessionTimers,
    now: Instant,
    key: ParticipantKey,
    role: PeerRole,
) -> Option<&'a mut PeerSession> {
    let session = participants.get_mut(&key)?.session_mut(role)?;
    if session.deadline > now {
        timers.schedule(&mut session.queued, &(key, role), session.deadline);
        return None;
    }
    Some(session)
}

/// Give a due session the time, then run its output loop ([`poll_session`]).
pub(crate) fn drive_session(
    session: &mut PeerSession,
    key: ParticipantKey,
    role: PeerRole,
    now: Instant,
    out: &mut Outgoing,
    events: &mut impl Extend<PendingEvent>,
) -> Instant {
    if egress::send_direct_only(session, now, out) {
        return session.deadline;
    }
    give_time(session, key, role, now);
    poll_session(session, key, role, now, out, events)
}

/// Hand a due session what was forwarded to it, and the time.
fn give_time(session: &mut PeerSession, key: ParticipantKey, role: PeerRole, now: Instant) {
    write_forwarded(session);
    if let Err(e) = session.rtc.handle_input(Input::Timeout(now)) {
        debug!(?key, ?role, error = %e, "timeout input failed");
    }
}

/// Give str0m the media the room forwarded to `session` since it was last
/// polled; true if there was any.
fn write_forwarded(session: &mut PeerSession) -> bool {
    if session.unwritten.is_empty() {
        return false;
    }
    for copy in session.unwritten.drain(..) {
        // Gone only if a renegotiation removed the stream meanwhile.
        if let Some(tx) = session.rtc.direct_api().stream_tx(&copy.ssrc) {
            tx.write_rtp(copy.into_write());
        }
    }
    // A burst (a keyframe, a round that batched much) leaves no lasting memory.
    session.unwritten.shrink_to(UNWRITTEN_KEPT);
    true
}

/// Run str0m's output loop for one session until it asks for time; returns
/// when the session is next due: its deadline, or now if it just failed (so
/// that the next timeout round removes the participant).
pub(crate) fn poll_session(
    session: &mut PeerSession,
    key: ParticipantKey,
    role: PeerRole,
    now: Instant,
    out: &mut Outgoing,
    events: &mut impl Extend<PendingEvent>,
) -> Instant {
    // Whatever the session holds leaves now.
    session.frame_wait = None;
    egress::send_feedback(session, now, out);
    egress::send_direct(session, out);
    // str0m sends what is written only once it is given the time.
    if write_forwarded(session) {
        if let Err(e) = session.rtc.handle_input(Input::Timeout(now)) {
            debug!(?key, ?role, error = %e, "timeout input failed");
        }
    }
    loop {
        match session.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                let t = session.grid.map_or(t, |grid| grid.round_up(t, now));
                if let Some(direct) = session.direct.as_deref_mut() {
                    direct.str0m_due = t;
                }
                session.deadline = session.next_due(t, now);
                return session.deadline;
            }
            Ok(Output::Transmit(t)) => {
                if let Some(direct) = session.direct.as_deref_mut() {
                    direct.follow(&t);
                }
                out.push_transmit(t)
            }
            Ok(Output::Event(event)) => events.extend([PendingEvent {
                participant: key,
                role,
                event,
            }]),
            Err(e) => {
                warn!(?key, ?role, error = %e, "peer connection failed");
                session.failed = true;
                session.rtc.disconnect();
                session.deadline = now + Duration::from_secs(1);
                return now;
            }
        }
    }
}

/// The first of `previous + k·period` (k ≥ 1) after `now`: a periodic
/// deadline that keeps its phase. Taken from `now` instead, every room whose
/// check ran in the same late round (they are all handed that round's `now`)
/// would share one deadline from then on, and a shard's rooms, once so
/// aligned, would do their checks in one long round that holds up every
/// packet behind it.
fn next_tick(previous: Instant, period: Duration, now: Instant) -> Instant {
    let late = now.saturating_duration_since(previous);
    let periods = late.as_nanos() / period.as_nanos() + 1;
    previous + period * u32::try_from(periods).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_periodic_deadline_keeps_its_phase_when_late() {
        let t0 = Instant::now();
        let period = Duration::from_millis(500);
        let ms = Duration::from_millis;
        // On time, late within a period, late by several periods.
        assert_eq!(next_tick(t0, period, t0), t0 + ms(500));
        assert_eq!(next_tick(t0, period, t0 + ms(120)), t0 + ms(500));
        assert_eq!(next_tick(t0, period, t0 + ms(1_200)), t0 + ms(1_500));
        assert_eq!(next_tick(t0, period, t0 + ms(1_500)), t0 + ms(2_000));
        // Two rooms 200 ms apart, both handled in one late round: still apart.
        let late = t0 + ms(3_000);
        assert_eq!(next_tick(t0, period, late), t0 + ms(3_500));
        assert_eq!(next_tick(t0 + ms(200), period, late), t0 + ms(3_200));
    }
}
