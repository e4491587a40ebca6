//! filesync: a live directory mirror whose correctness is proven from its event log.
//!
//! # Layout
//!
//! - [`event`]: the event log line, and how names that are not UTF-8 are carried.
//! - [`bus`]: the bus server (log, blob store, fan-out) and its client.
//! - [`rules`]: what may join the bus and what may be appended to its log.
//! - [`select`]: which events: the one matcher behind test patterns, gates and `listen`.
//! - [`state`]: an agent's state directory, checked before use and locked while used.
//! - [`agent`]: wiring the master's changes onto the bus, and the bus into the slave.
//! - [`check`]: the invariants behind `filesync check`.
//! - [`checkpoint`]: the state the log implies at one `seq`, written down and read back.
//! - [`html`]: the log drawn as a timeline (`filesync check --html`).
//! - [`testkit`]: listening to the bus and expecting events; running agents as processes.
//! - [`cli`]: the command line, called by `main.rs`.
//!
//! The master's brain (scan, watch, hash) is the `filesync-master` crate; the slave's
//! (apply changes safely) is `filesync-slave`. Neither knows the bus exists.

pub mod agent;
pub mod bus;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod demo;
pub mod event;
pub mod history;
pub mod html;
pub mod identity;
pub mod listen;
pub mod rules;
pub mod select;
pub mod state;
pub mod testkit;
