//! History as a feature: the versions of a path the bus still holds (`filesync history`),
//! and one of them written out, verified (`filesync restore`).
//!
//! Both read a bus's state directory and never write to it, so they run beside a live
//! bus: the log (every retained segment, and the checkpoint covering what retention
//! removed) says what each path was at each `seq`; the content store (opened read-only)
//! holds the bytes, whole or in chunks, for as long as the history window keeps the events
//! that name them (`bus/gc.rs`). Or they ask a bus, as a quiet listener: its log from #1
//! (a NATS bus keeps it whole; a log retention shortened needs its checkpoint, on the bus's
//! machine) and its content by address, as a slave would fetch it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context};
use filesync_master::chunk::{ChunkRef, Manifest};
use filesync_master::hash::{ContentHash, PieceHasher};
use filesync_slave::rebuild::Source;

use crate::bus::protocol::PIECE_SIZE;
use filesync_master::{Entry, Kind, RelPath};

use crate::agent::chunked::{fetch_manifest, FetchFailed, Fetches};
use crate::bus::api::{call, Link};
use crate::bus::blobs::{BlobError, BlobStore};
use crate::bus::{ClientError, Subscription};
use crate::check::LogFile;
use crate::checkpoint::Snapshot;
use crate::event::Tag;

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

/// A log and the content it names, read-only.
pub struct History {
    log: LogFile,
    content: ContentSource,
}

/// Where a history's content is: a state directory's store, read in place, or a bus, asked.
enum ContentSource {
    Store(Box<BlobStore>),
    Bus(Link),
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
        Ok(History {
            log,
            content: ContentSource::Store(Box::new(store)),
        })
    }

    /// The history a bus holds, read over `link` (dialled as a quiet listener): its log
    /// from #1 to the head it welcomed us with.
    pub async fn ask(link: Link, welcome: &crate::bus::Welcome) -> anyhow::Result<History> {
        if welcome.start > 1 {
            bail!(
                "the bus's log starts at #{} (retention removed what came before, and its checkpoint is on the bus's machine): run this there with --state",
                welcome.start
            );
        }
        let mut subscription = Subscription::new(link.clone(), 1);
        let mut events = Vec::new();
        while subscription.position() <= welcome.head {
            events.push(
                subscription
                    .next()
                    .await
                    .context("cannot read the bus's log")?,
            );
        }
        Ok(History {
            log: LogFile { base: None, events },
            content: ContentSource::Bus(link),
        })
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

    /// Whether the store (or the bus) holds every byte of `version`'s content.
    pub async fn is_held(&self, version: &Version) -> anyhow::Result<bool> {
        let Some(sha256) = version.entry.as_ref().and_then(|e| e.sha256) else {
            return Ok(false);
        };
        let Some(address) = version.manifest else {
            return self.content.holds_all(&[sha256]).await;
        };
        let Some(manifest) = self.content.manifest(&address).await? else {
            return Ok(false);
        };
        let chunks: Vec<ContentHash> = manifest.chunks().iter().map(|c| c.sha256).collect();
        self.content.holds_all(&chunks).await
    }

    /// Writes `version`'s content to `to` (which must not exist), verified against its
    /// SHA-256 before it takes that name.
    pub async fn restore(&self, version: &Version, to: &Path) -> anyhow::Result<u64> {
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
                let Some(manifest) = self.content.manifest(&address).await? else {
                    bail!("the bus no longer holds that version (manifest {address})");
                };
                self.content
                    .copy_chunks(manifest.chunks(), &mut sink)
                    .await?;
            }
            None => self.content.copy(&sha256, &mut sink).await?,
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
}

/// Questions about content a bus is asked ahead of the oldest answer (a 1 GiB file has
/// about 16,000 chunks: one round trip each made `history --bus` wait on every one).
const ASKED_AHEAD: usize = 16;

impl ContentSource {
    /// Whether every one of `addresses` is held.
    async fn holds_all(&self, addresses: &[ContentHash]) -> anyhow::Result<bool> {
        let link = match self {
            ContentSource::Store(store) => {
                let store = store.as_ref();
                return Ok(addresses
                    .iter()
                    .all(|address| crate::rules::Content::has(store, address)));
            }
            ContentSource::Bus(link) => link,
        };
        let asking = "cannot ask the bus for content";
        let mut asked = std::collections::VecDeque::new();
        for address in addresses {
            asked.push_back(link.has(*address).await.context(asking)?);
            if asked.len() > ASKED_AHEAD {
                if let Some(oldest) = asked.pop_front() {
                    if !oldest.await.context(asking)? {
                        return Ok(false);
                    }
                }
            }
        }
        for reply in asked {
            if !reply.await.context(asking)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The piece of `address` from `offset` on, and whether it ends the content; `None`
    /// when none is held under that address.
    async fn piece(
        &self,
        address: &ContentHash,
        offset: u64,
    ) -> anyhow::Result<Option<(Vec<u8>, bool)>> {
        let found = match self {
            ContentSource::Store(store) => {
                match store.read(&address.to_hex(), offset, PIECE_SIZE as u64) {
                    Err(BlobError::Missing(_)) => return Ok(None),
                    read => read.map_err(anyhow::Error::from),
                }
            }
            ContentSource::Bus(link) => match call(link.get(*address, offset)).await {
                // The bus's answer for content it does not hold.
                Err(ClientError::Refused(_)) => return Ok(None),
                got => got.context("cannot fetch content from the bus"),
            },
        };
        found.map(Some)
    }

    /// The manifest stored under `address`; `None` when it is not held or is not a
    /// manifest (the version is then not held either).
    async fn manifest(&self, address: &ContentHash) -> anyhow::Result<Option<Manifest>> {
        match self {
            ContentSource::Store(store) => {
                Ok(crate::rules::Content::manifest(store.as_ref(), address).and_then(Result::ok))
            }
            // Checked against its address and decoded as a slave does.
            ContentSource::Bus(link) => {
                match fetch_manifest(link, *address).await {
                    Ok(manifest) => Ok(Some(manifest)),
                    Err(FetchFailed {
                        err: ClientError::Refused(_) | ClientError::Protocol(_),
                        ..
                    }) => Ok(None),
                    Err(FetchFailed { what, err }) => Err(anyhow::Error::new(err)
                        .context(format!("cannot fetch {what} from the bus"))),
                }
            }
        }
    }

    /// Every byte of each chunk, in order, into `sink`. From a bus, chunks are asked for
    /// ahead of the one written, as a slave's build does (`agent::chunked::Fetches`): one
    /// at a time, a 512 MiB file's 8,000 chunks each waited a round trip.
    async fn copy_chunks(
        &self,
        chunks: &[ChunkRef],
        sink: &mut dyn FnMut(Vec<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let ContentSource::Bus(link) = self else {
            for chunk in chunks {
                self.copy(&chunk.sha256, sink).await?;
            }
            return Ok(());
        };
        let steps: Vec<(ChunkRef, Source)> = chunks.iter().map(|c| (*c, Source::Bus)).collect();
        let mut fetches = Fetches::new(&steps);
        for (idx, (chunk, _)) in steps.iter().enumerate() {
            let fetched = match fetches.ask_ahead(link, idx).await {
                Ok(()) => fetches.next_chunk(chunk).await,
                Err(failed) => Err(failed),
            };
            match fetched {
                Ok(piece) => sink(piece)?,
                Err((sha256, ClientError::Refused(_))) => {
                    bail!("the bus no longer holds that version (chunk {sha256})")
                }
                Err((sha256, err)) => {
                    return Err(anyhow::Error::new(err)
                        .context(format!("cannot fetch chunk {sha256} from the bus")))
                }
            }
        }
        Ok(())
    }

    /// Every byte of `address`, piece by piece, into `sink`.
    async fn copy(
        &self,
        address: &ContentHash,
        sink: &mut dyn FnMut(Vec<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut offset = 0;
        loop {
            let Some((piece, eof)) = self.piece(address, offset).await? else {
                bail!("the bus no longer holds that version ({address})");
            };
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
pub async fn render(
    path: &RelPath,
    versions: &[Version],
    history: &History,
) -> anyhow::Result<String> {
    let mut out = String::new();
    if versions.is_empty() {
        let _ = writeln!(out, "{path}: no version in the retained history");
        return Ok(out);
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
                let held = if history.is_held(version).await? {
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
    Ok(out)
}
