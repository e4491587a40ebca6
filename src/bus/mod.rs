//! The bus: the only writer of the event log, the content store, and the way agents reach
//! each other.
//!
//! - [`api`]: the bus as agents see it, whichever backend: `BusApi`, `Dial`, `Reply`, and the
//!   ordering every backend keeps.
//! - [`memory`]: an in-memory backend, for the agents' unit tests.
//! - [`frame`]: the wire framing (length-prefixed JSON header + binary body).
//! - [`protocol`]: the messages, version 6.
//! - [`log`]: the event log in segments: append, recover, read by `seq`, rotate, truncate.
//! - [`retention`]: checkpoints at segment ends, and what of the log and checkpoints is kept.
//! - [`blobs`]: content addressed by SHA-256; [`pack`]: the small ones, appended to packs.
//! - [`follow`]: new large files' chunks announced as they are stored, for idle slaves.
//! - [`gates`]: checkpoint gates that hold agents, on test buses only.
//! - [`gc`]: content nothing retained refers to, removed after a grace period.
//! - [`tls`]: mutual TLS with pinned peer IDs.
//! - [`status`]: the report `filesync status` prints, and its health verdict.
//! - [`server`]: accepts agents and serves all of the above.
//! - [`client`]: the embedded bus's backend on the agents' side (`BusClient`, `TcpDial`), and
//!   `Subscription`.

pub mod api;
pub mod blobs;
pub mod client;
pub mod crash;
pub mod follow;
pub mod frame;
pub mod gates;
pub mod gc;
pub mod log;
pub mod memory;
pub mod pack;
pub mod protocol;
pub mod retention;
pub mod server;
pub mod status;
pub mod tls;

pub use api::{BusApi, Dial, Link, Reply};
pub use client::{BusClient, ClientError, Hello, Subscription, TcpDial, Welcome};
pub use server::{Bus, BusOptions};

/// The way to the bus at `addr`: the one place an address picks a backend. Every address
/// is the embedded bus's today (`HOST:PORT`, over mutual TLS when `tls` is given); a second
/// networked backend (NATS) adds its scheme here.
pub fn dial(addr: &str, tls: Option<tls::ClientTls>) -> std::sync::Arc<dyn Dial> {
    std::sync::Arc::new(TcpDial {
        addr: addr.to_owned(),
        tls,
    })
}
