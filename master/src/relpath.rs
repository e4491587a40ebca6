//! `RelPath`: a path relative to a synced root, as raw bytes.
//!
//! Every path that crosses an agent boundary is a `RelPath`. Construction validates it, so a
//! value of this type can never be absolute, empty, contain `.` or `..` components, empty
//! components or NUL bytes: joining it to a root can never escape that root lexically. (The
//! slave additionally refuses to write through symlinks; see `filesync-slave`.)
//!
//! Names are bytes, not strings, because Unix file names need not be UTF-8 and we mirror them
//! without loss.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Prefix of the temporary files a slave writes beside their targets. Never synced, so a
/// slave directory can itself be watched by another master (chaining) without echoes.
pub const TEMP_PREFIX: &[u8] = b".filesync-tmp-";

/// Why a byte string is not a valid relative path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelPathError {
    #[error("path is empty")]
    Empty,
    #[error("path is absolute")]
    Absolute,
    #[error("path has a '..' component")]
    ParentDir,
    #[error("path has a '.' or empty component")]
    EmptyOrDot,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is not inside the root")]
    OutsideRoot,
}

/// A validated, `/`-separated path relative to a synced root. A boxed slice, not a `Vec`:
/// the master keeps one per path (16 bytes plus the name, not 24).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Box<[u8]>);

impl RelPath {
    /// Validates raw bytes as a relative path.
    pub fn from_bytes(bytes: &[u8]) -> Result<RelPath, RelPathError> {
        if bytes.is_empty() {
            return Err(RelPathError::Empty);
        }
        if bytes[0] == b'/' {
            return Err(RelPathError::Absolute);
        }
        if bytes.contains(&0) {
            return Err(RelPathError::Nul);
        }
        for component in bytes.split(|&b| b == b'/') {
            match component {
                b".." => return Err(RelPathError::ParentDir),
                b"" | b"." => return Err(RelPathError::EmptyOrDot),
                _ => {}
            }
        }
        Ok(RelPath(bytes.into()))
    }

    /// Convenience for tests and literals.
    pub fn new(path: &str) -> Result<RelPath, RelPathError> {
        RelPath::from_bytes(path.as_bytes())
    }

    /// The path of `full` relative to `root`, when `full` lies strictly inside `root`.
    pub fn from_full(root: &Path, full: &Path) -> Result<RelPath, RelPathError> {
        let rest = full
            .strip_prefix(root)
            .map_err(|_| RelPathError::OutsideRoot)?;
        let mut bytes = Vec::with_capacity(rest.as_os_str().len());
        for component in rest.components() {
            match component {
                Component::Normal(name) => {
                    if !bytes.is_empty() {
                        bytes.push(b'/');
                    }
                    bytes.extend_from_slice(name.as_bytes());
                }
                Component::CurDir => {}
                Component::ParentDir => return Err(RelPathError::ParentDir),
                Component::RootDir | Component::Prefix(_) => return Err(RelPathError::Absolute),
            }
        }
        RelPath::from_bytes(&bytes)
    }

    /// The keys bounding everything strictly beneath `self` in byte order: `self/` up to
    /// (excluding) `self0`, since `0` is the byte after `/`. Not valid paths themselves; only
    /// for range queries on ordered maps.
    pub(crate) fn descendant_bounds(&self) -> (RelPath, RelPath) {
        let mut low = self.0.to_vec();
        low.push(b'/');
        let mut high = self.0.to_vec();
        high.push(b'/' + 1);
        (RelPath(low.into()), RelPath(high.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as UTF-8, when it is.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// A readable rendering; bytes that are not UTF-8 become U+FFFD.
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// `root/self` as a platform path.
    pub fn to_path(&self, root: &Path) -> PathBuf {
        root.join(OsStr::from_bytes(&self.0))
    }

    /// The components (names), outermost first.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.0.split(|&b| b == b'/')
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(idx) => &self.0[idx + 1..],
            None => &self.0,
        }
    }

    /// The parent directory, or `None` for a top-level name.
    pub fn parent(&self) -> Option<RelPath> {
        let idx = self.0.iter().rposition(|&b| b == b'/')?;
        Some(RelPath(self.0[..idx].into()))
    }

    /// Every proper ancestor, outermost first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> impl Iterator<Item = RelPath> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .map(|(idx, _)| RelPath(self.0[..idx].into()))
    }

    /// `self/name`.
    pub fn join(&self, name: &[u8]) -> Result<RelPath, RelPathError> {
        let mut bytes = self.0.to_vec();
        bytes.push(b'/');
        bytes.extend_from_slice(name);
        RelPath::from_bytes(&bytes)
    }

    /// True when `self` is `prefix` or lies beneath it (component-wise, so `ab` is not under `a`).
    pub fn starts_with(&self, prefix: &RelPath) -> bool {
        self.0.starts_with(&prefix.0)
            && (self.0.len() == prefix.0.len() || self.0[prefix.0.len()] == b'/')
    }

    /// Replaces the leading `from` with `to`; `None` when `self` is not under `from`.
    pub fn rebase(&self, from: &RelPath, to: &RelPath) -> Option<RelPath> {
        if !self.starts_with(from) {
            return None;
        }
        let mut bytes = to.0.to_vec();
        bytes.extend_from_slice(&self.0[from.0.len()..]);
        Some(RelPath(bytes.into()))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_everything_that_could_escape() {
        assert_eq!(RelPath::new(""), Err(RelPathError::Empty));
        assert_eq!(RelPath::new("/etc/passwd"), Err(RelPathError::Absolute));
        assert_eq!(RelPath::new(".."), Err(RelPathError::ParentDir));
        assert_eq!(RelPath::new("a/../../b"), Err(RelPathError::ParentDir));
        assert_eq!(RelPath::new("a/./b"), Err(RelPathError::EmptyOrDot));
        assert_eq!(RelPath::new("a//b"), Err(RelPathError::EmptyOrDot));
        assert_eq!(RelPath::new("a/"), Err(RelPathError::EmptyOrDot));
        assert_eq!(RelPath::from_bytes(b"a\0b"), Err(RelPathError::Nul));
        assert!(
            RelPath::new("..a/b..").is_ok(),
            "dots inside a name are fine"
        );
    }

    #[test]
    fn non_utf8_names_survive() {
        let path = RelPath::from_bytes(b"dir/caf\xe9").expect("valid");
        assert_eq!(path.as_str(), None);
        assert_eq!(path.file_name(), b"caf\xe9");
        assert_eq!(path.lossy(), "dir/caf\u{fffd}");
    }

    #[test]
    fn prefix_logic_is_component_wise() {
        let a = RelPath::new("a").expect("valid");
        let ab = RelPath::new("ab/c").expect("valid");
        let a_c = RelPath::new("a/c").expect("valid");
        assert!(!ab.starts_with(&a));
        assert!(a_c.starts_with(&a));
        assert!(a.starts_with(&a));
        let z = RelPath::new("z/y").expect("valid");
        assert_eq!(a_c.rebase(&a, &z), RelPath::new("z/y/c").ok());
        assert_eq!(ab.rebase(&a, &z), None);
        let ancestors: Vec<String> = RelPath::new("a/b/c")
            .expect("valid")
            .ancestors()
            .map(|p| p.lossy())
            .collect();
        assert_eq!(ancestors, ["a", "a/b"]);
    }

    #[test]
    fn from_full_strips_the_root() {
        let root = Path::new("/tmp/root");
        assert_eq!(
            RelPath::from_full(root, Path::new("/tmp/root/a/b")),
            RelPath::new("a/b")
        );
        assert_eq!(
            RelPath::from_full(root, Path::new("/tmp/other")),
            Err(RelPathError::OutsideRoot)
        );
        assert_eq!(
            RelPath::from_full(root, root),
            Err(RelPathError::Empty),
            "the root itself is not a synced entry"
        );
    }
}
