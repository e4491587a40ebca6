//! Invariant 1: `seq` goes on from 1 (or from the checkpoint) without gaps, and `time` is
//! RFC 3339 and never goes backwards. A gap is reported once, where it happens.

use std::time::SystemTime;

use super::reading::Step;
use super::{Invariant, Violation};

pub struct SeqAndTime {
    last_seq: u64,
    last_time: Option<SystemTime>,
}

impl SeqAndTime {
    /// For a log that goes on from the checkpoint at `base` (0: a whole log).
    pub fn new(base: u64) -> SeqAndTime {
        SeqAndTime {
            last_seq: base,
            last_time: None,
        }
    }

    pub fn event(&mut self, step: &Step<'_>, out: &mut Vec<Violation>) {
        let event = step.event;
        let mut violation = |message: String| {
            out.push(Violation::new(
                Invariant::SeqAndTime,
                vec![event.seq],
                message,
            ));
        };
        if event.seq != self.last_seq + 1 {
            violation(format!(
                "line {} has seq {} after seq {} (expected {})",
                step.idx + 1,
                event.seq,
                self.last_seq,
                self.last_seq + 1
            ));
        }
        self.last_seq = event.seq;
        match humantime::parse_rfc3339(&event.time) {
            Ok(time) => {
                if self.last_time.is_some_and(|last| time < last) {
                    violation(format!("#{} time {} goes backwards", event.seq, event.time));
                }
                self.last_time = Some(time);
            }
            Err(err) => violation(format!(
                "#{} time {:?} is not RFC 3339: {err}",
                event.seq, event.time
            )),
        }
    }
}
