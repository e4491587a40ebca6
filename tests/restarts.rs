//! Agents stopped and killed at any instant: nothing lost, nothing twice.

use std::fs;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::event::EntryKind;
use filesync::testkit::Pattern;

use crate::util::{cluster, must};

/// SIGKILL the slave in the middle of a burst, restart it: it resumes after its last applied
/// event, never answers a notify twice, and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_killed_mid_burst_converges_after_restart() {
    let mut c = cluster("slave-kill", 1).await;
    let m = c.master_dir();
    for i in 0..400 {
        fs::write(m.join(format!("f{i:03}")), format!("{i}")).expect("write");
        if i == 100 {
            // Somewhere in the middle of applying.
            must(
                c.events
                    .expect(
                        Pattern::consume()
                            .by("slave")
                            .put()
                            .path_glob("f0[0-9][0-9]"),
                    )
                    .await,
            );
            must(c.crash_slave(0));
        }
    }
    must(
        c.events
            .expect_count(
                Pattern::notify().by("master").put().kind(EntryKind::File),
                400,
                Duration::from_millis(100),
            )
            .await,
    );
    must(c.start_slave(0).await);
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

/// SIGKILL the master mid-burst: after restart it republishes what it had not published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_burst_converges_after_restart() {
    let mut c = cluster("master-kill", 1).await;
    let m = c.master_dir();
    for i in 0..300 {
        fs::write(m.join(format!("f{i:03}")), format!("{i}")).expect("write");
    }
    must(
        c.events
            .expect(Pattern::notify().by("master").put().path_glob("f*"))
            .await,
    );
    must(c.crash_master());
    must(c.start_master().await);
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

/// The master stopped, the directory edited offline, the master restarted: only the offline
/// changes are published, and the slave (left running) reconnects and applies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_master_publishes_only_what_changed_while_it_was_down() {
    let mut c = cluster("offline", 1).await;
    let m = c.master_dir();
    for i in 0..20 {
        fs::write(m.join(format!("same{i}")), "unchanged").expect("write");
    }
    fs::write(m.join("edited"), "before").expect("write");
    fs::write(m.join("deleted"), "doomed").expect("write");
    must(
        c.events
            .expect_count(
                Pattern::consume().by("slave").put(),
                22,
                Duration::from_millis(200),
            )
            .await,
    );
    must(c.stop_master());
    fs::write(m.join("edited"), "after").expect("edit");
    fs::remove_file(m.join("deleted")).expect("rm");
    fs::write(m.join("created"), "new").expect("create");
    let before = c.events.count(&Pattern::notify());
    must(c.start_master().await);
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("edited"),
                Pattern::consume().by("slave").delete().path("deleted"),
                Pattern::consume().by("slave").put().path("created"),
            ])
            .await,
    );
    must(c.settle().await);
    assert_eq!(
        c.events.count(&Pattern::notify()) - before,
        3,
        "only the offline changes:\n{}",
        c.events.timeline()
    );
    c.assert_checks(CheckOptions::default());
}
