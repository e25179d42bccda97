//! The membership protocol (Totem paper §4, totemsrp's `memb_state_*_enter`):
//!
//! - **gather**: members multicast joins with the set of nodes they want in the ring
//!   (`proc_set`) and the set they have given up on (`fail_set`), merging what they hear,
//!   until all of `proc_set − fail_set` send identical sets (consensus) or the consensus
//!   timer fails those that did not;
//! - **commit**: the representative (lowest id) sends a commit token that goes round
//!   twice: first each member writes what it brings from its old ring, then each member
//!   enters recovery with everyone's entries;
//! - **recovery**: on the new ring, members resend the old ring's messages that some
//!   member of their old ring may miss, so that all who move together hold the same set;
//! - **operational**: the old ring's messages are delivered (up to the first gap in the
//!   old regular configuration, after it in the transitional one), then the transitional
//!   and the regular configuration are delivered and the new ring carries new messages.

use std::mem;

use log::{debug, info};

use crate::event::{ConfChange, ConfKind, Dest, Event, MembState};
use crate::srp::{Recovery, Srp, Timer};
use crate::store::RingStore;
use crate::types::{NodeId, NodeSet, RingId};
use crate::wire::{CommitEntry, CommitMember, CommitToken, Frame, Join, Token};

/// How much a new ring's sequence number exceeds the highest one seen (as totemsrp).
const RING_SEQ_STEP: u64 = 4;

impl Srp {
    /// Starts a new gathering from the installed ring's members, forgetting the views
    /// and failures of any earlier gathering.
    pub(crate) fn new_episode(&mut self) {
        self.joins.clear();
        self.proc_set = self.memb.clone();
        self.proc_set.insert(self.me);
        self.fail_set = NodeSet::new();
    }

    /// Enters (or re-enters, after our view changed) the gather state: abandons any ring
    /// being formed, multicasts our view, and (re)arms the join and consensus timers.
    pub(crate) fn gather_enter(&mut self, why: &str) {
        if self.state != MembState::Gather {
            info!(target: "totem", "{}: gathering ({why}) from ring {}", self.me, self.ring_id);
        } else {
            debug!(target: "totem", "{}: view now proc={} fail={} ({why})",
                self.me, self.proc_set, self.fail_set);
        }
        self.state = MembState::Gather;
        self.commit = None;
        // Abandoning recovery keeps the old ring installed, with whatever old messages
        // recovery brought in; the next attempt recovers from there.
        self.recovery = None;
        self.held_token = None;
        self.receivers_deadline = self.now;
        self.last_sent = None;
        self.cancel_timer(Timer::TokenLoss);
        self.cancel_timer(Timer::TokenRetransmit);
        self.cancel_timer(Timer::Hold);
        self.send_join();
        self.set_timer(Timer::Join, self.p.join_us);
        self.set_timer(Timer::Consensus, self.p.consensus_us);
    }

    pub(crate) fn send_join(&mut self) {
        let join = Frame::Join(Join {
            sender: self.me,
            ring_seq: self.ring_seq_high,
            proc_set: self.proc_set.clone(),
            fail_set: self.fail_set.clone(),
        });
        self.send(Dest::Multicast, join.to_bytes());
    }

    /// Another ring exists and `sender` is in it: gather everyone into one ring.
    pub(crate) fn start_merge(&mut self, sender: NodeId, why: &str) {
        self.new_episode();
        self.proc_set.insert(sender);
        self.gather_enter(why);
    }

    pub(crate) fn on_merge_detect(&mut self, sender: NodeId, ring_id: RingId) {
        if ring_id == self.ring_id {
            return;
        }
        match self.state {
            MembState::Operational if !self.memb.contains(sender) => {
                self.start_merge(sender, "merge detect")
            }
            MembState::Gather => {
                let known = self.fail_set.contains(sender) || self.proc_set.contains(sender);
                if !known {
                    self.proc_set.insert(sender);
                    self.gather_enter("merge detect");
                }
            }
            _ => {}
        }
    }

    pub(crate) fn on_join(&mut self, j: Join) {
        // Every member of our installed ring saw its commit token, so its joins carry at
        // least that ring's sequence number; one with less is a leftover of the gathering
        // that formed it.
        let member = self.memb.contains(j.sender);
        if member && j.ring_seq < self.ring_id.seq {
            return;
        }
        let leaving = j.fail_set.contains(j.sender);
        if !member && !leaving && j.fail_set.contains(self.me) {
            // A stranger that gave up on us in a gathering of its own: when it gathers
            // again it starts afresh. Answering by failing it back would only spread the
            // split to whoever hears our joins next.
            return;
        }
        match self.state {
            MembState::Operational => {
                if leaving && !member {
                    return;
                }
                self.new_episode();
                self.gather_enter(if leaving {
                    "member leaving"
                } else {
                    "join received"
                });
            }
            MembState::Commit | MembState::Recovery => {
                // Only a member of the ring being formed can stop it; strangers are
                // heard once it is installed.
                let forming = match (&self.commit, &self.recovery) {
                    (_, Some(rec)) => rec.memb.contains(j.sender),
                    (Some(ct), None) => ct.members.iter().any(|m| m.node == j.sender),
                    (None, None) => false,
                };
                if !forming || self.fail_set.contains(j.sender) {
                    return;
                }
                if !leaving
                    && j.proc_set.is_subset(&self.proc_set)
                    && j.fail_set.is_subset(&self.fail_set)
                {
                    // Nothing we did not already agree on: a late copy.
                    return;
                }
                self.joins.clear();
                self.gather_enter("join while forming a ring");
            }
            MembState::Gather => {}
        }
        self.merge_join(j, leaving);
    }

    /// Gather: folds a member's view into ours.
    fn merge_join(&mut self, j: Join, leaving: bool) {
        if self.fail_set.contains(j.sender) {
            return;
        }
        self.ring_seq_high = self.ring_seq_high.max(j.ring_seq);
        let mut changed = false;
        if leaving || j.fail_set.contains(self.me) {
            // It leaves, or it gave up on us: either way it will not be in our ring.
            changed |= self.fail_set.insert(j.sender);
        } else {
            changed |= self.proc_set.insert(j.sender);
            changed |= self.proc_set.union_with(&j.proc_set);
            changed |= self.fail_set.union_with(&j.fail_set);
            self.joins.insert(j.sender, (j.proc_set, j.fail_set));
        }
        if changed {
            self.gather_enter("view changed");
        }
        self.check_consensus();
    }

    /// Whether `n`'s latest join holds exactly our view.
    fn agrees_with_us(&self, n: NodeId) -> bool {
        self.joins
            .get(&n)
            .is_some_and(|(p, f)| *p == self.proc_set && *f == self.fail_set)
    }

    fn consensus_agreed(&self) -> bool {
        let mut active = self.proc_set.iter().filter(|n| !self.fail_set.contains(*n));
        active.all(|n| n == self.me || self.agrees_with_us(n))
    }

    /// Gather: once every member we want agrees, the representative forms the ring.
    pub(crate) fn check_consensus(&mut self) {
        if self.state != MembState::Gather || !self.consensus_agreed() {
            return;
        }
        let active = self.proc_set.difference(&self.fail_set);
        if active.first() != Some(self.me) {
            return; // the representative sends the commit token
        }
        let seq = self.ring_seq_high + RING_SEQ_STEP;
        self.ring_seq_high = seq;
        let ring_id = RingId { rep: self.me, seq };
        debug!(target: "totem", "{}: consensus on {active}; forming ring {ring_id}", self.me);
        let members = active
            .iter()
            .map(|node| CommitMember { node, entry: None })
            .collect();
        let ct = CommitToken {
            sender: self.me,
            ring_id,
            memb_index: 0,
            members,
        };
        self.fill_and_forward_commit(ct, 0);
    }

    pub(crate) fn on_consensus_timeout(&mut self) {
        if self.state != MembState::Gather {
            return;
        }
        if self.consensus_agreed() {
            // Everyone agreed but no commit token came: ask for fresh joins, so that a
            // representative that died is noticed at the next timeout.
            self.joins.clear();
        } else {
            // Judge every member against the view we held when the timer fired, then fail
            // the dissenters: failing one first would make everyone after it dissent.
            let dissenters: Vec<NodeId> = self
                .proc_set
                .difference(&self.fail_set)
                .iter()
                .filter(|&n| n != self.me && !self.agrees_with_us(n))
                .collect();
            for n in dissenters {
                self.fail_set.insert(n);
            }
        }
        self.gather_enter("consensus timeout");
        self.check_consensus();
    }

    pub(crate) fn on_token_loss(&mut self) {
        match self.state {
            MembState::Operational => {
                self.stats.token_losses += 1;
                info!(target: "totem", "{}: token lost on ring {}", self.me, self.ring_id);
                self.new_episode();
                self.gather_enter("token lost");
            }
            MembState::Commit | MembState::Recovery => {
                // The ring being formed broke. Keep the views of this gathering but
                // demand fresh joins, so that whoever died is failed by consensus.
                self.stats.token_losses += 1;
                self.joins.clear();
                self.gather_enter("ring formation timed out");
            }
            MembState::Gather => {}
        }
    }

    pub(crate) fn on_commit_token(&mut self, ct: CommitToken) {
        let Some(my_idx) = ct.members.iter().position(|m| m.node == self.me) else {
            return;
        };
        if usize::from(ct.memb_index) != my_idx || ct.ring_id.seq <= self.ring_id.seq {
            return;
        }
        let all_filled = ct.members.iter().all(|m| m.entry.is_some());
        match self.state {
            MembState::Gather => {
                if all_filled || ct.members[my_idx].entry.is_some() {
                    return;
                }
                let proposed: NodeSet = ct.members.iter().map(|m| m.node).collect();
                if proposed != self.proc_set.difference(&self.fail_set) {
                    return;
                }
                self.ring_seq_high = self.ring_seq_high.max(ct.ring_id.seq);
                self.fill_and_forward_commit(ct, my_idx);
            }
            MembState::Commit => {
                if !all_filled || !self.is_our_commit(&ct, my_idx) {
                    return;
                }
                self.cancel_timer(Timer::TokenRetransmit);
                self.recovery_enter(&ct);
                self.forward_commit(ct, my_idx);
            }
            MembState::Recovery => {
                let originate = self.recovery.as_ref().is_some_and(|rec| {
                    rec.ring_id == ct.ring_id && !rec.token_originated && my_idx == 0
                });
                if originate && all_filled {
                    self.cancel_timer(Timer::TokenRetransmit);
                    self.originate_token();
                }
            }
            MembState::Operational => {}
        }
    }

    /// Whether `ct`, come back with every entry filled, is the commit token we filled in:
    /// the same ring, the same members, and at our place the very entry we wrote.
    ///
    /// The ring id alone does not say it. A node that crashes after filling in a commit
    /// token and restarts at once (same id, persisted ring sequence) may, while gathering
    /// anew, fill in a retransmitted copy of that token's first rotation, still addressed
    /// to it; the copy that completes the rotation is then the one its previous
    /// incarnation filled in. Entering recovery with it would install the ring on
    /// another life's word: our transitional configuration is computed from the entries
    /// of our old ring, and ours there is not from our old ring, so it would leave us
    /// out (an empty one when we come alone), while the others would count us among
    /// those who bring their old ring's messages. Refusing it lets the ring being formed
    /// time out and a new gathering include us as we are.
    fn is_our_commit(&self, ct: &CommitToken, my_idx: usize) -> bool {
        let Some(c) = self.commit.as_ref() else {
            return false;
        };
        c.ring_id == ct.ring_id
            && c.members.len() == ct.members.len()
            && c.members
                .iter()
                .zip(&ct.members)
                .all(|(a, b)| a.node == b.node)
            && c.members.get(my_idx).map(|m| m.entry) == ct.members.get(my_idx).map(|m| m.entry)
    }

    /// Writes our entry into the commit token (first rotation) and passes it on.
    fn fill_and_forward_commit(&mut self, mut ct: CommitToken, my_idx: usize) {
        ct.members[my_idx].entry = Some(CommitEntry {
            old_ring_id: self.ring_id,
            aru: self.store.aru(),
            high_delivered: self.store.delivered(),
            received_flg: self.store.aru() == self.store.high_seq(),
        });
        self.state = MembState::Commit;
        self.cancel_timer(Timer::Join);
        self.cancel_timer(Timer::Consensus);
        self.set_timer(Timer::TokenLoss, self.p.token_us);
        self.commit = Some(ct.clone());
        if ct.members.len() == 1 {
            // A ring of one: nothing to circulate.
            self.recovery_enter(&ct);
            self.originate_token();
            return;
        }
        self.forward_commit(ct, my_idx);
    }

    fn forward_commit(&mut self, mut ct: CommitToken, my_idx: usize) {
        let next = (my_idx + 1) % ct.members.len();
        let to = ct.members[next].node;
        ct.memb_index = next as u16;
        ct.sender = self.me;
        self.send_token_frame(to, Frame::Commit(ct).to_bytes());
    }

    /// The commit token has every member's entry: start the new ring's recovery.
    fn recovery_enter(&mut self, ct: &CommitToken) {
        let memb: NodeSet = ct.members.iter().map(|m| m.node).collect();
        let from_my_ring: Vec<&CommitEntry> = ct
            .members
            .iter()
            .filter_map(|m| m.entry.as_ref())
            .filter(|e| e.old_ring_id == self.ring_id)
            .collect();
        // The transitional configuration: the new ring's members that come from our old
        // ring. It holds us because the token is the one we filled in (`is_our_commit`),
        // so our own entry names our installed ring.
        let trans: NodeSet = ct
            .members
            .iter()
            .filter(|m| m.entry.is_some_and(|e| e.old_ring_id == self.ring_id))
            .map(|m| m.node)
            .collect();
        let low_aru = from_my_ring.iter().map(|e| e.aru).min().unwrap_or(0);
        // Everything above the lowest aru of those who come with us, some of them may
        // miss: resend all we hold of it (each of them does the same).
        let resend = self
            .store
            .held_range(low_aru + 1, self.store.high_seq())
            .filter(|(_, h)| !h.carries_recovered)
            .map(|(seq, h)| (seq, h.origin, h.payload.clone()))
            .collect();
        info!(target: "totem", "{}: recovering into ring {} members {memb} (with us from {}: {trans}, low aru {low_aru})",
            self.me, ct.ring_id, self.ring_id);
        self.ring_seq_high = self.ring_seq_high.max(ct.ring_id.seq);
        self.recovery = Some(Recovery {
            ring_id: ct.ring_id,
            memb,
            trans,
            store: RingStore::default(),
            resend,
            last_backlog: 0,
            visits: 0,
            install_seq: None,
            token_originated: false,
        });
        self.state = MembState::Recovery;
        self.commit = None;
        self.token_seq_seen = 0;
        self.prev_token_aru = 0;
        self.prev_token_seq = 0;
        self.miss_counts.clear();
        self.aru_stuck = 0;
        self.my_last_sent = 0;
        self.my_last_backlog = 0;
        self.idle_visits = 0;
        self.held_token = None;
        self.receivers_deadline = self.now;
        // A message we had only partly sent goes again, whole, in the new ring.
        self.packer.restart_partial();
        self.set_timer(Timer::TokenLoss, self.p.token_us);
    }

    /// The representative starts the new ring's token once the commit token is back.
    fn originate_token(&mut self) {
        let Some(rec) = self.recovery.as_mut() else {
            return;
        };
        rec.token_originated = true;
        let tok = Token {
            sender: self.me,
            ring_id: rec.ring_id,
            token_seq: 1,
            seq: 0,
            aru: 0,
            aru_addr: None,
            fcc: 0,
            backlog: 0,
            recovery_backlog: 0,
            rtr: Vec::new(),
        };
        self.on_token(tok);
    }

    /// Recovery: done once nobody has old messages left to send and we hold every frame
    /// of the new ring up to the point where that became true.
    pub(crate) fn check_recovery_done(&mut self) {
        let done = match self.recovery.as_mut() {
            Some(rec) => rec.install_seq.is_some_and(|s| rec.store.aru() >= s),
            None => false,
        };
        if done {
            self.operational_enter();
        }
    }

    /// Called at each of our token visits during recovery, after our share of the
    /// recovery backlog went on the token.
    pub(crate) fn note_recovery_visit(&mut self, recovery_backlog: u32, seq: u64) {
        if let Some(rec) = self.recovery.as_mut() {
            rec.visits += 1;
            // From our second visit on, every member has put its share on the token.
            if rec.install_seq.is_none() && rec.visits >= 2 && recovery_backlog == 0 {
                rec.install_seq = Some(seq);
            }
        }
    }

    /// Installs the new ring: delivers what is left of the old one, then the
    /// transitional and the regular configuration.
    fn operational_enter(&mut self) {
        let Some(rec) = self.recovery.take() else {
            return;
        };
        let mut old = mem::replace(&mut self.store, rec.store);
        let old_memb = mem::replace(&mut self.memb, rec.memb.clone());
        let old_ring = mem::replace(&mut self.ring_id, rec.ring_id);

        // The old ring's messages up to the first gap belong to the old configuration.
        let mut seq = old.delivered() + 1;
        while let Some(h) = old.get(seq) {
            let (origin, payload, skip) = (h.origin, h.payload.clone(), h.carries_recovered);
            if !skip {
                self.deliver_payload(origin, &payload);
            }
            old.set_delivered(seq);
            seq += 1;
        }

        self.events.push_back(Event::ConfChange(ConfChange {
            kind: ConfKind::Transitional,
            ring_id: rec.ring_id,
            members: rec.trans.clone(),
            left: old_memb.difference(&rec.trans),
            joined: NodeSet::new(),
        }));

        // After a gap, only messages of those who came along, in the transitional
        // configuration. A message whose pieces were not all recovered is dropped by the
        // unpacker, and whatever is still unfinished is dropped with the old ring.
        while seq <= old.high_seq() {
            if let Some(h) = old.get(seq) {
                let (origin, payload) = (h.origin, h.payload.clone());
                if !h.carries_recovered && rec.trans.contains(origin) {
                    self.deliver_payload(origin, &payload);
                }
            }
            seq += 1;
        }
        self.unpacker.reset();
        // Our own unfinished messages went with it; one cut mid-way is sent again.
        self.packer.originals().clear();

        info!(target: "totem", "{}: entering operational: ring {} members {} (was {old_ring} {old_memb})",
            self.me, self.ring_id, self.memb);
        self.events.push_back(Event::ConfChange(ConfChange {
            kind: ConfKind::Regular,
            ring_id: self.ring_id,
            members: self.memb.clone(),
            left: NodeSet::new(),
            joined: self.memb.difference(&rec.trans),
        }));
        self.stats.configurations += 1;
        self.state = MembState::Operational;
        self.proc_set = self.memb.clone();
        self.fail_set = NodeSet::new();
        self.joins.clear();
        self.next_merge_detect = self.now.plus_micros(self.p.merge_us);
        self.deliver_ready();
    }
}
