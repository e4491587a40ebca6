//! Content in chunks: a change costs what changed. Each test edits a large file on the
//! master and asserts from the log alone what moved: `uploaded` on the notify (master to
//! bus), `fetched` and `reused` on the consume (bus to slave, and what the slave took from
//! its own copy). The checker then proves `fetched + reused = size` and the mirror.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::event::Event;
use filesync::testkit::{Backend, Cluster, Pattern};

use crate::util::{cluster, cluster_on, jetstream, must};
use filesync::testkit::noise;

const MIB: u64 = 1 << 20;

/// Writes `data` beside the master directory and renames it in, so the master sees the
/// whole new version at once (a save through a temporary name inside the directory would
/// be published, and its chunks uploaded, under that name first).
fn save(dir: &Path, name: &str, data: &[u8]) {
    let temp = dir.with_file_name(format!("{name}.saving"));
    fs::write(&temp, data).expect("write");
    fs::rename(&temp, dir.join(name)).expect("rename");
}

/// Waits for the notify and the consume of `name` holding `data`; returns both.
async fn mirrored(c: &mut Cluster, name: &str, data: &[u8]) -> (Event, Event) {
    let sha256 = filesync_master::hash::sha256_hex(data);
    let notify = must(
        c.events
            .expect(Pattern::notify().put().path(name).sha256(&sha256))
            .await,
    );
    let consume = must(
        c.events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path(name)
                    .sha256(&sha256)
                    .cause(notify.seq),
            )
            .await,
    );
    (notify, consume)
}

fn uploaded(notify: &Event) -> u64 {
    notify
        .body
        .uploaded
        .expect("a notify of a file put says what it uploaded")
}

fn fetched(consume: &Event) -> u64 {
    consume
        .body
        .fetched
        .expect("a consume of a file put says what it fetched")
}

on_each_backend! {
async fn an_overwrite_in_the_middle_moves_about_what_changed(backend) {
    let mut c = cluster_on(backend, "chunks-overwrite", 1).await;
    let mut data = noise(64 << 20, 1);
    save(&c.master_dir(), "big.bin", &data);
    let (notify, consume) = mirrored(&mut c, "big.bin", &data).await;
    assert!(notify.body.manifest.is_some(), "{notify:?}");
    assert!(uploaded(&notify) >= 64 * MIB, "all of it was new");
    assert_eq!(fetched(&consume), 64 * MIB, "all of it was fetched");
    // 1 MiB overwritten in place in the middle.
    let middle = (32 << 20) + 4321;
    data[middle..middle + (1 << 20)].copy_from_slice(&noise(1 << 20, 2));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(c.master_dir().join("big.bin"))
        .expect("open");
    file.seek(SeekFrom::Start(middle as u64)).expect("seek");
    file.write_all(&data[middle..middle + (1 << 20)])
        .expect("write");
    drop(file);
    let (notify, consume) = mirrored(&mut c, "big.bin", &data).await;
    assert!(uploaded(&notify) <= 2 * MIB, "{notify:?}");
    assert!(fetched(&consume) <= 2 * MIB, "{consume:?}");
    assert_eq!(
        consume.body.reused.map(|r| r + fetched(&consume)),
        Some(64 * MIB)
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
async fn an_insertion_moves_about_what_was_inserted(backend) {
    let mut c = cluster_on(backend, "chunks-insert", 1).await;
    let data = noise(64 << 20, 3);
    save(&c.master_dir(), "big.bin", &data);
    mirrored(&mut c, "big.bin", &data).await;
    let middle = 32 << 20;
    let mut inserted = data[..middle].to_vec();
    inserted.extend_from_slice(&noise(1_000_000, 4));
    inserted.extend_from_slice(&data[middle..]);
    save(&c.master_dir(), "big.bin", &inserted);
    let (notify, consume) = mirrored(&mut c, "big.bin", &inserted).await;
    assert!(uploaded(&notify) <= 3 * MIB, "{notify:?}");
    assert!(fetched(&consume) <= 3 * MIB, "{consume:?}");
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
async fn appends_move_only_the_tail_and_a_truncation_almost_nothing(backend) {
    let mut c = cluster_on(backend, "chunks-append", 1).await;
    let mut data = noise(32 << 20, 5);
    save(&c.master_dir(), "log.bin", &data);
    mirrored(&mut c, "log.bin", &data).await;
    for i in 0..50u64 {
        let line = noise(100, 100 + i);
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(c.master_dir().join("log.bin"))
            .expect("open");
        file.write_all(&line).expect("append");
        drop(file);
        data.extend_from_slice(&line);
        let (notify, consume) = mirrored(&mut c, "log.bin", &data).await;
        // The last chunk (256 KiB at most) and the manifest (about 16 KiB here).
        assert!(uploaded(&notify) <= 300 << 10, "append {i}: {notify:?}");
        assert!(fetched(&consume) <= 300 << 10, "append {i}: {consume:?}");
    }
    // Cut to 10 MiB: every chunk but the new last one is held already.
    data.truncate(10 << 20);
    fs::OpenOptions::new()
        .write(true)
        .open(c.master_dir().join("log.bin"))
        .and_then(|f| f.set_len(10 << 20))
        .expect("truncate");
    let (notify, consume) = mirrored(&mut c, "log.bin", &data).await;
    assert!(uploaded(&notify) <= 300 << 10, "{notify:?}");
    assert!(fetched(&consume) <= 300 << 10, "{consume:?}");
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
async fn a_copy_or_an_earlier_version_uploads_nothing_new(backend) {
    let mut c = cluster_on(backend, "chunks-dedup", 1).await;
    let first = noise(8 << 20, 6);
    save(&c.master_dir(), "a.bin", &first);
    mirrored(&mut c, "a.bin", &first).await;
    fs::copy(
        c.master_dir().join("a.bin"),
        c.master_dir().join("copy.bin"),
    )
    .expect("cp");
    let (notify, _) = mirrored(&mut c, "copy.bin", &first).await;
    assert_eq!(uploaded(&notify), 0, "{notify:?}");
    // A new version, then the first one restored.
    let second = noise(8 << 20, 7);
    save(&c.master_dir(), "a.bin", &second);
    mirrored(&mut c, "a.bin", &second).await;
    save(&c.master_dir(), "a.bin", &first);
    let (notify, consume) = mirrored(&mut c, "a.bin", &first).await;
    assert_eq!(uploaded(&notify), 0, "{notify:?}");
    assert_eq!(
        fetched(&consume),
        8 * MIB,
        "its old copy was replaced: fetched again"
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
/// The slave's copy was edited behind its back before the update came: its chunks are
/// reused only where they still hash right, and the mirror ends with the master's bytes.
async fn a_copy_edited_on_the_slave_still_ends_with_the_masters_bytes(backend) {
    let mut c = cluster_on(backend, "chunks-local-edit", 1).await;
    edit_the_copy_then_the_file(&mut c, 8, Trace::Left).await;
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}

/// Whether an edit of the slave's copy shows in its metadata.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trace {
    Left,
    /// The copy's modification time is put back (size and inode never change).
    Hidden,
}

/// big.bin (16 MiB of noise from `seed`) mirrored; the slave's copy then gets 4 KiB of
/// zeros at 1 MiB, and the master's file 100 new bytes at 10 MiB. The slave must end with
/// the master's bytes, having fetched at most 2 MiB (the edited chunk and the changed one).
async fn edit_the_copy_then_the_file(c: &mut Cluster, seed: u64, trace: Trace) {
    let mut data = noise(16 << 20, seed);
    save(&c.master_dir(), "big.bin", &data);
    mirrored(c, "big.bin", &data).await;
    let copy = c.slaves[0].dir.join("big.bin");
    let before = fs::metadata(&copy).expect("the slave's copy");
    let mine = fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .expect("open the slave's copy");
    std::os::unix::fs::FileExt::write_all_at(&mine, &[0u8; 4096], 1 << 20).expect("edit");
    if trace == Trace::Hidden {
        mine.set_modified(before.modified().expect("mtime"))
            .expect("put the mtime back");
    }
    drop(mine);
    data[(10 << 20)..(10 << 20) + 100].copy_from_slice(&noise(100, seed + 1));
    save(&c.master_dir(), "big.bin", &data);
    let (_, consume) = mirrored(c, "big.bin", &data).await;
    assert!(
        fetched(&consume) <= 2 * MIB,
        "the edited chunk and the changed one: {consume:?}"
    );
    assert_eq!(fs::read(&copy).expect("read"), data);
}

/// Everything the slaves wrote to stderr, restarts included.
fn slave_logs(c: &Cluster) -> String {
    let mut logs = String::new();
    for entry in fs::read_dir(c.logs_dir()).expect("logs") {
        let entry = entry.expect("log");
        if entry.file_name().to_string_lossy().starts_with("slave") {
            logs += &fs::read_to_string(entry.path()).expect("a slave's log");
        }
    }
    logs
}

/// The slave's copy was edited behind its back without a trace in its metadata (same size,
/// modification time and inode): the slave takes the chunks it remembers writing on trust,
/// the new version fails its whole-file check, and the slave builds it again from the copy
/// as it is. The log shows the consume with the master's bytes and no error; the slave's
/// own log says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_edited_without_a_trace_still_ends_with_the_masters_bytes() {
    let mut c = cluster("chunks-hidden-edit", 1).await;
    edit_the_copy_then_the_file(&mut c, 10, Trace::Hidden).await;
    let stderr = slave_logs(&c);
    assert!(
        stderr.contains("changed behind the slave's back"),
        "the slave trusted its record, then read the copy: {stderr}"
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

/// A slave stopped cleanly and started again still knows the large copies it wrote: the
/// next version's reusable chunks are found from the manifest the copy was written from
/// (its debug log says so), not by reading the copy, and the mirror checks out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_slave_still_knows_the_copies_it_wrote() {
    a_slave_knows_its_copies_after(Stop::Clean).await;
}

/// The same for a slave killed (SIGKILL) once its position is saved: what it knows of its
/// copies is saved with its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_slave_still_knows_the_copies_it_wrote() {
    a_slave_knows_its_copies_after(Stop::Killed).await;
}

enum Stop {
    Clean,
    Killed,
}

async fn a_slave_knows_its_copies_after(stop: Stop) {
    let name = match stop {
        Stop::Clean => "chunks-known-restart",
        Stop::Killed => "chunks-known-killed",
    };
    let mut c = cluster(name, 1).await;
    let mut data = noise(16 << 20, 12);
    save(&c.master_dir(), "big.bin", &data);
    mirrored(&mut c, "big.bin", &data).await;
    match stop {
        Stop::Clean => must(c.stop_slave(0)),
        Stop::Killed => {
            // Saved with the position once the consume is acknowledged: moments after the
            // consume is in the log. The record's last field is the path, in hex.
            let known = c.slaves[0].state.join("known");
            let saved = || fs::read_to_string(&known).is_ok_and(|t| t.contains("6269672e62696e"));
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !saved() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} never saved",
                    known.display()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            must(c.crash_slave(0));
        }
    }
    must(c.start_slave(0).await);
    data[(5 << 20)..(5 << 20) + 100].copy_from_slice(&noise(100, 13));
    save(&c.master_dir(), "big.bin", &data);
    let (_, consume) = mirrored(&mut c, "big.bin", &data).await;
    assert!(
        fetched(&consume) <= 2 * MIB,
        "the changed chunks: {consume:?}"
    );
    let logs = slave_logs(&c);
    assert!(
        logs.contains("big.bin: the copy's chunks are where its manifest says"),
        "the restarted slave knew its copy: {logs}"
    );
    assert!(
        !logs.contains("big.bin: reading the copy to find its chunks"),
        "the copy was not read to find its chunks: {logs}"
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

/// The pack the bus appends to: the one with the highest number.
fn newest_pack(packs: &Path) -> std::path::PathBuf {
    let mut paths: Vec<_> = fs::read_dir(packs)
        .expect("packs")
        .map(|entry| entry.expect("entry").path())
        .collect();
    paths.sort();
    paths.pop().expect("a pack")
}

/// The walk of a pack: `(record offset, address)` of each record.
fn pack_records(pack: &Path) -> Vec<(u64, String)> {
    let bytes = fs::read(pack).expect("pack");
    let mut records = Vec::new();
    let mut at = 16usize;
    while at + 36 <= bytes.len() {
        let address = hex::encode(&bytes[at..at + 32]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[at + 32..at + 36]);
        records.push((at as u64, address));
        at += 36 + u32::from_le_bytes(len) as usize;
    }
    records
}

/// Content missing on the bus (its store lost the file's manifest): the slave says so with
/// an `error` event and writes nothing torn; once the same content is uploaded again (a
/// copy of the file), its retry applies it, and the log says which error it repairs. On
/// the embedded bus the manifest is cut off its pack while the master is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_missing_on_the_bus_is_an_error_until_it_is_uploaded_again() {
    let mut c = cluster("chunks-missing", 0).await;
    let (data, manifest) = a_large_file(&mut c).await;
    must(c.stop_master());
    // The manifest was the last thing stored: cut it off the pack.
    let pack = newest_pack(&c.master_state().join("blobs/packs"));
    let records = pack_records(&pack);
    let (offset, last) = records.last().expect("records");
    assert_eq!(*last, manifest);
    fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .and_then(|f| f.set_len(*offset))
        .expect("truncate");
    must(c.start_master().await);
    let manifest_bytes = 36 * (records.len() as u64 - 1);
    repaired_once_uploaded_again(&mut c, &data, &manifest, manifest_bytes).await;
}

/// The same on NATS, the manifest's message deleted from the content stream: the master
/// asking whether the bus holds it (`has`) must hear no, and upload it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_missing_on_nats_is_an_error_until_it_is_uploaded_again() {
    let mut c = cluster_on(Backend::Nats, "chunks-missing", 0).await;
    let (data, manifest) = a_large_file(&mut c).await;
    let content = jetstream(&c)
        .await
        .get_stream("filesync_CONTENT")
        .await
        .expect("the content stream");
    let stored = content
        .get_last_raw_message_by_subject(&format!("filesync.content.{manifest}"))
        .await
        .expect("the manifest is stored");
    content
        .delete_message(stored.sequence)
        .await
        .expect("delete the manifest");
    let manifest_bytes = stored.payload.len() as u64;
    repaired_once_uploaded_again(&mut c, &data, &manifest, manifest_bytes).await;
}

/// A 4 MiB file, published: its bytes and its manifest's address.
async fn a_large_file(c: &mut Cluster) -> (Vec<u8>, String) {
    c.events.allow_errors();
    let data = noise(4 << 20, 10);
    save(&c.master_dir(), "big.bin", &data);
    let notify = must(
        c.events
            .expect(Pattern::notify().put().path("big.bin"))
            .await,
    );
    (data, notify.body.manifest.clone().expect("a manifest"))
}

/// With the manifest of big.bin (`data`) gone from the bus: a new slave's `error` names
/// it and leaves nothing torn; a copy of the file uploads only the manifest
/// (`manifest_bytes`), and the slave's retry repairs its error.
async fn repaired_once_uploaded_again(
    c: &mut Cluster,
    data: &[u8],
    manifest: &str,
    manifest_bytes: u64,
) {
    let idx = c.add_slave();
    must(c.start_slave(idx).await);
    let error = must(
        c.events
            .expect(Pattern::error().by("slave").path("big.bin"))
            .await,
    );
    assert!(
        error
            .body
            .error
            .as_deref()
            .is_some_and(|e| e.contains(manifest)),
        "{error:?}"
    );
    assert!(
        !c.slaves[idx].dir.join("big.bin").exists(),
        "nothing torn is left"
    );
    fs::copy(
        c.master_dir().join("big.bin"),
        c.master_dir().join("copy.bin"),
    )
    .expect("cp");
    // The master may see the copy half written first: its notify of the whole copy counts.
    let sha256 = filesync_master::hash::sha256_hex(data);
    let copied = must(
        c.events
            .expect(Pattern::notify().put().path("copy.bin").sha256(&sha256))
            .await,
    );
    assert_eq!(
        copied.body.uploaded,
        Some(manifest_bytes),
        "only the manifest was missing"
    );
    must(
        c.events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("big.bin")
                    .with("repairs the error", move |e| {
                        e.body.repairs == Some(error.seq)
                    }),
            )
            .await,
    );
    assert_eq!(
        fs::read(c.slaves[idx].dir.join("big.bin")).expect("read"),
        data
    );
    must(c.settle().await);
    must(
        c.events
            .expect_none(Pattern::notify().delete(), Duration::from_millis(50))
            .await,
    );
    c.assert_checks(CheckOptions::default());
}
