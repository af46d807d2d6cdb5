//! Compares rustls' two crypto providers on what wsbeat does: full TLS 1.3 handshakes with an
//! ECDSA P-256 certificate, and bulk AES-128-GCM records. In memory, one thread, no sockets, so
//! only the provider's cost differs between the rows.
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

const RUN: Duration = Duration::from_secs(3);

/// CPU time this thread has run, from the scheduler's own accounting: the machine is shared,
/// so wall time would measure the other tenants as much as the provider.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9
}

fn provider(name: &str) -> CryptoProvider {
    let mut p = match name {
        "ring" => rustls::crypto::ring::default_provider(),
        _ => rustls::crypto::aws_lc_rs::default_provider(),
    };
    // The suite nginx is pinned to in the benchmark: TLS 1.3, AES-128-GCM.
    p.cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    p
}

fn configs(name: &str) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server = ServerConfig::builder_with_provider(Arc::new(provider(name)))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let mut client = ClientConfig::builder_with_provider(Arc::new(provider(name)))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes only: no resumption.
    client.resumption = rustls::client::Resumption::disabled();
    (Arc::new(server), Arc::new(client))
}

fn pump(c: &mut ClientConnection, s: &mut ServerConnection) {
    let mut buf = Vec::new();
    loop {
        let mut moved = false;
        while c.wants_write() {
            buf.clear();
            c.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
                s.process_new_packets().unwrap();
            }
            moved = true;
        }
        while s.wants_write() {
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn pair(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (ClientConnection, ServerConnection) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
    pump(&mut c, &mut s);
    assert!(!c.is_handshaking() && !s.is_handshaking());
    (c, s)
}

fn handshakes(name: &str) -> f64 {
    let (server, client) = configs(name);
    let start = Instant::now();
    let cpu = cpu_seconds();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        pair(&server, &client);
        n += 1;
    }
    n as f64 / (cpu_seconds() - cpu)
}

/// Server encrypts, client decrypts: both halves of a relay's record work, 16 KiB records.
fn bulk(name: &str, chunk: usize) -> f64 {
    let (server, client) = configs(name);
    let (mut c, mut s) = pair(&server, &client);
    let data = vec![0x5au8; chunk];
    let mut sink = vec![0u8; 1 << 20];
    let mut wire = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let cpu = cpu_seconds();
    let mut bytes = 0u64;
    while start.elapsed() < RUN {
        s.writer().write_all(&data).unwrap();
        wire.clear();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
            loop {
                match c.reader().read(&mut sink) {
                    Ok(0) => break,
                    Ok(k) => bytes += k as u64,
                    Err(_) => break,
                }
            }
        }
    }
    bytes as f64 / (cpu_seconds() - cpu) / 1e6
}

fn main() {
    println!(
        "per CPU-second of one thread: provider, full handshakes/s, MB/s with 64 B writes, MB/s with 64 KiB writes"
    );
    for name in ["ring", "aws-lc-rs", "ring", "aws-lc-rs"] {
        let hs = handshakes(name);
        let small = bulk(name, 64);
        let big = bulk(name, 64 * 1024);
        println!("{name:<10} {hs:>12.0} {small:>14.1} {big:>11.1}");
    }
}
