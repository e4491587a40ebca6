//! `Cluster`: a master (hosting the bus on a free port) and N slaves as real processes under
//! a `Plan`, each in its own directory with its own state, started in order and awaited until
//! `ready`; and an `EventStream` on the bus from `seq` 1, so a test sees the whole log.
//!
//! Every step checks the plan first, so an agent that died unexpectedly fails the test by
//! name with the tail of its log. A test that panics keeps its directory and gets
//! `timeline.html` there: the log drawn as lanes, with the checker's verdict.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::listen::EventStream;
use super::pattern::Pattern;
use super::plan::{Plan, ProcId};
use crate::bus::tls::ClientTls;
use crate::check::{check_dir_excluding, check_log, CheckOptions, LogFile, Report, Violation};
use crate::event::Tag;
use crate::identity::Identity;
use filesync_master::tree::walk_published;
use filesync_master::Kind;
use std::sync::Arc;

/// How long a process may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `settle` waits for a quiet point before it gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// One slave's place.
pub struct SlaveAgent {
    pub name: String,
    pub dir: PathBuf,
    pub state: PathBuf,
    pub proc: Option<ProcId>,
    /// More arguments for `filesync slave` (`--keep-local`, `--verify 1s`...).
    pub args: Vec<String>,
}

/// A running system under test.
pub struct Cluster {
    bin: PathBuf,
    pub plan: Plan,
    /// The bus address (the master's `--listen`), fixed for restarts.
    pub addr: String,
    pub master: Option<ProcId>,
    pub slaves: Vec<SlaveAgent>,
    pub events: EventStream,
    /// More arguments for `filesync master`, at every start.
    master_args: Vec<String>,
    agent_log: AgentLog,
    /// Present when every connection is mutual TLS (`ClusterBuilder::tls`).
    tls: Option<ClusterTls>,
    pub backend: Backend,
    /// The servers of a `Backend::NatsCluster`, to kill and restart.
    pub nats_nodes: Vec<super::nats::Node>,
}

/// A cluster over mutual TLS: the bus's ID (the master's), the test kit's own identity
/// (its listener), and the file of IDs the bus lets in (each slave's, added as it is).
struct ClusterTls {
    client: ClientTls,
    peers_file: PathBuf,
}

impl ClusterTls {
    /// Creates the master's and the test kit's identities under `root/state`, and the
    /// peers file naming the test kit.
    fn create(root: &Path) -> Result<ClusterTls, String> {
        let state = root.join("state");
        let load = |name: &str| {
            let dir = state.join(name);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            Identity::load_or_create(&dir).map_err(|e| format!("{e:#}"))
        };
        let bus = load("master")?;
        let kit = load("testkit")?;
        let peers_file = root.join("peers");
        std::fs::write(&peers_file, format!("{}  # the test kit\n", kit.id))
            .map_err(|e| e.to_string())?;
        Ok(ClusterTls {
            client: ClientTls {
                identity: Arc::new(kit),
                bus_id: bus.id,
            },
            peers_file,
        })
    }

    /// Creates a slave's identity in its state, and lets it in.
    fn admit(&self, state: &Path, name: &str) -> Result<(), String> {
        std::fs::create_dir_all(state).map_err(|e| e.to_string())?;
        let id = Identity::load_or_create(state)
            .map_err(|e| format!("{e:#}"))?
            .id;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.peers_file)
            .map_err(|e| e.to_string())?;
        std::io::Write::write_all(&mut file, format!("{id}  # {name}\n").as_bytes())
            .map_err(|e| e.to_string())
    }
}

/// Which bus a cluster runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The master hosts the embedded bus on a free port.
    #[default]
    Embedded,
    /// A `nats-server` with JetStream, started for the test on a free port
    /// (`testkit::nats`); the master and slaves use it with `--bus nats://...`.
    Nats,
    /// Three `nats-server`s in one JetStream cluster on loopback, the mirror's streams
    /// replicated on all three (`?replicas=3` in the address); the agents know every node.
    NatsCluster,
}

impl Backend {
    fn is_nats(self) -> bool {
        matches!(self, Backend::Nats | Backend::NatsCluster)
    }
}

/// How much the agents log into their per-process logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentLog {
    /// `RUST_LOG=filesync=debug`: a line per event, what a failed test's kept logs need.
    Debug,
    /// The binary's own default, as a user runs it: what a benchmark must measure (a debug
    /// line per event is real work).
    Default,
}

/// The `--name` of slave `idx`: `slave`, `slave-2`, `slave-3`...
pub fn slave_name(idx: usize) -> String {
    if idx == 0 {
        "slave".into()
    } else {
        format!("slave-{}", idx + 1)
    }
}

/// Fills the master directory before the master starts.
type Prepare<'a> = Box<dyn FnOnce(&Path) + 'a>;

/// How to start a cluster.
pub struct ClusterBuilder<'a> {
    bin: PathBuf,
    label: String,
    n_slaves: usize,
    master_args: Vec<String>,
    agent_log: AgentLog,
    prepare: Option<Prepare<'a>>,
    tls: bool,
    backend: Backend,
}

impl<'a> ClusterBuilder<'a> {
    /// How many slaves to start (default 1).
    pub fn slaves(mut self, n: usize) -> Self {
        self.n_slaves = n;
        self
    }

    /// Start the bus with checkpoints enabled (`--test-checkpoints`), for a `Runner`.
    pub fn checkpoints(mut self) -> Self {
        self.master_args.push("--test-checkpoints".into());
        self
    }

    /// More arguments for `filesync master` (`--idle-timeout 2s`...), at every start.
    pub fn master_args(mut self, args: &[&str]) -> Self {
        self.master_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Every connection over mutual TLS: the master's bus lets in only the IDs of the test
    /// kit and of the slaves it adds (`--tls --peers FILE`), and each slave pins the bus's
    /// ID (`--bus-id`).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Which bus to run on (default: `Backend::Embedded`).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// How much the agents log (default: `AgentLog::Debug`).
    pub fn agent_log(mut self, level: AgentLog) -> Self {
        self.agent_log = level;
        self
    }

    /// Fill the master directory before the master starts.
    pub fn prepare(mut self, prepare: impl FnOnce(&Path) + 'a) -> Self {
        self.prepare = Some(Box::new(prepare));
        self
    }

    pub async fn start(self) -> Result<Cluster, String> {
        let mut plan = Plan::new(&self.label).map_err(|e| e.to_string())?;
        let master_dir = plan.dir().join("master");
        std::fs::create_dir_all(&master_dir).map_err(|e| e.to_string())?;
        if let Some(prepare) = self.prepare {
            prepare(&master_dir);
        }
        let mut master_args = self.master_args;
        let tls = match self.tls {
            true => {
                let tls = ClusterTls::create(plan.dir())?;
                master_args.push("--tls".into());
                master_args.push("--peers".into());
                master_args.push(tls.peers_file.to_string_lossy().into_owned());
                Some(tls)
            }
            false => None,
        };
        let mut nats_nodes = Vec::new();
        let bus = match self.backend {
            Backend::Embedded => BusPlace::Host("127.0.0.1:0".into()),
            Backend::Nats | Backend::NatsCluster if tls.is_some() => {
                return Err("a NATS cluster's TLS is the NATS server's: no --tls".into())
            }
            Backend::Nats => BusPlace::Join(super::nats::start(&mut plan)?),
            Backend::NatsCluster => {
                let (nodes, addr) = super::nats::start_cluster(&mut plan, 3)?;
                nats_nodes = nodes;
                // Whoever comes first makes the streams: every agent asks for 3 replicas.
                BusPlace::Join(format!("{addr}?replicas=3"))
            }
        };
        let master = spawn_master(&mut plan, &self.bin, &bus, &master_args, self.agent_log)?;
        let addr = bus.address(&mut plan, master)?;
        let client = tls.as_ref().map(|t| &t.client);
        let events = EventStream::connect_with(&addr, 1, None, client)
            .await
            .map_err(|e| e.to_string())?;
        let mut events = events;
        if self.backend == Backend::NatsCluster {
            // A new cluster makes the mirror's replicated streams before the master is
            // ready: slower than one server.
            events.quiet = Duration::from_secs(20);
        }
        let mut cluster = Cluster {
            bin: self.bin,
            plan,
            addr,
            master: Some(master),
            slaves: Vec::new(),
            events,
            master_args,
            agent_log: self.agent_log,
            tls,
            backend: self.backend,
            nats_nodes,
        };
        cluster.expect_ready("master").await?;
        for _ in 0..self.n_slaves {
            let idx = cluster.add_slave();
            cluster.start_slave(idx).await?;
        }
        Ok(cluster)
    }
}

impl Cluster {
    pub fn builder(bin: &Path, label: &str) -> ClusterBuilder<'static> {
        ClusterBuilder {
            bin: bin.to_path_buf(),
            label: label.to_owned(),
            n_slaves: 1,
            master_args: Vec::new(),
            agent_log: AgentLog::Debug,
            prepare: None,
            tls: false,
            backend: Backend::Embedded,
        }
    }

    /// Starts a master and `n_slaves` slaves and waits for each one's `ready`.
    pub async fn start(bin: &Path, label: &str, n_slaves: usize) -> Result<Cluster, String> {
        Cluster::builder(bin, label).slaves(n_slaves).start().await
    }

    /// Like `start`, with a hook to fill the master directory before the master starts.
    pub async fn start_with(
        bin: &Path,
        label: &str,
        n_slaves: usize,
        prepare: impl FnOnce(&Path),
    ) -> Result<Cluster, String> {
        Cluster::builder(bin, label)
            .slaves(n_slaves)
            .prepare(prepare)
            .start()
            .await
    }

    /// The test directory.
    pub fn dir(&self) -> &Path {
        self.plan.dir()
    }

    /// Keeps the test directory (and its logs) after the test; returns its path.
    pub fn keep(&mut self) -> PathBuf {
        self.plan.keep()
    }

    pub fn master_dir(&self) -> PathBuf {
        self.dir().join("master")
    }

    pub fn master_state(&self) -> PathBuf {
        self.dir().join("state").join("master")
    }

    pub fn log_path(&self) -> PathBuf {
        self.master_state().join("events.jsonl")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.plan.logs_dir()
    }

    /// The master's process id, while it runs.
    pub fn master_pid(&mut self) -> Option<u32> {
        self.master.map(|id| self.plan.proc(id).pid())
    }

    /// Slave `idx`'s process id, while it runs.
    pub fn slave_pid(&mut self, idx: usize) -> Option<u32> {
        self.slaves[idx].proc.map(|id| self.plan.proc(id).pid())
    }

    async fn expect_ready(&mut self, agent: &str) -> Result<(), String> {
        self.plan.check().map_err(|e| e.to_string())?;
        self.events
            .expect(Pattern::ready().by(agent))
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Adds a slave's place (not started); returns its index.
    pub fn add_slave(&mut self) -> usize {
        let idx = self.slaves.len();
        let name = slave_name(idx);
        let state = self.dir().join("state").join(&name);
        let mut args = Vec::new();
        if let Some(tls) = &self.tls {
            if let Err(err) = tls.admit(&state, &name) {
                panic!("cannot make {name}'s identity: {err}");
            }
            args = vec!["--bus-id".into(), tls.client.bus_id.to_string()];
        }
        self.slaves.push(SlaveAgent {
            dir: self.dir().join(&name),
            state,
            name,
            proc: None,
            args,
        });
        idx
    }

    /// Starts slave `idx` and waits for its `ready`.
    pub async fn start_slave(&mut self, idx: usize) -> Result<(), String> {
        self.spawn_slave(idx)?;
        let name = self.slaves[idx].name.clone();
        self.expect_ready(&name).await
    }

    /// Starts slave `idx` without waiting for anything.
    pub fn spawn_slave(&mut self, idx: usize) -> Result<(), String> {
        let slave = &self.slaves[idx];
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
            .args(&slave.args);
        self.agent_log.apply(&mut command);
        let name = slave.name.clone();
        let id = self.plan.spawn(&name, command).map_err(|e| e.to_string())?;
        self.slaves[idx].proc = Some(id);
        Ok(())
    }

    /// Starts the master again (same directory, state and address) and waits for `ready`.
    pub async fn start_master(&mut self) -> Result<(), String> {
        self.spawn_master().await?;
        self.expect_ready("master").await
    }

    /// Starts the master again and follows its bus, without waiting for its `ready`.
    pub async fn spawn_master(&mut self) -> Result<(), String> {
        let bus = match self.backend {
            Backend::Embedded => BusPlace::Host(self.addr.clone()),
            Backend::Nats | Backend::NatsCluster => BusPlace::Join(self.addr.clone()),
        };
        let master = spawn_master(
            &mut self.plan,
            &self.bin,
            &bus,
            &self.master_args,
            self.agent_log,
        )?;
        self.master = Some(master);
        bus.address(&mut self.plan, master)?;
        if self.backend.is_nats() {
            // The bus did not go away with the master: the subscription goes on.
            return Ok(());
        }
        // The old subscription died with the old bus: follow the new one from where we were.
        let from = self.events.seen().last().map(|e| e.seq + 1).unwrap_or(1);
        let client = self.tls.as_ref().map(|t| &t.client);
        let mut events = EventStream::connect_with(&self.addr, from, None, client)
            .await
            .map_err(|e| e.to_string())?;
        events.absorb(&mut self.events);
        self.events = events;
        Ok(())
    }

    /// The arguments `filesync master` gets from its next start on.
    pub fn set_master_args(&mut self, args: &[&str]) {
        self.master_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Waits until the master's stderr has a line containing `needle`; returns the rest of
    /// that line.
    pub fn master_says(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let id = self.master.ok_or("the master is not running")?;
        self.plan.proc(id).wait_for_stderr(needle, timeout)
    }

    /// Waits until running slave `idx` has written a stderr line containing `needle`.
    pub fn slave_says(
        &mut self,
        idx: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let id = self.slaves[idx].proc.ok_or("the slave is not running")?;
        self.plan.proc(id).wait_for_stderr(needle, timeout)
    }

    /// SIGTERM to the master; it must exit 0.
    pub fn stop_master(&mut self) -> Result<(), String> {
        let Some(id) = self.master.take() else {
            return Ok(());
        };
        self.plan.stop(id).map_err(|e| e.to_string())
    }

    /// Waits for the master to end by itself, as `expected`, within `timeout` (a crash
    /// point it was started with, a refusal).
    pub fn master_exits(&mut self, expected: super::Exit, timeout: Duration) -> Result<(), String> {
        let Some(id) = self.master.take() else {
            return Err("the master is not running".into());
        };
        self.plan
            .wait(id, expected, timeout)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// SIGKILL to the master.
    pub fn crash_master(&mut self) -> Result<(), String> {
        let Some(id) = self.master.take() else {
            return Ok(());
        };
        self.plan.crash(id).map_err(|e| e.to_string())
    }

    /// SIGTERM to slave `idx`; it must exit 0.
    pub fn stop_slave(&mut self, idx: usize) -> Result<(), String> {
        let Some(id) = self.slaves[idx].proc.take() else {
            return Ok(());
        };
        self.plan.stop(id).map_err(|e| e.to_string())
    }

    /// SIGKILL to slave `idx`.
    pub fn crash_slave(&mut self, idx: usize) -> Result<(), String> {
        let Some(id) = self.slaves[idx].proc.take() else {
            return Ok(());
        };
        self.plan.crash(id).map_err(|e| e.to_string())
    }

    /// Waits for a quiet point: no event for a moment, every notify answered by every running
    /// slave, and (while the master runs) the master directory fully published: its paths,
    /// kinds and sizes are those the log's notifies imply. Quiet alone is not enough: a master
    /// busy hashing a large file publishes nothing for a while. Then a check of the log and
    /// the directories is meaningful.
    pub async fn settle(&mut self) -> Result<(), String> {
        // By time, not by rounds: on a loaded machine (the suite's NATS cluster beside it)
        // a slave may catch up slowly, with quiet moments all along.
        let deadline = std::time::Instant::now() + SETTLE_LIMIT;
        let mut missing = String::new();
        while std::time::Instant::now() < deadline {
            self.plan.check().map_err(|e| e.to_string())?;
            self.events
                .wait_quiet(Duration::from_millis(150))
                .await
                .map_err(|e| e.to_string())?;
            missing = match self.unanswered() {
                Some(unanswered) => unanswered,
                None if self.master.is_none() => return Ok(()),
                None => match self.master_dir_unpublished() {
                    Some(unpublished) => unpublished,
                    None => return Ok(()),
                },
            };
        }
        let skipped = match self.events.skipped_to() {
            0 => String::new(),
            to => format!(" (the test kit's stream skipped to #{to}: retention)"),
        };
        Err(format!(
            "the cluster never settled within {} s: {missing}{skipped}\n{}",
            SETTLE_LIMIT.as_secs(),
            self.events.timeline()
        ))
    }

    /// Which running slave has not answered which notifies, if one has not (a slave that
    /// resynced from a checkpoint holds every notify up to it; and where retention made
    /// the test kit's stream skip events, notifies before the skip may have been answered
    /// unseen: only those after it count).
    fn unanswered(&self) -> Option<String> {
        let seen = self.events.seen();
        // Indexed once a round: a long run's log has hundreds of thousands of events.
        let mut answered: HashSet<(&str, u64)> = HashSet::new();
        let mut resynced: HashMap<&str, u64> = HashMap::new();
        for e in seen {
            if let Some(cause) = e.body.cause {
                answered.insert((e.agent.as_str(), cause));
            }
            if let (Some(Tag::Ready), Some(checkpoint)) = (e.tag(), e.body.resync) {
                let at = resynced.entry(e.agent.as_str()).or_default();
                *at = (*at).max(checkpoint);
            }
        }
        let skipped = self.events.skipped_to().saturating_sub(1);
        let mut running = self.slaves.iter().filter(|s| s.proc.is_some());
        running.find_map(|slave| {
            let name = slave.name.as_str();
            let held = resynced.get(name).copied().unwrap_or(0).max(skipped);
            let open: Vec<u64> = seen
                .iter()
                .filter(|e| Pattern::notify().matches(e))
                .map(|e| e.seq)
                .filter(|&seq| seq > held && !answered.contains(&(name, seq)))
                .collect();
            let first = open.first()?;
            Some(format!(
                "slave {name} has not answered {} notifies, the first #{first}",
                open.len()
            ))
        })
    }

    /// What in the master directory the log does not imply (its paths, kinds and sizes
    /// against the log's notifies), if anything.
    fn master_dir_unpublished(&self) -> Option<String> {
        // From the bus's log (and the checkpoint a truncated one goes on from): the stream
        // may have missed what retention removed before it read it.
        let lenient = CheckOptions {
            allow_pending: true,
        };
        let published = match self.read_log() {
            Ok(log) => log.check(lenient).master_state,
            Err(_) => check_log(self.events.seen(), lenient).master_state,
        };
        let root = self.master_dir();
        let ignore = filesync_master::ignore::IgnoreRules::load_with(&root, &self.excludes());
        let mut on_disk = 0usize;
        let mut differ = Vec::new();
        for item in walk_published(&root, &root, &ignore) {
            let item = match item {
                Ok(item) => item,
                Err(err) => return Some(format!("the master directory cannot be read: {err}")),
            };
            let path = item.path();
            let (Ok(rel), Ok(meta)) = (
                filesync_master::RelPath::from_full(&root, path),
                path.symlink_metadata(),
            ) else {
                return Some(format!("{} cannot be read", path.display()));
            };
            let Some(kind) = Kind::of(&meta) else {
                continue;
            };
            match published.get(&rel) {
                Some(entry)
                    if entry.kind == kind && (kind != Kind::File || entry.size == meta.len()) => {}
                _ => differ.push(rel),
            }
            on_disk += 1;
        }
        match differ.first() {
            Some(first) => Some(format!(
                "{} paths of the master directory are not as the log says, the first {first}",
                differ.len()
            )),
            None if on_disk != published.len() => Some(format!(
                "the log implies {} paths, the master directory holds {on_disk}",
                published.len()
            )),
            None => None,
        }
    }

    /// What the master was told never to publish (`--exclude GLOB`, as it was started).
    fn excludes(&self) -> Vec<String> {
        self.master_args
            .windows(2)
            .filter(|pair| pair[0] == "--exclude")
            .map(|pair| pair[1].clone())
            .collect()
    }

    /// The whole log: the embedded bus's files, or, on NATS, what the test kit's stream read
    /// of it from `seq` 1 (the log is never truncated there).
    pub fn read_log(&self) -> std::io::Result<LogFile> {
        match self.backend {
            Backend::Embedded => LogFile::read(&self.log_path()),
            Backend::Nats | Backend::NatsCluster => Ok(LogFile {
                base: None,
                events: self.events.seen().to_vec(),
            }),
        }
    }

    /// Checks the whole log, and every directory against the state it implies.
    pub fn check(&self, options: CheckOptions) -> Report {
        let log = match self.read_log() {
            Ok(log) => log,
            Err(err) => {
                let mut report = Report::default();
                report.violations.push(Violation {
                    invariant: crate::check::Invariant::SeqAndTime,
                    seqs: Vec::new(),
                    message: format!("cannot read the log: {err}"),
                });
                return report;
            }
        };
        let mut report = log.check(options);
        let dirs =
            std::iter::once(self.master_dir()).chain(self.slaves.iter().map(|s| s.dir.clone()));
        let excludes = self.excludes();
        for dir in dirs {
            match check_dir_excluding(&report, &dir, &excludes) {
                Ok(Some(violation)) => report.violations.push(violation),
                Ok(None) => {}
                Err(err) => report.violations.push(Violation {
                    invariant: crate::check::Invariant::Directory,
                    seqs: Vec::new(),
                    message: format!("cannot read {}: {err}", dir.display()),
                }),
            }
        }
        report
    }

    /// Panics with the report and the timeline unless every agent is alive as planned and the
    /// log and directories check out.
    pub fn assert_checks(&mut self, options: CheckOptions) {
        if let Err(err) = self.plan.check() {
            panic!("{err}\n{}", self.events.timeline());
        }
        let report = self.check(options);
        assert!(report.is_ok(), "{report}\n{}", self.events.timeline());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // The test failed: draw what happened next to the logs it keeps.
        let log = self.read_log().unwrap_or_else(|_| LogFile {
            base: None,
            events: self.events.seen().to_vec(),
        });
        let report = log.check(CheckOptions {
            allow_pending: true,
        });
        let events = log.events;
        let html = crate::html::render(&events, Some(&report), &self.events.last_unmet());
        let out = self.dir().join("timeline.html");
        if std::fs::write(&out, html).is_ok() {
            eprintln!("timeline of the failed test: {}", out.display());
        }
    }
}

impl AgentLog {
    fn apply(self, command: &mut Command) {
        match self {
            AgentLog::Debug => command.env("RUST_LOG", "filesync=debug"),
            AgentLog::Default => command.env_remove("RUST_LOG"),
        };
    }
}

/// Where the master's bus is: hosted by it (`--listen`), or elsewhere (`--bus`).
enum BusPlace {
    Host(String),
    Join(String),
}

impl BusPlace {
    /// The bus's address once the master started: the one it printed when hosting.
    fn address(&self, plan: &mut Plan, master: ProcId) -> Result<String, String> {
        match self {
            BusPlace::Host(_) => plan
                .proc(master)
                .wait_for_stderr("listening on ", START_TIMEOUT),
            BusPlace::Join(addr) => Ok(addr.clone()),
        }
    }
}

fn spawn_master(
    plan: &mut Plan,
    bin: &Path,
    bus: &BusPlace,
    args: &[String],
    agent_log: AgentLog,
) -> Result<ProcId, String> {
    let root = plan.dir().to_path_buf();
    let mut command = Command::new(bin);
    command.arg("master").arg("--dir").arg(root.join("master"));
    match bus {
        BusPlace::Host(listen) => command.arg("--listen").arg(listen),
        BusPlace::Join(addr) => command.arg("--bus").arg(addr),
    };
    command
        .arg("--state")
        .arg(root.join("state").join("master"));
    agent_log.apply(&mut command);
    command.args(args);
    plan.spawn("master", command).map_err(|e| e.to_string())
}
