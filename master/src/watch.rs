//! `DirWatcher`: inotify (through `notify`) reduced to the few signals the coalescer needs.
//!
//! # Known problems, and what we do about them
//!
//! - **New directories.** notify adds a watch for a new directory only after the kernel
//!   reported its creation, so files created inside it in between are never reported
//!   (`mkdir -p a/b/c && echo x > a/b/c/f`). Every created or moved-in directory is
//!   therefore signalled as `Created`, and the tree scans it after the watch exists.
//! - **Queue overflow.** When the kernel's queue overflows (`IN_Q_OVERFLOW`) or our own
//!   bounded queue is full, events were lost: we signal `Rescan`, and the master compares
//!   the whole tree with what it has published.
//! - **Watch limit.** Running out of inotify watches (`ENOSPC`) is reported with the sysctl
//!   to raise, and the master falls back to periodic full rescans so nothing is lost.
//! - **Renames** arrive as two events joined by a cookie; the coalescer pairs them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Config, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::RelPath;

/// How many signals may wait between the notify thread and the master. Past this, signals
/// are dropped and a rescan is requested instead: blocking notify's thread would make the
/// kernel queue overflow, which is worse. The queue takes memory only for what waits (a
/// bounded std channel would set aside 3 MiB for this many up front; measured in W6).
const QUEUE_CAPACITY: usize = 64 * 1024;

/// The advice printed when inotify runs out of watches.
pub const WATCH_LIMIT_ADVICE: &str = "inotify watch limit reached: raise it with \
`sudo sysctl fs.inotify.max_user_watches=1048576` (and fs.inotify.max_user_instances); \
falling back to periodic full rescans until restart";

/// What happened, relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Content may be in the middle of changing (written to, created).
    Written(RelPath),
    /// The writer closed the file: its content is final for now.
    Closed(RelPath),
    /// Metadata changed: final, nothing is writing it.
    Touched(RelPath),
    /// The path was removed.
    Removed(RelPath),
    /// A directory appeared: scan it, since its early contents may have gone unreported.
    Created(RelPath),
    /// First half of a rename.
    RenamedFrom { tracker: usize, path: RelPath },
    /// Second half of a rename (or something moved in from outside, when unpaired).
    RenamedTo { tracker: usize, path: RelPath },
    /// Events were lost: compare everything.
    Rescan,
    /// The watch limit was hit; the master must poll.
    WatchLimit,
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{WATCH_LIMIT_ADVICE}")]
    WatchLimit,
    #[error("cannot watch {path}: {source}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// The watcher's thread stopped: no more signals will come.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the directory watcher stopped")]
pub struct WatcherGone;

/// A recursive watch on one root.
pub struct DirWatcher {
    // Dropping the watcher stops its thread; keep it alive as long as we read signals.
    watcher: RecommendedWatcher,
    signals: Receiver<Signal>,
    queued: Arc<AtomicUsize>,
    overflowed: Arc<AtomicBool>,
}

impl DirWatcher {
    /// Starts watching `root` recursively. Call before the initial scan, so that nothing
    /// changed during the scan goes unseen.
    pub fn start(root: &Path) -> Result<DirWatcher, WatchError> {
        let (tx, signals) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let overflowed = Arc::new(AtomicBool::new(false));
        let handler_root = root.to_path_buf();
        let handler_queued = queued.clone();
        let handler_overflow = overflowed.clone();
        let handler = move |result: notify::Result<notify::Event>| {
            for signal in translate(&handler_root, result) {
                send(&tx, &handler_queued, &handler_overflow, signal);
            }
        };
        let config = Config::default().with_follow_symlinks(false);
        let mut watcher =
            RecommendedWatcher::new(handler, config).map_err(|source| WatchError::Notify {
                path: root.to_path_buf(),
                source,
            })?;
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|source| match source.kind {
                notify::ErrorKind::MaxFilesWatch => WatchError::WatchLimit,
                _ => WatchError::Notify {
                    path: root.to_path_buf(),
                    source,
                },
            })?;
        Ok(DirWatcher {
            watcher,
            signals,
            queued,
            overflowed,
        })
    }

    /// Returns once notify has finished with every event it handed out before this call.
    ///
    /// notify (8.2, inotify) adds the watches of a directory created or moved in only after
    /// handing out its event, by walking the directory from its event thread, the same
    /// thread that answers requests; so a request answered now is answered after those
    /// watches exist. Call it before scanning a directory that just appeared: a file created
    /// there before its watch existed is found by the scan, and anything later is reported.
    ///
    /// This used to be a second recursive `watch` of the directory, which did the same and
    /// then walked it again with a `stat` of every entry (10,000 for W2's tree; see
    /// docs/BENCHMARKS.md). The request now is `configure`, which inotify's loop answers
    /// without doing anything else.
    pub fn catch_up(&mut self) -> Result<(), WatcherGone> {
        let config = Config::default().with_follow_symlinks(false);
        self.watcher.configure(config).map(drop).map_err(|err| {
            tracing::error!("the directory watcher did not answer: {err}");
            WatcherGone
        })
    }

    /// The next signal, waiting at most `timeout`. `Ok(None)` on timeout; `Err` when the
    /// watcher is gone.
    pub fn next(&self, timeout: Duration) -> Result<Option<Signal>, WatcherGone> {
        if self.overflowed.swap(false, Ordering::SeqCst) {
            return Ok(Some(Signal::Rescan));
        }
        match self.signals.recv_timeout(timeout) {
            Ok(signal) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Ok(Some(signal))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(WatcherGone),
        }
    }
}

fn send(tx: &Sender<Signal>, queued: &AtomicUsize, overflowed: &AtomicBool, signal: Signal) {
    if queued.fetch_add(1, Ordering::SeqCst) >= QUEUE_CAPACITY {
        queued.fetch_sub(1, Ordering::SeqCst);
        if !overflowed.swap(true, Ordering::SeqCst) {
            tracing::warn!("watch queue full: dropping events and rescanning");
        }
        return;
    }
    if tx.send(signal).is_err() {
        // The master is gone; nobody will take it off the count.
        queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Maps one notify event to signals; paths outside the root (the root itself) are dropped.
fn translate(root: &Path, result: notify::Result<notify::Event>) -> Vec<Signal> {
    let event = match result {
        Ok(event) => event,
        Err(err) => {
            return match err.kind {
                notify::ErrorKind::MaxFilesWatch => {
                    tracing::error!("{WATCH_LIMIT_ADVICE}");
                    vec![Signal::WatchLimit]
                }
                _ => {
                    tracing::warn!("watch error: {err}; rescanning");
                    vec![Signal::Rescan]
                }
            };
        }
    };
    if event.need_rescan() {
        return vec![Signal::Rescan];
    }
    let rel = |idx: usize| {
        event
            .paths
            .get(idx)
            .and_then(|full| RelPath::from_full(root, full).ok())
    };
    let Some(path) = rel(0) else {
        return Vec::new();
    };
    let signal = match event.kind {
        EventKind::Create(CreateKind::Folder) => Signal::Created(path),
        EventKind::Create(_) => Signal::Written(path),
        EventKind::Modify(ModifyKind::Data(_)) => Signal::Written(path),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => match event.tracker() {
            Some(tracker) => Signal::RenamedFrom { tracker, path },
            // A watched directory's own IN_MOVE_SELF: its parent reports the rename.
            None => return Vec::new(),
        },
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => match event.tracker() {
            Some(tracker) => Signal::RenamedTo { tracker, path },
            None => Signal::Created(path),
        },
        // notify repeats a paired rename as `Both`; we pair From and To ourselves.
        EventKind::Modify(ModifyKind::Name(_)) => return Vec::new(),
        EventKind::Remove(_) => Signal::Removed(path),
        EventKind::Modify(_) => Signal::Touched(path),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Signal::Closed(path),
        EventKind::Access(_) | EventKind::Any | EventKind::Other => return Vec::new(),
    };
    vec![signal]
}
