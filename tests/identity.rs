//! One writer, checked starts: a second master (on the same state, on the same bus, or as
//! a peer posing as one), a second connection with a live agent's name, and starts that
//! are refused: each one clear line, nothing created, nothing joined, nothing published.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use filesync::bus::protocol::Reply;
use filesync::check::CheckOptions;
use filesync::event::Role;
use filesync::testkit::{Cluster, EventStream, Pattern, Proc};

use crate::bus_input::still_works;
use crate::util::{assert_refused, bin, cluster, must, run};

fn log_lines(c: &Cluster) -> usize {
    fs::read_to_string(c.log_path())
        .expect("log")
        .lines()
        .count()
}

/// A raw hello; returns the bus's answer.
async fn raw_hello(addr: &str, role: Role, name: &str, dir: Option<&Path>) -> Reply {
    crate::bus_input::raw_hello(addr, role, name, dir).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_master_is_refused_on_the_same_state_and_on_the_same_bus() {
    let mut c = cluster("two-masters", 1).await;
    let m = c.master_dir();
    fs::create_dir(m.join("D4")).expect("mkdir");
    fs::write(m.join("D4/keep"), "keep").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("D4/keep"))
            .await,
    );
    must(c.settle().await);
    let other = c.dir().join("other");
    fs::create_dir(&other).expect("mkdir");
    let before = log_lines(&c);

    // The same state directory (what a second start with the default --state gets).
    let state = c.master_state();
    let out = run(
        &["master", "--listen", "127.0.0.1:0", "--dir"],
        &[&other, Path::new("--state"), &state],
    );
    assert_refused(&out, "is in use by another filesync process (pid ");
    // The same bus, under another name.
    let out = run(
        &["master", "--name", "master-2", "--bus", &c.addr, "--dir"],
        &[&other],
    );
    assert_refused(&out, "is already connected: one master per log");
    // A peer posing as the master, or as any master.
    for name in ["master", "impostor"] {
        let answer = raw_hello(&c.addr, Role::Master, name, Some(&other)).await;
        assert!(
            matches!(&answer, Reply::Reject { busy: true, .. }),
            "{answer:?}"
        );
    }
    assert_eq!(log_lines(&c), before, "nothing it did reached the log");
    assert!(m.join("D4/keep").exists() && c.slaves[0].dir.join("D4/keep").exists());
    c.assert_checks(CheckOptions::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_slaves_name_is_its_own() {
    let mut c = cluster("two-slaves", 1).await;
    let answer = raw_hello(&c.addr, Role::Slave, "slave", None).await;
    match &answer {
        Reply::Reject { error, busy } => {
            assert!(*busy && error.contains("already connected"), "{error}")
        }
        other => panic!("a second slave named slave was welcomed: {other:?}"),
    }
    let dir = c.dir().join("second");
    let state = c.dir().join("state/second");
    let out = run(
        &["slave", "--name", "slave", "--bus", &c.addr, "--dir"],
        &[&dir, Path::new("--state"), &state],
    );
    assert_refused(&out, "an agent named \"slave\" is already connected");
    assert!(
        !dir.exists() && !state.exists(),
        "a refused start creates nothing"
    );
    still_works(&mut c, "after.txt").await;
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_starts_create_nothing_and_join_nothing() {
    let mut c = cluster("refused-starts", 1).await;
    must(c.settle().await);
    let before = log_lines(&c);
    let m = c.master_dir();
    let fresh_state = c.dir().join("state/fresh");

    // A slave inside the master's directory: refused by the bus at its hello.
    let out = run(
        &["slave", "--name", "inner", "--bus", &c.addr, "--dir"],
        &[&m.join("inner"), Path::new("--state"), &fresh_state],
    );
    assert_refused(&out, "must not contain each other");
    assert!(!m.join("inner").exists() && !fresh_state.exists());

    // A master whose state would be inside its directory, or whose port is taken.
    let a6 = c.dir().join("A6");
    fs::create_dir(&a6).expect("mkdir");
    let out = run(
        &["master", "--listen", "127.0.0.1:0", "--dir"],
        &[&a6, Path::new("--state"), &a6.join(".state")],
    );
    assert_refused(&out, "must not be inside the watched directory");
    let out = run(
        &["master", "--listen", &c.addr, "--dir"],
        &[&a6, Path::new("--state"), &fresh_state],
    );
    assert_refused(&out, "cannot listen on");
    assert!(!a6.join(".state").exists() && !fresh_state.exists());

    // A slave whose state is a file, or whose directory is one.
    let file = c.dir().join("a-file");
    fs::write(&file, "").expect("write");
    let out = run(
        &["slave", "--name", "s2", "--bus", &c.addr, "--dir"],
        &[&c.dir().join("s2"), Path::new("--state"), &file],
    );
    assert_refused(&out, "a-file");
    let out = run(
        &["slave", "--name", "s2", "--bus", &c.addr, "--dir"],
        &[&file, Path::new("--state"), &fresh_state],
    );
    assert_refused(&out, "exists and is not a directory");
    assert!(!c.dir().join("s2").exists() && !fresh_state.exists());

    // A slave whose state cannot be written (a read-only file system: even root is refused).
    let readonly = c.dir().join("readonly");
    fs::create_dir(&readonly).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
        .arg(&readonly)
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let out = run(
            &["slave", "--name", "s3", "--bus", &c.addr, "--dir"],
            &[&c.dir().join("s3"), Path::new("--state"), &readonly],
        );
        let _ = Command::new("umount").arg("-l").arg(&readonly).status();
        assert_refused(&out, "is not writable");
        assert!(!c.dir().join("s3").exists());
    } else {
        eprintln!("not root: the read-only state case needs a read-only mount; skipped");
    }

    assert_eq!(log_lines(&c), before, "no refused start joined the bus");
    c.assert_checks(CheckOptions::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_belongs_to_one_master_directory_unless_taken_over() {
    let mut c = cluster("takeover", 1).await;
    let m = c.master_dir();
    fs::write(m.join("old.txt"), "old").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("old.txt"))
            .await,
    );
    must(c.settle().await);
    must(c.stop_master());
    let before = log_lines(&c);
    let b = c.dir().join("B");
    fs::create_dir(&b).expect("mkdir");
    fs::write(b.join("new.txt"), "new").expect("write");
    let state = c.master_state();
    let out = run(
        &["master", "--listen", &c.addr, "--dir"],
        &[&b, Path::new("--state"), &state],
    );
    assert_refused(&out, "start the master with --takeover");
    assert_eq!(
        log_lines(&c),
        before,
        "the refused master published nothing"
    );
    assert!(
        c.slaves[0].dir.join("old.txt").exists(),
        "nothing synced was lost"
    );

    // With --takeover, B becomes the mirrored directory, and the join says so.
    let mut master = Command::new(bin());
    master
        .args(["master", "--takeover", "--listen", &c.addr, "--dir"])
        .arg(&b)
        .arg("--state")
        .arg(&state);
    let mut master =
        must(Proc::spawn("master-b", master, &c.logs_dir()).map_err(|e| e.to_string()));
    must(master.wait_for_stderr("listening on ", Duration::from_secs(20)));
    let mut events = must(EventStream::connect(&c.addr, before as u64 + 1, None).await);
    let join = must(events.expect(Pattern::join().by("master")).await);
    assert_eq!(join.body.takeover, Some(true), "{join:?}");
    assert_eq!(
        join.body.dir.as_deref(),
        Some(
            fs::canonicalize(&b)
                .expect("canonical")
                .to_str()
                .expect("utf-8")
        )
    );
    must(
        events
            .expect_all(vec![
                Pattern::consume().by("slave").delete().path("old.txt"),
                Pattern::consume().by("slave").put().path("new.txt"),
            ])
            .await,
    );
    master.terminate(Duration::from_secs(5));
}
