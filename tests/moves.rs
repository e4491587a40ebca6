//! Renames: one `move` event for a file or a whole directory, never a re-publication.

use std::fs;
use std::time::{Duration, Instant};

use filesync::check::CheckOptions;
use filesync::event::EntryKind;
use filesync::testkit::Pattern;

use crate::util::{builder_on, cluster_on, must};

on_each_backend! {
async fn renaming_a_file_is_one_move(backend) {
    let mut c = cluster_on(backend, "move-file", 1).await;
    let m = c.master_dir();
    fs::write(m.join("old.txt"), "content").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("old.txt"))
            .await,
    );
    fs::rename(m.join("old.txt"), m.join("new.txt")).expect("rename");
    must(
        c.events
            .expect_seq(vec![
                Pattern::notify()
                    .by("master")
                    .moved()
                    .from("old.txt")
                    .path("new.txt")
                    .kind(EntryKind::File),
                Pattern::consume()
                    .by("slave")
                    .moved()
                    .from("old.txt")
                    .path("new.txt"),
            ])
            .await,
    );
    must(
        c.events
            .expect_none(
                Pattern::notify().put().path("new.txt"),
                Duration::from_millis(300),
            )
            .await,
    );
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
/// A directory of 2,000 files renamed: exactly one notify, no put for anything inside it,
/// and the slave applies it as one rename.
async fn renaming_a_full_directory_is_one_move_and_copies_nothing(backend) {
    let mut c = must(
        builder_on(backend, "move-dir")
            .prepare(|m| {
                fs::create_dir(m.join("project")).expect("mkdir");
                // Siblings that sort between `project` and `project/...` in byte order.
                fs::write(m.join("project.txt"), "sibling").expect("write");
                fs::write(m.join("project-notes"), "sibling").expect("write");
                for i in 0..2000 {
                    fs::write(m.join(format!("project/f{i}")), format!("{i}")).expect("write");
                }
            })
            .start()
            .await,
    );
    let m = c.master_dir();
    let started = Instant::now();
    fs::rename(m.join("project"), m.join("renamed")).expect("rename");
    let pair = must(
        c.events
            .expect_seq(vec![
                Pattern::notify()
                    .by("master")
                    .moved()
                    .from("project")
                    .path("renamed")
                    .kind(EntryKind::Dir),
                Pattern::consume().by("slave").moved().path("renamed"),
            ])
            .await,
    );
    let elapsed = started.elapsed();
    must(
        c.events
            .expect_none(
                Pattern::notify().path_glob("renamed/**"),
                Duration::from_millis(500),
            )
            .await,
    );
    assert_eq!(
        c.events.count(&Pattern::notify().moved()),
        1,
        "{}",
        c.events.timeline()
    );
    assert!(c.slaves[0].dir.join("renamed/f1999").is_file());
    eprintln!(
        "2,000-file directory rename mirrored in {elapsed:?} (consume #{})",
        pair[1].seq
    );
    c.assert_checks(CheckOptions::default());
}
}
