//! `RootGuard`: the master never publishes the deletion of everything because its directory
//! went away.
//!
//! A directory that vanished, was replaced (an unmounted file system reveals the empty
//! directory beneath it: another device and inode), or is empty at start while the log says
//! it held entries, is most likely a missing mount or a mistake, not a wish to delete the
//! mirror (Syncthing refuses the same way when its folder marker is gone: syncthing#799,
//! #4345). The master then holds its changes until the directory is back; `--allow-empty`
//! says an empty directory is meant.
//!
//! An emptying that happens while the master runs (`rm -rf dir/*`) is an ordinary burst
//! of deletions and is published: the guard looks at the directory's identity while
//! running, and at its emptiness only at start and when it comes back.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The master directory as it was when the master started: see the module docs.
#[derive(Debug, Clone)]
pub struct RootGuard {
    root: PathBuf,
    /// `(st_dev, st_ino)` of the root as bound.
    identity: Option<(u64, u64)>,
    allow_empty: bool,
}

impl RootGuard {
    pub fn new(root: &Path, allow_empty: bool) -> RootGuard {
        RootGuard {
            root: root.to_path_buf(),
            identity: identity(root),
            allow_empty,
        }
    }

    /// Why the directory may not be published from while running: it is gone or is not
    /// the directory the master bound to.
    pub fn replaced(&self) -> Option<String> {
        match identity(&self.root) {
            None => Some(format!("master directory {} is gone", self.root.display())),
            Some(now) if Some(now) != self.identity => Some(format!(
                "master directory {} is no longer the directory it was (unmounted, or replaced)",
                self.root.display()
            )),
            Some(_) => None,
        }
    }

    /// Why the directory may not be published from at start (or once back): it is gone,
    /// or empty while the log says it holds `published` entries.
    pub fn empty_or_gone(&self, published: usize) -> Option<String> {
        let mut entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(_) => return Some(format!("master directory {} is gone", self.root.display())),
        };
        if published == 0 || self.allow_empty || entries.next().is_some() {
            return None;
        }
        Some(format!(
            "master directory {} is empty, but the log says it holds {published} entries: \
             not publishing their deletion (a missing mount?); waiting for it to come back \
             (start with --allow-empty if they were deleted on purpose)",
            self.root.display()
        ))
    }

    /// The directory is back: bind to it as it is now.
    pub fn rebind(&mut self) {
        self.identity = identity(&self.root);
    }
}

fn identity(root: &Path) -> Option<(u64, u64)> {
    fs::metadata(root)
        .ok()
        .filter(|meta| meta.is_dir())
        .map(|meta| (meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vanished_replaced_or_empty_root_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir(&root).expect("mkdir");
        let mut guard = RootGuard::new(&root, false);
        assert!(guard.empty_or_gone(0).is_none(), "nothing published yet");
        let empty = guard.empty_or_gone(3).expect("empty with 3 published");
        assert!(empty.contains("holds 3 entries"), "{empty}");
        assert!(RootGuard::new(&root, true).empty_or_gone(3).is_none());
        fs::write(root.join("f"), "f").expect("write");
        assert!(guard.empty_or_gone(3).is_none());
        assert!(guard.replaced().is_none());
        fs::rename(&root, dir.path().join("elsewhere")).expect("mv");
        assert!(guard.replaced().is_some_and(|why| why.contains("is gone")));
        fs::create_dir(&root).expect("a new directory in its place");
        assert!(guard
            .replaced()
            .is_some_and(|why| why.contains("no longer the directory")));
        guard.rebind();
        assert!(guard.replaced().is_none());
    }
}
