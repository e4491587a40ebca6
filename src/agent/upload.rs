//! `ChunkUpload`: a large file's chunks on their way to the bus while the worker still reads
//! the file, each sent only if the bus lacks it, then the file's manifest.
//!
//! The bus is asked (`blob_has`) about up to `ASKED_AHEAD` chunks before the oldest
//! answer is awaited, so a file the bus mostly holds costs a stream of small questions, not
//! a round trip per chunk; a chunk it lacks is sent at once (`blob_put`, verified by the bus
//! against its address). A chunk that repeats inside the file is asked about once. What was
//! sent is counted: the notify's `uploaded`.
//!
//! Memory: a chunk is held from the moment the worker cuts it until the bus has answered
//! about it, and the worker may not cut more than [`Budget`] allows meanwhile: a few
//! megabytes whatever the file's size.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use filesync_master::chunk::{ChunkRef, Manifest, CHUNK_MAX};
use filesync_master::hash::ContentHash;

use super::progress::{Progress, LARGE};
use crate::bus::api::{call, Link, Reply};
use crate::bus::protocol::PIECE_SIZE;
use crate::bus::ClientError;

/// Questions about chunks in flight before the oldest answer is awaited.
const ASKED_AHEAD: usize = 16;
/// Chunks sent before the oldest acknowledgement is awaited.
const SENT_AHEAD: usize = 8;

/// Bytes of chunks that may be held between the worker and the bus: enough for every
/// question and every upload in flight and one more chunk, so that the worker can always
/// hand over the chunk whose arrival makes the upload await its oldest answers (with less,
/// a worker waiting for room and an upload waiting for a chunk would wait for each other).
pub const BUDGET: usize = (ASKED_AHEAD + SENT_AHEAD + 1) * CHUNK_MAX;

/// How many bytes of chunks may be held; the worker thread waits for room.
#[derive(Clone, Default)]
pub struct Budget(Arc<(Mutex<usize>, Condvar)>);

/// Room for one chunk, given back when dropped.
pub struct Held {
    budget: Budget,
    len: usize,
}

impl Budget {
    /// Waits (blocking the thread) for room for `len` bytes.
    pub fn take(&self, len: usize) -> Held {
        let (used, freed) = &*self.0;
        let mut used = used.lock().unwrap_or_else(|p| p.into_inner());
        while *used > 0 && *used + len > BUDGET {
            used = freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += len;
        Held {
            budget: self.clone(),
            len,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let (used, freed) = &*self.budget.0;
        let mut used = used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= self.len;
        freed.notify_all();
    }
}

/// A chunk cut by the worker, with its room in the budget.
pub struct CutChunk {
    pub chunk_ref: ChunkRef,
    pub data: Vec<u8>,
    pub held: Held,
    /// The file is new to the master: its chunks are announced to slaves that follow.
    pub new_file: bool,
}

/// One file's chunks under way.
pub struct ChunkUpload {
    /// Chunks in order, with the question about each (none for a repeat in this file).
    asked: VecDeque<(CutChunk, Option<Reply<bool>>)>,
    /// Chunks sent, holding their room until the bus has stored them.
    sent: VecDeque<(Held, Reply<()>)>,
    seen: HashSet<ContentHash>,
    uploaded: u64,
    /// For a file new to the master: its upload number, the next chunk index to announce,
    /// and the announcements not yet acknowledged.
    announce: Option<(u64, u64)>,
    announced: VecDeque<Reply<()>>,
    /// Bytes of the file cut so far, and its bar once it is large (on a terminal).
    cut: u64,
    progress: Option<Progress>,
}

impl ChunkUpload {
    /// A file's chunks; announced to followers (`bus/follow.rs`) when `new_file` and the
    /// bus offers it.
    pub fn new(client: &Link, new_file: bool) -> ChunkUpload {
        ChunkUpload {
            asked: VecDeque::new(),
            sent: VecDeque::new(),
            seen: HashSet::new(),
            uploaded: 0,
            announce: new_file
                .then(|| client.new_announcement())
                .flatten()
                .map(|file| (file, 0)),
            announced: VecDeque::new(),
            cut: 0,
            progress: None,
        }
    }

    /// The next chunk of the file, as the worker cut it.
    pub async fn chunk(&mut self, client: &Link, cut: CutChunk) -> Result<(), ClientError> {
        let len = cut.data.len() as u64;
        self.cut += len;
        match &mut self.progress {
            Some(progress) => progress.add_bytes(len),
            None if self.cut >= LARGE => {
                self.progress = Progress::file("sending", "a large file", None);
                if let Some(progress) = &mut self.progress {
                    progress.add_bytes(self.cut);
                }
            }
            None => {}
        }
        let asked = if self.seen.insert(cut.chunk_ref.sha256) {
            Some(client.has(cut.chunk_ref.sha256).await?)
        } else {
            None
        };
        self.asked.push_back((cut, asked));
        while self.asked.len() > ASKED_AHEAD {
            self.answer_oldest(client).await?;
        }
        while self.sent.len() > SENT_AHEAD {
            if let Some((_, oldest)) = self.sent.pop_front() {
                oldest.await?;
            }
        }
        while self.announced.len() > ASKED_AHEAD {
            if let Some(oldest) = self.announced.pop_front() {
                oldest.await?;
            }
        }
        Ok(())
    }

    /// Awaits the oldest question's answer, sends the chunk if the bus lacks it, and
    /// announces it (after its upload, on the same connection: stored before announced).
    async fn answer_oldest(&mut self, client: &Link) -> Result<(), ClientError> {
        let Some((cut, asked)) = self.asked.pop_front() else {
            return Ok(());
        };
        let chunk_ref = cut.chunk_ref;
        if let Some(asked) = asked {
            if !asked.await? {
                let sent = client.put(chunk_ref.sha256, cut.data).await?;
                self.sent.push_back((cut.held, sent));
                self.uploaded += u64::from(chunk_ref.len);
            }
        }
        if let Some((upload, index)) = &mut self.announce {
            let reply = client.announce_chunk(*upload, *index, chunk_ref).await?;
            self.announced.push_back(reply);
            *index += 1;
        }
        Ok(())
    }

    /// Sends what is left, announces the file's end (`whole`: its SHA-256 and size), then
    /// stores the manifest (if the bus lacks it); returns the bytes sent for this file.
    /// Every chunk is stored once this returns.
    pub async fn finish(
        mut self,
        client: &Link,
        manifest: &Manifest,
        whole: Option<(ContentHash, u64)>,
    ) -> Result<u64, ClientError> {
        while !self.asked.is_empty() {
            self.answer_oldest(client).await?;
        }
        for (_, sent) in self.sent.drain(..) {
            sent.await?;
        }
        for announced in self.announced.drain(..) {
            announced.await?;
        }
        if let Some((upload, _)) = self.announce.take() {
            call(client.announce_end(upload, whole)).await?;
        }
        if let Some(progress) = self.progress.take() {
            progress.finish();
        }
        let encoded = manifest.encode();
        let address = manifest.address();
        if !call(client.has(address)).await? {
            put_content(client, address, encoded.clone()).await?;
            self.uploaded += encoded.len() as u64;
        }
        Ok(self.uploaded)
    }

    /// The chunks were for nothing (the file changed while read, or its content is the one
    /// published): the answers still due are collected (so that a lost connection is
    /// noticed) and followers are told.
    pub async fn abandon(self, client: &Link) -> Result<(), ClientError> {
        if let Some(progress) = self.progress {
            progress.finish();
        }
        let lost = |outcome: Result<(), ClientError>| match outcome {
            Err(err) if err.is_connection() => Err(err),
            _ => Ok(()),
        };
        for (_, asked) in self.asked {
            if let Some(asked) = asked {
                lost(asked.await.map(|_| ()))?;
            }
        }
        let sent = self.sent.into_iter().map(|(_, sent)| sent);
        for reply in sent.chain(self.announced) {
            lost(reply.await)?;
        }
        if let Some((upload, _)) = self.announce {
            // Its followers give up on it.
            match call(client.announce_end(upload, None)).await {
                Err(err) if err.is_connection() => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Stores content of any size: whole when it fits in one frame, in pieces otherwise.
pub async fn put_content(
    client: &Link,
    address: ContentHash,
    content: Vec<u8>,
) -> Result<(), ClientError> {
    if content.len() <= PIECE_SIZE {
        return call(client.put(address, content)).await;
    }
    let mut upload = client.begin_upload();
    for piece in content.chunks(PIECE_SIZE) {
        upload.piece(piece.to_vec()).await?.await?;
    }
    call(upload.commit(address)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_makes_the_worker_wait_for_room_and_always_admits_one_chunk() {
        let budget = Budget::default();
        let held: Vec<Held> = (0..BUDGET / CHUNK_MAX)
            .map(|_| budget.take(CHUNK_MAX))
            .collect();
        let waiting = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.take(CHUNK_MAX))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiting.is_finished(), "no room: the worker waits");
        drop(held);
        let admitted = waiting.join().expect("admitted once room is given back");
        drop(admitted);
        // A chunk larger than the whole budget still passes when nothing else is held.
        drop(budget.take(BUDGET * 2));
    }
}
