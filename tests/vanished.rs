//! The mass-deletion guard: a master whose directory vanishes, or that starts on an empty
//! directory the log says was full (a missing mount), publishes no deletes and says why;
//! once the directory is back it carries on.

use std::fs;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::testkit::{Backend, Cluster, Pattern};

use crate::util::{cluster_on, must};

async fn mirrored(backend: Backend, label: &str) -> Cluster {
    let mut c = cluster_on(backend, label, 1).await;
    let m = c.master_dir();
    fs::create_dir(m.join("D4")).expect("mkdir");
    fs::write(m.join("D4/x"), "x").expect("write");
    fs::write(m.join("big2.bin"), vec![2u8; 64 << 10]).expect("write");
    fs::write(m.join(".filesyncignore"), "*.tmp\n").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("D4/x"),
                Pattern::consume().by("slave").put().path("big2.bin"),
                Pattern::consume().by("slave").put().path(".filesyncignore"),
            ])
            .await,
    );
    must(c.settle().await);
    c
}

on_each_backend! {
async fn a_vanished_master_directory_publishes_no_deletes(backend) {
    let mut c = mirrored(backend, "vanished").await;
    let m = c.master_dir();
    let away = c.dir().join("master-away");
    fs::rename(&m, &away).expect("the directory goes away");
    let said = must(c.master_says("is gone", Duration::from_secs(5)));
    assert!(said.contains("not publishing"), "{said}");
    must(
        c.events
            .expect_none(Pattern::notify().delete(), Duration::from_millis(800))
            .await,
    );
    fs::rename(&away, &m).expect("and comes back");
    must(c.master_says("publishing again", Duration::from_secs(5)));
    fs::write(m.join("after.txt"), "after").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("after.txt"))
            .await,
    );
    assert!(c.slaves[0].dir.join("D4/x").exists());
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
async fn a_master_started_on_an_empty_mount_point_waits_for_its_files(backend) {
    let mut c = mirrored(backend, "empty-mount").await;
    must(c.stop_master());
    let m = c.master_dir();
    let real = c.dir().join("master-real");
    fs::rename(&m, &real).expect("the file system is not mounted");
    fs::create_dir(&m).expect("only its empty mount point is there");
    must(c.spawn_master().await);
    let said = must(c.master_says("is empty, but the log says", Duration::from_secs(10)));
    assert!(said.contains("--allow-empty"), "{said}");
    must(
        c.events
            .expect_none(Pattern::notify().delete(), Duration::from_millis(800))
            .await,
    );
    fs::remove_dir(&m).expect("rmdir");
    fs::rename(&real, &m).expect("mounted at last");
    must(c.events.expect(Pattern::ready().by("master")).await);
    fs::write(m.join("after.txt"), "after").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("after.txt"))
            .await,
    );
    assert_eq!(c.events.count(&Pattern::notify().delete()), 0);
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}
