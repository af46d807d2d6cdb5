//! The admin listener: `/connections` for debugging one stuck client, `/readyz` for load balancers.

mod common;

use std::time::Duration;

use common::prom::metric;
use common::*;
use serde_json::Value;

async fn get(admin: std::net::SocketAddr, target: &str) -> (u16, Vec<u8>) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let (head, body) = http_exchange(admin, &req).await;
    (head.status(), body)
}

async fn connections(admin: std::net::SocketAddr, query: &str) -> Value {
    let (status, body) = get(admin, &format!("/connections{query}")).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).expect("JSON body")
}

async fn demo_upstream() -> String {
    format!("ws://{}", spawn_demo_upstream().await)
}

/// Three sessions: the listing is newest first, capped by `limit`, and shows per-leg liveness
/// (RTT of answered pings on the client leg, pings sent to the never-answering upstream).
#[tokio::test]
async fn connections_lists_live_sessions_newest_first_with_per_leg_liveness() {
    let upstream = demo_upstream().await;
    let proxy = spawn_proxy(&[
        "--upstream",
        &upstream,
        "--client-ping-interval",
        "30ms",
        "--upstream-ping-interval",
        "30ms",
    ])
    .await;
    let mut clients = Vec::new();
    for path in ["/first", "/second?token=secret", "/third"] {
        let (ws, _) = ws_connect(proxy.ws_url(path)).await;
        clients.push(ws);
        // A session registers on its relay thread once both upgrades are done, which may be
        // after the client saw its 101: wait, so the next one is surely newer.
        let n = clients.len();
        assert_eventually(STEP, "the session to be listed", || async move {
            connections(proxy.admin_addr, "").await["total"] == n
        })
        .await;
    }
    // Reading answers the proxy's pings.
    let pings = stay_quiet_for(&mut clients[2], Duration::from_millis(200)).await;
    assert!(pings >= 2, "client got {pings} pings");

    let listing = connections(proxy.admin_addr, "?limit=2").await;
    assert_eq!(listing["total"], 3);
    let sessions = listing["sessions"].as_array().unwrap();
    let paths: Vec<&str> = sessions
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/third", "/second"],
        "newest first, capped, no query string"
    );
    let newest = &sessions[0];
    assert!(newest["client"]["last_rtt_seconds"].as_f64().unwrap() > 0.0);
    assert!(newest["client"]["pings_sent"].as_u64().unwrap() >= 2);
    assert!(newest["upstream"]["pings_sent"].as_u64().unwrap() >= 2);
    assert!(
        newest["upstream"]["last_rtt_seconds"].is_null(),
        "demo upstream never pongs"
    );
    assert!(newest["age_seconds"].as_f64().unwrap() >= 0.2);
    assert!(
        newest["client_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let all = connections(proxy.admin_addr, "").await;
    assert_eq!(
        all["sessions"].as_array().unwrap().len(),
        3,
        "default limit is 100"
    );
    drop(clients);
    let admin = proxy.admin_addr;
    assert_eventually(
        Duration::from_secs(5),
        "sessions removed from the listing",
        || async move { connections(admin, "").await["total"] == 0 },
    )
    .await;
}

#[tokio::test]
async fn connections_rejects_a_limit_that_is_not_a_number() {
    let proxy = spawn_proxy(&["--upstream", &demo_upstream().await]).await;
    let (status, body) = get(proxy.admin_addr, "/connections?limit=lots").await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("limit"));
}

/// Once shutdown starts, `/readyz` says 503 while sessions drain; `/healthz` stays 200.
#[tokio::test]
async fn readyz_turns_503_when_shutdown_starts_and_healthz_stays_200() {
    let proxy = spawn_proxy(&[
        "--upstream",
        &demo_upstream().await,
        "--close-timeout",
        "2s",
    ])
    .await;
    assert_eq!(get(proxy.admin_addr, "/readyz").await.0, 200);
    // A raw client that never answers the proxy's close keeps the drain going.
    let _session = raw_connect(proxy.addr, "/", &[]).await;
    let mut proxy = proxy;
    proxy.shutdown.take().unwrap().send(()).unwrap();
    let admin = proxy.admin_addr;
    assert_eventually(
        Duration::from_secs(2),
        "/readyz answering 503",
        || async move { get(admin, "/readyz").await.0 == 503 },
    )
    .await;
    assert_eq!(get(admin, "/healthz").await.0, 200);
}

/// `POST /drain` from loopback starts the drain (202, `/readyz` 503, phase gauge 1); other
/// methods get 405. (The refusal of non-loopback peers is in tests/shutdown.rs, which needs a
/// network namespace.)
#[tokio::test]
async fn post_drain_from_loopback_starts_the_drain() {
    let proxy = spawn_proxy(&["--upstream", &demo_upstream().await, "--drain-delay", "30s"]).await;
    let (status, _) = get(proxy.admin_addr, "/drain").await;
    assert_eq!(status, 405, "GET /drain");
    assert_eq!(get(proxy.admin_addr, "/readyz").await.0, 200);
    metric("wsbeat_drain_phase")
        .value(0)
        .assert_in(proxy.admin_addr)
        .await;

    let req =
        "POST /drain HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (head, body) = http_exchange(proxy.admin_addr, req).await;
    assert_eq!(head.status(), 202, "{}", String::from_utf8_lossy(&body));
    let admin = proxy.admin_addr;
    assert_eventually(STEP, "/readyz answering 503", || async move {
        get(admin, "/readyz").await.0 == 503
    })
    .await;
    metric("wsbeat_drain_phase").value(1).assert_in(admin).await;
    // Still accepting during the drain delay.
    let (mut ws, _) = ws_connect(proxy.ws_url("/late")).await;
    assert_echo(&mut ws, "still served").await;
}
