//! `ChunkMemo`: the SHA-256s of chunks the master cut before, and which chunk followed
//! each, so that an edit to a large file costs one SHA-256 pass over it (the whole file's,
//! which the `put` must carry) and a fast fingerprint, not two SHA-256 passes and a scan
//! for chunk ends. Without it, a 1 MiB edit in a 1 GiB file had the master cut and hash
//! every one of its ~16,000 chunks again to learn what it already knew (W7,
//! docs/BENCHMARKS.md). Where a chunk ends is predicted from the chunk that followed the
//! same bytes last time, and taken only where the scan would have cut ([`FileCuts`]).
//!
//! A chunk is remembered under a 128-bit XXH3 fingerprint of its bytes and its length.
//! XXH3 costs a small part of SHA-256's time (on an edited 1 GiB file the master's worker
//! spent 0.31-0.40 CPU-s with it, reading included, against 0.73-0.79). The fingerprint is
//! seeded with a random number drawn when the master starts, so whoever writes files into
//! the master's directory cannot aim a collision at it; and a collision, however reached,
//! could not tear a mirror: the slave builds each new version from the manifest and
//! checks it against the whole file's SHA-256, which is always computed from the bytes
//! (a mismatch is an `error` event, never a file in place). What is remembered is what
//! rsync trusts for the same decision (its xxh128 block checksums), with that check after.
//!
//! Memory is bounded: the memo holds two generations of at most [`GENERATION`] chunks
//! each (8 GiB of chunks at the average size, about 20 MiB in all). When the newer fills
//! up, the older is dropped; a chunk found in the older is carried into the newer, so the
//! chunks of files still being edited stay remembered.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use crate::chunk::{CutSink, End};
use crate::hash::ContentHash;

/// The most chunks one generation remembers: 64 Ki, 4 GiB of chunks at the average size,
/// in about 10 MiB of memory (77 bytes a chunk, in a table at least half empty).
pub const GENERATION: usize = 64 << 10;

/// A chunk's fingerprint: its seeded XXH3-128, then its length (little-endian). Kept as
/// bytes, so that an entry carries no padding.
type Fingerprint = [u8; 20];

/// The length in a fingerprint.
fn length_of(key: &Fingerprint) -> usize {
    u32::from_le_bytes([key[16], key[17], key[18], key[19]]) as usize
}

/// What is remembered of a chunk.
#[derive(Debug, Clone, Copy)]
struct Remembered {
    sha256: ContentHash,
    /// The chunk that followed it the last time it was cut, when where that one ends was
    /// fixed by its bytes and the byte after them (`End::Fixed`).
    next: Option<(Fingerprint, Option<u8>)>,
}

/// SHA-256s of chunks hashed before, looked up by fingerprint, and which chunk followed
/// each.
pub struct ChunkMemo {
    seed: u64,
    newer: HashMap<Fingerprint, Remembered>,
    older: HashMap<Fingerprint, Remembered>,
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
        let key = self.fingerprint(chunk);
        self.recall_or_hash(key, chunk).sha256
    }

    /// Cutting one file, in order, each chunk and its SHA-256 handed to `then`: see
    /// [`FileCuts`].
    pub fn file<'a>(&'a mut self, then: &'a mut dyn FnMut(&[u8], ContentHash)) -> FileCuts<'a> {
        FileCuts {
            memo: self,
            last: None,
            predicted: None,
            predictions: 0,
            then,
        }
    }

    /// How many chunks are remembered.
    pub fn len(&self) -> usize {
        self.newer.len() + self.older.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fingerprint(&self, bytes: &[u8]) -> Fingerprint {
        let mut key = [0u8; 20];
        let hash = xxhash_rust::xxh3::xxh3_128_with_seed(bytes, self.seed);
        key[..16].copy_from_slice(&hash.to_le_bytes());
        key[16..].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        key
    }

    /// What is remembered under `key`, in the newer generation from now on; hashed and
    /// remembered if nothing was.
    fn recall_or_hash(&mut self, key: Fingerprint, chunk: &[u8]) -> Remembered {
        if let Some(remembered) = self.newer.get(&key) {
            return *remembered;
        }
        let remembered = self.older.remove(&key).unwrap_or_else(|| Remembered {
            sha256: ContentHash::of(chunk),
            next: None,
        });
        if self.newer.len() >= self.generation {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(key, remembered);
        remembered
    }

    fn get_mut(&mut self, key: &Fingerprint) -> Option<&mut Remembered> {
        match self.newer.get_mut(key) {
            Some(remembered) => Some(remembered),
            None => self.older.get_mut(key),
        }
    }
}

/// The chunks of one file as the chunker cuts them (a [`CutSink`] for its
/// `Chunker::push_to`), with the memo's help twice over: a chunk hashed before is not
/// hashed again, and where a chunk ends is predicted, not scanned for, when the chunk
/// before it was followed by the same bytes the last time it was cut. A prediction is
/// taken only when those bytes and the byte after them are the ones that fixed that cut,
/// so it is where the scan would have cut: the chunks are the same, only found sooner.
pub struct FileCuts<'a> {
    memo: &'a mut ChunkMemo,
    /// The chunk cut last.
    last: Option<Fingerprint>,
    /// The fingerprint of the chunk just predicted (so it is not computed twice).
    predicted: Option<Fingerprint>,
    /// How many chunk ends were predicted.
    predictions: usize,
    then: &'a mut dyn FnMut(&[u8], ContentHash),
}

impl FileCuts<'_> {
    /// How many chunk ends were predicted rather than scanned for.
    pub fn predictions(&self) -> usize {
        self.predictions
    }
}

impl CutSink for FileCuts<'_> {
    fn predict(&mut self, rest: &[u8]) -> Option<usize> {
        self.predicted = None;
        let last = self.last?;
        let (key, after) = self.memo.get_mut(&last)?.next?;
        let len = length_of(&key);
        let fits = len <= rest.len() && after.is_none_or(|byte| rest.get(len) == Some(&byte));
        if !fits || self.memo.fingerprint(&rest[..len]) != key {
            return None;
        }
        self.predicted = Some(key);
        self.predictions += 1;
        Some(len)
    }

    fn cut(&mut self, chunk: &[u8], end: End) {
        let key = match self.predicted.take() {
            Some(key) if length_of(&key) == chunk.len() => key,
            _ => self.memo.fingerprint(chunk),
        };
        let remembered = self.memo.recall_or_hash(key, chunk);
        if let (Some(last), End::Fixed(after)) = (self.last, end) {
            if let Some(before) = self.memo.get_mut(&last) {
                before.next = Some((key, after));
            }
        }
        self.last = Some(key);
        (self.then)(chunk, remembered.sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::noise;
    use crate::chunk::{chunks_of, Chunker, CHUNK_MAX};

    /// `data` cut with the memo's help, fed in pieces of `piece` bytes: each chunk's
    /// length and SHA-256, and how many ends were predicted.
    fn cut_with(
        memo: &mut ChunkMemo,
        data: &[u8],
        piece: usize,
    ) -> (Vec<(usize, ContentHash)>, usize) {
        let mut chunks = Vec::new();
        let mut then = |chunk: &[u8], sha256| chunks.push((chunk.len(), sha256));
        let mut cuts = memo.file(&mut then);
        let mut chunker = Chunker::new();
        for part in data.chunks(piece) {
            chunker.push_to(part, &mut cuts);
        }
        chunker.finish_to(&mut cuts);
        let predictions = cuts.predictions();
        (chunks, predictions)
    }

    fn cut_alone(data: &[u8]) -> Vec<(usize, ContentHash)> {
        chunks_of(data)
            .into_iter()
            .map(|chunk| (chunk.len(), ContentHash::of(chunk)))
            .collect()
    }

    #[test]
    fn a_chunk_gets_its_sha256_whether_remembered_or_not() {
        let mut memo = ChunkMemo::new();
        let (a, b) = (noise(5000, 1), noise(5000, 2));
        assert_eq!(memo.sha256_of(&a), ContentHash::of(&a));
        assert_eq!(memo.sha256_of(&b), ContentHash::of(&b));
        assert_eq!(memo.sha256_of(&a), ContentHash::of(&a), "remembered");
        assert_eq!(memo.len(), 2);
        // The same bytes cut shorter are another chunk.
        assert_eq!(memo.sha256_of(&a[..4999]), ContentHash::of(&a[..4999]));
        assert_eq!(memo.len(), 3);
    }

    #[test]
    fn edits_are_cut_exactly_as_without_the_memo_and_mostly_predicted() {
        let old = noise(6 << 20, 7);
        let middle = 3 << 20;
        let patch = noise(300_000, 8);
        let overwrite = [&old[..middle], &patch, &old[middle + patch.len()..]].concat();
        let insertion = [&old[..middle], &patch, &old[middle..]].concat();
        let deletion = [&old[..middle], &old[middle + 123_457..]].concat();
        let appended = [&old[..], &patch].concat();
        let truncated = old[..(4 << 20) + 99].to_vec();
        // A run of zeros: chunks cut at the largest size, the same chunk again and again.
        let zeros = [&old[..middle], &vec![0u8; 2 << 20], &old[middle..]].concat();
        let shifted = old[1..].to_vec();
        for (name, new) in [
            ("overwrite", &overwrite),
            ("insertion", &insertion),
            ("deletion", &deletion),
            ("append", &appended),
            ("truncation", &truncated),
            ("zeros", &zeros),
            ("first byte gone", &shifted),
        ] {
            for piece in [4096, 1 << 20] {
                let mut memo = ChunkMemo::new();
                let (first, none) = cut_with(&mut memo, &old, piece);
                assert_eq!(none, 0, "nothing to predict from at first");
                assert_eq!(first, cut_alone(&old));
                let (chunks, predicted) = cut_with(&mut memo, new, piece);
                assert_eq!(chunks, cut_alone(new), "{name}, fed {piece} at a time");
                let total = chunks.len();
                assert!(
                    predicted + 2 * (patch.len() / CHUNK_MAX + 8) >= total,
                    "{name}: {predicted} of {total} ends predicted"
                );
            }
        }
    }

    #[test]
    fn a_prediction_needs_the_byte_after_the_chunk_too() {
        // The same chunk, followed by other bytes: the cut after it is scanned for again.
        let old = noise(3 << 20, 9);
        let mut memo = ChunkMemo::new();
        cut_with(&mut memo, &old, 1 << 20);
        let cuts = cut_alone(&old);
        let second_end = cuts[0].0 + cuts[1].0;
        let mut new = old.clone();
        new[second_end] ^= 1;
        let (chunks, _) = cut_with(&mut memo, &new, 1 << 20);
        assert_eq!(chunks, cut_alone(&new));
    }

    #[test]
    fn memory_stays_within_two_generations_and_chunks_in_use_stay() {
        let mut memo = ChunkMemo::with_generation(4);
        let kept = noise(5000, 100);
        memo.sha256_of(&kept);
        for n in 0..50 {
            memo.sha256_of(&noise(5000, n));
            // A chunk seen again is carried into the newer generation.
            assert_eq!(memo.sha256_of(&kept), ContentHash::of(&kept));
            assert!(memo.len() <= 8, "{} chunks remembered", memo.len());
        }
        assert!(memo.newer.contains_key(&memo.fingerprint(&kept)));
    }

    #[test]
    fn two_memos_fingerprint_with_different_seeds() {
        assert_ne!(ChunkMemo::new().seed, ChunkMemo::new().seed);
        let chunk = noise(100, 1);
        assert_eq!(length_of(&ChunkMemo::new().fingerprint(&chunk)), 100);
        // What GENERATION's memory is reckoned from.
        let entry = std::mem::size_of::<Fingerprint>() + std::mem::size_of::<Remembered>();
        assert!(entry <= 76, "{entry} bytes an entry");
    }
}
