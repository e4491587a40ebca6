//! The master agent: its directory's changes, onto the bus.
//!
//! A worker thread owns the blocking parts (inotify, walking, hashing): it starts the watch,
//! then reconciles the directory with the state the log implies (so a restart republishes
//! only what changed while it was down), sends `Ready`, and from then on turns coalesced
//! signals into changes. The async side uploads content the bus lacks and publishes each
//! notify. The two are joined by a bounded channel, so a slow bus slows the scan instead of
//! filling memory.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use filesync_master::coalesce::{Coalescer, Timing, Work};
use filesync_master::guard::RootGuard;
use filesync_master::ignore::IGNORE_FILE;
use filesync_master::tree::{Observed, Outcome, Tree};
use filesync_master::watch::{DirWatcher, Signal};
use filesync_master::{Change, Kind, RelPath};
use tokio::sync::mpsc;

use super::progress::Progress;
use super::upload::{Budget, ChunkUpload, CutChunk};
use super::{replay_notifies, Connector, SessionEnd};
use crate::bus::api::{call, Dial, Link, Reply};
use crate::bus::ClientError;
use crate::event::{Draft, Role, Tag};

/// How the master runs.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    pub dir: PathBuf,
    pub bus: String,
    pub name: String,
    pub token: Option<String>,
    /// Take the log over from the master directory it belongs to.
    pub takeover: bool,
    /// Publish the deletion of everything when the directory is empty at start.
    pub allow_empty: bool,
    /// Reach the bus over mutual TLS.
    pub tls: Option<crate::bus::tls::ClientTls>,
    /// Gitignore patterns never published, beside `.filesyncignore` (`--exclude`).
    pub exclude: Vec<String>,
    /// The way to a bus that is not at an address (an in-memory bus in the agents' unit
    /// tests); `None`: `bus` over TCP, with `tls`.
    pub dial: Option<Arc<dyn Dial>>,
}

/// With the watch limit reached, the whole tree is compared this often instead.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// From the worker thread to the async side.
enum WorkerMsg {
    Change(Observed),
    /// The next chunk of a large file the worker is reading; its `ChunksEnd` and then (if
    /// kept) its `Change` follow the last one.
    Chunk(CutChunk),
    /// The end of a file's chunks: `true` when its `Change` comes next, `false` when they
    /// were for nothing.
    ChunksEnd(bool),
    Ready,
    Fatal(String),
}

/// Runs the master until `shutdown`, reconnecting when the bus goes away.
pub async fn run(options: MasterOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&options.dir)
        .with_context(|| format!("master directory {} is not usable", options.dir.display()))?;
    if !dir.is_dir() {
        bail!("master directory {} is not a directory", dir.display());
    }
    let dial = options
        .dial
        .clone()
        .unwrap_or_else(|| crate::bus::dial(&options.bus, options.tls.clone()));
    let mut connector = Connector::new(
        dial,
        Role::Master,
        &options.name,
        options.token.clone(),
        &dir,
    )
    .takeover(options.takeover);
    let mut shutdown = Box::pin(shutdown);
    while let Some((client, welcome)) = connector.connect(&mut shutdown).await? {
        match session(
            &dir,
            client,
            welcome.head,
            options.allow_empty,
            &options.exclude,
            &mut shutdown,
        )
        .await?
        {
            SessionEnd::Stopped => return Ok(()),
            SessionEnd::BusLost(err) => tracing::warn!("{err}; reconnecting"),
        }
    }
    Ok(())
}

async fn session(
    dir: &Path,
    client: Link,
    head: u64,
    allow_empty: bool,
    exclude: &[String],
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<SessionEnd> {
    let model = match replay_notifies(&client, head).await {
        Ok(replayed) => replayed.model,
        Err(err) if err.is_connection() => return Ok(SessionEnd::BusLost(err)),
        Err(err) => return Err(err).context("cannot read the event log"),
    };
    let (tx, mut rx) = mpsc::channel::<WorkerMsg>(256);
    let (retry_tx, retry_rx) = std_mpsc::channel::<RelPath>();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let dir = dir.to_path_buf();
        let stop = stop.clone();
        let exclude = exclude.to_vec();
        std::thread::Builder::new()
            .name("master-worker".into())
            .spawn(move || {
                let guard = RootGuard::new(&dir, allow_empty);
                let tree = Tree::new(&dir, model).excluding(&exclude);
                worker(&dir, tree, guard, &tx, &retry_rx, &stop)
            })
            .context("cannot start the master's worker thread")?
    };
    let mut in_flight = InFlight::new(client.publish_window());
    // The chunks of the large file the worker is reading, on their way to the bus.
    let mut upload: Option<ChunkUpload> = None;
    // The first scan's progress, until the master is ready.
    let mut scanning = Progress::scan();
    // Changes published before the master is ready: what its ready line counts.
    let mut at_start = Some(0u64);
    let end = loop {
        let msg = tokio::select! {
            biased;
            _ = &mut *shutdown => {
                let _ = in_flight.settle_all().await;
                super::leave(&client).await;
                break Ok(SessionEnd::Stopped);
            }
            msg = rx.recv(), if !in_flight.is_full() => msg,
            settled = in_flight.settle_oldest() => match settled {
                Err(err) if err.is_connection() => break Ok(SessionEnd::BusLost(err)),
                Err(err @ ClientError::Rejected(_)) => break Err(err.into()),
                _ => continue,
            },
        };
        let result = match msg {
            Some(WorkerMsg::Change(observed)) => {
                if let Some(published) = &mut at_start {
                    *published += 1;
                    if let Some(progress) = &mut scanning {
                        let bytes = match &observed.change {
                            Change::Put { entry, .. } => entry.size,
                            _ => 0,
                        };
                        progress.advance(*published, bytes);
                    }
                }
                let chunks = upload.take();
                publish_change(&client, observed, chunks, &retry_tx, &mut in_flight).await
            }
            Some(WorkerMsg::Chunk(cut)) => {
                let chunks = upload.get_or_insert_with(|| ChunkUpload::new(&client, cut.new_file));
                chunks.chunk(&client, cut).await
            }
            Some(WorkerMsg::ChunksEnd(true)) => Ok(()),
            Some(WorkerMsg::ChunksEnd(false)) => match upload.take() {
                Some(chunks) => chunks.abandon(&client).await,
                None => Ok(()),
            },
            Some(WorkerMsg::Ready) => match in_flight.settle_all().await {
                Ok(()) => {
                    if let Some(progress) = scanning.take() {
                        progress.finish();
                    }
                    let published = at_start.take().unwrap_or(0);
                    tracing::info!(
                        target: super::LIFECYCLE,
                        "master ready: watching {} ({published} change(s) published at start)",
                        dir.display()
                    );
                    call(client.publish(Draft::tagged(Tag::Ready)))
                        .await
                        .map(|_| ())
                }
                Err(err) => Err(err),
            },
            Some(WorkerMsg::Fatal(message)) => break Err(anyhow::anyhow!(message)),
            None => break Err(anyhow::anyhow!("the master's worker stopped unexpectedly")),
        };
        match result {
            Ok(()) => {}
            Err(err) if err.is_connection() => break Ok(SessionEnd::BusLost(err)),
            Err(err @ ClientError::Rejected(_)) => break Err(err.into()),
            Err(err) => tracing::error!("{err}"),
        }
    };
    stop.store(true, Ordering::SeqCst);
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    end
}

/// A notify sent, with the upload of its content sent just before it, if any.
struct Sent {
    what: String,
    content: Option<Reply<()>>,
    notify: Reply<u64>,
    /// For a put: the path, handed back to the worker if the bus refuses it (its content
    /// may have been collected between our question and the notify: `bus/gc.rs`).
    relook: Option<(RelPath, std_mpsc::Sender<RelPath>)>,
}

/// Notifies in flight, oldest first, and how many may be: as many as the backend says
/// keep it busy (`BusApi::publish_window`). A burst of small files was bound by one round
/// trip each (W2: 0.97 s for 10,000 files, most of it waiting); with a window, they
/// stream. Order is kept: one connection carries them, and the bus handles a connection's
/// requests in order.
struct InFlight {
    sent: VecDeque<Sent>,
    window: usize,
}

impl InFlight {
    fn new(window: usize) -> InFlight {
        InFlight {
            sent: VecDeque::new(),
            window: window.max(1),
        }
    }

    fn is_full(&self) -> bool {
        self.sent.len() >= self.window
    }

    fn push(&mut self, sent: Sent) {
        self.sent.push_back(sent);
    }

    /// Waits for the oldest notify's reply (forever when none is in flight); cancel-safe, so
    /// it can race new work in a `select!`. A refusal is logged, not returned: the bus said
    /// no to one change, and the rest go on (as when each was awaited in turn).
    async fn settle_oldest(&mut self) -> Result<(), ClientError> {
        let Some(oldest) = self.sent.front_mut() else {
            return std::future::pending().await;
        };
        let published = (&mut oldest.notify).await;
        let Some(sent) = self.sent.pop_front() else {
            return Ok(());
        };
        // The content's reply came before the notify's, so this does not wait.
        let uploaded = match sent.content {
            Some(content) => content.await,
            None => Ok(()),
        };
        match uploaded.and(published) {
            Ok(seq) => {
                tracing::debug!("#{seq} notify {}", sent.what);
                Ok(())
            }
            Err(err) if err.is_connection() => Err(err),
            // Not this change but this master refused (another took the log over): stop.
            Err(err @ ClientError::Rejected(_)) => Err(err),
            Err(err) => {
                tracing::error!("notify {} refused: {err}", sent.what);
                if let Some((path, retry)) = sent.relook {
                    if err.to_string().ends_with(crate::rules::MISSING_CONTENT) {
                        let _ = retry.send(path);
                    }
                }
                Ok(())
            }
        }
    }

    async fn settle_all(&mut self) -> Result<(), ClientError> {
        while !self.sent.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }
}

/// Uploads what the bus lacks, then publishes. Small content and every notify are only
/// sent here (their replies are settled by `in_flight`); a large file's chunks were sent as
/// the worker cut them, and its manifest follows. A file whose upload the bus refused is
/// handed back to the worker to look at again, and not published.
async fn publish_change(
    client: &Link,
    observed: Observed,
    chunks: Option<ChunkUpload>,
    retry: &std_mpsc::Sender<RelPath>,
    in_flight: &mut InFlight,
) -> Result<(), ClientError> {
    let Observed {
        change,
        content,
        manifest,
    } = observed;
    let mut draft = Draft::notify(&change);
    let mut content_reply = None;
    if let Change::Put { path, entry } = &change {
        let sha256 = entry.sha256;
        if let (Kind::File, Some(sha256), Some(bytes)) = (entry.kind, &sha256, content) {
            // Small file: content and notify sent back to back. The bus handles a
            // connection's requests in order, so the content is stored before the notify is
            // checked.
            draft.uploaded = Some(bytes.len() as u64);
            content_reply = Some(client.put(*sha256, bytes).await?);
        } else if let Some(manifest) = manifest {
            let chunks = chunks.unwrap_or_else(|| ChunkUpload::new(client, false));
            let whole = sha256.map(|sha256| (sha256, entry.size));
            let finished = chunks.finish(client, &manifest, whole).await;
            match finished {
                Ok(uploaded) => {
                    draft.uploaded = Some(uploaded);
                    draft.manifest = Some(manifest.address().to_hex());
                }
                Err(err) if err.is_connection() => return Err(err),
                Err(err) => {
                    tracing::warn!("{path}: the bus refused its content ({err}); looking again");
                    let _ = retry.send(path.clone());
                    return Ok(());
                }
            }
        }
    }
    let notify = client.publish(draft).await?;
    let relook = match &change {
        Change::Put { path, .. } => Some((path.clone(), retry.clone())),
        _ => None,
    };
    in_flight.push(Sent {
        what: change.to_string(),
        content: content_reply,
        notify,
        relook,
    });
    Ok(())
}

/// Waits while `why` names a reason not to publish (said once on stderr); false when the
/// master is stopping meanwhile.
fn hold_while(stop: &AtomicBool, why: impl Fn() -> Option<String>) -> bool {
    let Some(reason) = why() else {
        return true;
    };
    tracing::error!("{reason}");
    while why().is_some() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    tracing::warn!("the master directory is back; publishing again");
    true
}

/// The blocking side: watch first, then reconcile, then follow signals. Nothing is
/// watched, scanned or published while the directory is gone, replaced or (at start)
/// empty against the log (`RootGuard`).
fn worker(
    dir: &Path,
    tree: Tree,
    mut guard: RootGuard,
    tx: &mpsc::Sender<WorkerMsg>,
    retries: &std_mpsc::Receiver<RelPath>,
    stop: &AtomicBool,
) {
    let published = tree.model().len();
    if !hold_while(stop, || guard.empty_or_gone(published)) {
        return;
    }
    guard.rebind();
    let Some(watcher) = start_watch(dir, tx) else {
        return;
    };
    let mut worker = Worker {
        dir,
        tree,
        guard,
        watcher,
        coalescer: Coalescer::new(Timing::default()),
        polling_since: None,
        ignore_file: RelPath::new(IGNORE_FILE).ok(),
        emitter: Emitter {
            tx,
            stop,
            budget: Budget::default(),
            unstable: Vec::new(),
        },
    };
    worker.rescan_all();
    if tx.blocking_send(WorkerMsg::Ready).is_err() {
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        if let Some(why) = worker.guard.replaced() {
            if !worker.rewatch_replaced_root(&why) {
                return;
            }
            continue;
        }
        worker.retry(retries);
        if !worker.take_signals() || !worker.run_due() {
            let _ = tx.blocking_send(WorkerMsg::Fatal("the directory watcher stopped".into()));
            return;
        }
    }
}

/// Starts watching `dir`; a failure is sent as fatal.
fn start_watch(dir: &Path, tx: &mpsc::Sender<WorkerMsg>) -> Option<DirWatcher> {
    match DirWatcher::start(dir) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            let _ = tx.blocking_send(WorkerMsg::Fatal(err.to_string()));
            None
        }
    }
}

/// Where the tree's outcomes go: changes and chunks to the async side (within the chunk
/// budget), unstable paths back to the coalescer.
struct Emitter<'a> {
    tx: &'a mpsc::Sender<WorkerMsg>,
    stop: &'a AtomicBool,
    /// Chunks cut and not yet answered for by the bus: the worker waits for room.
    budget: Budget,
    /// Paths whose hash was unstable, to be looked at again.
    unstable: Vec<RelPath>,
}

impl Emitter<'_> {
    fn emit(&mut self, outcome: Outcome) {
        let msg = match outcome {
            Outcome::Changed(observed) => WorkerMsg::Change(observed),
            Outcome::Retry(path) => return self.unstable.push(path),
            Outcome::Chunk(chunk_ref, data, new_file) => WorkerMsg::Chunk(CutChunk {
                chunk_ref,
                held: self.budget.take(data.len()),
                data,
                new_file,
            }),
            Outcome::StreamEnd(hash) => WorkerMsg::ChunksEnd(hash.is_some()),
        };
        if self.tx.blocking_send(msg).is_err() {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

/// The worker thread's state: the tree, what watches it, and what is due.
struct Worker<'a> {
    dir: &'a Path,
    tree: Tree,
    guard: RootGuard,
    watcher: DirWatcher,
    coalescer: Coalescer,
    /// Since when the watch limit was hit (the tree is then compared every POLL_INTERVAL).
    polling_since: Option<Instant>,
    ignore_file: Option<RelPath>,
    emitter: Emitter<'a>,
}

impl Worker<'_> {
    fn rescan_all(&mut self) {
        let emitter = &mut self.emitter;
        self.tree.rescan_all(&mut |outcome| emitter.emit(outcome));
    }

    /// The root was replaced: waits until it is back, then watches and compares it anew.
    /// False when the worker should end (stopping, or the watcher cannot start).
    fn rewatch_replaced_root(&mut self, why: &str) -> bool {
        tracing::error!("{why}: not publishing until it is back");
        let published = self.tree.model().len();
        let guard = &self.guard;
        if !hold_while(self.emitter.stop, || guard.empty_or_gone(published)) {
            return false;
        }
        self.guard.rebind();
        // The old watches died with the old directory; signals about it mean nothing.
        let Some(rewatched) = start_watch(self.dir, self.emitter.tx) else {
            return false;
        };
        self.watcher = rewatched;
        self.coalescer = Coalescer::new(Timing::default());
        self.tree.reload_ignore();
        self.rescan_all();
        true
    }

    /// Unstable paths and the paths the async side hands back are looked at again.
    fn retry(&mut self, retries: &std_mpsc::Receiver<RelPath>) {
        let now = Instant::now();
        for path in self.emitter.unstable.drain(..) {
            self.coalescer.retry(path, now);
        }
        while let Ok(path) = retries.try_recv() {
            self.tree.invalidate(&path);
            self.coalescer.retry(path, now);
        }
    }

    /// Feeds the watcher's signals to the coalescer, waiting for the next deadline (at most
    /// 100 ms, to notice a stop); false when the watcher stopped.
    fn take_signals(&mut self) -> bool {
        let now = Instant::now();
        let wait = self
            .coalescer
            .next_deadline()
            .map(|deadline| deadline.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        let mut next = self.watcher.next(wait);
        while let Ok(Some(signal)) = next {
            if signal == Signal::WatchLimit {
                self.polling_since.get_or_insert_with(Instant::now);
            }
            self.coalescer.observe(signal, Instant::now());
            next = self.watcher.next(Duration::ZERO);
        }
        if next.is_err() {
            return false;
        }
        if self
            .polling_since
            .is_some_and(|since| since.elapsed() >= POLL_INTERVAL)
        {
            self.polling_since = Some(Instant::now());
            self.coalescer.observe(Signal::Rescan, Instant::now());
        }
        true
    }

    /// Does what the coalescer says is due; false when the watcher stopped.
    fn run_due(&mut self) -> bool {
        let due = self.coalescer.take_due(Instant::now());
        // Watch before scan: a directory about to be scanned must be watched first, so that
        // nothing created in it after the scan passed by goes unreported. notify adds the
        // watches itself; one wait per batch covers every event behind the batch (and no
        // path needs a stat here to find out whether its refresh scans a directory).
        if !due.is_empty() && self.watcher.catch_up().is_err() {
            return false;
        }
        for work in due {
            let emitter = &mut self.emitter;
            let mut emit = |outcome| emitter.emit(outcome);
            match work {
                Work::Refresh(path) => {
                    self.tree.refresh(&path, &mut emit);
                    if Some(&path) == self.ignore_file.as_ref() {
                        self.tree.reload_ignore();
                        self.tree.rescan_all(&mut emit);
                    }
                }
                Work::Move { from, to } => self.tree.moved(&from, &to, &mut emit),
                Work::RescanAll => {
                    self.tree.reload_ignore();
                    self.tree.rescan_all(&mut emit);
                }
            }
        }
        true
    }
}
