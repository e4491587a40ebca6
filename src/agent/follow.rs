//! `Follower`: a slave with nothing to apply follows a new large file while the master is
//! still uploading its chunks, so that its copy is written at the same time as the bus's
//! rather than after it (see `bus/follow.rs` for why, and W3 in docs/BENCHMARKS.md).
//!
//! The bus announces each chunk of a file new to the master once it is stored; the
//! follower fetches it and writes it to a `LooseFile` in the slave's root, hashed as it is
//! written. When the notify of a file put comes, the session `claim`s content with that
//! SHA-256; `Applier::adopt` puts it in place only if the hash the follower computed itself
//! matches. Anything else (nothing followed, another file, a failure) and the session
//! applies the put as usual. Content is not an event: nothing is applied before its notify
//! is delivered, so the log, its order and the checkpoints see no difference.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use filesync_master::chunk::ChunkRef;
use filesync_master::hash::ContentHash;
use filesync_slave::{Applier, LooseFile, ReceivedFile};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::chunked::WRITE_BATCH;
use super::progress::{Progress, LARGE};
use crate::bus::api::{call, Link, Piece, Reply};
use crate::bus::ClientError;

/// Received files kept for a notify still to come; the oldest goes first.
const READY_KEPT: usize = 2;
/// A received file nobody claimed within this long is thrown away.
const READY_FOR: Duration = Duration::from_secs(60);
/// Announcements asked for, and chunks fetched, ahead of the one being written.
const AHEAD: usize = 8;

/// The follower task and what it has received; stops (and removes its files) when dropped.
pub struct Follower {
    shared: Arc<Shared>,
    client: Link,
    task: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped at every change of `state`, for claims waiting on it.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// The session has nothing queued: new files may be followed.
    idle: bool,
    /// The announced file being received, if any.
    following: Option<u64>,
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

impl Follower {
    /// Starts following announced files on `client`, receiving into `applier`'s root.
    pub fn start(client: Link, applier: Applier) -> Follower {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        });
        let task = tokio::spawn(follow(client.clone(), applier, shared.clone()));
        Follower {
            shared,
            client,
            task,
        }
    }

    /// Whether the session has nothing queued (files are followed only then: a slave with
    /// a backlog would receive content whose notify is far away).
    pub fn set_idle(&self, idle: bool) {
        self.shared.state().idle = idle;
    }

    /// A received file whose content is `sha256`, waiting for the file being followed to
    /// be received when the bus says that is this content; `None` when there is none.
    pub async fn claim(&self, sha256: ContentHash) -> Option<ReceivedFile> {
        let mut changed = self.shared.changed.subscribe();
        let mut confirmed = false;
        loop {
            let following = {
                let mut state = self.shared.state();
                if let Some(at) = state.ready.iter().position(|(_, r)| r.sha256() == sha256) {
                    return state.ready.remove(at).map(|(_, received)| received);
                }
                state.following?
            };
            // The master announced the file's end before it published its notify, so the
            // bus knows whether the file being followed is this content.
            if !confirmed {
                let end = call(self.client.follow_get(following, u64::MAX)).await;
                let is_it = matches!(end, Ok((c, true, _)) if c.sha256 == sha256);
                if !is_it {
                    return None;
                }
                confirmed = true;
            }
            changed.borrow_and_update();
            if self.shared.state().following != Some(following) {
                continue;
            }
            if changed.changed().await.is_err() {
                return None;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // The task's files go with it; received ones go with the last `Shared`.
        self.task.abort();
    }
}

/// Follows each newly announced file while the session is idle, one at a time.
async fn follow(client: Link, applier: Applier, shared: Arc<Shared>) {
    let mut after = 0;
    loop {
        // A bus without announcements (`Unsupported`) ends this at once.
        let Ok(file) = call(client.follow_next(after)).await else {
            return;
        };
        after = file;
        if !shared.state().idle {
            continue;
        }
        shared.update(|state| state.following = Some(file));
        let received = receive(&client, &applier, file).await;
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
                Err(reason) => tracing::debug!("following announced file {file}: {reason}"),
            }
        });
    }
}

/// Receives announced file `file` whole into a loose file, checking it against the SHA-256
/// and size its end announces.
async fn receive(client: &Link, applier: &Applier, file: u64) -> Result<ReceivedFile, String> {
    let text = |err: ClientError| err.to_string();
    let mut loose: LooseFile = applier
        .loose_file()
        .map_err(|err| format!("cannot create a file for it: {err}"))?;
    let mut asked: VecDeque<Reply<(ChunkRef, bool, u64)>> = VecDeque::new();
    let mut fetching: VecDeque<(ChunkRef, Reply<Piece>)> = VecDeque::new();
    let mut next_index = 0u64;
    let mut end: Option<(ContentHash, u64)> = None;
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    // Bytes received so far, and a bar once the file is large (on a terminal).
    let mut received = 0u64;
    let mut progress: Option<Progress> = None;
    loop {
        while end.is_none() && asked.len() < AHEAD {
            asked.push_back(client.follow_get(file, next_index).await.map_err(text)?);
            next_index += 1;
        }
        if end.is_none() && fetching.len() < AHEAD {
            if let Some(oldest) = asked.pop_front() {
                let (chunk, last, size) = oldest.await.map_err(text)?;
                if last {
                    end = Some((chunk.sha256, size));
                } else {
                    let fetch = client.get(chunk.sha256, 0).await.map_err(text)?;
                    fetching.push_back((chunk, fetch));
                }
                continue;
            }
        }
        let Some((chunk, fetch)) = fetching.pop_front() else {
            break;
        };
        let (data, _) = fetch.await.map_err(text)?;
        if data.len() != chunk.len as usize {
            return Err(format!(
                "chunk {} arrived with {} bytes",
                chunk.sha256,
                data.len()
            ));
        }
        received += data.len() as u64;
        match &mut progress {
            Some(progress) => progress.add_bytes(data.len() as u64),
            None if received >= LARGE => {
                progress = Progress::file("receiving", "a new large file", None);
                if let Some(progress) = &mut progress {
                    progress.add_bytes(received);
                }
            }
            None => {}
        }
        batch.extend_from_slice(&data);
        if batch.len() >= WRITE_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH));
            loose = write(loose, full).await?;
        }
    }
    // Announcements asked for past the end are answered with the end; nothing to do.
    drop(asked);
    if let Some(progress) = progress {
        progress.finish();
    }
    if !batch.is_empty() {
        loose = write(loose, batch).await?;
    }
    let (sha256, size) = end.ok_or("the file ended without its end")?;
    let received = loose
        .finish()
        .map_err(|err| format!("cannot hash: {err}"))?;
    if received.sha256() != sha256 || received.size() != size {
        return Err(format!(
            "received {} bytes hashing to {}, announced {size} bytes of {sha256}",
            received.size(),
            received.sha256()
        ));
    }
    Ok(received)
}

/// Writes a piece on a blocking thread: this runtime goes on receiving meanwhile.
async fn write(mut loose: LooseFile, piece: Vec<u8>) -> Result<LooseFile, String> {
    tokio::task::spawn_blocking(move || loose.write_owned(piece).map(|()| loose))
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| format!("cannot write: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Role;
    use crate::testkit::test_bus::TestBus;
    use filesync_master::chunk::chunks_of;

    /// The master's side, by hand: each chunk stored, then announced, then the end.
    async fn upload(master: &Link, data: &[u8]) -> ContentHash {
        let upload = master
            .new_announcement()
            .expect("the embedded bus announces");
        for (index, chunk) in chunks_of(data).into_iter().enumerate() {
            let chunk_ref = ChunkRef {
                sha256: ContentHash::of(chunk),
                len: chunk.len() as u32,
            };
            call(master.put(chunk_ref.sha256, chunk.to_vec()))
                .await
                .expect("stored");
            call(master.announce_chunk(upload, index as u64, chunk_ref))
                .await
                .expect("announced");
        }
        let sha256 = ContentHash::of(data);
        call(master.announce_end(upload, Some((sha256, data.len() as u64))))
            .await
            .expect("end");
        sha256
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_slave_receives_a_new_file_as_it_is_uploaded_and_hands_it_over_once() {
        let bus = TestBus::start(false).await;
        let master = bus.client(Role::Master, "master").await;
        let slave = bus.client(Role::Slave, "slave").await;
        let root = tempfile::tempdir().expect("tempdir");
        let follower = Follower::start(slave, Applier::new(root.path()));
        follower.set_idle(true);
        // Let the follower ask for the next file before it is announced.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let data = crate::testkit::noise(5 << 20, 1);
        let sha256 = upload(&master, &data).await;
        let received = follower.claim(sha256).await.expect("received");
        assert_eq!(received.size(), data.len() as u64);
        assert_eq!(std::fs::read(received.path()).expect("read"), data);
        assert!(follower.claim(sha256).await.is_none(), "handed over once");
        assert!(
            follower.claim(ContentHash::of(b"other")).await.is_none(),
            "another content is not waited for"
        );
    }
}
