//! Editors' saves: temporary file, backup, rename over the target.

use std::fs;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::testkit::Pattern;

use crate::util::{cluster_on, must};

on_each_backend! {
/// Editors save by writing a temporary file and renaming it over the target (vim also makes
/// a backup). The slave must end with the new content, and nothing may fail.
async fn an_editor_save_mirrors_the_new_content(backend) {
    let mut c = cluster_on(backend, "editor", 1).await;
    let m = c.master_dir();
    fs::write(m.join("doc.txt"), "version 1\n").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("doc.txt"))
            .await,
    );
    fs::write(m.join(".doc.txt.swp"), "version 2\n").expect("write temp");
    fs::rename(m.join("doc.txt"), m.join("doc.txt~")).expect("backup");
    fs::rename(m.join(".doc.txt.swp"), m.join("doc.txt")).expect("rename over");
    fs::remove_file(m.join("doc.txt~")).expect("drop backup");
    let new_sha = filesync_master::hash::sha256_hex(b"version 2\n");
    must(
        c.events
            .expect(Pattern::consume().by("slave").path("doc.txt").with(
                "the new content",
                move |e| {
                    e.body.sha256.as_deref() == Some(&new_sha[..])
                        || e.body.op == Some(filesync::event::Op::Move)
                },
            ))
            .await,
    );
    must(
        c.events
            .expect_none(Pattern::error(), Duration::from_millis(500))
            .await,
    );
    // Wait for the quiet point, then prove the end state from the log and the directories.
    must(c.settle().await);
    assert_eq!(
        fs::read(c.slaves[0].dir.join("doc.txt")).expect("mirrored"),
        b"version 2\n"
    );
    c.assert_checks(CheckOptions::default());
}
}
