//! `BusClient`: the embedded bus's backend of the agents' API (`api.rs`): a connection
//! speaking `protocol.rs`, with `TcpDial` to make one; and `Subscription`, an ordered stream
//! of events from any `seq` over any backend's link.
//!
//! Requests are correlated with replies by id, so several may be in flight on one
//! connection (a subscription's long poll does not hold up an upload). A reader task routes
//! replies; it never blocks, because each reply has its own one-shot channel.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use filesync_master::chunk::ChunkRef;
use filesync_master::hash::ContentHash;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::api::{self, BusApi, Dial, Link, Piece, Sending, Upload};
use super::frame::{read_frame, write_frame, write_queued, Frame, FrameError};
use super::protocol::{Reply, Request, PIECE_SIZE, PROTOCOL_VERSION};
use super::tls::ClientTls;
use crate::checkpoint::Snapshot;
use crate::event::{Draft, Event, Role};

/// How much of the log one poll asks for.
const POLL_BYTES: u64 = 256 * 1024;

/// Why a bus request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cause is part of the message (not a `source`), so that it is printed once.
    #[error("cannot connect to the bus at {addr}: {cause}")]
    Connect { addr: String, cause: std::io::Error },
    #[error("the bus refused us: {0}")]
    Rejected(String),
    /// Refused for something another connection holds (our name, the master's place):
    /// worth trying again once it is gone.
    #[error("the bus refused us: {0}")]
    Busy(String),
    #[error("the bus refused the request: {0}")]
    Refused(String),
    #[error("the bus sent something unexpected: {0}")]
    Protocol(String),
    #[error("lost the connection to the bus")]
    Lost,
    /// The events asked for were removed by retention: the log now starts at `start`, and
    /// the checkpoint at `start - 1` holds the state before it (`fetch_checkpoint`).
    #[error("the bus's log now starts at seq {start}: older events were removed by retention")]
    Truncated { start: u64 },
    /// An optional capability this backend does not have (`api.rs`).
    #[error("the bus does not offer this")]
    Unsupported,
}

impl ClientError {
    /// True when retrying on a new connection may help.
    pub fn is_connection(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Lost)
    }
}

/// What the bus told us when we joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The last `seq` in the log before our join.
    pub head: u64,
    /// The first `seq` the log still holds: a reader behind it resyncs from the checkpoint
    /// at `start - 1`.
    pub start: u64,
    /// The highest notify our name answered.
    pub answered: u64,
    /// `(error seq, notify seq)` of our errors to retry, oldest first.
    pub retry: Vec<(u64, u64)>,
}

/// Who we are, for the handshake.
#[derive(Debug, Clone)]
pub struct Hello {
    pub role: Role,
    pub name: String,
    pub token: Option<String>,
    /// The synced directory, for a master or slave.
    pub dir: Option<String>,
    /// This machine's name, which `dir` is a path on.
    pub host: Option<String>,
    /// A master taking the log over from the one it belongs to.
    pub takeover: bool,
    /// A listener that reads without a `join` in the log (`filesync listen` without
    /// `--announce`).
    pub quiet: bool,
}

impl Hello {
    /// A hello for an agent that syncs no directory (a listener, a test's raw peer).
    pub fn new(role: Role, name: &str, token: Option<String>) -> Hello {
        Hello {
            role,
            name: name.to_owned(),
            token,
            dir: None,
            host: None,
            takeover: false,
            quiet: false,
        }
    }
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<(Reply, Vec<u8>)>>>>>;

/// A connection to the bus. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct BusClient {
    /// Frames to send, in order; one task writes them, batching bursts.
    outbox: mpsc::Sender<Frame>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
}

impl BusClient {
    /// Connects over plain TCP and says hello.
    pub async fn connect(addr: &str, hello: Hello) -> Result<(BusClient, Welcome), ClientError> {
        BusClient::connect_with(addr, hello, None).await
    }

    /// Connects (over mutual TLS when `tls` is given: `tls.rs`) and says hello.
    ///
    /// A peer that accepts the connection but does not complete the handshake within
    /// [`HANDSHAKE_TIMEOUT`] (something that is not a bus on that port) is an error, not a
    /// wait.
    pub async fn connect_with(
        addr: &str,
        hello: Hello,
        tls: Option<&ClientTls>,
    ) -> Result<(BusClient, Welcome), ClientError> {
        let connect_error = |cause| ClientError::Connect {
            addr: addr.to_owned(),
            cause,
        };
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(connected) => connected.map_err(connect_error)?,
            Err(_) => return Err(connect_error(std::io::ErrorKind::TimedOut.into())),
        };
        let _ = stream.set_nodelay(true);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, hello, tls)).await {
            Ok(done) => done,
            Err(_) => Err(ClientError::Protocol(format!(
                "{addr} accepted the connection but sent no welcome within {HANDSHAKE_TIMEOUT:?}: is it a filesync bus?"
            ))),
        }
    }
}

/// How long a peer may take from accepting our connection to welcoming us.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS (when asked), hello, welcome; then the connection's reader and writer tasks.
async fn handshake(
    stream: TcpStream,
    hello: Hello,
    tls: Option<&ClientTls>,
) -> Result<(BusClient, Welcome), ClientError> {
    let (halves, verifier) = match tls {
        None => (super::tls::split_plain(stream), None),
        Some(tls) => {
            let (connector, checked) = tls
                .connector()
                .map_err(|err| ClientError::Rejected(format!("TLS: {err:#}")))?;
            let name = rustls::pki_types::ServerName::try_from("filesync")
                .map_err(|err| ClientError::Protocol(err.to_string()))?;
            match connector.connect(name, stream).await {
                Ok(stream) => (super::tls::split(stream), Some(checked)),
                Err(err) => return Err(ClientError::Rejected(tls.explain(&err, &checked))),
            }
        }
    };
    greet(halves, hello, tls.zip(verifier.as_deref())).await
}

/// Hello and welcome over a connection (plain, TLS, or in-process); then the connection's
/// reader and writer tasks. `tls` explains a refusal the TLS layer reports.
pub(crate) async fn greet(
    (read_half, write_half): (super::tls::ReadHalf, super::tls::WriteHalf),
    hello: Hello,
    tls: Option<(&ClientTls, &super::tls::BusVerifier)>,
) -> Result<(BusClient, Welcome), ClientError> {
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(write_half);
    let request = Request::Hello {
        protocol: PROTOCOL_VERSION,
        role: hello.role,
        name: hello.name,
        token: hello.token,
        dir: hello.dir,
        host: hello.host,
        takeover: hello.takeover,
        quiet: hello.quiet,
    };
    send(&mut writer, &request, &[]).await?;
    let frame = match read_frame(&mut reader).await {
        Ok(Some(frame)) => frame,
        // In TLS 1.3 the bus judges our certificate after we think the handshake done:
        // its refusal arrives as the first read's error.
        Err(FrameError::Io(err)) if super::tls::tls_error(&err).is_some() => {
            let explained = match tls {
                Some((tls, verifier)) => tls.explain(&err, verifier),
                None => err.to_string(),
            };
            return Err(ClientError::Rejected(explained));
        }
        // Reset, refused mid-handshake or closed: the bus is (re)starting; try again.
        Ok(None) | Err(FrameError::Io(_) | FrameError::Torn) => return Err(ClientError::Lost),
        // A TLS record (an alert: content type 21, version 3.x) where a frame was due.
        Err(FrameError::TooLarge(len)) if tls.is_none() && len >> 16 == 0x1503 => {
            return Err(ClientError::Rejected(
                "the bus speaks TLS: pass --bus-id ID (the bus's `filesync id`)".into(),
            ))
        }
        Err(err) => return Err(ClientError::Protocol(err.to_string())),
    };
    let (welcome, keepalive) = match serde_json::from_slice::<Reply>(&frame.header) {
        Ok(Reply::Welcome {
            protocol,
            head,
            start,
            answered,
            retry,
            keepalive_ms,
        }) if protocol == PROTOCOL_VERSION => (
            Welcome {
                head,
                start,
                answered,
                retry: retry.into_iter().map(|[e, n]| (e, n)).collect(),
            },
            keepalive_ms.map(Duration::from_millis),
        ),
        Ok(Reply::Reject { error, busy: true }) => return Err(ClientError::Busy(error)),
        Ok(Reply::Reject { error, .. }) => return Err(ClientError::Rejected(error)),
        Ok(other) => {
            return Err(ClientError::Protocol(format!(
                "expected welcome, got {other:?}"
            )))
        }
        Err(err) => return Err(ClientError::Protocol(err.to_string())),
    };
    let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
    tokio::spawn(read_loop(reader, pending.clone()));
    let (outbox, queued) = mpsc::channel(OUTBOX);
    tokio::spawn(write_loop(writer.into_inner(), queued, pending.clone()));
    if let Some(every) = keepalive {
        tokio::spawn(keep_alive(outbox.downgrade(), every));
    }
    Ok((
        BusClient {
            outbox,
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
        },
        welcome,
    ))
}

impl BusClient {
    /// Sends a request now and returns its reply-to-come: requests go out in the order they
    /// are sent, replies are awaited whenever the caller likes (pipelining).
    async fn send_request(
        &self,
        make: impl FnOnce(u64) -> Request,
        body: &[u8],
    ) -> Result<PendingReply, ClientError> {
        self.send_request_owned(make, body.to_vec()).await
    }

    /// `send_request` for a body the caller is done with (no copy of a content piece).
    async fn send_request_owned(
        &self,
        make: impl FnOnce(u64) -> Request,
        body: Vec<u8>,
    ) -> Result<PendingReply, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.as_mut().ok_or(ClientError::Lost)?.insert(id, tx);
        }
        let header =
            serde_json::to_vec(&make(id)).map_err(|err| ClientError::Protocol(err.to_string()))?;
        self.outbox
            .send(Frame::new(header, body))
            .await
            .map_err(|_| ClientError::Lost)?;
        Ok(PendingReply { rx })
    }

    pub(super) async fn request(
        &self,
        make: impl FnOnce(u64) -> Request,
        body: &[u8],
    ) -> Result<(Reply, Vec<u8>), ClientError> {
        self.send_request(make, body).await?.wait().await
    }

    /// Sends a publish now; its reply (the `seq`) is awaited later with `PendingReply::seq`.
    async fn publish_pipelined(&self, event: Draft) -> Result<PendingReply, ClientError> {
        let event = Box::new(event);
        self.send_request(|id| Request::Publish { id, event }, &[])
            .await
    }

    /// Asks for the piece of a blob at `offset` now; the data is awaited later with
    /// `PendingReply::data`.
    async fn blob_get_pipelined(
        &self,
        sha256: &str,
        offset: u64,
    ) -> Result<PendingReply, ClientError> {
        let sha256 = sha256.to_owned();
        let len = PIECE_SIZE as u64;
        self.send_request(
            |id| Request::BlobGet {
                id,
                sha256,
                offset,
                len,
            },
            &[],
        )
        .await
    }

    /// Asks now whether the bus holds `sha256`; the answer is awaited later with
    /// `PendingReply::present`.
    async fn blob_has_pipelined(&self, sha256: &str) -> Result<PendingReply, ClientError> {
        let sha256 = sha256.to_owned();
        self.send_request(|id| Request::BlobHas { id, sha256 }, &[])
            .await
    }

    /// Sends a whole small blob now; its acknowledgement is awaited later with
    /// `PendingReply::wait`.
    async fn blob_put_pipelined(
        &self,
        sha256: &str,
        content: Vec<u8>,
    ) -> Result<PendingReply, ClientError> {
        let sha256 = sha256.to_owned();
        self.send_request_owned(|id| Request::BlobPut { id, sha256 }, content)
            .await
    }

    /// A number for a new upload of this connection (pieces, or a file's announcements).
    fn new_upload(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Announces chunk `index` of file upload `upload`, stored already; the reply is awaited
    /// later.
    async fn file_chunk_pipelined(
        &self,
        upload: u64,
        index: u64,
        chunk: ChunkRef,
    ) -> Result<PendingReply, ClientError> {
        let (sha256, len) = (chunk.sha256.to_hex(), chunk.len);
        self.send_request(
            |id| Request::FileChunk {
                id,
                upload,
                index,
                sha256,
                len,
            },
            &[],
        )
        .await
    }

    /// Ends file upload `upload`: with its SHA-256 and size, or (`None`) short.
    async fn file_end(
        &self,
        upload: u64,
        whole: Option<(ContentHash, u64)>,
    ) -> Result<(), ClientError> {
        let request = |id| match whole {
            Some((sha256, size)) => Request::FileEnd {
                id,
                upload,
                sha256: sha256.to_hex(),
                size,
            },
            None => Request::FileAbort { id, upload },
        };
        self.request(request, &[]).await.map(|_| ())
    }

    /// The first file announced after number `after`; waits until there is one.
    async fn follow_next(&self, after: u64) -> Result<u64, ClientError> {
        match self
            .request(|id| Request::FollowNext { id, after }, &[])
            .await?
        {
            (Reply::Following { file, .. }, _) => Ok(file),
            (other, _) => Err(ClientError::Protocol(format!(
                "expected an announced file, got {other:?}"
            ))),
        }
    }

    /// Asks what announced file `file` holds at chunk `index`; awaited with
    /// `PendingReply::followed`.
    async fn follow_get_pipelined(
        &self,
        file: u64,
        index: u64,
    ) -> Result<PendingReply, ClientError> {
        self.send_request(|id| Request::FollowGet { id, file, index }, &[])
            .await
    }

    /// Starts an upload in pieces, for content too large for one frame. Its address is given
    /// at the commit, so it can be sent while it is still being hashed.
    fn begin_upload(&self) -> BlobUpload {
        BlobUpload {
            client: self.clone(),
            upload: self.new_upload(),
            offset: 0,
            in_flight: VecDeque::new(),
        }
    }

    /// The checkpoint the bus holds at `seq` (the state the log implies there), fetched
    /// piece by piece; refused when the bus has none at that `seq`.
    /// What the bus knows of its agents and itself (`filesync status`).
    async fn status(&self) -> Result<super::status::StatusReport, ClientError> {
        let (reply, body) = self.request(|id| Request::Status { id }, &[]).await?;
        match reply {
            Reply::Status { .. } => serde_json::from_slice(&body)
                .map_err(|err| ClientError::Protocol(format!("bad status report: {err}"))),
            other => Err(ClientError::Protocol(format!(
                "expected a status report, got {other:?}"
            ))),
        }
    }

    async fn fetch_checkpoint(&self, seq: u64) -> Result<Snapshot, ClientError> {
        let mut bytes = Vec::new();
        loop {
            let offset = bytes.len() as u64;
            let (reply, body) = self
                .request(
                    |id| Request::CheckpointGet {
                        id,
                        seq,
                        offset,
                        len: PIECE_SIZE as u64,
                    },
                    &[],
                )
                .await?;
            let Reply::BlobData { eof, .. } = reply else {
                return Err(ClientError::Protocol(format!(
                    "expected checkpoint data, got {reply:?}"
                )));
            };
            bytes.extend_from_slice(&body);
            if eof {
                break;
            }
            if body.is_empty() {
                return Err(ClientError::Protocol("empty checkpoint piece".into()));
            }
        }
        Snapshot::parse(&bytes)
            .map_err(|err| ClientError::Protocol(format!("bad checkpoint at {seq}: {err}")))
    }
}

/// An upload in pieces under way: up to [`PIECES_IN_FLIGHT`] pieces are sent before the
/// oldest's reply is awaited, so producing the next piece overlaps with the bus storing the
/// last. Finish it with `commit` or `abort`; the bus drops an unfinished upload when the
/// connection closes.
pub struct BlobUpload {
    client: BusClient,
    upload: u64,
    offset: u64,
    in_flight: VecDeque<PendingReply>,
}

impl BlobUpload {
    /// Sends the next piece.
    pub async fn piece(&mut self, piece: Vec<u8>) -> Result<(), ClientError> {
        let (upload, offset) = (self.upload, self.offset);
        self.offset += piece.len() as u64;
        let sent = self
            .client
            .send_request_owned(|id| Request::BlobPiece { id, upload, offset }, piece)
            .await?;
        self.in_flight.push_back(sent);
        while self.in_flight.len() > PIECES_IN_FLIGHT {
            if let Some(oldest) = self.in_flight.pop_front() {
                oldest.wait().await?;
            }
        }
        Ok(())
    }

    /// Asks the bus to store what was sent under `sha256`; fails if it hashes otherwise.
    pub async fn commit(mut self, sha256: &str) -> Result<(), ClientError> {
        let (upload, sha256) = (self.upload, sha256.to_owned());
        let committed = self
            .client
            .send_request(|id| Request::BlobCommit { id, upload, sha256 }, &[])
            .await?;
        for piece in self.in_flight.drain(..) {
            piece.wait().await?;
        }
        committed.wait().await.map(|_| ())
    }

    /// Tells the bus to throw what was sent away. Only a lost connection is an error: a
    /// refused piece has ended the upload already.
    pub async fn abort(mut self) -> Result<(), ClientError> {
        let upload = self.upload;
        let aborted = self
            .client
            .send_request(|id| Request::BlobAbort { id, upload }, &[])
            .await?;
        for reply in self.in_flight.drain(..).chain([aborted]) {
            match reply.wait().await {
                Err(err) if err.is_connection() => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }
}

/// A reply still to come for a request already sent.
pub struct PendingReply {
    rx: oneshot::Receiver<(Reply, Vec<u8>)>,
}

fn refused_as_error(received: (Reply, Vec<u8>)) -> Result<(Reply, Vec<u8>), ClientError> {
    match received {
        (Reply::Err { error, .. }, _) => Err(ClientError::Refused(error)),
        received => Ok(received),
    }
}

fn seq_of(reply: Reply) -> Result<u64, ClientError> {
    match reply {
        Reply::Ok { seq: Some(seq), .. } => Ok(seq),
        other => Err(ClientError::Protocol(format!(
            "expected ok with seq, got {other:?}"
        ))),
    }
}

impl PendingReply {
    pub async fn wait(self) -> Result<(Reply, Vec<u8>), ClientError> {
        refused_as_error(self.rx.await.map_err(|_| ClientError::Lost)?)
    }

    /// The `seq` a pipelined publish was given.
    pub async fn seq(self) -> Result<u64, ClientError> {
        seq_of(self.wait().await?.0)
    }

    /// The answer to a `follow_get`: a chunk, or (`last`) the file's SHA-256 and size.
    pub async fn followed(self) -> Result<(ChunkRef, bool, u64), ClientError> {
        match self.wait().await?.0 {
            Reply::Followed {
                sha256, len, last, ..
            } => {
                let sha256 = ContentHash::parse_hex(&sha256)
                    .ok_or_else(|| ClientError::Protocol(format!("not a sha256: {sha256:?}")))?;
                let chunk_len = if last { 0 } else { len as u32 };
                Ok((
                    ChunkRef {
                        sha256,
                        len: chunk_len,
                    },
                    last,
                    len,
                ))
            }
            other => Err(ClientError::Protocol(format!(
                "expected a followed chunk, got {other:?}"
            ))),
        }
    }

    /// The answer to a `blob_has`.
    pub async fn present(self) -> Result<bool, ClientError> {
        match self.wait().await?.0 {
            Reply::Ok {
                present: Some(present),
                ..
            } => Ok(present),
            other => Err(ClientError::Protocol(format!("expected ok, got {other:?}"))),
        }
    }

    /// The piece a pipelined blob fetch returned, and whether it was the last.
    pub async fn data(self) -> Result<(Vec<u8>, bool), ClientError> {
        match self.wait().await? {
            (Reply::BlobData { eof, .. }, body) => Ok((body, eof)),
            (other, _) => Err(ClientError::Protocol(format!(
                "expected blob data, got {other:?}"
            ))),
        }
    }
}

/// The events a poll's reply carries.
fn events_of((reply, body): (Reply, Vec<u8>)) -> Result<Vec<Event>, ClientError> {
    if let Reply::Truncated { start, .. } = reply {
        return Err(ClientError::Truncated { start });
    }
    if !matches!(reply, Reply::Events { .. }) {
        return Err(ClientError::Protocol(format!(
            "expected events, got {reply:?}"
        )));
    }
    let text = std::str::from_utf8(&body).map_err(|err| ClientError::Protocol(err.to_string()))?;
    text.lines()
        .map(|line| {
            Event::parse(line).map_err(|err| ClientError::Protocol(format!("bad log line: {err}")))
        })
        .collect()
}

async fn send(
    writer: &mut BufWriter<super::tls::WriteHalf>,
    request: &Request,
    body: &[u8],
) -> Result<(), ClientError> {
    let header =
        serde_json::to_vec(request).map_err(|err| ClientError::Protocol(err.to_string()))?;
    let frame = Frame::new(header, body.to_vec());
    write_frame(writer, &frame)
        .await
        .map_err(|_| ClientError::Lost)?;
    writer.flush().await.map_err(|_| ClientError::Lost)
}

/// Pieces of one blob sent ahead of their replies, in uploads and downloads: enough to keep
/// both sides busy, few enough that memory stays a handful of pieces.
pub const PIECES_IN_FLIGHT: usize = 4;

/// Requests queued and not yet written; enough for the slave's and master's pipelines.
const OUTBOX: usize = 256;

/// Pings the bus every `every` for as long as the connection lasts, so that a client with
/// nothing to say (a master whose directory is quiet) is not taken for an idle peer. The
/// reply (to id 0, which no request uses) is dropped by the reader. It holds the outbox
/// weakly: the connection closes when the last `BusClient` is dropped, pings or not.
async fn keep_alive(outbox: mpsc::WeakSender<Frame>, every: Duration) {
    let ping = serde_json::to_vec(&Request::Ping { id: 0 }).unwrap_or_default();
    loop {
        tokio::time::sleep(every).await;
        let Some(outbox) = outbox.upgrade() else {
            return;
        };
        if outbox
            .send(Frame::new(ping.clone(), Vec::new()))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn write_loop(
    write_half: super::tls::WriteHalf,
    queued: mpsc::Receiver<Frame>,
    pending: Pending,
) {
    if let Err(err) = write_queued(write_half, queued).await {
        tracing::debug!("connection lost while writing: {err}");
        // Nothing more can be sent, so nothing pending will be answered.
        pending.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

async fn read_loop(mut reader: BufReader<super::tls::ReadHalf>, pending: Pending) {
    loop {
        let frame = match read_frame(&mut reader).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(err) => {
                tracing::debug!("bus connection: {err}");
                break;
            }
        };
        let Ok(reply) = Reply::parse(&frame.header) else {
            tracing::warn!("the bus sent an unreadable frame; closing");
            break;
        };
        let Some(id) = reply.id() else { continue };
        let waiter = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|map| map.remove(&id));
        if let Some(waiter) = waiter {
            let _ = waiter.send((reply, frame.body));
        }
    }
    // Dropping every waiter tells each request the connection is gone.
    pending.lock().unwrap_or_else(|p| p.into_inner()).take();
}

/// The log, in order, from a chosen `seq` on: backlog first, then live events.
pub struct Subscription {
    client: Link,
    next: u64,
    buffered: VecDeque<Event>,
}

impl Subscription {
    pub fn new(client: Link, from: u64) -> Subscription {
        Subscription {
            client,
            next: from.max(1),
            buffered: VecDeque::new(),
        }
    }

    /// The `seq` the next event will have.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Goes on from `start` after `next` said the events before it were removed by
    /// retention (`ClientError::Truncated`): for a reader that only shows the log, not one
    /// that must see every event (that one resyncs from the checkpoint).
    pub fn skip_to(&mut self, start: u64) {
        self.next = self.next.max(start);
        self.buffered.clear();
    }

    /// True when every event received so far has been handed out (the next `next()` asks
    /// the bus).
    pub fn is_drained(&self) -> bool {
        self.buffered.is_empty()
    }

    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                self.next = event.seq + 1;
                return Ok(event);
            }
            let events = api::call(self.client.poll(self.next)).await?;
            // Guard against a confused bus: only the exact next seq is accepted (in a view
            // of the log, a later one).
            let whole = self.client.reads_whole_log();
            for event in events {
                let expected = self.buffered.back().map_or(self.next, |last| last.seq + 1);
                let in_order = if whole {
                    event.seq == expected
                } else {
                    event.seq >= expected
                };
                if !in_order {
                    return Err(ClientError::Protocol(format!(
                        "expected seq {expected}, got {}",
                        event.seq
                    )));
                }
                self.buffered.push_back(event);
            }
        }
    }
}

/// The embedded bus over TCP (or mutual TLS), as the agents' API.
impl BusApi for BusClient {
    fn publish(&self, event: Draft) -> Sending<'_, u64> {
        Box::pin(async move {
            let sent = self.publish_pipelined(event).await?;
            Ok(api::Reply::new(sent.seq()))
        })
    }

    fn poll(&self, from: u64) -> Sending<'_, Vec<Event>> {
        Box::pin(async move {
            let request = |id| Request::Poll {
                id,
                from,
                max_bytes: POLL_BYTES,
            };
            let sent = self.send_request(request, &[]).await?;
            Ok(api::Reply::new(
                async move { events_of(sent.wait().await?) },
            ))
        })
    }

    fn has(&self, address: ContentHash) -> Sending<'_, bool> {
        Box::pin(async move {
            let sent = self.blob_has_pipelined(&address.to_hex()).await?;
            Ok(api::Reply::new(sent.present()))
        })
    }

    fn put(&self, address: ContentHash, content: Vec<u8>) -> Sending<'_, ()> {
        Box::pin(async move {
            let sent = self.blob_put_pipelined(&address.to_hex(), content).await?;
            Ok(api::Reply::new(
                async move { sent.wait().await.map(|_| ()) },
            ))
        })
    }

    fn get(&self, address: ContentHash, offset: u64) -> Sending<'_, Piece> {
        Box::pin(async move {
            let sent = self.blob_get_pipelined(&address.to_hex(), offset).await?;
            Ok(api::Reply::new(sent.data()))
        })
    }

    fn begin_upload(&self) -> Box<dyn Upload + '_> {
        Box::new(BusClient::begin_upload(self))
    }

    fn checkpoint(&self, seq: u64) -> Sending<'_, crate::checkpoint::Snapshot> {
        Box::pin(async move { Ok(api::Reply::ready(self.fetch_checkpoint(seq).await)) })
    }

    fn status(&self) -> Sending<'_, super::status::StatusReport> {
        Box::pin(async move { Ok(api::Reply::ready(BusClient::status(self).await)) })
    }

    fn new_announcement(&self) -> Option<u64> {
        Some(self.new_upload())
    }

    fn announce_chunk(&self, file: u64, index: u64, chunk: ChunkRef) -> Sending<'_, ()> {
        Box::pin(async move {
            let sent = self.file_chunk_pipelined(file, index, chunk).await?;
            Ok(api::Reply::new(
                async move { sent.wait().await.map(|_| ()) },
            ))
        })
    }

    fn announce_end(&self, file: u64, whole: Option<(ContentHash, u64)>) -> Sending<'_, ()> {
        Box::pin(async move { Ok(api::Reply::ready(self.file_end(file, whole).await)) })
    }

    fn follow_next(&self, after: u64) -> Sending<'_, u64> {
        Box::pin(async move { Ok(api::Reply::ready(BusClient::follow_next(self, after).await)) })
    }

    fn follow_get(&self, file: u64, index: u64) -> Sending<'_, (ChunkRef, bool, u64)> {
        Box::pin(async move {
            let sent = self.follow_get_pipelined(file, index).await?;
            Ok(api::Reply::new(sent.followed()))
        })
    }
}

impl Upload for BlobUpload {
    fn piece(&mut self, piece: Vec<u8>) -> Sending<'_, ()> {
        Box::pin(async move {
            BlobUpload::piece(self, piece).await?;
            Ok(api::Reply::ready(Ok(())))
        })
    }

    fn commit(self: Box<Self>, address: ContentHash) -> Sending<'static, ()> {
        Box::pin(async move {
            let committed = BlobUpload::commit(*self, &address.to_hex()).await;
            Ok(api::Reply::ready(committed))
        })
    }

    fn abort(self: Box<Self>) -> Sending<'static, ()> {
        Box::pin(async move { Ok(api::Reply::ready(BlobUpload::abort(*self).await)) })
    }
}

/// The way to the embedded bus at an address, over TCP or mutual TLS.
pub struct TcpDial {
    pub addr: String,
    pub tls: Option<ClientTls>,
}

impl Dial for TcpDial {
    fn dial<'a>(&'a self, hello: &'a Hello) -> api::Dialing<'a> {
        Box::pin(async move {
            let (client, welcome) =
                BusClient::connect_with(&self.addr, hello.clone(), self.tls.as_ref()).await?;
            Ok((Arc::new(client) as Link, welcome))
        })
    }

    fn describe(&self) -> String {
        self.addr.clone()
    }
}
