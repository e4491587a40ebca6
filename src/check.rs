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
//! Notifies published after a slave's last event that it has not answered yet are reported
//! as *pending*: a violation by default (a log taken at a quiet point has none), allowed with
//! `CheckOptions::allow_pending` for logs cut while agents were still busy or down.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::Path;

use filesync_master::hash::hash_file;
use filesync_master::tree::walk_published;
use filesync_master::{Entry, Kind, Model, RelPath};

use crate::checkpoint::Snapshot;
use crate::event::{Draft, Event, Role, Tag};
use crate::rules::OpenErrors;

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

/// Per slave: what it owes and what it did.
#[derive(Default)]
struct SlaveTrack {
    joined_at: u64,
    /// Notify seq -> the seqs of answers from this slave.
    answers: BTreeMap<u64, Vec<u64>>,
    last_cause: u64,
    state: Model,
    /// Paths an error left in an unknown state on this slave.
    errored: Vec<RelPath>,
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
    let mut checker = Checker::new(base, options);
    for (idx, event) in events.iter().enumerate() {
        checker.event(idx, event);
    }
    checker.finish(events.len())
}

/// The state of a check, event by event.
struct Checker<'a> {
    options: CheckOptions,
    report: Report,
    violations: Vec<Violation>,
    by_seq: HashMap<u64, &'a Event>,
    notifies: Vec<&'a Event>,
    slaves: BTreeMap<String, SlaveTrack>,
    open_errors: OpenErrors,
    last_time: Option<std::time::SystemTime>,
    last_seq: u64,
    /// The `seq` of the checkpoint the log goes on from (0: none, the log is whole) ...
    base: u64,
    /// ... and its state.
    base_model: Model,
}

impl<'a> Checker<'a> {
    fn new(base: Option<&Snapshot>, options: CheckOptions) -> Checker<'a> {
        let mut checker = Checker {
            options,
            report: Report::default(),
            violations: Vec::new(),
            by_seq: HashMap::new(),
            notifies: Vec::new(),
            slaves: BTreeMap::new(),
            open_errors: OpenErrors::default(),
            last_time: None,
            last_seq: 0,
            base: 0,
            base_model: Model::new(),
        };
        if let Some(base) = base {
            checker.base = base.seq;
            checker.base_model = base.model.clone();
            checker.last_seq = base.seq;
            checker.report.master_state = base.model.clone();
            checker.open_errors = base.rules.open_errors().clone();
            for (name, agent) in base.rules.agents() {
                if agent.role != Some(Role::Slave) {
                    continue;
                }
                let errored = checker
                    .open_errors
                    .of(name)
                    .filter_map(|e| e.change.as_ref())
                    .flat_map(|change| change.paths().into_iter().cloned())
                    .collect();
                let track = SlaveTrack {
                    joined_at: base.seq,
                    last_cause: agent.answered,
                    state: base.model.clone(),
                    errored,
                    ..SlaveTrack::default()
                };
                checker.slaves.insert(name.clone(), track);
            }
        }
        checker
    }

    fn violation(&mut self, invariant: Invariant, seqs: Vec<u64>, message: String) {
        self.violations.push(Violation {
            invariant,
            seqs,
            message,
        });
    }

    fn event(&mut self, idx: usize, event: &'a Event) {
        self.seq_and_time(idx, event);
        self.by_seq.insert(event.seq, event);
        // 5: paths.
        if let Err(err) = event.body.check_paths() {
            self.violation(
                Invariant::InsideRoot,
                vec![event.seq],
                format!("#{} {err}", event.seq),
            );
        }
        match event.tag() {
            Some(Tag::Join) if event.body.role == Some(Role::Slave) => {
                self.slaves
                    .entry(event.agent.clone())
                    .or_insert_with(|| SlaveTrack {
                        joined_at: event.seq,
                        ..SlaveTrack::default()
                    });
            }
            Some(Tag::Notify) => self.notify(event),
            Some(Tag::Ready) if event.body.resync.is_some() => self.resynced(event),
            Some(tag @ (Tag::Consume | Tag::Error)) => self.answer(tag, event),
            _ => {}
        }
    }

    /// 1: seq and time. A gap is reported once, where it happens.
    fn seq_and_time(&mut self, idx: usize, event: &Event) {
        if event.seq != self.last_seq + 1 {
            let message = format!(
                "line {} has seq {} after seq {} (expected {})",
                idx + 1,
                event.seq,
                self.last_seq,
                self.last_seq + 1
            );
            self.violation(Invariant::SeqAndTime, vec![event.seq], message);
        }
        self.last_seq = event.seq;
        match humantime::parse_rfc3339(&event.time) {
            Ok(time) => {
                if self.last_time.is_some_and(|last| time < last) {
                    let message = format!("#{} time {} goes backwards", event.seq, event.time);
                    self.violation(Invariant::SeqAndTime, vec![event.seq], message);
                }
                self.last_time = Some(time);
            }
            Err(err) => {
                let message = format!(
                    "#{} time {:?} is not RFC 3339: {err}",
                    event.seq, event.time
                );
                self.violation(Invariant::SeqAndTime, vec![event.seq], message);
            }
        }
    }

    fn notify(&mut self, event: &'a Event) {
        self.notifies.push(event);
        match event.body.change() {
            Ok(change) => {
                self.open_errors.notify(&change);
                if let Err(err) = self.report.master_state.apply(&change) {
                    let message = format!(
                        "#{} notify {change} does not apply to the master's state: {err}",
                        event.seq
                    );
                    self.violation(Invariant::ReplaysAgree, vec![event.seq], message);
                }
            }
            Err(err) => {
                let message = format!("#{} notify is not a valid change: {err}", event.seq);
                self.violation(Invariant::ReplaysAgree, vec![event.seq], message);
            }
        }
    }

    /// A slave's resync, which ends with a `ready` naming the checkpoint: it now holds the
    /// checkpoint's state and goes on from the notify after it.
    fn resynced(&mut self, event: &Event) {
        if let Some(violation) = resync_violation(event, self.base) {
            self.violations.push(violation);
        }
        let Some(track) = self.slaves.get_mut(&event.agent) else {
            return;
        };
        let checkpoint = event.body.resync.unwrap_or(0);
        track.last_cause = track.last_cause.max(checkpoint);
        resync_state(track, &self.base_model);
    }

    /// 2 and 3 for a slave's consume or error: who sent it, what it answers, then as a
    /// resync, a repair, or the answer to a notify.
    fn answer(&mut self, tag: Tag, event: &'a Event) {
        if !self.slaves.contains_key(&event.agent) {
            let message = format!(
                "#{} {tag} from {}, which never joined as a slave",
                event.seq, event.agent
            );
            return self.violation(Invariant::AnsweredOnce, vec![event.seq], message);
        }
        let Some(cause) = event.body.cause else {
            let message = format!("#{} {tag} has no cause", event.seq);
            return self.violation(Invariant::AnsweredOnce, vec![event.seq], message);
        };
        if event.body.resync.is_some() {
            return self.resync_answer(tag, event, cause);
        }
        // An answer to a notify retention removed: its effect is in the checkpoint's state.
        let notify = match self
            .by_seq
            .get(&cause)
            .filter(|n| n.tag() == Some(Tag::Notify))
        {
            Some(notify) => Some(*notify),
            None if cause <= self.base => None,
            None => {
                let message = format!(
                    "#{} {tag} names cause #{cause}, which is not an earlier notify",
                    event.seq
                );
                return self.violation(Invariant::AnsweredOnce, vec![event.seq, cause], message);
            }
        };
        if let Some(violation) = repair_violation(event, &self.open_errors) {
            self.violations.push(violation);
        }
        if event.body.repairs.is_some() || event.body.drift.is_some() {
            self.repair(tag, event);
        } else {
            self.answer_notify(tag, event, cause, notify);
        }
    }

    /// A slave's consume or error while it resyncs from the checkpoint.
    fn resync_answer(&mut self, tag: Tag, event: &'a Event, cause: u64) {
        if let Some(violation) = resync_violation(event, self.base) {
            self.violations.push(violation);
        }
        let Some(track) = self.slaves.get_mut(&event.agent) else {
            return;
        };
        resync_state(track, &self.base_model);
        if tag == Tag::Error {
            let change = event.body.change().ok();
            if let Some(change) = &change {
                track.errored.extend(change.paths().into_iter().cloned());
            }
            self.open_errors
                .error(&event.agent, event.seq, cause, change);
        }
    }

    /// A repair (of an error, or of drift): it did apply, so it is replayed; a drift repair
    /// may undo what the replay never saw (a file made behind the slave's back), so it is
    /// replayed leniently.
    fn repair(&mut self, tag: Tag, event: &'a Event) {
        let Some(track) = self.slaves.get_mut(&event.agent) else {
            return;
        };
        if tag != Tag::Consume {
            return;
        }
        if event.body.drift.is_some() {
            if let Ok(change) = event.body.change() {
                let _ = track.state.apply(&change);
            }
        } else {
            replay_consume(event, track, &mut self.violations);
        }
        let change = event.body.change().ok();
        self.open_errors
            .consume(&event.agent, event.body.repairs, change.as_ref());
    }

    /// A slave's answer to notify `cause` (`None`: one retention removed): in order, and,
    /// for a consume, agreeing with the notify (3).
    fn answer_notify(&mut self, tag: Tag, event: &'a Event, cause: u64, notify: Option<&'a Event>) {
        let Some(track) = self.slaves.get_mut(&event.agent) else {
            return;
        };
        if cause <= track.last_cause && !track.answers.contains_key(&cause) {
            let message = format!(
                "#{} {} answered #{cause} after already answering #{}: out of order",
                event.seq, event.agent, track.last_cause
            );
            self.violations.push(Violation {
                invariant: Invariant::AnsweredOnce,
                seqs: vec![event.seq, cause],
                message,
            });
        }
        track.last_cause = track.last_cause.max(cause);
        track.answers.entry(cause).or_default().push(event.seq);
        if tag == Tag::Error {
            let change = match notify {
                Some(notify) => notify.body.change().ok(),
                None => event.body.change().ok(),
            };
            if let Some(change) = &change {
                track.errored.extend(change.paths().into_iter().cloned());
            }
            self.open_errors
                .error(&event.agent, event.seq, cause, change);
            return;
        }
        if let Some(message) = notify.and_then(|n| disagreement(&n.body, &event.body)) {
            self.violations.push(Violation {
                invariant: Invariant::ConsumeAgrees,
                seqs: vec![cause, event.seq],
                message: format!(
                    "#{} consume by {} of #{cause}: {message}",
                    event.seq, event.agent
                ),
            });
            // Still replayed: the slave's state is what it did.
        }
        if notify.is_some() {
            replay_consume(event, track, &mut self.violations);
        }
        self.open_errors
            .consume(&event.agent, None, event.body.change().ok().as_ref());
    }

    fn finish(mut self, n_events: usize) -> Report {
        self.report.n_events = n_events;
        self.report.n_notifies = self.notifies.len();
        let slaves = std::mem::take(&mut self.slaves);
        for (name, track) in &slaves {
            self.answered_once(name, track);
            self.converged(name, track);
        }
        self.report.slaves = slaves.keys().cloned().collect();
        self.report.violations = self.violations;
        self.report
    }

    /// 2: exactly one answer to every notify after the join, and never two to any.
    fn answered_once(&mut self, name: &str, track: &SlaveTrack) {
        let mut pending = Vec::new();
        for notify in &self.notifies {
            let expected = notify.seq > track.joined_at;
            let answers = track.answers.get(&notify.seq);
            match answers.map(Vec::len).unwrap_or(0) {
                0 if expected => pending.push(notify.seq),
                0 | 1 => {}
                n => self.violations.push(Violation {
                    invariant: Invariant::AnsweredOnce,
                    seqs: std::iter::once(notify.seq)
                        .chain(answers.into_iter().flatten().copied())
                        .collect(),
                    message: format!(
                        "notify #{} ({}) answered {n} times by {name}: {}",
                        notify.seq,
                        notify.body.what(),
                        list(answers.map(Vec::as_slice).unwrap_or_default())
                    ),
                }),
            }
        }
        // A notify that comes before the slave's last answer and was skipped is never
        // "pending": the slave moved past it.
        let (skipped, waiting): (Vec<u64>, Vec<u64>) =
            pending.into_iter().partition(|seq| *seq < track.last_cause);
        for seq in skipped {
            let what = self.by_seq.get(&seq).map(|e| e.body.what());
            let message = format!(
                "notify #{seq} ({}) was never answered by {name}",
                what.unwrap_or_default()
            );
            self.violation(Invariant::AnsweredOnce, vec![seq], message);
        }
        if !waiting.is_empty() && !self.options.allow_pending {
            let message = format!(
                "{name} has not answered {} notify(s) at the end of the log: {}",
                waiting.len(),
                list(&waiting)
            );
            self.violation(Invariant::AnsweredOnce, waiting, message);
        }
    }

    /// 4: a slave with errors still open has not converged; one that answered every notify
    /// and made good every error holds the master's state.
    fn converged(&mut self, name: &str, track: &SlaveTrack) {
        let open: Vec<u64> = self.open_errors.of(name).map(|e| e.seq).collect();
        if !open.is_empty() {
            let listed: Vec<String> = open
                .iter()
                .take(10)
                .map(|seq| {
                    let error = self.by_seq.get(seq).map(|event| &event.body);
                    format!(
                        "#{seq} ({}: {})",
                        error.map(Draft::what).unwrap_or_default(),
                        error.and_then(|b| b.error.as_deref()).unwrap_or("?")
                    )
                })
                .collect();
            let message = format!(
                "{name} has not converged: {} error(s) not repaired: {}",
                open.len(),
                listed.join(", ")
            );
            self.violation(Invariant::ReplaysAgree, open, message);
            return;
        }
        let answered_all = self
            .notifies
            .iter()
            .all(|n| track.answers.contains_key(&n.seq));
        if answered_all && track.state != self.report.master_state {
            let message = format!(
                "{name}'s replayed state differs from the master's: {}",
                model_diff(&self.report.master_state, &track.state)
            );
            self.violation(Invariant::ReplaysAgree, Vec::new(), message);
        }
    }
}

/// A resync brings a slave to the state of a checkpoint the log was cut at: at most the
/// one this log goes on from (an older one when the log was cut again since). The
/// checker knows only that one's state: a slave that resyncs holds it once it has answered
/// up to it (answers to the removed notifies have their effect in it), so that is its
/// state from the resync on.
fn resync_state(track: &mut SlaveTrack, base_model: &Model) {
    track.state = base_model.clone();
}

/// A resync names a checkpoint the log was cut at (its `cause` too, for an answer).
fn resync_violation(event: &Event, base: u64) -> Option<Violation> {
    let checkpoint = event.body.resync?;
    let fits = checkpoint <= base
        && checkpoint > 0
        && (event.tag() == Some(Tag::Ready) || event.body.cause == Some(checkpoint));
    (!fits).then(|| Violation {
        invariant: Invariant::AnsweredOnce,
        seqs: vec![event.seq],
        message: format!(
            "#{} resyncs from #{checkpoint}, but the log was not cut there (it goes on from the checkpoint at #{base})",
            event.seq
        ),
    })
}

/// Replays a consume into its slave's state. After an error the slave's state at that path
/// is unknown: a later change there that does not fit the replay is not its fault.
fn replay_consume(event: &Event, track: &mut SlaveTrack, violations: &mut Vec<Violation>) {
    let Ok(change) = event.body.change() else {
        return;
    };
    let after_error = change.paths().iter().any(|p| {
        track
            .errored
            .iter()
            .any(|e| p.starts_with(e) || e.starts_with(p))
    });
    if let Err(err) = track.state.apply(&change) {
        if !after_error {
            violations.push(Violation {
                invariant: Invariant::ReplaysAgree,
                seqs: vec![event.seq],
                message: format!(
                    "#{} consume {change} does not apply to {}'s state: {err}",
                    event.seq, event.agent
                ),
            });
        }
    }
}

/// A consume that `repairs` must name an open error of its own slave, for the same notify.
fn repair_violation(event: &Event, open_errors: &OpenErrors) -> Option<Violation> {
    let repaired = event.body.repairs?;
    let fits = open_errors
        .get(&event.agent, repaired)
        .is_some_and(|open| Some(open.cause) == event.body.cause);
    (!fits).then(|| Violation {
        invariant: Invariant::AnsweredOnce,
        seqs: vec![event.seq, repaired],
        message: format!(
            "#{} repairs #{repaired}, which is not an open error of {} answering #{}",
            event.seq,
            event.agent,
            event.body.cause.unwrap_or(0)
        ),
    })
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

/// Invariant 3 for one pair.
fn disagreement(notify: &Draft, consume: &Draft) -> Option<String> {
    let fields = [
        (
            "op",
            notify.op.map(|o| o.to_string()),
            consume.op.map(|o| o.to_string()),
        ),
        (
            "kind",
            notify.kind.map(|k| format!("{k:?}")),
            consume.kind.map(|k| format!("{k:?}")),
        ),
        ("path", notify.path.clone(), consume.path.clone()),
        (
            "path_b64",
            notify.path_b64.clone(),
            consume.path_b64.clone(),
        ),
        ("from", notify.from.clone(), consume.from.clone()),
        ("to", notify.to.clone(), consume.to.clone()),
        ("sha256", notify.sha256.clone(), consume.sha256.clone()),
        (
            "manifest",
            notify.manifest.clone(),
            consume.manifest.clone(),
        ),
    ];
    if let (Some(fetched), Some(reused)) = (consume.fetched, consume.reused) {
        let size = consume.size.or(notify.size).unwrap_or(0);
        if fetched.checked_add(reused) != Some(size) {
            return Some(format!(
                "fetched {fetched} + reused {reused} is not the size {size}"
            ));
        }
    }
    for (name, expected, got) in fields {
        if expected != got {
            let show = |value: Option<String>| value.unwrap_or_else(|| "absent".into());
            return Some(format!(
                "{name} is {}, the notify says {}",
                show(got),
                show(expected)
            ));
        }
    }
    None
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
            let mut base = Snapshot::new();
            for event in &events[..cut] {
                base.observe(event);
            }
            let tail = check_log_from(Some(&base), &events[cut..], CheckOptions::default());
            assert!(tail.is_ok(), "cut after #{}:\n{tail}", events[cut - 1].seq);
            assert_eq!(tail.master_state, whole.master_state);
        }
        // A resync must name a checkpoint the log was cut at.
        let cut = events.len() / 2;
        let mut base = Snapshot::new();
        for event in &events[..cut] {
            base.observe(event);
        }
        let mut tail = events[cut..].to_vec();
        let mut ready = tail[tail.len() - 1].clone();
        ready.seq += 1;
        ready.agent = "slave".into();
        ready.body = Draft::tagged(Tag::Ready);
        ready.body.resync = Some(base.seq + 1);
        tail.push(ready);
        let report = check_log_from(Some(&base), &tail, CheckOptions::default());
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.message.contains("resyncs from")),
            "{report}"
        );
    }
}
