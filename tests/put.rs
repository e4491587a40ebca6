//! Puts of files: the seed's test, modifications, empty files, deletes of single entries.

use std::fs;

use filesync::check::CheckOptions;
use filesync::event::EntryKind;
use filesync::testkit::{Backend, Pattern};

use crate::util::{cluster_on, must};

on_each_backend! {
/// The seed's test: create foo.txt in the master directory; pass only when a put notify by
/// the master and a put consume by the slave answering it both arrive, failing when no new
/// event arrives for 3 seconds.
async fn creating_foo_txt_gives_a_put_notify_then_a_put_consume(backend) {
    let mut c = cluster_on(backend, "seed", 1).await;
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
}

on_each_backend! {
async fn modify_empty_file_empty_dir_and_delete(backend) {
    let mut c = cluster_on(backend, "basics", 1).await;
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
}

on_each_backend! {
/// A file of several pieces (uploaded and fetched with pieces in flight) and a file of
/// exactly one piece arrive byte for byte: pieces are neither reordered nor shifted.
async fn files_of_many_pieces_arrive_byte_for_byte(backend) {
    let mut c = cluster_on(backend, "pieces", 1).await;
    let piece = filesync_master::hash::CHUNK_SIZE;
    // Every 4-byte word differs, so a piece out of place changes the hash.
    let many: Vec<u8> = (0..(5 * piece + 123) / 4)
        .flat_map(|i| (i as u32).to_le_bytes())
        .collect();
    let one: Vec<u8> = many[..piece].to_vec();
    let staged = c.dir().join("staged");
    fs::create_dir_all(&staged).expect("mkdir");
    fs::write(staged.join("many.bin"), &many).expect("write");
    fs::write(staged.join("one.bin"), &one).expect("write");
    for name in ["many.bin", "one.bin"] {
        fs::rename(staged.join(name), c.master_dir().join(name)).expect("move in");
    }
    for name in ["many.bin", "one.bin"] {
        let notify = must(
            c.events
                .expect(Pattern::notify().by("master").put().path(name))
                .await,
        );
        let consume = must(
            c.events
                .expect(
                    Pattern::consume()
                        .by("slave")
                        .put()
                        .path(name)
                        .cause(notify.seq),
                )
                .await,
        );
        assert_eq!(consume.body.sha256, notify.body.sha256, "{name}");
    }
    assert_eq!(
        fs::read(c.slaves[0].dir.join("many.bin")).expect("mirrored"),
        many
    );
    assert_eq!(
        fs::read(c.slaves[0].dir.join("one.bin")).expect("mirrored"),
        one
    );

    // The same size with new content is hashed before anything is sent, then uploaded from
    // the file; a copy of content the bus holds is streamed and stored once. Both arrive.
    let mut rewritten = many.clone();
    rewritten[piece + 7] ^= 0xff;
    fs::write(staged.join("many.bin"), &rewritten).expect("write");
    fs::write(staged.join("copy.bin"), &many).expect("write");
    for name in ["many.bin", "copy.bin"] {
        fs::rename(staged.join(name), c.master_dir().join(name)).expect("move in");
    }
    for (name, content) in [("many.bin", &rewritten), ("copy.bin", &many)] {
        let sha256 = filesync_master::hash::sha256_hex(content);
        must(
            c.events
                .expect_seq(vec![
                    Pattern::notify().put().path(name).sha256(&sha256),
                    Pattern::consume()
                        .by("slave")
                        .put()
                        .path(name)
                        .sha256(&sha256),
                ])
                .await,
        );
        assert_eq!(
            &fs::read(c.slaves[0].dir.join(name)).expect("mirrored"),
            content
        );
    }
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
/// A large file written on for longer than the master waits (1 s) is read while it still
/// changes: the chunks sent during that read are for nothing (the notify never comes; the
/// chunks stay in the store until it collects unreferenced content), and the file is
/// published once it holds still. The log ends with its final content on both sides, and
/// nothing unfinished is left in the bus's upload area or the slave's directory.
async fn a_large_file_changing_while_streamed_is_abandoned_then_published_whole(backend) {
    use std::io::Write;
    let mut c = cluster_on(backend, "growing", 1).await;
    let path = c.master_dir().join("growing.bin");
    let written = std::thread::spawn(move || {
        let mut file = fs::File::create(&path).expect("create");
        let mut all = Vec::new();
        let started = std::time::Instant::now();
        let mut n = 0u32;
        // About 64 MiB/s for 1.5 s: every read of the growing file sees it change.
        while started.elapsed() < std::time::Duration::from_millis(1500) {
            let block: Vec<u8> = (0..16 * 1024).flat_map(|_| n.to_le_bytes()).collect();
            file.write_all(&block).expect("write");
            all.extend_from_slice(&block);
            n += 1;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        all
    });
    let content = tokio::task::spawn_blocking(move || written.join().expect("writer"))
        .await
        .expect("join");
    let sha256 = filesync_master::hash::sha256_hex(&content);
    must(
        c.events
            .expect_seq(vec![
                Pattern::notify().put().path("growing.bin").sha256(&sha256),
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("growing.bin")
                    .sha256(&sha256),
            ])
            .await,
    );
    must(c.settle().await);
    if backend == Backend::Embedded {
        let leftovers: Vec<_> = fs::read_dir(c.master_state().join("blobs/tmp"))
            .expect("the bus's upload area")
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert!(
            leftovers.is_empty(),
            "abandoned uploads left: {leftovers:?}"
        );
    }
    // The slave, idle, followed the uploads as they arrived: what it received of the
    // abandoned one is gone too.
    let in_slave: Vec<_> = fs::read_dir(&c.slaves[0].dir)
        .expect("slave dir")
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert_eq!(
        in_slave,
        ["growing.bin"],
        "only the file itself in the slave"
    );
    assert_eq!(
        fs::read(c.slaves[0].dir.join("growing.bin")).expect("mirrored"),
        content
    );
    c.assert_checks(CheckOptions::default());
}
}
