//! TLS for the tests: a private CA made with rcgen, pairs written to a temporary directory (laid
//! out as a Kubernetes secret volume, so rotation swaps a `..data` symlink), rustls configs for
//! peers, a `wss://` tungstenite client, a frame-level `wss://` client and server handshake
//! (whose sockets can get a small receive window), and a probe that reports which certificate a
//! TLS listener serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::{Connector, MaybeTlsStream};

use super::peers::WsClient;
use super::raw::{accept_for, new_ws_key, read_head};
use super::{STEP, within};

/// A directory of its own under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("wsbeat-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// Writes `contents` to `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }

    /// The path of `name` in the directory, as a string for a flag.
    pub fn arg(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

/// A private CA that signs leaves for `localhost` and `127.0.0.1`.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut p = CertificateParams::new(Vec::new()).expect("ca params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Pki {
            ca: CertifiedIssuer::self_signed(p, KeyPair::generate().expect("ca key"))
                .expect("ca cert"),
        }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server leaf for `names` (default `localhost` and `127.0.0.1`) with this serial.
    pub fn server(&self, serial: u64) -> Pair {
        self.leaf(
            serial,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A server leaf valid only for `name`.
    pub fn server_named(&self, serial: u64, name: &str) -> Pair {
        self.leaf(serial, &[name], ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client leaf, for mutual TLS.
    pub fn client(&self, serial: u64) -> Pair {
        self.leaf(
            serial,
            &["wsbeat-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn leaf(&self, serial: u64, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pair {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut p = CertificateParams::new(names).expect("leaf params");
        p.serial_number = Some(SerialNumber::from(serial));
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let cert = p.signed_by(&key, &self.ca).expect("leaf cert");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("ca into roots");
        roots
    }

    /// A rustls client trusting only this CA, speaking HTTP/1.1.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// A rustls server serving `pair`; with `require_client_cert`, only clients holding a
    /// certificate from this CA get through.
    pub fn server_config(&self, pair: &Pair, require_client_cert: bool) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = if require_client_cert {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(self.roots()),
                provider(),
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let chain = vec![CertificateDer::from_pem_slice(pair.cert.as_bytes()).expect("cert pem")];
        let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).expect("key pem");
        Arc::new(builder.with_single_cert(chain, key).expect("server config"))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Lays out `dir` as a Kubernetes secret volume holding `pair`: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<generation>`. Called again, it writes a new generation directory and renames a
/// new `..data` link over the old one, as the kubelet does when the secret changes.
pub fn kubernetes_secret(dir: &TempDir, generation: u32, pair: &Pair) {
    let gen_name = format!("..2026_12_01_gen{generation}");
    let gen_dir = dir.0.join(&gen_name);
    std::fs::create_dir_all(&gen_dir).expect("generation dir");
    std::fs::write(gen_dir.join("tls.crt"), &pair.cert).expect("write cert");
    std::fs::write(gen_dir.join("tls.key"), &pair.key).expect("write key");
    let tmp = dir.0.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&gen_name, &tmp).expect("symlink ..data_tmp");
    std::fs::rename(&tmp, dir.0.join("..data")).expect("rename over ..data");
    for name in ["tls.crt", "tls.key"] {
        let link = dir.0.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).expect("file symlink");
        }
    }
}

/// Connects a tungstenite client over TLS trusting `cfg` (`url` is `wss://...`).
pub async fn wss_connect(
    url: &str,
    cfg: Arc<ClientConfig>,
) -> Result<
    (
        WsClient,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    String,
> {
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(Connector::Rustls(cfg)),
    );
    within(STEP, "the wss client handshake", connect)
        .await
        .map_err(|e| e.to_string())
}

/// The serial (hex) of the leaf a `wss://` client was served.
pub fn served_serial(ws: &WsClient) -> String {
    match ws.get_ref() {
        MaybeTlsStream::Rustls(s) => {
            let certs = s
                .get_ref()
                .1
                .peer_certificates()
                .expect("peer certificates");
            serial_of(&certs[0])
        }
        _ => panic!("not a TLS client"),
    }
}

/// The serial (hex) of a DER certificate.
pub fn serial_of(cert: &[u8]) -> String {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).expect("x509");
    parsed.tbs_certificate.raw_serial_as_string()
}

/// Opens a TLS connection to `addr` and returns the serial of the leaf it serves, or the
/// handshake error.
pub async fn probe_serial(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let connect = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp);
    let tls = within(STEP, "a TLS probe", connect)
        .await
        .map_err(|e| e.to_string())?;
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("peer certificates");
    Ok(serial_of(&certs[0]))
}

/// Path arguments for `--tls-cert`/`--tls-key` in `dir`.
pub fn pair_args(dir: &Path) -> [String; 4] {
    [
        "--tls-cert".into(),
        dir.join("tls.crt").display().to_string(),
        "--tls-key".into(),
        dir.join("tls.key").display().to_string(),
    ]
}

/// A frame-level `wss://` client connection (read frames with `read_frame`, write raw bytes).
pub type RawWssClient = BufReader<tokio_rustls::client::TlsStream<TcpStream>>;
/// The upstream's end of a frame-level `wss://` connection.
pub type RawWssServer = BufReader<tokio_rustls::server::TlsStream<TcpStream>>;

/// A TCP socket whose receive buffer is `bytes` (the kernel doubles it), fixed before the
/// handshake so the window the peer sees stays that small: the peer's socket fills after a few
/// KiB instead of megabytes.
fn small_window_socket(bytes: u32) -> TcpSocket {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    socket
}

/// A listener on 127.0.0.1:0 whose accepted connections inherit a `bytes` receive buffer.
pub fn small_window_listener(bytes: u32) -> TcpListener {
    let socket = small_window_socket(bytes);
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    socket.listen(16).expect("listen")
}

/// Connects to `addr` over TLS trusting `cfg` (as `localhost`), upgrades to a WebSocket with a
/// hand-written request, and checks the 101. `rcvbuf` fixes the socket's receive buffer.
pub async fn raw_wss_connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    rcvbuf: Option<u32>,
) -> RawWssClient {
    let socket = match rcvbuf {
        Some(bytes) => small_window_socket(bytes),
        None => TcpSocket::new_v4().expect("socket"),
    };
    let tcp = within(STEP, "connect", socket.connect(addr))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let connect = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp);
    let tls = within(STEP, "the TLS handshake", connect)
        .await
        .expect("TLS handshake");
    let mut io = BufReader::new(tls);
    let key = new_ws_key();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    io.write_all(req.as_bytes()).await.expect("write request");
    io.flush().await.expect("flush request");
    let head = within(STEP, "the 101", read_head(&mut io))
        .await
        .expect("read response")
        .expect("a response");
    assert_eq!(head.status(), 101, "upgrade refused: {head:?}");
    assert_eq!(
        head.header("sec-websocket-accept").as_deref(),
        Some(accept_for(&key).as_str())
    );
    io
}

/// Accepts one `wss://` upgrade on `listener` with `tls`: the TLS handshake, the request, the
/// 101. The connection is then the caller's, frame by frame.
pub async fn raw_wss_accept(listener: &TcpListener, tls: Arc<ServerConfig>) -> RawWssServer {
    let (tcp, _) = within(STEP, "a connection at the upstream", listener.accept())
        .await
        .expect("accept");
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(tcp);
    let stream = within(STEP, "the upstream's TLS handshake", accept)
        .await
        .expect("TLS accept");
    let mut io = BufReader::new(stream);
    let head = within(STEP, "the upgrade request", read_head(&mut io))
        .await
        .expect("read request")
        .expect("a request");
    let key = head.header("sec-websocket-key").expect("Sec-WebSocket-Key");
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(&key)
    );
    io.write_all(resp.as_bytes()).await.expect("write 101");
    io.flush().await.expect("flush 101");
    io
}
