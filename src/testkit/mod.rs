//! The test kit: test an event-driven system through its event log.
//!
//! - [`guide`]: the guide (`docs/TESTKIT.md`), whose examples compile as doctests.
//! - [`pattern`]: `Pattern`, what an expected event looks like.
//! - [`listen`]: `EventStream`, a subscription with `expect`, `expect_all`, `expect_seq`,
//!   `expect_none` and `expect_count`, failing with a timeline.
//! - [`process`]: `Proc` and `TestDir`: processes with logs, killed on drop; directories
//!   kept when a test fails.
//! - [`plan`]: `Plan`, Flumotion's spawn / wait / kill / crash, every exit anticipated.
//! - [`cluster`]: `Cluster`, a master and slaves as real processes, awaited until ready.
//! - [`runner`]: `Checkpoint` and `Runner`: hold agents so checkpoints are hit in order.
//! - [`scenario`]: scenario files, their runner and the result reporter.
//! - [`timeline`]: the aligned, readable rendering of events.

pub mod cluster;
pub mod guide;
pub mod listen;
pub mod pattern;
pub mod plan;
pub mod process;
pub mod runner;
pub mod scenario;
#[cfg(test)]
pub(crate) mod test_bus;
pub mod timeline;

pub use cluster::{slave_name, AgentLog, Cluster, ClusterBuilder};
pub use listen::{EventStream, ExpectError};
pub use pattern::Pattern;
pub use plan::{Exit, Plan, PlanError, ProcId};
pub use process::{Proc, TestDir};
pub use runner::{Checkpoint, Runner, RunnerError};
