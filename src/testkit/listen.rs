//! `EventStream`: the SPARKL listener, done right. A subscription on its own task feeds the
//! test every event from a chosen `seq`; expectations wait for events with two timeouts (an
//! overall deadline, and a quiet period: fail when nothing new arrives for 3 s), and fail
//! with the unmet patterns and a timeline of everything seen.
//!
//! Every expectation also fails at once on an `error` event, unless the test lifted that
//! rule with [`EventStream::allow_errors`]: errors are never silently tolerated.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::pattern::Pattern;
use super::timeline::timeline;
use crate::bus::{ClientError, Hello, Subscription};
use crate::event::{Event, Role, Tag};

/// Why an expectation failed. Its `Display` is the report a person reads.
#[derive(Debug, Clone)]
pub struct ExpectError {
    pub reason: String,
    pub unmet: Vec<String>,
    pub events: Vec<Event>,
}

impl fmt::Display for ExpectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "expectation failed: {}", self.reason)?;
        for pattern in &self.unmet {
            writeln!(f, "  unmet: {pattern}")?;
        }
        writeln!(f, "events seen ({}):", self.events.len())?;
        f.write_str(&timeline(&self.events))
    }
}

impl std::error::Error for ExpectError {}

/// Events from the bus, and expectations over them.
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Result<Event, String>>,
    seen: Vec<Event>,
    /// Seqs already returned by an expectation, so one event satisfies one expectation.
    claimed: std::collections::HashSet<u64>,
    /// Fail when no new event arrives for this long (3 s, as in the seed).
    pub quiet: Duration,
    /// Fail when an expectation takes longer than this overall.
    pub deadline: Duration,
    errors_allowed: bool,
    closed: Option<String>,
    /// The unmet patterns of the last failed expectation, for the failure picture.
    last_unmet: std::cell::RefCell<Vec<String>>,
    /// The `seq` the stream went on from after retention removed events it had not read
    /// yet (0: never).
    skipped_to: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventStream {
    /// Subscribes from `from` (1 for the whole log) as listener `testkit`.
    pub async fn connect(
        addr: &str,
        from: u64,
        token: Option<String>,
    ) -> Result<EventStream, crate::bus::ClientError> {
        EventStream::connect_with(addr, from, token, None).await
    }

    /// `connect`, over mutual TLS when `tls` is given.
    pub async fn connect_with(
        addr: &str,
        from: u64,
        token: Option<String>,
        tls: Option<&crate::bus::tls::ClientTls>,
    ) -> Result<EventStream, crate::bus::ClientError> {
        let hello = Hello::new(Role::Listener, "testkit", token);
        let dial = crate::bus::dial(addr, tls.cloned());
        let (client, _) = dial.dial(&hello).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let skipped_to = Arc::new(AtomicU64::new(0));
        let skipped = skipped_to.clone();
        let task = tokio::spawn(async move {
            let mut subscription = Subscription::new(client, from);
            loop {
                let next = match subscription.next().await {
                    // What retention removed is gone for a listener too: the events from
                    // the log's start on are what a test can expect.
                    Err(ClientError::Truncated { start }) if start > subscription.position() => {
                        subscription.skip_to(start);
                        skipped.fetch_max(start, Ordering::Relaxed);
                        continue;
                    }
                    next => next.map_err(|err| err.to_string()),
                };
                let failed = next.is_err();
                if tx.send(next).is_err() || failed {
                    return;
                }
            }
        });
        Ok(EventStream {
            rx,
            seen: Vec::new(),
            claimed: Default::default(),
            quiet: Duration::from_secs(3),
            deadline: Duration::from_secs(30),
            errors_allowed: false,
            closed: None,
            last_unmet: Default::default(),
            skipped_to,
            task,
        })
    }

    /// Carries over what an older stream saw (after a bus restart), so expectations and the
    /// timeline cover the whole test.
    pub fn absorb(&mut self, older: &mut EventStream) {
        let mut seen = std::mem::take(&mut older.seen);
        seen.append(&mut self.seen);
        self.seen = seen;
        self.claimed.extend(older.claimed.drain());
        self.errors_allowed |= older.errors_allowed;
        self.quiet = older.quiet;
        self.deadline = older.deadline;
        self.skipped_to
            .fetch_max(older.skipped_to(), Ordering::Relaxed);
    }

    /// Lifts the implicit "no error events" rule (for tests that provoke errors).
    pub fn allow_errors(&mut self) -> &mut EventStream {
        self.errors_allowed = true;
        self
    }

    /// Where the stream last went on from after retention removed events before it read
    /// them (0: it never had to): what came before may hold events it never saw.
    pub fn skipped_to(&self) -> u64 {
        self.skipped_to.load(Ordering::Relaxed)
    }

    /// Every event received so far.
    pub fn seen(&self) -> &[Event] {
        &self.seen
    }

    /// The timeline of everything received so far.
    pub fn timeline(&self) -> String {
        timeline(&self.seen)
    }

    /// How many received events match.
    pub fn count(&self, pattern: &Pattern) -> usize {
        self.seen.iter().filter(|e| pattern.matches(e)).count()
    }

    fn failure(&self, reason: String, unmet: &[&Pattern]) -> ExpectError {
        let unmet: Vec<String> = unmet.iter().map(|p| p.to_string()).collect();
        *self.last_unmet.borrow_mut() = unmet.clone();
        ExpectError {
            reason,
            unmet,
            events: self.seen.clone(),
        }
    }

    /// The patterns the last failed expectation was waiting for.
    pub fn last_unmet(&self) -> Vec<String> {
        self.last_unmet.borrow().clone()
    }

    /// Takes what has arrived; waits up to `wait` for at least one more.
    async fn receive(&mut self, wait: Duration) -> Result<bool, String> {
        if let Some(reason) = &self.closed {
            return Err(reason.clone());
        }
        let first = match tokio::time::timeout(wait, self.rx.recv()).await {
            Err(_) => return Ok(false),
            Ok(None) => Err("the subscription ended".to_owned()),
            Ok(Some(result)) => result,
        };
        let mut next = Some(first);
        while let Some(result) = next.take() {
            match result {
                Ok(event) => {
                    if event.tag() == Some(Tag::Error) && !self.errors_allowed {
                        let seq = event.seq;
                        self.seen.push(event);
                        return Err(format!("error event #{seq} (lift with allow_errors)"));
                    }
                    self.seen.push(event);
                }
                Err(reason) => {
                    self.closed = Some(reason.clone());
                    return Err(reason);
                }
            }
            next = self.rx.try_recv().ok();
        }
        Ok(true)
    }

    /// Waits for one event matching `pattern` that no earlier expectation claimed.
    pub async fn expect(&mut self, pattern: Pattern) -> Result<Event, ExpectError> {
        let mut found = self.expect_all(vec![pattern]).await?;
        Ok(found.remove(0))
    }

    /// Waits until every pattern has matched a distinct event, in any order. Returns them
    /// in the order of the patterns.
    pub async fn expect_all(&mut self, patterns: Vec<Pattern>) -> Result<Vec<Event>, ExpectError> {
        self.expect_matching(patterns, false).await
    }

    /// Like `expect_all`, but the matches must occur in the given order.
    pub async fn expect_seq(&mut self, patterns: Vec<Pattern>) -> Result<Vec<Event>, ExpectError> {
        self.expect_matching(patterns, true).await
    }

    async fn expect_matching(
        &mut self,
        patterns: Vec<Pattern>,
        ordered: bool,
    ) -> Result<Vec<Event>, ExpectError> {
        let started = Instant::now();
        let mut last_arrival = Instant::now();
        loop {
            if let Some(found) = self.try_match(&patterns, ordered) {
                for event in &found {
                    self.claimed.insert(event.seq);
                }
                return Ok(found);
            }
            let now = Instant::now();
            let quiet_left = self.quiet.saturating_sub(now - last_arrival);
            let deadline_left = self.deadline.saturating_sub(now - started);
            // What is unmet is worked out only for a failure report: it is another pass
            // over everything seen.
            if deadline_left.is_zero() {
                let unmet = self.unmet(&patterns, ordered);
                return Err(self.failure(format!("not met within {:?}", self.deadline), &unmet));
            }
            if quiet_left.is_zero() {
                let unmet = self.unmet(&patterns, ordered);
                return Err(self.failure(format!("no new event for {:?}", self.quiet), &unmet));
            }
            match self.receive(quiet_left.min(deadline_left)).await {
                Ok(true) => last_arrival = Instant::now(),
                Ok(false) => {}
                Err(reason) => {
                    let unmet = self.unmet(&patterns, ordered);
                    return Err(self.failure(reason, &unmet));
                }
            }
        }
    }

    /// Assigns each pattern the first unclaimed, unused event it matches (after the previous
    /// pattern's event, when `ordered`): `None` for patterns left unmet.
    fn assign(&self, patterns: &[Pattern], ordered: bool) -> Vec<Option<Event>> {
        let mut used: std::collections::HashSet<u64> = std::collections::HashSet::new();
        let mut after = 0;
        let mut assigned = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let hit = self.seen.iter().find(|e| {
                (!ordered || e.seq > after)
                    && !self.claimed.contains(&e.seq)
                    && !used.contains(&e.seq)
                    && pattern.matches(e)
            });
            if let Some(hit) = hit {
                used.insert(hit.seq);
                after = hit.seq;
            }
            assigned.push(hit.cloned());
        }
        assigned
    }

    fn try_match(&self, patterns: &[Pattern], ordered: bool) -> Option<Vec<Event>> {
        self.assign(patterns, ordered).into_iter().collect()
    }

    fn unmet<'p>(&self, patterns: &'p [Pattern], ordered: bool) -> Vec<&'p Pattern> {
        let assigned = self.assign(patterns, ordered);
        patterns
            .iter()
            .zip(assigned)
            .filter(|(_, hit)| hit.is_none())
            .map(|(pattern, _)| pattern)
            .collect()
    }

    /// Waits until no event has arrived for `window` (within the deadline).
    pub async fn wait_quiet(&mut self, window: Duration) -> Result<(), ExpectError> {
        let started = Instant::now();
        loop {
            if started.elapsed() >= self.deadline {
                let reason = format!("never quiet for {window:?} within {:?}", self.deadline);
                return Err(self.failure(reason, &[]));
            }
            match self.receive(window).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(reason) => return Err(self.failure(reason, &[])),
            }
        }
    }

    /// Asserts that nothing matching `pattern` arrives during `window` (nor has arrived
    /// unclaimed before it).
    pub async fn expect_none(
        &mut self,
        pattern: Pattern,
        window: Duration,
    ) -> Result<(), ExpectError> {
        let until = Instant::now() + window;
        loop {
            if let Some(event) = self
                .seen
                .iter()
                .find(|e| !self.claimed.contains(&e.seq) && pattern.matches(e))
            {
                let reason = format!("#{} matches {pattern}, which must not happen", event.seq);
                return Err(self.failure(reason, &[]));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            if let Err(reason) = self.receive(left).await {
                return Err(self.failure(reason, &[]));
            }
        }
    }

    /// Waits for exactly `n` events matching `pattern` in total: fails if fewer arrive in
    /// time, or if more than `n` have arrived once `settle` has passed after the n-th.
    pub async fn expect_count(
        &mut self,
        pattern: Pattern,
        n: usize,
        settle: Duration,
    ) -> Result<Vec<Event>, ExpectError> {
        let started = Instant::now();
        let mut last_arrival = Instant::now();
        // Counted as events arrive, each matched once: a rescan of everything seen after
        // every batch cost the bench's W2 (20,000 events) a good part of a core.
        let (mut scanned, mut matched) = (0, 0);
        loop {
            matched += self.seen[scanned..]
                .iter()
                .filter(|e| pattern.matches(e))
                .count();
            scanned = self.seen.len();
            if matched >= n {
                break;
            }
            let now = Instant::now();
            let quiet_left = self.quiet.saturating_sub(now - last_arrival);
            let deadline_left = self.deadline.saturating_sub(now - started);
            if quiet_left.is_zero() || deadline_left.is_zero() {
                let reason = format!("saw {matched} of {n} × {pattern}");
                return Err(self.failure(reason, &[&pattern]));
            }
            match self.receive(quiet_left.min(deadline_left)).await {
                Ok(true) => last_arrival = Instant::now(),
                Ok(false) => {}
                Err(reason) => return Err(self.failure(reason, &[&pattern])),
            }
        }
        let until = Instant::now() + settle;
        while Instant::now() < until {
            if let Err(reason) = self
                .receive(until.saturating_duration_since(Instant::now()))
                .await
            {
                return Err(self.failure(reason, &[]));
            }
        }
        let hits: Vec<Event> = self
            .seen
            .iter()
            .filter(|e| pattern.matches(e))
            .cloned()
            .collect();
        if hits.len() != n {
            let reason = format!("expected exactly {n} × {pattern}, saw {}", hits.len());
            return Err(self.failure(reason, &[]));
        }
        for event in &hits {
            self.claimed.insert(event.seq);
        }
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Draft;
    use crate::testkit::test_bus::TestBus;
    use filesync_master::{Change, RelPath};

    /// A bus in this process, a "master" and a "slave" to publish with, and a stream on it.
    struct Harness {
        master: crate::bus::Link,
        slave: crate::bus::Link,
        events: EventStream,
        _bus: TestBus,
    }

    async fn harness() -> Harness {
        let bus = TestBus::start(false).await;
        Harness {
            master: bus.client(Role::Master, "master").await,
            slave: bus.client(Role::Slave, "slave").await,
            events: EventStream::connect(&bus.addr, 1, None)
                .await
                .expect("stream"),
            _bus: bus,
        }
    }

    use crate::testkit::test_bus::notify_dir as notify_delete;

    #[tokio::test]
    async fn a_quiet_period_without_the_event_fails_with_a_timeline() {
        let mut h = harness().await;
        h.events.quiet = Duration::from_millis(200);
        notify_delete(&h.master, "present.txt").await;
        let err = h
            .events
            .expect(Pattern::notify().path("absent.txt"))
            .await
            .expect_err("never comes");
        assert!(err.reason.contains("no new event for 200ms"), "{err}");
        assert_eq!(err.unmet, ["notify for absent.txt"]);
        let report = err.to_string();
        assert!(
            report.contains("seq") && report.contains("present.txt"),
            "the timeline shows what was seen:\n{report}"
        );
    }

    #[tokio::test]
    async fn a_steady_stream_does_not_beat_the_deadline() {
        let mut h = harness().await;
        h.events.quiet = Duration::from_secs(5);
        h.events.deadline = Duration::from_millis(300);
        let master = h.master.clone();
        let chatter = tokio::spawn(async move {
            for i in 0..40 {
                notify_delete(&master, &format!("noise{i}")).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let err = h
            .events
            .expect(Pattern::notify().path("signal"))
            .await
            .expect_err("never comes");
        assert!(err.reason.contains("not met within 300ms"), "{err}");
        chatter.abort();
    }

    #[tokio::test]
    async fn a_missed_expect_none_names_the_offending_event() {
        let mut h = harness().await;
        let seq = notify_delete(&h.master, "forbidden.txt").await;
        let err = h
            .events
            .expect_none(
                Pattern::notify().path("forbidden.txt"),
                Duration::from_millis(200),
            )
            .await
            .expect_err("it happened");
        assert!(
            err.reason
                .contains(&format!("#{seq} matches notify for forbidden.txt")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_exact_count_fails_on_duplicates() {
        let mut h = harness().await;
        notify_delete(&h.master, "twice.txt").await;
        notify_delete(&h.master, "twice.txt").await;
        let err = h
            .events
            .expect_count(
                Pattern::notify().path("twice.txt"),
                1,
                Duration::from_millis(100),
            )
            .await
            .expect_err("two is not one");
        assert!(err.reason.contains("expected exactly 1"), "{err}");
    }

    #[tokio::test]
    async fn an_error_event_fails_every_expectation_unless_allowed() {
        let mut h = harness().await;
        let cause = notify_delete(&h.master, "x.txt").await;
        let notify = Draft::notify(&Change::Put {
            path: RelPath::new("x.txt").expect("valid"),
            entry: filesync_master::Entry::dir(0o755),
        });
        crate::bus::api::call(
            h.slave
                .publish(Draft::error(&notify, cause, "disk on fire".into())),
        )
        .await
        .expect("publish");
        let err = h
            .events
            .expect(Pattern::consume().path("x.txt"))
            .await
            .expect_err("an error came");
        assert!(err.reason.contains("error event"), "{err}");

        let mut h = harness().await;
        h.events.allow_errors();
        let cause = notify_delete(&h.master, "x.txt").await;
        crate::bus::api::call(
            h.slave
                .publish(Draft::error(&notify, cause, "disk on fire".into())),
        )
        .await
        .expect("publish");
        let error = h
            .events
            .expect(Pattern::error().cause(cause))
            .await
            .expect("allowed");
        assert_eq!(error.body.error.as_deref(), Some("disk on fire"));
    }

    #[tokio::test]
    async fn expect_seq_demands_the_order_and_expect_all_does_not() {
        let mut h = harness().await;
        h.events.quiet = Duration::from_millis(200);
        notify_delete(&h.master, "b").await;
        notify_delete(&h.master, "a").await;
        h.events
            .expect_all(vec![
                Pattern::notify().path("a"),
                Pattern::notify().path("b"),
            ])
            .await
            .expect("any order");
        let mut h = harness().await;
        h.events.quiet = Duration::from_millis(200);
        notify_delete(&h.master, "b").await;
        notify_delete(&h.master, "a").await;
        let err = h
            .events
            .expect_seq(vec![
                Pattern::notify().path("a"),
                Pattern::notify().path("b"),
            ])
            .await
            .expect_err("b came first");
        assert_eq!(err.unmet, ["notify for b"]);
    }
}
