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
pub mod nats;
pub mod pack;
pub mod protocol;
pub mod retention;
pub mod server;
pub mod status;
pub mod tls;

pub use api::{BusApi, Dial, Link, Reply};
pub use client::{BusClient, ClientError, Hello, Subscription, TcpDial, Welcome};
pub use server::{Bus, BusOptions};

/// Whether `addr` (`HOST:PORT`) is on this machine: beyond it, traffic must be encrypted.
pub fn is_loopback(addr: &str) -> bool {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The way to the bus at `addr`: the one place an address picks a backend. `nats://...`
/// is NATS JetStream ([`nats::NatsAddress`] says the rest); any other address is the
/// embedded bus's (`HOST:PORT`, over mutual TLS when `tls` is given).
pub fn dial(addr: &str, tls: Option<tls::ClientTls>) -> std::sync::Arc<dyn Dial> {
    match nats::NatsAddress::parse(addr) {
        Some(Ok(address)) => std::sync::Arc::new(nats::NatsDial::new(address)),
        Some(Err(err)) => std::sync::Arc::new(nats::Unreachable(err)),
        None => std::sync::Arc::new(TcpDial {
            addr: addr.to_owned(),
            tls,
        }),
    }
}
