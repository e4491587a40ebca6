//! `Outbox`: a link's events, sent to the log in the order published, each only once the
//! content it names is stored. Publishing queues an event and returns at once (pipelining,
//! as the API promises); a task of the link's own awaits each event's content
//! acknowledgements, then sends it, so later content keeps flowing meanwhile.
//!
//! On a log that allows atomic batches (NATS 2.12 or later), events go `Batched`: those
//! queued while the last batch was being stored go as one atomic batch (ADR-50), all
//! appended or none, contiguous, a master's expectation on its first message only (the
//! batch is judged whole when committed). One batch is one synced write, and on a
//! replicated log one round of agreement, for up to `MAX_BATCH` events. Without them a
//! master's events on a replicated log go `Alone`, each acknowledged before the next is
//! sent (`Inner::one_at_a_time`), and everything else is `Pipelined`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::{self};
use async_nats::HeaderMap;
use tokio::sync::{mpsc, oneshot};

use super::{lost, publish_error};
use crate::bus::client::ClientError;

/// The most messages in one atomic batch: as many as NATS allows. Each batch has a cost
/// of its own on the server (a single-replica file stream stages it in a file store made
/// for it, `newBatchStore` in nats-server), so fewer, larger batches store a burst faster:
/// N2's 10,000 notifies took 1.3 s in batches of 256 and 0.6 s in batches of 1,000 (with
/// the master keeping twice as many in flight, `BusApi::publish_window`, so that a whole
/// batch gathers while the one before is stored).
pub(super) const MAX_BATCH: usize = 1000;

/// The most bytes (payloads and events) in one atomic batch (the server stages a batch
/// whole).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// How an event goes to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
    /// Sent at once; its acknowledgement awaited by whoever published it.
    Pipelined,
    /// Acknowledged before the next event is sent.
    Alone,
    /// With the events queued behind it, as one atomic batch.
    Batched,
}

/// What a master's event expects of the log: that the newest master join is its claim.
pub(super) struct Expectation {
    /// The claim's `seq`.
    pub claim: u64,
    /// The subjects of every master's join.
    pub joins: String,
}

/// The order a link's batches keep on the server: each batch's first message expects the
/// newest message on `subjects` to be `last`, the last message of the link's previous
/// batch (or, for its first, the newest when the link read the log). A batch lost with a
/// connection that broke, followed by one sent through the server the client went on to,
/// is then refused instead of appended out of order and with a hole; so is a master's
/// batch after another master joined (its subjects are every master's).
pub(super) struct Order {
    pub subjects: String,
    pub last: u64,
}

/// One event to send.
pub(super) struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Vec<u8>,
    pub expects: Option<Expectation>,
    /// The content sent before it (through the content's own outbox): stored first.
    pub content: Vec<Stored>,
    pub pace: Pace,
    /// The event's own acknowledgement, once sent.
    pub sent: oneshot::Sender<Result<Sent, ClientError>>,
}

impl Outgoing {
    /// Its bytes on the server: its payload and the event its header holds.
    fn size(&self) -> usize {
        let event = self.headers.get(super::inline::EVENT_HEADER);
        self.payload.len() + event.map_or(0, |event| event.as_str().len())
    }

    /// Its own expectation, if it has one (a master's claim).
    fn expect(&mut self) {
        if let Some(expects) = &self.expects {
            expect_last(&mut self.headers, expects.claim, &expects.joins);
        }
    }
}

/// Headers asking the server to append only if the newest message on `subjects` is `seq`.
fn expect_last(headers: &mut HeaderMap, seq: u64, subjects: &str) {
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        seq.to_string().as_str(),
    );
    headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", subjects);
}

/// A message's fate, told by its outbox once it is sent.
pub(super) type Stored = oneshot::Receiver<Result<Sent, ClientError>>;

/// An event sent: its acknowledgement to come, or already come (an event not pipelined).
pub(super) enum Sent {
    Pending(PublishAckFuture),
    Acked(Result<u64, ClientError>),
}

/// The queue of a link's events, and the task that sends them; the task ends with the link.
pub(super) struct Outbox {
    queue: mpsc::UnboundedSender<Outgoing>,
    task: tokio::task::JoinHandle<()>,
    /// Set once a message was lost with the connection: nothing more is sent.
    broken: Arc<AtomicBool>,
}

impl Outbox {
    /// `one_at_a_time` is set once the server refuses pipelined expectations (error 10164);
    /// `order`, the order batches keep (none for content, which needs none).
    pub(super) fn new(
        js: jetstream::Context,
        one_at_a_time: Arc<AtomicBool>,
        order: Option<Order>,
    ) -> Outbox {
        let (queue, next) = mpsc::unbounded_channel::<Outgoing>();
        let broken = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(send_all(js, next, one_at_a_time, order, broken.clone()));
        Outbox {
            queue,
            task,
            broken,
        }
    }

    /// Whether a message it sent was lost with the connection (it sends nothing more).
    pub(super) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Queues `out`; a link whose task ended is lost.
    pub(super) fn send(&self, out: Outgoing) -> Result<(), ClientError> {
        self.queue.send(out).map_err(|_| ClientError::Lost)
    }

    /// Queues a message that expects nothing and follows nothing (content); its fate comes
    /// through what is returned.
    pub(super) fn send_plain(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Vec<u8>,
        pace: Pace,
    ) -> Result<Stored, ClientError> {
        let (sent, stored) = oneshot::channel();
        self.send(Outgoing {
            subject,
            headers,
            payload,
            expects: None,
            content: Vec::new(),
            pace,
            sent,
        })?;
        Ok(stored)
    }
}

impl Sent {
    /// The `seq` the event was appended at, or why not (`one_at_a_time` as in
    /// [`Outbox::new`]).
    pub(super) async fn seq(self, one_at_a_time: &AtomicBool) -> Result<u64, ClientError> {
        match self {
            Sent::Pending(ack) => acked(ack.await, one_at_a_time),
            Sent::Acked(acked) => acked,
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The outbox's task: each event (or batch) in turn.
async fn send_all(
    js: jetstream::Context,
    mut next: mpsc::UnboundedReceiver<Outgoing>,
    one_at_a_time: Arc<AtomicBool>,
    mut order: Option<Order>,
    broken: Arc<AtomicBool>,
) {
    let mut held = None;
    // Once a message is lost, nothing after it is sent: the link is done (its agent
    // connects again and reads the log), so no later batch can land after a hole.
    while let Some(first) = match held.take() {
        Some(out) => Some(out),
        None => next.recv().await,
    } {
        if broken.load(Ordering::Relaxed) {
            let _ = first.sent.send(Err(ClientError::Lost));
            continue;
        }
        if first.pace != Pace::Batched {
            if !send_one(&js, first, &one_at_a_time).await {
                broken.store(true, Ordering::Relaxed);
            }
            continue;
        }
        let mut bytes = first.size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match next.try_recv() {
                Ok(out) if out.pace == Pace::Batched => {
                    bytes += out.size();
                    batch.push(out);
                }
                Ok(out) => {
                    held = Some(out);
                    break;
                }
                Err(_) => break,
            }
        }
        if !send_batch(&js, batch, &one_at_a_time, order.as_mut()).await {
            broken.store(true, Ordering::Relaxed);
        }
    }
}

/// Awaits the storing of every content `outs` name (a failure is their events' own: a
/// timeout, say, is a lost link).
async fn stored(outs: &mut [Outgoing]) -> Result<(), ClientError> {
    // Content expects nothing: no refusal of an expectation to learn from.
    let unused = AtomicBool::new(false);
    for out in outs {
        for stored in std::mem::take(&mut out.content) {
            let sent = stored.await.map_err(|_| ClientError::Lost)??;
            sent.seq(&unused).await?;
        }
    }
    Ok(())
}

/// `out` alone; false when the link is lost (as far as is known when it returns: a
/// pipelined acknowledgement comes later, to whoever awaits it).
async fn send_one(js: &jetstream::Context, mut out: Outgoing, one_at_a_time: &AtomicBool) -> bool {
    let sent = match stored(std::slice::from_mut(&mut out)).await {
        Ok(()) => {
            out.expect();
            js.publish_with_headers(out.subject, out.headers, out.payload.into())
                .await
                .map_err(lost)
        }
        Err(err) => Err(err),
    };
    let sent = match sent {
        Ok(ack) if out.pace == Pace::Pipelined => Ok(Sent::Pending(ack)),
        Ok(ack) => Ok(Sent::Acked(acked(ack.await, one_at_a_time))),
        Err(err) => Err(err),
    };
    let lost = match &sent {
        Err(err) | Ok(Sent::Acked(Err(err))) => err.is_connection(),
        Ok(_) => false,
    };
    let _ = out.sent.send(sent);
    !lost
}

/// `batch` as one atomic batch (ADR-50): every message but the last sent without a reply,
/// the last committing it; the commit's acknowledgement names the last `seq`, and the
/// batch is contiguous. Every event gets the batch's outcome; false when the link is lost
/// (the batch may or may not have been appended).
async fn send_batch(
    js: &jetstream::Context,
    mut batch: Vec<Outgoing>,
    one_at_a_time: &AtomicBool,
    order: Option<&mut Order>,
) -> bool {
    let outcome = match stored(&mut batch).await {
        Ok(()) => publish_batch(js, &mut batch, one_at_a_time, order).await,
        Err(err) => Err(err),
    };
    let n = batch.len() as u64;
    for (idx, out) in batch.into_iter().enumerate() {
        let mine = match &outcome {
            Ok(last) => Ok(last + 1 + idx as u64 - n),
            Err(err) => Err(again(err)),
        };
        let _ = out.sent.send(Ok(Sent::Acked(mine)));
    }
    !matches!(&outcome, Err(err) if err.is_connection())
}

async fn publish_batch(
    js: &jetstream::Context,
    batch: &mut [Outgoing],
    one_at_a_time: &AtomicBool,
    mut order: Option<&mut Order>,
) -> Result<u64, ClientError> {
    let id = format!("{:x}", rand_id());
    let last = batch.len() - 1;
    let client = js.client();
    for (idx, out) in batch.iter_mut().enumerate() {
        // The batch's order stands for any event's own expectation (a master's claim).
        if let (0, Some(order)) = (idx, order.as_deref()) {
            expect_last(&mut out.headers, order.last, &order.subjects);
        }
        let mut headers = std::mem::take(&mut out.headers);
        // One message needs no batch, and goes faster without (the server stages a batch
        // apart: W1's latency on one server went from about 3.5 to 9 ms).
        if last > 0 {
            headers.insert("Nats-Batch-Id", id.as_str());
            headers.insert("Nats-Batch-Sequence", (idx + 1).to_string().as_str());
        }
        let payload = std::mem::take(&mut out.payload).into();
        let subject = std::mem::take(&mut out.subject);
        if idx < last {
            client
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(lost)?;
        } else {
            if last > 0 {
                headers.insert("Nats-Batch-Commit", "1");
            }
            let ack = js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(lost)?;
            let ack = ack.await;
            if let (Err(err), Some(_)) = (&ack, &order) {
                if err.kind() == PublishErrorKind::WrongLastSequence {
                    // Out of order, or another master joined: the link is done, and a
                    // new one reads the log again (and is refused if it is not ours).
                    tracing::debug!("nats: {err}; reconnecting");
                    return Err(ClientError::Lost);
                }
            }
            let seq = acked(ack, one_at_a_time)?;
            if let Some(order) = order.as_deref_mut() {
                order.last = seq;
            }
            return Ok(seq);
        }
    }
    Err(ClientError::Lost)
}

/// A batch id unique enough for the server's few batches in flight: the time in nanoseconds
/// and a counter.
fn rand_id() -> u128 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    nanos ^ (u128::from(COUNTER.fetch_add(1, Ordering::Relaxed)) << 100)
}

/// An acknowledgement's `seq`, or what its refusal means (`publish_error`). A refusal of
/// a pipelined expectation (10164) says the log is replicated: one at a time from then on.
fn acked(
    ack: Result<async_nats::jetstream::publish::PublishAck, PublishError>,
    one_at_a_time: &AtomicBool,
) -> Result<u64, ClientError> {
    ack.map(|ack| ack.sequence).map_err(|err| {
        if expectation_in_flight(&err) {
            tracing::debug!("nats: {err}: the log is replicated, one event at a time");
            one_at_a_time.store(true, Ordering::Relaxed);
        }
        publish_error(err)
    })
}

/// Was `err` a replicated stream refusing an expectation while another with the same
/// subject is being agreed on? (Nothing was appended: a reconnection sends it again.)
fn expectation_in_flight(err: &PublishError) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|js| {
            js.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
        })
}

/// The same failure again, for each event of a failed batch.
fn again(err: &ClientError) -> ClientError {
    match err {
        ClientError::Rejected(why) => ClientError::Rejected(why.clone()),
        ClientError::Refused(why) => ClientError::Refused(why.clone()),
        _ => ClientError::Lost,
    }
}
