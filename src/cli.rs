//! The command line: parses arguments (clap derive) and calls the library. Exit codes: 0
//! success, 1 a check that failed, 2 a bad invocation or a runtime error (one line on
//! stderr, never a backtrace).

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::agent::{self, default_state_dir};
use crate::bus::{Bus, BusOptions};
use crate::identity::PeerId;

const EXAMPLES: &str = "\
Examples:
  filesync demo                                   # see it work, in temporary directories
  filesync master --dir ~/src                     # terminal 1: watch ~/src, bus on 127.0.0.1:7878
  filesync slave --dir /backup/src                # terminal 2: mirror it
  filesync listen --op put --path 'docs/**'       # watch the event log live
  filesync check ~/.local/state/filesync/master/events.jsonl --dir /backup/src

Exit status:
  0  success (an agent stopped by Ctrl-C or SIGTERM after leaving the log cleanly)
  1  a check, scenario or demo that ran and failed: the report says what
  2  a bad invocation, a refused start, or a runtime error: one line on stderr

Logging: one line per lifecycle step (connected, caught up, ready, reconnected, left) and
every warning on stderr; no colour unless stderr is a terminal and NO_COLOR is unset.";

/// A live directory mirror whose correctness is proven from its event log.
#[derive(Debug, Parser)]
#[command(name = "filesync", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// More logging on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// How stderr's lines are written: text for people, json (one object per line) for
    /// log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The format of stderr's log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch DIR and publish its changes (hosting the bus unless --bus is given).
    #[command(
        after_help = "Examples:\n  filesync master --dir ~/src\n  filesync master --dir ~/src --listen 127.0.0.1:0\n  filesync master --dir ~/src --bus 10.0.0.5:7878 --bus-id BUS-ID"
    )]
    Master(MasterArgs),
    /// Mirror the master into DIR (created if missing).
    #[command(
        after_help = "Examples:\n  filesync slave --dir /backup/src\n  filesync slave --dir /backup/src --bus 127.0.0.1:41234 --name backup"
    )]
    Slave(SlaveArgs),
    /// A standalone bus, for setups where agents come and go.
    #[command(
        after_help = "Examples:\n  filesync bus\n  filesync bus --listen 0.0.0.0:7878 --peers /etc/filesync/peers --state /var/lib/filesync"
    )]
    Bus(BusArgs),
    /// Print events as they happen, filtered.
    #[command(
        after_help = "Examples:\n  filesync listen\n  filesync listen --from 1 --until-quiet 1 --json > copy.jsonl\n  filesync listen --tag consume --tag error --agent slave --path '*.txt'"
    )]
    Listen(ListenArgs),
    /// Write a bus's event log to stdout as the same JSON lines, up to its head when asked.
    #[command(
        after_help = "Examples:\n  filesync export > events.jsonl && filesync check events.jsonl\n  filesync export --bus 10.0.0.5:7878 --bus-id BUS-ID > events.jsonl"
    )]
    Export(ExportArgs),
    /// Validate an event log offline; exit 0 when it holds, 1 with a report when not.
    #[command(
        after_help = "Examples:\n  filesync check events.jsonl\n  filesync check events.jsonl --dir /backup/src --html timeline.html"
    )]
    Check(CheckArgs),
    /// Remove content nothing retained refers to any more, on a stopped bus's state; print
    /// what was freed. A running bus does this by itself every --gc-interval.
    #[command(
        after_help = "Examples:\n  filesync gc --dry-run\n  filesync gc --state /var/lib/filesync --gc-grace 0s"
    )]
    Gc(GcArgs),
    /// The versions of a path the bus still holds (within its history window).
    #[command(
        after_help = "Examples:\n  filesync history notes/todo.txt\n  filesync history big.iso --state /var/lib/filesync\n  filesync history notes/todo.txt --bus nats://127.0.0.1:4222"
    )]
    History(HistoryArgs),
    /// Write one version of a path out to a new file, verified against its SHA-256.
    #[command(
        after_help = "Examples:\n  filesync restore notes/todo.txt --at 1234 --to /tmp/todo.txt\n  filesync restore notes/todo.txt --at 1234 --to /tmp/todo.txt --bus nats://127.0.0.1:4222"
    )]
    Restore(RestoreArgs),
    /// What the bus knows: every agent, its position and lag, open errors, the log's and
    /// the state's size. Exit 0 healthy, 1 lagging, 2 failing (or the bus unreachable).
    #[command(
        after_help = "Examples:\n  filesync status\n  filesync status --bus 10.0.0.5:7878 --bus-id BUS-ID --json\n  filesync status --max-lag 1000 || alert \"mirror unhealthy\"\n\nHealth: failing when no master is connected or a slave has errors not made good;\nlagging when a connected slave is more than --max-lag notifies behind; a slave that\nis away is listed but does not count (it resyncs when it comes back)."
    )]
    Status(StatusArgs),
    /// Print this agent's ID (creating its identity the first time): what the other side
    /// pins, with --peer on a bus or --bus-id on an agent.
    #[command(
        after_help = "Examples:\n  filesync id\n  filesync id --state ~/.local/state/filesync/slave"
    )]
    Id(IdArgs),
    /// Run master, slave and listener in temporary directories and walk through a session.
    #[command(
        after_help = "Examples:\n  filesync demo\n  filesync demo --keep   # then: filesync check DIR/state/events.jsonl --html t.html"
    )]
    Demo {
        /// Keep the demo's directories (and its log) instead of removing them at the end.
        #[arg(long)]
        keep: bool,
    },
    /// Run or validate scenario files (JSON workloads; see docs/SCENARIOS.md).
    #[command(subcommand)]
    Scenario(ScenarioCommand),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    #[command(
        after_help = "Examples:\n  filesync completions bash > ~/.local/share/bash-completion/completions/filesync\n  filesync completions zsh > ~/.zfunc/_filesync"
    )]
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), generated from the same definitions as --help.
    #[command(after_help = "Examples:\n  filesync man > ~/.local/share/man/man1/filesync.1")]
    Man,
}

#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Run one scenario with real processes in temporary directories; exit 0 if it passed.
    #[command(
        after_help = "Examples:\n  filesync scenario run fixtures/scenarios/soak.json\n  filesync scenario run fixtures/scenarios/burst.json --duration 2 --report burst.json"
    )]
    Run {
        /// The scenario file.
        file: PathBuf,
        /// Run for this many seconds instead of the file's duration_s.
        #[arg(long)]
        duration: Option<f64>,
        /// Write the JSON report here.
        #[arg(long, value_name = "OUT.json")]
        report: Option<PathBuf>,
        /// Keep the run's directories, logs and timeline.html even when it passed.
        #[arg(long)]
        keep: bool,
    },
    /// Validate scenario files (each FILE, or every *.json in each DIR; default
    /// fixtures/scenarios), reporting every problem in each; exit 1 if any is wrong.
    #[command(
        after_help = "Examples:\n  filesync scenario check\n  filesync scenario check my-scenarios/ extra/soak-long.json"
    )]
    Check {
        #[arg(default_value = "fixtures/scenarios", value_name = "FILE|DIR")]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// The directory to watch.
    #[arg(long)]
    pub dir: PathBuf,
    /// Host the bus here (HOST:PORT; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7878", conflicts_with = "bus")]
    pub listen: String,
    /// Never publish paths matching this gitignore pattern (beside `.filesyncignore`,
    /// and winning over it); repeat for several.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Use a bus running elsewhere instead of hosting one.
    #[arg(long)]
    pub bus: Option<String>,
    /// Where the state lives (the bus's log and blobs when hosting it).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// This agent's name in the log.
    #[arg(long, default_value = "master")]
    pub name: String,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Take over a log that belongs to another master directory: this directory becomes
    /// the one mirrored, and whatever it lacks is deleted on the slaves.
    #[arg(long)]
    pub takeover: bool,
    /// Publish the deletion of everything when DIR is empty at start although the log says
    /// it held files (by default the master waits for it to come back: a missing mount).
    #[arg(long)]
    pub allow_empty: bool,
    #[command(flatten)]
    pub keeping: BusKeeping,
    #[command(flatten)]
    pub tls: BusTlsArgs,
    #[command(flatten)]
    pub bus_id: BusIdArgs,
    /// For test suites only: let peers hold agents at checkpoints (refused beyond loopback).
    #[arg(long, hide = true)]
    pub test_checkpoints: bool,
}

/// Who may connect to a bus over mutual TLS (for `master` and `bus`).
#[derive(Debug, Args)]
pub struct BusTlsArgs {
    /// Speak mutual TLS even on loopback (beyond it, TLS is always required).
    #[arg(long)]
    pub tls: bool,
    /// An agent that may connect: its ID, as its `filesync id` prints it (repeatable;
    /// turns TLS on).
    #[arg(long = "peer", value_name = "ID", value_parser = parse_id)]
    pub peers: Vec<PeerId>,
    /// A file of IDs that may connect, one per line (`#` comments), read again at every
    /// connection (turns TLS on).
    #[arg(long = "peers", value_name = "FILE")]
    pub peers_file: Option<PathBuf>,
}

impl BusTlsArgs {
    /// The peers, when TLS is on.
    fn peer_list(&self) -> Option<crate::bus::tls::PeerList> {
        (self.tls || !self.peers.is_empty() || self.peers_file.is_some()).then(|| {
            crate::bus::tls::PeerList {
                ids: self.peers.iter().copied().collect(),
                file: self.peers_file.clone(),
            }
        })
    }
}

fn parse_id(text: &str) -> Result<PeerId, String> {
    PeerId::parse(text)
}

/// The bus's ID, for an agent that reaches it over mutual TLS.
#[derive(Debug, Args)]
pub struct BusIdArgs {
    /// Reach the bus over mutual TLS; it must have this ID (its `filesync id`). Required
    /// for a bus beyond loopback.
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub bus_id: Option<PeerId>,
    /// With a `nats://` bus: the mirror's name, which its streams and subjects start with,
    /// so that several mirrors can share one NATS deployment.
    #[arg(long, value_name = "NAME")]
    pub subject_prefix: Option<String>,
    /// With a `nats://` bus: a NATS credentials file (user JWT and nkey seed).
    #[arg(long, value_name = "FILE", conflicts_with = "nats_nkey")]
    pub nats_creds: Option<PathBuf>,
    /// With a `nats://` bus: a file holding an nkey seed to log in with.
    #[arg(long, value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
    /// With a `nats://` bus: the CA certificate (PEM) the servers' TLS certificates are
    /// checked against; TLS is then required (beyond loopback it always is).
    #[arg(long, value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// With a `nats://` bus: how many servers keep each of the mirror's streams (1 to 5),
    /// when this agent is the first and creates them; 3 on a 3-node cluster survives the
    /// loss of any one.
    #[arg(long, value_name = "N")]
    pub nats_replicas: Option<usize>,
}

impl BusIdArgs {
    /// The address to dial: `bus`, with the NATS options folded in for a `nats://` one
    /// (which `bus::nats::NatsAddress` reads and checks).
    pub fn address(&self, bus: &str) -> anyhow::Result<String> {
        let options = [
            ("prefix", self.subject_prefix.as_ref().map(String::from)),
            (
                "creds",
                self.nats_creds.as_ref().map(|p| p.display().to_string()),
            ),
            (
                "nkey",
                self.nats_nkey.as_ref().map(|p| p.display().to_string()),
            ),
            ("ca", self.nats_ca.as_ref().map(|p| p.display().to_string())),
            ("replicas", self.nats_replicas.map(|n| n.to_string())),
        ];
        let given: Vec<String> = options
            .iter()
            .filter_map(|(key, value)| value.as_ref().map(|v| format!("{key}={v}")))
            .collect();
        if !bus.starts_with("nats://") {
            if !given.is_empty() {
                bail!("--subject-prefix and --nats-* are for a nats:// bus, not {bus}");
            }
            self.check(bus)?;
            return Ok(bus.to_owned());
        }
        if self.bus_id.is_some() {
            bail!("--bus-id is for the embedded bus; a nats:// bus is reached with --nats-ca and --nats-creds or --nats-nkey");
        }
        let mut address = bus.to_owned();
        for option in given {
            address.push(if address.contains('?') { '&' } else { '?' });
            address.push_str(&option);
        }
        if let Some(Err(err)) = crate::bus::nats::NatsAddress::parse(&address) {
            bail!("{err}");
        }
        Ok(address)
    }

    /// Refuses a bus beyond loopback without `--bus-id`: its traffic would go in clear.
    fn check(&self, bus: &str) -> anyhow::Result<()> {
        if self.bus_id.is_none() && !crate::bus::is_loopback(bus) {
            bail!("the bus at {bus} is beyond loopback: pass --bus-id ID (the bus's `filesync id`), so that we talk over mutual TLS");
        }
        Ok(())
    }

    /// For a reader of the bus (`listen`, `status`): checks the bus's address, then, over
    /// TLS, loads our identity from `state` (default: the `listener` state), creating it
    /// the first time.
    fn reader_tls(
        &self,
        bus: &str,
        state: Option<&Path>,
    ) -> anyhow::Result<Option<crate::bus::tls::ClientTls>> {
        self.address(bus)?;
        if self.bus_id.is_none() {
            return Ok(None);
        }
        let state = state.map_or_else(|| default_state_dir("listener"), Path::to_path_buf);
        std::fs::create_dir_all(&state)
            .with_context(|| format!("cannot create {}", state.display()))?;
        self.client_tls(&state)
    }

    /// The TLS settings, with our identity from `state_dir` (created there the first time).
    fn client_tls(&self, state_dir: &Path) -> anyhow::Result<Option<crate::bus::tls::ClientTls>> {
        let Some(bus_id) = self.bus_id else {
            return Ok(None);
        };
        let identity = crate::identity::Identity::load_or_create(state_dir)?;
        Ok(Some(crate::bus::tls::ClientTls {
            identity: std::sync::Arc::new(identity),
            bus_id,
        }))
    }
}

/// The shared secret, an optional second factor beside mutual TLS: given on the command
/// line, in the environment, or in a file (so that it need not show in `ps`).
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Shared secret: the bus refuses peers without it; an agent presents it.
    #[arg(
        long,
        env = "FILESYNC_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// Read the shared secret from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The secret, if one was given.
    pub fn secret(&self) -> anyhow::Result<Option<String>> {
        match &self.token_file {
            None => Ok(self.token.clone()),
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read --token-file {}", file.display()))?;
                match text.lines().next().map(str::trim) {
                    Some(secret) if !secret.is_empty() => Ok(Some(secret.to_owned())),
                    _ => bail!("--token-file {} is empty", file.display()),
                }
            }
        }
    }
}

/// How long to wait for something (`None`: forever).
#[derive(Debug, Clone, Copy)]
pub struct Patience(pub Option<std::time::Duration>);

fn parse_patience(text: &str) -> Result<Patience, String> {
    match text {
        "forever" => Ok(Patience(None)),
        _ => humantime::parse_duration(text)
            .map(|d| Patience(Some(d)))
            .map_err(|err| format!("{err} (a duration such as 30s or 5min, or `forever`)")),
    }
}

/// A duration given as seconds (`2`, `0.5`) or with a unit (`2s`, `500ms`).
fn parse_secs(text: &str) -> Result<std::time::Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(std::time::Duration::from_secs_f64(secs)),
        Ok(_) => Err(format!("{text:?} is not a duration")),
        Err(_) => humantime::parse_duration(text).map_err(|err| err.to_string()),
    }
}

/// Whether `addr` (HOST:PORT) names this machine's loopback.
/// How a bus keeps its peers, its log and its content (for `master` and `bus`).
#[derive(Debug, Args)]
pub struct BusKeeping {
    /// Drop a peer of the bus that waits for nothing and sends nothing this long.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// Keep this much of the log's history (every version of every file within it); older
    /// segments go once a checkpoint covers them and no recent slave needs them (0: keep
    /// only what slaves need).
    #[arg(long, value_name = "DURATION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub keep_history: std::time::Duration,
    /// Keep the log in segments of this many bytes; a checkpoint is written at the end of
    /// each.
    #[arg(long, value_name = "BYTES", default_value_t = crate::bus::log::DEFAULT_SEGMENT_BYTES)]
    pub segment_size: u64,
    /// Remove content only once nothing has referred to it for this long (an upload racing
    /// the collector is never lost).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub gc_grace: std::time::Duration,
    /// Look for history to drop and content to collect this often.
    #[arg(long, value_name = "DURATION", default_value = "1min", value_parser = humantime::parse_duration)]
    pub gc_interval: std::time::Duration,
    /// For test suites only: abort the process at this step of the bus's housekeeping
    /// (`bus/crash.rs`).
    #[arg(long, hide = true, value_name = "STEP")]
    pub test_crash_at: Option<String>,
}

impl BusKeeping {
    fn options(
        &self,
        state_dir: PathBuf,
        token: Option<String>,
        checkpoints: bool,
        tls: &BusTlsArgs,
    ) -> BusOptions {
        if let Some(step) = &self.test_crash_at {
            if let Err(err) = crate::bus::crash::arm(step) {
                tracing::error!("{err}");
            }
        }
        BusOptions {
            state_dir,
            token,
            checkpoints,
            idle_timeout: Some(self.idle_timeout),
            log: crate::bus::log::LogOptions {
                segment_bytes: self.segment_size.max(4096),
            },
            retention: crate::bus::retention::Retention {
                keep_history: self.keep_history,
                gc_grace: self.gc_grace,
                gc_interval: self.gc_interval.max(std::time::Duration::from_millis(100)),
            },
            tls: tls.peer_list(),
        }
    }
}

#[derive(Debug, Args)]
pub struct SlaveArgs {
    /// The directory to mirror into.
    #[arg(long)]
    pub dir: PathBuf,
    /// The bus to follow.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub bus: String,
    /// Where the slave records its position.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// This agent's name in the log.
    #[arg(long, default_value = "slave")]
    pub name: String,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Also verify the directory against the state applied this often (it is verified at
    /// every start), restoring what was changed behind the slave's back.
    #[arg(long, value_name = "INTERVAL", value_parser = humantime::parse_duration)]
    pub verify: Option<std::time::Duration>,
    /// Report what verification finds changed locally (error events) instead of restoring it.
    #[arg(long)]
    pub keep_local: bool,
    /// How long to keep trying to reach a bus that has not answered yet (retrying with
    /// backoff, at most every 2 s): a duration, or `forever` for a service started before
    /// its bus. Once it has answered, a lost bus is waited for as long as the slave runs.
    #[arg(long, value_name = "D", default_value = "10s", value_parser = parse_patience)]
    pub wait_for_bus: Patience,
    #[command(flatten)]
    pub bus_id: BusIdArgs,
}

#[derive(Debug, Args)]
pub struct BusArgs {
    /// Where to listen (HOST:PORT; port 0 picks a free one). Beyond loopback, --peer or
    /// --peers is required.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: String,
    /// Holds events.jsonl and the blob store.
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub keeping: BusKeeping,
    #[command(flatten)]
    pub tls: BusTlsArgs,
    /// For test suites only: let peers hold agents at checkpoints (refused beyond loopback).
    #[arg(long, hide = true)]
    pub test_checkpoints: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the report as one JSON object (with `health` and `reasons`).
    #[arg(long)]
    pub json: bool,
    /// A connected slave more than this many notifies behind makes the status "lagging".
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_lag: u64,
    #[command(flatten)]
    pub reader: ReaderArgs,
}

/// How a reader of the bus (`listen`, `status`, `export`) reaches it: address, secret, TLS.
#[derive(Debug, Args)]
pub struct ReaderArgs {
    /// The bus (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub bus: String,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub bus_id: BusIdArgs,
    /// Where our identity lives, for TLS (default: the `listener` state).
    #[arg(long, value_name = "SDIR")]
    pub state: Option<PathBuf>,
}

impl ReaderArgs {
    /// The address to dial (see `BusIdArgs::address`).
    pub fn address(&self) -> anyhow::Result<String> {
        self.bus_id.address(&self.bus)
    }

    /// The hello and TLS settings to connect with, as a listener named `name` that leaves
    /// no `join` unless `announce`.
    pub fn hello(
        &self,
        name: &str,
        announce: bool,
    ) -> anyhow::Result<(crate::bus::Hello, Option<crate::bus::tls::ClientTls>)> {
        let tls = self.bus_id.reader_tls(&self.bus, self.state.as_deref())?;
        let mut hello =
            crate::bus::Hello::new(crate::event::Role::Listener, name, self.token.secret()?);
        hello.quiet = !announce;
        Ok((hello, tls))
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub reader: ReaderArgs,
}

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// First seq to print (default: from now on; 1 for the whole log).
    #[arg(long)]
    pub from: Option<u64>,
    /// Stop after the event with this seq (exit 0).
    #[arg(long, value_name = "SEQ")]
    pub to: Option<u64>,
    /// Stop once no event has come for this long (exit 0): `2`, `2s`, `500ms`.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub until_quiet: Option<std::time::Duration>,
    /// Only this tag (join, ready, notify, consume, error, leave); repeat for several.
    #[arg(long)]
    pub tag: Vec<String>,
    /// Only this op (put, delete, move); repeat for several.
    #[arg(long)]
    pub op: Vec<String>,
    /// Only events by this agent; repeat for several.
    #[arg(long)]
    pub agent: Vec<String>,
    /// Only events whose path, or either end of a move, matches this pattern (gitignore's
    /// rules: `*.txt` at any depth, `docs/**` under docs/ at the top); repeat for several.
    #[arg(long, value_name = "GLOB")]
    pub path: Vec<String>,
    /// Log a `join` for this listener (by default it reads without a trace in the log).
    #[arg(long)]
    pub announce: bool,
    /// Print the log lines unchanged instead of a readable line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reader: ReaderArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The agent's state directory (default: the master's).
    #[arg(long, value_name = "SDIR")]
    pub state: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The event log (events.jsonl).
    pub log: PathBuf,
    /// Also compare this directory with the state the log implies.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Do not report notifies that slaves have not answered yet (a log cut mid-flight).
    #[arg(long)]
    pub allow_pending: bool,
    /// Also draw the log as a timeline into this self-contained HTML file.
    #[arg(long, value_name = "OUT")]
    pub html: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// The bus's state directory (the master's when it hosts the bus).
    #[arg(long, value_name = "SDIR")]
    pub state: Option<PathBuf>,
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove only what has been unreferenced this long (counted from the first pass that
    /// found it so).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub gc_grace: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The path, relative to the synced directory.
    pub path: String,
    #[command(flatten)]
    pub source: HistorySourceArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The path, relative to the synced directory.
    pub path: String,
    /// The version as of this event (`filesync history` lists them).
    #[arg(long, value_name = "SEQ")]
    pub at: u64,
    /// The new file to write it to.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    #[command(flatten)]
    pub source: HistorySourceArgs,
}

/// Where `history` and `restore` read: a bus's state directory, or a bus they ask.
#[derive(Debug, Args)]
pub struct HistorySourceArgs {
    /// The bus's state directory (the master's when it hosts the bus).
    #[arg(long, value_name = "SDIR", conflicts_with = "bus")]
    pub state: Option<PathBuf>,
    /// Or ask this bus, as a quiet listener: a `nats://` bus, which has no state directory,
    /// or an embedded one on another machine (whose log retention has not shortened).
    #[arg(long, value_name = "ADDR")]
    pub bus: Option<String>,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub bus_id: BusIdArgs,
}

impl HistorySourceArgs {
    /// The history of the bus asked, or of the state directory (the default bus's).
    async fn open(self) -> anyhow::Result<crate::history::History> {
        let Some(bus) = self.bus else {
            return crate::history::History::open(&bus_state(self.state));
        };
        let reader = ReaderArgs {
            bus,
            token: self.token,
            bus_id: self.bus_id,
            state: None,
        };
        let (hello, tls) = reader.hello("history", false)?;
        let dial = crate::bus::dial(&reader.address()?, tls);
        let (link, welcome) = dial.dial(&hello).await?;
        crate::history::History::ask(link, &welcome).await
    }
}

/// Resolves when Ctrl-C or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
}

/// Runs a parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Master(args) => run_master(args).await.map(|()| 0),
        Command::Slave(args) => {
            let state_dir = args.state.unwrap_or_else(|| default_state_dir(&args.name));
            let options = agent::slave::SlaveOptions {
                dir: args.dir,
                bus: args.bus_id.address(&args.bus)?,
                name: args.name,
                token: args.token.secret()?,
                state_dir,
                verify_every: args.verify,
                keep_local: args.keep_local,
                bus_id: args.bus_id.bus_id,
                wait_for_bus: args.wait_for_bus.0,
                dial: None,
            };
            on_workers(agent::slave::run(options, shutdown_signal()))
                .await
                .map(|()| 0)
        }
        Command::Bus(args) => {
            let state = args.state.unwrap_or_else(|| default_state_dir("bus"));
            let state_dir = crate::state::would_be_canonical(&state)?;
            let options = args.keeping.options(
                state_dir,
                args.token.secret()?,
                args.test_checkpoints,
                &args.tls,
            );
            let (bus, listener) = open_bus(&args.listen, &options).await?;
            bus.serve(listener, shutdown_signal()).await.map(|()| 0)
        }
        Command::Listen(args) => crate::listen::run(args).await,
        Command::Export(args) => crate::listen::export(args).await,
        Command::Check(args) => run_check(args),
        Command::Gc(args) => run_gc(args),
        Command::Id(args) => run_id(args),
        Command::History(args) => run_history(args).await,
        Command::Restore(args) => run_restore(args).await,
        Command::Demo { keep } => crate::demo::run(keep).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "filesync", &mut std::io::stdout());
            Ok(0)
        }
        Command::Status(args) => run_status(args).await,
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut std::io::stdout())
                .context("cannot write the manual page")?;
            Ok(0)
        }
        Command::Scenario(command) => run_scenario(command).await,
    }
}

/// Binds the bus's address (refused beyond loopback without mutual TLS), then opens and locks
/// its state; prints `listening on ADDR` on stderr. A bad address creates nothing.
async fn open_bus(
    listen: &str,
    options: &BusOptions,
) -> anyhow::Result<(Bus, tokio::net::TcpListener)> {
    let listener = crate::bus::server::bind(listen, options).await?;
    let bus = Bus::open(options)?;
    announce(&listener)?;
    Ok((bus, listener))
}

/// Prints `listening on ADDR` on stderr. Not through tracing: scripts and tests read this
/// line whatever the log level. One write, so a reader never sees half the line.
fn announce(listener: &tokio::net::TcpListener) -> anyhow::Result<()> {
    let line = format!("listening on {}\n", listener.local_addr()?);
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    Ok(())
}

async fn run_master(args: MasterArgs) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("master directory {} does not exist", args.dir.display()))?;
    if !dir.is_dir() {
        bail!("master directory {} is not a directory", dir.display());
    }
    let mut options = agent::master::MasterOptions {
        dir: dir.clone(),
        bus: String::new(),
        name: args.name.clone(),
        token: args.token.secret()?,
        takeover: args.takeover,
        allow_empty: args.allow_empty,
        tls: None,
        exclude: args.exclude.clone(),
        dial: None,
    };
    // A bad pattern is refused before anything is created.
    filesync_master::ignore::IgnoreRules::from_patterns(&args.exclude)
        .map_err(|err| anyhow::anyhow!("--exclude: {err}"))?;
    let state = args.state.unwrap_or_else(|| default_state_dir(&args.name));
    let state = crate::state::would_be_canonical(&state)?;
    crate::state::refuse_state_inside(&state, &dir, "watched directory")?;
    if let Some(bus) = args.bus {
        let bus = args.bus_id.address(&bus)?;
        if args.bus_id.bus_id.is_some() {
            std::fs::create_dir_all(&state)
                .with_context(|| format!("cannot create {}", state.display()))?;
        }
        options.tls = args.bus_id.client_tls(&state)?;
        options.bus = bus;
        return on_workers(agent::master::run(options, shutdown_signal())).await;
    }
    let bus_options = args.keeping.options(
        state.clone(),
        options.token.clone(),
        args.test_checkpoints,
        &args.tls,
    );
    let listener = crate::bus::server::bind(&args.listen, &bus_options).await?;
    let bus = Bus::open(&bus_options)?;
    let place = crate::rules::Place {
        host: agent::host_name(),
        dir: dir.to_string_lossy().into_owned(),
    };
    bus.admits_master(&args.name, place, args.takeover)
        .map_err(anyhow::Error::msg)?;
    announce(&listener)?;
    options.bus = listener.local_addr()?.to_string();
    // The master reaches the bus it hosts inside the process: no socket, no TLS, and its
    // content is not hashed a second time.
    options.dial = Some(std::sync::Arc::new(bus.local_dial(options.bus.clone())));
    let (stop_bus, bus_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bus.serve(listener, async move {
        let _ = bus_stopped.await;
    }));
    // The agent publishes its `leave` before the bus it hosts goes down.
    let result = on_workers(agent::master::run(options, shutdown_signal())).await;
    let _ = stop_bus.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!("bus: {err:#}"),
        Err(err) => tracing::error!("bus task: {err}"),
    }
    result
}

/// Runs an agent as a task on the runtime's worker threads instead of on the thread that
/// started the runtime. Its tasks (the session, the connection's reader and writer) then
/// wake each other on the same worker; from the starting thread every reply needed a futex
/// wake and a context switch (W2 profile: about a third of the slave's time outside the
/// file system).
async fn on_workers(
    agent: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::spawn(agent)
        .await
        .unwrap_or_else(|failed| Err(anyhow::anyhow!("internal error: {failed}")))
}

async fn run_scenario(command: ScenarioCommand) -> anyhow::Result<i32> {
    use crate::testkit::scenario;
    match command {
        ScenarioCommand::Check { paths } => {
            let mut files = Vec::new();
            for path in &paths {
                if path.is_dir() {
                    let found = scenario::files_in(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    if found.is_empty() {
                        bail!("no scenario files (*.json) in {}", path.display());
                    }
                    files.extend(found);
                } else {
                    files.push(path.clone());
                }
            }
            let mut bad = 0;
            for file in &files {
                match scenario::load_all(file) {
                    Ok(s) => println!(
                        "ok    {} ({} actions, {} s, {} slave(s))",
                        file.display(),
                        s.actions.len(),
                        s.duration_s,
                        s.slaves
                    ),
                    Err(errors) => {
                        bad += 1;
                        for err in errors {
                            println!("error {err}");
                        }
                    }
                }
            }
            println!("{} file(s), {bad} invalid", files.len());
            Ok(if bad == 0 { 0 } else { 1 })
        }
        ScenarioCommand::Run {
            file,
            duration,
            report,
            keep,
        } => {
            let scenario = scenario::load(&file)?;
            let bin = std::env::current_exe().context("cannot find the filesync binary")?;
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let options = scenario::RunOptions {
                duration,
                keep,
                progress: terminal.then_some(show_progress as fn(f64, f64, u64)),
                ..scenario::RunOptions::default()
            };
            let result = scenario::run_with(&scenario, &bin, &options)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            if terminal {
                eprintln!();
            }
            if let Some(out) = report {
                let json = serde_json::to_string_pretty(&result)?;
                std::fs::write(&out, json)
                    .with_context(|| format!("cannot write {}", out.display()))?;
            }
            print!("{}", result.table());
            Ok(if result.passed { 0 } else { 1 })
        }
    }
}

/// A scenario's progress on a terminal, one line rewritten in place.
fn show_progress(elapsed: f64, total: f64, actions: u64) {
    eprint!("\r  {elapsed:>6.1} s of {total:.0} s, {actions} action(s) run ");
}

/// The state directory `gc`, `history` and `restore` read: given, or the master's default.
fn bus_state(state: Option<PathBuf>) -> PathBuf {
    state.unwrap_or_else(|| default_state_dir("master"))
}

async fn run_status(args: StatusArgs) -> anyhow::Result<i32> {
    let (hello, tls) = args.reader.hello("status", false)?;
    let (client, _) = crate::bus::dial(&args.reader.address()?, tls)
        .dial(&hello)
        .await?;
    let report = crate::bus::api::call(client.status()).await?;
    let (health, reasons) = report.health(args.max_lag);
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["health"] = health.to_string().into();
        value["reasons"] = reasons.into();
        println!("{value}");
    } else {
        print!("{}", report.render(args.max_lag));
    }
    Ok(health.exit_code())
}

fn run_id(args: IdArgs) -> anyhow::Result<i32> {
    let state = bus_state(args.state);
    let state = crate::state::would_be_canonical(&state)?;
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create state directory {}", state.display()))?;
    let identity = crate::identity::Identity::load_or_create(&state)?;
    println!("{}", identity.id);
    Ok(0)
}

fn run_gc(args: GcArgs) -> anyhow::Result<i32> {
    let state = bus_state(args.state);
    if !state.join("events.jsonl").is_file() {
        anyhow::bail!("{} holds no bus state (no events.jsonl)", state.display());
    }
    // Held while collecting: a running bus holds it, and collects by itself.
    let _lock = crate::state::StateDir::open(&state).context(
        "gc works on a stopped bus's state (a running bus collects every --gc-interval)",
    )?;
    let collected = crate::bus::gc::collect_offline(&state, args.gc_grace, args.dry_run)?;
    if args.dry_run {
        println!("dry run: nothing removed");
    }
    println!("{collected}");
    Ok(0)
}

async fn run_history(args: HistoryArgs) -> anyhow::Result<i32> {
    let path = filesync_master::RelPath::new(&args.path)
        .with_context(|| format!("{:?} is not a path inside the synced directory", args.path))?;
    let history = args.source.open().await?;
    let versions = history.versions(&path)?;
    print!(
        "{}",
        crate::history::render(&path, &versions, &history).await?
    );
    Ok(0)
}

async fn run_restore(args: RestoreArgs) -> anyhow::Result<i32> {
    let path = filesync_master::RelPath::new(&args.path)
        .with_context(|| format!("{:?} is not a path inside the synced directory", args.path))?;
    let history = args.source.open().await?;
    let version = history.at(&path, args.at)?;
    if version.entry.is_none() {
        anyhow::bail!("{path} did not exist at #{}", args.at);
    }
    let written = history.restore(&version, &args.to).await?;
    println!(
        "restored {path} as of #{} ({written} bytes, sha256 verified) to {}",
        args.at,
        args.to.display()
    );
    Ok(0)
}

fn run_check(args: CheckArgs) -> anyhow::Result<i32> {
    let log = crate::check::LogFile::read(&args.log)
        .with_context(|| format!("cannot read {}", args.log.display()))?;
    let mut report = log.check(crate::check::CheckOptions {
        allow_pending: args.allow_pending,
    });
    if let Some(dir) = &args.dir {
        if let Some(violation) = crate::check::check_dir(&report, dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
        {
            report.violations.push(violation);
        }
    }
    if let Some(out) = &args.html {
        let html = crate::html::render(&log.events, Some(&report), &[]);
        std::fs::write(out, html).with_context(|| format!("cannot write {}", out.display()))?;
    }
    print!("{report}");
    Ok(if report.is_ok() { 0 } else { 1 })
}
