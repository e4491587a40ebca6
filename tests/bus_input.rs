//! Bad input on the bus: garbage, oversized and torn frames, forbidden events, a peer that never reads. Also the raw-protocol helpers other modules use.

use std::fs;
use std::time::Duration;

use filesync::bus::frame::{read_frame, write_frame, Frame};
use filesync::bus::protocol::{Reply, Request, PROTOCOL_VERSION};
use filesync::check::CheckOptions;
use filesync::event::Role;
use filesync::testkit::{Cluster, Pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{cluster, must};

/// Reads until the bus closes the connection; fails if it stays open.
pub async fn assert_dropped(stream: &mut TcpStream) {
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

pub async fn send(stream: &mut TcpStream, request: &Request, body: &[u8]) {
    let frame = Frame::new(serde_json::to_vec(request).expect("json"), body.to_vec());
    write_frame(stream, &frame).await.expect("write frame");
    stream.flush().await.expect("flush");
}

pub async fn reply(stream: &mut TcpStream) -> Reply {
    let frame = read_frame(stream).await.expect("frame").expect("a reply");
    serde_json::from_slice(&frame.header).expect("reply json")
}

/// Connects and says hello as `name` in `role` (for a directory on this host, if given);
/// the stream and the bus's answer.
pub async fn raw_hello(
    addr: &str,
    role: Role,
    name: &str,
    dir: Option<&std::path::Path>,
) -> (TcpStream, Reply) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = Request::Hello {
        protocol: PROTOCOL_VERSION,
        role,
        name: name.into(),
        token: None,
        dir: dir.map(|d| d.to_string_lossy().into_owned()),
        host: dir.map(|_| filesync::agent::host_name()),
        takeover: false,
        quiet: false,
    };
    send(&mut stream, &request, &[]).await;
    let answer = reply(&mut stream).await;
    (stream, answer)
}

/// A welcomed connection as `name` in `role`.
pub async fn hello(addr: &str, role: Role, name: &str) -> TcpStream {
    let (stream, answer) = raw_hello(addr, role, name, None).await;
    assert!(matches!(answer, Reply::Welcome { .. }), "{answer:?}");
    stream
}

/// The bus still mirrors a file after whatever the test did to it.
pub async fn still_works(c: &mut Cluster, name: &str) {
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

/// On a real standalone bus, a master's notifies that do not apply to the state the log
/// implies are refused with a clear error and never logged: a move into itself, a delete
/// of a path that is not there, a put under a file, a delete naming the wrong kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_that_do_not_apply_are_refused_by_the_bus() {
    use filesync::event::Draft;
    use filesync_master::{Change, Entry, Kind, RelPath};
    let tmp = must(filesync::testkit::TestDir::new("inapplicable").map_err(|e| e.to_string()));
    let mut bus = std::process::Command::new(crate::util::bin());
    bus.args(["bus", "--listen", "127.0.0.1:0", "--state"])
        .arg(tmp.path().join("bus"));
    let mut bus = must(
        filesync::testkit::Proc::spawn("bus", bus, &tmp.path().join("logs"))
            .map_err(|e| e.to_string()),
    );
    let addr = must(bus.wait_for_stderr("listening on ", Duration::from_secs(10)));
    let mut master = hello(&addr, Role::Master, "master").await;
    let p = |s: &str| RelPath::new(s).expect("valid");
    let mut id = 0;
    let mut publish = |change: Change| {
        id += 1;
        (
            Request::Publish {
                id,
                event: Box::new(Draft::notify(&change)),
            },
            id,
        )
    };
    let fine = [
        Change::Put {
            path: p("d"),
            entry: Entry::dir(0o755),
        },
        Change::Put {
            path: p("link"),
            entry: Entry::symlink(b"d".to_vec()),
        },
    ];
    for change in fine {
        let (request, _) = publish(change);
        send(&mut master, &request, &[]).await;
        assert!(matches!(reply(&mut master).await, Reply::Ok { .. }));
    }
    let refused = [
        (
            Change::Move {
                from: p("d"),
                to: p("d/inner"),
                kind: Kind::Dir,
            },
            "cannot move d into itself",
        ),
        (
            Change::Delete {
                path: p("ghost"),
                kind: Kind::File,
            },
            "ghost is not in the tree",
        ),
        (
            Change::Put {
                path: p("link/under"),
                entry: Entry::dir(0o755),
            },
            "the parent of link/under is not a directory",
        ),
        (
            Change::Delete {
                path: p("d"),
                kind: Kind::File,
            },
            "d is a dir, not a file",
        ),
    ];
    for (change, why) in refused {
        let (request, sent) = publish(change);
        send(&mut master, &request, &[]).await;
        match reply(&mut master).await {
            Reply::Err { id, error } => {
                assert_eq!(id, sent);
                assert!(error.contains(why), "{error}");
            }
            other => panic!("an inapplicable notify was accepted: {other:?}"),
        }
    }
    let log = std::fs::read_to_string(tmp.path().join("bus/events.jsonl")).expect("log");
    let notifies = log
        .lines()
        .filter(|l| l.contains(r#""tag":"notify""#))
        .count();
    assert_eq!(notifies, 2, "only the two that apply:\n{log}");
    bus.terminate(Duration::from_secs(5));
}
