//! `filesync status`: what the bus knows about its agents and itself, as one report, and
//! the health verdict a monitoring check reads from it.
//!
//! The bus builds the report (`server.rs`, on a `status` request; on NATS the link,
//! `nats/status.rs`) from what it already holds: the connected agents, each name's
//! position in the log (`rules`), the slaves' open errors, the log's extent; it reads the
//! log's tail once to say how far behind each slave is, in notifies and in bytes of
//! content. Health is decided here, from the report
//! alone, so that the text, the JSON and the exit code cannot disagree.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{Event, Role, Tag};
use crate::rules::Rules;

/// Everything `filesync status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The first `seq` the log holds (retention removed those before it).
    pub start: u64,
    /// The last `seq` appended.
    pub head: u64,
    /// Bytes of the log's segments.
    pub log_bytes: u64,
    /// Bytes of the whole state directory (log, checkpoints, content).
    pub state_bytes: u64,
    /// Every agent connected now, and every slave the log knows that is not.
    pub agents: Vec<AgentStatus>,
}

/// One agent in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    pub role: Role,
    pub connected: bool,
    /// The highest notify it answered (slaves).
    pub answered: u64,
    /// Notifies after `answered` it has not answered yet (slaves).
    pub behind: u64,
    /// The content bytes those notifies put (slaves).
    pub behind_bytes: u64,
    /// Its errors not made good yet: `(error seq, notify seq)`.
    pub open_errors: Vec<(u64, u64)>,
    /// The newest of those errors, as its `error` event says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it last appended anything (the log's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<String>,
}

/// The verdict, worst first in `Ord`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Healthy,
    /// A connected slave is more than the allowed number of notifies behind.
    Lagging,
    /// No master is connected, or a slave has errors not made good.
    Failing,
}

impl Health {
    /// The exit code of `filesync status`, as monitoring checks read it (Nagios: 0 OK, 1
    /// WARNING, 2 CRITICAL).
    pub fn exit_code(self) -> i32 {
        match self {
            Health::Healthy => 0,
            Health::Lagging => 1,
            Health::Failing => 2,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Lagging => "lagging",
            Health::Failing => "failing",
        })
    }
}

impl StatusReport {
    /// The verdict, and one reason per agent that made it worse than healthy. A slave that
    /// is away is listed but does not count: retention stops waiting for it after the
    /// history window, and it resyncs when it comes back.
    pub fn health(&self, max_lag: u64) -> (Health, Vec<String>) {
        let mut health = Health::Healthy;
        let mut reasons = Vec::new();
        let mut worse = |to: Health, reason: String| {
            health = health.max(to);
            reasons.push(reason);
        };
        if !self
            .agents
            .iter()
            .any(|a| a.role == Role::Master && a.connected)
        {
            worse(Health::Failing, "no master is connected".into());
        }
        for agent in self.agents.iter().filter(|a| a.role == Role::Slave) {
            if !agent.open_errors.is_empty() {
                let n = agent.open_errors.len();
                worse(
                    Health::Failing,
                    format!("{} has {n} error(s) not made good", agent.name),
                );
            }
            if agent.connected && agent.behind > max_lag {
                worse(
                    Health::Lagging,
                    format!(
                        "{} is {} notifies behind (more than {max_lag})",
                        agent.name, agent.behind
                    ),
                );
            }
        }
        (health, reasons)
    }

    /// The report as lines for people.
    pub fn render(&self, max_lag: u64) -> String {
        let mut out = format!(
            "log #{}..#{} ({}), state {}\n",
            self.start,
            self.head,
            mib(self.log_bytes),
            mib(self.state_bytes)
        );
        for agent in &self.agents {
            let state = if agent.connected { "connected" } else { "away" };
            let role = agent.role.to_string();
            out.push_str(&format!("{role:<8} {:<16} {state:<9}", agent.name));
            if agent.role == Role::Slave {
                out.push_str(&format!(
                    " at #{}, {} notifies ({}) behind, {} open error(s)",
                    agent.answered,
                    agent.behind,
                    mib(agent.behind_bytes),
                    agent.open_errors.len()
                ));
            }
            if let Some(seen) = &agent.seen {
                out.push_str(&format!(", last seen {seen}"));
            }
            if let (Some(error), Some((seq, _))) = (&agent.last_error, agent.open_errors.last()) {
                out.push_str(&format!("\n         last error #{seq}: {error}"));
            }
            out.push('\n');
        }
        let (health, reasons) = self.health(max_lag);
        out.push_str(&format!("status: {health}"));
        if !reasons.is_empty() {
            out.push_str(&format!(" ({})", reasons.join("; ")));
        }
        out.push('\n');
        out
    }
}

/// The agents a report lists: those `connected` (but the one asking), then every slave the
/// log knows; each with what `rules` say of it (its position, its open errors, when it was
/// last seen). How far behind each is comes from [`Backlog::fill`]; the text of its last
/// error is the backend's to read.
pub fn agents_of(rules: &Rules, connected: &[(String, Role)]) -> Vec<AgentStatus> {
    let mut agents: Vec<AgentStatus> = Vec::new();
    let known = rules
        .agents()
        .filter(|(_, record)| record.role == Some(Role::Slave))
        .map(|(name, _)| (name.as_str(), Role::Slave, false));
    let connected = connected
        .iter()
        .map(|(name, role)| (name.as_str(), *role, true));
    for (name, role, connected) in connected.chain(known) {
        if agents.iter().any(|a| a.name == name && a.role == role) {
            continue;
        }
        let record = rules
            .agents()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, r)| r);
        let mut open_errors: Vec<(u64, u64)> = rules
            .open_errors()
            .of(name)
            .map(|e| (e.seq, e.cause))
            .collect();
        open_errors.sort_unstable();
        agents.push(AgentStatus {
            name: name.to_owned(),
            role,
            connected,
            answered: rules.answered(name),
            behind: 0,
            behind_bytes: 0,
            open_errors,
            last_error: None,
            seen: record.and_then(|r| r.seen.clone()),
        });
    }
    agents
}

/// Where the backlog is read from: the lowest slave's next notify, within the log.
pub fn backlog_start(agents: &[AgentStatus], start: u64, head: u64) -> u64 {
    agents
        .iter()
        .filter(|a| a.role == Role::Slave)
        .map(|a| a.answered + 1)
        .min()
        .unwrap_or(head + 1)
        .max(start)
}

/// How far behind each position is: fed the notifies after the lowest position, in order.
#[derive(Debug, Default)]
pub struct Backlog {
    /// `(seq, content bytes)` of each notify.
    notifies: Vec<(u64, u64)>,
}

impl Backlog {
    pub fn observe(&mut self, event: &Event) {
        if event.body.tag == Some(Tag::Notify) {
            self.notifies
                .push((event.seq, event.body.size.unwrap_or(0)));
        }
    }

    /// Sets how far behind each slave of `agents` is, and sorts them (masters first).
    pub fn fill(&self, agents: &mut [AgentStatus]) {
        for agent in agents.iter_mut().filter(|a| a.role == Role::Slave) {
            (agent.behind, agent.behind_bytes) = self.behind(agent.answered);
        }
        agents.sort_by(|a, b| (a.role, &a.name).cmp(&(b.role, &b.name)));
    }

    /// Notifies after `answered`, and the bytes they put.
    pub fn behind(&self, answered: u64) -> (u64, u64) {
        let first = self.notifies.partition_point(|(seq, _)| *seq <= answered);
        let rest = &self.notifies[first..];
        (rest.len() as u64, rest.iter().map(|(_, size)| size).sum())
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, role: Role, connected: bool) -> AgentStatus {
        AgentStatus {
            name: name.into(),
            role,
            connected,
            answered: 0,
            behind: 0,
            behind_bytes: 0,
            open_errors: Vec::new(),
            last_error: None,
            seen: None,
        }
    }

    #[test]
    fn health_is_the_worst_of_the_agents_and_says_why() {
        let mut report = StatusReport {
            agents: vec![
                agent("master", Role::Master, true),
                agent("slave", Role::Slave, true),
                agent("old", Role::Slave, false),
            ],
            ..StatusReport::default()
        };
        assert_eq!(report.health(10), (Health::Healthy, vec![]));
        // An away slave far behind does not count; a connected one does.
        report.agents[2].behind = 500;
        assert_eq!(report.health(10).0, Health::Healthy);
        report.agents[1].behind = 11;
        let (health, reasons) = report.health(10);
        assert_eq!(health, Health::Lagging);
        assert_eq!(reasons, ["slave is 11 notifies behind (more than 10)"]);
        report.agents[2].open_errors = vec![(40, 39)];
        assert_eq!(report.health(10).0, Health::Failing);
        report.agents[0].connected = false;
        let (health, reasons) = report.health(100);
        assert_eq!(health.exit_code(), 2);
        assert_eq!(reasons[0], "no master is connected");
        assert!(report.render(100).ends_with("error(s) not made good)\n"));
    }

    #[test]
    fn backlog_counts_notifies_and_bytes_after_a_position() {
        let mut backlog = Backlog::default();
        for (seq, size) in [(3, 10), (5, 0), (9, 100)] {
            let mut event = Event::parse(&format!(
                r#"{{"seq":{seq},"time":"t","agent":"master","tag":"notify","op":"put","path":"f","kind":"file","size":{size},"sha256":"00","mode":420}}"#
            ))
            .expect("event");
            event.seq = seq;
            backlog.observe(&event);
        }
        assert_eq!(backlog.behind(0), (3, 110));
        assert_eq!(backlog.behind(3), (2, 100));
        assert_eq!(backlog.behind(9), (0, 0));
    }
}
