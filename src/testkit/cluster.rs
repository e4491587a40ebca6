//! `Cluster`: a master (hosting the bus on a free port) and N slaves as real processes, each
//! in its own directory with its own state, started in order and awaited until `ready`; and
//! an `EventStream` on the bus from `seq` 1, so a test sees the whole log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::listen::EventStream;
use super::pattern::Pattern;
use super::process::{Proc, TestDir};
use crate::bus::log::read_log;
use crate::check::{check_dir, check_log, CheckOptions, Report};

/// How long a process may take to print its address or become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long SIGTERM may take before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// One slave's place.
pub struct SlaveAgent {
    pub name: String,
    pub dir: PathBuf,
    pub state: PathBuf,
    pub proc: Option<Proc>,
    runs: usize,
}

/// A running system under test.
pub struct Cluster {
    bin: PathBuf,
    pub dir: TestDir,
    /// The bus address (the master's `--listen`), fixed for restarts.
    pub addr: String,
    pub master: Option<Proc>,
    master_runs: usize,
    pub slaves: Vec<SlaveAgent>,
    pub events: EventStream,
}

/// The `--name` of slave `idx`: `slave`, `slave-2`, `slave-3`...
pub fn slave_name(idx: usize) -> String {
    if idx == 0 {
        "slave".into()
    } else {
        format!("slave-{}", idx + 1)
    }
}

fn numbered(name: &str, run: usize) -> String {
    if run == 0 {
        name.to_owned()
    } else {
        format!("{name}-{run}")
    }
}

impl Cluster {
    /// Starts a master and `n_slaves` slaves and waits for each one's `ready`.
    pub async fn start(bin: &Path, label: &str, n_slaves: usize) -> Result<Cluster, String> {
        Cluster::start_with(bin, label, n_slaves, |_| {}).await
    }

    /// Like `start`, with a hook to fill the master directory before the master starts.
    pub async fn start_with(
        bin: &Path,
        label: &str,
        n_slaves: usize,
        prepare: impl FnOnce(&Path),
    ) -> Result<Cluster, String> {
        let dir = TestDir::new(label).map_err(|e| format!("cannot create test directory: {e}"))?;
        let master_dir = dir.path().join("master");
        std::fs::create_dir_all(&master_dir).map_err(|e| e.to_string())?;
        prepare(&master_dir);
        let mut master = spawn_master(bin, dir.path(), "127.0.0.1:0", 0)?;
        let addr = master.wait_for_stderr("listening on ", START_TIMEOUT)?;
        let events = EventStream::connect(&addr, 1, None)
            .await
            .map_err(|e| e.to_string())?;
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            dir,
            addr,
            master: Some(master),
            master_runs: 1,
            slaves: Vec::new(),
            events,
        };
        cluster
            .events
            .expect(Pattern::ready().by("master"))
            .await
            .map_err(|e| e.to_string())?;
        for _ in 0..n_slaves {
            let idx = cluster.add_slave();
            cluster.start_slave(idx).await?;
        }
        Ok(cluster)
    }

    pub fn master_dir(&self) -> PathBuf {
        self.dir.path().join("master")
    }

    pub fn master_state(&self) -> PathBuf {
        self.dir.path().join("state").join("master")
    }

    pub fn log_path(&self) -> PathBuf {
        self.master_state().join("events.jsonl")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Adds a slave's place (not started); returns its index.
    pub fn add_slave(&mut self) -> usize {
        let idx = self.slaves.len();
        let name = slave_name(idx);
        self.slaves.push(SlaveAgent {
            dir: self.dir.path().join(&name),
            state: self.dir.path().join("state").join(&name),
            name,
            proc: None,
            runs: 0,
        });
        idx
    }

    /// Starts slave `idx` and waits for its `ready`.
    pub async fn start_slave(&mut self, idx: usize) -> Result<(), String> {
        self.spawn_slave(idx)?;
        let name = self.slaves[idx].name.clone();
        self.events
            .expect(Pattern::ready().by(&name))
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Starts slave `idx` without waiting for anything.
    pub fn spawn_slave(&mut self, idx: usize) -> Result<(), String> {
        let logs = self.logs_dir();
        let slave = &mut self.slaves[idx];
        let mut command = Command::new(&self.bin);
        command
            .arg("slave")
            .arg("--dir")
            .arg(&slave.dir)
            .arg("--bus")
            .arg(&self.addr)
            .arg("--state")
            .arg(&slave.state)
            .arg("--name")
            .arg(&slave.name)
            .env("RUST_LOG", "filesync=debug");
        let proc = Proc::spawn(&numbered(&slave.name, slave.runs), command, &logs)
            .map_err(|e| e.to_string())?;
        slave.runs += 1;
        slave.proc = Some(proc);
        Ok(())
    }

    /// Starts the master again (same directory, state and address) and waits for `ready`.
    pub async fn start_master(&mut self) -> Result<(), String> {
        let mut master = spawn_master(&self.bin, self.dir.path(), &self.addr, self.master_runs)?;
        self.master_runs += 1;
        master.wait_for_stderr("listening on ", START_TIMEOUT)?;
        self.master = Some(master);
        // The old subscription died with the old bus: follow the new one from where we were.
        let from = self.events.seen().last().map(|e| e.seq + 1).unwrap_or(1);
        let mut events = EventStream::connect(&self.addr, from, None)
            .await
            .map_err(|e| e.to_string())?;
        events.absorb(&mut self.events);
        self.events = events;
        self.events
            .expect(Pattern::ready().by("master"))
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// SIGTERM to the master; waits for a clean exit.
    pub fn stop_master(&mut self) -> Result<(), String> {
        stop(self.master.take(), "master")
    }

    /// SIGKILL to the master.
    pub fn crash_master(&mut self) {
        if let Some(mut master) = self.master.take() {
            master.crash();
        }
    }

    pub fn stop_slave(&mut self, idx: usize) -> Result<(), String> {
        let name = self.slaves[idx].name.clone();
        stop(self.slaves[idx].proc.take(), &name)
    }

    pub fn crash_slave(&mut self, idx: usize) {
        if let Some(mut proc) = self.slaves[idx].proc.take() {
            proc.crash();
        }
    }

    /// Waits for a quiet point: no event for a moment, and every notify answered by every
    /// running slave. Then a check of the log and the directories is meaningful.
    pub async fn settle(&mut self) -> Result<(), String> {
        let running: Vec<String> = self
            .slaves
            .iter()
            .filter(|s| s.proc.is_some())
            .map(|s| s.name.clone())
            .collect();
        for _ in 0..50 {
            self.events
                .wait_quiet(Duration::from_millis(150))
                .await
                .map_err(|e| e.to_string())?;
            let seen = self.events.seen();
            let all_answered = seen
                .iter()
                .filter(|e| Pattern::notify().matches(e))
                .all(|notify| {
                    running.iter().all(|name| {
                        seen.iter()
                            .any(|e| e.agent == *name && e.body.cause == Some(notify.seq))
                    })
                });
            if all_answered {
                return Ok(());
            }
        }
        Err(format!(
            "the cluster never settled: notifies are still unanswered\n{}",
            self.events.timeline()
        ))
    }

    /// Checks the whole log, and every directory against the state it implies.
    pub fn check(&self, options: CheckOptions) -> Report {
        let events = match read_log(&self.log_path()) {
            Ok(events) => events,
            Err(err) => {
                let mut report = Report::default();
                report.violations.push(crate::check::Violation {
                    invariant: 1,
                    seqs: Vec::new(),
                    message: format!("cannot read the log: {err}"),
                });
                return report;
            }
        };
        let mut report = check_log(&events, options);
        let dirs =
            std::iter::once(self.master_dir()).chain(self.slaves.iter().map(|s| s.dir.clone()));
        for dir in dirs {
            match check_dir(&report, &dir) {
                Ok(Some(violation)) => report.violations.push(violation),
                Ok(None) => {}
                Err(err) => report.violations.push(crate::check::Violation {
                    invariant: 0,
                    seqs: Vec::new(),
                    message: format!("cannot read {}: {err}", dir.display()),
                }),
            }
        }
        report
    }

    /// Panics with the report and the timeline unless the log and directories check out.
    pub fn assert_checks(&self, options: CheckOptions) {
        let report = self.check(options);
        assert!(report.is_ok(), "{report}\n{}", self.events.timeline());
    }
}

fn spawn_master(bin: &Path, root: &Path, listen: &str, run: usize) -> Result<Proc, String> {
    let mut command = Command::new(bin);
    command
        .arg("master")
        .arg("--dir")
        .arg(root.join("master"))
        .arg("--listen")
        .arg(listen)
        .arg("--state")
        .arg(root.join("state").join("master"))
        .env("RUST_LOG", "filesync=debug");
    Proc::spawn(&numbered("master", run), command, &root.join("logs")).map_err(|e| e.to_string())
}

fn stop(proc: Option<Proc>, name: &str) -> Result<(), String> {
    let Some(mut proc) = proc else { return Ok(()) };
    match proc.terminate(GRACE) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!(
            "{name} exited with {status} on SIGTERM:\n{}",
            proc.stderr_tail(20)
        )),
        None => Err(format!("{name} could not be stopped")),
    }
}
