//! `WriteBehind`: a slave's staged file written one piece behind whoever fills it. A large
//! file's piece is written (and handed to the file's hasher thread) on a blocking thread,
//! while the caller gathers the next piece: receiving it from the bus, or reading chunks
//! from the slave's current copy of the file on the runtime's thread. Gathering, writing
//! and hashing then overlap; waiting for each write before gathering more cost a chunked
//! rebuild of a 1 GiB file a third of its time (W7, docs/BENCHMARKS.md).
//!
//! At most one piece is being written while the next is gathered, so memory stays at two
//! pieces whatever the file's size. A small file's one piece is written inline: a thread
//! hop would cost more than the write.

use filesync_master::RelPath;
use filesync_slave::{ApplyError, StagedFile};
use tokio::task::JoinHandle;

use crate::bus::protocol::PIECE_SIZE;

/// A staged file and the write under way into it, if any.
pub(super) struct WriteBehind {
    idle: Option<Box<StagedFile>>,
    busy: Option<JoinHandle<Result<Box<StagedFile>, ApplyError>>>,
    path: RelPath,
    /// The file's size as announced: larger ones are written off the runtime's thread.
    size: u64,
    /// Bytes handed over so far.
    written: u64,
}

impl WriteBehind {
    pub(super) fn new(staged: Box<StagedFile>, path: &RelPath, size: u64) -> WriteBehind {
        WriteBehind {
            idle: Some(staged),
            busy: None,
            path: path.clone(),
            size,
            written: 0,
        }
    }

    /// Bytes handed over so far (written, or being written).
    pub(super) fn written(&self) -> u64 {
        self.written
    }

    /// Hands `piece` over: waits for the previous write to end, then starts this one.
    pub(super) async fn write(&mut self, piece: Vec<u8>) -> Result<(), ApplyError> {
        let mut staged = self.settle().await?;
        self.written += piece.len() as u64;
        if self.size <= PIECE_SIZE as u64 {
            staged.write_owned(piece)?;
            self.idle = Some(staged);
            return Ok(());
        }
        self.busy = Some(tokio::task::spawn_blocking(move || {
            staged.write_owned(piece).map(|()| staged)
        }));
        Ok(())
    }

    /// The staged file once everything handed over is written, for the caller to commit.
    pub(super) async fn finish(mut self) -> Result<Box<StagedFile>, ApplyError> {
        self.settle().await
    }

    /// Waits for the write under way; the staged file, ready for the next.
    async fn settle(&mut self) -> Result<Box<StagedFile>, ApplyError> {
        if let Some(staged) = self.idle.take() {
            return Ok(staged);
        }
        let busy = self.busy.take().ok_or_else(|| ApplyError::Invalid {
            path: self.path.clone(),
            reason: "an earlier write into the staged file failed".into(),
        })?;
        busy.await.unwrap_or_else(|join_error| {
            // Only a panic in the write (a bug) or a runtime shutting down gets here.
            Err(ApplyError::Io {
                action: "write",
                path: self.path.clone(),
                source: std::io::Error::other(join_error.to_string()),
            })
        })
    }
}
