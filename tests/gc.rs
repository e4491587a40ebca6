//! Content collection and history: old versions within the window can be listed and
//! restored byte for byte; content collected with no grace at all while the same content
//! comes back is never lost; a bus killed at any step of checkpointing, truncation and
//! collection restarts with a log that checks out and every referenced byte in place.

use std::fs;
use std::process::Command;
use std::time::Duration;

use filesync::bus::crash::STEPS;
use filesync::check::CheckOptions;
use filesync::testkit::{Backend, Cluster, Exit, Pattern};

use crate::util::{bin, cluster_on, must};
use filesync::testkit::noise;

fn sha(bytes: &[u8]) -> String {
    filesync_master::hash::sha256_hex(bytes)
}

fn filesync(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run filesync");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

on_each_backend! {
/// `history` and `restore` read the bus's state directory, or ask the bus itself: a NATS
/// bus has no state directory, and an embedded one may be on another machine.
async fn history_lists_every_version_and_restore_returns_its_exact_bytes(backend) {
    let mut c = cluster_on(backend, "gc-history", 1).await;
    let m = c.master_dir();
    let small = [b"first draft\n".to_vec(), b"second draft\n".to_vec()];
    let big = [noise(3 << 20, 1), {
        let mut edited = noise(3 << 20, 1);
        edited[1_500_000..1_500_100].copy_from_slice(&[b'x'; 100]);
        edited
    }];
    let mut seqs = Vec::new();
    for (version, (s, b)) in small.iter().zip(&big).enumerate() {
        fs::write(m.join("doc.txt"), s).expect("write");
        fs::write(m.join("big.bin"), b).expect("write");
        let notified = must(
            c.events
                .expect_all(vec![
                    Pattern::notify().put().path("doc.txt").sha256(&sha(s)),
                    Pattern::notify().put().path("big.bin").sha256(&sha(b)),
                ])
                .await,
        );
        seqs.push((notified[0].seq, notified[1].seq));
        assert!(
            notified[1].body.manifest.is_some(),
            "version {version} of big.bin is stored in chunks"
        );
    }
    fs::remove_file(m.join("doc.txt")).expect("rm");
    let deleted = must(
        c.events
            .expect(Pattern::notify().delete().path("doc.txt"))
            .await,
    );
    must(c.settle().await);

    let state = c.master_state().to_str().expect("utf-8 path").to_owned();
    let asked = ["--bus", c.addr.as_str()];
    let source = match backend {
        Backend::Embedded => ["--state", state.as_str()],
        _ => asked,
    };
    let with = |args: &[&str]| filesync(&[args, &source[..]].concat());
    let (code, listed, err) = with(&["history", "doc.txt"]);
    assert_eq!(code, 0, "{err}");
    if backend == Backend::Embedded {
        // The same history, asked of the bus.
        let (code, told, err) = filesync(&[&["history", "doc.txt"][..], &asked[..]].concat());
        assert_eq!((code, told.as_str()), (0, listed.as_str()), "{err}");
    }
    for (doc, _) in &seqs {
        let line = listed
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("#{doc} ")))
            .unwrap_or_else(|| panic!("#{doc} missing from:\n{listed}"));
        assert!(line.contains("held"), "{listed}");
    }
    assert!(
        listed.contains(&format!("#{}", deleted.seq)) && listed.contains("gone"),
        "{listed}"
    );

    let out = tempfile::tempdir().expect("tempdir");
    for (version, (doc, big_seq)) in seqs.iter().enumerate() {
        for (path, seq, expected) in [
            ("doc.txt", doc, &small[version]),
            ("big.bin", big_seq, &big[version]),
        ] {
            let to = out.path().join(format!("{path}.{version}"));
            let at = seq.to_string();
            let (code, said, err) = with(&[
                "restore",
                path,
                "--at",
                &at,
                "--to",
                to.to_str().expect("utf-8"),
            ]);
            assert_eq!(code, 0, "{said}{err}");
            assert!(said.contains("sha256 verified"), "{said}");
            assert!(
                fs::read(&to).expect("restored") == *expected,
                "{path} #{seq}"
            );
        }
    }
    if backend == Backend::Embedded {
        // A version in chunks, asked of the bus (its chunks asked for ahead).
        let to = out.path().join("big.bin.asked");
        let at = seqs[1].1.to_string();
        let to_arg = to.to_str().expect("utf-8");
        let restore = ["restore", "big.bin", "--at", &at, "--to", to_arg];
        let (code, said, err) = filesync(&[&restore[..], &asked[..]].concat());
        assert_eq!(code, 0, "{said}{err}");
        assert!(fs::read(&to).expect("restored") == big[1], "big.bin from the bus");
    }
    // Never over an existing file; never a version that was not there.
    let taken = out.path().join("doc.txt.0");
    let at = seqs[0].0.to_string();
    let (code, _, err) = with(&[
        "restore",
        "doc.txt",
        "--at",
        &at,
        "--to",
        taken.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("exists"), "{err}");
    let at = deleted.seq.to_string();
    let to = out.path().join("none");
    let (code, _, err) = with(&[
        "restore",
        "doc.txt",
        "--at",
        &at,
        "--to",
        to.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("did not exist"), "{err}");
    assert!(!to.exists());
    c.assert_checks(CheckOptions::default());
}
}

/// Retention and collection as eager as they can be: no history, no grace, a pass every
/// 100 ms.
const EAGER: &[&str] = &[
    "--keep-history",
    "0",
    "--segment-size",
    "4096",
    "--gc-interval",
    "100ms",
    "--gc-grace",
    "0s",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_collected_without_grace_while_it_comes_back_is_never_lost() {
    let builder = Cluster::builder(&bin(), "gc-race")
        .master_args(EAGER)
        .slaves(1);
    let mut c = must(builder.start().await);
    let m = c.master_dir();
    // Two versions that alternate: each time one comes back, its content has just become
    // unreferenced and is due for removal at once.
    let versions = [noise(1_500_000, 7), noise(1_500_000, 8)];
    let notes = [b"even\n".to_vec(), b"odd\n".to_vec()];
    for round in 0..12 {
        let (big, note) = (&versions[round % 2], &notes[round % 2]);
        fs::write(m.join("big.bin"), big).expect("write");
        fs::write(m.join("note.txt"), note).expect("write");
        must(
            c.events
                .expect_all(vec![
                    Pattern::consume()
                        .by("slave")
                        .path("big.bin")
                        .sha256(&sha(big)),
                    Pattern::consume()
                        .by("slave")
                        .path("note.txt")
                        .sha256(&sha(note)),
                ])
                .await,
        );
        // Varied pauses: sometimes the other version is collected before it comes back,
        // sometimes while it comes back.
        tokio::time::sleep(Duration::from_millis(60 + (round as u64 * 97) % 340)).await;
    }
    must(c.settle().await);
    must(c.master_says("collected", Duration::from_secs(5)));
    let s = c.slaves[0].dir.clone();
    assert!(fs::read(s.join("big.bin")).expect("read") == versions[1]);
    c.assert_checks(CheckOptions::default());
    // A newcomer catches up from what the bus kept: nothing it needs was collected.
    let idx = c.add_slave();
    must(c.start_slave(idx).await);
    let name = c.slaves[idx].name.clone();
    must(
        c.events
            .expect(
                Pattern::consume()
                    .by(&name)
                    .path("big.bin")
                    .sha256(&sha(&versions[1])),
            )
            .await,
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

/// Churns until the master reaches crash point `step` and aborts; restarts it without
/// one; the mirror carries on, a newcomer converges, and the log checks out.
async fn killed_at(step: &str) {
    let mut args: Vec<&str> = EAGER.to_vec();
    args.extend(["--test-crash-at", step]);
    let builder = Cluster::builder(&bin(), &format!("gc-crash-{step}"))
        .master_args(&args)
        .slaves(1);
    let mut c = must(builder.start().await);
    let m = c.master_dir();
    let mut crashed = false;
    for round in 0..200u64 {
        fs::write(m.join(format!("f{}", round % 3)), noise(2000, round)).expect("write");
        if c.master_says("crash point", Duration::from_millis(40))
            .is_ok()
        {
            crashed = true;
            break;
        }
    }
    assert!(
        crashed,
        "the master never reached {step}\n{}",
        c.events.timeline()
    );
    must(c.master_exits(Exit::Signal(6), Duration::from_secs(5)));
    c.set_master_args(EAGER);
    must(c.start_master().await);
    fs::write(m.join("after.txt"), format!("after {step}")).expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").path("after.txt"))
            .await,
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
    let idx = c.add_slave();
    must(c.start_slave(idx).await);
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_killed_while_checkpointing_or_truncating_restarts_whole() {
    for step in &STEPS[..3] {
        killed_at(step).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_killed_while_collecting_restarts_whole() {
    for step in &STEPS[3..] {
        killed_at(step).await;
    }
}
