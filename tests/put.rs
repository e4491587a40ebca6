//! Puts of files: the seed's test, modifications, empty files, deletes of single entries.

use std::fs;

use filesync::check::CheckOptions;
use filesync::event::EntryKind;
use filesync::testkit::Pattern;

use crate::util::{cluster, must};

/// The seed's test: create foo.txt in the master directory; pass only when a put notify by
/// the master and a put consume by the slave answering it both arrive, failing when no new
/// event arrives for 3 seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_foo_txt_gives_a_put_notify_then_a_put_consume() {
    let mut c = cluster("seed", 1).await;
    fs::write(c.master_dir().join("foo.txt"), "foo\n").expect("write");
    let notify = must(
        c.events
            .expect(Pattern::notify().by("master").put().path("foo.txt"))
            .await,
    );
    let consume = must(
        c.events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("foo.txt")
                    .cause(notify.seq),
            )
            .await,
    );
    assert_eq!(
        consume.body.sha256, notify.body.sha256,
        "the slave wrote what the master published"
    );
    assert_eq!(
        fs::read(c.slaves[0].dir.join("foo.txt")).expect("mirrored"),
        b"foo\n"
    );
    c.assert_checks(CheckOptions::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_empty_file_empty_dir_and_delete() {
    let mut c = cluster("basics", 1).await;
    let m = c.master_dir();
    fs::write(m.join("empty"), "").expect("write");
    fs::create_dir(m.join("hollow")).expect("mkdir");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("empty")
                    .kind(EntryKind::File),
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("hollow")
                    .kind(EntryKind::Dir),
            ])
            .await,
    );
    fs::write(m.join("empty"), "not any more").expect("rewrite");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("empty").with(
                "sha256 of the new content",
                |e| {
                    e.body.sha256.as_deref()
                        == Some(&filesync_master::hash::sha256_hex(b"not any more")[..])
                },
            ))
            .await,
    );
    fs::remove_file(m.join("empty")).expect("rm");
    fs::remove_dir(m.join("hollow")).expect("rmdir");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").delete().path("empty"),
                Pattern::consume().by("slave").delete().path("hollow"),
            ])
            .await,
    );
    assert!(!c.slaves[0].dir.join("empty").exists());
    c.assert_checks(CheckOptions::default());
}
