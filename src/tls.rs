//! TLS for both legs, with rustls: PEM files → a server config for `--listen`, and a client
//! config for `wss://` and `https://` upstreams.
//!
//! Owns: reading and checking certificate/key pairs ([`load_pair`]), the served certificate
//! that can be swapped while running ([`CertResolver`]), the reloader that swaps it when the
//! files change ([`reload`]), the client side's trust ([`UpstreamTlsConfig`], [`client_config`]),
//! the two endpoints a running proxy holds ([`Acceptor`], [`Connector`]), and the mapping of
//! handshake errors to metric labels ([`classify`]). It does not accept or dial
//! sockets (`server` and `net` do) and does not decide when a handshake is too slow (the accept
//! path bounds it with `--handshake-timeout`).
//!
//! # Crypto provider: ring
//!
//! rustls offers ring and aws-lc-rs; `bench/tls-provider` measured both per CPU-second of one
//! thread (TLS 1.3, AES-128-GCM, ECDSA P-256; method and table in `docs/PERFORMANCE.md`):
//! ring about 1,970 full handshakes/s, 96 MB/s in 64 B records, 2,150 MB/s in 64 KiB records;
//! aws-lc-rs about 2,090, 86 and 2,720. ring is chosen because small messages are what wsbeat
//! mostly carries, and there ring costs about 12 % less CPU per record; aws-lc-rs's lead on
//! handshakes (6 %) and large records (26 %) matters less at those absolute rates. ring also
//! builds with a C compiler alone, while aws-lc-sys compiles a large C library that dominates
//! a clean build. The provider is picked in one place, [`provider`].
//!
//! # Verification
//!
//! Upstream certificates are always verified, against the system store plus `--upstream-ca`.
//! There is no switch to turn verification off, by design: a proxy that silently accepts any
//! certificate turns one typo into a man-in-the-middle.

mod endpoint;
pub mod reload;

pub use endpoint::{Acceptor, Connector};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use thiserror::Error;

use crate::metrics::TlsFailure;

/// The only application protocol wsbeat speaks on either leg. Announcing it lets a client that
/// offers `h2` first fall back instead of sending HTTP/2 to an HTTP/1.1 server.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why TLS material could not be loaded. Every variant names the file at fault, because the
/// operator's next step is to look at that file.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file holds no certificate, or a PEM block that does not decode.
    #[error("{}: no usable certificate: {reason}", path.display())]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The file holds no private key, a malformed one, or a key type rustls cannot sign with.
    #[error("{}: no usable private key: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key does not belong to the first certificate of the chain.
    #[error("{} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// No trust anchor at all: the system store is empty and no `--upstream-ca` was given.
    #[error("no trusted CA for the upstream: the system store is empty; give --upstream-ca")]
    NoRoots,
    /// `--upstream-server-name` (or the upstream host) is not a DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// rustls refused the configuration; only a programming mistake causes this.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider of both legs (see the module docs for why ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where a certificate chain and its key live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairPaths {
    /// PEM file with the leaf certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// A checked pair, ready to serve.
#[derive(Clone, Debug)]
pub struct LoadedPair {
    /// Chain and signing key, in the form rustls serves.
    pub certified: Arc<CertifiedKey>,
    /// The leaf's `notAfter`, as a Unix timestamp.
    pub not_after: i64,
    /// The leaf's serial number, hex, for log lines that tell two certificates apart.
    pub serial: String,
}

/// Reads and checks the pair at `paths`.
///
/// # Errors
/// [`TlsError`] naming the file that is unreadable, malformed or mismatched.
pub fn read_pair(paths: &PairPaths) -> Result<LoadedPair, TlsError> {
    let cert = read_file(&paths.cert)?;
    let key = read_file(&paths.key)?;
    load_pair(&cert, &key, paths)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses a PEM chain and key (already read from `paths`) and checks that they belong together.
///
/// # Errors
/// [`TlsError`] naming the file that is malformed or mismatched.
pub fn load_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    paths: &PairPaths,
) -> Result<LoadedPair, TlsError> {
    let chain = parse_chain(cert_pem, &paths.cert)?;
    let (not_after, serial) = leaf_facts(&chain[0], &paths.cert)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
        path: paths.key.clone(),
        reason: pem_reason(&e, "PRIVATE KEY"),
    })?;
    let provider = provider();
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: paths.key.clone(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::Mismatch {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
            });
        }
        Err(e) => {
            return Err(TlsError::Certificate {
                path: paths.cert.clone(),
                reason: e.to_string(),
            });
        }
    }
    Ok(LoadedPair {
        certified: Arc::new(certified),
        not_after,
        serial,
    })
}

/// Every `CERTIFICATE` block of `pem`, in order; at least one.
fn parse_chain(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate {
            path: path.to_owned(),
            reason: pem_reason(&e, "CERTIFICATE"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: path.to_owned(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(chain)
}

fn pem_reason(e: &rustls::pki_types::pem::Error, wanted: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("no {wanted} block"),
        other => other.to_string(),
    }
}

/// The leaf's expiry and serial; parsing it here also refuses a block that is not X.509.
fn leaf_facts(leaf: &CertificateDer<'_>, path: &Path) -> Result<(i64, String), TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::Certificate {
            path: path.to_owned(),
            reason: format!("leaf certificate does not parse: {e}"),
        })?;
    Ok((
        cert.validity().not_after.timestamp(),
        cert.tbs_certificate.raw_serial_as_string(),
    ))
}

/// The served certificate, swapped whole when the files change. A handshake takes the pair
/// that is current when it starts; sessions already open keep theirs.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    /// Starts out serving `pair`.
    pub fn new(pair: &LoadedPair) -> Self {
        CertResolver {
            current: ArcSwap::new(Arc::clone(&pair.certified)),
        }
    }

    /// Serves `pair` to every handshake that starts from now on.
    pub fn swap(&self, pair: &LoadedPair) {
        self.current.store(Arc::clone(&pair.certified));
    }

    /// The pair handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The listener's TLS settings: TLS 1.2 and 1.3, ALPN `http/1.1`, certificate from `resolver`.
///
/// # Errors
/// [`TlsError::Config`], which only a provider without TLS 1.2/1.3 support could cause.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The upstream leg's TLS settings, from the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// Extra trust anchors (`--upstream-ca`): a PEM file that may hold several certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS (`--upstream-client-cert/-key`).
    pub client_pair: Option<PairPaths>,
    /// SNI and verification name, when it differs from the upstream URL's host
    /// (`--upstream-server-name`).
    pub server_name: Option<String>,
}

/// The upstream leg's rustls client: the system's trust store plus `--upstream-ca`, and a
/// client certificate when one is configured. Verification is always on.
///
/// # Errors
/// [`TlsError`] naming the CA or client pair file at fault, or [`TlsError::NoRoots`].
pub fn client_config(tls: &UpstreamTlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = root_store(tls.ca.as_deref())?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut config = match &tls.client_pair {
        Some(paths) => {
            let pair = read_pair(paths)?;
            builder.with_client_auth_cert(pair.certified.cert.clone(), load_key(&paths.key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        reason: pem_reason(&e, "PRIVATE KEY"),
    })
}

/// The system's trust anchors plus those in `ca`. A system store that fails to load in part is
/// logged, not fatal: `--upstream-ca` alone may be all the operator wants.
fn root_store(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "could not load part of the system's CA store");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system CA store loaded");
    if let Some(path) = ca {
        for cert in parse_chain(&read_file(path)?, path)? {
            roots.add(cert).map_err(|e| TlsError::Certificate {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(roots)
}

/// Checks `name` as a TLS server name (SNI and the name the certificate must carry).
///
/// # Errors
/// [`TlsError::ServerName`] when it is neither a DNS name nor an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}

/// The metric label of a failed handshake's error, as tokio-rustls reports it.
pub fn classify(error: &io::Error) -> TlsFailure {
    if error.kind() == io::ErrorKind::TimedOut {
        return TlsFailure::Timeout;
    }
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return TlsFailure::Io;
    };
    use rustls::{AlertDescription as A, Error as E, InvalidMessage};
    match tls {
        E::InvalidMessage(InvalidMessage::InvalidContentType)
        | E::InvalidMessage(InvalidMessage::UnknownProtocolVersion) => TlsFailure::NotTls,
        E::InvalidCertificate(_) | E::NoCertificatesPresented => TlsFailure::Certificate,
        E::AlertReceived(
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::CertificateRequired,
        ) => TlsFailure::Certificate,
        _ => TlsFailure::Protocol,
    }
}

#[cfg(test)]
mod tests;
