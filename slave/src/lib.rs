//! `filesync-slave`: the slave's brain. It turns `Change`s back into a directory, atomically,
//! idempotently, and never outside its root. It knows nothing of the bus: content arrives in
//! pieces through [`StagedFile::write`], from wherever the caller fetched it.
//!
//! # Layout
//!
//! - [`safety`]: resolving a path under the root, refusing to cross symlinks.
//! - [`apply`]: `Applier` and `StagedFile`, the writes themselves.
//! - [`known`]: the manifest of each large file the slave wrote, while the file is as it
//!   was written.
//! - [`rebuild`]: a new version of a file in chunks, from its current copy's chunks and
//!   fetched ones.
//! - [`received`]: content received before its destination is known (`LooseFile`), put in
//!   place by `Applier::adopt` once a change names it and the hash matches.
//! - [`verify`]: the directory as it is (temporary files left by a killed slave removed),
//!   and how it differs from the state applied.

pub mod apply;
pub mod known;
pub mod rebuild;
pub mod received;
pub mod safety;
pub mod verify;

use filesync_master::RelPath;

pub use apply::{Applied, Applier, FileStart, StagedFile};
pub use received::{LooseFile, ReceivedFile};

/// Why a change could not be applied. Every variant names the path and reads as a sentence,
/// because it becomes the `error` field of an `error` event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("refusing {path}: {reason}")]
    Unsafe { path: RelPath, reason: String },
    #[error("invalid change for {path}: {reason}")]
    Invalid { path: RelPath, reason: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: RelPath,
        #[source]
        source: std::io::Error,
    },
    #[error("content of {path} does not match: expected sha256 {expected}, got {actual}")]
    ContentMismatch {
        path: RelPath,
        expected: String,
        actual: String,
    },
    #[error("cannot move {0}: it does not exist")]
    Missing(RelPath),
}

#[cfg(test)]
mod tests {
    use super::*;
    use filesync_master::hash::{sha256_hex, ContentHash};
    use filesync_master::{Change, Entry, Kind};
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn p(s: &str) -> RelPath {
        RelPath::new(s).expect("valid test path")
    }

    fn put(
        applier: &Applier,
        path: &str,
        content: &[u8],
        mode: u32,
    ) -> Result<Applied, ApplyError> {
        let entry = Entry::file(content.len() as u64, ContentHash::of(content), mode);
        match applier.start_file(&p(path), &entry)? {
            FileStart::Done(applied) => Ok(applied),
            FileStart::Stage(mut staged) => {
                staged.write(content)?;
                staged.commit()
            }
        }
    }

    fn listing(root: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = walkdir(root);
        names.sort();
        names
    }

    fn walkdir(root: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in fs::read_dir(root).expect("read_dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().expect("type").is_dir() {
                out.extend(
                    walkdir(&entry.path())
                        .into_iter()
                        .map(|n| format!("{name}/{n}")),
                );
            }
            out.push(name);
        }
        out
    }

    #[test]
    fn put_writes_atomically_with_mode_and_leaves_no_temp() {
        let root = tempfile::tempdir().expect("tempdir");
        let applier = Applier::new(root.path());
        let applied = put(&applier, "d/f.sh", b"#!/bin/sh\n", 0o755).expect("put");
        assert_eq!(applied.sha256, Some(sha256_hex(b"#!/bin/sh\n")));
        let meta = fs::metadata(root.path().join("d/f.sh")).expect("exists");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert_eq!(listing(root.path()), ["d", "d/f.sh"]);
    }

    #[test]
    fn a_corrupt_transfer_is_refused_and_the_old_file_kept() {
        let root = tempfile::tempdir().expect("tempdir");
        let applier = Applier::new(root.path());
        put(&applier, "f", b"old", 0o644).expect("put");
        let entry = Entry::file(3, ContentHash::of(b"new"), 0o644);
        let mut staged = applier.stage_file(&p("f"), &entry).expect("stage");
        staged.write(b"bad").expect("write");
        let err = staged.commit().expect_err("mismatch");
        assert!(matches!(err, ApplyError::ContentMismatch { .. }), "{err}");
        assert_eq!(fs::read(root.path().join("f")).expect("read"), b"old");
        assert_eq!(listing(root.path()), ["f"], "no temporary file left behind");
    }

    #[test]
    fn a_new_file_has_no_name_until_it_is_verified() {
        let root = tempfile::tempdir().expect("tempdir");
        let applier = Applier::new(root.path());
        fs::create_dir(root.path().join("d")).expect("mkdir");
        let content = b"new content";
        let entry = Entry::file(content.len() as u64, ContentHash::of(content), 0o640);
        let mut staged = applier.stage_file(&p("d/f"), &entry).expect("stage");
        staged.write(content).expect("write");
        assert_eq!(
            listing(root.path()),
            ["d"],
            "nothing named while it is written"
        );
        staged.commit().expect("commit");
        assert_eq!(listing(root.path()), ["d", "d/f"]);
        let meta = fs::metadata(root.path().join("d/f")).expect("exists");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(meta.nlink(), 1, "linked once, under its name only");

        // Dropped before commit (an error, a lost bus): nothing is left at all.
        let staged = applier.stage_file(&p("d/g"), &entry).expect("stage");
        drop(staged);
        assert_eq!(listing(root.path()), ["d", "d/f"]);
    }

    #[test]
    fn a_name_taken_while_a_new_file_was_written_is_replaced_atomically() {
        let root = tempfile::tempdir().expect("tempdir");
        let applier = Applier::new(root.path());
        let content = b"from the master";
        let entry = Entry::file(content.len() as u64, ContentHash::of(content), 0o644);
        let mut staged = applier.stage_file(&p("f"), &entry).expect("stage");
        staged.write(content).expect("write");
        fs::write(root.path().join("f"), "written locally meanwhile").expect("write");
        staged.commit().expect("commit");
        assert_eq!(fs::read(root.path().join("f")).expect("read"), content);
        assert_eq!(listing(root.path()), ["f"], "no temporary name left behind");
    }

    #[test]
    fn every_change_is_idempotent() {
        let root = tempfile::tempdir().expect("tempdir");
        let applier = Applier::new(root.path());
        let changes = [
            Change::Put {
                path: p("d"),
                entry: Entry::dir(0o755),
            },
            Change::Put {
                path: p("d/link"),
                entry: Entry::symlink(b"../elsewhere".to_vec()),
            },
            Change::Move {
                from: p("d"),
                to: p("e"),
                kind: Kind::Dir,
            },
            Change::Delete {
                path: p("e/link"),
                kind: Kind::Symlink,
            },
        ];
        for change in &changes {
            applier.apply(change).expect("first time");
            applier.apply(change).expect("second time");
        }
        assert_eq!(listing(root.path()), ["e"]);
        let entry = Entry::file(1, ContentHash::of(b"x"), 0o644);
        put(&applier, "e/x", b"x", 0o644).expect("put");
        let again = applier.start_file(&p("e/x"), &entry).expect("check");
        assert!(matches!(
            again,
            FileStart::Done(Applied {
                bytes_written: 0,
                ..
            })
        ));
    }

    #[test]
    fn every_mode_arrives_exactly_whether_or_not_the_umask_lets_it_through() {
        let root = tempfile::tempdir().expect("tempdir");
        let applier = Applier::new(root.path());
        for mode in [0o644, 0o600, 0o755, 0o777, 0o640, 0o2755, 0o400] {
            let name = format!("m{mode:o}");
            put(&applier, &name, b"content", mode).expect("put");
            let meta = fs::metadata(root.path().join(&name)).expect("stat");
            assert_eq!(meta.permissions().mode() & 0o7777, mode, "{name}");
        }
        let leftovers: Vec<String> = listing(root.path())
            .into_iter()
            .filter(|name| name.contains(".filesync-tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn hostile_changes_write_nothing_outside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let applier = Applier::new(root.path());
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).expect("symlink");
        assert!(put(&applier, "escape/owned", b"x", 0o644).is_err());
        let through_link = Change::Put {
            path: p("escape/dir"),
            entry: Entry::dir(0o755),
        };
        assert!(applier.apply(&through_link).is_err());
        let delete_through = Change::Delete {
            path: p("escape/anything"),
            kind: Kind::File,
        };
        assert!(applier.apply(&delete_through).is_err());
        assert!(fs::read_dir(outside.path()).expect("read").next().is_none());
    }

    #[test]
    fn a_move_over_a_directory_replaces_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let applier = Applier::new(root.path());
        put(&applier, "a/x", b"x", 0o644).expect("put");
        put(&applier, "b/y", b"y", 0o644).expect("put");
        applier
            .apply(&Change::Move {
                from: p("a"),
                to: p("b"),
                kind: Kind::Dir,
            })
            .expect("move");
        assert_eq!(listing(root.path()), ["b", "b/x"]);
        let missing = Change::Move {
            from: p("nope"),
            to: p("nowhere"),
            kind: Kind::File,
        };
        assert!(matches!(
            applier.apply(&missing),
            Err(ApplyError::Missing(_))
        ));
    }
}
