//! The actions a scenario can name, each a plain async function of the kit. File actions
//! work in the master directory; agent actions restart, crash or pause agents of the
//! cluster. Actions that can run for long (bursts, large files, pauses) watch the scenario's
//! kill switch and stop cleanly when it is pulled.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::testkit::Cluster;

/// What an action works on.
#[derive(Clone)]
pub struct ActionCtx {
    pub master_dir: PathBuf,
    pub cluster: Arc<Mutex<Cluster>>,
    /// Pulled when the scenario ends: long actions stop at their next step.
    pub cancel: CancellationToken,
}

/// An action's parameters, with `{n}` in strings replaced by how many times it ran before.
pub struct Params<'a> {
    map: &'a Map<String, Value>,
    n: u64,
}

impl<'a> Params<'a> {
    pub fn new(map: &'a Map<String, Value>, n: u64) -> Params<'a> {
        Params { map, n }
    }

    pub fn string(&self, key: &str) -> Option<String> {
        self.map
            .get(key)
            .and_then(Value::as_str)
            .map(|s| s.replace("{n}", &self.n.to_string()))
    }

    fn required(&self, key: &str) -> Result<String, String> {
        self.string(key)
            .ok_or_else(|| format!("missing parameter `{key}`"))
    }

    fn number(&self, key: &str, default: u64) -> u64 {
        self.map.get(key).and_then(Value::as_u64).unwrap_or(default)
    }

    /// Content: `content` if given, else `size` bytes, else a line naming the run.
    fn content(&self, default: &str) -> Vec<u8> {
        if let Some(content) = self.string("content") {
            return content.into_bytes();
        }
        match self.map.get("size").and_then(Value::as_u64) {
            Some(size) => (0..size)
                .map(|i| (i as u8).wrapping_add(self.n as u8))
                .collect(),
            None => format!("{default} {}\n", self.n).into_bytes(),
        }
    }
}

fn io(what: &str, path: &std::path::Path, err: std::io::Error) -> String {
    format!("{what} {}: {err}", path.display())
}

impl ActionCtx {
    fn path(&self, params: &Params<'_>, key: &str) -> Result<PathBuf, String> {
        Ok(self.master_dir.join(params.required(key)?))
    }

    fn write(&self, path: &std::path::Path, content: &[u8]) -> Result<(), String> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
        }
        fs::write(path, content).map_err(|e| io("write", path, e))
    }
}

/// Runs action `name` once; `n` is how many times it ran before.
pub async fn run(
    ctx: &ActionCtx,
    name: &str,
    params: &Map<String, Value>,
    n: u64,
) -> Result<(), String> {
    let p = Params::new(params, n);
    match name {
        "create" => create(ctx, &p),
        "modify" => modify(ctx, &p),
        "append" => append(ctx, &p),
        "delete" => delete(ctx, &p),
        "move_file" | "move_dir" => move_path(ctx, &p),
        "make_tree" => make_tree(ctx, &p),
        "burst" => burst(ctx, &p).await,
        "large_file" => large_file(ctx, &p).await,
        "editor_save" => editor_save(ctx, &p),
        "restart_agent" => restart_agent(ctx, &p).await,
        "crash_agent" => crash_agent(ctx, &p).await,
        "pause_agent" => pause_agent(ctx, &p).await,
        other => Err(format!("unknown action `{other}`")),
    }
}

/// Writes a new file (parents created).
pub fn create(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    ctx.write(&ctx.path(p, "path")?, &p.content("created"))
}

/// Rewrites an existing file with new content.
pub fn modify(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    let path = ctx.path(p, "path")?;
    if !path.is_file() {
        return Err(format!("nothing to modify at {}", path.display()));
    }
    ctx.write(&path, &p.content("modified"))
}

/// Appends to a file (created, with its parents, if missing).
pub fn append(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    let path = ctx.path(p, "path")?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io("open", &path, e))?;
    file.write_all(&p.content("appended"))
        .map_err(|e| io("append to", &path, e))
}

/// Removes a file or a whole directory.
pub fn delete(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    let path = ctx.path(p, "path")?;
    let meta = fs::symlink_metadata(&path).map_err(|e| io("delete", &path, e))?;
    let result = if meta.is_dir() {
        fs::remove_dir_all(&path)
    } else {
        fs::remove_file(&path)
    };
    result.map_err(|e| io("delete", &path, e))
}

/// Renames a file or a directory inside the tree.
pub fn move_path(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    let from = ctx.path(p, "from")?;
    let to = ctx.path(p, "to")?;
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    fs::rename(&from, &to).map_err(|e| io("move", &from, e))
}

/// A tree `depth` levels deep, `fanout` directories per level, `files` files in each.
pub fn make_tree(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    fn level(
        ctx: &ActionCtx,
        dir: &std::path::Path,
        depth: u64,
        fanout: u64,
        files: u64,
    ) -> Result<(), String> {
        fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        for f in 0..files {
            ctx.write(
                &dir.join(format!("file{f}")),
                format!("{}\n", dir.display()).as_bytes(),
            )?;
        }
        if depth > 0 {
            for d in 0..fanout {
                level(ctx, &dir.join(format!("dir{d}")), depth - 1, fanout, files)?;
            }
        }
        Ok(())
    }
    let root = ctx.path(p, "root")?;
    level(
        ctx,
        &root,
        p.number("depth", 2),
        p.number("fanout", 2),
        p.number("files", 2),
    )
}

/// `count` files of `size` bytes in `dir`, as fast as possible; stops if the scenario ends.
pub async fn burst(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    let dir = ctx.path(p, "dir")?;
    fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
    let block = vec![b'b'; p.number("size", 4096) as usize];
    for i in 0..p.number("count", 100) {
        if i % 100 == 0 {
            if ctx.cancel.is_cancelled() {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
        ctx.write(&dir.join(format!("f{i:05}")), &block)?;
    }
    Ok(())
}

/// One file of `size_mb` MiB, written in 1 MiB pieces; stops if the scenario ends.
pub async fn large_file(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    let path = ctx.path(p, "path")?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    let mut file = fs::File::create(&path).map_err(|e| io("create", &path, e))?;
    let mut block = vec![0u8; 1 << 20];
    let random = p
        .map
        .get("random")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // xorshift64*, seeded by the run: new bytes each run, the same for a given run.
    let mut state = (0x9E37_79B9_7F4A_7C15u64 ^ p.n.wrapping_mul(0x2545_F491_4F6C_DD1D)) | 1;
    for i in 0..p.number("size_mb", 1) {
        if ctx.cancel.is_cancelled() {
            break;
        }
        if random {
            for word in block.chunks_exact_mut(8) {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
            }
        }
        block[..8].copy_from_slice(&i.to_le_bytes());
        file.write_all(&block).map_err(|e| io("write", &path, e))?;
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// What editors do: write a temporary file beside the target, then rename it over.
pub fn editor_save(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    let path = ctx.path(p, "path")?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.swp"));
    ctx.write(&temp, &p.content("saved"))?;
    fs::rename(&temp, &path).map_err(|e| io("rename over", &path, e))
}

fn slave_index(cluster: &Cluster, agent: &str) -> Result<usize, String> {
    cluster
        .slaves
        .iter()
        .position(|s| s.name == agent)
        .ok_or_else(|| {
            format!(
                "no agent named `{agent}` (master, or one of: {})",
                cluster
                    .slaves
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// SIGTERM the agent, demand a clean exit, start it again and wait for its `ready`.
pub async fn restart_agent(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    let agent = p.required("agent")?;
    let mut cluster = ctx.cluster.lock().await;
    if agent == "master" {
        cluster.stop_master()?;
        return cluster.start_master().await;
    }
    let idx = slave_index(&cluster, &agent)?;
    cluster.stop_slave(idx)?;
    cluster.start_slave(idx).await
}

/// SIGKILL the agent at whatever instant it is at, start it again, wait for its `ready`.
pub async fn crash_agent(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    let agent = p.required("agent")?;
    let mut cluster = ctx.cluster.lock().await;
    if agent == "master" {
        cluster.crash_master()?;
        return cluster.start_master().await;
    }
    let idx = slave_index(&cluster, &agent)?;
    cluster.crash_slave(idx)?;
    cluster.start_slave(idx).await
}

/// Holds the agent's process (SIGSTOP) for `for_ms`, then lets it go on (SIGCONT). The
/// scenario ending cuts the pause short.
pub async fn pause_agent(ctx: &ActionCtx, p: &Params<'_>) -> Result<(), String> {
    let agent = p.required("agent")?;
    let pid = {
        let mut cluster = ctx.cluster.lock().await;
        let pid = if agent == "master" {
            cluster.master_pid()
        } else {
            let idx = slave_index(&cluster, &agent)?;
            cluster.slave_pid(idx)
        };
        pid.ok_or_else(|| format!("{agent} is not running"))?
    };
    let pid = Pid::from_raw(pid as i32);
    kill(pid, Signal::SIGSTOP).map_err(|e| format!("cannot pause {agent}: {e}"))?;
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(p.number("for_ms", 500))) => {}
        _ = ctx.cancel.cancelled() => {}
    }
    kill(pid, Signal::SIGCONT).map_err(|e| format!("cannot resume {agent}: {e}"))
}
