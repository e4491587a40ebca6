//! The bus as the agents, `listen`, the test kit and the demo see it: one API, whichever
//! backend carries it. Three do today: the embedded bus over TCP (`client.rs`, speaking
//! `protocol.rs`), NATS JetStream (`nats/`), and an in-memory bus for the agents' unit
//! tests (`memory.rs`). A backend provides a [`Dial`] (a hello in, a [`Link`] and a
//! [`Welcome`] out) and implements [`BusApi`] for its links; it calls
//! [`crate::rules::Rules`] before it appends anything (NATS, which runs none of our code
//! before it appends, in the writer: see `nats/`).
//!
//! # What the agents rely on
//!
//! Stated once, here; every backend keeps these promises:
//!
//! 1. **Sent in order, carried out in order.** A call returns in two steps: awaiting the
//!    call *sends* the request and gives a [`Reply`]; awaiting the reply gives its outcome.
//!    Requests sent through one link are carried out in the order they were sent, whether
//!    or not earlier replies were awaited (pipelining is a property of every call, not a
//!    twin method). A slave sends the consumes of notifies 5, 6 and 7 without waiting and
//!    the log records them in that order; a master puts a file's content and publishes the
//!    notify naming it without waiting for the put's acknowledgement, and the bus holds the
//!    content when it checks the notify.
//! 2. **One total order.** Every event is numbered (`seq`, gapless from the log's start) and
//!    appended before any reader sees it; [`BusApi::poll`] returns events from the asked
//!    `seq` on, in order, waiting until there is at least one: contiguous, unless the link
//!    reads a view of the log ([`BusApi::reads_whole_log`]: a slave on NATS reads the
//!    masters' events and its own, not the other slaves' answers), whose events come in
//!    order with the others' left out. The [`Welcome`]'s `head` is then the newest event
//!    of the view.
//! 3. **Refused means absent.** A publish the rules refuse appends nothing; its reply is
//!    [`ClientError::Refused`] with the rule's sentence.
//! 4. **Content is verified before it can be named.** A put or upload whose bytes do not hash
//!    to the address given is refused; [`BusApi::has`] says true only for verified content.
//!    (A master's link to the bus it hosts is the one exception: the master computed each
//!    address from the bytes it puts, in the same process, and the bus does not hash them a
//!    second time; see `server::LocalDial`.)
//! 5. **A link lost fails every reply still to come** with an error for which
//!    [`ClientError::is_connection`] holds; the agent dials again and resumes from what the
//!    [`Welcome`] says (its last answered notify, its errors to retry, the log's start).
//!
//! # Optional capabilities
//!
//! Following a new large file while its master uploads it ([`BusApi::announce_chunk`],
//! [`BusApi::follow_next`]) is optional: a backend without it answers
//! [`ClientError::Unsupported`], the master uploads as usual and an idle slave waits for
//! the notify. Checkpoint gates (test-only control of the embedded bus) are not part of
//! this API at all: they are a separate handle, `gates::GateControl`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use filesync_master::chunk::ChunkRef;
use filesync_master::hash::ContentHash;

use super::client::{ClientError, Hello, Welcome};
use super::status::StatusReport;
use crate::checkpoint::Snapshot;
use crate::event::{Draft, Event};

/// The default [`BusApi::publish_window`]. The embedded bus's W2 took the same time with 64
/// and with 256; 2,048 (what NATS's batches want) raised W6's master peak from 44.7 to
/// 48.7 MiB for nothing (docs/BENCHMARKS.md).
pub const PUBLISH_WINDOW: usize = 256;

/// The outcome of a request already sent, to be awaited whenever the caller likes.
///
/// Awaiting it by `&mut` is cancel-safe (abandoned by a `select!`, it can be awaited
/// again); once it has given its outcome it is spent.
#[must_use = "a reply not awaited hides a refusal"]
pub struct Reply<T>(Pin<Box<dyn Future<Output = Result<T, ClientError>> + Send>>);

impl<T> Reply<T> {
    /// A reply from a future that yields the outcome.
    pub fn new(outcome: impl Future<Output = Result<T, ClientError>> + Send + 'static) -> Reply<T> {
        Reply(Box::pin(outcome))
    }

    /// A reply known already (a backend that carries requests out as they are sent).
    pub fn ready(outcome: Result<T, ClientError>) -> Reply<T>
    where
        T: Send + 'static,
    {
        Reply::new(std::future::ready(outcome))
    }
}

impl<T> Future for Reply<T> {
    type Output = Result<T, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// A request being sent: awaiting it sends it and gives its [`Reply`].
pub type Sending<'a, T> = Pin<Box<dyn Future<Output = Result<Reply<T>, ClientError>> + Send + 'a>>;

/// A piece of content, and whether it reaches the content's end.
pub type Piece = (Vec<u8>, bool);

/// A dial under way: the link and the welcome, once the bus said hello back.
pub type Dialing<'a> =
    Pin<Box<dyn Future<Output = Result<(Link, Welcome), ClientError>> + Send + 'a>>;

/// A connection to a bus, shared by the tasks of one agent.
pub type Link = Arc<dyn BusApi>;

/// The calls of the bus. See the module's documentation for the ordering they keep.
pub trait BusApi: Send + Sync {
    /// Appends an event, once the rules let it; the reply is its `seq`.
    fn publish(&self, event: Draft) -> Sending<'_, u64>;

    /// Events from `from` on, at least one (waits until one exists), in order; contiguous
    /// when the link reads the whole log.
    /// [`ClientError::Truncated`] when retention removed `from`: the reply names the log's
    /// start, and the state before it is [`BusApi::checkpoint`] at `start - 1`.
    fn poll(&self, from: u64) -> Sending<'_, Vec<Event>>;

    /// Whether the bus holds `address` (verified).
    fn has(&self, address: ContentHash) -> Sending<'_, bool>;

    /// Stores `content` under `address`, refused when it hashes otherwise. For content of at
    /// most [`super::protocol::PIECE_SIZE`] bytes; larger content goes through
    /// [`BusApi::begin_upload`].
    fn put(&self, address: ContentHash, content: Vec<u8>) -> Sending<'_, ()>;

    /// Up to [`super::protocol::PIECE_SIZE`] bytes of `address` from `offset`, and whether
    /// they reach its end. [`ClientError::Refused`] when the bus lacks it.
    fn get(&self, address: ContentHash, offset: u64) -> Sending<'_, Piece>;

    /// Starts an upload in pieces, for content too large to put at once; its address is
    /// given at the commit, so it can be sent while it is still being hashed.
    fn begin_upload(&self) -> Box<dyn Upload + '_>;

    /// The state the log implies at `seq`, where the bus keeps a checkpoint (`seq` is the
    /// log's start minus one, as [`ClientError::Truncated`] says).
    fn checkpoint(&self, seq: u64) -> Sending<'_, Snapshot>;

    /// What the bus knows of its agents and itself (`filesync status`).
    fn status(&self) -> Sending<'_, StatusReport>;

    /// Why the bus's rules refuse event `seq`, read through this link: on a backend that
    /// appends before anyone judges (NATS), an event that got in anyway. A reader never
    /// applies it; a slave answers it with an `error` saying why. `None` on a backend
    /// whose rules keep such events out of the log (the embedded bus).
    fn refusal(&self, _seq: u64) -> Option<String> {
        None
    }

    /// Whether [`BusApi::poll`] reads the whole log (contiguous) or a view of it, in order
    /// with gaps: what a reader may check of the `seq`s it is given.
    fn reads_whole_log(&self) -> bool {
        true
    }

    /// How many publishes an agent keeps sent and not yet acknowledged to keep this
    /// backend busy (a master's notifies, a slave's answers). A window lets a burst stream
    /// instead of waiting a round trip per event; the embedded bus streams them with
    /// [`PUBLISH_WINDOW`], and a backend that stores events in batches wants a whole batch
    /// gathering while the last is stored.
    fn publish_window(&self) -> usize {
        PUBLISH_WINDOW
    }

    /// Optional: a number for a new large file whose chunks this master announces as it
    /// stores them, for slaves that follow it ([`ClientError::Unsupported`] without).
    fn new_announcement(&self) -> Option<u64> {
        None
    }

    /// Optional: announces chunk `index` of announced file `file`, stored already.
    fn announce_chunk(&self, _file: u64, _index: u64, _chunk: ChunkRef) -> Sending<'_, ()> {
        unsupported()
    }

    /// Optional: ends announced file `file`: with its SHA-256 and size, or (`None`) short.
    fn announce_end(&self, _file: u64, _whole: Option<(ContentHash, u64)>) -> Sending<'_, ()> {
        unsupported()
    }

    /// Optional: the first file announced after number `after`; the reply waits until one is.
    fn follow_next(&self, _after: u64) -> Sending<'_, u64> {
        unsupported()
    }

    /// Optional: what announced file `file` holds at chunk `index`, once stored: a chunk, or
    /// (`true`) the file's SHA-256 and size, as `ChunkRef::sha256` and the third value.
    fn follow_get(&self, _file: u64, _index: u64) -> Sending<'_, (ChunkRef, bool, u64)> {
        unsupported()
    }
}

fn unsupported<'a, T: Send + 'static>() -> Sending<'a, T> {
    Box::pin(async { Err(ClientError::Unsupported) })
}

/// An upload in pieces under way. Finish it with `commit` or `abort`; a backend drops an
/// unfinished upload when the link closes.
pub trait Upload: Send {
    /// Sends the next piece (the backend may keep a few in flight before it waits).
    fn piece(&mut self, piece: Vec<u8>) -> Sending<'_, ()>;

    /// Stores what was sent under `address`; refused when it hashes otherwise. The reply
    /// comes once every piece was acknowledged.
    fn commit(self: Box<Self>, address: ContentHash) -> Sending<'static, ()>;

    /// Throws what was sent away. Only a lost link is an error.
    fn abort(self: Box<Self>) -> Sending<'static, ()>;
}

/// A way to a bus: says hello, gives a link and what the bus said back.
pub trait Dial: Send + Sync {
    fn dial<'a>(&'a self, hello: &'a Hello) -> Dialing<'a>;

    /// Where the bus is, for messages ("connected to the bus at ...").
    fn describe(&self) -> String;
}

/// Sends a request and awaits its reply: for a caller with nothing else to do meanwhile.
pub async fn call<T>(sending: Sending<'_, T>) -> Result<T, ClientError> {
    sending.await?.await
}

impl std::fmt::Debug for dyn Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dial({})", self.describe())
    }
}
