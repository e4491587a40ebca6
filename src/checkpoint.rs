//! Checkpoints: the state the log implies at one `seq`, written down, so that a reader can
//! start there and read only the events after it, and the log before it can go.
//!
//! The state is what every reader of the log computes: the tree the notifies imply (the
//! master's replay, `filesync check`'s master state, what a slave resyncs to), the
//! manifest of each content stored in chunks, and the bus's rules (agents, the master the
//! log belongs to, open errors). [`Snapshot::observe`] is that computation, event by event;
//! a checkpoint is a snapshot written to `SDIR/checkpoints/<seq>.jsonl`.
//!
//! # Format
//!
//! JSON lines. The first line is the header:
//! `{"checkpoint":{"seq":N,"time":T,"paths":K,"rules":{...}}}`, where `time` is the time of
//! event `N` and `rules` the bus's rules (`rules::RulesSnapshot`). Each of the next `K` lines
//! is one path of the tree as a notify would put it (`tag`, `op`, `path`, `kind`, `mode`,
//! and for a file `size`, `sha256`, `manifest`; for a symlink `target`), in path order, so
//! parents come before their children. A checkpoint is written to a temporary file,
//! fsynced, and renamed into place: it exists whole or not at all.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use filesync_master::hash::ContentHash;
use filesync_master::{Change, Model};
use serde::{Deserialize, Serialize};

use crate::event::{Draft, Event, Tag};
use crate::rules::{Rules, RulesSnapshot};

/// The header line.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    checkpoint: HeaderFields,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HeaderFields {
    seq: u64,
    time: String,
    paths: usize,
    rules: RulesSnapshot,
}

/// The state the log implies after event `seq`.
#[derive(Clone)]
pub struct Snapshot {
    pub seq: u64,
    /// The time of event `seq`.
    pub time: String,
    pub model: Model,
    /// The manifest (hex) of each content stored in chunks, by the content's SHA-256.
    pub manifests: HashMap<ContentHash, String>,
    pub rules: Rules,
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot {
            seq: 0,
            time: String::new(),
            model: Model::new(),
            manifests: HashMap::new(),
            rules: Rules::new(),
        }
    }
}

impl Snapshot {
    /// The state before any event.
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// Takes the next event into account. A notify that does not apply (a log from before
    /// the bus checked them) leaves the tree as it was, as every replay does.
    pub fn observe(&mut self, event: &Event) {
        self.seq = event.seq;
        self.time = event.time.clone();
        if event.tag() == Some(Tag::Notify) {
            if let Ok(change) = event.body.change() {
                if let (Change::Put { entry, .. }, Some(manifest)) = (&change, &event.body.manifest)
                {
                    if let Some(sha256) = entry.sha256 {
                        self.manifests.insert(sha256, manifest.clone());
                    }
                }
                let _ = self.model.apply(&change);
            }
        }
        self.rules.observe(event, |_| None);
    }

    /// The manifest of the file at `sha256`, when it is stored in chunks.
    pub fn manifest_of(&self, sha256: &ContentHash) -> Option<&str> {
        self.manifests.get(sha256).map(String::as_str)
    }

    /// The tree's entries as the notifies that would put them, in path order.
    fn lines(&self) -> impl Iterator<Item = Draft> + '_ {
        self.model.iter().map(|(path, entry)| {
            let mut draft = Draft::notify(&Change::Put {
                path: path.clone(),
                entry: entry.clone(),
            });
            draft.manifest = entry
                .sha256
                .and_then(|sha256| self.manifest_of(&sha256))
                .map(str::to_owned);
            draft
        })
    }

    /// Writes the snapshot as a checkpoint in `dir`, atomically; returns its path.
    pub fn write(&self, dir: &Path) -> io::Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let path = path_in(dir, self.seq);
        let temp = path.with_extension("tmp");
        let mut out = BufWriter::new(File::create(&temp)?);
        let header = Header {
            checkpoint: HeaderFields {
                seq: self.seq,
                time: self.time.clone(),
                paths: self.model.len(),
                rules: self.rules.snapshot(),
            },
        };
        serde_json::to_writer(&mut out, &header)?;
        out.write_all(b"\n")?;
        for draft in self.lines() {
            serde_json::to_writer(&mut out, &draft)?;
            out.write_all(b"\n")?;
        }
        let file = out.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        File::open(dir)?.sync_all()?;
        Ok(path)
    }

    /// Reads a checkpoint back.
    pub fn read(path: &Path) -> io::Result<Snapshot> {
        let label = path.display().to_string();
        Snapshot::read_from(BufReader::new(File::open(path)?), &label)
    }

    /// Parses a checkpoint received whole (from the bus, for a resync).
    pub fn parse(bytes: &[u8]) -> io::Result<Snapshot> {
        Snapshot::read_from(bytes, "checkpoint")
    }

    fn read_from(reader: impl BufRead, label: &str) -> io::Result<Snapshot> {
        let bad =
            |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("{label}: {what}"));
        let mut lines = reader.lines();
        let header: Header = match lines.next() {
            Some(line) => {
                serde_json::from_str(&line?).map_err(|err| bad(format!("header: {err}")))?
            }
            None => return Err(bad("empty".into())),
        };
        let fields = header.checkpoint;
        let mut snapshot = Snapshot {
            seq: fields.seq,
            time: fields.time,
            ..Snapshot::default()
        };
        for (idx, line) in lines.enumerate() {
            let draft: Draft = serde_json::from_str(&line?)
                .map_err(|err| bad(format!("line {}: {err}", idx + 2)))?;
            let change = draft
                .change()
                .map_err(|err| bad(format!("line {}: {err}", idx + 2)))?;
            if let (Change::Put { entry, .. }, Some(manifest)) = (&change, &draft.manifest) {
                if let Some(sha256) = entry.sha256 {
                    snapshot.manifests.insert(sha256, manifest.clone());
                }
            }
            snapshot
                .model
                .apply(&change)
                .map_err(|err| bad(format!("line {}: {err}", idx + 2)))?;
        }
        if snapshot.model.len() != fields.paths {
            return Err(bad(format!(
                "{} paths, the header says {}",
                snapshot.model.len(),
                fields.paths
            )));
        }
        snapshot.rules = Rules::restore(&fields.rules, &snapshot.model, fields.seq);
        Ok(snapshot)
    }
}

/// Where the checkpoint at `seq` lives in `dir`.
pub fn path_in(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.jsonl"))
}

/// The checkpoints in `dir`, by `seq`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse().ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use filesync_master::{Entry, Kind, RelPath};
    use proptest::prelude::*;

    fn names() -> Vec<RelPath> {
        let mut paths = Vec::new();
        for x in ["a", "b"] {
            paths.push(x.to_owned());
            for y in ["a", "b", "c"] {
                paths.push(format!("{x}/{y}"));
                paths.push(format!("{x}/{y}/z"));
            }
        }
        paths
            .iter()
            .map(|p| RelPath::new(p).expect("valid"))
            .collect()
    }

    fn change_strategy() -> impl Strategy<Value = Change> {
        let n = names().len();
        let kind = prop_oneof![Just(Kind::File), Just(Kind::Dir), Just(Kind::Symlink)];
        prop_oneof![
            4 => (0..n, kind.clone(), 0..4u8).prop_map(|(i, kind, v)| Change::Put {
                path: names()[i].clone(),
                entry: match kind {
                    Kind::Dir => Entry::dir(0o700 + u32::from(v)),
                    Kind::File => Entry::file(u64::from(v), ContentHash::of(&[v]), 0o644),
                    Kind::Symlink => Entry::symlink(vec![b't', v]),
                },
            }),
            1 => (0..n, kind.clone()).prop_map(|(i, kind)| Change::Delete {
                path: names()[i].clone(),
                kind,
            }),
            1 => (0..n, 0..n, kind).prop_map(|(i, j, kind)| Change::Move {
                from: names()[i].clone(),
                to: names()[j].clone(),
                kind,
            }),
        ]
    }

    /// A log of notifies (those that apply) with a manifest on some file puts.
    fn log_of(changes: &[Change]) -> Vec<Event> {
        let mut model = Model::new();
        let mut events = Vec::new();
        for change in changes {
            if model.apply(change).is_err() {
                continue;
            }
            let mut body = Draft::notify(change);
            if let Change::Put { entry, .. } = change {
                if entry.kind == Kind::File && entry.size % 2 == 1 {
                    body.manifest = Some(ContentHash::of(b"m").to_hex());
                }
            }
            events.push(Event {
                seq: events.len() as u64 + 1,
                time: format!("2026-11-30T00:00:{:02}.000000Z", events.len() % 60),
                agent: "master".into(),
                body,
            });
        }
        events
    }

    proptest! {
        // Failures are reported, not written into the source tree.
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// For any log, a checkpoint written at any event and read back, then the events
        /// after it, give exactly the state of the whole log replayed.
        #[test]
        fn checkpoint_plus_tail_is_the_whole_replay(changes in prop::collection::vec(change_strategy(), 1..40)) {
            let events = log_of(&changes);
            let mut whole = Snapshot::new();
            for event in &events {
                whole.observe(event);
            }
            let dir = tempfile::tempdir().expect("tempdir");
            for cut in 0..=events.len() {
                let mut head = Snapshot::new();
                for event in &events[..cut] {
                    head.observe(event);
                }
                let written = head.write(dir.path()).expect("write");
                let mut resumed = Snapshot::read(&written).expect("read");
                prop_assert_eq!(resumed.seq, cut as u64);
                for event in &events[cut..] {
                    resumed.observe(event);
                }
                prop_assert_eq!(&resumed.model, &whole.model);
                for (_, entry) in whole.model.iter() {
                    if let Some(sha256) = entry.sha256 {
                        prop_assert_eq!(resumed.manifest_of(&sha256), whole.manifest_of(&sha256));
                    }
                }
            }
        }
    }

    #[test]
    fn a_damaged_checkpoint_is_refused_and_checkpoints_are_listed_by_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut snapshot = Snapshot::new();
        for event in log_of(&[Change::Put {
            path: RelPath::new("d").expect("valid"),
            entry: Entry::dir(0o755),
        }]) {
            snapshot.observe(&event);
        }
        let written = snapshot.write(dir.path()).expect("write");
        let text = fs::read_to_string(&written).expect("read");
        fs::write(&written, text.lines().next().expect("header")).expect("cut");
        assert!(Snapshot::read(&written).is_err(), "a path is missing");
        Snapshot::new().write(dir.path()).expect("write");
        let listed: Vec<u64> = list(dir.path())
            .expect("list")
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(listed, [0, 1]);
    }
}
