//! Which paths are not synced: the root's `.filesyncignore` (gitignore syntax, matched by the
//! `ignore` crate) and the agents' own temporary files.

use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::RelPath;

/// The ignore file's name, at the root of the master directory.
pub const IGNORE_FILE: &str = ".filesyncignore";

pub use crate::relpath::TEMP_PREFIX;

/// The ignore rules of one root.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    root: PathBuf,
    gitignore: Gitignore,
}

impl IgnoreRules {
    /// Loads `root/.filesyncignore`; a missing file means "ignore only our temp files". A
    /// malformed line is reported and skipped, as git does.
    pub fn load(root: &Path) -> IgnoreRules {
        IgnoreRules::load_with(root, &[])
    }

    /// `load`, then `excludes` (the master's `--exclude`, gitignore patterns checked with
    /// `from_patterns` beforehand), which come last and so win over the file's lines.
    pub fn load_with(root: &Path, excludes: &[String]) -> IgnoreRules {
        let mut builder = GitignoreBuilder::new(root);
        let file = root.join(IGNORE_FILE);
        if file.exists() {
            if let Some(err) = builder.add(&file) {
                tracing::warn!("{}: {err}", file.display());
            }
        }
        for pattern in excludes {
            if let Err(err) = builder.add_line(None, pattern) {
                tracing::warn!("--exclude {pattern:?}: {err}");
            }
        }
        let gitignore = builder.build().unwrap_or_else(|err| {
            tracing::warn!("{}: {err}; ignoring nothing", file.display());
            Gitignore::empty()
        });
        IgnoreRules {
            root: root.to_path_buf(),
            gitignore,
        }
    }

    /// Rules from patterns given one per string (`--path`, `--exclude`), rooted nowhere in
    /// particular: they match relative paths by gitignore's rules. A bad pattern is an error
    /// naming it.
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<IgnoreRules, String> {
        let root = Path::new("/");
        let mut builder = GitignoreBuilder::new(root);
        for pattern in patterns {
            let pattern = pattern.as_ref();
            builder
                .add_line(None, pattern)
                .map_err(|err| format!("bad pattern {pattern:?}: {err}"))?;
        }
        let gitignore = builder.build().map_err(|err| err.to_string())?;
        Ok(IgnoreRules {
            root: root.to_path_buf(),
            gitignore,
        })
    }

    /// True when `path` (or a directory above it) is ignored.
    pub fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        path.file_name().starts_with(TEMP_PREFIX) || self.matches(path, is_dir)
    }

    /// True when the patterns match `path` or a directory above it (temporary files aside).
    pub fn matches(&self, path: &RelPath, is_dir: bool) -> bool {
        self.gitignore
            .matched_path_or_any_parents(path.to_path(&self.root), is_dir)
            .is_ignore()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_syntax_and_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(IGNORE_FILE), "*.log\nbuild/\n!keep.log\n").expect("write");
        let rules = IgnoreRules::load(dir.path());
        let ignored = |p: &str, is_dir| rules.is_ignored(&RelPath::new(p).expect("valid"), is_dir);
        assert!(ignored("a.log", false));
        assert!(ignored("sub/a.log", false));
        assert!(!ignored("keep.log", false));
        assert!(ignored("build", true));
        assert!(ignored("build/out.o", false));
        assert!(!ignored("src/main.rs", false));
        assert!(ignored("sub/.filesync-tmp-123", false));
    }

    #[test]
    fn patterns_follow_gitignore_rules_for_slashes() {
        let rules = IgnoreRules::from_patterns(&["*.txt", "D/**", "/top.md"]).expect("valid");
        let matches = |p: &str| rules.matches(&RelPath::new(p).expect("valid"), false);
        // No slash: the name at any depth; `*` never crosses a `/`.
        assert!(matches("a.txt"));
        assert!(matches("x/y/a.txt"));
        assert!(!matches("a.txt.bak"));
        // A slash anchors the pattern at the root.
        assert!(matches("D/e/f"));
        assert!(!matches("x/D/e"));
        assert!(matches("top.md"));
        assert!(!matches("x/top.md"));
        assert!(IgnoreRules::from_patterns(&["a{b"]).is_err());
    }
}
