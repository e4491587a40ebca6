//! Races, made deterministic with checkpoints: the bus holds agents where the test says,
//! and the runner releases them in the order the test wants.

use std::fs;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::event::Op;
use filesync::testkit::{Checkpoint, Cluster, Pattern, Runner};

use crate::util::{bin, must};

async fn cluster(label: &str, n_slaves: usize) -> Cluster {
    must(
        Cluster::builder(&bin(), label)
            .slaves(n_slaves)
            .checkpoints()
            .start()
            .await,
    )
}

/// The slave is held before applying a put; meanwhile the file is deleted on the master.
/// When released, the slave applies the put (the content is still in the bus's store) and
/// then the delete, and ends without the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_while_the_slave_is_held_before_its_put() {
    let mut c = cluster("race-delete", 1).await;
    let mut runner = must(
        Runner::new(
            &c.addr,
            vec![Checkpoint::before_apply("slave", Op::Put, "doomed.txt")],
        )
        .await,
    );
    let m = c.master_dir();
    fs::write(m.join("doomed.txt"), "short-lived").expect("write");
    must(runner.next().await);
    must(
        c.events
            .expect(Pattern::notify().by("master").put().path("doomed.txt"))
            .await,
    );
    must(
        c.events
            .expect_none(
                Pattern::consume().path("doomed.txt"),
                Duration::from_millis(200),
            )
            .await,
    );
    assert!(
        !c.slaves[0].dir.join("doomed.txt").exists(),
        "held before applying"
    );
    fs::remove_file(m.join("doomed.txt")).expect("rm");
    must(
        c.events
            .expect(Pattern::notify().by("master").delete().path("doomed.txt"))
            .await,
    );
    must(runner.run_to_end().await);
    must(
        c.events
            .expect_seq(vec![
                Pattern::consume().by("slave").put().path("doomed.txt"),
                Pattern::consume().by("slave").delete().path("doomed.txt"),
            ])
            .await,
    );
    must(c.settle().await);
    assert!(!c.slaves[0].dir.join("doomed.txt").exists());
    c.assert_checks(CheckOptions::default());
}

fn consume_seq(c: &Cluster, agent: &str, path: &str) -> u64 {
    let pattern = Pattern::consume().by(agent).path(path);
    c.events
        .seen()
        .iter()
        .find(|e| pattern.matches(e))
        .map(|e| e.seq)
        .unwrap_or(0)
}

/// Two slaves apply the same change in one order, then the next change in the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slaves_held_in_opposite_orders() {
    let mut c = cluster("race-order", 2).await;
    let m = c.master_dir();
    for (file, first, second) in [("a.txt", "slave-2", "slave"), ("b.txt", "slave", "slave-2")] {
        let mut runner = must(
            Runner::new(
                &c.addr,
                vec![
                    Checkpoint::after_consume(first, Op::Put, file),
                    Checkpoint::after_consume(second, Op::Put, file),
                ],
            )
            .await,
        );
        fs::write(m.join(file), file).expect("write");
        must(runner.next().await);
        // `first` has consumed, `second` is held before applying.
        let first_idx = if first == "slave" { 0 } else { 1 };
        assert!(c.slaves[first_idx].dir.join(file).exists());
        assert!(
            !c.slaves[1 - first_idx].dir.join(file).exists(),
            "{second} is held"
        );
        must(
            c.events
                .expect(Pattern::consume().by(first).path(file))
                .await,
        );
        must(
            c.events
                .expect_none(
                    Pattern::consume().by(second).path(file),
                    Duration::from_millis(200),
                )
                .await,
        );
        must(runner.next().await);
        must(
            c.events
                .expect(Pattern::consume().by(second).path(file))
                .await,
        );
        must(runner.run_to_end().await);
        assert!(
            consume_seq(&c, first, file) < consume_seq(&c, second, file),
            "{}",
            c.events.timeline()
        );
    }
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

/// A slave catching up on a backlog is held in the middle of it; the master (hosting the
/// bus) is killed and restarted meanwhile. The slave reconnects, resumes after its last
/// applied event, and answers every notify exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_restarted_while_a_slave_is_held_mid_backlog() {
    let mut c = cluster("race-backlog", 0).await;
    let m = c.master_dir();
    for i in 0..20 {
        fs::write(m.join(format!("f{i:02}")), format!("{i}")).expect("write");
    }
    must(
        c.events
            .expect_count(
                Pattern::notify().by("master").put(),
                20,
                Duration::from_millis(200),
            )
            .await,
    );
    let mut runner = must(
        Runner::new(
            &c.addr,
            vec![Checkpoint::before_apply("slave", Op::Put, "f10")],
        )
        .await,
    );
    let idx = c.add_slave();
    must(c.spawn_slave(idx));
    must(runner.next().await);
    // Held at f10: exactly f00..f09 are consumed, and nothing more arrives.
    must(c.events.wait_quiet(Duration::from_millis(200)).await);
    assert_eq!(
        c.events.count(&Pattern::consume().by("slave")),
        10,
        "{}",
        c.events.timeline()
    );
    assert!(c.slaves[idx].dir.join("f09").exists() && !c.slaves[idx].dir.join("f10").exists());
    must(c.crash_master());
    drop(runner);
    must(c.start_master().await);
    must(c.events.expect(Pattern::ready().by("slave")).await);
    must(c.settle().await);
    must(
        c.events
            .expect_count(
                Pattern::consume().by("slave").put(),
                20,
                Duration::from_millis(100),
            )
            .await,
    );
    c.assert_checks(CheckOptions::default());
}

/// The master is held before its notify is appended: nothing about the file is in the log,
/// and the master publishes nothing else meanwhile (its changes queue up, in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_held_before_its_change_is_appended() {
    let mut c = cluster("race-append", 1).await;
    let mut runner = must(
        Runner::new(
            &c.addr,
            vec![Checkpoint::before_append("master", Op::Put, "first.txt")],
        )
        .await,
    );
    let m = c.master_dir();
    fs::write(m.join("first.txt"), "1").expect("write");
    must(runner.next().await);
    fs::write(m.join("second.txt"), "2").expect("write");
    must(
        c.events
            .expect_none(
                Pattern::notify().path_glob("*.txt"),
                Duration::from_millis(300),
            )
            .await,
    );
    must(runner.run_to_end().await);
    must(
        c.events
            .expect_seq(vec![
                Pattern::notify().by("master").put().path("first.txt"),
                Pattern::notify().by("master").put().path("second.txt"),
            ])
            .await,
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

/// Asking for an order the system cannot produce is a clear error after the runner's
/// timeout, naming what was reached and what is still armed; never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_order_is_a_clear_error() {
    let mut c = cluster("race-impossible", 1).await;
    // The slave applies a.txt before b.txt (log order); asking for b first cannot work,
    // because the slave is held at a.txt, waiting for its turn after b.
    let mut runner = must(
        Runner::new(
            &c.addr,
            vec![
                Checkpoint::before_apply("slave", Op::Put, "b.txt"),
                Checkpoint::before_apply("slave", Op::Put, "a.txt"),
            ],
        )
        .await,
    );
    runner.timeout = Duration::from_secs(1);
    let m = c.master_dir();
    fs::write(m.join("a.txt"), "a").expect("write");
    must(c.events.expect(Pattern::notify().path("a.txt")).await);
    fs::write(m.join("b.txt"), "b").expect("write");
    let err = runner.next().await.expect_err("b cannot come first");
    assert!(err.message.contains("cannot be reached"), "{err}");
    assert!(
        err.message.contains("before slave applies put a.txt"),
        "{err}"
    );
    must(runner.run_to_end().await);
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

/// A production bus (no `--test-checkpoints`) refuses gates: no peer can pause it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_bus_cannot_be_paused() {
    let c = crate::util::cluster("no-gates", 0).await;
    let err = Runner::new(
        &c.addr,
        vec![Checkpoint::before_apply("slave", Op::Put, "x")],
    )
    .await
    .err();
    let err = err.expect("a production bus refuses to arm gates");
    assert!(err.message.contains("checkpoints are disabled"), "{err}");
}
