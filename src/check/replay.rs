//! Invariant 4: replaying the notifies in order from an empty directory (or the checkpoint)
//! gives the master's state; replaying a slave's consumes (repairs included) gives that
//! slave's; when it answered everything and made good every error, the two are equal. A
//! slave with errors still open at the end has not converged.

use std::collections::BTreeMap;

use filesync_master::{Change, Model, RelPath};

use super::answers::AnsweredOnce;
use super::reading::{Answer, Reading, Step};
use super::{list_errors, model_diff, Invariant, Violation};
use crate::checkpoint::Snapshot;
use crate::event::{Event, Role, Tag};

/// Per slave: its replayed state.
#[derive(Default)]
struct Replayed {
    state: Model,
    /// Paths an error left in an unknown state on this slave.
    errored: Vec<RelPath>,
    /// What its answers to this log's notifies did, in order: a resync leaves those paths
    /// as the answers made them.
    answered: Vec<Change>,
}

pub struct ReplaysAgree {
    /// The state the master's notifies imply.
    pub master: Model,
    slaves: BTreeMap<String, Replayed>,
}

impl ReplaysAgree {
    pub fn new(base: Option<&Snapshot>) -> ReplaysAgree {
        let mut replays = ReplaysAgree {
            master: Model::new(),
            slaves: BTreeMap::new(),
        };
        let Some(base) = base else {
            return replays;
        };
        replays.master = base.model.clone();
        let open_errors = base.rules.open_errors();
        for (name, agent) in base.rules.agents() {
            if agent.role != Some(Role::Slave) {
                continue;
            }
            let errored = open_errors
                .of(name)
                .filter_map(|e| e.change.as_ref())
                .flat_map(|change| change.paths().into_iter().cloned())
                .collect();
            let replayed = Replayed {
                state: base.model.clone(),
                errored,
                answered: Vec::new(),
            };
            replays.slaves.insert(name.clone(), replayed);
        }
        replays
    }

    pub fn event(&mut self, step: &Step<'_>, reading: &Reading<'_>, out: &mut Vec<Violation>) {
        let event = step.event;
        match (event.tag(), step.answer) {
            (Some(Tag::Join), _) if event.body.role == Some(Role::Slave) => {
                self.slaves.entry(event.agent.clone()).or_default();
            }
            (Some(Tag::Notify), _) => self.notify(event, out),
            // A resync brings a slave to the state of a checkpoint the log was cut at: at
            // most the one this log goes on from, the only one whose state the checker
            // knows. A slave holds it once it has answered up to it (answers to the removed
            // notifies have their effect in it), except where it answered this log's
            // notifies already: those paths it leaves as its answers made them (it will not
            // answer those notifies again). So that is its state from the resync on.
            (Some(Tag::Ready), _) if event.body.resync.is_some() => {
                if let Some(slave) = self.slaves.get_mut(&event.agent) {
                    slave.resynced(&reading.base_model);
                }
            }
            (Some(tag), Some(Answer::Resync { .. })) => {
                let Some(slave) = self.slaves.get_mut(&event.agent) else {
                    return;
                };
                slave.resynced(&reading.base_model);
                if tag == Tag::Error {
                    slave.errored(step);
                }
            }
            // A repair did apply, so it is replayed; a drift repair may undo what the replay
            // never saw (a file made behind the slave's back), so it is replayed leniently.
            (Some(Tag::Consume), Some(Answer::Repair)) => {
                let Some(slave) = self.slaves.get_mut(&event.agent) else {
                    return;
                };
                if event.body.drift.is_some() {
                    if let Ok(change) = event.body.change() {
                        let _ = slave.state.apply(&change);
                    }
                } else {
                    slave.consume(event, out);
                }
            }
            (Some(tag), Some(Answer::ToNotify { notify, .. })) => {
                let Some(slave) = self.slaves.get_mut(&event.agent) else {
                    return;
                };
                if tag == Tag::Error {
                    slave.errored(step);
                } else if notify.is_some() {
                    slave.consume(event, out);
                    if let Ok(change) = event.body.change() {
                        slave.answered.push(change);
                    }
                }
            }
            _ => {}
        }
    }

    fn notify(&mut self, event: &Event, out: &mut Vec<Violation>) {
        let message = match event.body.change() {
            Ok(change) => match self.master.apply(&change) {
                Ok(()) => return,
                Err(err) => format!(
                    "#{} notify {change} does not apply to the master's state: {err}",
                    event.seq
                ),
            },
            Err(err) => format!("#{} notify is not a valid change: {err}", event.seq),
        };
        out.push(Violation::new(
            Invariant::ReplaysAgree,
            vec![event.seq],
            message,
        ));
    }

    /// At the end: a slave with errors still open has not converged; one that answered
    /// every notify and made good every error holds the master's state.
    pub fn finish(&self, reading: &Reading<'_>, answers: &AnsweredOnce, out: &mut Vec<Violation>) {
        for (name, slave) in &self.slaves {
            let open: Vec<u64> = reading.open_errors.of(name).map(|e| e.seq).collect();
            if !open.is_empty() {
                let message = format!(
                    "{name} has not converged: {} error(s) not repaired: {}",
                    open.len(),
                    list_errors(&open, reading)
                );
                out.push(Violation::new(Invariant::ReplaysAgree, open, message));
                continue;
            }
            let answered_all = reading
                .notifies
                .iter()
                .all(|n| answers.answered(name, n.seq));
            if answered_all && slave.state != self.master {
                let message = format!(
                    "{name}'s replayed state differs from the master's: {}",
                    model_diff(&self.master, &slave.state)
                );
                out.push(Violation::new(Invariant::ReplaysAgree, Vec::new(), message));
            }
        }
    }
}

impl Replayed {
    /// A resync from the checkpoint `base`: its state, with what this slave's answers to
    /// this log's notifies did (replayed again; a change that does not fit was reported
    /// when it was answered).
    fn resynced(&mut self, base: &Model) {
        self.state = base.clone();
        for change in &self.answered {
            let _ = self.state.apply(change);
        }
    }

    /// An error leaves the paths of its change undecided on this slave.
    fn errored(&mut self, step: &Step<'_>) {
        if let Some(change) = Reading::errored_change(step) {
            self.errored.extend(change.paths().into_iter().cloned());
        }
    }

    /// Replays a consume. After an error the slave's state at that path is unknown: a later
    /// change there that does not fit the replay is not its fault.
    fn consume(&mut self, event: &Event, out: &mut Vec<Violation>) {
        let Ok(change) = event.body.change() else {
            return;
        };
        let after_error = change.paths().iter().any(|p| {
            self.errored
                .iter()
                .any(|e| p.starts_with(e) || e.starts_with(p))
        });
        if let Err(err) = self.state.apply(&change) {
            if !after_error {
                out.push(Violation::new(
                    Invariant::ReplaysAgree,
                    vec![event.seq],
                    format!(
                        "#{} consume {change} does not apply to {}'s state: {err}",
                        event.seq, event.agent
                    ),
                ));
            }
        }
    }
}
