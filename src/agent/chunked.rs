//! The slave's side of a file stored in chunks: the manifest fetched, the chunks of the
//! slave's current copy found (from the manifest it wrote that copy from, while the copy is
//! untouched: `filesync_slave::known`; otherwise by cutting and hashing it:
//! `filesync_slave::rebuild`), every chunk found there copied from it and the rest fetched
//! from the bus, into a staged file that is verified whole before it is put in place. What
//! came from where is counted for the consume (`fetched`, `reused`).

use std::collections::VecDeque;

use filesync_master::chunk::{ChunkRef, Manifest};
use filesync_master::hash::ContentHash;
use filesync_master::{Entry, RelPath};
use filesync_slave::known::Known;
use filesync_slave::rebuild::{plan, LocalChunks, Source};
use filesync_slave::{Applied, Applier, ApplyError, StagedFile};

use super::follow::Follower;
use super::progress::Progress;
use super::slave::ApplyFailure;
use super::write_behind::WriteBehind;
use crate::bus::api::{call, Link, Piece, Reply};
use crate::bus::protocol::PIECE_SIZE;
use crate::bus::ClientError;

/// Chunk fetches asked for ahead of the one being written.
const FETCHES_AHEAD: usize = 16;

/// Where a file's bytes came from: the consume's `fetched` and `reused`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    pub fetched: u64,
    pub reused: u64,
}

/// Content is written to disk in batches of about this many bytes (chunks are smaller).
pub(super) const WRITE_BATCH: usize = 1 << 20;

/// Fetches content of any size from the bus, piece by piece.
pub async fn fetch_content(client: &Link, address: ContentHash) -> Result<Vec<u8>, ClientError> {
    let mut content = Vec::new();
    loop {
        let (piece, last) = call(client.get(address, content.len() as u64)).await?;
        let short = piece.len() < PIECE_SIZE;
        content.extend_from_slice(&piece);
        if last || short {
            return Ok(content);
        }
    }
}

/// Applies the put of `path` whose content is listed by the manifest at `address` (hex).
pub(super) async fn apply_chunked(
    applier: &Applier,
    client: &Link,
    follower: Option<&Follower>,
    path: &RelPath,
    entry: &Entry,
    address: &str,
) -> Result<(Applied, Transfer), ApplyFailure> {
    let failed = |err: ApplyError| ApplyFailure::Change(err.to_string());
    let manifest_address = ContentHash::parse_hex(address).ok_or_else(|| {
        ApplyFailure::Change(format!(
            "the manifest of {path} is not a sha256: {address:?}"
        ))
    })?;
    let known = entry.sha256.map(|sha256| Known {
        manifest: manifest_address,
        sha256,
        size: entry.size,
    });
    let remember = |applied: Applied, transfer: Transfer| {
        if let Some(known) = known {
            applier.remember(path, known);
        }
        (applied, transfer)
    };
    // Received while it was uploaded, if it is this file's (see `follow`).
    if let (Some(follower), Some(sha256)) = (follower, entry.sha256) {
        if let Some(received) = follower.claim(sha256).await {
            match applier.adopt(path, entry, received) {
                Ok(applied) => {
                    tracing::debug!("{path}: received while it was uploaded");
                    let fetched = entry.size;
                    return Ok(remember(applied, Transfer { fetched, reused: 0 }));
                }
                Err(err) => tracing::debug!("{path}: what was followed is not used: {err}"),
            }
        }
    }
    let manifest = fetch_manifest(client, manifest_address)
        .await
        .map_err(|err| err.for_file(path))?;
    if manifest.size() != entry.size {
        return Err(ApplyFailure::Change(format!(
            "manifest of {path} describes {} bytes, not {}",
            manifest.size(),
            entry.size
        )));
    }
    let (local, trusted) = local_chunks(applier, client, path).await.map_err(failed)?;
    if let Some(local) = &local {
        if Some(local.whole()) == entry.sha256 && local.size() == entry.size {
            let applied = applier.confirm(path, entry).map_err(failed)?;
            let reused = entry.size;
            return Ok(remember(applied, Transfer { fetched: 0, reused }));
        }
    }
    let (staged, transfer) = build(applier, client, path, entry, &manifest, local.as_ref()).await?;
    match staged.commit() {
        Ok(applied) => Ok(remember(applied, transfer)),
        // The copy was changed in a way its metadata does not show: build again from what
        // it really holds.
        Err(ApplyError::ContentMismatch { .. }) if trusted => {
            tracing::warn!("{path}: the copy changed behind the slave's back; reading it again");
            applier.known().forget(path);
            let local = indexed_copy(applier, path).await.map_err(failed)?;
            let (staged, transfer) =
                build(applier, client, path, entry, &manifest, local.as_ref()).await?;
            let applied = staged.commit().map_err(failed)?;
            Ok(remember(applied, transfer))
        }
        Err(err) => Err(failed(err)),
    }
}

/// Why fetching something a file needs failed.
pub(crate) struct FetchFailed {
    pub what: String,
    pub err: ClientError,
}

impl FetchFailed {
    fn for_file(self, path: &RelPath) -> ApplyFailure {
        if self.err.is_connection() {
            ApplyFailure::Bus(self.err)
        } else {
            ApplyFailure::Change(format!(
                "cannot fetch {} of {path}: {}",
                self.what, self.err
            ))
        }
    }
}

/// The manifest at `address`, fetched and checked against its address.
pub(crate) async fn fetch_manifest(
    client: &Link,
    address: ContentHash,
) -> Result<Manifest, FetchFailed> {
    let failed = |err| FetchFailed {
        what: format!("manifest {address}"),
        err,
    };
    let bytes = fetch_content(client, address).await.map_err(failed)?;
    if ContentHash::of(&bytes) != address {
        return Err(failed(ClientError::Protocol(
            "the manifest arrived with other content".into(),
        )));
    }
    Manifest::decode(&bytes).map_err(|err| failed(ClientError::Protocol(err.to_string())))
}

/// Writes the version `manifest` lists into a staged file: each chunk from `local` where it
/// has it, the rest fetched, a few asked for ahead. The caller commits it.
async fn build(
    applier: &Applier,
    client: &Link,
    path: &RelPath,
    entry: &Entry,
    manifest: &Manifest,
    local: Option<&LocalChunks>,
) -> Result<(Box<StagedFile>, Transfer), ApplyFailure> {
    let failed = |err: ApplyError| ApplyFailure::Change(err.to_string());
    let fetch_failed = |sha256: ContentHash, err| {
        FetchFailed {
            what: format!("chunk {sha256}"),
            err,
        }
        .for_file(path)
    };
    let staged = Box::new(applier.stage_file(path, entry).map_err(failed)?);
    let mut staged = WriteBehind::new(staged, path, entry.size);
    let steps = plan(manifest, local);
    let mut fetches = Fetches::new(&steps);
    let mut transfer = Transfer::default();
    let mut progress = Progress::file("receiving", &path.to_string(), Some(entry.size));
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    for (idx, (chunk, source)) in steps.iter().enumerate() {
        // Keep the bus busy with the next chunks while this one is written.
        fetches
            .ask_ahead(client, idx)
            .await
            .map_err(|(sha256, err)| fetch_failed(sha256, err))?;
        match (source, local) {
            (Source::Local(offset), Some(local)) => {
                local
                    .read_into(*offset, chunk.len, &mut batch)
                    .map_err(|source| {
                        failed(ApplyError::Io {
                            action: "read the current copy of",
                            path: path.clone(),
                            source,
                        })
                    })?;
                transfer.reused += u64::from(chunk.len);
            }
            _ => {
                let data = fetches
                    .next_chunk(chunk)
                    .await
                    .map_err(|(sha256, err)| fetch_failed(sha256, err))?;
                transfer.fetched += data.len() as u64;
                batch.extend_from_slice(&data);
            }
        }
        if let Some(progress) = &mut progress {
            progress.add_bytes(u64::from(chunk.len));
        }
        if batch.len() >= WRITE_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH));
            staged.write(full).await.map_err(failed)?;
        }
    }
    if !batch.is_empty() {
        staged.write(batch).await.map_err(failed)?;
    }
    if let Some(progress) = progress {
        progress.finish();
    }
    Ok((staged.finish().await.map_err(failed)?, transfer))
}

/// The chunks a build (or a restore) takes from the bus, asked for up to
/// [`FETCHES_AHEAD`] ahead of the one being written, their replies in the order of the
/// steps, each checked for its length.
pub(crate) struct Fetches<'a> {
    steps: &'a [(ChunkRef, Source)],
    asked: VecDeque<Reply<Piece>>,
    /// The first step not looked at yet.
    next: usize,
}

impl<'a> Fetches<'a> {
    pub(crate) fn new(steps: &'a [(ChunkRef, Source)]) -> Fetches<'a> {
        Fetches {
            steps,
            asked: VecDeque::new(),
            next: 0,
        }
    }

    /// Asks for the bus's chunks among the steps from `at` on, as far ahead as allowed.
    pub(crate) async fn ask_ahead(
        &mut self,
        client: &Link,
        at: usize,
    ) -> Result<(), (ContentHash, ClientError)> {
        self.next = self.next.max(at);
        while self.asked.len() < FETCHES_AHEAD && self.next < self.steps.len() {
            let (ahead, source) = self.steps[self.next];
            if source == Source::Bus {
                let reply = client
                    .get(ahead.sha256, 0)
                    .await
                    .map_err(|err| (ahead.sha256, err))?;
                self.asked.push_back(reply);
            }
            self.next += 1;
        }
        Ok(())
    }

    /// `chunk`, the next of the steps from the bus, whole (a chunk fits in one piece).
    pub(crate) async fn next_chunk(
        &mut self,
        chunk: &ChunkRef,
    ) -> Result<Vec<u8>, (ContentHash, ClientError)> {
        let Some(reply) = self.asked.pop_front() else {
            let none = ClientError::Protocol("it was not asked for".into());
            return Err((chunk.sha256, none));
        };
        let (data, _) = reply.await.map_err(|err| (chunk.sha256, err))?;
        if data.len() != chunk.len as usize {
            let short = format!("it arrived with {} bytes, not {}", data.len(), chunk.len);
            return Err((chunk.sha256, ClientError::Protocol(short)));
        }
        Ok(data)
    }
}

/// The chunks of the current copy at `path`, and whether they are taken on trust: from
/// the manifest this slave wrote the copy from, when the copy is as it was written
/// (`filesync_slave::known`); otherwise read, cut and hashed.
async fn local_chunks(
    applier: &Applier,
    client: &Link,
    path: &RelPath,
) -> Result<(Option<LocalChunks>, bool), ApplyError> {
    let Some(file) = applier.current_copy(path)? else {
        return Ok((None, false));
    };
    let known = file
        .metadata()
        .ok()
        .and_then(|meta| applier.known().recall(path, &meta));
    if let Some(known) = known {
        match fetch_manifest(client, known.manifest).await {
            Ok(old) if old.size() == known.size => {
                tracing::debug!("{path}: the copy's chunks are where its manifest says");
                return Ok((
                    Some(LocalChunks::from_manifest(file, &old, known.sha256)),
                    true,
                ));
            }
            Ok(_) => tracing::debug!("{path}: the manifest of the copy lists another size"),
            Err(FetchFailed { what, err }) => tracing::debug!("{path}: no {what}: {err}"),
        }
    }
    tracing::debug!("{path}: reading the copy to find its chunks");
    Ok((index(file, path).await, false))
}

/// The current copy at `path`, read, cut and hashed.
async fn indexed_copy(
    applier: &Applier,
    path: &RelPath,
) -> Result<Option<LocalChunks>, ApplyError> {
    match applier.current_copy(path)? {
        Some(file) => Ok(index(file, path).await),
        None => Ok(None),
    }
}

/// `file` read, cut and hashed off the runtime's thread; `None` when it cannot be read.
async fn index(file: std::fs::File, path: &RelPath) -> Option<LocalChunks> {
    match tokio::task::spawn_blocking(move || LocalChunks::index(file)).await {
        Ok(Ok(local)) => Some(local),
        // A copy that cannot be read is simply not reused.
        Ok(Err(err)) => {
            tracing::debug!("{path}: current copy not reusable: {err}");
            None
        }
        Err(err) => {
            tracing::debug!("{path}: indexing stopped: {err}");
            None
        }
    }
}
