//! Hostile paths: `..`, absolute and escaping paths on the bus, a symlink planted on the slave.

use std::fs;
use std::time::Duration;

use filesync::bus::frame::{write_frame, Frame};
use filesync::bus::protocol::{Reply, Request};
use filesync::check::CheckOptions;
use filesync::event::{Draft, EntryKind, Op, Role, Tag};
use filesync::testkit::Pattern;
use tokio::io::AsyncWriteExt;

use crate::bus_input::{assert_dropped, hello, reply, send, still_works};
use crate::util::{cluster, cluster_on, must};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_are_refused_and_never_logged() {
    let mut c = cluster("hostile", 1).await;
    let outside = c.dir().join("outside-target");
    // A second master is refused at its hello (see `identity`): the hostile peer here is
    // a slave, whose events must pass the same checks of paths, roles and causes.
    let mut evil = hello(&c.addr, Role::Slave, "evil").await;
    let mut id = 0;
    let mut publish = |draft: Draft| {
        id += 1;
        (
            Request::Publish {
                id,
                event: Box::new(draft),
            },
            id,
        )
    };
    let escapes = [
        Draft {
            op: Some(Op::Delete),
            kind: Some(EntryKind::Dir),
            path: Some("../outside-target".into()),
            ..Draft::tagged(Tag::Notify)
        },
        Draft {
            op: Some(Op::Delete),
            kind: Some(EntryKind::Dir),
            path: Some(outside.to_string_lossy().into_owned()),
            ..Draft::tagged(Tag::Notify)
        },
        Draft {
            op: Some(Op::Move),
            kind: Some(EntryKind::File),
            from: Some("a".into()),
            to: Some("x/../../y".into()),
            ..Draft::tagged(Tag::Notify)
        },
        // Content the bus does not hold.
        Draft {
            op: Some(Op::Put),
            kind: Some(EntryKind::File),
            path: Some("ghost".into()),
            mode: Some(0o644),
            size: Some(1),
            sha256: Some("0".repeat(64)),
            ..Draft::tagged(Tag::Notify)
        },
        // An answer whose cause is not a notify (#1 is the master's join), an answer that
        // escapes the root, and a forged join.
        Draft {
            op: Some(Op::Delete),
            kind: Some(EntryKind::Dir),
            path: Some("d".into()),
            cause: Some(1),
            ..Draft::tagged(Tag::Consume)
        },
        Draft {
            op: Some(Op::Delete),
            kind: Some(EntryKind::Dir),
            path: Some("../outside-target".into()),
            cause: Some(2),
            ..Draft::tagged(Tag::Consume)
        },
        Draft::tagged(Tag::Join),
    ];
    for draft in escapes {
        let (request, sent) = publish(draft);
        send(&mut evil, &request, &[]).await;
        match reply(&mut evil).await {
            Reply::Err { id, error } => {
                assert_eq!(id, sent);
                assert!(!error.is_empty());
            }
            other => panic!("a hostile event was accepted: {other:?}"),
        }
    }
    // A blob uploaded under an address it does not hash to is refused too.
    send(
        &mut evil,
        &Request::BlobPut {
            id: 99,
            sha256: "a".repeat(64),
        },
        b"lies",
    )
    .await;
    assert!(matches!(reply(&mut evil).await, Reply::Err { .. }));
    // Unknown fields in an event make the frame unreadable: the peer is dropped.
    let unknown = br#"{"type":"publish","id":100,"event":{"tag":"ready","surprise":true}}"#;
    write_frame(&mut evil, &Frame::new(unknown.to_vec(), Vec::new()))
        .await
        .expect("write");
    evil.flush().await.expect("flush");
    assert_dropped(&mut evil).await;

    still_works(&mut c, "after-hostility.txt").await;
    must(
        c.events
            .expect_none(
                Pattern::any()
                    .by("evil")
                    .with("anything but its join", |e| e.body.tag != Some(Tag::Join)),
                Duration::from_millis(200),
            )
            .await,
    );
    assert!(!outside.exists());
    // The hostile slave joined and answered nothing: only that may be pending.
    c.assert_checks(CheckOptions {
        allow_pending: true,
    });
}

on_each_backend! {
/// Someone on the slave's machine replaces a mirrored directory with a symlink pointing
/// outside: the slave refuses to write through it (an error event), writes nothing outside,
/// and keeps mirroring everything else.
async fn a_symlink_planted_on_the_slave_is_never_written_through(backend) {
    let mut c = cluster_on(backend, "planted", 1).await;
    c.events.allow_errors();
    let m = c.master_dir();
    fs::create_dir(m.join("data")).expect("mkdir");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("data"))
            .await,
    );
    let outside = c.dir().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    let s = c.slaves[0].dir.clone();
    fs::remove_dir(s.join("data")).expect("rmdir");
    std::os::unix::fs::symlink(&outside, s.join("data")).expect("plant symlink");
    fs::write(m.join("data/secret"), "must not leave the root").expect("write");
    let notify = must(
        c.events
            .expect(Pattern::notify().by("master").put().path("data/secret"))
            .await,
    );
    let error = must(
        c.events
            .expect(Pattern::error().by("slave").cause(notify.seq))
            .await,
    );
    assert!(
        error
            .body
            .error
            .as_deref()
            .unwrap_or("")
            .contains("symlink"),
        "{error:?}"
    );
    assert_eq!(
        fs::read_dir(&outside).expect("read").count(),
        0,
        "nothing written outside the root"
    );
    still_works(&mut c, "unrelated.txt").await;
}
}
