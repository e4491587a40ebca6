//! Helpers shared by the suite.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use filesync::testkit::{Backend, Cluster, ClusterBuilder};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_filesync"))
}

/// A master and `n` ready slaves.
pub async fn cluster(label: &str, n_slaves: usize) -> Cluster {
    must(Cluster::start(&bin(), label, n_slaves).await)
}

/// Runs `filesync ARGS EXTRA...` to its end (it is expected to be refused quickly).
pub fn run(args: &[&str], extra: &[&Path]) -> Output {
    let mut command = Command::new(bin());
    command.args(args).args(extra).stdin(Stdio::null());
    command.output().expect("run filesync")
}

/// `filesync export`: the whole log as the bus holds it now, as log lines.
pub fn exported(c: &Cluster) -> String {
    let out = Command::new(bin())
        .args(["export", "--bus", &c.addr])
        .output()
        .expect("run export");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a refusal: exit 2 and one line on stderr that says `why`.
pub fn assert_refused(out: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(why), "{stderr}");
}

/// A master and `n` ready slaves on `backend`.
pub async fn cluster_on(backend: Backend, label: &str, n_slaves: usize) -> Cluster {
    must(builder_on(backend, label).slaves(n_slaves).start().await)
}

/// A cluster to build on `backend`, its directory named after the test and the backend.
pub fn builder_on(backend: Backend, label: &str) -> ClusterBuilder<'static> {
    let label = format!("{label}-{}", backend_name(backend));
    Cluster::builder(&bin(), &label).backend(backend)
}

pub fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Embedded => "embedded",
        Backend::Nats => "nats",
        Backend::NatsCluster => "nats-cluster",
    }
}

/// A test run on each bus backend, as `NAME::embedded` and `NAME::nats`: the body gets the
/// backend as `$backend`.
macro_rules! on_each_backend {
    ($(#[$doc:meta])* async fn $name:ident($backend:ident) $body:block) => {
        $(#[$doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($backend: filesync::testkit::Backend) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                run(filesync::testkit::Backend::Embedded).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                run(filesync::testkit::Backend::Nats).await
            }
        }
    };
}

/// Unwraps, panicking with the error's `Display` (an expectation's timeline), not `Debug`.
pub fn must<T, E: Display>(result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{err}"),
    }
}

/// A JetStream client of the test's own on its NATS servers: a peer outside filesync, which
/// NATS lets write whatever its permissions allow.
pub async fn jetstream(c: &Cluster) -> async_nats::jetstream::Context {
    let address = filesync::bus::nats::NatsAddress::parse(&c.addr)
        .expect("a NATS address")
        .expect("well written");
    let servers: Vec<async_nats::ServerAddr> = address
        .servers
        .iter()
        .map(|s| s.parse().expect("a server address"))
        .collect();
    let client = async_nats::connect(servers).await.expect("connect");
    async_nats::jetstream::new(client)
}
