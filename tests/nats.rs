//! What only the NATS backend has to prove: one writer without a bus in the middle (a
//! second master refused at its start, and a master whose claim another master took is
//! refused by the server, never interleaved), one connection per name, events against the
//! rules never applied, and, on a 3-node JetStream cluster, faults mid-burst (the log's
//! leader killed, a slave's server killed, the master's server cut off) that lose nothing
//! and apply nothing twice; and the log's layout, where a small file's content rides with
//! its notify.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use filesync::check::CheckOptions;
use filesync::event::Event;
use filesync::testkit::{Backend, Cluster, Exit, Pattern};
use futures_util::StreamExt;

use crate::util::{assert_refused, cluster_on, exported, jetstream, must, run};

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
    // The log as the server holds it once the master is gone, read whole.
    let after: Vec<Event> = exported(&c)
        .lines()
        .map(|l| Event::parse(l).expect("a log line"))
        .filter(|e| e.seq > head)
        .collect();
    assert!(
        after.iter().all(|e| e.agent != "master"),
        "the fenced master wrote nothing: {after:?}"
    );
}

/// How many files the fault tests write in one burst.
const BURST: usize = 300;

/// Writes a burst of `BURST` files (`PREFIX000`...) into the master's directory and waits
/// until the master has published the first of them, so that the fault lands mid-burst.
async fn burst(c: &mut Cluster, prefix: &str) {
    replicated(c).await;
    let m = c.master_dir();
    for i in 0..BURST {
        fs::write(m.join(format!("{prefix}{i:03}")), format!("{i}")).expect("write");
    }
    let first = Pattern::notify()
        .by("master")
        .put()
        .path_glob(&format!("{prefix}*"));
    must(c.events.expect(first).await);
}

/// Waits until the mirror's streams (the log, the content, the leases) each have a leader
/// and both followers current: a fault test strikes a healthy cluster, not one still
/// forming its groups (a follower not yet current does not stand for leader).
async fn replicated(c: &Cluster) {
    let js = jetstream(c).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in ["filesync_LOG", "filesync_CONTENT", "KV_filesync_AGENTS"] {
        loop {
            let healthy = match js.get_stream(name).await {
                Ok(mut stream) => stream.info().await.is_ok_and(|info| {
                    info.cluster.as_ref().is_some_and(|cluster| {
                        cluster.leader.is_some()
                            && cluster.replicas.len() == 2
                            && cluster.replicas.iter().all(|r| r.current && !r.offline)
                    })
                }),
                Err(_) => false,
            };
            if healthy {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not replicated within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Which of the cluster's nodes the client named `client` (`filesync ROLE NAME`) is on.
fn node_of(c: &Cluster, client: &str) -> usize {
    c.nats_nodes
        .iter()
        .position(|node| {
            let clients = node.clients().expect("the node's clients");
            clients.iter().any(|name| name == client)
        })
        .unwrap_or_else(|| panic!("{client:?} is on none of the nodes"))
}

/// After a fault: the mirror converges, every one of the `files` was applied by the one
/// slave and no notify twice; the log checks out (gapless, every invariant). Reports, for N4, how long
/// convergence took from `since`.
async fn converges_each_once(c: &mut Cluster, files: usize, fault: &str, since: Instant) {
    must(c.settle().await);
    eprintln!(
        "converged {:.1} s after {fault}",
        since.elapsed().as_secs_f64()
    );
    let consumes: Vec<&Event> = c
        .events
        .seen()
        .iter()
        .filter(|e| Pattern::consume().by("slave").put().matches(e))
        .collect();
    let paths: HashSet<&String> = consumes
        .iter()
        .filter_map(|e| e.body.path.as_ref())
        .collect();
    assert_eq!(paths.len(), files, "every file mirrored");
    // By notify, not by path: the master may publish a file twice (caught empty between its
    // creation and its write, then whole), and each of those is applied once.
    let causes: Vec<u64> = consumes.iter().filter_map(|e| e.body.cause).collect();
    let once: HashSet<&u64> = causes.iter().collect();
    assert_eq!(once.len(), causes.len(), "no notify applied twice");
    c.assert_checks(CheckOptions::default());
}

/// N4's fault: on a 3-node JetStream cluster (streams replicated on all three), the log
/// stream's leader is killed in the middle of a burst. The cluster elects another, the
/// agents go on through the nodes left, and the mirror converges: the log gapless and
/// checking out, every file there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_leader_killed_mid_burst_loses_nothing() {
    let mut c = cluster_on(Backend::NatsCluster, "nats-leader-kill", 1).await;
    c.events.quiet = Duration::from_secs(20);
    burst(&mut c, "f").await;
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
    let killed = Instant::now();
    must(c.plan.crash(proc));
    // N4 in docs/BENCHMARKS.md: the time to recover, as this test saw it.
    let fault = format!("the log's leader ({leader}) was killed");
    converges_each_once(&mut c, BURST, &fault, killed).await;
}

/// The node a slave is connected to is killed mid-burst: the slave goes on through another
/// node, from where its answers stop, applying nothing twice and missing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slaves_server_killed_mid_burst_loses_nothing() {
    let mut c = cluster_on(Backend::NatsCluster, "nats-slave-node-kill", 1).await;
    c.events.quiet = Duration::from_secs(20);
    burst(&mut c, "f").await;
    let node = node_of(&c, &format!("filesync slave {}", c.slaves[0].name));
    let killed = c.nats_nodes.remove(node);
    let since = Instant::now();
    must(c.plan.crash(killed.proc));
    let fault = format!("the slave's server ({}) was killed", killed.name);
    converges_each_once(&mut c, BURST, &fault, since).await;
}

/// A partition: the node the master is connected to is cut off (frozen: its sockets open,
/// answering nothing) mid-burst. The two nodes left are a majority: the master goes on
/// through them, and changes made while the node is away reach the slave before it comes
/// back. It then rejoins, and the log is the same on every node: gapless, checking out,
/// every file applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_mid_burst_loses_nothing() {
    let mut c = cluster_on(Backend::NatsCluster, "nats-partition", 1).await;
    // The two nodes left elect new leaders only after NATS's election timeout (4 to 9 s),
    // and the agents on the node cut off notice by their own timeouts.
    c.events.quiet = Duration::from_secs(30);
    c.events.deadline = Duration::from_secs(90);
    burst(&mut c, "f").await;
    let node = node_of(&c, "filesync master master");
    let cut = c.nats_nodes[node].proc;
    let name = c.nats_nodes[node].name.clone();
    let since = Instant::now();
    must(c.plan.freeze(cut, true));
    fs::write(c.master_dir().join("while-away.txt"), "away").expect("write");
    let away = c
        .events
        .expect(Pattern::consume().by("slave").put().path("while-away.txt"))
        .await;
    must(c.plan.freeze(cut, false));
    must(away);
    eprintln!(
        "a change made while {name} was cut off reached the slave in {:.1} s",
        since.elapsed().as_secs_f64()
    );
    let fault = format!("the master's server ({name}) was cut off");
    converges_each_once(&mut c, BURST + 1, &fault, since).await;
}

/// Events against the rules that get into a NATS log anyway, which the shipped permissions
/// would refuse: a notify published on a slave's subject, which no slave reads (a slave
/// reads the masters' events and its own), and a notify of a path outside the mirror on
/// the master's subject (a stolen master credential), which the slave reads and answers
/// with an `error` saying why. Neither is applied, and `check` flags both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_against_the_rules_is_never_applied_and_is_flagged() {
    let mut c = cluster_on(Backend::Nats, "nats-bogus", 1).await;
    c.events.allow_errors();
    let js = jetstream(&c).await;
    let sha256 = filesync_master::hash::sha256_hex(b"evil");
    let notify = |path: &str| {
        format!(
            r#"{{"tag":"notify","op":"put","path":"{path}","kind":"file","size":4,"sha256":"{sha256}","mode":420}}"#
        )
    };
    let mut seqs = Vec::new();
    for (agent, path) in [
        ("slave.696e747275646572", "evil.txt"),
        ("master.6d6173746572", "../evil.txt"),
    ] {
        let ack = js
            .publish(format!("filesync.log.{agent}"), notify(path).into())
            .await
            .expect("send")
            .await
            .expect("appended: NATS runs none of our rules");
        seqs.push(ack.sequence);
    }
    let answer = must(
        c.events
            .expect(Pattern::error().by("slave").cause(seqs[1]))
            .await,
    );
    let said = answer.body.error.unwrap_or_default();
    assert!(said.contains("rules refuse"), "{said}");
    fs::write(c.master_dir().join("after.txt"), "after").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("after.txt"))
            .await,
    );
    must(
        c.events
            .expect_none(
                Pattern::any().by("slave").cause(seqs[0]),
                Duration::from_millis(50),
            )
            .await,
    );
    assert!(!c.slaves[0].dir.join("evil.txt").exists(), "never applied");
    let beside = c.slaves[0].dir.parent().map(|up| up.join("evil.txt"));
    assert!(beside.is_some_and(|path| !path.exists()), "never applied");
    let report = c.check(CheckOptions::default());
    for seq in seqs {
        let named = report.violations.iter().any(|v| v.seqs.contains(&seq));
        assert!(named, "check flags the log at #{seq}: {report}");
    }
}

/// A reader whose consumer goes away before it delivered anything (deleted here; a
/// server killed under it in the fault tests) goes on from where it was reading. async-nats
/// makes such an ordered consumer again from the log's first message (from where the last
/// delivery was, when there was one), so `filesync listen --from` past the head was given
/// #1 and stopped on "the log's stream gave #1 where #9 comes next": a reader must take
/// that for a consumer started over, not for a broken log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_consumer_started_over_goes_on_from_where_it_was() {
    let mut c = cluster_on(Backend::Nats, "nats-consumer-over", 1).await;
    fs::write(c.master_dir().join("before.txt"), b"before").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("before.txt"))
            .await,
    );
    // Past the head's next: a link's first reading of the log ends at the head, and a
    // poll from there would go on with that reading's consumer; from one further, the
    // listener makes a consumer of its own, which delivers nothing until the log grows.
    let from = exported(&c).lines().count() + 2;
    let js = jetstream(&c).await;
    let log = js.get_stream("filesync_LOG").await.expect("the log");
    let consumers = || async {
        let names: Vec<String> = log
            .consumer_names()
            .map(|name| name.expect("a consumer's name"))
            .collect()
            .await;
        names
    };
    let before = consumers().await.len();
    let mut listen = std::process::Command::new(crate::util::bin())
        .args(["listen", "--bus", &c.addr, "--json", "--from"])
        .arg(from.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("filesync listen");
    let deadline = Instant::now() + Duration::from_secs(10);
    while consumers().await.len() <= before {
        assert!(Instant::now() < deadline, "listen made no consumer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every reader's consumer, the idle listener's among them, taken away.
    for name in consumers().await {
        log.delete_consumer(&name).await.expect("deleted");
    }
    fs::write(c.master_dir().join("after.txt"), b"after").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("after.txt"))
            .await,
    );
    let stdout = listen.stdout.take().expect("listen's output");
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    });
    let first = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("listen printed an event within 10 s")
        .expect("joined")
        .expect("read");
    let _ = listen.kill();
    let output = listen.wait_with_output().expect("listen ended");
    let event: Event = serde_json::from_str(&first).unwrap_or_else(|err| {
        panic!(
            "listen's first line is an event ({err}): {first:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(
        event.seq, from as u64,
        "where listen was asked to start: {first}"
    );
    c.assert_checks(CheckOptions::default());
}

/// A small file's content rides with its notify: the log message's payload is the content,
/// its header `Filesync-Event` the event, so the notify is one synced write and the slave
/// asks for nothing. A file above 16 KiB leaves the payload empty (its content is only in
/// the content stream). The log reads the same either way, and checks out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_files_content_rides_with_its_notify() {
    let mut c = cluster_on(Backend::Nats, "nats-inline", 1).await;
    let small = b"small enough to ride along".to_vec();
    let large = vec![b'x'; 17 << 10];
    fs::write(c.master_dir().join("small.txt"), &small).expect("write");
    fs::write(c.master_dir().join("large.bin"), &large).expect("write");
    let log = jetstream(&c)
        .await
        .get_stream("filesync_LOG")
        .await
        .expect("the log's stream");
    for (path, content, carried) in [("small.txt", &small, true), ("large.bin", &large, false)] {
        let notify = must(
            c.events
                .expect(Pattern::notify().by("master").put().path(path))
                .await,
        );
        must(
            c.events
                .expect(Pattern::consume().by("slave").put().path(path))
                .await,
        );
        let message = log.get_raw_message(notify.seq).await.expect("the notify");
        let event = message
            .headers
            .get("Filesync-Event")
            .map(|event| event.as_str().to_owned())
            .expect("the event in its header");
        assert!(event.contains(path), "{event}");
        let payload = if carried { content.as_slice() } else { &[] };
        assert_eq!(message.payload.as_ref(), payload, "{path}'s payload");
        let mirrored = fs::read(c.slaves[0].dir.join(path)).expect("mirrored");
        assert_eq!(&mirrored, content);
    }
    c.assert_checks(CheckOptions::default());
}

/// A notify's payload is whatever its publisher sent: one that is not the content the
/// notify names (a forged notify on the master's subject, a stolen credential) is never
/// written; the slave, holding that content nowhere, takes it from the content stream,
/// where it is stored by its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_carrying_other_bytes_than_it_names_is_not_trusted() {
    let mut c = cluster_on(Backend::Nats, "nats-inline-forged", 1).await;
    // Above 16 KiB, so that only the content stream has it (no notify carried it).
    let content = vec![b'r'; 20 << 10];
    fs::write(c.master_dir().join("real.txt"), &content).expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("real.txt"))
            .await,
    );
    // Gone from the slave too: it cannot take the content from a file of its own.
    fs::remove_file(c.master_dir().join("real.txt")).expect("remove");
    must(
        c.events
            .expect(Pattern::consume().by("slave").delete().path("real.txt"))
            .await,
    );
    let sha256 = filesync_master::hash::sha256_hex(&content);
    let size = content.len();
    let event = format!(
        r#"{{"tag":"notify","op":"put","path":"forged.txt","kind":"file","size":{size},"sha256":"{sha256}","mode":420}}"#
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Filesync-Event", event.as_str());
    let subject = format!("filesync.log.master.{}", hex::encode("master"));
    jetstream(&c)
        .await
        .publish_with_headers(subject, headers, "other bytes".into())
        .await
        .expect("send")
        .await
        .expect("appended: NATS runs none of our rules");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("forged.txt"))
            .await,
    );
    let written = fs::read(c.slaves[0].dir.join("forged.txt")).expect("applied");
    assert_eq!(
        written, content,
        "the content its address names, not the payload"
    );
}

/// A slave catching up reads older notifies without the content they carry, and takes it
/// from the content stream; where the content stream lacks it (its copy lost with the
/// master's connection, here purged), from the notify that carried it. Nothing is an
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_missing_by_address_is_read_from_the_notify_that_carried_it() {
    let mut c = cluster_on(Backend::Nats, "nats-inline-carrier", 1).await;
    must(c.stop_slave(0));
    let content = b"only in its notify".to_vec();
    fs::write(c.master_dir().join("away.txt"), &content).expect("write");
    must(
        c.events
            .expect(Pattern::notify().by("master").put().path("away.txt"))
            .await,
    );
    let js = jetstream(&c).await;
    let subject = format!(
        "filesync.content.{}",
        filesync_master::hash::sha256_hex(&content)
    );
    // Its copy by address is stored after the notify: awaited as a message of the content
    // stream (a consumer of its subject), then taken away.
    let store = js
        .get_stream("filesync_CONTENT")
        .await
        .expect("the content stream");
    let copies = store
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.clone(),
            ..Default::default()
        })
        .await
        .expect("a consumer of the copy's subject");
    let mut copies = copies.messages().await.expect("its messages");
    let copy = tokio::time::timeout(Duration::from_secs(10), copies.next())
        .await
        .expect("the copy stored within 10 s")
        .expect("a message")
        .expect("the copy");
    assert_eq!(copy.payload.as_ref(), content.as_slice());
    store.purge().filter(&subject).await.expect("purged");
    assert!(store
        .get_last_raw_message_by_subject(&subject)
        .await
        .is_err());
    must(c.start_slave(0).await);
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("away.txt"))
            .await,
    );
    let mirrored = fs::read(c.slaves[0].dir.join("away.txt")).expect("mirrored");
    assert_eq!(mirrored, content);
}
