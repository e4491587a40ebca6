//! Early fetch: a slave with nothing to apply follows a large upload while the master is
//! still sending it, so that its copy is written at the same time as the bus's rather than
//! after it (on this project's machines two writes of 1 GiB take 5.0 s one after the other
//! and 2.6 s side by side; W3 in docs/BENCHMARKS.md).
//!
//! The content waits in a `LooseFile` in the slave's root. When the notify of a file put
//! comes, the session `claim`s content with that SHA-256; `Applier::adopt` puts it in place
//! only if the hash it computed itself while writing matches. Anything else (no upload
//! followed, a different file, a failure) and the session fetches from the store as usual.
//! Content is not an event: nothing is applied before its notify is delivered, so the log,
//! its order and the checkpoints see no difference.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use filesync_master::hash::ContentHash;
use filesync_slave::{Applier, LooseFile, ReceivedFile};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bus::BusClient;

/// Received content kept for a notify still to come; the oldest goes first.
const READY_KEPT: usize = 2;
/// Received content nobody claimed within this long is thrown away.
const READY_FOR: Duration = Duration::from_secs(60);
/// How long a claim waits to learn the address of an upload being followed. The bus tells
/// it in its next answer once the upload is committed, and the master publishes a notify
/// only after that, so a few milliseconds are the norm.
const ADDRESS_WAIT: Duration = Duration::from_millis(250);

/// The follower task and what it has received; stops (and removes its files) when dropped.
pub struct EarlyFetch {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped at every change of `state`, for claims waiting on it.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// The session has nothing queued: new uploads may be followed.
    idle: bool,
    /// The upload being followed, and its address once the bus said it.
    following: Option<Option<ContentHash>>,
    ready: VecDeque<(Instant, ReceivedFile)>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Each change below is a single assignment or push: consistent even after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state());
        self.changed.send_modify(|version| *version += 1);
    }
}

impl EarlyFetch {
    /// Starts following uploads on `client`, receiving into `applier`'s root.
    pub fn start(client: BusClient, applier: Applier) -> EarlyFetch {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        });
        let task = tokio::spawn(follow(client, applier, shared.clone()));
        EarlyFetch { shared, task }
    }

    /// Whether the session has nothing queued (uploads are followed only then: a slave with a
    /// backlog would receive content whose notify is far away).
    pub fn set_idle(&self, idle: bool) {
        self.shared.state().idle = idle;
    }

    /// Content received early whose hash is `sha256`, waiting for an upload being followed
    /// to finish when it is (or may be) that content; `None` when there is none.
    pub async fn claim(&self, sha256: ContentHash) -> Option<ReceivedFile> {
        let mut changed = self.shared.changed.subscribe();
        let address_by = Instant::now() + ADDRESS_WAIT;
        loop {
            let wait_until = {
                let mut state = self.shared.state();
                if let Some(at) = state.ready.iter().position(|(_, r)| r.sha256() == sha256) {
                    return state.ready.remove(at).map(|(_, received)| received);
                }
                match state.following {
                    Some(Some(following)) if following == sha256 => None,
                    Some(None) if Instant::now() < address_by => Some(address_by),
                    _ => return None,
                }
            };
            changed.borrow_and_update();
            let waited = match wait_until {
                None => changed.changed().await.is_ok(),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    matches!(
                        tokio::time::timeout(left, changed.changed()).await,
                        Ok(Ok(()))
                    )
                }
            };
            if !waited {
                return None;
            }
        }
    }
}

impl Drop for EarlyFetch {
    fn drop(&mut self) {
        // The task's files go with it; received ones go with the last `Shared`.
        self.task.abort();
    }
}

/// Follows each new upload while the session is idle, one at a time.
async fn follow(client: BusClient, applier: Applier, shared: Arc<Shared>) {
    let mut after = 0;
    loop {
        let Ok(stream) = client.stream_next(after).await else {
            return;
        };
        after = stream;
        if !shared.state().idle {
            continue;
        }
        shared.update(|state| state.following = Some(None));
        let received = receive(&client, &applier, stream, &shared).await;
        shared.update(|state| {
            state.following = None;
            state.ready.retain(|(at, _)| at.elapsed() < READY_FOR);
            match received {
                Ok(received) => {
                    state.ready.push_back((Instant::now(), received));
                    while state.ready.len() > READY_KEPT {
                        state.ready.pop_front();
                    }
                }
                Err(reason) => tracing::debug!("early fetch of upload {stream}: {reason}"),
            }
        });
    }
}

/// Receives upload `stream` whole into a loose file, checking its hash against the address
/// the bus committed it under.
async fn receive(
    client: &BusClient,
    applier: &Applier,
    stream: u64,
    shared: &Shared,
) -> Result<ReceivedFile, String> {
    let mut loose: LooseFile = applier
        .loose_file()
        .map_err(|err| format!("cannot create a file for it: {err}"))?;
    let mut pending = Some(
        client
            .stream_get_pipelined(stream, 0)
            .await
            .map_err(|err| err.to_string())?,
    );
    let mut address = None;
    while let Some(current) = pending.take() {
        let (piece, eof, committed) = current.stream_data().await.map_err(|e| e.to_string())?;
        if let (Some(hex), None) = (committed, address) {
            let parsed = ContentHash::parse_hex(&hex)
                .ok_or_else(|| format!("the bus sent a bad address {hex:?}"))?;
            shared.update(|state| state.following = Some(Some(parsed)));
            address = Some(parsed);
        }
        if !eof {
            // Asked before this piece is written, so the bus reads while we write.
            let next = loose.written() + piece.len() as u64;
            pending = Some(
                client
                    .stream_get_pipelined(stream, next)
                    .await
                    .map_err(|err| err.to_string())?,
            );
        }
        if !piece.is_empty() {
            // Written on a blocking thread: this runtime goes on receiving meanwhile.
            loose = tokio::task::spawn_blocking(move || loose.write_owned(piece).map(|()| loose))
                .await
                .map_err(|err| err.to_string())?
                .map_err(|err| format!("cannot write: {err}"))?;
        }
    }
    let received = loose
        .finish()
        .map_err(|err| format!("cannot hash: {err}"))?;
    match address {
        Some(address) if address == received.sha256() => Ok(received),
        _ => Err("what arrived does not hash to the upload's address".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Role;
    use crate::testkit::test_bus::TestBus;
    use filesync_master::hash::CHUNK_SIZE;
    use std::path::Path;

    impl EarlyFetch {
        fn following(&self) -> bool {
            self.shared.state().following.is_some()
        }
    }

    fn listing(root: &Path) -> Vec<String> {
        std::fs::read_dir(root)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn content() -> (Vec<u8>, ContentHash) {
        let content: Vec<u8> = (0..CHUNK_SIZE * 2 + 5).map(|i| (i % 251) as u8).collect();
        let sha256 = ContentHash::of(&content);
        (content, sha256)
    }

    /// A bus, a master's connection to it, and a slave's follower on a fresh root.
    struct Setup {
        _bus: TestBus,
        master: BusClient,
        root: tempfile::TempDir,
        early: EarlyFetch,
    }

    async fn setup() -> Setup {
        let bus = TestBus::start(false).await;
        let master = bus.client(Role::Master, "master").await;
        let root = tempfile::tempdir().expect("tempdir");
        let early = EarlyFetch::start(
            bus.client(Role::Slave, "slave").await,
            Applier::new(root.path()),
        );
        Setup {
            _bus: bus,
            master,
            root,
            early,
        }
    }

    /// Starts an upload of `content` with its first piece, and waits until it is followed.
    async fn first_piece_followed<'a>(
        t: &'a Setup,
        content: &[u8],
    ) -> crate::bus::client::BlobUpload<'a> {
        t.early.set_idle(true);
        let mut upload = t.master.begin_upload();
        upload
            .piece(content[..CHUNK_SIZE].to_vec())
            .await
            .expect("piece");
        until("the slave follows the upload", || t.early.following()).await;
        upload
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_slave_receives_an_upload_as_it_arrives_and_hands_it_over_once() {
        let t = setup().await;
        let early = &t.early;
        let (content, sha256) = content();
        let mut upload = first_piece_followed(&t, &content).await;
        // Its address is not known yet: a claim for other content gives up soon.
        let other = ContentHash::of(b"other");
        let started = Instant::now();
        assert!(early.claim(other).await.is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
        for piece in content[CHUNK_SIZE..].chunks(CHUNK_SIZE) {
            upload.piece(piece.to_vec()).await.expect("piece");
        }
        upload.commit(&sha256.to_hex()).await.expect("commit");

        let received = early.claim(sha256).await.expect("received early");
        assert_eq!(received.sha256(), sha256);
        assert_eq!(std::fs::read(received.path()).expect("read"), content);
        assert!(early.claim(sha256).await.is_none(), "claimed once");
        drop(received);
        assert!(listing(t.root.path()).is_empty(), "nothing left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_upload_or_a_busy_slave_leaves_nothing() {
        let t = setup().await;
        let (early, root) = (&t.early, t.root.path());
        let (content, sha256) = content();

        // Idle, following, then the uploader gives up: the partial file goes.
        let upload = first_piece_followed(&t, &content).await;
        upload.abort().await.expect("abort");
        until("the follower lets go", || !early.following()).await;
        assert!(early.claim(sha256).await.is_none());
        assert!(listing(root).is_empty(), "partial content removed");

        // Busy: uploads are not followed at all.
        early.set_idle(false);
        let mut upload = t.master.begin_upload();
        for piece in content.chunks(CHUNK_SIZE) {
            upload.piece(piece.to_vec()).await.expect("piece");
        }
        upload.commit(&sha256.to_hex()).await.expect("commit");
        assert!(!early.following());
        assert!(early.claim(sha256).await.is_none());
        assert!(listing(root).is_empty());
    }
}
