//! `Retries`: the changes a slave failed to apply (a full disk, a directory it could not
//! write), tried again with backoff until they apply.
//!
//! The list comes from the log, not from a file of the slave's: the bus tells a joining
//! slave which of its errors are still open and not stale (`Welcome::retry`), and the
//! slave adds each error it reports. A retry that applies is published as a consume that
//! `repairs` the error, which closes it in the log. A retry is dropped once a later notify
//! touches its paths: the newer change decides them now, and retrying the old one would
//! undo it (the bus calls such an error stale and refuses its repair). Retries run when
//! the slave starts (before it verifies its directory, so a retry is not taken for drift;
//! the bus names only errors no later notify touched) and whenever it has caught up, so no
//! newer notify is waiting behind them.

use std::time::Duration;

use filesync_master::Change;
use tokio::time::Instant;

/// The first wait before a retry; it doubles at each failure ...
const FIRST_WAIT: Duration = Duration::from_millis(500);
/// ... up to this.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// What failed: a notify's change, and the manifest its content is listed by (a file
/// stored in chunks).
#[derive(Debug, Clone)]
pub struct Failed {
    pub change: Change,
    pub manifest: Option<String>,
}

/// One failed change.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The `seq` of the error event that reported it.
    pub error: u64,
    /// The notify it answered.
    pub cause: u64,
    pub failed: Failed,
    failures: u32,
    due: Instant,
}

/// The failed changes, each with when to try it next.
#[derive(Debug, Default)]
pub struct Retries {
    pending: Vec<Retry>,
}

impl Retries {
    /// Error `error` reported that notify `cause` failed; try it again soon.
    pub fn add(&mut self, error: u64, cause: u64, failed: Failed) {
        self.add_due(error, cause, failed, Instant::now() + FIRST_WAIT);
    }

    /// Like `add`, due at once (errors a slave finds open when it starts).
    pub fn add_now(&mut self, error: u64, cause: u64, failed: Failed) {
        self.add_due(error, cause, failed, Instant::now());
    }

    fn add_due(&mut self, error: u64, cause: u64, failed: Failed, due: Instant) {
        self.pending.retain(|r| r.error != error);
        self.pending.push(Retry {
            error,
            cause,
            failed,
            failures: 0,
            due,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the next retry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|r| r.due).min()
    }

    /// Takes the retries due at `now`, oldest error first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Retry> {
        let (mut due, waiting): (Vec<Retry>, Vec<Retry>) =
            self.pending.drain(..).partition(|r| r.due <= now);
        self.pending = waiting;
        due.sort_by_key(|r| r.error);
        due
    }

    /// `retry` failed again: back off and keep it.
    pub fn failed_again(&mut self, mut retry: Retry) {
        retry.failures += 1;
        let wait = FIRST_WAIT
            .saturating_mul(1 << retry.failures.min(10))
            .min(MAX_WAIT);
        retry.due = Instant::now() + wait;
        self.pending.push(retry);
    }

    /// A later notify's `change` is about to be applied: retries whose paths it touches
    /// are dropped (returned, for the log line).
    pub fn forget_overlapping(&mut self, change: &Change) -> Vec<Retry> {
        let (dropped, kept) = self
            .pending
            .drain(..)
            .partition(|r| r.failed.change.overlaps(change));
        self.pending = kept;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filesync_master::{Entry, Kind, RelPath};

    fn put_dir(path: &str) -> Failed {
        Failed {
            change: Change::Put {
                path: RelPath::new(path).expect("valid"),
                entry: Entry::dir(0o755),
            },
            manifest: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_backs_off_and_is_dropped_when_a_later_change_touches_it() {
        let mut retries = Retries::default();
        retries.add(10, 5, put_dir("d/x"));
        retries.add(11, 6, put_dir("e"));
        assert!(retries.take_due(Instant::now()).is_empty(), "not at once");
        tokio::time::advance(FIRST_WAIT).await;
        let due = retries.take_due(Instant::now());
        assert_eq!(due.iter().map(|r| r.error).collect::<Vec<_>>(), [10, 11]);
        for retry in due {
            retries.failed_again(retry);
        }
        tokio::time::advance(FIRST_WAIT).await;
        assert!(retries.take_due(Instant::now()).is_empty(), "it backs off");
        tokio::time::advance(FIRST_WAIT * 2).await;
        assert_eq!(retries.take_due(Instant::now()).len(), 2);
        retries.add(12, 7, put_dir("d/x"));
        let dropped = retries.forget_overlapping(&Change::Delete {
            path: RelPath::new("d").expect("valid"),
            kind: Kind::Dir,
        });
        assert_eq!(dropped.len(), 1);
        assert!(retries.is_empty());
    }
}
