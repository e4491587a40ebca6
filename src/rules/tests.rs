//! The rules on their own: a log built event by event, each refusal named.

use super::*;
use crate::event::{EntryKind, Op};
use filesync_master::{Entry, RelPath};

struct Log {
    rules: Rules,
    events: Vec<Event>,
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
        self.rules.check(role, agent, &draft, |_| true)?;
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
        .check(Role::Master, "master", &put_file("g"), |_| false)
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
