//! Hostile or clumsy peers and conditions: garbage and oversized frames, forbidden events,
//! `..` paths, symlinks planted on the slave, a full disk. Each gets a clear error, loses
//! nothing already synced, and leaves the bus and the other agents working.

use std::fs;
use std::time::Duration;

use filesync::bus::frame::{read_frame, write_frame, Frame};
use filesync::bus::protocol::{Reply, Request, PROTOCOL_VERSION};
use filesync::check::CheckOptions;
use filesync::event::{Draft, EntryKind, Op, Role, Tag};
use filesync::testkit::{Cluster, Pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{cluster, must};

/// Reads until the bus closes the connection; fails if it stays open.
async fn assert_dropped(stream: &mut TcpStream) {
    let mut sink = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the bus kept a misbehaving connection open");
}

async fn send(stream: &mut TcpStream, request: &Request, body: &[u8]) {
    let frame = Frame::new(serde_json::to_vec(request).expect("json"), body.to_vec());
    write_frame(stream, &frame).await.expect("write frame");
    stream.flush().await.expect("flush");
}

async fn reply(stream: &mut TcpStream) -> Reply {
    let frame = read_frame(stream).await.expect("frame").expect("a reply");
    serde_json::from_slice(&frame.header).expect("reply json")
}

async fn hello(addr: &str, role: Role, name: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = Request::Hello {
        protocol: PROTOCOL_VERSION,
        role,
        name: name.into(),
        token: None,
        dir: None,
    };
    send(&mut stream, &request, &[]).await;
    assert!(matches!(reply(&mut stream).await, Reply::Welcome { .. }));
    stream
}

/// The bus still mirrors a file after whatever the test did to it.
async fn still_works(c: &mut Cluster, name: &str) {
    fs::write(c.master_dir().join(name), name).expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path(name))
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_drop_only_that_connection() {
    let mut c = cluster("garbage", 1).await;
    // Not our protocol at all (an HTTP request): its first bytes read as a huge length.
    let mut http = TcpStream::connect(&c.addr).await.expect("connect");
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert_dropped(&mut http).await;
    // A valid peer that then announces a 100 MB frame.
    let mut liar = hello(&c.addr, Role::Listener, "liar").await;
    liar.write_all(&100_000_000u32.to_be_bytes())
        .await
        .expect("write");
    assert_dropped(&mut liar).await;
    // A frame whose header is not a request.
    let mut noise = hello(&c.addr, Role::Listener, "noise").await;
    write_frame(
        &mut noise,
        &Frame::new(b"\xff\xfe not json".to_vec(), Vec::new()),
    )
    .await
    .expect("write");
    noise.flush().await.expect("flush");
    assert_dropped(&mut noise).await;
    // A torn frame: the peer vanishes mid-frame.
    let mut torn = hello(&c.addr, Role::Listener, "torn").await;
    torn.write_all(&[0, 0, 1, 0, 0, 0]).await.expect("write");
    drop(torn);
    still_works(&mut c, "after-garbage.txt").await;
    must(
        c.events
            .expect_none(Pattern::join().by("GET"), Duration::from_millis(100))
            .await,
    );
    c.assert_checks(CheckOptions::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_are_refused_and_never_logged() {
    let mut c = cluster("hostile", 1).await;
    let outside = c.dir().join("outside-target");
    let mut evil = hello(&c.addr, Role::Master, "evil").await;
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
        // A master may not answer notifies, nor forge joins.
        Draft {
            cause: Some(1),
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
            offset: 0,
            last: true,
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
    c.assert_checks(CheckOptions::default());
}

/// Someone on the slave's machine replaces a mirrored directory with a symlink pointing
/// outside: the slave refuses to write through it (an error event), writes nothing outside,
/// and keeps mirroring everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_on_the_slave_is_never_written_through() {
    let mut c = cluster("planted", 1).await;
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

/// A slave whose disk is full: an error event for the file that does not fit, nothing
/// already synced lost, no temporary file left, and the slave goes on once space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_an_error_event_and_the_slave_keeps_going() {
    let mut c = cluster("full-disk", 0).await;
    c.events.allow_errors();
    let idx = c.add_slave();
    let slave_dir = c.slaves[idx].dir.clone();
    fs::create_dir_all(&slave_dir).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&slave_dir)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "this test needs to mount a 1 MiB tmpfs (root): {mounted}"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(slave_dir.clone());
    must(c.start_slave(idx).await);
    let m = c.master_dir();
    fs::write(m.join("small.txt"), "fits").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("small.txt"))
            .await,
    );
    fs::write(m.join("big.bin"), vec![7u8; 3 << 20]).expect("write");
    let error = must(
        c.events
            .expect(Pattern::error().by("slave").path("big.bin"))
            .await,
    );
    assert!(
        error.body.error.as_deref().unwrap_or("").contains("space"),
        "{error:?}"
    );
    assert_eq!(
        fs::read(slave_dir.join("small.txt")).expect("kept"),
        b"fits",
        "nothing already synced lost"
    );
    let leftovers: Vec<_> = fs::read_dir(&slave_dir)
        .expect("read")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file left behind: {leftovers:?}"
    );
    fs::remove_file(m.join("big.bin")).expect("rm");
    fs::write(m.join("later.txt"), "after the error").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("later.txt"))
            .await,
    );
    must(c.settle().await);
    // The error answered its notify; once big.bin is gone again the states agree.
    c.assert_checks(CheckOptions::default());
}

/// A subscriber that asks for everything and never reads its socket: its replies pile up in
/// its own connection only. Everyone else keeps getting events at full speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_stalls_nobody() {
    let mut c = cluster("slow-reader", 1).await;
    // Something to read: a few hundred KiB of log.
    for i in 0..200 {
        fs::write(c.master_dir().join(format!("f{i}")), "x").expect("write");
    }
    must(
        c.events
            .expect_count(
                Pattern::consume().by("slave").put(),
                200,
                Duration::from_millis(100),
            )
            .await,
    );
    let mut sloth = hello(&c.addr, Role::Listener, "sloth").await;
    for id in 0..2000u64 {
        let poll = Request::Poll {
            id,
            from: 1,
            max_bytes: 1 << 20,
        };
        let frame = Frame::new(serde_json::to_vec(&poll).expect("json"), Vec::new());
        // The bus stops reading from us once our replies back up; that must not matter.
        if tokio::time::timeout(Duration::from_millis(50), write_frame(&mut sloth, &frame))
            .await
            .is_err()
        {
            break;
        }
    }
    still_works(&mut c, "while-sloth-sleeps.txt").await;
    drop(sloth);
    c.assert_checks(CheckOptions::default());
}
