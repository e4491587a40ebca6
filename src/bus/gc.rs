//! Content garbage collection: what of the content store the bus still needs, and the
//! removal of the rest once it has been unreferenced for a grace period.
//!
//! **Referenced** is content named by the checkpoint covering the log's start (a slave that
//! resyncs fetches it) or by any retained event: a `sha256`, a `manifest`, and the chunks
//! the manifest lists. That covers the newest checkpoint and the tree as it is now, since
//! both are the first checkpoint plus retained events.
//!
//! **Two passes, with a grace period** (as git's prune expiry and rustic's two-phase prune):
//! a pass records each unreferenced blob with the time it was first found so, in
//! `SDIR/gc-pending` (`<sha256> <unix milliseconds>` per line); a later pass removes those still
//! unreferenced once `--gc-grace` has passed. Content uploaded for a notify not yet published
//! (a large file's chunks, the pieces of a file being followed) is unreferenced for a
//! moment, far less than the grace, so it is never removed under an upload.
//!
//! **Removal** dooms the due blobs first (`BlobStore::doom`): from then the store says it
//! lacks them, so no new notify can refer to them (a master that asked earlier is refused
//! and uploads again), and an upload of one spares it. The bus then looks at the events
//! appended since it computed the references and spares what they name, and only then
//! removes what is still doomed: files at once, pack records with their pack (see
//! `pack.rs`: a pack dead enough is deleted, its live records moved first).
//!
//! The bus runs a pass every `--gc-interval` (`server.rs`); `filesync gc` runs one on a
//! stopped bus's state ([`collect_offline`]).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use filesync_master::hash::ContentHash;

use super::blobs::{BlobStore, Removed, Stored};
use crate::checkpoint::Snapshot;
use crate::event::Draft;
use crate::rules::Content;

/// Where the pending (unreferenced, not yet removed) blobs are recorded.
pub fn pending_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("gc-pending")
}

/// The content the log still refers to.
#[derive(Default)]
pub struct References {
    set: HashSet<ContentHash>,
    /// Manifests already read (each is read once, however many events name it).
    manifests: HashSet<ContentHash>,
}

impl References {
    pub fn contains(&self, address: &ContentHash) -> bool {
        self.set.contains(address)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Everything a checkpoint's tree names.
    pub fn add_snapshot(&mut self, snapshot: &Snapshot, store: &dyn Content) {
        for (_, entry) in snapshot.model.iter() {
            if let Some(sha256) = entry.sha256 {
                self.set.insert(sha256);
                if let Some(manifest) = snapshot.manifest_of(&sha256) {
                    self.add_manifest(manifest, store);
                }
            }
        }
    }

    /// What one event names.
    pub fn add_event(&mut self, body: &Draft, store: &dyn Content) {
        if let Some(sha256) = body.sha256.as_deref().and_then(ContentHash::parse_hex) {
            self.set.insert(sha256);
        }
        if let Some(manifest) = &body.manifest {
            self.add_manifest(manifest, store);
        }
    }

    fn add_manifest(&mut self, hex: &str, store: &dyn Content) {
        let Some(address) = ContentHash::parse_hex(hex) else {
            return;
        };
        self.set.insert(address);
        if !self.manifests.insert(address) {
            return;
        }
        // A manifest that cannot be read names nothing more; its file cannot be rebuilt
        // anyway, and its chunks go with the grace period like any unreferenced content.
        if let Some(Ok(manifest)) = store.manifest(&address) {
            self.set.extend(manifest.chunks().iter().map(|c| c.sha256));
        }
    }

    /// The addresses, for sparing what a late event names.
    pub fn into_addresses(self) -> impl Iterator<Item = ContentHash> {
        self.set.into_iter()
    }
}

/// What a pass found and decided.
#[derive(Debug, Default)]
pub struct Plan {
    /// Unreferenced for at least the grace period: to be removed (with when each was first
    /// found so).
    pub due: Vec<(Stored, u64)>,
    /// Unreferenced, not for long enough yet: when each was first found so.
    pub waiting: HashMap<ContentHash, u64>,
    pub waiting_bytes: u64,
    /// Everything stored.
    pub stored: usize,
    pub stored_bytes: u64,
}

/// Compares the store with the references: which unreferenced blobs are due (first found
/// unreferenced at least `grace` before `now`, per `SDIR/gc-pending`), which wait.
pub fn plan(
    store: &BlobStore,
    references: &References,
    pending: &Path,
    grace: Duration,
    now: SystemTime,
) -> io::Result<Plan> {
    let seen_before = load_pending(pending);
    let now_ms = unix_ms(now);
    let mut plan = Plan::default();
    for stored in store.list()? {
        plan.stored += 1;
        plan.stored_bytes += stored.size;
        if references.contains(&stored.address) {
            continue;
        }
        let first = seen_before.get(&stored.address).copied().unwrap_or(now_ms);
        if now_ms.saturating_sub(first) >= grace.as_millis() as u64 {
            plan.due.push((stored, first));
        } else {
            plan.waiting_bytes += stored.size;
            plan.waiting.insert(stored.address, first);
        }
    }
    Ok(plan)
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads `SDIR/gc-pending`; a missing or damaged file only restarts the grace periods.
fn load_pending(path: &Path) -> HashMap<ContentHash, u64> {
    let Ok(file) = fs::File::open(path) else {
        return HashMap::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let (hex, ms) = line.split_once(' ')?;
            Some((ContentHash::parse_hex(hex)?, ms.parse().ok()?))
        })
        .collect()
}

/// Writes `SDIR/gc-pending` atomically: the blobs still waiting, and those due that a pass
/// left in place (a pack not worth compacting yet), with when each was first found.
pub fn save_pending(path: &Path, pending: &HashMap<ContentHash, u64>) -> io::Result<()> {
    let temp = path.with_extension("tmp");
    let mut out = io::BufWriter::new(fs::File::create(&temp)?);
    for (address, ms) in pending {
        writeln!(out, "{address} {ms}")?;
    }
    out.into_inner()
        .map_err(|err| err.into_error())?
        .sync_all()?;
    fs::rename(temp, path)
}

/// The outcome of a pass, as `filesync gc` prints it.
#[derive(Debug, Default)]
pub struct Collected {
    pub stored: usize,
    pub stored_bytes: u64,
    pub referenced: usize,
    pub removed: Removed,
    /// Due, but left for a later pass (in a pack not worth compacting yet) or, in a dry
    /// run, what would have been removed.
    pub due_kept: usize,
    pub due_bytes: u64,
    pub waiting: usize,
    pub waiting_bytes: u64,
}

impl std::fmt::Display for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        writeln!(
            f,
            "{} blobs stored ({:.1} MiB), {} referenced by the log and its checkpoint",
            self.stored,
            mib(self.stored_bytes),
            self.referenced
        )?;
        writeln!(
            f,
            "freed {} blobs ({:.1} MiB)",
            self.removed.blobs,
            mib(self.removed.bytes)
        )?;
        if self.due_kept > 0 {
            writeln!(
                f,
                "{} unreferenced blobs ({:.1} MiB) due but kept for now",
                self.due_kept,
                mib(self.due_bytes)
            )?;
        }
        write!(
            f,
            "{} unreferenced blobs ({:.1} MiB) wait for the grace period",
            self.waiting,
            mib(self.waiting_bytes)
        )
    }
}

/// Removes what `plan` found due, once `spare` (the references of events appended since
/// the plan, on a running bus) has had its say; records what is left pending.
pub fn execute(
    store: &BlobStore,
    plan: Plan,
    pending: &Path,
    spare: impl FnOnce(&BlobStore),
) -> io::Result<Collected> {
    let mut collected = Collected {
        stored: plan.stored,
        stored_bytes: plan.stored_bytes,
        waiting: plan.waiting.len(),
        waiting_bytes: plan.waiting_bytes,
        ..Collected::default()
    };
    store.doom(plan.due.iter().map(|(s, _)| s.address));
    spare(store);
    super::crash::point("blobs-doomed");
    let removed = store.remove_doomed()?;
    super::crash::point("blobs-removed");
    collected.removed = removed;
    let mut left = plan.waiting;
    // What is still stored of the due (in a pack not dead enough yet) stays pending, due:
    // asked of each due blob, not by listing the whole store again. (A lookup that fails
    // keeps it pending: the next pass asks again.)
    for (due, first) in &plan.due {
        if store.contains(&due.address.to_hex()).unwrap_or(true) {
            collected.due_kept += 1;
            collected.due_bytes += due.size;
            left.insert(due.address, *first);
        }
    }
    save_pending(pending, &left)?;
    Ok(collected)
}

/// One pass over a stopped bus's state (`filesync gc`): the references are the log's
/// retained events and the checkpoint covering its start. With `dry_run`, only says what a
/// pass would remove now.
pub fn collect_offline(
    state_dir: &Path,
    grace: Duration,
    dry_run: bool,
) -> anyhow::Result<Collected> {
    use anyhow::Context;
    let log = crate::check::LogFile::read(&state_dir.join("events.jsonl"))
        .with_context(|| format!("cannot read the log in {}", state_dir.display()))?;
    let store = BlobStore::open(&state_dir.join("blobs"))
        .with_context(|| format!("cannot open the blob store in {}", state_dir.display()))?;
    let mut references = References::default();
    if let Some(base) = &log.base {
        references.add_snapshot(base, &store);
    }
    for event in &log.events {
        references.add_event(&event.body, &store);
    }
    let pending = pending_path(state_dir);
    let plan = plan(&store, &references, &pending, grace, SystemTime::now())?;
    if dry_run {
        return Ok(Collected {
            stored: plan.stored,
            stored_bytes: plan.stored_bytes,
            referenced: references.len(),
            due_kept: plan.due.len(),
            due_bytes: plan.due.iter().map(|(s, _)| s.size).sum(),
            waiting: plan.waiting.len(),
            waiting_bytes: plan.waiting_bytes,
            ..Collected::default()
        });
    }
    let referenced = references.len();
    let mut collected = execute(&store, plan, &pending, |_| {})?;
    collected.referenced = referenced;
    Ok(collected)
}
