//! Puts, deletes, directories, symlinks, modes, odd names, editors' saves, bursts, ignores.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

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
async fn symlinks_modes_and_non_utf8_names_are_mirrored() {
    let mut c = cluster("meta", 1).await;
    let m = c.master_dir();
    fs::write(m.join("run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    fs::set_permissions(m.join("run.sh"), fs::Permissions::from_mode(0o750)).expect("chmod");
    std::os::unix::fs::symlink("run.sh", m.join("link")).expect("symlink");
    std::os::unix::fs::symlink("/etc/outside-the-root", m.join("dangling")).expect("symlink");
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(m.join(odd), "latin-1 name").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("run.sh")
                    .with("mode 0750", |e| e.body.mode == Some(0o750)),
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("link")
                    .kind(EntryKind::Symlink),
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("dangling")
                    .kind(EntryKind::Symlink),
                Pattern::consume()
                    .by("slave")
                    .put()
                    .with("exact bytes of caf\\xe9.txt", |e| {
                        e.body.path_b64.as_deref() == Some("Y2Fm6S50eHQ=")
                    }),
            ])
            .await,
    );
    let s = &c.slaves[0].dir;
    let mode = fs::metadata(s.join("run.sh"))
        .expect("exists")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o750);
    assert_eq!(
        fs::read_link(s.join("link")).expect("link").as_os_str(),
        "run.sh"
    );
    assert_eq!(
        fs::read_link(s.join("dangling")).expect("link").as_os_str(),
        "/etc/outside-the-root"
    );
    assert_eq!(fs::read(s.join(odd)).expect("odd name"), b"latin-1 name");
    // A chmod alone is a put with the new mode.
    fs::set_permissions(m.join("run.sh"), fs::Permissions::from_mode(0o700)).expect("chmod");
    must(
        c.events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("run.sh")
                    .with("mode 0700", |e| e.body.mode == Some(0o700)),
            )
            .await,
    );
    c.assert_checks(CheckOptions::default());
}

/// Editors save by writing a temporary file and renaming it over the target (vim also makes
/// a backup). The slave must end with the new content, and nothing may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_save_mirrors_the_new_content() {
    let mut c = cluster("editor", 1).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_files_is_mirrored_exactly_once_each() {
    let mut c = cluster("burst", 1).await;
    let m = c.master_dir();
    for dir in 0..10 {
        fs::create_dir(m.join(format!("d{dir}"))).expect("mkdir");
        for file in 0..30 {
            fs::write(m.join(format!("d{dir}/f{file}")), format!("{dir}/{file}")).expect("write");
        }
    }
    let puts = Pattern::consume().by("slave").put().kind(EntryKind::File);
    must(
        c.events
            .expect_count(puts, 300, Duration::from_millis(500))
            .await,
    );
    c.assert_checks(CheckOptions::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesyncignore_rules_keep_paths_out_of_the_log() {
    let mut c = must(
        filesync::testkit::Cluster::start_with(&crate::util::bin(), "ignore", 1, |m| {
            fs::write(m.join(".filesyncignore"), "*.log\nbuild/\n").expect("write rules");
        })
        .await,
    );
    let m = c.master_dir();
    fs::write(m.join("app.log"), "noise").expect("write");
    fs::create_dir_all(m.join("build/obj")).expect("mkdir");
    fs::write(m.join("build/obj/x.o"), "bin").expect("write");
    fs::write(m.join("keep.txt"), "signal").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("keep.txt"))
            .await,
    );
    must(
        c.events
            .expect_none(
                Pattern::notify().path_glob("{*.log,build,build/**}"),
                Duration::from_millis(500),
            )
            .await,
    );
    c.assert_checks(CheckOptions::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slaves_and_a_late_joiner_all_converge() {
    let mut c = cluster("multi", 2).await;
    let m = c.master_dir();
    fs::create_dir(m.join("shared")).expect("mkdir");
    fs::write(m.join("shared/a"), "a").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("shared/a"),
                Pattern::consume().by("slave-2").put().path("shared/a"),
            ])
            .await,
    );
    let late = c.add_slave();
    must(c.start_slave(late).await);
    fs::write(m.join("shared/b"), "b").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("shared/b"),
                Pattern::consume().by("slave-2").put().path("shared/b"),
                Pattern::consume().by("slave-3").put().path("shared/b"),
            ])
            .await,
    );
    assert_eq!(
        fs::read(c.slaves[late].dir.join("shared/a")).expect("caught up"),
        b"a"
    );
    c.assert_checks(CheckOptions::default());
}
