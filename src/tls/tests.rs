//! Unit tests for loading, serving, trusting and reloading, with certificates made by rcgen.

use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SerialNumber,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::reload::Reloader;
use super::*;
use crate::metrics::{ReloadResult, TlsMetrics};

const RSA_PKCS1: &str = include_str!("testdata/rsa2048.pkcs1.pem");
const RSA_PKCS8: &str = include_str!("testdata/rsa2048.pkcs8.pem");
const P256_SEC1: &str = include_str!("testdata/p256.sec1.pem");
const P256_PKCS8: &str = include_str!("testdata/p256.pkcs8.pem");

/// A directory of its own under the system temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("wsbeat-tls-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn pair(&self, cert: &str, key: &str) -> PairPaths {
        PairPaths {
            cert: self.write("tls.crt", cert),
            key: self.write("tls.key", key),
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn params(serial: u64) -> CertificateParams {
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    p.serial_number = Some(SerialNumber::from(serial));
    p
}

/// A self-signed certificate for `localhost` on `key`, as PEM.
fn self_signed(key: &KeyPair, serial: u64) -> String {
    params(serial).self_signed(key).unwrap().pem()
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf for `localhost` signed by `ca`, and its key, as PEM.
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, serial: u64) -> (String, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params(serial).signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn every_supported_key_type_and_encoding_loads() {
    let rsa = KeyPair::from_pem(RSA_PKCS8).unwrap();
    let p256 = KeyPair::from_pem(P256_PKCS8).unwrap();
    let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let cases = [
        ("rsa pkcs#1", self_signed(&rsa, 1), RSA_PKCS1.to_owned()),
        ("rsa pkcs#8", self_signed(&rsa, 2), RSA_PKCS8.to_owned()),
        ("p-256 sec1", self_signed(&p256, 3), P256_SEC1.to_owned()),
        ("p-256 pkcs#8", self_signed(&p256, 4), P256_PKCS8.to_owned()),
        ("p-384 pkcs#8", self_signed(&p384, 5), p384.serialize_pem()),
        ("ed25519 pkcs#8", self_signed(&ed, 6), ed.serialize_pem()),
    ];
    let dir = Dir::new();
    for (name, cert, key) in cases {
        let paths = dir.pair(&cert, &key);
        let pair = read_pair(&paths).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(pair.certified.cert.len(), 1, "{name}");
    }
}

#[test]
fn a_full_chain_is_served_whole_with_the_leaf_first() {
    let ca = ca();
    let (cert, key) = leaf(&ca, 7);
    let dir = Dir::new();
    let paths = dir.pair(&format!("{cert}{}", ca.pem()), &key);
    let pair = read_pair(&paths).unwrap();
    assert_eq!(pair.certified.cert.len(), 2);
    assert_eq!(pair.serial, "07");
    assert_eq!(pair.certified.cert[1].as_ref(), ca.der().as_ref());
}

#[test]
fn a_key_from_another_pair_is_refused_naming_both_files() {
    let a = KeyPair::generate().unwrap();
    let b = KeyPair::generate().unwrap();
    let dir = Dir::new();
    let paths = dir.pair(&self_signed(&a, 1), &b.serialize_pem());
    let err = read_pair(&paths).unwrap_err();
    assert!(matches!(err, TlsError::Mismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("tls.key") && text.contains("tls.crt"),
        "{text}"
    );
}

#[test]
fn malformed_or_missing_material_is_refused_naming_the_file() {
    let key = KeyPair::generate().unwrap();
    let cert = self_signed(&key, 1);
    let dir = Dir::new();
    let garbage = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
    let key_pem = key.serialize_pem();
    let cases = [
        ("garbage certificate", garbage, key_pem.as_str(), "tls.crt"),
        (
            "key file given as cert",
            key_pem.as_str(),
            key_pem.as_str(),
            "tls.crt",
        ),
        (
            "cert file given as key",
            cert.as_str(),
            cert.as_str(),
            "tls.key",
        ),
        ("empty key", cert.as_str(), "", "tls.key"),
    ];
    for (name, cert, key, file) in cases {
        let err = read_pair(&dir.pair(cert, key)).unwrap_err().to_string();
        assert!(err.contains(file), "{name}: {err}");
    }
    let missing = PairPaths {
        cert: dir.0.join("absent.crt"),
        key: dir.0.join("absent.key"),
    };
    let err = read_pair(&missing).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }) && err.to_string().contains("absent.crt"));
}

#[test]
fn a_block_that_is_not_x509_is_refused() {
    let dir = Dir::new();
    let key = KeyPair::generate().unwrap();
    let fake = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
    let err = read_pair(&dir.pair(fake, &key.serialize_pem())).unwrap_err();
    assert!(matches!(err, TlsError::Certificate { .. }), "{err:?}");
}

#[test]
fn expiry_is_the_leafs_not_after() {
    let key = KeyPair::generate().unwrap();
    let mut p = params(1);
    p.not_after = rcgen::date_time_ymd(2031, 1, 2);
    let dir = Dir::new();
    let pair =
        read_pair(&dir.pair(&p.self_signed(&key).unwrap().pem(), &key.serialize_pem())).unwrap();
    assert_eq!(pair.not_after, 1_925_078_400); // 2031-01-02T00:00:00Z
}

/// Handshakes a client trusting `ca_file` against a server using `resolver` over an in-memory
/// pipe, echoes one byte, and returns the serial of the leaf the client saw.
async fn handshake(
    resolver: Arc<CertResolver>,
    upstream: &UpstreamTlsConfig,
) -> Result<String, io::Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(resolver).unwrap());
    let connector = tokio_rustls::TlsConnector::from(client_config(upstream).unwrap());
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut s = acceptor.accept(b).await?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await?;
        s.write_all(&byte).await?;
        s.flush().await?;
        Ok::<_, io::Error>(s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
    });
    let mut c = connector
        .connect(server_name("localhost").unwrap(), a)
        .await?;
    c.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    c.read_exact(&mut byte).await?;
    let alpn = server.await.unwrap()?;
    assert_eq!(alpn.as_deref(), Some(ALPN_HTTP1));
    let leaf = &c.get_ref().1.peer_certificates().unwrap()[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).unwrap();
    Ok(parsed.tbs_certificate.raw_serial_as_string())
}

#[tokio::test]
async fn a_swapped_pair_serves_new_handshakes() {
    let ca = ca();
    let dir = Dir::new();
    let upstream = UpstreamTlsConfig {
        ca: Some(dir.write("ca.pem", ca.pem())),
        ..UpstreamTlsConfig::default()
    };
    let (cert, key) = leaf(&ca, 0x11);
    let first = read_pair(&dir.pair(&cert, &key)).unwrap();
    let resolver = Arc::new(CertResolver::new(&first));
    assert_eq!(
        handshake(Arc::clone(&resolver), &upstream).await.unwrap(),
        "11"
    );
    let (cert, key) = leaf(&ca, 0x22);
    resolver.swap(&read_pair(&dir.pair(&cert, &key)).unwrap());
    assert_eq!(handshake(resolver, &upstream).await.unwrap(), "22");
}

#[tokio::test]
async fn an_unknown_ca_fails_as_a_certificate_error() {
    let dir = Dir::new();
    let (cert, key) = leaf(&ca(), 1);
    let resolver = Arc::new(CertResolver::new(
        &read_pair(&dir.pair(&cert, &key)).unwrap(),
    ));
    let other = UpstreamTlsConfig {
        ca: Some(dir.write("ca.pem", ca().pem())),
        ..UpstreamTlsConfig::default()
    };
    let err = handshake(resolver, &other).await.unwrap_err();
    assert_eq!(classify(&err), TlsFailure::Certificate, "{err}");
}

#[tokio::test]
async fn plain_http_to_the_tls_side_is_classified_not_tls() {
    let key = KeyPair::generate().unwrap();
    let dir = Dir::new();
    let pair = read_pair(&dir.pair(&self_signed(&key, 1), &key.serialize_pem())).unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(server_config(Arc::new(CertResolver::new(&pair))).unwrap());
    let (mut a, b) = tokio::io::duplex(4096);
    a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let err = acceptor.accept(b).await.unwrap_err();
    assert_eq!(classify(&err), TlsFailure::NotTls, "{err}");
    let timeout = io::Error::from(io::ErrorKind::TimedOut);
    assert_eq!(classify(&timeout), TlsFailure::Timeout);
    let reset = io::Error::from(io::ErrorKind::ConnectionReset);
    assert_eq!(classify(&reset), TlsFailure::Io);
}

#[test]
fn client_pairs_and_ca_files_are_checked_at_start() {
    let dir = Dir::new();
    let a = KeyPair::generate().unwrap();
    let b = KeyPair::generate().unwrap();
    let mismatched = UpstreamTlsConfig {
        ca: Some(dir.write("ca.pem", ca().pem())),
        client_pair: Some(dir.pair(&self_signed(&a, 1), &b.serialize_pem())),
        server_name: None,
    };
    assert!(matches!(
        client_config(&mismatched),
        Err(TlsError::Mismatch { .. })
    ));
    let bad_ca = UpstreamTlsConfig {
        ca: Some(dir.write("bad-ca.pem", "no pem here")),
        ..UpstreamTlsConfig::default()
    };
    let err = client_config(&bad_ca).unwrap_err().to_string();
    assert!(err.contains("bad-ca.pem"), "{err}");
    assert!(server_name("10.0.0.1").is_ok() && server_name("[::1]").is_ok());
    assert!(server_name("not a name").is_err());
}

fn reloader(
    pair: &LoadedPair,
    paths: &PairPaths,
) -> (Reloader, Arc<CertResolver>, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = TlsMetrics::new(&registry).unwrap();
    let resolver = Arc::new(CertResolver::new(pair));
    let start = (
        std::fs::read(&paths.cert).unwrap(),
        std::fs::read(&paths.key).unwrap(),
    );
    let r = Reloader::new(paths.clone(), Arc::clone(&resolver), metrics, start);
    (r, resolver, registry)
}

fn serial_of(resolver: &CertResolver) -> String {
    let leaf = resolver.current().cert[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    parsed.tbs_certificate.raw_serial_as_string()
}

#[tokio::test]
async fn reload_swaps_good_pairs_and_keeps_the_old_one_otherwise() {
    let ca = ca();
    let dir = Dir::new();
    let (cert, key) = leaf(&ca, 1);
    let paths = dir.pair(&cert, &key);
    let (mut r, resolver, registry) = reloader(&read_pair(&paths).unwrap(), &paths);
    assert_eq!(r.check().await, None, "unchanged files are not reloaded");

    let (cert2, key2) = leaf(&ca, 2);
    dir.pair(&cert2, &key2);
    assert_eq!(r.check().await, Some(ReloadResult::Ok));
    assert_eq!(serial_of(&resolver), "02");

    let (cert3, _) = leaf(&ca, 3);
    dir.write("tls.crt", &cert3); // key 2 with cert 3: mismatched
    assert_eq!(r.check().await, Some(ReloadResult::Error));
    assert_eq!(serial_of(&resolver), "02", "the old pair stays");
    assert_eq!(
        r.check().await,
        None,
        "a broken pair is tried (and logged) once"
    );

    std::fs::remove_file(&paths.key).unwrap();
    assert_eq!(r.check().await, Some(ReloadResult::Error));
    assert_eq!(r.check().await, None);
    assert_eq!(serial_of(&resolver), "02");

    let text = {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    };
    assert!(
        text.contains(r#"tls_reloads_total{result="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tls_reloads_total{result="error"} 2"#),
        "{text}"
    );
    assert!(
        !text.contains("tls_cert_expiry_timestamp_seconds 0\n"),
        "{text}"
    );
}

/// Lays out `dir` as a Kubernetes secret volume: `tls.crt -> ..data/tls.crt`, `..data -> <ts>`.
/// Calling it again writes a new timestamped directory and renames a new `..data` link over
/// the old one, which is how the kubelet updates a mounted secret.
fn kubernetes_secret(dir: &Dir, generation: u32, cert: &str, key: &str) -> PairPaths {
    let ts = dir.0.join(format!("..2026_12_01_{generation}"));
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join("tls.crt"), cert).unwrap();
    std::fs::write(ts.join("tls.key"), key).unwrap();
    let tmp = dir.0.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.0.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        let link = dir.0.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    PairPaths {
        cert: dir.0.join("tls.crt"),
        key: dir.0.join("tls.key"),
    }
}

/// The directory watch alone (the poll is an hour away) catches a `..data` symlink swap, which
/// a watch on the files themselves would miss.
#[tokio::test]
async fn a_kubernetes_symlink_swap_is_seen_by_the_directory_watch() {
    let ca = ca();
    let dir = Dir::new();
    let (cert, key) = leaf(&ca, 0x31);
    let paths = kubernetes_secret(&dir, 1, &cert, &key);
    let (r, resolver, _registry) = reloader(&read_pair(&paths).unwrap(), &paths);
    let cfg = reload::ReloadConfig {
        poll_interval: std::time::Duration::from_secs(3600),
        settle: std::time::Duration::from_millis(10),
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(r.run(cfg, cancel.clone()));
    let (cert, key) = leaf(&ca, 0x32);
    // The watch starts inside the task; swap until it is seen, each swap a real rotation.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut generation = 2;
    while serial_of(&resolver) != "32" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "symlink swap not picked up"
        );
        kubernetes_secret(&dir, generation, &cert, &key);
        generation += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cancel.cancel();
    task.await.unwrap();
}

/// Keepalive, TCP_NODELAY and (upstream) TCP_USER_TIMEOUT are set on the socket before TLS
/// wraps it, and are still there under both TLS stream types, read back through `Conn`.
#[tokio::test]
async fn tls_streams_keep_their_legs_socket_options() {
    use std::time::Duration;

    use socket2::SockRef;

    use crate::net::{self, Conn};

    let ca = ca();
    let dir = Dir::new();
    let (cert, key) = leaf(&ca, 1);
    let acceptor = Acceptor::load(&dir.pair(&cert, &key)).unwrap();
    let upstream = UpstreamTlsConfig {
        ca: Some(dir.write("ca.pem", ca.pem())),
        ..UpstreamTlsConfig::default()
    };
    let connector = Connector::new(&upstream, "localhost").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        net::configure_client(&tcp).unwrap();
        Conn::from(acceptor.accept(tcp).await.unwrap())
    });
    let tcp = net::dial("127.0.0.1", port, Duration::from_secs(30))
        .await
        .unwrap();
    let upstream_conn = Conn::from(connector.connect(tcp).await.unwrap());
    let client_conn = server.await.unwrap();
    assert!(matches!(client_conn, Conn::ClientTls(_)));
    assert!(matches!(upstream_conn, Conn::UpstreamTls(_)));
    for conn in [&client_conn, &upstream_conn] {
        let tcp = conn.tcp().expect("a socket under the TLS stream");
        assert!(tcp.nodelay().unwrap());
        assert!(SockRef::from(tcp).keepalive().unwrap());
    }
    let up = SockRef::from(upstream_conn.tcp().unwrap());
    assert_eq!(
        up.tcp_user_timeout().unwrap(),
        Some(Duration::from_secs(30))
    );
}
