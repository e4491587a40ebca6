//! `NatsAddress`: where a NATS bus is, how to reach it, and the names a mirror uses on it.

use std::path::PathBuf;

use filesync_master::hash::ContentHash;

use crate::event::Role;

/// The mirror name when none is given: streams `filesync_LOG` and `filesync_CONTENT`.
pub const DEFAULT_PREFIX: &str = "filesync";

/// Where a NATS bus is and how to reach it, from
/// `nats://HOST:PORT[,HOST:PORT...][?prefix=P&creds=FILE&nkey=FILE&ca=FILE&replicas=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsAddress {
    /// `nats://HOST:PORT` for each server.
    pub servers: Vec<String>,
    /// The mirror's name: its streams and subjects start with it, so several mirrors can
    /// share one deployment.
    pub prefix: String,
    /// A credentials file (`.creds`: a user JWT and its nkey seed).
    pub creds: Option<PathBuf>,
    /// A file holding an nkey seed.
    pub nkey: Option<PathBuf>,
    /// A CA certificate (PEM) to verify the servers by; TLS is then required.
    pub ca: Option<PathBuf>,
    /// Replicas of each stream, when this mirror creates them (1 unless told).
    pub replicas: usize,
    /// `USER:PASSWORD` from the address (`nats://USER:PASSWORD@HOST:PORT`), for servers
    /// that log users in by password.
    pub login: Option<(String, String)>,
}

impl NatsAddress {
    /// `None` when `addr` is not a NATS address; an error when it is one, badly written.
    pub fn parse(addr: &str) -> Option<Result<NatsAddress, String>> {
        let rest = addr.strip_prefix("nats://")?;
        Some(
            NatsAddress::parse_rest(rest)
                .map_err(|err| format!("bad NATS address {addr:?}: {err}")),
        )
    }

    fn parse_rest(rest: &str) -> Result<NatsAddress, String> {
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let servers: Vec<String> = hosts
            .split(',')
            .map(without_login)
            .map(|host| match host.rsplit_once(':') {
                Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(format!("nats://{host}"))
                }
                _ => Err(format!("{host:?} is not HOST:PORT")),
            })
            .collect::<Result<_, _>>()?;
        let login = hosts
            .split(',')
            .find_map(|host| host.rsplit_once('@'))
            .map(|(login, _)| match login.split_once(':') {
                Some((user, password)) => (user.to_owned(), password.to_owned()),
                None => (login.to_owned(), String::new()),
            });
        let mut address = NatsAddress {
            servers,
            prefix: DEFAULT_PREFIX.to_owned(),
            creds: None,
            nkey: None,
            ca: None,
            replicas: 1,
            login,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("option {pair:?} is not KEY=VALUE"))?;
            match key {
                "prefix" => address.prefix = value.to_owned(),
                "creds" => address.creds = Some(value.into()),
                "nkey" => address.nkey = Some(value.into()),
                "ca" => address.ca = Some(value.into()),
                "replicas" => {
                    address.replicas = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=5).contains(n))
                        .ok_or_else(|| format!("replicas={value}: 1 to 5"))?
                }
                _ => return Err(format!("unknown option {key:?}")),
            }
        }
        let remote: Vec<&str> = address
            .servers
            .iter()
            .map(|s| without_login(s))
            .filter(|h| !crate::bus::is_loopback(h))
            .collect();
        if !remote.is_empty() && address.ca.is_none() {
            return Err(format!(
                "{} is beyond loopback: pass --nats-ca (the servers' CA), so that we talk over TLS",
                remote.join(",")
            ));
        }
        let fine = !address.prefix.is_empty()
            && address.prefix.len() <= 32
            && address
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        if !fine {
            return Err(format!(
                "mirror name {:?} must be 1-32 of A-Z a-z 0-9 _ -",
                address.prefix
            ));
        }
        Ok(address)
    }

    /// The servers, for messages.
    pub fn describe(&self) -> String {
        let shown: Vec<&str> = self.servers.iter().map(|s| without_login(s)).collect();
        shown.join(",")
    }

    pub(super) fn log_stream(&self) -> String {
        format!("{}_LOG", self.prefix)
    }

    pub(super) fn content_stream(&self) -> String {
        format!("{}_CONTENT", self.prefix)
    }

    pub(super) fn log_subject(&self, role: Role, name: &str) -> String {
        format!("{}.log.{role}.{}", self.prefix, hex::encode(name))
    }

    /// Where a master publishes its `join`: the claim every later master event names.
    pub(super) fn join_subject(&self, name: &str) -> String {
        format!("{}.{JOIN}", self.log_subject(Role::Master, name))
    }

    /// The subjects a link's batches are ordered by (`writer::Order`): every master's
    /// events for a master (so another master's join breaks the order too), its own
    /// subject for anyone else.
    pub(super) fn order_subjects(&self, role: Role, name: &str) -> String {
        match role {
            Role::Master => format!("{}.log.master.>", self.prefix),
            _ => self.log_subject(role, name),
        }
    }

    /// The subjects a link reads (`api::BusApi::reads_whole_log`): a slave reads the
    /// masters' events and its own, nothing of the other slaves (with ten slaves, each
    /// would otherwise read ten answers for every notify); anyone else reads the whole log
    /// (none).
    pub(super) fn view(&self, role: Role, name: &str) -> Vec<String> {
        match role {
            Role::Slave => vec![
                self.order_subjects(Role::Master, name),
                self.log_subject(role, name),
            ],
            _ => Vec::new(),
        }
    }

    /// Whether an event by `author` is on the subjects of [`Self::order_subjects`].
    pub(super) fn in_order(role: Role, name: &str, author: &Author) -> bool {
        match role {
            Role::Master => author.role == Role::Master,
            _ => author.role == role && author.name == name,
        }
    }

    /// Whether an event by `author` is in the view of `role` `name` (see [`Self::view`]).
    pub(super) fn in_view(role: Role, name: &str, author: &Author) -> bool {
        match role {
            Role::Slave => {
                Self::in_order(Role::Master, name, author) || Self::in_order(role, name, author)
            }
            _ => true,
        }
    }

    /// Every master's join subject, for `Nats-Expected-Last-Subject-Sequence-Subject`.
    pub(super) fn joins(&self) -> String {
        format!("{}.log.master.*.{JOIN}", self.prefix)
    }

    pub(super) fn content_subject(&self, address: &ContentHash) -> String {
        format!("{}.content.{address}", self.prefix)
    }

    /// Who published on a log subject.
    pub(super) fn author_of(&self, subject: &str) -> Option<Author> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".log.")?;
        let (role, name) = rest.split_once('.')?;
        let role: Role = serde_json::from_value(serde_json::Value::String(role.to_owned())).ok()?;
        let (name, join) = match name.strip_suffix(&format!(".{JOIN}")) {
            Some(name) if role == Role::Master => (name, true),
            _ => (name, false),
        };
        let name = String::from_utf8(hex::decode(name).ok()?).ok()?;
        Some(Author { role, name, join })
    }
}

/// The last token of a master's join subject.
const JOIN: &str = "join";

/// Who published an event, read from its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Author {
    pub role: Role,
    pub name: String,
    /// A master's join: the claim later master events name.
    pub join: bool,
}

/// `HOST:PORT` of `[nats://][USER:PASSWORD@]HOST:PORT`.
fn without_login(server: &str) -> &str {
    let server = server.strip_prefix("nats://").unwrap_or(server);
    server.rsplit_once('@').map_or(server, |(_, host)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_names_servers_options_and_refuses_clear_text_beyond_loopback() {
        assert_eq!(
            NatsAddress::parse("127.0.0.1:4222"),
            None,
            "not a NATS address"
        );
        let address =
            NatsAddress::parse("nats://u:p@127.0.0.1:4222,localhost:4223?prefix=docs&replicas=3")
                .expect("a NATS address")
                .expect("well written");
        assert_eq!(
            address.servers,
            ["nats://127.0.0.1:4222", "nats://localhost:4223"]
        );
        assert_eq!(address.login, Some(("u".into(), "p".into())));
        assert_eq!((address.prefix.as_str(), address.replicas), ("docs", 3));
        assert_eq!(
            address.describe(),
            "127.0.0.1:4222,localhost:4223",
            "no password shown"
        );
        assert_eq!(
            address.log_subject(Role::Slave, "s.1"),
            "docs.log.slave.732e31"
        );
        let author = |subject: &str| address.author_of(subject).map(|a| (a.role, a.name, a.join));
        assert_eq!(
            author("docs.log.slave.732e31"),
            Some((Role::Slave, "s.1".into(), false))
        );
        assert_eq!(
            author(&address.join_subject("m")),
            Some((Role::Master, "m".into(), true))
        );
        assert_eq!(author("other.log.slave.732e31"), None);
        assert_eq!(address.joins(), "docs.log.master.*.join");
        let refused = |addr: &str| {
            NatsAddress::parse(addr)
                .and_then(Result::err)
                .unwrap_or_default()
        };
        assert!(refused("nats://10.0.0.1:4222").contains("beyond loopback"));
        assert!(
            NatsAddress::parse("nats://10.0.0.1:4222?ca=/etc/ca.pem").is_some_and(|r| r.is_ok())
        );
        assert!(refused("nats://127.0.0.1").contains("HOST:PORT"));
        assert!(refused("nats://127.0.0.1:4222?prefix=a.b").contains("mirror name"));
        assert!(refused("nats://127.0.0.1:4222?colour=red").contains("unknown option"));
    }

    #[test]
    fn a_slave_reads_the_masters_events_and_its_own_and_anyone_else_all() {
        let address = NatsAddress::parse("nats://127.0.0.1:4222?prefix=docs")
            .expect("a NATS address")
            .expect("well written");
        assert_eq!(
            address.view(Role::Slave, "s.1"),
            ["docs.log.master.>", "docs.log.slave.732e31"]
        );
        assert!(address.view(Role::Listener, "l").is_empty());
        assert!(address.view(Role::Master, "m").is_empty());
        let by = |subject: &str| address.author_of(subject).expect("an agent's subject");
        let seen = |subject: &str| NatsAddress::in_view(Role::Slave, "s.1", &by(subject));
        assert!(seen("docs.log.slave.732e31"));
        assert!(seen(&address.join_subject("m")));
        assert!(seen(&address.log_subject(Role::Master, "m")));
        assert!(!seen(&address.log_subject(Role::Slave, "s.2")));
        assert!(!seen(&address.log_subject(Role::Listener, "s.1")));
        assert!(NatsAddress::in_view(
            Role::Listener,
            "l",
            &by("docs.log.slave.732e32")
        ));
    }
}
