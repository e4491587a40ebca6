//! The invariants behind `filesync check`, callable from tests as [`check_log`].
//!
//! 1. `seq` starts at 1 and has no gaps; `time` never goes backwards.
//! 2. Every notify after a slave's `join` gets exactly one consume or error from that slave,
//!    with `cause` pointing at it, and a slave answers notifies in `seq` order; no notify is
//!    answered twice by one slave, whenever it joined. A consume that `repairs` an error
//!    names an open error of that slave for the same notify; it and a `drift` repair are not
//!    answers.
//! 3. A consume agrees with its notify (`op`, paths, `kind`, `sha256`), and its byte counts
//!    add up: `fetched + reused = size`.
//! 4. Replaying the notifies in order from an empty directory gives the master's state;
//!    replaying a slave's consumes (repairs included) gives that slave's state; when nothing
//!    is pending and every error was made good, the two are equal. An error is made good by
//!    a repair naming it or by a later consume of that slave that decides its paths (see
//!    `rules::repairs`); a slave with errors still open at the end has not converged.
//! 5. No path in any event escapes the root.
//!
//! Each invariant has a checker of its own (`seq_time`, `answers`, `agreement`, `replay`,
//! `paths`), all fed in one pass over the log, each event once; `reading` is what they
//! share: what the log has said so far, and each slave answer classified once (an answer
//! to a notify, a resync, a repair, or malformed).
//!
//! Notifies published after a slave's last event that it has not answered yet are reported
//! as *pending*: a violation by default (a log taken at a quiet point has none), allowed with
//! `CheckOptions::allow_pending` for logs cut while agents were still busy or down.

mod agreement;
mod answers;
mod paths;
mod reading;
mod replay;
mod seq_time;

use std::fmt;
use std::io;
use std::path::Path;

use filesync_master::hash::hash_file;
use filesync_master::tree::walk_published;
use filesync_master::{Entry, Kind, Model, RelPath};

use crate::checkpoint::Snapshot;
use crate::event::{Draft, Event};

use answers::AnsweredOnce;
use reading::Reading;
use replay::ReplaysAgree;
use seq_time::SeqAndTime;

/// What to be lenient about.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Do not report notifies a slave has not answered yet.
    pub allow_pending: bool,
}

/// One broken promise, with the events that show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    /// The events involved, by `seq`.
    pub seqs: Vec<u64>,
    pub message: String,
}

/// The promises a log keeps (the module's documentation says each in full), and a
/// directory's agreement with its log (`check --dir`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// A synced directory differs from what the log says it holds.
    Directory,
    /// 1: `seq` gapless from 1, `time` never backwards.
    SeqAndTime,
    /// 2: every notify answered once by each slave, in order.
    AnsweredOnce,
    /// 3: a consume agrees with its notify.
    ConsumeAgrees,
    /// 4: the replays of master and slaves agree.
    ReplaysAgree,
    /// 5: no path escapes the root.
    InsideRoot,
}

impl Invariant {
    /// Its number in SPEC and the module's documentation (0 for `Directory`, which is not
    /// one of the five).
    pub fn number(self) -> u8 {
        match self {
            Invariant::Directory => 0,
            Invariant::SeqAndTime => 1,
            Invariant::AnsweredOnce => 2,
            Invariant::ConsumeAgrees => 3,
            Invariant::ReplaysAgree => 4,
            Invariant::InsideRoot => 5,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Invariant::Directory => "directory matches the log",
            Invariant::SeqAndTime => "seq and time",
            Invariant::AnsweredOnce => "every notify answered once, in order",
            Invariant::ConsumeAgrees => "consume agrees with notify",
            Invariant::ReplaysAgree => "replays agree",
            Invariant::InsideRoot => "paths stay inside the root",
        }
    }
}

impl Violation {
    pub fn new(invariant: Invariant, seqs: Vec<u64>, message: String) -> Violation {
        Violation {
            invariant,
            seqs,
            message,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let title = self.invariant.title();
        match self.invariant {
            Invariant::Directory => write!(f, "[{title}] {}", self.message),
            numbered => write!(
                f,
                "[invariant {} {title}] {}",
                numbered.number(),
                self.message
            ),
        }
    }
}

/// The verdict on one log.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub n_events: usize,
    pub n_notifies: usize,
    pub slaves: Vec<String>,
    pub violations: Vec<Violation>,
    /// The state the master's notifies imply.
    pub master_state: Model,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} events, {} notifies, slaves: {}",
            self.n_events,
            self.n_notifies,
            if self.slaves.is_empty() {
                "none".to_owned()
            } else {
                self.slaves.join(", ")
            }
        )?;
        if self.violations.is_empty() {
            return writeln!(f, "OK: all invariants hold");
        }
        writeln!(f, "FAILED: {} violation(s)", self.violations.len())?;
        for violation in &self.violations {
            writeln!(f, "  {violation}")?;
        }
        Ok(())
    }
}

/// A bus's event log as `check` reads it: every segment, and the checkpoint a truncated
/// log goes on from.
pub struct LogFile {
    pub base: Option<Snapshot>,
    pub events: Vec<Event>,
}

impl LogFile {
    /// Reads the log whose newest segment is `path` (a bus's `events.jsonl`, or a log saved
    /// anywhere); a truncated one's checkpoint is read from `checkpoints/` beside it.
    pub fn read(path: &Path) -> io::Result<LogFile> {
        let read = crate::bus::log::read_log_segments(path)?;
        let base = match (&read.checkpoint, read.start) {
            (Some(checkpoint), _) => Some(Snapshot::read(checkpoint)?),
            (None, 1) => None,
            (None, start) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} starts at #{start} and names no checkpoint for what came before",
                        path.display()
                    ),
                ))
            }
        };
        Ok(LogFile {
            base,
            events: read.events,
        })
    }

    pub fn check(&self, options: CheckOptions) -> Report {
        check_log_from(self.base.as_ref(), &self.events, options)
    }
}

/// Checks every invariant over a whole log.
pub fn check_log(events: &[Event], options: CheckOptions) -> Report {
    check_log_from(None, events, options)
}

/// Checks every invariant over a log that retention truncated: `base` is the checkpoint
/// covering what was removed (the log must go on from the `seq` after it). The master's
/// state starts as the checkpoint's; so does each slave's that the checkpoint knows, with
/// what it answered and its open errors; a slave behind the cut resyncs (`resync`).
pub fn check_log_from(base: Option<&Snapshot>, events: &[Event], options: CheckOptions) -> Report {
    let mut reading = Reading::new(base);
    let mut seq_and_time = SeqAndTime::new(reading.base);
    let mut answered_once = AnsweredOnce::new(base, options);
    let mut replays = ReplaysAgree::new(base);
    let mut violations = Vec::new();
    for (idx, event) in events.iter().enumerate() {
        let step = reading.step(idx, event);
        let out = &mut violations;
        seq_and_time.event(&step, out);
        paths::inside_root(&step, out);
        answered_once.event(&step, &reading, out);
        agreement::consume_agrees(&step, out);
        replays.event(&step, &reading, out);
        reading.absorb(&step);
    }
    answered_once.finish(&reading, &mut violations);
    replays.finish(&reading, &answered_once, &mut violations);
    Report {
        n_events: events.len(),
        n_notifies: reading.notifies.len(),
        slaves: reading.slaves.keys().cloned().collect(),
        violations,
        master_state: replays.master,
    }
}

/// Up to ten errors, each with what it was about and what went wrong.
fn list_errors(seqs: &[u64], reading: &Reading<'_>) -> String {
    let listed: Vec<String> = seqs
        .iter()
        .take(10)
        .map(|seq| {
            let error = reading.by_seq.get(seq).map(|event| &event.body);
            format!(
                "#{seq} ({}: {})",
                error.map(Draft::what).unwrap_or_default(),
                error.and_then(|b| b.error.as_deref()).unwrap_or("?")
            )
        })
        .collect();
    listed.join(", ")
}

fn list(seqs: &[u64]) -> String {
    let shown: Vec<String> = seqs.iter().take(10).map(|s| format!("#{s}")).collect();
    let more = if seqs.len() > 10 {
        format!(" and {} more", seqs.len() - 10)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

fn model_diff(expected: &Model, actual: &Model) -> String {
    let mut differences = Vec::new();
    for (path, entry) in expected.iter() {
        match actual.get(path) {
            None => differences.push(format!("{path} missing")),
            Some(other) if other != entry => differences.push(format!(
                "{path} differs ({} vs {})",
                summary(entry),
                summary(other)
            )),
            Some(_) => {}
        }
    }
    for (path, _) in actual.iter() {
        if expected.get(path).is_none() {
            differences.push(format!("{path} unexpected"));
        }
    }
    let n = differences.len();
    differences.truncate(10);
    let mut text = differences.join("; ");
    if n > 10 {
        text.push_str(&format!("; and {} more", n - 10));
    }
    text
}

fn summary(entry: &Entry) -> String {
    match entry.kind {
        Kind::File => format!(
            "file {} bytes sha256 {}… mode {:o}",
            entry.size,
            entry
                .sha256
                .map(|sha256| sha256.to_hex()[..12].to_owned())
                .unwrap_or_else(|| "?".into()),
            entry.mode
        ),
        Kind::Dir => format!("dir mode {:o}", entry.mode),
        Kind::Symlink => format!(
            "symlink -> {}",
            String::from_utf8_lossy(entry.target.as_deref().unwrap_or_default())
        ),
    }
}

/// Reads a directory into a `Model`, as the master would publish it (the agents' temp files
/// excluded, `.filesyncignore` rules applied).
pub fn model_of_dir(root: &Path) -> io::Result<Model> {
    model_of_dir_excluding(root, &[])
}

/// `model_of_dir` for a master started with `--exclude` patterns.
pub fn model_of_dir_excluding(root: &Path, excludes: &[String]) -> io::Result<Model> {
    let ignore = filesync_master::ignore::IgnoreRules::load_with(root, excludes);
    let mut model = Model::new();
    for item in walk_published(root, root, &ignore) {
        let item = item.map_err(io::Error::other)?;
        let rel = RelPath::from_full(root, item.path()).map_err(io::Error::other)?;
        let meta = item.path().symlink_metadata()?;
        let content = || {
            hash_file(item.path())
                .map(|hashed| hashed.sha256)
                .map_err(io::Error::other)
        };
        if let Some(entry) = Entry::on_disk(item.path(), &meta, content)? {
            model.put(rel, entry);
        }
    }
    Ok(model)
}

/// Compares a directory with the state the log implies; a violation per difference group.
pub fn check_dir(report: &Report, dir: &Path) -> io::Result<Option<Violation>> {
    check_dir_excluding(report, dir, &[])
}

/// `check_dir` for a directory mirrored by a master started with `--exclude` patterns.
pub fn check_dir_excluding(
    report: &Report,
    dir: &Path,
    excludes: &[String],
) -> io::Result<Option<Violation>> {
    let on_disk = model_of_dir_excluding(dir, excludes)?;
    if on_disk == report.master_state {
        return Ok(None);
    }
    Ok(Some(Violation {
        invariant: Invariant::Directory,
        seqs: Vec::new(),
        message: format!(
            "{} differs from the log's state: {}",
            dir.display(),
            model_diff(&report.master_state, &on_disk)
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::log::read_log;
    use crate::event::Tag;

    fn golden(name: &str) -> Report {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/logs")
            .join(name);
        let events = read_log(&path).unwrap_or_else(|err| panic!("{name}: {err}"));
        check_log(&events, CheckOptions::default())
    }

    fn invariants(report: &Report) -> Vec<u8> {
        let mut found: Vec<u8> = report
            .violations
            .iter()
            .map(|v| v.invariant.number())
            .collect();
        found.dedup();
        found
    }

    #[test]
    fn a_real_session_checks_out() {
        let report = golden("valid.jsonl");
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.n_notifies, 9);
        assert_eq!(report.slaves, ["slave"]);
        // The replay of a real session includes a non-UTF-8 name and a moved directory.
        assert!(report
            .master_state
            .iter()
            .any(|(p, _)| p.as_str().is_none()));
        assert!(report
            .master_state
            .get(&RelPath::new("manual/guide/intro.md").expect("valid"))
            .is_some());
    }

    #[test]
    fn each_broken_log_names_the_invariant_it_breaks() {
        for (name, expected) in [
            ("broken-gap.jsonl", vec![1, 2]),
            ("broken-time.jsonl", vec![1]),
            ("broken-double-consume.jsonl", vec![2]),
            ("broken-mismatch.jsonl", vec![3]),
            ("broken-replay.jsonl", vec![4]),
            ("broken-escape.jsonl", vec![5, 4, 5]),
            ("broken-double-before-join.jsonl", vec![2]),
            ("broken-unrepaired.jsonl", vec![4]),
        ] {
            let report = golden(name);
            assert_eq!(invariants(&report), expected, "{name}:\n{report}");
        }
        let unanswered = golden("broken-unanswered.jsonl");
        assert!(
            unanswered
                .violations
                .iter()
                .any(|v| v.invariant == Invariant::AnsweredOnce
                    && v.message.contains("never answered")),
            "{unanswered}"
        );
    }

    #[test]
    fn an_error_repaired_by_a_retry_checks_out_and_an_open_one_does_not() {
        let repaired = golden("valid-repaired.jsonl");
        assert!(repaired.is_ok(), "{repaired}");
        let open = golden("broken-unrepaired.jsonl");
        assert!(
            open.violations.iter().any(|v| v
                .message
                .contains("slave has not converged: 1 error(s) not repaired: #6")),
            "{open}"
        );
        // A repair that names nothing open is a violation of its own.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/logs/valid-repaired.jsonl");
        let mut events = read_log(&path).expect("read");
        events[6].body.repairs = Some(5);
        let report = check_log(&events, CheckOptions::default());
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.invariant == Invariant::AnsweredOnce && v.message.contains("repairs #5")),
            "{report}"
        );
    }

    #[test]
    fn pending_answers_are_reported_unless_allowed() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/logs/valid.jsonl");
        let mut events = read_log(&path).expect("read");
        // Cut the log just after the last notify, before the slave answered it.
        let last_notify = events
            .iter()
            .rposition(|e| e.tag() == Some(Tag::Notify))
            .expect("a notify");
        events.truncate(last_notify + 1);
        let strict = check_log(&events, CheckOptions::default());
        assert!(
            strict
                .violations
                .iter()
                .any(|v| v.message.contains("has not answered")),
            "{strict}"
        );
        let lenient = check_log(
            &events,
            CheckOptions {
                allow_pending: true,
            },
        );
        assert!(lenient.is_ok(), "{lenient}");
    }

    #[test]
    fn a_truncated_log_is_checked_from_its_checkpoint() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/logs/valid.jsonl");
        let events = read_log(&path).expect("read");
        let whole = check_log(&events, CheckOptions::default());
        assert!(whole.is_ok(), "{whole}");
        // Cut after every event in turn: the checkpoint there and the rest check out, and
        // give the same master state as the whole log.
        for cut in 1..events.len() {
            let base = checkpoint_of(&events[..cut]);
            let tail = check_log_from(Some(&base), &events[cut..], CheckOptions::default());
            assert!(tail.is_ok(), "cut after #{}:\n{tail}", events[cut - 1].seq);
            assert_eq!(tail.master_state, whole.master_state);
        }
        // A resync must name a checkpoint the log was cut at.
        let cut = events.len() / 2;
        let base = checkpoint_of(&events[..cut]);
        let tail = with_resync(&events[cut..], base.seq + 1);
        let report = check_log_from(Some(&base), &tail, CheckOptions::default());
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.message.contains("resyncs from")),
            "{report}"
        );
    }

    /// A slave that resyncs from the checkpoint after it answered some of this log's
    /// notifies keeps what those answers did (it will not answer them again): its replay
    /// does too, and agrees with the master's.
    #[test]
    fn a_resync_keeps_what_the_slave_answered_in_this_log() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/logs/valid.jsonl");
        let events = read_log(&path).expect("read");
        // Cut before the first notify: every answer is in the tail.
        let cut = events
            .iter()
            .position(|e| e.tag() == Some(Tag::Notify))
            .expect("a notify");
        let base = checkpoint_of(&events[..cut]);
        let tail = with_resync(&events[cut..], base.seq);
        let report = check_log_from(Some(&base), &tail, CheckOptions::default());
        assert!(report.is_ok(), "{report}");
    }

    /// The checkpoint a bus would have written after `events`.
    fn checkpoint_of(events: &[Event]) -> Snapshot {
        let mut base = Snapshot::new();
        for event in events {
            base.observe(event);
        }
        base
    }

    /// `tail`, and after it slave `slave`'s `ready` ending a resync from `checkpoint`.
    fn with_resync(tail: &[Event], checkpoint: u64) -> Vec<Event> {
        let mut tail = tail.to_vec();
        let mut ready = tail[tail.len() - 1].clone();
        ready.seq += 1;
        ready.agent = "slave".into();
        ready.body = Draft::tagged(Tag::Ready);
        ready.body.resync = Some(checkpoint);
        tail.push(ready);
        tail
    }
}
