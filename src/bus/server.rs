//! The bus server: accepts agents, appends what they publish to the log, answers polls from
//! the log, and keeps the blob store.
//!
//! Architecture invariant: the log is appended before anything is delivered, because
//! delivery *is* reading the log. There is no per-subscriber queue to overflow: a slow
//! subscriber only falls behind in the file, and the bus never waits for it.
//!
//! What a peer sends is untrusted. A frame that is not a valid message, or is too large,
//! ends that peer's connection with a warning on stderr; a well-formed request that is
//! wrong (a path with `..`, a put of content the store does not have, a notify that does
//! not apply, a notify from a slave) gets an `err` reply and is never logged. Either way
//! the bus and other agents go on. What may join and what may be appended is decided by
//! [`crate::rules`], which sees every event appended.
//!
//! Connections are bounded and fair: at most `MAX_HANDSHAKES` peers may be saying hello at
//! once (each for `HANDSHAKE_TIMEOUT` at most), at most `MAX_AGENTS` may be connected, and
//! the last `RESERVED` places go only to masters and slaves the log knows, so a crowd of
//! strangers cannot lock out the mirror's own agents. A welcomed peer that waits for
//! nothing and sends nothing for the idle timeout is dropped; agents ping (`keepalive_ms`
//! in the welcome). TCP keepalive finds peers whose host vanished.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use filesync_master::chunk::{ChunkRef, CHUNK_MAX};
use filesync_master::hash::ContentHash;

use super::protocol::PIECE_SIZE;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use super::blobs::{BlobStore, Origin, Upload};
use super::follow::{Announced, Announcements, Followed};
use super::frame::{read_frame, write_queued, Frame, FrameError};
use super::gc;
use super::log::{self, read_lines, EventLog, Head, LogOptions};
use super::protocol::{Reply, Request, PROTOCOL_VERSION};
use super::retention::{self, Retention};
use super::status::{self, Backlog, StatusReport};
use crate::checkpoint::{self, Snapshot};
use crate::event::{Draft, Event, Role};
use crate::identity::Identity;
use crate::rules::{Connected, Place, Refusal, Rules};
use crate::state::{dir_bytes, StateDir};

/// At most this many agents connected at once ...
const MAX_AGENTS: usize = 1024;
/// ... of which the last this many only for masters and slaves the log knows.
const RESERVED: usize = 64;
/// At most this many peers between accept and hello; more are closed at once.
const MAX_HANDSHAKES: usize = 256;
/// A peer that has not said hello by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The default for `BusOptions::idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP keepalive: probes after this much silence, then every `KEEPALIVE_INTERVAL` (the
/// kernel gives up after 9 unanswered: about two minutes for a vanished host).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Uploads one connection may have open at once.
const MAX_UPLOADS: usize = 8;
/// Replies waiting for a slow peer's socket; past this the peer's reads simply wait.
const OUTBOX: usize = 64;
/// Polls one connection may have waiting at once. Each may hold a piece of the log in
/// memory, so a peer firing polls without reading must not be able to pile them up.
const MAX_POLLS: usize = 4;
/// Follow requests (`follow_next`, `follow_get`) one connection may have waiting at once.
const MAX_FOLLOWS: usize = 16;
/// Files one connection may be announcing at once.
const MAX_ANNOUNCING: usize = 4;

/// How the bus is set up.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Holds `events.jsonl` and `blobs/`.
    pub state_dir: PathBuf,
    /// When set, every peer must present it in its hello.
    pub token: Option<String>,
    /// Test buses only: let a peer hold agents at checkpoints (see `gates`).
    pub checkpoints: bool,
    /// Drop a welcomed peer that waits for nothing and sends nothing this long (`None`:
    /// never).
    pub idle_timeout: Option<Duration>,
    /// How the log is kept in segments.
    pub log: LogOptions,
    /// What of the log is kept (`retention.rs`).
    pub retention: Retention,
    /// Mutual TLS with these peers (`tls.rs`); required beyond loopback. The bus's identity
    /// is read from (or created in) `state_dir`.
    pub tls: Option<super::tls::PeerList>,
}

/// The log and the rules that decide what enters it, under one lock: one writer.
struct Ledger {
    log: EventLog,
    rules: Rules,
}

impl Ledger {
    /// Appends and observes an event; also returns the last `seq` of a segment this closed.
    fn append(&mut self, agent: &str, draft: Draft) -> std::io::Result<(Event, Option<u64>)> {
        let event = self.log.append(agent, draft)?;
        let log = &self.log;
        self.rules.observe(&event, |cause| {
            log.read_event(cause).and_then(|e| e.body.change().ok())
        });
        let closed = self.log.rotate_if_full().unwrap_or_else(|err| {
            tracing::error!("cannot begin a new segment of the log: {err}");
            None
        });
        Ok((event, closed))
    }
}

/// Who is connected, and who is still saying hello.
#[derive(Default)]
struct Sessions {
    next_id: u64,
    handshaking: usize,
    agents: HashMap<u64, Connected>,
    /// Session id -> where it reads the log: retention keeps the log from the lowest, so a
    /// reader is not cut off mid-read.
    reading: HashMap<u64, Reading>,
}

/// Where a session reads the log: the `seq` its latest poll asked for, or, once answered,
/// the one it will ask for next.
#[derive(Debug, Clone, Copy)]
struct Reading {
    next: u64,
    at: Instant,
}

/// A reader that has not polled for this long since its last answer (a master done
/// replaying, a listener paused) is no longer waited for: when it reads on, it learns the
/// log was truncated.
const READER_GRACE: Duration = Duration::from_secs(2);

struct Shared {
    ledger: Mutex<Ledger>,
    log_path: PathBuf,
    head: watch::Sender<Head>,
    blobs: BlobStore,
    /// New large files being uploaded, for slaves that follow them (`follow.rs`).
    announcements: Announcements,
    sessions: Mutex<Sessions>,
    token: Option<String>,
    idle_timeout: Option<Duration>,
    /// Present only on a bus started with checkpoints enabled.
    gates: Option<super::gates::Gates>,
    /// Where checkpoints are written.
    checkpoints: PathBuf,
    /// The bus's state directory.
    state_dir: PathBuf,
    /// Present when peers must speak TLS.
    tls: Option<tokio_rustls::TlsAcceptor>,
    retention: Retention,
    /// One checkpoint and truncation at a time.
    retaining: tokio::sync::Mutex<()>,
    /// Held while the bus runs: its lock keeps a second process off this state.
    _state: StateDir,
}

/// Locks a mutex, recovering the data if a panicking task poisoned it: every critical
/// section below leaves the data consistent at each step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Binds the bus's address and applies the bus's policy to it: beyond loopback mutual TLS is
/// required and checkpoints are refused. Nothing is created on disk.
pub async fn bind(listen: &str, options: &BusOptions) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    check_policy(
        &listener.local_addr()?,
        options.tls.is_some(),
        options.checkpoints,
    )?;
    Ok(listener)
}

fn check_policy(addr: &SocketAddr, tls: bool, checkpoints: bool) -> anyhow::Result<()> {
    let loopback = addr.ip().is_loopback();
    if checkpoints && !loopback {
        bail!("--test-checkpoints lets any peer pause agents: it is refused beyond loopback");
    }
    if !loopback && !tls {
        bail!("listening on {addr} (beyond loopback) needs mutual TLS: name the agents that may connect with --peer ID (each one's `filesync id`) or --peers FILE; a --token alone is not enough");
    }
    Ok(())
}

/// The bus's state (log, rules, blobs), open and locked; serve it with [`Bus::serve`].
pub struct Bus {
    shared: Arc<Shared>,
}

impl Bus {
    /// Opens (creating if needed) and locks the state directory, then reads the log back.
    pub fn open(options: &BusOptions) -> anyhow::Result<Bus> {
        let state = StateDir::open(&options.state_dir)?;
        let opened = Bus::open_locked(options, state);
        raise_fd_limit();
        opened
    }

    fn open_locked(options: &BusOptions, state: StateDir) -> anyhow::Result<Bus> {
        let log_path = options.state_dir.join("events.jsonl");
        let checkpoints = options.state_dir.join("checkpoints");
        // A truncated log starts with the checkpoint of what came before it.
        let start = log::peek_start(&log_path)
            .with_context(|| format!("cannot open event log {}", log_path.display()))?;
        let mut rules = match start.checkpoint {
            Some(seq) => {
                let path = crate::checkpoint::path_in(&checkpoints, seq);
                Snapshot::read(&path)
                    .with_context(|| format!("cannot read checkpoint {}", path.display()))?
                    .rules
            }
            None => Rules::new(),
        };
        let log = EventLog::open(&log_path, options.log, |event, lookup| {
            rules.observe(event, |cause| {
                lookup(cause).and_then(|e| e.body.change().ok())
            })
        })
        .with_context(|| format!("cannot open event log {}", log_path.display()))?;
        rules.set_start(log.start());
        let blobs = BlobStore::open(&options.state_dir.join("blobs")).with_context(|| {
            format!("cannot open blob store in {}", options.state_dir.display())
        })?;
        let (head, _) = watch::channel(log.head());
        let tls = match &options.tls {
            Some(peers) => {
                let identity = Identity::load_or_create(&options.state_dir)?;
                peers.check_file()?;
                let mut peers = peers.clone();
                // The master hosting this bus connects with the same identity.
                peers.ids.insert(identity.id);
                tracing::info!("bus ID {} (TLS)", identity.id);
                Some(super::tls::acceptor(&identity, Arc::new(peers))?)
            }
            None => None,
        };
        Ok(Bus {
            shared: Arc::new(Shared {
                ledger: Mutex::new(Ledger { log, rules }),
                log_path,
                head,
                blobs,
                announcements: Announcements::default(),
                sessions: Mutex::new(Sessions::default()),
                token: options.token.clone(),
                idle_timeout: options.idle_timeout,
                gates: options.checkpoints.then(super::gates::Gates::default),
                checkpoints,
                state_dir: options.state_dir.clone(),
                tls,
                retention: options.retention,
                retaining: tokio::sync::Mutex::new(()),
                _state: state,
            }),
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.shared.log_path
    }

    /// Whether a master at `place` would be let in, asked before serving: a master that
    /// hosts its bus is refused before it listens, not after.
    pub fn admits_master(&self, name: &str, place: Place, takeover: bool) -> Result<(), String> {
        let hello = crate::rules::Hello {
            role: Role::Master,
            name: name.to_owned(),
            place: Some(place),
            takeover,
        };
        lock(&self.shared.ledger)
            .rules
            .admit(&hello, &[])
            .map_err(|refusal| refusal.message().to_owned())
    }

    /// Serves agents on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        // Checked again here, so that no embedding of `Bus` can serve beyond its policy.
        check_policy(
            &listener.local_addr()?,
            self.shared.tls.is_some(),
            self.shared.gates.is_some(),
        )?;
        let mut connections = JoinSet::new();
        let keeper = tokio::spawn(keep(self.shared.clone()));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = HandshakeSlot::take(&self.shared) else {
                        tracing::warn!(
                            "peer {peer}: {MAX_HANDSHAKES} peers are saying hello already; closing"
                        );
                        continue;
                    };
                    let shared = self.shared.clone();
                    connections.spawn(async move {
                        handle_connection(shared, stream, peer.to_string(), slot).await;
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
        keeper.abort();
        connections.shutdown().await;
        Ok(())
    }
}

/// The way a master reaches the bus it hosts: a connection inside the process (a
/// `tokio::io::duplex` pipe, no socket, no TLS) that is served as any other, except that
/// the content it uploads is not hashed again (`Origin::ThisProcess`): the master computed
/// every address from the very bytes it sends. A 1 GiB new file cost the process a second
/// SHA-256 pass and a trip through loopback TCP each way before (W3, docs/BENCHMARKS.md).
pub struct LocalDial {
    shared: Arc<Shared>,
    describe: String,
}

/// Bytes the in-process pipe holds in each direction: two of the largest frames.
const LOCAL_PIPE: usize = 2 * super::frame::MAX_FRAME;

impl Bus {
    /// A way to this bus from inside the process, described as `describe` (its address).
    pub fn local_dial(&self, describe: String) -> LocalDial {
        LocalDial {
            shared: self.shared.clone(),
            describe,
        }
    }
}

impl super::api::Dial for LocalDial {
    fn dial<'a>(&'a self, hello: &'a super::Hello) -> super::api::Dialing<'a> {
        Box::pin(async move {
            let Some(slot) = HandshakeSlot::take(&self.shared) else {
                return Err(super::ClientError::Busy(format!(
                    "{MAX_HANDSHAKES} peers are saying hello already"
                )));
            };
            let (ours, theirs) = tokio::io::duplex(LOCAL_PIPE);
            tokio::spawn(serve_connection(
                self.shared.clone(),
                super::tls::split(theirs),
                "this process".into(),
                slot,
                Origin::ThisProcess,
            ));
            let (client, welcome) =
                super::client::greet(super::tls::split(ours), hello.clone(), None).await?;
            Ok((Arc::new(client) as super::Link, welcome))
        })
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// The bus's housekeeping on a timer: closes a segment the history window has outgrown
/// (and checkpoints it), drops what the window let go (`truncate`), then collects content
/// nothing refers to any more (`gc.rs`), when the log's start moved or content waits for
/// its grace period to end.
async fn keep(shared: Arc<Shared>) {
    let mut timer = tokio::time::interval(shared.retention.gc_interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    let mut collected_at = None;
    loop {
        timer.tick().await;
        let _one_at_a_time = shared.retaining.lock().await;
        let closed = lock(&shared.ledger)
            .log
            .rotate_if_older(shared.retention.segment_age());
        match closed {
            Ok(Some(last)) => {
                if let Err(err) = write_checkpoint(&shared, last).await {
                    tracing::error!("cannot write the checkpoint at {last}: {err}");
                }
            }
            Ok(None) => {}
            Err(err) => tracing::error!("cannot close the log's segment: {err}"),
        }
        truncate(&shared);
        let start = lock(&shared.ledger).log.start();
        let pending = gc::pending_path(&shared.state_dir);
        let waiting = std::fs::metadata(&pending).is_ok_and(|m| m.len() > 0);
        if collected_at == Some(start) && !waiting {
            continue;
        }
        collected_at = Some(start);
        let started = Instant::now();
        let pass = shared.clone();
        match tokio::task::spawn_blocking(move || collect(&pass)).await {
            Ok(Ok(collected)) if collected.removed.blobs > 0 => tracing::info!(
                "collected {} unreferenced blobs ({} bytes) in {:?}",
                collected.removed.blobs,
                collected.removed.bytes,
                started.elapsed()
            ),
            Ok(Ok(collected)) => tracing::debug!(
                "content collection: {} blobs, {} referenced, {} due but kept, {} waiting",
                collected.stored,
                collected.referenced,
                collected.due_kept,
                collected.waiting
            ),
            Ok(Err(err)) => tracing::warn!("content collection failed: {err}"),
            Err(err) => tracing::warn!("content collection stopped: {err}"),
        }
    }
}

/// One collection pass on the running bus (`gc.rs`): references as of the head now, then,
/// once the due blobs are doomed, those of the events appended meanwhile.
fn collect(shared: &Arc<Shared>) -> std::io::Result<gc::Collected> {
    let (base, ranges, head) = {
        let ledger = lock(&shared.ledger);
        let start = ledger.log.start();
        let head = ledger.log.head().seq;
        let base = (start > 1).then(|| checkpoint::path_in(&shared.checkpoints, start - 1));
        (base, ledger.log.ranges(start, head), head)
    };
    let mut references = gc::References::default();
    if let Some(path) = base {
        references.add_snapshot(&Snapshot::read(&path)?, &shared.blobs);
    }
    log::for_each_event(ranges, |event| {
        references.add_event(&event.body, &shared.blobs);
        true
    })?;
    let pending = gc::pending_path(&shared.state_dir);
    let grace = shared.retention.gc_grace;
    let plan = gc::plan(
        &shared.blobs,
        &references,
        &pending,
        grace,
        SystemTime::now(),
    )?;
    let referenced = references.len();
    let mut collected = gc::execute(&shared.blobs, plan, &pending, |store| {
        let later = {
            let ledger = lock(&shared.ledger);
            ledger.log.ranges(head + 1, ledger.log.head().seq)
        };
        let mut named = gc::References::default();
        let read = log::for_each_event(later, |event| {
            named.add_event(&event.body, store);
            true
        });
        if let Err(err) = read {
            // Nothing is known to be safe to remove: keep it all.
            tracing::warn!("cannot read the log's newest events: {err}; collecting nothing");
            store.spare(
                store
                    .list()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| s.address),
            );
        }
        store.spare(named.into_addresses());
    })?;
    collected.referenced = referenced;
    Ok(collected)
}

/// Lets the process hold as many connections as the bus admits (the soft limit is often
/// 1,024 descriptors, which `MAX_AGENTS` alone would use up).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = (MAX_AGENTS + MAX_HANDSHAKES + 512) as u64;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard);
        }
    }
}

/// A place among the peers saying hello; given back when dropped.
struct HandshakeSlot(Arc<Shared>);

impl HandshakeSlot {
    fn take(shared: &Arc<Shared>) -> Option<HandshakeSlot> {
        let mut sessions = lock(&shared.sessions);
        if sessions.handshaking >= MAX_HANDSHAKES {
            return None;
        }
        sessions.handshaking += 1;
        Some(HandshakeSlot(shared.clone()))
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        lock(&self.0.sessions).handshaking -= 1;
    }
}

/// A welcomed agent's place in `Sessions`; removed when dropped.
struct SessionSlot {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut sessions = lock(&self.shared.sessions);
        sessions.agents.remove(&self.id);
        sessions.reading.remove(&self.id);
    }
}

/// One agent's identity, from its hello.
struct Peer {
    role: Role,
    name: String,
    addr: String,
}

async fn handle_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    addr: String,
    handshake: HandshakeSlot,
) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    let (read_half, write_half) = match &shared.tls {
        None => super::tls::split_plain(stream),
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => super::tls::split(tls),
                Ok(Err(err)) => {
                    if let Some(line) = super::tls::explain_refusal(&addr, &err) {
                        tracing::warn!("{line}");
                    }
                    return;
                }
                Err(_) => {
                    tracing::warn!(
                        "peer {addr}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}; dropping it"
                    );
                    return;
                }
            }
        }
    };
    serve_connection(
        shared,
        (read_half, write_half),
        addr,
        handshake,
        Origin::Peer,
    )
    .await;
}

/// Serves one connection from its hello on, whatever carries it (TCP, TLS, in-process);
/// `origin` says whether the content it uploads must be verified.
async fn serve_connection(
    shared: Arc<Shared>,
    (read_half, write_half): (super::tls::ReadHalf, super::tls::WriteHalf),
    addr: String,
    handshake: HandshakeSlot,
    origin: Origin,
) {
    let mut reader = BufReader::new(read_half);
    let (outbox, outbox_rx) = mpsc::channel::<Frame>(OUTBOX);
    let writer = tokio::spawn(write_loop(write_half, outbox_rx));

    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut reader)).await {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return,
        // A TLS record (a handshake: content type 22, version 3.x) where a hello was due.
        Ok(Err(FrameError::TooLarge(len))) if len >> 16 == 0x1603 => {
            tracing::warn!("peer {addr}: it speaks TLS to this plain bus (start the bus with --tls or --peer, or drop --bus-id on the peer); dropping it");
            return;
        }
        Ok(Err(err)) => {
            tracing::warn!("peer {addr}: bad handshake frame: {err}; dropping it");
            return reject(
                outbox,
                writer,
                Refusal::Refused(format!("bad frame: {err}")),
            )
            .await;
        }
        Err(_) => {
            tracing::warn!("peer {addr}: no hello within {HANDSHAKE_TIMEOUT:?}; dropping it");
            return reject(outbox, writer, Refusal::Refused("no hello in time".into())).await;
        }
    };
    let (peer, welcome, session) = match admit(&shared, &hello, addr.clone()) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            tracing::warn!("peer {addr}: refused: {}", refusal.message());
            return reject(outbox, writer, refusal).await;
        }
    };
    drop(handshake);
    if outbox.send(reply_frame(&welcome)).await.is_err() {
        return;
    }
    tracing::info!("{} {} joined from {}", peer.role, peer.name, peer.addr);
    let handler = Handler {
        session: session.id,
        idle: Idle::watch(shared.idle_timeout),
        shared,
        outbox,
        uploads: HashMap::new(),
        announcing: HashMap::new(),
        polls: JoinSet::new(),
        follows: JoinSet::new(),
        peer,
        origin,
    };
    let peer = handler.run(&mut reader).await;
    let _ = writer.await;
    drop(session);
    tracing::info!("{} {} disconnected", peer.role, peer.name);
}

async fn reject(
    outbox: mpsc::Sender<Frame>,
    writer: tokio::task::JoinHandle<()>,
    refusal: Refusal,
) {
    let reply = Reply::Reject {
        busy: matches!(refusal, Refusal::Busy(_)),
        error: refusal.message().to_owned(),
    };
    let _ = outbox.send(reply_frame(&reply)).await;
    drop(outbox);
    let _ = writer.await;
}

/// Reads the hello, asks the rules, takes a place among the connected, and appends the
/// join: all under the sessions lock, so two peers cannot both pass as the one master.
fn admit(
    shared: &Arc<Shared>,
    frame: &Frame,
    addr: String,
) -> Result<(Peer, Reply, SessionSlot), Refusal> {
    let (hello, quiet) = read_hello(shared, frame)?;
    let mut sessions = lock(&shared.sessions);
    let mut ledger = lock(&shared.ledger);
    let connected: Vec<Connected> = sessions.agents.values().cloned().collect();
    ledger.rules.admit(&hello, &connected)?;
    check_room(&ledger.rules, &hello, connected.len())?;
    let head = ledger.log.head().seq;
    // A quiet listener reads without a trace in the log.
    if !(quiet && hello.role == Role::Listener) {
        let join = ledger.rules.join(&hello);
        match ledger.append(&hello.name, join) {
            Ok((_, closed)) => {
                shared.head.send_replace(ledger.log.head());
                if let Some(last) = closed {
                    tokio::spawn(retain(shared.clone(), last));
                }
            }
            Err(err) => tracing::error!("cannot append to the event log: {err}"),
        }
    }
    let welcome = welcome(shared, &ledger, &hello, head);
    sessions.next_id += 1;
    let id = sessions.next_id;
    let crate::rules::Hello {
        role, name, place, ..
    } = hello;
    sessions.agents.insert(
        id,
        Connected {
            role,
            name: name.clone(),
            place,
        },
    );
    let session = SessionSlot {
        shared: shared.clone(),
        id,
    };
    Ok((Peer { role, name, addr }, welcome, session))
}

/// The first frame, read as a hello: its protocol version and token checked; the hello as
/// the rules see it, and whether it asks not to be logged.
fn read_hello(shared: &Shared, frame: &Frame) -> Result<(crate::rules::Hello, bool), Refusal> {
    let refused = |message: String| Refusal::Refused(message);
    let request: Request = serde_json::from_slice(&frame.header)
        .map_err(|err| refused(format!("expected a hello: {err}")))?;
    let Request::Hello {
        protocol,
        role,
        name,
        token,
        dir,
        host,
        takeover,
        quiet,
    } = request
    else {
        return Err(refused("expected a hello first".into()));
    };
    if protocol != PROTOCOL_VERSION {
        return Err(refused(format!(
            "protocol {protocol} not supported (this bus speaks {PROTOCOL_VERSION})"
        )));
    }
    if let Some(expected) = &shared.token {
        if !constant_time_eq(
            token.as_deref().unwrap_or("").as_bytes(),
            expected.as_bytes(),
        ) {
            return Err(refused("missing or wrong token".into()));
        }
    }
    let hello = crate::rules::Hello {
        role,
        name,
        place: Place::of(role, host, dir),
        takeover,
    };
    Ok((hello, quiet))
}

/// Whether there is room for one more agent: the last `RESERVED` places are kept for the
/// masters and slaves the log knows.
fn check_room(
    rules: &crate::rules::Rules,
    hello: &crate::rules::Hello,
    connected: usize,
) -> Result<(), Refusal> {
    let own = matches!(hello.role, Role::Master | Role::Slave) && rules.is_known_agent(&hello.name);
    let room = if own {
        MAX_AGENTS
    } else {
        MAX_AGENTS - RESERVED
    };
    if connected >= room {
        return Err(Refusal::Busy(format!(
            "the bus is full ({connected} agents connected); try again later"
        )));
    }
    Ok(())
}

/// What an admitted agent is told: the log's head before its join and its start, what its
/// name answered, its errors to retry, how often to ping.
fn welcome(shared: &Shared, ledger: &Ledger, hello: &crate::rules::Hello, head: u64) -> Reply {
    let start = ledger.log.start();
    Reply::Welcome {
        protocol: PROTOCOL_VERSION,
        head,
        start,
        answered: ledger.rules.answered(&hello.name),
        // A notify retention removed cannot be read back: a resync covers its path.
        retry: match hello.role {
            Role::Slave => ledger
                .rules
                .retryable(&hello.name)
                .into_iter()
                .filter(|(_, n)| *n >= start)
                .map(|(e, n)| [e, n])
                .collect(),
            _ => Vec::new(),
        },
        keepalive_ms: shared
            .idle_timeout
            .map(|timeout| (timeout / 3).as_millis() as u64),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// When a connection last did something, how many of its requests are waiting, and the
/// signal that it has been idle too long (from a watchdog task, so reading a frame needs no
/// timer of its own).
struct Idle {
    base: Instant,
    /// Milliseconds since `base` of the last frame received.
    last: AtomicU64,
    waiting: AtomicUsize,
    expired: Notify,
    watchdog: Option<tokio::task::AbortHandle>,
}

impl Idle {
    fn watch(timeout: Option<Duration>) -> Arc<Idle> {
        let mut idle = Idle {
            base: Instant::now(),
            last: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            expired: Notify::new(),
            watchdog: None,
        };
        let Some(timeout) = timeout else {
            return Arc::new(idle);
        };
        Arc::new_cyclic(|weak: &std::sync::Weak<Idle>| {
            let weak = weak.clone();
            let task = tokio::spawn(async move {
                let tick = (timeout / 4).max(Duration::from_millis(50));
                loop {
                    tokio::time::sleep(tick).await;
                    let Some(idle) = weak.upgrade() else { return };
                    let quiet = (idle.base.elapsed().as_millis() as u64)
                        .saturating_sub(idle.last.load(Ordering::Relaxed));
                    if idle.waiting.load(Ordering::Relaxed) == 0
                        && Duration::from_millis(quiet) >= timeout
                    {
                        idle.expired.notify_one();
                        return;
                    }
                }
            });
            idle.watchdog = Some(task.abort_handle());
            idle
        })
    }

    fn touch(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// Counts a request as waiting until the guard is dropped (and touches on the way out,
    /// so the idle time starts when the reply leaves, not when the request came).
    fn busy(self: &Arc<Idle>) -> Busy {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.abort();
        }
    }
}

struct Busy(Arc<Idle>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One welcomed connection: reads requests in order and answers each (the agents rely on
/// that order: a content upload sent before its notify is stored before the notify is
/// checked). Requests that wait (polls, checkpoint waits) are answered from tasks of their
/// own.
struct Handler {
    shared: Arc<Shared>,
    /// The session's id among `Sessions`.
    session: u64,
    peer: Peer,
    outbox: mpsc::Sender<Frame>,
    uploads: HashMap<u64, Upload>,
    /// Files this peer is announcing, by its upload number.
    announcing: HashMap<u64, Announcing>,
    polls: JoinSet<()>,
    follows: JoinSet<()>,
    idle: Arc<Idle>,
    /// Whether this peer's content is verified before it is stored.
    origin: Origin,
}

impl Handler {
    /// Serves requests until the peer leaves, misbehaves or idles; returns who it was.
    async fn run(mut self, reader: &mut BufReader<super::tls::ReadHalf>) -> Peer {
        loop {
            let frame = tokio::select! {
                biased;
                frame = read_frame(reader) => frame,
                _ = self.idle.expired.notified() => {
                    tracing::warn!(
                        "peer {} ({}): idle (no request waiting, nothing sent); dropping it",
                        self.peer.name, self.peer.addr
                    );
                    break;
                }
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(err) => {
                    self.warn(&format!("{err}; dropping the connection"));
                    break;
                }
            };
            self.idle.touch();
            let request = match Request::parse(&frame.header) {
                Ok(request) => request,
                Err(err) => {
                    self.warn(&format!("not a request: {err}; dropping the connection"));
                    break;
                }
            };
            let reply = match self.dispatch(request, frame.body).await {
                Ok(Some(reply)) => reply,
                Ok(None) => continue,
                Err(()) => break,
            };
            if self.outbox.send(reply).await.is_err() {
                break;
            }
        }
        self.polls.shutdown().await;
        self.follows.shutdown().await;
        self.peer
    }

    fn warn(&self, what: &str) {
        tracing::warn!("peer {} ({}): {what}", self.peer.name, self.peer.addr);
    }

    /// The reply to `request`; `None` when a task of its own replies later; `Err` to end
    /// the connection.
    async fn dispatch(&mut self, request: Request, body: Vec<u8>) -> Result<Option<Frame>, ()> {
        let reply = match request {
            Request::Hello { .. } => {
                self.warn("second hello; dropping the connection");
                return Err(());
            }
            Request::Publish { id, event } => self.publish(id, *event).await,
            Request::Poll {
                id,
                from,
                max_bytes,
            } => return Ok(self.poll(id, from, max_bytes)),
            Request::Arm { .. }
            | Request::Release { .. }
            | Request::Reached { .. }
            | Request::Disarm { .. } => return Ok(self.checkpoint(request)),
            Request::Ping { id } => ok(id, None, None),
            Request::FileChunk {
                id,
                upload,
                index,
                sha256,
                len,
            } => blob_reply(id, self.file_chunk(upload, index, &sha256, len)),
            Request::FileEnd {
                id,
                upload,
                sha256,
                size,
            } => blob_reply(id, self.file_end(upload, &sha256, size)),
            Request::FileAbort { id, upload } => {
                // Dropping it tells its followers.
                self.announcing.remove(&upload);
                blob_reply(id, Ok(()))
            }
            Request::FollowNext { id, .. } | Request::FollowGet { id, .. } => {
                return Ok(self.follow(id, request))
            }
            Request::CheckpointGet {
                id,
                seq,
                offset,
                len,
            } => {
                let path = crate::checkpoint::path_in(&self.shared.checkpoints, seq);
                match read_piece(&path, offset, len.min(PIECE_SIZE as u64)) {
                    Ok((data, eof)) => reply_with_body(&Reply::BlobData { id, eof }, data),
                    // Retention moved on meanwhile: the reader starts again from the new one.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        let start = lock(&self.shared.ledger).log.start();
                        reply_frame(&Reply::Truncated { id, start })
                    }
                    Err(err) => err_reply(id, format!("no checkpoint at {seq}: {err}")),
                }
            }
            Request::Status { id } => {
                let (shared, asking) = (self.shared.clone(), self.session);
                match tokio::task::spawn_blocking(move || status(&shared, asking)).await {
                    Ok(Ok(report)) => match serde_json::to_vec(&report) {
                        Ok(json) => reply_with_body(&Reply::Status { id }, json),
                        Err(err) => err_reply(id, err.to_string()),
                    },
                    Ok(Err(err)) => err_reply(id, format!("cannot read the state: {err}")),
                    Err(err) => err_reply(id, err.to_string()),
                }
            }
            Request::BlobHas { id, sha256 } => match self.shared.blobs.contains(&sha256) {
                Ok(present) => ok(id, None, Some(present)),
                Err(err) => err_reply(id, err.to_string()),
            },
            Request::BlobPut { id, sha256 } => {
                let stored = self.shared.blobs.put_whole(&sha256, &body, self.origin);
                blob_reply(id, stored.map_err(|err| err.to_string()))
            }
            Request::BlobPiece { id, upload, offset } => {
                blob_reply(id, self.blob_piece(upload, offset, body))
            }
            Request::BlobCommit { id, upload, sha256 } => {
                let committed = match self.uploads.remove(&upload) {
                    Some(received) => self
                        .shared
                        .blobs
                        .commit(received, &sha256)
                        .map_err(|err| err.to_string()),
                    None => Err(format!("no upload {upload} in progress")),
                };
                blob_reply(id, committed)
            }
            Request::BlobAbort { id, upload } => {
                // Dropping it removes its temporary file.
                self.uploads.remove(&upload);
                blob_reply(id, Ok(()))
            }
            Request::BlobGet {
                id,
                sha256,
                offset,
                len,
            } => match self
                .shared
                .blobs
                .read(&sha256, offset, len.min(PIECE_SIZE as u64))
            {
                Ok((data, eof)) => reply_with_body(&Reply::BlobData { id, eof }, data),
                Err(err) => err_reply(id, err.to_string()),
            },
        };
        Ok(Some(reply))
    }

    async fn publish(&self, id: u64, event: Draft) -> Frame {
        if let Some(gates) = &self.shared.gates {
            gates.before_append(&self.peer.name, &event).await;
        }
        match publish(&self.shared, &self.peer, event) {
            Ok(event) => {
                if let Some(gates) = &self.shared.gates {
                    gates.after_append(&self.peer.name, &event).await;
                }
                ok(id, Some(event.seq), None)
            }
            Err(error) => {
                self.warn(&format!("publish refused: {error}"));
                err_reply(id, error)
            }
        }
    }

    fn poll(&mut self, id: u64, from: u64, max_bytes: u64) -> Option<Frame> {
        while self.polls.try_join_next().is_some() {}
        if self.polls.len() >= MAX_POLLS {
            return Some(err_reply(
                id,
                format!("more than {MAX_POLLS} polls in flight"),
            ));
        }
        let reading = Reading {
            next: from.max(1),
            at: Instant::now(),
        };
        lock(&self.shared.sessions)
            .reading
            .insert(self.session, reading);
        let busy = self.idle.busy();
        let task = poll(
            self.shared.clone(),
            self.outbox.clone(),
            (self.peer.name.clone(), self.session),
            id,
            from.max(1),
            max_bytes,
        );
        self.polls.spawn(async move {
            let _busy = busy;
            task.await
        });
        None
    }

    /// Announces chunk `index` of file upload `upload` (index 0 starts the file).
    fn file_chunk(
        &mut self,
        upload: u64,
        index: u64,
        sha256: &str,
        len: u32,
    ) -> Result<(), String> {
        let address =
            ContentHash::parse_hex(sha256).ok_or_else(|| format!("not a sha256: {sha256:?}"))?;
        if len == 0
            || len as usize > CHUNK_MAX
            || !self.shared.blobs.contains(sha256).unwrap_or(false)
        {
            return Err(format!("chunk {sha256} of {len} bytes is not stored"));
        }
        if index == 0 {
            self.announcing.remove(&upload);
            if self.announcing.len() >= MAX_ANNOUNCING {
                return Err(format!(
                    "more than {MAX_ANNOUNCING} files announced at once"
                ));
            }
            let opened = self.shared.announcements.open();
            self.announcing.insert(upload, Announcing(opened));
        }
        let announcing = self
            .announcing
            .get(&upload)
            .ok_or_else(|| format!("no file upload {upload} under way"))?;
        announcing.0.chunk(
            index,
            ChunkRef {
                sha256: address,
                len,
            },
        )
    }

    fn file_end(&mut self, upload: u64, sha256: &str, size: u64) -> Result<(), String> {
        let address =
            ContentHash::parse_hex(sha256).ok_or_else(|| format!("not a sha256: {sha256:?}"))?;
        let announcing = self
            .announcing
            .remove(&upload)
            .ok_or_else(|| format!("no file upload {upload} under way"))?;
        announcing.0.end(address, size);
        Ok(())
    }

    fn follow(&mut self, id: u64, request: Request) -> Option<Frame> {
        while self.follows.try_join_next().is_some() {}
        if self.follows.len() >= MAX_FOLLOWS {
            return Some(err_reply(
                id,
                format!("more than {MAX_FOLLOWS} follow requests waiting"),
            ));
        }
        let busy = self.idle.busy();
        let (shared, outbox) = (self.shared.clone(), self.outbox.clone());
        self.follows.spawn(async move {
            let _busy = busy;
            let frame = match request {
                Request::FollowNext { id, after } => {
                    let file = shared.announcements.next(after).await;
                    reply_frame(&Reply::Following { id, file })
                }
                Request::FollowGet { id, file, index } => {
                    let followed = match shared.announcements.get(file) {
                        Some(announced) => announced.get(index).await,
                        None => Err(format!("file {file} is not followed any more")),
                    };
                    match followed {
                        Ok(Followed::Chunk(chunk)) => reply_frame(&Reply::Followed {
                            id,
                            sha256: chunk.sha256.to_hex(),
                            len: u64::from(chunk.len),
                            last: false,
                        }),
                        Ok(Followed::End(sha256, size)) => reply_frame(&Reply::Followed {
                            id,
                            sha256: sha256.to_hex(),
                            len: size,
                            last: true,
                        }),
                        Err(error) => err_reply(id, error),
                    }
                }
                _ => return,
            };
            let _ = outbox.send(frame).await;
        });
        None
    }

    /// Serves a gate request; `None` when the reply comes later (from a spawned waiter).
    fn checkpoint(&mut self, request: Request) -> Option<Frame> {
        let Some(gates) = &self.shared.gates else {
            let id = match &request {
                Request::Arm { id, .. }
                | Request::Release { id, .. }
                | Request::Reached { id, .. }
                | Request::Disarm { id } => *id,
                _ => 0,
            };
            return Some(err_reply(
                id,
                "checkpoints are disabled on this bus (start it with --test-checkpoints)".into(),
            ));
        };
        let done = |id, outcome: Result<(), String>| match outcome {
            Ok(()) => ok(id, None, None),
            Err(error) => err_reply(id, error),
        };
        match request {
            Request::Arm { id, name, gate } => Some(done(id, gates.arm(name, *gate))),
            Request::Release { id, name } => Some(done(id, gates.release(&name))),
            Request::Disarm { id } => {
                gates.disarm_all();
                Some(ok(id, None, None))
            }
            Request::Reached { id, name } => {
                let shared = self.shared.clone();
                let outbox = self.outbox.clone();
                let busy = self.idle.busy();
                self.polls.spawn(async move {
                    let _busy = busy;
                    let Some(gates) = &shared.gates else { return };
                    let frame = match gates.wait_reached(&name).await {
                        Ok(seq) => ok(id, Some(seq), None),
                        Err(error) => err_reply(id, error),
                    };
                    let _ = outbox.send(frame).await;
                });
                None
            }
            _ => None,
        }
    }

    /// Receives one piece of an upload; offset 0 starts it (again, if it was under way).
    fn blob_piece(&mut self, upload: u64, offset: u64, piece: Vec<u8>) -> Result<(), String> {
        let blobs = &self.shared.blobs;
        if offset == 0 {
            self.uploads.remove(&upload);
            if self.uploads.len() >= MAX_UPLOADS {
                return Err(format!("more than {MAX_UPLOADS} uploads at once"));
            }
            let started = blobs.begin().map_err(|err| err.to_string())?;
            self.uploads.insert(upload, started);
        }
        let current = self
            .uploads
            .get_mut(&upload)
            .ok_or_else(|| format!("no upload {upload} in progress at offset {offset}"))?;
        blobs.write(current, offset, piece).map_err(|err| {
            self.uploads.remove(&upload);
            err.to_string()
        })
    }
}

/// A file a connection is announcing; abandoned (its followers told) if dropped before
/// its end, as when the connection closes.
struct Announcing(Arc<Announced>);

impl Drop for Announcing {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// Validates a peer's event against the rules and appends it.
fn publish(shared: &Arc<Shared>, peer: &Peer, draft: Draft) -> Result<Event, String> {
    let mut ledger = lock(&shared.ledger);
    ledger
        .rules
        .check(peer.role, &peer.name, &draft, &shared.blobs)?;
    let (event, closed) = ledger.append(&peer.name, draft).map_err(|err| {
        tracing::error!("cannot append to the event log: {err}");
        format!("bus cannot append to its log: {err}")
    })?;
    shared.head.send_replace(ledger.log.head());
    if let Some(last) = closed {
        tokio::spawn(retain(shared.clone(), last));
    }
    Ok(event)
}

/// A segment ending at `last` was closed: writes the checkpoint at `last`, then removes the
/// segments and checkpoints retention no longer needs (`retention.rs`).
async fn retain(shared: Arc<Shared>, last: u64) {
    let _one_at_a_time = shared.retaining.lock().await;
    if let Err(err) = write_checkpoint(&shared, last).await {
        tracing::error!("cannot write the checkpoint at {last}: {err}");
        return;
    }
    truncate(&shared);
}

/// Writes the checkpoint at `last` from the newest one before it and the events between.
async fn write_checkpoint(shared: &Arc<Shared>, last: u64) -> Result<(), String> {
    let dir = shared.checkpoints.clone();
    let (base, ranges) = {
        let ledger = lock(&shared.ledger);
        let start = ledger.log.start();
        match retention::newest_checkpoint(&dir, last) {
            Ok(Some((seq, path))) if seq + 1 >= start => {
                (Some(path), ledger.log.ranges(seq + 1, last))
            }
            Ok(_) if start == 1 => (None, ledger.log.ranges(1, last)),
            Ok(_) => return Err(format!("no checkpoint covers the log's start {start}")),
            Err(err) => return Err(err.to_string()),
        }
    };
    tokio::task::spawn_blocking(move || {
        retention::build_checkpoint(base, ranges, last).and_then(|snapshot| snapshot.write(&dir))
    })
    .await
    .map_err(|err| err.to_string())?
    .map(|_| super::crash::point("checkpoint-written"))
    .map_err(|err| err.to_string())
}

/// The status report (`status.rs`): the connected agents (but the one asking), every slave
/// the log knows, how far behind each is (the log's tail read once, from the lowest
/// position), the log's and the state's size.
fn status(shared: &Arc<Shared>, asking: u64) -> std::io::Result<StatusReport> {
    let connected: Vec<(String, Role)> = lock(&shared.sessions)
        .agents
        .iter()
        .filter(|(session, _)| **session != asking)
        .map(|(_, agent)| (agent.name.clone(), agent.role))
        .collect();
    let (mut agents, start, head, ranges) = {
        let ledger = lock(&shared.ledger);
        let start = ledger.log.start();
        let head = ledger.log.head().seq;
        let mut agents = status::agents_of(&ledger.rules, &connected);
        for agent in &mut agents {
            agent.last_error = agent
                .open_errors
                .last()
                .and_then(|(seq, _)| ledger.log.read_event(*seq))
                .and_then(|event| event.body.error);
        }
        let lowest = status::backlog_start(&agents, start, head);
        (agents, start, head, ledger.log.ranges(lowest, head))
    };
    let mut backlog = Backlog::default();
    super::log::for_each_event(ranges, |event| {
        backlog.observe(&event);
        true
    })?;
    backlog.fill(&mut agents);
    let log_bytes = std::fs::metadata(&shared.log_path).map_or(0, |m| m.len())
        + dir_bytes(&shared.state_dir.join("log"));
    Ok(StatusReport {
        start,
        head,
        log_bytes,
        state_bytes: dir_bytes(&shared.state_dir),
        agents,
    })
}

/// Removes the whole segments below the retention point that a checkpoint covers, then the
/// checkpoints no reader needs. Runs after each checkpoint and on the keeper's timer (a
/// reader that held the log back may have gone; the window moves with the clock).
fn truncate(shared: &Arc<Shared>) {
    let (connected, oldest_read) = {
        let sessions = lock(&shared.sessions);
        let slaves: Vec<String> = sessions
            .agents
            .values()
            .filter(|c| c.role == Role::Slave)
            .map(|c| c.name.clone())
            .collect();
        let reading = sessions.reading.values();
        let oldest = reading
            .filter(|r| r.at.elapsed() < READER_GRACE)
            .map(|r| r.next)
            .min();
        (slaves, oldest)
    };
    let checkpoints = checkpoint::list(&shared.checkpoints).unwrap_or_default();
    let Some(&(newest, _)) = checkpoints.last() else {
        return;
    };
    let start = {
        let mut ledger = lock(&shared.ledger);
        let segments = ledger.log.segments();
        let point = retention::retention_point(
            &segments,
            newest,
            &ledger.rules,
            &connected,
            oldest_read,
            shared.retention,
            std::time::SystemTime::now(),
        );
        // Only whole segments, and only up to one whose end has a checkpoint.
        let covered = checkpoints
            .iter()
            .map(|(seq, _)| *seq)
            .filter(|seq| *seq < point)
            .filter(|seq| segments.iter().any(|s| s.last == *seq))
            .max();
        let Some(cut) = covered else { return };
        match ledger.log.remove_before(cut + 1) {
            Ok(start) => {
                ledger.rules.set_start(start);
                start
            }
            Err(err) => {
                tracing::error!("cannot remove old segments of the log: {err}");
                return;
            }
        }
    };
    super::crash::point("segments-removed");
    if let Err(err) = retention::remove_old_checkpoints(&shared.checkpoints, start) {
        tracing::warn!("cannot remove old checkpoints: {err}");
    }
}

/// Reads up to `len` bytes of a file at `offset`; the flag says that reaches its end.
fn read_piece(path: &Path, offset: u64, len: u64) -> std::io::Result<(Vec<u8>, bool)> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let start = offset.min(size);
    let mut buf = vec![0u8; len.min(size - start) as usize];
    file.read_exact_at(&mut buf, start)?;
    let eof = start + buf.len() as u64 >= size;
    Ok((buf, eof))
}

fn blob_reply(id: u64, outcome: Result<(), String>) -> Frame {
    match outcome {
        Ok(()) => ok(id, None, Some(true)),
        Err(error) => err_reply(id, error),
    }
}

/// Answers one poll: waits until `from` exists, then sends the lines from there (up to the
/// first event a checkpoint gate holds back from `agent`).
async fn poll(
    shared: Arc<Shared>,
    outbox: mpsc::Sender<Frame>,
    (agent, session): (String, u64),
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
    let located = {
        let ledger = lock(&shared.ledger);
        let start = ledger.log.start();
        match ledger.log.locate(from) {
            Some(located) => Ok(located),
            None if from < start => Err(reply_frame(&Reply::Truncated { id, start })),
            None => Err(err_reply(
                id,
                format!("seq {from} is not in the log (head {})", head.seq),
            )),
        }
    };
    let located = match located {
        Ok(located) => located,
        Err(frame) => {
            let _ = outbox.send(frame).await;
            return;
        }
    };
    let max = max_bytes.clamp(1, PIECE_SIZE as u64);
    let lines = tokio::task::spawn_blocking(move || {
        read_lines(&located.file, located.start, located.end, max)
    })
    .await;
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
            // It reads on from here, and is waited for (`READER_GRACE`) until it polls
            // again: even one given everything up to the head, since events appended
            // meanwhile may be checkpointed and truncated before its next poll.
            let sent = lines.iter().filter(|&&b| b == b'\n').count() as u64;
            let mut sessions = lock(&shared.sessions);
            if let Some(reading) = sessions.reading.get_mut(&session) {
                reading.next = from + sent;
                reading.at = Instant::now();
            }
            drop(sessions);
            reply_with_body(&Reply::Events { id }, lines)
        }
        Ok(Err(err)) => err_reply(id, format!("cannot read the log: {err}")),
        Err(err) => err_reply(id, format!("log reader failed: {err}")),
    };
    let _ = outbox.send(frame).await;
}

fn ok(id: u64, seq: Option<u64>, present: Option<bool>) -> Frame {
    reply_frame(&Reply::Ok { id, seq, present })
}

fn err_reply(id: u64, error: String) -> Frame {
    reply_frame(&Reply::Err { id, error })
}

fn reply_frame(reply: &Reply) -> Frame {
    reply_with_body(reply, Vec::new())
}

fn reply_with_body(reply: &Reply, body: Vec<u8>) -> Frame {
    // Replies are plain data: serialising them cannot fail.
    Frame::new(serde_json::to_vec(reply).unwrap_or_default(), body)
}

async fn write_loop(write_half: super::tls::WriteHalf, outbox: mpsc::Receiver<Frame>) {
    if let Err(err) = write_queued(write_half, outbox).await {
        tracing::debug!("connection lost while writing: {err}");
    }
}
