//! `Pack`: small blobs appended to one file, `SDIR/blobs/small.pack`, instead of one file each.
//!
//! Why: a burst of small files is bound by inode creation, not by bytes. Profiling W2 (10,000
//! files of 4 KiB) on ext4 showed most of both agents' time in the kernel's inode allocator
//! (`ext4_create` → `find_inode_bit` → `recently_deleted`); a blob per file doubled the inodes
//! `cp -a` creates. Appending to a pack costs a write instead.
//!
//! Format: a 16-byte header `filesync-pack-1\n`, then records of
//! `[32-byte SHA-256][u32 little-endian length][content]`. Records are only appended, each in
//! one `write` call, after the content was verified against its address. A record cut short by
//! a crash is cut off when the pack is opened; nothing before it is affected.
//!
//! The index lives in memory, keyed by the first 8 bytes of the address to keep it small
//! (16 bytes a blob, about 2 MiB for 100,000 blobs); every hit is confirmed against the full
//! address in the record's header, and a blob whose prefix is taken by another is simply not
//! packed (the caller stores it as a file), so a prefix collision can cost a file but never
//! return wrong content. The full addresses of the last `RECENT` records appended are kept
//! too: a master publishes its notify right after uploading the content, and the bus checks
//! that it holds it; that check should not cost a read (it was 4% of the bus's CPU in W2).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::log::ReadAt;

/// Content up to this size goes into the pack: small files, and every chunk of a large one.
pub const PACK_MAX: usize = filesync_master::chunk::CHUNK_MAX;

const MAGIC: &[u8; 16] = b"filesync-pack-1\n";
const RECORD_HEADER: u64 = 32 + 4;
/// How many of the last appended records' full addresses are kept (32 KiB of them).
const RECENT: usize = 1024;
/// Bits of a slot that hold the content length (PACK_MAX fits); the rest hold the offset.
const LEN_BITS: u32 = 20;

/// Where one record is: its header's offset and the content length, packed into a u64.
#[derive(Debug, Clone, Copy)]
struct Slot(u64);

impl Slot {
    fn new(offset: u64, len: usize) -> Slot {
        Slot(offset << LEN_BITS | len as u64)
    }
    fn offset(self) -> u64 {
        self.0 >> LEN_BITS
    }
    fn len(self) -> usize {
        (self.0 & ((1 << LEN_BITS) - 1)) as usize
    }
}

/// The pack file and its index. Not synchronised: the store wraps it in a mutex.
#[derive(Debug)]
pub struct Pack {
    file: File,
    end: u64,
    index: HashMap<u64, Slot>,
    /// The full addresses of the last `RECENT` records appended, by prefix, oldest first.
    recent: HashMap<u64, [u8; 32]>,
    recent_order: VecDeque<u64>,
}

fn prefix(address: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&address[..8]);
    u64::from_be_bytes(first)
}

impl Pack {
    /// Opens (or creates) the pack at `path`, indexes it, and cuts off a torn last record.
    pub fn open(path: &Path) -> io::Result<Pack> {
        Pack::open_with(path, true)
    }

    /// Opens the pack to read it beside the bus that writes it (`filesync restore`):
    /// nothing is created or cut off, and a record being appended is simply not seen.
    pub fn open_read_only(path: &Path) -> io::Result<Pack> {
        Pack::open_with(path, false)
    }

    fn open_with(path: &Path, writable: bool) -> io::Result<Pack> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(writable)
            .create(writable)
            .open(path)?;
        let size = file.metadata()?.len();
        if size == 0 && writable {
            file.write_all(MAGIC)?;
        } else {
            let mut magic = [0u8; 16];
            file.read_exact_at(&mut magic, 0)
                .map_err(|_| bad_pack(path))?;
            if &magic != MAGIC {
                return Err(bad_pack(path));
            }
        }
        let mut pack = Pack {
            file,
            end: MAGIC.len() as u64,
            index: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
        };
        let size = size.max(MAGIC.len() as u64);
        let mut header = [0u8; RECORD_HEADER as usize];
        while pack.end + RECORD_HEADER <= size {
            pack.file.read_exact_at(&mut header, pack.end)?;
            let len = u32::from_le_bytes([header[32], header[33], header[34], header[35]]);
            let record_end = pack.end + RECORD_HEADER + u64::from(len);
            if len as usize > PACK_MAX || record_end > size {
                break;
            }
            let mut address = [0u8; 32];
            address.copy_from_slice(&header[..32]);
            pack.index
                .entry(prefix(&address))
                .or_insert(Slot::new(pack.end, len as usize));
            pack.end = record_end;
        }
        if pack.end < size && writable {
            tracing::warn!(
                "{}: cutting off {} bytes of a record cut short",
                path.display(),
                size - pack.end
            );
            pack.file.set_len(pack.end)?;
        }
        Ok(pack)
    }

    /// Where `address` is, confirmed against the record's header.
    fn find(&self, address: &[u8; 32]) -> io::Result<Option<Slot>> {
        let key = prefix(address);
        let Some(&slot) = self.index.get(&key) else {
            return Ok(None);
        };
        if let Some(recent) = self.recent.get(&key) {
            return Ok((recent == address).then_some(slot));
        }
        let mut stored = [0u8; 32];
        self.file.read_exact_at(&mut stored, slot.offset())?;
        Ok((&stored == address).then_some(slot))
    }

    pub fn contains(&self, address: &[u8; 32]) -> io::Result<bool> {
        Ok(self.find(address)?.is_some())
    }

    /// Appends verified `content` under `address`. False when it was not packed because
    /// another blob holds the same index prefix (the caller stores it elsewhere).
    pub fn append(&mut self, address: &[u8; 32], content: &[u8]) -> io::Result<bool> {
        debug_assert!(content.len() <= PACK_MAX);
        if self.index.contains_key(&prefix(address)) {
            return self.contains(address);
        }
        let mut record = Vec::with_capacity(RECORD_HEADER as usize + content.len());
        record.extend_from_slice(address);
        record.extend_from_slice(&(content.len() as u32).to_le_bytes());
        record.extend_from_slice(content);
        if let Err(err) = self.file.write_all(&record) {
            // Whatever part reached the file is cut off, so the next record starts clean.
            let _ = self.file.set_len(self.end);
            return Err(err);
        }
        let key = prefix(address);
        self.index.insert(key, Slot::new(self.end, content.len()));
        self.end += record.len() as u64;
        if self.recent_order.len() == RECENT {
            if let Some(oldest) = self.recent_order.pop_front() {
                self.recent.remove(&oldest);
            }
        }
        self.recent.insert(key, *address);
        self.recent_order.push_back(key);
        Ok(true)
    }

    /// Up to `len` bytes of `address`'s content from `offset`, and whether that reaches the
    /// end; `None` when the pack does not hold it.
    pub fn read(
        &self,
        address: &[u8; 32],
        offset: u64,
        len: u64,
    ) -> io::Result<Option<(Vec<u8>, bool)>> {
        let Some(&slot) = self.index.get(&prefix(address)) else {
            return Ok(None);
        };
        let size = slot.len() as u64;
        let start = offset.min(size);
        let want = len.min(size - start);
        // The record's address and the wanted content in one read when they are adjacent
        // (a read from the start, the usual case); the address confirms the index hit.
        let header = RECORD_HEADER as usize;
        if start == 0 {
            let mut record = vec![0u8; header + want as usize];
            self.file.read_exact_at(&mut record, slot.offset())?;
            if &record[..32] != address {
                return Ok(None);
            }
            record.drain(..header);
            return Ok(Some((record, want >= size)));
        }
        if self.find(address)?.is_none() {
            return Ok(None);
        }
        let mut buf = vec![0u8; want as usize];
        self.file
            .read_exact_at(&mut buf, slot.offset() + RECORD_HEADER + start)?;
        Ok(Some((buf, start + want >= size)))
    }

    /// Every record's address and content length (the collector's listing).
    pub fn records(&self) -> io::Result<Vec<([u8; 32], u64)>> {
        let mut records = Vec::with_capacity(self.index.len());
        let mut address = [0u8; 32];
        for slot in self.index.values() {
            self.file.read_exact_at(&mut address, slot.offset())?;
            records.push((address, slot.len() as u64));
        }
        Ok(records)
    }

    /// The pack's size in bytes.
    pub fn size(&self) -> u64 {
        self.end
    }

    /// A handle on the file and how far its records go now: what a compaction copies
    /// without holding the pack (records are never changed once appended; it is read with
    /// `pread`, so sharing the appender's file position does no harm).
    pub fn snapshot(&self) -> io::Result<(File, u64)> {
        Ok((self.file.try_clone()?, self.end))
    }

    /// How many blobs the pack holds.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// A compacted copy of a pack, written beside it (`small.pack.compact`) and swapped in
/// whole: the records kept are copied while appends go on (`copy`, from a `snapshot`),
/// then, holding the pack, whatever was appended meanwhile, then the rename (`finish`).
/// A crash before the rename leaves the old pack as it was and a temporary file that the
/// store removes when it opens.
pub struct Compactor {
    temp: PathBuf,
    out: BufWriter<File>,
    end: u64,
    index: HashMap<u64, Slot>,
    /// Records left out: address, header offset in the old pack, content length (a blob
    /// wanted again before the swap is copied after all).
    pub dropped: Vec<([u8; 32], u64, u64)>,
    /// Copying without the pack is paced at this many bytes a second.
    pace: u64,
}

/// The temporary name of a pack's compacted copy.
pub fn compact_path(pack: &Path) -> PathBuf {
    pack.with_extension("pack.compact")
}

impl Compactor {
    pub fn new(pack: &Path, pace: u64) -> io::Result<Compactor> {
        let temp = compact_path(pack);
        let mut out = BufWriter::new(File::create(&temp)?);
        out.write_all(MAGIC)?;
        Ok(Compactor {
            temp,
            out,
            end: MAGIC.len() as u64,
            index: HashMap::new(),
            dropped: Vec::new(),
            pace,
        })
    }

    /// Copies the records of `from` between offsets `start` and `end` that `keep` wants;
    /// the writing is paced unless `paced` is false (the pack is held).
    pub fn copy(
        &mut self,
        from: &File,
        start: u64,
        end: u64,
        keep: &mut dyn FnMut(&[u8; 32]) -> bool,
        paced: bool,
    ) -> io::Result<()> {
        let mut reader = BufReader::with_capacity(1 << 20, ReadAt::new(from, start, end));
        let began = Instant::now();
        let mut offset = start;
        let mut copied = 0u64;
        let mut header = [0u8; RECORD_HEADER as usize];
        let mut content = Vec::new();
        while offset < end {
            reader.read_exact(&mut header)?;
            let len = u64::from(u32::from_le_bytes([
                header[32], header[33], header[34], header[35],
            ]));
            content.resize(len as usize, 0);
            reader.read_exact(&mut content)?;
            let mut address = [0u8; 32];
            address.copy_from_slice(&header[..32]);
            if keep(&address) {
                self.push(&address, &content)?;
                copied += RECORD_HEADER + len;
            } else {
                self.dropped.push((address, offset, len));
            }
            offset += RECORD_HEADER + len;
            // Paced by what is written: skipping a dead record costs a read of the cache.
            if paced && self.pace > 0 {
                let due = Duration::from_secs_f64(copied as f64 / self.pace as f64);
                if let Some(ahead) = due.checked_sub(began.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        }
        Ok(())
    }

    /// Copies one record left out before, after all (its blob was wanted again).
    pub fn restore(&mut self, from: &File, offset: u64, len: u64) -> io::Result<()> {
        let mut record = vec![0u8; (RECORD_HEADER + len) as usize];
        from.read_exact_at(&mut record, offset)?;
        let mut address = [0u8; 32];
        address.copy_from_slice(&record[..32]);
        self.push(&address, &record[RECORD_HEADER as usize..])
    }

    fn push(&mut self, address: &[u8; 32], content: &[u8]) -> io::Result<()> {
        let key = prefix(address);
        if self.index.contains_key(&key) {
            return Ok(());
        }
        self.out.write_all(address)?;
        self.out.write_all(&(content.len() as u32).to_le_bytes())?;
        self.out.write_all(content)?;
        self.index.insert(key, Slot::new(self.end, content.len()));
        self.end += RECORD_HEADER + content.len() as u64;
        Ok(())
    }

    /// Makes the copy durable and swaps it in for `pack` (at `path`); returns the bytes
    /// freed.
    pub fn finish(self, pack: &mut Pack, path: &Path) -> io::Result<u64> {
        let file = self.out.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.temp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let freed = pack.end.saturating_sub(self.end);
        pack.file = OpenOptions::new().read(true).append(true).open(path)?;
        pack.end = self.end;
        pack.index = self.index;
        pack.recent.clear();
        pack.recent_order.clear();
        Ok(freed)
    }
}

fn bad_pack(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is not a filesync blob pack", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn address(content: &[u8]) -> [u8; 32] {
        Sha256::digest(content).into()
    }

    #[test]
    fn blobs_survive_reopening_and_a_torn_record_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("small.pack");
        let mut pack = Pack::open(&path).expect("open");
        let (a, b) = (b"first blob".as_slice(), b"second".as_slice());
        assert!(pack.append(&address(a), a).expect("append"));
        assert!(pack.append(&address(b), b).expect("append"));
        assert!(pack.append(&address(b), b).expect("again"), "stored once");
        assert_eq!(pack.len(), 2);
        let whole = std::fs::metadata(&path).expect("stat").len();

        // A crash in the middle of a third append.
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&address(b"third")).expect("torn header");
        file.write_all(&100u32.to_le_bytes()).expect("torn header");
        file.write_all(b"thi").expect("torn content");
        drop(file);

        let pack = Pack::open(&path).expect("reopen");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), whole);
        assert_eq!(pack.len(), 2);
        assert_eq!(
            pack.read(&address(a), 0, 100).expect("read"),
            Some((a.to_vec(), true))
        );
        assert_eq!(
            pack.read(&address(a), 6, 2).expect("read"),
            Some((b"bl".to_vec(), false))
        );
        assert_eq!(pack.read(&address(b"third"), 0, 10).expect("read"), None);
    }

    #[test]
    fn a_prefix_collision_is_refused_not_confused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut pack = Pack::open(&dir.path().join("small.pack")).expect("open");
        let real = address(b"real");
        assert!(pack.append(&real, b"real").expect("append"));
        // Same first 8 bytes, different address: must not be reported as present or read.
        let mut impostor = real;
        impostor[31] ^= 1;
        assert!(!pack.contains(&impostor).expect("contains"));
        assert_eq!(pack.read(&impostor, 0, 10).expect("read"), None);
        assert!(!pack.append(&impostor, b"fake").expect("append"));
        assert_eq!(
            pack.read(&real, 0, 10).expect("read"),
            Some((b"real".to_vec(), true))
        );
    }

    #[test]
    fn recent_and_older_records_are_confirmed_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut pack = Pack::open(&dir.path().join("small.pack")).expect("open");
        let first = address(b"first");
        assert!(pack.append(&first, b"first").expect("append"));
        let mut impostor = first;
        impostor[31] ^= 1;
        assert!(pack.contains(&first).expect("recent: known without a read"));
        assert!(!pack
            .contains(&impostor)
            .expect("recent: a collision is refused"));
        for n in 0..RECENT {
            let content = n.to_le_bytes();
            assert!(pack.append(&address(&content), &content).expect("append"));
        }
        assert!(!pack.recent.contains_key(&prefix(&first)), "pushed out");
        assert_eq!(pack.recent.len(), RECENT);
        assert!(pack.contains(&first).expect("older: confirmed by a read"));
        assert!(!pack
            .contains(&impostor)
            .expect("older: a collision is refused"));
    }

    #[test]
    fn a_compaction_keeps_what_is_wanted_and_what_arrived_meanwhile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("small.pack");
        let mut pack = Pack::open(&path).expect("open");
        let blobs: Vec<Vec<u8>> = (0..10u8).map(|n| vec![n; 100 + n as usize]).collect();
        for blob in &blobs {
            assert!(pack.append(&address(blob), blob).expect("append"));
        }
        let (file, end) = pack.snapshot().expect("snapshot");
        let mut compactor = Compactor::new(&path, 0).expect("compactor");
        // Drop the even ones; odd ones are kept.
        let mut keep = |a: &[u8; 32]| {
            blobs
                .iter()
                .position(|b| address(b) == *a)
                .is_some_and(|n| n % 2 == 1)
        };
        compactor
            .copy(&file, MAGIC.len() as u64, end, &mut keep, true)
            .expect("copy");
        assert_eq!(compactor.dropped.len(), 5);
        // Meanwhile one more blob arrives, and blob 4 is wanted again.
        let late = b"arrived during the copy".to_vec();
        assert!(pack.append(&address(&late), &late).expect("append"));
        let (_, now_end) = pack.snapshot().expect("snapshot");
        compactor
            .copy(&file, end, now_end, &mut |_| true, false)
            .expect("tail");
        let (_, offset, len) = compactor
            .dropped
            .iter()
            .copied()
            .find(|(a, _, _)| *a == address(&blobs[4]))
            .expect("dropped");
        compactor.restore(&file, offset, len).expect("restore");
        let freed = compactor.finish(&mut pack, &path).expect("finish");
        assert_eq!(
            freed,
            [0u64, 2, 6, 8]
                .iter()
                .map(|n| RECORD_HEADER + 100 + n)
                .sum::<u64>()
        );
        for (n, blob) in blobs.iter().enumerate() {
            let wanted = n % 2 == 1 || n == 4;
            let read = pack.read(&address(blob), 0, 1000).expect("read");
            assert_eq!(read.is_some(), wanted, "blob {n}");
        }
        assert!(pack.contains(&address(&late)).expect("late"));
        let reopened = Pack::open(&path).expect("reopen");
        assert_eq!(reopened.len(), 7);
        assert!(!compact_path(&path).exists());
    }

    #[test]
    fn a_file_that_is_not_a_pack_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("small.pack");
        std::fs::write(&path, b"something else entirely").expect("write");
        let err = Pack::open(&path).expect_err("refused");
        assert!(
            err.to_string().contains("not a filesync blob pack"),
            "{err}"
        );
    }
}
