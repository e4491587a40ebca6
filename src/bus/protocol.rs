//! The bus protocol's messages (version 2), carried in frame headers as JSON.
//!
//! A connection starts with `hello` from the client, answered by `welcome` or `reject`
//! (after which the bus closes the connection). Then the client sends requests, each with an
//! `id` the bus echoes in its reply; replies may come out of order (a `poll` waits for new
//! events while other requests are answered).
//!
//! | request | body | reply |
//! |---|---|---|
//! | `publish {id, event}` | | `ok {id, seq}` once appended, or `err {id, error}` |
//! | `poll {id, from, max_bytes}` | | `events {id}` with log lines from `from` in the body; waits until one exists |
//! | `blob_has {id, sha256}` | | `ok {id, present}` |
//! | `blob_put {id, sha256}` | the whole content | `ok {id}` once verified and stored |
//! | `blob_piece {id, upload, offset}` | content piece | `ok {id}`; offset 0 starts upload number `upload` (the client's choice) |
//! | `blob_commit {id, upload, sha256}` | | `ok {id}` once the pieces hash to `sha256` and are stored |
//! | `blob_abort {id, upload}` | | `ok {id}`; the pieces are thrown away |
//! | `blob_get {id, sha256, offset, len}` | | `blob_data {id, eof}` with the piece in the body |
//! | `ping {id}` | | `ok {id}`: keeps an otherwise quiet connection from being dropped as idle |
//! | `file_chunk {id, upload, index, sha256, len}` | | `ok {id}`: chunk `index` of new file upload `upload` is stored, announced to followers |
//! | `file_end {id, upload, sha256, size}` / `file_abort {id, upload}` | | `ok {id}`: that file was all announced / stops short |
//! | `follow_next {id, after}` | | `following {id, file}`: the first announced file after number `after`; waits for one |
//! | `follow_get {id, file, index}` | | `followed {id, sha256, len, last}`: its chunk `index`, or (`last`) its end, once known |
//! | `checkpoint_get {id, seq, offset, len}` | | `blob_data {id, eof}`: a piece of the checkpoint at `seq` |
//!
//! A `poll` from before the log's start (it was truncated) is answered `truncated {id,
//! start}`: the reader resyncs from the checkpoint at `start - 1`.
//! | `arm`, `release`, `reached`, `disarm` | | checkpoint gates, on buses started with `--test-checkpoints` only |
//!
//! Content larger than one frame (a manifest of a file of some gigabytes) is sent in
//! pieces and its address given at the commit. The bus hashes what it receives either way
//! and stores nothing that does not match.
//!
//! Version 2 replaced version 1's `blob_put {offset, last}` pieces, addressed up front, by
//! `blob_piece` and `blob_commit`. Version 3 added the agent's `host` and `takeover` to the
//! hello, what to retry and how often to ping to the welcome, and `ping`. Version 4 stores
//! files larger than 1 MiB in content-defined chunks (`filesync_master::chunk`: FastCDC
//! 2020, 16 / 64 / 256 KiB), each chunk and each manifest a blob of its own, and a notify's
//! `manifest` names the manifest; the messages are unchanged, but content cut with other
//! sizes would not meet the store's. Version 5 added the log's `start` to the welcome, the
//! `truncated` reply and `checkpoint_get` (retention). Version 6 lets a listener's hello ask
//! not to be logged (`quiet`: no `join`), and adds `status`. The handshake refuses a peer speaking another
//! version.
//!
//! Subscription is pull-based: a subscriber asks for events from the `seq` it wants next,
//! so each one goes at its own pace and the bus keeps no per-subscriber queue.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use super::gates::Gate;
use crate::event::{Draft, Role};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 6;

/// The most content one frame carries: a `blob_put`, a `blob_piece`, a `blob_get`'s or a
/// `checkpoint_get`'s answer, a poll's events. Owned here, not by hashing: changing it
/// changes the wire ([`super::frame::MAX_FRAME`] follows), so it comes with a version bump.
pub const PIECE_SIZE: usize = 1 << 20;

/// Messages from an agent to the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Hello {
        protocol: u32,
        role: Role,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// The synced directory (masters and slaves): the log belongs to one master's, and
        /// a slave's may not nest with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dir: Option<String>,
        /// The agent's host name, which `dir` is a path on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// A master taking the log over from the master it belongs to.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        takeover: bool,
        /// A listener that reads without a `join` in the log.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        quiet: bool,
    },
    Publish {
        id: u64,
        event: Box<Draft>,
    },
    Poll {
        id: u64,
        from: u64,
        max_bytes: u64,
    },
    BlobHas {
        id: u64,
        sha256: String,
    },
    /// A whole blob, in the body.
    BlobPut {
        id: u64,
        sha256: String,
    },
    /// One piece of upload number `upload`; offset 0 starts it.
    BlobPiece {
        id: u64,
        upload: u64,
        offset: u64,
    },
    /// The end of upload number `upload`: store it if it hashes to `sha256`.
    BlobCommit {
        id: u64,
        upload: u64,
        sha256: String,
    },
    /// Throw upload number `upload` away.
    BlobAbort {
        id: u64,
        upload: u64,
    },
    BlobGet {
        id: u64,
        sha256: String,
        offset: u64,
        len: u64,
    },
    /// Test buses only (`--test-checkpoints`): hold an agent where `gate` says.
    Arm {
        id: u64,
        name: String,
        gate: Box<Gate>,
    },
    /// Test buses only: let the agent held at gate `name` go on.
    Release {
        id: u64,
        name: String,
    },
    /// Test buses only: answered (`ok {seq}`) once gate `name` has fired.
    Reached {
        id: u64,
        name: String,
    },
    /// Test buses only: release and forget every gate.
    Disarm {
        id: u64,
    },
    /// Nothing but proof of life.
    Ping {
        id: u64,
    },
    /// Chunk `index` of file upload `upload` (a number of the uploader's) is stored: it is
    /// announced to followers (see `follow.rs`).
    FileChunk {
        id: u64,
        upload: u64,
        index: u64,
        sha256: String,
        len: u32,
    },
    /// Every chunk of file upload `upload` was announced: the file's SHA-256 and size.
    FileEnd {
        id: u64,
        upload: u64,
        sha256: String,
        size: u64,
    },
    /// File upload `upload` stops short: its followers give up.
    FileAbort {
        id: u64,
        upload: u64,
    },
    /// The first file announced after number `after`; answered when there is one.
    FollowNext {
        id: u64,
        after: u64,
    },
    /// What announced file `file` holds at chunk `index`; answered once known.
    FollowGet {
        id: u64,
        file: u64,
        index: u64,
    },
    /// Part of the checkpoint at `seq` (`blob_data` in reply), for a slave that resyncs.
    CheckpointGet {
        id: u64,
        seq: u64,
        offset: u64,
        len: u64,
    },
    /// What the bus knows of its agents and itself (`status` in reply, the report as JSON
    /// in its body: `status.rs`).
    Status {
        id: u64,
    },
}

fn first_seq() -> u64 {
    1
}

fn is_first_seq(seq: &u64) -> bool {
    *seq == 1
}

/// Messages from the bus to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Welcome {
        protocol: u32,
        /// The last `seq` in the log when this agent joined (its own `join` excluded).
        head: u64,
        /// The first `seq` the log still holds (retention removed those before it).
        #[serde(default = "first_seq", skip_serializing_if = "is_first_seq")]
        start: u64,
        /// The highest notify `seq` this agent's name has answered, per the log.
        answered: u64,
        /// `[error seq, notify seq]` of this agent's errors to retry (see `rules::repairs`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        retry: Vec<[u64; 2]>,
        /// Send something (a `ping`) at least this often, or be dropped as idle.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keepalive_ms: Option<u64>,
    },
    Reject {
        error: String,
        /// The refusal may pass by itself (what it names is held by another connection).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        busy: bool,
    },
    Ok {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        present: Option<bool>,
    },
    Err {
        id: u64,
        error: String,
    },
    Events {
        id: u64,
    },
    BlobData {
        id: u64,
        eof: bool,
    },
    /// The answer to a `poll` from before the log's start: it was truncated; the state
    /// before `start` is the checkpoint at `start - 1`.
    Truncated {
        id: u64,
        start: u64,
    },
    /// The answer to `status`; the body is a `StatusReport` as JSON.
    Status {
        id: u64,
    },
    /// The answer to `follow_next`.
    Following {
        id: u64,
        file: u64,
    },
    /// The answer to `follow_get`: the chunk at that index, or (`last`) the end of the
    /// file, whose SHA-256 and size `sha256` and `len` then are.
    Followed {
        id: u64,
        sha256: String,
        len: u64,
        last: bool,
    },
}

impl Reply {
    /// The request this answers, if any.
    pub fn id(&self) -> Option<u64> {
        match self {
            Reply::Ok { id, .. }
            | Reply::Err { id, .. }
            | Reply::Events { id }
            | Reply::BlobData { id, .. }
            | Reply::Truncated { id, .. }
            | Reply::Following { id, .. }
            | Reply::Status { id }
            | Reply::Followed { id, .. } => Some(*id),
            Reply::Welcome { .. } | Reply::Reject { .. } => None,
        }
    }
}

// Reading the messages sent once per file quickly.
//
// serde reads an internally tagged enum (`"type": ...` among the fields) by first copying
// every field, nested ones included, into a generic tree, then reading the variant from that
// tree: for a `publish`, the whole event twice. It was 11% of the bus's CPU in W2. The
// messages sent for every file are therefore first tried as their own plain struct, when the
// header starts with their `type` (this build always writes `type` first); anything else,
// and anything the plain struct refuses, goes the general way, which also gives the error.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishFields {
    #[serde(rename = "type")]
    _type: IgnoredAny,
    id: u64,
    event: Box<Draft>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobPutFields {
    #[serde(rename = "type")]
    _type: IgnoredAny,
    id: u64,
    sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobGetFields {
    #[serde(rename = "type")]
    _type: IgnoredAny,
    id: u64,
    sha256: String,
    offset: u64,
    len: u64,
}

#[derive(Deserialize)]
struct OkFields {
    #[serde(rename = "type")]
    _type: IgnoredAny,
    id: u64,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    present: Option<bool>,
}

#[derive(Deserialize)]
struct BlobDataFields {
    #[serde(rename = "type")]
    _type: IgnoredAny,
    id: u64,
    eof: bool,
}

/// `header` read as the plain struct `F` and made into a message by `into`, when it starts
/// with `prefix` and reads as `F`.
fn quick<F: DeserializeOwned, T>(
    header: &[u8],
    prefix: &[u8],
    into: impl FnOnce(F) -> T,
) -> Option<T> {
    if !header.starts_with(prefix) {
        return None;
    }
    serde_json::from_slice::<F>(header).ok().map(into)
}

/// The quick reading when there was one, serde's general one (and its error) otherwise.
fn or_general<T: DeserializeOwned>(header: &[u8], quick: Option<T>) -> serde_json::Result<T> {
    quick.map_or_else(|| serde_json::from_slice(header), Ok)
}

impl Request {
    /// Reads a request from a frame header.
    pub fn parse(header: &[u8]) -> serde_json::Result<Request> {
        let read = quick(header, br#"{"type":"publish","#, |f: PublishFields| {
            Request::Publish {
                id: f.id,
                event: f.event,
            }
        })
        .or_else(|| {
            quick(header, br#"{"type":"blob_put","#, |f: BlobPutFields| {
                Request::BlobPut {
                    id: f.id,
                    sha256: f.sha256,
                }
            })
        })
        .or_else(|| {
            quick(header, br#"{"type":"blob_get","#, |f: BlobGetFields| {
                Request::BlobGet {
                    id: f.id,
                    sha256: f.sha256,
                    offset: f.offset,
                    len: f.len,
                }
            })
        });
        or_general(header, read)
    }
}

impl Reply {
    /// Reads a reply from a frame header.
    pub fn parse(header: &[u8]) -> serde_json::Result<Reply> {
        let read = quick(header, br#"{"type":"ok","#, |f: OkFields| Reply::Ok {
            id: f.id,
            seq: f.seq,
            present: f.present,
        })
        .or_else(|| {
            quick(header, br#"{"type":"blob_data","#, |f: BlobDataFields| {
                Reply::BlobData {
                    id: f.id,
                    eof: f.eof,
                }
            })
        });
        or_general(header, read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Tag;

    /// Every message the fast readers take, read both ways: the same value.
    #[test]
    fn the_quick_readers_agree_with_serde() {
        let requests = [
            Request::Publish {
                id: 7,
                event: Box::new(Draft::tagged(Tag::Ready)),
            },
            Request::BlobPut {
                id: 8,
                sha256: "ab".repeat(32),
            },
            Request::BlobGet {
                id: 9,
                sha256: "cd".repeat(32),
                offset: 1 << 20,
                len: 4096,
            },
            Request::Poll {
                id: 10,
                from: 3,
                max_bytes: 100,
            },
        ];
        for request in requests {
            let header = serde_json::to_vec(&request).expect("serialise");
            assert_eq!(Request::parse(&header).expect("parse"), request);
        }
        let replies = [
            Reply::Ok {
                id: 1,
                seq: Some(2),
                present: None,
            },
            Reply::Ok {
                id: 1,
                seq: None,
                present: Some(true),
            },
            Reply::BlobData { id: 3, eof: true },
            Reply::Events { id: 4 },
        ];
        for reply in replies {
            let header = serde_json::to_vec(&reply).expect("serialise");
            assert_eq!(Reply::parse(&header).expect("parse"), reply);
        }
    }

    /// What serde refuses, the fast readers refuse too, with serde's own error.
    #[test]
    fn the_quick_readers_refuse_what_serde_refuses() {
        for bad in [
            &br#"{"type":"publish","id":1,"event":{"tag":"ready"},"extra":1}"#[..],
            br#"{"type":"publish","id":1,"event":{"tag":"ready","bogus":2}}"#,
            br#"{"type":"blob_get","id":1,"sha256":"x","offset":0}"#,
            br#"{"type":"blob_put","id":-1,"sha256":"x"}"#,
            br#"{"type":"publish","id":1,"#,
        ] {
            let quick = Request::parse(bad).map_err(|err| err.to_string());
            let general = serde_json::from_slice::<Request>(bad).map_err(|err| err.to_string());
            assert!(quick.is_err(), "{}", String::from_utf8_lossy(bad));
            assert_eq!(quick, general);
        }
    }
}
