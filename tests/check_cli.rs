//! `filesync check` on golden logs, and the CLI's behaviour on bad invocations.

use std::path::Path;
use std::process::Command;

use crate::util::bin;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/logs")
        .join(name)
}

#[test]
fn check_accepts_a_valid_log_and_reports_each_broken_one() {
    let ok = Command::new(bin())
        .arg("check")
        .arg(fixture("valid.jsonl"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("OK: all invariants hold"), "{stdout}");
    let broken = [
        ("broken-gap.jsonl", "invariant 1"),
        ("broken-time.jsonl", "goes backwards"),
        ("broken-double-consume.jsonl", "answered 2 times"),
        ("broken-unanswered.jsonl", "never answered"),
        ("broken-mismatch.jsonl", "invariant 3"),
        ("broken-escape.jsonl", "invariant 5"),
        ("broken-replay.jsonl", "invariant 4"),
    ];
    for (name, needle) in broken {
        let out = Command::new(bin())
            .arg("check")
            .arg(fixture(name))
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{name} should fail:\n{stdout}");
        assert!(
            stdout.contains(needle),
            "{name}: report lacks {needle:?}:\n{stdout}"
        );
    }
}

fn one_clear_line(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn bad_invocations_end_with_one_clear_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nope");
    let out = Command::new(bin())
        .args(["master", "--dir"])
        .arg(&missing)
        .output()
        .expect("run");
    one_clear_line(&out, "does not exist");

    let out = Command::new(bin())
        .args(["master", "--dir"])
        .arg(tmp.path())
        .arg("--state")
        .arg(tmp.path().join("state"))
        .output()
        .expect("run");
    one_clear_line(&out, "must not be inside");

    let out = Command::new(bin())
        .arg("check")
        .arg(&missing)
        .output()
        .expect("run");
    one_clear_line(&out, "cannot read");

    std::fs::write(tmp.path().join("garbage.jsonl"), "not json\n").expect("write");
    let out = Command::new(bin())
        .arg("check")
        .arg(tmp.path().join("garbage.jsonl"))
        .output()
        .expect("run");
    one_clear_line(&out, "line 1");

    let out = Command::new(bin())
        .args(["bus", "--listen", "0.0.0.0:0", "--state"])
        .arg(tmp.path().join("bus"))
        .env_remove("FILESYNC_TOKEN")
        .output()
        .expect("run");
    one_clear_line(&out, "needs mutual TLS");
    // A token alone is not enough beyond loopback any more: the traffic would be clear.
    let out = Command::new(bin())
        .args([
            "bus",
            "--listen",
            "0.0.0.0:0",
            "--token",
            "s3cret",
            "--state",
        ])
        .arg(tmp.path().join("bus"))
        .output()
        .expect("run");
    one_clear_line(&out, "--peer ID");
    assert!(
        !tmp.path().join("bus").exists(),
        "nothing created before the refusal"
    );
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin())
        .args(["bus", "--listen", &addr, "--state"])
        .arg(tmp.path().join("bus"))
        .output()
        .expect("run");
    one_clear_line(&out, "cannot listen on");
}

#[test]
fn the_demo_runs_and_its_log_checks_out() {
    let out = Command::new(bin())
        .args(["demo", "--keep"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "notify   master     move   docs -> manual",
        "consume  slave      delete greeting.txt",
        "OK: all invariants hold",
    ] {
        assert!(
            stdout.contains(needle),
            "demo output lacks {needle:?}:\n{stdout}"
        );
    }
    // --keep leaves the log for `check --html`, at the path it prints.
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("filesync check "))
        .unwrap_or_else(|| panic!("no check line:\n{stdout}"));
    let log = line.split_whitespace().nth(2).expect("a path");
    let html = std::env::temp_dir().join(format!("demo-{}.html", std::process::id()));
    let checked = Command::new(bin())
        .args(["check", log, "--html"])
        .arg(&html)
        .output()
        .expect("run check");
    assert_eq!(checked.status.code(), Some(0), "{checked:?}");
    assert!(std::fs::metadata(&html).is_ok_and(|m| m.len() > 0));
    let _ = std::fs::remove_file(&html);
    let kept = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Kept in "))
        .and_then(|rest| rest.strip_suffix(". Draw the log as a timeline:"));
    assert!(kept.is_some_and(|dir| log.starts_with(dir)), "{stdout}");
    if let Some(dir) = kept {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn completions_and_the_manual_come_from_the_same_definitions_as_help() {
    let run = |args: &[&str]| Command::new(bin()).args(args).output().expect("run");
    let bash = run(&["completions", "bash"]);
    let script = String::from_utf8_lossy(&bash.stdout);
    assert_eq!(bash.status.code(), Some(0));
    assert!(
        script.contains("_filesync") && script.contains("--wait-for-bus"),
        "{script}"
    );
    let man = run(&["man"]);
    let page = String::from_utf8_lossy(&man.stdout);
    assert_eq!(man.status.code(), Some(0));
    assert!(
        page.contains(".TH filesync") && page.contains("Exit status"),
        "{page}"
    );
    let bad = run(&["completions", "cmd.exe"]);
    assert_eq!(bad.status.code(), Some(2));
}
