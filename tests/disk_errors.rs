//! Disk errors: a full disk is an error event, nothing synced is lost, the slave goes on.

use std::fs;

use filesync::check::CheckOptions;
use filesync::testkit::Pattern;

use crate::util::{cluster, must};

/// A slave whose disk is full: an error event for the file that does not fit, nothing
/// already synced lost, no temporary file left, and the slave goes on once space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_an_error_event_and_the_slave_keeps_going() {
    let mut c = cluster("full-disk", 0).await;
    c.events.allow_errors();
    let idx = c.add_slave();
    let slave_dir = c.slaves[idx].dir.clone();
    fs::create_dir_all(&slave_dir).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&slave_dir)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "this test needs to mount a 1 MiB tmpfs (root): {mounted}"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(slave_dir.clone());
    must(c.start_slave(idx).await);
    let m = c.master_dir();
    fs::write(m.join("small.txt"), "fits").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("small.txt"))
            .await,
    );
    fs::write(m.join("big.bin"), vec![7u8; 3 << 20]).expect("write");
    let error = must(
        c.events
            .expect(Pattern::error().by("slave").path("big.bin"))
            .await,
    );
    // Found before any content was fetched: the slave reserves a large file's space first.
    assert!(
        error
            .body
            .error
            .as_deref()
            .unwrap_or("")
            .contains("reserve space"),
        "{error:?}"
    );
    assert_eq!(
        fs::read(slave_dir.join("small.txt")).expect("kept"),
        b"fits",
        "nothing already synced lost"
    );
    let leftovers: Vec<_> = fs::read_dir(&slave_dir)
        .expect("read")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file left behind: {leftovers:?}"
    );
    // A file under one piece is not reserved: the disk fills while it is written. Same
    // outcome: an error event, and nothing left behind.
    fs::write(m.join("half-1.bin"), vec![1u8; 600 << 10]).expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("half-1.bin"))
            .await,
    );
    fs::write(m.join("half-2.bin"), vec![2u8; 600 << 10]).expect("write");
    let error = must(
        c.events
            .expect(Pattern::error().by("slave").path("half-2.bin"))
            .await,
    );
    assert!(
        error.body.error.as_deref().unwrap_or("").contains("space"),
        "{error:?}"
    );
    let mut left: Vec<_> = fs::read_dir(&slave_dir)
        .expect("read")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["half-1.bin", "small.txt"], "no temporary file left");
    fs::remove_file(m.join("half-2.bin")).expect("rm");
    fs::remove_file(m.join("big.bin")).expect("rm");
    fs::write(m.join("later.txt"), "after the error").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("later.txt"))
            .await,
    );
    must(c.settle().await);
    // The error answered its notify; once big.bin is gone again the states agree.
    c.assert_checks(CheckOptions::default());
}
