//! `Reading`: what the log says so far, shared by every invariant's checker: the events by
//! `seq`, the notifies, who joined as a slave, the errors still open, the checkpoint a
//! truncated log goes on from. And `Step`: one event as the checkers see it, a slave's
//! answer already classified (`Answer`), so each checker judges it without re-deciding
//! what it is.

use std::collections::{BTreeMap, HashMap};

use filesync_master::Model;

use crate::checkpoint::Snapshot;
use crate::event::{Event, Role, Tag};
use crate::rules::OpenErrors;

/// What a slave's consume or error is, read against the log before it.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// From an agent that never joined as a slave.
    Stranger,
    /// Without a `cause`.
    NoCause,
    /// Naming a `cause` that is not an earlier notify (nor one retention removed).
    BadCause(u64),
    /// Part of a resync from a checkpoint.
    Resync { cause: u64 },
    /// A repair of an error (`repairs`) or of drift (`drift`): not an answer.
    Repair,
    /// The answer to notify `cause`; `notify` is `None` when retention removed it.
    ToNotify {
        cause: u64,
        notify: Option<&'a Event>,
    },
}

/// One event, as every checker sees it.
pub struct Step<'a> {
    /// Its line, from 0.
    pub idx: usize,
    pub event: &'a Event,
    /// For a consume or error: what it is.
    pub answer: Option<Answer<'a>>,
}

/// What the log says so far (see the module's documentation).
#[derive(Default)]
pub struct Reading<'a> {
    /// The `seq` of the checkpoint the log goes on from (0: none, the log is whole) ...
    pub base: u64,
    /// ... and its state.
    pub base_model: Model,
    pub by_seq: HashMap<u64, &'a Event>,
    pub notifies: Vec<&'a Event>,
    /// Every slave, with the `seq` of its join (the checkpoint's, for one it knew).
    pub slaves: BTreeMap<String, u64>,
    pub open_errors: OpenErrors,
}

impl<'a> Reading<'a> {
    pub fn new(base: Option<&Snapshot>) -> Reading<'a> {
        let mut reading = Reading::default();
        if let Some(base) = base {
            reading.base = base.seq;
            reading.base_model = base.model.clone();
            reading.open_errors = base.rules.open_errors().clone();
            for (name, agent) in base.rules.agents() {
                if agent.role == Some(Role::Slave) {
                    reading.slaves.insert(name.clone(), base.seq);
                }
            }
        }
        reading
    }

    /// `event` (line `idx`) as the checkers see it.
    pub fn step(&self, idx: usize, event: &'a Event) -> Step<'a> {
        let answer = match event.tag() {
            Some(Tag::Consume | Tag::Error) => Some(self.classify(event)),
            _ => None,
        };
        Step { idx, event, answer }
    }

    fn classify(&self, event: &'a Event) -> Answer<'a> {
        if !self.slaves.contains_key(&event.agent) {
            return Answer::Stranger;
        }
        let Some(cause) = event.body.cause else {
            return Answer::NoCause;
        };
        if event.body.resync.is_some() {
            return Answer::Resync { cause };
        }
        let notify = match self
            .by_seq
            .get(&cause)
            .filter(|n| n.tag() == Some(Tag::Notify))
        {
            Some(notify) => Some(*notify),
            None if cause <= self.base => None,
            None => return Answer::BadCause(cause),
        };
        if event.body.repairs.is_some() || event.body.drift.is_some() {
            return Answer::Repair;
        }
        Answer::ToNotify { cause, notify }
    }

    /// Takes in `step`, after every checker has judged it.
    pub fn absorb(&mut self, step: &Step<'a>) {
        let event = step.event;
        self.by_seq.insert(event.seq, event);
        let body = &event.body;
        match (event.tag(), step.answer) {
            (Some(Tag::Join), _) if body.role == Some(Role::Slave) => {
                self.slaves.entry(event.agent.clone()).or_insert(event.seq);
            }
            (Some(Tag::Notify), _) => {
                self.notifies.push(event);
                if let Ok(change) = body.change() {
                    self.open_errors.notify(&change);
                }
            }
            (Some(Tag::Error), Some(Answer::Resync { cause } | Answer::ToNotify { cause, .. })) => {
                let change = Reading::errored_change(step);
                self.open_errors
                    .error(&event.agent, event.seq, cause, change);
            }
            (Some(Tag::Consume), Some(Answer::Repair)) => {
                let change = body.change().ok();
                self.open_errors
                    .consume(&event.agent, body.repairs, change.as_ref());
            }
            (Some(Tag::Consume), Some(Answer::ToNotify { .. })) => {
                let change = body.change().ok();
                self.open_errors
                    .consume(&event.agent, None, change.as_ref());
            }
            _ => {}
        }
    }

    /// The change an error left undecided: its notify's, or its own.
    pub fn errored_change(step: &Step<'a>) -> Option<filesync_master::Change> {
        match step.answer {
            Some(Answer::ToNotify {
                notify: Some(notify),
                ..
            }) => notify.body.change().ok(),
            _ => step.event.body.change().ok(),
        }
    }
}
