//! `Applier`: applies `Change`s to the slave's directory, atomically and idempotently.
//!
//! - A file is written to a temporary file in its target's directory, hashed while written,
//!   checked against the expected SHA-256, given its mode, and only then put in place: a new
//!   file is written unnamed (`O_TMPFILE`) and linked in, a replacement gets a temporary name
//!   and is renamed over the old file (both atomic). A reader sees the old file or the new
//!   one, and an unnamed file left by a crash is freed by the kernel, not left behind.
//! - Every change can be applied twice with the same result (a slave that crashed after
//!   applying but before recording its position applies it again on restart).
//! - Content arrives in pieces through `StagedFile::write`, so the caller decides where it
//!   comes from (the bus's blob store) and memory never depends on file size.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use filesync_master::hash::PieceHasher;
use filesync_master::TEMP_PREFIX;
use filesync_master::{Change, Entry, Kind, RelPath};
use sha2::{Digest, Sha256};

use crate::known::{Known, KnownCopies};
use crate::safety::resolve;
use crate::ApplyError;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What a change left on disk, echoed in the slave's consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// SHA-256 of the file now at the target (file puts only).
    pub sha256: Option<String>,
    /// Bytes written (0 when the target already held this content).
    pub bytes_written: u64,
}

/// The slave's directory.
#[derive(Debug, Clone)]
pub struct Applier {
    root: PathBuf,
    umask: Umask,
    known: KnownCopies,
}

impl Applier {
    pub fn new(root: &Path) -> Applier {
        Applier {
            root: root.to_path_buf(),
            umask: Umask::read(),
            known: KnownCopies::default(),
        }
    }

    /// The same directory, with records of large copies kept from before (`known.rs`).
    pub fn knowing(self, known: KnownCopies) -> Applier {
        Applier { known, ..self }
    }

    /// What is known of the large files at `path`, while they are as written.
    pub fn known(&self) -> &KnownCopies {
        &self.known
    }

    /// `path` was just given `known` (committed or adopted): remembered with the file's
    /// metadata as it is now.
    pub fn remember(&self, path: &RelPath, known: Known) {
        let meta = resolve(&self.root, path, false)
            .ok()
            .and_then(|target| fs::symlink_metadata(target).ok());
        match meta {
            Some(meta) => self.known.remember(path, known, &meta),
            None => self.known.forget(path),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Applies a change that needs no content: a directory or symlink put, a delete, a move.
    /// File puts go through `start_file` (or `stage_file`).
    pub fn apply(&self, change: &Change) -> Result<Applied, ApplyError> {
        match change {
            Change::Move { from, to, .. } => self.known.moved(from, to),
            Change::Put { path, .. } | Change::Delete { path, .. } => self.known.forget(path),
        }
        match change {
            Change::Put { path, entry } => match entry.kind {
                Kind::Dir => self.put_dir(path, entry.mode),
                Kind::Symlink => {
                    self.put_symlink(path, entry.target.as_deref().unwrap_or_default())
                }
                Kind::File => Err(ApplyError::Invalid {
                    path: path.clone(),
                    reason: "file content must be staged".into(),
                }),
            },
            Change::Delete { path, .. } => self.delete(path),
            Change::Move { from, to, .. } => self.rename(from, to),
        }
    }

    /// Begins a file put: when the target already holds exactly this file (same size and
    /// hash) only its mode is fixed, so re-applying costs no writes; otherwise a temporary
    /// file is opened beside it for the content. The path is resolved and the target looked
    /// at once (a burst of small files is bound by system calls; see docs/BENCHMARKS.md).
    pub fn start_file(&self, path: &RelPath, entry: &Entry) -> Result<FileStart, ApplyError> {
        let target = resolve(&self.root, path, true)?;
        let existing = fs::symlink_metadata(&target).ok();
        if let Some(meta) = &existing {
            if meta.is_file() && meta.len() == entry.size {
                if let Ok(sha256) = hash_path(&target) {
                    if entry
                        .sha256
                        .is_some_and(|expected| expected.to_hex() == sha256)
                    {
                        set_mode(&target, entry.mode, path)?;
                        return Ok(FileStart::Done(Applied {
                            sha256: Some(sha256),
                            bytes_written: 0,
                        }));
                    }
                }
            }
        }
        self.stage_at(path, entry, target, Replaces::of(existing.as_ref()))
            .map(|staged| FileStart::Stage(Box::new(staged)))
    }

    /// Removes the temporary files a slave killed mid-transfer left anywhere under the
    /// root (beside the files it was replacing); returns how many. Call before applying
    /// anything: a slave is its root's only writer of such names.
    pub fn remove_leftovers(&self) -> io::Result<usize> {
        crate::verify::remove_leftovers(&self.root)
    }

    /// The regular file at `path` as it is now, opened for reading (never through a
    /// symlink), so that its chunks can be reused for a new version; `None` when there is
    /// none (or a parent is missing).
    pub fn current_copy(&self, path: &RelPath) -> Result<Option<File>, ApplyError> {
        let target = match resolve(&self.root, path, false) {
            Ok(target) => target,
            Err(ApplyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(err) => return Err(err),
        };
        match filesync_master::hash::open_file(&target) {
            Ok((file, meta)) if meta.is_file() => Ok(Some(file)),
            _ => Ok(None),
        }
    }

    /// The target holds `entry`'s content already, as the caller has just verified: only
    /// its mode is set.
    pub fn confirm(&self, path: &RelPath, entry: &Entry) -> Result<Applied, ApplyError> {
        let target = resolve(&self.root, path, false)?;
        set_mode(&target, entry.mode, path)?;
        Ok(Applied {
            sha256: entry.sha256.map(|sha256| sha256.to_hex()),
            bytes_written: 0,
        })
    }

    /// Opens a temporary file beside `path` for its new content.
    pub fn stage_file(&self, path: &RelPath, entry: &Entry) -> Result<StagedFile, ApplyError> {
        let target = resolve(&self.root, path, true)?;
        let existing = fs::symlink_metadata(&target).ok();
        self.stage_at(path, entry, target, Replaces::of(existing.as_ref()))
    }

    fn stage_at(
        &self,
        path: &RelPath,
        entry: &Entry,
        target: PathBuf,
        replaces: Replaces,
    ) -> Result<StagedFile, ApplyError> {
        // Created with its final mode when the umask lets it through unchanged, which saves
        // a chmod per file; otherwise private until `commit` sets the mode.
        let mode_at_creation = self.umask.creates(entry.mode);
        let mode = mode_at_creation.unwrap_or(0o600);
        // A new file is written without a name and linked into place; the kernel frees it
        // if we die first. Otherwise (or where unnamed files are not supported) it gets a
        // temporary name beside the target and is renamed over it.
        let unnamed = (replaces == Replaces::Nothing)
            .then(|| create_unnamed_beside(&target, mode))
            .flatten();
        let (file, temp) = match unnamed {
            Some(file) => (file, None),
            None => {
                let temp = temp_beside(&target);
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&temp)
                    .map_err(|source| ApplyError::Io {
                        action: "create temporary file for",
                        path: path.clone(),
                        source,
                    })?;
                (file, Some(temp))
            }
        };
        reserve(&file, entry.size).map_err(|source| {
            if let Some(temp) = &temp {
                let _ = fs::remove_file(temp);
            }
            ApplyError::Io {
                action: "reserve space for",
                path: path.clone(),
                source,
            }
        })?;
        Ok(StagedFile {
            path: path.clone(),
            entry: entry.clone(),
            target,
            temp,
            file: Some(file),
            hasher: Some(PieceHasher::new(entry.size)),
            written: 0,
            mode_set: mode_at_creation.is_some(),
            replaces_dir: replaces == Replaces::Dir,
            committed: false,
            known: self.known.clone(),
        })
    }

    fn put_dir(&self, path: &RelPath, mode: u32) -> Result<Applied, ApplyError> {
        let target = resolve(&self.root, path, true)?;
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => remove_any(&target, path)?,
            Err(_) => {}
        }
        match fs::create_dir(&target) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(ApplyError::Io {
                    action: "create directory",
                    path: path.clone(),
                    source,
                })
            }
        }
        set_mode(&target, mode, path)?;
        Ok(Applied {
            sha256: None,
            bytes_written: 0,
        })
    }

    fn put_symlink(&self, path: &RelPath, link_target: &[u8]) -> Result<Applied, ApplyError> {
        let target = resolve(&self.root, path, true)?;
        if let Ok(existing) = fs::read_link(&target) {
            if existing.as_os_str().as_bytes() == link_target {
                return Ok(Applied {
                    sha256: None,
                    bytes_written: 0,
                });
            }
        }
        if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            remove_any(&target, path)?;
        }
        let temp = temp_beside(&target);
        std::os::unix::fs::symlink(OsStr::from_bytes(link_target), &temp).map_err(|source| {
            ApplyError::Io {
                action: "create symlink",
                path: path.clone(),
                source,
            }
        })?;
        fs::rename(&temp, &target).map_err(|source| {
            let _ = fs::remove_file(&temp);
            ApplyError::Io {
                action: "rename symlink into place at",
                path: path.clone(),
                source,
            }
        })?;
        Ok(Applied {
            sha256: None,
            bytes_written: 0,
        })
    }

    fn delete(&self, path: &RelPath) -> Result<Applied, ApplyError> {
        let target = resolve(&self.root, path, false)?;
        match fs::symlink_metadata(&target) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ApplyError::Io {
                    action: "inspect",
                    path: path.clone(),
                    source,
                })
            }
            Ok(_) => remove_any(&target, path)?,
        }
        Ok(Applied {
            sha256: None,
            bytes_written: 0,
        })
    }

    fn rename(&self, from: &RelPath, to: &RelPath) -> Result<Applied, ApplyError> {
        if to.starts_with(from) {
            return Err(ApplyError::Invalid {
                path: to.clone(),
                reason: format!("cannot move {from} into itself"),
            });
        }
        let source = resolve(&self.root, from, false)?;
        let dest = resolve(&self.root, to, true)?;
        let source_meta = match fs::symlink_metadata(&source) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                // Applied before (a restart replays it): fine when the destination exists.
                if fs::symlink_metadata(&dest).is_ok() {
                    return Ok(Applied {
                        sha256: None,
                        bytes_written: 0,
                    });
                }
                return Err(ApplyError::Missing(from.clone()));
            }
            Err(source) => {
                return Err(ApplyError::Io {
                    action: "inspect",
                    path: from.clone(),
                    source,
                })
            }
        };
        // rename(2) cannot replace a non-empty directory, or a directory by a file.
        if let Ok(dest_meta) = fs::symlink_metadata(&dest) {
            if dest_meta.is_dir() || source_meta.is_dir() {
                remove_any(&dest, to)?;
            }
        }
        fs::rename(&source, &dest).map_err(|source| ApplyError::Io {
            action: "rename",
            path: from.clone(),
            source,
        })?;
        Ok(Applied {
            sha256: None,
            bytes_written: 0,
        })
    }
}

/// What was at a file put's target when it was staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replaces {
    Nothing,
    Dir,
    Other,
}

impl Replaces {
    /// From the target's `lstat`, if it had one.
    fn of(existing: Option<&fs::Metadata>) -> Replaces {
        match existing {
            None => Replaces::Nothing,
            Some(meta) if meta.is_dir() => Replaces::Dir,
            Some(_) => Replaces::Other,
        }
    }
}

/// A file being received: content goes to a temporary file, and `commit` links or renames
/// it into place once its hash is verified. Dropping it uncommitted removes the temporary
/// file (an unnamed one simply goes with its descriptor).
pub struct StagedFile {
    path: RelPath,
    entry: Entry,
    target: PathBuf,
    /// The temporary name; `None` for an unnamed file (`O_TMPFILE`), linked in at commit.
    temp: Option<PathBuf>,
    file: Option<File>,
    /// Hashes what was written; on its own thread for large files, so that writing one
    /// piece overlaps with hashing the one before. Taken by `commit`.
    hasher: Option<PieceHasher>,
    written: u64,
    /// The temporary file was created with the entry's mode.
    mode_set: bool,
    /// The target was a directory when staging began.
    replaces_dir: bool,
    committed: bool,
    /// Told when the target is replaced.
    known: KnownCopies,
}

/// How a file put begins; see [`Applier::start_file`].
pub enum FileStart {
    /// The target already held this content; nothing to fetch.
    Done(Applied),
    /// Write the content here, then commit. (Boxed: it is the large variant.)
    Stage(Box<StagedFile>),
}

impl StagedFile {
    /// Bytes received so far (where the next piece starts).
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ApplyError> {
        self.write_to_disk(bytes)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(bytes);
        }
        Ok(())
    }

    /// Like `write`, for a piece the caller is done with: a large file's hasher takes it over
    /// instead of a copy.
    pub fn write_owned(&mut self, piece: Vec<u8>) -> Result<(), ApplyError> {
        self.write_to_disk(&piece)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update_owned(piece);
        }
        Ok(())
    }

    fn write_to_disk(&mut self, bytes: &[u8]) -> Result<(), ApplyError> {
        let file = self.file.as_mut().ok_or_else(|| ApplyError::Invalid {
            path: self.path.clone(),
            reason: "staged file already closed".into(),
        })?;
        file.write_all(bytes).map_err(|source| ApplyError::Io {
            action: "write",
            path: self.path.clone(),
            source,
        })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Verifies size and SHA-256, sets the mode and links or renames the file into place.
    pub fn commit(mut self) -> Result<Applied, ApplyError> {
        // Open until it is in place: an unnamed file is linked through its descriptor.
        let file = self.file.take().ok_or_else(|| ApplyError::Invalid {
            path: self.path.clone(),
            reason: "staged file already closed".into(),
        })?;
        let hashed = self
            .hasher
            .take()
            .map(PieceHasher::finish)
            .transpose()
            .map_err(|source| ApplyError::Io {
                action: "hash",
                path: self.path.clone(),
                source,
            })?;
        let actual = hashed.map(|sha256| sha256.to_hex()).unwrap_or_default();
        let expected = self
            .entry
            .sha256
            .map(|sha256| sha256.to_hex())
            .unwrap_or_default();
        if actual != expected || self.written != self.entry.size {
            return Err(ApplyError::ContentMismatch {
                path: self.path.clone(),
                expected,
                actual,
            });
        }
        let io_error = |action: &'static str, path: &RelPath| {
            let path = path.clone();
            move |source| ApplyError::Io {
                action,
                path,
                source,
            }
        };
        if !self.mode_set {
            file.set_permissions(fs::Permissions::from_mode(self.entry.mode))
                .map_err(io_error("set mode of", &self.path))?;
        }
        match &self.temp {
            Some(temp) => {
                if self.replaces_dir {
                    remove_any(&self.target, &self.path)?;
                }
                fs::rename(temp, &self.target)
                    .map_err(io_error("rename into place", &self.path))?;
            }
            None => link_into_place(&file, &self.target)
                .map_err(io_error("link into place", &self.path))?,
        }
        self.committed = true;
        self.known.forget(&self.path);
        Ok(Applied {
            sha256: Some(actual),
            bytes_written: self.written,
        })
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        // Uncommitted (an error, a disconnect): leave nothing behind.
        if let (false, Some(temp)) = (self.committed, &self.temp) {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Set once linking an unnamed file failed where copying it out worked (a /proc that hides
/// descriptors, say): from then on new files get a named temporary file from the start.
static LINKING_UNNAMED_FAILS: AtomicBool = AtomicBool::new(false);

/// Whether unnamed files can be linked in through `/proc/self/fd` (without /proc, a file
/// made with `O_TMPFILE` could never be given a name by an unprivileged process).
fn can_link_unnamed() -> bool {
    static PROC_FD: OnceLock<bool> = OnceLock::new();
    !LINKING_UNNAMED_FAILS.load(Ordering::Relaxed)
        && *PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// An unnamed file in `target`'s directory (`O_TMPFILE`), or `None` where that is not
/// supported; the caller then makes a named temporary file, which reports any real error.
/// Opened for reading too, so that its content can still be copied out if linking fails.
fn create_unnamed_beside(target: &Path, mode: u32) -> Option<File> {
    if !can_link_unnamed() {
        return None;
    }
    let dir = target.parent()?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .mode(mode)
        .custom_flags(nix::libc::O_TMPFILE)
        .open(dir)
        .ok()
}

/// Gives the unnamed `file` the name `target`. When something took that name since the file
/// was staged, the file is linked under a temporary name and renamed over it, as a named
/// temporary file would have been. When linking itself is refused, the verified content is
/// copied into a named temporary file instead (and later files skip the unnamed step); an
/// error from that copy is the one reported (a full disk, say).
fn link_into_place(file: &File, target: &Path) -> io::Result<()> {
    let link = |name: &Path| {
        if LINK_BY_EMPTY_PATH.load(Ordering::Relaxed) {
            match link_unnamed(file, name, LinkBy::EmptyPath) {
                Err(err) if refused(&err) => {
                    // Not ours to use here (unprivileged, before Linux 6.10): /proc is.
                    link_unnamed(file, name, LinkBy::Proc)?;
                    LINK_BY_EMPTY_PATH.store(false, Ordering::Relaxed);
                    tracing::debug!("linking unnamed files through /proc/self/fd ({err})");
                    Ok(())
                }
                linked => linked,
            }
        } else {
            link_unnamed(file, name, LinkBy::Proc)
        }
    };
    let temp = temp_beside(target);
    let linked = match link(target) {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => link(&temp),
        Ok(()) => return Ok(()),
        Err(err) => Err(err),
    };
    let placed = match linked {
        Ok(()) => fs::rename(&temp, target),
        Err(link_error) => {
            let copied = copy_out(file, &temp).and_then(|()| fs::rename(&temp, target));
            if copied.is_ok() {
                tracing::warn!(
                    "cannot link unnamed files ({link_error}); new files get a named temporary file from now on"
                );
                LINKING_UNNAMED_FAILS.store(true, Ordering::Relaxed);
            }
            copied
        }
    };
    placed.inspect_err(|_| {
        let _ = fs::remove_file(&temp);
    })
}

/// Cleared when `linkat(AT_EMPTY_PATH)` is refused where linking through /proc works.
static LINK_BY_EMPTY_PATH: AtomicBool = AtomicBool::new(true);

/// How an unnamed file is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkBy {
    /// `linkat(fd, "", AT_EMPTY_PATH)`: no path to look up. Linux allows it to a process
    /// with CAP_DAC_READ_SEARCH, and from 6.10 to the process that opened the file. A tenth
    /// of the time a new 4 KiB file costs less than through /proc (docs/BENCHMARKS.md).
    EmptyPath,
    /// `linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW)`: open to every process with /proc.
    Proc,
}

fn link_unnamed(file: &File, name: &Path, by: LinkBy) -> io::Result<()> {
    use nix::fcntl::AtFlags;
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let linked = match by {
        LinkBy::EmptyPath => {
            nix::unistd::linkat(Some(fd), Path::new(""), None, name, AtFlags::AT_EMPTY_PATH)
        }
        LinkBy::Proc => {
            let by_descriptor = format!("/proc/self/fd/{fd}");
            nix::unistd::linkat(
                None,
                Path::new(&by_descriptor),
                None,
                name,
                AtFlags::AT_SYMLINK_FOLLOW,
            )
        }
    };
    linked.map_err(io::Error::from)
}

/// How the kernel says no to `AT_EMPTY_PATH` (ENOENT, as for a file without a name; EPERM
/// from a security module).
fn refused(err: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        err.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOENT | Errno::EPERM)
    )
}

/// Copies all of `file` (from its start) into a new file at `temp`, with `file`'s mode.
fn copy_out(file: &File, temp: &Path) -> io::Result<()> {
    use std::io::Seek;
    let mode = file.metadata()?.permissions().mode();
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(temp)?;
    let mut source = file;
    source.rewind()?;
    io::copy(&mut source, &mut out)?;
    out.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Reserves the space of a file larger than one piece before its content arrives: a full
/// disk is then reported at once, not after most of the file was received, and the file
/// system allocates its blocks in one go. File systems that cannot reserve (some network
/// ones) are simply written to.
fn reserve(file: &File, size: u64) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    use std::os::fd::AsRawFd;
    if size <= filesync_master::hash::CHUNK_SIZE as u64 {
        return Ok(());
    }
    let Ok(len) = i64::try_from(size) else {
        return Ok(());
    };
    match fallocate(file.as_raw_fd(), FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => Ok(()),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

pub(crate) fn temp_beside(target: &Path) -> PathBuf {
    let mut name = TEMP_PREFIX.to_vec();
    name.extend_from_slice(
        format!(
            "{}-{}",
            process_id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        )
        .as_bytes(),
    );
    target.with_file_name(OsStr::from_bytes(&name))
}

/// This process's id, asked of the kernel once (it is part of every temporary name).
fn process_id() -> u32 {
    static ID: OnceLock<u32> = OnceLock::new();
    *ID.get_or_init(std::process::id)
}

/// The process's file-creation mask, read once from `/proc/self/status`. Unknown (no /proc)
/// means every new file gets an explicit chmod.
#[derive(Debug, Clone, Copy)]
struct Umask(Option<u32>);

impl Umask {
    fn read() -> Umask {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        Umask(
            status
                .lines()
                .find_map(|line| line.strip_prefix("Umask:"))
                .and_then(|value| u32::from_str_radix(value.trim(), 8).ok()),
        )
    }

    /// The mode to create a file with so that it ends up exactly `mode`, if the mask allows.
    fn creates(self, mode: u32) -> Option<u32> {
        let umask = self.0?;
        // open(2) ignores the setuid, setgid and sticky bits' requests in some cases; leave
        // those to an explicit chmod.
        (mode & 0o7000 == 0 && mode & umask == 0).then_some(mode)
    }
}

pub(crate) fn set_mode(target: &Path, mode: u32, path: &RelPath) -> Result<(), ApplyError> {
    fs::set_permissions(target, fs::Permissions::from_mode(mode)).map_err(|source| ApplyError::Io {
        action: "set mode of",
        path: path.clone(),
        source,
    })
}

pub(crate) fn remove_any(target: &Path, path: &RelPath) -> Result<(), ApplyError> {
    let result = match fs::symlink_metadata(target) {
        // remove_dir_all does not follow symlinks inside the tree.
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(target),
        Ok(_) => fs::remove_file(target),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    };
    result.map_err(|source| ApplyError::Io {
        action: "remove",
        path: path.clone(),
        source,
    })
}

fn hash_path(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Both ways of naming an unnamed file work, and neither replaces an existing name
    /// (the caller then links under a temporary name and renames).
    #[test]
    fn an_unnamed_file_is_linked_by_descriptor_either_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        for by in [LinkBy::EmptyPath, LinkBy::Proc] {
            let target = dir.path().join(format!("{by:?}"));
            let Some(mut file) = create_unnamed_beside(&target, 0o644) else {
                return; // no O_TMPFILE here: the named path is the only one
            };
            file.write_all(b"linked").expect("write");
            match link_unnamed(&file, &target, by) {
                Ok(()) => {}
                // Unprivileged before Linux 6.10: the caller falls back to /proc.
                Err(err) if by == LinkBy::EmptyPath && refused(&err) => continue,
                Err(err) => panic!("{by:?}: {err}"),
            }
            assert_eq!(fs::read(&target).expect("read"), b"linked", "{by:?}");
            let again = link_unnamed(&file, &target, by).expect_err("name taken");
            assert_eq!(again.kind(), io::ErrorKind::AlreadyExists, "{by:?}");
        }
    }

    /// Where linking an unnamed file is refused, its content is copied out instead: whole,
    /// with its mode, whatever the descriptor's position after writing.
    #[test]
    fn an_unnamed_file_can_be_copied_out_when_it_cannot_be_linked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("f");
        let Some(mut file) = create_unnamed_beside(&target, 0o640) else {
            return; // no O_TMPFILE here: the named path is the only one
        };
        file.write_all(b"verified content").expect("write");
        let temp = temp_beside(&target);
        copy_out(&file, &temp).expect("copy out");
        assert_eq!(fs::read(&temp).expect("read"), b"verified content");
        let mode = fs::metadata(&temp).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }
}
