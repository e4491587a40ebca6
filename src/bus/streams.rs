//! `Streams`: uploads in progress, readable while they are still being written.
//!
//! Why: a large file reached a slave only after the master had uploaded all of it and
//! published its notify, so the bus writing the content and the slave writing it happened
//! one after the other. On this project's machines two writes of 1 GiB take 5.0 s in
//! sequence and 2.6 s side by side (W3, docs/BENCHMARKS.md). A slave with nothing else to do
//! may instead follow an upload as it arrives, into a file of its own, and put that file in
//! place when the notify comes, once the hash matches. Content is not an event: nothing is
//! applied before its notify is delivered, so the log stays the one account of what happened.
//!
//! Every upload in pieces gets a stream number. `next_open` tells a follower about the next
//! one; `read` returns what has been written so far (waiting for more), and says once the
//! upload was committed (with its address) or abandoned. The newest [`KEPT`] streams are
//! remembered; each holds a read handle on its upload's file, which stays readable after the
//! file is renamed into the store or removed.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// How many streams are remembered (each keeps a file handle open).
pub const KEPT: usize = 8;

/// How far an upload has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Open { written: u64 },
    Committed { written: u64, sha256: String },
    Abandoned,
}

/// One upload, as followers see it.
pub struct Stream {
    pub id: u64,
    file: File,
    progress: watch::Sender<Progress>,
}

/// A piece of a stream, and what is known of its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPiece {
    pub data: Vec<u8>,
    /// The upload's address, once it was committed.
    pub sha256: Option<String>,
    /// Committed, and this piece reaches its end.
    pub eof: bool,
}

impl Stream {
    /// The uploader wrote up to `written` bytes.
    pub fn wrote(&self, written: u64) {
        self.progress.send_replace(Progress::Open { written });
    }

    /// The upload was verified and stored under `sha256`.
    pub fn committed(&self, written: u64, sha256: &str) {
        self.progress.send_replace(Progress::Committed {
            written,
            sha256: sha256.to_owned(),
        });
    }

    /// The upload was thrown away (aborted, refused, or its connection closed).
    pub fn abandoned(&self) {
        self.progress.send_if_modified(|progress| {
            let open = matches!(progress, Progress::Open { .. });
            if open {
                *progress = Progress::Abandoned;
            }
            open
        });
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Up to `len` bytes from `offset`, waiting until some exist past `offset` or the upload
    /// ended. An abandoned upload is an error: what was sent of it means nothing.
    pub async fn read(&self, offset: u64, len: u64) -> Result<StreamPiece, String> {
        let mut progress = self.progress.subscribe();
        loop {
            let now = progress.borrow_and_update().clone();
            let (written, sha256) = match now {
                Progress::Abandoned => return Err(format!("upload {} was abandoned", self.id)),
                Progress::Open { written } if written <= offset => {
                    if progress.changed().await.is_err() {
                        return Err(format!("upload {} is gone", self.id));
                    }
                    continue;
                }
                Progress::Open { written } => (written, None),
                Progress::Committed { written, sha256 } => (written, Some(sha256)),
            };
            let start = offset.min(written);
            let want = len.min(written - start);
            let mut data = vec![0u8; want as usize];
            self.file
                .read_exact_at(&mut data, start)
                .map_err(|err| format!("cannot read upload {}: {err}", self.id))?;
            let eof = sha256.is_some() && start + want >= written;
            return Ok(StreamPiece { data, sha256, eof });
        }
    }
}

/// The streams the bus remembers, newest last.
pub struct Streams {
    kept: Mutex<Kept>,
    newest: watch::Sender<u64>,
}

#[derive(Default)]
struct Kept {
    next: u64,
    streams: VecDeque<Arc<Stream>>,
}

impl Default for Streams {
    fn default() -> Streams {
        Streams {
            kept: Mutex::new(Kept::default()),
            newest: watch::channel(0).0,
        }
    }
}

impl Streams {
    fn kept(&self) -> MutexGuard<'_, Kept> {
        // Every change below is one push or pop: consistent even if a holder panicked.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Announces an upload whose content is being written to `temp`.
    pub fn open(&self, temp: &Path) -> io::Result<Arc<Stream>> {
        let file = File::open(temp)?;
        let stream = {
            let mut kept = self.kept();
            kept.next += 1;
            let stream = Arc::new(Stream {
                id: kept.next,
                file,
                progress: watch::channel(Progress::Open { written: 0 }).0,
            });
            kept.streams.push_back(stream.clone());
            while kept.streams.len() > KEPT {
                kept.streams.pop_front();
            }
            stream
        };
        self.newest.send_replace(stream.id);
        Ok(stream)
    }

    pub fn get(&self, id: u64) -> Option<Arc<Stream>> {
        self.kept().streams.iter().find(|s| s.id == id).cloned()
    }

    /// The first stream after `after` that is still being uploaded, waiting for one.
    pub async fn next_open(&self, after: u64) -> u64 {
        let mut newest = self.newest.subscribe();
        loop {
            newest.borrow_and_update();
            let found = self.kept().streams.iter().find_map(|s| {
                (s.id > after && matches!(s.progress(), Progress::Open { .. })).then_some(s.id)
            });
            if let Some(id) = found {
                return id;
            }
            if newest.changed().await.is_err() {
                // Never: `self` holds the sender.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    #[tokio::test]
    async fn a_follower_reads_while_the_upload_is_written_and_learns_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let temp = dir.path().join("upload");
        let mut writer = File::create(&temp).expect("create");
        let streams = Arc::new(Streams::default());
        let stream = streams.open(&temp).expect("open");
        assert_eq!(streams.next_open(0).await, stream.id);

        // Nothing written yet: the read waits until something is.
        let follower = {
            let stream = stream.clone();
            tokio::spawn(async move { stream.read(0, 100).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!follower.is_finished());
        writer.write_all(b"hello ").expect("write");
        stream.wrote(6);
        let piece = follower.await.expect("join").expect("read");
        assert_eq!(
            piece,
            StreamPiece {
                data: b"hello ".to_vec(),
                sha256: None,
                eof: false
            }
        );

        writer.write_all(b"world").expect("write");
        stream.committed(11, "abc");
        let piece = stream.read(6, 100).await.expect("read");
        assert_eq!(piece.data, b"world");
        assert_eq!(piece.sha256.as_deref(), Some("abc"));
        assert!(piece.eof);
        // Readable after the file is gone (renamed into the store, or a duplicate removed).
        std::fs::remove_file(&temp).expect("remove");
        assert_eq!(stream.read(0, 5).await.expect("read").data, b"hello");
        // A committed stream is no longer announced as open.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), streams.next_open(0))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_abandoned_upload_fails_its_followers_and_only_the_newest_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let streams = Streams::default();
        let mut ids = Vec::new();
        for n in 0..KEPT + 2 {
            let temp = dir.path().join(format!("u{n}"));
            File::create(&temp).expect("create");
            ids.push(streams.open(&temp).expect("open").id);
        }
        assert!(streams.get(ids[0]).is_none(), "the oldest are forgotten");
        let newest = streams.get(ids[KEPT + 1]).expect("kept");
        newest.abandoned();
        assert!(newest.read(0, 10).await.is_err());
        // Abandoning after a commit changes nothing.
        let committed = streams.get(ids[KEPT]).expect("kept");
        committed.committed(0, "abc");
        committed.abandoned();
        assert!(matches!(committed.progress(), Progress::Committed { .. }));
    }
}
