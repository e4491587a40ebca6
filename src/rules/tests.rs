//! The rules on their own: a log built event by event, each refusal named.

use super::*;
use crate::event::{EntryKind, Op};
use filesync_master::{Entry, RelPath};

struct Log {
    rules: Rules,
    events: Vec<Event>,
}

/// A store that holds everything, or nothing.
struct Store(bool);

impl Content for Store {
    fn has(&self, _: &ContentHash) -> bool {
        self.0
    }

    fn manifest(&self, _: &ContentHash) -> Option<Result<Manifest, String>> {
        None
    }
}

impl Log {
    fn new() -> Log {
        Log {
            rules: Rules::new(),
            events: Vec::new(),
        }
    }

    /// Appends `draft` as `agent` if the rules allow it; returns its seq.
    fn publish(&mut self, role: Role, agent: &str, draft: Draft) -> Result<u64, String> {
        self.rules.check(role, agent, &draft, &Store(true))?;
        Ok(self.append(agent, draft))
    }

    /// Appends without asking (joins are the bus's own).
    fn append(&mut self, agent: &str, body: Draft) -> u64 {
        let event = Event {
            seq: self.events.len() as u64 + 1,
            time: "2026-11-30T00:00:00.000000Z".into(),
            agent: agent.into(),
            body,
        };
        let events = &self.events;
        self.rules.observe(&event, |cause| {
            events
                .get(cause as usize - 1)
                .and_then(|e| e.body.change().ok())
        });
        self.events.push(event);
        self.events.len() as u64
    }

    fn join(&mut self, agent: &str, role: Role, place: Option<(&str, &str)>) -> u64 {
        let mut join = Draft::tagged(Tag::Join);
        join.role = Some(role);
        if let Some((host, dir)) = place {
            join.host = Some(host.into());
            join.dir = Some(dir.into());
        }
        self.append(agent, join)
    }
}

fn p(s: &str) -> RelPath {
    RelPath::new(s).expect("valid")
}

fn put_dir(path: &str) -> Draft {
    Draft::notify(&Change::Put {
        path: p(path),
        entry: Entry::dir(0o755),
    })
}

fn put_file(path: &str) -> Draft {
    Draft::notify(&Change::Put {
        path: p(path),
        entry: Entry::file(3, ContentHash::of(b"abc"), 0o644),
    })
}

fn consume_of(notify: &Draft, cause: u64) -> Draft {
    let change = notify.change().expect("a change");
    let sha256 = notify.sha256.clone();
    Draft::consume(&change, cause, sha256)
}

#[test]
fn notifies_that_do_not_apply_to_the_logs_state_are_refused() {
    let mut log = Log::new();
    log.join("master", Role::Master, None);
    log.publish(Role::Master, "master", put_dir("d"))
        .expect("dir");
    log.publish(Role::Master, "master", put_file("f"))
        .expect("file");
    let refusals = [
        (
            Draft::notify(&Change::Move {
                from: p("d"),
                to: p("d/inner"),
                kind: Kind::Dir,
            }),
            "into itself",
        ),
        (
            Draft::notify(&Change::Delete {
                path: p("ghost"),
                kind: Kind::File,
            }),
            "not in the tree",
        ),
        (put_file("f/under-a-file"), "parent"),
        (
            Draft::notify(&Change::Delete {
                path: p("d"),
                kind: Kind::File,
            }),
            "is a dir, not a file",
        ),
    ];
    for (draft, why) in refusals {
        let err = log
            .publish(Role::Master, "master", draft.clone())
            .expect_err("refused");
        assert!(err.contains(why), "{err} (wanted {why:?})");
    }
    // The refused ones changed nothing: a put into d still applies.
    log.publish(Role::Master, "master", put_file("d/x"))
        .expect("applies");
    // Content the store lacks.
    let lacking = log
        .rules
        .check(Role::Master, "master", &put_file("g"), &Store(false))
        .expect_err("no content");
    assert!(lacking.contains("upload it first"), "{lacking}");
}

#[test]
fn answers_name_a_notify_once_and_in_order() {
    let mut log = Log::new();
    log.join("master", Role::Master, None);
    log.join("slave", Role::Slave, None);
    let a = put_file("a");
    let b = put_file("b");
    let n1 = log.publish(Role::Master, "master", a.clone()).expect("a");
    let n2 = log.publish(Role::Master, "master", b.clone()).expect("b");
    // A join is not a notify.
    let err = log
        .publish(Role::Slave, "slave", consume_of(&a, 2))
        .expect_err("cause is a join");
    assert!(err.contains("not a notify"), "{err}");
    log.publish(Role::Slave, "slave", consume_of(&b, n2))
        .expect("b answered");
    // Answering an earlier one, or the same one again, is out of order.
    for cause in [n1, n2] {
        let draft = consume_of(if cause == n1 { &a } else { &b }, cause);
        let err = log
            .publish(Role::Slave, "slave", draft)
            .expect_err("answered once");
        assert!(err.contains("answered once, in order"), "{err}");
    }
    // Another slave answers on its own account.
    log.join("slave-2", Role::Slave, None);
    log.publish(Role::Slave, "slave-2", consume_of(&a, n1))
        .expect("its own first answer");
    // Byte counts must add up.
    let mut wrong = consume_of(&b, n2);
    wrong.fetched = Some(1);
    wrong.reused = Some(1);
    let err = log
        .publish(Role::Slave, "slave-2", wrong)
        .expect_err("1 + 1 is not 3");
    assert!(err.contains("not the size 3"), "{err}");
    // A master may not answer, a slave may not notify, nobody may set join fields.
    assert!(log
        .publish(Role::Master, "master", consume_of(&b, n2))
        .is_err());
    assert!(log.publish(Role::Slave, "slave", put_file("c")).is_err());
    let mut forged = Draft::tagged(Tag::Ready);
    forged.host = Some("elsewhere".into());
    assert!(log.publish(Role::Slave, "slave", forged).is_err());
}

#[test]
fn a_repair_names_an_open_error_of_its_own_and_closes_it() {
    let mut log = Log::new();
    log.join("master", Role::Master, None);
    log.join("slave", Role::Slave, None);
    let x = put_file("x");
    let n = log.publish(Role::Master, "master", x.clone()).expect("x");
    let error = log
        .publish(
            Role::Slave,
            "slave",
            Draft::error(&x, n, "no space left on device".into()),
        )
        .expect("error");
    assert_eq!(log.rules.retryable("slave"), [(error, n)]);
    let mut repair = consume_of(&x, n);
    repair.repairs = Some(error);
    log.join("slave-2", Role::Slave, None);
    assert!(
        log.publish(Role::Slave, "slave-2", repair.clone()).is_err(),
        "not slave-2's error"
    );
    log.publish(Role::Slave, "slave", repair.clone())
        .expect("the repair");
    assert!(log.rules.retryable("slave").is_empty());
    assert_eq!(log.rules.open_errors().of("slave").count(), 0);
    let err = log
        .publish(Role::Slave, "slave", repair)
        .expect_err("closed already");
    assert!(err.contains("not an open error"), "{err}");
}

#[test]
fn an_error_goes_stale_when_a_later_notify_touches_its_path_and_closes_when_covered() {
    let mut log = Log::new();
    log.join("master", Role::Master, None);
    log.join("slave", Role::Slave, None);
    let x = put_file("x");
    let n = log.publish(Role::Master, "master", x.clone()).expect("x");
    let error = log
        .publish(Role::Slave, "slave", Draft::error(&x, n, "full".into()))
        .expect("error");
    let delete = Draft {
        op: Some(Op::Delete),
        kind: Some(EntryKind::File),
        path: Some("x".into()),
        ..Draft::tagged(Tag::Notify)
    };
    let d = log
        .publish(Role::Master, "master", delete.clone())
        .expect("delete");
    assert!(log.rules.retryable("slave").is_empty(), "stale");
    let mut repair = consume_of(&x, n);
    repair.repairs = Some(error);
    let err = log
        .publish(Role::Slave, "slave", repair)
        .expect_err("stale");
    assert!(err.contains("stale"), "{err}");
    assert_eq!(log.rules.open_errors().of("slave").count(), 1);
    log.publish(Role::Slave, "slave", consume_of(&delete, d))
        .expect("the delete");
    assert_eq!(
        log.rules.open_errors().of("slave").count(),
        0,
        "covered by the delete"
    );
}

#[test]
fn one_master_per_log_and_one_connection_per_name() {
    let mut log = Log::new();
    let here = |dir: &str| {
        Some(Place {
            host: "h".into(),
            dir: dir.into(),
        })
    };
    let hello = |role, name: &str, place: Option<Place>, takeover| Hello {
        role,
        name: name.into(),
        place,
        takeover,
    };
    let master = hello(Role::Master, "master", here("/A"), false);
    assert_eq!(log.rules.admit(&master, &[]), Ok(()));
    log.join("master", Role::Master, Some(("h", "/A")));
    let connected = [Connected {
        role: Role::Master,
        name: "master".into(),
        place: here("/A"),
    }];
    let second = hello(Role::Master, "other", here("/A"), false);
    let err = log
        .rules
        .admit(&second, &connected)
        .expect_err("one master");
    assert!(
        matches!(&err, Refusal::Busy(m) if m.contains("already connected")),
        "{err:?}"
    );
    let same_name = hello(Role::Slave, "master", here("/B"), false);
    assert!(log.rules.admit(&same_name, &connected).is_err());
    // With the master gone, another directory may not write to its log...
    let elsewhere = hello(Role::Master, "master", here("/C"), false);
    let err = log.rules.admit(&elsewhere, &[]).expect_err("not its log");
    assert!(
        matches!(&err, Refusal::Refused(m) if m.contains("--takeover")),
        "{err:?}"
    );
    // ... unless it takes it over; the same master may always come back.
    assert_eq!(
        log.rules
            .admit(&hello(Role::Master, "m2", here("/C"), true), &[]),
        Ok(())
    );
    assert_eq!(log.rules.admit(&master, &[]), Ok(()));
    // A slave inside the master's directory, on the same host only.
    let nested = hello(Role::Slave, "slave", here("/A/inner"), false);
    assert!(log.rules.admit(&nested, &connected).is_err());
    let other_host = hello(
        Role::Slave,
        "slave",
        Some(Place {
            host: "h2".into(),
            dir: "/A/inner".into(),
        }),
        false,
    );
    assert_eq!(log.rules.admit(&other_host, &connected), Ok(()));
    // Listeners share names among themselves.
    let listeners = [Connected {
        role: Role::Listener,
        name: "listener".into(),
        place: None,
    }];
    assert_eq!(
        log.rules
            .admit(&hello(Role::Listener, "listener", None, false), &listeners),
        Ok(())
    );
    assert!(log
        .rules
        .admit(&hello(Role::Listener, "bad name!", None, false), &[])
        .is_err());
}

/// A store holding one manifest and some of its chunks.
struct Chunks {
    manifest: (ContentHash, Manifest),
    held: Vec<ContentHash>,
}

impl Content for Chunks {
    fn has(&self, address: &ContentHash) -> bool {
        self.held.contains(address) || *address == self.manifest.0
    }

    fn manifest(&self, address: &ContentHash) -> Option<Result<Manifest, String>> {
        (*address == self.manifest.0).then(|| Ok(self.manifest.1.clone()))
    }
}

#[test]
fn a_put_in_chunks_needs_its_manifest_and_every_chunk_stored() {
    use filesync_master::chunk::ChunkRef;
    let mut log = Log::new();
    log.join("master", Role::Master, None);
    let chunks: Vec<ChunkRef> = (0..3u8)
        .map(|i| ChunkRef {
            sha256: ContentHash::from([i; 32]),
            len: 1000,
        })
        .collect();
    let mut manifest = Manifest::new();
    for chunk in &chunks {
        manifest.push(*chunk);
    }
    let address = manifest.address();
    let put = |size: u64, manifest: &str| {
        let mut draft = Draft::notify(&Change::Put {
            path: p("big"),
            entry: Entry::file(size, ContentHash::of(b"whole"), 0o644),
        });
        draft.manifest = Some(manifest.to_owned());
        draft
    };
    let store = |held: usize| Chunks {
        manifest: (address, manifest.clone()),
        held: chunks[..held].iter().map(|c| c.sha256).collect(),
    };
    let check =
        |draft: &Draft, held: usize| log.rules.check(Role::Master, "master", draft, &store(held));
    assert_eq!(check(&put(3000, &address.to_hex()), 3), Ok(()));
    let missing = check(&put(3000, &address.to_hex()), 2).expect_err("a chunk is missing");
    assert!(missing.contains(&chunks[2].sha256.to_hex()), "{missing}");
    let size = check(&put(2999, &address.to_hex()), 3).expect_err("sizes differ");
    assert!(size.contains("describes 3000 bytes, not 2999"), "{size}");
    let other = ContentHash::of(b"no such manifest").to_hex();
    let absent = check(&put(3000, &other), 3).expect_err("no manifest");
    assert!(absent.contains("no manifest"), "{absent}");
    assert!(check(&put(3000, "not hex"), 3).is_err());
}

#[test]
fn the_notify_set_finds_the_next_one_and_forgets_what_retention_removed() {
    let mut set = SeqSet::default();
    for seq in [3, 63, 64, 200, 1000] {
        set.insert(seq);
    }
    assert_eq!(set.next_after(0), Some(3));
    assert_eq!(set.next_after(3), Some(63));
    assert_eq!(set.next_after(63), Some(64));
    assert_eq!(set.next_after(64), Some(200));
    assert_eq!(set.next_after(1000), None);
    set.forget_before(500);
    assert!(!set.contains(200), "forgotten with its word");
    assert!(set.contains(1000));
    assert_eq!(set.next_after(0), Some(1000));
    assert_eq!(
        (set.first_word, set.words.len()),
        (7, 9),
        "the words from the start on"
    );
    set.forget_before(5000);
    set.insert(5001);
    assert_eq!(set.next_after(0), Some(5001));
    assert_eq!(set.words.len(), 1);
}
