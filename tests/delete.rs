//! Deletes of whole trees.

use std::fs;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::event::EntryKind;
use filesync::testkit::Pattern;

use crate::util::{cluster_on, must};

on_each_backend! {
/// `rm -rf` of a tree: the slave loses the whole tree, and no file inside it is ever
/// re-published. (Usually this is one delete of `tree`; when `rm` is slower than the settle
/// delay, deletes of parts of it may come first, which is just as correct.)
async fn deleting_a_tree_mirrors_its_removal(backend) {
    let mut c = cluster_on(backend, "rm-tree", 1).await;
    let m = c.master_dir();
    fs::create_dir_all(m.join("tree/sub")).expect("mkdir");
    for i in 0..50 {
        fs::write(m.join(format!("tree/sub/{i}")), "x").expect("write");
    }
    must(
        c.events
            .expect_count(
                Pattern::consume().by("slave").put().kind(EntryKind::File),
                50,
                Duration::from_millis(200),
            )
            .await,
    );
    fs::remove_dir_all(m.join("tree")).expect("rm -rf");
    must(
        c.events
            .expect(Pattern::consume().by("slave").delete().path("tree"))
            .await,
    );
    must(c.settle().await);
    let deletes = c.events.count(&Pattern::notify().delete());
    assert!((1..=52).contains(&deletes), "{}", c.events.timeline());
    let puts = c.events.count(&Pattern::notify().put());
    assert_eq!(puts, 52, "nothing re-published:\n{}", c.events.timeline());
    assert!(!c.slaves[0].dir.join("tree").exists());
    c.assert_checks(CheckOptions::default());
}
}
