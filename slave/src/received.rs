//! Content received before its destination is known.
//!
//! A slave may follow a new large file while the master is still uploading its chunks
//! (`filesync::agent::follow`), before any notify says which path the content is for. It goes to a `LooseFile`
//! in the root (so the final rename stays on one file system), hashed as it is written.
//! `finish` yields a `ReceivedFile` that knows its own SHA-256 and size; `Applier::adopt`
//! puts it in place for a file put only when both match the change, so the promise "renamed
//! into place only after its SHA-256 is verified" holds on this path too. Dropped unadopted,
//! either removes its file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use filesync_master::hash::{ContentHash, PieceHasher};
use filesync_master::{Entry, Kind, RelPath};

use crate::apply::{remove_any, set_mode, temp_beside, Applied, Applier};
use crate::safety::resolve;
use crate::ApplyError;

/// Content being received for a path not yet known.
pub struct LooseFile {
    temp: PathBuf,
    file: File,
    hasher: PieceHasher,
    written: u64,
    kept: bool,
}

/// Content received whole, with its hash; see [`Applier::adopt`].
pub struct ReceivedFile {
    temp: PathBuf,
    sha256: ContentHash,
    size: u64,
    adopted: bool,
}

impl Applier {
    /// Opens a file in the root for content whose path is not known yet.
    pub fn loose_file(&self) -> io::Result<LooseFile> {
        let temp = temp_beside(&self.root().join("loose"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        Ok(LooseFile {
            temp,
            file,
            // Only large content is received this way.
            hasher: PieceHasher::new(u64::MAX),
            written: 0,
            kept: false,
        })
    }

    /// Puts received content in place as the file `entry` describes at `path`, when its
    /// size and SHA-256 are the entry's; otherwise it is refused (and removed).
    pub fn adopt(
        &self,
        path: &RelPath,
        entry: &Entry,
        mut received: ReceivedFile,
    ) -> Result<Applied, ApplyError> {
        let expected = entry
            .sha256
            .map(|sha256| sha256.to_hex())
            .unwrap_or_default();
        if entry.kind != Kind::File
            || entry.sha256 != Some(received.sha256)
            || entry.size != received.size
        {
            return Err(ApplyError::ContentMismatch {
                path: path.clone(),
                expected,
                actual: received.sha256.to_hex(),
            });
        }
        let target = resolve(self.root(), path, true)?;
        set_mode(&received.temp, entry.mode, path)?;
        if fs::symlink_metadata(&target).is_ok_and(|meta| meta.is_dir()) {
            remove_any(&target, path)?;
        }
        fs::rename(&received.temp, &target).map_err(|source| ApplyError::Io {
            action: "rename into place",
            path: path.clone(),
            source,
        })?;
        received.adopted = true;
        self.known().forget(path);
        Ok(Applied {
            sha256: Some(expected),
            bytes_written: received.size,
        })
    }
}

impl LooseFile {
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes the next piece; the hasher takes it over.
    pub fn write_owned(&mut self, piece: Vec<u8>) -> io::Result<()> {
        self.file.write_all(&piece)?;
        self.written += piece.len() as u64;
        self.hasher.update_owned(piece);
        Ok(())
    }

    /// The content is whole: its hash, for `Applier::adopt`.
    pub fn finish(mut self) -> io::Result<ReceivedFile> {
        let hasher = std::mem::replace(&mut self.hasher, PieceHasher::new(0));
        let sha256 = hasher.finish()?;
        self.kept = true;
        Ok(ReceivedFile {
            temp: self.temp.clone(),
            sha256,
            size: self.written,
            adopted: false,
        })
    }
}

impl Drop for LooseFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

impl ReceivedFile {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn sha256(&self) -> ContentHash {
        self.sha256
    }

    pub fn path(&self) -> &Path {
        &self.temp
    }
}

impl Drop for ReceivedFile {
    fn drop(&mut self) {
        if !self.adopted {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).expect("valid test path")
    }

    fn receive(applier: &Applier, content: &[u8]) -> ReceivedFile {
        let mut loose = applier.loose_file().expect("loose");
        for piece in content.chunks(3) {
            loose.write_owned(piece.to_vec()).expect("write");
        }
        loose.finish().expect("finish")
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn received_content_is_adopted_only_for_its_own_hash_and_size() {
        let root = tempfile::tempdir().expect("tempdir");
        let applier = Applier::new(root.path());
        let content = b"early content";
        let entry = Entry::file(content.len() as u64, ContentHash::of(content), 0o640);

        let wrong = Entry::file(content.len() as u64, ContentHash::of(b"other"), 0o640);
        let refused = applier.adopt(&p("d/f"), &wrong, receive(&applier, content));
        assert!(matches!(refused, Err(ApplyError::ContentMismatch { .. })));
        assert!(
            listing(root.path()).is_empty(),
            "refused content is removed"
        );

        let applied = applier
            .adopt(&p("d/f"), &entry, receive(&applier, content))
            .expect("adopt");
        assert_eq!(applied.sha256, entry.sha256.map(|h| h.to_hex()));
        assert_eq!(fs::read(root.path().join("d/f")).expect("read"), content);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(root.path().join("d/f"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(listing(root.path()), ["d"], "nothing left in the root");
    }

    #[test]
    fn unfinished_or_unadopted_content_leaves_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let applier = Applier::new(root.path());
        let mut loose = applier.loose_file().expect("loose");
        loose.write_owned(b"half".to_vec()).expect("write");
        drop(loose);
        drop(receive(&applier, b"whole"));
        assert!(listing(root.path()).is_empty());
    }

    #[test]
    fn leftovers_of_a_killed_slave_are_removed_and_nothing_else() {
        let root = tempfile::tempdir().expect("tempdir");
        let applier = Applier::new(root.path());
        // What a slave killed while receiving leaves (its process id, a counter).
        fs::write(root.path().join(".filesync-tmp-4242-7"), "cut off").expect("write");
        fs::write(root.path().join("kept.txt"), "mine").expect("write");
        fs::create_dir(root.path().join(".filesync-tmp-dir")).expect("mkdir");
        assert_eq!(applier.remove_leftovers().expect("clean"), 1);
        assert_eq!(listing(root.path()), [".filesync-tmp-dir", "kept.txt"]);
    }

    #[test]
    fn adopting_refuses_to_write_through_a_symlinked_parent() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), root.path().join("evil")).expect("symlink");
        let applier = Applier::new(root.path());
        let content = b"x";
        let entry = Entry::file(1, ContentHash::of(content), 0o644);
        let refused = applier.adopt(&p("evil/f"), &entry, receive(&applier, content));
        assert!(matches!(refused, Err(ApplyError::Unsafe { .. })));
        assert!(fs::read_dir(outside.path()).expect("read").next().is_none());
        assert_eq!(listing(root.path()), ["evil"]);
    }
}
