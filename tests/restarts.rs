//! Clean restarts (SIGTERM) of each agent: nothing lost, nothing twice.

use std::fs;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::testkit::Pattern;

use crate::util::{cluster_on, must};

on_each_backend! {
/// The master stopped, the directory edited offline, the master restarted: only the offline
/// changes are published, and the slave (left running) reconnects and applies them.
async fn a_restarted_master_publishes_only_what_changed_while_it_was_down(backend) {
    let mut c = cluster_on(backend, "offline", 1).await;
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
}

on_each_backend! {
/// The slave stopped cleanly (SIGTERM: it appends `leave`), changes made meanwhile, the
/// slave started again: it resumes after its last applied event and applies only the rest.
async fn a_stopped_slave_resumes_after_its_last_applied_event(backend) {
    let mut c = cluster_on(backend, "slave-restart", 1).await;
    let m = c.master_dir();
    fs::write(m.join("before.txt"), "1").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("before.txt"))
            .await,
    );
    must(c.stop_slave(0));
    must(c.events.expect(Pattern::leave().by("slave")).await);
    fs::write(m.join("while-down.txt"), "2").expect("write");
    fs::remove_file(m.join("before.txt")).expect("rm");
    must(
        c.events
            .expect(Pattern::notify().by("master").delete().path("before.txt"))
            .await,
    );
    must(c.start_slave(0).await);
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("while-down.txt"),
                Pattern::consume().by("slave").delete().path("before.txt"),
            ])
            .await,
    );
    must(c.settle().await);
    let puts_of_before = c
        .events
        .count(&Pattern::consume().by("slave").put().path("before.txt"));
    assert_eq!(
        puts_of_before,
        1,
        "nothing applied twice:\n{}",
        c.events.timeline()
    );
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
/// Directories and a file renamed while the master was down: published as moves (matched
/// by content), not as a delete and a put of every file, and the slave follows.
async fn renames_made_while_the_master_was_down_are_published_as_moves(backend) {
    let mut c = cluster_on(backend, "offline-renames", 1).await;
    let m = c.master_dir();
    for d in ["photos", "letters"] {
        fs::create_dir(m.join(d)).expect("mkdir");
        for i in 0..65 {
            fs::write(m.join(format!("{d}/{i}.txt")), format!("{d} {i}")).expect("write");
        }
    }
    fs::write(m.join("todo.txt"), "the list").expect("write");
    must(
        c.events
            .expect_count(
                Pattern::consume().by("slave").put(),
                133,
                Duration::from_millis(300),
            )
            .await,
    );
    must(c.settle().await);
    must(c.stop_master());
    fs::rename(m.join("photos"), m.join("pictures")).expect("mv");
    fs::rename(m.join("letters"), m.join("mail")).expect("mv");
    fs::rename(m.join("todo.txt"), m.join("todo.md")).expect("mv");
    let before = c.events.count(&Pattern::notify());
    must(c.start_master().await);
    must(
        c.events
            .expect_all(vec![
                Pattern::consume()
                    .by("slave")
                    .moved()
                    .from("photos")
                    .path("pictures"),
                Pattern::consume()
                    .by("slave")
                    .moved()
                    .from("letters")
                    .path("mail"),
                Pattern::consume()
                    .by("slave")
                    .moved()
                    .from("todo.txt")
                    .path("todo.md"),
            ])
            .await,
    );
    must(c.settle().await);
    assert_eq!(
        c.events.count(&Pattern::notify()) - before,
        3,
        "three moves, nothing else:\n{}",
        c.events.timeline()
    );
    c.assert_checks(CheckOptions::default());
}
}
