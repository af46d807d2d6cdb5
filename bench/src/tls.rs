//! The client side of the `wss://` workloads: one rustls client config (ring, TLS 1.3 only,
//! `TLS_AES_128_GCM_SHA256` only, X25519 only, no session resumption) and [`Conn`], the connection every
//! driver reads and writes whether or not TLS carries it.
//!
//! Owns: trust (the CA file `run.sh` made), the pinned protocol and suite, and the check that
//! each handshake really negotiated them. Does not own the upgrade or framing (`ws`), nor
//! scheduling (the drivers).
//!
//! The suite is pinned on the client, so every proxy (nginx, HAProxy, wsbeat) serves the same
//! one whatever its own preference list says. Resumption is off, so every connection pays a
//! full handshake: the cost the `handshakes` workload measures.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CipherSuite, ClientConfig, NamedGroup, ProtocolVersion, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The one suite every TLS workload runs with, on every target.
const SUITE: CipherSuite = CipherSuite::TLS13_AES_128_GCM_SHA256;

/// Trust for `wss://` targets (flattened into each driver's arguments).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// CA certificate(s), PEM, trusted for a `wss://` target (whose certificate must name the
    /// URL's host).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

/// Everything needed to open TLS to one target.
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    /// A connector for `host` (a DNS name or an IP address), trusting the CAs in `ca`.
    ///
    /// # Errors
    /// An unreadable or empty CA file, or a host that is not a valid server name.
    pub fn new(ca: &Path, host: &str) -> io::Result<Self> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::other(format!("TLS server name {host:?}: {e}")))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(client_config(ca)?),
            name,
        })
    }

    /// Runs a full handshake on `tcp` and checks that TLS 1.3 with the pinned suite was agreed.
    ///
    /// # Errors
    /// The handshake's error, or a peer that negotiated something else.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<Conn> {
        let tls = self.connector.connect(self.name.clone(), tcp).await?;
        let session = tls.get_ref().1;
        let version = session.protocol_version();
        let suite = session.negotiated_cipher_suite().map(|s| s.suite());
        if version != Some(ProtocolVersion::TLSv1_3) || suite != Some(SUITE) {
            return Err(io::Error::other(format!(
                "negotiated {version:?} {suite:?}, not TLS 1.3 {SUITE:?}"
            )));
        }
        Ok(Conn::Tls(Box::new(tls)))
    }
}

fn client_config(ca: &Path) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad_ca(ca, &e))? {
        roots
            .add(cert.map_err(|e| bad_ca(ca, &e))?)
            .map_err(|e| bad_ca(ca, &e))?;
    }
    if roots.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no certificate",
            ca.display()
        )));
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|s| s.suite() == SUITE);
    // rustls' first choice anyway, pinned so no target can make the client retry with another.
    provider
        .kx_groups
        .retain(|g| g.name() == NamedGroup::X25519);
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn bad_ca(ca: &Path, e: &dyn std::fmt::Display) -> io::Error {
    io::Error::other(format!("{}: {e}", ca.display()))
}

/// A connection to the target: plain TCP (`ws://`) or TLS over TCP (`wss://`).
pub enum Conn {
    /// `ws://`.
    Tcp(TcpStream),
    /// `wss://`; boxed, as rustls' state is a kilobyte and idle runs hold thousands.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    /// Whether a write may leave bytes behind that only a flush sends (TLS records waiting in
    /// rustls' buffer when the socket was full).
    pub fn needs_flush(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// The plain TCP stream, for the drivers that only run over `ws://`.
    ///
    /// # Errors
    /// `Unsupported` for a TLS connection.
    pub fn into_tcp(self, what: &str) -> io::Result<TcpStream> {
        match self {
            Conn::Tcp(s) => Ok(s),
            Conn::Tls(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{what} runs over ws:// only"),
            )),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
