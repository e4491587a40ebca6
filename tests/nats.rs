//! What only the NATS backend has to prove: one writer without a bus in the middle (a
//! second master refused at its start, and a master whose claim another master took is
//! refused by the server, never interleaved), one connection per name, and the log read
//! back whole by `export`.

use std::fs;
use std::path::Path;
use std::time::Duration;

use filesync::bus::nats::NatsAddress;
use filesync::check::CheckOptions;
use filesync::testkit::{Backend, Cluster, Exit, Pattern};

use crate::util::{assert_refused, cluster_on, must, run};

/// A JetStream client of the test's own on its NATS servers: a peer outside filesync, which
/// NATS lets write whatever its permissions allow.
async fn jetstream(c: &Cluster) -> async_nats::jetstream::Context {
    let address = NatsAddress::parse(&c.addr)
        .expect("a NATS address")
        .expect("well written");
    let servers: Vec<async_nats::ServerAddr> = address
        .servers
        .iter()
        .map(|s| s.parse().expect("a server address"))
        .collect();
    let client = async_nats::connect(servers).await.expect("connect");
    async_nats::jetstream::new(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_master_or_a_taken_name_is_refused_at_its_start() {
    let mut c = cluster_on(Backend::Nats, "nats-two-masters", 1).await;
    let other = c.dir().join("other");
    fs::create_dir(&other).expect("mkdir");
    let seen = c.events.seen().len();
    // On the same directory (the log's own), under another name: the master's lease.
    let state = c.dir().join("state/master-2");
    let out = run(
        &["master", "--name", "master-2", "--bus", &c.addr, "--dir"],
        &[&c.master_dir(), Path::new("--state"), &state],
    );
    assert_refused(&out, "is already connected: one master per log");
    // On another directory: the log is the first master's.
    let out = run(
        &["master", "--name", "master-2", "--bus", &c.addr, "--dir"],
        &[&other, Path::new("--state"), &state],
    );
    assert_refused(&out, "this log belongs to master \"master\"");
    let state = c.dir().join("state/second");
    let out = run(
        &[
            "slave",
            "--name",
            "slave",
            "--wait-for-bus",
            "1s",
            "--bus",
            &c.addr,
            "--dir",
        ],
        &[&other, Path::new("--state"), &state],
    );
    assert_refused(&out, "one connection per name");
    fs::write(c.master_dir().join("after.txt"), "after").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("after.txt"))
            .await,
    );
    assert!(
        c.events.seen()[seen..]
            .iter()
            .all(|e| e.agent == "master" || e.agent == "slave"),
        "nothing the refused agents did reached the log"
    );
    c.assert_checks(CheckOptions::default());
}

/// A master's claim taken behind its back (a master that joined while this one's lease had
/// lapsed, say): the server refuses this one's next notify, and the log holds none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_claim_was_taken_is_refused_by_the_server() {
    let mut c = cluster_on(Backend::Nats, "nats-fenced", 1).await;
    let js = jetstream(&c).await;
    let head = c.events.seen().last().map_or(0, |e| e.seq);
    let claim = c
        .events
        .seen()
        .iter()
        .filter(|e| e.agent == "master" && e.body.tag == Some(filesync::event::Tag::Join))
        .map(|e| e.seq)
        .next_back()
        .expect("the master's join");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        claim.to_string().as_str(),
    );
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence-Subject",
        "filesync.log.master.*.join",
    );
    let join = r#"{"tag":"join","role":"master","host":"elsewhere","dir":"/elsewhere"}"#;
    let subject = format!("filesync.log.master.{}.join", hex::encode("intruder"));
    js.publish_with_headers(subject, headers, join.into())
        .await
        .expect("send")
        .await
        .expect("the intruder's join is appended");
    must(c.events.expect(Pattern::join().by("intruder")).await);
    fs::write(c.master_dir().join("late.txt"), "late").expect("write");
    must(c.master_exits(Exit::Code(2), Duration::from_secs(10)));
    // Whatever reached the log has reached the kit's listener once it falls quiet.
    must(c.events.wait_quiet(Duration::from_millis(300)).await);
    let after: Vec<_> = c.events.seen().iter().filter(|e| e.seq > head).collect();
    assert!(
        after.iter().all(|e| e.agent != "master"),
        "the fenced master wrote nothing: {after:?}"
    );
}

/// N4's fault: on a 3-node JetStream cluster (streams replicated on all three), the log
/// stream's leader is killed in the middle of a burst. The cluster elects another, the
/// agents go on through the nodes left, and the mirror converges: the log gapless and
/// checking out, every file there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_leader_killed_mid_burst_loses_nothing() {
    let mut c = cluster_on(Backend::NatsCluster, "nats-leader-kill", 1).await;
    c.events.quiet = Duration::from_secs(20);
    let m = c.master_dir();
    for i in 0..300 {
        fs::write(m.join(format!("f{i:03}")), format!("{i}")).expect("write");
    }
    must(
        c.events
            .expect(Pattern::notify().by("master").put().path_glob("f*"))
            .await,
    );
    let js = jetstream(&c).await;
    let mut log = js
        .get_stream("filesync_LOG")
        .await
        .expect("the log's stream");
    let leader = log
        .info()
        .await
        .expect("stream info")
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.clone())
        .expect("a leader");
    let node = c
        .nats_nodes
        .iter()
        .position(|n| n.name == leader)
        .expect("the leader is one of ours");
    let proc = c.nats_nodes.remove(node).proc;
    let killed = std::time::Instant::now();
    must(c.plan.crash(proc));
    must(c.settle().await);
    // N4 in docs/BENCHMARKS.md: the time to recover, as this test saw it.
    eprintln!(
        "N4: converged {:.1} s after the log's leader ({leader}) was killed",
        killed.elapsed().as_secs_f64()
    );
    let consumed: Vec<String> = c
        .events
        .seen()
        .iter()
        .filter(|e| Pattern::consume().by("slave").put().matches(e))
        .filter_map(|e| e.body.path.clone())
        .collect();
    let once: std::collections::HashSet<&String> = consumed.iter().collect();
    assert_eq!(once.len(), 300, "every file mirrored");
    assert_eq!(consumed.len(), 300, "none applied twice");
    c.assert_checks(CheckOptions::default());
}

/// An event against the rules that gets into a NATS log anyway (here a notify published on
/// a slave's subject, which the shipped permissions would refuse): the slave never applies
/// it and answers it with an `error` saying why, and `check` flags the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_against_the_rules_is_never_applied_and_is_flagged() {
    let mut c = cluster_on(Backend::Nats, "nats-bogus", 1).await;
    c.events.allow_errors();
    let js = jetstream(&c).await;
    let sha256 = filesync_master::hash::sha256_hex(b"evil");
    let notify = format!(
        r#"{{"tag":"notify","op":"put","path":"evil.txt","kind":"file","size":4,"sha256":"{sha256}","mode":420}}"#
    );
    let subject = format!("filesync.log.slave.{}", hex::encode("intruder"));
    let seq = js
        .publish(subject, notify.into())
        .await
        .expect("send")
        .await
        .expect("appended: NATS runs none of our rules")
        .sequence;
    let answer = must(
        c.events
            .expect(Pattern::error().by("slave").cause(seq))
            .await,
    );
    let said = answer.body.error.unwrap_or_default();
    assert!(said.contains("rules refuse"), "{said}");
    assert!(!c.slaves[0].dir.join("evil.txt").exists(), "never applied");
    fs::write(c.master_dir().join("after.txt"), "after").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("after.txt"))
            .await,
    );
    let report = c.check(CheckOptions::default());
    let named = report
        .violations
        .iter()
        .any(|v| v.seqs.contains(&seq) || v.seqs.contains(&answer.seq));
    assert!(named, "check flags the log at #{seq}: {report}");
}
