//! Hashing file content in bounded memory, refusing files that change while being read.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::chunk::{is_chunked, ChunkRef, Chunker, Manifest};
use crate::memo::ChunkMemo;

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
    /// The chunks of a file stored in chunks, when they were asked for.
    pub manifest: Option<Manifest>,
    pub mtime_ns: i64,
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

/// Modification time in nanoseconds since the epoch, saturating outside 1678-2262.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// Hashes `path`, keeping its content when it is at most `CHUNK_SIZE` bytes. Fails with
/// `Unstable` when size or modification time moved between open and end of read, so a file
/// that is still being written is never published half-done.
pub fn hash_file(path: &Path) -> Result<Hashed, HashError> {
    let (file, before) = open_file(path)?;
    hash_opened(file, &before, None)
}

/// Opens `path` for hashing, and what it is: never through a symlink, and never waiting on
/// a FIFO that took a file's place. The metadata is the open file's own, so a caller that
/// only knew the name from a directory listing needs no `stat` of its own.
pub fn open_file(path: &Path) -> io::Result<(File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// Like [`hash_file`], but a file stored in chunks is cut as it is hashed and each chunk
/// handed to `chunks` (once, in order, nothing kept), so that uploading it overlaps with
/// hashing it and it is read once; `Hashed::manifest` lists them. When this fails
/// (`Unstable`: the file changed while read) what was handed over must be thrown away.
/// Smaller files are not cut; their content comes back in `Hashed::content`.
pub fn hash_file_chunked(path: &Path, chunks: Chunking<'_>) -> Result<Hashed, HashError> {
    let (file, before) = open_file(path)?;
    hash_opened(file, &before, Some(chunks))
}

/// Where a large file's chunks go while it is hashed: each chunk, with its address, as
/// soon as it is cut (so its upload overlaps the reading and hashing of the rest).
pub type ChunkSink<'a> = &'a mut dyn FnMut(ChunkRef, Vec<u8>);

/// What cutting a large file while hashing it needs: where its chunks go, and the
/// addresses of chunks hashed before.
pub struct Chunking<'a> {
    pub memo: &'a mut ChunkMemo,
    pub sink: ChunkSink<'a>,
}

/// Hashes a file opened by [`open_file`]; `before` is what it was when opened. A file
/// stored in chunks (see [`crate::chunk`]) is also cut into chunks in the same read when
/// `chunks` is given: each goes to `chunks`, and the result carries the manifest.
pub fn hash_opened(
    mut file: File,
    before: &std::fs::Metadata,
    chunks: Option<Chunking<'_>>,
) -> Result<Hashed, HashError> {
    if !before.is_file() {
        return Err(HashError::Io(io::Error::other("not a regular file")));
    }
    // The whole file's hash runs on a thread of its own for a large file, beside the
    // chunks' hashes on this one.
    let mut hasher = PieceHasher::new(before.len());
    let mut content = Vec::new();
    let piece_size = CHUNK_SIZE.min(before.len() as usize + 1).max(8192);
    let mut buffer = vec![0u8; piece_size];
    let mut size: u64 = 0;
    let mut keep = before.len() <= CHUNK_SIZE as u64;
    // A large file's chunks: each with its address (remembered or hashed) into the
    // manifest and on to the caller's sink.
    let (memo, mut sink) = match chunks {
        Some(Chunking { memo, sink }) if is_chunked(before.len()) => (Some(memo), Some(sink)),
        _ => (None, None),
    };
    let chunked = memo.is_some();
    let mut manifest = Manifest::new();
    let mut then = |chunk: &[u8], sha256: ContentHash| {
        let chunk_ref = ChunkRef {
            sha256,
            len: chunk.len() as u32,
        };
        manifest.push(chunk_ref);
        if let Some(sink) = sink.as_mut() {
            sink(chunk_ref, chunk.to_vec());
        }
    };
    let mut chunking = memo.map(|memo| (Chunker::new(), memo.file(&mut then)));
    loop {
        // Stop at the size the file had when opened, without a read to see the end: if it
        // grew meanwhile, the size check below says so (one system call less per file).
        if size == before.len() {
            break;
        }
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buffer[..n]);
        size += n as u64;
        if let Some((chunker, cuts)) = chunking.as_mut() {
            chunker.push_to(&buffer[..n], cuts);
        } else if keep {
            if size <= CHUNK_SIZE as u64 {
                content.extend_from_slice(&buffer[..n]);
            } else {
                keep = false;
                content = Vec::new();
            }
        }
    }
    if let Some((chunker, mut cuts)) = chunking {
        chunker.finish_to(&mut cuts);
    }
    let manifest = chunked.then_some(manifest);
    let after = file.metadata()?;
    if size != before.len() || after.len() != before.len() || mtime_ns(&after) != mtime_ns(before) {
        return Err(HashError::Unstable);
    }
    Ok(Hashed {
        size,
        sha256: hasher.finish()?,
        content: keep.then_some(content),
        manifest,
        mtime_ns: mtime_ns(&after),
        ino: after.ino(),
        mode: after.mode() & 0o7777,
    })
}

/// A SHA-256 fed piece by piece, computed on a thread of its own for content larger than one
/// chunk, so that hashing one piece overlaps with writing the next. Receiving a large file
/// (in the bus and in a slave) writes each piece and hashes it; one after the other on one
/// thread those were the two largest costs of W3 (one 1 GiB file, docs/BENCHMARKS.md).
///
/// Pieces are handed over once the caller is done with them (`update_owned`), so nothing is
/// copied; at most [`HASHER_QUEUE`] pieces wait, so memory stays bounded when hashing is the
/// slower side.
pub struct PieceHasher(HasherKind);

enum HasherKind {
    Inline(Sha256),
    Background {
        pieces: std::sync::mpsc::SyncSender<Vec<u8>>,
        thread: std::thread::JoinHandle<ContentHash>,
    },
}

/// Pieces queued for a background hasher.
pub const HASHER_QUEUE: usize = 4;

impl PieceHasher {
    /// A hasher for content of about `expected_size` bytes: on its own thread when that is
    /// more than one chunk (and a thread can be had), inline otherwise (small files are many,
    /// and a thread each would cost more than the hashing).
    pub fn new(expected_size: u64) -> PieceHasher {
        if expected_size > CHUNK_SIZE as u64 {
            let (pieces, queued) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASHER_QUEUE);
            let spawned = std::thread::Builder::new()
                .name("hasher".into())
                .spawn(move || {
                    let mut hasher = Sha256::new();
                    for piece in queued {
                        hasher.update(&piece);
                    }
                    ContentHash(hasher.finalize().into())
                });
            if let Ok(thread) = spawned {
                return PieceHasher(HasherKind::Background { pieces, thread });
            }
        }
        PieceHasher(HasherKind::Inline(Sha256::new()))
    }

    /// Adds a piece the caller no longer needs.
    pub fn update_owned(&mut self, piece: Vec<u8>) {
        match &mut self.0 {
            HasherKind::Inline(hasher) => hasher.update(&piece),
            HasherKind::Background { pieces, .. } => {
                // A send fails only if the thread is gone, which `finish` reports.
                let _ = pieces.send(piece);
            }
        }
    }

    /// Adds a piece the caller keeps (copied when hashing in the background).
    pub fn update(&mut self, piece: &[u8]) {
        match &mut self.0 {
            HasherKind::Inline(hasher) => hasher.update(piece),
            HasherKind::Background { .. } => self.update_owned(piece.to_vec()),
        }
    }

    /// The hash of everything added; fails only if the hashing thread died.
    pub fn finish(self) -> io::Result<ContentHash> {
        match self.0 {
            HasherKind::Inline(hasher) => Ok(ContentHash(hasher.finalize().into())),
            HasherKind::Background { pieces, thread } => {
                drop(pieces);
                thread
                    .join()
                    .map_err(|_| io::Error::other("the hashing thread failed"))
            }
        }
    }
}

/// SHA-256 of bytes in memory, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_never_through_a_symlink_or_from_a_fifo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        std::fs::write(&real, b"content").expect("write");
        // A file swapped for a symlink between listing and hashing: not followed.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert!(hash_file(&link).is_err(), "a symlink is not read through");
        // Swapped for a FIFO with no writer: refused at once instead of waiting forever.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert!(hash_file(&fifo).is_err(), "a FIFO is not read");
        assert_eq!(hash_file(&real).expect("a file is").size, 7);
    }

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

    #[test]
    fn a_large_file_is_cut_into_chunks_as_it_is_hashed_and_a_small_one_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        let data: Vec<u8> = (0..CHUNK_SIZE * 3 + 12_345)
            .map(|i| (i * 7919 % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        std::fs::write(&path, &data).expect("write");
        let mut streamed = Vec::new();
        let mut refs = Vec::new();
        let mut memo = ChunkMemo::new();
        let mut sink = |chunk_ref: ChunkRef, chunk: Vec<u8>| {
            assert_eq!(ContentHash::of(&chunk), chunk_ref.sha256);
            refs.push(chunk_ref);
            streamed.extend_from_slice(&chunk);
        };
        let chunking = Chunking {
            memo: &mut memo,
            sink: &mut sink,
        };
        let hashed = hash_file_chunked(&path, chunking).expect("hash");
        assert_eq!(streamed, data);
        assert_eq!(hashed.sha256, ContentHash::of(&data));
        assert!(hashed.content.is_none());
        let manifest = hashed.manifest.expect("a manifest");
        assert_eq!(manifest.chunks(), &refs[..]);
        assert_eq!(manifest.size(), data.len() as u64);
        let cut: Vec<usize> = crate::chunk::chunks_of(&data)
            .iter()
            .map(|c| c.len())
            .collect();
        let got: Vec<usize> = refs.iter().map(|r| r.len as usize).collect();
        assert_eq!(got, cut, "the same cuts as in memory");

        // A small file is kept, not cut.
        std::fs::write(&path, b"small").expect("write");
        let mut pieces = 0;
        let chunking = Chunking {
            memo: &mut memo,
            sink: &mut |_, _| pieces += 1,
        };
        let hashed = hash_file_chunked(&path, chunking).expect("hash");
        assert_eq!(pieces, 0);
        assert!(hashed.manifest.is_none());
        assert_eq!(hashed.content.as_deref(), Some(&b"small"[..]));
    }

    #[test]
    fn piece_hashers_agree_inline_and_in_the_background() {
        let data: Vec<u8> = (0..CHUNK_SIZE * 3).map(|i| (i % 251) as u8).collect();
        for expected_size in [0, data.len() as u64] {
            let mut hasher = PieceHasher::new(expected_size);
            let (first, rest) = data.split_at(1000);
            hasher.update(first);
            for piece in rest.chunks(CHUNK_SIZE / 3) {
                hasher.update_owned(piece.to_vec());
            }
            assert_eq!(hasher.finish().expect("hash"), ContentHash::of(&data));
        }
    }
}
