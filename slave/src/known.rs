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
//! again from a freshly indexed copy. The records are saved in `SDIR/known` when they
//! changed, each time the slave records its position and when it stops, and read when it
//! starts; a slave killed keeps what was saved with its last position (a record is checked
//! against the file before it is trusted, so one older than the file is merely unused).
//! Memory: one record per large file.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::io::{self, BufRead, BufReader, Write};
use std::ops::Bound::Excluded;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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

/// The records, shared by every clone of the slave's `Applier`, and the file they are
/// kept in (none: kept in memory only).
#[derive(Debug, Clone, Default)]
pub struct KnownCopies(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    file: Option<PathBuf>,
    records: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    by_path: BTreeMap<RelPath, Record>,
    /// Changed since last saved.
    unsaved: bool,
}

impl KnownCopies {
    fn records(&self) -> MutexGuard<'_, Records> {
        // Every change is one insert or removal and a flag: consistent even after a panic.
        self.0.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `path` now holds `known`, as `meta` (its metadata once in place) describes it.
    pub fn remember(&self, path: &RelPath, known: Known, meta: &Metadata) {
        let record = Record {
            known,
            mtime_ns: stamp(meta),
            ino: meta.ino(),
        };
        let mut records = self.records();
        records.by_path.insert(path.clone(), record);
        records.unsaved = true;
    }

    /// What `path` holds, if the file `meta` describes is still the one written.
    pub fn recall(&self, path: &RelPath, meta: &Metadata) -> Option<Known> {
        let records = self.records();
        let record = records.by_path.get(path)?;
        let same = meta.is_file()
            && meta.len() == record.known.size
            && meta.ino() == record.ino
            && stamp(meta) == record.mtime_ns;
        same.then_some(record.known)
    }

    /// `path` and everything beneath it are no longer as written.
    pub fn forget(&self, path: &RelPath) {
        let mut records = self.records();
        for gone in subtree(&records.by_path, path) {
            records.by_path.remove(&gone);
            records.unsaved = true;
        }
    }

    /// `from` (and everything beneath it) was renamed to `to`, replacing what was there.
    pub fn moved(&self, from: &RelPath, to: &RelPath) {
        let mut records = self.records();
        for gone in subtree(&records.by_path, to) {
            records.by_path.remove(&gone);
            records.unsaved = true;
        }
        for old in subtree(&records.by_path, from) {
            records.unsaved = true;
            let record = records.by_path.remove(&old);
            if let (Some(record), Some(new)) = (record, old.rebase(from, to)) {
                records.by_path.insert(new, record);
            }
        }
    }

    /// The records saved in `file` (none when it is missing or unreadable; a damaged line
    /// is skipped: a record only ever saves reading a copy), kept in `file` from now on.
    pub fn load(file: &Path) -> KnownCopies {
        let mut by_path = BTreeMap::new();
        if let Ok(opened) = std::fs::File::open(file) {
            for line in BufReader::new(opened).lines() {
                let Ok(line) = line else { break };
                if let Some((path, record)) = parse(&line) {
                    by_path.insert(path, record);
                }
            }
        }
        KnownCopies(Arc::new(Shared {
            file: Some(file.to_path_buf()),
            records: Mutex::new(Records {
                by_path,
                unsaved: false,
            }),
        }))
    }

    /// Writes the records to their file if they changed since last written (through a
    /// temporary file beside it), one line each: `manifest sha256 size mtime_ns ino
    /// hex(path)`.
    pub fn save_changes(&self) -> io::Result<()> {
        let Some(file) = &self.0.file else {
            return Ok(());
        };
        let mut text = Vec::new();
        {
            let mut records = self.records();
            if !records.unsaved {
                return Ok(());
            }
            for (path, record) in records.by_path.iter() {
                let Record {
                    known,
                    mtime_ns,
                    ino,
                } = record;
                writeln!(
                    text,
                    "{} {} {} {mtime_ns} {ino} {}",
                    known.manifest.to_hex(),
                    known.sha256.to_hex(),
                    known.size,
                    hex::encode(path.as_bytes())
                )?;
            }
            records.unsaved = false;
        }
        let temp = file.with_extension("tmp");
        let written = std::fs::write(&temp, text).and_then(|()| std::fs::rename(temp, file));
        if written.is_err() {
            self.records().unsaved = true;
        }
        written
    }
}

/// One line of a saved file.
fn parse(line: &str) -> Option<(RelPath, Record)> {
    let mut fields = line.split(' ');
    let manifest = ContentHash::parse_hex(fields.next()?)?;
    let sha256 = ContentHash::parse_hex(fields.next()?)?;
    let size = fields.next()?.parse().ok()?;
    let mtime_ns = fields.next()?.parse().ok()?;
    let ino = fields.next()?.parse().ok()?;
    let path = RelPath::from_bytes(&hex::decode(fields.next()?).ok()?).ok()?;
    let known = Known {
        manifest,
        sha256,
        size,
    };
    Some((
        path,
        Record {
            known,
            mtime_ns,
            ino,
        },
    ))
}

/// The recorded paths at `path` or beneath it, found without going through the others
/// (every change of the slave's directory asks).
fn subtree(records: &BTreeMap<RelPath, Record>, path: &RelPath) -> Vec<RelPath> {
    // Most slaves hold no large file, and every change they apply asks.
    if records.is_empty() {
        return Vec::new();
    }
    let mut found: Vec<RelPath> = records
        .contains_key(path)
        .then(|| path.clone())
        .into_iter()
        .collect();
    // What lies beneath `path` sorts after it and before `path` + "0" ('/' comes just
    // before '0'), among names that merely share its beginning (`a.txt` beside `a/`).
    let mut end = path.as_bytes().to_vec();
    end.push(b'0');
    if let Ok(end) = RelPath::from_bytes(&end) {
        found.extend(
            records
                .range::<RelPath, _>((Excluded(path), Excluded(&end)))
                .map(|(known, _)| known)
                .filter(|known| known.starts_with(path))
                .cloned(),
        );
    }
    found
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

        // Forgetting a directory leaves its neighbours that merely share its beginning.
        copies.remember(&p("e.txt"), known, &meta);
        copies.remember(&p("e-2/big"), known, &meta);
        copies.forget(&p("e"));
        assert_eq!(copies.recall(&p("e/big"), &meta), None);
        assert_eq!(copies.recall(&p("e.txt"), &meta), Some(known));
        assert_eq!(copies.recall(&p("e-2/big"), &meta), Some(known));

        // Saved and read again (a damaged line skipped), as a restarted slave does; saved
        // only when something changed.
        let saved = dir.path().join("known");
        let kept = KnownCopies::load(&saved);
        kept.save_changes().expect("nothing to save");
        assert!(!saved.exists(), "nothing changed, nothing written");
        for path in ["e.txt", "e-2/big"] {
            kept.remember(&p(path), known, &meta);
        }
        kept.save_changes().expect("save");
        let mut text = std::fs::read_to_string(&saved).expect("read");
        text.push_str("not a record\n");
        std::fs::write(&saved, text).expect("damage");
        let again = KnownCopies::load(&saved);
        assert_eq!(again.recall(&p("e.txt"), &meta), Some(known));
        assert_eq!(again.recall(&p("e-2/big"), &meta), Some(known));
        assert_eq!(again.recall(&p("e/big"), &meta), None);
        let absent = KnownCopies::load(&dir.path().join("absent"));
        assert_eq!(absent.recall(&p("e.txt"), &meta), None);
    }
}
