//! `EventLog`: the append-only log, in segments, its recovery at start, and reads by `seq`.
//!
//! The bus is the only writer, so the log has one total order. Each event is written as one
//! complete line with a single `write` before anyone is told it exists; readers (pollers)
//! read the segment file through its open handle, up to the end known when they asked, so
//! they never see a partial line, and a segment renamed or removed meanwhile stays readable.
//! A line survives the bus being killed (the kernel has it); surviving power loss would
//! need an fsync per event, which we do not pay (see ARCHITECTURE.md).
//!
//! # Segments
//!
//! The newest segment is `SDIR/events.jsonl`. Once it holds [`LogOptions::segment_bytes`]
//! it is renamed to `SDIR/log/<first seq, 20 digits>.jsonl` and a new `events.jsonl` begins;
//! the bus then writes a checkpoint at the last `seq` of the segment it closed
//! (`crate::checkpoint`), so that every segment boundary has one, and whole segments before
//! the retention point can be removed. `seq` never changes and stays gapless from the first
//! event kept.
//!
//! A segment that does not start at `seq` 1 starts with a header line, a JSON object
//! padded with spaces to [`HEADER_LEN`] bytes so it can be rewritten in place:
//! `{"log":{"first":N,"checkpoint":C}}`. `first` is its first `seq`; in the oldest segment
//! kept, `checkpoint` is `N - 1`, the checkpoint (`SDIR/checkpoints/<C>.jsonl`) that holds
//! the state of everything before it (`null` elsewhere). A log that was never rotated has
//! no header at all: it is the events, one per line, from `seq` 1.
//!
//! At start every segment is read once to rebuild the `seq` index. A last line torn by a
//! crash (no newline, or not JSON) is an expected condition: it is cut off with a warning.
//! A bad line anywhere else means the file is not ours to fix, and opening fails.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::event::{Draft, Event};

/// The length of a segment's header line, newline included.
pub const HEADER_LEN: usize = 100;
/// The default size at which a segment is closed and a new one begun.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// How the log is kept.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// Close the newest segment once it holds this many bytes.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// The log's end: its last `seq` and the byte offset just past its last line (in the
/// newest segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    pub seq: u64,
    pub end: u64,
}

/// A segment's header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    pub first: u64,
    pub checkpoint: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct HeaderLine {
    log: SegmentHeader,
}

impl SegmentHeader {
    fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(&HeaderLine { log: *self }).unwrap_or_default();
        line.resize(HEADER_LEN - 1, b' ');
        line.push(b'\n');
        line
    }

    /// Reads a header line, if `line` is one.
    pub fn parse(line: &str) -> Option<SegmentHeader> {
        if !line.starts_with(r#"{"log":"#) {
            return None;
        }
        serde_json::from_str::<HeaderLine>(line.trim_end())
            .ok()
            .map(|h| h.log)
    }
}

/// Reads back an earlier event of the log by `seq` (while the log is being opened).
pub type Lookup<'a> = &'a dyn Fn(u64) -> Option<Event>;

/// One segment file.
struct Segment {
    path: PathBuf,
    file: Arc<File>,
    header: Option<SegmentHeader>,
    /// Byte offset of each line: `offsets[seq - first]`.
    offsets: Vec<u64>,
    end: u64,
    /// When its last event was appended ...
    last_time: SystemTime,
    /// ... and its first.
    first_time: Option<SystemTime>,
}

impl Segment {
    fn first(&self) -> u64 {
        self.header.map_or(1, |h| h.first)
    }

    fn last(&self) -> u64 {
        self.first() + self.offsets.len() as u64 - 1
    }

    fn read_event(&self, seq: u64) -> Option<Event> {
        let idx = usize::try_from(seq.checked_sub(self.first())?).ok()?;
        let start = *self.offsets.get(idx)?;
        let stop = self.offsets.get(idx + 1).copied().unwrap_or(self.end);
        let line = read_at(&self.file, start, stop).ok()?;
        Event::parse(std::str::from_utf8(&line).ok()?.trim_end()).ok()
    }
}

/// What a segment that is kept looks like from outside: for retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub first: u64,
    pub last: u64,
    pub last_time: SystemTime,
}

/// Where a reader finds the lines from one `seq` on: an open handle on their segment, and
/// the byte range to read (to the segment's end as known now).
pub struct Located {
    pub file: Arc<File>,
    pub start: u64,
    pub end: u64,
}

/// A byte range of a file read with `pread`: it shares no file position with the writer
/// appending to the same open file, as a `try_clone` of its handle would (an append moves
/// the shared position, and a reader that had sought would read from the end).
pub struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> ReadAt<'a> {
    pub fn new(file: &'a File, start: u64, end: u64) -> ReadAt<'a> {
        ReadAt {
            file,
            pos: start,
            end,
        }
    }
}

impl io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = (buf.len() as u64).min(self.end.saturating_sub(self.pos)) as usize;
        let got = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

/// Reads the events of `ranges` in order, handing each to `each` until it says stop
/// (false); lines that do not parse are skipped (`check` is the place to report them).
pub fn for_each_event(ranges: Vec<Located>, mut each: impl FnMut(Event) -> bool) -> io::Result<()> {
    for range in ranges {
        let reader = BufReader::new(ReadAt::new(&range.file, range.start, range.end));
        for line in reader.lines() {
            let Ok(event) = Event::parse(&line?) else {
                continue;
            };
            if !each(event) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The open event log.
pub struct EventLog {
    dir: PathBuf,
    /// Oldest first; the last is the newest, `events.jsonl`.
    segments: Vec<Segment>,
    options: LogOptions,
    last_time: SystemTime,
}

/// The segment files of the log whose newest segment is `events.jsonl` at `path`, oldest
/// first (the newest last, whether it exists yet or not).
fn segment_paths(path: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut older: Vec<(u64, PathBuf)> = Vec::new();
    match fs::read_dir(dir.join("log")) {
        Ok(entries) => {
            for entry in entries {
                let candidate = entry?.path();
                let first = candidate
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".jsonl"))
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(first) = first {
                    older.push((first, candidate));
                }
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    older.sort();
    let mut paths: Vec<PathBuf> = older.into_iter().map(|(_, p)| p).collect();
    paths.push(path.to_path_buf());
    Ok(paths)
}

/// The first `seq` and the covering checkpoint of the log at `path`, from its oldest
/// segment's header (`(1, None)` for a log that was never truncated).
pub fn peek_start(path: &Path) -> io::Result<SegmentHeader> {
    let oldest = segment_paths(path)?.into_iter().next();
    let header = match oldest.map(File::open) {
        Some(Ok(file)) => {
            let mut first = String::new();
            BufReader::new(file).read_line(&mut first)?;
            SegmentHeader::parse(&first)
        }
        Some(Err(err)) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => None,
    };
    Ok(header.unwrap_or(SegmentHeader {
        first: 1,
        checkpoint: None,
    }))
}

impl EventLog {
    /// Opens (creating if needed) the log whose newest segment is `path`, recovering from
    /// a torn last line, and hands each event to `visit` in order, with a way to read back
    /// earlier ones.
    pub fn open(
        path: &Path,
        options: LogOptions,
        mut visit: impl FnMut(&Event, Lookup<'_>),
    ) -> io::Result<EventLog> {
        let paths = segment_paths(path)?;
        let count = paths.len();
        let mut log = EventLog {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            segments: Vec::new(),
            options,
            last_time: SystemTime::UNIX_EPOCH,
        };
        for (idx, segment_path) in paths.into_iter().enumerate() {
            let newest = idx + 1 == count;
            let expected = log.next_seq();
            let segment = log.read_segment(&segment_path, newest, expected, &mut visit)?;
            log.segments.push(segment);
        }
        Ok(log)
    }

    fn next_seq(&self) -> u64 {
        self.segments.last().map_or(1, |s| s.last() + 1)
    }

    /// Reads one segment, checking that its events continue the log from `expected`.
    fn read_segment(
        &mut self,
        path: &Path,
        newest: bool,
        expected: u64,
        visit: &mut impl FnMut(&Event, Lookup<'_>),
    ) -> io::Result<Segment> {
        let bad = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(newest)
            .create(newest)
            .open(path)?;
        let file_len = file.metadata()?.len();
        let mut segment = Segment {
            path: path.to_path_buf(),
            file: Arc::new(file.try_clone()?),
            header: None,
            offsets: Vec::new(),
            end: 0,
            last_time: SystemTime::UNIX_EPOCH,
            first_time: None,
        };
        let mut reader = BufReader::new(&mut file);
        reader.seek(SeekFrom::Start(0))?;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            let complete = line.ends_with(b"\n");
            let text = std::str::from_utf8(&line).ok();
            if segment.end == 0 {
                if let Some(header) = text.and_then(SegmentHeader::parse) {
                    segment.header = Some(header);
                    segment.end = n as u64;
                    continue;
                }
            }
            let parsed = text.and_then(|text| Event::parse(text.trim_end()).ok());
            let Some(event) = parsed.filter(|_| complete) else {
                if newest && segment.end + n as u64 == file_len {
                    tracing::warn!(
                        "{}: cutting off a torn last line (a crash while appending)",
                        path.display()
                    );
                    break;
                }
                return Err(bad(format!(
                    "line {} is not an event",
                    segment.offsets.len() + 1
                )));
            };
            let want = segment.last() + 1;
            if event.seq != want {
                return Err(bad(format!("expected seq {want} but found {}", event.seq)));
            }
            let lookup = |seq: u64| self.read_event(seq).or_else(|| segment.read_event(seq));
            visit(&event, &lookup);
            if let Ok(time) = humantime::parse_rfc3339(&event.time) {
                segment.last_time = time;
                segment.first_time.get_or_insert(time);
                self.last_time = self.last_time.max(time);
            }
            segment.offsets.push(segment.end);
            segment.end += n as u64;
        }
        if newest && segment.end != file_len {
            file.set_len(segment.end)?;
        }
        // A newest segment begun by a rotation that crashed before its first event.
        if segment.offsets.is_empty() && segment.header.is_none() && expected > 1 {
            if !newest {
                return Err(bad("an empty segment".into()));
            }
            let header = SegmentHeader {
                first: expected,
                checkpoint: None,
            };
            write_header(path, &header)?;
            segment.header = Some(header);
            segment.end = HEADER_LEN as u64;
        }
        if segment.first() != expected && !self.segments.is_empty() {
            return Err(bad(format!(
                "starts at seq {} where {expected} was expected",
                segment.first()
            )));
        }
        Ok(segment)
    }

    fn newest(&self) -> &Segment {
        // `open` always ends with the newest segment.
        &self.segments[self.segments.len() - 1]
    }

    pub fn path(&self) -> &Path {
        &self.newest().path
    }

    pub fn head(&self) -> Head {
        Head {
            seq: self.next_seq() - 1,
            end: self.newest().end,
        }
    }

    /// The first `seq` the log holds (1 until it was truncated).
    pub fn start(&self) -> u64 {
        self.segments.first().map_or(1, Segment::first)
    }

    /// The segments kept, oldest first (the newest, still growing, last).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments
            .iter()
            .filter(|s| !s.offsets.is_empty())
            .map(|s| SegmentInfo {
                first: s.first(),
                last: s.last(),
                last_time: s.last_time,
            })
            .collect()
    }

    /// Where to read from `seq` on; `None` before the log's start or past its end.
    pub fn locate(&self, seq: u64) -> Option<Located> {
        let segment = self
            .segments
            .iter()
            .find(|s| seq >= s.first() && seq <= s.last())?;
        Some(Located {
            file: segment.file.clone(),
            start: segment.offsets[(seq - segment.first()) as usize],
            end: segment.end,
        })
    }

    /// Where to read every event from `from` to `to`: one range per segment.
    pub fn ranges(&self, from: u64, to: u64) -> Vec<Located> {
        self.segments
            .iter()
            .filter(|s| !s.offsets.is_empty() && s.last() >= from && s.first() <= to)
            .map(|s| {
                let first = from.max(s.first());
                let stop = to.min(s.last());
                let end = s
                    .offsets
                    .get((stop + 1 - s.first()) as usize)
                    .copied()
                    .unwrap_or(s.end);
                Located {
                    file: s.file.clone(),
                    start: s.offsets[(first - s.first()) as usize],
                    end,
                }
            })
            .collect()
    }

    /// Reads back the event with `seq`, if the log has it.
    pub fn read_event(&self, seq: u64) -> Option<Event> {
        self.segments
            .iter()
            .find(|s| seq >= s.first() && seq <= s.last())
            .and_then(|s| s.read_event(seq))
    }

    /// Assigns `seq` and `time`, and appends the line. The event exists once this returns.
    pub fn append(&mut self, agent: &str, body: Draft) -> io::Result<Event> {
        // `time` never goes backwards, even if the wall clock does.
        let now = SystemTime::now().max(self.last_time);
        self.last_time = now;
        let event = Event {
            seq: self.next_seq(),
            time: humantime::format_rfc3339_micros(now).to_string(),
            agent: agent.to_owned(),
            body,
        };
        let mut line = event.to_line().into_bytes();
        line.push(b'\n');
        let last = self.segments.len() - 1;
        let newest = &mut self.segments[last];
        (&*newest.file).write_all(&line)?;
        newest.offsets.push(newest.end);
        newest.end += line.len() as u64;
        newest.last_time = now;
        newest.first_time.get_or_insert(now);
        Ok(event)
    }

    /// Closes the newest segment when it is full, and begins a new one; returns the last
    /// `seq` of the segment closed.
    pub fn rotate_if_full(&mut self) -> io::Result<Option<u64>> {
        if self.newest().end < self.options.segment_bytes {
            return Ok(None);
        }
        self.rotate()
    }

    /// Closes the newest segment (renamed under `log/`) and begins a new one; `None` when
    /// it holds no event.
    fn rotate(&mut self) -> io::Result<Option<u64>> {
        let newest = self.newest();
        if newest.offsets.is_empty() {
            return Ok(None);
        }
        let (first, last) = (newest.first(), newest.last());
        let older = self.dir.join("log");
        fs::create_dir_all(&older)?;
        let closed_path = older.join(format!("{first:020}.jsonl"));
        let active = newest.path.clone();
        fs::rename(&active, &closed_path)?;
        let header = SegmentHeader {
            first: last + 1,
            checkpoint: None,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&active)?;
        file.write_all(&header.line())?;
        let count = self.segments.len();
        self.segments[count - 1].path = closed_path;
        self.segments.push(Segment {
            path: active,
            file: Arc::new(file),
            header: Some(header),
            offsets: Vec::new(),
            end: HEADER_LEN as u64,
            last_time: self.last_time,
            first_time: None,
        });
        Ok(Some(last))
    }

    /// Closes the newest segment, whatever its size, when its first event is at least
    /// `age` old (so that a short history window is kept to within the keeper's interval,
    /// not to a segment's worth of events). Returns its last `seq`, as `rotate_if_full`.
    pub fn rotate_if_older(&mut self, age: std::time::Duration) -> io::Result<Option<u64>> {
        let old = self
            .newest()
            .first_time
            .and_then(|first| SystemTime::now().duration_since(first).ok())
            .is_some_and(|elapsed| elapsed >= age);
        if !old {
            return Ok(None);
        }
        self.rotate()
    }

    /// Removes every closed segment that ends before `seq` (the newest is always kept);
    /// the oldest kept then says which checkpoint covers what came before it. Returns the
    /// log's new start.
    pub fn remove_before(&mut self, seq: u64) -> io::Result<u64> {
        let count = self
            .segments
            .iter()
            .take(self.segments.len() - 1)
            .take_while(|s| s.last() < seq)
            .count();
        if count == 0 {
            return Ok(self.start());
        }
        // The header first: killed halfway, the log still starts where a checkpoint says.
        let oldest = &mut self.segments[count];
        let header = SegmentHeader {
            first: oldest.first(),
            checkpoint: Some(oldest.first() - 1),
        };
        write_header(&oldest.path, &header)?;
        oldest.header = Some(header);
        super::crash::point("header-written");
        for segment in self.segments.drain(..count) {
            fs::remove_file(&segment.path)?;
        }
        Ok(self.start())
    }
}

/// Writes a segment's header in place (through a handle of its own: the newest segment's
/// is opened for appending, which would put it at the end).
fn write_header(path: &Path, header: &SegmentHeader) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.write_all_at(&header.line(), 0)?;
    file.sync_data()
}

/// Reads `[start, stop)` of a segment through its handle.
fn read_at(file: &File, start: u64, stop: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; (stop - start) as usize];
    file.read_exact_at(&mut buf, start)?;
    Ok(buf)
}

/// Reads whole lines of a segment between byte offsets `start` and `end`, at most about
/// `max_bytes` of them (but always at least one line).
pub fn read_lines(file: &File, start: u64, end: u64, max_bytes: u64) -> io::Result<Vec<u8>> {
    let want = (end - start).min(max_bytes.max(1));
    let mut buf = read_at(file, start, start + want)?;
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(last) => {
            buf.truncate(last + 1);
            Ok(buf)
        }
        None => {
            // One line longer than max_bytes: read on to its end.
            let rest = ReadAt::new(file, start + want, u64::MAX);
            BufReader::new(rest).read_until(b'\n', &mut buf)?;
            Ok(buf)
        }
    }
}

/// A log read whole from its files (for `check`, `history` and tests).
#[derive(Debug, Default)]
pub struct ReadLog {
    /// The first `seq` kept.
    pub start: u64,
    /// The checkpoint holding the state before `start`, when the log was truncated.
    pub checkpoint: Option<PathBuf>,
    pub events: Vec<Event>,
}

/// Reads every segment of the log whose newest segment is `path`, with line numbers in
/// errors. A file that is not a bus's `events.jsonl` (a log saved elsewhere) is read alone.
pub fn read_log_segments(path: &Path) -> io::Result<ReadLog> {
    // A running bus may remove a segment between the listing and the read: list again.
    let mut attempts = 0;
    loop {
        match read_segments_once(path) {
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::Interrupted
                ) && attempts < 5 =>
            {
                attempts += 1
            }
            read => return read,
        }
    }
}

fn read_segments_once(path: &Path) -> io::Result<ReadLog> {
    let mut read = ReadLog {
        start: 1,
        ..ReadLog::default()
    };
    // A segment that does not go on from the one before was rotated or removed between
    // the listing and the read.
    let moved = |what: String| io::Error::new(io::ErrorKind::Interrupted, what);
    for (idx, segment) in segment_paths(path)?.iter().enumerate() {
        let reader = BufReader::new(File::open(segment)?);
        for (line_idx, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            if line_idx == 0 {
                if let Some(header) = SegmentHeader::parse(&line) {
                    let expected = read.events.last().map(|e| e.seq + 1);
                    if expected.is_some_and(|seq| seq != header.first)
                        || (idx == 0 && header.first > 1 && header.checkpoint.is_none())
                    {
                        return Err(moved(format!(
                            "{}: the log changed while it was read (it starts at #{})",
                            segment.display(),
                            header.first
                        )));
                    }
                    if idx == 0 {
                        read.start = header.first;
                        read.checkpoint = header.checkpoint.map(|seq| {
                            crate::checkpoint::path_in(
                                &path.parent().unwrap_or(Path::new(".")).join("checkpoints"),
                                seq,
                            )
                        });
                    }
                    continue;
                }
            }
            let event = Event::parse(&line).map_err(|err| {
                // serde's own position is "line 1" of the one line it was given.
                let text = err.to_string();
                let what = text
                    .rsplit_once(" at line ")
                    .map_or(text.as_str(), |(w, _)| w);
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} line {}, column {}: {what}",
                        segment.display(),
                        line_idx + 1,
                        err.column()
                    ),
                )
            })?;
            read.events.push(event);
        }
    }
    Ok(read)
}

/// Reads a whole log file into events (for `check` and tests), with line numbers in errors.
pub fn read_log(path: &Path) -> io::Result<Vec<Event>> {
    read_log_segments(path).map(|read| read.events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Tag;

    fn open(path: &Path, segment_bytes: u64) -> EventLog {
        EventLog::open(path, LogOptions { segment_bytes }, |_, _| {}).expect("open")
    }

    #[test]
    fn appends_recover_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        {
            let mut log = open(&path, DEFAULT_SEGMENT_BYTES);
            log.append("master", Draft::tagged(Tag::Ready))
                .expect("append");
            let mut consume = Draft::tagged(Tag::Consume);
            consume.cause = Some(1);
            log.append("slave", consume).expect("append");
        }
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(br#"{"seq":3,"time":"#).expect("torn write");
        let mut seen = Vec::new();
        let mut log = EventLog::open(&path, LogOptions::default(), |event, lookup| {
            seen.push(event.seq);
            if event.seq == 2 {
                assert_eq!(lookup(1).map(|e| e.agent), Some("master".to_owned()));
            }
        })
        .expect("reopen");
        assert_eq!(log.head().seq, 2);
        assert_eq!(seen, [1, 2]);
        assert_eq!(log.read_event(2).and_then(|e| e.body.cause), Some(1));
        let third = log
            .append("master", Draft::tagged(Tag::Leave))
            .expect("append");
        assert_eq!(third.seq, 3);
        let events = read_log(&path).expect("read");
        assert_eq!(events.len(), 3);
        assert!(events.windows(2).all(|w| w[0].time <= w[1].time));
        let at = log.locate(2).expect("located");
        let tail = read_lines(&at.file, at.start, at.end, 1).expect("lines");
        assert_eq!(
            tail.iter().filter(|&&b| b == b'\n').count(),
            1,
            "at least one whole line"
        );
    }

    #[test]
    fn a_corrupt_middle_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "garbage\n{}\n").expect("write");
        assert!(EventLog::open(&path, LogOptions::default(), |_, _| {}).is_err());
    }

    #[test]
    fn segments_rotate_stay_readable_and_whole_ones_are_removed_with_a_header_saying_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let mut log = open(&path, 500);
        let mut closed = Vec::new();
        for _ in 0..30 {
            log.append("master", Draft::tagged(Tag::Ready))
                .expect("append");
            if let Some(last) = log.rotate_if_full().expect("rotate") {
                closed.push(last);
            }
        }
        assert!(closed.len() >= 3, "{closed:?}");
        let infos = log.segments();
        assert_eq!(infos[0].first, 1);
        assert!(infos.windows(2).all(|w| w[1].first == w[0].last + 1));
        // A reader holding the first segment's handle keeps reading it after removal.
        let held = log.locate(1).expect("seq 1");
        let start = log.remove_before(closed[1] + 1).expect("remove");
        assert_eq!(start, closed[1] + 1);
        assert!(log.locate(1).is_none());
        assert!(!read_lines(&held.file, held.start, held.end, 1000)
            .expect("still readable")
            .is_empty());
        let read = read_log_segments(&path).expect("read");
        assert_eq!(read.start, start);
        assert_eq!(read.events.first().map(|e| e.seq), Some(start));
        assert_eq!(read.events.last().map(|e| e.seq), Some(30));
        assert!(read
            .checkpoint
            .is_some_and(|p| p.ends_with(format!("checkpoints/{:020}.jsonl", start - 1))));
        assert_eq!(peek_start(&path).expect("peek").checkpoint, Some(start - 1));
        drop(log);
        let mut seen = Vec::new();
        let reopened = EventLog::open(&path, LogOptions { segment_bytes: 500 }, |e, _| {
            seen.push(e.seq)
        })
        .expect("reopen");
        assert_eq!(reopened.start(), start);
        assert_eq!(seen.first(), Some(&start));
        assert_eq!(reopened.head().seq, 30);
    }
}
