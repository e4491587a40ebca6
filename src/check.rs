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
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use filesync_master::hash::hash_file;
use filesync_master::{Entry, Kind, Model, RelPath};

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
    /// 1 to 5 (see the module docs); 0 for a directory that differs from the log.
    pub invariant: u8,
    /// The events involved, by `seq`.
    pub seqs: Vec<u64>,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let title = match self.invariant {
            1 => "seq and time",
            2 => "every notify answered once, in order",
            3 => "consume agrees with notify",
            4 => "replays agree",
            5 => "paths stay inside the root",
            _ => "directory matches the log",
        };
        if self.invariant == 0 {
            write!(f, "[{title}] {}", self.message)
        } else {
            write!(f, "[invariant {} {title}] {}", self.invariant, self.message)
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

/// Checks every invariant over a whole log.
pub fn check_log(events: &[Event], options: CheckOptions) -> Report {
    let mut report = Report {
        n_events: events.len(),
        ..Report::default()
    };
    let mut violations = Vec::new();
    let mut by_seq: HashMap<u64, &Event> = HashMap::new();
    let mut notifies: Vec<&Event> = Vec::new();
    let mut slaves: BTreeMap<String, SlaveTrack> = BTreeMap::new();
    let mut open_errors = OpenErrors::default();
    let mut last_time = None;
    let mut last_seq = 0;

    for (idx, event) in events.iter().enumerate() {
        // 1: seq and time. A gap is reported once, where it happens.
        if event.seq != last_seq + 1 {
            violations.push(Violation {
                invariant: 1,
                seqs: vec![event.seq],
                message: format!(
                    "line {} has seq {} after seq {last_seq} (expected {})",
                    idx + 1,
                    event.seq,
                    last_seq + 1
                ),
            });
        }
        last_seq = event.seq;
        match humantime::parse_rfc3339(&event.time) {
            Ok(time) => {
                if last_time.is_some_and(|last| time < last) {
                    violations.push(Violation {
                        invariant: 1,
                        seqs: vec![event.seq],
                        message: format!("#{} time {} goes backwards", event.seq, event.time),
                    });
                }
                last_time = Some(time);
            }
            Err(err) => violations.push(Violation {
                invariant: 1,
                seqs: vec![event.seq],
                message: format!(
                    "#{} time {:?} is not RFC 3339: {err}",
                    event.seq, event.time
                ),
            }),
        }
        by_seq.insert(event.seq, event);
        // 5: paths.
        if let Err(err) = event.body.check_paths() {
            let message = err.to_string();
            violations.push(Violation {
                invariant: 5,
                seqs: vec![event.seq],
                message: format!("#{} {message}", event.seq),
            });
        }
        match event.tag() {
            Some(Tag::Join) if event.body.role == Some(Role::Slave) => {
                slaves
                    .entry(event.agent.clone())
                    .or_insert_with(|| SlaveTrack {
                        joined_at: event.seq,
                        ..SlaveTrack::default()
                    });
            }
            Some(Tag::Notify) => {
                notifies.push(event);
                match event.body.change() {
                    Ok(change) => {
                        open_errors.notify(&change);
                        if let Err(err) = report.master_state.apply(&change) {
                            violations.push(Violation {
                                invariant: 4,
                                seqs: vec![event.seq],
                                message: format!("#{} notify {change} does not apply to the master's state: {err}", event.seq),
                            });
                        }
                    }
                    Err(err) => violations.push(Violation {
                        invariant: 4,
                        seqs: vec![event.seq],
                        message: format!("#{} notify is not a valid change: {err}", event.seq),
                    }),
                }
            }
            Some(tag @ (Tag::Consume | Tag::Error)) => {
                let Some(track) = slaves.get_mut(&event.agent) else {
                    violations.push(Violation {
                        invariant: 2,
                        seqs: vec![event.seq],
                        message: format!(
                            "#{} {tag} from {}, which never joined as a slave",
                            event.seq, event.agent
                        ),
                    });
                    continue;
                };
                let Some(cause) = event.body.cause else {
                    violations.push(Violation {
                        invariant: 2,
                        seqs: vec![event.seq],
                        message: format!("#{} {tag} has no cause", event.seq),
                    });
                    continue;
                };
                let notify = by_seq.get(&cause).filter(|n| n.tag() == Some(Tag::Notify));
                let Some(notify) = notify else {
                    violations.push(Violation {
                        invariant: 2,
                        seqs: vec![event.seq, cause],
                        message: format!(
                            "#{} {tag} names cause #{cause}, which is not an earlier notify",
                            event.seq
                        ),
                    });
                    continue;
                };
                if let Some(violation) = repair_violation(event, &open_errors) {
                    violations.push(violation);
                }
                let answers = event.body.repairs.is_none() && event.body.drift.is_none();
                if !answers {
                    // A repair (of an error, or of drift): it did apply, so it is replayed;
                    // a drift repair may undo what the replay never saw (a file made
                    // behind the slave's back), so it is replayed leniently.
                    if tag == Tag::Consume && event.body.drift.is_some() {
                        if let Ok(change) = event.body.change() {
                            let _ = track.state.apply(&change);
                        }
                    } else if tag == Tag::Consume {
                        replay_consume(event, track, &mut violations);
                    }
                    if tag == Tag::Consume {
                        open_errors.consume(
                            &event.agent,
                            event.body.repairs,
                            event.body.change().ok().as_ref(),
                        );
                    }
                    continue;
                }
                if cause <= track.last_cause && !track.answers.contains_key(&cause) {
                    violations.push(Violation {
                        invariant: 2,
                        seqs: vec![event.seq, cause],
                        message: format!(
                            "#{} {} answered #{cause} after already answering #{}: out of order",
                            event.seq, event.agent, track.last_cause
                        ),
                    });
                }
                track.last_cause = track.last_cause.max(cause);
                track.answers.entry(cause).or_default().push(event.seq);
                if tag == Tag::Error {
                    let change = notify.body.change().ok();
                    if let Some(change) = &change {
                        track.errored.extend(change.paths().into_iter().cloned());
                    }
                    open_errors.error(&event.agent, event.seq, cause, change);
                    continue;
                }
                // 3: consume agrees with notify.
                if let Some(message) = disagreement(&notify.body, &event.body) {
                    violations.push(Violation {
                        invariant: 3,
                        seqs: vec![cause, event.seq],
                        message: format!(
                            "#{} consume by {} of #{cause}: {message}",
                            event.seq, event.agent
                        ),
                    });
                    // Still replayed: the slave's state is what it did.
                }
                replay_consume(event, track, &mut violations);
                open_errors.consume(&event.agent, None, event.body.change().ok().as_ref());
            }
            _ => {}
        }
    }
    report.n_notifies = notifies.len();

    // 2: exactly one answer to every notify after the join, and never two to any.
    for (name, track) in &slaves {
        let mut pending = Vec::new();
        for notify in &notifies {
            let expected = notify.seq > track.joined_at;
            match track.answers.get(&notify.seq).map(Vec::len).unwrap_or(0) {
                0 if expected => pending.push(notify.seq),
                0 | 1 => {}
                _ => violations.push(Violation {
                    invariant: 2,
                    seqs: std::iter::once(notify.seq)
                        .chain(track.answers[&notify.seq].iter().copied())
                        .collect(),
                    message: format!(
                        "notify #{} ({}) answered {} times by {name}: {}",
                        notify.seq,
                        describe(&notify.body),
                        track.answers[&notify.seq].len(),
                        list(&track.answers[&notify.seq])
                    ),
                }),
            }
        }
        // A notify that comes before the slave's last answer and was skipped is never
        // "pending": the slave moved past it.
        let (skipped, waiting): (Vec<u64>, Vec<u64>) =
            pending.into_iter().partition(|seq| *seq < track.last_cause);
        for seq in skipped {
            violations.push(Violation {
                invariant: 2,
                seqs: vec![seq],
                message: format!(
                    "notify #{seq} ({}) was never answered by {name}",
                    by_seq
                        .get(&seq)
                        .map(|e| describe(&e.body))
                        .unwrap_or_default()
                ),
            });
        }
        if !waiting.is_empty() && !options.allow_pending {
            violations.push(Violation {
                invariant: 2,
                seqs: waiting.clone(),
                message: format!(
                    "{name} has not answered {} notify(s) at the end of the log: {}",
                    waiting.len(),
                    list(&waiting)
                ),
            });
        }
        // 4: a slave with errors still open has not converged; one that answered every
        // notify and made good every error holds the master's state.
        let open: Vec<_> = open_errors.of(name).collect();
        if !open.is_empty() {
            let listed: Vec<String> = open
                .iter()
                .take(10)
                .map(|e| {
                    let error = by_seq.get(&e.seq).map(|event| &event.body);
                    format!(
                        "#{} ({}: {})",
                        e.seq,
                        error.map(describe).unwrap_or_default(),
                        error.and_then(|b| b.error.as_deref()).unwrap_or("?")
                    )
                })
                .collect();
            violations.push(Violation {
                invariant: 4,
                seqs: open.iter().map(|e| e.seq).collect(),
                message: format!(
                    "{name} has not converged: {} error(s) not repaired: {}",
                    open.len(),
                    listed.join(", ")
                ),
            });
        }
        let answered_all = notifies.iter().all(|n| track.answers.contains_key(&n.seq));
        if answered_all && open.is_empty() && track.state != report.master_state {
            violations.push(Violation {
                invariant: 4,
                seqs: Vec::new(),
                message: format!(
                    "{name}'s replayed state differs from the master's: {}",
                    model_diff(&report.master_state, &track.state)
                ),
            });
        }
    }
    report.slaves = slaves.keys().cloned().collect();
    report.violations = violations;
    report
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
                invariant: 4,
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
        invariant: 2,
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

fn describe(body: &Draft) -> String {
    format!(
        "{} {}",
        body.op.map(|o| o.as_str()).unwrap_or("?"),
        body.display_path()
    )
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
    let ignore = filesync_master::ignore::IgnoreRules::load(root);
    let mut model = Model::new();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| {
            RelPath::from_full(root, e.path())
                .is_ok_and(|rel| !ignore.is_ignored(&rel, e.file_type().is_dir()))
        });
    for item in walker {
        let item = item.map_err(io::Error::other)?;
        let rel = RelPath::from_full(root, item.path()).map_err(io::Error::other)?;
        let meta = item.path().symlink_metadata()?;
        let entry = if meta.file_type().is_symlink() {
            Entry::symlink(fs::read_link(item.path())?.as_os_str().as_bytes().to_vec())
        } else if meta.is_dir() {
            Entry::dir(meta.permissions().mode() & 0o7777)
        } else if meta.is_file() {
            let hashed = hash_file(item.path()).map_err(io::Error::other)?;
            Entry::file(hashed.size, hashed.sha256, meta.mode() & 0o7777)
        } else {
            continue;
        };
        model.put(rel, entry);
    }
    Ok(model)
}

/// Compares a directory with the state the log implies; a violation per difference group.
pub fn check_dir(report: &Report, dir: &Path) -> io::Result<Option<Violation>> {
    let on_disk = model_of_dir(dir)?;
    if on_disk == report.master_state {
        return Ok(None);
    }
    Ok(Some(Violation {
        invariant: 0,
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
        let mut found: Vec<u8> = report.violations.iter().map(|v| v.invariant).collect();
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
                .any(|v| v.invariant == 2 && v.message.contains("never answered")),
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
                .any(|v| v.invariant == 2 && v.message.contains("repairs #5")),
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
}
