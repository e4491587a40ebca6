//! `PathIndex`: which paths the log's notifies imply, and of what kind, in a few dozen bytes
//! a path, so that a bus can refuse a notify that does not apply.
//!
//! `Model::apply` is the definition of what a change means; this is a compact twin that
//! keeps only what deciding "does it apply" needs (the tree's shape and each entry's kind,
//! not sizes, hashes, modes or names). A property test holds the two to the same answers.
//!
//! A directory is a node whose children are keyed by a keyed SipHash of their name (the
//! process's random `RandomState`), not the name itself: a master hosting its bus already
//! keeps every name once, and this must not double its memory (issue 12: W6, 100,000 files,
//! within 10 %). Two names of one directory colliding on 64 random-keyed bits would make
//! them one entry here; with 100,000 names in one directory the chance is about 1 in 3.7
//! billion, and a peer cannot aim for it without the process's keys. Moving a directory
//! re-links one node, whatever it holds.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use filesync_master::model::ModelError;
use filesync_master::{Change, Kind, RelPath};

/// The hashes are already uniformly spread: the children maps use them as they are.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in so it stays correct regardless.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Children = HashMap<u64, Slot, BuildHasherDefault<PassThrough>>;

/// One child: a file, a symlink, or a directory node's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot(u32);

impl Slot {
    const FILE: Slot = Slot(u32::MAX);
    const SYMLINK: Slot = Slot(u32::MAX - 1);

    fn kind(self) -> Kind {
        match self {
            Slot::FILE => Kind::File,
            Slot::SYMLINK => Kind::Symlink,
            _ => Kind::Dir,
        }
    }

    fn dir(self) -> Option<usize> {
        (self.kind() == Kind::Dir).then_some(self.0 as usize)
    }
}

/// The shape of a synced tree: see the module docs.
#[derive(Clone)]
pub struct PathIndex {
    /// Directory nodes; 0 is the root. Freed nodes are reused.
    dirs: Vec<Children>,
    free: Vec<usize>,
    keys: RandomState,
    len: usize,
}

impl Default for PathIndex {
    fn default() -> PathIndex {
        PathIndex {
            dirs: vec![Children::default()],
            free: Vec::new(),
            keys: RandomState::new(),
            len: 0,
        }
    }
}

impl PathIndex {
    pub fn new() -> PathIndex {
        PathIndex::default()
    }

    /// How many paths the tree holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What `path` is, if it exists.
    pub fn kind(&self, path: &RelPath) -> Option<Kind> {
        let (parent, key) = self.locate(path)?;
        self.dirs[parent].get(&key).map(|slot| slot.kind())
    }

    /// `Model::apply`'s verdict on `change`, without applying it.
    pub fn check(&self, change: &Change) -> Result<(), ModelError> {
        match change {
            Change::Put { path, .. } => self
                .locate(path)
                .map(|_| ())
                .ok_or_else(|| ModelError::NoParent(path.clone())),
            Change::Delete { path, kind } => self.require_kind(path, *kind).map(|_| ()),
            Change::Move { from, to, kind } => {
                if to.starts_with(from) && to != from {
                    return Err(ModelError::IntoItself(from.clone()));
                }
                self.require_kind(from, *kind)?;
                self.locate(to)
                    .map(|_| ())
                    .ok_or_else(|| ModelError::NoParent(to.clone()))
            }
        }
    }

    /// Applies `change` if it fits the tree, with exactly `Model::apply`'s verdicts.
    pub fn apply(&mut self, change: &Change) -> Result<(), ModelError> {
        self.check(change)?;
        match change {
            Change::Put { path, entry } => {
                let Some((parent, key)) = self.locate(path) else {
                    return Ok(());
                };
                let old = self.dirs[parent].get(&key).copied();
                let slot = match (old, entry.kind) {
                    (Some(old), Kind::Dir) if old.kind() == Kind::Dir => return Ok(()),
                    (_, Kind::Dir) => Slot(self.new_dir()),
                    (_, Kind::File) => Slot::FILE,
                    (_, Kind::Symlink) => Slot::SYMLINK,
                };
                if let Some(old) = self.dirs[parent].insert(key, slot) {
                    self.release(old);
                }
                self.len += 1;
            }
            Change::Delete { path, .. } => {
                if let Some((parent, key)) = self.locate(path) {
                    if let Some(old) = self.dirs[parent].remove(&key) {
                        self.release(old);
                    }
                }
            }
            Change::Move { from, to, .. } => {
                if from == to {
                    return Ok(());
                }
                let (Some((from_parent, from_key)), Some((to_parent, to_key))) =
                    (self.locate(from), self.locate(to))
                else {
                    return Ok(());
                };
                // Checked above: `from` exists, and `to`'s parent is not beneath it.
                if let Some(moving) = self.dirs[from_parent].remove(&from_key) {
                    if let Some(replaced) = self.dirs[to_parent].insert(to_key, moving) {
                        self.release(replaced);
                    }
                }
            }
        }
        Ok(())
    }

    /// The directory node holding `path` and `path`'s key in it; `None` when an ancestor
    /// is missing or is not a directory.
    fn locate(&self, path: &RelPath) -> Option<(usize, u64)> {
        let mut names = path.components().peekable();
        let mut dir = 0;
        while let Some(name) = names.next() {
            let key = self.keys.hash_one(name);
            if names.peek().is_none() {
                return Some((dir, key));
            }
            dir = self.dirs[dir].get(&key)?.dir()?;
        }
        None
    }

    fn require_kind(&self, path: &RelPath, claimed: Kind) -> Result<(usize, u64), ModelError> {
        let located = self.locate(path);
        let found = located.and_then(|(parent, key)| self.dirs[parent].get(&key));
        match (located, found) {
            (Some(located), Some(slot)) if slot.kind() == claimed => Ok(located),
            (_, Some(slot)) => Err(ModelError::WrongKind {
                path: path.clone(),
                claimed,
                actual: slot.kind(),
            }),
            _ => Err(ModelError::Missing(path.clone())),
        }
    }

    fn new_dir(&mut self) -> u32 {
        let idx = match self.free.pop() {
            Some(idx) => idx,
            None => {
                self.dirs.push(Children::default());
                self.dirs.len() - 1
            }
        };
        idx as u32
    }

    /// Forgets a slot taken out of the tree, and everything beneath it.
    fn release(&mut self, slot: Slot) {
        self.len -= 1;
        let mut doomed: Vec<usize> = slot.dir().into_iter().collect();
        while let Some(idx) = doomed.pop() {
            let children = std::mem::take(&mut self.dirs[idx]);
            self.len -= children.len();
            doomed.extend(children.values().filter_map(|child| child.dir()));
            self.free.push(idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filesync_master::hash::ContentHash;
    use filesync_master::{Entry, Model};
    use proptest::prelude::*;

    /// Every path of up to three components over three names: small enough that random
    /// changes collide, move into each other and under files often.
    fn universe() -> Vec<RelPath> {
        let names = ["a", "b", "c"];
        let mut paths = Vec::new();
        for x in names {
            paths.push(x.to_owned());
            for y in names {
                paths.push(format!("{x}/{y}"));
                for z in names {
                    paths.push(format!("{x}/{y}/{z}"));
                }
            }
        }
        paths
            .iter()
            .map(|p| RelPath::new(p).expect("valid"))
            .collect()
    }

    fn kind_strategy() -> impl Strategy<Value = Kind> {
        prop_oneof![Just(Kind::File), Just(Kind::Dir), Just(Kind::Symlink)]
    }

    fn change_strategy() -> impl Strategy<Value = Change> {
        let n = universe().len();
        prop_oneof![
            3 => (0..n, kind_strategy()).prop_map(|(i, kind)| {
                let path = universe()[i].clone();
                let entry = match kind {
                    Kind::Dir => Entry::dir(0o755),
                    Kind::File => Entry::file(1, ContentHash::of(b"x"), 0o644),
                    Kind::Symlink => Entry::symlink(b"t".to_vec()),
                };
                Change::Put { path, entry }
            }),
            1 => (0..n, kind_strategy()).prop_map(|(i, kind)| Change::Delete {
                path: universe()[i].clone(),
                kind,
            }),
            1 => (0..n, 0..n, kind_strategy()).prop_map(|(i, j, kind)| Change::Move {
                from: universe()[i].clone(),
                to: universe()[j].clone(),
                kind,
            }),
        ]
    }

    proptest! {
        // Failures are reported, not written into the source tree.
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// The index and the model agree on every verdict and on every path's kind after
        /// every change, whatever the sequence.
        #[test]
        fn the_index_gives_the_models_verdicts(changes in prop::collection::vec(change_strategy(), 1..60)) {
            let mut model = Model::new();
            let mut index = PathIndex::new();
            for change in &changes {
                let expected = model.apply(change);
                let got = index.apply(change);
                prop_assert_eq!(&got, &expected, "{}", change);
                prop_assert_eq!(index.len(), model.len());
                for path in universe() {
                    prop_assert_eq!(index.kind(&path), model.get(&path).map(|e| e.kind), "{}", path);
                }
            }
        }
    }

    #[test]
    fn a_moved_directory_keeps_its_subtree_and_frees_what_it_replaced() {
        let p = |s: &str| RelPath::new(s).expect("valid");
        let mut index = PathIndex::new();
        for (path, kind) in [("d", Kind::Dir), ("d/e", Kind::Dir), ("x", Kind::Dir)] {
            let entry = match kind {
                Kind::Dir => Entry::dir(0o755),
                _ => unreachable!(),
            };
            index
                .apply(&Change::Put {
                    path: p(path),
                    entry,
                })
                .expect("put");
        }
        index
            .apply(&Change::Put {
                path: p("d/e/f"),
                entry: Entry::file(1, ContentHash::of(b"f"), 0o644),
            })
            .expect("put");
        index
            .apply(&Change::Move {
                from: p("d"),
                to: p("x"),
                kind: Kind::Dir,
            })
            .expect("move");
        assert_eq!(index.kind(&p("x/e/f")), Some(Kind::File));
        assert_eq!(index.kind(&p("d")), None);
        assert_eq!(index.len(), 3);
        assert_eq!(index.free.len(), 1, "the replaced x was freed");
    }
}
