//! Resolving a `RelPath` under the slave's root without ever leaving it.
//!
//! `RelPath` already rules out `..`, absolute paths and empty components. What remains is the
//! file system itself: a directory on the way to the target may have been replaced by a
//! symlink (by a hostile change or by a local user), and writing through it would land
//! outside the root. Every ancestor is checked with `lstat` and must be a real directory.
//! (A local attacker racing us between check and write is outside this model.)

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use filesync_master::RelPath;

use crate::ApplyError;

/// `root/path`, after checking that every ancestor of `path` under `root` is a real
/// directory. With `create_parents`, missing ancestors are created (mode 0755).
pub fn resolve(root: &Path, path: &RelPath, create_parents: bool) -> Result<PathBuf, ApplyError> {
    for ancestor in path.ancestors() {
        let full = ancestor.to_path(root);
        match fs::symlink_metadata(&full) {
            Ok(meta) => check_ancestor(path, &ancestor, &meta)?,
            Err(err) if err.kind() == io::ErrorKind::NotFound && create_parents => {
                match fs::create_dir(&full) {
                    Ok(()) => {}
                    // Created meanwhile by someone else (a local process, another thread
                    // applying changes): it must pass the same check.
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                        let meta =
                            fs::symlink_metadata(&full).map_err(|source| ApplyError::Io {
                                action: "inspect",
                                path: ancestor.clone(),
                                source,
                            })?;
                        check_ancestor(path, &ancestor, &meta)?;
                    }
                    Err(source) => {
                        return Err(ApplyError::Io {
                            action: "create directory",
                            path: ancestor,
                            source,
                        })
                    }
                }
            }
            Err(source) => {
                return Err(ApplyError::Io {
                    action: "inspect",
                    path: ancestor,
                    source,
                })
            }
        }
    }
    Ok(path.to_path(root))
}

/// An ancestor must be a real directory: not a symlink, not anything else.
fn check_ancestor(
    path: &RelPath,
    ancestor: &RelPath,
    meta: &fs::Metadata,
) -> Result<(), ApplyError> {
    if meta.file_type().is_symlink() {
        return Err(ApplyError::Unsafe {
            path: path.clone(),
            reason: format!("{ancestor} is a symlink; refusing to write through it"),
        });
    }
    if !meta.is_dir() {
        return Err(ApplyError::Unsafe {
            path: path.clone(),
            reason: format!("{ancestor} is not a directory"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_cross_a_symlink() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).expect("symlink");
        let path = RelPath::new("evil/passwd").expect("valid");
        let err = resolve(root.path(), &path, true).expect_err("must refuse");
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn creates_missing_parents_inside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = RelPath::new("a/b/c").expect("valid");
        let full = resolve(root.path(), &path, true).expect("resolves");
        assert_eq!(full, root.path().join("a/b/c"));
        assert!(root.path().join("a/b").is_dir());
    }

    #[test]
    fn writers_creating_the_same_parents_at_once_all_succeed() {
        // Each writer finds `a` (or `a/b`) missing, one creates it, the others are told it
        // exists: they must check it and go on creating what is below, not give up.
        for _ in 0..50 {
            let root = tempfile::tempdir().expect("tempdir");
            let start = std::sync::Barrier::new(4);
            std::thread::scope(|scope| {
                for writer in 0..4 {
                    let (root, start) = (root.path(), &start);
                    scope.spawn(move || {
                        let path = RelPath::new(&format!("a/b/c/f{writer}")).expect("valid");
                        start.wait();
                        resolve(root, &path, true).expect("resolves beside the others");
                    });
                }
            });
            assert!(root.path().join("a/b/c").is_dir());
        }
    }

    #[test]
    fn refuses_a_file_as_a_parent() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::write(root.path().join("f"), "x").expect("write");
        let path = RelPath::new("f/g").expect("valid");
        assert!(resolve(root.path(), &path, true).is_err());
    }
}
