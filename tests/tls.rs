//! Mutual TLS with pinned IDs: a master and a slave over TLS mirror as over plain TCP; every
//! refusal (an unknown ID, a wrong bus ID, a plain peer on a TLS port, a TLS 1.2-only peer,
//! an expired certificate) is one clear line on the refused side and a line naming the ID
//! on the bus's, and the bus goes on serving its slave.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use filesync::bus::tls::ClientTls;
use filesync::bus::{BusClient, ClientError, Hello};
use filesync::check::CheckOptions;
use filesync::event::Role;
use filesync::identity::{Identity, PeerId};
use filesync::testkit::{Cluster, Pattern};

use crate::bus_input::still_works;
use crate::util::{bin, must};

async fn tls_cluster(label: &str) -> Cluster {
    must(Cluster::builder(&bin(), label).tls().start().await)
}

/// The bus's ID: the master's identity, in its state.
fn bus_id(c: &Cluster) -> PeerId {
    Identity::load_or_create(&c.master_state())
        .expect("the master's identity")
        .id
}

/// `filesync slave` with these extra arguments; its exit code and stderr.
fn slave(c: &Cluster, label: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .args(["slave", "--bus", &c.addr, "--name", label, "--dir"])
        .arg(c.dir().join(format!("dir-{label}")))
        .arg("--state")
        .arg(c.dir().join(format!("state-{label}")))
        .args(extra)
        .output()
        .expect("run slave");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, not:\n{stderr}");
    lines[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_slave_over_tls_mirror_a_tree_and_the_log_checks_out() {
    let mut c = tls_cluster("tls-mirror").await;
    let m = c.master_dir();
    fs::create_dir_all(m.join("d/e")).expect("mkdir");
    fs::write(m.join("d/e/f.txt"), "over TLS").expect("write");
    fs::write(m.join("big.bin"), vec![7u8; 3 << 20]).expect("write");
    must(
        c.events
            .expect_all(vec![
                Pattern::consume().by("slave").put().path("d/e/f.txt"),
                Pattern::consume().by("slave").put().path("big.bin"),
            ])
            .await,
    );
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
    for state in [c.master_state(), c.slaves[0].state.clone()] {
        let mode = fs::metadata(Identity::key_path(&state))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", state.display());
    }
    // The bus's ID is the one `filesync id` prints from its state.
    let out = Command::new(bin())
        .args(["id", "--state"])
        .arg(c.master_state())
        .output()
        .expect("run id");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(PeerId::parse(&printed), Ok(bus_id(&c)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_one_clear_line_and_the_bus_serves_its_slave_after() {
    let mut c = tls_cluster("tls-refusals").await;
    let bus = bus_id(&c).to_string();

    // An ID the bus does not list.
    let (code, stderr) = slave(&c, "stranger", &["--bus-id", &bus]);
    assert_eq!(code, Some(2), "{stderr}");
    let line = one_line(&stderr);
    let stranger = Identity::load_or_create(&c.dir().join("state-stranger"))
        .expect("its identity")
        .id;
    assert!(
        line.contains("refused our ID") && line.contains(&format!("--peer {stranger}")),
        "{line}"
    );
    must(c.master_says(&format!("refused peer {stranger}"), Duration::from_secs(5)));

    // A bus that is not the one we were told.
    let other = stranger.to_string();
    let (code, stderr) = slave(&c, "misled", &["--bus-id", &other]);
    assert_eq!(code, Some(2), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.contains(&format!("the bus's ID is {bus}, not {other}")),
        "{line}"
    );

    // Plain TCP on the TLS port.
    let (code, stderr) = slave(&c, "plain", &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        one_line(&stderr).contains("the bus speaks TLS: pass --bus-id"),
        "{stderr}"
    );
    must(c.master_says("not a TLS handshake", Duration::from_secs(5)));

    // A listed ID whose certificate has expired.
    let expired = expired_identity();
    fs::OpenOptions::new()
        .append(true)
        .open(c.dir().join("peers"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{}\n", expired.id).as_bytes()))
        .expect("list it");
    let tls = ClientTls {
        identity: Arc::new(expired),
        bus_id: bus_id(&c),
    };
    let hello = Hello::new(Role::Listener, "expired", None);
    match BusClient::connect_with(&c.addr, hello, Some(&tls)).await {
        Err(ClientError::Rejected(why)) => assert!(why.contains("not valid now"), "{why}"),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("an expired certificate was accepted"),
    }
    must(c.master_says("refused a peer's certificate", Duration::from_secs(5)));

    // TLS 1.2 only.
    assert!(
        tls12_only_handshake(&c.addr).await.is_err(),
        "a TLS 1.2-only peer was accepted"
    );

    // Through all that, the bus went on serving its slave.
    still_works(&mut c, "after.txt").await;
    must(c.settle().await);
    c.assert_checks(CheckOptions::default());
}

/// A key pair with a certificate that expired in 2001.
fn expired_identity() -> Identity {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["filesync".to_owned()]).expect("params");
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let cert = params.self_signed(&key).expect("sign");
    Identity::from_parts(
        cert.der().clone(),
        rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
    )
    .expect("identity")
}

/// A client that offers TLS 1.2 only (and would accept any certificate).
async fn tls12_only_handshake(addr: &str) -> std::io::Result<()> {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("filesync").expect("name");
    connector.connect(name, stream).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_peer_on_a_plain_bus_is_one_line_on_each_side() {
    let mut c = crate::util::cluster("tls-on-plain", 1).await;
    let id = bus_id(&c).to_string();
    let (code, stderr) = slave(&c, "eager", &["--bus-id", &id]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        one_line(&stderr).contains("is it started with TLS (--tls or --peer)?"),
        "{stderr}"
    );
    must(c.master_says("it speaks TLS to this plain bus", Duration::from_secs(10)));
    // The plain mirror goes on.
    still_works(&mut c, "after.txt").await;
}
