//! Fuzz target for the frame parser and pump: arbitrary frame streams, valid and broken, cut
//! into arbitrary reads, go through a real session (`relay::run`) over in-memory pipes.
//!
//! Invariants, for either direction:
//! - nothing panics, and the session ends (tokio's paused clock runs the close timeout);
//! - what the destination receives, with wsbeat's own pings left out, is a prefix of the
//!   source's data and close frames, each byte-identical after unmasking (FIN, RSV bits,
//!   opcode, length encoding, payload), masked exactly when it goes to the upstream, and
//!   followed at most by one close frame of wsbeat's own or by the start of the next source
//!   frame, cut off where the source ended or broke a rule; nothing follows a close;
//! - the pongs the source gets back carry the payloads of its pings, in order.
//!
//! The same cases also run over loopback TCP with small socket buffers and the splice
//! threshold at 1 to 64 bytes, so that payloads go through `splice(2)` (see `relay::splice`)
//! between arbitrary reads, pings and violations, and must come out the same.
//!
//! A short run is part of `cargo test`. `WSBEAT_FUZZ_SECONDS=600 cargo test --test fuzz_relay
//! -- --nocapture` runs it for ten minutes and prints the number of executions.

mod fuzz_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use wsbeat::config::UpstreamMasking;
use wsbeat::heartbeat::HeartbeatConfig;
use wsbeat::metrics::Metrics;
use wsbeat::net::{PeerDelivery, SpliceSocket};
use wsbeat::relay::{self, Peer, RelayConfig, SessionContext};
use wsbeat::sessions::Sessions;
use wsbeat::shutdown::{self, DrainTrigger};

use fuzz_support::{Wire, encode, fuzz, parse_stream};

/// Largest data frame the session under test accepts, small enough that the fuzzer hits it.
const MAX_FRAME: u64 = 1500;
/// Size of each in-memory pipe: small, so that backpressure happens.
const PIPE: usize = 512;

/// One frame as the fuzzer writes it, possibly breaking any rule.
#[derive(Clone, Debug)]
struct FrameSpec {
    fin: bool,
    rsv: u8,
    opcode: u8,
    /// Masked as its direction requires (masked from a client, plain from an upstream).
    masked_right: bool,
    /// 0: shortest length encoding; 1: 16-bit; 2: 64-bit (legal on the wire, if wasteful).
    length_form: u8,
    payload: Vec<u8>,
}

#[derive(Clone, Debug)]
enum Piece {
    Frame(FrameSpec),
    /// Raw bytes, most likely not a frame.
    Garbage(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Case {
    /// The fuzzed bytes come from the client (else from the upstream).
    from_client: bool,
    /// An extension was negotiated (RSV bits and reserved opcodes are then allowed).
    extensions: bool,
    /// `--upstream-masking forward`: client frames keep their key.
    forward_masking: bool,
    pieces: Vec<Piece>,
    /// Bytes per write into the pipe.
    chunk: usize,
}

/// Text: ASCII and multi-byte characters, cut anywhere when fragmented.
fn text() -> impl Strategy<Value = Vec<u8>> {
    let chars = prop::sample::select(vec!["a", "z", " ", "é", "€", "😀"]);
    prop::collection::vec(chars, 0..20).prop_map(|cs| cs.concat().into_bytes())
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..40),
        2 => prop::collection::vec(any::<u8>(), 0..300),
        1 => prop::collection::vec(any::<u8>(), 1400..1600),
        4 => text(),
        // Close payloads: a code (valid or not) and a reason.
        3 => (any::<u16>(), text()).prop_map(|(code, reason)| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(&reason);
            p
        }),
    ]
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    let opcode = prop_oneof![
        6 => Just(0x1u8),
        4 => Just(0x2u8),
        4 => Just(0x0u8),
        3 => Just(0x9u8),
        2 => Just(0xAu8),
        1 => Just(0x8u8),
        1 => 0u8..16,
    ];
    let rsv = prop_oneof![12 => Just(0u8), 1 => 0u8..8];
    let masked_right = prop_oneof![15 => Just(true), 1 => Just(false)];
    let length_form = prop_oneof![12 => Just(0u8), 1 => 0u8..3];
    (
        any::<bool>(),
        rsv,
        opcode,
        masked_right,
        length_form,
        payload(),
    )
        .prop_map(
            |(fin, rsv, opcode, masked_right, length_form, payload)| FrameSpec {
                // Control frames are mostly final, as they must be.
                fin: fin || opcode & 0x8 != 0 && payload.len() % 7 != 0,
                rsv,
                opcode,
                masked_right,
                length_form,
                payload,
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    let piece = prop_oneof![
        20 => frame_spec().prop_map(Piece::Frame),
        1 => prop::collection::vec(any::<u8>(), 1..20).prop_map(Piece::Garbage),
    ];
    (
        any::<bool>(),
        prop_oneof![4 => Just(false), 1 => Just(true)],
        any::<bool>(),
        prop::collection::vec(piece, 0..24),
        prop_oneof![1 => 1..8usize, 3 => 8..200usize, 3 => 200..4000usize],
    )
        .prop_map(
            |(from_client, extensions, forward_masking, pieces, chunk)| Case {
                from_client,
                extensions,
                forward_masking,
                pieces,
                chunk,
            },
        )
}

/// `case` made mostly valid: frames only, masked as their direction requires, no RSV bits,
/// data frames as binary messages in a legal sequence (control frames between fragments stay).
/// Its payloads are relayed unchanged, so the TCP run below gets frames to splice instead of a
/// session that ends at the first broken rule.
fn mostly_valid(mut case: Case) -> Case {
    let mut in_message = false;
    case.pieces.retain(|p| matches!(p, Piece::Frame(_)));
    for piece in &mut case.pieces {
        let Piece::Frame(f) = piece else { continue };
        f.masked_right = true;
        f.rsv = 0;
        if f.opcode & 0x8 == 0 || f.opcode > 0xA {
            f.opcode = if in_message { 0x0 } else { 0x2 };
            in_message = !f.fin;
        } else if f.opcode == 0x8 {
            // A close payload must be valid too: a normal close, no reason.
            f.payload = 1000u16.to_be_bytes().to_vec();
            f.fin = true;
        } else {
            f.payload.truncate(125);
            f.fin = true;
        }
    }
    case
}

fn input_bytes(case: &Case) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, piece) in case.pieces.iter().enumerate() {
        match piece {
            Piece::Frame(f) => {
                let masked = f.masked_right == case.from_client;
                let key = masked.then(|| [i as u8, 0x5a, 0xc3, (i * 7) as u8]);
                encode(
                    &mut out,
                    f.fin,
                    f.rsv,
                    f.opcode,
                    key,
                    f.length_form,
                    &f.payload,
                );
            }
            Piece::Garbage(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

/// What the two test peers received.
struct Received {
    /// The destination of the fuzzed stream.
    dst: Vec<u8>,
    /// The source of the fuzzed stream (pongs, pings and a close from wsbeat).
    src: Vec<u8>,
}

struct World {
    metrics: Arc<Metrics>,
    sessions: Arc<Sessions>,
    /// Never pulled: the sessions are not shut down.
    drain: DrainTrigger,
}

impl World {
    fn new() -> World {
        World {
            metrics: Arc::new(Metrics::new().expect("metrics")),
            sessions: Arc::new(Sessions::default()),
            drain: shutdown::channel().0,
        }
    }
}

fn relay_config(case: &Case) -> RelayConfig {
    // Pings every second on both legs (the paused clock makes them land between arbitrary
    // writes); no pong timeout, since the test peers never answer.
    let hb = HeartbeatConfig {
        interval: Duration::from_secs(1),
        timeout: Duration::ZERO,
        timeout_after_pong: None,
    };
    RelayConfig {
        client: hb,
        upstream: hb,
        close_timeout: Duration::from_secs(5),
        max_frame_size: MAX_FRAME,
        // No text heartbeats: every text message is relayed.
        text: Default::default(),
        // In-memory pipes have no socket to splice (tests/splice.rs covers that path).
        splice_min_payload: 0,
        upstream_masking: if case.forward_masking {
            UpstreamMasking::Forward
        } else {
            UpstreamMasking::Fresh
        },
    }
}

async fn run_case(world: &World, case: &Case, input: Vec<u8>) -> Received {
    let client = tokio::io::duplex(PIPE);
    let upstream = tokio::io::duplex(PIPE);
    run_session(world, relay_config(case), case, input, client, upstream).await
}

/// A connected loopback pair with small buffers on the test peer's end (so that wsbeat meets
/// backpressure): (test peer, wsbeat's end).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(PIPE as u32).expect("SO_RCVBUF");
    socket.set_send_buffer_size(PIPE as u32).expect("SO_SNDBUF");
    let (peer, accepted) = tokio::join!(socket.connect(addr), listener.accept());
    (peer.expect("connect"), accepted.expect("accept").0)
}

/// The case over loopback TCP, splicing nearly every frame with a byte still to come after a
/// read (thresholds of 1 to 64 bytes), with real time:
/// pings every 10 ms and a 50 ms close timeout keep each case short.
async fn run_case_tcp(world: &World, case: &Case, input: Vec<u8>) -> Received {
    let hb = HeartbeatConfig {
        interval: Duration::from_millis(10),
        timeout: Duration::ZERO,
        timeout_after_pong: None,
    };
    let cfg = RelayConfig {
        client: hb,
        upstream: hb,
        close_timeout: Duration::from_millis(50),
        // From 1 byte (the lowest) to 64, varied with the case.
        splice_min_payload: 1 + case.chunk as u64 % 64,
        ..relay_config(case)
    };
    let client = tcp_pair().await;
    let upstream = tcp_pair().await;
    run_session(world, cfg, case, input, client, upstream).await
}

/// Runs one session between two pairs of streams, (test peer, wsbeat's end) each, writes the
/// case's bytes from its source in the case's chunks, and collects what both peers received.
async fn run_session<P, Q>(
    world: &World,
    cfg: RelayConfig,
    case: &Case,
    input: Vec<u8>,
    (client, proxy_client): (P, Q),
    (upstream, proxy_upstream): (P, Q),
) -> Received
where
    P: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Q: AsyncRead + AsyncWrite + PeerDelivery + SpliceSocket + Unpin + Send + 'static,
{
    let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
    let registration = world.sessions.register(addr, "/".into());
    let ctx = SessionContext {
        cfg: std::sync::Arc::new(cfg),
        drain: world.drain.watcher(),
        metrics: Arc::clone(&world.metrics),
        info: Arc::clone(registration.info()),
        extensions: case.extensions,
    };
    let session = tokio::spawn(relay::run(
        Peer {
            io: proxy_client,
            read_ahead: Bytes::new(),
        },
        Peer {
            io: proxy_upstream,
            read_ahead: Bytes::new(),
        },
        ctx,
    ));
    let (src, dst) = if case.from_client {
        (client, upstream)
    } else {
        (upstream, client)
    };
    let (mut src_read, mut src_write) = tokio::io::split(src);
    let chunk = case.chunk;
    let writer = tokio::spawn(async move {
        for piece in input.chunks(chunk) {
            if src_write.write_all(piece).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = src_write.shutdown().await;
    });
    let src_reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = src_read.read_to_end(&mut got).await;
        got
    });
    let mut dst = dst;
    let mut dst_got = Vec::new();
    let _ = dst.read_to_end(&mut dst_got).await;
    drop(dst);
    let outcome = tokio::time::timeout(Duration::from_secs(60), session).await;
    let outcome = outcome.expect("the session ends");
    outcome.expect("the session does not panic");
    drop(registration);
    writer.abort();
    Received {
        dst: dst_got,
        src: src_reader.await.expect("reader"),
    }
}

fn check(case: &Case, input: &[u8], got: &Received) -> Result<(), TestCaseError> {
    let sent = parse_stream(input);
    let relayable: Vec<&Wire> = sent
        .iter()
        .filter(|f| f.opcode != 0x9 && f.opcode != 0xA)
        .collect();
    let out = parse_stream(&got.dst);
    let to_upstream = case.from_client;
    let mut relayed = out.iter().filter(|f| f.opcode != 0x9).peekable();
    let mut n = 0;
    while let Some(f) = relayed.next() {
        prop_assert_eq!(f.masked, to_upstream, "masking toward the destination");
        let last = relayed.peek().is_none();
        if let Some(&source) = relayable.get(n) {
            if f.same_frame(source) {
                n += 1;
                prop_assert!(f.opcode != 0x8 || last, "a frame followed a close");
                continue;
            }
            // The source ended inside this frame, or broke a rule inside its payload (text
            // that is not UTF-8 in a later read): the destination may get the part relayed, and
            // then the connection ends (no close frame can follow a cut-off frame).
            if !f.complete && last && f.is_cut_from(source) {
                continue;
            }
        }
        // Not the next source frame: only wsbeat's own close may appear, and only last.
        prop_assert_eq!(
            f.opcode,
            0x8,
            "frame {} differs from the source's: {:?}",
            n,
            f
        );
        prop_assert!(last, "a frame followed wsbeat's close");
        prop_assert!(
            f.complete && f.payload.len() >= 2,
            "wsbeat's close: {:?}",
            f
        );
        let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
        prop_assert!(
            [1001, 1002, 1007, 1009, 1011].contains(&code),
            "close {} from wsbeat",
            code
        );
    }
    let pings: Vec<Vec<u8>> = sent
        .into_iter()
        .filter(|f| f.opcode == 0x9 && f.complete)
        .map(|f| f.payload)
        .collect();
    let pongs: Vec<Vec<u8>> = parse_stream(&got.src)
        .into_iter()
        .filter(|f| f.opcode == 0xA)
        .map(|f| f.payload)
        .collect();
    prop_assert!(pongs.len() <= pings.len(), "more pongs than pings");
    prop_assert_eq!(
        &pongs[..],
        &pings[..pongs.len()],
        "pongs echo the pings in order"
    );
    Ok(())
}

#[test]
fn relayed_frames_are_a_byte_identical_prefix_of_the_source() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let world = World::new();
    fuzz("relay", 200, case(), |case| {
        let input = input_bytes(&case);
        let got = rt.block_on(run_case(&world, &case, input.clone()));
        check(&case, &input, &got)
    });
}

#[test]
fn over_tcp_with_splicing_relayed_frames_are_a_byte_identical_prefix_of_the_source() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let world = World::new();
    fuzz(
        "relay over tcp",
        100,
        case().prop_map(mostly_valid),
        |case| {
            let input = input_bytes(&case);
            let got = rt.block_on(run_case_tcp(&world, &case, input.clone()));
            check(&case, &input, &got)
        },
    );
    let spliced: u64 = wsbeat::Side::ALL
        .iter()
        .map(|side| world.metrics.spliced_frames[side.index()].get())
        .sum();
    eprintln!("fuzz target relay over tcp: {spliced} frames spliced");
    assert!(
        spliced > 0,
        "no frame was spliced: the target missed the path"
    );
}
