//! A slave's verification: its directory compared with the state it applied, and every
//! difference restored from the bus (or, with `--keep-local`, only reported), each as an
//! event in the log.
//!
//! The state applied is the log's notifies up to the slave's position, replayed. The
//! directory is scanned by `filesync_slave::verify` (which also removes temporary files a
//! killed slave left). Content is known without reading it again when a file has the size,
//! modification time and inode it had at the end of the previous verification: those are
//! kept in `SDIR/verified`, as git's index keeps them (and with the same blind spot: an
//! edit that restores size, mtime and inode exactly goes unseen).
//!
//! Each repair is a `consume` with `drift` (`missing`, `modified`, `unexpected`) and `cause`
//! = the slave's position: not an answer to that notify, a statement of what the slave did
//! to its directory. With `--keep-local` it is an `error` with `drift` instead, and the
//! path is left as it is.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use filesync_master::hash::ContentHash;
use filesync_master::ignore::IgnoreRules;
use filesync_master::model::Stamp;
use filesync_master::{Change, Model, RelPath};
use filesync_slave::verify::{differences, scan, Difference, Found};
use filesync_slave::Applier;

use super::retry::Failed;
use super::slave::{apply, ApplyFailure};
use super::{replay_notifies, Replayed};
use crate::bus::api::{call, Link};
use crate::bus::{ClientError, Subscription};
use crate::event::{Draft, Drift, Tag};

/// What a verification did.
#[derive(Debug, Default)]
pub struct Verified {
    /// The changes applied to restore the directory.
    pub repaired: Vec<Change>,
    /// Differences found and left alone (`--keep-local`) or that could not be repaired.
    pub kept: usize,
    /// Temporary files removed.
    pub leftovers: usize,
    /// Restores of a resync that failed: `(error seq, cause, change)`, to retry.
    pub failed: Vec<(u64, u64, Failed)>,
}

/// Where a slave verifies, and how.
pub struct Verifier<'a> {
    pub dir: &'a Path,
    /// `SDIR/verified`.
    pub stamps: PathBuf,
    pub keep_local: bool,
}

/// What a restore compares the directory with, and how the log is told about it.
#[derive(Debug, Clone, Copy)]
enum Basis {
    /// The state as of the slave's position: each difference is drift (`drift`, `cause` =
    /// the position).
    Drift { position: u64 },
    /// The checkpoint covering the log's start, for a slave behind it: each difference is
    /// what it missed (`resync` = `cause` = the checkpoint's `seq`).
    Resync { checkpoint: u64 },
}

impl Basis {
    fn cause(self) -> u64 {
        match self {
            Basis::Drift { position } => position,
            Basis::Resync { checkpoint } => checkpoint,
        }
    }

    /// Marks an answer as a restore of this kind.
    fn mark(self, mut draft: Draft, drift: Drift) -> Draft {
        match self {
            Basis::Drift { .. } => draft.drift = Some(drift),
            Basis::Resync { checkpoint } => draft.resync = Some(checkpoint),
        }
        draft
    }
}

impl Verifier<'_> {
    /// Verifies the directory against the state as of notify `position` (see the module
    /// docs). Paths that notifies after it (up to `head`) touch are left to those notifies:
    /// the slave applies them next, and may well have applied some already (a slave killed
    /// before it recorded how far it got).
    pub async fn run(
        &self,
        position: u64,
        head: u64,
        client: &Link,
        applier: &Applier,
    ) -> Result<Verified, ClientError> {
        let replayed = replay_notifies(client, position).await?;
        let later = later_paths(client, position, head).await?;
        let basis = Basis::Drift { position };
        self.restore(&replayed, &later, basis, client, applier)
            .await
    }

    /// Brings the directory to the state of the checkpoint at `checkpoint` (the log starts
    /// after it, and the slave was behind that): every difference is applied, whatever
    /// `keep_local` says, since most are changes the slave missed, and said in the log as a
    /// `consume` (or `error`) with `resync`. The caller then publishes the `ready` that ends
    /// the resync and follows the log from the next `seq`.
    ///
    /// Paths that notifies after the checkpoint touch, up to `answered` (the last notify
    /// the log says this slave answered), are left as they are: the slave applied those
    /// notifies already (its position file lagged behind its answers, as after a kill), and
    /// will not answer them again; restoring the checkpoint's version would undo them with
    /// nothing in the log to redo them.
    pub async fn resync(
        &self,
        checkpoint: u64,
        answered: u64,
        client: &Link,
        applier: &Applier,
    ) -> Result<Verified, ClientError> {
        let expected: Replayed = call(client.checkpoint(checkpoint)).await?.into();
        let applied = match answered > checkpoint {
            true => later_paths(client, checkpoint, answered).await?,
            false => Vec::new(),
        };
        let basis = Basis::Resync { checkpoint };
        self.restore(&expected, &applied, basis, client, applier)
            .await
    }

    /// Scans the directory, restores (or reports) each difference with `expected` outside
    /// the `later` paths, and records what it saw for the next verification.
    async fn restore(
        &self,
        expected: &Replayed,
        later: &[RelPath],
        basis: Basis,
        client: &Link,
        applier: &Applier,
    ) -> Result<Verified, ClientError> {
        let Some(found) = self.scan().await else {
            return Ok(Verified::default());
        };
        let mut verified = Verified {
            leftovers: found.leftovers,
            ..Verified::default()
        };
        let mut diffs = differences(&expected.model, &found.model);
        diffs.retain(|diff| {
            !later
                .iter()
                .any(|p| p.starts_with(diff.path()) || diff.path().starts_with(p))
        });
        let cause = basis.cause();
        for diff in &diffs {
            let (drift, change) = repair_of(diff);
            if self.keep_local && matches!(basis, Basis::Drift { .. }) {
                tracing::warn!(
                    "{}: {} locally; kept (--keep-local)",
                    diff.path(),
                    drift.as_str()
                );
                let message = format!("{} on the slave; kept (--keep-local)", drift.as_str());
                publish(
                    client,
                    basis.mark(error_draft(&change, cause, message), drift),
                )
                .await?;
                verified.kept += 1;
                continue;
            }
            let manifest = match &change {
                Change::Put { entry, .. } => entry
                    .sha256
                    .and_then(|sha256| expected.manifests.get(&sha256))
                    .map(String::as_str),
                _ => None,
            };
            match apply(applier, client, None, Ok(change.clone()), None, manifest).await {
                Ok(done) => {
                    match basis {
                        Basis::Drift { .. } => {
                            tracing::info!("{}: {} locally; restored", diff.path(), drift.as_str())
                        }
                        Basis::Resync { .. } => tracing::debug!("{}: resynced", diff.path()),
                    }
                    publish(client, basis.mark(done.consume(cause, manifest), drift)).await?;
                    verified.repaired.push(done.change);
                }
                Err(ApplyFailure::Bus(err)) => return Err(err),
                Err(ApplyFailure::Change(message)) => {
                    tracing::warn!("{}: cannot restore it: {message}", diff.path());
                    let error = basis.mark(error_draft(&change, cause, message), drift);
                    let published = publish(client, error).await?;
                    if let (Some(seq), Basis::Resync { .. }) = (published, basis) {
                        let manifest = manifest.map(str::to_owned);
                        verified
                            .failed
                            .push((seq, cause, Failed { change, manifest }));
                    }
                    verified.kept += 1;
                }
            }
        }
        let touched: Vec<&RelPath> = diffs.iter().map(Difference::path).collect();
        if let Err(err) = save_stamps(&self.stamps, &found.model, &touched) {
            tracing::warn!("cannot record {}: {err}", self.stamps.display());
        }
        Ok(verified)
    }

    /// The directory as it is, off the runtime's thread (it may hash a lot); `None` when it
    /// cannot be read (said on stderr).
    async fn scan(&self) -> Option<Found> {
        let dir = self.dir.to_path_buf();
        let known = load_stamps(&self.stamps);
        let scanned = tokio::task::spawn_blocking(move || {
            // The root's own `.filesyncignore`, as the master reads it.
            let ignore = IgnoreRules::load(&dir);
            scan(
                &dir,
                &|path, stamp, size| {
                    known
                        .get(path.as_bytes())
                        .filter(|(s, len, _)| *s == stamp && *len == size)
                        .map(|(_, _, sha256)| *sha256)
                },
                &|path, is_dir| ignore.is_ignored(path, is_dir),
            )
        })
        .await;
        match scanned {
            Ok(Ok(found)) => Some(found),
            Ok(Err(err)) => {
                tracing::error!("cannot verify {}: {err}", self.dir.display());
                None
            }
            Err(err) => {
                tracing::error!("verification stopped: {err}");
                None
            }
        }
    }
}

/// The paths the notifies after `after`, up to `head`, touch.
async fn later_paths(client: &Link, after: u64, head: u64) -> Result<Vec<RelPath>, ClientError> {
    let mut paths = Vec::new();
    let mut subscription = Subscription::new(client.clone(), after + 1);
    while subscription.position() <= head {
        let event = subscription.next().await?;
        if let (Some(Tag::Notify), Ok(change)) = (event.tag(), event.body.change()) {
            paths.extend(change.paths().into_iter().cloned());
        }
    }
    Ok(paths)
}

/// The change that restores one difference, and what kind of drift it was.
fn repair_of(diff: &Difference) -> (Drift, Change) {
    match diff {
        Difference::Missing { path, expected } => (
            Drift::Missing,
            Change::Put {
                path: path.clone(),
                entry: expected.clone(),
            },
        ),
        Difference::Modified { path, expected } => (
            Drift::Modified,
            Change::Put {
                path: path.clone(),
                entry: expected.clone(),
            },
        ),
        Difference::Unexpected { path, kind } => (
            Drift::Unexpected,
            Change::Delete {
                path: path.clone(),
                kind: *kind,
            },
        ),
    }
}

fn error_draft(change: &Change, position: u64, message: String) -> Draft {
    Draft::error(&Draft::notify(change), position, message)
}

/// Publishes a restore's answer; its `seq`, or `None` when the bus refused it.
async fn publish(client: &Link, draft: Draft) -> Result<Option<u64>, ClientError> {
    match call(client.publish(draft)).await {
        Ok(seq) => Ok(Some(seq)),
        Err(err) if err.is_connection() => Err(err),
        Err(err) => {
            tracing::error!("the bus refused a restore's answer: {err}");
            Ok(None)
        }
    }
}

/// Path bytes -> (stamp, size, content) as the last verification saw them.
type Stamps = HashMap<Vec<u8>, (Stamp, u64, ContentHash)>;

/// Reads `SDIR/verified`: one line per file, `sha256 size mtime_ns ino base64(path)`. A
/// missing or damaged file only means more hashing.
fn load_stamps(file: &Path) -> Stamps {
    let Ok(opened) = std::fs::File::open(file) else {
        return Stamps::new();
    };
    let mut stamps = Stamps::new();
    for line in BufReader::new(opened).lines() {
        let Ok(line) = line else { break };
        let mut fields = line.split(' ');
        let parsed = (|| {
            let sha256 = ContentHash::parse_hex(fields.next()?)?;
            let size = fields.next()?.parse().ok()?;
            let mtime_ns = fields.next()?.parse().ok()?;
            let ino = fields.next()?.parse().ok()?;
            let path = BASE64.decode(fields.next()?).ok()?;
            Some((path, (Stamp { mtime_ns, ino }, size, sha256)))
        })();
        if let Some((path, known)) = parsed {
            stamps.insert(path, known);
        }
    }
    stamps
}

/// Writes `SDIR/verified` for the files of `found` (minus the `touched` paths, which were
/// just rewritten), atomically.
fn save_stamps(file: &Path, found: &Model, touched: &[&RelPath]) -> std::io::Result<()> {
    let temp = file.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&temp)?);
    for (path, entry) in found.iter() {
        if touched.iter().any(|t| path.starts_with(t)) {
            continue;
        }
        if let (Some(sha256), Some(stamp)) = (entry.sha256, entry.stamp) {
            writeln!(
                out,
                "{} {} {} {} {}",
                sha256.to_hex(),
                entry.size,
                stamp.mtime_ns,
                stamp.ino,
                BASE64.encode(path.as_bytes())
            )?;
        }
    }
    out.into_inner()
        .map_err(|err| err.into_error())?
        .sync_all()?;
    std::fs::rename(temp, file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use filesync_master::Entry;

    #[test]
    fn stamps_survive_a_round_trip_and_skip_what_was_touched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("verified");
        let mut model = Model::new();
        let p = |s: &str| RelPath::new(s).expect("valid");
        let mut entry = Entry::file(3, ContentHash::of(b"abc"), 0o644);
        entry.stamp = Some(Stamp {
            mtime_ns: -5,
            ino: 42,
        });
        model.put(p("a b"), entry.clone());
        model.put(p("touched"), entry);
        model.put(p("d"), Entry::dir(0o755));
        save_stamps(&file, &model, &[&p("touched")]).expect("save");
        let stamps = load_stamps(&file);
        assert_eq!(stamps.len(), 1);
        let (stamp, size, sha256) = stamps[b"a b".as_slice()];
        assert_eq!((stamp.mtime_ns, stamp.ino, size), (-5, 42, 3));
        assert_eq!(sha256, ContentHash::of(b"abc"));
        std::fs::write(&file, "garbage\n").expect("write");
        assert!(load_stamps(&file).is_empty());
    }
}
