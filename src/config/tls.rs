//! The TLS settings (flags in `cli`'s TLS group): a certificate pair that makes `--listen` speak
//! TLS, and how a `wss://` or `https://` upstream is trusted and what it is shown.
//!
//! Validation reads the files: a pair that is unreadable, malformed or mismatched, or a CA file
//! without a certificate, is a configuration problem naming the file, reported with every other
//! problem before anything is bound (exit 64). The server then builds its TLS endpoints from the
//! same paths. There is no flag that turns certificate verification off, by design.

use super::{TlsArgs, Upstream};
use crate::tls::{self, PairPaths, UpstreamTlsConfig};

/// Validated TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// The pair `--listen` serves; `None` for plain TCP.
    pub listen: Option<PairPaths>,
    /// Trust and identity toward a TLS upstream (unused for a plain one).
    pub upstream: UpstreamTlsConfig,
}

impl TlsConfig {
    /// Checks the flags and the files they name. `upstream` is `None` when `--upstream` itself
    /// failed to parse, so that no consequence of a placeholder is reported.
    ///
    /// Returns the settings and every problem found, each naming its flag or file.
    pub fn parse(args: &TlsArgs, upstream: Option<&Upstream>) -> (TlsConfig, Vec<String>) {
        let mut problems = Vec::new();
        let listen = args
            .tls_cert
            .clone()
            .zip(args.tls_key.clone())
            .map(|(cert, key)| PairPaths { cert, key });
        if let Some(paths) = &listen
            && let Err(e) = tls::Acceptor::load(paths)
        {
            problems.push(format!("--tls-cert/--tls-key: {e}"));
        }
        let config = TlsConfig {
            listen,
            upstream: UpstreamTlsConfig {
                ca: args.upstream_ca.clone(),
                client_pair: args
                    .upstream_client_cert
                    .clone()
                    .zip(args.upstream_client_key.clone())
                    .map(|(cert, key)| PairPaths { cert, key }),
                server_name: args.upstream_server_name.clone(),
            },
        };
        if let Some(up) = upstream {
            config.check_upstream(up, &mut problems);
        }
        (config, problems)
    }

    /// `tls_cert=… tls_key=… upstream_ca=… …` for the start-up log line: paths only, never
    /// contents, so nothing secret is logged.
    pub fn log_summary(&self) -> String {
        let show =
            |p: Option<&std::path::Path>| p.map_or("-".to_owned(), |p| p.display().to_string());
        let pair = self.listen.as_ref();
        let client = self.upstream.client_pair.as_ref();
        format!(
            "tls_cert={} tls_key={} upstream_ca={} upstream_client_cert={} upstream_client_key={} upstream_server_name={}",
            show(pair.map(|p| p.cert.as_path())),
            show(pair.map(|p| p.key.as_path())),
            show(self.upstream.ca.as_deref()),
            show(client.map(|p| p.cert.as_path())),
            show(client.map(|p| p.key.as_path())),
            self.upstream.server_name.as_deref().unwrap_or("-"),
        )
    }

    /// A TLS upstream must be reachable with these settings; a plain one must not be given
    /// settings it would silently ignore.
    fn check_upstream(&self, up: &Upstream, problems: &mut Vec<String>) {
        if up.tls {
            if let Err(e) = tls::Connector::new(&self.upstream, &up.host) {
                problems.push(format!("TLS upstream {up}: {e}"));
            }
            return;
        }
        let given = [
            ("--upstream-ca", self.upstream.ca.is_some()),
            (
                "--upstream-client-cert",
                self.upstream.client_pair.is_some(),
            ),
            (
                "--upstream-server-name",
                self.upstream.server_name.is_some(),
            ),
        ];
        for (flag, _) in given.iter().filter(|(_, set)| *set) {
            problems.push(format!(
                "{flag} only applies to a TLS upstream; use wss:// or https:// in --upstream, or drop {flag}"
            ));
        }
    }
}
