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
        let mut builder = GitignoreBuilder::new(root);
        let file = root.join(IGNORE_FILE);
        if file.exists() {
            if let Some(err) = builder.add(&file) {
                tracing::warn!("{}: {err}", file.display());
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

    /// True when `path` (or a directory above it) is ignored.
    pub fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        if path.file_name().starts_with(TEMP_PREFIX) {
            return true;
        }
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
}
