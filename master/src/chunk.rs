//! Content in chunks: a large file's content cut where its bytes say (content-defined
//! chunking, FastCDC as published in 2020, from the `fastcdc` crate), each chunk stored
//! once under its own SHA-256, and the file's version described by a [`Manifest`]: the
//! ordered list of its chunks, itself stored as content under its SHA-256. An edit, an
//! insertion or an append changes the chunks around it and no others, so a change costs
//! what changed, in transfer and in storage, and identical content anywhere is stored once.
//!
//! The algorithm and its sizes are part of the protocol (version 4): a master and a bus
//! must cut the same bytes the same way for their chunks to meet. They were chosen by
//! measuring (`cargo bench --bench chunking`, docs/BENCHMARKS.md, 1 GiB of random bytes
//! on this project's 2-core machine):
//!
//! | min / avg / max | chunks | new bytes, 1 MiB overwritten | new bytes, 1 MB inserted | manifest | chunking |
//! |---|---|---|---|---|---|
//! | 4 / 16 / 64 KiB | 53,845 | 1.01 MiB | 0.97 MiB | 1.85 MiB | 2,414 MiB/s |
//! | **16 / 64 / 256 KiB** | 13,461 | 1.15 MiB | 1.02 MiB | 0.46 MiB | 2,479 MiB/s |
//! | 64 / 256 / 1024 KiB | 3,349 | 1.61 MiB | 1.22 MiB | 0.11 MiB | 2,425 MiB/s |
//!
//! All three keep a change's cost near its size and cut faster than SHA-256 hashes; the
//! middle one costs 4x fewer chunks (store entries, requests, manifest bytes) than the
//! smallest for 14% more bytes on an overwrite, and half the extra bytes of the largest.
//!
//! A file of at most [`CHUNKED_ABOVE`] bytes stays one piece of content, as before chunks
//! existed (most files are small, and a manifest for them would cost more than it saves).

use std::fmt;

use fastcdc::v2020::{cut, select_masks, Normalization};

use crate::hash::ContentHash;

/// The smallest chunk (but a file's last).
pub const CHUNK_MIN: usize = 16 << 10;
/// The size chunks are cut around.
pub const CHUNK_AVG: usize = 64 << 10;
/// The largest chunk.
pub const CHUNK_MAX: usize = 256 << 10;
/// Files larger than this are stored in chunks; others whole.
pub const CHUNKED_ABOVE: u64 = 1 << 20;

/// True when a file of `size` bytes is stored in chunks.
pub fn is_chunked(size: u64) -> bool {
    size > CHUNKED_ABOVE
}

/// One chunk of a file, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub sha256: ContentHash,
    pub len: u32,
}

/// Cuts a stream of bytes into chunks, wherever the pieces it is fed end: the cuts depend
/// on the bytes only. Memory: at most [`CHUNK_MAX`] bytes held beyond the current piece.
pub struct Chunker {
    pending: Vec<u8>,
    /// Where the unchunked bytes start in `pending`.
    start: usize,
    /// min, avg, max.
    sizes: (usize, usize, usize),
    masks: (u64, u64),
}

impl Default for Chunker {
    fn default() -> Chunker {
        Chunker::with_sizes(CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
    }
}

impl Chunker {
    /// The protocol's chunker.
    pub fn new() -> Chunker {
        Chunker::default()
    }

    /// A chunker with other sizes, for measuring them (`benches/chunking.rs`); content cut
    /// any other way than [`Chunker::new`]'s never meets the store's.
    pub fn with_sizes(min: usize, avg: usize, max: usize) -> Chunker {
        Chunker {
            pending: Vec::new(),
            start: 0,
            sizes: (min, avg, max),
            masks: select_masks(avg, Normalization::Level1),
        }
    }

    /// Adds `data`; hands each chunk completed by it to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut dyn FnMut(&[u8])) {
        self.push_to(data, &mut Unaided(out));
    }

    /// The end of the stream: hands over the chunks left.
    pub fn finish(self, out: &mut dyn FnMut(&[u8])) {
        self.finish_to(&mut Unaided(out));
    }

    /// Adds `data`; hands each chunk completed by it to `sink`, which may know where a
    /// chunk ends before the bytes are scanned ([`CutSink::predict`]).
    pub fn push_to(&mut self, data: &[u8], sink: &mut dyn CutSink) {
        self.pending.extend_from_slice(data);
        while self.pending.len() - self.start >= self.sizes.2 {
            self.cut_one(sink);
        }
        // Keep the held bytes at the front now and then, not at every chunk.
        if self.start > self.pending.len() / 2 {
            self.pending.drain(..self.start);
            self.start = 0;
        }
    }

    /// The end of the stream: hands the chunks left to `sink`.
    pub fn finish_to(mut self, sink: &mut dyn CutSink) {
        while self.pending.len() > self.start {
            self.cut_one(sink);
        }
    }

    fn cut_one(&mut self, sink: &mut dyn CutSink) {
        let rest = &self.pending[self.start..];
        let (mask_s, mask_l) = self.masks;
        let (min, avg, max) = self.sizes;
        // With `max` bytes in view, where the chunk ends depends on its bytes and the one
        // after it only (the scan stops at `max`, and looks one byte past a cut).
        let fixed = rest.len() >= max;
        let predicted = fixed
            .then(|| sink.predict(rest))
            .flatten()
            .filter(|&len| len > 0 && len <= max);
        let len = predicted.unwrap_or_else(|| {
            let (_, len) = cut(
                rest,
                min,
                avg,
                max,
                mask_s,
                mask_l,
                mask_s << 1,
                mask_l << 1,
            );
            len.clamp(1, rest.len())
        });
        let end = match fixed {
            true => End::Fixed(rest.get(len).copied().filter(|_| len < max)),
            false => End::Open,
        };
        sink.cut(&rest[..len], end);
        self.start += len;
    }
}

/// Where a chunk ended, as the chunker tells its [`CutSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Where its bytes and the byte after them (given, unless the chunk is [`CHUNK_MAX`]
    /// long and so ends whatever follows) say: the same bytes cut anywhere, in any file,
    /// with that byte after them, end there too.
    Fixed(Option<u8>),
    /// Where the stream ended, or near it: more bytes could have moved the cut.
    Open,
}

/// Where a [`Chunker`] hands its chunks, and whom it asks first where the next one ends.
pub trait CutSink {
    /// The length of the chunk at the start of `rest` (which holds at least [`CHUNK_MAX`]
    /// bytes), when known without scanning: it must be where the scan would cut, or the
    /// chunks stop meeting the store's. `None` scans.
    fn predict(&mut self, rest: &[u8]) -> Option<usize> {
        let _ = rest;
        None
    }

    /// The next chunk, and what decided where it ends.
    fn cut(&mut self, chunk: &[u8], end: End);
}

/// A closure that takes chunks and knows nothing ahead.
struct Unaided<'a>(&'a mut dyn FnMut(&[u8]));

impl CutSink for Unaided<'_> {
    fn cut(&mut self, chunk: &[u8], _: End) {
        (self.0)(chunk)
    }
}

/// Cuts bytes held in memory into chunks (what feeding them to a `Chunker` gives).
pub fn chunks_of(data: &[u8]) -> Vec<&[u8]> {
    let mut offsets = Vec::new();
    let mut chunker = Chunker::new();
    let mut at = 0usize;
    let mut record = |chunk: &[u8]| {
        offsets.push((at, chunk.len()));
        at += chunk.len();
    };
    chunker.push(data, &mut record);
    chunker.finish(&mut record);
    offsets
        .into_iter()
        .map(|(start, len)| &data[start..start + len])
        .collect()
}

/// Why bytes are not a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("a manifest is a whole number of 36-byte records, not {0} bytes")]
    Length(usize),
    #[error("chunk {0} is {1} bytes: chunks are 1 to {CHUNK_MAX} bytes")]
    ChunkSize(usize, u32),
}

/// A file version's content as its chunks, in order. Encoded as one 36-byte record per
/// chunk: its SHA-256 (32 bytes), then its length (4 bytes, big-endian). Its address in
/// the store, and the `manifest` field of the log, is the SHA-256 of that encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    chunks: Vec<ChunkRef>,
}

/// The size of one encoded chunk record.
pub const MANIFEST_RECORD: usize = 36;

impl Manifest {
    pub fn new() -> Manifest {
        Manifest::default()
    }

    pub fn push(&mut self, chunk: ChunkRef) {
        self.chunks.push(chunk);
    }

    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// The file's size: the chunks' lengths added up.
    pub fn size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.chunks.len() * MANIFEST_RECORD);
        for chunk in &self.chunks {
            out.extend_from_slice(chunk.sha256.as_bytes());
            out.extend_from_slice(&chunk.len.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if !bytes.len().is_multiple_of(MANIFEST_RECORD) {
            return Err(ManifestError::Length(bytes.len()));
        }
        let mut manifest = Manifest::new();
        for (idx, record) in bytes.chunks_exact(MANIFEST_RECORD).enumerate() {
            let mut sha256 = [0u8; 32];
            sha256.copy_from_slice(&record[..32]);
            let mut len = [0u8; 4];
            len.copy_from_slice(&record[32..]);
            let len = u32::from_be_bytes(len);
            if len == 0 || len as usize > CHUNK_MAX {
                return Err(ManifestError::ChunkSize(idx, len));
            }
            manifest.push(ChunkRef {
                sha256: ContentHash::from(sha256),
                len,
            });
        }
        Ok(manifest)
    }

    /// The manifest's address: the SHA-256 of its encoding.
    pub fn address(&self) -> ContentHash {
        ContentHash::of(&self.encode())
    }
}

impl fmt::Display for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} chunks, {} bytes", self.chunks.len(), self.size())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic bytes that look random to the chunker.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn cuts_depend_on_the_bytes_not_on_how_they_are_fed() {
        let data = noise(3 << 20, 1);
        let whole: Vec<usize> = chunks_of(&data).iter().map(|c| c.len()).collect();
        assert_eq!(whole.iter().sum::<usize>(), data.len());
        assert!(whole.iter().all(|&len| len <= CHUNK_MAX));
        assert!(whole[..whole.len() - 1].iter().all(|&len| len >= CHUNK_MIN));
        for piece in [1, 4096, 100_000, 1 << 20] {
            let mut chunker = Chunker::new();
            let mut lens = Vec::new();
            let mut out = |chunk: &[u8]| lens.push(chunk.len());
            for part in data.chunks(piece) {
                chunker.push(part, &mut out);
            }
            chunker.finish(&mut out);
            assert_eq!(lens, whole, "pieces of {piece}");
        }
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let data = noise(4 << 20, 2);
        let mut edited = data[..2 << 20].to_vec();
        edited.extend_from_slice(&noise(1000, 3));
        edited.extend_from_slice(&data[2 << 20..]);
        let before: std::collections::HashSet<ContentHash> = chunks_of(&data)
            .iter()
            .map(|c| ContentHash::of(c))
            .collect();
        let new_bytes: usize = chunks_of(&edited)
            .iter()
            .filter(|c| !before.contains(&ContentHash::of(c)))
            .map(|c| c.len())
            .sum();
        assert!(new_bytes <= 2 * CHUNK_MAX + 1000, "{new_bytes} new bytes");
    }

    #[test]
    fn a_manifest_round_trips_and_bad_ones_are_refused() {
        let mut manifest = Manifest::new();
        for (i, len) in [(1u8, 70_000u32), (2, 1)] {
            manifest.push(ChunkRef {
                sha256: ContentHash::from([i; 32]),
                len,
            });
        }
        let bytes = manifest.encode();
        assert_eq!(bytes.len(), 2 * MANIFEST_RECORD);
        assert_eq!(Manifest::decode(&bytes), Ok(manifest.clone()));
        assert_eq!(manifest.size(), 70_001);
        assert_eq!(manifest.address(), ContentHash::of(&bytes));
        assert_eq!(
            Manifest::decode(&bytes[..35]),
            Err(ManifestError::Length(35))
        );
        let mut zero = bytes.clone();
        zero[32..36].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(Manifest::decode(&zero), Err(ManifestError::ChunkSize(0, 0)));
    }
}
