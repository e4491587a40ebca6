//! Processes under test: spawned with their output in `<test dir>/logs/<name>`, killed when
//! dropped (no orphans, even when a test panics), and a test directory that is removed when
//! the test passes and kept, with its path printed, when it fails.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A temporary directory for one test; kept on panic so its logs can be read.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    pub fn new(label: &str) -> std::io::Result<TestDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("filesync-{label}-"))
            .tempdir()?;
        fs::create_dir_all(dir.path().join("logs"))?;
        Ok(TestDir { dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    /// Keeps the directory whatever happens, and returns its path.
    pub fn keep(&mut self) -> PathBuf {
        match self.dir.take() {
            Some(dir) => dir.keep(),
            None => PathBuf::new(),
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let path = self.keep();
            // CI keeps a failed run's output, not its directories: the last words of each
            // process go there too.
            print_log_tails(&path.join("logs"));
            eprintln!(
                "test failed: its directory is kept at {} (logs in logs/)",
                path.display()
            );
        }
    }
}

/// Lines of each process's log printed when a test fails.
const TAIL_LINES: usize = 12;

/// The longest line printed from a log's tail, in characters.
const TAIL_LINE_CHARS: usize = 300;

/// Prints the last `TAIL_LINES` lines of every log in `logs`, each under its name.
fn print_log_tails(logs: &Path) {
    let Ok(entries) = fs::read_dir(logs) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Ok(text) = fs::read(&path) else { continue };
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        eprintln!("--- the last {} lines of logs/{name}:", tail.len());
        for line in tail {
            let line: String = line.chars().take(TAIL_LINE_CHARS).collect();
            eprintln!("    {line}");
        }
    }
}

/// A running process with its output going to a log file.
pub struct Proc {
    pub name: String,
    child: Child,
    stderr_log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `command` with its stdout and stderr both in `logs_dir/<name>`.
    pub fn spawn(name: &str, mut command: Command, logs_dir: &Path) -> std::io::Result<Proc> {
        fs::create_dir_all(logs_dir)?;
        let log = logs_dir.join(name);
        let stdout = File::options().create(true).append(true).open(&log)?;
        let stderr = stdout.try_clone()?;
        command
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .stdin(Stdio::null());
        let child = command.spawn()?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            stderr_log: log,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` lines of its log (stdout and stderr).
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Has it exited? (Never blocks.)
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits for a line of stderr containing `needle`; returns the rest of that line after
    /// it. Fails when the process exits first or `timeout` passes.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let until = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(&self.stderr_log).unwrap_or_default();
            // Only whole lines: the process may be in the middle of writing the last one.
            let complete = &text[..text.rfind('\n').map_or(0, |idx| idx + 1)];
            if let Some(line) = complete.lines().find(|l| l.contains(needle)) {
                if let Some(idx) = line.find(needle) {
                    return Ok(line[idx + needle.len()..].trim().to_owned());
                }
            }
            if let Some(status) = self.try_status() {
                return Err(format!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.stderr_tail(20)
                ));
            }
            if Instant::now() >= until {
                return Err(format!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.stderr_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for it to exit, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.try_status().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        }
        if let Some(status) = self.wait_timeout(grace) {
            return Some(status);
        }
        self.crash()
    }

    /// SIGSTOP (`frozen`) or SIGCONT (not): a process frozen where it is, its sockets
    /// open but answering nothing (a machine cut off from the network, to its peers), and
    /// then thawed.
    pub fn freeze(&mut self, frozen: bool) {
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        if self.try_status().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
        }
    }

    /// SIGKILL: the process dies at whatever instant it is at.
    pub fn crash(&mut self) -> Option<ExitStatus> {
        if self.try_status().is_none() {
            let _ = self.child.kill();
        }
        self.status = self.child.wait().ok();
        self.status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
