//! Which shard a stream lives in: the least loaded one when the stream first appears, then the
//! same one for as long as it has state there.
//!
//! A stream's publish PC and play PCs live in one shard (forwarding never crosses threads). The
//! shard used to be a hash of the stream's name, which spreads many streams evenly but few
//! unevenly: ten streams over two shards split 7/3 or worse one time in three, and the busier
//! shard then saturates while the other idles. Placement instead puts a new stream on the
//! shard with the fewest streams (then the fewest PCs; the hash breaks ties) and keeps it there.
//!
//! **When a placement may be forgotten.** Only when the shard holds nothing of the stream *and*
//! no command for it is on the way there: otherwise a later offer could land on another shard
//! and split the stream. Signaling counts each command it routes ([`Placement::route`]); the
//! shard, after handling one, reports whether the stream still exists there
//! ([`Placement::handled`]), and reports streams it dropped on its own (a PC that failed or
//! timed out, a session that ended: [`Placement::released`]). A placement is forgotten when the
//! stream is gone from its shard with no command in flight. Both sides call in under one lock,
//! and a shard handles its commands in order, so the count is exact.

use std::collections::HashMap;

use huddle_proto::{AppId, StreamId};

use super::shard::stream_shard;

type StreamKey = (AppId, StreamId);

/// A stream's shard and the commands routed to it and not yet handled.
#[derive(Debug, Clone, Copy)]
struct Placed {
    shard: usize,
    in_flight: u32,
}

/// The stream → shard table shared by signaling and the shards (behind a mutex).
#[derive(Debug)]
pub struct Placement {
    streams: HashMap<StreamKey, Placed>,
    /// Streams placed per shard.
    placed: Vec<usize>,
    /// Live PCs per shard, as each shard last reported.
    pcs: Vec<usize>,
}

impl Placement {
    /// An empty table for `shards` shards (at least one).
    pub fn new(shards: usize) -> Placement {
        let n = shards.max(1);
        Placement {
            streams: HashMap::new(),
            placed: vec![0; n],
            pcs: vec![0; n],
        }
    }

    /// The shard for a command about `key`, counted in flight until the shard reports it
    /// [`handled`](Placement::handled). A stream not placed yet goes to the shard with the fewest
    /// streams, then the fewest PCs, then its hash's shard.
    pub fn route(&mut self, app: AppId, stream_id: &StreamId) -> usize {
        let key = (app, stream_id.clone());
        if let Some(p) = self.streams.get_mut(&key) {
            p.in_flight += 1;
            return p.shard;
        }
        let n = self.placed.len();
        let hashed = stream_shard(app, stream_id, n);
        let load = |s: usize| (self.placed[s], self.pcs[s], usize::from(s != hashed));
        let shard = (0..n).min_by_key(|s| load(*s)).unwrap_or(0);
        self.placed[shard] += 1;
        self.streams.insert(key, Placed { shard, in_flight: 1 });
        shard
    }

    /// A shard handled a command about `key`; `live` is whether the stream still has state there.
    pub fn handled(&mut self, key: &StreamKey, live: bool) {
        let Some(p) = self.streams.get_mut(key) else {
            return;
        };
        p.in_flight = p.in_flight.saturating_sub(1);
        if p.in_flight == 0 && !live {
            self.forget(key);
        }
    }

    /// A shard dropped `key` on its own (no command about it).
    pub fn released(&mut self, key: &StreamKey) {
        if self.streams.get(key).is_some_and(|p| p.in_flight == 0) {
            self.forget(key);
        }
    }

    /// A shard's live PC count.
    pub fn set_pcs(&mut self, shard: usize, pcs: usize) {
        if let Some(n) = self.pcs.get_mut(shard) {
            *n = pcs;
        }
    }

    /// The shard `key` is placed on, if it is.
    pub fn shard_of(&self, key: &StreamKey) -> Option<usize> {
        self.streams.get(key).map(|p| p.shard)
    }

    /// Streams placed per shard.
    pub fn placed(&self) -> &[usize] {
        &self.placed
    }

    fn forget(&mut self, key: &StreamKey) {
        if let Some(p) = self.streams.remove(key)
            && let Some(n) = self.placed.get_mut(p.shard)
        {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> StreamKey {
        (AppId::new(1).unwrap(), StreamId::new(s).unwrap())
    }

    #[test]
    fn new_streams_spread_evenly_over_the_shards() {
        for n in [1, 2, 3, 4] {
            let mut p = Placement::new(n);
            for i in 0..10 {
                let (app, id) = key(&format!("load1234-p{i}"));
                p.route(app, &id);
            }
            let (lo, hi) = (p.placed().iter().min().unwrap(), p.placed().iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} shards: {:?}", p.placed());
        }
    }

    #[test]
    fn pcs_break_ties_then_the_hash() {
        let mut p = Placement::new(2);
        p.set_pcs(0, 50);
        let (app, id) = key("a");
        assert_eq!(p.route(app, &id), 1);
        let mut q = Placement::new(2);
        let (app, id) = key("a");
        assert_eq!(q.route(app, &id), stream_shard(app, &id, 2));
    }

    #[test]
    fn a_stream_stays_on_its_shard_while_it_has_state_or_commands_in_flight() {
        let mut p = Placement::new(2);
        let (app, id) = key("s");
        let k = key("s");
        let shard = p.route(app, &id); // the publish offer
        // A second command (a play offer) is routed before the first is handled.
        assert_eq!(p.route(app, &id), shard);
        // The shard drops the stream on its own (say the publisher's PC failed): a command is
        // still on its way, so the placement stays.
        p.released(&k);
        assert_eq!(p.shard_of(&k), Some(shard));
        p.handled(&k, false); // the publish offer, refused
        assert_eq!(p.shard_of(&k), Some(shard), "the play offer is still in flight");
        p.handled(&k, true); // the play offer waits for a publisher: state on the shard
        assert_eq!(p.shard_of(&k), Some(shard));
        // More streams elsewhere do not move it.
        for i in 0..5 {
            let (a, s) = key(&format!("x{i}"));
            p.route(a, &s);
        }
        assert_eq!(p.route(app, &id), shard);
        p.handled(&k, true);
        // Gone from the shard with nothing in flight: forgotten, and its count with it.
        p.released(&k);
        assert_eq!(p.shard_of(&k), None);
        assert_eq!(p.placed().iter().sum::<usize>(), 5);
    }

    #[test]
    fn a_command_for_a_stream_that_never_was_leaves_nothing() {
        let mut p = Placement::new(3);
        let (app, id) = key("ghost");
        p.route(app, &id); // say a close for a stream nobody published
        p.handled(&key("ghost"), false);
        assert_eq!(p.shard_of(&key("ghost")), None);
        assert_eq!(p.placed(), &[0, 0, 0]);
        // Reports about unknown streams are ignored.
        p.handled(&key("never"), false);
        p.released(&key("never"));
    }
}
