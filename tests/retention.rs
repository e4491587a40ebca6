//! Retention: a bus with a short window (`--keep-history 0`) and small segments drops old
//! segments once a checkpoint covers them. A slave killed meanwhile, or new, catches up from
//! the checkpoint (its answers carry `resync`, a `ready` with `resync` ends it) and never
//! answers a notify it did not see; the master restarts on the truncated log; `check`
//! validates the log together with its checkpoint.

use std::fs;
use std::time::{Duration, Instant};

use filesync::bus::log::read_log_segments;
use filesync::check::CheckOptions;
use filesync::event::Event;
use filesync::testkit::{Cluster, Pattern};

use crate::util::{bin, must};

/// A master that keeps no history and cuts its log every 4 KiB (about 15 events).
async fn short_window(label: &str, n_slaves: usize) -> Cluster {
    let builder = Cluster::builder(&bin(), label)
        .master_args(&[
            "--keep-history",
            "0",
            "--segment-size",
            "4096",
            "--gc-interval",
            "500ms",
        ])
        .slaves(n_slaves);
    must(builder.start().await)
}

fn resync(e: &Event) -> bool {
    e.body.resync.is_some()
}

/// Writes `n` files named `prefix-NN` and waits until the log starts after seq 1.
async fn churn_until_truncated(c: &mut Cluster, prefix: &str, n: usize) -> u64 {
    let m = c.master_dir();
    for i in 0..n {
        fs::write(m.join(format!("{prefix}-{i:02}")), format!("{prefix} {i}")).expect("write");
    }
    let last = format!("{prefix}-{:02}", n - 1);
    must(c.events.expect(Pattern::notify().put().path(&last)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let start = read_log_segments(&c.log_path()).expect("read log").start;
        if start > 1 {
            return start;
        }
        assert!(
            Instant::now() < deadline,
            "the log was never truncated\n{}",
            c.events.timeline()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_away_longer_than_the_window_and_a_new_one_resync_from_the_checkpoint() {
    let mut c = short_window("retention-resync", 1).await;
    let m = c.master_dir();
    fs::write(m.join("kept.txt"), "old").expect("write");
    fs::write(m.join("gone.txt"), "to be deleted").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").path("kept.txt"),
                Pattern::consume().by("slave").path("gone.txt"),
            ])
            .await,
    );
    must(c.settle().await);
    // Killed, not stopped: it says nothing on the way out.
    must(c.crash_slave(0));
    fs::write(m.join("kept.txt"), "new").expect("write");
    fs::remove_file(m.join("gone.txt")).expect("rm");
    let start = churn_until_truncated(&mut c, "away", 60).await;
    // Nothing the slave answered covered the removed events: it resyncs.
    must(c.start_slave(0).await);
    let new = c.add_slave();
    must(c.start_slave(new).await);
    let newcomer = c.slaves[new].name.clone();
    for name in ["slave", newcomer.as_str()] {
        must(
            c.events
                .expect_all(vec![
                    Pattern::consume()
                        .by(name)
                        .put()
                        .path("kept.txt")
                        .with("resync", resync),
                    Pattern::consume()
                        .by(name)
                        .put()
                        .path("away-00")
                        .with("resync", resync),
                ])
                .await,
        );
        // (Its first `ready`, which `start_slave` waited for, ends the resync.)
        let resynced = Pattern::ready().by(name).with("resync", resync);
        assert_eq!(c.events.count(&resynced), 1, "{}", c.events.timeline());
    }
    must(
        c.events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .delete()
                    .path("gone.txt")
                    .with("resync", resync),
            )
            .await,
    );
    must(c.settle().await);
    // The returning slave answered no notify the log no longer holds.
    let stale = c.events.seen().iter().find(|e| {
        e.agent == "slave"
            && e.body.resync.is_none()
            && e.body.cause.is_some_and(|cause| cause < start)
            && e.seq >= start
    });
    assert!(stale.is_none(), "{stale:?}\n{}", c.events.timeline());
    assert_eq!(
        fs::read_to_string(c.slaves[0].dir.join("kept.txt")).expect("read"),
        "new"
    );
    c.assert_checks(CheckOptions::default());
    // After the resync, a change is mirrored as usual.
    fs::write(m.join("after.txt"), "after").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("after.txt"),
                Pattern::consume().by(&newcomer).put().path("after.txt"),
            ])
            .await,
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_slave_restart_on_a_truncated_log() {
    let mut c = short_window("retention-restart", 1).await;
    churn_until_truncated(&mut c, "first", 60).await;
    must(c.settle().await);
    // A connected slave is waited for: it answered everything, so it needs no resync.
    must(
        c.events
            .expect_none(
                Pattern::any().by("slave").with("resync", resync),
                Duration::from_millis(100),
            )
            .await,
    );
    must(c.stop_master());
    must(c.stop_slave(0));
    let notifies = c.events.count(&Pattern::notify());
    must(c.start_master().await);
    // The master replays the checkpoint and the tail: its directory is as published, so
    // it has nothing to say.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        c.events.count(&Pattern::notify()),
        notifies,
        "{}",
        c.events.timeline()
    );
    must(c.start_slave(0).await);
    fs::write(c.master_dir().join("later.txt"), "later").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("later.txt"))
            .await,
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

/// A slave whose position file lags behind what it answered (killed right after applying,
/// before it recorded how far it got) comes back to a log that starts past that position:
/// it resyncs from the checkpoint but leaves alone the paths of the notifies after it that
/// it answered already, since it will not answer them again. Undoing them would leave the
/// log saying the slave deleted a file the master still has (this failed CI once, when the
/// bus died mid-truncation: `gc::a_bus_killed_while_checkpointing_or_truncating_restarts_whole`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_whose_position_lagged_keeps_what_it_answered_after_the_checkpoint() {
    let mut c = short_window("retention-lagging", 1).await;
    churn_until_truncated(&mut c, "first", 60).await;
    must(c.settle().await);
    fs::write(c.master_dir().join("late.txt"), "after the checkpoint").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("late.txt"))
            .await,
    );
    must(c.settle().await);
    must(c.stop_slave(0));
    // As if it had been killed before it recorded any of that.
    fs::write(c.slaves[0].state.join("position"), format!("{:020}\n", 0)).expect("lag");
    must(c.start_slave(0).await);
    must(c.settle().await);
    let undone = Pattern::consume().by("slave").delete().path("late.txt");
    assert_eq!(c.events.count(&undone), 0, "{}", c.events.timeline());
    assert!(
        c.events
            .count(&Pattern::ready().by("slave").with("resync", resync))
            > 0,
        "the slave resynced from the checkpoint\n{}",
        c.events.timeline()
    );
    assert_eq!(
        fs::read_to_string(c.slaves[0].dir.join("late.txt")).expect("read"),
        "after the checkpoint"
    );
    c.assert_checks(CheckOptions::default());
}
