//! Rebuilding a file stored in chunks from what the slave already holds.
//!
//! The slave's current copy of the file is cut the way the master cut the new version
//! (`filesync_master::chunk`) and each of its chunks hashed: [`LocalChunks`]. Every chunk of
//! the new version found there is copied from it; the rest comes from the bus ([`plan`]).
//! Nothing is reused that was not just read and hashed, so a copy edited behind the slave's
//! back costs more fetching, never a wrong file; and the whole file is still verified
//! against its SHA-256 before it is put in place (`StagedFile::commit`). A copy the slave
//! wrote itself and nobody touched since is not read to find its chunks: its manifest says
//! where they are ([`LocalChunks::from_manifest`], `crate::known`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use filesync_master::chunk::{ChunkRef, Chunker, Manifest};
use filesync_master::hash::{ContentHash, PieceHasher, CHUNK_SIZE};

/// The chunks of the slave's current copy of a file, by address.
pub struct LocalChunks {
    file: File,
    chunks: HashMap<ContentHash, (u64, u32)>,
    whole: ContentHash,
    size: u64,
}

impl LocalChunks {
    /// Reads `file` once: cuts it into chunks, hashes each, and hashes it whole.
    pub fn index(mut file: File) -> io::Result<LocalChunks> {
        let size = file.metadata()?.len();
        let mut whole = PieceHasher::new(size);
        let mut chunker = Chunker::new();
        let mut chunks = HashMap::new();
        let mut at = 0u64;
        let mut record = |chunk: &[u8]| {
            chunks
                .entry(ContentHash::of(chunk))
                .or_insert((at, chunk.len() as u32));
            at += chunk.len() as u64;
        };
        let mut buffer = vec![0u8; CHUNK_SIZE];
        loop {
            let n = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            whole.update(&buffer[..n]);
            chunker.push(&buffer[..n], &mut record);
        }
        chunker.finish(&mut record);
        Ok(LocalChunks {
            file,
            chunks,
            whole: whole.finish()?,
            size: at,
        })
    }

    /// The chunks of `file` as `manifest` lists them, and its hash and size as recorded,
    /// without reading it: for a copy this slave wrote from that manifest and nobody has
    /// touched since (`crate::known`). The new version built from it is verified whole all
    /// the same.
    pub fn from_manifest(file: File, manifest: &Manifest, whole: ContentHash) -> LocalChunks {
        let mut chunks = HashMap::new();
        let mut at = 0u64;
        for chunk in manifest.chunks() {
            chunks.entry(chunk.sha256).or_insert((at, chunk.len));
            at += u64::from(chunk.len);
        }
        LocalChunks {
            file,
            chunks,
            whole,
            size: at,
        }
    }

    /// The SHA-256 of the whole copy, as read.
    pub fn whole(&self) -> ContentHash {
        self.whole
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where a chunk with this address starts in the copy.
    pub fn find(&self, sha256: &ContentHash) -> Option<u64> {
        self.chunks.get(sha256).map(|&(offset, _)| offset)
    }

    /// Reads `len` bytes at `offset` of the copy onto the end of `out` (read where they
    /// are going: a rebuild gathers a batch of chunks to write).
    pub fn read_into(&self, offset: u64, len: u32, out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        out.resize(start + len as usize, 0);
        let read = self.file.read_exact_at(&mut out[start..], offset);
        if read.is_err() {
            out.truncate(start);
        }
        read
    }
}

/// Where one chunk of the new version comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The current copy, at this offset.
    Local(u64),
    /// The bus.
    Bus,
}

/// Each chunk of `manifest`, in order, with where to take it from.
pub fn plan(manifest: &Manifest, local: Option<&LocalChunks>) -> Vec<(ChunkRef, Source)> {
    manifest
        .chunks()
        .iter()
        .map(|chunk| {
            let source = local
                .and_then(|l| l.find(&chunk.sha256))
                .map_or(Source::Bus, Source::Local);
            (*chunk, source)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use filesync_master::chunk::chunks_of;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
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

    fn manifest_of(data: &[u8]) -> Manifest {
        let mut manifest = Manifest::new();
        for chunk in chunks_of(data) {
            manifest.push(ChunkRef {
                sha256: ContentHash::of(chunk),
                len: chunk.len() as u32,
            });
        }
        manifest
    }

    /// Builds the new version from the plan, with "the bus" holding everything.
    fn rebuild(manifest: &Manifest, local: Option<&LocalChunks>, new: &[u8]) -> (Vec<u8>, u64) {
        let by_address: HashMap<ContentHash, &[u8]> = chunks_of(new)
            .into_iter()
            .map(|c| (ContentHash::of(c), c))
            .collect();
        let mut out = Vec::new();
        let mut reused = 0;
        for (chunk, source) in plan(manifest, local) {
            match source {
                Source::Local(offset) => {
                    let start = out.len();
                    let local = local.expect("local");
                    local.read_into(offset, chunk.len, &mut out).expect("read");
                    assert_eq!(ContentHash::of(&out[start..]), chunk.sha256);
                    reused += u64::from(chunk.len);
                }
                Source::Bus => out.extend_from_slice(by_address[&chunk.sha256]),
            }
        }
        (out, reused)
    }

    #[test]
    fn a_new_version_is_rebuilt_from_local_chunks_and_fetched_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = noise(3 << 20, 1);
        // The same run twice inside the file: a chunk that repeats.
        let mut new = old[..(1 << 20)].to_vec();
        new.extend_from_slice(&noise(200_000, 2));
        new.extend_from_slice(&old[(1 << 20)..(2 << 20)]);
        new.extend_from_slice(&old[(1 << 20)..]);
        let path = dir.path().join("copy");
        std::fs::write(&path, &old).expect("write");
        let local = LocalChunks::index(File::open(&path).expect("open")).expect("index");
        assert_eq!(local.whole(), ContentHash::of(&old));
        assert_eq!(local.size(), old.len() as u64);
        let manifest = manifest_of(&new);
        let (rebuilt, reused) = rebuild(&manifest, Some(&local), &new);
        assert_eq!(ContentHash::of(&rebuilt), ContentHash::of(&new));
        let fetched = new.len() as u64 - reused;
        assert!(fetched < 600_000, "{fetched} bytes fetched");
        // Without a copy, everything comes from the bus.
        let (rebuilt, reused) = rebuild(&manifest, None, &new);
        assert_eq!(rebuilt, new);
        assert_eq!(reused, 0);
    }

    #[test]
    fn a_copy_edited_behind_the_slaves_back_is_only_used_where_it_still_hashes_right() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = noise(2 << 20, 3);
        let mut edited = data.clone();
        for b in &mut edited[100..200] {
            *b ^= 0xff;
        }
        let path = dir.path().join("copy");
        std::fs::write(&path, &edited).expect("write");
        let local = LocalChunks::index(File::open(&path).expect("open")).expect("index");
        let manifest = manifest_of(&data);
        let (rebuilt, reused) = rebuild(&manifest, Some(&local), &data);
        assert_eq!(rebuilt, data, "the master's bytes, not the edited ones");
        assert!(reused < data.len() as u64);
    }
}
