//! Mutual TLS 1.3 between the bus and its peers, with pinned IDs instead of a certificate
//! authority (`identity.rs` says what an ID is).
//!
//! The bus accepts a peer only if the key in its certificate has an ID on the bus's list
//! (`--peer ID`, repeatable, and `--peers FILE`, read again at every handshake so that a
//! peer can be added without a restart; the bus's own ID is always on it). A peer accepts
//! the bus only if its key has the ID it was given (`--bus-id`). Both check that the
//! certificate is well formed, self-signed by that key and valid now, and both prove the
//! key with the handshake's signature. TLS 1.2 is not offered or accepted.
//!
//! Refusals are one line each, naming the ID seen and what was expected; a verifier never
//! logs key material.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::identity::{Identity, PeerId};

/// A connection's halves, plain TCP or TLS alike.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Splits a plain TCP connection.
pub fn split_plain(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (read, write) = stream.into_split();
    (Box::new(read), Box::new(write))
}

/// Splits any stream (a TLS one).
pub fn split<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> (ReadHalf, WriteHalf) {
    let (read, write) = tokio::io::split(stream);
    (Box::new(read), Box::new(write))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks that `cert` is well formed, signed by its own key, and valid at `now`. (An agent's
/// certificate names both purposes, being the server's and the client's alike; client
/// authentication is the one checked.)
pub fn check_valid(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(cert)?;
    let end_entity = webpki::EndEntityCert::try_from(cert)?;
    let algs = provider().signature_verification_algorithms;
    end_entity
        .verify_for_usage(
            algs.all,
            &[anchor],
            &[],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
}

/// The ID in a peer's certificate, once the certificate is found well formed and valid.
fn identify(cert: &CertificateDer<'_>, now: UnixTime) -> Result<PeerId, rustls::Error> {
    let invalid = |err: webpki::Error| {
        rustls::Error::InvalidCertificate(match err {
            webpki::Error::CertExpired { .. } => CertificateError::Expired,
            webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
            _ => CertificateError::BadEncoding,
        })
    };
    check_valid(cert, now).map_err(invalid)?;
    PeerId::of_cert(cert).map_err(invalid)
}

/// The IDs a bus lets in.
#[derive(Debug, Default, Clone)]
pub struct PeerList {
    /// From `--peer`, and the bus's own.
    pub ids: HashSet<PeerId>,
    /// `--peers FILE`: one ID per line; `#` starts a comment.
    pub file: Option<PathBuf>,
}

impl PeerList {
    /// Whether `id` may connect (the file is read now).
    pub fn allows(&self, id: &PeerId) -> bool {
        if self.ids.contains(id) {
            return true;
        }
        let Some(file) = &self.file else {
            return false;
        };
        match std::fs::read_to_string(file) {
            Ok(text) => text
                .lines()
                .map(|line| line.split('#').next().unwrap_or("").trim())
                .filter(|line| !line.is_empty())
                .any(|line| PeerId::parse(line).is_ok_and(|listed| listed == *id)),
            Err(err) => {
                tracing::warn!("cannot read --peers {}: {err}", file.display());
                false
            }
        }
    }

    /// Reads and checks `--peers FILE` once (at start: a typo is a refusal, not a surprise).
    pub fn check_file(&self) -> anyhow::Result<usize> {
        let Some(file) = &self.file else {
            return Ok(0);
        };
        let text = std::fs::read_to_string(file)
            .map_err(|err| anyhow::anyhow!("cannot read --peers {}: {err}", file.display()))?;
        let mut n = 0;
        for (idx, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            PeerId::parse(line)
                .map_err(|err| anyhow::anyhow!("{} line {}: {err}", file.display(), idx + 1))?;
            n += 1;
        }
        Ok(n)
    }
}

/// The signature checks both verifiers share: TLS 1.3 only, with webpki's algorithms
/// (`self.algs`).
macro_rules! tls13_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// The bus's side: a peer's certificate must carry an ID on the list.
#[derive(Debug)]
struct PeerVerifier {
    peers: Arc<PeerList>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = identify(end_entity, now).inspect_err(|err| {
            tracing::warn!("TLS: refused a peer's certificate: {err}");
        })?;
        if !self.peers.allows(&id) {
            tracing::warn!(
                "TLS: refused peer {id}: not on this bus's list (add it with --peer {id}, or to the --peers file)"
            );
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    tls13_signatures!();
}

/// A peer's side: the bus's certificate must carry the ID it was given. What it saw is
/// kept, for the refusal's message.
#[derive(Debug)]
pub struct BusVerifier {
    expected: PeerId,
    pub seen: Mutex<Option<Result<PeerId, String>>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for BusVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let identified = identify(end_entity, now);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        *seen = Some(identified.clone().map_err(|err| err.to_string()));
        let id = identified?;
        if id != self.expected {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    tls13_signatures!();
}

/// The bus's TLS: its identity, and the peers it lets in.
pub fn acceptor(
    identity: &Identity,
    peers: Arc<PeerList>,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier {
        peers,
        algs: provider.signature_verification_algorithms,
    });
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What a peer needs to reach a bus over TLS: its own identity and the bus's ID.
#[derive(Clone)]
pub struct ClientTls {
    pub identity: Arc<Identity>,
    pub bus_id: PeerId,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // IDs only: never key material.
        f.debug_struct("ClientTls")
            .field("id", &self.identity.id)
            .field("bus_id", &self.bus_id)
            .finish()
    }
}

impl ClientTls {
    /// A connector for one connection, and its verifier (to say what it saw).
    pub fn connector(&self) -> anyhow::Result<(tokio_rustls::TlsConnector, Arc<BusVerifier>)> {
        let provider = provider();
        let verifier = Arc::new(BusVerifier {
            expected: self.bus_id,
            seen: Mutex::new(None),
            algs: provider.signature_verification_algorithms,
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(vec![self.identity.cert.clone()], self.identity.key())?;
        Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), verifier))
    }

    /// The one line that says why a handshake with the bus failed.
    pub fn explain(&self, err: &std::io::Error, verifier: &BusVerifier) -> String {
        let ours = self.identity.id;
        let seen = verifier
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match (seen, tls_error(err)) {
            (Some(Ok(id)), _) if id != self.bus_id => format!(
                "the bus's ID is {id}, not {} (--bus-id): refusing it",
                self.bus_id
            ),
            (Some(Err(why)), _) => format!("the bus's certificate is not acceptable: {why}"),
            (_, Some(rustls::Error::AlertReceived(alert))) => match alert {
                rustls::AlertDescription::AccessDenied => format!(
                    "the bus refused our ID {ours}: on the bus's machine, add it with --peer {ours} (or to its --peers file)"
                ),
                rustls::AlertDescription::CertificateExpired => {
                    format!("the bus says our certificate (ID {ours}) is not valid now")
                }
                other => format!("the bus ended the TLS handshake: {other:?} (our ID is {ours})"),
            },
            (_, Some(rustls::Error::InvalidMessage(_))) => {
                "the bus does not speak TLS: start it with --tls or --peer, or drop --bus-id here"
                    .to_owned()
            }
            (_, Some(other)) => format!("TLS handshake with the bus failed: {other}"),
            (None, None) => format!(
                "the bus closed the connection during the TLS handshake ({err}): is it started with TLS (--tls or --peer)?"
            ),
            (Some(Ok(_)), None) => format!("TLS handshake with the bus failed: {err}"),
        }
    }
}

/// The rustls error inside an I/O error from a handshake, if that is what it is.
pub fn tls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The bus's line for a handshake that failed, or `None` when a verifier said it already.
pub fn explain_refusal(addr: &str, err: &std::io::Error) -> Option<String> {
    match tls_error(err) {
        Some(rustls::Error::InvalidCertificate(_)) => None,
        Some(rustls::Error::InvalidMessage(_)) => Some(format!(
            "peer {addr}: not a TLS handshake (a plain connection on a TLS port? the peer needs --bus-id)"
        )),
        Some(rustls::Error::PeerIncompatible(why)) => Some(format!(
            "peer {addr}: refused: {why:?} (only TLS 1.3 is accepted)"
        )),
        Some(rustls::Error::AlertReceived(alert)) => Some(format!(
            "peer {addr}: it ended the TLS handshake ({alert:?}): is its --bus-id this bus's ID?"
        )),
        Some(other) => Some(format!("peer {addr}: TLS handshake failed: {other}")),
        None => Some(format!("peer {addr}: TLS handshake failed: {err}")),
    }
}
