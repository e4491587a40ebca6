//! Connection fairness: a crowd of peers that say hello and then idle cannot lock the
//! mirror's own agents out, and is dropped after the idle timeout.

use std::time::{Duration, Instant};

use filesync::bus::protocol::Reply;
use filesync::check::CheckOptions;
use filesync::event::Role;
use filesync::testkit::{Cluster, Pattern};
use tokio::net::TcpStream;

use crate::bus_input::{raw_hello, still_works};
use crate::util::{bin, must};

/// Connects and says hello as listener `name`; the stream and the bus's answer.
async fn idle_peer(addr: &str, name: &str) -> (TcpStream, Reply) {
    raw_hello(addr, Role::Listener, name, None).await
}

/// Enough descriptors for a thousand sockets in this process.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let want = 4096.min(hard);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_peers_lock_out_no_agent_and_are_dropped_when_idle() {
    raise_fd_limit();
    let mut c = must(
        Cluster::builder(&bin(), "crowd")
            .master_args(&["--idle-timeout", "3s"])
            .start()
            .await,
    );
    let mut crowd = Vec::new();
    let mut refused = 0;
    let crowd_came = Instant::now();
    for i in 0..1000 {
        let (stream, answer) = idle_peer(&c.addr, &format!("idle-{i}")).await;
        match answer {
            Reply::Welcome { .. } => crowd.push(stream),
            Reply::Reject { busy: true, error } => {
                assert!(error.contains("the bus is full"), "{error}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(refused > 0, "the bus admits a bounded number of strangers");
    // The mirror's own slave still gets in: places are kept for the agents the log knows.
    let restarted = Instant::now();
    must(c.stop_slave(0));
    must(c.start_slave(0).await);
    assert!(
        restarted.elapsed() < Duration::from_secs(5),
        "rejoined in {:?}",
        restarted.elapsed()
    );
    still_works(&mut c, "while-crowded.txt").await;
    // The idle ones are dropped after the timeout; the master (it pings) and the slave (it
    // waits on a poll) are not. Then strangers are welcome again.
    let dropped = Instant::now();
    let welcomed = loop {
        let (_stream, answer) = idle_peer(&c.addr, "newcomer").await;
        if matches!(answer, Reply::Welcome { .. }) {
            break dropped.elapsed();
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(10),
            "still full: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Nobody idle was dropped before the idle timeout (3 s) since the first of the crowd
    // said hello; how long after the crowd that is depends on the machine's load.
    let since_crowd = crowd_came.elapsed();
    assert!(
        since_crowd >= Duration::from_millis(2900),
        "a newcomer was welcomed {since_crowd:?} after the crowd ({welcomed:?} after we began asking)"
    );
    drop(crowd);
    still_works(&mut c, "after-the-crowd.txt").await;
    must(
        c.events
            .expect_none(Pattern::leave().by("master"), Duration::from_millis(100))
            .await,
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
