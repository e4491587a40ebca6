//! The bus's rules: what may join, and what may be appended to the log. One place, called by
//! every backend before it appends, and fed every event it appends (and, at start, every
//! event of the log it reopens), so its verdicts always reflect the whole log.
//!
//! - [`Rules::admit`]: a hello. A name is 1-64 of `A-Z a-z 0-9 . _ -`; one live connection
//!   per master or slave name; one master at a time, and only the master the log belongs
//!   to (its host and directory, from its `join`) unless it asks to take over; no slave
//!   directory inside the master's (or the reverse) on the same host.
//! - [`Rules::check`]: an event. Which role may publish which tag; no path outside the
//!   root; a notify describes a valid change that applies to the state the log implies
//!   ([`PathIndex`]) and whose content the store holds (for a file in chunks: its
//!   manifest, as long as the file, and every chunk it lists); a consume or error names a notify
//!   in the log as its `cause`, answers notifies in `seq` order and each once (a consume
//!   `repairs` only an open error of its own, see [`OpenErrors`]); a consume's byte counts
//!   add up to its size.
//! - [`Rules::observe`]: the event was appended; update the state behind the verdicts.
//!
//! Nothing here does I/O: the caller answers for the content store ([`Content`]) and hands
//! over the events, so these rules are unit-tested without a bus.

pub mod index;
pub mod repairs;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use filesync_master::chunk::Manifest;
use filesync_master::hash::ContentHash;
use filesync_master::{Change, Kind};

pub use index::PathIndex;
pub use repairs::{OpenError, OpenErrors};

use crate::event::{Draft, Event, Role, Tag};

/// What the rules ask of a content store.
pub trait Content {
    /// Whether it holds `address`.
    fn has(&self, address: &ContentHash) -> bool;
    /// The manifest stored at `address`: `None` when it is not held, an error when what is
    /// held there is not a manifest.
    fn manifest(&self, address: &ContentHash) -> Option<Result<Manifest, String>>;
    /// Whether this store can say what it holds. A backend whose store the rules cannot
    /// see (NATS: the content is in a stream of its own, written before the event naming
    /// it and verified by whoever fetches it) answers `false`, and the rules then leave
    /// content out of their verdict.
    fn verifies(&self) -> bool {
        true
    }
}

/// A store the rules cannot see (see [`Content::verifies`]).
pub struct Unseen;

impl Content for Unseen {
    fn has(&self, _address: &ContentHash) -> bool {
        true
    }
    fn manifest(&self, _address: &ContentHash) -> Option<Result<Manifest, String>> {
        None
    }
    fn verifies(&self) -> bool {
        false
    }
}

/// Where an agent runs: its host name and synced directory, as its hello says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub host: String,
    pub dir: String,
}

impl Place {
    /// Where a hello says an agent runs: its host and directory, for a master or slave that
    /// names both (a listener has no place).
    pub fn of(role: Role, host: Option<String>, dir: Option<String>) -> Option<Place> {
        match (host, dir) {
            (Some(host), Some(dir)) if role != Role::Listener => Some(Place { host, dir }),
            _ => None,
        }
    }

    fn nests_with(&self, other: &Place) -> bool {
        if self.host != other.host {
            return false;
        }
        let (a, b) = (
            std::path::Path::new(&self.dir),
            std::path::Path::new(&other.dir),
        );
        a.starts_with(b) || b.starts_with(a)
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.dir, self.host)
    }
}

/// A hello, as the rules see it.
#[derive(Debug, Clone)]
pub struct Hello {
    pub role: Role,
    pub name: String,
    pub place: Option<Place>,
    /// A master asking to take the log over from the master it belongs to.
    pub takeover: bool,
}

/// Why a hello is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Something another connection holds (its name, the master's place): it may pass
    /// once that connection is gone.
    Busy(String),
    /// It will not pass by waiting.
    Refused(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::Busy(message) | Refusal::Refused(message) => message,
        }
    }
}

/// An agent connected right now.
#[derive(Debug, Clone)]
pub struct Connected {
    pub role: Role,
    pub name: String,
    pub place: Option<Place>,
}

/// What the log says about one agent name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The role of its latest join.
    pub role: Option<Role>,
    /// The highest notify it answered (consume or error, repairs aside).
    pub answered: u64,
    /// When it last joined (the log's `time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<String>,
    /// When it last appended anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<String>,
}

/// The rules' state, to be written in a checkpoint and read back (`crate::checkpoint`):
/// everything but the tree, which the checkpoint holds in full.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesSnapshot {
    pub agents: BTreeMap<String, AgentRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<(String, Place)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<OpenErrorRecord>,
}

/// One open error, as a checkpoint keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenErrorRecord {
    pub agent: String,
    pub seq: u64,
    pub cause: u64,
    /// The change that failed, as a notify would carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Draft>,
    #[serde(default)]
    pub stale: bool,
}

/// A set of `seq`s, one bit each (which events are notifies), from the log's start on:
/// the words before it are dropped when the log is truncated, so it stays the size of the
/// retained log.
#[derive(Debug, Default, Clone)]
struct SeqSet {
    /// Word `i` holds `seq`s `(first_word + i) * 64 ..`.
    words: std::collections::VecDeque<u64>,
    first_word: u64,
}

impl SeqSet {
    fn insert(&mut self, seq: u64) {
        let (word, bit) = (seq / 64, seq % 64);
        if word < self.first_word {
            return;
        }
        let idx = (word - self.first_word) as usize;
        if self.words.len() <= idx {
            self.words.resize(idx + 1, 0);
        }
        self.words[idx] |= 1 << bit;
    }

    fn contains(&self, seq: u64) -> bool {
        let (word, bit) = (seq / 64, seq % 64);
        word.checked_sub(self.first_word)
            .and_then(|idx| self.words.get(idx as usize))
            .is_some_and(|w| w & (1 << bit) != 0)
    }

    /// The smallest `seq` in the set after `seq`.
    fn next_after(&self, seq: u64) -> Option<u64> {
        let from = seq + 1;
        let mut word = (from / 64).max(self.first_word);
        let mut mask = if word == from / 64 {
            u64::MAX << (from % 64)
        } else {
            u64::MAX
        };
        while let Some(bits) = self.words.get((word - self.first_word) as usize) {
            let found = bits & mask;
            if found != 0 {
                return Some(word * 64 + u64::from(found.trailing_zeros()));
            }
            word += 1;
            mask = u64::MAX;
        }
        None
    }

    /// Drops the words wholly before `seq`.
    fn forget_before(&mut self, seq: u64) {
        let keep_from = seq / 64;
        while self.first_word < keep_from {
            if self.words.pop_front().is_none() {
                self.first_word = keep_from;
                break;
            }
            self.first_word += 1;
        }
    }
}

/// The state behind the verdicts: see the module docs.
#[derive(Default, Clone)]
pub struct Rules {
    head: u64,
    /// The first `seq` the log still holds (1 until it is truncated): answers name only
    /// notifies from there on, repairs of older open errors aside.
    start: u64,
    state: PathIndex,
    notifies: SeqSet,
    agents: HashMap<String, AgentRecord>,
    errors: OpenErrors,
    /// The master the log belongs to: the place of its latest master join.
    master: Option<(String, Place)>,
}

impl Rules {
    pub fn new() -> Rules {
        Rules::default()
    }

    /// The last `seq` observed.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The state the log's notifies imply.
    pub fn state(&self) -> &PathIndex {
        &self.state
    }

    /// The highest notify `name` answered.
    pub fn answered(&self, name: &str) -> u64 {
        self.agents.get(name).map_or(0, |a| a.answered)
    }

    /// Every agent name that joined as a master or slave at some point.
    pub fn is_known_agent(&self, name: &str) -> bool {
        self.agents
            .get(name)
            .is_some_and(|a| matches!(a.role, Some(Role::Master | Role::Slave)))
    }

    /// Where the master the log belongs to runs, once one joined with its place.
    pub fn master_place(&self) -> Option<&Place> {
        self.master.as_ref().map(|(_, place)| place)
    }

    pub fn open_errors(&self) -> &OpenErrors {
        &self.errors
    }

    /// The errors `name` should retry: open and not stale, oldest first.
    pub fn retryable(&self, name: &str) -> Vec<(u64, u64)> {
        self.errors
            .of(name)
            .filter(|open| !open.stale && open.change.is_some())
            .map(|open| (open.seq, open.cause))
            .collect()
    }

    /// The first `seq` the log holds.
    pub fn start(&self) -> u64 {
        self.start.max(1)
    }

    /// The agents the log knows, by name.
    pub fn agents(&self) -> impl Iterator<Item = (&String, &AgentRecord)> + '_ {
        self.agents.iter()
    }

    /// The rules' state for a checkpoint (the tree is the checkpoint's own).
    pub fn snapshot(&self) -> RulesSnapshot {
        let errors = self
            .errors
            .all()
            .flat_map(|(agent, open)| {
                open.values().map(move |e| OpenErrorRecord {
                    agent: agent.clone(),
                    seq: e.seq,
                    cause: e.cause,
                    change: e.change.as_ref().map(Draft::notify),
                    stale: e.stale,
                })
            })
            .collect();
        RulesSnapshot {
            agents: self
                .agents
                .iter()
                .map(|(name, record)| (name.clone(), record.clone()))
                .collect(),
            master: self.master.clone(),
            errors,
        }
    }

    /// The rules as of a checkpoint at `seq` whose tree is `state` (the log now starting
    /// after it, or earlier).
    pub fn restore(snapshot: &RulesSnapshot, state: &filesync_master::Model, seq: u64) -> Rules {
        let mut rules = Rules {
            head: seq,
            start: seq + 1,
            agents: snapshot
                .agents
                .iter()
                .map(|(name, record)| (name.clone(), record.clone()))
                .collect(),
            master: snapshot.master.clone(),
            ..Rules::default()
        };
        for (path, entry) in state.iter() {
            let put = Change::Put {
                path: path.clone(),
                entry: entry.clone(),
            };
            // In path order, parents first: every put applies.
            let _ = rules.state.apply(&put);
        }
        for error in &snapshot.errors {
            let change = error.change.as_ref().and_then(|d| d.change().ok());
            rules
                .errors
                .restore(&error.agent, error.seq, error.cause, change, error.stale);
        }
        rules
    }

    /// The log now starts at `start` (older segments were removed); events from there on
    /// are observed as usual.
    pub fn set_start(&mut self, start: u64) {
        self.start = start;
        self.notifies.forget_before(start);
    }

    /// The first notify after `seq`, if the log holds one: what a slave that answered up to
    /// `seq` needs next.
    pub fn next_notify_after(&self, seq: u64) -> Option<u64> {
        self.notifies.next_after(seq)
    }

    /// The `join` a hello admitted appends: its role and place, and `takeover` when a master
    /// takes the log over from another place.
    pub fn join(&self, hello: &Hello) -> Draft {
        let place = hello.place.as_ref();
        let owner = self.master_place();
        Draft {
            role: Some(hello.role),
            host: place.map(|p| p.host.clone()),
            dir: place.map(|p| p.dir.clone()),
            takeover: (hello.role == Role::Master
                && hello.takeover
                && owner.is_some()
                && owner != place)
                .then_some(true),
            ..Draft::tagged(Tag::Join)
        }
    }

    /// Whether a hello may join, given who is connected.
    pub fn admit(&self, hello: &Hello, connected: &[Connected]) -> Result<(), Refusal> {
        check_name(&hello.name).map_err(Refusal::Refused)?;
        let exclusive = |role| matches!(role, Role::Master | Role::Slave);
        if let Some(other) = connected
            .iter()
            .find(|c| c.name == hello.name && (exclusive(c.role) || exclusive(hello.role)))
        {
            return Err(Refusal::Busy(format!(
                "an agent named {:?} is already connected (as {}); one connection per name",
                other.name, other.role
            )));
        }
        if hello.role == Role::Master {
            if let Some(master) = connected.iter().find(|c| c.role == Role::Master) {
                return Err(Refusal::Busy(format!(
                    "master {:?}{} is already connected: one master per log",
                    master.name,
                    master
                        .place
                        .as_ref()
                        .map(|p| format!(" ({p})"))
                        .unwrap_or_default()
                )));
            }
            if let (Some((owner, owner_place)), false) = (&self.master, hello.takeover) {
                if hello.place.as_ref() != Some(owner_place) {
                    let this = hello
                        .place
                        .as_ref()
                        .map_or("no directory".to_owned(), |p| p.to_string());
                    return Err(Refusal::Refused(format!(
                        "this log belongs to master {owner:?} of {owner_place}, not to {this}; \
                         to replace its directory with this one, start the master with --takeover"
                    )));
                }
            }
        }
        if hello.role == Role::Slave {
            if let Some(place) = &hello.place {
                let masters = connected
                    .iter()
                    .filter(|c| c.role == Role::Master)
                    .filter_map(|c| c.place.clone())
                    .chain(self.master.iter().map(|(_, p)| p.clone()));
                for master in masters {
                    if place.nests_with(&master) {
                        return Err(Refusal::Refused(format!(
                            "slave directory {} and master directory {} must not contain each other",
                            place.dir, master.dir
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `draft`, published by `agent` in `role`, may be appended. `has_content` says
    /// whether the store holds content.
    pub fn check(
        &self,
        role: Role,
        agent: &str,
        draft: &Draft,
        content: &dyn Content,
    ) -> Result<(), String> {
        let tag = draft.tag.ok_or("missing field `tag`")?;
        let allowed = match tag {
            Tag::Join => false,
            Tag::Ready | Tag::Leave => true,
            Tag::Notify => role == Role::Master,
            Tag::Consume | Tag::Error => role == Role::Slave,
        };
        if !allowed {
            return Err(format!("a {role} may not publish {tag} events"));
        }
        if draft.role.is_some() || draft.host.is_some() || draft.dir.is_some() {
            return Err("`role`, `host` and `dir` are the bus's to set (in joins)".into());
        }
        draft.check_paths().map_err(|err| err.to_string())?;
        if let (Tag::Ready, Some(checkpoint)) = (tag, draft.resync) {
            if role != Role::Slave || checkpoint == 0 || checkpoint + 1 != self.start() {
                return Err(format!(
                    "no resync from #{checkpoint}: the log starts at {}",
                    self.start()
                ));
            }
        }
        match tag {
            Tag::Notify => self.check_notify(draft, content),
            Tag::Consume | Tag::Error => self.check_answer(tag, agent, draft),
            _ => Ok(()),
        }
    }

    fn check_notify(&self, draft: &Draft, content: &dyn Content) -> Result<(), String> {
        let change = draft.change().map_err(|err| err.to_string())?;
        if let Change::Put { entry, path } = &change {
            if let (Kind::File, Some(sha256), true) =
                (entry.kind, &entry.sha256, content.verifies())
            {
                match &draft.manifest {
                    Some(manifest) => check_chunks(path, entry.size, manifest, content)?,
                    None if !content.has(sha256) => {
                        return Err(format!(
                            "put of {path}: the bus has no content {sha256}; {MISSING_CONTENT}"
                        ))
                    }
                    None => {}
                }
            }
        }
        self.state
            .check(&change)
            .map_err(|err| format!("{change} does not apply to the log's state: {err}"))
    }

    fn check_answer(&self, tag: Tag, agent: &str, draft: &Draft) -> Result<(), String> {
        let cause = draft.cause.ok_or("missing field `cause`")?;
        if let Some(checkpoint) = draft.resync {
            return self.check_resync(tag, draft, cause, checkpoint);
        }
        let repairs_old = draft.repairs.is_some() && cause < self.start;
        if !repairs_old && !self.notifies.contains(cause) {
            return Err(format!(
                "cause {cause} is not a notify in the log (head is {})",
                self.head
            ));
        }
        if tag == Tag::Error && draft.error.is_none() {
            return Err("missing field `error`".into());
        }
        if tag == Tag::Consume {
            let change = draft.change().map_err(|err| err.to_string())?;
            check_byte_counts(draft, &change)?;
        }
        if let Some(seq) = draft.repairs {
            let open = self.errors.get(agent, seq);
            return match open {
                _ if tag != Tag::Consume => Err("only a consume repairs an error".into()),
                Some(open) if open.cause == cause && !open.stale => Ok(()),
                Some(open) if open.stale => Err(format!(
                    "error #{seq} is stale: later notifies changed its paths"
                )),
                Some(open) => Err(format!(
                    "error #{seq} answered #{}, not #{cause}",
                    open.cause
                )),
                None => Err(format!("#{seq} is not an open error of {agent}")),
            };
        }
        if draft.drift.is_some() {
            return Ok(());
        }
        let answered = self.answered(agent);
        if cause <= answered {
            return Err(format!(
                "{agent} already answered up to notify #{answered}; #{cause} is answered once, in order"
            ));
        }
        Ok(())
    }

    /// A resync consume restores a path to the state of the checkpoint covering the log's
    /// start (a resync error says it could not, and is retried like any error); its
    /// `cause` is that checkpoint's `seq`.
    fn check_resync(
        &self,
        tag: Tag,
        draft: &Draft,
        cause: u64,
        checkpoint: u64,
    ) -> Result<(), String> {
        if cause != checkpoint {
            return Err("a resync's cause is its checkpoint".into());
        }
        if tag == Tag::Error && draft.error.is_none() {
            return Err("missing field `error`".into());
        }
        if checkpoint == 0 || checkpoint + 1 != self.start() {
            return Err(format!(
                "no resync from #{checkpoint}: the log starts at {}",
                self.start()
            ));
        }
        draft.change().map(|_| ()).map_err(|err| err.to_string())
    }

    /// Feeds an appended event. For an `error` whose own fields do not describe its change
    /// (logs written before errors echoed it), `cause_change` reads the notify's.
    pub fn observe(&mut self, event: &Event, cause_change: impl FnOnce(u64) -> Option<Change>) {
        self.head = self.head.max(event.seq);
        let body = &event.body;
        if let Some(record) = self.agents.get_mut(&event.agent) {
            record.seen = Some(event.time.clone());
        } else if body.tag == Some(Tag::Join) {
            let record = self.agents.entry(event.agent.clone()).or_default();
            record.seen = Some(event.time.clone());
        }
        match body.tag {
            Some(Tag::Join) => {
                let record = self.agents.entry(event.agent.clone()).or_default();
                record.role = body.role;
                record.joined = Some(event.time.clone());
                if let (Some(Role::Master), Some(host), Some(dir)) =
                    (body.role, &body.host, &body.dir)
                {
                    let place = Place {
                        host: host.clone(),
                        dir: dir.clone(),
                    };
                    self.master = Some((event.agent.clone(), place));
                }
            }
            Some(Tag::Notify) => {
                self.notifies.insert(event.seq);
                if let Ok(change) = body.change() {
                    // A log from before the bus checked notifies may hold one that does not
                    // apply: the state stays as it was, as the master's replay would have it.
                    if let Err(err) = self.state.apply(&change) {
                        tracing::debug!("log #{}: {change}: {err}", event.seq);
                    }
                    self.errors.notify(&change);
                }
            }
            Some(Tag::Ready) if body.resync.is_some() => {
                let record = self.agents.entry(event.agent.clone()).or_default();
                record.answered = record.answered.max(body.resync.unwrap_or(0));
            }
            Some(tag @ (Tag::Consume | Tag::Error)) => {
                let Some(cause) = body.cause else { return };
                // Only a `ready` ends a resync: its answers answer no notify.
                if body.repairs.is_none() && body.drift.is_none() && body.resync.is_none() {
                    let record = self.agents.entry(event.agent.clone()).or_default();
                    record.answered = record.answered.max(cause);
                }
                if tag == Tag::Error && body.drift.is_none() {
                    let change = body.change().ok().or_else(|| cause_change(cause));
                    self.errors.error(&event.agent, event.seq, cause, change);
                } else if tag == Tag::Consume {
                    let change = body.change().ok();
                    self.errors
                        .consume(&event.agent, body.repairs, change.as_ref());
                }
            }
            _ => {}
        }
    }
}

/// A file put in chunks: its manifest is stored, describes `size` bytes, and every chunk it
/// lists is stored. (That the chunks add up to the file's SHA-256 is for the slave to find
/// out as it writes them: checking it here would mean reading every chunk.)
fn check_chunks(
    path: &filesync_master::RelPath,
    size: u64,
    manifest: &str,
    content: &dyn Content,
) -> Result<(), String> {
    let address = ContentHash::parse_hex(manifest)
        .ok_or_else(|| format!("field `manifest`: {manifest:?} is not a sha256"))?;
    let manifest = match content.manifest(&address) {
        None => {
            return Err(format!(
                "put of {path}: the bus has no manifest {address}; {MISSING_CONTENT}"
            ))
        }
        Some(Err(err)) => return Err(format!("put of {path}: manifest {address}: {err}")),
        Some(Ok(manifest)) => manifest,
    };
    if manifest.size() != size {
        return Err(format!(
            "put of {path}: its manifest describes {} bytes, not {size}",
            manifest.size()
        ));
    }
    match manifest.chunks().iter().find(|c| !content.has(&c.sha256)) {
        Some(missing) => Err(format!(
            "put of {path}: the bus has no chunk {}; {MISSING_CONTENT}",
            missing.sha256
        )),
        None => Ok(()),
    }
}

/// How a refusal for content the bus lacks ends, so that a master can tell it from the
/// others: it uploads again (the content may have been collected meanwhile, `bus/gc.rs`).
pub const MISSING_CONTENT: &str = "upload it first";

/// An agent name is 1-64 of `A-Z a-z 0-9 . _ -`.
pub fn check_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if fine {
        Ok(())
    } else {
        Err(format!(
            "agent name {name:?} must be 1-64 of A-Z a-z 0-9 . _ -"
        ))
    }
}

/// A consume of a file put that reports where its bytes came from must account for all of
/// them: `fetched + reused = size`.
fn check_byte_counts(draft: &Draft, change: &Change) -> Result<(), String> {
    let (Some(fetched), Some(reused)) = (draft.fetched, draft.reused) else {
        return match (draft.fetched, draft.reused) {
            (None, None) => Ok(()),
            _ => Err("`fetched` and `reused` come together".into()),
        };
    };
    match change {
        Change::Put { entry, .. } if entry.kind == Kind::File => {
            if fetched.checked_add(reused) == Some(entry.size) {
                Ok(())
            } else {
                Err(format!(
                    "fetched {fetched} + reused {reused} is not the size {}",
                    entry.size
                ))
            }
        }
        _ => Err("`fetched` and `reused` belong to a file put".into()),
    }
}

#[cfg(test)]
mod tests;
