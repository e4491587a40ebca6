//! The bus server: accepts agents, appends what they publish to the log, answers polls from
//! the log, and keeps the blob store.
//!
//! Architecture invariant: the log is appended before anything is delivered, because
//! delivery *is* reading the log. There is no per-subscriber queue to overflow: a slow
//! subscriber only falls behind in the file, and the bus never waits for it.
//!
//! What a peer sends is untrusted. A frame that is not a valid message, or is too large,
//! ends that peer's connection with a warning on stderr; a well-formed request that is
//! wrong (a path with `..`, a put of content the store does not have, a notify from a
//! slave) gets an `err` reply and is never logged. Either way the bus and other agents go on.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use filesync_master::hash::CHUNK_SIZE;
use tokio::io::BufReader;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use super::blobs::{BlobStore, Upload};
use super::frame::{read_frame, write_queued, Frame};
use super::log::{read_lines, EventLog, Head};
use super::protocol::{Reply, Request, PROTOCOL_VERSION};
use super::streams::{Stream, Streams};
use crate::event::{Draft, Event, Role, Tag};

/// At most this many agents at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 1024;
/// A peer that has not said hello by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Uploads one connection may have open at once.
const MAX_UPLOADS: usize = 8;
/// Replies waiting for a slow peer's socket; past this the peer's reads simply wait.
const OUTBOX: usize = 64;
/// Polls one connection may have waiting at once. Each may hold a piece of the log in
/// memory, so a peer firing polls without reading must not be able to pile them up.
const MAX_POLLS: usize = 4;
/// Stream requests (`stream_next`, `stream_get`) one connection may have waiting at once;
/// each may hold a piece of content in memory.
const MAX_STREAM_WAITS: usize = 8;

/// How the bus is set up.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Holds `events.jsonl` and `blobs/`.
    pub state_dir: PathBuf,
    /// When set, every peer must present it in its hello.
    pub token: Option<String>,
    /// Test buses only: let a peer hold agents at checkpoints (see `gates`).
    pub checkpoints: bool,
}

struct Shared {
    log: Mutex<EventLog>,
    log_path: PathBuf,
    head: watch::Sender<Head>,
    blobs: BlobStore,
    /// Uploads under way, for slaves that follow them as they arrive.
    streams: Streams,
    answered: Mutex<HashMap<String, u64>>,
    master_dir: Mutex<Option<String>>,
    token: Option<String>,
    /// Present only on a bus started with checkpoints enabled.
    gates: Option<super::gates::Gates>,
}

/// Locks a mutex, recovering the data if a panicking task poisoned it: every critical
/// section below leaves the data consistent at each step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Opens the bus's state (log and blobs) so that errors surface before listening.
pub struct Bus {
    shared: Arc<Shared>,
}

impl Bus {
    pub fn open(options: &BusOptions) -> anyhow::Result<Bus> {
        std::fs::create_dir_all(&options.state_dir).with_context(|| {
            format!(
                "cannot create state directory {}",
                options.state_dir.display()
            )
        })?;
        let log_path = options.state_dir.join("events.jsonl");
        let (log, recovered) = EventLog::open(&log_path)
            .with_context(|| format!("cannot open event log {}", log_path.display()))?;
        let blobs = BlobStore::open(&options.state_dir.join("blobs")).with_context(|| {
            format!("cannot open blob store in {}", options.state_dir.display())
        })?;
        let (head, _) = watch::channel(log.head());
        Ok(Bus {
            shared: Arc::new(Shared {
                log: Mutex::new(log),
                log_path,
                head,
                blobs,
                streams: Streams::default(),
                answered: Mutex::new(recovered.answered),
                master_dir: Mutex::new(None),
                token: options.token.clone(),
                gates: options.checkpoints.then(super::gates::Gates::default),
            }),
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.shared.log_path
    }

    /// Serves agents on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = limit.clone().acquire_owned() => permit.context("connection limit closed")?,
            };
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let shared = self.shared.clone();
                    connections.spawn(async move {
                        let _permit = permit;
                        handle_connection(shared, stream, peer.to_string()).await;
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            while connections.try_join_next().is_some() {}
        }
        connections.shutdown().await;
        Ok(())
    }
}

/// One agent's identity, from its hello.
struct Peer {
    role: Role,
    name: String,
    addr: String,
}

async fn handle_connection(shared: Arc<Shared>, stream: TcpStream, addr: String) {
    let _ = stream.set_nodelay(true);
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    let (outbox, outbox_rx) = mpsc::channel::<Frame>(OUTBOX);
    let writer = tokio::spawn(write_loop(write_half, outbox_rx));

    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut reader)).await {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return,
        Ok(Err(err)) => {
            tracing::warn!("peer {addr}: bad handshake frame: {err}; dropping it");
            return reject(outbox, writer, format!("bad frame: {err}")).await;
        }
        Err(_) => {
            tracing::warn!("peer {addr}: no hello within {HANDSHAKE_TIMEOUT:?}; dropping it");
            return reject(outbox, writer, "no hello in time".into()).await;
        }
    };
    let peer = match accept_hello(&shared, &hello, addr.clone()) {
        Ok(peer) => peer,
        Err(error) => {
            tracing::warn!("peer {addr}: refused: {error}");
            return reject(outbox, writer, error).await;
        }
    };
    let welcome = {
        let mut log = lock(&shared.log);
        let head = log.head().seq;
        let answered = lock(&shared.answered).get(&peer.name).copied().unwrap_or(0);
        let master_dir = lock(&shared.master_dir).clone();
        let join = Draft {
            role: Some(peer.role),
            ..Draft::tagged(Tag::Join)
        };
        match log.append(&peer.name, join) {
            Ok(_) => {
                shared.head.send_replace(log.head());
            }
            Err(err) => tracing::error!("cannot append to the event log: {err}"),
        }
        Reply::Welcome {
            protocol: PROTOCOL_VERSION,
            head,
            answered,
            master_dir,
        }
    };
    if outbox
        .send(reply_frame(&welcome, Vec::new()))
        .await
        .is_err()
    {
        return;
    }
    tracing::info!("{} {} joined from {}", peer.role, peer.name, peer.addr);

    let mut uploads: HashMap<u64, Receiving> = HashMap::new();
    let mut polls = JoinSet::new();
    let mut stream_waits = JoinSet::new();
    loop {
        let frame = match read_frame(&mut reader).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(
                    "peer {} ({}): {err}; dropping the connection",
                    peer.name,
                    peer.addr
                );
                break;
            }
        };
        let request = match Request::parse(&frame.header) {
            Ok(request) => request,
            Err(err) => {
                tracing::warn!(
                    "peer {} ({}): not a request: {err}; dropping the connection",
                    peer.name,
                    peer.addr
                );
                break;
            }
        };
        let reply = match request {
            Request::Hello { .. } => {
                tracing::warn!(
                    "peer {} ({}): second hello; dropping the connection",
                    peer.name,
                    peer.addr
                );
                break;
            }
            Request::Publish { id, event } => {
                if let Some(gates) = &shared.gates {
                    gates.before_append(&peer.name, &event).await;
                }
                match publish(&shared, &peer, *event) {
                    Ok(event) => {
                        if let Some(gates) = &shared.gates {
                            gates.after_append(&peer.name, &event).await;
                        }
                        let seq = Some(event.seq);
                        reply_frame(
                            &Reply::Ok {
                                id,
                                seq,
                                present: None,
                            },
                            Vec::new(),
                        )
                    }
                    Err(error) => {
                        tracing::warn!("peer {}: publish refused: {error}", peer.name);
                        reply_frame(&Reply::Err { id, error }, Vec::new())
                    }
                }
            }
            Request::Poll {
                id,
                from,
                max_bytes,
            } => {
                while polls.try_join_next().is_some() {}
                if polls.len() >= MAX_POLLS {
                    let error = format!("more than {MAX_POLLS} polls in flight");
                    reply_frame(&Reply::Err { id, error }, Vec::new())
                } else {
                    let from = from.max(1);
                    let agent = peer.name.clone();
                    polls.spawn(poll(
                        shared.clone(),
                        outbox.clone(),
                        agent,
                        id,
                        from,
                        max_bytes,
                    ));
                    continue;
                }
            }
            Request::Arm { .. }
            | Request::Release { .. }
            | Request::Reached { .. }
            | Request::Disarm { .. } => {
                match checkpoint_request(&shared, request, &outbox, &mut polls) {
                    Some(reply) => reply,
                    None => continue,
                }
            }
            Request::BlobHas { id, sha256 } => match shared.blobs.contains(&sha256) {
                Ok(present) => reply_frame(
                    &Reply::Ok {
                        id,
                        seq: None,
                        present: Some(present),
                    },
                    Vec::new(),
                ),
                Err(err) => reply_frame(
                    &Reply::Err {
                        id,
                        error: err.to_string(),
                    },
                    Vec::new(),
                ),
            },
            Request::BlobPut { id, sha256 } => {
                let stored = shared.blobs.put_whole(&sha256, &frame.body);
                blob_reply(id, stored.map_err(|err| err.to_string()))
            }
            Request::BlobPiece { id, upload, offset } => blob_reply(
                id,
                blob_piece(&shared, &mut uploads, upload, offset, frame.body),
            ),
            Request::BlobCommit { id, upload, sha256 } => {
                let committed = match uploads.remove(&upload) {
                    Some(received) => received.commit(&shared.blobs, &sha256),
                    None => Err(format!("no upload {upload} in progress")),
                };
                blob_reply(id, committed)
            }
            Request::BlobAbort { id, upload } => {
                // Dropping it removes its temporary file and tells its followers.
                uploads.remove(&upload);
                blob_reply(id, Ok(()))
            }
            Request::StreamNext { .. } | Request::StreamGet { .. } => {
                while stream_waits.try_join_next().is_some() {}
                if stream_waits.len() >= MAX_STREAM_WAITS {
                    let id = match request {
                        Request::StreamNext { id, .. } | Request::StreamGet { id, .. } => id,
                        _ => 0,
                    };
                    let error = format!("more than {MAX_STREAM_WAITS} stream requests waiting");
                    reply_frame(&Reply::Err { id, error }, Vec::new())
                } else {
                    stream_waits.spawn(stream_request(shared.clone(), outbox.clone(), request));
                    continue;
                }
            }
            Request::BlobGet {
                id,
                sha256,
                offset,
                len,
            } => {
                match shared
                    .blobs
                    .read(&sha256, offset, len.min(CHUNK_SIZE as u64))
                {
                    Ok((data, eof)) => reply_frame(&Reply::BlobData { id, eof }, data),
                    Err(err) => reply_frame(
                        &Reply::Err {
                            id,
                            error: err.to_string(),
                        },
                        Vec::new(),
                    ),
                }
            }
        };
        if outbox.send(reply).await.is_err() {
            break;
        }
    }
    polls.shutdown().await;
    stream_waits.shutdown().await;
    drop(outbox);
    let _ = writer.await;
    tracing::info!("{} {} disconnected", peer.role, peer.name);
}

async fn reject(outbox: mpsc::Sender<Frame>, writer: tokio::task::JoinHandle<()>, error: String) {
    let _ = outbox
        .send(reply_frame(&Reply::Reject { error }, Vec::new()))
        .await;
    drop(outbox);
    let _ = writer.await;
}

fn accept_hello(shared: &Shared, frame: &Frame, addr: String) -> Result<Peer, String> {
    let request: Request =
        serde_json::from_slice(&frame.header).map_err(|err| format!("expected a hello: {err}"))?;
    let Request::Hello {
        protocol,
        role,
        name,
        token,
        dir,
    } = request
    else {
        return Err("expected a hello first".into());
    };
    if protocol != PROTOCOL_VERSION {
        return Err(format!(
            "protocol {protocol} not supported (this bus speaks {PROTOCOL_VERSION})"
        ));
    }
    if let Some(expected) = &shared.token {
        if !constant_time_eq(
            token.as_deref().unwrap_or("").as_bytes(),
            expected.as_bytes(),
        ) {
            return Err("missing or wrong token".into());
        }
    }
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "agent name {name:?} must be 1-64 of A-Z a-z 0-9 . _ -"
        ));
    }
    if let (Role::Master, Some(dir)) = (role, dir) {
        *lock(&shared.master_dir) = Some(dir);
    }
    Ok(Peer { role, name, addr })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves a gate request; `None` when the reply comes later (from a spawned waiter).
fn checkpoint_request(
    shared: &Arc<Shared>,
    request: Request,
    outbox: &mpsc::Sender<Frame>,
    waiters: &mut JoinSet<()>,
) -> Option<Frame> {
    let ok = |id| {
        reply_frame(
            &Reply::Ok {
                id,
                seq: None,
                present: None,
            },
            Vec::new(),
        )
    };
    let err = |id, error: String| reply_frame(&Reply::Err { id, error }, Vec::new());
    let Some(gates) = &shared.gates else {
        let id = match &request {
            Request::Arm { id, .. }
            | Request::Release { id, .. }
            | Request::Reached { id, .. }
            | Request::Disarm { id } => *id,
            _ => 0,
        };
        return Some(err(
            id,
            "checkpoints are disabled on this bus (start it with --test-checkpoints)".into(),
        ));
    };
    match request {
        Request::Arm { id, name, gate } => Some(match gates.arm(name, gate) {
            Ok(()) => ok(id),
            Err(error) => err(id, error),
        }),
        Request::Release { id, name } => Some(match gates.release(&name) {
            Ok(()) => ok(id),
            Err(error) => err(id, error),
        }),
        Request::Disarm { id } => {
            gates.disarm_all();
            Some(ok(id))
        }
        Request::Reached { id, name } => {
            let shared = shared.clone();
            let outbox = outbox.clone();
            waiters.spawn(async move {
                let Some(gates) = &shared.gates else { return };
                let frame = match gates.wait_reached(&name).await {
                    Ok(seq) => reply_frame(
                        &Reply::Ok {
                            id,
                            seq: Some(seq),
                            present: None,
                        },
                        Vec::new(),
                    ),
                    Err(error) => reply_frame(&Reply::Err { id, error }, Vec::new()),
                };
                let _ = outbox.send(frame).await;
            });
            None
        }
        _ => None,
    }
}

/// Validates a peer's event and appends it.
fn publish(shared: &Shared, peer: &Peer, mut draft: Draft) -> Result<Event, String> {
    let tag = draft.tag.ok_or("missing field `tag`")?;
    let allowed = match tag {
        Tag::Join => false,
        Tag::Ready | Tag::Leave => true,
        Tag::Notify => peer.role == Role::Master,
        Tag::Consume | Tag::Error => peer.role == Role::Slave,
    };
    if !allowed {
        return Err(format!("a {} may not publish {tag} events", peer.role));
    }
    draft.role = None;
    // No path in the log may escape the root, whatever the tag.
    draft.check_paths().map_err(|err| err.to_string())?;
    if matches!(tag, Tag::Notify | Tag::Consume) {
        let change = draft.change().map_err(|err| err.to_string())?;
        if tag == Tag::Notify {
            if let filesync_master::Change::Put { entry, path } = &change {
                if let Some(sha256) = &entry.sha256 {
                    if !shared.blobs.contains(&sha256.to_hex()).unwrap_or(false) {
                        return Err(format!(
                            "put of {path}: the bus has no content {sha256}; upload it first"
                        ));
                    }
                }
            }
        }
    }
    let head = shared.head.borrow().seq;
    if matches!(tag, Tag::Consume | Tag::Error) {
        let cause = draft.cause.ok_or("missing field `cause`")?;
        if cause == 0 || cause > head {
            return Err(format!("cause {cause} is not in the log (head is {head})"));
        }
        if tag == Tag::Error && draft.error.is_none() {
            return Err("missing field `error`".into());
        }
    }
    let cause = draft.cause;
    let mut log = lock(&shared.log);
    let event = log.append(&peer.name, draft).map_err(|err| {
        tracing::error!("cannot append to the event log: {err}");
        format!("bus cannot append to its log: {err}")
    })?;
    if let (Some(cause), Tag::Consume | Tag::Error) = (cause, tag) {
        let mut answered = lock(&shared.answered);
        let entry = answered.entry(peer.name.clone()).or_default();
        *entry = (*entry).max(cause);
    }
    shared.head.send_replace(log.head());
    Ok(event)
}

/// An upload being received on a connection, and its stream for followers. Dropped
/// uncommitted (aborted, refused, restarted, connection closed), it removes its temporary
/// file and tells its followers it was abandoned.
struct Receiving {
    upload: Option<Upload>,
    stream: Option<Arc<Stream>>,
}

impl Receiving {
    fn commit(mut self, blobs: &BlobStore, sha256: &str) -> Result<(), String> {
        let upload = self.upload.take().ok_or("upload already finished")?;
        let written = upload.written();
        blobs
            .commit(upload, sha256)
            .map_err(|err| err.to_string())?;
        if let Some(stream) = &self.stream {
            stream.committed(written, sha256);
        }
        Ok(())
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        if let Some(stream) = &self.stream {
            stream.abandoned();
        }
    }
}

/// Receives one piece of an upload; offset 0 starts it (again, if it was under way).
fn blob_piece(
    shared: &Shared,
    uploads: &mut HashMap<u64, Receiving>,
    upload: u64,
    offset: u64,
    piece: Vec<u8>,
) -> Result<(), String> {
    if offset == 0 {
        uploads.remove(&upload);
        if uploads.len() >= MAX_UPLOADS {
            return Err(format!("more than {MAX_UPLOADS} uploads at once"));
        }
        let started = shared.blobs.begin().map_err(|err| err.to_string())?;
        // Followers are a bonus: an upload that cannot be followed is still received.
        let stream = shared.streams.open(started.temp_path()).ok();
        uploads.insert(
            upload,
            Receiving {
                upload: Some(started),
                stream,
            },
        );
    }
    let receiving = uploads
        .get_mut(&upload)
        .ok_or_else(|| format!("no upload {upload} in progress at offset {offset}"))?;
    let Some(current) = receiving.upload.as_mut() else {
        return Err(format!("upload {upload} already finished"));
    };
    match shared.blobs.write(current, offset, piece) {
        Ok(()) => {
            if let Some(stream) = &receiving.stream {
                stream.wrote(current.written());
            }
            Ok(())
        }
        Err(err) => {
            uploads.remove(&upload);
            Err(err.to_string())
        }
    }
}

/// Answers `stream_next` or `stream_get`, which may wait for the uploader.
async fn stream_request(shared: Arc<Shared>, outbox: mpsc::Sender<Frame>, request: Request) {
    let frame = match request {
        Request::StreamNext { id, after } => {
            let stream = shared.streams.next_open(after).await;
            reply_frame(&Reply::Stream { id, stream }, Vec::new())
        }
        Request::StreamGet {
            id,
            stream,
            offset,
            len,
        } => {
            let read = match shared.streams.get(stream) {
                Some(found) => found.read(offset, len.min(CHUNK_SIZE as u64)).await,
                None => Err(format!("no upload stream {stream}")),
            };
            match read {
                Ok(piece) => reply_frame(
                    &Reply::StreamData {
                        id,
                        eof: piece.eof,
                        sha256: piece.sha256,
                    },
                    piece.data,
                ),
                Err(error) => reply_frame(&Reply::Err { id, error }, Vec::new()),
            }
        }
        _ => return,
    };
    let _ = outbox.send(frame).await;
}

fn blob_reply(id: u64, outcome: Result<(), String>) -> Frame {
    match outcome {
        Ok(()) => reply_frame(
            &Reply::Ok {
                id,
                seq: None,
                present: Some(true),
            },
            Vec::new(),
        ),
        Err(error) => reply_frame(&Reply::Err { id, error }, Vec::new()),
    }
}

/// Answers one poll: waits until `from` exists, then sends the lines from there (up to the
/// first event a checkpoint gate holds back from `agent`).
async fn poll(
    shared: Arc<Shared>,
    outbox: mpsc::Sender<Frame>,
    agent: String,
    id: u64,
    from: u64,
    max_bytes: u64,
) {
    let mut head_rx = shared.head.subscribe();
    let head = loop {
        let head = *head_rx.borrow_and_update();
        if head.seq >= from {
            break head;
        }
        if head_rx.changed().await.is_err() {
            return;
        }
    };
    let start = lock(&shared.log).offset_of(from);
    let path = shared.log_path.clone();
    let max = max_bytes.clamp(1, CHUNK_SIZE as u64);
    let lines = tokio::task::spawn_blocking(move || read_lines(&path, start, head.end, max)).await;
    let frame = match lines {
        Ok(Ok(mut lines)) => {
            if let Some(gates) = &shared.gates {
                let events: Vec<Event> = std::str::from_utf8(&lines)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|line| Event::parse(line).ok())
                    .collect();
                let allowed = gates.before_deliver(&agent, &events).await;
                let cut = lines
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| b == b'\n')
                    .nth(allowed.saturating_sub(1))
                    .map_or(0, |(idx, _)| idx + 1);
                lines.truncate(if allowed == 0 { 0 } else { cut });
            }
            reply_frame(&Reply::Events { id }, lines)
        }
        Ok(Err(err)) => reply_frame(
            &Reply::Err {
                id,
                error: format!("cannot read the log: {err}"),
            },
            Vec::new(),
        ),
        Err(err) => reply_frame(
            &Reply::Err {
                id,
                error: format!("log reader failed: {err}"),
            },
            Vec::new(),
        ),
    };
    let _ = outbox.send(frame).await;
}

fn reply_frame(reply: &Reply, body: Vec<u8>) -> Frame {
    // Replies are plain data: serialising them cannot fail.
    Frame::new(serde_json::to_vec(reply).unwrap_or_default(), body)
}

async fn write_loop(write_half: OwnedWriteHalf, outbox: mpsc::Receiver<Frame>) {
    if let Err(err) = write_queued(write_half, outbox).await {
        tracing::debug!("connection lost while writing: {err}");
    }
}
