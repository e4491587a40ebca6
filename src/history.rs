//! History as a feature: the versions of a path the bus still holds (`filesync history`),
//! and one of them written out, verified (`filesync restore`).
//!
//! Both read a bus's state directory and never write to it, so they run beside a live
//! bus: the log (every retained segment, and the checkpoint covering what retention
//! removed) says what each path was at each `seq`; the content store (opened read-only)
//! holds the bytes, whole or in chunks, for as long as the history window keeps the events
//! that name them (`bus/gc.rs`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context};
use filesync_master::chunk::Manifest;
use filesync_master::hash::{ContentHash, PieceHasher};

use crate::bus::protocol::PIECE_SIZE;
use filesync_master::{Entry, Kind, RelPath};

use crate::bus::blobs::BlobStore;
use crate::check::LogFile;
use crate::checkpoint::Snapshot;
use crate::event::Tag;
use crate::rules::Content;

/// One version of a path: what it became at `seq`.
#[derive(Debug, Clone)]
pub struct Version {
    pub seq: u64,
    pub time: String,
    /// `None`: the path stopped existing then.
    pub entry: Option<Entry>,
    /// For a file stored in chunks: its manifest.
    pub manifest: Option<ContentHash>,
}

/// A state directory's log and content, read-only.
pub struct History {
    log: LogFile,
    store: BlobStore,
}

impl History {
    pub fn open(state_dir: &Path) -> anyhow::Result<History> {
        let events = state_dir.join("events.jsonl");
        if !events.is_file() {
            bail!(
                "{} holds no bus state (no events.jsonl); pass the master's or bus's --state",
                state_dir.display()
            );
        }
        let log = LogFile::read(&events)
            .with_context(|| format!("cannot read the log in {}", state_dir.display()))?;
        let store = BlobStore::open_read_only(&state_dir.join("blobs"))
            .with_context(|| format!("cannot open the content in {}", state_dir.display()))?;
        Ok(History { log, store })
    }

    /// The state before the first retained event.
    fn base(&self) -> anyhow::Result<Snapshot> {
        Ok(self.log.base.clone().unwrap_or_default())
    }

    /// Every version of `path` the log holds, oldest first: the one the checkpoint covering
    /// the log's start had (if any), then each change to it.
    pub fn versions(&self, path: &RelPath) -> anyhow::Result<Vec<Version>> {
        let mut state = self.base()?;
        let mut versions = Vec::new();
        let mut current = state.model.get(path).cloned();
        if current.is_some() {
            versions.push(version_in(&state, path));
        }
        for event in &self.log.events {
            state.observe(event);
            if event.tag() != Some(Tag::Notify) {
                continue;
            }
            let now = state.model.get(path).cloned();
            if now != current {
                versions.push(version_in(&state, path));
                current = now;
            }
        }
        Ok(versions)
    }

    /// The version of `path` as of `seq`.
    pub fn at(&self, path: &RelPath, seq: u64) -> anyhow::Result<Version> {
        let mut state = self.base()?;
        let head = self.log.events.last().map_or(state.seq, |e| e.seq);
        if seq < state.seq {
            bail!(
                "#{seq} is before the history this bus keeps (it starts after #{})",
                state.seq
            );
        }
        if seq > head {
            bail!("#{seq} is after the log's last event (#{head})");
        }
        for event in self.log.events.iter().take_while(|e| e.seq <= seq) {
            state.observe(event);
        }
        Ok(version_in(&state, path))
    }

    /// Whether the store holds every byte of `version`'s content.
    pub fn is_held(&self, version: &Version) -> bool {
        let Some(sha256) = version.entry.as_ref().and_then(|e| e.sha256) else {
            return false;
        };
        match version.manifest {
            Some(address) => match self.store.manifest(&address) {
                Some(Ok(manifest)) => manifest.chunks().iter().all(|c| self.store.has(&c.sha256)),
                _ => false,
            },
            None => self.store.has(&sha256),
        }
    }

    /// Writes `version`'s content to `to` (which must not exist), verified against its
    /// SHA-256 before it takes that name.
    pub fn restore(&self, version: &Version, to: &Path) -> anyhow::Result<u64> {
        let Some(entry) = version.entry.as_ref().filter(|e| e.kind == Kind::File) else {
            bail!("that version is not a file");
        };
        let Some(sha256) = entry.sha256 else {
            bail!("that version has no content address");
        };
        if to.symlink_metadata().is_ok() {
            bail!("{} exists; restore writes only to a new file", to.display());
        }
        let dir = match to.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut temp = tempfile::Builder::new()
            .prefix(".filesync-restore-")
            .tempfile_in(dir)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        let mut hasher = PieceHasher::new(entry.size);
        let mut written = 0u64;
        let mut sink = |piece: Vec<u8>| -> anyhow::Result<()> {
            temp.write_all(&piece)?;
            written += piece.len() as u64;
            hasher.update_owned(piece);
            Ok(())
        };
        match version.manifest {
            Some(address) => {
                let manifest = match self.store.manifest(&address) {
                    Some(Ok(manifest)) => manifest,
                    _ => bail!("the bus no longer holds that version (manifest {address})"),
                };
                self.copy_chunks(&manifest, &mut sink)?;
            }
            None => self.copy_blob(&sha256, &mut sink)?,
        }
        let actual = hasher.finish()?;
        if actual != sha256 || written != entry.size {
            bail!("the stored content hashes to {actual}, not {sha256}: not restored");
        }
        temp.as_file().sync_all()?;
        temp.persist_noclobber(to)
            .map_err(|err| err.error)
            .with_context(|| format!("cannot create {}", to.display()))?;
        Ok(written)
    }

    fn copy_chunks(
        &self,
        manifest: &Manifest,
        sink: &mut dyn FnMut(Vec<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for chunk in manifest.chunks() {
            self.copy_blob(&chunk.sha256, sink)?;
        }
        Ok(())
    }

    fn copy_blob(
        &self,
        address: &ContentHash,
        sink: &mut dyn FnMut(Vec<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let hex = address.to_hex();
        let mut offset = 0;
        loop {
            let (piece, eof) = self
                .store
                .read(&hex, offset, PIECE_SIZE as u64)
                .with_context(|| format!("the bus no longer holds that version ({hex})"))?;
            offset += piece.len() as u64;
            let empty = piece.is_empty();
            sink(piece)?;
            if eof || empty {
                return Ok(());
            }
        }
    }
}

fn version_in(state: &Snapshot, path: &RelPath) -> Version {
    let entry = state.model.get(path).cloned();
    let manifest = entry
        .as_ref()
        .and_then(|e| e.sha256)
        .and_then(|sha256| state.manifest_of(&sha256))
        .and_then(ContentHash::parse_hex);
    Version {
        seq: state.seq,
        time: state.time.clone(),
        entry,
        manifest,
    }
}

/// `filesync history`'s table.
pub fn render(path: &RelPath, versions: &[Version], history: &History) -> String {
    let mut out = String::new();
    if versions.is_empty() {
        let _ = writeln!(out, "{path}: no version in the retained history");
        return out;
    }
    let _ = writeln!(
        out,
        "{:>8}  {:<27}  {:<7}  {:>12}  content",
        "seq", "time", "what", "bytes"
    );
    for version in versions {
        let (what, size, content) = match &version.entry {
            None => ("gone", String::new(), String::new()),
            Some(entry) if entry.kind == Kind::File => {
                let held = if history.is_held(version) {
                    "held"
                } else {
                    "not held"
                };
                let sha = entry.sha256.map(|s| s.to_hex()).unwrap_or_default();
                (
                    "file",
                    entry.size.to_string(),
                    format!("{}… {held}", &sha[..sha.len().min(12)]),
                )
            }
            Some(entry) => (entry.kind.as_str(), String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "{:>8}  {:<27}  {:<7}  {:>12}  {content}",
            format!("#{}", version.seq),
            version.time,
            what,
            size
        );
    }
    out
}
