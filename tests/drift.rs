//! A slave's directory edited behind its back: restored from the bus when the slave starts
//! (or every `--verify` interval), each repair a `drift` consume in the log; reported and
//! left alone with `--keep-local`. Debris a killed slave left anywhere is removed.

use std::fs;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::event::{Drift, Event};
use filesync::testkit::{Backend, Cluster, Pattern};

use crate::util::{cluster_on, must};

fn drift(kind: Drift) -> impl Fn(&Event) -> bool + Send + Sync + 'static {
    move |e: &Event| e.body.drift == Some(kind)
}

/// A master with a few files, mirrored by one slave.
async fn mirrored(backend: Backend, label: &str) -> Cluster {
    let mut c = cluster_on(backend, label, 1).await;
    let m = c.master_dir();
    fs::create_dir(m.join("d")).expect("mkdir");
    fs::write(m.join("a.txt"), "the master's a").expect("write");
    fs::write(m.join("b.txt"), "the master's b").expect("write");
    fs::write(m.join("d/c.txt"), "the master's c").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("a.txt"),
                Pattern::consume().by("slave").put().path("b.txt"),
                Pattern::consume().by("slave").put().path("d/c.txt"),
            ])
            .await,
    );
    must(c.settle().await);
    c
}

on_each_backend! {
async fn local_edits_are_restored_when_the_slave_starts(backend) {
    let mut c = mirrored(backend, "drift-restart").await;
    must(c.stop_slave(0));
    let s = c.slaves[0].dir.clone();
    fs::write(s.join("a.txt"), "edited on the slave").expect("edit");
    fs::remove_file(s.join("b.txt")).expect("rm");
    fs::write(s.join("extra.txt"), "made on the slave").expect("add");
    fs::create_dir(s.join("extra-dir")).expect("mkdir");
    fs::write(s.join("extra-dir/x"), "x").expect("add");
    // What a slave killed while replacing d/c.txt leaves beside it.
    fs::write(s.join("d/.filesync-tmp-99999-3"), "half a file").expect("debris");
    must(c.start_slave(0).await);
    must(
        c.events
            .expect_all(vec![
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("a.txt")
                    .with("modified", drift(Drift::Modified)),
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("b.txt")
                    .with("missing", drift(Drift::Missing)),
                Pattern::consume()
                    .by("slave")
                    .delete()
                    .path("extra.txt")
                    .with("unexpected", drift(Drift::Unexpected)),
                Pattern::consume()
                    .by("slave")
                    .delete()
                    .path("extra-dir")
                    .with("unexpected", drift(Drift::Unexpected)),
            ])
            .await,
    );
    assert_eq!(
        fs::read_to_string(s.join("a.txt")).expect("read"),
        "the master's a"
    );
    assert!(
        !s.join("d/.filesync-tmp-99999-3").exists(),
        "debris removed"
    );
    // Nothing else was touched: d/c.txt is as it was, and no repair names it.
    must(
        c.events
            .expect_none(
                Pattern::consume().by("slave").path("d/c.txt"),
                Duration::from_millis(100),
            )
            .await,
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());

    // A second start finds nothing to do.
    must(c.stop_slave(0));
    let before = c.events.count(&Pattern::consume().by("slave"));
    must(c.start_slave(0).await);
    must(c.settle().await);
    assert_eq!(c.events.count(&Pattern::consume().by("slave")), before);
}
}

on_each_backend! {
async fn with_keep_local_drift_is_reported_and_left_alone(backend) {
    let mut c = mirrored(backend, "drift-keep").await;
    must(c.stop_slave(0));
    let s = c.slaves[0].dir.clone();
    fs::write(s.join("a.txt"), "mine").expect("edit");
    c.slaves[0].args = vec!["--keep-local".into()];
    c.events.allow_errors();
    must(c.start_slave(0).await);
    let reported = must(
        c.events
            .expect(
                Pattern::error()
                    .by("slave")
                    .path("a.txt")
                    .with("modified", drift(Drift::Modified)),
            )
            .await,
    );
    assert!(
        reported
            .body
            .error
            .as_deref()
            .is_some_and(|e| e.contains("--keep-local")),
        "{reported:?}"
    );
    assert_eq!(fs::read_to_string(s.join("a.txt")).expect("read"), "mine");
}
}

on_each_backend! {
async fn a_running_slave_with_verify_restores_within_the_interval(backend) {
    let mut c = mirrored(backend, "drift-verify").await;
    must(c.stop_slave(0));
    c.slaves[0].args = vec!["--verify".into(), "300ms".into()];
    must(c.start_slave(0).await);
    let s = c.slaves[0].dir.clone();
    fs::remove_file(s.join("d/c.txt")).expect("rm");
    must(
        c.events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("d/c.txt")
                    .with("missing", drift(Drift::Missing)),
            )
            .await,
    );
    assert!(s.join("d/c.txt").exists());
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}
