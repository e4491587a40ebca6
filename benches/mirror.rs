//! `cargo bench --bench mirror [-- w1 w2 ...]`: end-to-end measurements of the live mirror
//! against the tools people would use instead, in the same run, printed as a table. Run on
//! demand, never in CI's pass/fail path. Each workload starts from a mirrored state (a master
//! and one slave as real processes) and is timed until the slave has converged.
//!
//! | id | workload | compared with |
//! |---|---|---|
//! | W1 | one 4 KiB file, 50 times: close in master to rename in slave, p50/p90/p99 | the same write + rename done directly |
//! | W2 | a tree of 10,000 files of 4 KiB in 100 dirs appears in the master | `cp -a`, `rsync -a` of the same tree |
//! | W3 | one 1 GiB file appears in the master | `cp`, `rsync -a`, the floor (below) |
//! | W4 | a directory holding 10,000 files is renamed | `rsync -a --delete` after the rename |
//! | W5 | 10,000 files are deleted | `rsync -a --delete` after the delete |
//! | W6 | 100,000 files mirrored: peak memory of master and slave | |
//! | W7 | 1 MiB overwritten at the middle of a mirrored 1 GiB file | `rsync --no-whole-file` onto the old version |
//! | W8 | 1 MB inserted at the middle of a mirrored 1 GiB file | `rsync --no-whole-file` onto the old version |
//! | W9 | 100 B appended to a mirrored 100 MiB file, 100 times | |
//! | R1 | the churn scenario with `--keep-history 0`, `--minutes=N` (30): the bus's state over time | 1.3x the tree + 64 MiB |
//! | R2 | the same with a window (`--window=1h`): growth, then none once older than the window | |
//! | R3 | 100,000 unreferenced blobs collected while 4 KiB files are mirrored | |
//!
//! R1 to R3 run only when named (`cargo bench --bench mirror -- r1 --minutes=30`).
//! With `--tls`, W1 and W2 run again over mutual TLS after the plain run, in the same
//! process (`cargo bench --bench mirror -- w1 w2 --rounds=3 --tls`); with `--nats`, again
//! on a nats-server started for them (rows N1 and N2: `-- w1 w2 --rounds=3 --nats`), and
//! with `n3` W2 with ten slaves on it (`-- w2 n3 --nats`; compared with ten `cp -a` of the
//! tree run at once, what ten copies cost the machine by themselves); with `--nats-cluster`, W1 and W2
//! again on a 3-node NATS cluster, every stream replicated on all three.
//!
//! W3's floor is the work issue 13 asks of any mirror for a new file, done by this process
//! alone on the same machine, as parallel as it can be: the file read once; its SHA-256
//! (the notify's) on one thread; its chunks cut and each hashed (their addresses) and
//! written to a store file on another; the file sent once through a loopback socket (a
//! slave is another process, or on another machine) and written and hashed there (the
//! slave's check). No bus, no protocol, no event log: the least a master and a slave
//! that keep issue 13's promises can do here.
//!
//! W7 to W9 also say what moved, from the log: bytes the master uploaded and the slave
//! fetched (the notify's `uploaded`, the consume's `fetched`), and what the bus's state
//! grew by.
//!
//! In W2 and W3 the new content is moved into the master directory whole (a rename from a
//! staging directory), so every tool starts from the same complete tree. Arrival in the slave
//! is seen by an inotify watch on the slave directory (W1, W3, W4) or by the slave's consume
//! events (W2, W5, W6). "slave wrote" is the slave process's `wchar` (bytes it passed to
//! write calls) during the workload.
//!
//! Nothing a workload writes is removed until the table is printed, for two properties of
//! the machines this runs on (ext4 without a journal, mounted with `discard`, in a VM whose
//! freed memory goes back to the host): freed inodes are skipped by ext4's allocator for a
//! minute or more, so deleting one round's trees slowed every tool's file creation in the
//! next (`cp -a` of W2 took 0.35 s or 6.2 s depending on it), and a freed page-cache page is
//! fast to write again while a page the guest never touched costs a trip to the host, so a
//! tool writing right after another's output was removed got faster memory. Kept, every
//! tool writes new files into untouched memory, the same conditions for all.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use filesync::event::EntryKind;
use filesync::testkit::{slave_name, AgentLog, Backend, Cluster, Pattern};
use notify::{RecursiveMode, Watcher};

/// The binary under test: this build's, or `FILESYNC_BENCH_BIN` (another build of filesync,
/// to compare two versions in one run of the same harness).
fn bin() -> PathBuf {
    std::env::var_os("FILESYNC_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_filesync")))
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

/// The same ground for the tool timed next: memory the guest touched lately, and no
/// dirty pages left by the tools before it. It writes and deletes `gib` GiB in `dir`
/// (memory the guest has not touched for a while costs a trip to the host, and moved W7's
/// `rsync` between 1.4 and 4.5 s), then flushes every file system: the outputs each tool
/// leaves behind (W3's add up to 4 GiB) otherwise push the next writer past the kernel's
/// dirty limit, where its writes wait for the disk (docs/BENCHMARKS.md).
fn level_ground(dir: &Path, gib: usize) {
    let path = dir.join("warm");
    let mut file = fs::File::create(&path).expect("create");
    let block = vec![0u8; 1 << 20];
    for _ in 0..gib << 10 {
        file.write_all(&block).expect("write");
    }
    drop(file);
    fs::remove_file(&path).expect("remove");
    let synced = std::process::Command::new("sync").status();
    assert!(synced.is_ok_and(|s| s.success()), "sync failed");
}

/// Writes `len` random-looking bytes (a xorshift stream from `seed`) to `path`.
fn write_noise(path: &Path, len: usize, seed: u64) {
    let mut file = std::io::BufWriter::new(fs::File::create(path).expect("create"));
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len());
        file.write_all(&block[..n]).expect("write");
        left -= n;
    }
    file.into_inner().expect("flush").sync_all().expect("sync");
}

fn write_closed(path: &Path, data: &[u8]) {
    let mut file = fs::File::create(path).expect("create");
    file.write_all(data).expect("write");
}

/// One round's times: filesync, then cp and rsync when installed.
type Times = (Duration, Option<Duration>, Option<Duration>);

/// One line of the table.
#[derive(Default)]
struct Row {
    id: String,
    /// filesync, cp and rsync times, for the median row of repeated rounds.
    times: Option<Times>,
    workload: String,
    filesync: String,
    cp: String,
    rsync: String,
    ratio: String,
    slave_wrote: String,
    rss: String,
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        ms(d)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn ratio(ours: Duration, theirs: Option<Duration>, name: &str) -> String {
    match theirs {
        Some(theirs) if !theirs.is_zero() => {
            format!("{:.2}x {name}", ours.as_secs_f64() / theirs.as_secs_f64())
        }
        _ => String::new(),
    }
}

/// Runs a baseline tool; `None` when it is not installed.
fn timed(program: &str, args: &[&std::ffi::OsStr]) -> Option<Duration> {
    let started = Instant::now();
    let status = Command::new(program).args(args).status().ok()?;
    assert!(status.success(), "{program} failed");
    Some(started.elapsed())
}

fn show(d: Option<Duration>, tool: &str) -> String {
    d.map(secs)
        .unwrap_or_else(|| format!("({tool} not installed)"))
}

fn wchar(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar:").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// `dirs` directories of `files_per_dir` files of `size` bytes. Every file's content is
/// different (it starts with its own path), as in real trees: identical files would be stored
/// and fetched once by filesync but copied every time by `cp`, flattering filesync.
fn make_tree(root: &Path, dirs: usize, files_per_dir: usize, size: usize) {
    let mut block = vec![b'x'; size];
    for d in 0..dirs {
        let dir = root.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..files_per_dir {
            let name = format!("d{d:03}/f{f:04}\n");
            let stamp = name.len().min(size);
            block[..stamp].copy_from_slice(&name.as_bytes()[..stamp]);
            fs::write(dir.join(format!("f{f:04}")), &block).expect("write");
        }
    }
}

fn os(path: &Path) -> &std::ffi::OsStr {
    path.as_os_str()
}

/// A master and one slave, the master directory filled by `prepare` first, over TLS and
/// on the bus that `OVER` names, with timeouts long enough for the big workloads.
async fn cluster_with(label: &str, prepare: impl FnOnce(&Path)) -> Cluster {
    let over = *OVER.lock().expect("over");
    let mut builder = bench_builder(label).prepare(prepare).backend(over.backend);
    if over.tls {
        builder = builder.tls();
    }
    start(builder).await
}

/// A cluster as the bench runs it: agents log as a user's do (the kit's default, a debug
/// line per event for a failed test's logs, is work the tools compared with do not do).
fn bench_builder(label: &str) -> filesync::testkit::ClusterBuilder<'static> {
    Cluster::builder(&bin(), label).agent_log(AgentLog::Default)
}

/// Starts `builder`'s cluster with timeouts long enough for the big workloads.
async fn start(builder: filesync::testkit::ClusterBuilder<'_>) -> Cluster {
    let mut c = builder.start().await.expect("cluster");
    c.events.deadline = Duration::from_secs(1800);
    c.events.quiet = Duration::from_secs(120);
    c
}

/// How W1 and W2 run again after the plain run: over mutual TLS (`--tls`), on a NATS
/// server (`--nats`: N1 and N2), on a 3-node NATS cluster (`--nats-cluster`: "x3").
#[derive(Debug, Clone, Copy, Default)]
struct Over {
    tls: bool,
    backend: Backend,
}

static OVER: Mutex<Over> = Mutex::new(Over {
    tls: false,
    backend: Backend::Embedded,
});

/// W1 and W2 again `over` TLS or another bus, their rows renamed by `name`.
async fn again(rows: &mut Vec<Row>, rounds: usize, over: Over, name: impl Fn(&str) -> String) {
    *OVER.lock().expect("over") = over;
    let before = rows.len();
    w1(rows).await;
    for _ in 0..rounds {
        w2(rows).await;
    }
    push_median(rows, rounds, "cp -a");
    for row in &mut rows[before..] {
        row.id = name(&row.id);
    }
    *OVER.lock().expect("over") = Over::default();
}

/// Directories of finished workloads, removed after the table is printed (see the module
/// comment for why not before).
static LEFTOVERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Stops the cluster and keeps its directory for removal at the very end.
fn leave(mut c: Cluster) {
    let kept = c.keep();
    drop(c);
    LEFTOVERS.lock().expect("leftovers").push(kept);
}

/// Removes them, unless `FILESYNC_BENCH_KEEP` is set: then each is listed, its agents' and
/// servers' logs in `logs/`, for a look at a round that stands out.
fn remove_leftovers() {
    let keep = std::env::var_os("FILESYNC_BENCH_KEEP").is_some();
    for dir in LEFTOVERS.lock().expect("leftovers").drain(..) {
        match keep {
            true => eprintln!("kept: {}", dir.display()),
            false => {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

async fn cluster(label: &str) -> Cluster {
    cluster_with(label, |_| {}).await
}

async fn w1(rows: &mut Vec<Row>) {
    let mut c = cluster("bench-w1").await;
    let slave_dir = c.slaves[0].dir.clone();
    let arrivals = Arrivals::watch(&slave_dir);
    let data = vec![b'x'; 4096];
    let wrote_before = wchar(c.slave_pid(0).unwrap_or(0));
    let mut mirrored = Vec::new();
    for i in 0..50 {
        let name = format!("lat-{i}");
        let started = Instant::now();
        write_closed(&c.master_dir().join(&name), &data);
        let arrived = arrivals.wait_for(&slave_dir.join(&name), Duration::from_secs(10));
        mirrored.push(arrived - started);
        std::thread::sleep(Duration::from_millis(20));
    }
    let wrote = wchar(c.slave_pid(0).unwrap_or(0)) - wrote_before;
    let mut floor = Vec::new();
    for i in 0..50 {
        let name = format!("floor-{i}");
        let started = Instant::now();
        let temp = slave_dir.join(format!(".tmp-{i}"));
        write_closed(&temp, &data);
        fs::rename(&temp, slave_dir.join(&name)).expect("rename");
        floor.push(arrivals.wait_for(&slave_dir.join(&name), Duration::from_secs(10)) - started);
    }
    mirrored.sort();
    floor.sort();
    let triple = |v: &[Duration]| {
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            percentile(v, 0.5).as_secs_f64() * 1e3,
            percentile(v, 0.9).as_secs_f64() * 1e3,
            percentile(v, 0.99).as_secs_f64() * 1e3
        )
    };
    rows.push(Row {
        id: "W1".into(),
        workload: "4 KiB file x50, p50 / p90 / p99".into(),
        filesync: triple(&mirrored),
        cp: format!("floor {}", triple(&floor)),
        ratio: format!(
            "{:.0}x floor (p50)",
            percentile(&mirrored, 0.5).as_secs_f64() / percentile(&floor, 0.5).as_secs_f64()
        ),
        slave_wrote: mib(wrote),
        ..Row::default()
    });
    leave(c);
}

async fn w2(rows: &mut Vec<Row>) {
    let mut c = cluster("bench-w2").await;
    let stage = c.dir().join("stage");
    make_tree(&stage.join("w2"), 100, 100, 4096);
    let cp = timed(
        "cp",
        &[
            std::ffi::OsStr::new("-a"),
            os(&stage.join("w2")),
            os(&c.dir().join("cp-w2")),
        ],
    );
    let rsync = timed(
        "rsync",
        &[
            std::ffi::OsStr::new("-a"),
            os(&stage.join("w2/")),
            os(&c.dir().join("rsync-w2")),
        ],
    );
    let pid = c.slave_pid(0).unwrap_or(0);
    let wrote_before = wchar(pid);
    let started = Instant::now();
    fs::rename(stage.join("w2"), c.master_dir().join("w2")).expect("move in");
    c.events
        .expect_count(
            Pattern::consume()
                .by("slave")
                .put()
                .kind(EntryKind::File)
                .path_glob("w2/**"),
            10_000,
            Duration::ZERO,
        )
        .await
        .expect("all 10,000 mirrored");
    let took = started.elapsed();
    rows.push(Row {
        id: "W2".into(),
        times: Some((took, cp, rsync)),
        workload: "10,000 x 4 KiB files in 100 dirs".into(),
        filesync: secs(took),
        cp: show(cp, "cp"),
        rsync: show(rsync, "rsync"),
        ratio: [ratio(took, cp, "cp -a"), ratio(took, rsync, "rsync -a")].join(", "),
        slave_wrote: mib(wchar(pid) - wrote_before),
        rss: format!(
            "{:.1} / {:.1} MiB",
            peak_rss_mib(c.master_pid().unwrap_or(0)),
            peak_rss_mib(pid)
        ),
    });
    leave(c);
}

/// N3: W2 with ten slaves on one NATS server, timed until each slave has every file;
/// compared with one slave's time on NATS in the same run (N2, when it ran first).
async fn n3(rows: &mut Vec<Row>) {
    const SLAVES: usize = 10;
    let mut c = start(
        bench_builder("bench-n3")
            .backend(Backend::Nats)
            .slaves(SLAVES),
    )
    .await;
    let stage = c.dir().join("stage");
    make_tree(&stage.join("w2"), 100, 100, 4096);
    let started = Instant::now();
    fs::rename(stage.join("w2"), c.master_dir().join("w2")).expect("move in");
    let mut converged = Vec::new();
    for idx in 0..SLAVES {
        let files = Pattern::consume()
            .by(&slave_name(idx))
            .put()
            .kind(EntryKind::File)
            .path_glob("w2/**");
        c.events
            .expect_count(files, 10_000, Duration::ZERO)
            .await
            .expect("all 10,000 mirrored by every slave");
        converged.push(started.elapsed());
    }
    let last = converged.iter().max().copied().unwrap_or_default();
    // What ten copies of the tree cost this machine by themselves: ten `cp -a` at once, the
    // floor of ten slaves on one machine (each writes every file).
    let copies = Instant::now();
    let mut running: Vec<_> = (0..SLAVES)
        .map(|idx| {
            Command::new("cp")
                .arg("-a")
                .arg(c.master_dir().join("w2"))
                .arg(stage.join(format!("cp{idx}")))
                .spawn()
                .expect("cp")
        })
        .collect();
    for cp in &mut running {
        assert!(cp.wait().expect("cp").success(), "cp failed");
    }
    let copies = copies.elapsed();
    // One slave's time: N2's, the median of its rounds when there were several.
    let one = median(
        rows.iter()
            .filter(|r| r.id.starts_with("N2"))
            .filter_map(|r| r.times.map(|t| t.0))
            .collect(),
    );
    let ratio = match one {
        Some(one) => format!(
            "{:.2}x one slave (N2), {:.2}x ten cp -a",
            last.as_secs_f64() / one.as_secs_f64(),
            last.as_secs_f64() / copies.as_secs_f64()
        ),
        None => "run with w2 --nats for one slave's time".into(),
    };
    rows.push(Row {
        id: "N3 NATS".into(),
        times: None,
        workload: format!("W2 with {SLAVES} slaves, the last one converged"),
        filesync: secs(last),
        cp: format!("x{SLAVES} at once {}", secs(copies)),
        rsync: String::new(),
        ratio,
        slave_wrote: String::new(),
        rss: format!(
            "{:.1} MiB master",
            peak_rss_mib(c.master_pid().unwrap_or(0))
        ),
    });
    leave(c);
}

async fn w3(rows: &mut Vec<Row>) {
    let mut c = cluster("bench-w3").await;
    let stage = c.dir().join("stage");
    fs::create_dir_all(&stage).expect("mkdir");
    let source = stage.join("big.bin");
    // Random bytes, as in a video or an archive: nothing in it repeats, so chunks store and
    // move all of it (mostly-zero content would flatter filesync, whose chunks dedupe it).
    write_noise(&source, 1 << 30, 3);
    // Each tool on the same ground (see `level_ground`).
    level_ground(&stage, 2);
    let cp = timed("cp", &[os(&source), os(&stage.join("cp.bin"))]);
    level_ground(&stage, 2);
    let rsync = timed(
        "rsync",
        &[
            std::ffi::OsStr::new("-a"),
            os(&source),
            os(&stage.join("rsync.bin")),
        ],
    );
    level_ground(&stage, 2);
    let floor = floor(
        &source,
        &stage.join("floor-store"),
        &stage.join("floor.bin"),
    );
    let slave_dir = c.slaves[0].dir.clone();
    let arrivals = Arrivals::watch(&slave_dir);
    let pid = c.slave_pid(0).unwrap_or(0);
    let master = c.master_pid().unwrap_or(0);
    let wrote_before = wchar(pid);
    let all_before = wrote_before + wchar(master);
    level_ground(&stage, 2);
    let started = Instant::now();
    fs::rename(&source, c.master_dir().join("big.bin")).expect("move in");
    let took = arrivals.wait_for(&slave_dir.join("big.bin"), Duration::from_secs(900)) - started;
    let all_wrote = wchar(pid) + wchar(master) - all_before;
    rows.push(Row {
        id: "W3".into(),
        times: Some((took, cp, rsync)),
        workload: "one 1 GiB file".into(),
        filesync: secs(took),
        cp: show(cp, "cp"),
        rsync: show(rsync, "rsync"),
        ratio: [
            ratio(took, cp, "cp"),
            ratio(took, rsync, "rsync -a"),
            format!(
                "floor {} ({})",
                secs(floor),
                ratio(floor, rsync, "rsync -a")
            ),
        ]
        .join(", "),
        slave_wrote: format!(
            "{} (all: {})",
            mib(wchar(pid) - wrote_before),
            mib(all_wrote)
        ),
        rss: format!(
            "{:.1} / {:.1} MiB",
            peak_rss_mib(c.master_pid().unwrap_or(0)),
            peak_rss_mib(pid)
        ),
    });
    leave(c);
}

/// W3's floor (see the module comment): how long the required work on `source` takes with
/// nothing else, writing the store's copy to `store` and the mirror's to `mirror`.
fn floor(source: &Path, store: &Path, mirror: &Path) -> Duration {
    use filesync_master::chunk::Chunker;
    use filesync_master::hash::ContentHash;
    use sha2::{Digest, Sha256};
    use std::io::Read;
    use std::sync::Arc;

    type Piece = Arc<Vec<u8>>;
    fn worker(work: impl FnOnce(mpsc::Receiver<Piece>) + Send + 'static) -> WorkerEnd {
        let (tx, rx) = mpsc::sync_channel::<Piece>(8);
        (tx, std::thread::spawn(move || work(rx)))
    }
    type WorkerEnd = (mpsc::SyncSender<Piece>, std::thread::JoinHandle<()>);

    let started = Instant::now();
    let whole = worker(|rx| {
        let mut sha = Sha256::new();
        rx.iter().for_each(|piece| sha.update(&piece[..]));
        std::hint::black_box(sha.finalize());
    });
    let mut store =
        std::io::BufWriter::with_capacity(1 << 20, fs::File::create(store).expect("store"));
    let chunks = worker(move |rx| {
        let mut chunker = Chunker::new();
        let mut out = |chunk: &[u8]| {
            std::hint::black_box(ContentHash::of(chunk));
            store.write_all(chunk).expect("store write");
        };
        rx.iter().for_each(|piece| chunker.push(&piece, &mut out));
        chunker.finish(&mut out);
        store.flush().expect("store flush");
    });
    // The slave's side: the bytes cross a loopback socket once, as they must reach a slave
    // in another process (or on another machine), then are written and hashed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let mut to_slave =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut from_master, _) = listener.accept().expect("accept");
    let mut copy = fs::File::create(mirror).expect("mirror");
    let slave = std::thread::spawn(move || {
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = from_master.read(&mut buf).expect("receive");
            if n == 0 {
                break;
            }
            copy.write_all(&buf[..n]).expect("mirror write");
            sha.update(&buf[..n]);
        }
        std::hint::black_box(sha.finalize());
    });
    let mirrored = worker(move |rx| {
        for piece in rx {
            to_slave.write_all(&piece).expect("send");
        }
    });
    let mut file = fs::File::open(source).expect("open");
    let ends = [whole, chunks, mirrored];
    loop {
        let mut piece = vec![0u8; 1 << 20];
        let n = file.read(&mut piece).expect("read");
        if n == 0 {
            break;
        }
        piece.truncate(n);
        let piece = Arc::new(piece);
        for (tx, _) in &ends {
            tx.send(piece.clone()).expect("worker");
        }
    }
    for (tx, thread) in ends {
        drop(tx);
        thread.join().expect("worker");
    }
    slave.join().expect("slave");
    started.elapsed()
}

/// W4 and W5 share one mirrored tree of 10,000 files.
async fn w4_w5(rows: &mut Vec<Row>, run_w4: bool, run_w5: bool) {
    let mut c = cluster_with("bench-w4", |m| make_tree(&m.join("tree"), 100, 100, 4096)).await;
    c.events
        .expect_count(
            Pattern::consume().by("slave").put().kind(EntryKind::File),
            10_000,
            Duration::ZERO,
        )
        .await
        .expect("initial mirror");
    let mirror = c.dir().join("rsync-mirror");
    let rsync_sync = |c: &Cluster| {
        timed(
            "rsync",
            &[
                std::ffi::OsStr::new("-a"),
                std::ffi::OsStr::new("--delete"),
                os(&c.master_dir().join("")),
                os(&mirror),
            ],
        )
    };
    let have_rsync = rsync_sync(&c).is_some();
    let slave_dir = c.slaves[0].dir.clone();
    let pid = c.slave_pid(0).unwrap_or(0);
    if run_w4 {
        let arrivals = Arrivals::watch(&slave_dir);
        let wrote_before = wchar(pid);
        let started = Instant::now();
        fs::rename(c.master_dir().join("tree"), c.master_dir().join("renamed")).expect("rename");
        let took = arrivals.wait_for(&slave_dir.join("renamed"), Duration::from_secs(60)) - started;
        c.events
            .expect(Pattern::consume().by("slave").moved().path("renamed"))
            .await
            .expect("one move");
        let rsync = if have_rsync { rsync_sync(&c) } else { None };
        let moves = c.events.count(&Pattern::notify().moved());
        let puts = c
            .events
            .count(&Pattern::notify().put().path_glob("renamed/**"));
        rows.push(Row {
            id: "W4".into(),
            workload: format!("rename a dir of 10,000 files ({moves} move event, {puts} puts)"),
            filesync: secs(took),
            rsync: format!("{} (--delete)", show(rsync, "rsync")),
            ratio: ratio(took, rsync, "rsync"),
            slave_wrote: mib(wchar(pid) - wrote_before),
            ..Row::default()
        });
    }
    if run_w5 {
        let victim = if run_w4 { "renamed" } else { "tree" };
        let wrote_before = wchar(pid);
        let started = Instant::now();
        fs::remove_dir_all(c.master_dir().join(victim)).expect("rm -rf");
        // The user's own rm -rf is part of the time (the mirror starts during it), and on
        // some file systems it is most of it: shown apart, and the ratio to rsync (which
        // only deletes in its mirror) uses the time after it.
        let removed = started.elapsed();
        c.events
            .expect(Pattern::consume().by("slave").delete().path(victim))
            .await
            .expect("deleted");
        let took = started.elapsed();
        assert!(!slave_dir.join(victim).exists());
        let rsync = if have_rsync { rsync_sync(&c) } else { None };
        rows.push(Row {
            id: "W5".into(),
            workload: format!("delete 10,000 files (the rm -rf itself: {})", secs(removed)),
            filesync: secs(took),
            rsync: format!("{} (--delete)", show(rsync, "rsync")),
            ratio: ratio(took - removed, rsync, "rsync, after the rm"),
            slave_wrote: mib(wchar(pid) - wrote_before),
            ..Row::default()
        });
    }
    leave(c);
}

async fn w6(rows: &mut Vec<Row>) {
    let prepared = Instant::now();
    let mut c = cluster_with("bench-w6", |m| make_tree(&m.join("many"), 1000, 100, 1024)).await;
    c.events
        .expect_count(
            Pattern::consume().by("slave").put().kind(EntryKind::File),
            100_000,
            Duration::ZERO,
        )
        .await
        .expect("100,000 mirrored");
    let took = prepared.elapsed();
    let master = peak_rss_mib(c.master_pid().unwrap_or(0));
    let slave = peak_rss_mib(c.slave_pid(0).unwrap_or(0));
    rows.push(Row {
        id: "W6".into(),
        workload: "100,000 files mirrored (1 KiB each, from start)".into(),
        filesync: secs(took),
        rss: format!("{master:.1} / {slave:.1} MiB"),
        ratio: "target < 50 MiB each".into(),
        ..Row::default()
    });
    leave(c);
}

/// A 1 GiB file (random content) mirrored, and a copy of it for `rsync` to update.
async fn mirrored_gib(label: &str) -> (Cluster, PathBuf) {
    let mut c = cluster(label).await;
    let stage = c.dir().join("stage");
    fs::create_dir_all(&stage).expect("mkdir");
    let source = stage.join("big.bin");
    write_noise(&source, 1 << 30, 7);
    let old_copy = stage.join("rsync-target.bin");
    fs::copy(&source, &old_copy).expect("copy for rsync");
    fs::rename(&source, c.master_dir().join("big.bin")).expect("move in");
    c.events
        .expect(Pattern::consume().by("slave").put().path("big.bin"))
        .await
        .expect("mirrored");
    (c, old_copy)
}

/// What a change moved, from the log and the bus's state: the last put of `path`'s notify
/// `uploaded`, its consume's `fetched`, and how much the state grew since `state_before`.
fn moved(c: &Cluster, path: &str, state_before: u64) -> String {
    let seen = c.events.seen();
    let last = |tag: filesync::event::Tag| {
        seen.iter()
            .rev()
            .find(|e| e.tag() == Some(tag) && e.body.path.as_deref() == Some(path))
    };
    let uploaded = last(filesync::event::Tag::Notify).and_then(|e| e.body.uploaded);
    let fetched = last(filesync::event::Tag::Consume).and_then(|e| e.body.fetched);
    let grew = filesync::state::dir_bytes(&c.master_state()).saturating_sub(state_before);
    format!(
        "up {} / fetched {} / stored {}",
        uploaded.map(mib).unwrap_or_default(),
        fetched.map(mib).unwrap_or_default(),
        mib(grew)
    )
}

/// W7 (an overwrite) and W8 (an insertion) in the middle of a mirrored 1 GiB file, timed
/// until the slave's consume, against `rsync --no-whole-file` updating the old version.
async fn w7_w8(rows: &mut Vec<Row>, insert: bool) {
    let (id, what) = if insert {
        ("W8", "1 MB inserted at the middle of 1 GiB")
    } else {
        ("W7", "1 MiB overwritten at the middle of 1 GiB")
    };
    let (mut c, rsync_target) = mirrored_gib(&format!("bench-{}", id.to_lowercase())).await;
    let path = c.master_dir().join("big.bin");
    let middle = (512 << 20) + 4321;
    let mut patch = vec![0u8; if insert { 1_000_000 } else { 1 << 20 }];
    let mut state = 11u64;
    for b in patch.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
    let edited = c.dir().join("stage").join("edited.bin");
    if insert {
        // Written whole beside, as an editor saves, then renamed in.
        let old = fs::read(&path).expect("read");
        let mut file = std::io::BufWriter::new(fs::File::create(&edited).expect("create"));
        file.write_all(&old[..middle]).expect("write");
        file.write_all(&patch).expect("write");
        file.write_all(&old[middle..]).expect("write");
        file.into_inner().expect("flush").sync_all().expect("sync");
    } else {
        fs::copy(&path, &edited).expect("copy");
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&edited)
            .expect("open");
        std::os::unix::fs::FileExt::write_all_at(&file, &patch, middle as u64).expect("write");
        file.sync_all().expect("sync");
    }
    level_ground(c.dir(), 2);
    let rsync = timed(
        "rsync",
        &[
            std::ffi::OsStr::new("-a"),
            std::ffi::OsStr::new("--no-whole-file"),
            os(&edited),
            os(&rsync_target),
        ],
    );
    level_ground(c.dir(), 2);
    let state_before = filesync::state::dir_bytes(&c.master_state());
    let started = Instant::now();
    fs::rename(&edited, &path).expect("move in");
    c.events
        .expect(
            Pattern::consume()
                .by("slave")
                .put()
                .path("big.bin")
                .with("the edited version", |e| {
                    e.body.fetched.is_some_and(|f| f < 1 << 30)
                }),
        )
        .await
        .expect("edit mirrored");
    let took = started.elapsed();
    rows.push(Row {
        id: id.into(),
        workload: what.into(),
        filesync: secs(took),
        rsync: show(rsync, "rsync"),
        ratio: ratio(took, rsync, "rsync --no-whole-file"),
        slave_wrote: moved(&c, "big.bin", state_before),
        ..Row::default()
    });
    leave(c);
}

/// W9: 100 B appended to a mirrored 100 MiB file, 100 times, each waited for.
async fn w9(rows: &mut Vec<Row>) {
    let mut c = cluster("bench-w9").await;
    let path = c.master_dir().join("log.bin");
    write_noise(&path, 100 << 20, 9);
    c.events
        .expect(Pattern::consume().by("slave").put().path("log.bin"))
        .await
        .expect("mirrored");
    let state_before = filesync::state::dir_bytes(&c.master_state());
    let started = Instant::now();
    let (mut uploaded, mut fetched) = (0u64, 0u64);
    for i in 0..100u32 {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        file.write_all(&[i as u8; 100]).expect("append");
        drop(file);
        let size = (100 << 20) + 100 * (u64::from(i) + 1);
        let consume = c
            .events
            .expect(
                Pattern::consume()
                    .by("slave")
                    .put()
                    .path("log.bin")
                    .with("this append", move |e| e.body.size == Some(size)),
            )
            .await
            .expect("append mirrored");
        fetched += consume.body.fetched.unwrap_or(0);
        uploaded += c
            .events
            .seen()
            .iter()
            .find(|e| e.seq == consume.body.cause.unwrap_or(0))
            .and_then(|n| n.body.uploaded)
            .unwrap_or(0);
    }
    let took = started.elapsed();
    let grew = filesync::state::dir_bytes(&c.master_state()).saturating_sub(state_before);
    rows.push(Row {
        id: "W9".into(),
        workload: "100 B appended to 100 MiB, 100 times".into(),
        filesync: format!("{} ({} each)", secs(took), secs(took / 100)),
        ratio: "goal: state growth <= 2 MiB per append".into(),
        slave_wrote: format!(
            "per append: up {} / fetched {} / stored {}",
            mib(uploaded / 100),
            mib(fetched / 100),
            mib(grew / 100)
        ),
        ..Row::default()
    });
    leave(c);
}

/// R1 and R2: the churn scenario (`fixtures/scenarios/churn.json`) for `minutes`, keeping
/// `window` of history, the large file rewritten every 400 ms (5 MiB/s of new bytes), and
/// the collector's grace and interval short enough for the bound to mean something: the
/// state holds every unique byte of the last grace + interval, and this churn makes 15 to
/// 25 MiB of them a second (measured: a 2 s grace with a 1 s interval peaked at 129 MiB
/// for a 17 MiB tree; see docs/BENCHMARKS.md).
async fn r1_r2(rows: &mut Vec<Row>, id: &str, window: &str, minutes: f64) {
    use filesync::testkit::scenario;
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scenarios/churn.json");
    let mut churn = scenario::load(&file).expect("churn scenario");
    churn.bus_args = [
        "--keep-history",
        window,
        "--gc-interval",
        "500ms",
        "--gc-grace",
        "1s",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    churn.expect.state = (id == "R1").then_some(scenario::format::StateBound {
        max_ratio: 1.3,
        plus_mib: 64.0,
    });
    for action in &mut churn.actions {
        if action.action == "large_file" {
            action.every_ms = Some(400);
        }
    }
    let report = scenario::run(&churn, &bin(), Some(minutes * 60.0))
        .await
        .expect("churn run");
    let state = report.state.clone().unwrap_or_default();
    let series: Vec<String> = state
        .series
        .iter()
        .step_by((state.series.len() / 10).max(1))
        .map(|(t, s, _)| format!("{:.0}s {:.0}", t, *s as f64 / (1 << 20) as f64))
        .collect();
    let verdict = if id == "R2" {
        window_verdict(&state, window)
    } else if report.passed {
        "passed".into()
    } else {
        format!("FAILED: {}", report.failures.join("; "))
    };
    let rewrites = report
        .actions
        .iter()
        .find(|a| a.label.starts_with("large_file"))
        .map_or(0, |a| a.runs);
    rows.push(Row {
        id: id.into(),
        workload: format!(
            "{minutes} min of churn, --keep-history {window}: {rewrites} rewrites of 2 MiB"
        ),
        filesync: format!(
            "max {} (tree {}) over the 2nd half, {} at the end",
            mib(state.max_state_bytes),
            mib(state.tree_bytes_at_max),
            mib(state.final_state_bytes)
        ),
        ratio: verdict,
        slave_wrote: format!("state MiB over time: {}", series.join(", ")),
        ..Row::default()
    });
}

/// R2's goal: once the run is older than the window, the state stays within what the window
/// holds: the content uploaded in the last window and a segment (the keeper closes segments
/// at an eighth of it, so up to 9/8 of a window is retained), times 1.25 (a pack is
/// repacked once a fifth of it is dead), plus the tree and 64 MiB (the pack appends go to,
/// the log, checkpoints, a grace period's uploads). "Growth matches the churn's unique
/// bytes": the state is shown against the window's uploads at each sample.
fn window_verdict(state: &filesync::testkit::scenario::run::StateStats, window: &str) -> String {
    let Ok(window) = humantime::parse_duration(window) else {
        return format!("bad --window {window}");
    };
    let retained = window.as_secs_f64() * 9.0 / 8.0;
    let by = |t: f64| {
        state
            .series
            .iter()
            .zip(&state.uploaded)
            .take_while(|((at, _, _), _)| *at <= t)
            .last()
            .map_or(0, |(_, up)| *up)
    };
    let mut worst: Option<(f64, u64, u64)> = None;
    let mut shown = Vec::new();
    for (&(t, bytes, tree), &up) in state.series.iter().zip(&state.uploaded) {
        if t < retained {
            continue;
        }
        let held = up - by(t - retained);
        let bound = 1.25 * held as f64 + tree as f64 + 64.0 * (1 << 20) as f64;
        shown.push(format!("{t:.0}s {:.2}", bytes as f64 / held.max(1) as f64));
        if bytes as f64 > bound && worst.is_none() {
            worst = Some((t, bytes, held));
        }
    }
    let step = shown.len().div_ceil(8).max(1);
    let shown: Vec<String> = shown.into_iter().step_by(step).collect();
    let ratios = format!("state / window's uploads: {}", shown.join(", "));
    match worst {
        None => format!("met ({ratios})"),
        Some((t, bytes, held)) => format!(
            "NOT met at {t:.0}s: {} against {} uploaded in the window ({ratios})",
            mib(bytes),
            mib(held)
        ),
    }
}

/// R3: a store of 100,000 blobs (a mirrored tree of 100,000 files of 1 KiB, then deleted)
/// collected at once (`--gc-grace 0s`), while a 4 KiB file is written every 20 ms: how
/// long the pass took (the bus's log says), the bus's resident memory while it ran, and the
/// latency of those writes against the same writes before.
async fn r3(rows: &mut Vec<Row>) {
    // -v: the bus says what each collection pass removed and how long it took.
    let mut c = start(bench_builder("bench-r3").master_args(&[
        "-v",
        "--keep-history",
        "0",
        "--gc-interval",
        "3s",
        "--gc-grace",
        "0s",
    ]))
    .await;
    // Moved in once the slave is ready: a slave that has to catch up on 100,000 files
    // before it is ready would outlast the kit's start timeout.
    let stage = c.dir().join("stage");
    make_tree(&stage.join("many"), 1000, 100, 1024);
    fs::rename(stage.join("many"), c.master_dir().join("many")).expect("move in");
    c.events
        .expect_count(
            Pattern::consume().by("slave").put().kind(EntryKind::File),
            100_000,
            Duration::ZERO,
        )
        .await
        .expect("100,000 mirrored");
    let slave_dir = c.slaves[0].dir.clone();
    let arrivals = Arrivals::watch(&slave_dir);
    let latency = |c: &Cluster, tag: &str, n: usize| {
        let mut samples = Vec::new();
        for i in 0..n {
            let name = format!("{tag}-{i}");
            let started = Instant::now();
            write_closed(&c.master_dir().join(&name), &[b'r'; 4096]);
            let took = arrivals.wait_for(&slave_dir.join(&name), Duration::from_secs(30)) - started;
            samples.push((started, took));
            std::thread::sleep(Duration::from_millis(20));
        }
        samples
    };
    let before: Vec<Duration> = latency(&c, "before", 50).into_iter().map(|s| s.1).collect();
    let pid = c.master_pid().unwrap_or(0);
    let rss = |pid: u32| -> f64 {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    let idle_rss = rss(pid);
    fs::remove_dir_all(c.master_dir().join("many")).expect("rm");
    c.events
        .expect(Pattern::consume().by("slave").delete().path("many"))
        .await
        .expect("delete mirrored");
    // Sample the bus's memory while the writes go on; the pass comes within 2 intervals.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak = std::sync::Arc::new(Mutex::new(0f64));
    let sampler = {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let now = rss(pid);
                let mut peak = peak.lock().expect("peak");
                *peak = peak.max(now);
                drop(peak);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let during = latency(&c, "during", 400);
    let said = c
        .master_says("collected", Duration::from_secs(60))
        .expect("a collection");
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let peak_rss = *peak.lock().expect("peak");
    let mut before = before;
    before.sort();
    let mut during: Vec<Duration> = during.into_iter().map(|s| s.1).collect();
    during.sort();
    let took = said.rsplit(" in ").next().unwrap_or("?").trim().to_owned();
    rows.push(Row {
        id: "R3".into(),
        workload: "collect 100,000 unreferenced blobs (1 KiB files, deleted)".into(),
        filesync: format!("pass {took}: {}", said.trim()),
        ratio: format!(
            "W1 p50 / p99 before {} / {}, during {} / {}",
            ms(percentile(&before, 0.5)),
            ms(percentile(&before, 0.99)),
            ms(percentile(&during, 0.5)),
            ms(percentile(&during, 0.99))
        ),
        rss: format!("bus RSS {idle_rss:.1} MiB idle, {peak_rss:.1} MiB peak during"),
        ..Row::default()
    });
    leave(c);
}

fn median(mut values: Vec<Duration>) -> Option<Duration> {
    values.sort();
    values.get(values.len() / 2).copied()
}

/// After `rounds` rows of one workload, a row of their medians: times, and the median of the
/// per-round ratios (each ratio is taken within one round, under the same disk conditions).
fn push_median(rows: &mut Vec<Row>, rounds: usize, cp_name: &str) {
    if rounds < 2 || rows.len() < rounds {
        return;
    }
    let last = &rows[rows.len() - rounds..];
    let times: Vec<_> = last.iter().filter_map(|r| r.times).collect();
    let ours = median(times.iter().map(|t| t.0).collect());
    let ratio_to = |pick: fn(&Times) -> Option<Duration>| {
        let ratios: Vec<f64> = times
            .iter()
            .filter_map(|t| {
                pick(t)
                    .filter(|d| !d.is_zero())
                    .map(|d| t.0.as_secs_f64() / d.as_secs_f64())
            })
            .collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied()
    };
    let cp = median(times.iter().filter_map(|t| t.1).collect());
    let rsync = median(times.iter().filter_map(|t| t.2).collect());
    let mut ratio = Vec::new();
    if let Some(r) = ratio_to(|t| t.1) {
        ratio.push(format!("{r:.2}x {cp_name}"));
    }
    if let Some(r) = ratio_to(|t| t.2) {
        ratio.push(format!("{r:.2}x rsync -a"));
    }
    let id = format!("{} median of {rounds}", last[0].id);
    let workload = last[0].workload.clone();
    for (n, row) in rows.iter_mut().rev().take(rounds).rev().enumerate() {
        row.id = format!("{} #{}", row.id, n + 1);
    }
    rows.push(Row {
        id,
        workload,
        filesync: ours.map(secs).unwrap_or_default(),
        cp: show(cp, "cp"),
        rsync: show(rsync, "rsync"),
        ratio: ratio.join(", "),
        ..Row::default()
    });
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.to_lowercase())
        .collect();
    let want = |id: &str| wanted.is_empty() || wanted.iter().any(|w| w == id);
    // The retention workloads run for minutes: only when named (`cargo bench --bench
    // mirror -- r1 --minutes=30`).
    let named = |id: &str| wanted.iter().any(|w| w == id);
    let minutes: f64 = std::env::args()
        .find_map(|a| a.strip_prefix("--minutes=").map(str::to_owned))
        .map(|n| n.parse().expect("--minutes=N takes a number"))
        .unwrap_or(30.0);
    // The disk's speed varies a lot from one minute to the next (see docs/BENCHMARKS.md), so
    // the workloads compared with cp and rsync can be repeated; each round times all three
    // tools back to back, and a median row follows the rounds.
    let rounds: usize = std::env::args()
        .find_map(|a| a.strip_prefix("--rounds=").map(str::to_owned))
        .map(|n| n.parse().expect("--rounds=N takes a number"))
        .unwrap_or(1);
    let mut rows: Vec<Row> = Vec::new();
    runtime.block_on(async {
        if want("w1") {
            w1(&mut rows).await;
        }
        if want("w2") {
            for _ in 0..rounds {
                w2(&mut rows).await;
            }
            push_median(&mut rows, rounds, "cp -a");
        }
        if want("w3") {
            for _ in 0..rounds {
                w3(&mut rows).await;
            }
            push_median(&mut rows, rounds, "cp");
        }
        // W6 before W4 and W5: those delete 10,000 files, which slows file creation for
        // a while after (see the module comment).
        if want("w6") {
            w6(&mut rows).await;
        }
        if want("w4") || want("w5") {
            w4_w5(&mut rows, want("w4"), want("w5")).await;
        }
        if want("w7") {
            w7_w8(&mut rows, false).await;
        }
        if want("w8") {
            w7_w8(&mut rows, true).await;
        }
        if want("w9") {
            w9(&mut rows).await;
        }
        // W1 and W2 again over mutual TLS, then on NATS (N1, N2), in the same run as the
        // plain ones above.
        for (flag, tls, backend, suffix) in [
            ("--tls", true, Backend::Embedded, " TLS"),
            ("--nats", false, Backend::Nats, " NATS"),
            ("--nats-cluster", false, Backend::NatsCluster, " NATS x3"),
        ] {
            if std::env::args().any(|a| a == flag) {
                let over = Over { tls, backend };
                // Rows on NATS are N1 and N2 (issue 16's names); over TLS, W1 and W2.
                let on_nats = backend != Backend::Embedded;
                again(&mut rows, rounds, over, |id| match on_nats {
                    true => id.replacen('W', "N", 1) + suffix,
                    false => format!("{id}{suffix}"),
                })
                .await;
            }
        }
        if named("n3") {
            n3(&mut rows).await;
        }
        if named("r1") {
            r1_r2(&mut rows, "R1", "0", minutes).await;
        }
        if named("r2") {
            let window = std::env::args()
                .find_map(|a| a.strip_prefix("--window=").map(str::to_owned))
                .unwrap_or_else(|| "1h".into());
            r1_r2(&mut rows, "R2", &window, minutes).await;
        }
        if named("r3") {
            r3(&mut rows).await;
        }
    });
    // Shown in id order, whatever order they ran in.
    rows.sort_by(|a, b| a.id.get(..2).cmp(&b.id.get(..2)));
    let header = Row {
        id: "id".into(),
        workload: "workload".into(),
        filesync: "filesync".into(),
        cp: "cp".into(),
        rsync: "rsync".into(),
        ratio: "ratio".into(),
        slave_wrote: "slave wrote / moved".into(),
        rss: "peak RSS master / slave".into(),
        times: None,
    };
    let cells = |r: &Row| {
        [
            r.id.to_owned(),
            r.workload.clone(),
            r.filesync.clone(),
            r.cp.clone(),
            r.rsync.clone(),
            r.ratio.clone(),
            r.slave_wrote.clone(),
            r.rss.clone(),
        ]
    };
    let all: Vec<[String; 8]> = std::iter::once(&header)
        .chain(rows.iter())
        .map(cells)
        .collect();
    let widths: Vec<usize> = (0..8)
        .map(|i| all.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    println!();
    for (idx, row) in all.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("| {} |", line.join(" | "));
        if idx == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", rule.join("-|-"));
        }
    }
    remove_leftovers();
}
