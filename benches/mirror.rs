//! `cargo bench --bench mirror`: end-to-end measurements of the live mirror, printed as a
//! table. Run on demand (never part of CI's pass/fail). Each workload starts from a mirrored
//! state with a master and one slave as real processes, and times until the slave has the
//! result, seen by an inotify watch on the slave directory (the rename into place).
//!
//! - latency: one 4 KiB file, written and closed in the master dir, until renamed into place
//!   in the slave dir; 50 times; against the physical floor (the same write + rename done
//!   directly in the slave dir, seen by the same watch).
//! - 1 GiB: one file of 1 GiB; wall time against `cp` of the same file; peak RSS of master
//!   and slave (VmHWM).
//! - rename: a directory of 10,000 files renamed; until the slave has the new name.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use filesync::testkit::{Cluster, Pattern};
use notify::{RecursiveMode, Watcher};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_filesync"))
}

/// Watches `dir` (not recursively) for names appearing (created or renamed in).
struct Arrivals {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::Receiver<PathBuf>,
}

impl Arrivals {
    fn watch(dir: &Path) -> Arrivals {
        let (tx, rx) = mpsc::channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    use notify::event::{EventKind, ModifyKind, RenameMode};
                    let arrived = matches!(
                        event.kind,
                        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To))
                    );
                    if arrived {
                        for path in event.paths {
                            let _ = tx.send(path);
                        }
                    }
                }
            })
            .expect("watcher");
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .expect("watch");
        Arrivals {
            _watcher: watcher,
            rx,
        }
    }

    fn wait_for(&self, path: &Path, timeout: Duration) -> Instant {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(arrived) if arrived == path => return Instant::now(),
                Ok(_) => {}
                Err(_) => panic!("{} never arrived", path.display()),
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn write_closed(path: &Path, data: &[u8]) {
    let mut file = fs::File::create(path).expect("create");
    file.write_all(data).expect("write");
}

async fn latency(rows: &mut Vec<[String; 4]>) {
    let c = Cluster::start(&bin(), "bench-latency", 1)
        .await
        .expect("cluster");
    let slave_dir = c.slaves[0].dir.clone();
    let arrivals = Arrivals::watch(&slave_dir);
    let data = vec![b'x'; 4096];
    let mut mirrored = Vec::new();
    for i in 0..50 {
        let name = format!("lat-{i}");
        let started = Instant::now();
        write_closed(&c.master_dir().join(&name), &data);
        let arrived = arrivals.wait_for(&slave_dir.join(&name), Duration::from_secs(10));
        mirrored.push(arrived - started);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut floor = Vec::new();
    for i in 0..50 {
        let name = format!("floor-{i}");
        let started = Instant::now();
        let temp = slave_dir.join(format!(".tmp-{i}"));
        write_closed(&temp, &data);
        fs::rename(&temp, slave_dir.join(&name)).expect("rename");
        let arrived = arrivals.wait_for(&slave_dir.join(&name), Duration::from_secs(10));
        floor.push(arrived - started);
    }
    mirrored.sort();
    floor.sort();
    for (label, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let m = percentile(&mirrored, p);
        let f = percentile(&floor, p);
        rows.push([
            format!("4 KiB file latency {label} (50 runs)"),
            ms(m),
            format!("floor {}", ms(f)),
            format!("{:.0}x floor", m.as_secs_f64() / f.as_secs_f64()),
        ]);
    }
}

async fn large_file(rows: &mut Vec<[String; 4]>) {
    let mut c = Cluster::start(&bin(), "bench-1gib", 1)
        .await
        .expect("cluster");
    let staging = c.dir().join("staging");
    fs::create_dir_all(&staging).expect("mkdir");
    let source = staging.join("big.bin");
    {
        let mut file = fs::File::create(&source).expect("create");
        let mut block = vec![0u8; 1 << 20];
        for i in 0..1024u32 {
            block[..4].copy_from_slice(&i.to_le_bytes());
            file.write_all(&block).expect("write");
        }
        file.sync_all().expect("sync");
    }
    let cp_started = Instant::now();
    let status = Command::new("cp")
        .arg(&source)
        .arg(staging.join("copy.bin"))
        .status()
        .expect("cp");
    assert!(status.success());
    let cp_time = cp_started.elapsed();
    let slave_dir = c.slaves[0].dir.clone();
    let arrivals = Arrivals::watch(&slave_dir);
    let started = Instant::now();
    // A rename into the tree is a single, already-closed file appearing.
    fs::rename(&source, c.master_dir().join("big.bin")).expect("move in");
    let arrived = arrivals.wait_for(&slave_dir.join("big.bin"), Duration::from_secs(600));
    let took = arrived - started;
    rows.push([
        "1 GiB file, close to rename on slave".into(),
        format!("{:.2} s", took.as_secs_f64()),
        format!("cp {:.2} s", cp_time.as_secs_f64()),
        format!("{:.1}x cp", took.as_secs_f64() / cp_time.as_secs_f64()),
    ]);
    let master_pid = c.master_pid().unwrap_or(0);
    let slave_pid = c.slave_pid(0).unwrap_or(0);
    rows.push([
        "peak RSS, master (1 GiB run)".into(),
        format!("{:.1} MiB", peak_rss_mib(master_pid)),
        "target < 100 MiB".into(),
        String::new(),
    ]);
    rows.push([
        "peak RSS, slave (1 GiB run)".into(),
        format!("{:.1} MiB", peak_rss_mib(slave_pid)),
        "target < 100 MiB".into(),
        String::new(),
    ]);
}

async fn dir_rename(rows: &mut Vec<[String; 4]>) {
    let mut c = Cluster::start_with(&bin(), "bench-rename", 1, |m| {
        fs::create_dir(m.join("tree")).expect("mkdir");
        for i in 0..10_000 {
            fs::write(m.join(format!("tree/f{i:05}")), [b'x'; 4096]).expect("write");
        }
    })
    .await
    .expect("cluster");
    c.events.deadline = Duration::from_secs(300);
    c.events
        .expect_count(
            Pattern::consume().by("slave").put().path_glob("tree/*"),
            10_000,
            Duration::from_millis(200),
        )
        .await
        .expect("initial mirror");
    let slave_dir = c.slaves[0].dir.clone();
    let arrivals = Arrivals::watch(&slave_dir);
    let started = Instant::now();
    fs::rename(c.master_dir().join("tree"), c.master_dir().join("renamed")).expect("rename");
    let arrived = arrivals.wait_for(&slave_dir.join("renamed"), Duration::from_secs(60));
    c.events
        .expect(Pattern::consume().by("slave").moved().path("renamed"))
        .await
        .expect("one move");
    let moves = c.events.count(&Pattern::notify().moved());
    let puts_after = c
        .events
        .count(&Pattern::notify().put().path_glob("renamed/**"));
    rows.push([
        "rename a dir of 10,000 files".into(),
        ms(arrived - started),
        format!("{moves} move event(s), {puts_after} puts"),
        String::new(),
    ]);
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows: Vec<[String; 4]> = Vec::new();
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    runtime.block_on(async {
        if only.as_deref().is_none_or(|o| o == "latency") {
            latency(&mut rows).await;
        }
        if only.as_deref().is_none_or(|o| o == "rename") {
            dir_rename(&mut rows).await;
        }
        if only.as_deref().is_none_or(|o| o == "large") {
            large_file(&mut rows).await;
        }
    });
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    println!();
    println!(
        "| {:<w0$} | {:>w1$} | {:<w2$} | {:<w3$} |",
        "workload",
        "result",
        "baseline",
        "ratio",
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2],
        w3 = widths[3]
    );
    println!(
        "|{}|{}|{}|{}|",
        "-".repeat(widths[0] + 2),
        "-".repeat(widths[1] + 2),
        "-".repeat(widths[2] + 2),
        "-".repeat(widths[3] + 2)
    );
    for row in &rows {
        println!(
            "| {:<w0$} | {:>w1$} | {:<w2$} | {:<w3$} |",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
}
