//! Checkpoint gates: how a test holds agents at chosen points, inside the bus.
//!
//! Only a bus started with `--test-checkpoints` has gates; a production bus refuses every
//! gate request, so no peer can pause it. A gate fires once, at the first event that matches
//! its filter, and holds the agent there until released:
//!
//! - `before_deliver`: the subscriber `agent` is not given that event (its poll waits), so it
//!   is held *before applying* it;
//! - `before_append`: `agent`'s publish of that event waits, not yet in the log;
//! - `after_append`: `agent`'s event is in the log, but the reply to its publish waits, so it
//!   is held *just after* (a slave that consumed, before it records its position).

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::client::{BusClient, ClientError, Hello};
use super::protocol::{Reply, Request};
use crate::event::{Draft, Event, Role};
use crate::select::Selector;

/// At most this many gates at once.
const MAX_GATES: usize = 256;

/// Where a gate holds an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "snake_case", deny_unknown_fields)]
pub enum Gate {
    BeforeDeliver { agent: String, filter: Selector },
    BeforeAppend { agent: String, filter: Selector },
    AfterAppend { agent: String, filter: Selector },
}

#[derive(Debug)]
struct GateState {
    name: String,
    gate: Gate,
    /// The `seq` it fired at (0 for `before_append`, whose event has none yet).
    reached: Option<u64>,
    released: bool,
}

/// The gates of one bus.
#[derive(Debug)]
pub struct Gates {
    gates: Mutex<Vec<GateState>>,
    changed: watch::Sender<u64>,
}

impl Default for Gates {
    fn default() -> Gates {
        Gates {
            gates: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl Gates {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<GateState>> {
        self.gates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    pub fn arm(&self, name: String, gate: Gate) -> Result<(), String> {
        let mut gates = self.lock();
        if gates.iter().any(|g| g.name == name) {
            return Err(format!("a gate named {name:?} is already armed"));
        }
        if gates.len() >= MAX_GATES {
            return Err(format!("more than {MAX_GATES} gates"));
        }
        gates.push(GateState {
            name,
            gate,
            reached: None,
            released: false,
        });
        Ok(())
    }

    pub fn release(&self, name: &str) -> Result<(), String> {
        {
            let mut gates = self.lock();
            let gate = gates
                .iter_mut()
                .find(|g| g.name == name)
                .ok_or_else(|| format!("no gate named {name:?}"))?;
            gate.released = true;
        }
        self.bump();
        Ok(())
    }

    /// Releases and forgets every gate.
    pub fn disarm_all(&self) {
        self.lock().clear();
        self.bump();
    }

    /// Names and positions of the gates that hold an agent right now.
    pub fn holding(&self) -> Vec<(String, u64)> {
        self.lock()
            .iter()
            .filter_map(|g| {
                g.reached
                    .filter(|_| !g.released)
                    .map(|seq| (g.name.clone(), seq))
            })
            .collect()
    }

    /// Waits until gate `name` fires; returns the `seq` it fired at.
    pub async fn wait_reached(&self, name: &str) -> Result<u64, String> {
        let mut changed = self.changed.subscribe();
        loop {
            {
                let gates = self.lock();
                let gate = gates
                    .iter()
                    .find(|g| g.name == name)
                    .ok_or_else(|| format!("no gate named {name:?}"))?;
                if let Some(seq) = gate.reached {
                    return Ok(seq);
                }
            }
            if changed.changed().await.is_err() {
                return Err("the bus is shutting down".into());
            }
        }
    }

    /// Fires the first armed gate of `agent` that `pick` selects, and holds until released.
    /// Returns whether a gate fired.
    async fn fire(&self, seq: u64, pick: impl Fn(&Gate) -> bool) -> bool {
        let name = {
            let mut gates = self.lock();
            let Some(gate) = gates
                .iter_mut()
                .find(|g| g.reached.is_none() && pick(&g.gate))
            else {
                return false;
            };
            gate.reached = Some(seq);
            gate.name.clone()
        };
        tracing::info!("checkpoint {name:?} reached at #{seq}; holding");
        self.bump();
        let mut changed = self.changed.subscribe();
        loop {
            let released = self
                .lock()
                .iter()
                .find(|g| g.name == name)
                .is_none_or(|g| g.released);
            if released {
                return true;
            }
            if changed.changed().await.is_err() {
                return true;
            }
        }
    }

    /// How many of `events` (about to be delivered to `agent`) may go now. When the first of
    /// them fires a gate, waits for its release and lets exactly that one go.
    pub async fn before_deliver(&self, agent: &str, events: &[Event]) -> usize {
        let hit = events.iter().position(|event| {
            self.lock().iter().any(|g| {
                g.reached.is_none()
                    && matches!(&g.gate, Gate::BeforeDeliver { agent: a, filter } if a == agent && filter.matches(event))
            })
        });
        match hit {
            None => events.len(),
            Some(0) => {
                let event = &events[0];
                self.fire(event.seq, |gate| {
                    matches!(gate, Gate::BeforeDeliver { agent: a, filter } if a == agent && filter.matches(event))
                })
                .await;
                1
            }
            Some(idx) => idx,
        }
    }

    /// Holds `agent`'s publish of `draft` if a `before_append` gate matches it.
    pub async fn before_append(&self, agent: &str, draft: &Draft) {
        self.fire(0, |gate| matches!(gate, Gate::BeforeAppend { agent: a, filter } if a == agent && filter.matches_draft(agent, draft)))
            .await;
    }

    /// Holds the reply to `agent`'s publish of `event` if an `after_append` gate matches it.
    pub async fn after_append(&self, agent: &str, event: &Event) {
        self.fire(event.seq, |gate| {
            matches!(gate, Gate::AfterAppend { agent: a, filter } if a == agent && filter.matches(event))
        })
        .await;
    }
}
/// Test-only control of a test bus's checkpoint gates: a handle of its own, apart from the
/// agents' API (`api.rs`), which has no way to hold anyone. A bus started without
/// `--test-checkpoints` refuses every request it sends.
pub struct GateControl {
    client: BusClient,
}

impl GateControl {
    /// Connects to the test bus at `addr` to control its gates.
    pub async fn connect(addr: &str) -> Result<GateControl, ClientError> {
        let hello = Hello::new(Role::Listener, "runner", None);
        let (client, _) = BusClient::connect(addr, hello).await?;
        Ok(GateControl { client })
    }

    /// Test buses only: arms a checkpoint gate.
    pub async fn arm(&self, name: &str, gate: Gate) -> Result<(), ClientError> {
        let name = name.to_owned();
        self.client
            .request(
                |id| Request::Arm {
                    id,
                    name,
                    gate: Box::new(gate),
                },
                &[],
            )
            .await
            .map(|_| ())
    }

    /// Test buses only: lets the agent held at gate `name` go on.
    pub async fn release(&self, name: &str) -> Result<(), ClientError> {
        let name = name.to_owned();
        self.client
            .request(|id| Request::Release { id, name }, &[])
            .await
            .map(|_| ())
    }

    /// Test buses only: waits until gate `name` fires; returns the `seq` it fired at.
    pub async fn reached(&self, name: &str) -> Result<u64, ClientError> {
        let name = name.to_owned();
        match self
            .client
            .request(|id| Request::Reached { id, name }, &[])
            .await?
        {
            (Reply::Ok { seq: Some(seq), .. }, _) => Ok(seq),
            (other, _) => Err(ClientError::Protocol(format!(
                "expected ok with seq, got {other:?}"
            ))),
        }
    }

    /// Test buses only: releases and forgets every gate.
    pub async fn disarm(&self) -> Result<(), ClientError> {
        self.client
            .request(|id| Request::Disarm { id }, &[])
            .await
            .map(|_| ())
    }
}
