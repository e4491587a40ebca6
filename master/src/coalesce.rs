//! `Coalescer`: turns a stream of watch signals into a short list of work, deciding *when*
//! each path is looked at. Pure: it takes the current instant as an argument, so its timing
//! is unit-tested without sleeping.
//!
//! Rules, in the order they matter:
//! - A file being written (`Written`) is looked at once it has been quiet for `quiet`, or at
//!   the latest `max_delay` after the first write (a hash of a still-changing file fails and
//!   is retried, so a busy log file is published in stable snapshots).
//! - A closed file is looked at after `closed`: long enough to see a rename that the same
//!   program makes right after its close (a save through a temporary file), short enough
//!   for low latency. A program that syncs before it renames (vim) takes milliseconds, so
//!   no short wait sees that rename; its file is published and then moved, correct either
//!   way. A chmod or a removal is looked at after `settle`, and a closed file never before
//!   a removal or a move signalled earlier: changes reach the log in the order they were
//!   made (`rm a; write b` is a delete, then a put).
//! - Two rename halves with the same tracker become one `Move`; a half left alone for
//!   `pair` becomes a plain refresh (moved in from, or out to, somewhere unwatched).
//! - A removal is looked at after `settle`, unless many are pending (`rm -rf` of a tree):
//!   then removals wait until the burst has been quiet for `quiet` (1 s at most), so the
//!   tree goes out as one delete of its top instead of one per file.
//! - A `Rescan` replaces all pending work, since it looks at everything.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::watch::Signal;
use crate::RelPath;

/// The delays, tuned for low latency without publishing half-written files.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub closed: Duration,
    pub settle: Duration,
    pub quiet: Duration,
    pub max_delay: Duration,
    pub pair: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            // W1's latency is this wait plus about a millisecond: 1 ms here made the wait
            // half of it (docs/BENCHMARKS.md).
            closed: Duration::from_micros(200),
            settle: Duration::from_millis(1),
            quiet: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
            pair: Duration::from_millis(10),
        }
    }
}

/// Something the tree must look at now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    Refresh(RelPath),
    Move { from: RelPath, to: RelPath },
    RescanAll,
}

#[derive(Debug, Clone)]
struct PendingPath {
    order: u64,
    first: Instant,
    due: Instant,
    removal: bool,
}

/// More pending removals than this is a burst (`rm -rf`), coalesced until quiet.
const REMOVAL_BURST: usize = 16;

#[derive(Debug, Clone)]
struct PendingMove {
    order: u64,
    due: Instant,
    from: RelPath,
    to: RelPath,
}

/// Pending work, keyed by path so that bursts collapse.
#[derive(Debug, Default)]
pub struct Coalescer {
    timing: Timing,
    next_order: u64,
    paths: HashMap<RelPath, PendingPath>,
    moves: Vec<PendingMove>,
    unpaired: HashMap<usize, (RelPath, Instant)>,
    rescan: Option<Instant>,
    /// The first and the latest removal of the current burst.
    removals: Option<(Instant, Instant)>,
}

impl Coalescer {
    pub fn new(timing: Timing) -> Coalescer {
        Coalescer {
            timing,
            ..Coalescer::default()
        }
    }

    pub fn is_idle(&self) -> bool {
        self.paths.is_empty()
            && self.moves.is_empty()
            && self.unpaired.is_empty()
            && self.rescan.is_none()
    }

    /// Records a signal observed at `now`.
    pub fn observe(&mut self, signal: Signal, now: Instant) {
        let t = self.timing;
        match signal {
            Signal::Written(path) => {
                self.mark(path, now, |first| (now + t.quiet).min(first + t.max_delay))
            }
            Signal::Closed(path) => {
                let due = self.after_earlier_removals_and_moves(now + t.closed);
                self.mark(path, now, |_| due)
            }
            Signal::Touched(path) => self.mark(path, now, |_| now + t.settle),
            Signal::Removed(path) => {
                let first = self.removals.map_or(now, |(first, _)| first);
                self.removals = Some((first, now));
                self.mark(path.clone(), now, |_| now + t.settle);
                if let Some(pending) = self.paths.get_mut(&path) {
                    pending.removal = true;
                }
            }
            Signal::Created(path) => self.mark(path, now, |_| now),
            Signal::RenamedFrom { tracker, path } => {
                self.unpaired.insert(tracker, (path, now));
            }
            Signal::RenamedTo { tracker, path } => match self.unpaired.remove(&tracker) {
                Some((from, _)) => self.record_move(from, path, now),
                None => self.mark(path, now, |_| now),
            },
            Signal::Rescan | Signal::WatchLimit => {
                self.rescan = Some(now + t.settle);
            }
        }
    }

    /// `due`, or later: when the last removal or move signalled before is due, so that a
    /// closed file, which waits less, is never published before them (`rm a; write b`
    /// reaches the log in that order).
    fn after_earlier_removals_and_moves(&self, due: Instant) -> Instant {
        let removals = self.paths.values().filter(|p| p.removal).map(|p| p.due);
        let moves = self.moves.iter().map(|m| m.due);
        removals.chain(moves).fold(due, Instant::max)
    }

    /// Asks for `path` to be looked at again once quiet (its hash was unstable).
    pub fn retry(&mut self, path: RelPath, now: Instant) {
        let due = now + self.timing.quiet;
        self.mark(path, now, |_| due);
    }

    /// While a burst of removals goes on, when its removals may be looked at.
    fn burst_hold(&self) -> Option<Instant> {
        let (first, last) = self.removals?;
        let pending = self.paths.values().filter(|p| p.removal).count();
        (pending > REMOVAL_BURST)
            .then(|| (last + self.timing.quiet).min(first + self.timing.max_delay))
    }

    /// When the next piece of work falls due, if any is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        let hold = self.burst_hold();
        let paths = self.paths.values().map(|p| {
            if p.removal {
                hold.map_or(p.due, |h| h.max(p.due))
            } else {
                p.due
            }
        });
        let moves = self.moves.iter().map(|m| m.due);
        let unpaired = self.unpaired.values().map(|(_, at)| *at + self.timing.pair);
        paths.chain(moves).chain(unpaired).chain(self.rescan).min()
    }

    /// Removes and returns the work due at `now`, in the order it was first signalled.
    pub fn take_due(&mut self, now: Instant) -> Vec<Work> {
        if self.rescan.is_some_and(|due| due <= now) {
            self.rescan = None;
            self.paths.clear();
            self.moves.clear();
            self.unpaired.clear();
            return vec![Work::RescanAll];
        }
        let expired: Vec<usize> = self
            .unpaired
            .iter()
            .filter(|(_, (_, at))| *at + self.timing.pair <= now)
            .map(|(tracker, _)| *tracker)
            .collect();
        for tracker in expired {
            if let Some((path, _)) = self.unpaired.remove(&tracker) {
                self.mark(path, now, |_| now);
            }
        }
        let hold = self.burst_hold().filter(|h| *h > now);
        let mut due: Vec<(u64, Work)> = Vec::new();
        self.paths.retain(|path, pending| {
            if pending.due <= now && !(pending.removal && hold.is_some()) {
                due.push((pending.order, Work::Refresh(path.clone())));
                false
            } else {
                true
            }
        });
        self.moves.retain(|m| {
            if m.due <= now {
                due.push((
                    m.order,
                    Work::Move {
                        from: m.from.clone(),
                        to: m.to.clone(),
                    },
                ));
                false
            } else {
                true
            }
        });
        if !self.paths.values().any(|p| p.removal) {
            self.removals = None;
        }
        due.sort_by_key(|(order, _)| *order);
        due.into_iter().map(|(_, work)| work).collect()
    }

    fn mark(&mut self, path: RelPath, now: Instant, due: impl FnOnce(Instant) -> Instant) {
        let order = self.next_order;
        let pending = self.paths.entry(path).or_insert_with(|| PendingPath {
            order,
            first: now,
            due: now,
            removal: false,
        });
        if pending.order == order {
            self.next_order += 1;
        }
        pending.due = due(pending.first);
    }

    fn record_move(&mut self, from: RelPath, to: RelPath, now: Instant) {
        // Writes still pending under the old name continue under the new one.
        let carried: Vec<RelPath> = self
            .paths
            .keys()
            .filter(|p| p.starts_with(&from))
            .cloned()
            .collect();
        for old in carried {
            if let (Some(pending), Some(new)) = (self.paths.remove(&old), old.rebase(&from, &to)) {
                self.paths.insert(new, pending);
            }
        }
        self.moves.push(PendingMove {
            order: self.next_order,
            due: now + self.timing.settle,
            from,
            to,
        });
        self.next_order += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both halves of a rename, signalled at `at`.
    fn renamed(c: &mut Coalescer, tracker: usize, from: &str, to: &str, at: Instant) {
        let path = p(from);
        c.observe(Signal::RenamedFrom { tracker, path }, at);
        let path = p(to);
        c.observe(Signal::RenamedTo { tracker, path }, at);
    }

    fn p(s: &str) -> RelPath {
        RelPath::new(s).expect("valid test path")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_of_writes_is_one_refresh_after_the_close() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Timing::default());
        for i in 0..100 {
            c.observe(Signal::Written(p("f")), t0 + ms(i));
        }
        assert!(c.take_due(t0 + ms(100)).is_empty(), "still being written");
        c.observe(Signal::Closed(p("f")), t0 + ms(100));
        assert_eq!(c.take_due(t0 + ms(101)), [Work::Refresh(p("f"))]);
        assert!(c.is_idle());
    }

    #[test]
    fn a_closed_file_waits_less_than_a_chmod_and_a_rename_right_after_is_seen() {
        let t0 = Instant::now();
        let timing = Timing::default();
        assert!(timing.closed < timing.settle);
        let mut c = Coalescer::new(timing);
        c.observe(Signal::Closed(p("f")), t0);
        c.observe(Signal::Touched(p("g")), t0);
        assert_eq!(c.next_deadline(), Some(t0 + timing.closed));
        assert_eq!(c.take_due(t0 + timing.closed), [Work::Refresh(p("f"))]);
        assert_eq!(c.take_due(t0 + timing.settle), [Work::Refresh(p("g"))]);
        // A temporary file renamed over its target within the wait: one move, no refresh
        // of the temporary name.
        c.observe(Signal::Closed(p("t.swp")), t0);
        renamed(&mut c, 1, "t.swp", "t", t0 + Duration::from_micros(50));
        let due = c.take_due(t0 + timing.settle + ms(1));
        assert!(!due.contains(&Work::Refresh(p("t.swp"))), "{due:?}");
        assert!(
            due.contains(&Work::Move {
                from: p("t.swp"),
                to: p("t")
            }),
            "{due:?}"
        );
    }

    #[test]
    fn a_closed_file_is_not_published_before_an_earlier_removal_or_move() {
        let t0 = Instant::now();
        let timing = Timing::default();
        let mut c = Coalescer::new(timing);
        c.observe(Signal::Removed(p("gone")), t0);
        c.observe(Signal::Closed(p("new")), t0 + Duration::from_micros(10));
        assert!(
            c.take_due(t0 + timing.closed + Duration::from_micros(10))
                .is_empty(),
            "the close waits for the removal before it"
        );
        assert_eq!(
            c.take_due(t0 + timing.settle),
            [Work::Refresh(p("gone")), Work::Refresh(p("new"))]
        );
        let t1 = t0 + ms(10);
        renamed(&mut c, 2, "a", "b", t1);
        c.observe(Signal::Closed(p("c")), t1);
        assert!(c.take_due(t1 + timing.closed).is_empty());
        assert_eq!(
            c.take_due(t1 + timing.settle),
            [
                Work::Move {
                    from: p("a"),
                    to: p("b")
                },
                Work::Refresh(p("c"))
            ]
        );
    }

    #[test]
    fn an_unclosed_writer_is_looked_at_after_quiet_or_max_delay() {
        let t0 = Instant::now();
        let timing = Timing::default();
        let mut c = Coalescer::new(timing);
        c.observe(Signal::Written(p("f")), t0);
        assert_eq!(c.next_deadline(), Some(t0 + timing.quiet));
        // A writer that never pauses is still looked at after max_delay.
        let mut now = t0;
        while now < t0 + timing.max_delay {
            now += ms(10);
            c.observe(Signal::Written(p("f")), now);
        }
        assert_eq!(c.take_due(t0 + timing.max_delay), [Work::Refresh(p("f"))]);
    }

    #[test]
    fn rename_halves_pair_into_one_move() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Timing::default());
        renamed(&mut c, 7, "a", "b", t0);
        assert_eq!(
            c.take_due(t0 + ms(5)),
            [Work::Move {
                from: p("a"),
                to: p("b")
            }]
        );
    }

    #[test]
    fn an_unpaired_half_becomes_a_refresh() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Timing::default());
        c.observe(
            Signal::RenamedFrom {
                tracker: 1,
                path: p("gone"),
            },
            t0,
        );
        c.observe(
            Signal::RenamedTo {
                tracker: 2,
                path: p("arrived"),
            },
            t0,
        );
        assert_eq!(c.take_due(t0), [Work::Refresh(p("arrived"))]);
        assert!(
            c.take_due(t0 + ms(5)).is_empty(),
            "the other half may still come"
        );
        assert_eq!(c.take_due(t0 + ms(20)), [Work::Refresh(p("gone"))]);
    }

    #[test]
    fn pending_writes_follow_a_rename_and_order_is_kept() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Timing::default());
        c.observe(Signal::Created(p("first")), t0);
        c.observe(Signal::Written(p("dir/f")), t0);
        renamed(&mut c, 1, "dir", "new", t0);
        assert_eq!(
            c.take_due(t0 + ms(5)),
            [
                Work::Refresh(p("first")),
                Work::Move {
                    from: p("dir"),
                    to: p("new")
                }
            ]
        );
        assert_eq!(c.take_due(t0 + ms(100)), [Work::Refresh(p("new/f"))]);
    }

    #[test]
    fn a_single_removal_is_quick_and_a_burst_waits_for_quiet() {
        let t0 = Instant::now();
        let timing = Timing::default();
        let mut c = Coalescer::new(timing);
        c.observe(Signal::Removed(p("one")), t0);
        assert_eq!(c.take_due(t0 + ms(2)), [Work::Refresh(p("one"))]);
        // rm -rf: 100 removals over 100 ms; nothing goes out until 50 ms after the last.
        for i in 0..100 {
            c.observe(Signal::Removed(p(&format!("t/f{i}"))), t0 + ms(10 + i));
        }
        assert!(
            c.take_due(t0 + ms(60)).is_empty(),
            "the burst is still going on"
        );
        assert_eq!(c.next_deadline(), Some(t0 + ms(109) + timing.quiet));
        assert_eq!(c.take_due(t0 + ms(109) + timing.quiet).len(), 100);
        assert!(c.is_idle());
    }

    #[test]
    fn rescan_replaces_everything_pending() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Timing::default());
        c.observe(Signal::Written(p("x")), t0);
        c.observe(Signal::Rescan, t0);
        assert_eq!(c.take_due(t0 + ms(5)), [Work::RescanAll]);
        assert!(c.is_idle());
    }
}
