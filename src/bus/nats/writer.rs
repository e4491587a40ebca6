//! `Outbox`: a link's events, sent to the log in the order published, each only once the
//! content it names is stored. Publishing queues an event and returns at once (pipelining,
//! as the API promises); a task of the link's own awaits each event's content
//! acknowledgements, then sends it, so later content keeps flowing meanwhile. An event
//! marked `alone` is acknowledged before anything after it is sent (see
//! `Inner::one_at_a_time`).

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self};
use async_nats::HeaderMap;
use tokio::sync::{mpsc, oneshot};

use super::{lost, publish_error};
use crate::bus::client::ClientError;

/// One event to send.
pub(super) struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Vec<u8>,
    /// Acknowledgements of the content sent before it: awaited first.
    pub content: Vec<PublishAckFuture>,
    /// Sent alone: its acknowledgement awaited before the next event is sent.
    pub alone: bool,
    /// The event's own acknowledgement, once sent.
    pub sent: oneshot::Sender<Result<Sent, ClientError>>,
}

/// An event sent: its acknowledgement to come, or already come (an event sent alone).
pub(super) enum Sent {
    Pending(PublishAckFuture),
    Acked(Result<PublishAck, PublishError>),
}

impl Sent {
    pub(super) async fn ack(self) -> Result<PublishAck, PublishError> {
        match self {
            Sent::Pending(ack) => ack.await,
            Sent::Acked(acked) => acked,
        }
    }
}

/// The queue of a link's events, and the task that sends them; the task ends with the link.
pub(super) struct Outbox {
    queue: mpsc::UnboundedSender<Outgoing>,
    task: tokio::task::JoinHandle<()>,
}

impl Outbox {
    pub(super) fn new(js: jetstream::Context) -> Outbox {
        let (queue, mut next) = mpsc::unbounded_channel::<Outgoing>();
        let task = tokio::spawn(async move {
            while let Some(out) = next.recv().await {
                let mut stored = Ok(());
                for ack in out.content {
                    if let Err(err) = ack.await {
                        // As its event's own failure would be (a timeout: reconnect).
                        stored = Err(publish_error(err));
                        break;
                    }
                }
                let sent = match stored {
                    Ok(()) => js
                        .publish_with_headers(out.subject, out.headers, out.payload.into())
                        .await
                        .map_err(lost),
                    Err(err) => Err(err),
                };
                let sent = match sent {
                    Ok(ack) if out.alone => Ok(Sent::Acked(ack.await)),
                    Ok(ack) => Ok(Sent::Pending(ack)),
                    Err(err) => Err(err),
                };
                let _ = out.sent.send(sent);
            }
        });
        Outbox { queue, task }
    }

    /// Queues `out`; a link whose task ended is lost.
    pub(super) fn send(&self, out: Outgoing) -> Result<(), ClientError> {
        self.queue.send(out).map_err(|_| ClientError::Lost)
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}
