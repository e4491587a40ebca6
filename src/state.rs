//! An agent's state directory: where it is (checked before anything is created), and the
//! exclusive lock that makes it one process's.
//!
//! Every agent (a master hosting its bus, a standalone bus, a slave) holds `SDIR/lock`
//! locked (`flock`, released by the kernel when the process dies, however it dies) for as
//! long as it runs, with its pid written inside for the message a second process gets.
//! A start that is refused after the directory was created (the bus said no) calls
//! [`StateDir::abandon`], which removes what this process created, so a refused start
//! leaves nothing behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};

/// A locked state directory.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    lock: Option<File>,
    /// The directories this process created for it, outermost first.
    created: Vec<PathBuf>,
}

impl StateDir {
    /// Creates `path` if needed and locks it; refused, with the holder's pid, when another
    /// process holds it.
    pub fn open(path: &Path) -> anyhow::Result<StateDir> {
        let created = missing_ancestors(path);
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create state directory {}", path.display()))?;
        let mut state = StateDir {
            path: path.to_path_buf(),
            lock: None,
            created,
        };
        let lock_path = path.join("lock");
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path);
        let mut lock = match opened {
            Ok(lock) => lock,
            Err(err) => {
                state.abandon();
                return Err(err).with_context(|| {
                    format!("state directory {} is not writable", path.display())
                });
            }
        };
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("another filesync process (pid {holder})")
                };
                bail!(
                    "state directory {} is in use by {who}: one process per state directory \
                     (stop it, or pass another --state)",
                    path.display()
                );
            }
            Err(TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
        let pid = format!("{}\n", std::process::id());
        lock.set_len(0)
            .and_then(|()| lock.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| lock.write_all(pid.as_bytes()))
            .with_context(|| format!("cannot write {}", lock_path.display()))?;
        state.lock = Some(lock);
        Ok(state)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Undoes a start that was refused: removes the lock file and every directory this
    /// process created (each only if nothing else was put in it meanwhile).
    pub fn abandon(mut self) {
        self.remove_created();
    }

    fn remove_created(&mut self) {
        if self.created.is_empty() {
            return;
        }
        self.lock = None;
        let _ = std::fs::remove_file(self.path.join("lock"));
        for dir in self.created.drain(..).rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The ancestors of `path` (itself included) that do not exist yet, outermost first.
fn missing_ancestors(path: &Path) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = path
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err())
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    missing
}

/// The absolute, symlink-free path `path` has, or would have once created: its longest
/// existing ancestor canonicalized, with the rest appended. Nothing is created.
pub fn would_be_canonical(path: &Path) -> anyhow::Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    };
    let mut existing = absolute.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(mut canonical) => {
                for name in rest.iter().rev() {
                    canonical.push(name);
                }
                return Ok(canonical);
            }
            Err(_) => {
                let Some(parent) = existing.parent() else {
                    bail!("{} has no existing ancestor", path.display());
                };
                match existing.components().next_back() {
                    Some(Component::Normal(name)) => rest.push(name),
                    Some(Component::ParentDir) => {
                        bail!(
                            "{} climbs out of a directory that does not exist",
                            path.display()
                        )
                    }
                    _ => {}
                }
                existing = parent;
            }
        }
    }
}

/// Refuses a state directory inside the synced directory, or the reverse (both paths as
/// `would_be_canonical` gives them).
pub fn refuse_state_inside(state: &Path, synced: &Path, what: &str) -> anyhow::Result<()> {
    if state.starts_with(synced) {
        bail!(
            "state directory {} must not be inside the {what} {}",
            state.display(),
            synced.display()
        );
    }
    if synced.starts_with(state) {
        bail!(
            "the {what} {} must not be inside the state directory {}",
            synced.display(),
            state.display()
        );
    }
    Ok(())
}

/// Refuses a directory that cannot be made: something other than a directory is in the
/// way, or its nearest existing ancestor is not a directory. Nothing is created.
pub fn check_creatable(path: &Path, what: &str) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => bail!("{what} {} exists and is not a directory", path.display()),
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("{what} {} is not usable", path.display()))
        }
        Err(_) => {}
    }
    let ancestor = path
        .ancestors()
        .skip(1)
        .find(|p| std::fs::symlink_metadata(p).is_ok());
    match ancestor {
        Some(ancestor) if !ancestor.is_dir() => bail!(
            "cannot create {what} {}: {} is not a directory",
            path.display(),
            ancestor.display()
        ),
        Some(ancestor) => nix::unistd::access(ancestor, nix::unistd::AccessFlags::W_OK)
            .with_context(|| {
                format!(
                    "cannot create {what} {}: {} is not writable",
                    path.display(),
                    ancestor.display()
                )
            }),
        None => bail!("cannot create {what} {}", path.display()),
    }
}

/// The bytes of the files under `dir`, recursively (a state directory's size, for
/// `status`, the scenarios' `expect.state` and the benches); what cannot be read counts 0.
pub fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/state");
        let first = StateDir::open(&path).expect("first");
        let second = StateDir::open(&path).expect_err("second");
        let message = format!("{second:#}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        let again = StateDir::open(&path).expect("free once the first is gone");
        again.abandon();
        assert!(path.exists(), "what it did not create, it leaves");
        let fresh = dir.path().join("c/d/state");
        StateDir::open(&fresh).expect("fresh").abandon();
        assert!(
            !dir.path().join("c").exists(),
            "an abandoned start removes what it created"
        );
    }

    #[test]
    fn a_path_that_does_not_exist_yet_is_resolved_without_being_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = std::fs::canonicalize(dir.path()).expect("canonical");
        std::os::unix::fs::symlink(&real, real.join("link")).expect("symlink");
        let would = would_be_canonical(&real.join("link/x/y")).expect("resolves");
        assert_eq!(would, real.join("x/y"));
        assert!(!real.join("x").exists());
        assert!(refuse_state_inside(&real.join("x/y"), &real.join("x"), "dir").is_err());
        assert!(refuse_state_inside(&real.join("x"), &real.join("x/y"), "dir").is_err());
        assert!(refuse_state_inside(&real.join("s"), &real.join("x"), "dir").is_ok());
        std::fs::write(real.join("file"), "").expect("write");
        assert!(check_creatable(&real.join("file"), "dir").is_err());
        assert!(check_creatable(&real.join("file/sub"), "dir").is_err());
        assert!(check_creatable(&real.join("new/sub"), "dir").is_ok());
    }
}
