//! Helpers shared by the suite.

use std::fmt::Display;
use std::path::PathBuf;

use filesync::testkit::Cluster;

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_filesync"))
}

/// A master and `n` ready slaves.
pub async fn cluster(label: &str, n_slaves: usize) -> Cluster {
    must(Cluster::start(&bin(), label, n_slaves).await)
}

/// Unwraps, panicking with the error's `Display` (an expectation's timeline), not `Debug`.
pub fn must<T, E: Display>(result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{err}"),
    }
}
