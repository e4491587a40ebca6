//! `Tree`: the master's view of its directory, and the one place that turns "something
//! happened at this path" into `Change`s by comparing the disk with the model.
//!
//! Every entry point re-reads the file system instead of trusting event details, so events
//! may be coalesced, reordered or repeated without changing the outcome: the result always
//! describes the disk as it is now.

use std::collections::HashSet;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::chunk::{ChunkRef, Manifest};
use crate::hash::{hash_opened, open_file, Chunking, ContentHash, HashError};
use crate::ignore::IgnoreRules;
use crate::memo::ChunkMemo;
use crate::model::{Change, Entry, Kind, Model, Stamp};
use crate::RelPath;

/// Everything under `start` (a directory under `root`) that a master publishes, parents
/// first, in name order, links not followed, what `ignore` leaves out skipped (a directory
/// with what is under it): the one walk of a master's directory that the master's scans,
/// `check --dir` and the test kit share.
pub fn walk_published<'a>(
    root: &'a Path,
    start: &Path,
    ignore: &'a IgnoreRules,
) -> walkdir::FilterEntry<walkdir::IntoIter, impl FnMut(&walkdir::DirEntry) -> bool + 'a> {
    WalkDir::new(start)
        .min_depth(1)
        .follow_links(false)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
        .into_iter()
        .filter_entry(move |entry| {
            RelPath::from_full(root, entry.path())
                .is_ok_and(|rel| !ignore.is_ignored(&rel, entry.file_type().is_dir()))
        })
}

/// A change the master observed, with the file's content when it was small enough to keep
/// from hashing (so it is not read twice), or its manifest when it is stored in chunks.
#[derive(Debug, Clone)]
pub struct Observed {
    pub change: Change,
    pub content: Option<Vec<u8>>,
    pub manifest: Option<Manifest>,
}

/// What a refresh produces, in order.
#[derive(Debug)]
pub enum Outcome {
    /// Publish this.
    Changed(Observed),
    /// The file is still being written: look again once it is quiet.
    Retry(RelPath),
    /// The next chunk of a file stored in chunks, handed over as soon as it is cut so that
    /// its upload (if the bus lacks it) overlaps with reading the rest, and the file is read
    /// once; `true` when the file is new to the model (worth announcing to slaves that
    /// follow uploads). A `StreamEnd` always follows the last chunk.
    Chunk(ChunkRef, Vec<u8>, bool),
    /// The end of the chunks: with the content's hash when the file held still while read
    /// and its `Changed` follows right after; `None` when the chunks were for nothing (the
    /// file changed meanwhile, or its content is the one published).
    StreamEnd(Option<ContentHash>),
}

/// What looking at a file's content concluded.
enum FileLook {
    Publish(Entry, Option<Vec<u8>>, Option<Manifest>),
    Retry,
    Nothing,
}

/// The master's directory and what it has published of it.
pub struct Tree {
    root: PathBuf,
    model: Model,
    ignore: IgnoreRules,
    /// `--exclude` patterns, kept beside `.filesyncignore`'s across reloads.
    excludes: Vec<String>,
    /// The addresses of chunks cut before, so an edit hashes its file once.
    memo: ChunkMemo,
}

impl Tree {
    /// A tree whose published state is `model` (replayed from the event log).
    pub fn new(root: &Path, model: Model) -> Tree {
        Tree {
            root: root.to_path_buf(),
            model,
            ignore: IgnoreRules::load(root),
            excludes: Vec::new(),
            memo: ChunkMemo::new(),
        }
    }

    /// Also ignores these gitignore patterns (`--exclude`), whatever the file says.
    pub fn excluding(mut self, excludes: &[String]) -> Tree {
        self.excludes = excludes.to_vec();
        self.ignore = IgnoreRules::load_with(&self.root, &self.excludes);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn ignore(&self) -> &IgnoreRules {
        &self.ignore
    }

    /// Re-reads `.filesyncignore`. Call `rescan_all` afterwards: newly unignored paths
    /// must be published.
    pub fn reload_ignore(&mut self) {
        self.ignore = IgnoreRules::load_with(&self.root, &self.excludes);
    }

    /// Forgets the published content of the file at `path` (its upload failed), so that the
    /// next refresh publishes it again, or publishes its deletion if it is gone.
    pub fn invalidate(&mut self, path: &RelPath) {
        if let Some(entry) = self.model.get_mut(path) {
            if entry.kind == Kind::File {
                entry.sha256 = None;
                entry.stamp = None;
            }
        }
    }

    /// Compares the whole directory with the model (start-up, queue overflow, rules changed).
    pub fn rescan_all(&mut self, out: &mut dyn FnMut(Outcome)) {
        self.rescan_under(None, out);
    }

    /// Something happened at `path`: publish whatever differs there (recursively for dirs).
    pub fn refresh(&mut self, path: &RelPath, out: &mut dyn FnMut(Outcome)) {
        // Parents are published before children: an unknown ancestor is refreshed whole.
        for ancestor in path.ancestors() {
            let known_dir = self
                .model
                .get(&ancestor)
                .is_some_and(|entry| entry.kind == Kind::Dir);
            if !known_dir {
                if fs::symlink_metadata(ancestor.to_path(&self.root)).is_ok_and(|m| m.is_dir()) {
                    return self.refresh(&ancestor, out);
                }
                // The ancestor is gone or not a directory: deleting it covers `path` too.
                return self.forget_missing(&ancestor, out);
            }
        }
        match fs::symlink_metadata(path.to_path(&self.root)) {
            Ok(meta) => {
                if self.ignore.is_ignored(path, meta.is_dir()) {
                    return;
                }
                self.observe(path, &meta, None, false, out);
                if meta.is_dir() {
                    self.rescan_under(Some(path), out);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => self.forget_missing(path, out),
            Err(err) => tracing::warn!("cannot read {}: {err}", path.to_path(&self.root).display()),
        }
    }

    /// `from` was renamed to `to` inside the tree. Publishes one move when `from` was
    /// published, then whatever else differs at `to` (an editor may have rewritten it).
    pub fn moved(&mut self, from: &RelPath, to: &RelPath, out: &mut dyn FnMut(Outcome)) {
        let to_meta = fs::symlink_metadata(to.to_path(&self.root)).ok();
        let to_ignored = to_meta
            .as_ref()
            .is_some_and(|m| self.ignore.is_ignored(to, m.is_dir()));
        let parent_known = to
            .parent()
            .is_none_or(|parent| self.model.get(&parent).is_some_and(|e| e.kind == Kind::Dir));
        if let (Some(entry), Some(meta), false, true) =
            (self.model.get(from), &to_meta, to_ignored, parent_known)
        {
            if Kind::of(meta) == Some(entry.kind) && !to.starts_with(from) {
                let kind = entry.kind;
                self.model.rename(from, to);
                out(Outcome::Changed(Observed {
                    change: Change::Move {
                        from: from.clone(),
                        to: to.clone(),
                        kind,
                    },
                    content: None,
                    manifest: None,
                }));
                self.refresh(to, out);
                return;
            }
        }
        self.refresh(from, out);
        self.refresh(to, out);
    }

    /// `path` is gone from disk: delete the highest vanished ancestor that was published.
    fn forget_missing(&mut self, path: &RelPath, out: &mut dyn FnMut(Outcome)) {
        let mut victim = path.clone();
        for ancestor in path.ancestors() {
            if fs::symlink_metadata(ancestor.to_path(&self.root)).is_err() {
                victim = ancestor;
                break;
            }
        }
        if let Some(entry) = self.model.get(&victim) {
            let kind = entry.kind;
            self.model.remove_subtree(&victim);
            out(Outcome::Changed(Observed {
                change: Change::Delete { path: victim, kind },
                content: None,
                manifest: None,
            }));
        }
    }

    /// Walks the root (or `under`, which must be a known directory) and publishes every
    /// difference: new or changed entries in walk order (parents first), then deletions.
    fn rescan_under(&mut self, under: Option<&RelPath>, out: &mut dyn FnMut(Outcome)) {
        let start = match under {
            Some(path) => path.to_path(&self.root),
            None => self.root.clone(),
        };
        // Nothing published under it before the walk (a directory just created or moved
        // in, or the first scan): nothing can have gone, so the deletion pass below, a stat
        // of every path just published, is skipped.
        let had_published = match under {
            Some(path) => self.model.subtree(path).any(|(p, _)| p != path),
            None => !self.model.is_empty(),
        };
        // Directories we could not read: their published contents must not be deleted.
        let mut unreadable: Vec<RelPath> = Vec::new();
        let root = self.root.clone();
        let ignore = self.ignore.clone();
        // A full rescan of a published tree (a master restarted) holds back what is new at
        // the top of a new subtree, to be paired with what vanished: a rename made while the
        // master was down is published as a move, not a delete and a put of everything.
        let pair_renames = under.is_none() && had_published;
        let mut new_tops: Vec<RelPath> = Vec::new();
        let mut walker = walk_published(&root, &start, &ignore);
        while let Some(item) = walker.next() {
            let entry = match item {
                Ok(entry) => entry,
                Err(err) => {
                    let vanished =
                        err.io_error().map(|e| e.kind()) == Some(io::ErrorKind::NotFound);
                    if !vanished {
                        tracing::warn!("scan: {err}");
                        if let Some(rel) =
                            err.path().and_then(|p| RelPath::from_full(&root, p).ok())
                        {
                            unreadable.push(rel);
                        }
                    }
                    continue;
                }
            };
            let Ok(rel) = RelPath::from_full(&root, entry.path()) else {
                continue;
            };
            if pair_renames && self.model.get(&rel).is_none() {
                new_tops.push(rel);
                if entry.file_type().is_dir() {
                    walker.skip_current_dir();
                }
                continue;
            }
            // A file new to the model is opened at once, and the open file says what it
            // is: one `stat` by name less per file of a new tree (W2). Anything else, or a
            // file that is no longer one, is looked at by name.
            if entry.file_type().is_file() && self.model.get(&rel).is_none() {
                if let Ok((file, meta)) = open_file(entry.path()) {
                    if meta.is_file() {
                        self.observe(&rel, &meta, Some(file), true, out);
                        continue;
                    }
                }
            }
            match entry.metadata() {
                Ok(meta) => self.observe(&rel, &meta, None, true, out),
                Err(err) => {
                    tracing::debug!("scan: {}: {err}", entry.path().display());
                    continue;
                }
            }
        }
        // Deletions: published entries gone from disk (or now ignored or of a kind we do not
        // sync). Each is checked on disk instead of against a set of everything walked, so a
        // rescan of 100,000 paths keeps no second copy of them; only the tops of vanished
        // trees are collected.
        let mut doomed: Vec<(RelPath, Kind)> = Vec::new();
        if had_published {
            let entries: Box<dyn Iterator<Item = (&RelPath, &Entry)> + '_> = match under {
                Some(path) => Box::new(self.model.subtree(path).filter(move |(p, _)| *p != path)),
                None => Box::new(self.model.iter()),
            };
            for (path, entry) in entries {
                if unreadable.iter().any(|u| path.starts_with(u))
                    || doomed.iter().any(|(d, _)| path.starts_with(d))
                {
                    continue;
                }
                let gone = match fs::symlink_metadata(path.to_path(&self.root)) {
                    Err(err) => err.kind() == io::ErrorKind::NotFound,
                    Ok(meta) => {
                        Kind::of(&meta).is_none() || self.ignore.is_ignored(path, meta.is_dir())
                    }
                };
                if gone {
                    doomed.push((path.clone(), entry.kind));
                }
            }
        }
        for new in new_tops {
            match self.renamed_from(&new, &doomed) {
                Some(idx) => {
                    let (old, _) = doomed.remove(idx);
                    self.moved(&old, &new, out);
                }
                None => self.refresh(&new, out),
            }
        }
        for (path, kind) in doomed {
            self.model.remove_subtree(&path);
            out(Outcome::Changed(Observed {
                change: Change::Delete { path, kind },
                content: None,
                manifest: None,
            }));
        }
    }

    /// Which vanished entry `new` (on disk, unknown to the model) most likely is, renamed:
    /// a file with the same content, a symlink with the same target, a directory holding
    /// at least half of what the vanished one held (same relative names, kinds and file
    /// sizes; what differs is published after the move).
    fn renamed_from(&self, new: &RelPath, vanished: &[(RelPath, Kind)]) -> Option<usize> {
        let full = new.to_path(&self.root);
        let meta = fs::symlink_metadata(&full).ok()?;
        let kind = Kind::of(&meta)?;
        let mut candidates = vanished.iter().enumerate().filter(|(_, (_, k))| *k == kind);
        match kind {
            Kind::File => {
                let mut same_size = candidates
                    .filter(|(_, (path, _))| {
                        self.model.get(path).is_some_and(|e| e.size == meta.len())
                    })
                    .peekable();
                same_size.peek()?;
                let sha256 = crate::hash::hash_file(&full).ok()?.sha256;
                same_size
                    .find(|(_, (path, _))| {
                        self.model.get(path).and_then(|e| e.sha256) == Some(sha256)
                    })
                    .map(|(idx, _)| idx)
            }
            Kind::Symlink => {
                let target = fs::read_link(&full).ok()?.into_os_string().into_vec();
                candidates
                    .find(|(_, (path, _))| {
                        self.model.get(path).and_then(|e| e.target.as_deref()) == Some(&target[..])
                    })
                    .map(|(idx, _)| idx)
            }
            Kind::Dir => {
                let on_disk = self.listing(new);
                candidates
                    .filter_map(|(idx, (path, _))| {
                        let held: Vec<(Vec<u8>, Kind, u64)> = self
                            .model
                            .subtree(path)
                            .filter(|(p, _)| *p != path)
                            .map(|(p, e)| (relative(p, path), e.kind, e.size))
                            .collect();
                        let kept = held.iter().filter(|h| on_disk.contains(h)).count();
                        let likely = if held.is_empty() {
                            on_disk.is_empty()
                        } else {
                            kept * 2 >= held.len()
                        };
                        likely.then_some((kept, idx))
                    })
                    .max()
                    .map(|(_, idx)| idx)
            }
        }
    }

    /// What is beneath directory `path` on disk: relative name, kind and size (files).
    fn listing(&self, path: &RelPath) -> HashSet<(Vec<u8>, Kind, u64)> {
        let start = path.to_path(&self.root);
        WalkDir::new(&start)
            .min_depth(1)
            .follow_links(false)
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let rel = RelPath::from_full(&self.root, entry.path()).ok()?;
                let meta = entry.metadata().ok()?;
                let kind = Kind::of(&meta)?;
                let size = if kind == Kind::File { meta.len() } else { 0 };
                Some((relative(&rel, path), kind, size))
            })
            .collect()
    }

    /// Publishes `path` if what is on disk differs from the model (not recursive).
    /// `opened` is the file itself when the caller has it open already (and `meta` is then
    /// the open file's).
    fn observe(
        &mut self,
        path: &RelPath,
        meta: &Metadata,
        opened: Option<File>,
        found_by_scan: bool,
        out: &mut dyn FnMut(Outcome),
    ) {
        let Some(kind) = Kind::of(meta) else {
            tracing::debug!("not syncing {path}: not a file, directory or symlink");
            return;
        };
        if let Some(old) = self.model.get(path) {
            if old.kind != kind {
                let old_kind = old.kind;
                self.model.remove_subtree(path);
                out(Outcome::Changed(Observed {
                    change: Change::Delete {
                        path: path.clone(),
                        kind: old_kind,
                    },
                    content: None,
                    manifest: None,
                }));
            }
        }
        let full = path.to_path(&self.root);
        let old = self.model.get(path);
        let mut manifest = None;
        let (entry, content) = match kind {
            Kind::Dir => {
                let mode = meta.mode() & 0o7777;
                if old.is_some_and(|e| e.mode == mode) {
                    return;
                }
                (Entry::dir(mode), None)
            }
            Kind::Symlink => {
                let target = match fs::read_link(&full) {
                    Ok(target) => target.into_os_string().into_vec(),
                    Err(err) => return tracing::debug!("readlink {}: {err}", full.display()),
                };
                if old.is_some_and(|e| e.target.as_deref() == Some(&target[..])) {
                    return;
                }
                (Entry::symlink(target), None)
            }
            Kind::File => {
                let stamp = Stamp {
                    mtime_ns: crate::hash::mtime_ns(meta),
                    ino: meta.ino(),
                };
                let mode = meta.mode() & 0o7777;
                if old.is_some_and(|e| {
                    e.stamp == Some(stamp) && e.size == meta.len() && e.mode == mode
                }) {
                    return;
                }
                // A scan cannot know whether a writer still holds the file (a new directory's
                // files were created before their watch existed, so their close-write is
                // never reported). Something written moments ago is looked at again later.
                if found_by_scan && modified_within(meta, SCAN_SETTLE) {
                    return out(Outcome::Retry(path.clone()));
                }
                let mut streamed = false;
                let new_file = old.is_none();
                let mut sink = |chunk_ref, chunk| {
                    streamed = true;
                    out(Outcome::Chunk(chunk_ref, chunk, new_file));
                };
                let chunks = Chunking {
                    memo: &mut self.memo,
                    sink: &mut sink,
                };
                let hashed = match opened {
                    Some(file) => hash_opened(file, meta, Some(chunks)),
                    None => open_file(&full)
                        .map_err(HashError::from)
                        .and_then(|(file, before)| hash_opened(file, &before, Some(chunks))),
                };
                let look = self.look_at_file(path, &full, hashed);
                if streamed {
                    let keep = match &look {
                        FileLook::Publish(entry, ..) => entry.sha256,
                        FileLook::Retry | FileLook::Nothing => None,
                    };
                    out(Outcome::StreamEnd(keep));
                }
                match look {
                    FileLook::Publish(entry, content, chunks) => {
                        manifest = chunks;
                        (entry, content)
                    }
                    FileLook::Retry => return out(Outcome::Retry(path.clone())),
                    FileLook::Nothing => return,
                }
            }
        };
        self.model.put(path.clone(), entry.clone());
        out(Outcome::Changed(Observed {
            change: Change::Put {
                path: path.clone(),
                entry,
            },
            content,
            manifest,
        }));
    }
}

impl Tree {
    /// What a file's hashing means: publish it, look again later, or nothing (gone, or the
    /// same content as published, whose new stamp is recorded).
    fn look_at_file(
        &mut self,
        path: &RelPath,
        full: &Path,
        hashed: Result<crate::hash::Hashed, HashError>,
    ) -> FileLook {
        let hashed = match hashed {
            Ok(hashed) => hashed,
            Err(HashError::Unstable) => return FileLook::Retry,
            Err(HashError::Io(err)) if err.kind() == io::ErrorKind::NotFound => {
                return FileLook::Nothing
            }
            Err(HashError::Io(err)) => {
                tracing::warn!("cannot read {}: {err}", full.display());
                return FileLook::Nothing;
            }
        };
        let mut entry = Entry::file(hashed.size, hashed.sha256, hashed.mode);
        entry.stamp = Some(Stamp {
            mtime_ns: hashed.mtime_ns,
            ino: hashed.ino,
        });
        if let Some(published) = self.model.get_mut(path) {
            if *published == entry {
                published.stamp = entry.stamp;
                return FileLook::Nothing;
            }
        }
        FileLook::Publish(entry, hashed.content, hashed.manifest)
    }
}

/// `path` relative to its ancestor `top`, as bytes.
fn relative(path: &RelPath, top: &RelPath) -> Vec<u8> {
    path.as_bytes()[top.as_bytes().len()..].to_vec()
}

/// How recently written a file found by a scan may be before it is trusted as complete.
pub const SCAN_SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

fn modified_within(meta: &Metadata, window: std::time::Duration) -> bool {
    meta.modified()
        .ok()
        .and_then(|mtime| std::time::SystemTime::now().duration_since(mtime).ok())
        .is_some_and(|age| age < window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).expect("valid test path")
    }

    /// Writes a file whose mtime is a second old: a finished file, as a scan would trust it.
    fn write_aged(path: &Path, contents: &str) {
        fs::write(path, contents).expect("write");
        let file = fs::File::options().write(true).open(path).expect("open");
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
        file.set_modified(past).expect("set mtime");
    }

    fn changes(tree: &mut Tree, f: impl FnOnce(&mut Tree, &mut dyn FnMut(Outcome))) -> Vec<String> {
        let mut seen = Vec::new();
        f(tree, &mut |outcome| match outcome {
            Outcome::Changed(observed) => seen.push(observed.change.to_string()),
            Outcome::Retry(path) => seen.push(format!("retry {path}")),
            Outcome::Chunk(_, chunk, _) => seen.push(format!("chunk of {} bytes", chunk.len())),
            Outcome::StreamEnd(hash) => seen.push(format!("end {}", hash.is_some())),
        });
        seen
    }

    #[test]
    fn initial_scan_publishes_parents_first_and_skips_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).expect("mkdir");
        write_aged(&root.join("a/b/f.txt"), "x");
        write_aged(&root.join("empty"), "");
        write_aged(&root.join("x.log"), "log");
        write_aged(&root.join(".filesyncignore"), "*.log\n");
        std::os::unix::fs::symlink("a/b/f.txt", root.join("link")).expect("symlink");
        let mut tree = Tree::new(root, Model::new());
        let seen = changes(&mut tree, |t, out| t.rescan_all(out));
        assert_eq!(
            seen,
            [
                "put file .filesyncignore",
                "put dir a",
                "put dir a/b",
                "put file a/b/f.txt",
                "put file empty",
                "put symlink link"
            ]
        );
        assert!(
            changes(&mut tree, |t, out| t.rescan_all(out)).is_empty(),
            "a second scan finds nothing new"
        );
    }

    #[test]
    fn rescan_reports_only_differences() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir(root.join("d")).expect("mkdir");
        write_aged(&root.join("d/keep"), "k");
        write_aged(&root.join("d/gone"), "g");
        write_aged(&root.join("edit"), "1");
        let mut tree = Tree::new(root, Model::new());
        changes(&mut tree, |t, out| t.rescan_all(out));
        fs::remove_file(root.join("d/gone")).expect("rm");
        write_aged(&root.join("edit"), "22");
        fs::set_permissions(root.join("d/keep"), fs::Permissions::from_mode(0o600)).expect("chmod");
        let seen = changes(&mut tree, |t, out| t.rescan_all(out));
        assert_eq!(
            seen,
            ["put file d/keep", "put file edit", "delete file d/gone"]
        );
    }

    /// The model a restarted master replays from the log: no local stamps.
    fn replayed(tree: &Tree) -> Model {
        let mut model = Model::new();
        for (path, entry) in tree.model().iter() {
            let mut entry = entry.clone();
            entry.stamp = None;
            model.put(path.clone(), entry);
        }
        model
    }

    #[test]
    fn renames_made_while_the_master_was_down_are_moves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in ["docs", "src"] {
            fs::create_dir(root.join(d)).expect("mkdir");
            for i in 0..6 {
                write_aged(&root.join(format!("{d}/f{i}")), &format!("{d} {i}"));
            }
        }
        write_aged(&root.join("notes.txt"), "notes");
        write_aged(&root.join("gone.txt"), "gone");
        let mut tree = Tree::new(root, Model::new());
        changes(&mut tree, |t, out| t.rescan_all(out));
        let model = replayed(&tree);
        fs::rename(root.join("docs"), root.join("manual")).expect("mv");
        fs::rename(root.join("src"), root.join("source")).expect("mv");
        write_aged(&root.join("source/f0"), "edited while down");
        fs::rename(root.join("notes.txt"), root.join("notes.md")).expect("mv");
        fs::remove_file(root.join("gone.txt")).expect("rm");
        write_aged(&root.join("new.txt"), "new");
        let mut restarted = Tree::new(root, model);
        let seen = changes(&mut restarted, |t, out| t.rescan_all(out));
        assert_eq!(
            seen,
            [
                "move dir docs -> manual",
                "put file new.txt",
                "move file notes.txt -> notes.md",
                "move dir src -> source",
                "put file source/f0",
                "delete file gone.txt"
            ]
        );
    }

    #[test]
    fn a_deleted_tree_is_one_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("t/u")).expect("mkdir");
        write_aged(&root.join("t/u/f"), "f");
        let mut tree = Tree::new(root, Model::new());
        changes(&mut tree, |t, out| t.rescan_all(out));
        fs::remove_dir_all(root.join("t")).expect("rm");
        let seen = changes(&mut tree, |t, out| t.refresh(&p("t/u/f"), out));
        assert_eq!(seen, ["delete dir t"]);
        assert!(changes(&mut tree, |t, out| t.refresh(&p("t/u"), out)).is_empty());
    }

    #[test]
    fn a_renamed_directory_is_one_move() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir(root.join("src")).expect("mkdir");
        for i in 0..50 {
            write_aged(&root.join(format!("src/{i}")), &format!("{i}"));
        }
        let mut tree = Tree::new(root, Model::new());
        changes(&mut tree, |t, out| t.rescan_all(out));
        fs::rename(root.join("src"), root.join("dst")).expect("rename");
        let seen = changes(&mut tree, |t, out| t.moved(&p("src"), &p("dst"), out));
        assert_eq!(seen, ["move dir src -> dst"]);
    }

    #[test]
    fn a_new_tree_is_found_from_any_path_inside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let mut tree = Tree::new(root, Model::new());
        fs::create_dir_all(root.join("a/b/c")).expect("mkdir");
        write_aged(&root.join("a/b/c/f"), "x");
        let seen = changes(&mut tree, |t, out| t.refresh(&p("a/b/c/f"), out));
        assert_eq!(
            seen,
            [
                "put dir a",
                "put dir a/b",
                "put dir a/b/c",
                "put file a/b/c/f"
            ]
        );
    }

    #[test]
    fn a_file_written_moments_ago_is_retried_not_trusted_by_a_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::write(root.join("fresh"), "maybe half written").expect("write");
        let mut tree = Tree::new(root, Model::new());
        assert_eq!(
            changes(&mut tree, |t, out| t.rescan_all(out)),
            ["retry fresh"]
        );
        // Looked at directly (after its close-write, or after quiet), it is published.
        assert_eq!(
            changes(&mut tree, |t, out| t.refresh(&p("fresh"), out)),
            ["put file fresh"]
        );
    }

    #[test]
    fn an_editor_save_via_temp_file_is_a_put_of_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write_aged(&root.join("doc.txt"), "v1");
        let mut tree = Tree::new(root, Model::new());
        changes(&mut tree, |t, out| t.rescan_all(out));
        write_aged(&root.join("doc.txt.swp"), "v2");
        fs::rename(root.join("doc.txt.swp"), root.join("doc.txt")).expect("rename");
        let seen = changes(&mut tree, |t, out| {
            t.moved(&p("doc.txt.swp"), &p("doc.txt"), out)
        });
        assert_eq!(seen, ["put file doc.txt"]);
    }

    #[test]
    fn a_large_file_is_handed_over_in_chunks_while_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let mut tree = Tree::new(root, Model::new());
        let size = crate::chunk::CHUNKED_ABOVE as usize + 10;
        // Bytes that never match the cut mask: every chunk but the last is the largest.
        write_aged(&root.join("big"), &"x".repeat(size));
        let max = crate::chunk::CHUNK_MAX;
        let mut expected: Vec<String> = (0..size / max)
            .map(|_| format!("chunk of {max} bytes"))
            .collect();
        expected.extend([
            format!("chunk of {} bytes", size % max),
            "end true".into(),
            "put file big".into(),
        ]);
        let seen = changes(&mut tree, |t, out| t.refresh(&p("big"), out));
        assert_eq!(seen, expected);
        // Rewritten in place with the same size: chunked again (the bus says which chunks
        // it lacks), and published with its manifest.
        write_aged(&root.join("big"), &"y".repeat(size));
        let mut manifest = None;
        tree.refresh(&p("big"), &mut |outcome| {
            if let Outcome::Changed(observed) = outcome {
                manifest = observed.manifest;
            }
        });
        assert_eq!(manifest.map(|m| m.size()), Some(size as u64));
        // Small files are not chunked.
        write_aged(&root.join("small"), "small");
        let seen = changes(&mut tree, |t, out| t.refresh(&p("small"), out));
        assert_eq!(seen, ["put file small"]);
    }

    #[test]
    fn a_file_that_changes_while_chunked_ends_its_stream_with_nothing_to_keep() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let mut tree = Tree::new(root, Model::new());
        write_aged(
            &root.join("big"),
            &"x".repeat(crate::chunk::CHUNKED_ABOVE as usize * 2),
        );
        let mut ended = None;
        let mut pieces = 0;
        tree.refresh(&p("big"), &mut |outcome| match outcome {
            Outcome::Chunk(..) => {
                pieces += 1;
                // The file changes under the reader after its first piece.
                if pieces == 1 {
                    fs::write(root.join("big"), "now short").expect("rewrite");
                }
            }
            Outcome::StreamEnd(hash) => ended = Some(hash),
            Outcome::Changed(observed) => panic!("published {}", observed.change),
            Outcome::Retry(_) => {}
        });
        assert!(pieces >= 1);
        assert_eq!(ended, Some(None), "the chunks are to be thrown away");
    }
}
