//! `Packs`: small blobs appended to pack files under `SDIR/blobs/packs/`, instead of one
//! file each, and the packs' share of the collector's work.
//!
//! Why packs: a burst of small files is bound by inode creation, not by bytes. Profiling W2
//! (10,000 files of 4 KiB) on ext4 showed most of both agents' time in the kernel's inode
//! allocator (`ext4_create` → `find_inode_bit` → `recently_deleted`); a blob per file
//! doubled the inodes `cp -a` creates. Appending to a pack costs a write instead.
//!
//! Why many packs: one pack could only be shrunk by copying all of its live part, so it was
//! compacted rarely and a history window of gigabytes swung the store up to three times the
//! window (R2 in docs/BENCHMARKS.md). Appends now go to the newest pack until it reaches
//! [`PACK_TARGET`], as git's and restic's packs do; the collector deletes a pack whose
//! records are all dead and repacks one that is at least [`REPACK_SHARE`] dead (its live
//! records appended to the newest pack, made durable, then the old file deleted). Content
//! dies roughly in the order it was written, so most packs go whole.
//!
//! Format of a pack, `packs/<8 hex digits>.pack`: a 16-byte header `filesync-pack-1\n`, then
//! records of `[32-byte SHA-256][u32 little-endian length][content]`. Records are only
//! appended, each in one `writev` call, after the content was verified against its address. A
//! record cut short by a crash is cut off when the pack is opened; nothing before it is
//! affected. A state directory from before packs were split has one `blobs/small.pack` in
//! the same format; it becomes pack 0.
//!
//! The index lives in memory, keyed by the first 8 bytes of the address to keep it small
//! (24 bytes a blob, about 2.3 MiB for 100,000 blobs); every hit is confirmed against the full
//! address in the record's header, and a blob whose prefix is taken by another is simply not
//! packed (the caller stores it as a file), so a prefix collision can cost a file but never
//! return wrong content. A record whose blob is indexed in an older pack (a repack cut off by
//! a crash copies some twice) is not indexed: it is dead weight its pack's next collection
//! drops. The full addresses of the last `RECENT` records appended are kept too: a master
//! publishes its notify right after uploading the content, and the bus checks that it holds
//! it; that check should not cost a read (it was 4% of the bus's CPU in W2).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Content up to this size goes into a pack: small files, and every chunk of a large one.
pub const PACK_MAX: usize = filesync_master::chunk::CHUNK_MAX;
/// A pack takes appends until it is this large (restic's default pack size); then the next
/// one is started. Small enough that a dead pack frees space soon, large enough that a
/// 100 GiB store is about 6,400 files.
pub const PACK_TARGET: u64 = 16 << 20;
/// A pack is repacked once at least this share of its bytes is dead (the single pack before
/// used the same share): the packs then hold at most 1.25 times their live content, plus
/// the pack appends go to. A repack copies up to four times what it frees, paced; in a live
/// mirror content mostly dies in the order it was written, and most packs go whole.
pub const REPACK_SHARE: f64 = 0.2;

const MAGIC: &[u8; 16] = b"filesync-pack-1\n";
const RECORD_HEADER: u64 = 32 + 4;
/// How many of the last appended records' full addresses are kept (32 KiB of them).
const RECENT: usize = 1024;
/// Bits of a slot that hold the content length (PACK_MAX fits); the rest hold the offset.
const LEN_BITS: u32 = 20;
/// Sealed packs kept open for reading, at most (the newest is always open).
const HANDLES: usize = 64;
/// The directory of packs, inside the store's.
const DIR: &str = "packs";
/// The one pack of a state directory from before packs were split.
const LEGACY: &str = "small.pack";

/// Where one record is in its pack: its header's offset and the content length, packed
/// into a u64.
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
    /// The record's bytes in its pack, header included.
    fn record_len(self) -> u64 {
        RECORD_HEADER + self.len() as u64
    }
}

/// Which pack a record is in, and where.
#[derive(Debug, Clone, Copy)]
struct Loc {
    pack: u32,
    slot: Slot,
}

/// One pack file: how far its records go, and how many of those bytes the index points at.
#[derive(Debug)]
struct PackFile {
    path: PathBuf,
    end: u64,
    live: u64,
}

/// The packs and their index. Not synchronised: the store wraps it in a mutex.
#[derive(Debug)]
pub struct Packs {
    dir: PathBuf,
    files: BTreeMap<u32, PackFile>,
    /// The pack appends go to, and its file opened for appending.
    appending: Option<(u32, File)>,
    /// Sealed packs opened for reading, at most `HANDLES`.
    handles: HashMap<u32, File>,
    index: HashMap<u64, Loc>,
    /// The full addresses of the last `RECENT` records appended, by prefix, oldest first.
    recent: HashMap<u64, [u8; 32]>,
    recent_order: VecDeque<u64>,
    /// Packs a repack appended to since the last `retire` (made durable before it deletes).
    moved_into: HashSet<u32>,
    /// Bytes a repack appended since the last `retire`.
    moved: u64,
}

fn prefix(address: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&address[..8]);
    u64::from_be_bytes(first)
}

fn pack_name(id: u32) -> String {
    format!("{id:08x}.pack")
}

fn parse_pack_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".pack")?;
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

impl Packs {
    /// Opens (or creates) the packs of the store in `blobs`, indexes them, and cuts off a
    /// torn last record.
    pub fn open(blobs: &Path) -> io::Result<Packs> {
        Packs::open_with(blobs, true)
    }

    /// Opens the packs to read them beside the bus that writes them (`filesync restore`):
    /// nothing is created or cut off, and a record being appended is simply not seen.
    pub fn open_read_only(blobs: &Path) -> io::Result<Packs> {
        Packs::open_with(blobs, false)
    }

    fn open_with(blobs: &Path, writable: bool) -> io::Result<Packs> {
        let dir = blobs.join(DIR);
        let legacy = blobs.join(LEGACY);
        let mut found = Vec::new();
        if writable {
            fs::create_dir_all(&dir)?;
            if legacy.is_file() {
                fs::rename(&legacy, dir.join(pack_name(0)))?;
                sync_dir(&dir)?;
            }
        } else if legacy.is_file() {
            found.push((0, legacy));
        }
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    if let Some(id) = entry.file_name().to_str().and_then(parse_pack_name) {
                        found.push((id, entry.path()));
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound && !writable => {}
            Err(err) => return Err(err),
        }
        found.sort();
        let mut packs = Packs {
            dir,
            files: BTreeMap::new(),
            appending: None,
            handles: HashMap::new(),
            index: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            moved_into: HashSet::new(),
            moved: 0,
        };
        for (id, path) in found {
            packs.index_pack(id, path, writable)?;
        }
        if writable {
            // Appends go on into the newest pack while it has room.
            if let Some((&id, pack)) = packs.files.iter().next_back() {
                if pack.end < PACK_TARGET {
                    let file = OpenOptions::new()
                        .read(true)
                        .append(true)
                        .open(&pack.path)?;
                    packs.appending = Some((id, file));
                }
            }
        }
        Ok(packs)
    }

    /// Reads one pack's records into the index.
    fn index_pack(&mut self, id: u32, path: PathBuf, writable: bool) -> io::Result<()> {
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        let mut magic = [0u8; 16];
        file.read_exact_at(&mut magic, 0)
            .map_err(|_| bad_pack(&path))?;
        if &magic != MAGIC {
            return Err(bad_pack(&path));
        }
        let mut end = MAGIC.len() as u64;
        let mut live = 0;
        let mut header = [0u8; RECORD_HEADER as usize];
        while end + RECORD_HEADER <= size {
            file.read_exact_at(&mut header, end)?;
            let len = u32::from_le_bytes([header[32], header[33], header[34], header[35]]);
            let slot = Slot::new(end, len as usize);
            if len as usize > PACK_MAX || end + slot.record_len() > size {
                break;
            }
            let mut address = [0u8; 32];
            address.copy_from_slice(&header[..32]);
            if let std::collections::hash_map::Entry::Vacant(entry) =
                self.index.entry(prefix(&address))
            {
                entry.insert(Loc { pack: id, slot });
                live += slot.record_len();
            }
            end += slot.record_len();
        }
        if end < size && writable {
            tracing::warn!(
                "{}: cutting off {} bytes of a record cut short",
                path.display(),
                size - end
            );
            OpenOptions::new().write(true).open(&path)?.set_len(end)?;
        }
        if self.handles.len() < HANDLES {
            self.handles.insert(id, file);
        }
        self.files.insert(id, PackFile { path, end, live });
        Ok(())
    }

    /// A handle to read pack `id` with.
    fn handle(&mut self, id: u32) -> io::Result<&File> {
        if let Some((appending, file)) = &self.appending {
            if *appending == id {
                return Ok(file);
            }
        }
        if !self.handles.contains_key(&id) {
            let path = self.files.get(&id).map(|f| f.path.clone());
            let path = path.ok_or_else(|| io::Error::other(format!("no pack {id}")))?;
            if self.handles.len() >= HANDLES {
                if let Some(&any) = self.handles.keys().next() {
                    self.handles.remove(&any);
                }
            }
            self.handles.insert(id, File::open(path)?);
        }
        self.handles
            .get(&id)
            .ok_or_else(|| io::Error::other(format!("no pack {id}")))
    }

    /// Reads `buf.len()` bytes of pack `id` at `offset`.
    fn read_at(&mut self, id: u32, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.handle(id)?.read_exact_at(buf, offset)
    }

    /// Where `address` is, confirmed against the record's header.
    fn find(&mut self, address: &[u8; 32]) -> io::Result<Option<Loc>> {
        let key = prefix(address);
        let Some(&loc) = self.index.get(&key) else {
            return Ok(None);
        };
        if let Some(recent) = self.recent.get(&key) {
            return Ok((recent == address).then_some(loc));
        }
        let mut stored = [0u8; 32];
        self.read_at(loc.pack, &mut stored, loc.slot.offset())?;
        Ok((&stored == address).then_some(loc))
    }

    pub fn contains(&mut self, address: &[u8; 32]) -> io::Result<bool> {
        Ok(self.find(address)?.is_some())
    }

    /// Appends verified `content` under `address`. False when it was not packed because
    /// another blob holds the same index prefix (the caller stores it elsewhere).
    pub fn append(&mut self, address: &[u8; 32], content: &[u8]) -> io::Result<bool> {
        debug_assert!(content.len() <= PACK_MAX);
        if self.index.contains_key(&prefix(address)) {
            return self.contains(address);
        }
        let loc = self.write_record(address, content)?;
        let key = prefix(address);
        self.index.insert(key, loc);
        if self.recent_order.len() == RECENT {
            if let Some(oldest) = self.recent_order.pop_front() {
                self.recent.remove(&oldest);
            }
        }
        self.recent.insert(key, *address);
        self.recent_order.push_back(key);
        Ok(true)
    }

    /// Appends one record to the pack appends go to (starting the next pack when it is
    /// full) and counts it live there; the caller indexes it.
    fn write_record(&mut self, address: &[u8; 32], content: &[u8]) -> io::Result<Loc> {
        let id = self.appending_pack()?;
        let mut header = [0u8; RECORD_HEADER as usize];
        header[..32].copy_from_slice(address);
        header[32..].copy_from_slice(&(content.len() as u32).to_le_bytes());
        let (Some(pack), Some((_, file))) = (self.files.get_mut(&id), &mut self.appending) else {
            return Err(io::Error::other("no pack to append to"));
        };
        if let Err(err) = write_record_once(file, &header, content) {
            // Whatever part reached the file is cut off, so the next record starts clean.
            let _ = file.set_len(pack.end);
            return Err(err);
        }
        let slot = Slot::new(pack.end, content.len());
        pack.end += slot.record_len();
        pack.live += slot.record_len();
        Ok(Loc { pack: id, slot })
    }

    /// The pack appends go to: the current one while it has room, else a new one.
    fn appending_pack(&mut self) -> io::Result<u32> {
        if let Some((id, _)) = &self.appending {
            if self.files.get(id).is_some_and(|p| p.end < PACK_TARGET) {
                return Ok(*id);
            }
        }
        self.appending = None;
        let id = self
            .files
            .keys()
            .next_back()
            .map_or(0, |last| last.wrapping_add(1));
        let path = self.dir.join(pack_name(id));
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        self.files.insert(
            id,
            PackFile {
                path,
                end: MAGIC.len() as u64,
                live: 0,
            },
        );
        self.appending = Some((id, file));
        Ok(id)
    }

    /// Up to `len` bytes of `address`'s content from `offset`, and whether that reaches the
    /// end; `None` when no pack holds it.
    pub fn read(
        &mut self,
        address: &[u8; 32],
        offset: u64,
        len: u64,
    ) -> io::Result<Option<(Vec<u8>, bool)>> {
        let Some(&loc) = self.index.get(&prefix(address)) else {
            return Ok(None);
        };
        let size = loc.slot.len() as u64;
        let start = offset.min(size);
        let want = len.min(size - start);
        // The record's address and the wanted content in one read when they are adjacent
        // (a read from the start, the usual case); the address confirms the index hit.
        let header = RECORD_HEADER as usize;
        if start == 0 {
            let mut record = vec![0u8; header + want as usize];
            self.read_at(loc.pack, &mut record, loc.slot.offset())?;
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
        self.read_at(
            loc.pack,
            &mut buf,
            loc.slot.offset() + RECORD_HEADER + start,
        )?;
        Ok(Some((buf, start + want >= size)))
    }

    /// Every record's address and content length (the collector's listing), read pack by
    /// pack in file order.
    pub fn records(&mut self) -> io::Result<Vec<([u8; 32], u64)>> {
        let mut locs: Vec<Loc> = self.index.values().copied().collect();
        locs.sort_unstable_by_key(|loc| (loc.pack, loc.slot.offset()));
        let mut records = Vec::with_capacity(locs.len());
        let mut address = [0u8; 32];
        for loc in locs {
            self.read_at(loc.pack, &mut address, loc.slot.offset())?;
            records.push((address, loc.slot.len() as u64));
        }
        Ok(records)
    }

    /// The records indexed in pack `id`, by address, in file order.
    pub fn records_in(&mut self, id: u32) -> io::Result<Vec<[u8; 32]>> {
        let mut offsets: Vec<u64> = self
            .index
            .values()
            .filter(|loc| loc.pack == id)
            .map(|loc| loc.slot.offset())
            .collect();
        offsets.sort_unstable();
        let mut addresses = Vec::with_capacity(offsets.len());
        let mut address = [0u8; 32];
        for offset in offsets {
            self.read_at(id, &mut address, offset)?;
            addresses.push(address);
        }
        Ok(addresses)
    }

    /// The packs worth collecting now that `doomed` is to go: each sealed pack with nothing
    /// else left in it, and each at least `REPACK_SHARE` dead; the pack appends go to is
    /// sealed when it is among them, so that appends move on.
    pub fn survey(&mut self, doomed: &HashSet<[u8; 32]>) -> Vec<u32> {
        let mut dead: HashMap<u32, u64> = HashMap::new();
        for address in doomed {
            if let Some(loc) = self.index.get(&prefix(address)) {
                *dead.entry(loc.pack).or_default() += loc.slot.record_len();
            }
        }
        let appending = self.appending.as_ref().map(|(id, _)| *id);
        let mut worth = Vec::new();
        for (&id, pack) in &self.files {
            let records = pack.end - MAGIC.len() as u64;
            let keep = pack
                .live
                .saturating_sub(dead.get(&id).copied().unwrap_or(0));
            let garbage = records - keep;
            let sealed_and_empty = Some(id) != appending && keep == 0;
            let dead_enough = garbage > 0 && garbage as f64 >= records as f64 * REPACK_SHARE;
            if sealed_and_empty || dead_enough {
                worth.push(id);
            }
        }
        if appending.is_some_and(|id| worth.contains(&id)) {
            self.appending = None;
        }
        worth
    }

    /// Moves `address` out of pack `from` into the pack appends go to, if it is there;
    /// returns the bytes appended.
    pub fn relocate(&mut self, address: &[u8; 32], from: u32) -> io::Result<u64> {
        let Some(loc) = self.find(address)? else {
            return Ok(0);
        };
        if loc.pack != from {
            return Ok(0);
        }
        let mut content = vec![0u8; loc.slot.len()];
        self.read_at(from, &mut content, loc.slot.offset() + RECORD_HEADER)?;
        let moved = self.write_record(address, &content)?;
        if let Some(old) = self.files.get_mut(&from) {
            old.live = old.live.saturating_sub(loc.slot.record_len());
        }
        self.index.insert(prefix(address), moved);
        self.moved_into.insert(moved.pack);
        self.moved += moved.slot.record_len();
        Ok(moved.slot.record_len())
    }

    /// Deletes the packs `ids` (from `survey`): whatever in them is not `doomed` (spared
    /// since, or not moved yet) is moved first, everything moved is made durable, then the
    /// files go. Returns the records dropped and the bytes the packs shrank by.
    pub fn retire(&mut self, ids: &[u32], doomed: &HashSet<[u8; 32]>) -> io::Result<(usize, u64)> {
        for &id in ids {
            for address in self.records_in(id)? {
                if !doomed.contains(&address) {
                    self.relocate(&address, id)?;
                }
            }
        }
        for id in std::mem::take(&mut self.moved_into) {
            self.handle(id)?.sync_all()?;
        }
        sync_dir(&self.dir)?;
        super::crash::point("pack-copied");
        let mut size = 0;
        for id in ids {
            if let Some(pack) = self.files.remove(id) {
                fs::remove_file(&pack.path)?;
                size += pack.end;
            }
            self.handles.remove(id);
            if self.appending.as_ref().is_some_and(|(a, _)| a == id) {
                self.appending = None;
            }
        }
        sync_dir(&self.dir)?;
        let before = self.index.len();
        self.index.retain(|_, loc| !ids.contains(&loc.pack));
        self.recent.clear();
        self.recent_order.clear();
        let freed = size.saturating_sub(std::mem::take(&mut self.moved));
        Ok((before - self.index.len(), freed))
    }
}

/// What tests look at.
#[cfg(test)]
impl Packs {
    /// The packs' size in bytes.
    pub fn size(&self) -> u64 {
        self.files.values().map(|p| p.end).sum()
    }

    /// How many pack files there are.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// How many blobs the packs hold.
    pub fn blobs(&self) -> usize {
        self.index.len()
    }
}

/// Writes a record's header and content in one `writev` (no copy of the content to join
/// them), finishing with plain writes in the rare case the kernel takes only part; a
/// `writev` interrupted by a signal before it wrote anything is asked again.
fn write_record_once(file: &mut File, header: &[u8], content: &[u8]) -> io::Result<()> {
    let slices = [io::IoSlice::new(header), io::IoSlice::new(content)];
    let mut done = loop {
        match file.write_vectored(&slices) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            written => break written?,
        }
    };
    if done < header.len() {
        file.write_all(&header[done..])?;
        done = header.len();
    }
    file.write_all(&content[done - header.len()..])
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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

    fn pack_paths(blobs: &Path) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = fs::read_dir(blobs.join(DIR))
            .expect("packs")
            .map(|e| e.expect("entry").path())
            .collect();
        paths.sort();
        paths
    }

    /// Blobs of 1 MiB less a little, distinct by their first byte and `salt`.
    fn big(n: u8, salt: u8) -> Vec<u8> {
        let mut blob = vec![salt; PACK_MAX - 100];
        blob[0] = n;
        blob
    }

    #[test]
    fn blobs_survive_reopening_and_a_torn_record_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut packs = Packs::open(dir.path()).expect("open");
        let (a, b) = (b"first blob".as_slice(), b"second".as_slice());
        assert!(packs.append(&address(a), a).expect("append"));
        assert!(packs.append(&address(b), b).expect("append"));
        assert!(packs.append(&address(b), b).expect("again"), "stored once");
        assert_eq!(packs.blobs(), 2);
        let path = pack_paths(dir.path()).pop().expect("a pack");
        let whole = fs::metadata(&path).expect("stat").len();

        // A crash in the middle of a third append.
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&address(b"third")).expect("torn header");
        file.write_all(&100u32.to_le_bytes()).expect("torn header");
        file.write_all(b"thi").expect("torn content");
        drop(file);

        let mut packs = Packs::open(dir.path()).expect("reopen");
        assert_eq!(fs::metadata(&path).expect("stat").len(), whole);
        assert_eq!(packs.blobs(), 2);
        assert_eq!(
            packs.read(&address(a), 0, 100).expect("read"),
            Some((a.to_vec(), true))
        );
        assert_eq!(
            packs.read(&address(a), 6, 2).expect("read"),
            Some((b"bl".to_vec(), false))
        );
        assert_eq!(packs.read(&address(b"third"), 0, 10).expect("read"), None);
        // Appends go on in the same pack.
        assert!(packs.append(&address(b"third"), b"third").expect("append"));
        assert_eq!(pack_paths(dir.path()), vec![path]);
    }

    #[test]
    fn a_prefix_collision_is_refused_not_confused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut packs = Packs::open(dir.path()).expect("open");
        let real = address(b"real");
        assert!(packs.append(&real, b"real").expect("append"));
        // Same first 8 bytes, different address: must not be reported as present or read.
        let mut impostor = real;
        impostor[31] ^= 1;
        assert!(!packs.contains(&impostor).expect("contains"));
        assert_eq!(packs.read(&impostor, 0, 10).expect("read"), None);
        assert!(!packs.append(&impostor, b"fake").expect("append"));
        assert_eq!(
            packs.read(&real, 0, 10).expect("read"),
            Some((b"real".to_vec(), true))
        );
    }

    #[test]
    fn recent_and_older_records_are_confirmed_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut packs = Packs::open(dir.path()).expect("open");
        let first = address(b"first");
        assert!(packs.append(&first, b"first").expect("append"));
        let mut impostor = first;
        impostor[31] ^= 1;
        assert!(packs
            .contains(&first)
            .expect("recent: known without a read"));
        assert!(!packs
            .contains(&impostor)
            .expect("recent: a collision is refused"));
        for n in 0..RECENT {
            let content = n.to_le_bytes();
            assert!(packs.append(&address(&content), &content).expect("append"));
        }
        assert!(!packs.recent.contains_key(&prefix(&first)), "pushed out");
        assert_eq!(packs.recent.len(), RECENT);
        assert!(packs.contains(&first).expect("older: confirmed by a read"));
        assert!(!packs
            .contains(&impostor)
            .expect("older: a collision is refused"));
    }

    #[test]
    fn appends_move_on_to_a_new_pack_once_one_is_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut packs = Packs::open(dir.path()).expect("open");
        let count = (PACK_TARGET / (PACK_MAX as u64 - 100) + 2) as u8;
        for n in 0..count {
            let blob = big(n, 0);
            assert!(packs.append(&address(&blob), &blob).expect("append"));
        }
        let paths = pack_paths(dir.path());
        assert_eq!(paths.len(), 2, "{paths:?}");
        assert!(fs::metadata(&paths[0]).expect("stat").len() >= PACK_TARGET);
        assert_eq!(packs.files(), 2);
        let mut packs = Packs::open(dir.path()).expect("reopen");
        assert_eq!(packs.blobs(), count as usize);
        for n in 0..count {
            let blob = big(n, 0);
            let read = packs.read(&address(&blob), 0, blob.len() as u64);
            assert_eq!(read.expect("read"), Some((blob, true)), "blob {n}");
        }
    }

    /// Two full packs and the one appends go to: all of the first is dead (deleted), half of
    /// the second (repacked), one of the third's two records (sealed and repacked). A blob
    /// doomed in the survey but spared before the retirement is kept after all.
    #[test]
    fn dead_packs_go_whole_half_dead_ones_are_repacked_and_nothing_wanted_is_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut packs = Packs::open(dir.path()).expect("open");
        let per_pack = PACK_TARGET.div_ceil(PACK_MAX as u64 - 100) as u8;
        let blobs: Vec<Vec<u8>> = (0..per_pack * 2 + 2).map(|n| big(n, 1)).collect();
        for blob in &blobs {
            assert!(packs.append(&address(blob), blob).expect("append"));
        }
        assert_eq!(packs.files(), 3);
        let second = per_pack as usize..per_pack as usize * 2;
        let mut doomed: HashSet<[u8; 32]> = blobs
            .iter()
            .enumerate()
            .filter(|(n, _)| {
                *n < per_pack as usize
                    || (second.contains(n) && n % 2 == 0)
                    || *n == blobs.len() - 1
            })
            .map(|(_, b)| address(b))
            .collect();
        let worth = packs.survey(&doomed);
        assert_eq!(worth, vec![0, 1, 2]);
        // The first of the second pack's dead is wanted again before the retirement.
        let spared = address(&blobs[per_pack as usize]);
        doomed.remove(&spared);
        let mut moved = 0;
        for &id in &worth {
            for a in packs.records_in(id).expect("records") {
                if !doomed.contains(&a) {
                    moved += packs.relocate(&a, id).expect("relocate");
                }
            }
        }
        assert!(moved > 0);
        let (dropped, freed) = packs.retire(&worth, &doomed).expect("retire");
        assert_eq!(dropped, doomed.len());
        assert!(freed > 0);
        let wanted = |b: &Vec<u8>| !doomed.contains(&address(b));
        for reopen in [false, true] {
            if reopen {
                packs = Packs::open(dir.path()).expect("reopen");
            }
            for (n, blob) in blobs.iter().enumerate() {
                let read = packs
                    .read(&address(blob), 0, blob.len() as u64)
                    .expect("read");
                assert_eq!(read.is_some(), wanted(blob), "blob {n}, reopened {reopen}");
            }
        }
        assert!(packs.contains(&spared).expect("spared"));
        assert_eq!(packs.blobs(), blobs.len() - doomed.len());
        assert!(pack_paths(dir.path())
            .iter()
            .all(|p| !p.ends_with(pack_name(0))));
    }

    #[test]
    fn records_copied_twice_by_a_cut_off_repack_are_dead_weight_not_confusion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut packs = Packs::open(dir.path()).expect("open");
        let (a, b) = (b"kept".as_slice(), b"dead".as_slice());
        assert!(packs.append(&address(a), a).expect("append"));
        assert!(packs.append(&address(b), b).expect("append"));
        let doomed = HashSet::from([address(b)]);
        let worth = packs.survey(&doomed);
        assert_eq!(worth, vec![0]);
        packs.relocate(&address(a), 0).expect("relocate");
        // The crash: the copy is in pack 1, pack 0 was not deleted.
        drop(packs);
        let mut packs = Packs::open(dir.path()).expect("reopen");
        assert_eq!(packs.blobs(), 2);
        // Pack 1 holds only an unindexed copy: dead, deleted by the next pass.
        let worth = packs.survey(&doomed);
        assert!(worth.contains(&0) && worth.contains(&1), "{worth:?}");
        packs.retire(&worth, &doomed).expect("retire");
        let mut packs = Packs::open(dir.path()).expect("reopen");
        assert_eq!(
            packs.read(&address(a), 0, 10).expect("read"),
            Some((a.to_vec(), true))
        );
        assert!(!packs.contains(&address(b)).expect("contains"));
        assert_eq!(packs.blobs(), 1);
    }

    #[test]
    fn the_single_pack_of_an_older_state_becomes_pack_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut legacy = MAGIC.to_vec();
        legacy.extend_from_slice(&address(b"old"));
        legacy.extend_from_slice(&3u32.to_le_bytes());
        legacy.extend_from_slice(b"old");
        fs::write(dir.path().join(LEGACY), &legacy).expect("write");
        let mut read_only = Packs::open_read_only(dir.path()).expect("read only");
        assert!(read_only.contains(&address(b"old")).expect("contains"));
        assert!(dir.path().join(LEGACY).exists(), "a reader changes nothing");
        let mut packs = Packs::open(dir.path()).expect("open");
        assert!(packs.contains(&address(b"old")).expect("contains"));
        assert!(!dir.path().join(LEGACY).exists());
        assert_eq!(
            pack_paths(dir.path()),
            vec![dir.path().join(DIR).join(pack_name(0))]
        );
    }

    #[test]
    fn a_file_that_is_not_a_pack_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join(DIR)).expect("mkdir");
        fs::write(
            dir.path().join(DIR).join(pack_name(0)),
            b"something else entirely",
        )
        .expect("write");
        let err = Packs::open(dir.path()).expect_err("refused");
        assert!(
            err.to_string().contains("not a filesync blob pack"),
            "{err}"
        );
    }
}
