//! SIGKILL of each agent at an arbitrary instant: it converges once restarted.

use std::fs;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::event::EntryKind;
use filesync::testkit::Pattern;

use crate::util::{cluster_on, must};

on_each_backend! {
/// SIGKILL the slave in the middle of a burst, restart it: it resumes after its last applied
/// event, never answers a notify twice, and converges.
async fn a_slave_killed_mid_burst_converges_after_restart(backend) {
    let mut c = cluster_on(backend, "slave-kill", 1).await;
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
    // What it had applied before the kill is its own work, not drift to repair.
    must(
        c.events
            .expect_none(
                Pattern::consume().with("a drift repair", |e| e.body.drift.is_some()),
                Duration::from_millis(50),
            )
            .await,
    );
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
/// SIGKILL the master mid-burst: after restart it republishes what it had not published.
async fn a_master_killed_mid_burst_converges_after_restart(backend) {
    let mut c = cluster_on(backend, "master-kill", 1).await;
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
}
