//! Checkpoints and a `Runner`: pyvaldi, done right, for agents in other processes.
//!
//! A test names checkpoints ("before slave applies the notify for foo.txt", "after slave-2
//! consumed it", "before the master's change to foo.txt is appended") and hands the runner
//! the order it wants them hit. The runner arms a gate for each in the bus (a bus started
//! with `--test-checkpoints`; see `bus::gates`), then releases them one at a time:
//!
//! - `next()` lets the previous checkpoint's agent go on, waits until the next checkpoint in
//!   the order is reached, and returns it. At that moment the agent of every checkpoint that
//!   has been reached and not yet passed is held: the test asserts on directories and the log.
//! - `run_to(name)` calls `next()` until `name`; `run_to_end()` releases everything.
//!
//! A checkpoint reached early (its agent got there first) simply waits, held, for its turn.
//! An "after consume" checkpoint also holds the slave *before* it applies the notify, so the
//! consume itself cannot happen out of turn. A checkpoint that cannot be reached in the
//! requested order (it waits on an agent held at a later one) fails after `timeout` with
//! the list of what is held, instead of hanging.

use std::fmt;
use std::time::Duration;

use crate::bus::gates::Gate;
use crate::bus::gates::GateControl;
use crate::event::{Op, Tag};
use crate::select::{PathMatch, Selector};

/// A point in one agent's life where the runner can hold it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub name: String,
    gate: Gate,
    /// Released when this checkpoint's turn comes (keeps "after" checkpoints in order).
    hold_until_turn: Option<Gate>,
}

/// Which change a checkpoint is about: an op and a path.
fn change(op: Op, path: &str, tag: Tag) -> Selector {
    Selector {
        tags: vec![tag],
        ops: vec![op],
        path: Some(PathMatch::Exact(path.to_owned())),
        ..Selector::default()
    }
}

impl Checkpoint {
    /// Before `agent` (a slave) applies the notify of `op` on `path`: it has not seen it yet.
    pub fn before_apply(agent: &str, op: Op, path: &str) -> Checkpoint {
        Checkpoint {
            name: format!("before {agent} applies {op} {path}"),
            gate: Gate::BeforeDeliver {
                agent: agent.to_owned(),
                filter: change(op, path, Tag::Notify),
            },
            hold_until_turn: None,
        }
    }

    /// After `agent` (a slave) consumed the notify of `op` on `path`: the consume is in the
    /// log, and the slave waits before going on.
    pub fn after_consume(agent: &str, op: Op, path: &str) -> Checkpoint {
        Checkpoint {
            name: format!("after {agent} consumed {op} {path}"),
            gate: Gate::AfterAppend {
                agent: agent.to_owned(),
                filter: change(op, path, Tag::Consume),
            },
            hold_until_turn: Some(Gate::BeforeDeliver {
                agent: agent.to_owned(),
                filter: change(op, path, Tag::Notify),
            }),
        }
    }

    /// Before the master's (`agent`'s) notify of `op` on `path` is appended to the log.
    pub fn before_append(agent: &str, op: Op, path: &str) -> Checkpoint {
        Checkpoint {
            name: format!("before {agent}'s {op} {path} is appended"),
            gate: Gate::BeforeAppend {
                agent: agent.to_owned(),
                filter: change(op, path, Tag::Notify),
            },
            hold_until_turn: None,
        }
    }

    /// Renames the checkpoint (names must be unique within a runner).
    pub fn named(mut self, name: &str) -> Checkpoint {
        self.name = name.to_owned();
        self
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why the runner could not do what was asked.
#[derive(Debug, Clone)]
pub struct RunnerError {
    pub message: String,
}

impl fmt::Display for RunnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RunnerError {}

fn fail(message: impl Into<String>) -> RunnerError {
    RunnerError {
        message: message.into(),
    }
}

/// Holds and releases agents so that checkpoints are hit in a chosen order.
pub struct Runner {
    client: GateControl,
    order: Vec<Checkpoint>,
    next_idx: usize,
    /// How long `next()` waits for a checkpoint before declaring the order unreachable.
    pub timeout: Duration,
    reached: Vec<(String, u64)>,
}

impl Runner {
    /// Connects to a test bus and arms every checkpoint; nothing is released yet.
    pub async fn new(addr: &str, order: Vec<Checkpoint>) -> Result<Runner, RunnerError> {
        let client = GateControl::connect(addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        for checkpoint in &order {
            client
                .arm(&checkpoint.name, checkpoint.gate.clone())
                .await
                .map_err(|e| fail(format!("cannot arm {checkpoint}: {e}")))?;
            if let Some(hold) = &checkpoint.hold_until_turn {
                client
                    .arm(&turn_gate(checkpoint), hold.clone())
                    .await
                    .map_err(|e| fail(format!("cannot arm {checkpoint}: {e}")))?;
            }
        }
        Ok(Runner {
            client,
            order,
            next_idx: 0,
            timeout: Duration::from_secs(10),
            reached: Vec::new(),
        })
    }

    /// Releases the previous checkpoint and waits for the next one in the order; returns it
    /// with its agent held. `None` when every checkpoint has been passed.
    pub async fn next(&mut self) -> Result<Option<&Checkpoint>, RunnerError> {
        if self.next_idx > 0 {
            let previous = &self.order[self.next_idx - 1];
            self.client
                .release(&previous.name)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        let Some(checkpoint) = self.order.get(self.next_idx) else {
            return Ok(None);
        };
        if checkpoint.hold_until_turn.is_some() {
            self.client
                .release(&turn_gate(checkpoint))
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        match tokio::time::timeout(self.timeout, self.client.reached(&checkpoint.name)).await {
            Ok(Ok(seq)) => self.reached.push((checkpoint.name.clone(), seq)),
            Ok(Err(err)) => return Err(fail(format!("waiting for {checkpoint}: {err}"))),
            Err(_) => {
                let passed: Vec<String> = self
                    .reached
                    .iter()
                    .map(|(name, seq)| format!("{name} (#{seq})"))
                    .collect();
                let later: Vec<String> = self.order[self.next_idx + 1..]
                    .iter()
                    .map(|c| c.name.clone())
                    .collect();
                return Err(fail(format!(
                    "checkpoint {checkpoint:?} was not reached within {:?}: the requested order cannot be reached \
                     (is its agent waiting for something a later checkpoint holds back?)\n  passed: {}\n  still armed, in order: {}",
                    self.timeout,
                    if passed.is_empty() { "none".into() } else { passed.join(", ") },
                    if later.is_empty() { "none".into() } else { later.join(", ") },
                )));
            }
        }
        self.next_idx += 1;
        Ok(Some(&self.order[self.next_idx - 1]))
    }

    /// Runs checkpoints in order up to and including `name`.
    pub async fn run_to(&mut self, name: &str) -> Result<(), RunnerError> {
        if !self.order[self.next_idx..].iter().any(|c| c.name == name) {
            return Err(fail(format!("no checkpoint {name:?} ahead in the order")));
        }
        while let Some(checkpoint) = self.next().await? {
            if checkpoint.name == name {
                return Ok(());
            }
        }
        Err(fail(format!("checkpoint {name:?} was never reached")))
    }

    /// Releases every agent and forgets every gate: the system runs freely again.
    pub async fn run_to_end(&mut self) -> Result<(), RunnerError> {
        self.next_idx = self.order.len();
        self.client.disarm().await.map_err(|e| fail(e.to_string()))
    }
}

fn turn_gate(checkpoint: &Checkpoint) -> String {
    format!("{} (turn)", checkpoint.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Link, Subscription};
    use crate::event::Role;
    use crate::testkit::test_bus::TestBus;

    /// A test bus in this process, a publishing "master" and a subscribing "slave" client.
    async fn test_bus(checkpoints: bool) -> (String, Link, Link, TestBus) {
        let bus = TestBus::start(checkpoints).await;
        let master = bus.client(Role::Master, "master").await;
        let slave = bus.client(Role::Slave, "slave").await;
        (bus.addr.clone(), master, slave, bus)
    }

    use crate::testkit::test_bus::notify_delete;

    #[tokio::test]
    async fn an_order_that_cannot_be_reached_is_a_clear_error_not_a_hang() {
        let (addr, master, slave, _state) = test_bus(true).await;
        notify_delete(&master, "a").await;
        notify_delete(&master, "b").await;
        // The slave meets a before b; asking for b first cannot work.
        let mut runner = Runner::new(
            &addr,
            vec![
                Checkpoint::before_apply("slave", Op::Delete, "b"),
                Checkpoint::before_apply("slave", Op::Delete, "a"),
            ],
        )
        .await
        .expect("runner");
        runner.timeout = Duration::from_millis(300);
        let follower = tokio::spawn(async move {
            let mut subscription = Subscription::new(slave, 1);
            while subscription.next().await.is_ok() {}
        });
        let err = runner.next().await.expect_err("unreachable");
        assert!(err.message.contains("cannot be reached"), "{err}");
        assert!(
            err.message
                .contains("still armed, in order: before slave applies delete a"),
            "{err}"
        );
        runner.run_to_end().await.expect("release");
        follower.abort();
    }

    #[tokio::test]
    async fn checkpoints_are_hit_in_the_order_asked_for() {
        let (addr, master, slave, _state) = test_bus(true).await;
        let mut runner = Runner::new(
            &addr,
            vec![Checkpoint::before_apply("slave", Op::Delete, "x")],
        )
        .await
        .expect("runner");
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let follower = tokio::spawn(async move {
            let mut subscription = Subscription::new(slave, 1);
            while let Ok(event) = subscription.next().await {
                let _ = seen_tx.send(event.body.path.clone());
            }
        });
        notify_delete(&master, "w").await;
        notify_delete(&master, "x").await;
        let reached = runner
            .next()
            .await
            .expect("reached")
            .map(|c| c.name.clone());
        assert_eq!(reached.as_deref(), Some("before slave applies delete x"));
        // Held: the slave got w, and not x.
        let mut got = Vec::new();
        while let Ok(Some(path)) =
            tokio::time::timeout(Duration::from_millis(200), seen_rx.recv()).await
        {
            got.extend(path);
        }
        assert_eq!(got, ["w", "w", "x"], "put w, delete w, put x; not delete x");
        runner.run_to_end().await.expect("release");
        let next = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
            .await
            .expect("delivered");
        assert_eq!(next.flatten().as_deref(), Some("x"));
        follower.abort();
    }

    #[tokio::test]
    async fn a_production_bus_refuses_gates() {
        let (addr, ..) = test_bus(false).await;
        let err = Runner::new(&addr, vec![Checkpoint::before_apply("slave", Op::Put, "x")])
            .await
            .err();
        assert!(err.is_some_and(|e| e.message.contains("checkpoints are disabled")));
    }
}
