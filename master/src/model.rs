//! The change vocabulary (`Kind`, `Entry`, `Change`) and `Model`, the state a sequence of
//! changes implies.
//!
//! `Model::apply` is the single definition of what a change means. The master keeps its view
//! of the directory in a `Model`; the checker replays notifies and consumes into `Model`s and
//! compares them; the slave applies the same changes to a real directory.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::hash::ContentHash;
use crate::RelPath;

/// What sort of entry a path names. Other file types (FIFOs, sockets, devices) are not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    /// What `meta` (a `symlink_metadata`) describes; `None` for what is not synced.
    pub fn of(meta: &Metadata) -> Option<Kind> {
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            Some(Kind::Symlink)
        } else if file_type.is_dir() {
            Some(Kind::Dir)
        } else if file_type.is_file() {
            Some(Kind::File)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "file" => Some(Kind::File),
            "dir" => Some(Kind::Dir),
            "symlink" => Some(Kind::Symlink),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Local facts the master uses to tell "unchanged" without rehashing (with the entry's size).
/// Never leaves the master and never takes part in equality. Kept small: the master holds
/// one per file (W6: 100,000 files in under 50 MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Modification time in nanoseconds since the epoch (saturating beyond the years
    /// 1678-2262, where only size and inode tell changes apart).
    pub mtime_ns: i64,
    pub ino: u64,
}

/// What the synced tree holds at one path.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// Byte length (files only; 0 otherwise).
    pub size: u64,
    /// Lowercase hex SHA-256 of the content (files only).
    pub sha256: Option<ContentHash>,
    /// Unix permission bits (`st_mode & 0o7777`); 0 for symlinks, whose mode Linux ignores.
    pub mode: u32,
    /// The link's target, as stored (symlinks only). Bytes, since targets need not be UTF-8.
    pub target: Option<Box<[u8]>>,
    pub stamp: Option<Stamp>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.size == other.size
            && self.sha256 == other.sha256
            && self.mode == other.mode
            && self.target == other.target
    }
}

impl Eq for Entry {}

impl Entry {
    pub fn dir(mode: u32) -> Entry {
        Entry {
            kind: Kind::Dir,
            size: 0,
            sha256: None,
            mode,
            target: None,
            stamp: None,
        }
    }

    pub fn file(size: u64, sha256: ContentHash, mode: u32) -> Entry {
        Entry {
            kind: Kind::File,
            size,
            sha256: Some(sha256),
            mode,
            target: None,
            stamp: None,
        }
    }

    /// What is at `full` (`meta` its `symlink_metadata`) as the log records it, the one
    /// reading of a directory entry that the checker and the slave's scan share; a file's
    /// content hash comes from `content` (hashing it, or knowing it from an earlier look).
    /// `None` for what is not synced.
    pub fn on_disk(
        full: &Path,
        meta: &Metadata,
        content: impl FnOnce() -> io::Result<ContentHash>,
    ) -> io::Result<Option<Entry>> {
        Ok(match Kind::of(meta) {
            Some(Kind::Symlink) => Some(Entry::symlink(
                fs::read_link(full)?.as_os_str().as_bytes().to_vec(),
            )),
            Some(Kind::Dir) => Some(Entry::dir(meta.permissions().mode() & 0o7777)),
            Some(Kind::File) => Some(Entry::file(meta.len(), content()?, meta.mode() & 0o7777)),
            None => None,
        })
    }

    pub fn symlink(target: Vec<u8>) -> Entry {
        Entry {
            kind: Kind::Symlink,
            size: 0,
            sha256: None,
            mode: 0,
            target: Some(target.into_boxed_slice()),
            stamp: None,
        }
    }
}

/// One change to the synced tree, as the master observes it and the slave applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace `path` with `entry` (a file's content is fetched by `entry.sha256`).
    Put { path: RelPath, entry: Entry },
    /// Remove `path` and, for a directory, everything beneath it.
    Delete { path: RelPath, kind: Kind },
    /// Rename `from` to `to`, with everything beneath it; replaces whatever was at `to`.
    Move {
        from: RelPath,
        to: RelPath,
        kind: Kind,
    },
}

impl Change {
    pub fn op(&self) -> &'static str {
        match self {
            Change::Put { .. } => "put",
            Change::Delete { .. } => "delete",
            Change::Move { .. } => "move",
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Change::Put { entry, .. } => entry.kind,
            Change::Delete { kind, .. } | Change::Move { kind, .. } => *kind,
        }
    }

    /// The paths this change touches.
    pub fn paths(&self) -> Vec<&RelPath> {
        match self {
            Change::Put { path, .. } | Change::Delete { path, .. } => vec![path],
            Change::Move { from, to, .. } => vec![from, to],
        }
    }

    /// True when `self` and `other` touch a common path, one's path lying at, above or
    /// below one of the other's: applying one may change what the other finds.
    pub fn overlaps(&self, other: &Change) -> bool {
        self.paths().iter().any(|mine| {
            other
                .paths()
                .iter()
                .any(|theirs| mine.starts_with(theirs) || theirs.starts_with(mine))
        })
    }

    /// True when applying `self` after `earlier` decides, by itself, the state of every path
    /// `earlier` touched: whatever `earlier` did or failed to do there no longer shows. A
    /// put decides its path (and, when it is not a directory, everything that was beneath
    /// it); a delete decides its path and everything beneath; a move decides its
    /// destination's subtree but not its source's, whose state it carries along.
    pub fn covers(&self, earlier: &Change) -> bool {
        earlier.paths().iter().all(|path| match self {
            Change::Put { path: put, entry } => {
                *path == put || (entry.kind != Kind::Dir && path.starts_with(put))
            }
            Change::Delete { path: deleted, .. } => path.starts_with(deleted),
            Change::Move { to, .. } => path.starts_with(to),
        })
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Put { path, entry } => write!(f, "put {} {path}", entry.kind),
            Change::Delete { path, kind } => write!(f, "delete {kind} {path}"),
            Change::Move { from, to, kind } => write!(f, "move {kind} {from} -> {to}"),
        }
    }
}

/// Why a change cannot apply to a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{0} is not in the tree")]
    Missing(RelPath),
    #[error("the parent of {0} is not a directory in the tree")]
    NoParent(RelPath),
    #[error("cannot move {0} into itself")]
    IntoItself(RelPath),
    #[error("{path} is a {actual}, not a {claimed}")]
    WrongKind {
        path: RelPath,
        claimed: Kind,
        actual: Kind,
    },
}

/// The state of a synced tree: every path and what it holds, ordered so that a directory's
/// descendants form one contiguous range after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    entries: BTreeMap<RelPath, Entry>,
}

impl Model {
    pub fn new() -> Model {
        Model::default()
    }

    pub fn get(&self, path: &RelPath) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn get_mut(&mut self, path: &RelPath) -> Option<&mut Entry> {
        self.entries.get_mut(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RelPath, &Entry)> {
        self.entries.iter()
    }

    /// `path` itself (if present) and everything beneath it, in order. Siblings that sort
    /// between them (`a-b` and `a.txt` come after `a` but before `a/x`) are not included.
    pub fn subtree<'a>(
        &'a self,
        path: &'a RelPath,
    ) -> impl Iterator<Item = (&'a RelPath, &'a Entry)> {
        let (low, high) = path.descendant_bounds();
        self.entries
            .get_key_value(path)
            .into_iter()
            .chain(self.entries.range(low..high))
    }

    /// Applies a change, checking that it makes sense against the current state.
    pub fn apply(&mut self, change: &Change) -> Result<(), ModelError> {
        match change {
            Change::Put { path, entry } => {
                self.require_parent(path)?;
                self.put(path.clone(), entry.clone());
            }
            Change::Delete { path, kind } => {
                self.require_kind(path, *kind)?;
                self.remove_subtree(path);
            }
            Change::Move { from, to, kind } => {
                if to.starts_with(from) && to != from {
                    return Err(ModelError::IntoItself(from.clone()));
                }
                self.require_kind(from, *kind)?;
                self.require_parent(to)?;
                self.rename(from, to);
            }
        }
        Ok(())
    }

    /// Inserts or replaces one entry; replacing a directory with anything else drops its
    /// descendants, as the file system would have had to.
    pub fn put(&mut self, path: RelPath, entry: Entry) {
        let replaces_dir = self
            .entries
            .get(&path)
            .is_some_and(|old| old.kind == Kind::Dir && entry.kind != Kind::Dir);
        if replaces_dir {
            self.remove_subtree(&path);
        }
        self.entries.insert(path, entry);
    }

    /// Removes `path` and its descendants; returns what was removed, in order.
    pub fn remove_subtree(&mut self, path: &RelPath) -> Vec<(RelPath, Entry)> {
        let doomed: Vec<RelPath> = self.subtree(path).map(|(p, _)| p.clone()).collect();
        doomed
            .into_iter()
            .filter_map(|p| self.entries.remove_entry(&p))
            .collect()
    }

    /// Re-keys `from` and its descendants under `to`, replacing whatever was at `to`.
    pub fn rename(&mut self, from: &RelPath, to: &RelPath) {
        if from == to {
            return;
        }
        let moving = self.remove_subtree(from);
        self.remove_subtree(to);
        for (path, entry) in moving {
            if let Some(new_path) = path.rebase(from, to) {
                self.entries.insert(new_path, entry);
            }
        }
    }

    /// `path` exists and is what the change says it is: a delete or move that names the
    /// wrong kind would remove something its sender never saw.
    fn require_kind(&self, path: &RelPath, claimed: Kind) -> Result<(), ModelError> {
        match self.entries.get(path) {
            None => Err(ModelError::Missing(path.clone())),
            Some(entry) if entry.kind != claimed => Err(ModelError::WrongKind {
                path: path.clone(),
                claimed,
                actual: entry.kind,
            }),
            Some(_) => Ok(()),
        }
    }

    fn require_parent(&self, path: &RelPath) -> Result<(), ModelError> {
        match path.parent() {
            None => Ok(()),
            Some(parent) => match self.entries.get(&parent) {
                Some(entry) if entry.kind == Kind::Dir => Ok(()),
                _ => Err(ModelError::NoParent(path.clone())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).expect("valid test path")
    }

    /// A content hash standing for `label` (these tests only need distinct contents).
    fn h(label: &str) -> ContentHash {
        ContentHash::of(label.as_bytes())
    }

    fn put_file(model: &mut Model, path: &str, sha: &str) {
        model
            .apply(&Change::Put {
                path: p(path),
                entry: Entry::file(1, h(sha), 0o644),
            })
            .expect("put applies");
    }

    #[test]
    fn moving_a_directory_carries_its_subtree() {
        let mut model = Model::new();
        model
            .apply(&Change::Put {
                path: p("a"),
                entry: Entry::dir(0o755),
            })
            .expect("dir");
        put_file(&mut model, "a/x", "1");
        put_file(&mut model, "ab", "2");
        model
            .apply(&Change::Move {
                from: p("a"),
                to: p("b"),
                kind: Kind::Dir,
            })
            .expect("move");
        let paths: Vec<String> = model.iter().map(|(p, _)| p.lossy()).collect();
        assert_eq!(paths, ["ab", "b", "b/x"]);
    }

    #[test]
    fn rejects_changes_that_do_not_fit() {
        let mut model = Model::new();
        let orphan = Change::Put {
            path: p("no/parent"),
            entry: Entry::file(1, h("1"), 0o644),
        };
        assert_eq!(
            model.apply(&orphan),
            Err(ModelError::NoParent(p("no/parent")))
        );
        let ghost = Change::Delete {
            path: p("ghost"),
            kind: Kind::File,
        };
        assert_eq!(model.apply(&ghost), Err(ModelError::Missing(p("ghost"))));
        model
            .apply(&Change::Put {
                path: p("d"),
                entry: Entry::dir(0o755),
            })
            .expect("dir");
        let into_itself = Change::Move {
            from: p("d"),
            to: p("d/e"),
            kind: Kind::Dir,
        };
        assert_eq!(
            model.apply(&into_itself),
            Err(ModelError::IntoItself(p("d")))
        );
    }

    #[test]
    fn a_subtree_skips_siblings_that_sort_inside_it() {
        // In byte order `a-b` and `a.txt` sit between `a` and `a/x`.
        let mut model = Model::new();
        model.put(p("a"), Entry::dir(0o755));
        model.put(p("a-b"), Entry::file(1, h("1"), 0o644));
        model.put(p("a.txt"), Entry::file(1, h("2"), 0o644));
        model.put(p("a/x"), Entry::file(1, h("3"), 0o644));
        model.put(p("a/y/z"), Entry::file(1, h("4"), 0o644));
        let subtree: Vec<String> = model.subtree(&p("a")).map(|(p, _)| p.lossy()).collect();
        assert_eq!(subtree, ["a", "a/x", "a/y/z"]);
        model.rename(&p("a"), &p("m"));
        let paths: Vec<String> = model.iter().map(|(p, _)| p.lossy()).collect();
        assert_eq!(paths, ["a-b", "a.txt", "m", "m/x", "m/y/z"]);
        model.remove_subtree(&p("m"));
        assert_eq!(model.len(), 2);
    }

    #[test]
    fn replacing_a_dir_with_a_file_drops_its_children() {
        let mut model = Model::new();
        model.put(p("d"), Entry::dir(0o755));
        model.put(p("d/x"), Entry::file(1, h("1"), 0o644));
        model.put(p("d"), Entry::file(1, h("2"), 0o644));
        assert_eq!(model.len(), 1);
    }
}
