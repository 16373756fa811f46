//! TLS client configuration for the agent's MQTT and IoT Hub modes and the hub's outgoing
//! connections (MQTT fleet ingest, alert webhooks): the system's trusted roots plus an optional
//! private CA, an optional client certificate. Verification is always on: there is no switch
//! to skip it, only a CA to add.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::safefile::{read_regular, read_secret, FileError, MAX_SECRET_BYTES};

/// Where Linux distributions keep the system's CA bundle, most common first (Debian/Ubuntu/
/// Alpine/Yocto, Fedora/RHEL, openSUSE, older RHEL, Arch/macOS-style).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];
/// A CA bundle is public but read with a bound all the same (Debian's is about 220 KB).
const MAX_BUNDLE_BYTES: usize = 4 * 1024 * 1024;

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (or is a secret with unsafe permissions).
    #[error(transparent)]
    File(#[from] FileError),
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// No trusted root at all.
    #[error("no trusted CA certificates: none of {} is readable; install ca-certificates or give a CA file", SYSTEM_BUNDLES.join(", "))]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What to trust and how to authenticate.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// A private CA (PEM, one or more certificates) trusted in addition to the system roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) and its private key (PEM; a secret).
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

fn pem_error(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

fn certificates(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// The system's trusted roots, from the first readable bundle. Certificates the parser
/// refuses are skipped (bundles carry a few legacy ones).
fn system_roots(store: &mut RootCertStore) -> bool {
    for bundle in SYSTEM_BUNDLES {
        let path = Path::new(bundle);
        let Ok(bytes) = read_regular(path, MAX_BUNDLE_BYTES) else {
            continue;
        };
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
            .filter_map(Result::ok)
            .collect();
        let (added, _ignored) = store.add_parsable_certificates(certs);
        if added > 0 {
            return true;
        }
    }
    false
}

/// Builds the client configuration: TLS 1.2 and 1.3 (rustls has nothing older), the ring
/// provider, the system roots plus `options.ca`.
pub fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let have_system = system_roots(&mut roots);
    if let Some(ca) = &options.ca {
        let bytes = read_regular(ca, MAX_BUNDLE_BYTES)?;
        for cert in certificates(ca, &bytes)? {
            roots
                .add(cert)
                .map_err(|e| pem_error(ca, format!("not a usable CA certificate: {e}")))?;
        }
    } else if !have_system {
        return Err(TlsError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match &options.client_auth {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let cert_bytes = read_regular(cert_path, MAX_BUNDLE_BYTES)?;
            let chain = certificates(cert_path, &cert_bytes)?;
            let key_bytes = read_secret(key_path, MAX_SECRET_BYTES)?;
            let key = PrivateKeyDer::from_pem_slice(&key_bytes)
                .map_err(|e| pem_error(key_path, format!("not a PEM private key: {e}")))?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    Ok(Arc::new(config))
}
