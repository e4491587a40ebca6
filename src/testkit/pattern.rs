//! `Pattern`: what an expected event looks like, with a readable `Display`.

use std::fmt;
use std::sync::Arc;

use globset::{Glob, GlobMatcher};

use crate::event::{EntryKind, Event, Op, Tag};

type Predicate = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

#[derive(Clone)]
enum PathMatch {
    Exact(String),
    Glob(String, GlobMatcher),
}

impl PathMatch {
    fn matches(&self, candidate: &str) -> bool {
        match self {
            PathMatch::Exact(path) => path == candidate,
            PathMatch::Glob(_, matcher) => matcher.is_match(candidate),
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Exact(path) => f.write_str(path),
            PathMatch::Glob(glob, _) => write!(f, "glob {glob}"),
        }
    }
}

/// A description of events: every field set must match. Build with the constructors and
/// chain the refinements: `Pattern::notify().by("master").put().path("foo.txt")`.
#[derive(Clone, Default)]
pub struct Pattern {
    tag: Option<Tag>,
    agent: Option<String>,
    op: Option<Op>,
    path: Option<PathMatch>,
    from: Option<PathMatch>,
    kind: Option<EntryKind>,
    cause: Option<u64>,
    sha256: Option<String>,
    predicates: Vec<(String, Predicate)>,
}

impl Pattern {
    pub fn any() -> Pattern {
        Pattern::default()
    }
    pub fn tag(tag: Tag) -> Pattern {
        Pattern {
            tag: Some(tag),
            ..Pattern::default()
        }
    }
    pub fn notify() -> Pattern {
        Pattern::tag(Tag::Notify)
    }
    pub fn consume() -> Pattern {
        Pattern::tag(Tag::Consume)
    }
    pub fn error() -> Pattern {
        Pattern::tag(Tag::Error)
    }
    pub fn ready() -> Pattern {
        Pattern::tag(Tag::Ready)
    }
    pub fn join() -> Pattern {
        Pattern::tag(Tag::Join)
    }
    pub fn leave() -> Pattern {
        Pattern::tag(Tag::Leave)
    }
    /// Emitted by this agent.
    pub fn by(mut self, agent: &str) -> Pattern {
        self.agent = Some(agent.to_owned());
        self
    }
    pub fn op(mut self, op: Op) -> Pattern {
        self.op = Some(op);
        self
    }
    pub fn put(self) -> Pattern {
        self.op(Op::Put)
    }
    pub fn delete(self) -> Pattern {
        self.op(Op::Delete)
    }
    pub fn moved(self) -> Pattern {
        self.op(Op::Move)
    }
    /// `path` (puts, deletes) or `to` (moves) is exactly this.
    pub fn path(mut self, path: &str) -> Pattern {
        self.path = Some(PathMatch::Exact(path.to_owned()));
        self
    }
    /// `path` or `to` matches this glob (`*` stays within one component).
    pub fn path_glob(mut self, glob: &str) -> Pattern {
        let matcher = Glob::new(glob)
            .map(|g| g.compile_matcher())
            .unwrap_or_else(|err| panic!("bad glob {glob:?} in a test pattern: {err}"));
        self.path = Some(PathMatch::Glob(glob.to_owned(), matcher));
        self
    }
    /// A move's `from` is exactly this.
    pub fn from(mut self, from: &str) -> Pattern {
        self.from = Some(PathMatch::Exact(from.to_owned()));
        self
    }
    pub fn kind(mut self, kind: EntryKind) -> Pattern {
        self.kind = Some(kind);
        self
    }
    /// Answers notify `seq`.
    pub fn cause(mut self, seq: u64) -> Pattern {
        self.cause = Some(seq);
        self
    }
    /// A file put of exactly this content (lowercase hex SHA-256): for a consume, what the
    /// slave wrote.
    pub fn sha256(mut self, sha256: &str) -> Pattern {
        self.sha256 = Some(sha256.to_owned());
        self
    }
    /// Any further condition, described for failure messages.
    pub fn with(
        mut self,
        description: &str,
        predicate: impl Fn(&Event) -> bool + Send + Sync + 'static,
    ) -> Pattern {
        self.predicates
            .push((description.to_owned(), Arc::new(predicate)));
        self
    }

    pub fn matches(&self, event: &Event) -> bool {
        let body = &event.body;
        self.tag.is_none_or(|tag| body.tag == Some(tag))
            && self
                .agent
                .as_ref()
                .is_none_or(|agent| &event.agent == agent)
            && self.op.is_none_or(|op| body.op == Some(op))
            && self.kind.is_none_or(|kind| body.kind == Some(kind))
            && self.cause.is_none_or(|cause| body.cause == Some(cause))
            && self
                .sha256
                .as_ref()
                .is_none_or(|sha256| body.sha256.as_ref() == Some(sha256))
            && self.path.as_ref().is_none_or(|m| {
                body.path.as_deref().is_some_and(|p| m.matches(p))
                    || body.to.as_deref().is_some_and(|p| m.matches(p))
            })
            && self
                .from
                .as_ref()
                .is_none_or(|m| body.from.as_deref().is_some_and(|p| m.matches(p)))
            && self
                .predicates
                .iter()
                .all(|(_, predicate)| predicate(event))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(op) = self.op {
            parts.push(op.to_string());
        }
        parts.push(
            self.tag
                .map(|t| t.to_string())
                .unwrap_or_else(|| "event".into()),
        );
        if let Some(agent) = &self.agent {
            parts.push(format!("by {agent}"));
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
        if let Some(cause) = self.cause {
            parts.push(format!("answering #{cause}"));
        }
        if let Some(sha256) = &self.sha256 {
            parts.push(format!("of content {}", sha256.get(..12).unwrap_or(sha256)));
        }
        for (description, _) in &self.predicates {
            parts.push(format!("where {description}"));
        }
        f.write_str(&parts.join(" "))
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({self})")
    }
}
