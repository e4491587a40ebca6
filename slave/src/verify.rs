//! What a slave's directory holds, and how it differs from what it should hold.
//!
//! [`scan`] walks the root once: it removes the temporary files a killed slave left
//! anywhere (`.filesync-tmp-*`, beside the files it was replacing), and reads every other
//! entry into a `Model`, hashing a file only when the caller does not already know its
//! content from an earlier scan (same size, modification time and inode). [`differences`]
//! compares that with the state the slave applied. Neither writes anything else: repairing
//! is the caller's (it fetches content).
//!
//! Paths the caller's `ignored` rules out (the root's own `.filesyncignore`, as the master
//! and `filesync check --dir` read it) are left alone.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use filesync_master::hash::{hash_file, mtime_ns, ContentHash};
use filesync_master::model::Stamp;
use filesync_master::TEMP_PREFIX;
use filesync_master::{Entry, Kind, Model, RelPath};

/// What a scan found.
#[derive(Debug, Default)]
pub struct Found {
    /// Every entry, files with their hash and stamp.
    pub model: Model,
    /// Temporary files removed.
    pub leftovers: usize,
    /// Files hashed (not known from an earlier scan).
    pub hashed: usize,
}

/// Walks `root` (see the module docs). `known` gives a file's hash when an earlier scan saw
/// it with this stamp and size; `ignored` says whether a path (a directory, with `true`) is
/// left out.
pub fn scan(
    root: &Path,
    known: &dyn Fn(&RelPath, Stamp, u64) -> Option<ContentHash>,
    ignored: &dyn Fn(&RelPath, bool) -> bool,
) -> io::Result<Found> {
    let mut found = Found::default();
    walk(root, None, &mut |rel, full, meta| {
        if ignored(rel, meta.is_dir()) {
            return Ok(false);
        }
        let stamp = Stamp {
            mtime_ns: mtime_ns(meta),
            ino: meta.ino(),
        };
        let content = || match known(rel, stamp, meta.len()) {
            Some(sha256) => Ok(sha256),
            None => {
                found.hashed += 1;
                hash_file(full)
                    .map(|hashed| hashed.sha256)
                    .map_err(io::Error::other)
            }
        };
        let mut entry = match Entry::on_disk(full, meta, content) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(false),
            // A file gone or changing while we looked: the next scan sees it.
            Err(err) if meta.is_file() => {
                tracing::debug!("verify: {}: {err}", full.display());
                return Ok(false);
            }
            Err(err) => return Err(err),
        };
        if entry.kind == Kind::File {
            entry.stamp = Some(stamp);
        }
        let descend = entry.kind == Kind::Dir;
        found.model.put(rel.clone(), entry);
        Ok(descend)
    })
    .map(|leftovers| {
        found.leftovers = leftovers;
        found
    })
}

/// Removes the temporary files a killed slave left anywhere under `root`; returns how many.
pub fn remove_leftovers(root: &Path) -> io::Result<usize> {
    walk(root, None, &mut |_, _, meta| Ok(meta.is_dir()))
}

/// Visits every entry under `root` (or under `under`), parents first, in name order; removes
/// temporary files instead of visiting them. `visit` says whether to descend into a
/// directory. Returns how many temporary files were removed.
fn walk(
    root: &Path,
    under: Option<&RelPath>,
    visit: &mut dyn FnMut(&RelPath, &Path, &Metadata) -> io::Result<bool>,
) -> io::Result<usize> {
    let dir = under.map_or_else(|| root.to_path_buf(), |u| u.to_path(root));
    let mut names: Vec<_> = match fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    names.sort();
    let mut removed = 0;
    for name in names {
        let full = dir.join(&name);
        let Ok(meta) = fs::symlink_metadata(&full) else {
            continue;
        };
        if name.as_bytes().starts_with(TEMP_PREFIX) {
            if meta.is_file() && fs::remove_file(&full).is_ok() {
                removed += 1;
            }
            continue;
        }
        let rel = match under {
            Some(under) => under.join(name.as_bytes()),
            None => RelPath::from_bytes(name.as_bytes()),
        };
        let Ok(rel) = rel else { continue };
        if visit(&rel, &full, &meta)? && meta.is_dir() {
            removed += walk(root, Some(&rel), visit)?;
        }
    }
    Ok(removed)
}

/// How one path differs from what the slave applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The path should hold `expected` and holds nothing.
    Missing { path: RelPath, expected: Entry },
    /// The path holds something else than `expected` (content, mode, kind or target).
    Modified { path: RelPath, expected: Entry },
    /// The path holds a `kind` that should not be there (its subtree goes with it).
    Unexpected { path: RelPath, kind: Kind },
}

impl Difference {
    pub fn path(&self) -> &RelPath {
        match self {
            Difference::Missing { path, .. }
            | Difference::Modified { path, .. }
            | Difference::Unexpected { path, .. } => path,
        }
    }
}

/// What differs between the state applied (`expected`) and the directory (`found`), in path
/// order, parents before children. Whatever is missing is named path by path (a directory,
/// then what it holds), what is unexpected only at its top (its subtree goes with it), and
/// nothing beneath an entry that is to be replaced by a file or symlink.
pub fn differences(expected: &Model, found: &Model) -> Vec<Difference> {
    let mut out: Vec<Difference> = Vec::new();
    for (path, want) in expected.iter() {
        match found.get(path) {
            None => out.push(Difference::Missing {
                path: path.clone(),
                expected: want.clone(),
            }),
            Some(have) if have != want => out.push(Difference::Modified {
                path: path.clone(),
                expected: want.clone(),
            }),
            Some(_) => {}
        }
    }
    let mut extra: Vec<RelPath> = Vec::new();
    for (path, have) in found.iter() {
        if expected.get(path).is_some() || extra.iter().any(|e| path.starts_with(e)) {
            continue;
        }
        // Beneath something expected as a file or symlink, the put replaces it all.
        let replaced = path.ancestors().any(|a| {
            expected
                .get(&a)
                .is_some_and(|e| e.kind != Kind::Dir && found.get(&a).is_some())
        });
        if !replaced {
            extra.push(path.clone());
            out.push(Difference::Unexpected {
                path: path.clone(),
                kind: have.kind,
            });
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).expect("valid")
    }

    #[test]
    fn a_scan_removes_leftovers_anywhere_and_hashes_only_what_it_does_not_know() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("d/e")).expect("mkdir");
        fs::write(root.path().join("d/e/f"), "f").expect("write");
        fs::write(root.path().join("d/e/.filesync-tmp-4242-7"), "cut").expect("write");
        fs::write(root.path().join(".filesync-tmp-1-1"), "cut").expect("write");
        fs::write(root.path().join("g"), "g").expect("write");
        fs::write(root.path().join("skipped"), "left alone").expect("write");
        let skip = |path: &RelPath, _: bool| path == &p("skipped");
        let found = scan(root.path(), &|_, _, _| None, &skip).expect("scan");
        assert_eq!(found.leftovers, 2);
        assert_eq!(found.hashed, 2);
        let paths: Vec<String> = found.model.iter().map(|(p, _)| p.lossy()).collect();
        assert_eq!(paths, ["d", "d/e", "d/e/f", "g"]);
        assert_eq!(
            found.model.get(&p("g")).and_then(|e| e.sha256),
            Some(ContentHash::of(b"g"))
        );
        let pretend = ContentHash::of(b"known");
        let again = scan(
            root.path(),
            &|path, _, _| (path == &p("g")).then_some(pretend),
            &skip,
        )
        .expect("scan");
        assert_eq!(again.hashed, 1, "g was known");
        assert_eq!(
            again.model.get(&p("g")).and_then(|e| e.sha256),
            Some(pretend)
        );
    }

    #[test]
    fn differences_name_the_tops_of_what_is_missing_or_unexpected() {
        let mut expected = Model::new();
        expected.put(p("a"), Entry::dir(0o755));
        expected.put(p("a/x"), Entry::file(1, ContentHash::of(b"x"), 0o644));
        expected.put(p("b"), Entry::file(1, ContentHash::of(b"b"), 0o644));
        expected.put(p("c"), Entry::file(1, ContentHash::of(b"c"), 0o644));
        let mut found = Model::new();
        found.put(p("b"), Entry::file(1, ContentHash::of(b"B"), 0o644));
        found.put(p("c"), Entry::file(1, ContentHash::of(b"c"), 0o644));
        found.put(p("z"), Entry::dir(0o755));
        found.put(p("z/inner"), Entry::file(1, ContentHash::of(b"i"), 0o644));
        let diffs = differences(&expected, &found);
        let shown: Vec<String> = diffs
            .iter()
            .map(|d| match d {
                Difference::Missing { path, .. } => format!("missing {path}"),
                Difference::Modified { path, .. } => format!("modified {path}"),
                Difference::Unexpected { path, .. } => format!("unexpected {path}"),
            })
            .collect();
        assert_eq!(
            shown,
            ["missing a", "missing a/x", "modified b", "unexpected z"]
        );
    }
}
