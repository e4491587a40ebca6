//! NATS JetStream as the bus: a backend of the agents' API (`api.rs`) for mirrors that
//! outgrow one machine, on a replicated engine the user already runs. Chosen by the
//! address: `nats://HOST:PORT[,HOST:PORT...]`, with options after a `?` (see
//! [`NatsAddress`]).
//!
//! # Layout on the server (for mirror name `P`, `filesync` unless told)
//!
//! - Stream `P_LOG`, subjects `P.log.<role>.<hex of the agent's name>` (a master's join on
//!   `P.log.master.<hex>.join`), deletes and purges
//!   denied: the event log. The stream's sequence is `seq` and its timestamp `time`, so the
//!   total order is the engine's own; the event's `Draft` as JSON is the header
//!   `Filesync-Event`, and the payload the content of a small file its notify puts
//!   (`inline.rs`); the agent and its role are read from the subject (which the account's
//!   permissions can tie to a user). Every publish carries a `Nats-Msg-Id`, so a retried
//!   one is not appended twice.
//! - Stream `P_CONTENT`, subjects `P.content.<sha256>`, one message per subject: content by
//!   address (a file, a chunk, a manifest; a small file's too, though its notify carries
//!   it), deduplicated by the subject and by `Nats-Msg-Id` = the address, verified by
//!   whoever fetches it.
//!
//! # The rules without a bus in the middle
//!
//! NATS runs none of our code before it appends. A link reads the whole log when it is
//! dialled, into its own `Rules`, and checks what it publishes against them, so an honest
//! agent meets the same refusals as on the embedded bus; content is left out of that
//! verdict (`rules::Unseen`): a link awaits every content acknowledgement before it
//! publishes the event naming it (content that rides with its notify is in the event's
//! own message), and a reader verifies what it fetches. A master is the
//! single writer of the log's master events: a lease refuses a second one at its start,
//! and the server fences: a master's join (on `P.log.master.<hex>.join`) is its claim, and
//! each of its later events expects (`Nats-Expected-Last-Subject-Sequence` over
//! `P.log.master.*.join`) that no master joined since, so a master whose claim was taken
//! is refused, never interleaved, while its own events stay pipelined. What keeps a
//! dishonest peer's events out is the account's subject permissions (README, "Many
//! machines"); `filesync check` flags what gets in anyway.
//!
//! # Not offered
//!
//! Checkpoints (the log is never truncated: a NATS log starts at 1) and the announcements
//! of new large files (optional: slaves wait for the notify).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use filesync_master::hash::ContentHash;
use filesync_master::Change;
use futures_util::StreamExt;

mod address;
mod inline;
mod lease;
mod reader;
mod status;
mod writer;

use address::Author;
pub use address::{NatsAddress, DEFAULT_PREFIX};
use lease::Leases;
use reader::Reader;
use writer::{Expectation, Order, Outbox, Outgoing, Pace, Stored};

use crate::bus::api::{self, BusApi, Dial, Dialing, Link, Piece, Sending, Upload};
use crate::bus::client::{ClientError, Hello, Welcome};
use crate::bus::protocol::PIECE_SIZE;
use crate::bus::status::StatusReport;
use crate::checkpoint::Snapshot;
use crate::event::{Draft, Event, Role, Tag};
use crate::rules::{self, Place, Refusal, Rules};

/// Refused events a link remembers.
const REMEMBERED_REFUSALS: usize = 10_000;

/// Readers a link keeps between polls.
const MAX_READERS: usize = 4;

/// How long a request to the server may take before the link counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one request about a stream may go unanswered before it is asked again
/// (`existing_or_new`).
const CREATE_PATIENCE: Duration = Duration::from_secs(2);

/// How long a direct get of content may go unanswered before the stream's leader is asked
/// instead (`Inner::fetch`).
const DIRECT_PATIENCE: Duration = Duration::from_secs(2);

/// How often a connection asks its server whether it is there. The client gives a server
/// up after three unanswered pings and goes to another of the cluster's: a server cut off
/// (its socket open, answering nothing) is left within about 3 s, not the two minutes of
/// the client's default interval.
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Notifies whose changes a link remembers, for the rules' record of an error that names
/// one (older ones are looked up nowhere: such an error is recorded without its change).
const REMEMBERED_CHANGES: usize = 100_000;

/// A NATS address written wrong: every dial says so.
pub struct Unreachable(pub String);

impl Dial for Unreachable {
    fn dial<'a>(&'a self, _hello: &'a Hello) -> Dialing<'a> {
        let err = ClientError::Rejected(self.0.clone());
        Box::pin(std::future::ready(Err(err)))
    }

    fn describe(&self) -> String {
        self.0.clone()
    }
}

/// Dials a NATS bus.
pub struct NatsDial {
    address: NatsAddress,
    /// Whether a master's events go one at a time (`Inner::one_at_a_time`), learnt once
    /// for every link this dial makes.
    one_at_a_time: Arc<AtomicBool>,
}

impl NatsDial {
    pub fn new(address: NatsAddress) -> NatsDial {
        NatsDial {
            address,
            one_at_a_time: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Dial for NatsDial {
    fn dial<'a>(&'a self, hello: &'a Hello) -> Dialing<'a> {
        Box::pin(self.open(hello))
    }

    fn describe(&self) -> String {
        format!(
            "nats://{} (mirror {})",
            self.address.describe(),
            self.address.prefix
        )
    }
}

fn lost(err: impl std::fmt::Display) -> ClientError {
    tracing::debug!("nats: {err}");
    ClientError::Lost
}

fn protocol(err: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(err.to_string())
}

impl NatsDial {
    async fn connect(&self, hello: &Hello) -> Result<async_nats::Client, ClientError> {
        let address = &self.address;
        let connect_error = |cause: std::io::Error| ClientError::Connect {
            addr: address.describe(),
            cause,
        };
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("filesync {} {}", hello.role, hello.name))
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(PING_INTERVAL)
            .request_timeout(Some(REQUEST_TIMEOUT));
        if let Some((user, password)) = &address.login {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(creds) = &address.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(connect_error)?;
        }
        if let Some(nkey) = &address.nkey {
            let seed = std::fs::read_to_string(nkey).map_err(connect_error)?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(ca) = &address.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let servers: Vec<async_nats::ServerAddr> = address
            .servers
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(connect_error)?;
        options
            .connect(servers)
            .await
            .map_err(|err| connect_error(std::io::Error::other(err.to_string())))
    }

    /// The streams, created if this is the mirror's first agent.
    async fn streams(
        &self,
        js: &jetstream::Context,
    ) -> Result<(stream::Stream, stream::Stream), ClientError> {
        let address = &self.address;
        let log = stream::Config {
            name: address.log_stream(),
            subjects: vec![format!("{}.log.>", address.prefix)],
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            // Events go in atomic batches (`writer.rs`).
            allow_atomic_publish: true,
            num_replicas: address.replicas,
            ..Default::default()
        };
        let content = stream::Config {
            name: address.content_stream(),
            subjects: vec![format!("{}.content.*", address.prefix)],
            max_messages_per_subject: 1,
            allow_direct: true,
            allow_atomic_publish: true,
            num_replicas: address.replicas,
            ..Default::default()
        };
        Ok((
            existing_or_new(js, log).await?,
            existing_or_new(js, content).await?,
        ))
    }

    async fn open(&self, hello: &Hello) -> Result<(Link, Welcome), ClientError> {
        let client = self.connect(hello).await?;
        let js = jetstream::new(client);
        let (log, content) = self.streams(&js).await?;
        let content_atomic = content.cached_info().config.allow_atomic_publish;
        let info = log.get_info().await.map_err(lost)?;
        if info.config.num_replicas > 1 {
            self.one_at_a_time.store(true, Ordering::Relaxed);
        }
        let (start, head) = (info.state.first_sequence.max(1), info.state.last_sequence);
        let mut replica = Replica::default();
        let mut refused = BTreeMap::new();
        let mut reader = Reader::new(log.clone(), self.address.clone(), Vec::new());
        let mut next = start;
        // The newest event on the subjects this link's batches are ordered by, and in its
        // view (the head this link's reader reaches).
        let (mut ordered_last, mut view_head) = (0, 0);
        let (role, name) = (hello.role, hello.name.as_str());
        let in_order = |author: &Author| NatsAddress::in_order(role, name, author);
        let view = self.address.view(role, name);
        let in_view = |author: &Author| NatsAddress::in_view(role, name, author);
        // Where a slave's content can be read from if the content stream lacks it.
        let mut recent = inline::Recent::default();
        while next <= head {
            let events = reader.read(next, false).await?;
            if role == Role::Slave {
                recent.take_in(&events, reader.take_carried());
            }
            for event in events {
                next = event.seq + 1;
                let author = reader.author(&event);
                if author.as_ref().is_some_and(in_order) {
                    ordered_last = event.seq;
                }
                if view.is_empty() || author.as_ref().is_some_and(in_view) {
                    view_head = event.seq;
                }
                judge(&mut replica, &mut refused, &event, author);
            }
        }
        let asked = rules::Hello {
            role: hello.role,
            name: hello.name.clone(),
            place: Place::of(hello.role, hello.host.clone(), hello.dir.clone()),
            takeover: hello.takeover,
        };
        replica
            .rules
            .admit(&asked, &[])
            .map_err(|refusal| match refusal {
                Refusal::Busy(message) => ClientError::Busy(message),
                Refusal::Refused(message) => ClientError::Rejected(message),
            })?;
        let leases = Leases::take(&js, &self.address, hello).await?;
        let welcome = Welcome {
            head: view_head,
            start,
            answered: replica.rules.answered(&hello.name),
            retry: match hello.role {
                Role::Slave => replica.rules.retryable(&hello.name),
                _ => Vec::new(),
            },
        };
        let join = replica.rules.join(&asked);
        let link = Inner {
            subject: self.address.log_subject(hello.role, &hello.name),
            address: self.address.clone(),
            js: js.clone(),
            content,
            role: hello.role,
            name: hello.name.clone(),
            session: format!(
                "{:x}",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ),
            sent: AtomicU64::new(0),
            pending: tokio::sync::Mutex::new(Pending {
                content: Vec::new(),
                inline: None,
                claim: replica.last_join,
            }),
            outbox: Outbox::new(
                js.clone(),
                self.one_at_a_time.clone(),
                Some(Order {
                    subjects: self.address.order_subjects(hello.role, &hello.name),
                    last: ordered_last,
                }),
            ),
            content_outbox: Outbox::new(js.clone(), Arc::new(AtomicBool::new(false)), None),
            content_atomic,
            one_at_a_time: self.one_at_a_time.clone(),
            atomic: info.config.allow_atomic_publish,
            replica: Mutex::new(replica),
            // The reader of the whole log is where a read of it goes on; not of a view.
            readers: Mutex::new(if view.is_empty() {
                vec![reader]
            } else {
                Vec::new()
            }),
            view,
            log,
            leases: tokio::sync::Mutex::new(leases),
            refused: Mutex::new(refused),
            recent: Mutex::new(recent),
            frontier: AtomicU64::new(view_head + 1),
        };
        if !(hello.quiet && hello.role == Role::Listener) {
            let seq = link.send(join, false).await?.await?;
            if hello.role == Role::Master {
                // This master's claim: every later event of its names it.
                link.pending.lock().await.claim = seq;
            }
        }
        Ok((Arc::new(NatsLink(Arc::new(link))), welcome))
    }
}

/// The stream `config` names, as it is (whoever made it decided its replicas), or made
/// now; made meanwhile by another agent, it is read again. A cluster may leave a request
/// about a stream unanswered while another client's request to make it is being agreed
/// on (a mirror's first agents start together: the loser waited the client's 10 s), so
/// each request waits at most `CREATE_PATIENCE` and is asked again, for up to
/// `REQUEST_TIMEOUT` in all.
async fn existing_or_new(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, ClientError> {
    let name = config.name.clone();
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut config = config;
    loop {
        if let Ok(Ok(stream)) = tokio::time::timeout(CREATE_PATIENCE, js.get_stream(&name)).await {
            return Ok(stream);
        }
        let made = tokio::time::timeout(CREATE_PATIENCE, js.create_stream(config.clone())).await;
        let refused = match made {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) => err.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(ClientError::Protocol(format!(
                "cannot make stream {name}: {refused}"
            )));
        }
        // A server older than 2.12 knows no atomic batches: the stream without them.
        if config.allow_atomic_publish && refused != "no answer" && !refused.contains("in use") {
            config.allow_atomic_publish = false;
        }
    }
}

/// Holds `event` (published by `author`) to the rules, as the embedded bus does before it
/// appends: taken into `replica` when they allow it, recorded in `refused` (and never taken
/// in) when not. Joins are the agents' own on NATS: allowed when the role is the subject's.
fn judge(
    replica: &mut Replica,
    refused: &mut BTreeMap<u64, String>,
    event: &Event,
    author: Option<Author>,
) {
    if event.seq <= replica.seen {
        return;
    }
    let verdict = match (&author, event.body.tag) {
        (None, _) => Err("not published on an agent's subject".to_owned()),
        (Some(author), Some(Tag::Join)) if event.body.role == Some(author.role) => Ok(()),
        (Some(author), Some(Tag::Join)) => Err(format!("a join on a {} subject", author.role)),
        (Some(author), _) => {
            replica
                .rules
                .check(author.role, &event.agent, &event.body, &rules::Unseen)
        }
    };
    match verdict {
        Ok(()) => replica.observe(event, author),
        Err(reason) => {
            replica.seen = event.seq;
            tracing::warn!("#{} is against the bus's rules: {reason}", event.seq);
            refused.insert(event.seq, reason);
            while refused.len() > REMEMBERED_REFUSALS {
                refused.pop_first();
            }
        }
    }
}

/// A link's own copy of the rules, fed every event it reads and every event it publishes.
#[derive(Default)]
struct Replica {
    rules: Rules,
    /// The newest `seq` taken in.
    seen: u64,
    /// The newest master join's `seq`: the claim a master joining next expects.
    last_join: u64,
    /// Recent notifies' changes, by `seq`.
    changes: BTreeMap<u64, Change>,
}

impl Replica {
    /// Takes `event` in (published by `author`, from its subject), once.
    fn observe(&mut self, event: &Event, author: Option<Author>) {
        if event.seq <= self.seen {
            return;
        }
        self.seen = event.seq;
        if author.is_some_and(|a| a.join) {
            self.last_join = event.seq;
        }
        if event.body.tag == Some(Tag::Notify) {
            if let Ok(change) = event.body.change() {
                self.changes.insert(event.seq, change);
                while self.changes.len() > REMEMBERED_CHANGES {
                    self.changes.pop_first();
                }
            }
        }
        let changes = &self.changes;
        self.rules
            .observe(event, |cause| changes.get(&cause).cloned());
    }
}

/// What a link's next event waits on, or takes along.
struct Pending {
    /// Content sent since the last event: stored before the next event is sent.
    content: Vec<Stored>,
    /// Small content put last, which rides with the next event if that is its notify
    /// (stored by address after it; before it, and awaited, if it does not ride).
    inline: Option<Held>,
    /// For a master: the `seq` of its join (before it joined, of the last master's), which
    /// each of its events expects to be the newest join in the log.
    claim: u64,
}

/// Small content held for the next event (`Pending::inline`).
struct Held {
    address: ContentHash,
    content: Vec<u8>,
}

/// One agent's link to a NATS bus.
struct NatsLink(Arc<Inner>);

/// What a link and its uploads share.
struct Inner {
    address: NatsAddress,
    js: jetstream::Context,
    content: stream::Stream,
    role: Role,
    name: String,
    /// This agent's subject in the log.
    subject: String,
    /// Unique per dial, for the publishes' `Nats-Msg-Id`.
    session: String,
    sent: AtomicU64,
    pending: tokio::sync::Mutex<Pending>,
    outbox: Outbox,
    /// A replicated stream lets one event at a time carry a given expectation (the
    /// server refuses the next one while the last is being agreed on, error 10164), so
    /// there a master's events are sent one at a time; learnt from the stream's replicas,
    /// or from the first such refusal.
    one_at_a_time: Arc<AtomicBool>,
    /// Content to store, batched as events are when the content's stream allows it.
    content_outbox: Outbox,
    content_atomic: bool,
    /// The log takes atomic batches (NATS 2.12 or later): events then go in batches, each
    /// made of what was queued while the last was being stored, one synced write (and, on
    /// a replicated log, one round of agreement) for many events.
    atomic: bool,
    replica: Mutex<Replica>,
    /// Readers of the log, each where its last read ended: a poll takes the one at its
    /// `from` (or a new one) for as long as it waits, so that two readings (a slave's
    /// subscription and its verification's replay) never wait for each other.
    readers: Mutex<Vec<Reader>>,
    /// What this link's reads read (`NatsAddress::view`): none, the whole log.
    view: Vec<String>,
    log: stream::Stream,
    /// Held for as long as the link lives, given up when the agent says `leave`.
    leases: tokio::sync::Mutex<Option<Leases>>,
    /// Events read that the rules refuse, and why (the newest few).
    refused: Mutex<BTreeMap<u64, String>>,
    /// The content that notifies read by a slave carried (`inline.rs`).
    recent: Mutex<inline::Recent>,
    /// The `seq` after the newest event of the link's view read so far (when dialled, its
    /// view's head): a read from there on follows the log as it comes.
    frontier: AtomicU64,
}

impl Inner {
    fn replica(&self) -> MutexGuard<'_, Replica> {
        self.replica.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `Nats-Msg-Id` of `draft`, by which the server drops a second copy. A slave's
    /// first answer to a notify (a consume or error, one per notify by SPEC's invariant 2)
    /// and a repair of one of its errors are named by what they answer, whatever the
    /// session: such an answer sent through a server that was cut off may reach the log
    /// once that server is back, after the slave (its acknowledgement never come)
    /// reconnected elsewhere and answered again; the second to arrive is dropped. Anything
    /// else (a restore after drift or a resync may answer the same `cause` many times) is
    /// named by its session and its place in it.
    fn msg_id(&self, draft: &Draft) -> String {
        let name = hex::encode(&self.name);
        let first_answer = draft.drift.is_none() && draft.resync.is_none();
        match (self.role, draft.tag, draft.cause) {
            (Role::Slave, Some(tag), Some(cause)) if first_answer => match draft.repairs {
                Some(error) => format!("{name}.{tag}.{cause}.{error}"),
                None => format!("{name}.{tag}.{cause}"),
            },
            _ => {
                let n = self.sent.fetch_add(1, Ordering::Relaxed);
                format!("{name}.{}.{n}", self.session)
            }
        }
    }

    /// Queues `draft` (checked by the rules when `check`) behind the content sent before
    /// it; the reply is its `seq`. A master's events name its claim (its join), so once
    /// another master has joined, the server refuses them.
    async fn send(&self, draft: Draft, check: bool) -> Result<api::Reply<u64>, ClientError> {
        let mut pending = self.pending.lock().await;
        // An error answering an event the rules refuse names no notify they know of.
        let answers_refused = draft.tag == Some(Tag::Error)
            && draft
                .cause
                .is_some_and(|cause| self.refusal(cause).is_some());
        if check && !answers_refused {
            self.replica()
                .rules
                .check(self.role, &self.name, &draft, &rules::Unseen)
                .map_err(ClientError::Refused)?;
        }
        // Content lost with the connection (a copy nothing awaits, say): so is the link.
        if self.content_outbox.is_broken() {
            return Err(ClientError::Lost);
        }
        let event = serde_json::to_string(&draft).map_err(protocol)?;
        let event = event.parse::<async_nats::HeaderValue>().map_err(protocol)?;
        // A small file's content rides with the notify naming it (`inline.rs`), and is
        // stored by address after it, so that the notify's synced write goes first;
        // content that does not ride (the last small chunk of a large file, say) is
        // stored first and waited for, as any other.
        let mut copy = None;
        let payload = match pending.inline.take() {
            Some(held) if inline::rides(&draft, &held.address) => {
                let payload = held.content.clone();
                copy = Some(held);
                payload
            }
            Some(held) => {
                let stored = self.store(held.address, held.content)?;
                pending.content.push(stored);
                Vec::new()
            }
            None => Vec::new(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(inline::EVENT_HEADER, event);
        headers.insert("Nats-Msg-Id", self.msg_id(&draft).as_str());
        let join = draft.tag == Some(Tag::Join);
        let mut subject = self.subject.clone();
        let mut expects = None;
        if self.role == Role::Master {
            expects = Some(Expectation {
                claim: pending.claim,
                joins: self.address.joins(),
            });
            if join {
                subject = self.address.join_subject(&self.name);
            }
            // The master reads nothing back: its rules learn its own events as it sends
            // them (only their effect on the tree matters to its next check).
            let mut replica = self.replica();
            let event = Event {
                seq: replica.seen + 1,
                time: crate::event::now_rfc3339(),
                agent: self.name.clone(),
                body: draft,
            };
            replica.observe(&event, None);
        }
        let pace = match (self.role, self.one_at_a_time.load(Ordering::Relaxed)) {
            _ if self.atomic => Pace::Batched,
            (Role::Master, true) => Pace::Alone,
            _ => Pace::Pipelined,
        };
        let (sent, ack) = tokio::sync::oneshot::channel();
        self.outbox.send(Outgoing {
            subject,
            headers,
            payload,
            expects,
            content: std::mem::take(&mut pending.content),
            pace,
            sent,
        })?;
        if let Some(held) = copy {
            // Its fate is not the notify's (the notify holds the content itself); a copy
            // lost with the connection makes the next event fail (`Outbox::is_broken`).
            drop(self.store(held.address, held.content)?);
        }
        let one_at_a_time = self.one_at_a_time.clone();
        Ok(api::Reply::new(async move {
            let sent = ack.await.map_err(|_| ClientError::Lost)??;
            sent.seq(&one_at_a_time).await
        }))
    }
}

/// A request that reads (content, its presence), sent at once and answered whenever it
/// comes: such requests need no order among themselves, so a slave's reads ahead are
/// in flight together, as on the embedded bus, not one round trip after another.
fn in_flight<T: Send + 'static>(
    request: impl std::future::Future<Output = Result<T, ClientError>> + Send + 'static,
) -> Sending<'static, T> {
    let task = tokio::spawn(request);
    Box::pin(std::future::ready(Ok(api::Reply::new(async move {
        task.await.map_err(|_| ClientError::Lost)?
    }))))
}

/// What a failed publish means. The rules were asked before it was sent, so the server's
/// refusals are of two kinds: a master fenced by another's join (the wrong last sequence:
/// this master must stop), and a stream that cannot take it now (no leader during an
/// election, an expectation the new leader cannot judge yet, no answer in time): nothing
/// was appended, and the agent reconnects, reads the log again and goes on from it. Only
/// content too large for the server is refused for good.
pub(super) fn publish_error(err: jetstream::context::PublishError) -> ClientError {
    use jetstream::context::PublishErrorKind;
    match err.kind() {
        PublishErrorKind::WrongLastSequence => ClientError::Rejected(
            "another master joined this log since this one did: one master per log".into(),
        ),
        PublishErrorKind::MaxPayloadExceeded => ClientError::Refused(format!(
            "{err}: the NATS server's max_payload must be at least 2 MiB"
        )),
        _ => {
            tracing::debug!("nats: {err}; reconnecting");
            ClientError::Lost
        }
    }
}

impl Inner {
    async fn poll(&self, from: u64) -> Result<api::Reply<Vec<Event>>, ClientError> {
        let from = from.max(1);
        let mut reader = {
            let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            match readers.iter().position(|r| r.at() == from) {
                Some(idx) => readers.swap_remove(idx),
                None => Reader::new(self.log.clone(), self.address.clone(), self.view.clone()),
            }
        };
        // Only a slave applies what it reads, and only what it follows as it comes: a read
        // of older events (catching up, a verification's replay) is of headers only, and
        // the content of what it applies then comes from the content stream.
        let live = self.role == Role::Slave && from >= self.frontier.load(Ordering::Relaxed);
        let events = reader.read(from, live).await?;
        self.frontier.fetch_max(reader.at(), Ordering::Relaxed);
        for event in &events {
            self.judge(event, reader.author(event));
        }
        let carried = reader.take_carried();
        if self.role == Role::Slave && !carried.is_empty() {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.take_in(&events, carried);
        }
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        readers.push(reader);
        while readers.len() > MAX_READERS {
            readers.remove(0);
        }
        Ok(api::Reply::ready(Ok(events)))
    }

    /// Holds `event` to the rules (see [`judge`]).
    fn judge(&self, event: &Event, author: Option<Author>) {
        let mut replica = self.replica();
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        judge(&mut replica, &mut refused, event, author);
    }

    fn refusal(&self, seq: u64) -> Option<String> {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.get(&seq).cloned()
    }

    /// The content under `address`, verified against it, if any: carried by a notify read
    /// lately (`inline.rs`), stored in the content stream, or in the log message of a
    /// notify that carried it. Content found there that hashes otherwise is refused.
    async fn fetch(&self, address: &ContentHash) -> Result<Option<bytes::Bytes>, ClientError> {
        let verified = |content: &bytes::Bytes| ContentHash::of(content) == *address;
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(address);
        // A notify's payload is whatever its publisher sent: taken only if it is the content.
        if let Some(content) = recent.filter(verified) {
            return Ok(Some(content));
        }
        let found = match self.fetch_stored(address).await? {
            Some(content) => Some(content),
            None => self.fetch_carried(address).await?,
        };
        match found {
            Some(content) if !verified(&content) => Err(ClientError::Refused(format!(
                "the content stored under {address} hashes otherwise"
            ))),
            found => Ok(found),
        }
    }

    /// Content the content stream lacks (its copy not stored yet, or never: a master cut
    /// off between a notify and its copy), from the notify that carried it, if this link
    /// has read one.
    async fn fetch_carried(
        &self,
        address: &ContentHash,
    ) -> Result<Option<bytes::Bytes>, ClientError> {
        let carrier = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .carrier(address);
        let Some(seq) = carrier else {
            return Ok(None);
        };
        let message = self.log.get_raw_message(seq).await.map_err(lost)?;
        Ok(
            match inline::Carrying::of(Some(&message.headers), &message.payload) {
                inline::Carrying::Header { content, .. } if !content.is_empty() => {
                    Some(content.clone())
                }
                _ => None,
            },
        )
    }

    /// The content stream's copy of `address`, if it holds one. Any replica answers a
    /// direct get, and one that has not caught up yet finds nothing, while one cut off
    /// from the cluster answers nothing until its routes time out (minutes): a miss, or no
    /// answer within `DIRECT_PATIENCE`, is asked of the stream's leader, which has
    /// everything acknowledged.
    async fn fetch_stored(
        &self,
        address: &ContentHash,
    ) -> Result<Option<bytes::Bytes>, ClientError> {
        let subject = self.address.content_subject(address);
        let direct = self.content.direct_get_last_for_subject(subject.clone());
        match tokio::time::timeout(DIRECT_PATIENCE, direct).await {
            Ok(Ok(message)) => return Ok(Some(message.payload)),
            Ok(Err(err)) if err.kind() == stream::DirectGetErrorKind::NotFound => {}
            Ok(Err(err)) => return Err(lost(err)),
            Err(_) => tracing::debug!("nats: no direct answer for {address}; asking the leader"),
        }
        match self.content.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => Ok(Some(message.payload)),
            Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(lost(err)),
        }
    }

    /// Whether the content stream holds `address`: asked of the stream's leader as the
    /// subjects it holds under the address's subject, so that the answer carries no content
    /// (a master asks about every chunk of a large file it changed, and fetching each held
    /// chunk to say yes moved the whole file back to the master).
    async fn has(&self, address: ContentHash) -> Result<api::Reply<bool>, ClientError> {
        let subject = self.address.content_subject(&address);
        let mut held = self
            .content
            .info_with_subjects(&subject)
            .await
            .map_err(lost)?;
        let found = match held.next().await {
            Some(Ok((held, count))) => held == subject && count > 0,
            Some(Err(err)) => return Err(lost(err)),
            None => false,
        };
        Ok(api::Reply::ready(Ok(found)))
    }

    async fn put(
        &self,
        address: ContentHash,
        content: Vec<u8>,
    ) -> Result<api::Reply<()>, ClientError> {
        let actual = ContentHash::of(&content);
        if actual != address {
            return Err(ClientError::Refused(format!(
                "content hashes to {actual}, not {address}"
            )));
        }
        let mut pending = self.pending.lock().await;
        if let Some(earlier) = pending.inline.take() {
            let stored = self.store(earlier.address, earlier.content)?;
            pending.content.push(stored);
        }
        if content.len() > inline::INLINE_MAX {
            let stored = self.store(address, content)?;
            pending.content.push(stored);
        } else {
            // Small: it may ride with its notify (`send`), and is stored by address then.
            pending.inline = Some(Held { address, content });
        }
        Ok(api::Reply::ready(Ok(())))
    }

    /// Queues `content` for the content stream, under `address`.
    fn store(&self, address: ContentHash, content: Vec<u8>) -> Result<Stored, ClientError> {
        // Content stored again replaces itself (one message per address). Sent alone, a
        // copy is dropped by its `Nats-Msg-Id`; in a batch, a copy would fail the batch
        // (error 10201), so there it goes without one.
        let mut headers = HeaderMap::new();
        let pace = match self.content_atomic {
            true => Pace::Batched,
            false => {
                headers.insert("Nats-Msg-Id", address.to_string().as_str());
                Pace::Pipelined
            }
        };
        let subject = self.address.content_subject(&address);
        self.content_outbox
            .send_plain(subject, headers, content, pace)
    }

    async fn get(
        &self,
        address: ContentHash,
        offset: u64,
    ) -> Result<api::Reply<Piece>, ClientError> {
        let Some(content) = self.fetch(&address).await? else {
            return Ok(api::Reply::ready(Err(ClientError::Refused(format!(
                "no blob {address}"
            )))));
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(content.len());
        let end = start.saturating_add(PIECE_SIZE).min(content.len());
        Ok(api::Reply::ready(Ok((
            content[start..end].to_vec(),
            end == content.len(),
        ))))
    }
}

impl BusApi for NatsLink {
    fn publish(&self, event: Draft) -> Sending<'_, u64> {
        let inner = self.0.clone();
        Box::pin(async move {
            let leave = event.tag == Some(Tag::Leave);
            let reply = inner.send(event, true).await?;
            if !leave {
                return Ok(reply);
            }
            // Its last word: the name is free once the leave is in the log.
            Ok(api::Reply::new(async move {
                let seq = reply.await?;
                if let Some(leases) = inner.leases.lock().await.as_mut() {
                    leases.release().await;
                }
                Ok(seq)
            }))
        })
    }

    fn poll(&self, from: u64) -> Sending<'_, Vec<Event>> {
        // Sent at once; the reply is the wait for events, which a caller may abandon for
        // something else (a slave's periodic verification) and take up again.
        let inner = self.0.clone();
        Box::pin(std::future::ready(Ok(api::Reply::new(async move {
            inner.poll(from).await?.await
        }))))
    }

    fn has(&self, address: ContentHash) -> Sending<'_, bool> {
        let inner = self.0.clone();
        in_flight(async move { inner.has(address).await?.await })
    }

    fn put(&self, address: ContentHash, content: Vec<u8>) -> Sending<'_, ()> {
        Box::pin(self.0.put(address, content))
    }

    fn get(&self, address: ContentHash, offset: u64) -> Sending<'_, Piece> {
        let inner = self.0.clone();
        in_flight(async move { inner.get(address, offset).await?.await })
    }

    fn begin_upload(&self) -> Box<dyn Upload + '_> {
        Box::new(NatsUpload {
            link: self.0.clone(),
            received: Vec::new(),
        })
    }

    fn checkpoint(&self, seq: u64) -> Sending<'_, Snapshot> {
        Box::pin(async move {
            Err(ClientError::Refused(format!(
                "no checkpoint at {seq}: a NATS log is never truncated"
            )))
        })
    }

    fn status(&self) -> Sending<'_, StatusReport> {
        let inner = self.0.clone();
        in_flight(async move { status::report(&inner).await })
    }

    fn refusal(&self, seq: u64) -> Option<String> {
        self.0.refusal(seq)
    }

    fn publish_window(&self) -> usize {
        match self.0.atomic {
            // A whole batch gathers while the one before is stored.
            true => 2 * writer::MAX_BATCH,
            false => api::PUBLISH_WINDOW,
        }
    }

    fn reads_whole_log(&self) -> bool {
        self.0.view.is_empty()
    }
}

/// Content larger than one put, gathered and stored as one message (the server's
/// `max_payload` bounds it).
struct NatsUpload {
    link: Arc<Inner>,
    received: Vec<u8>,
}

impl Upload for NatsUpload {
    fn piece(&mut self, piece: Vec<u8>) -> Sending<'_, ()> {
        self.received.extend_from_slice(&piece);
        Box::pin(std::future::ready(Ok(api::Reply::ready(Ok(())))))
    }

    fn commit(self: Box<Self>, address: ContentHash) -> Sending<'static, ()> {
        let NatsUpload { link, received } = *self;
        Box::pin(async move { link.put(address, received).await })
    }

    fn abort(self: Box<Self>) -> Sending<'static, ()> {
        Box::pin(std::future::ready(Ok(api::Reply::ready(Ok(())))))
    }
}
