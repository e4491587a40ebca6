//! `MemoryBus`: a bus held in memory, a second backend of the agents' API (`api.rs`), for the
//! agents' unit tests: no socket, no file, no wire protocol. It keeps the log as a `Vec`,
//! content in a map, and asks the same [`Rules`] as the embedded bus before it appends,
//! so an agent loop run against it meets the same refusals.
//!
//! What it leaves out: retention (its log starts at 1, so it has no checkpoints), the
//! status report, and the optional announcements of large files (a slave's follower stops
//! at once, and waits for the notify as with any bus without them). It is not a stand-in
//! for the real bus in the integration suite.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use filesync_master::chunk::Manifest;
use filesync_master::hash::ContentHash;
use tokio::sync::watch;

use super::api::{self, BusApi, Dial, Dialing, Link, Piece, Sending, Upload};
use super::client::{ClientError, Hello, Welcome};
use super::protocol::PIECE_SIZE;
use super::status::StatusReport;
use crate::checkpoint::Snapshot;
use crate::event::{now_rfc3339, Draft, Event, Role};
use crate::rules::{self, Connected, Place, Refusal, Rules};

/// A bus in memory; clones share it. Dial it as an agent would a bus at an address.
#[derive(Clone, Default)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// The log's head, for polls waiting for new events.
    head: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    rules: Rules,
    events: Vec<Event>,
    content: Content,
    connected: HashMap<u64, Connected>,
    next_link: u64,
}

/// Verified content by address.
#[derive(Default)]
struct Content(HashMap<ContentHash, Arc<Vec<u8>>>);

impl rules::Content for Content {
    fn has(&self, address: &ContentHash) -> bool {
        self.0.contains_key(address)
    }

    fn manifest(&self, address: &ContentHash) -> Option<Result<Manifest, String>> {
        let bytes = self.0.get(address)?;
        Some(Manifest::decode(bytes).map_err(|err| err.to_string()))
    }
}

impl MemoryBus {
    pub fn new() -> MemoryBus {
        MemoryBus::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Every event of the log so far.
    pub fn events(&self) -> Vec<Event> {
        self.state().events.clone()
    }

    /// Waits until an event matching `found` is in the log, and returns it.
    pub async fn wait_for(&self, found: impl Fn(&Event) -> bool) -> Event {
        let mut head = self.shared.head.subscribe();
        loop {
            if let Some(event) = self.state().events.iter().find(|e| found(e)) {
                return event.clone();
            }
            if head.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `draft` against the rules as `agent` in `role`, then appends it.
    fn publish(&self, role: Role, agent: &str, draft: Draft) -> Result<u64, ClientError> {
        let mut state = self.state();
        state
            .rules
            .check(role, agent, &draft, &state.content)
            .map_err(ClientError::Refused)?;
        Ok(self.append(&mut state, agent, draft))
    }

    fn append(&self, state: &mut State, agent: &str, body: Draft) -> u64 {
        let event = Event {
            seq: state.events.len() as u64 + 1,
            time: now_rfc3339(),
            agent: agent.to_owned(),
            body,
        };
        let events = &state.events;
        state.rules.observe(&event, |cause| {
            let index = usize::try_from(cause).ok()?.checked_sub(1)?;
            events.get(index)?.body.change().ok()
        });
        let seq = event.seq;
        state.events.push(event);
        self.head.send_replace(seq);
        seq
    }
}

impl Dial for MemoryBus {
    fn dial<'a>(&'a self, hello: &'a Hello) -> Dialing<'a> {
        Box::pin(std::future::ready(self.admit(hello)))
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

impl MemoryBus {
    /// The rules' verdict on a hello, the join in the log, and a link.
    fn admit(&self, hello: &Hello) -> Result<(Link, Welcome), ClientError> {
        let place = Place::of(hello.role, hello.host.clone(), hello.dir.clone());
        let asked = rules::Hello {
            role: hello.role,
            name: hello.name.clone(),
            place: place.clone(),
            takeover: hello.takeover,
        };
        let mut state = self.state();
        let connected: Vec<Connected> = state.connected.values().cloned().collect();
        state
            .rules
            .admit(&asked, &connected)
            .map_err(|refusal| match refusal {
                Refusal::Busy(message) => ClientError::Busy(message),
                Refusal::Refused(message) => ClientError::Rejected(message),
            })?;
        let head = state.events.len() as u64;
        if !(hello.quiet && hello.role == Role::Listener) {
            let join = state.rules.join(&asked);
            self.shared.append(&mut state, &hello.name, join);
        }
        let welcome = Welcome {
            head,
            start: 1,
            answered: state.rules.answered(&hello.name),
            retry: match hello.role {
                Role::Slave => state.rules.retryable(&hello.name),
                _ => Vec::new(),
            },
        };
        state.next_link += 1;
        let id = state.next_link;
        state.connected.insert(
            id,
            Connected {
                role: hello.role,
                name: hello.name.clone(),
                place,
            },
        );
        let link = MemoryLink {
            shared: self.shared.clone(),
            id,
            role: hello.role,
            name: hello.name.clone(),
        };
        Ok((Arc::new(link), welcome))
    }
}

/// One agent's link to a `MemoryBus`; its name is free again once it is dropped.
struct MemoryLink {
    shared: Arc<Shared>,
    id: u64,
    role: Role,
    name: String,
}

impl Drop for MemoryLink {
    fn drop(&mut self) {
        self.shared.state().connected.remove(&self.id);
    }
}

/// A request carried out as it is sent: the order sent is the order carried out.
fn done<'a, T: Send + 'static>(outcome: Result<T, ClientError>) -> Sending<'a, T> {
    Box::pin(std::future::ready(Ok(api::Reply::ready(outcome))))
}

impl BusApi for MemoryLink {
    fn publish(&self, event: Draft) -> Sending<'_, u64> {
        done(self.shared.publish(self.role, &self.name, event))
    }

    fn poll(&self, from: u64) -> Sending<'_, Vec<Event>> {
        let from = from.max(1);
        let mut head = self.shared.head.subscribe();
        let shared = self.shared.clone();
        let events = async move {
            while *head.borrow_and_update() < from {
                head.changed().await.map_err(|_| ClientError::Lost)?;
            }
            let state = shared.state();
            let first = usize::try_from(from - 1).unwrap_or(usize::MAX);
            Ok(state
                .events
                .iter()
                .skip(first)
                .take(1000)
                .cloned()
                .collect())
        };
        Box::pin(std::future::ready(Ok(api::Reply::new(events))))
    }

    fn has(&self, address: ContentHash) -> Sending<'_, bool> {
        done(Ok(self.shared.state().content.0.contains_key(&address)))
    }

    fn put(&self, address: ContentHash, content: Vec<u8>) -> Sending<'_, ()> {
        done(store(&self.shared, address, content))
    }

    fn get(&self, address: ContentHash, offset: u64) -> Sending<'_, Piece> {
        let found = self.shared.state().content.0.get(&address).cloned();
        done(match found {
            None => Err(ClientError::Refused(format!("no blob {address}"))),
            Some(content) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(content.len());
                let end = start.saturating_add(PIECE_SIZE).min(content.len());
                Ok((content[start..end].to_vec(), end == content.len()))
            }
        })
    }

    fn begin_upload(&self) -> Box<dyn Upload + '_> {
        Box::new(MemoryUpload {
            shared: self.shared.clone(),
            received: Vec::new(),
        })
    }

    fn checkpoint(&self, seq: u64) -> Sending<'_, Snapshot> {
        done(Err(ClientError::Refused(format!(
            "no checkpoint at {seq}: a memory bus keeps its whole log"
        ))))
    }

    fn status(&self) -> Sending<'_, StatusReport> {
        done(Err(ClientError::Unsupported))
    }
}

/// Stores content once it hashes to its address.
fn store(shared: &Shared, address: ContentHash, content: Vec<u8>) -> Result<(), ClientError> {
    let actual = ContentHash::of(&content);
    if actual != address {
        return Err(ClientError::Refused(format!(
            "uploaded content hashes to {actual}, not {address}"
        )));
    }
    shared.state().content.0.insert(address, Arc::new(content));
    Ok(())
}

struct MemoryUpload {
    shared: Arc<Shared>,
    received: Vec<u8>,
}

impl Upload for MemoryUpload {
    fn piece(&mut self, piece: Vec<u8>) -> Sending<'_, ()> {
        self.received.extend_from_slice(&piece);
        done(Ok(()))
    }

    fn commit(self: Box<Self>, address: ContentHash) -> Sending<'static, ()> {
        done(store(&self.shared, address, self.received))
    }

    fn abort(self: Box<Self>) -> Sending<'static, ()> {
        done(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::api::call;
    use crate::event::Tag;
    use filesync_master::{Change, Entry, RelPath};

    async fn link(bus: &MemoryBus, role: Role, name: &str) -> (Link, Welcome) {
        bus.dial(&Hello::new(role, name, None)).await.expect("dial")
    }

    fn put(path: &str, content: &[u8]) -> Draft {
        let entry = Entry::file(content.len() as u64, ContentHash::of(content), 0o644);
        Draft::notify(&Change::Put {
            path: RelPath::new(path).expect("path"),
            entry,
        })
    }

    #[tokio::test]
    async fn the_rules_decide_what_enters_and_requests_keep_their_order() {
        let bus = MemoryBus::new();
        let (master, welcome) = link(&bus, Role::Master, "master").await;
        assert_eq!((welcome.head, welcome.start), (0, 1));
        let refused = bus.dial(&Hello::new(Role::Slave, "master", None)).await;
        assert!(
            matches!(refused, Err(ClientError::Busy(_))),
            "one link per name"
        );
        // Content first, then the notify naming it, neither reply awaited in between.
        let content = b"hello".to_vec();
        let stored = master
            .put(ContentHash::of(&content), content.clone())
            .await
            .expect("sent");
        let published = master.publish(put("a.txt", &content)).await.expect("sent");
        stored.await.expect("stored");
        assert_eq!(published.await.expect("appended"), 2, "after the join");
        let missing = call(master.publish(put("b.txt", b"never uploaded"))).await;
        assert!(
            matches!(missing, Err(ClientError::Refused(_))),
            "{missing:?}"
        );
        let lie = call(master.put(ContentHash::of(b"x"), b"y".to_vec())).await;
        assert!(matches!(lie, Err(ClientError::Refused(_))), "{lie:?}");

        let (slave, welcome) = link(&bus, Role::Slave, "slave").await;
        assert_eq!(welcome.head, 2);
        let as_slave = call(slave.publish(put("c.txt", &content))).await;
        assert!(
            matches!(as_slave, Err(ClientError::Refused(_))),
            "a slave publishes no notify"
        );
        let events = call(slave.poll(2)).await.expect("poll");
        assert_eq!(events.first().map(|e| e.seq), Some(2));
        assert_eq!(events.first().and_then(|e| e.tag()), Some(Tag::Notify));
        let (piece, last) = call(slave.get(ContentHash::of(&content), 0))
            .await
            .expect("get");
        assert_eq!((piece, last), (content, true));

        // A poll past the head waits for the next event.
        let waiting = tokio::spawn({
            let slave = slave.clone();
            async move { call(slave.poll(4)).await }
        });
        call(master.publish(Draft::tagged(Tag::Ready)))
            .await
            .expect("ready");
        let next = waiting.await.expect("join").expect("poll");
        assert_eq!(next.first().map(|e| e.seq), Some(4));
        assert!(matches!(
            call(slave.follow_next(0)).await,
            Err(ClientError::Unsupported)
        ));
    }
}
