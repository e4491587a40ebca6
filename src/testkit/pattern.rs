//! `Pattern`: what an expected event looks like, with a readable `Display`: a `Selector`
//! and predicates.

use std::fmt;
use std::sync::Arc;

use crate::event::{EntryKind, Event, Op, Tag};
use crate::select::{PathMatch, Selector};

type Predicate = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// A description of events: every field set must match. Build with the constructors and
/// chain the refinements: `Pattern::notify().by("master").put().path("foo.txt")`. The
/// fields are a [`Selector`] (the matcher `listen` and the bus's gates use too) and any
/// further predicates, each described for failure messages.
#[derive(Clone, Default)]
pub struct Pattern {
    selector: Selector,
    predicates: Vec<(String, Predicate)>,
}

impl Pattern {
    pub fn any() -> Pattern {
        Pattern::default()
    }
    pub fn tag(tag: Tag) -> Pattern {
        Pattern::any().refine(|s| s.tags = vec![tag])
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

    fn refine(mut self, set: impl FnOnce(&mut Selector)) -> Pattern {
        set(&mut self.selector);
        self
    }

    /// Emitted by this agent.
    pub fn by(self, agent: &str) -> Pattern {
        self.refine(|s| s.agents = vec![agent.to_owned()])
    }
    pub fn op(self, op: Op) -> Pattern {
        self.refine(|s| s.ops = vec![op])
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
    pub fn path(self, path: &str) -> Pattern {
        self.refine(|s| s.path = Some(PathMatch::Exact(path.to_owned())))
    }
    /// `path` or `to` matches this glob (globset's syntax; `*` may cross a `/`).
    pub fn path_glob(self, glob: &str) -> Pattern {
        let matcher =
            PathMatch::glob(glob).unwrap_or_else(|err| panic!("in a test pattern: {err}"));
        self.refine(|s| s.path = Some(matcher))
    }
    /// A move's `from` is exactly this.
    pub fn from(self, from: &str) -> Pattern {
        self.refine(|s| s.from = Some(PathMatch::Exact(from.to_owned())))
    }
    pub fn kind(self, kind: EntryKind) -> Pattern {
        self.refine(|s| s.kind = Some(kind))
    }
    /// Answers notify `seq`.
    pub fn cause(self, seq: u64) -> Pattern {
        self.refine(|s| s.cause = Some(seq))
    }
    /// A file put of exactly this content (lowercase hex SHA-256): for a consume, what the
    /// slave wrote.
    pub fn sha256(self, sha256: &str) -> Pattern {
        self.refine(|s| s.sha256 = Some(sha256.to_owned()))
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
        self.selector.matches(event)
            && self
                .predicates
                .iter()
                .all(|(_, predicate)| predicate(event))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.selector)?;
        for (description, _) in &self.predicates {
            write!(f, " where {description}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({self})")
    }
}
