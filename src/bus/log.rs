//! `EventLog`: the append-only `events.jsonl`, its recovery at start, and reads by `seq`.
//!
//! The bus is the only writer, so the log has one total order. Each event is written as one
//! complete line with a single `write` before anyone is told it exists; readers (pollers)
//! read the file itself, up to the end offset published with the head, so they never see a
//! partial line. A line survives the bus being killed (the kernel has it); surviving power
//! loss would need an fsync per event, which we do not pay (see ARCHITECTURE.md).
//!
//! At start the log is read once to rebuild the `seq` index, and every event is handed to
//! the caller (the bus rebuilds its rules' state from them). A last line torn by a crash
//! (no newline, or not JSON) is an expected condition: it is cut off with a warning. A bad
//! line anywhere else means the file is not ours to fix, and opening fails.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::event::{Draft, Event};

/// The log's end: its last `seq` and the byte offset just past its last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    pub seq: u64,
    pub end: u64,
}

/// Reads back an earlier event of the log by `seq` (while the log is being opened).
pub type Lookup<'a> = &'a dyn Fn(u64) -> Option<Event>;

/// The open event log.
pub struct EventLog {
    path: PathBuf,
    file: File,
    /// Byte offset of each line: `offsets[seq - 1]`.
    offsets: Vec<u64>,
    end: u64,
    last_time: SystemTime,
}

impl EventLog {
    /// Opens (creating if needed) the log at `path`, recovering from a torn last line, and
    /// hands each event to `visit` in order, with a way to read back earlier ones.
    pub fn open(path: &Path, mut visit: impl FnMut(&Event, Lookup<'_>)) -> io::Result<EventLog> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut offsets: Vec<u64> = Vec::new();
        let mut last_time = SystemTime::UNIX_EPOCH;
        let mut end: u64 = 0;
        let file_len = file.metadata()?.len();
        {
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
                let parsed = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|text| Event::parse(text.trim_end()).ok());
                let Some(event) = parsed.filter(|_| complete) else {
                    if end + n as u64 == file_len {
                        tracing::warn!(
                            "{}: cutting off a torn last line (a crash while appending)",
                            path.display()
                        );
                        break;
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: line {} is not an event",
                            path.display(),
                            offsets.len() + 1
                        ),
                    ));
                };
                if event.seq != offsets.len() as u64 + 1 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: expected seq {} but found {}",
                            path.display(),
                            offsets.len() + 1,
                            event.seq
                        ),
                    ));
                }
                let lookup = |seq: u64| read_event_at(path, &offsets, end, seq);
                visit(&event, &lookup);
                if let Ok(time) = humantime::parse_rfc3339(&event.time) {
                    last_time = last_time.max(time);
                }
                offsets.push(end);
                end += n as u64;
            }
        }
        if end != file_len {
            file.set_len(end)?;
        }
        Ok(EventLog {
            path: path.to_path_buf(),
            file,
            offsets,
            end,
            last_time,
        })
    }

    /// Reads back the event with `seq`, if the log has it.
    pub fn read_event(&self, seq: u64) -> Option<Event> {
        read_event_at(&self.path, &self.offsets, self.end, seq)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn head(&self) -> Head {
        Head {
            seq: self.offsets.len() as u64,
            end: self.end,
        }
    }

    /// Byte offset where `seq` starts (`end` for the next one to come).
    pub fn offset_of(&self, seq: u64) -> u64 {
        match seq.checked_sub(1) {
            Some(idx) => self.offsets.get(idx as usize).copied().unwrap_or(self.end),
            None => 0,
        }
    }

    /// Assigns `seq` and `time`, and appends the line. The event exists once this returns.
    pub fn append(&mut self, agent: &str, body: Draft) -> io::Result<Event> {
        // `time` never goes backwards, even if the wall clock does.
        let now = SystemTime::now().max(self.last_time);
        self.last_time = now;
        let event = Event {
            seq: self.offsets.len() as u64 + 1,
            time: humantime::format_rfc3339_micros(now).to_string(),
            agent: agent.to_owned(),
            body,
        };
        let mut line = event.to_line().into_bytes();
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.offsets.push(self.end);
        self.end += line.len() as u64;
        Ok(event)
    }
}

/// The event with `seq` of the log at `path`, given its line offsets and end.
fn read_event_at(path: &Path, offsets: &[u64], end: u64, seq: u64) -> Option<Event> {
    let idx = usize::try_from(seq.checked_sub(1)?).ok()?;
    let start = *offsets.get(idx)?;
    let stop = offsets.get(idx + 1).copied().unwrap_or(end);
    let line = read_lines(path, start, stop, stop - start).ok()?;
    Event::parse(std::str::from_utf8(&line).ok()?.trim_end()).ok()
}

/// Reads whole lines from `path` between byte offsets `start` and `end`, at most about
/// `max_bytes` of them (but always at least one line).
pub fn read_lines(path: &Path, start: u64, end: u64, max_bytes: u64) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let want = (end - start).min(max_bytes.max(1));
    let mut buf = vec![0u8; want as usize];
    file.read_exact(&mut buf)?;
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(last) => {
            buf.truncate(last + 1);
            Ok(buf)
        }
        None => {
            // One line longer than max_bytes: read on to its end.
            let mut reader = BufReader::new(file);
            reader.read_until(b'\n', &mut buf)?;
            Ok(buf)
        }
    }
}

/// Reads a whole log file into events (for `check` and tests), with line numbers in errors.
pub fn read_log(path: &Path) -> io::Result<Vec<Event>> {
    let reader = BufReader::new(File::open(path)?);
    let mut events = Vec::new();
    for (idx, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event = Event::parse(&line).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} line {}: {err}", path.display(), idx + 1),
            )
        })?;
        events.push(event);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Tag;

    #[test]
    fn appends_recover_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        {
            let mut log = EventLog::open(&path, |_, _| {}).expect("open");
            log.append("master", Draft::tagged(Tag::Ready))
                .expect("append");
            let mut consume = Draft::tagged(Tag::Consume);
            consume.cause = Some(1);
            log.append("slave", consume).expect("append");
        }
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(br#"{"seq":3,"time":"#).expect("torn write");
        let mut seen = Vec::new();
        let mut log = EventLog::open(&path, |event, lookup| {
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
        let tail = read_lines(&path, log.offset_of(2), log.head().end, 1).expect("lines");
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
        assert!(EventLog::open(&path, |_, _| {}).is_err());
    }
}
