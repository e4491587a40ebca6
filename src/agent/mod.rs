//! Agents: the wiring between the brains (`filesync-master`, `filesync-slave`) and the bus.
//!
//! - [`master`]: watch, reconcile with the log, upload content, publish notifies.
//! - [`slave`]: follow the log from a durable position, apply, answer each notify.
//! - [`early`]: an idle slave follows large uploads as they arrive (its copy is written
//!   while the bus writes its own), and the slave adopts the content when its notify comes.

pub mod early;
pub mod master;
pub mod slave;

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::Context;
use std::time::Duration;

use crate::bus::{BusClient, ClientError, Hello, Welcome};
use crate::event::Role;

/// How long an agent keeps trying to reach a bus that has never answered.
pub const FIRST_CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// Backoff between reconnection attempts: quick at first, then at most every two seconds.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(6)).min(2000))
}

/// How a session ended.
pub enum SessionEnd {
    /// Shutdown was asked for and done.
    Stopped,
    /// The bus went away; reconnect.
    BusLost(ClientError),
}

/// Connects, retrying with backoff; gives up after `patience` (if any). Returns `None` when
/// shutdown came first.
async fn connect_with_retry(
    addr: &str,
    hello: &Hello,
    patience: Option<Duration>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<(BusClient, Welcome)>, ClientError> {
    let started = tokio::time::Instant::now();
    let mut attempt = 0;
    loop {
        match BusClient::connect(addr, hello.clone()).await {
            Ok(connected) => return Ok(Some(connected)),
            Err(err) if err.is_connection() => {
                if patience.is_some_and(|p| started.elapsed() >= p) {
                    return Err(err);
                }
                if attempt == 3 {
                    tracing::warn!("{err}; retrying");
                }
            }
            Err(err) => return Err(err),
        }
        tokio::select! {
            _ = &mut *shutdown => return Ok(None),
            _ = tokio::time::sleep(backoff(attempt)) => {}
        }
        attempt += 1;
    }
}

/// An agent's way to the bus: patient (`FIRST_CONNECT_PATIENCE`) until the bus has answered
/// once, then reconnecting for as long as the agent runs (a master restarting its bus).
pub struct Connector {
    addr: String,
    hello: Hello,
    patience: Option<Duration>,
}

impl Connector {
    pub fn new(addr: &str, role: Role, name: &str, token: Option<String>, dir: &Path) -> Connector {
        Connector {
            addr: addr.to_owned(),
            hello: Hello {
                role,
                name: name.to_owned(),
                token,
                dir: Some(dir.to_string_lossy().into_owned()),
            },
            patience: Some(FIRST_CONNECT_PATIENCE),
        }
    }

    /// The next connection, or `None` when shutdown came first. Fails when a bus that never
    /// answered stays unreachable past the first patience, or refuses us.
    pub async fn connect(
        &mut self,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<Option<(BusClient, Welcome)>> {
        let connected = connect_with_retry(&self.addr, &self.hello, self.patience, shutdown)
            .await
            .with_context(|| format!("bus unreachable at {}", self.addr))?;
        self.patience = None;
        Ok(connected)
    }
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
