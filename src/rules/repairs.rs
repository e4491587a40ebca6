//! `OpenErrors`: the errors each slave reported and has not made good yet, read from the log.
//!
//! A slave's `error` leaves the paths its change touched in a state nobody knows. It is made
//! good by the slave's consume that names it (`repairs`: the change, retried, applied at
//! last), or by a later consume of that slave whose change decides those paths by itself
//! (`Change::covers`: a put of the same path, a delete of it or of an ancestor, ...).
//!
//! An error is *stale* once a later notify touched its paths: retrying the old change then
//! would undo newer ones, so it is no longer retried (the slave's verification restores
//! those paths from the state instead). Stale or not, an open error means the slave has not
//! converged: the bus tells a joining slave which to retry, and `filesync check` reports
//! the ones still open.
//!
//! The bus and the checker both keep one, fed the same events, so they agree.

use std::collections::{BTreeMap, HashMap};

use filesync_master::{Change, RelPath};

/// One error not made good yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError {
    /// The `seq` of the `error` event.
    pub seq: u64,
    /// The notify it answered.
    pub cause: u64,
    /// That notify's change, when it describes one.
    pub change: Option<Change>,
    /// A later notify touched its paths: it is not to be retried.
    pub stale: bool,
}

/// Every slave's open errors, and an index of their paths for the overlap queries.
#[derive(Debug, Default, Clone)]
pub struct OpenErrors {
    by_agent: HashMap<String, BTreeMap<u64, OpenError>>,
    /// Path bytes -> (agent, error seq) of the open errors whose change touches that path.
    by_path: BTreeMap<Vec<u8>, Vec<(String, u64)>>,
}

impl OpenErrors {
    /// `agent` reported error `seq` answering notify `cause`, whose change is `change`.
    pub fn error(&mut self, agent: &str, seq: u64, cause: u64, change: Option<Change>) {
        if let Some(change) = &change {
            for path in change.paths() {
                self.by_path
                    .entry(path.as_bytes().to_vec())
                    .or_default()
                    .push((agent.to_owned(), seq));
            }
        }
        self.by_agent.entry(agent.to_owned()).or_default().insert(
            seq,
            OpenError {
                seq,
                cause,
                change,
                stale: false,
            },
        );
    }

    /// An open error as a checkpoint recorded it, stale or not.
    pub fn restore(
        &mut self,
        agent: &str,
        seq: u64,
        cause: u64,
        change: Option<Change>,
        stale: bool,
    ) {
        self.error(agent, seq, cause, change);
        if let Some(open) = self.by_agent.get_mut(agent).and_then(|e| e.get_mut(&seq)) {
            open.stale = stale;
        }
    }

    /// `agent` consumed a change: closes the error it `repairs`, and every error of its own
    /// that the change covers.
    pub fn consume(&mut self, agent: &str, repairs: Option<u64>, change: Option<&Change>) {
        if let Some(seq) = repairs {
            self.close(agent, seq);
        }
        let Some(change) = change else { return };
        let covered: Vec<u64> = self
            .overlapping(change)
            .into_iter()
            .filter(|(owner, seq)| {
                owner == agent
                    && self
                        .get(owner, *seq)
                        .and_then(|open| open.change.as_ref())
                        .is_some_and(|earlier| change.covers(earlier))
            })
            .map(|(_, seq)| seq)
            .collect();
        for seq in covered {
            self.close(agent, seq);
        }
    }

    /// A notify was appended: every open error whose paths it touches goes stale.
    pub fn notify(&mut self, change: &Change) {
        for (agent, seq) in self.overlapping(change) {
            if let Some(open) = self
                .by_agent
                .get_mut(&agent)
                .and_then(|errors| errors.get_mut(&seq))
            {
                open.stale = true;
            }
        }
    }

    pub fn get(&self, agent: &str, seq: u64) -> Option<&OpenError> {
        self.by_agent.get(agent)?.get(&seq)
    }

    /// `agent`'s open errors, oldest first.
    pub fn of(&self, agent: &str) -> impl Iterator<Item = &OpenError> + '_ {
        self.by_agent
            .get(agent)
            .into_iter()
            .flat_map(|e| e.values())
    }

    /// Every agent with open errors, and its errors, oldest first.
    pub fn all(&self) -> impl Iterator<Item = (&String, &BTreeMap<u64, OpenError>)> + '_ {
        self.by_agent
            .iter()
            .filter(|(_, errors)| !errors.is_empty())
    }

    fn close(&mut self, agent: &str, seq: u64) {
        let Some(open) = self.by_agent.get_mut(agent).and_then(|e| e.remove(&seq)) else {
            return;
        };
        for path in open.change.iter().flat_map(|c| c.paths()) {
            if let Some(owners) = self.by_path.get_mut(path.as_bytes()) {
                owners.retain(|(owner, s)| !(owner == agent && *s == seq));
                if owners.is_empty() {
                    self.by_path.remove(path.as_bytes());
                }
            }
        }
    }

    /// The open errors with a path at, above or below one of `change`'s.
    fn overlapping(&self, change: &Change) -> Vec<(String, u64)> {
        let mut found = Vec::new();
        for path in change.paths() {
            for ancestor in path.ancestors() {
                if let Some(owners) = self.by_path.get(ancestor.as_bytes()) {
                    found.extend(owners.iter().cloned());
                }
            }
            let (low, high) = subtree_bounds(path);
            let at_or_under = |key: &[u8]| {
                let path = path.as_bytes();
                key == path || key.get(path.len()) == Some(&b'/')
            };
            for (_, owners) in self
                .by_path
                .range(low..high)
                .filter(|(key, _)| at_or_under(key))
            {
                found.extend(owners.iter().cloned());
            }
        }
        found.sort();
        found.dedup();
        found
    }
}

/// A byte range holding `path` and everything beneath it: from `path` up to (excluding)
/// `path0` (`0` is the byte after `/`). Siblings such as `path-x` sort inside it too, so
/// the caller keeps only keys that are `path` or continue it with `/`.
fn subtree_bounds(path: &RelPath) -> (Vec<u8>, Vec<u8>) {
    let low = path.as_bytes().to_vec();
    let mut high = low.clone();
    high.push(b'/' + 1);
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use filesync_master::hash::ContentHash;
    use filesync_master::{Entry, Kind};

    fn p(s: &str) -> RelPath {
        RelPath::new(s).expect("valid")
    }

    fn put(path: &str) -> Change {
        Change::Put {
            path: p(path),
            entry: Entry::file(1, ContentHash::of(path.as_bytes()), 0o644),
        }
    }

    #[test]
    fn a_repair_or_a_covering_consume_closes_an_error_and_a_notify_makes_it_stale() {
        let mut open = OpenErrors::default();
        open.error("slave", 10, 5, Some(put("d/x")));
        open.error("slave", 11, 6, Some(put("d/y")));
        open.error("other", 12, 6, Some(put("d/y")));
        // A sibling that sorts inside the byte range of `d/x` is not an overlap.
        open.notify(&put("d/x-2"));
        assert!(open.of("slave").all(|e| !e.stale));
        open.notify(&Change::Put {
            path: p("d"),
            entry: Entry::dir(0o755),
        });
        assert!(
            open.of("slave").all(|e| e.stale),
            "a put of the parent touches both"
        );
        open.consume("slave", Some(10), Some(&put("d/x")));
        assert_eq!(open.of("slave").map(|e| e.seq).collect::<Vec<_>>(), [11]);
        // A delete of the parent decides d/y for this slave only.
        open.consume(
            "slave",
            None,
            Some(&Change::Delete {
                path: p("d"),
                kind: Kind::Dir,
            }),
        );
        assert_eq!(open.of("slave").count(), 0);
        assert_eq!(open.of("other").count(), 1);
        // A move carries the failure along: it does not cover its source.
        open.consume(
            "other",
            None,
            Some(&Change::Move {
                from: p("d"),
                to: p("e"),
                kind: Kind::Dir,
            }),
        );
        assert_eq!(open.of("other").count(), 1);
    }
}
