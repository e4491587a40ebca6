//! `ChunkMemo`: the SHA-256s of chunks the master cut before, so that an edit to a large
//! file costs one SHA-256 pass over it (the whole file's, which the `put` must carry), not
//! two. Without it, a 1 MiB edit in a 1 GiB file had the master hash every one of its
//! ~16,000 chunks again to learn the addresses it already knew (W7, docs/BENCHMARKS.md).
//!
//! A chunk is remembered under a 128-bit XXH3 fingerprint of its bytes and its length.
//! XXH3 runs at memory speed, 20-30 times faster than SHA-256 here. The fingerprint is
//! seeded with a random number drawn when the master starts, so whoever writes files into
//! the master's directory cannot aim a collision at it; and a collision, however reached,
//! could not tear a mirror: the slave builds each new version from the manifest and
//! checks it against the whole file's SHA-256, which is always computed from the bytes
//! (a mismatch is an `error` event, never a file in place). What is remembered is what
//! rsync trusts for the same decision (its xxh128 block checksums), with that check after.
//!
//! Memory is bounded: the memo holds two generations of at most [`GENERATION`] chunks
//! each (16 GiB of chunks at the average size). When the newer fills up, the older is
//! dropped; a chunk found in the older is carried into the newer, so the chunks of files
//! still being edited stay remembered.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use crate::hash::ContentHash;

/// The most chunks one generation remembers: 128 Ki, 8 GiB of chunks at the average size,
/// about 7 MiB of memory.
pub const GENERATION: usize = 128 << 10;

/// A chunk's fingerprint: its seeded XXH3-128, and its length.
type Fingerprint = (u128, u32);

/// SHA-256s of chunks hashed before, looked up by fingerprint.
pub struct ChunkMemo {
    seed: u64,
    newer: HashMap<Fingerprint, ContentHash>,
    older: HashMap<Fingerprint, ContentHash>,
    generation: usize,
}

impl Default for ChunkMemo {
    fn default() -> ChunkMemo {
        ChunkMemo::with_generation(GENERATION)
    }
}

impl ChunkMemo {
    pub fn new() -> ChunkMemo {
        ChunkMemo::default()
    }

    /// A memo whose generations hold `generation` chunks (small ones for tests).
    pub fn with_generation(generation: usize) -> ChunkMemo {
        // The standard library's hasher keys are drawn from the operating system's random
        // source once per process; hashing nothing with them gives a random seed.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        ChunkMemo {
            seed,
            newer: HashMap::new(),
            older: HashMap::new(),
            generation: generation.max(1),
        }
    }

    /// The SHA-256 of `chunk`: remembered if its bytes were hashed before, computed (and
    /// remembered) otherwise.
    pub fn sha256_of(&mut self, chunk: &[u8]) -> ContentHash {
        let key = (
            xxhash_rust::xxh3::xxh3_128_with_seed(chunk, self.seed),
            chunk.len() as u32,
        );
        if let Some(sha256) = self.newer.get(&key) {
            return *sha256;
        }
        let sha256 = match self.older.remove(&key) {
            Some(sha256) => sha256,
            None => ContentHash::of(chunk),
        };
        self.remember(key, sha256);
        sha256
    }

    /// How many chunks are remembered.
    pub fn len(&self) -> usize {
        self.newer.len() + self.older.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remember(&mut self, key: Fingerprint, sha256: ContentHash) {
        if self.newer.len() >= self.generation {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(key, sha256);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> Vec<u8> {
        (0..5000u32)
            .map(|i| (i as u8).wrapping_mul(n) ^ n)
            .collect()
    }

    #[test]
    fn a_chunk_gets_its_sha256_whether_remembered_or_not() {
        let mut memo = ChunkMemo::new();
        let (a, b) = (chunk(1), chunk(2));
        assert_eq!(memo.sha256_of(&a), ContentHash::of(&a));
        assert_eq!(memo.sha256_of(&b), ContentHash::of(&b));
        assert_eq!(memo.sha256_of(&a), ContentHash::of(&a), "remembered");
        assert_eq!(memo.len(), 2);
        // The same bytes cut shorter are another chunk.
        assert_eq!(memo.sha256_of(&a[..4999]), ContentHash::of(&a[..4999]));
        assert_eq!(memo.len(), 3);
    }

    #[test]
    fn memory_stays_within_two_generations_and_chunks_in_use_stay() {
        let mut memo = ChunkMemo::with_generation(4);
        let kept = chunk(100);
        memo.sha256_of(&kept);
        for n in 0..50 {
            memo.sha256_of(&chunk(n));
            // A chunk seen again is carried into the newer generation.
            assert_eq!(memo.sha256_of(&kept), ContentHash::of(&kept));
            assert!(memo.len() <= 8, "{} chunks remembered", memo.len());
        }
        assert!(memo.newer.contains_key(&(
            xxhash_rust::xxh3::xxh3_128_with_seed(&kept, memo.seed),
            kept.len() as u32
        )));
    }

    #[test]
    fn two_memos_fingerprint_with_different_seeds() {
        assert_ne!(ChunkMemo::new().seed, ChunkMemo::new().seed);
    }
}
