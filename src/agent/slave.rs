//! The slave agent: the bus, into its directory.
//!
//! It follows the log in `seq` order from its durable position, applies each notify with
//! `filesync-slave`, and answers it with a `consume` (echoing what it wrote) or an `error`.
//! Delivery is at-least-once (a crash between applying and recording the position replays
//! the event) and application is idempotent, which together give effectively-once. The log
//! decides what has been answered: the bus tells us the highest notify our name answered,
//! and we never answer one twice, even when our position file was lost.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use filesync_master::hash::ContentHash;
use filesync_master::{Change, Kind};
use filesync_slave::known::KnownCopies;
use filesync_slave::{Applied, Applier, FileStart};
use futures_util::FutureExt;

use super::chunked::{apply_chunked, Transfer};
use super::follow::Follower;
use super::progress::Progress;
use super::retry::{Failed, Retries};
use super::verify::Verifier;
use super::write_behind::WriteBehind;
use super::{Connector, SessionEnd};
use crate::bus::api::{call, Dial, Link, Piece, Reply};
use crate::bus::client::PIECES_IN_FLIGHT;
use crate::bus::protocol::PIECE_SIZE;
use crate::bus::{ClientError, Subscription, Welcome};
use crate::event::{Draft, Event, EventError, Role, Tag};
use crate::state::{check_creatable, refuse_state_inside, would_be_canonical, StateDir};

/// How the slave runs.
#[derive(Debug, Clone)]
pub struct SlaveOptions {
    pub dir: PathBuf,
    pub bus: String,
    pub name: String,
    pub token: Option<String>,
    pub state_dir: PathBuf,
    /// Verify the directory against the state applied this often, besides at start.
    pub verify_every: Option<Duration>,
    /// Report differences found by a verification instead of restoring them.
    pub keep_local: bool,
    /// Reach the bus over mutual TLS: the ID it must have (our identity is in the state).
    pub bus_id: Option<crate::identity::PeerId>,
    /// How long to keep trying a bus that has never answered (`None`: forever).
    pub wait_for_bus: Option<Duration>,
    /// The way to a bus that is not at an address (an in-memory bus in the agents' unit
    /// tests); `None`: `bus` over TCP (with TLS when `bus_id` is given).
    pub dial: Option<std::sync::Arc<dyn Dial>>,
}

/// Why a notify could not be applied.
pub(super) enum ApplyFailure {
    /// Reported as an `error` event; the slave goes on.
    Change(String),
    /// The bus went away mid-transfer: reconnect and try the same event again.
    Bus(ClientError),
}

/// Runs the slave until `shutdown`, reconnecting when the bus goes away.
///
/// Everything a start can be refused for is checked before anything is created or joined:
/// the directories (where they are, that they can be made, that they do not nest), the
/// state (readable, writable, not held by another process), then the bus's own refusals
/// (its token, our name in use, our directory nesting with the master's). A state
/// directory created for a start the bus then refused is removed again.
pub async fn run(options: SlaveOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let dir = would_be_canonical(&options.dir)?;
    check_creatable(&dir, "slave directory")?;
    let state_path = would_be_canonical(&options.state_dir)?;
    refuse_state_inside(&state_path, &dir, "synced directory")?;
    let position_file = state_path.join("position");
    // Fail now, not at the first event, when the state is unreadable ...
    read_position(&position_file)?;
    let state = StateDir::open(&state_path)?;
    // ... or cannot record where we are.
    if position_file.exists() {
        if let Err(err) = std::fs::OpenOptions::new().write(true).open(&position_file) {
            return Err(err).with_context(|| {
                format!("cannot record positions in {}", position_file.display())
            });
        }
    }
    let tls = match options.bus_id {
        Some(bus_id) => match crate::identity::Identity::load_or_create(&state_path) {
            Ok(identity) => {
                tracing::info!("our ID is {} (the bus must list it: --peer)", identity.id);
                Some(crate::bus::tls::ClientTls {
                    identity: std::sync::Arc::new(identity),
                    bus_id,
                })
            }
            Err(err) => {
                state.abandon();
                return Err(err);
            }
        },
        None => None,
    };
    let dial = options
        .dial
        .clone()
        .unwrap_or_else(|| crate::bus::dial(&options.bus, tls));
    let mut connector = Connector::new(
        dial,
        Role::Slave,
        &options.name,
        options.token.clone(),
        &dir,
    )
    .wait_for_bus(options.wait_for_bus);
    let mut shutdown = Box::pin(shutdown);
    let mut next = match connector.connect(&mut shutdown).await {
        Ok(connected) => connected,
        Err(err) => {
            state.abandon();
            return Err(err);
        }
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create slave directory {}", dir.display()))?;
    let verifier = Verifier {
        dir: &dir,
        stamps: state_path.join("verified"),
        keep_local: options.keep_local,
    };
    let mut schedule = Schedule {
        verify_every: options.verify_every,
        verify_now: true,
    };
    // What the slave knows of the large files it wrote lasts across sessions, and across
    // restarts in `SDIR/known` (saved with the position, and at a clean stop).
    let known_file = state_path.join("known");
    let applier = Applier::new(&dir).knowing(KnownCopies::load(&known_file));
    while let Some((client, welcome)) = next {
        let ended = session(
            &verifier,
            &applier,
            &position_file,
            client,
            welcome,
            &mut schedule,
            &mut shutdown,
        );
        match ended.await? {
            SessionEnd::Stopped => {
                save_known(&applier);
                return Ok(());
            }
            SessionEnd::BusLost(err) => tracing::warn!("{err}; reconnecting"),
        }
        next = connector.connect(&mut shutdown).await?;
    }
    Ok(())
}

/// How many events ahead the slave asks for small files' content: enough that the bus's
/// replies arrive before they are needed (W2: 32 left the slave waiting a fifth of its time,
/// 128 did not; 512 was no faster; see docs/BENCHMARKS.md) ...
const LOOKAHEAD: usize = 128;
/// ... and at most this many bytes of it, so a run of 1 MiB files keeps 8 of them coming,
/// not 128.
const LOOKAHEAD_BYTES: u64 = 8 << 20;

/// An event taken from the subscription, with its content already requested.
struct Ahead {
    event: Event,
    /// What a notify asks for (`None` for other events).
    change: Option<Result<Change, EventError>>,
    content: Option<Reply<Piece>>,
    /// The size of that content.
    bytes: u64,
}

/// The events taken ahead, in `seq` order, and how much content they have asked for.
#[derive(Default)]
struct Window {
    events: VecDeque<Ahead>,
    bytes: u64,
}

impl Window {
    fn has_room(&self) -> bool {
        self.events.len() < LOOKAHEAD && self.bytes < LOOKAHEAD_BYTES
    }

    fn push(&mut self, ahead: Ahead) {
        self.bytes += ahead.bytes;
        self.events.push_back(ahead);
    }

    fn pop(&mut self) -> Option<Ahead> {
        let ahead = self.events.pop_front()?;
        self.bytes -= ahead.bytes;
        Some(ahead)
    }
}

/// Takes `event` ahead, asking for its content now when it is a small file (one piece), so
/// that the content arrives while earlier events are applied.
async fn prefetch(client: &Link, event: Event) -> Result<Ahead, ClientError> {
    // Read once here, used again when it is applied.
    let change = (event.tag() == Some(Tag::Notify)).then(|| event.body.change());
    let small_file = match &change {
        Some(Ok(Change::Put { entry, .. })) => {
            (entry.kind == Kind::File && entry.size <= PIECE_SIZE as u64).then_some(entry.size)
        }
        _ => None,
    };
    let address = event
        .body
        .sha256
        .as_deref()
        .and_then(ContentHash::parse_hex);
    let (content, bytes) = match (address, small_file) {
        (Some(address), Some(size)) => (Some(client.get(address, 0).await?), size),
        _ => (None, 0),
    };
    Ok(Ahead {
        event,
        change,
        content,
        bytes,
    })
}

/// An answer sent and not yet acknowledged.
struct Sent {
    /// The notify it answers.
    cause: u64,
    reply: Reply<u64>,
    /// For an error: the change that failed, to retry once the error has its `seq`.
    failed: Option<Failed>,
}

/// Waits for every answer sent so far to be acknowledged.
async fn settle_all(
    in_flight: &mut VecDeque<Sent>,
    retries: &mut Retries,
) -> Result<(), ClientError> {
    while !in_flight.is_empty() {
        settle_oldest(in_flight, retries).await?;
    }
    Ok(())
}

/// Waits for the oldest answer's acknowledgement and takes it; cancel-safe (the answer
/// stays in flight until its acknowledgement has come), so it can race the next event.
async fn settle_oldest(
    in_flight: &mut VecDeque<Sent>,
    retries: &mut Retries,
) -> Result<(), ClientError> {
    let Some(oldest) = in_flight.front_mut() else {
        return Ok(());
    };
    let outcome = (&mut oldest.reply).await;
    match in_flight.pop_front() {
        Some(sent) => settled(sent.cause, sent.failed, outcome, retries),
        None => Ok(()),
    }
}

/// Takes the answers at the front whose acknowledgements have come, without waiting for
/// any; returns the `seq` of the oldest notify whose answer is still on its way.
async fn settle_arrived(
    in_flight: &mut VecDeque<Sent>,
    retries: &mut Retries,
) -> Result<Option<u64>, ClientError> {
    while let Some(front) = in_flight.front_mut() {
        let Some(outcome) = (&mut front.reply).now_or_never() else {
            return Ok(Some(front.cause));
        };
        if let Some(sent) = in_flight.pop_front() {
            settled(sent.cause, sent.failed, outcome, retries)?;
        }
    }
    Ok(None)
}

/// What an acknowledgement (or refusal) of the answer to `cause` means.
fn settled(
    cause: u64,
    failed: Option<Failed>,
    outcome: Result<u64, ClientError>,
    retries: &mut Retries,
) -> Result<(), ClientError> {
    match outcome {
        Ok(seq) => {
            if let Some(failed) = failed {
                retries.add(seq, cause, failed);
            }
            Ok(())
        }
        Err(err) if err.is_connection() => Err(err),
        Err(err) => {
            tracing::error!("#{cause}: the bus refused our answer: {err}");
            Ok(())
        }
    }
}

/// The errors the bus says are ours to retry, with the changes they failed to apply.
async fn load_retries(client: &Link, welcome: &Welcome) -> Result<Retries, ClientError> {
    let mut retries = Retries::default();
    for &(error, cause) in &welcome.retry {
        let notify = call(client.poll(cause)).await?.into_iter().next();
        let failed = notify.and_then(|event| {
            let manifest = event.body.manifest.clone();
            event
                .body
                .change()
                .ok()
                .map(|change| Failed { change, manifest })
        });
        match failed {
            Some(failed) => retries.add_now(error, cause, failed),
            _ => tracing::warn!("error #{error}: notify #{cause} cannot be read back to retry it"),
        }
    }
    Ok(retries)
}

/// Tries the failed changes that are due again; one that applies is published as a
/// consume that repairs its error.
async fn run_retries(
    retries: &mut Retries,
    applier: &Applier,
    client: &Link,
) -> Result<(), ClientError> {
    for retry in retries.take_due(tokio::time::Instant::now()) {
        let manifest = retry.failed.manifest.as_deref();
        let change = Ok(retry.failed.change.clone());
        match apply(applier, client, None, change, None, manifest).await {
            Ok(done) => {
                let mut repair = done.consume(retry.cause, manifest);
                repair.repairs = Some(retry.error);
                match call(client.publish(repair)).await {
                    Ok(seq) => tracing::info!(
                        "#{seq}: applied {} at last, repairing error #{}",
                        done.change,
                        retry.error
                    ),
                    Err(err) if err.is_connection() => return Err(err),
                    Err(err) => tracing::warn!("repair of error #{} refused: {err}", retry.error),
                }
            }
            Err(ApplyFailure::Bus(err)) => return Err(err),
            Err(ApplyFailure::Change(message)) => {
                tracing::debug!("retry of error #{} failed again: {message}", retry.error);
                retries.failed_again(retry);
            }
        }
    }
    Ok(())
}

/// When the slave verifies its directory: at its first session, then every `verify_every`.
struct Schedule {
    verify_every: Option<Duration>,
    verify_now: bool,
}

/// Verifies the directory against the state as of `position` (or, with nothing applied
/// yet, only removes what a killed predecessor left), and drops the retries the repairs
/// settled.
async fn verify(
    verifier: &Verifier<'_>,
    position: u64,
    head: u64,
    client: &Link,
    applier: &Applier,
    retries: &mut Retries,
) -> Result<(), ClientError> {
    if position == 0 {
        match applier.remove_leftovers() {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} unfinished transfer(s)"),
            Err(err) => tracing::warn!("cannot clean up {}: {err}", verifier.dir.display()),
        }
        return Ok(());
    }
    let verified = verifier.run(position, head, client, applier).await?;
    if verified.leftovers > 0 {
        tracing::info!("removed {} unfinished transfer(s)", verified.leftovers);
    }
    if !verified.repaired.is_empty() || verified.kept > 0 {
        tracing::info!(
            "verified {}: {} path(s) restored, {} left as found",
            verifier.dir.display(),
            verified.repaired.len(),
            verified.kept
        );
    }
    for change in &verified.repaired {
        retries.forget_overlapping(change);
    }
    Ok(())
}

/// Why a session stops before its loop ends it: the bus went away (reconnect) or something
/// no reconnection mends.
enum Interrupt {
    End(SessionEnd),
    Fatal(anyhow::Error),
}

impl From<ClientError> for Interrupt {
    fn from(err: ClientError) -> Interrupt {
        match err {
            err if err.is_connection() => Interrupt::End(SessionEnd::BusLost(err)),
            // Retention moved the log's start past us meanwhile: the next session resyncs
            // from the new checkpoint.
            err @ ClientError::Truncated { .. } => Interrupt::End(SessionEnd::BusLost(err)),
            err => Interrupt::Fatal(anyhow::Error::new(err).context("cannot follow the event log")),
        }
    }
}

impl From<anyhow::Error> for Interrupt {
    fn from(err: anyhow::Error) -> Interrupt {
        Interrupt::Fatal(err)
    }
}

/// One connection's life: catch up (from the checkpoint when the log's start is past us),
/// retry and verify, then follow the log until a stop or a lost bus.
async fn session(
    verifier: &Verifier<'_>,
    applier: &Applier,
    position_file: &Path,
    client: Link,
    welcome: Welcome,
    schedule: &mut Schedule,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<SessionEnd> {
    let ended = async {
        let (mut session, subscription) =
            Session::start(verifier, applier, position_file, client, welcome, schedule).await?;
        session.follow(subscription, schedule, shutdown).await
    };
    match ended.await {
        Ok(end) | Err(Interrupt::End(end)) => Ok(end),
        Err(Interrupt::Fatal(err)) => Err(err),
    }
}

/// A session's state between events.
struct Session<'a> {
    verifier: &'a Verifier<'a>,
    position_file: &'a Path,
    client: Link,
    welcome: Welcome,
    applier: Applier,
    /// Follows new large files while we are idle; stops with the session.
    follower: Follower,
    retries: Retries,
    /// Pipelining: consumes go out without waiting for each reply. Requests leave in seq
    /// order on one link, so the bus logs consumes in order.
    in_flight: VecDeque<Sent>,
    /// The position is a hint (the bus's `answered` guards against answering twice). It is
    /// recorded only when every consume sent is acknowledged: when caught up, every
    /// POSITION_EVERY events, and on a clean stop. After a crash or a lost connection the
    /// slave re-applies from the last record, which is idempotent.
    unsaved: Option<u64>,
    since_saved: u32,
    /// The last notify taken in hand: what a verification compares with.
    at: u64,
    verified_at: tokio::time::Instant,
    ready: bool,
    caught_up: CatchUp,
    progress: Option<Progress>,
}

impl<'a> Session<'a> {
    /// Everything before following the log: our position checked against the log, a resync
    /// when the log starts past it, `ready` if there is nothing to catch up, the retries
    /// run, and the first verification.
    async fn start(
        verifier: &'a Verifier<'a>,
        applier: &Applier,
        position_file: &'a Path,
        client: Link,
        welcome: Welcome,
        schedule: &mut Schedule,
    ) -> Result<(Session<'a>, Subscription), Interrupt> {
        let applier = applier.clone();
        let follower = Follower::start(client.clone(), applier.clone());
        let mut position = read_position(position_file)?;
        if position > welcome.head {
            tracing::warn!(
                "our position {position} is past the bus's log (head {}): a new log; replaying from the start",
                welcome.head
            );
            position = 0;
        }
        let mut session = Session {
            verifier,
            position_file,
            client,
            applier,
            follower,
            retries: Retries::default(),
            in_flight: VecDeque::new(),
            unsaved: None,
            since_saved: 0,
            // As far as the log says we answered (our position file may lag behind it).
            at: position.max(welcome.answered.min(welcome.head)),
            verified_at: tokio::time::Instant::now(),
            ready: false,
            caught_up: CatchUp {
                from: position,
                applied: 0,
            },
            progress: None,
            welcome,
        };
        let resync_failed = match session.resync_if_behind(position).await? {
            Some((checkpoint, failed)) => {
                position = checkpoint;
                session.at = session.at.max(checkpoint);
                session.caught_up.from = checkpoint;
                // The resync compared the whole directory.
                schedule.verify_now = false;
                failed
            }
            None => Vec::new(),
        };
        let head = session.welcome.head;
        session.progress = Progress::catch_up(position, head);
        if position >= head {
            session.announce_ready().await?;
        }
        // What failed before is retried first, so that a verification does not take its
        // repairs for drift.
        session.retries = load_retries(&session.client, &session.welcome).await?;
        for (error, cause, failed) in resync_failed {
            session.retries.add(error, cause, failed);
        }
        session.run_retries().await?;
        if std::mem::take(&mut schedule.verify_now) {
            session.verify(head).await?;
        }
        session.verified_at = tokio::time::Instant::now();
        let subscription = Subscription::new(session.client.clone(), position + 1);
        Ok((session, subscription))
    }

    /// When the log starts past `position`, catches up from the checkpoint before its start
    /// and says so (`ready` with `resync`); returns the checkpoint's `seq` and what failed.
    async fn resync_if_behind(
        &mut self,
        position: u64,
    ) -> Result<Option<(u64, Vec<(u64, u64, Failed)>)>, Interrupt> {
        let start = self.welcome.start;
        if position + 1 >= start {
            return Ok(None);
        }
        let checkpoint = start - 1;
        tracing::warn!(
            "the bus's log starts at #{start} and we had applied up to #{position}: catching up from its checkpoint at #{checkpoint}"
        );
        let verifier = self.verifier;
        let resynced = verifier
            .resync(checkpoint, self.at, &self.client, &self.applier)
            .await?;
        let mut done = Draft::tagged(Tag::Ready);
        done.resync = Some(checkpoint);
        match call(self.client.publish(done)).await {
            Ok(_) => {}
            // The log moved on during the resync: again, from its new start.
            Err(err @ ClientError::Refused(_)) => {
                return Err(Interrupt::End(SessionEnd::BusLost(err)))
            }
            Err(err) => return Err(err.into()),
        }
        tracing::info!(
            "resynced from the checkpoint at #{checkpoint}: {} path(s) restored, {} failed",
            resynced.repaired.len(),
            resynced.failed.len()
        );
        write_position(self.position_file, checkpoint)?;
        Ok(Some((checkpoint, resynced.failed)))
    }

    /// Follows the log: content for the next events is requested while one is applied
    /// (`Window`), each notify answered, until a stop (honoured between events, never in
    /// the middle of one) or a lost bus.
    async fn follow(
        &mut self,
        mut subscription: Subscription,
        schedule: &Schedule,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<SessionEnd, Interrupt> {
        let mut ahead = Window::default();
        loop {
            let stop = tokio::select! {
                biased;
                _ = &mut *shutdown => true,
                _ = std::future::ready(()) => false,
            };
            if stop {
                self.settle_and_save().await?;
                super::leave(&self.client).await;
                return Ok(SessionEnd::Stopped);
            }
            while ahead.has_room() && !subscription.is_drained() {
                let event = subscription.next().await?;
                ahead.push(prefetch(&self.client, event).await?);
            }
            let next = match ahead.pop() {
                Some(next) => next,
                None => match self
                    .wait_for_next(&mut subscription, schedule, shutdown)
                    .await?
                {
                    Some(event) => prefetch(&self.client, event).await?,
                    None => return Ok(SessionEnd::Stopped),
                },
            };
            // Nothing queued behind this event: a file announced now is for what comes
            // next, so it is worth following.
            self.follower
                .set_idle(ahead.events.is_empty() && subscription.is_drained());
            let seq = next.event.seq;
            self.take(next).await?;
            self.bound_and_save().await?;
            if seq >= self.welcome.head && !self.ready {
                if let Some(progress) = self.progress.take() {
                    progress.finish();
                }
                self.announce_ready().await?;
            }
        }
    }

    /// Caught up with what the bus sent: waits for the next event while the answers in
    /// flight are acknowledged, one by one as they come (in a burst the next events are
    /// usually on their way, and waiting for every acknowledgement first stopped the slave
    /// for a round trip every few events: on NATS a batch's commit, N2 in
    /// docs/BENCHMARKS.md). Once all are, it records the position and, still waiting,
    /// retries failed changes and verifies as they come due. `None` on a stop.
    async fn wait_for_next(
        &mut self,
        subscription: &mut Subscription,
        schedule: &Schedule,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Option<Event>, Interrupt> {
        let next = subscription.next();
        tokio::pin!(next);
        loop {
            let settled = self.in_flight.is_empty();
            if settled {
                self.settle_and_save().await?;
                self.follower.set_idle(true);
            }
            let due = self.retries.next_due().filter(|_| settled);
            let verify_due = schedule
                .verify_every
                .map(|every| self.verified_at + every)
                .filter(|_| settled);
            tokio::select! {
                biased;
                _ = &mut *shutdown => {
                    self.settle_and_save().await?;
                    super::leave(&self.client).await;
                    return Ok(None);
                }
                event = &mut next => return Ok(Some(event?)),
                oldest = settle_oldest(&mut self.in_flight, &mut self.retries), if !settled => {
                    oldest?;
                }
                _ = sleep_until_due(due), if due.is_some() => self.run_retries().await?,
                _ = sleep_until_due(verify_due), if verify_due.is_some() => {
                    self.verify(self.at).await?;
                    self.verified_at = tokio::time::Instant::now();
                }
            }
        }
    }

    /// Applies one event taken ahead, if it is a notify, and sends its answer.
    async fn take(&mut self, next: Ahead) -> Result<(), Interrupt> {
        let Ahead {
            event,
            change,
            content,
            ..
        } = next;
        let Some(change) = change else {
            return Ok(());
        };
        if let Ok(change) = &change {
            for dropped in self.retries.forget_overlapping(change) {
                tracing::info!(
                    "#{}: {change} supersedes the retry of error #{}",
                    event.seq,
                    dropped.error
                );
            }
        }
        let answered = self.welcome.answered;
        let sent = answer(
            &self.applier,
            &self.client,
            &self.follower,
            &event,
            change,
            content,
            answered,
        )
        .await?;
        self.in_flight.extend(sent);
        self.at = event.seq;
        self.unsaved = Some(event.seq);
        self.since_saved += 1;
        self.caught_up.applied += 1;
        if let Some(progress) = &mut self.progress {
            progress.advance(
                event.seq - self.caught_up.from,
                event.body.size.unwrap_or(0),
            );
        }
        Ok(())
    }

    /// Keeps at most the bus's publish window of answers unacknowledged (a window of
    /// 256 on NATS left the slave waiting for a batch's commit behind the master's batches,
    /// doing a tenth of its pace while the master published: docs/BENCHMARKS.md), and
    /// records the position every `POSITION_EVERY` events.
    async fn bound_and_save(&mut self) -> Result<(), Interrupt> {
        while self.in_flight.len() > self.client.publish_window() {
            settle_oldest(&mut self.in_flight, &mut self.retries).await?;
        }
        if self.since_saved >= POSITION_EVERY {
            self.save_acknowledged().await?;
        }
        Ok(())
    }

    /// Records the position as far as every answer is acknowledged, without waiting for
    /// those still on their way: the events before the oldest unacknowledged answer's
    /// notify. Waiting for them all stopped the slave for a round trip every
    /// `POSITION_EVERY` events; on NATS a round trip is a batch's commit, and in N2 the
    /// slave trailed the master by about a second (docs/BENCHMARKS.md).
    async fn save_acknowledged(&mut self) -> Result<(), Interrupt> {
        let mut upto = match settle_arrived(&mut self.in_flight, &mut self.retries).await? {
            None => self.unsaved.take(),
            Some(cause) => self
                .unsaved
                .map(|at| at.min(cause - 1))
                .filter(|&at| at > 0),
        };
        save(self.position_file, &mut upto)?;
        save_known(&self.applier);
        self.since_saved = 0;
        Ok(())
    }

    /// Waits for every answer sent, then records the position.
    async fn settle_and_save(&mut self) -> Result<(), Interrupt> {
        settle_all(&mut self.in_flight, &mut self.retries).await?;
        save(self.position_file, &mut self.unsaved)?;
        save_known(&self.applier);
        self.since_saved = 0;
        Ok(())
    }

    async fn announce_ready(&mut self) -> Result<(), Interrupt> {
        let dir = self.verifier.dir;
        announce_ready(&self.client, dir, &mut self.ready, &self.caught_up)
            .await
            .map_err(|err| Interrupt::End(SessionEnd::BusLost(err)))
    }

    async fn run_retries(&mut self) -> Result<(), Interrupt> {
        Ok(run_retries(&mut self.retries, &self.applier, &self.client).await?)
    }

    async fn verify(&mut self, head: u64) -> Result<(), Interrupt> {
        let (verifier, at) = (self.verifier, self.at);
        let verified = verify(
            verifier,
            at,
            head,
            &self.client,
            &self.applier,
            &mut self.retries,
        );
        Ok(verified.await?)
    }
}

/// How far a session's catch-up went, for the line that says the slave is ready.
struct CatchUp {
    /// The last `seq` applied before this session.
    from: u64,
    /// Notifies applied since.
    applied: u64,
}

async fn announce_ready(
    client: &Link,
    dir: &Path,
    ready: &mut bool,
    caught_up: &CatchUp,
) -> Result<(), ClientError> {
    let seq = call(client.publish(Draft::tagged(Tag::Ready))).await?;
    tracing::info!(
        target: super::LIFECYCLE,
        "caught up: {} change(s) applied after #{} (ready #{seq}); mirroring into {}",
        caught_up.applied,
        caught_up.from,
        dir.display()
    );
    *ready = true;
    Ok(())
}

/// Applies one notify and sends the answer (its reply is awaited later), unless the log
/// shows we already answered it (a replay after a crash): then it is only re-applied.
async fn answer(
    applier: &Applier,
    client: &Link,
    follower: &Follower,
    event: &Event,
    change: Result<Change, EventError>,
    content: Option<Reply<Piece>>,
    answered: u64,
) -> Result<Option<Sent>, ClientError> {
    let wanted = change.as_ref().ok().cloned();
    let manifest = event.body.manifest.as_deref();
    if let Some(reason) = client.refusal(event.seq) {
        // In the log, but against the bus's rules: never applied, answered with why (once:
        // not again after a reconnection that reads it anew).
        if event.seq <= answered {
            return Ok(None);
        }
        let message = format!(
            "not applied: the bus's rules refuse #{}: {reason}",
            event.seq
        );
        tracing::warn!("{message}");
        let reply = client
            .publish(Draft::error(&event.body, event.seq, message))
            .await?;
        return Ok(Some(Sent {
            cause: event.seq,
            reply,
            failed: None,
        }));
    }
    let outcome = apply(applier, client, Some(follower), change, content, manifest).await;
    let (reply, failed) = match outcome {
        Ok(done) => {
            tracing::debug!("#{} applied {}", event.seq, done.change);
            (done.consume(event.seq, manifest), None)
        }
        Err(ApplyFailure::Bus(err)) => return Err(err),
        Err(ApplyFailure::Change(message)) => {
            tracing::warn!("#{}: {message}", event.seq);
            let failed = wanted.map(|change| Failed {
                change,
                manifest: manifest.map(str::to_owned),
            });
            (Draft::error(&event.body, event.seq, message), failed)
        }
    };
    if event.seq <= answered {
        return Ok(None);
    }
    let reply = client.publish(reply).await?;
    Ok(Some(Sent {
        cause: event.seq,
        reply,
        failed,
    }))
}

/// Resolves at `due` (never, for `None`).
async fn sleep_until_due(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// What applying a notify did.
pub(super) struct Done {
    pub change: Change,
    pub applied: Applied,
    /// For a file put: where its bytes came from.
    pub transfer: Option<Transfer>,
}

impl Done {
    /// The consume that says so, answering notify `cause`.
    pub fn consume(&self, cause: u64, manifest: Option<&str>) -> Draft {
        let mut draft = Draft::consume(&self.change, cause, self.applied.sha256.clone());
        if let Some(transfer) = self.transfer {
            draft.fetched = Some(transfer.fetched);
            draft.reused = Some(transfer.reused);
            draft.manifest = manifest.map(str::to_owned);
        }
        draft
    }
}

/// Applies a change; a file put's content is fetched (or found) as its notify describes
/// it: whole by its SHA-256, or in chunks by its manifest (`manifest`, hex).
pub(super) async fn apply(
    applier: &Applier,
    client: &Link,
    follower: Option<&Follower>,
    change: Result<Change, EventError>,
    content: Option<Reply<Piece>>,
    manifest: Option<&str>,
) -> Result<Done, ApplyFailure> {
    let change = change.map_err(|err| ApplyFailure::Change(format!("invalid change: {err}")))?;
    let (applied, transfer) = match (&change, manifest) {
        (Change::Put { path, entry }, Some(address)) if entry.kind == Kind::File => {
            let (applied, transfer) =
                apply_chunked(applier, client, follower, path, entry, address).await?;
            (applied, Some(transfer))
        }
        (Change::Put { path, entry }, None) if entry.kind == Kind::File => {
            let (applied, transfer) = apply_whole(applier, client, path, entry, content).await?;
            (applied, Some(transfer))
        }
        (other, _) => (
            applier
                .apply(other)
                .map_err(|err| ApplyFailure::Change(err.to_string()))?,
            None,
        ),
    };
    Ok(Done {
        change,
        applied,
        transfer,
    })
}

/// A file put whose content is one blob (a file of at most 1 MiB, or any size from a
/// master that did not chunk it): fetched in pieces, the first asked for ahead (`content`).
async fn apply_whole(
    applier: &Applier,
    client: &Link,
    path: &filesync_master::RelPath,
    entry: &filesync_master::Entry,
    content: Option<Reply<Piece>>,
) -> Result<(Applied, Transfer), ApplyFailure> {
    let failed = |err: filesync_slave::ApplyError| ApplyFailure::Change(err.to_string());
    let fetch_failed = |err: ClientError| {
        if err.is_connection() {
            ApplyFailure::Bus(err)
        } else {
            ApplyFailure::Change(format!("cannot fetch {path}: {err}"))
        }
    };
    let fetched = Transfer {
        fetched: entry.size,
        reused: 0,
    };
    let staged = match applier.start_file(path, entry).map_err(failed)? {
        FileStart::Done(applied) => {
            let reused = Transfer {
                fetched: 0,
                reused: entry.size,
            };
            return Ok((applied, reused));
        }
        FileStart::Stage(staged) => staged,
    };
    let mut staged = WriteBehind::new(staged, path, entry.size);
    let Some(address) = entry.sha256 else {
        return Err(ApplyFailure::Change(format!(
            "{path}: a file put without content"
        )));
    };
    // Pieces are requested ahead (the size is known), so the bus reads and sends the
    // next while this one is written. Each piece must be whole: a short one would
    // shift everything after it, so it ends the transfer (and the hash check fails).
    let mut requested = VecDeque::new();
    let mut next_offset = 0u64;
    if let Some(first) = content {
        requested.push_back(first);
        next_offset = PIECE_SIZE as u64;
    }
    loop {
        while requested.len() < PIECES_IN_FLIGHT && next_offset < entry.size {
            let piece = client
                .get(address, next_offset)
                .await
                .map_err(fetch_failed)?;
            requested.push_back(piece);
            next_offset += PIECE_SIZE as u64;
        }
        let Some(piece) = requested.pop_front() else {
            break;
        };
        let (data, last) = piece.await.map_err(fetch_failed)?;
        let whole = data.len() == PIECE_SIZE || staged.written() + data.len() as u64 == entry.size;
        staged.write(data).await.map_err(failed)?;
        if last || !whole {
            break;
        }
    }
    let staged = staged.finish().await.map_err(failed)?;
    Ok((staged.commit().map_err(failed)?, fetched))
}

/// At most this many applied events go unrecorded in the position file.
const POSITION_EVERY: u32 = 256;

/// Saves what the slave knows of its large copies, if it changed; a failure costs only a
/// read of a copy later, so it is reported and the slave goes on.
fn save_known(applier: &Applier) {
    if let Err(err) = applier.known().save_changes() {
        tracing::warn!("cannot save what the slave knows of its copies: {err}");
    }
}

fn save(file: &Path, unsaved: &mut Option<u64>) -> anyhow::Result<()> {
    match unsaved.take() {
        Some(seq) => write_position(file, seq),
        None => Ok(()),
    }
}

/// The `seq` of the last notify applied; 0 when there is none yet.
fn read_position(file: &Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(file) {
        Ok(text) => text.trim().parse().with_context(|| {
            format!(
                "state file {} is corrupt: {:?}",
                file.display(),
                text.trim()
            )
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(err).with_context(|| format!("cannot read state file {}", file.display())),
    }
}

/// Records the position in place: one write of a fixed-width line at offset 0, so every
/// record covers the previous one whole, and a process killed at any instant leaves the old
/// value or the new one (a write of 21 bytes to one page is not split by a signal).
///
/// Why not write a temporary file and rename it over the old one: that frees the old inode
/// at every save, and on a file system without a journal mounted with `discard` (this
/// project's own CI machines) freeing blocks issues a synchronous discard, and freed inodes
/// are skipped by the allocator for a minute, slowing every file the slave creates next
/// (measured in W2; see docs/BENCHMARKS.md).
fn write_position(file: &Path, seq: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(file)
        .and_then(|position| position.write_all_at(format!("{seq:020}\n").as_bytes(), 0))
        .with_context(|| format!("cannot record position in {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken_ahead(seq: u64, bytes: u64) -> Ahead {
        Ahead {
            event: Event {
                seq,
                time: "2026-11-23T00:00:00.000000Z".into(),
                agent: "master".into(),
                body: Draft::tagged(Tag::Ready),
            },
            change: None,
            content: None,
            bytes,
        }
    }

    #[tokio::test]
    async fn only_answers_acknowledged_in_order_are_settled_without_waiting() {
        let answered = |cause: u64, reply: Reply<u64>| Sent {
            cause,
            reply,
            failed: None,
        };
        let mut in_flight: VecDeque<Sent> = [
            answered(3, Reply::ready(Ok(10))),
            answered(5, Reply::ready(Ok(11))),
            answered(8, Reply::new(std::future::pending())),
            answered(9, Reply::ready(Ok(13))),
        ]
        .into();
        let mut retries = Retries::default();
        let waiting = settle_arrived(&mut in_flight, &mut retries)
            .await
            .expect("settled");
        assert_eq!(waiting, Some(8), "the position may go up to 7, not past 8");
        assert_eq!(
            in_flight.iter().map(|sent| sent.cause).collect::<Vec<_>>(),
            [8, 9],
            "an acknowledgement behind one still awaited is left for later"
        );
        in_flight.pop_front();
        assert_eq!(
            settle_arrived(&mut in_flight, &mut retries)
                .await
                .expect("settled"),
            None
        );
        assert!(in_flight.is_empty());
    }

    #[test]
    fn the_look_ahead_is_bounded_by_events_and_by_bytes() {
        let mut small = Window::default();
        let mut seq = 0;
        while small.has_room() {
            seq += 1;
            small.push(taken_ahead(seq, 4096));
        }
        assert_eq!(small.events.len(), LOOKAHEAD, "4 KiB files: bound by count");
        let mut large = Window::default();
        while large.has_room() {
            large.push(taken_ahead(0, 1 << 20));
        }
        assert_eq!(large.events.len(), 8, "1 MiB files: bound by bytes");
        assert_eq!(large.pop().map(|ahead| ahead.bytes), Some(1 << 20));
        assert!(large.has_room(), "room again once one is taken");
        assert_eq!(
            small.pop().map(|ahead| ahead.event.seq),
            Some(1),
            "in seq order"
        );
    }

    #[test]
    fn the_position_is_rewritten_in_place_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("position");
        assert_eq!(read_position(&file).expect("absent is 0"), 0);
        // A file written by an older version: shorter, without padding.
        std::fs::write(&file, "7\n").expect("write");
        assert_eq!(read_position(&file).expect("old format"), 7);
        write_position(&file, 123_456).expect("write");
        assert_eq!(read_position(&file).expect("read"), 123_456);
        write_position(&file, 9).expect("write");
        assert_eq!(
            read_position(&file).expect("a smaller value covers the larger"),
            9
        );
        write_position(&file, u64::MAX).expect("write");
        assert_eq!(read_position(&file).expect("widest"), u64::MAX);
        std::fs::write(&file, "garbage").expect("write");
        assert!(
            read_position(&file).is_err(),
            "a corrupt record is an error"
        );
    }
}
