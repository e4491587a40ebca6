//! Retention: what of the log and of its checkpoints the bus keeps.
//!
//! When the newest segment of the log is closed (`log.rs`), the bus writes a checkpoint at
//! its last `seq` ([`build_checkpoint`]: the previous checkpoint, or the log's start, and
//! the events after it, replayed off the appending thread). Then whole segments before the
//! retention point go ([`retention_point`]), and the checkpoints no reader needs any more.
//!
//! The retention point is the lowest of: the newest checkpoint (everything before it is
//! covered), the position of every slave connected or seen within the history window (what
//! it has not answered, it still reads from the log), where every connected reader is
//! reading (a listener, a master replaying), and the history window itself
//! (`--keep-history`: segments whose last event is younger are kept whole; `0` keeps only
//! what slaves need). A slave not seen within the window is not waited for: once the log
//! starts after its position, it resyncs from the checkpoint instead (`agent/resync.rs`).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::log::{for_each_event, Located, SegmentInfo};
use crate::checkpoint::{self, Snapshot};
use crate::event::Role;
use crate::rules::Rules;

/// What the bus keeps, and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Segments whose last event is younger than this are kept whole.
    pub keep_history: Duration,
    /// Content is removed only once it has been unreferenced this long (`gc.rs`).
    pub gc_grace: Duration,
    /// How often the bus truncates what the window let go and collects content.
    pub gc_interval: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            keep_history: Duration::from_secs(7 * 24 * 3600),
            gc_grace: Duration::from_secs(3600),
            gc_interval: Duration::from_secs(60),
        }
    }
}

/// How many segments a history window is cut into by age. Only whole segments are
/// removed, and one can go only once its last event is older than the window: with
/// segments as old as the window itself, the log and the content it names grew to twice
/// the window before dropping back (R2 in docs/BENCHMARKS.md: 7.7 GB after 8 minutes with
/// a 3-minute window); with eight, to one and an eighth.
pub const SEGMENTS_PER_WINDOW: u32 = 8;

impl Retention {
    /// The age at which the bus closes the log's newest segment (`EventLog::rotate_if_older`).
    pub fn segment_age(&self) -> Duration {
        self.keep_history / SEGMENTS_PER_WINDOW
    }
}

/// The first `seq` the bus must keep: see the module docs. `newest_checkpoint` is the
/// highest `seq` a checkpoint holds; `connected` names the slaves connected now (waited
/// for whatever the window); `oldest_read` is the lowest `seq` a connected reader (any
/// peer) last asked for.
pub fn retention_point(
    segments: &[SegmentInfo],
    newest_checkpoint: u64,
    rules: &Rules,
    connected: &[String],
    oldest_read: Option<u64>,
    retention: Retention,
    now: SystemTime,
) -> u64 {
    let mut point = (newest_checkpoint + 1).min(oldest_read.unwrap_or(u64::MAX));
    let window_start = now.checked_sub(retention.keep_history);
    let within = |time: &str| {
        humantime::parse_rfc3339(time)
            .ok()
            .zip(window_start)
            .is_some_and(|(time, start)| time >= start)
    };
    for (name, agent) in rules.agents() {
        let recent = connected.contains(name) || agent.seen.as_deref().is_some_and(within);
        if agent.role == Some(Role::Slave) && recent {
            // What it needs next is the first notify it has not answered (the consumes
            // and the like after its last answer are nothing to it).
            let needs = rules.next_notify_after(agent.answered);
            point = point.min(needs.unwrap_or(u64::MAX));
        }
    }
    if !retention.keep_history.is_zero() {
        if let Some(young) = segments
            .iter()
            .find(|s| window_start.is_none_or(|start| s.last_time >= start))
        {
            point = point.min(young.first);
        }
    }
    point
}

/// The state at `upto`: the checkpoint at `base` (or nothing, for a log that starts at
/// `seq` 1) and the events after it, read from `ranges`.
pub fn build_checkpoint(
    base: Option<PathBuf>,
    ranges: Vec<Located>,
    upto: u64,
) -> io::Result<Snapshot> {
    let mut snapshot = match base {
        Some(path) => Snapshot::read(&path)?,
        None => Snapshot::new(),
    };
    for_each_event(ranges, |event| {
        if event.seq > upto {
            return false;
        }
        if event.seq > snapshot.seq {
            snapshot.observe(&event);
        }
        true
    })?;
    Ok(snapshot)
}

/// Removes the checkpoints no reader needs: all but the one covering the log's `start`
/// (at `start - 1`) and the newest.
pub fn remove_old_checkpoints(dir: &Path, start: u64) -> io::Result<usize> {
    let all = checkpoint::list(dir)?;
    let newest = all.last().map(|(seq, _)| *seq);
    let mut removed = 0;
    for (seq, path) in &all {
        if *seq + 1 < start && Some(*seq) != newest {
            std::fs::remove_file(path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The newest checkpoint in `dir`, at or before `seq`.
pub fn newest_checkpoint(dir: &Path, seq: u64) -> io::Result<Option<(u64, PathBuf)>> {
    Ok(checkpoint::list(dir)?.into_iter().rfind(|(s, _)| *s <= seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Draft, Event, Tag};

    fn event(
        seq: u64,
        agent: &str,
        tag: Tag,
        time: &str,
        role: Option<Role>,
        cause: Option<u64>,
    ) -> Event {
        let mut body = Draft::tagged(tag);
        body.role = role;
        body.cause = cause;
        Event {
            seq,
            time: time.into(),
            agent: agent.into(),
            body,
        }
    }

    #[test]
    fn the_retention_point_waits_for_recent_slaves_and_the_window_not_for_absent_ones() {
        let mut rules = Rules::new();
        let old = "2026-11-01T00:00:00.000000Z";
        let recent = "2026-11-30T00:00:00.000000Z";
        let mut observe = |event: Event| rules.observe(&event, |_| None);
        observe(event(1, "away", Tag::Join, old, Some(Role::Slave), None));
        observe(event(2, "here", Tag::Join, recent, Some(Role::Slave), None));
        for seq in [3, 150, 160] {
            let mut notify = event(seq, "master", Tag::Notify, recent, None, None);
            notify.body = Draft::notify(&filesync_master::Change::Delete {
                path: filesync_master::RelPath::new(&format!("f{seq}")).expect("path"),
                kind: filesync_master::Kind::File,
            });
            observe(notify);
        }
        let now = humantime::parse_rfc3339("2026-11-30T01:00:00Z").expect("time");
        let segments = [
            SegmentInfo {
                first: 1,
                last: 100,
                last_time: now - Duration::from_secs(3 * 86400),
            },
            SegmentInfo {
                first: 101,
                last: 200,
                last_time: now - Duration::from_secs(3600),
            },
            SegmentInfo {
                first: 201,
                last: 250,
                last_time: now,
            },
        ];
        let keeping = |days: u64| Retention {
            keep_history: Duration::from_secs(days * 86400),
            ..Retention::default()
        };
        let here = ["here".to_owned()];
        let point = |rules: &Rules, checkpoint, connected: &[String], read, window| {
            retention_point(&segments, checkpoint, rules, connected, read, window, now)
        };
        // A week of history keeps everything; without history only what a connected slave
        // needs is kept ("here" answered nothing: it needs the first notify, #3).
        assert_eq!(point(&rules, 200, &[], None, keeping(7)), 1);
        assert_eq!(point(&rules, 200, &here, None, keeping(0)), 3);
        assert_eq!(
            point(&rules, 200, &[], None, keeping(0)),
            201,
            "nobody connected, no history: only the checkpoint"
        );
        assert_eq!(
            point(&rules, 200, &[], Some(42), keeping(0)),
            42,
            "a connected reader is not cut off mid-read"
        );
        rules.observe(
            &event(170, "here", Tag::Consume, recent, None, Some(150)),
            |_| None,
        );
        assert_eq!(
            point(&rules, 200, &here, None, keeping(0)),
            160,
            "it needs the notify after the one it answered"
        );
        let day_window = Retention {
            keep_history: Duration::from_secs(86400),
            ..Retention::default()
        };
        assert_eq!(
            point(&rules, 200, &[], None, day_window),
            101,
            "the segment of three days ago is outside a day's window, and so is \"away\""
        );
        assert_eq!(
            point(&rules, 120, &here, None, keeping(0)),
            121,
            "never past the newest checkpoint"
        );
        rules.observe(
            &event(180, "here", Tag::Consume, recent, None, Some(160)),
            |_| None,
        );
        assert_eq!(
            point(&rules, 200, &here, None, keeping(0)),
            201,
            "nothing left to answer: only the checkpoint bounds it"
        );
    }
}
