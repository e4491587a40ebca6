//! The bus framing (unchanged since protocol version 1).
//!
//! ```text
//! +----------------+----------------+----------------------+------------------+
//! | total: u32 BE  | header: u32 BE | header: JSON (UTF-8) | body: raw bytes  |
//! +----------------+----------------+----------------------+------------------+
//!   total = 4 + header length + body length, at most MAX_FRAME
//! ```
//!
//! The header is one JSON object with a `type` field (see `protocol`); the body carries file
//! content (blob pieces) or event log lines, so neither is ever base64-inflated. A frame
//! announcing more than `MAX_FRAME` bytes is refused before anything is allocated, so a peer
//! cannot make the bus reserve memory by lying about a length.

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::protocol::PIECE_SIZE;

/// The largest frame either side accepts: one content chunk plus room for its header.
pub const MAX_FRAME: usize = PIECE_SIZE + 64 * 1024;

/// The largest header accepted.
pub const MAX_HEADER: usize = 64 * 1024;

/// One frame: a JSON header and an optional binary body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Vec<u8>,
    pub body: Vec<u8>,
}

/// Why a frame could not be read. Every variant but `Io` is the peer's fault.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("connection closed in the middle of a frame")]
    Torn,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Frame {
    pub fn new(header: Vec<u8>, body: Vec<u8>) -> Frame {
        Frame { header, body }
    }
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
) -> Result<Option<Frame>, FrameError> {
    let mut len_bytes = [0u8; 4];
    match reader.read(&mut len_bytes[..1]).await? {
        0 => return Ok(None),
        _ => read_exact(reader, &mut len_bytes[1..]).await?,
    }
    let total = u32::from_be_bytes(len_bytes) as usize;
    if total > MAX_FRAME {
        return Err(FrameError::TooLarge(total));
    }
    if total < 4 {
        return Err(FrameError::Malformed(
            "frame shorter than its header length",
        ));
    }
    let mut header_len_bytes = [0u8; 4];
    read_exact(reader, &mut header_len_bytes).await?;
    let header_len = u32::from_be_bytes(header_len_bytes) as usize;
    if header_len > total - 4 || header_len > MAX_HEADER {
        return Err(FrameError::Malformed("header length exceeds frame"));
    }
    let mut header = vec![0u8; header_len];
    read_exact(reader, &mut header).await?;
    let mut body = vec![0u8; total - 4 - header_len];
    read_exact(reader, &mut body).await?;
    Ok(Some(Frame { header, body }))
}

async fn read_exact<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), FrameError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Torn),
        Err(err) => Err(err.into()),
    }
}

/// Writes the frames queued in `outbox` until it closes (then shuts the connection down for
/// writing) or the peer goes, flushing only when
/// the queue runs dry: frames sent in a burst leave in one `send` call instead of one each
/// (on loopback, the system calls and per-packet work were the largest cost of a burst of
/// small files after inode creation; see docs/BENCHMARKS.md).
pub async fn write_queued<W: AsyncWrite + Unpin>(
    writer: W,
    mut outbox: tokio::sync::mpsc::Receiver<Frame>,
) -> std::io::Result<()> {
    let mut writer = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, writer);
    while let Some(frame) = outbox.recv().await {
        write_frame(&mut writer, &frame).await?;
        while let Ok(frame) = outbox.try_recv() {
            write_frame(&mut writer, &frame).await?;
        }
        writer.flush().await?;
    }
    // The queue closed: say so to the peer.
    writer.shutdown().await
}

/// Bytes gathered before a write call goes out even if more frames are queued.
const WRITE_BUFFER: usize = 64 * 1024;

/// Writes one frame (the caller flushes).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> std::io::Result<()> {
    let total = 4 + frame.header.len() + frame.body.len();
    let mut head = Vec::with_capacity(8 + frame.header.len());
    head.extend_from_slice(&(total as u32).to_be_bytes());
    head.extend_from_slice(&(frame.header.len() as u32).to_be_bytes());
    head.extend_from_slice(&frame.header);
    writer.write_all(&head).await?;
    if !frame.body.is_empty() {
        writer.write_all(&frame.body).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_lies_are_refused() {
        let frame = Frame::new(br#"{"type":"x"}"#.to_vec(), vec![1, 2, 3]);
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &frame).await.expect("write");
        let mut reader = &bytes[..];
        assert_eq!(read_frame(&mut reader).await.expect("read"), Some(frame));
        assert!(read_frame(&mut reader).await.expect("clean end").is_none());

        let huge = (u32::MAX).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(FrameError::TooLarge(_))
        ));
        let torn = &bytes[..bytes.len() - 1];
        assert!(matches!(
            read_frame(&mut &torn[..]).await,
            Err(FrameError::Torn)
        ));
        let lying_header = [0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut &lying_header[..]).await,
            Err(FrameError::Malformed(_))
        ));
    }
}
