//! The two TLS endpoints a running proxy holds: the [`Acceptor`] for `--listen` and the
//! [`Connector`] for a `wss://`/`https://` upstream. Both are built once at start-up from
//! checked files, so every error there names a file and stops the start (exit 64); after that,
//! only handshakes can fail, one connection at a time.

use std::io;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::reload::Reloader;
use super::{
    CertResolver, LoadedPair, PairPaths, TlsError, UpstreamTlsConfig, client_config, load_pair,
    read_file, server_config, server_name,
};
use crate::metrics::TlsMetrics;

/// The listener's TLS: the acceptor, and the served pair that the reloader swaps.
pub struct Acceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<CertResolver>,
    paths: PairPaths,
    /// The pair as read at start-up, with the bytes it came from (the reloader's baseline).
    loaded: (LoadedPair, Vec<u8>, Vec<u8>),
}

impl Acceptor {
    /// Reads and checks the pair at `paths`.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that is unreadable, malformed or mismatched.
    pub fn load(paths: &PairPaths) -> Result<Acceptor, TlsError> {
        let cert = read_file(&paths.cert)?;
        let key = read_file(&paths.key)?;
        let pair = load_pair(&cert, &key, paths)?;
        let resolver = Arc::new(CertResolver::new(&pair));
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(Arc::clone(&resolver))?);
        Ok(Acceptor {
            acceptor,
            resolver,
            paths: paths.clone(),
            loaded: (pair, cert, key),
        })
    }

    /// The reloader for this listener's pair, counting into `metrics`. Publishes the expiry of
    /// the pair loaded at start-up.
    pub fn reloader(&self, metrics: TlsMetrics) -> Reloader {
        let (pair, cert, key) = &self.loaded;
        let reloader = Reloader::new(
            self.paths.clone(),
            Arc::clone(&self.resolver),
            metrics,
            (cert.clone(), key.clone()),
        );
        reloader.install(pair);
        reloader
    }

    /// Runs the server side of a TLS handshake on `tcp`. The caller bounds it in time.
    ///
    /// # Errors
    /// The handshake's error; [`super::classify`] gives its metric label.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(tcp).await
    }
}

/// The upstream leg's TLS: the client config and the name the upstream's certificate must carry.
#[derive(Clone)]
pub struct Connector {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl Connector {
    /// A connector for an upstream at `host`, verified as `--upstream-server-name` or `host`.
    ///
    /// # Errors
    /// [`TlsError`] naming the CA or client-certificate file at fault, a server name that is
    /// neither a DNS name nor an IP address, or an empty trust store.
    pub fn new(cfg: &UpstreamTlsConfig, host: &str) -> Result<Connector, TlsError> {
        let name = server_name(cfg.server_name.as_deref().unwrap_or(host))?;
        Ok(Connector {
            connector: tokio_rustls::TlsConnector::from(client_config(cfg)?),
            name,
        })
    }

    /// Runs the client side of a TLS handshake on `tcp`. The caller bounds it in time.
    ///
    /// # Errors
    /// The handshake's error, certificate verification included; [`super::classify`] gives its
    /// metric label.
    pub async fn connect(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), tcp).await
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .finish()
    }
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("paths", &self.paths)
            .field("serial", &self.loaded.0.serial)
            .finish()
    }
}
