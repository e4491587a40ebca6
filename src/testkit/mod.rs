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
pub mod nats;
pub mod pattern;
pub mod plan;
pub mod process;
pub mod runner;
pub mod scenario;
#[cfg(test)]
pub(crate) mod test_bus;
pub mod timeline;

pub use cluster::{slave_name, AgentLog, Backend, Cluster, ClusterBuilder};
pub use listen::{EventStream, ExpectError};
pub use pattern::Pattern;
pub use plan::{Exit, Plan, PlanError, ProcId};
pub use process::{Proc, TestDir};
pub use runner::{Checkpoint, Runner, RunnerError};

/// `len` bytes that look random to the chunker, the same for the same `seed` (xorshift64):
/// content that shares no chunk with other content by chance, for tests and benches.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
