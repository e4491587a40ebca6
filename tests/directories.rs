//! Directories: new trees (the mkdir -p pitfall), trees moved in from and out to unwatched places.

use std::fs;

use filesync::check::CheckOptions;
use filesync::testkit::Pattern;

use crate::util::{cluster, must};

/// `mkdir -p a/b/c && echo x > a/b/c/f`: the file lands before notify watches `a/b/c`; the
/// scan of each new directory must find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_a_brand_new_deep_directory_is_never_missed() {
    let mut c = cluster("mkdirp", 1).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_in_from_outside_is_scanned_and_moved_out_is_deleted() {
    let mut c = cluster("move-in-out", 1).await;
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
