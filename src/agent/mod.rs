//! Agents: the wiring between the brains (`filesync-master`, `filesync-slave`) and the bus.
//!
//! - [`master`]: watch, reconcile with the log, upload content, publish notifies.
//! - [`upload`]: a large file's chunks, sent while it is read, only those the bus lacks.
//! - [`slave`]: follow the log from a durable position, apply, answer each notify.
//! - [`retry`]: the changes a slave failed to apply, tried again until they apply.
//! - [`verify`]: a slave's directory compared with the state it applied, and restored.
//! - [`chunked`]: a slave applies a file stored in chunks, reusing those it holds.
//! - [`follow`]: an idle slave receives a new large file while it is being uploaded.
//! - [`progress`]: bars for long work, on a terminal only.
//! - `write_behind`: a staged file written one piece behind whoever fills it.

pub mod chunked;
pub mod follow;
pub mod master;
pub mod progress;
pub mod retry;
pub mod slave;
pub mod upload;
pub mod verify;
mod write_behind;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::{Path, PathBuf};

use std::time::Duration;

use std::collections::HashMap;

/// The tracing target of the lines a user sees at the default level: connected, caught up,
/// ready, reconnected, left (`main.rs` lets it through at `info`; the rest stays at `warn`).
pub const LIFECYCLE: &str = "filesync::lifecycle";

use filesync_master::hash::ContentHash;
use filesync_master::{Change, Model};

use std::sync::Arc;

use crate::bus::api::{call, Dial, Link};
use crate::bus::{ClientError, Hello, Subscription, Welcome};
use crate::checkpoint::Snapshot;
use crate::event::{Draft, Role, Tag};

/// How long an agent keeps trying to reach a bus that has never answered.
pub const FIRST_CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// How long an agent starting up waits for its name (or the master's place) to be let go by
/// a connection the bus has not seen close yet (a predecessor killed a moment ago). A
/// second agent started by mistake is refused after this.
pub const FIRST_BUSY_PATIENCE: Duration = Duration::from_secs(3);

/// Backoff between reconnection attempts: quick at first, then at most every two seconds.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(6)).min(2000))
}

/// The longest wait before asking again for a name another connection holds.
const BUSY_RETRY: Duration = Duration::from_millis(250);

/// How a session ended.
pub enum SessionEnd {
    /// Shutdown was asked for and done.
    Stopped,
    /// The bus went away; reconnect.
    BusLost(ClientError),
}

/// How long to keep trying: while the bus cannot be reached, and while it says what we
/// need is held by another connection (`None`: for as long as the agent runs).
#[derive(Debug, Clone, Copy)]
struct Patience {
    unreachable: Option<Duration>,
    busy: Option<Duration>,
}

/// Connects, retrying with backoff within `patience`. Returns `None` when shutdown came
/// first.
async fn connect_with_retry(
    dial: &dyn Dial,
    hello: &Hello,
    patience: Patience,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<(Link, Welcome)>, ClientError> {
    let started = tokio::time::Instant::now();
    let mut attempt = 0;
    loop {
        let limit = match dial.dial(hello).await {
            Ok(connected) => return Ok(Some(connected)),
            Err(err) if err.is_connection() => (err, patience.unreachable),
            Err(err @ ClientError::Busy(_)) => (err, patience.busy),
            Err(err) => return Err(err),
        };
        // A name held by a connection about to close (or a lease about to expire, on
        // NATS) is free soon: asked again often, not after a growing wait.
        let wait = match &limit.0 {
            ClientError::Busy(_) => backoff(attempt).min(BUSY_RETRY),
            _ => backoff(attempt),
        };
        match limit {
            (err, Some(limit)) if started.elapsed() >= limit => return Err(err),
            // A name held by a connection about to close is the common case: quiet.
            (err @ ClientError::Busy(_), _) => tracing::debug!("{err}; retrying"),
            (err, _) if attempt == 3 => tracing::warn!("{err}; retrying"),
            _ => {}
        }
        tokio::select! {
            _ = &mut *shutdown => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        attempt += 1;
    }
}

/// An agent's way to the bus: patient (`FIRST_CONNECT_PATIENCE`) until the bus has answered
/// once, then reconnecting for as long as the agent runs (a master restarting its bus).
pub struct Connector {
    dial: Arc<dyn Dial>,
    hello: Hello,
    patience: Patience,
    /// Connections made so far: the first is "connected", the next ones "reconnected".
    sessions: u32,
}

impl Connector {
    /// The way to the bus for a master or slave syncing `dir` (its absolute path) on this
    /// host.
    pub fn new(
        dial: Arc<dyn Dial>,
        role: Role,
        name: &str,
        token: Option<String>,
        dir: &Path,
    ) -> Connector {
        let mut hello = Hello::new(role, name, token);
        hello.dir = Some(dir.to_string_lossy().into_owned());
        hello.host = Some(host_name());
        Connector {
            dial,
            hello,
            sessions: 0,
            patience: Patience {
                unreachable: Some(FIRST_CONNECT_PATIENCE),
                busy: Some(FIRST_BUSY_PATIENCE),
            },
        }
    }

    /// How long the first connection keeps trying a bus that does not answer (default
    /// `FIRST_CONNECT_PATIENCE`; `None`: forever).
    pub fn wait_for_bus(mut self, patience: Option<Duration>) -> Connector {
        self.patience.unreachable = patience;
        self
    }

    /// A master that takes the log over from the master it belongs to (`--takeover`).
    pub fn takeover(mut self, takeover: bool) -> Connector {
        self.hello.takeover = takeover;
        self
    }

    /// The next connection, or `None` when shutdown came first. Fails when a bus that never
    /// answered stays unreachable past the first patience, or refuses us.
    pub async fn connect(
        &mut self,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<Option<(Link, Welcome)>> {
        let connected = connect_with_retry(&*self.dial, &self.hello, self.patience, shutdown)
            .await
            .map_err(|err| match err {
                ClientError::Rejected(_) | ClientError::Busy(_) | ClientError::Connect { .. } => {
                    anyhow::Error::new(err)
                }
                err => anyhow::Error::new(err)
                    .context(format!("bus unreachable at {}", self.dial.describe())),
            })?;
        self.patience = Patience {
            unreachable: None,
            busy: None,
        };
        if let Some((link, welcome)) = &connected {
            let again = if self.sessions == 0 { "" } else { "re" };
            // A link that reads a view of the log was told the newest event of its view.
            let log = if link.reads_whole_log() {
                "log"
            } else {
                "its view of the log"
            };
            tracing::info!(
                target: LIFECYCLE,
                "{again}connected to the bus at {} as {} {} ({log} at #{})",
                self.dial.describe(),
                self.hello.role,
                self.hello.name,
                welcome.head
            );
            self.sessions += 1;
        }
        Ok(connected)
    }
}

/// Says goodbye in the log (a `leave` event) and on stderr, at a clean stop.
pub async fn leave(client: &Link) {
    match call(client.publish(Draft::tagged(Tag::Leave))).await {
        Ok(seq) => tracing::info!(target: LIFECYCLE, "left the bus (#{seq})"),
        Err(err) => tracing::warn!("could not publish leave: {err}"),
    }
}

/// This machine's name, as the bus records it beside an agent's directory.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The state the log's notifies imply up to a `seq`.
#[derive(Debug, Default)]
pub struct Replayed {
    pub model: Model,
    /// The manifest (hex) of each content stored in chunks, by the content's SHA-256: the
    /// same bytes are always cut the same way, so one per content, whatever its path.
    pub manifests: HashMap<ContentHash, String>,
}

impl From<Snapshot> for Replayed {
    fn from(snapshot: Snapshot) -> Replayed {
        Replayed {
            model: snapshot.model,
            manifests: snapshot.manifests,
        }
    }
}

/// Every notify up to `upto`, replayed (the master reconciles its directory with it; a
/// slave verifies its own against it): from seq 1, or, when retention removed the start of
/// the log, from the checkpoint covering what was removed. `Truncated` when the state at
/// `upto` is no longer known (the log starts after it).
pub async fn replay_notifies(client: &Link, upto: u64) -> Result<Replayed, ClientError> {
    let mut replayed = Replayed::default();
    let mut subscription = Subscription::new(client.clone(), 1);
    while subscription.position() <= upto {
        let event = match subscription.next().await {
            Ok(event) => event,
            // (`start` past our position: a bus saying otherwise would have us loop.)
            Err(ClientError::Truncated { start })
                if start > subscription.position() && start - 1 <= upto =>
            {
                replayed = call(client.checkpoint(start - 1)).await?.into();
                subscription = Subscription::new(client.clone(), start);
                continue;
            }
            Err(err) => return Err(err),
        };
        if event.tag() != Some(Tag::Notify) {
            continue;
        }
        match event.body.change() {
            Ok(change) => {
                if let (Change::Put { entry, .. }, Some(manifest)) = (&change, &event.body.manifest)
                {
                    if let Some(sha256) = entry.sha256 {
                        replayed.manifests.insert(sha256, manifest.clone());
                    }
                }
                if let Err(err) = replayed.model.apply(&change) {
                    tracing::warn!("log #{}: {err}; skipped", event.seq);
                }
            }
            Err(err) => tracing::warn!("log #{}: unreadable notify: {err}", event.seq),
        }
    }
    Ok(replayed)
}

/// `$XDG_STATE_HOME/filesync/NAME`, or `~/.local/state/filesync/NAME`.
pub fn default_state_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("filesync").join(name)
}
