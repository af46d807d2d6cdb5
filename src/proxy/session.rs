//! A session's life after the 101: take both upgraded connections back from hyper, register
//! the session for `/connections`, run the relay, and record how it ended (log line and
//! metrics). An upgrade that fails after the 101 is recorded here too, once.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use hyper::upgrade::{OnUpgrade, Upgraded};

use super::Proxy;
use super::context::ConnContext;
use crate::Side;
use crate::metrics::SessionGuard;
use crate::net::Conn;
use crate::outcome::{CloseReason, Initiator};
use crate::relay::{self, Peer, SessionContext};

impl Proxy {
    /// The session's task: waits for both upgrades, then relays until the session ends, and
    /// records its outcome. `ctx` is held to the end, so whatever it guards (the
    /// connection-limit permit) lives as long as the session.
    ///
    /// What the task keeps across the relay is what every idle session costs, so it is built
    /// in two steps, joined without an `async` block (which would keep a second copy of each
    /// future it awaits). Waiting for the upgrades is boxed, and what only it needs (both
    /// upgrades, the path before it is registered) goes with that box once the connections
    /// are taken over; what then runs in the task is the relay and what the last log line
    /// needs.
    pub(super) fn session(
        self: Arc<Self>,
        client_upgrade: OnUpgrade,
        upstream_upgrade: OnUpgrade,
        ctx: Arc<ConnContext>,
        path: String,
        extensions: bool,
    ) -> impl Future<Output = ()> {
        let upgrade = Box::pin(self.upgrade_then_relay(
            client_upgrade,
            upstream_upgrade,
            ctx,
            path,
            extensions,
        ));
        upgrade
            .map(OptionFuture::from)
            .flatten()
            .map(|_: Option<()>| ())
    }

    /// Waits for both upgrades; then the relay's future, or `None` when an upgrade failed
    /// (recorded here).
    async fn upgrade_then_relay(
        self: Arc<Self>,
        client_upgrade: OnUpgrade,
        upstream_upgrade: OnUpgrade,
        ctx: Arc<ConnContext>,
        path: String,
        extensions: bool,
    ) -> Option<impl Future<Output = ()>> {
        let (client_io, upstream_io) = match take_over(client_upgrade, upstream_upgrade).await {
            Ok(pair) => pair,
            Err((side, e)) => {
                let client = ctx.peer();
                tracing::warn!(%client, path, side = side.as_str(), error = %e, "upgrade did not complete");
                self.metrics
                    .close(Initiator::from(side), CloseReason::UpgradeFailed);
                return None;
            }
        };
        Some(self.relay(client_io, upstream_io, ctx, path, extensions))
    }

    /// Registers the session and starts its relay; the future relays until the session ends
    /// and records its outcome. The client's address and the path are read back from `ctx`
    /// and the registration rather than kept a second time.
    fn relay(
        &self,
        client_io: Upgraded,
        upstream_io: Upgraded,
        ctx: Arc<ConnContext>,
        path: String,
        extensions: bool,
    ) -> impl Future<Output = ()> + use<> {
        let guard = SessionGuard::new(&self.metrics);
        let registration = self.live.register(ctx.peer(), path);
        let (client_io, client_ahead) = Conn::from_upgraded(client_io);
        let (upstream_io, upstream_ahead) = Conn::from_upgraded(upstream_io);
        let client = ctx.peer();
        let path = registration.info().path.as_str();
        tracing::debug!(%client, path, "session started");
        relay::run(
            Peer {
                io: client_io,
                read_ahead: client_ahead,
            },
            Peer {
                io: upstream_io,
                read_ahead: upstream_ahead,
            },
            SessionContext {
                cfg: Arc::clone(&self.config.relay),
                drain: self.drain.clone(),
                metrics: Arc::clone(&self.metrics),
                info: Arc::clone(registration.info()),
                extensions,
            },
        )
        .map(move |outcome| {
            let client = ctx.peer();
            let path = registration.info().path.as_str();
            tracing::info!(
                %client,
                path,
                duration_ms = guard.age().as_millis() as u64,
                initiator = outcome.initiator.as_str(),
                reason = outcome.reason.as_str(),
                code = outcome.code,
                detail = outcome.detail,
                "session ended"
            );
            guard.finish(outcome.initiator, outcome.reason);
        })
    }
}

/// Both legs' connections once hyper hands them over, or the side whose upgrade failed first.
async fn take_over(
    client: OnUpgrade,
    upstream: OnUpgrade,
) -> Result<(Upgraded, Upgraded), (Side, hyper::Error)> {
    tokio::try_join!(
        async { client.await.map_err(|e| (Side::Client, e)) },
        async { upstream.await.map_err(|e| (Side::Upstream, e)) },
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use http::Request;

    use super::*;
    use crate::config::{Cli, Config};
    use crate::metrics::Metrics;
    use crate::metrics::tests::scrape;
    use crate::proxy::{Admission, Scheme};

    /// Budget of the session's task future, in bytes. Every session, idle or not, holds one
    /// tokio task: this future plus 96 bytes of tokio's own (112 with the task tracker's),
    /// rounded up to a multiple of 128. At 1,200 bytes today the task takes 1,408; within this
    /// budget it still does. A change that crosses it costs every idle session 128 bytes or
    /// more: shrink something else first, or raise this budget knowingly (docs/PERFORMANCE.md
    /// has the idle figures).
    const TASK_FUTURE_BUDGET: usize = 1_296;

    /// The session's task stays within its budget, with plain TCP on both legs.
    /// The task of a session whose requests hyper never served, so that awaiting their
    /// upgrades fails at once, in a proxy that counts into `metrics`.
    fn unserved_session(metrics: Arc<Metrics>) -> impl Future<Output = ()> {
        let cli = Cli::try_parse_from(["wsbeat", "--upstream", "ws://127.0.0.1:9"]).unwrap();
        let proxy = Arc::new(Proxy::new(
            Config::try_from(cli).unwrap(),
            metrics,
            Arc::default(),
            crate::shutdown::channel().1,
        ));
        let ctx = ConnContext::new(
            "127.0.0.1:1".parse().unwrap(),
            Scheme::Http,
            Admission::Unlimited,
        );
        let client = hyper::upgrade::on(Request::new(()));
        let upstream = hyper::upgrade::on(Request::new(()));
        proxy.session(client, upstream, Arc::new(ctx), "/".into(), false)
    }

    #[tokio::test]
    async fn the_session_task_fits_its_memory_budget() {
        let task = unserved_session(Arc::new(Metrics::new().unwrap()));
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= TASK_FUTURE_BUDGET,
            "the session's task future is {size} bytes, over its budget of {TASK_FUTURE_BUDGET}"
        );
    }

    /// After the 101, a leg whose connection hyper cannot hand over (here: none to hand over)
    /// ends the session before it starts. It is counted once, as a close with its own reason,
    /// and no session is left active.
    #[tokio::test]
    async fn upgrade_failing_after_the_101_is_one_upgrade_failed_close() {
        let metrics = Arc::new(Metrics::new().unwrap());
        unserved_session(Arc::clone(&metrics)).await;
        let text = scrape(&metrics);
        let line = r#"wsbeat_closes_total{initiator="client",reason="upgrade_failed"} 1"#;
        assert!(text.contains(line), "{text}");
        assert!(text.contains("wsbeat_connections_active 0"));
        let closes: u64 = text
            .lines()
            .filter(|l| l.starts_with("wsbeat_closes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(closes, 1, "counted once");
    }
}
