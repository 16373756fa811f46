//! TLS for the hub: on first start a local CA and a server certificate for `localhost`,
//! `127.0.0.1` and `::1` (plus the hub's host name) are generated into the data directory, so
//! clients (the agent with `--iothub-ca`, the official SDK with `server_verification_cert`)
//! can trust the hub without any certificate being shipped. Later starts reuse them; a missing
//! server certificate is re-issued by the same CA, so clients keep trusting it.
//!
//! Files: `ca.pem` (the CA certificate, to give to clients), `ca-key.pem`, `server.pem`
//! (server certificate then CA), `server-key.pem`; keys are mode 0600.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use twinguard_os::safefile::{write_file_atomically, FileError};

/// The CA certificate file clients are given.
pub(crate) const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const SERVER_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server-key.pem";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing a file was refused (see the agent's `sys::safefile`).
    #[error(transparent)]
    File(#[from] FileError),
    /// Generating a key or certificate.
    #[error("generating the certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A stored file that is not the PEM it should be.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the certificate and key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The CA's fixed parameters: re-issuing a server certificate rebuilds the issuer from these
/// and the stored key, so its name and key identifier stay the same.
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "twinguard-hub local CA");
    name.push(DnType::OrganizationName, "twinguard-hub");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn server_params(host: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if !names.iter().any(|n| n.eq_ignore_ascii_case(host)) {
        names.push(host.to_owned());
    }
    let mut params = CertificateParams::new(names)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, host);
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Writes `contents` to `path` atomically with `mode`: the one atomic write (temporary file
/// created `O_EXCL`, fsync, rename, fsync of the directory).
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    Ok(write_file_atomically(path, contents.as_bytes(), mode)?)
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(io_error(path))
}

/// Makes sure the CA and server certificate exist in `dir`, generating what is missing.
/// Returns the path of the CA certificate.
pub(crate) fn ensure_certificates(dir: &Path, host: &str) -> Result<PathBuf, TlsError> {
    let ca_path = dir.join(CA_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let server_path = dir.join(SERVER_FILE);
    let server_key_path = dir.join(SERVER_KEY_FILE);
    let (ca_pem, ca_key) = if ca_path.exists() && ca_key_path.exists() {
        let key = KeyPair::from_pem(&read_text(&ca_key_path)?).map_err(|e| TlsError::Pem {
            path: ca_key_path.clone(),
            what: e.to_string(),
        })?;
        (read_text(&ca_path)?, key)
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_file(&ca_key_path, &key.serialize_pem(), 0o600)?;
        write_file(&ca_path, &cert.pem(), 0o644)?;
        // A new CA invalidates any server certificate left from an earlier one.
        let _ = fs::remove_file(&server_path);
        (cert.pem(), key)
    };
    if !(server_path.exists() && server_key_path.exists()) {
        let issuer = Issuer::new(ca_params()?, ca_key);
        let key = KeyPair::generate()?;
        let cert = server_params(host)?.signed_by(&key, &issuer)?;
        write_file(&server_key_path, &key.serialize_pem(), 0o600)?;
        write_file(&server_path, &format!("{}{}", cert.pem(), ca_pem), 0o644)?;
    }
    Ok(ca_path)
}

/// The rustls server configuration from the stored server certificate and key: TLS 1.2 and
/// 1.3 (IoT Hub requires 1.2; the Python SDK asks for exactly 1.2), no client certificates.
pub(crate) fn server_config(dir: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let server_path = dir.join(SERVER_FILE);
    let key_path = dir.join(SERVER_KEY_FILE);
    let pem_error = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.to_owned(),
        what: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(&server_path)
        .map_err(|e| pem_error(&server_path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&server_path, e))?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: server_path,
            what: "no certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem_error(&key_path, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reissues_a_lost_server_certificate() {
        let dir = std::env::temp_dir().join(format!("twinguard-hub-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let ca = ensure_certificates(&dir, "localhost").expect("generates");
        let ca_pem = fs::read_to_string(&ca).expect("ca");
        server_config(&dir).expect("loads");
        fs::remove_file(dir.join(SERVER_FILE)).expect("remove");
        ensure_certificates(&dir, "myhub.local").expect("re-issues");
        assert_eq!(fs::read_to_string(&ca).expect("ca"), ca_pem, "the CA is kept");
        server_config(&dir).expect("loads");
        let _ = fs::remove_dir_all(&dir);
    }
}
