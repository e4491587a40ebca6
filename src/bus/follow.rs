//! `Announced`: the chunks of new large files while their master is still uploading them,
//! for an idle slave to follow.
//!
//! Why: a new large file reaches a slave only after the master has uploaded all of it and
//! published its notify, so the bus writing the content and the slave writing it would
//! happen one after the other. On this project's machines two writes of 1 GiB take about
//! 5 s in sequence and 2.6 s side by side (W3, docs/BENCHMARKS.md). So as a master stores
//! each chunk of a file new to it, it announces it (`file_chunk`: the file's upload number,
//! the chunk's index, address and length), and then the file's end (`file_end`: its SHA-256
//! and size). A slave with nothing else to do follows the newest announcement chunk by
//! chunk into a file of its own, and puts that file in place when the notify comes, only if
//! its hash matches. Content is not an event: nothing is applied before its notify is
//! delivered, so the log stays the one account of what happened.
//!
//! A chunk is announced only once it is stored (the master sends the announcement after
//! its upload on the same connection, and the bus handles a connection's requests in
//! order), so a follower can always fetch what it is told about. The newest [`KEPT`] files
//! are remembered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use filesync_master::chunk::ChunkRef;
use filesync_master::hash::ContentHash;
use tokio::sync::watch;

/// How many announced files are remembered.
pub const KEPT: usize = 8;

/// What a follower learns about one position of an announced file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// The chunk at that index.
    Chunk(ChunkRef),
    /// The file ends before that index: its SHA-256 and size.
    End(ContentHash, u64),
}

#[derive(Debug, Clone, Default)]
struct Progress {
    chunks: Vec<ChunkRef>,
    end: Option<Result<(ContentHash, u64), ()>>,
}

/// One file being announced.
pub struct Announced {
    pub id: u64,
    progress: watch::Sender<Progress>,
}

impl Announced {
    /// Chunk `index` is stored. Announcements must come in order, without gaps.
    pub fn chunk(&self, index: u64, chunk: ChunkRef) -> Result<(), String> {
        let mut result = Ok(());
        self.progress.send_modify(|progress| {
            if progress.end.is_some() || index != progress.chunks.len() as u64 {
                result = Err(format!(
                    "chunk {index} announced out of order (expected {})",
                    progress.chunks.len()
                ));
            } else {
                progress.chunks.push(chunk);
            }
        });
        result
    }

    /// Every chunk was announced: the file's SHA-256 and size.
    pub fn end(&self, sha256: ContentHash, size: u64) {
        self.progress.send_modify(|progress| {
            if progress.end.is_none() {
                progress.end = Some(Ok((sha256, size)));
            }
        });
    }

    /// The upload stopped: followers are told to give up.
    pub fn abandon(&self) {
        self.progress.send_modify(|progress| {
            if progress.end.is_none() {
                progress.end = Some(Err(()));
            }
        });
    }

    /// What is at `index`, waiting for the uploader until it is known.
    pub async fn get(&self, index: u64) -> Result<Followed, String> {
        let mut progress = self.progress.subscribe();
        loop {
            {
                let now = progress.borrow_and_update();
                if let Some(chunk) = now.chunks.get(index as usize) {
                    return Ok(Followed::Chunk(*chunk));
                }
                match now.end {
                    Some(Ok((sha256, size))) => return Ok(Followed::End(sha256, size)),
                    Some(Err(())) => return Err(format!("file {} was abandoned", self.id)),
                    None => {}
                }
            }
            if progress.changed().await.is_err() {
                return Err(format!("file {} is gone", self.id));
            }
        }
    }
}

/// The newest announced files, and a way to wait for the next one.
#[derive(Default)]
pub struct Announcements {
    kept: Mutex<VecDeque<Arc<Announced>>>,
    newest: watch::Sender<u64>,
}

impl Announcements {
    fn kept(&self) -> MutexGuard<'_, VecDeque<Arc<Announced>>> {
        // Every change is one push or pop: consistent even after a panic.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new file starts being announced.
    pub fn open(&self) -> Arc<Announced> {
        let id = *self.newest.borrow() + 1;
        let announced = Arc::new(Announced {
            id,
            progress: watch::channel(Progress::default()).0,
        });
        let mut kept = self.kept();
        kept.push_back(announced.clone());
        while kept.len() > KEPT {
            kept.pop_front();
        }
        drop(kept);
        self.newest.send_replace(id);
        announced
    }

    pub fn get(&self, id: u64) -> Option<Arc<Announced>> {
        self.kept().iter().find(|a| a.id == id).cloned()
    }

    /// The number of the first file announced after `after`, waiting for one.
    pub async fn next(&self, after: u64) -> u64 {
        let mut newest = self.newest.subscribe();
        loop {
            let now = *newest.borrow_and_update();
            if now > after {
                // The oldest still kept after `after`: a follower that fell behind skips
                // to what can still be followed.
                let oldest = self.kept().front().map_or(now, |a| a.id);
                return oldest.max(after + 1);
            }
            if newest.changed().await.is_err() {
                return u64::MAX;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u8) -> ChunkRef {
        ChunkRef {
            sha256: ContentHash::from([i; 32]),
            len: 10,
        }
    }

    #[tokio::test]
    async fn a_follower_learns_each_chunk_as_it_is_announced_and_then_the_end() {
        let all = Arc::new(Announcements::default());
        let waiting = {
            let all = all.clone();
            tokio::spawn(async move { all.next(0).await })
        };
        let file = all.open();
        assert_eq!(waiting.await.expect("next"), file.id);
        file.chunk(0, chunk(1)).expect("in order");
        assert!(file.chunk(2, chunk(2)).is_err(), "a gap is refused");
        assert_eq!(file.get(0).await, Ok(Followed::Chunk(chunk(1))));
        let later = {
            let file = file.clone();
            tokio::spawn(async move { file.get(1).await })
        };
        file.chunk(1, chunk(2)).expect("in order");
        assert_eq!(later.await.expect("get"), Ok(Followed::Chunk(chunk(2))));
        let sha256 = ContentHash::of(b"whole");
        file.end(sha256, 20);
        assert_eq!(file.get(2).await, Ok(Followed::End(sha256, 20)));
        let abandoned = all.open();
        abandoned.abandon();
        assert!(abandoned.get(0).await.is_err());
        for _ in 0..KEPT {
            all.open();
        }
        assert!(all.get(file.id).is_none(), "only the newest are kept");
        assert_eq!(
            all.next(file.id).await,
            file.id + 2,
            "skips to what is kept"
        );
    }
}
