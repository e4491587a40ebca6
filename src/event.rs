//! The event log line: what the bus appends to `events.jsonl` and delivers to subscribers.
//!
//! # Format
//!
//! One JSON object per line. Fields (absent when they do not apply):
//!
//! | field | in | meaning |
//! |---|---|---|
//! | `seq` | all | 1, 2, 3 ... assigned by the bus; gapless |
//! | `time` | all | RFC 3339 UTC with microseconds, when the bus appended it; never goes back |
//! | `tag` | all | `join`, `ready`, `notify`, `consume`, `error`, `leave` |
//! | `agent` | all | the emitting agent's name (set by the bus from the handshake) |
//! | `role` | join | `master`, `slave`, `listener` |
//! | `op` | notify, consume, error | `put`, `delete`, `move` |
//! | `path` | put, delete | relative, `/`-separated |
//! | `from`, `to` | move | same form as `path` |
//! | `kind` | notify, consume | `file`, `dir`, `symlink` |
//! | `size`, `sha256` | put of a file | byte length, lowercase hex SHA-256 |
//! | `mode` | put | Unix permission bits, as a number |
//! | `target` | put of a symlink | the link's target |
//! | `cause` | consume, error | `seq` of the notify answered |
//! | `error` | error | a readable message |
//! | `host`, `dir` | join of a master or slave | the agent's host name and synced directory |
//! | `takeover` | join of a master | `true` when this master took the log over from another |
//! | `manifest` | put of a file stored in chunks | SHA-256 (hex) of the file's chunk list (`filesync_master::chunk::Manifest`): files over 1 MiB; a consume echoes it |
//! | `uploaded` | notify put of a file | bytes the master sent to the bus for this version |
//! | `fetched`, `reused` | consume put of a file | bytes fetched from the bus, bytes taken from what the slave held; they add up to `size` |
//! | `repairs` | consume | the `seq` of this slave's `error` that this consume makes good: the change failed, was retried, and now applied |
//! | `drift` | consume, error | `missing`, `modified` or `unexpected`: the slave found its directory edited behind its back at this path and restored it (consume) or kept it (error, `--keep-local`); `cause` is the last notify it had applied |
//!
//! | `resync` | consume, error, ready | a slave that was behind the log's start (away longer than the history window, or new to a truncated log) caught up from the checkpoint at this `seq`: each consume restores one path to the checkpoint's state (an error: could not, and is retried; `cause` is the checkpoint's `seq`), and a `ready` with `resync` says it is done and follows the log from the next `seq` |
//!
//! A consume with `repairs` answers its notify a second time, on purpose; one with `drift`
//! or `resync` answers nothing. `filesync check` counts none of them as a duplicate answer.
//! **Names that are not UTF-8.** `path`, `from`, `to` and `target` are always readable
//! strings; when the underlying bytes are not valid UTF-8, the string has U+FFFD in place of
//! the bad bytes and a sibling field `path_b64` (`from_b64`, `to_b64`, `target_b64`) holds
//! the exact bytes in standard base64. Readers that need the exact name use the `_b64` field
//! when present. Nothing else is ever encoded.

use std::fmt;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use filesync_master::hash::ContentHash;
use filesync_master::{Change, Entry, Kind, RelPath};
use serde::{Deserialize, Serialize};

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tag {
    Join,
    Ready,
    Notify,
    Consume,
    Error,
    Leave,
}

impl Tag {
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Join => "join",
            Tag::Ready => "ready",
            Tag::Notify => "notify",
            Tag::Consume => "consume",
            Tag::Error => "error",
            Tag::Leave => "leave",
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an agent is, as announced in its handshake and recorded in its `join`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Slave,
    Listener,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Slave => "slave",
            Role::Listener => "listener",
        })
    }
}

/// The operation a notify, consume or error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Delete,
    Move,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Move => "move",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Kind` as it appears in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

impl From<Kind> for EntryKind {
    fn from(kind: Kind) -> EntryKind {
        match kind {
            Kind::File => EntryKind::File,
            Kind::Dir => EntryKind::Dir,
            Kind::Symlink => EntryKind::Symlink,
        }
    }
}

impl From<EntryKind> for Kind {
    fn from(kind: EntryKind) -> Kind {
        match kind {
            EntryKind::File => Kind::File,
            EntryKind::Dir => Kind::Dir,
            EntryKind::Symlink => Kind::Symlink,
        }
    }
}

/// The log's fields after `tag`, listed once: `Draft` (every one optional, left out of a
/// line when absent) and the fast reader `InlineEvent` are both made from this list, so a
/// new field is one line here (plus its documentation in the README's field table).
macro_rules! log_fields {
    ($($name:ident: $ty:ty,)*) => {
        /// An event as an agent publishes it: everything but what the bus assigns (`seq`,
        /// `time`, `agent`). Unknown fields are refused, so a peer's typo is an error, not
        /// silence.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Draft {
            pub tag: Option<Tag>,
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: Option<$ty>,
            )*
        }

        /// An `Event` read with `Draft`'s fields inline: what `Event::parse` tries first.
        /// Through `#[serde(flatten)]` every field of a line is buffered into serde's
        /// `Content` before `Draft` reads it, which was about 5% of the slave's samples in
        /// W2. A line this accepts reads to the same value; a line it refuses (an unknown
        /// field among them, since `flatten` cannot be combined with `deny_unknown_fields`
        /// on `Event`) is read again the general way, so errors are the general way's.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct InlineEvent {
            seq: u64,
            time: String,
            agent: String,
            tag: Option<Tag>,
            $($name: Option<$ty>,)*
        }

        impl From<InlineEvent> for Event {
            fn from(inline: InlineEvent) -> Event {
                Event {
                    seq: inline.seq,
                    time: inline.time,
                    agent: inline.agent,
                    body: Draft {
                        tag: inline.tag,
                        $($name: inline.$name,)*
                    },
                }
            }
        }
    };
}

log_fields! {
    role: Role,
    op: Op,
    path: String,
    path_b64: String,
    from: String,
    from_b64: String,
    to: String,
    to_b64: String,
    kind: EntryKind,
    size: u64,
    sha256: String,
    mode: u32,
    target: String,
    target_b64: String,
    cause: u64,
    error: String,
    host: String,
    dir: String,
    takeover: bool,
    manifest: String,
    uploaded: u64,
    fetched: u64,
    reused: u64,
    repairs: u64,
    drift: Drift,
    resync: u64,
}

/// What a slave found at a path of its directory that it did not put there (see `drift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Drift {
    /// The path the log says it holds is gone.
    Missing,
    /// The path holds something else (content, kind, mode or link target).
    Modified,
    /// The path exists, but the log says nothing is there.
    Unexpected,
}

impl Drift {
    pub fn as_str(self) -> &'static str {
        match self {
            Drift::Missing => "missing",
            Drift::Modified => "modified",
            Drift::Unexpected => "unexpected",
        }
    }
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub time: String,
    pub agent: String,
    #[serde(flatten)]
    pub body: Draft,
}

/// Why an event does not describe a valid change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}`: {reason}")]
    Bad { field: &'static str, reason: String },
}

/// `(readable, exact bytes when not UTF-8)` for a name.
pub fn encode_bytes(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(BASE64.encode(bytes)),
        ),
    }
}

fn decode_bytes(
    field: &'static str,
    text: Option<&String>,
    b64: Option<&String>,
) -> Result<Vec<u8>, EventError> {
    match (text, b64) {
        (_, Some(b64)) => BASE64.decode(b64).map_err(|err| EventError::Bad {
            field,
            reason: format!("invalid base64: {err}"),
        }),
        (Some(text), None) => Ok(text.as_bytes().to_vec()),
        (None, None) => Err(EventError::Missing(field)),
    }
}

fn decode_path(
    field: &'static str,
    text: Option<&String>,
    b64: Option<&String>,
) -> Result<RelPath, EventError> {
    let bytes = decode_bytes(field, text, b64)?;
    RelPath::from_bytes(&bytes).map_err(|err| EventError::Bad {
        field,
        reason: err.to_string(),
    })
}

/// True for 64 lowercase hex digits: the only form a content address may take (it becomes
/// a file name in the blob store).
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The current time in the log's format.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

impl Draft {
    pub fn tagged(tag: Tag) -> Draft {
        Draft {
            tag: Some(tag),
            ..Draft::default()
        }
    }

    /// The master's notify for a change.
    pub fn notify(change: &Change) -> Draft {
        let mut draft = Draft::tagged(Tag::Notify);
        draft.set_change(change);
        draft
    }

    /// A slave's consume of notify `cause`, echoing the change and the sha256 it wrote.
    pub fn consume(change: &Change, cause: u64, written_sha256: Option<String>) -> Draft {
        let mut draft = Draft::tagged(Tag::Consume);
        draft.set_change(change);
        draft.cause = Some(cause);
        if draft.kind == Some(EntryKind::File) && draft.op == Some(Op::Put) {
            draft.sha256 = written_sha256;
        }
        draft
    }

    /// A slave's error answering notify `cause`: the change is echoed whole when the notify
    /// describes one, `op` and paths as they are otherwise.
    pub fn error(notify: &Draft, cause: u64, message: String) -> Draft {
        let mut draft = match notify.change() {
            Ok(change) => {
                let mut draft = Draft::tagged(Tag::Error);
                draft.set_change(&change);
                draft
            }
            Err(_) => Draft {
                tag: Some(Tag::Error),
                op: notify.op,
                path: notify.path.clone(),
                path_b64: notify.path_b64.clone(),
                from: notify.from.clone(),
                from_b64: notify.from_b64.clone(),
                to: notify.to.clone(),
                to_b64: notify.to_b64.clone(),
                ..Draft::default()
            },
        };
        draft.cause = Some(cause);
        draft.error = Some(message);
        draft
    }

    fn set_change(&mut self, change: &Change) {
        self.kind = Some(change.kind().into());
        match change {
            Change::Put { path, entry } => {
                self.op = Some(Op::Put);
                (self.path, self.path_b64) = split(encode_bytes(path.as_bytes()));
                self.mode = Some(entry.mode);
                if entry.kind == Kind::File {
                    self.size = Some(entry.size);
                    self.sha256 = entry.sha256.map(|sha256| sha256.to_hex());
                }
                if let Some(target) = &entry.target {
                    (self.target, self.target_b64) = split(encode_bytes(target));
                }
            }
            Change::Delete { path, .. } => {
                self.op = Some(Op::Delete);
                (self.path, self.path_b64) = split(encode_bytes(path.as_bytes()));
            }
            Change::Move { from, to, .. } => {
                self.op = Some(Op::Move);
                (self.from, self.from_b64) = split(encode_bytes(from.as_bytes()));
                (self.to, self.to_b64) = split(encode_bytes(to.as_bytes()));
            }
        }
    }

    /// The change this notify or consume describes, validated: paths cannot escape the root,
    /// a file put carries a well-formed sha256 and size, a symlink put a target.
    pub fn change(&self) -> Result<Change, EventError> {
        let op = self.op.ok_or(EventError::Missing("op"))?;
        let kind: Kind = self.kind.ok_or(EventError::Missing("kind"))?.into();
        match op {
            Op::Put => {
                let path = decode_path("path", self.path.as_ref(), self.path_b64.as_ref())?;
                let mode = self.mode.ok_or(EventError::Missing("mode"))?;
                if mode > 0o7777 {
                    return Err(EventError::Bad {
                        field: "mode",
                        reason: format!("{mode:o} is not a permission mode"),
                    });
                }
                let entry = match kind {
                    Kind::Dir => Entry::dir(mode),
                    Kind::File => {
                        let text = self
                            .sha256
                            .as_deref()
                            .ok_or(EventError::Missing("sha256"))?;
                        let sha256 =
                            ContentHash::parse_hex(text).ok_or_else(|| EventError::Bad {
                                field: "sha256",
                                reason: "not 64 lowercase hex digits".into(),
                            })?;
                        let size = self.size.ok_or(EventError::Missing("size"))?;
                        Entry::file(size, sha256, mode)
                    }
                    Kind::Symlink => Entry::symlink(decode_bytes(
                        "target",
                        self.target.as_ref(),
                        self.target_b64.as_ref(),
                    )?),
                };
                Ok(Change::Put { path, entry })
            }
            Op::Delete => Ok(Change::Delete {
                path: decode_path("path", self.path.as_ref(), self.path_b64.as_ref())?,
                kind,
            }),
            Op::Move => Ok(Change::Move {
                from: decode_path("from", self.from.as_ref(), self.from_b64.as_ref())?,
                to: decode_path("to", self.to.as_ref(), self.to_b64.as_ref())?,
                kind,
            }),
        }
    }

    /// Checks that every path-like field present (`path`, `from`, `to`) is a relative path
    /// inside the root, whatever the tag: invariant 5, enforced by the bus and proved by the
    /// checker.
    pub fn check_paths(&self) -> Result<(), EventError> {
        for (field, text, b64) in [
            ("path", &self.path, &self.path_b64),
            ("from", &self.from, &self.from_b64),
            ("to", &self.to, &self.to_b64),
        ] {
            if text.is_some() || b64.is_some() {
                decode_path(field, text.as_ref(), b64.as_ref())?;
            }
        }
        Ok(())
    }

    /// The tag's name, `?` when there is none: the one spelling every rendering of an event
    /// uses (`listen`'s lines, the test kit's timeline, the HTML timeline, `check`'s
    /// reports, `Display`).
    pub fn tag_name(&self) -> &'static str {
        self.tag.map(Tag::as_str).unwrap_or("?")
    }

    /// The op's name, empty when there is none.
    pub fn op_name(&self) -> &'static str {
        self.op.map(Op::as_str).unwrap_or("")
    }

    /// What the event changes, for people: `put a/b`, `move a -> b`; empty for an event
    /// that names no change.
    pub fn what(&self) -> String {
        format!("{} {}", self.op_name(), self.display_path())
            .trim()
            .to_owned()
    }

    /// What the event answers and how it went, for people: `  <- #7  ERROR: disk full`;
    /// empty for an event with neither.
    pub fn outcome(&self) -> String {
        let mut out = String::new();
        if let Some(cause) = self.cause {
            out.push_str(&format!("  <- #{cause}"));
        }
        if let Some(error) = &self.error {
            out.push_str(&format!("  ERROR: {error}"));
        }
        out
    }

    /// The path (or `from -> to`) for people.
    pub fn display_path(&self) -> String {
        match (&self.path, &self.from, &self.to) {
            (Some(path), _, _) => path.clone(),
            (None, Some(from), Some(to)) => format!("{from} -> {to}"),
            _ => String::new(),
        }
    }
}

fn split(pair: (String, Option<String>)) -> (Option<String>, Option<String>) {
    (Some(pair.0), pair.1)
}

impl Event {
    pub fn tag(&self) -> Option<Tag> {
        self.body.tag
    }

    /// Parses one log line.
    pub fn parse(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str::<InlineEvent>(line)
            .map(Event::from)
            .or_else(|_| serde_json::from_str(line))
    }

    /// The log line, without its newline.
    pub fn to_line(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = &self.body;
        let line = format!(
            "#{} {} {} {}",
            self.seq,
            body.tag_name(),
            self.agent,
            body.what()
        );
        write!(f, "{}{}", line.trim_end(), body.outcome())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inline reader knows every field of `Draft` (a field it lacked would send every
    /// line carrying it down the slow path), and reads what the general way reads.
    #[test]
    fn the_inline_reader_reads_every_field_as_the_general_way_does() {
        let text = |s: &str| Some(s.to_owned());
        let full = Event {
            seq: 7,
            time: "2026-11-23T00:00:00.000000Z".into(),
            agent: "m".into(),
            body: Draft {
                tag: Some(Tag::Error),
                role: Some(Role::Slave),
                op: Some(Op::Move),
                path: text("p"),
                path_b64: text("cA=="),
                from: text("f"),
                from_b64: text("Zg=="),
                to: text("t"),
                to_b64: text("dA=="),
                kind: Some(EntryKind::Symlink),
                size: Some(u64::MAX),
                sha256: text(&"a".repeat(64)),
                mode: Some(0o7777),
                target: text("../x"),
                target_b64: text("Li4veA=="),
                cause: Some(3),
                error: text("a \"quoted\" message"),
                host: text("h"),
                dir: text("/d"),
                takeover: Some(true),
                manifest: text(&"b".repeat(64)),
                uploaded: Some(1),
                fetched: Some(2),
                reused: Some(3),
                repairs: Some(4),
                drift: Some(Drift::Modified),
                resync: Some(5),
            },
        };
        let line = full.to_line();
        let inline: InlineEvent = serde_json::from_str(&line).expect("inline reader");
        assert_eq!(Event::from(inline), full);
        let general = |line: &str| serde_json::from_str::<Event>(line).map_err(|e| e.to_string());
        for line in [
            line.as_str(),
            r#"{"seq":1,"time":"t","agent":"a","tag":"ready"}"#,
            r#"{"tag":"ready","agent":"a","time":"t","seq":1,"path":null}"#,
            r#"{"seq":1,"time":"t","agent":"a","tag":"ready","surprise":1}"#,
            r#"{"seq":1,"time":"t","agent":"a","tag":"ready","tag":"leave"}"#,
            r#"{"seq":1,"time":"t","agent":"a","tag":"nonsense"}"#,
            r#"{"time":"t","agent":"a","tag":"ready"}"#,
            r#"{"seq":-1,"time":"t","agent":"a","tag":"ready"}"#,
            r#"{"seq":1,"time":"t","agent":"a","size":"12"}"#,
            r#"{"seq":1,"time":"t","agent":"a","tag":"ready"} trailing"#,
            "not json",
        ] {
            assert_eq!(
                Event::parse(line).map_err(|e| e.to_string()),
                general(line),
                "{line}"
            );
        }
    }

    #[test]
    fn a_notify_round_trips_through_a_log_line() {
        let change = Change::Put {
            path: RelPath::new("dir/foo.txt").expect("valid"),
            entry: Entry::file(3, ContentHash::from([0xaa; 32]), 0o644),
        };
        let event = Event {
            seq: 7,
            time: now_rfc3339(),
            agent: "master".into(),
            body: Draft::notify(&change),
        };
        let line = event.to_line();
        assert!(
            line.contains(r#""tag":"notify""#) && line.contains(r#""path":"dir/foo.txt""#),
            "{line}"
        );
        assert!(
            line.contains(&format!(r#""sha256":"{}""#, "a".repeat(64))),
            "{line}"
        );
        assert!(
            !line.contains("path_b64"),
            "UTF-8 names carry no encoding: {line}"
        );
        let back = Event::parse(&line).expect("parses");
        assert_eq!(back, event);
        assert_eq!(back.body.change(), Ok(change));
    }

    #[test]
    fn non_utf8_names_are_carried_exactly() {
        let change = Change::Move {
            from: RelPath::from_bytes(b"caf\xe9").expect("valid"),
            to: RelPath::new("cafe").expect("valid"),
            kind: Kind::File,
        };
        let draft = Draft::notify(&change);
        assert_eq!(draft.from.as_deref(), Some("caf\u{fffd}"));
        assert_eq!(draft.from_b64.as_deref(), Some("Y2Fm6Q=="));
        assert_eq!(draft.change(), Ok(change));
    }

    #[test]
    fn hostile_drafts_are_refused() {
        let parse = |json: &str| serde_json::from_str::<Draft>(json);
        assert!(
            parse(r#"{"tag":"notify","surprise":1}"#).is_err(),
            "unknown fields"
        );
        let escape = parse(r#"{"tag":"notify","op":"delete","kind":"file","path":"../etc"}"#)
            .expect("parses");
        assert!(escape.change().is_err());
        let absolute =
            parse(r#"{"tag":"notify","op":"delete","kind":"file","path":"/etc"}"#).expect("parses");
        assert!(absolute.change().is_err());
        let bad_sha = parse(r#"{"tag":"notify","op":"put","kind":"file","path":"f","mode":420,"size":1,"sha256":"../../x"}"#)
            .expect("parses");
        assert!(bad_sha.change().is_err());
    }
}
