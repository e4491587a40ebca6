//! Who an agent is: a key pair and a self-signed certificate in its state directory, and the
//! ID people compare and pin (`filesync id`), as Syncthing's device IDs are.
//!
//! The ID is the SHA-256 of the public key (the certificate's subjectPublicKeyInfo), not of
//! the certificate, so a renewed certificate keeps it. It is written in base32 (RFC 4648,
//! `A-Z2-7`), 52 characters cut into four groups of 13, each followed by a Luhn mod 32
//! check character, in groups of seven joined by dashes:
//! `MFZWI3D-BONSGYC-...` (eight groups, 63 characters). A mistyped character is caught by
//! its group's check character; case and dashes do not matter when an ID is read.
//!
//! Files: `SDIR/id-key.pem` (the private key, PKCS#8, mode 0600, created once and never
//! logged) and `SDIR/id-cert.pem` (the certificate, made again from the key when it is
//! missing or no longer valid).

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The ID of an agent or a bus: the SHA-256 of its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// The ID of the key in `cert` (DER); fails on a certificate that does not parse.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<PeerId, webpki::Error> {
        let anchor = webpki::anchor_from_trusted_cert(cert)?;
        Ok(PeerId(
            Sha256::digest(&anchor.subject_public_key_info).into(),
        ))
    }

    /// Reads an ID as `Display` writes it (case, dashes and spaces aside).
    pub fn parse(text: &str) -> Result<PeerId, String> {
        let chars: Vec<u8> = text
            .bytes()
            .filter(|b| !matches!(b, b'-' | b' '))
            .map(|b| b.to_ascii_uppercase())
            .collect();
        if chars.len() != 56 {
            return Err(format!(
                "{text:?} is not a filesync ID (56 characters of A-Z and 2-7, in dashed groups; `filesync id` prints one)"
            ));
        }
        let mut data = Vec::with_capacity(52);
        for group in chars.chunks(14) {
            let (body, check) = group.split_at(13);
            if luhn32(body) != Some(check[0]) {
                return Err(format!(
                    "{text:?} is not a filesync ID: a character of group {:?} is mistyped",
                    String::from_utf8_lossy(group)
                ));
            }
            data.extend_from_slice(body);
        }
        base32_decode(&data)
            .map(PeerId)
            .ok_or_else(|| format!("{text:?} is not a filesync ID"))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = base32_encode(&self.0);
        let mut chars = Vec::with_capacity(56);
        for body in data.chunks(13) {
            chars.extend_from_slice(body);
            chars.push(luhn32(body).unwrap_or(b'A'));
        }
        let groups: Vec<&str> = chars
            .chunks(7)
            .map(|g| std::str::from_utf8(g).unwrap_or("?"))
            .collect();
        f.write_str(&groups.join("-"))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

fn base32_encode(bytes: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    let (mut buffer, mut bits) = (0u32, 0);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize]);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize]);
    }
    out
}

fn base32_decode(chars: &[u8]) -> Option<[u8; 32]> {
    let mut out = Vec::with_capacity(33);
    let (mut buffer, mut bits) = (0u32, 0);
    for &c in chars {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    // 52 characters carry 260 bits: the last 4 are padding and must be zero.
    if buffer & ((1 << bits) - 1) != 0 {
        return None;
    }
    out.try_into().ok()
}

/// The Luhn mod 32 check character of `chars` (`None` for a character outside the alphabet).
fn luhn32(chars: &[u8]) -> Option<u8> {
    let n = 32u32;
    let mut factor = 1;
    let mut sum = 0;
    for &c in chars {
        let code = ALPHABET.iter().position(|&a| a == c)? as u32;
        let addend = factor * code;
        factor = if factor == 2 { 1 } else { 2 };
        sum += addend / n + addend % n;
    }
    Some(ALPHABET[((n - sum % n) % n) as usize])
}

/// An agent's key pair and certificate, loaded or created in its state directory.
pub struct Identity {
    pub id: PeerId,
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// Where the key lives in `state_dir`.
    pub fn key_path(state_dir: &Path) -> PathBuf {
        state_dir.join("id-key.pem")
    }

    fn cert_path(state_dir: &Path) -> PathBuf {
        state_dir.join("id-cert.pem")
    }

    /// Loads the identity in `state_dir`, creating the key the first time and the
    /// certificate whenever it is missing, unreadable or no longer valid.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Identity> {
        let key_path = Identity::key_path(state_dir);
        let key_pem = match fs::read_to_string(&key_path) {
            Ok(pem) => pem,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => create_key(&key_path)?,
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", key_path.display()))
            }
        };
        let mode = fs::metadata(&key_path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by others (mode {mode:o}): `chmod 600` it",
                key_path.display()
            );
        }
        let key_pair = rcgen::KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a private key", key_path.display()))?;
        let cert_path = Identity::cert_path(state_dir);
        let cert = match read_cert(&cert_path, &key_pair) {
            Some(cert) => cert,
            None => {
                let cert = make_cert(&key_pair)?;
                write_private(&cert_path, pem("CERTIFICATE", &cert).as_bytes(), 0o644)?;
                cert
            }
        };
        let id = PeerId::of_cert(&cert).context("our own certificate does not parse")?;
        Ok(Identity {
            id,
            cert,
            key: PrivatePkcs8KeyDer::from(key_pair.serialize_der()),
        })
    }

    /// An identity from a certificate and key made elsewhere (a test's expired certificate).
    pub fn from_parts(
        cert: CertificateDer<'static>,
        key: PrivatePkcs8KeyDer<'static>,
    ) -> anyhow::Result<Identity> {
        let id = PeerId::of_cert(&cert).context("the certificate does not parse")?;
        Ok(Identity { id, cert, key })
    }

    /// The private key, for rustls.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn create_key(path: &Path) -> anyhow::Result<String> {
    let key_pair = rcgen::KeyPair::generate().context("cannot generate a key pair")?;
    let pem = key_pair.serialize_pem();
    write_private(path, pem.as_bytes(), 0o600)?;
    Ok(pem)
}

/// The certificate at `path` if it is ours (same key) and valid now.
fn read_cert(path: &Path, key_pair: &rcgen::KeyPair) -> Option<CertificateDer<'static>> {
    let text = fs::read_to_string(path).ok()?;
    let der = unpem("CERTIFICATE", &text)?;
    let cert = CertificateDer::from(der);
    let ours = webpki::anchor_from_trusted_cert(&cert)
        .ok()
        .map(|anchor| Sha256::digest(&anchor.subject_public_key_info))
        == Some(Sha256::digest(spki_contents(&key_pair.public_key_der())?));
    (ours && crate::bus::tls::check_valid(&cert, UnixTime::now()).is_ok()).then_some(cert)
}

/// The contents of a DER SubjectPublicKeyInfo (what a trust anchor keeps of it).
fn spki_contents(spki: &[u8]) -> Option<&[u8]> {
    // SEQUENCE, then a short or long length.
    let (&tag, rest) = spki.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if tag != 0x30 {
        return None;
    }
    if first < 0x80 {
        return rest.get(..first as usize);
    }
    let n = (first & 0x7f) as usize;
    let len = rest
        .get(..n)?
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    rest.get(n..n + len)
}

/// A self-signed certificate for `key_pair`, for both ends of a TLS connection, valid for
/// about ten years from yesterday.
fn make_cert(key_pair: &rcgen::KeyPair) -> anyhow::Result<CertificateDer<'static>> {
    let mut params = rcgen::CertificateParams::new(vec!["filesync".to_owned()])
        .context("certificate parameters")?;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let day = 86_400;
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_secs(now - day);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_secs(now + 3650 * day);
    let cert = params
        .self_signed(key_pair)
        .context("cannot sign our certificate")?;
    Ok(cert.der().clone())
}

fn time_secs(secs: i64) -> std::time::Duration {
    std::time::Duration::from_secs(secs.max(0) as u64)
}

/// Writes `bytes` to `path` with `mode`, atomically (a temporary file renamed into place).
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let temp = path.with_extension("tmp");
    let _ = fs::remove_file(&temp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temp, path).with_context(|| format!("cannot create {}", path.display()))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap_or(""))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn unpem(label: &str, text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = text[start..].find(&end)? + start;
    let body: String = text[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_reads_back_and_a_typo_is_caught() {
        let id = PeerId(Sha256::digest(b"some public key").into());
        let text = id.to_string();
        assert_eq!(text.len(), 63, "{text}");
        assert_eq!(text.split('-').count(), 8);
        assert_eq!(PeerId::parse(&text), Ok(id));
        assert_eq!(
            PeerId::parse(&text.to_lowercase().replace('-', " ")),
            Ok(id)
        );
        let mut typo = text.into_bytes();
        typo[3] = if typo[3] == b'A' { b'B' } else { b'A' };
        let typo = String::from_utf8(typo).expect("ascii");
        assert!(PeerId::parse(&typo).is_err(), "{typo}");
        assert!(PeerId::parse("ABC").is_err());
    }

    #[test]
    fn an_identity_is_created_once_kept_private_and_survives_a_new_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Identity::load_or_create(dir.path()).expect("create");
        let mode = fs::metadata(Identity::key_path(dir.path()))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Identity::load_or_create(dir.path()).expect("load");
        assert_eq!(again.id, first.id);
        assert_eq!(again.cert, first.cert, "a valid certificate is kept");
        fs::remove_file(dir.path().join("id-cert.pem")).expect("rm");
        let renewed = Identity::load_or_create(dir.path()).expect("renew");
        assert_eq!(
            renewed.id, first.id,
            "the ID is the key's, not the certificate's"
        );
        fs::set_permissions(
            Identity::key_path(dir.path()),
            fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let err = Identity::load_or_create(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
