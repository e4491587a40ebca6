//! `BlobStore`: file content, addressed by SHA-256, under `SDIR/blobs/`.
//!
//! Content is written to `blobs/tmp/` while it arrives, hashed as it is written (on a thread
//! of its own, so hashing overlaps writing), and renamed to
//! `blobs/<first two hex digits>/<the rest>` only once the SHA-256 matches the address the
//! uploader commits it under. A blob in place is therefore always whole and correct.
//! Identical files are stored once. Nothing is ever deleted (no garbage collection yet).
//!
//! Blobs that arrive whole and are at most [`PACK_MAX`] bytes (small files, and every chunk
//! of a large one) skip the file and are appended to the store's [`Pack`] after the same
//! verification (see `pack.rs` for why). A manifest is content like any other; reading one
//! back for the rules is [`crate::rules::Content::manifest`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use filesync_master::chunk::Manifest;
use filesync_master::hash::{ContentHash, PieceHasher, CHUNK_SIZE};
use sha2::{Digest, Sha256};

use super::pack::{Pack, PACK_MAX};
use crate::event::is_sha256;

static UPLOAD_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("not a sha256: {0:?}")]
    BadAddress(String),
    #[error("no blob {0}")]
    Missing(String),
    #[error("upload piece out of order: expected offset {expected}, got {got}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("uploaded content hashes to {actual}, not {sha256}")]
    Mismatch { sha256: String, actual: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The store's directory and its pack of small blobs.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    pack: Mutex<Pack>,
}

/// A blob being received; its address is known only at `commit`.
pub struct Upload {
    temp: PathBuf,
    file: File,
    hasher: Option<PieceHasher>,
    written: u64,
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Abandoned or committed: either way the temporary name must go.
        let _ = fs::remove_file(&self.temp);
    }
}

impl BlobStore {
    pub fn open(dir: &Path) -> io::Result<BlobStore> {
        fs::create_dir_all(dir.join("tmp"))?;
        // Leftovers of uploads cut off by a crash.
        for entry in fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(BlobStore {
            dir: dir.to_path_buf(),
            pack: Mutex::new(Pack::open(&dir.join("small.pack"))?),
        })
    }

    fn pack(&self) -> MutexGuard<'_, Pack> {
        // The pack's state stays consistent even if a holder panicked: every change to it is
        // a complete append or none.
        self.pack
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn address_of(sha256: &str) -> Result<[u8; 32], BlobError> {
        let mut address = [0u8; 32];
        if !is_sha256(sha256) || hex::decode_to_slice(sha256, &mut address).is_err() {
            return Err(BlobError::BadAddress(sha256.to_owned()));
        }
        Ok(address)
    }

    fn path_of(&self, sha256: &str) -> Result<PathBuf, BlobError> {
        if !is_sha256(sha256) {
            return Err(BlobError::BadAddress(sha256.to_owned()));
        }
        Ok(self.dir.join(&sha256[..2]).join(&sha256[2..]))
    }

    pub fn contains(&self, sha256: &str) -> Result<bool, BlobError> {
        let address = Self::address_of(sha256)?;
        Ok(self.pack().contains(&address)? || self.path_of(sha256)?.is_file())
    }

    /// Stores content that arrived in one piece: verified, then packed when small enough,
    /// otherwise written as a file; content the store holds already is kept as it is.
    ///
    /// A small blob is not looked up first: the pack finds a duplicate as it appends, and a
    /// lookup of a new blob (the usual case) cost a `stat` of the file it might have been.
    pub fn put_whole(&self, sha256: &str, content: &[u8]) -> Result<(), BlobError> {
        let address = Self::address_of(sha256)?;
        if content.len() > PACK_MAX && self.contains(sha256)? {
            return Ok(());
        }
        let actual: [u8; 32] = Sha256::digest(content).into();
        if actual != address {
            return Err(BlobError::Mismatch {
                sha256: sha256.to_owned(),
                actual: hex::encode(actual),
            });
        }
        if content.len() <= PACK_MAX && self.pack().append(&address, content)? {
            return Ok(());
        }
        // Verified already: written and moved into place without hashing again.
        let (temp, mut file) = self.create_temp()?;
        let stored = file
            .write_all(content)
            .map_err(BlobError::from)
            .and_then(|()| self.move_into_place(&temp, sha256));
        if stored.is_err() {
            let _ = fs::remove_file(&temp);
        }
        stored
    }

    /// Starts receiving a blob in pieces.
    pub fn begin(&self) -> Result<Upload, BlobError> {
        let (temp, file) = self.create_temp()?;
        Ok(Upload {
            temp,
            file,
            // Pieces come one chunk at a time: larger than a chunk in all but name.
            hasher: Some(PieceHasher::new(u64::MAX)),
            written: 0,
        })
    }

    fn create_temp(&self) -> Result<(PathBuf, File), BlobError> {
        let temp = self.dir.join("tmp").join(format!(
            "upload-{}-{}",
            std::process::id(),
            UPLOAD_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        Ok((temp, file))
    }

    /// Appends a piece at `offset`, which must be where the previous piece ended.
    pub fn write(&self, upload: &mut Upload, offset: u64, piece: Vec<u8>) -> Result<(), BlobError> {
        if offset != upload.written {
            return Err(BlobError::OutOfOrder {
                expected: upload.written,
                got: offset,
            });
        }
        upload.file.write_all(&piece)?;
        upload.written += piece.len() as u64;
        if let Some(hasher) = &mut upload.hasher {
            hasher.update_owned(piece);
        }
        Ok(())
    }

    /// Verifies the content against `sha256` and moves it into place (or drops it, when the
    /// store holds that blob already).
    pub fn commit(&self, mut upload: Upload, sha256: &str) -> Result<(), BlobError> {
        let address = Self::address_of(sha256)?;
        let hashed = match upload.hasher.take() {
            Some(hasher) => hasher.finish()?,
            None => return Err(BlobError::Io(io::Error::other("upload committed twice"))),
        };
        if hashed.as_bytes() != &address {
            return Err(BlobError::Mismatch {
                sha256: sha256.to_owned(),
                actual: hashed.to_hex(),
            });
        }
        if self.contains(sha256)? {
            return Ok(());
        }
        self.move_into_place(&upload.temp, sha256)
    }

    fn move_into_place(&self, temp: &Path, sha256: &str) -> Result<(), BlobError> {
        let final_path = self.path_of(sha256)?;
        if let Some(parent) = final_path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(temp, &final_path)?;
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`; the flag is true when that reaches the end.
    pub fn read(&self, sha256: &str, offset: u64, len: u64) -> Result<(Vec<u8>, bool), BlobError> {
        let address = Self::address_of(sha256)?;
        if let Some(found) = self.pack().read(&address, offset, len)? {
            return Ok(found);
        }
        let path = self.path_of(sha256)?;
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::Missing(sha256.to_owned()))
            }
            Err(err) => return Err(err.into()),
        };
        let size = file.metadata()?.len();
        let start = offset.min(size);
        let want = len.min(size - start);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = vec![0u8; want as usize];
        file.read_exact(&mut buf)?;
        Ok((buf, start + want >= size))
    }
}

/// Manifests larger than this are not read (a 64 MiB manifest lists a 140 GiB file).
const MANIFEST_LIMIT: u64 = 64 << 20;

impl crate::rules::Content for BlobStore {
    fn has(&self, address: &ContentHash) -> bool {
        self.contains(&address.to_hex()).unwrap_or(false)
    }

    fn manifest(&self, address: &ContentHash) -> Option<Result<Manifest, String>> {
        let sha256 = address.to_hex();
        let mut bytes = Vec::new();
        loop {
            match self.read(&sha256, bytes.len() as u64, CHUNK_SIZE as u64) {
                Ok((piece, eof)) => {
                    bytes.extend_from_slice(&piece);
                    if eof || piece.is_empty() {
                        break;
                    }
                    if bytes.len() as u64 > MANIFEST_LIMIT {
                        return Some(Err(format!("larger than {MANIFEST_LIMIT} bytes")));
                    }
                }
                Err(BlobError::Missing(_)) => return None,
                Err(err) => return Some(Err(err.to_string())),
            }
        }
        Some(Manifest::decode(&bytes).map_err(|err| err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filesync_master::hash::sha256_hex;

    #[test]
    fn uploads_are_verified_before_they_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let sha = sha256_hex(b"hello world");
        let mut upload = store.begin().expect("begin");
        store
            .write(&mut upload, 0, b"hello ".to_vec())
            .expect("piece");
        assert!(matches!(
            store.write(&mut upload, 0, b"x".to_vec()),
            Err(BlobError::OutOfOrder { .. })
        ));
        store
            .write(&mut upload, 6, b"world".to_vec())
            .expect("piece");
        store.commit(upload, &sha).expect("commit");
        assert!(store.contains(&sha).expect("address"));
        assert_eq!(
            store.read(&sha, 6, 100).expect("read"),
            (b"world".to_vec(), true)
        );

        let wrong = sha256_hex(b"something else");
        let mut lie = store.begin().expect("begin");
        store.write(&mut lie, 0, b"not it".to_vec()).expect("piece");
        assert!(matches!(
            store.commit(lie, &wrong),
            Err(BlobError::Mismatch { .. })
        ));
        assert!(!store.contains(&wrong).expect("address"));
        let mut escape = store.begin().expect("begin");
        store.write(&mut escape, 0, b"x".to_vec()).expect("piece");
        assert!(matches!(
            store.commit(escape, "../../etc/passwd"),
            Err(BlobError::BadAddress(_))
        ));
        // Committing content the store already has keeps the one copy.
        let mut again = store.begin().expect("begin");
        store
            .write(&mut again, 0, b"hello world".to_vec())
            .expect("piece");
        store.commit(again, &sha).expect("commit a duplicate");
        assert_eq!(store.read(&sha, 0, 100).expect("read").0, b"hello world");
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn small_whole_blobs_are_packed_after_the_same_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let small = sha256_hex(b"small");
        assert!(matches!(
            store.put_whole(&small, b"tampered"),
            Err(BlobError::Mismatch { .. })
        ));
        assert!(!store.contains(&small).expect("address"));
        store.put_whole(&small, b"small").expect("put");
        assert!(store.contains(&small).expect("address"));
        assert!(
            !store.path_of(&small).expect("path").exists(),
            "in the pack"
        );
        assert_eq!(
            store.read(&small, 0, 100).expect("read"),
            (b"small".to_vec(), true)
        );
        let pack_size = || {
            fs::metadata(dir.path().join("small.pack"))
                .expect("pack")
                .len()
        };
        let before = pack_size();
        store.put_whole(&small, b"small").expect("put again");
        assert_eq!(pack_size(), before, "a duplicate is not appended twice");

        let big = vec![7u8; PACK_MAX + 1];
        let big_sha = sha256_hex(&big);
        store.put_whole(&big_sha, &big).expect("put");
        assert!(store.path_of(&big_sha).expect("path").is_file(), "a file");
        store
            .put_whole(&big_sha, &big)
            .expect("put again: kept as it is");
        drop(store);
        let store = BlobStore::open(dir.path()).expect("reopen");
        assert!(
            store.contains(&small).expect("address") && store.contains(&big_sha).expect("address")
        );
    }
}
