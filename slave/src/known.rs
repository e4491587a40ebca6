//! `KnownCopies`: what this slave knows of each large file it wrote (its manifest, hash and
//! size), for as long as the file is as the slave left it.
//!
//! Why: a new version of a large file is built from the chunks of the current copy, and
//! finding them meant reading the whole copy, cutting it and hashing every chunk first. For
//! 1 MiB changed in a 1 GiB file that was a third of the slave's time (W7 in
//! docs/BENCHMARKS.md). The slave knows that copy's manifest already: it wrote the copy from
//! it. So it keeps, per path, the manifest it applied and the copy's size, modification
//! time and inode right after it was put in place; while those are unchanged, the chunks
//! are where the manifest says, and nothing is read to find them.
//!
//! Trust is bounded twice: an edit that keeps size, mtime and inode (the blind spot of
//! git's index and of the slave's verification alike) is still caught, because the new
//! version is verified whole before it is put in place, and the caller then builds it
//! again from a freshly indexed copy. Nothing is kept across restarts: the first change
//! after one indexes the copy, as before. Memory: one record per large file written.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, MutexGuard};

use filesync_master::hash::ContentHash;
use filesync_master::RelPath;

/// A large file's version as this slave wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The address of its manifest.
    pub manifest: ContentHash,
    /// The SHA-256 of the whole file.
    pub sha256: ContentHash,
    pub size: u64,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    known: Known,
    mtime_ns: i64,
    ino: u64,
}

/// The records, shared by every clone of the slave's `Applier`.
#[derive(Debug, Clone, Default)]
pub struct KnownCopies(Arc<Mutex<HashMap<RelPath, Record>>>);

impl KnownCopies {
    fn records(&self) -> MutexGuard<'_, HashMap<RelPath, Record>> {
        // Every change is one insert or removal: consistent even after a panic.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `path` now holds `known`, as `meta` (its metadata once in place) describes it.
    pub fn remember(&self, path: &RelPath, known: Known, meta: &Metadata) {
        let record = Record {
            known,
            mtime_ns: stamp(meta),
            ino: meta.ino(),
        };
        self.records().insert(path.clone(), record);
    }

    /// What `path` holds, if the file `meta` describes is still the one written.
    pub fn recall(&self, path: &RelPath, meta: &Metadata) -> Option<Known> {
        let records = self.records();
        let record = records.get(path)?;
        let same = meta.is_file()
            && meta.len() == record.known.size
            && meta.ino() == record.ino
            && stamp(meta) == record.mtime_ns;
        same.then_some(record.known)
    }

    /// `path` and everything beneath it are no longer as written.
    pub fn forget(&self, path: &RelPath) {
        self.records().retain(|known, _| !known.starts_with(path));
    }

    /// `from` (and everything beneath it) was renamed to `to`, replacing what was there.
    pub fn moved(&self, from: &RelPath, to: &RelPath) {
        let mut records = self.records();
        records.retain(|known, _| !known.starts_with(to));
        let moving: Vec<RelPath> = records
            .keys()
            .filter(|known| known.starts_with(from))
            .cloned()
            .collect();
        for old in moving {
            if let (Some(record), Some(new)) = (records.remove(&old), old.rebase(from, to)) {
                records.insert(new, record);
            }
        }
    }
}

fn stamp(meta: &Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).expect("path")
    }

    #[test]
    fn a_record_holds_while_the_file_is_untouched_and_follows_renames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("big");
        std::fs::write(&file, b"0123456789").expect("write");
        let meta = std::fs::metadata(&file).expect("meta");
        let known = Known {
            manifest: ContentHash::of(b"manifest"),
            sha256: ContentHash::of(b"0123456789"),
            size: 10,
        };
        let copies = KnownCopies::default();
        copies.remember(&p("d/big"), known, &meta);
        assert_eq!(copies.recall(&p("d/big"), &meta), Some(known));
        assert_eq!(copies.recall(&p("d/other"), &meta), None);

        // The directory renamed: the record goes along; what it replaced is forgotten.
        copies.remember(&p("e/old"), known, &meta);
        copies.moved(&p("d"), &p("e"));
        assert_eq!(copies.recall(&p("e/big"), &meta), Some(known));
        assert_eq!(copies.recall(&p("d/big"), &meta), None);
        assert_eq!(copies.recall(&p("e/old"), &meta), None);

        // Written behind the slave's back: another size, or another modification time.
        std::fs::write(&file, b"01234567890").expect("append");
        let grown = std::fs::metadata(&file).expect("meta");
        assert_eq!(copies.recall(&p("e/big"), &grown), None);
        let touched = std::fs::File::options()
            .write(true)
            .open(&file)
            .expect("open");
        touched.set_len(10).expect("truncate");
        touched
            .set_modified(std::time::SystemTime::UNIX_EPOCH)
            .expect("touch");
        let back = std::fs::metadata(&file).expect("meta");
        assert_eq!(back.len(), 10);
        assert_eq!(copies.recall(&p("e/big"), &back), None);

        copies.forget(&p("e"));
        assert_eq!(copies.recall(&p("e/big"), &meta), None);
    }
}
