//! `Reader`: the log in order from any `seq`, read from the log's stream.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::{FutureExt, StreamExt};

use super::address::Author;
use super::{lost, protocol, NatsAddress};
use crate::bus::client::ClientError;
use crate::event::{Draft, Event};

/// The most events one read returns.
const POLL_BATCH: usize = 1000;

/// The log in order, through an ordered consumer kept while reads go on where the last
/// one ended.
pub(super) struct Reader {
    log: stream::Stream,
    address: NatsAddress,
    next: u64,
    messages: Option<consumer::pull::Ordered>,
    /// Who published each event read, newest few (a link's rules learn from them).
    authors: BTreeMap<u64, Author>,
}

impl Reader {
    pub(super) fn new(log: stream::Stream, address: NatsAddress) -> Reader {
        Reader {
            log,
            address,
            next: 0,
            messages: None,
            authors: BTreeMap::new(),
        }
    }

    /// Who published `event`, one of those read last.
    pub(super) fn author(&self, event: &Event) -> Option<Author> {
        self.authors.get(&event.seq).cloned()
    }

    /// Events from `from` on: at least one (waiting for it), at most `POLL_BATCH`.
    pub(super) async fn read(&mut self, from: u64) -> Result<Vec<Event>, ClientError> {
        if self.next != from || self.messages.is_none() {
            let config = consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            };
            let consumer = self.log.create_consumer(config).await.map_err(lost)?;
            self.messages = Some(consumer.messages().await.map_err(lost)?);
            self.next = from;
        }
        // Taken out while read: an error drops it, and the next read starts a new one.
        let Some(mut messages) = self.messages.take() else {
            return Err(ClientError::Lost);
        };
        let first = messages.next().await.ok_or(ClientError::Lost)?;
        let mut events = Vec::new();
        let mut message = first;
        loop {
            let message_ok = message.map_err(lost)?;
            let event = self.decode(&message_ok)?;
            self.next = event.seq + 1;
            events.push(event);
            if events.len() >= POLL_BATCH {
                break;
            }
            match messages.next().now_or_never() {
                Some(Some(more)) => message = more,
                _ => break,
            }
        }
        self.messages = Some(messages);
        Ok(events)
    }

    /// One message as a log line: `seq` and `time` from the stream, the agent from the
    /// subject, the body from the payload. Out of order is a broken log.
    fn decode(&mut self, message: &jetstream::Message) -> Result<Event, ClientError> {
        let info = message.info().map_err(protocol)?;
        let seq = info.stream_sequence;
        if seq != self.next {
            return Err(ClientError::Protocol(format!(
                "the log's stream gave #{seq} where #{} comes next",
                self.next
            )));
        }
        let subject = message.subject.to_string();
        let author = self.address.author_of(&subject).ok_or_else(|| {
            ClientError::Protocol(format!(
                "#{seq} was published on {subject}, not an agent's subject"
            ))
        })?;
        let body: Draft = serde_json::from_slice(&message.payload)
            .map_err(|err| ClientError::Protocol(format!("#{seq} is not an event: {err}")))?;
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
