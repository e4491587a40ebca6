//! The agents' command line against a live bus: `listen` output and filters, nested
//! directories, tokens.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use filesync::event::Event;
use filesync::testkit::{Pattern, Proc};

use crate::util::{bin, cluster, must};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_filtered_events_readable_or_as_raw_log_lines() {
    let mut c = cluster("listen", 1).await;
    // Their stdout is data: captured on its own, apart from the logs the kit keeps.
    let out = c.dir().join("listen-out");
    fs::create_dir_all(&out).expect("mkdir");
    let spawn = |args: &[&str], name: &str| {
        let stdout = fs::File::create(out.join(name)).expect("create");
        let stderr = fs::File::create(out.join(format!("{name}.stderr"))).expect("create");
        Command::new(bin())
            .args(args)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn listen")
    };
    let mut json = spawn(
        &[
            "listen", "--from", "1", "--json", "--tag", "notify", "--path", "docs/*", "--bus",
            &c.addr,
        ],
        "json",
    );
    let mut readable = spawn(
        &[
            "listen", "--from", "1", "--agent", "slave", "--op", "put", "--bus", &c.addr,
        ],
        "readable",
    );
    let m = c.master_dir();
    fs::create_dir(m.join("docs")).expect("mkdir");
    fs::write(m.join("docs/a.md"), "a").expect("write");
    fs::write(m.join("top.txt"), "t").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("docs/a.md"),
                Pattern::consume().by("slave").put().path("top.txt"),
            ])
            .await,
    );
    // Both listeners follow the same log: wait (bounded) until each printed what it should.
    let printed = |name: &str, needle: &str| {
        fs::read_to_string(out.join(name)).is_ok_and(|t| t.contains(needle))
    };
    for _ in 0..2000 {
        if printed("json", "docs/a.md")
            && printed("readable", "docs/a.md")
            && printed("readable", "top.txt")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for child in [&mut json, &mut readable] {
        let _ = child.kill();
        let _ = child.wait();
    }

    let raw = fs::read_to_string(out.join("json")).expect("output");
    let events: Vec<Event> = raw
        .lines()
        .map(|l| Event::parse(l).expect("a log line"))
        .collect();
    let paths: Vec<&str> = events
        .iter()
        .filter_map(|e| e.body.path.as_deref())
        .collect();
    assert_eq!(paths, ["docs/a.md"], "only notifies under docs/*:\n{raw}");
    let log = fs::read_to_string(c.log_path()).expect("log");
    assert!(
        log.lines().any(|l| l == raw.trim_end()),
        "--json prints log lines unchanged"
    );

    let text = fs::read_to_string(out.join("readable")).expect("output");
    let stderr = fs::read_to_string(out.join("readable.stderr")).unwrap_or_default();
    let text = if text.contains("top.txt") {
        text
    } else {
        format!("{text}\n(stderr: {stderr})")
    };
    assert!(
        text.lines()
            .all(|l| l.contains(" consume ") && l.contains(" slave ") && l.contains(" put ")),
        "{text}"
    );
    assert!(
        text.contains("docs/a.md") && text.contains("top.txt") && text.contains("<- #"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_inside_the_master_directory_is_refused() {
    let c = cluster("nested", 0).await;
    let out = Command::new(bin())
        .args(["slave", "--bus", &c.addr, "--dir"])
        .arg(c.master_dir().join("inner"))
        .arg("--state")
        .arg(c.dir().join("state/nested"))
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must not contain each other"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_with_a_token_refuses_peers_without_it() {
    let tmp = must(filesync::testkit::TestDir::new("token").map_err(|e| e.to_string()));
    let mut bus = Command::new(bin());
    bus.args(["bus", "--listen", "127.0.0.1:0", "--state"])
        .arg(tmp.path().join("bus"))
        .env("FILESYNC_TOKEN", "s3cret");
    let mut bus =
        must(Proc::spawn("bus", bus, &tmp.path().join("logs")).map_err(|e| e.to_string()));
    let addr = must(bus.wait_for_stderr("listening on ", Duration::from_secs(10)));
    let refused = Command::new(bin())
        .args(["listen", "--bus", &addr])
        .env_remove("FILESYNC_TOKEN")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("wrong token"), "{stderr}");
    let events = filesync::testkit::EventStream::connect(&addr, 1, Some("s3cret".into())).await;
    assert!(events.is_ok(), "the right token is accepted");
    bus.terminate(Duration::from_secs(5));
}
