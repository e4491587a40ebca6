//! `Selector`: which events. The one matcher behind the test kit's `Pattern`, the bus's
//! test gates and `listen`'s flags: every field given narrows the selection, and a field
//! that lists values (tags, ops, agents) matches any one of them.

use std::fmt;

use filesync_master::ignore::IgnoreRules;
use filesync_master::RelPath;
use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};

use crate::event::{Draft, EntryKind, Event, Op, Tag};

/// How a path field is matched.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "PathSpec", into = "PathSpec")]
pub enum PathMatch {
    /// Exactly this path.
    Exact(String),
    /// A glob, as `globset` reads it by default (`*` may cross a `/` too).
    Glob(String, GlobMatcher),
    /// gitignore's rules, as `.filesyncignore` reads them (`*.txt` at any depth, `D` or
    /// `D/**` anchored at the top, a directory's rule covering what is under it).
    Gitignore(Vec<String>, IgnoreRules),
}

/// A `PathMatch` as it is written (and sent to a bus's gates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathSpec {
    Exact(String),
    Glob(String),
    Gitignore(Vec<String>),
}

impl PathMatch {
    /// `glob` compiled.
    pub fn glob(glob: &str) -> Result<PathMatch, String> {
        let matcher = Glob::new(glob).map_err(|err| format!("bad glob {glob:?}: {err}"))?;
        Ok(PathMatch::Glob(glob.to_owned(), matcher.compile_matcher()))
    }

    /// gitignore-style `patterns`, any of which may match.
    pub fn gitignore<S: AsRef<str>>(patterns: &[S]) -> Result<PathMatch, String> {
        let rules = IgnoreRules::from_patterns(patterns)?;
        let written = patterns.iter().map(|p| p.as_ref().to_owned()).collect();
        Ok(PathMatch::Gitignore(written, rules))
    }

    /// Whether `candidate` (a path of an event about a directory when `is_dir`) matches.
    pub fn matches(&self, candidate: &str, is_dir: bool) -> bool {
        match self {
            PathMatch::Exact(path) => path == candidate,
            PathMatch::Glob(_, matcher) => matcher.is_match(candidate),
            PathMatch::Gitignore(_, rules) => {
                RelPath::new(candidate).is_ok_and(|path| rules.matches(&path, is_dir))
            }
        }
    }

    fn spec(&self) -> PathSpec {
        match self {
            PathMatch::Exact(path) => PathSpec::Exact(path.clone()),
            PathMatch::Glob(glob, _) => PathSpec::Glob(glob.clone()),
            PathMatch::Gitignore(patterns, _) => PathSpec::Gitignore(patterns.clone()),
        }
    }
}

impl TryFrom<PathSpec> for PathMatch {
    type Error = String;
    fn try_from(spec: PathSpec) -> Result<PathMatch, String> {
        match spec {
            PathSpec::Exact(path) => Ok(PathMatch::Exact(path)),
            PathSpec::Glob(glob) => PathMatch::glob(&glob),
            PathSpec::Gitignore(patterns) => PathMatch::gitignore(&patterns),
        }
    }
}

impl From<PathMatch> for PathSpec {
    fn from(path: PathMatch) -> PathSpec {
        path.spec()
    }
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &PathMatch) -> bool {
        self.spec() == other.spec()
    }
}

impl Eq for PathMatch {}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Exact(path) => f.write_str(path),
            PathMatch::Glob(glob, _) => write!(f, "glob {glob}"),
            PathMatch::Gitignore(patterns, _) => write!(f, "{}", patterns.join(" or ")),
        }
    }
}

/// A description of events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<Op>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EntryKind>,
    /// Answers this notify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<u64>,
    /// A file put of this content (lowercase hex SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `path` (puts, deletes) or `to` (moves): where the change leaves something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// A move's `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathMatch>,
    /// Any path the event names: `path`, `from` or `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub touching: Option<PathMatch>,
}

/// Whether `value` is in `set`, an empty set allowing anything.
fn in_set<T: PartialEq<U>, U: ?Sized>(set: &[T], value: Option<&U>) -> bool {
    set.is_empty() || value.is_some_and(|v| set.iter().any(|item| item == v))
}

impl Selector {
    pub fn matches(&self, event: &Event) -> bool {
        self.matches_draft(&event.agent, &event.body)
    }

    /// `matches` for an event not yet in the log (what `agent` publishes).
    pub fn matches_draft(&self, agent: &str, body: &Draft) -> bool {
        let is_dir = body.kind == Some(EntryKind::Dir);
        let path_is = |field: &Option<String>, m: &PathMatch| {
            field.as_deref().is_some_and(|p| m.matches(p, is_dir))
        };
        in_set(&self.tags, body.tag.as_ref())
            && in_set(&self.ops, body.op.as_ref())
            && in_set(&self.agents, Some(agent))
            && self.kind.is_none_or(|kind| body.kind == Some(kind))
            && self.cause.is_none_or(|cause| body.cause == Some(cause))
            && self
                .sha256
                .as_ref()
                .is_none_or(|sha256| body.sha256.as_ref() == Some(sha256))
            && self
                .path
                .as_ref()
                .is_none_or(|m| path_is(&body.path, m) || path_is(&body.to, m))
            && self.from.as_ref().is_none_or(|m| path_is(&body.from, m))
            && self.touching.as_ref().is_none_or(|m| {
                path_is(&body.path, m) || path_is(&body.from, m) || path_is(&body.to, m)
            })
    }
}

/// `a/b/c` for a set, `event`'s `default` when empty.
fn either<T: fmt::Display>(set: &[T]) -> Option<String> {
    let names: Vec<String> = set.iter().map(T::to_string).collect();
    (!names.is_empty()).then(|| names.join("/"))
}

/// Reads as a phrase: `put/move notify by master for glob docs/*`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(either(&self.ops));
        parts.push(either(&self.tags).unwrap_or_else(|| "event".into()));
        if let Some(agents) = either(&self.agents) {
            parts.push(format!("by {agents}"));
        }
        if let Some(kind) = self.kind {
            parts.push(format!("of a {}", format!("{kind:?}").to_lowercase()));
        }
        if let Some(from) = &self.from {
            parts.push(format!("from {from}"));
        }
        if let Some(path) = &self.path {
            parts.push(format!("for {path}"));
        }
        if let Some(touching) = &self.touching {
            parts.push(format!("touching {touching}"));
        }
        if let Some(cause) = self.cause {
            parts.push(format!("answering #{cause}"));
        }
        if let Some(sha256) = &self.sha256 {
            parts.push(format!("of content {}", sha256.get(..12).unwrap_or(sha256)));
        }
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(line: &str) -> Event {
        Event::parse(line).expect("a valid line")
    }

    #[test]
    fn every_field_given_narrows_and_a_set_allows_any_of_its_values() {
        let moved = event(
            r#"{"seq":3,"time":"2026-11-30T00:00:00Z","agent":"m","tag":"notify","op":"move","from":"a/x","to":"b/x","kind":"file"}"#,
        );
        let mut selector = Selector {
            tags: vec![Tag::Consume, Tag::Notify],
            ops: vec![Op::Move],
            ..Selector::default()
        };
        assert!(selector.matches(&moved));
        selector.agents = vec!["s".into()];
        assert!(!selector.matches(&moved));
        selector.agents.push("m".into());
        assert!(selector.matches(&moved));
        selector.path = Some(PathMatch::Exact("a/x".into()));
        assert!(!selector.matches(&moved), "path means path or to, not from");
        selector.path = None;
        selector.touching = Some(PathMatch::gitignore(&["a"]).expect("rules"));
        assert!(selector.matches(&moved), "touching includes from");
        selector.from = Some(PathMatch::glob("a/*").expect("glob"));
        assert!(selector.matches(&moved));
        selector.from = Some(PathMatch::glob("b/*").expect("glob"));
        assert!(!selector.matches(&moved));
    }

    #[test]
    fn a_selector_travels_as_json_and_reads_as_a_phrase() {
        let selector = Selector {
            tags: vec![Tag::Notify],
            ops: vec![Op::Put],
            path: Some(PathMatch::glob("docs/*.txt").expect("glob")),
            ..Selector::default()
        };
        let json = serde_json::to_string(&selector).expect("json");
        assert_eq!(
            json,
            r#"{"tags":["notify"],"ops":["put"],"path":{"glob":"docs/*.txt"}}"#
        );
        let back: Selector = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, selector);
        assert_eq!(selector.to_string(), "put notify for glob docs/*.txt");
        let bad = r#"{"path":{"glob":"a/[b"}}"#;
        let err = serde_json::from_str::<Selector>(bad).expect_err("a bad glob is refused");
        assert!(err.to_string().contains("bad glob"), "{err}");
    }
}
