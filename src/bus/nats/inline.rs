//! Content that rides with its notify: how a log message carries an event, and the small
//! file content (at most [`INLINE_MAX`] bytes) a put notify brings along.
//!
//! Every log message carries its event (the `Draft` as JSON) in the header
//! [`EVENT_HEADER`]; its payload is the content of the file the notify puts, when that
//! content is small, and empty otherwise. So:
//!
//! - A master's notify of a small file does not wait for its content's acknowledgement
//!   before it is sent: the log message holds the content itself, in the same synced write.
//!   The content is stored in the content stream too, after the notify (acknowledged on
//!   its own: a copy lost with the connection makes the link's next event fail, and the
//!   agent reconnects), so that anything asked for by address later (a slave restoring a
//!   file edited behind its back, catching up) is found there. Where the content stream
//!   lacks it (its copy not stored yet, or lost), a slave reads it from the notify that
//!   carried it, if it is among the newest [`NOTED`] carrying notifies its link has read
//!   (every one, from the log's start, when it connected).
//! - A slave following the log as it comes reads the content with the notify, and asks
//!   for nothing (`Recent` keeps what it read until it is applied).
//! - Every other read is of headers only, so the log costs it its events, not its content:
//!   a link's first reading of the whole log, listeners, `export`, `status`, and a slave's
//!   reading of older events (catching up after time away, a verification's replay of
//!   the log from its start), whose content, when applied, comes from the content stream.
//!
//! A log written before this layout (the event as the payload, no header) is still read.

use std::collections::{BTreeMap, HashMap, VecDeque};

use async_nats::HeaderMap;
use bytes::Bytes;
use filesync_master::hash::ContentHash;

use crate::event::{Draft, Event, Op, Tag};

/// The most bytes of content that ride with their notify: a file this small goes out in
/// one synced write with its notify, and reaches a slave with no request of its own. Most
/// files of a source tree are this small; a larger one's notify would make the log, which
/// every agent reads from its start when it connects, grow with content, not with events.
pub(super) const INLINE_MAX: usize = 16 << 10;

/// The header holding a log message's event.
pub(super) const EVENT_HEADER: &str = "Filesync-Event";

/// The header NATS adds, for a reader of headers only, with the size of the payload left out.
const SIZE_HEADER: &str = "Nats-Msg-Size";

/// The content read with notifies that a slave's link keeps, oldest let go first, so that
/// the applying of a long backlog never holds more than this.
const RECENT_BYTES: usize = 32 << 20;

/// How many carrying notifies a slave's link remembers the `seq` of (about 50 bytes each).
const NOTED: usize = 1 << 16;

/// Whether content `address` rides with `draft`: a notify of a put of a whole file (no
/// manifest) whose `sha256` it is.
pub(super) fn rides(draft: &Draft, address: &ContentHash) -> bool {
    draft.tag == Some(Tag::Notify)
        && draft.op == Some(Op::Put)
        && draft.manifest.is_none()
        && draft
            .sha256
            .as_deref()
            .and_then(ContentHash::parse_hex)
            .is_some_and(|sha256| sha256 == *address)
}

/// The event of a log message, and what its payload is.
pub(super) enum Carrying<'a> {
    /// The event is in the header; the payload (empty, or content the notify names).
    Header { event: &'a str, content: &'a Bytes },
    /// Read headers only: the event is in the header, and the payload (`size` bytes) left
    /// out.
    HeaderOnly { event: &'a str, size: usize },
    /// Written before the event moved to a header: the payload is the event.
    Payload(&'a Bytes),
}

impl<'a> Carrying<'a> {
    /// What `headers` and `payload` hold.
    pub(super) fn of(headers: Option<&'a HeaderMap>, payload: &'a Bytes) -> Carrying<'a> {
        let header = |name| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        match (header(EVENT_HEADER), header(SIZE_HEADER)) {
            (Some(event), Some(size)) if payload.is_empty() => Carrying::HeaderOnly {
                event,
                size: size.parse().unwrap_or(0),
            },
            (Some(event), _) => Carrying::Header {
                event,
                content: payload,
            },
            (None, _) => Carrying::Payload(payload),
        }
    }
}

/// Content read with recent notifies, by address, within [`RECENT_BYTES`]; and where the
/// newest [`NOTED`] notifies carrying content are in the log, read with it or not, so that
/// content the content stream lacks (its copy not stored yet, or never: a master cut off
/// between the two) is read from the notify that carried it.
#[derive(Default)]
pub(super) struct Recent {
    by_address: HashMap<ContentHash, Bytes>,
    order: VecDeque<ContentHash>,
    bytes: usize,
    carriers: HashMap<ContentHash, u64>,
    noted: VecDeque<ContentHash>,
}

impl Recent {
    /// Keeps `content`, read as `address` (verified by whoever takes it), letting the
    /// oldest go beyond the budget.
    pub(super) fn keep(&mut self, address: ContentHash, content: Bytes) {
        if content.is_empty() || self.by_address.contains_key(&address) {
            return;
        }
        self.bytes += content.len();
        self.by_address.insert(address, content);
        self.order.push_back(address);
        while self.bytes > RECENT_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.by_address.remove(&oldest) {
                self.bytes -= gone.len();
            }
        }
    }

    /// The content kept for `address`, if any (kept for another file with the same
    /// content, until it is let go).
    pub(super) fn get(&self, address: &ContentHash) -> Option<Bytes> {
        self.by_address.get(address).cloned()
    }

    /// Notes that the notify `#seq` carries content `address`, letting the oldest noted go
    /// beyond [`NOTED`].
    pub(super) fn note(&mut self, address: ContentHash, seq: u64) {
        if self.carriers.insert(address, seq).is_none() {
            self.noted.push_back(address);
        }
        while self.noted.len() > NOTED {
            if let Some(oldest) = self.noted.pop_front() {
                self.carriers.remove(&oldest);
            }
        }
    }

    /// Takes in what `events` carried (`Reader::take_carried`): where each carrying notify
    /// is, and the content read with it.
    pub(super) fn take_in(&mut self, events: &[Event], mut carried: BTreeMap<u64, Option<Bytes>>) {
        for event in events {
            let Some(content) = carried.remove(&event.seq) else {
                continue;
            };
            let Some(address) = event
                .body
                .sha256
                .as_deref()
                .and_then(ContentHash::parse_hex)
            else {
                continue;
            };
            self.note(address, event.seq);
            if let Some(content) = content {
                self.keep(address, content);
            }
        }
    }

    /// The newest noted notify carrying `address`.
    pub(super) fn carrier(&self, address: &ContentHash) -> Option<u64> {
        self.carriers.get(address).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EntryKind;

    fn put_notify(content: &[u8]) -> Draft {
        Draft {
            tag: Some(Tag::Notify),
            op: Some(Op::Put),
            kind: Some(EntryKind::File),
            sha256: Some(ContentHash::of(content).to_hex()),
            ..Draft::default()
        }
    }

    #[test]
    fn only_a_whole_files_content_rides_with_the_notify_naming_it() {
        let address = ContentHash::of(b"hello");
        assert!(rides(&put_notify(b"hello"), &address));
        assert!(!rides(&put_notify(b"other"), &address));
        let mut chunked = put_notify(b"hello");
        chunked.manifest = Some(ContentHash::of(b"manifest").to_hex());
        assert!(!rides(&chunked, &address));
        let mut consume = put_notify(b"hello");
        consume.tag = Some(Tag::Consume);
        assert!(!rides(&consume, &address));
    }

    #[test]
    fn recent_content_is_let_go_oldest_first_beyond_its_budget() {
        let mut recent = Recent::default();
        let piece = Bytes::from(vec![7u8; RECENT_BYTES / 4]);
        let addresses: Vec<ContentHash> = (0..6u8).map(|i| ContentHash::of(&[i])).collect();
        for address in &addresses {
            recent.keep(*address, piece.clone());
        }
        assert!(recent.bytes <= RECENT_BYTES);
        assert!(recent.get(&addresses[0]).is_none(), "the oldest is let go");
        assert!(recent.get(&addresses[1]).is_none());
        assert_eq!(recent.get(&addresses[5]), Some(piece.clone()));
        // Kept twice is kept once.
        recent.keep(addresses[5], piece);
        assert_eq!(recent.order.len(), recent.by_address.len());
    }

    #[test]
    fn the_newest_carrier_of_content_is_remembered_within_its_bound() {
        let mut recent = Recent::default();
        let first = ContentHash::of(b"first");
        recent.note(first, 3);
        recent.note(first, 9);
        assert_eq!(
            recent.carrier(&first),
            Some(9),
            "the newest notify carrying it"
        );
        for seq in 0..NOTED as u64 {
            recent.note(ContentHash::of(&seq.to_le_bytes()), 100 + seq);
        }
        assert_eq!(recent.carrier(&first), None, "the oldest is let go");
        assert_eq!(recent.carriers.len(), NOTED);
        assert_eq!(recent.noted.len(), NOTED);
    }

    #[test]
    fn a_message_says_where_its_event_is() {
        let payload = Bytes::from_static(b"content");
        let mut headers = HeaderMap::new();
        headers.insert(EVENT_HEADER, "{\"tag\":\"notify\"}");
        assert!(matches!(
            Carrying::of(Some(&headers), &payload),
            Carrying::Header { event: "{\"tag\":\"notify\"}", content } if content == &payload
        ));
        let empty = Bytes::new();
        headers.insert(SIZE_HEADER, "7");
        assert!(matches!(
            Carrying::of(Some(&headers), &empty),
            Carrying::HeaderOnly { size: 7, .. }
        ));
        assert!(matches!(
            Carrying::of(None, &payload),
            Carrying::Payload(p) if p == &payload
        ));
    }
}
