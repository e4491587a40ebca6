//! `BlobStore`: file content, addressed by SHA-256, under `SDIR/blobs/`.
//!
//! Content is written to `blobs/tmp/` while it arrives, hashed as it is written (on a thread
//! of its own, so hashing overlaps writing), and renamed to
//! `blobs/<first two hex digits>/<the rest>` only once the SHA-256 matches the address the
//! uploader commits it under. A blob in place is therefore always whole and correct.
//! Identical files are stored once. Content no longer referred to is removed by the
//! collector (`gc.rs`): it first *dooms* it (the store then says it lacks it, so nothing
//! new can refer to it, and an upload of it spares it), then removes what is still doomed.
//!
//! Blobs that arrive whole and are at most [`PACK_MAX`] bytes (small files, and every chunk
//! of a large one) skip the file and are appended to the store's [`Packs`] after the same
//! verification (see `pack.rs` for why). A manifest is content like any other; reading one
//! back for the rules is [`crate::rules::Content::manifest`].

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use filesync_master::chunk::Manifest;
use filesync_master::hash::{ContentHash, PieceHasher};

use super::protocol::PIECE_SIZE;
use sha2::{Digest, Sha256};

use super::pack::{Packs, PACK_MAX};
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

/// Where content to store comes from, which says whether the store must hash it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A peer across a connection: verified against its address before it is stored.
    Peer,
    /// This process, which computed the address from these bytes (a master hosting its
    /// bus, through its in-process link): hashing them again proves nothing.
    ThisProcess,
}

/// The store's directory and its pack of small blobs.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    pack: Mutex<Packs>,
    /// Blobs the collector is about to remove: reported absent meanwhile.
    doomed: Mutex<HashSet<[u8; 32]>>,
}

/// One stored blob, as the collector lists it.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    pub address: ContentHash,
    pub size: u64,
}

/// What `remove_doomed` removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub blobs: usize,
    /// Bytes the store's files shrank by.
    pub bytes: u64,
}

/// A repack copies at most this many bytes a second while uploads go on.
const REPACK_PACE: u64 = 128 << 20;

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
        // Left by a compaction of the single pack of older versions, cut off by a crash.
        let _ = fs::remove_file(dir.join("small.pack.compact"));
        Ok(BlobStore {
            dir: dir.to_path_buf(),
            pack: Mutex::new(Packs::open(dir)?),
            doomed: Mutex::new(HashSet::new()),
        })
    }

    /// Opens a store to read it, beside the bus that may be writing it (`filesync restore`).
    pub fn open_read_only(dir: &Path) -> io::Result<BlobStore> {
        Ok(BlobStore {
            dir: dir.to_path_buf(),
            pack: Mutex::new(Packs::open_read_only(dir)?),
            doomed: Mutex::new(HashSet::new()),
        })
    }

    fn doomed(&self) -> MutexGuard<'_, HashSet<[u8; 32]>> {
        self.doomed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every blob stored: the pack's records, then the files.
    pub fn list(&self) -> io::Result<Vec<Stored>> {
        let mut stored: Vec<Stored> = self
            .pack()
            .records()?
            .into_iter()
            .map(|(address, size)| Stored {
                address: address.into(),
                size,
            })
            .collect();
        for dir in fs::read_dir(&self.dir)? {
            let dir = dir?;
            let name = dir.file_name();
            let Some(first) = name.to_str().filter(|n| n.len() == 2) else {
                continue;
            };
            for file in fs::read_dir(dir.path())? {
                let file = file?;
                let name = file.file_name();
                let hex = format!("{first}{}", name.to_string_lossy());
                if let Some(address) = ContentHash::parse_hex(&hex) {
                    let size = file.metadata()?.len();
                    stored.push(Stored { address, size });
                }
            }
        }
        Ok(stored)
    }

    /// Marks blobs for removal: from now on the store says it lacks them, until an upload
    /// of one spares it.
    pub fn doom(&self, addresses: impl IntoIterator<Item = ContentHash>) {
        self.doomed()
            .extend(addresses.into_iter().map(|a| *a.as_bytes()));
    }

    /// Takes blobs out of the doomed set (referred to again).
    pub fn spare(&self, addresses: impl IntoIterator<Item = ContentHash>) {
        let mut doomed = self.doomed();
        for address in addresses {
            doomed.remove(address.as_bytes());
        }
    }

    /// How many blobs are doomed now.
    pub fn doomed_count(&self) -> usize {
        self.doomed().len()
    }

    /// Removes every blob still doomed: files at once; packed records with their pack, when
    /// enough of it is doomed (otherwise they are spared, and wait for a later pass).
    /// The doomed set is empty afterwards.
    pub fn remove_doomed(&self) -> io::Result<Removed> {
        let mut removed = Removed::default();
        let files: Vec<[u8; 32]> = self.doomed().iter().copied().collect();
        for address in files {
            let path = self
                .dir
                .join(hex::encode(&address[..1]))
                .join(hex::encode(&address[1..]));
            // Checked and removed under the lock an upload spares it under.
            let doomed = self.doomed();
            if !doomed.contains(&address) {
                continue;
            }
            match fs::metadata(&path) {
                Ok(meta) => {
                    fs::remove_file(&path)?;
                    removed.blobs += 1;
                    removed.bytes += meta.len();
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        let compacted = self.collect_packs();
        self.doomed().clear();
        let (blobs, bytes) = compacted?;
        removed.blobs += blobs;
        removed.bytes += bytes;
        Ok(removed)
    }

    /// Collects the packs worth it (see `pack.rs`): their records not doomed are moved to
    /// the newest pack, paced, then the packs go. Returns the records dropped and the bytes
    /// freed.
    fn collect_packs(&self) -> io::Result<(usize, u64)> {
        let worth = {
            let mut packs = self.pack();
            let doomed = self.doomed();
            packs.survey(&doomed)
        };
        if worth.is_empty() {
            return Ok((0, 0));
        }
        let began = Instant::now();
        let mut moved = 0u64;
        for &id in &worth {
            let addresses = self.pack().records_in(id)?;
            for address in addresses {
                if self.doomed().contains(&address) {
                    continue;
                }
                moved += self.pack().relocate(&address, id)?;
                let due = Duration::from_secs_f64(moved as f64 / REPACK_PACE as f64);
                if let Some(ahead) = due.checked_sub(began.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        }
        let mut packs = self.pack();
        let doomed = self.doomed();
        packs.retire(&worth, &doomed)
    }

    fn pack(&self) -> MutexGuard<'_, Packs> {
        // The packs' state stays consistent even if a holder panicked: every change to it is
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
        if self.doomed().contains(&address) {
            return Ok(false);
        }
        Ok(self.pack().contains(&address)? || self.path_of(sha256)?.is_file())
    }

    /// Stores content that arrived in one piece: verified (see below), then packed when small enough,
    /// otherwise written as a file; content the store holds already is kept as it is.
    ///
    /// A small blob is not looked up first: the pack finds a duplicate as it appends, and a
    /// lookup of a new blob (the usual case) cost a `stat` of the file it might have been.
    ///
    /// Content from a peer is verified; this process's own (`origin`: the master hosting
    /// this bus, which hashed these very bytes) is not hashed a second time.
    pub fn put_whole(&self, sha256: &str, content: &[u8], origin: Origin) -> Result<(), BlobError> {
        let address = Self::address_of(sha256)?;
        self.doomed().remove(&address);
        if content.len() > PACK_MAX && self.contains(sha256)? {
            return Ok(());
        }
        if origin == Origin::Peer {
            let actual: [u8; 32] = Sha256::digest(content).into();
            if actual != address {
                return Err(BlobError::Mismatch {
                    sha256: sha256.to_owned(),
                    actual: hex::encode(actual),
                });
            }
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
        self.doomed().remove(&address);
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
            match self.read(&sha256, bytes.len() as u64, PIECE_SIZE as u64) {
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
    fn only_content_from_this_process_is_stored_without_hashing_it_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let chunk = vec![9u8; 100_000];
        let sha = sha256_hex(&chunk);
        assert!(matches!(
            store.put_whole(&sha, b"not the chunk", Origin::Peer),
            Err(BlobError::Mismatch { .. })
        ));
        assert!(!store.contains(&sha).expect("address"));
        store
            .put_whole(&sha, &chunk, Origin::ThisProcess)
            .expect("put");
        assert_eq!(store.read(&sha, 0, 1 << 20).expect("read"), (chunk, true));
    }

    #[test]
    fn small_whole_blobs_are_packed_after_the_same_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let small = sha256_hex(b"small");
        assert!(matches!(
            store.put_whole(&small, b"tampered", Origin::Peer),
            Err(BlobError::Mismatch { .. })
        ));
        assert!(!store.contains(&small).expect("address"));
        store
            .put_whole(&small, b"small", Origin::Peer)
            .expect("put");
        assert!(store.contains(&small).expect("address"));
        assert!(
            !store.path_of(&small).expect("path").exists(),
            "in the pack"
        );
        assert_eq!(
            store.read(&small, 0, 100).expect("read"),
            (b"small".to_vec(), true)
        );
        let pack_size = || store.pack().size();
        let before = pack_size();
        store
            .put_whole(&small, b"small", Origin::Peer)
            .expect("put again");
        assert_eq!(pack_size(), before, "a duplicate is not appended twice");

        let big = vec![7u8; PACK_MAX + 1];
        let big_sha = sha256_hex(&big);
        store.put_whole(&big_sha, &big, Origin::Peer).expect("put");
        assert!(store.path_of(&big_sha).expect("path").is_file(), "a file");
        store
            .put_whole(&big_sha, &big, Origin::Peer)
            .expect("put again: kept as it is");
        drop(store);
        let store = BlobStore::open(dir.path()).expect("reopen");
        assert!(
            store.contains(&small).expect("address") && store.contains(&big_sha).expect("address")
        );
    }

    #[test]
    fn doomed_blobs_look_absent_an_upload_spares_them_and_the_rest_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let small: Vec<Vec<u8>> = (0..5u8).map(|n| vec![n; 1000]).collect();
        let big = vec![7u8; PACK_MAX + 10];
        for blob in small.iter().chain([&big]) {
            store
                .put_whole(&sha256_hex(blob), blob, Origin::Peer)
                .expect("put");
        }
        let address = |b: &[u8]| ContentHash::of(b);
        store.doom([
            address(&small[0]),
            address(&small[1]),
            address(&small[2]),
            address(&big),
        ]);
        assert!(
            !store.contains(&sha256_hex(&small[0])).expect("contains"),
            "doomed: absent"
        );
        assert!(store.contains(&sha256_hex(&small[3])).expect("contains"));
        // Uploaded again meanwhile: spared.
        store
            .put_whole(&sha256_hex(&small[1]), &small[1], Origin::Peer)
            .expect("put");
        let removed = store.remove_doomed().expect("remove");
        assert_eq!(removed.blobs, 3, "{removed:?}");
        assert_eq!(store.doomed_count(), 0);
        for (n, blob) in small.iter().enumerate() {
            let kept = n != 0 && n != 2;
            assert_eq!(
                store.contains(&sha256_hex(blob)).expect("contains"),
                kept,
                "blob {n}"
            );
        }
        assert!(!store.contains(&sha256_hex(&big)).expect("contains"));
        assert_eq!(
            store
                .read(&sha256_hex(&small[1]), 0, 10_000)
                .expect("read")
                .0,
            small[1]
        );
        let listed = store.list().expect("list");
        assert_eq!(listed.len(), 3);
    }
}
