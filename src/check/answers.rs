//! Invariant 2: every notify after a slave's `join` gets exactly one consume or error from
//! that slave, naming it as `cause`, in `seq` order; a resync names a checkpoint the log was
//! cut at; a repair names an open error of its own slave for the same notify.

use std::collections::BTreeMap;

use super::reading::{Answer, Reading, Step};
use super::{list, CheckOptions, Invariant, Violation};
use crate::checkpoint::Snapshot;
use crate::event::{Event, Role, Tag};

/// Per slave: what it answered.
#[derive(Default)]
struct Owed {
    /// Notify seq -> the seqs of answers from this slave.
    answers: BTreeMap<u64, Vec<u64>>,
    last_cause: u64,
}

pub struct AnsweredOnce {
    options: CheckOptions,
    slaves: BTreeMap<String, Owed>,
}

impl AnsweredOnce {
    pub fn new(base: Option<&Snapshot>, options: CheckOptions) -> AnsweredOnce {
        let mut slaves = BTreeMap::new();
        for (name, agent) in base.iter().flat_map(|base| base.rules.agents()) {
            if agent.role == Some(Role::Slave) {
                let owed = Owed {
                    last_cause: agent.answered,
                    ..Owed::default()
                };
                slaves.insert(name.clone(), owed);
            }
        }
        AnsweredOnce { options, slaves }
    }

    /// Whether `slave` has answered (or errored on) notify `seq`.
    pub fn answered(&self, slave: &str, seq: u64) -> bool {
        self.slaves
            .get(slave)
            .is_some_and(|owed| owed.answers.contains_key(&seq))
    }

    pub fn event(&mut self, step: &Step<'_>, reading: &Reading<'_>, out: &mut Vec<Violation>) {
        let event = step.event;
        let tag = event.tag();
        if tag == Some(Tag::Ready) && event.body.resync.is_some() {
            out.extend(resync_violation(event, reading.base));
            if reading.slaves.contains_key(&event.agent) {
                let owed = self.slaves.entry(event.agent.clone()).or_default();
                owed.last_cause = owed.last_cause.max(event.body.resync.unwrap_or(0));
            }
        }
        let (Some(tag), Some(answer)) = (tag, step.answer) else {
            return;
        };
        let mut violation = |seqs: Vec<u64>, message: String| {
            out.push(Violation::new(Invariant::AnsweredOnce, seqs, message));
        };
        match answer {
            Answer::Stranger => violation(
                vec![event.seq],
                format!(
                    "#{} {tag} from {}, which never joined as a slave",
                    event.seq, event.agent
                ),
            ),
            Answer::NoCause => violation(
                vec![event.seq],
                format!("#{} {tag} has no cause", event.seq),
            ),
            Answer::BadCause(cause) => violation(
                vec![event.seq, cause],
                format!(
                    "#{} {tag} names cause #{cause}, which is not an earlier notify",
                    event.seq
                ),
            ),
            Answer::Resync { .. } => out.extend(resync_violation(event, reading.base)),
            Answer::Repair => out.extend(repair_violation(event, reading)),
            Answer::ToNotify { cause, .. } => {
                out.extend(repair_violation(event, reading));
                self.in_order(event, cause, out);
            }
        }
    }

    /// An answer to notify `cause`: recorded, and reported when it comes out of order.
    fn in_order(&mut self, event: &Event, cause: u64, out: &mut Vec<Violation>) {
        let owed = self.slaves.entry(event.agent.clone()).or_default();
        if cause <= owed.last_cause && !owed.answers.contains_key(&cause) {
            let message = format!(
                "#{} {} answered #{cause} after already answering #{}: out of order",
                event.seq, event.agent, owed.last_cause
            );
            out.push(Violation::new(
                Invariant::AnsweredOnce,
                vec![event.seq, cause],
                message,
            ));
        }
        owed.last_cause = owed.last_cause.max(cause);
        owed.answers.entry(cause).or_default().push(event.seq);
    }

    /// At the end: exactly one answer to every notify after the join, never two to any.
    pub fn finish(&self, reading: &Reading<'_>, out: &mut Vec<Violation>) {
        let never = Owed::default();
        for (name, joined_at) in &reading.slaves {
            let owed = self.slaves.get(name).unwrap_or(&never);
            self.owed_by(name, *joined_at, owed, reading, out);
        }
    }

    fn owed_by(
        &self,
        name: &str,
        joined_at: u64,
        owed: &Owed,
        reading: &Reading<'_>,
        out: &mut Vec<Violation>,
    ) {
        let mut pending = Vec::new();
        for notify in &reading.notifies {
            let answers = owed.answers.get(&notify.seq);
            match answers.map(Vec::len).unwrap_or(0) {
                0 if notify.seq > joined_at => pending.push(notify.seq),
                0 | 1 => {}
                n => out.push(Violation::new(
                    Invariant::AnsweredOnce,
                    std::iter::once(notify.seq)
                        .chain(answers.into_iter().flatten().copied())
                        .collect(),
                    format!(
                        "notify #{} ({}) answered {n} times by {name}: {}",
                        notify.seq,
                        notify.body.what(),
                        list(answers.map(Vec::as_slice).unwrap_or_default())
                    ),
                )),
            }
        }
        // A notify that comes before the slave's last answer and was skipped is never
        // "pending": the slave moved past it.
        let (skipped, waiting): (Vec<u64>, Vec<u64>) =
            pending.into_iter().partition(|seq| *seq < owed.last_cause);
        for seq in skipped {
            let what = reading.by_seq.get(&seq).map(|e| e.body.what());
            let message = format!(
                "notify #{seq} ({}) was never answered by {name}",
                what.unwrap_or_default()
            );
            out.push(Violation::new(Invariant::AnsweredOnce, vec![seq], message));
        }
        if !waiting.is_empty() && !self.options.allow_pending {
            let message = format!(
                "{name} has not answered {} notify(s) at the end of the log: {}",
                waiting.len(),
                list(&waiting)
            );
            out.push(Violation::new(Invariant::AnsweredOnce, waiting, message));
        }
    }
}

/// A resync names a checkpoint the log was cut at (its `cause` too, for an answer).
fn resync_violation(event: &Event, base: u64) -> Option<Violation> {
    let checkpoint = event.body.resync?;
    let fits = checkpoint <= base
        && checkpoint > 0
        && (event.tag() == Some(Tag::Ready) || event.body.cause == Some(checkpoint));
    (!fits).then(|| {
        Violation::new(
            Invariant::AnsweredOnce,
            vec![event.seq],
            format!(
                "#{} resyncs from #{checkpoint}, but the log was not cut there (it goes on from the checkpoint at #{base})",
                event.seq
            ),
        )
    })
}

/// A consume that `repairs` must name an open error of its own slave, for the same notify.
fn repair_violation(event: &Event, reading: &Reading<'_>) -> Option<Violation> {
    let repaired = event.body.repairs?;
    let fits = reading
        .open_errors
        .get(&event.agent, repaired)
        .is_some_and(|open| Some(open.cause) == event.body.cause);
    (!fits).then(|| {
        Violation::new(
            Invariant::AnsweredOnce,
            vec![event.seq, repaired],
            format!(
                "#{} repairs #{repaired}, which is not an open error of {} answering #{}",
                event.seq,
                event.agent,
                event.body.cause.unwrap_or(0)
            ),
        )
    })
}
