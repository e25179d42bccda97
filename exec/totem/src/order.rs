//! Ordering on a ring (Totem paper §3, totemsrp's `message_handler_orf_token` and
//! `message_handler_mcast`): the token gives the right to multicast, each frame takes the
//! next sequence number, members ask for what they miss on the token and whoever holds
//! it resends, `aru` tracks what every member holds so it can be released, and a message
//! is delivered as soon as all lower numbers are held (agreed order).
//!
//! The same code runs the new ring during recovery, where the frames sent are old-ring
//! messages instead of new ones.

use bytes::Bytes;
use log::{debug, info, warn};

use crate::event::{Dest, Event, MembState};
use crate::srp::{Holding, Srp, Timer};
use crate::store::{Held, RingStore, MAX_WINDOW};
use crate::types::NodeId;
use crate::wire::{
    token_rtr_capacity, Frame, Mcast, MergeDetect, Recovered, Token, TokenHoldCancel,
};

/// What a visit of the token sends before passing it on.
struct Sends {
    frames: Vec<Bytes>,
}

impl Srp {
    /// Largest packed payload of one mcast frame; leaves room for the recovery
    /// encapsulation so a message can always be carried into a later ring.
    pub(crate) fn payload_max(&self) -> usize {
        self.p.max_frame_len - crate::wire::MCAST_OVERHEAD_MAX
    }

    /// The store of the ring whose token we are passing: the new ring's during recovery.
    fn token_store(&mut self) -> &mut RingStore {
        match self.recovery.as_mut() {
            Some(rec) => &mut rec.store,
            None => &mut self.store,
        }
    }

    pub(crate) fn on_token(&mut self, mut tok: Token) {
        let ring_id = match (self.state, &self.recovery) {
            (MembState::Operational, _) => self.ring_id,
            (MembState::Recovery, Some(rec)) => rec.ring_id,
            _ => return,
        };
        if tok.ring_id != ring_id || tok.token_seq <= self.token_seq_seen {
            return;
        }
        self.token_seq_seen = tok.token_seq;
        self.stats.tokens_received += 1;
        self.cancel_timer(Timer::TokenRetransmit);
        self.last_sent = None;
        self.set_timer(Timer::TokenLoss, self.p.token_us);
        self.hold_cancel_sent = false;

        let incoming_aru = tok.aru;
        let incoming_seq = tok.seq;
        let in_recovery = self.state == MembState::Recovery;
        // Every hold of this visit (idle, linger, waiting for our receivers) ends within
        // half the token retransmit timeout of its arrival.
        let members = self.memb.len().max(1) as u64;
        self.receivers_deadline = self.now.plus_micros(
            self.p
                .receivers_visit_us
                .min(self.p.token_us / (2 * members)),
        );

        let mut sends = Sends { frames: Vec::new() };
        let retransmitted = self.serve_retransmit_requests(&mut tok, &mut sends);
        self.request_missing(&mut tok);
        let originated = self.originate(&mut tok, retransmitted, 0, &mut sends);
        self.fold_aru(&mut tok);

        // What the token said both now and one rotation ago, every member had.
        let release = self.prev_token_aru.min(incoming_aru);
        self.token_store().release(release);

        if incoming_aru == self.prev_token_aru && incoming_aru < incoming_seq {
            self.aru_stuck += 1;
        } else {
            self.aru_stuck = 0;
        }
        let idle = incoming_seq == self.prev_token_seq
            && originated == 0
            && tok.rtr.is_empty()
            && tok.aru == tok.seq
            && tok.backlog == 0;
        self.idle_visits = if idle { self.idle_visits + 1 } else { 0 };
        self.prev_token_aru = incoming_aru;
        self.prev_token_seq = tok.seq;

        let trailing = self.send_leading(sends, originated, in_recovery);

        if !in_recovery && self.aru_stuck > self.p.fail_recv_const {
            if let Some(lagging) = tok.aru_addr.filter(|&n| n != self.me) {
                warn!(target: "totem", "{}: {lagging} failed to receive for {} rotations; reforming without it",
                    self.me, self.aru_stuck);
                self.send_all(trailing);
                self.new_episode();
                self.fail_set.insert(lagging);
                self.gather_enter("failed to receive");
                return;
            }
        }

        if in_recovery {
            self.note_recovery_visit(tok.recovery_backlog, tok.seq);
            self.forward_token(tok);
            self.check_recovery_done();
            return;
        }

        self.deliver_ready();
        let am_rep = self.memb.first() == Some(self.me);
        if am_rep && self.now >= self.next_merge_detect {
            self.next_merge_detect = self.now.plus_micros(self.p.merge_us);
            let md = Frame::MergeDetect(MergeDetect {
                sender: self.me,
                ring_id: self.ring_id,
            });
            self.send(Dest::Multicast, md.to_bytes());
        }
        if am_rep && self.idle_visits > self.p.seqno_unchanged_const && self.packer.is_empty() {
            // An idle ring: sit on the token for a while instead of spinning it.
            self.send_all(trailing);
            self.held_token = Some((tok, Holding::Idle));
            self.set_timer(Timer::Hold, self.p.hold_us);
            return;
        }
        // A member asked for the token since our last visit: it waits, do not linger.
        let asked = std::mem::take(&mut self.cancel_seen);
        let may_linger = originated > 0 && !asked;
        if may_linger {
            self.linger_deadline = self.now.plus_micros(self.p.linger_visit_us);
        }
        self.end_visit(tok, trailing, may_linger);
    }

    /// Ends a visit that has sent its leading frames: lingers with the token when
    /// `may_linger` and the conditions of [`Srp::may_linger`] hold, else passes it on;
    /// then sends the frames that follow the token.
    fn end_visit(&mut self, tok: Token, trailing: Vec<Bytes>, may_linger: bool) {
        if may_linger && self.may_linger(&tok) {
            self.linger(tok);
        } else if let Some(tok) = self.wait_for_receivers(tok) {
            self.forward_token(tok);
        }
        self.send_all(trailing);
    }

    /// Keeps the token while our applications are behind on their deliveries and the
    /// visit has time left (until `receivers_deadline`, set at the token's arrival);
    /// gives it back otherwise.
    fn wait_for_receivers(&mut self, tok: Token) -> Option<Token> {
        let deadline = self.receivers_deadline;
        if !self.receivers_behind || self.now >= deadline {
            return Some(tok);
        }
        self.stats.token_waits_for_receivers += 1;
        self.held_token = Some((tok, Holding::Receivers));
        self.set_timer(Timer::Hold, deadline.micros_since(self.now));
        None
    }

    /// Whether to keep the token after sending: we sent all we had, the token says
    /// nobody else has messages waiting, and this visit has time left.
    fn may_linger(&self, tok: &Token) -> bool {
        self.p.linger_us > 0
            && self.packer.is_empty()
            && tok.backlog == 0
            && self.now < self.linger_deadline
    }

    /// Keeps the token a moment, so that what our application sends in answer to the
    /// deliveries just made goes out now rather than a rotation later (see
    /// `TotemConfig::linger_us`): until `linger_us` from now, never past the visit's
    /// deadline.
    fn linger(&mut self, tok: Token) {
        self.stats.token_lingers += 1;
        self.held_token = Some((tok, Holding::Linger));
        let left = self.linger_deadline.micros_since(self.now);
        self.set_timer(Timer::Hold, self.p.linger_us.min(left));
    }

    /// The aru: lower it to ours if ours is lower; raise it only if we lowered it.
    fn fold_aru(&mut self, tok: &mut Token) {
        let my_aru = self.token_store().aru();
        if my_aru < tok.aru || tok.aru_addr == Some(self.me) || tok.aru_addr.is_none() {
            tok.aru = my_aru;
            tok.aru_addr = (tok.aru != tok.seq).then_some(self.me);
        }
    }

    /// Sends a visit's frames that go before the token and returns those that follow
    /// it: with the accelerated ring, the newest frames may follow the token (never
    /// during recovery, never all of them: at least one goes first).
    fn send_leading(&mut self, mut sends: Sends, originated: u32, in_recovery: bool) -> Vec<Bytes> {
        let after = if in_recovery {
            0
        } else {
            (self.p.accelerated_window as usize)
                .min(originated as usize)
                .min(sends.frames.len().saturating_sub(1))
        };
        let trailing = sends.frames.split_off(sends.frames.len() - after);
        for f in sends.frames {
            self.send(Dest::Multicast, f);
        }
        trailing
    }

    fn send_all(&mut self, frames: Vec<Bytes>) {
        for f in frames {
            self.send(Dest::Multicast, f);
        }
    }

    /// Resends requested frames we hold, within this visit's budget; drops requests for
    /// frames every member already has.
    fn serve_retransmit_requests(&mut self, tok: &mut Token, sends: &mut Sends) -> u32 {
        let budget = self.p.max_messages as usize;
        let mut resent = 0usize;
        let store = match self.recovery.as_ref() {
            Some(rec) => &rec.store,
            None => &self.store,
        };
        tok.rtr.retain(|&seq| {
            if seq > tok.seq {
                return false;
            }
            match store.get(seq) {
                Some(h) if resent < budget => {
                    sends.frames.push(h.frame.clone());
                    resent += 1;
                    false
                }
                Some(_) => true,
                None => !store.has(seq),
            }
        });
        self.stats.retransmits += resent as u64;
        resent as u32
    }

    /// Adds to the token the frames we miss. A frame is only asked for once it has been
    /// missing at `miss_count_const` visits of the token: the token is unicast and may
    /// overtake the multicast frames it announces, which should be given time to arrive.
    /// The requests stop where the token would no longer fit in one frame; the rest are
    /// asked for at later visits, as the first are served.
    fn request_missing(&mut self, tok: &mut Token) {
        let miss_count_const = self.p.miss_count_const;
        let rtr_max = token_rtr_capacity(self.p.max_frame_len);
        let store = match self.recovery.as_ref() {
            Some(rec) => &rec.store,
            None => &self.store,
        };
        let aru = store.aru();
        // Counts of frames we now hold or were released are forgotten.
        self.miss_counts
            .retain(|&seq, _| seq > aru && !store.has(seq));
        if aru >= tok.seq {
            return;
        }
        for seq in store.missing(aru + 1, tok.seq) {
            let misses = self.miss_counts.entry(seq).or_insert(0);
            *misses += 1;
            if *misses < miss_count_const {
                continue;
            }
            if tok.rtr.len() >= rtr_max {
                break;
            }
            if !tok.rtr.contains(&seq) {
                tok.rtr.push(seq);
            }
        }
    }

    /// Multicasts new frames as flow control allows; returns how many. `already` is
    /// what we sent earlier in this same visit (a held token's second round), which
    /// counts against both limits.
    fn originate(
        &mut self,
        tok: &mut Token,
        retransmitted: u32,
        already: u32,
        sends: &mut Sends,
    ) -> u32 {
        let payload_max = self.payload_max();
        let my_backlog = match self.recovery.as_ref() {
            Some(rec) => rec.resend.len() as u32,
            None => self.packer.frames_needed(payload_max),
        };
        let others_sent = tok.fcc.saturating_sub(self.my_last_sent);
        let others_backlog = tok.backlog.saturating_sub(self.my_last_backlog);
        let window = self.p.window_size;
        let mut allowed = window
            .saturating_sub(others_sent + already)
            .min(self.p.max_messages.saturating_sub(retransmitted + already));
        let total_backlog = others_backlog + my_backlog;
        if total_backlog > window && my_backlog > 0 {
            // More wants to go than a rotation carries: everyone gets a share of the
            // window proportional to what it has waiting.
            let share =
                (u64::from(window) * u64::from(my_backlog) / u64::from(total_backlog)) as u32;
            allowed = allowed.min(share.max(1));
        }
        // Never run so far ahead of what every member holds that stores grow unbounded
        // (a member that keeps missing frames is failed after fail_recv_const rotations).
        let ahead = (u64::from(window) * 64).clamp(1024, MAX_WINDOW / 2);
        let ceiling = (tok.aru + ahead).saturating_sub(tok.seq);
        allowed = allowed.min(ceiling.min(u64::from(u32::MAX)) as u32);

        let mut sent = 0;
        while sent < allowed {
            let seq = tok.seq + 1;
            let Some((frame, payload_len, carries_recovered)) = self.next_frame(seq, payload_max)
            else {
                break;
            };
            let payload = frame.slice(frame.len() - payload_len..);
            let held = Held {
                origin: self.me,
                frame: frame.clone(),
                payload: payload.clone(),
                carries_recovered,
            };
            if !self.token_store().insert(seq, held) {
                // Cannot happen: `seq` is above everything on the ring and within the
                // window ceiling. Stop rather than send what we could not keep.
                warn!(target: "totem", "{}: could not store own frame {seq}", self.me);
                break;
            }
            tok.seq = seq;
            self.stats.mcast_frames += 1;
            sends.frames.push(frame);
            sent += 1;
        }

        let backlog_now = match self.recovery.as_mut() {
            Some(rec) => {
                let left = rec.resend.len() as u32;
                tok.recovery_backlog = tok.recovery_backlog.saturating_sub(rec.last_backlog) + left;
                rec.last_backlog = left;
                0
            }
            None => self.packer.frames_needed(payload_max),
        };
        tok.fcc = others_sent + already + sent;
        tok.backlog = others_backlog + backlog_now;
        self.my_last_sent = already + sent;
        self.my_last_backlog = backlog_now;
        if sent > 0 && self.recovery.is_some() {
            debug!(target: "totem", "{}: resent {sent} old-ring frames", self.me);
        }
        sent
    }

    /// Builds the frame for `seq`: an old-ring message during recovery, else packed
    /// messages from the send queue. Returns the frame, its payload length and whether
    /// it carries a recovered message.
    fn next_frame(&mut self, seq: u64, payload_max: usize) -> Option<(Bytes, usize, bool)> {
        let me = self.me;
        let Some(rec) = self.recovery.as_mut() else {
            let capacity = self.p.max_frame_len;
            let packer = &mut self.packer;
            let (frame, len) = crate::wire::build_mcast(me, self.ring_id, seq, capacity, |out| {
                packer.fill(payload_max, out)
            })?;
            return Some((frame, len, false));
        };
        let (old_seq, origin, payload) = rec.resend.pop_front()?;
        let recovered = Recovered {
            ring_id: self.ring_id,
            seq: old_seq,
            origin,
        };
        let len = payload.len();
        let frame = Frame::Mcast(Mcast {
            sender: me,
            ring_id: rec.ring_id,
            seq,
            recovered: Some(recovered),
            payload,
        })
        .to_bytes();
        Some((frame, len, true))
    }

    /// Passes the token to our successor on the ring it belongs to.
    pub(crate) fn forward_token(&mut self, mut tok: Token) {
        let memb = match self.recovery.as_ref() {
            Some(rec) => &rec.memb,
            None => &self.memb,
        };
        let Some(next) = memb.successor(self.me) else {
            return;
        };
        tok.sender = self.me;
        tok.token_seq += 1;
        let data = Frame::Token(tok).to_bytes();
        self.send_token_frame(next, data);
    }

    /// Passes on a token we hold (on an idle ring, or lingering after our own sends),
    /// first multicasting what was queued here meanwhile, as part of the same visit:
    /// the token already carries everything else that visit did.
    /// `again`: whether the token may linger once more after these messages (not
    /// when another member asked for it).
    pub(crate) fn pass_held_token(&mut self, again: bool) {
        self.cancel_timer(Timer::Hold);
        self.pass_held_due = false;
        let Some((mut tok, holding)) = self.held_token.take() else {
            return;
        };
        // Asked for while we waited for our receivers: no linger after this.
        let again = again && !(holding == Holding::Receivers && self.cancel_seen);
        if !self.packer.is_empty() {
            let mut sends = Sends { frames: Vec::new() };
            let originated = self.originate(&mut tok, 0, self.my_last_sent, &mut sends);
            if originated > 0 {
                if holding == Holding::Idle {
                    // Woken on an idle ring: this is a new visit.
                    self.linger_deadline = self.now.plus_micros(self.p.linger_visit_us);
                }
                self.fold_aru(&mut tok);
                self.idle_visits = 0;
                self.prev_token_seq = tok.seq;
                let trailing = self.send_leading(sends, originated, false);
                self.deliver_ready();
                self.end_visit(tok, trailing, again);
                return;
            }
        }
        // The idle count survives the hold: while the ring stays idle, the token is held
        // at every visit of the representative rather than spun for another
        // seqno_unchanged_const rotations first.
        if let Some(tok) = self.wait_for_receivers(tok) {
            self.forward_token(tok);
        }
    }

    /// Something was queued on a ring that may be idle: get the token moving.
    pub(crate) fn wake_idle_ring(&mut self) {
        if self.held_token.is_some() {
            // Sent when the driver next collects frames, so that everything it queues
            // in the meantime goes in this visit too.
            self.pass_held_due = true;
            return;
        }
        // `>=`: we see the token one visit after the representative, whose count
        // reaches the holding point (`>`) at the same rotation ours reaches this one.
        let idle = self.idle_visits >= self.p.seqno_unchanged_const;
        // With the linger on, the member that has the token may be keeping it for its
        // own application: ask for it. A holder that is not lingering only notes that
        // someone waits (and does not linger at its next visit); it costs one small
        // frame per rotation at most, and only when our queue was empty.
        let lingering_possible = self.p.linger_us > 0;
        if (idle || lingering_possible) && !self.hold_cancel_sent {
            if !idle {
                self.stats.token_wants += 1;
            }
            self.send_hold_cancel();
        }
    }

    /// We miss frames below the highest one received: they can be asked for only on
    /// the token, and a holder lingering with it may keep it for the rest of its
    /// visit, visit after visit while its application keeps sending (each of our
    /// `miss_count_const` visits before the request would be a whole linger budget
    /// long). Ask for it, once per visit of ours like any want; a holder that is not
    /// lingering only skips its next linger.
    fn want_token_for_gap(&mut self) {
        if self.p.linger_us > 0
            && !self.hold_cancel_sent
            && self.held_token.is_none()
            && self.store.aru() < self.store.high_seq()
        {
            self.stats.token_wants += 1;
            self.send_hold_cancel();
        }
    }

    /// Multicasts a token hold cancel: a holder keeping the token idle or lingering
    /// passes it on at once (one waiting for its own slow receivers only skips the
    /// linger after the wait), any other member skips its next linger. One per visit
    /// of ours at most (`hold_cancel_sent` is cleared when the token comes).
    fn send_hold_cancel(&mut self) {
        self.hold_cancel_sent = true;
        let f = Frame::TokenHoldCancel(TokenHoldCancel {
            sender: self.me,
            ring_id: self.ring_id,
        });
        self.send(Dest::Multicast, f.to_bytes());
    }

    pub(crate) fn on_token_hold_cancel(&mut self, ring_id: crate::RingId) {
        if self.state != MembState::Operational || ring_id != self.ring_id {
            return;
        }
        if matches!(self.held_token, Some((_, Holding::Receivers))) {
            // The ring waits for our applications; the asker waits with it, but this
            // visit will not linger once the wait is over.
            self.cancel_seen = true;
        } else if self.held_token.is_some() {
            self.pass_held_token(false);
        } else {
            // The cancel overtook the token: do not hold it when it arrives, and do
            // not linger with it at our next visit (someone waits).
            self.idle_visits = 0;
            self.cancel_seen = true;
        }
    }

    pub(crate) fn on_mcast(&mut self, m: Mcast, frame: Bytes) {
        let held = Held {
            origin: m.sender,
            frame,
            payload: m.payload.clone(),
            carries_recovered: m.recovered.is_some(),
        };
        match self.state {
            MembState::Operational => {
                if m.ring_id == self.ring_id {
                    if self.store.insert(m.seq, held) {
                        self.deliver_ready();
                        self.want_token_for_gap();
                    }
                } else if !self.memb.contains(m.sender) {
                    info!(target: "totem", "{}: message from {} of foreign ring {}; merging",
                        self.me, m.sender, m.ring_id);
                    self.start_merge(m.sender, "foreign message");
                }
            }
            MembState::Recovery => {
                let old_ring = self.ring_id;
                let Some(rec) = self.recovery.as_mut() else {
                    return;
                };
                if m.ring_id != rec.ring_id {
                    // Frames of the old ring arriving now are not taken: the set of old
                    // messages is what the members resend, the same for all of them.
                    return;
                }
                if !rec.store.insert(m.seq, held) {
                    return;
                }
                if let Some(r) = m.recovered.filter(|r| r.ring_id == old_ring) {
                    let old = Held {
                        origin: r.origin,
                        frame: Bytes::new(),
                        payload: m.payload,
                        carries_recovered: false,
                    };
                    self.store.insert(r.seq, old);
                }
            }
            MembState::Gather | MembState::Commit => {
                // A late frame of the ring we still have installed: keep it, it will be
                // resent to the others during recovery.
                if m.ring_id == self.ring_id {
                    self.store.insert(m.seq, held);
                }
            }
        }
    }

    /// Delivers, in order, every held message of the installed ring not yet delivered.
    pub(crate) fn deliver_ready(&mut self) {
        while self.store.delivered() < self.store.aru() {
            let seq = self.store.delivered() + 1;
            self.store.set_delivered(seq);
            let Some(h) = self.store.get(seq) else {
                continue;
            };
            if h.carries_recovered {
                continue;
            }
            let (origin, payload) = (h.origin, h.payload.clone());
            self.deliver_payload(origin, &payload);
        }
    }

    /// Unpacks one frame's payload and queues its whole messages for the layer above.
    pub(crate) fn deliver_payload(&mut self, origin: NodeId, payload: &Bytes) {
        let events = &mut self.events;
        let stats = &mut self.stats;
        let own = (origin == self.me).then(|| self.packer.originals());
        let res = self.unpacker.unpack(origin, payload, own, |msg| {
            stats.messages_delivered += 1;
            events.push_back(Event::Deliver { origin, msg });
        });
        if res.is_err() {
            self.stats.bad_frames += 1;
            warn!(target: "totem", "{}: malformed payload from {origin} dropped", self.me);
        }
    }
}
