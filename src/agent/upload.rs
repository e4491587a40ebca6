//! `ChunkUpload`: a large file's chunks on their way to the bus while the worker still reads
//! the file, each sent only if the bus lacks it, then the file's manifest.
//!
//! The bus is asked (`blob_has`) about up to [`ASKED_AHEAD`] chunks before the oldest
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
use filesync_master::hash::{ContentHash, CHUNK_SIZE};

use crate::bus::{BusClient, ClientError, PendingReply};

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
}

/// One file's chunks under way.
#[derive(Default)]
pub struct ChunkUpload {
    asked: VecDeque<(CutChunk, PendingReply)>,
    /// Chunks sent, holding their room until the bus has stored them.
    sent: VecDeque<(Held, PendingReply)>,
    seen: HashSet<ContentHash>,
    uploaded: u64,
}

impl ChunkUpload {
    /// The next chunk of the file, as the worker cut it.
    pub async fn chunk(&mut self, client: &BusClient, cut: CutChunk) -> Result<(), ClientError> {
        if !self.seen.insert(cut.chunk_ref.sha256) {
            return Ok(());
        }
        let asked = client
            .blob_has_pipelined(&cut.chunk_ref.sha256.to_hex())
            .await?;
        self.asked.push_back((cut, asked));
        while self.asked.len() > ASKED_AHEAD {
            self.answer_oldest(client).await?;
        }
        while self.sent.len() > SENT_AHEAD {
            if let Some((_, oldest)) = self.sent.pop_front() {
                oldest.wait().await?;
            }
        }
        Ok(())
    }

    /// Awaits the oldest question's answer, and sends the chunk if the bus lacks it.
    async fn answer_oldest(&mut self, client: &BusClient) -> Result<(), ClientError> {
        let Some((cut, asked)) = self.asked.pop_front() else {
            return Ok(());
        };
        if !asked.present().await? {
            let address = cut.chunk_ref.sha256.to_hex();
            let sent = client.blob_put_pipelined(&address, cut.data).await?;
            self.sent.push_back((cut.held, sent));
            self.uploaded += u64::from(cut.chunk_ref.len);
        }
        Ok(())
    }

    /// Sends what is left, then the manifest (if the bus lacks it); returns the bytes sent
    /// for this file. Every chunk is stored once this returns.
    pub async fn finish(
        mut self,
        client: &BusClient,
        manifest: &Manifest,
    ) -> Result<u64, ClientError> {
        while !self.asked.is_empty() {
            self.answer_oldest(client).await?;
        }
        for (_, sent) in self.sent.drain(..) {
            sent.wait().await?;
        }
        let encoded = manifest.encode();
        let address = manifest.address().to_hex();
        if !client.blob_has(&address).await? {
            put_content(client, &address, encoded.clone()).await?;
            self.uploaded += encoded.len() as u64;
        }
        Ok(self.uploaded)
    }

    /// The chunks were for nothing (the file changed while read, or its content is the one
    /// published): only the answers still due are collected, so that a lost connection is
    /// noticed.
    pub async fn abandon(self) -> Result<(), ClientError> {
        let pending = self.asked.into_iter().map(|(_, asked)| asked);
        for reply in pending.chain(self.sent.into_iter().map(|(_, sent)| sent)) {
            match reply.wait().await {
                Err(err) if err.is_connection() => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Stores content of any size: whole when it fits in one frame, in pieces otherwise.
pub async fn put_content(
    client: &BusClient,
    address: &str,
    content: Vec<u8>,
) -> Result<(), ClientError> {
    if content.len() <= CHUNK_SIZE {
        return client
            .blob_put_pipelined(address, content)
            .await?
            .wait()
            .await
            .map(|_| ());
    }
    let mut upload = client.begin_upload();
    for piece in content.chunks(CHUNK_SIZE) {
        upload.piece(piece.to_vec()).await?;
    }
    upload.commit(address).await
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
