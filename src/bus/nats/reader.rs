//! `Reader`: the log in order from any `seq`, read from the log's stream: all of it, or
//! the subjects of a link's view (`NatsAddress::view`); with the content notifies carry
//! (`inline.rs`), or headers only.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::{FutureExt, StreamExt};

use super::address::Author;
use super::inline::Carrying;
use super::{lost, protocol, NatsAddress};
use crate::bus::client::ClientError;
use crate::event::{Draft, Event};

/// The most events one read returns.
const POLL_BATCH: usize = 1000;

/// How long a reader keeps making its consumer again before it counts the bus as lost (a
/// JetStream cluster elects a stream's new leader within seconds).
const STREAM_PATIENCE: Duration = Duration::from_secs(30);

/// How long a reader waits for a message before it asks whether the log has one.
const STALL_CHECK: Duration = Duration::from_secs(3);

/// The wait between two attempts.
const STREAM_RETRY: Duration = Duration::from_millis(250);

/// Why a read failed.
enum Failure {
    /// The stream or its consumer, for now: worth another consumer.
    Stream(String),
    /// The log itself (out of order, not an event): no use trying again.
    Broken(ClientError),
}

/// Where a message read stands against the `seq` expected next.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// Next in order: a whole log's events come contiguous, a view's in increasing order
    /// (its consumer, an ordered one, starts again by itself where a message of the view
    /// went missing).
    Next,
    /// Read already: the consumer started over from the log's start. An ordered consumer
    /// that async-nats makes again (two heartbeats missed, its server gone) before it
    /// delivered anything starts from the stream's first message, not where it was asked
    /// to (`DeliverPolicy::All`, async-nats 0.51): a new consumer is made from where the
    /// reading is. Seen on a 3-node cluster whose leader was killed as a slave started.
    Again,
    /// Past a message of the whole log never read: the log has a hole.
    Gap,
}

/// Where `seq` stands for a reader expecting `next`, of the whole log or a view.
fn placed(whole_log: bool, next: u64, seq: u64) -> Place {
    match seq.cmp(&next) {
        std::cmp::Ordering::Less => Place::Again,
        std::cmp::Ordering::Equal => Place::Next,
        std::cmp::Ordering::Greater if whole_log => Place::Gap,
        std::cmp::Ordering::Greater => Place::Next,
    }
}

impl Failure {
    fn stream(err: impl std::fmt::Display) -> Failure {
        Failure::Stream(err.to_string())
    }
}

/// The log in order, through an ordered consumer kept while reads go on where the last
/// one ended.
pub(super) struct Reader {
    log: stream::Stream,
    address: NatsAddress,
    /// The subjects read; none: the whole log, whose events must then come contiguous.
    view: Vec<String>,
    next: u64,
    messages: Option<consumer::pull::Ordered>,
    /// Who published each event read, newest few (a link's rules learn from them).
    authors: BTreeMap<u64, Author>,
    /// Whether its consumer reads the content notifies carry; if not, headers only.
    with_content: bool,
    /// The events of the last read that carry content, by `seq`, with it when it was read.
    carried: BTreeMap<u64, Option<bytes::Bytes>>,
}

impl Reader {
    /// A reader of `view`'s subjects (none: of the whole log).
    pub(super) fn new(log: stream::Stream, address: NatsAddress, view: Vec<String>) -> Reader {
        Reader {
            log,
            address,
            view,
            next: 0,
            messages: None,
            authors: BTreeMap::new(),
            with_content: false,
            carried: BTreeMap::new(),
        }
    }

    /// The events of the last read that carry content, by `seq`, with the content when it
    /// was read (not when reading headers only).
    pub(super) fn take_carried(&mut self) -> BTreeMap<u64, Option<bytes::Bytes>> {
        std::mem::take(&mut self.carried)
    }

    /// The `seq` its next read starts at, if it goes on where the last one ended.
    pub(super) fn at(&self) -> u64 {
        self.next
    }

    /// Who published `event`, one of those read last.
    pub(super) fn author(&self, event: &Event) -> Option<Author> {
        self.authors.get(&event.seq).cloned()
    }

    /// Events from `from` on: at least one (waiting for it), at most `POLL_BATCH`. A
    /// consumer that fails (its stream's leader lost, an election under way) is made again
    /// from where the reading stopped, for up to `STREAM_PATIENCE`; a log out of order or
    /// a line that is not an event fails at once.
    ///
    /// `with_content`: with the content notifies carry (a consumer reading headers only is
    /// made again to read them), or headers only.
    pub(super) async fn read(
        &mut self,
        from: u64,
        with_content: bool,
    ) -> Result<Vec<Event>, ClientError> {
        self.carried.clear();
        if with_content != self.with_content {
            self.with_content = with_content;
            self.messages = None;
        }
        let started = tokio::time::Instant::now();
        loop {
            match self.try_read(from).await {
                Ok(events) => return Ok(events),
                Err(Failure::Broken(err)) => return Err(err),
                Err(Failure::Stream(err)) if started.elapsed() >= STREAM_PATIENCE => {
                    return Err(lost(err))
                }
                Err(Failure::Stream(err)) => {
                    tracing::debug!("nats: reading the log: {err}; again from #{from}");
                    self.messages = None;
                    tokio::time::sleep(STREAM_RETRY).await;
                }
            }
        }
    }

    async fn try_read(&mut self, from: u64) -> Result<Vec<Event>, Failure> {
        if self.next != from || self.messages.is_none() {
            let config = consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                filter_subjects: self.view.clone(),
                headers_only: !self.with_content,
                ..Default::default()
            };
            let consumer = self
                .log
                .create_consumer(config)
                .await
                .map_err(Failure::stream)?;
            self.messages = Some(consumer.messages().await.map_err(Failure::stream)?);
            self.next = from;
        }
        // Taken out while read: an error drops it, and the next read starts a new one.
        let Some(mut messages) = self.messages.take() else {
            return Err(Failure::stream("no consumer"));
        };
        let mut events = Vec::new();
        let mut received = loop {
            tokio::select! {
                received = messages.next() => match received {
                    Some(received) => break received,
                    None => return Err(Failure::stream("the consumer ended")),
                },
                // An idle log is normal; a consumer that says nothing while the log holds
                // what it waits for has lost its stream (a leader gone): make another.
                _ = tokio::time::sleep(STALL_CHECK) => {
                    if holds_from(&self.log, &self.view, from).await? {
                        return Err(Failure::stream(format!("the consumer stalled before #{from}")));
                    }
                }
            }
        };
        loop {
            let message = match received {
                Ok(message) => message,
                // What was read so far is good; the next read makes a new consumer.
                Err(_) if !events.is_empty() => return Ok(events),
                Err(err) => return Err(Failure::stream(err)),
            };
            let event = self.decode(&message).await?;
            self.next = event.seq + 1;
            events.push(event);
            if events.len() >= POLL_BATCH {
                break;
            }
            match messages.next().now_or_never() {
                Some(Some(more)) => received = more,
                _ => break,
            }
        }
        self.messages = Some(messages);
        Ok(events)
    }

    /// One message as a log line: `seq` and `time` from the stream, the agent from the
    /// subject, the body from the event header (or, in a log written before it, the
    /// payload), and the content it carries kept aside; its place judged by [`placed`].
    async fn decode(&mut self, message: &jetstream::Message) -> Result<Event, Failure> {
        let info = message.info().map_err(protocol).map_err(Failure::Broken)?;
        let seq = info.stream_sequence;
        match placed(self.view.is_empty(), self.next, seq) {
            Place::Next => {}
            Place::Again => {
                return Err(Failure::stream(format!(
                    "the consumer started over: #{seq} where #{} comes next",
                    self.next
                )))
            }
            Place::Gap => {
                return Err(Failure::Broken(ClientError::Protocol(format!(
                    "the log's stream gave #{seq} where #{} comes next",
                    self.next
                ))))
            }
        }
        let subject = message.subject.to_string();
        let author = self.address.author_of(&subject).ok_or_else(|| {
            Failure::Broken(ClientError::Protocol(format!(
                "#{seq} was published on {subject}, not an agent's subject"
            )))
        })?;
        let body: Draft = match Carrying::of(message.headers.as_ref(), &message.payload) {
            Carrying::Header { event, content } => {
                if !content.is_empty() {
                    self.carried.insert(seq, Some(content.clone()));
                }
                parse(seq, event.as_bytes())?
            }
            Carrying::HeaderOnly { event, size } => {
                if size > 0 {
                    self.carried.insert(seq, None);
                }
                parse(seq, event.as_bytes())?
            }
            // Written before the event moved to a header, and read headers only: the
            // payload, the event, is read on its own.
            Carrying::Payload(payload) if payload.is_empty() && !self.with_content => {
                let whole = self
                    .log
                    .get_raw_message(seq)
                    .await
                    .map_err(Failure::stream)?;
                parse(seq, &whole.payload)?
            }
            Carrying::Payload(payload) => parse(seq, payload)?,
        };
        let nanos = u64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0);
        let time = humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(nanos));
        let agent = author.name.clone();
        self.authors.insert(seq, author);
        while self.authors.len() > 2 * POLL_BATCH {
            self.authors.pop_first();
        }
        Ok(Event {
            seq,
            time: time.to_string(),
            agent,
            body,
        })
    }
}

/// The event `#seq` holds as JSON.
fn parse(seq: u64, json: &[u8]) -> Result<Draft, Failure> {
    serde_json::from_slice(json).map_err(|err| {
        Failure::Broken(ClientError::Protocol(format!(
            "#{seq} is not an event: {err}"
        )))
    })
}

/// Whether `log` holds an event of `view` (none: of the whole log) at `from` or after, asked
/// of the stream's leader.
async fn holds_from(log: &stream::Stream, view: &[String], from: u64) -> Result<bool, Failure> {
    if view.is_empty() {
        let info = log.get_info().await.map_err(Failure::stream)?;
        return Ok(info.state.last_sequence >= from);
    }
    for subject in view {
        match log.get_first_raw_message_by_subject(subject, from).await {
            Ok(_) => return Ok(true),
            Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(err) => return Err(Failure::stream(err)),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_read_again_means_a_new_consumer_and_a_hole_a_broken_log() {
        assert_eq!(placed(true, 5, 5), Place::Next);
        assert_eq!(
            placed(false, 5, 9),
            Place::Next,
            "a view skips others' events"
        );
        assert_eq!(placed(true, 5, 9), Place::Gap, "the whole log has no holes");
        assert_eq!(placed(true, 5, 2), Place::Again);
        assert_eq!(placed(false, 5, 2), Place::Again);
    }
}
