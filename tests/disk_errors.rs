//! Disk errors: a full disk is an error event, nothing synced is lost, the slave goes on.

use std::fs;

use filesync::check::CheckOptions;
use filesync::testkit::{Backend, Pattern};

use crate::util::{backend_name, bin, cluster_on, must};

on_each_backend! {
/// A slave whose disk is full: an error event for the file that does not fit, nothing
/// already synced lost, no temporary file left, and the slave goes on once space is back.
async fn a_full_disk_is_an_error_event_and_the_slave_keeps_going(backend) {
    if ran_in_a_namespace("a_full_disk_is_an_error_event_and_the_slave_keeps_going", backend) {
        return;
    }
    let mut c = cluster_on(backend, "full-disk", 0).await;
    c.events.allow_errors();
    let idx = c.add_slave();
    let slave_dir = c.slaves[idx].dir.clone();
    fs::create_dir_all(&slave_dir).expect("mkdir");
    let _tmpfs = mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], &slave_dir);
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
}

/// These tests mount file systems. As root (CI) they run here; as an ordinary user each
/// runs again in a user and mount namespace of its own (`unshare`, where the kernel allows
/// unprivileged ones), root over its own mounts there, and this run asserts that run's
/// verdict. Returns whether it ran there.
fn ran_in_a_namespace(test: &str, backend: Backend) -> bool {
    // The effective uid, the second field of /proc's `Uid:` line.
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned));
    if euid.as_deref() == Some("0") {
        return false;
    }
    let exe = std::env::current_exe().expect("the test binary");
    // The test as `on_each_backend!` names it: `disk_errors::TEST::BACKEND`.
    let name = format!("disk_errors::{test}::{}", backend_name(backend));
    let out = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--"])
        .arg(exe)
        .args([name.as_str(), "--exact", "--test-threads=1"])
        .output()
        .expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in a user namespace (not root: the test mounts a tmpfs) failed:\n{stdout}\n{stderr}"
    );
    true
}

/// Unmounts (lazily) when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn mount(args: &[&str], target: &std::path::Path) -> Mounted {
    let status = std::process::Command::new("mount")
        .args(args)
        .arg(target)
        .status()
        .expect("run mount");
    assert!(status.success(), "this test needs mount (root): {status}");
    Mounted(target.to_path_buf())
}

on_each_backend! {
/// A full disk on the slave, freed by its user: the failed file arrives by itself, as a
/// consume that names the error it repairs, and the log checks out (the error is closed).
async fn a_full_disk_once_freed_is_repaired_by_a_retry(backend) {
    if ran_in_a_namespace("a_full_disk_once_freed_is_repaired_by_a_retry", backend) {
        return;
    }
    let mut c = cluster_on(backend, "disk-freed", 0).await;
    c.events.allow_errors();
    let idx = c.add_slave();
    let slave_dir = c.slaves[idx].dir.clone();
    fs::create_dir_all(&slave_dir).expect("mkdir");
    let _tmpfs = mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], &slave_dir);
    must(c.start_slave(idx).await);
    // Someone else's file fills the slave's disk.
    fs::write(slave_dir.join("hog"), vec![0u8; 700 << 10]).expect("write");
    fs::write(c.master_dir().join("data.bin"), vec![3u8; 600 << 10]).expect("write");
    let error = must(
        c.events
            .expect(Pattern::error().by("slave").put().path("data.bin"))
            .await,
    );
    fs::remove_file(slave_dir.join("hog")).expect("free the disk");
    let repair = must(
        c.events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("data.bin")
                    .cause(error.body.cause.unwrap_or(0))
                    .with("repairs the error", move |e| {
                        e.body.repairs == Some(error.seq)
                    }),
            )
            .await,
    );
    assert_eq!(
        fs::read(slave_dir.join("data.bin")).expect("arrived").len(),
        600 << 10,
        "{repair:?}"
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}

on_each_backend! {
/// A directory the slave cannot write (read-only) makes its files fail; fixed while the
/// slave is down, they are retried when it starts again and the repairs are in the log.
async fn a_read_only_directory_fixed_converges_when_the_slave_restarts(backend) {
    if ran_in_a_namespace("a_read_only_directory_fixed_converges_when_the_slave_restarts", backend) {
        return;
    }
    let mut c = cluster_on(backend, "read-only-dir", 1).await;
    c.events.allow_errors();
    let m = c.master_dir();
    fs::create_dir(m.join("d")).expect("mkdir");
    fs::write(m.join("d/a"), "a").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("d/a"))
            .await,
    );
    let d = c.slaves[0].dir.join("d");
    let bound = mount(&["--bind", d.to_str().expect("utf-8")], &d);
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&d)
        .status()
        .expect("remount");
    assert!(status.success(), "{status}");
    fs::write(m.join("d/x"), "x").expect("write");
    let error = must(
        c.events
            .expect(Pattern::error().by("slave").path("d/x"))
            .await,
    );
    must(c.stop_slave(0));
    // `status` says why the mirror fails: the error not made good, in the slave's words.
    let out = std::process::Command::new(bin())
        .args(["status", "--bus", &c.addr])
        .output()
        .expect("run status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let said = error.body.error.clone().unwrap_or_default();
    assert!(
        text.contains(&format!("last error #{}: {said}", error.seq)),
        "{text}"
    );
    drop(bound);
    must(c.start_slave(0).await);
    must(
        c.events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("d/x")
                    .with("repairs the error", move |e| {
                        e.body.repairs == Some(error.seq)
                    }),
            )
            .await,
    );
    assert_eq!(fs::read(c.slaves[0].dir.join("d/x")).expect("read"), b"x");
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}
}
