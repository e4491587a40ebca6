//! The agents' command line against a live bus: `listen` output and filters, nested
//! directories, tokens.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use filesync::check::CheckOptions;
use filesync::event::Event;
use filesync::testkit::{AgentLog, Backend, Cluster, Pattern, Proc};

use crate::util::{bin, cluster, cluster_on, exported, must};

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

/// `filesync listen` with these arguments against `addr`, ended by the kit if it has not
/// ended by itself within 20 s: its exit code (`None` when it had to be killed), stdout and
/// stderr.
async fn listen_until_done(addr: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let child = tokio::process::Command::new(bin())
        .args(["listen", "--bus", addr])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn listen");
    match tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await {
        Ok(Ok(out)) => (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(err)) => panic!("listen: {err}"),
        Err(_) => (None, String::new(), "did not end within 20 s".into()),
    }
}

/// The log's lines as the test kit knows them apart from `export`: the embedded bus's file
/// as it is, or, on NATS, the events the kit's listener read, each written as a log line.
fn log_lines(c: &Cluster) -> Vec<String> {
    match c.backend {
        Backend::Embedded => {
            let log = fs::read_to_string(c.log_path()).expect("log");
            log.lines().map(str::to_owned).collect()
        }
        Backend::Nats | Backend::NatsCluster => {
            let log = c.read_log().expect("the log read");
            log.events.iter().map(Event::to_line).collect()
        }
    }
}

on_each_backend! {
/// `export` writes the log as it stands (and `check` accepts it); `listen` ends when told
/// (`--to`, `--until-quiet`) and joins the log only when asked (`--announce`).
async fn listen_ends_when_told_and_leaves_no_trace_unless_asked(backend) {
    let mut c = cluster_on(backend, "listen-ends", 1).await;
    let m = c.master_dir();
    fs::create_dir_all(m.join("sub")).expect("mkdir");
    fs::write(m.join("a.txt"), "a").expect("write");
    fs::write(m.join("sub/b.txt"), "b").expect("write");
    fs::write(m.join("c.md"), "c").expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("a.txt"),
                Pattern::consume().by("slave").put().path("sub/b.txt"),
                Pattern::consume().by("slave").put().path("c.md"),
            ])
            .await,
    );
    must(c.settle().await);
    let head = c.events.seen().last().map_or(0, |e| e.seq);

    // export: the log as it stands, unchanged, and `check` accepts it.
    let text = exported(&c);
    let logged: Vec<String> = log_lines(&c).into_iter().take(head as usize).collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), logged);
    let copy = c.dir().join("exported.jsonl");
    fs::write(&copy, &text).expect("write");
    let checked = Command::new(bin())
        .arg("check")
        .arg(&copy)
        .output()
        .expect("run check");
    assert_eq!(checked.status.code(), Some(0), "{checked:?}");

    // --to ends it; --tag repeats; `*.txt` matches at any depth, as in gitignore.
    let to = head.to_string();
    let args = [
        "--from", "1", "--to", &to, "--json", "--tag", "notify", "--tag", "consume", "--path",
        "*.txt",
    ];
    let (code, out, err) = listen_until_done(&c.addr, &args).await;
    assert_eq!(code, Some(0), "{err}");
    let events: Vec<Event> = out
        .lines()
        .map(|l| Event::parse(l).expect("a log line"))
        .collect();
    let mut seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let tag = e.body.tag.map(|t| t.to_string()).unwrap_or_default();
            (tag, e.body.path.clone().unwrap_or_default())
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, String)> = [
        ("consume", "a.txt"),
        ("consume", "sub/b.txt"),
        ("notify", "a.txt"),
        ("notify", "sub/b.txt"),
    ]
    .iter()
    .map(|(t, p)| (t.to_string(), p.to_string()))
    .collect();
    assert_eq!(seen, expected, "{out}");

    // --until-quiet ends it once the log has been read and nothing more comes.
    let (code, out, err) = listen_until_done(&c.addr, &["--from", "1", "--until-quiet", "1"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.lines().count() as u64 >= head, "{out}");

    // Neither listener left a join in the log (as the bus holds it now, read whole); one
    // that asks to be announced does.
    let listener_joins = |c: &Cluster| {
        exported(c)
            .lines()
            .filter_map(|l| Event::parse(l).ok())
            .filter(|e| e.agent == "listener")
            .count()
    };
    assert_eq!(listener_joins(&c), 0);
    let (code, _, err) = listen_until_done(&c.addr, &["--until-quiet", "0.3", "--announce"]).await;
    assert_eq!(code, Some(0), "{err}");
    must(c.events.expect(Pattern::join().by("listener")).await);
    assert_eq!(listener_joins(&c), 1);
    c.assert_checks(CheckOptions::default());
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_say_each_step_of_their_life_in_one_plain_line() {
    let mut c = must(
        Cluster::builder(&bin(), "lifecycle")
            .agent_log(AgentLog::Default)
            .prepare(|m| {
                // Old enough that the master publishes it before it is ready (a file just
                // written may still be being written: it is looked at again after a pause).
                let path = m.join("before.txt");
                fs::write(&path, "there at start").expect("write");
                let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
                fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(hour_ago))
                    .expect("set mtime");
            })
            .start()
            .await,
    );
    let t = Duration::from_secs(20);
    fs::write(c.master_dir().join("a.txt"), "a").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("a.txt"))
            .await,
    );
    let ready = must(c.master_says("master ready: watching ", t));
    assert!(
        ready.contains("(1 change(s) published at start)"),
        "{ready}"
    );
    let connected = must(c.slave_says(0, "connected to the bus at ", t));
    assert!(connected.contains(" as slave slave "), "{connected}");
    must(c.slave_says(0, "caught up: 1 change(s) applied after #0", t));
    // The master and its bus restart: the slave says it lost the bus, then that it is back.
    must(c.stop_master());
    must(c.start_master().await);
    must(c.slave_says(0, "; reconnecting", t));
    must(c.slave_says(0, "reconnected to the bus at ", t));
    must(c.stop_slave(0));
    let stderr = fs::read_to_string(c.logs_dir().join("slave")).expect("the slave's stderr");
    assert!(stderr.contains("left the bus (#"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour into a file:\n{stderr}"
    );
    // Nothing per event at the default level.
    assert!(!stderr.contains("a.txt"), "{stderr}");
    assert!(stderr.lines().count() <= 8, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_is_not_a_bus_is_one_clear_line_not_a_hang() {
    // Something that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming().take(2).flatten() {
            open.push(stream);
        }
        std::thread::sleep(Duration::from_secs(15));
    });
    let started = std::time::Instant::now();
    let (code, _, stderr) = listen_until_done(&silent_addr, &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is it a filesync bus?"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(held);

    // A closed port: the cause once, not twice.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_addr = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let (code, _, stderr) = listen_until_done(&closed_addr, &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.matches("refused").count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_waits_for_its_bus_as_long_as_told_and_a_token_can_come_from_a_file() {
    let tmp = must(filesync::testkit::TestDir::new("wait-for-bus").map_err(|e| e.to_string()));
    let logs = tmp.path().join("logs");
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr").to_string();
    drop(free);
    let token_file = tmp.path().join("token");
    fs::write(&token_file, "s3cret\n").expect("write");
    let slave = |name: &str, wait: &str| {
        let mut command = Command::new(bin());
        command
            .args([
                "slave",
                "--bus",
                &addr,
                "--name",
                name,
                "--wait-for-bus",
                wait,
            ])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--dir")
            .arg(tmp.path().join(name))
            .arg("--state")
            .arg(tmp.path().join(format!("state-{name}")))
            .env_remove("FILESYNC_TOKEN");
        must(Proc::spawn(name, command, &logs).map_err(|e| e.to_string()))
    };
    // A short wait ends in one line and exit 2; a service's wait does not end.
    let mut brief = slave("brief", "1s");
    let mut patient = slave("patient", "forever");
    let status = brief.wait_timeout(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "{}",
        brief.stderr_tail(5)
    );
    assert!(brief.stderr_tail(5).contains("cannot connect to the bus"));
    assert!(patient.try_status().is_none(), "{}", patient.stderr_tail(5));
    // The bus comes up late, with the token from a file; the patient slave joins it.
    let mut bus = Command::new(bin());
    bus.args(["bus", "--listen", &addr, "--token-file"])
        .arg(&token_file)
        .arg("--state")
        .arg(tmp.path().join("bus"))
        .env_remove("FILESYNC_TOKEN");
    let mut bus = must(Proc::spawn("bus", bus, &logs).map_err(|e| e.to_string()));
    must(bus.wait_for_stderr("listening on ", Duration::from_secs(10)));
    must(patient.wait_for_stderr("caught up: ", Duration::from_secs(20)));
    patient.terminate(Duration::from_secs(5));
    bus.terminate(Duration::from_secs(5));
    // A token file that cannot be read is one clear line.
    let out = Command::new(bin())
        .args(["listen", "--bus", &addr, "--token-file"])
        .arg(tmp.path().join("missing"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read --token-file"), "{stderr}");
}

on_each_backend! {
/// `status`: each agent, connected or away, how far behind each slave is, and the health
/// verdict as the exit code; on the embedded bus, no bus is "critical" too.
async fn status_reports_each_agent_its_lag_and_a_health_exit_code(backend) {
    let mut c = cluster_on(backend, "status", 1).await;
    fs::write(c.master_dir().join("a.txt"), "a").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("a.txt"))
            .await,
    );
    must(c.settle().await);
    let addr = c.addr.clone();
    let status = |args: &[&str]| {
        let out = Command::new(bin())
            .args(["status", "--bus", &addr])
            .args(args)
            .output()
            .expect("run status");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = status(&[]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains("status: healthy"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("slave") && l.contains("connected") && l.contains("0 notifies")),
        "{text}"
    );

    // A slave away while three files arrive: listed, three notifies behind, not counted.
    must(c.stop_slave(0));
    for name in ["b", "c", "d"] {
        fs::write(c.master_dir().join(name), vec![b'x'; 1000]).expect("write");
        must(c.events.expect(Pattern::notify().put().path(name)).await);
    }
    let (code, json, err) = status(&["--json"]);
    assert_eq!(code, Some(0), "{json}{err}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("one JSON object");
    assert_eq!(report["health"], "healthy", "{json}");
    let slave = report["agents"]
        .as_array()
        .and_then(|agents| agents.iter().find(|a| a["name"] == "slave"))
        .unwrap_or_else(|| panic!("no slave in {json}"));
    assert_eq!(slave["connected"], false, "{json}");
    assert_eq!(slave["behind"], 3, "{json}");
    assert_eq!(slave["behind_bytes"], 3000, "{json}");
    // The status reader left no trace in the log (as the bus holds it now, read whole).
    assert!(exported(&c)
        .lines()
        .all(|l| !l.contains("\"agent\":\"status\"")));

    must(c.stop_master());
    let (code, text, err) = status(&[]);
    match backend {
        // No bus: one line, exit 2, as a monitoring check reads "critical".
        Backend::Embedded => {
            assert_eq!(code, Some(2), "{err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
        // The bus stays up without its master: critical too, and said why.
        Backend::Nats | Backend::NatsCluster => {
            assert_eq!(code, Some(2), "{text}{err}");
            assert!(text.contains("no master is connected"), "{text}");
        }
    }
}
}

/// `--log-format json`: every line the master logs is one JSON object a machine can read,
/// its level and message in fields; only the `listening on` line scripts wait for stays
/// plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_gives_one_object_per_line() {
    let mut c = must(
        Cluster::builder(&bin(), "log-json")
            .master_args(&["--log-format", "json"])
            .slaves(1)
            .start()
            .await,
    );
    fs::write(c.master_dir().join("a.txt"), "a").expect("write");
    must(
        c.events
            .expect(Pattern::consume().by("slave").put().path("a.txt"))
            .await,
    );
    must(c.master_says("master ready: watching ", Duration::from_secs(20)));
    must(c.stop_master());
    let stderr = fs::read_to_string(c.logs_dir().join("master")).expect("the master's stderr");
    let mut messages = Vec::new();
    for line in stderr.lines().filter(|l| !l.starts_with("listening on ")) {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {line}\n{stderr}"));
        assert!(object["level"].is_string(), "{line}");
        messages.push(
            object["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        );
    }
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("master ready: watching ")),
        "{stderr}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("left the bus (#")),
        "{stderr}"
    );
}
