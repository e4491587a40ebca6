//! Hashing file content in bounded memory, refusing files that change while being read.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Content is read and hashed in pieces of this size: memory never depends on file size.
pub const CHUNK_SIZE: usize = 1 << 20;

/// A SHA-256, kept as its 32 bytes: the master's model holds one per file, and as a hex
/// `String` it cost about 100 bytes a file (W6: 100,000 files under 50 MiB). Shown and
/// parsed as 64 lowercase hex digits, the form events carry.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> ContentHash {
        ContentHash(Sha256::digest(bytes).into())
    }

    /// Parses 64 lowercase hex digits (the only form filesync writes).
    pub fn parse_hex(text: &str) -> Option<ContentHash> {
        let lowercase = text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut bytes = [0u8; 32];
        (lowercase && hex::decode_to_slice(text, &mut bytes).is_ok()).then_some(ContentHash(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for ContentHash {
    fn from(bytes: [u8; 32]) -> ContentHash {
        ContentHash(bytes)
    }
}

impl std::fmt::Display for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

/// A file's identity at one instant.
#[derive(Debug, Clone)]
pub struct Hashed {
    pub size: u64,
    pub sha256: ContentHash,
    /// The whole content, when it fits in one chunk (saves reading small files twice).
    pub content: Option<Vec<u8>>,
    pub mtime_ns: i128,
    pub ino: u64,
    pub mode: u32,
}

/// Why a file could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The file changed while we read it: try again once it is quiet.
    #[error("file changed while it was being read")]
    Unstable,
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// Hashes `path`, keeping its content when it is at most `CHUNK_SIZE` bytes. Fails with
/// `Unstable` when size or modification time moved between open and end of read, so a file
/// that is still being written is never published half-done.
pub fn hash_file(path: &Path) -> Result<Hashed, HashError> {
    let mut file = File::open(path)?;
    let before = file.metadata()?;
    let mut hasher = Sha256::new();
    let mut content = Vec::new();
    let mut buffer = vec![0u8; CHUNK_SIZE.min(before.len() as usize + 1).max(8192)];
    let mut size: u64 = 0;
    let mut keep = before.len() <= CHUNK_SIZE as u64;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buffer[..n]);
        size += n as u64;
        if keep {
            if size <= CHUNK_SIZE as u64 {
                content.extend_from_slice(&buffer[..n]);
            } else {
                keep = false;
                content = Vec::new();
            }
        }
    }
    let after = file.metadata()?;
    if size != before.len() || after.len() != before.len() || mtime_ns(&after) != mtime_ns(&before)
    {
        return Err(HashError::Unstable);
    }
    Ok(Hashed {
        size,
        sha256: ContentHash(hasher.finalize().into()),
        content: keep.then_some(content),
        mtime_ns: mtime_ns(&after),
        ino: after.ino(),
        mode: after.mode() & 0o7777,
    })
}

/// SHA-256 of bytes in memory, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_keeps_small_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello\n").expect("write");
        let hashed = hash_file(&path).expect("hash");
        assert_eq!(hashed.size, 6);
        assert_eq!(
            hashed.sha256.to_hex(),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(
            ContentHash::parse_hex(&hashed.sha256.to_hex()),
            Some(hashed.sha256)
        );
        assert_eq!(
            ContentHash::parse_hex(&hashed.sha256.to_hex().to_uppercase()),
            None
        );
        assert_eq!(ContentHash::parse_hex("abc"), None);
        assert_eq!(hashed.content.as_deref(), Some(&b"hello\n"[..]));
    }

    #[test]
    fn large_content_is_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        let data = vec![7u8; CHUNK_SIZE + 1];
        std::fs::write(&path, &data).expect("write");
        let hashed = hash_file(&path).expect("hash");
        assert_eq!(hashed.size, data.len() as u64);
        assert_eq!(hashed.sha256.to_hex(), sha256_hex(&data));
        assert!(hashed.content.is_none());
    }
}
