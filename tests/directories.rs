//! Directories: new trees (the mkdir -p pitfall), trees moved in from and out to unwatched places.

use std::fs;

use filesync::check::CheckOptions;
use filesync::testkit::Pattern;

use crate::util::{cluster_on, must};

on_each_backend! {
/// `mkdir -p a/b/c && echo x > a/b/c/f`: the file lands before notify watches `a/b/c`; the
/// scan of each new directory must find it.
async fn a_file_in_a_brand_new_deep_directory_is_never_missed(backend) {
    let mut c = cluster_on(backend, "mkdirp", 1).await;
    for round in 0..20 {
        let dir = c.master_dir().join(format!("r{round}/b/c"));
        fs::create_dir_all(&dir).expect("mkdir -p");
        fs::write(dir.join("f"), "x").expect("write");
    }
    let expected: Vec<Pattern> = (0..20)
        .map(|round| {
            Pattern::consume()
                .by("slave")
                .put()
                .path(&format!("r{round}/b/c/f"))
        })
        .collect();
    must(c.events.expect_all(expected).await);
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
async fn moved_in_from_outside_is_scanned_and_moved_out_is_deleted(backend) {
    let mut c = cluster_on(backend, "move-in-out", 1).await;
    let m = c.master_dir();
    let outside = c.dir().join("outside");
    fs::create_dir_all(outside.join("incoming/deep")).expect("mkdir");
    fs::write(outside.join("incoming/deep/file"), "from outside").expect("write");
    fs::rename(outside.join("incoming"), m.join("incoming")).expect("move in");
    must(
        c.events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("incoming/deep/file"),
            )
            .await,
    );
    fs::rename(m.join("incoming"), outside.join("gone")).expect("move out");
    must(
        c.events
            .expect(Pattern::consume().by("slave").delete().path("incoming"))
            .await,
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
/// The scans above find what was there; what is written later must be reported too, so
/// every level of a new, moved-in or renamed tree must be watched (at its new path).
async fn new_moved_in_and_renamed_trees_are_watched_at_every_level(backend) {
    let mut c = cluster_on(backend, "watched-trees", 1).await;
    let m = c.master_dir();
    fs::create_dir_all(m.join("new/b/c")).expect("mkdir -p");
    let outside = c.dir().join("outside");
    fs::create_dir_all(outside.join("incoming/deep")).expect("mkdir");
    fs::rename(outside.join("incoming"), m.join("incoming")).expect("move in");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("new/b/c"),
                Pattern::consume().by("slave").put().path("incoming/deep"),
            ])
            .await,
    );
    fs::rename(m.join("new"), m.join("renamed")).expect("rename");
    must(
        c.events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .moved()
                    .from("new")
                    .path("renamed"),
            )
            .await,
    );
    for dir in ["renamed/b/c", "renamed/b", "incoming/deep", "incoming"] {
        fs::write(m.join(dir).join("later"), dir).expect("write later");
    }
    let later: Vec<Pattern> = ["renamed/b/c", "renamed/b", "incoming/deep", "incoming"]
        .iter()
        .map(|dir| {
            Pattern::consume()
                .by("slave")
                .put()
                .path(&format!("{dir}/later"))
        })
        .collect();
    must(c.events.expect_all(later).await);
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}
