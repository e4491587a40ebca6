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

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::{self};
use async_nats::HeaderMap;
use tokio::sync::{mpsc, oneshot};

use super::{lost, publish_error};
use crate::bus::client::ClientError;

/// The most events in one atomic batch (NATS allows 1,000).
const MAX_BATCH: usize = 256;

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

/// One event to send.
pub(super) struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Vec<u8>,
    pub expects: Option<Expectation>,
    /// Acknowledgements of the content sent before it: awaited first.
    pub content: Vec<PublishAckFuture>,
    pub pace: Pace,
    /// The event's own acknowledgement, once sent.
    pub sent: oneshot::Sender<Result<Sent, ClientError>>,
}

impl Outgoing {
    fn expect(&mut self) {
        if let Some(expects) = &self.expects {
            self.headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                expects.claim.to_string().as_str(),
            );
            self.headers.insert(
                "Nats-Expected-Last-Subject-Sequence-Subject",
                expects.joins.as_str(),
            );
        }
    }
}

/// An event sent: its acknowledgement to come, or already come (an event not pipelined).
pub(super) enum Sent {
    Pending(PublishAckFuture),
    Acked(Result<u64, ClientError>),
}

/// The queue of a link's events, and the task that sends them; the task ends with the link.
pub(super) struct Outbox {
    queue: mpsc::UnboundedSender<Outgoing>,
    task: tokio::task::JoinHandle<()>,
}

impl Outbox {
    /// `one_at_a_time` is set once the server refuses pipelined expectations (error 10164).
    pub(super) fn new(js: jetstream::Context, one_at_a_time: Arc<AtomicBool>) -> Outbox {
        let (queue, next) = mpsc::unbounded_channel::<Outgoing>();
        let task = tokio::spawn(send_all(js, next, one_at_a_time));
        Outbox { queue, task }
    }

    /// Queues `out`; a link whose task ended is lost.
    pub(super) fn send(&self, out: Outgoing) -> Result<(), ClientError> {
        self.queue.send(out).map_err(|_| ClientError::Lost)
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
) {
    let mut held = None;
    while let Some(first) = match held.take() {
        Some(out) => Some(out),
        None => next.recv().await,
    } {
        if first.pace != Pace::Batched {
            send_one(&js, first, &one_at_a_time).await;
            continue;
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match next.try_recv() {
                Ok(out) if out.pace == Pace::Batched => batch.push(out),
                Ok(out) => {
                    held = Some(out);
                    break;
                }
                Err(_) => break,
            }
        }
        match batch.len() {
            1 => send_one(&js, batch.remove(0), &one_at_a_time).await,
            _ => send_batch(&js, batch, &one_at_a_time).await,
        }
    }
}

/// Awaits every content acknowledgement of `outs`.
async fn stored(outs: &mut [Outgoing]) -> Result<(), ClientError> {
    for out in outs {
        for ack in std::mem::take(&mut out.content) {
            // As its event's own failure would be (a timeout: reconnect).
            ack.await.map_err(publish_error)?;
        }
    }
    Ok(())
}

async fn send_one(js: &jetstream::Context, mut out: Outgoing, one_at_a_time: &AtomicBool) {
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
    let _ = out.sent.send(sent);
}

/// `batch` as one atomic batch (ADR-50): every message but the last sent without a reply,
/// the last committing it; the commit's acknowledgement names the last `seq`, and the
/// batch is contiguous. Every event gets the batch's outcome.
async fn send_batch(js: &jetstream::Context, mut batch: Vec<Outgoing>, one_at_a_time: &AtomicBool) {
    let outcome = match stored(&mut batch).await {
        Ok(()) => publish_batch(js, &mut batch, one_at_a_time).await,
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
}

async fn publish_batch(
    js: &jetstream::Context,
    batch: &mut [Outgoing],
    one_at_a_time: &AtomicBool,
) -> Result<u64, ClientError> {
    let id = format!("{:x}", rand_id());
    let last = batch.len() - 1;
    let client = js.client();
    for (idx, out) in batch.iter_mut().enumerate() {
        if idx == 0 {
            out.expect();
        }
        let mut headers = std::mem::take(&mut out.headers);
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (idx + 1).to_string().as_str());
        let payload = std::mem::take(&mut out.payload).into();
        let subject = std::mem::take(&mut out.subject);
        if idx < last {
            client
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(lost)?;
        } else {
            headers.insert("Nats-Batch-Commit", "1");
            let ack = js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(lost)?;
            return acked(ack.await, one_at_a_time);
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
