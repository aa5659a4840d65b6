//! Time: str0m timeouts, connect deadlines and waiting play offers, in one heap of deadlines.

use std::cmp::Reverse;
use std::time::Instant;

use huddle_proto::ServerMsg;
use str0m::Input;
use tracing::debug;

use super::Sfu;
use super::pc::Link;
use super::pc::not_started;

impl Sfu {
    /// Drives time: PCs whose timeout is due, connect deadlines and waiting play offers.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Take the due entries first: a PC rescheduled at `now` waits for the next call.
        // The list is kept between calls (no allocation per timer event).
        let mut due = std::mem::take(&mut self.due);
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            due.push((t, id));
        }
        for (t, id) in due.drain(..) {
            let Some(pc) = self.pc(id) else { continue };
            if matches!(pc.link, Link::Connecting { deadline } if now >= deadline) {
                self.fail_pc(now, id, "not connected in time (ICE or DTLS)");
                continue;
            }
            if pc.scheduled != Some(t) {
                continue; // stale
            }
            pc.scheduled = None;
            if let Err(e) = pc.rtc.handle_input(Input::Timeout(now)) {
                debug!(error = %e, "media timeout handling failed");
                self.fail_pc(now, id, "the connection failed");
                continue;
            }
            self.drive(id, now);
        }
        self.due = due;
        let mut expire = false;
        while self.pending_deadlines.peek().is_some_and(|Reverse(t)| *t <= now) {
            self.pending_deadlines.pop();
            expire = true;
        }
        if expire {
            self.expire_pending(now);
        }
        self.flush(now);
        if self.timers.len() > 4 * self.live + 1024 {
            self.compact_timers();
        }
    }

    pub(super) fn expire_pending(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for entry in self.streams.values_mut() {
            entry.pending.retain(|p| {
                if p.deadline <= now {
                    expired.push((p.session, p.seq));
                    false
                } else {
                    true
                }
            });
        }
        for (session, seq) in expired {
            self.signals
                .push_back((session, ServerMsg::error(Some(seq), &not_started())));
        }
        let released = &mut self.released;
        self.streams.retain(|k, e| {
            let keep = !(e.is_unused() && e.publisher_session.is_none());
            if !keep {
                released.push(k.clone());
            }
            keep
        });
    }

    /// Rebuilds the timer heap without its stale entries.
    pub(super) fn compact_timers(&mut self) {
        self.timers.clear();
        for (id, pc) in self.pcs.iter().enumerate() {
            let Some(pc) = pc else { continue };
            if let Some(t) = pc.scheduled {
                self.timers.push(Reverse((t, id)));
            }
            if let Link::Connecting { deadline } = pc.link {
                self.timers.push(Reverse((deadline, id)));
            }
        }
    }

    /// When [`Sfu::handle_timeout`] is due next, if anything waits (possibly early: a stale
    /// entry makes a call that finds nothing to do).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pc = self.timers.peek().map(|Reverse((t, _))| *t);
        let pending = self.pending_deadlines.peek().map(|Reverse(t)| *t);
        match (pc, pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
