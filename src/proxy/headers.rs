//! Header rules shared by upgrades and plain HTTP: which headers are hop-by-hop, what `Host`
//! and the `X-Forwarded-*` family say, and where a request lands on the upstream.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::Proxy;
use super::context::ConnContext;

/// Headers in which a proxy tells the next hop about the original request; believed only
/// from `--trusted-proxies`.
const FORWARDING: [&str; 4] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Hop-by-hop headers of RFC 9110 7.6.1, plus the proxy-auth pair that only concerns one hop.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

impl Proxy {
    /// The request target on the upstream: base path joined with the client's path and query.
    pub(super) fn upstream_uri(&self, uri: &http::Uri) -> http::Uri {
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        self.config
            .upstream
            .url
            .request_path(pq)
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("/"))
    }

    /// End-to-end request headers plus `Host` and the `X-Forwarded-*` family.
    ///
    /// Forwarded headers are believed only from a peer in `--trusted-proxies` (a load
    /// balancer in front): its `X-Forwarded-*` and `Forwarded` are kept, and the peer is
    /// appended to `X-Forwarded-For`. From anyone else (the default), a client could claim any
    /// scheme, host or address, so `Forwarded` is dropped and the `X-Forwarded-*` are written
    /// afresh from what wsbeat saw: the pattern of nginx's `set_real_ip_from` and Envoy's
    /// trusted hops.
    pub(super) fn forwarded_headers(&self, incoming: &HeaderMap, ctx: &ConnContext) -> HeaderMap {
        let mut headers = end_to_end(incoming);
        let client_host = incoming.get(header::HOST).cloned();
        if (!self.config.upstream.preserve_host || client_host.is_none())
            && let Ok(v) = HeaderValue::from_str(self.config.upstream.url.authority.as_str())
        {
            headers.insert(header::HOST, v);
        }
        let trusted = self.trusts(ctx.peer().ip());
        if !trusted {
            for name in FORWARDING {
                headers.remove(name);
            }
        }
        let xff = match incoming_joined(incoming, "x-forwarded-for") {
            Some(prev) if trusted => format!("{prev}, {}", ctx.peer().ip()),
            _ => ctx.peer().ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        let proto = HeaderName::from_static("x-forwarded-proto");
        if !headers.contains_key(&proto) {
            headers.insert(proto, HeaderValue::from_static(ctx.scheme().as_str()));
        }
        let fwd_host = HeaderName::from_static("x-forwarded-host");
        if let (false, Some(host)) = (headers.contains_key(&fwd_host), client_host) {
            headers.insert(fwd_host, host);
        }
        headers
    }
}

/// The comma-separated tokens of every `name` header, trimmed.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether any `name` header lists `token` (case-insensitive).
pub(super) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// `headers` without hop-by-hop headers, including those that `Connection` names.
pub(super) fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = tokens(headers, &header::CONNECTION)
        .map(str::to_ascii_lowercase)
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        // `Connection` may not turn `Host` into a hop-by-hop header: the upstream would get
        // a request with no Host at all.
        if HOP_BY_HOP.contains(&n) || (n != "host" && named.iter().any(|t| t == n)) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// All values of a header joined with ", ", if present.
fn incoming_joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Config};
    use crate::metrics::Metrics;
    use crate::proxy::{Admission, Scheme};

    fn proxy(args: &[&str]) -> Proxy {
        let argv = ["wsbeat", "--upstream", "ws://127.0.0.1:9/app"];
        let cli = Cli::try_parse_from(argv.iter().chain(args)).unwrap();
        let config = Config::try_from(cli).unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        Proxy::new(
            config,
            metrics,
            Arc::default(),
            crate::shutdown::channel().1,
        )
    }

    /// `X-Forwarded-Proto` says the scheme of the connection the request came on, unless a
    /// trusted load balancer in front already said it.
    #[test]
    fn x_forwarded_proto_follows_the_connection_scheme() {
        let p = proxy(&[]);
        let peer = "192.0.2.7:5000".parse().unwrap();
        let mut incoming = HeaderMap::new();
        for (scheme, want) in [(Scheme::Http, "http"), (Scheme::Https, "https")] {
            let out = p.forwarded_headers(
                &incoming,
                &ConnContext::new(peer, scheme, Admission::Unlimited),
            );
            assert_eq!(out["x-forwarded-proto"], want);
            assert_eq!(out["x-forwarded-for"], "192.0.2.7");
        }
        incoming.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let ctx = ConnContext::new(peer, Scheme::Http, Admission::Unlimited);
        assert_eq!(
            p.forwarded_headers(&incoming, &ctx)["x-forwarded-proto"],
            "http"
        );
        let behind_lb = proxy(&["--trusted-proxies", "192.0.2.0/24"]);
        let out = behind_lb.forwarded_headers(&incoming, &ctx);
        assert_eq!(out["x-forwarded-proto"], "https");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.insert("x-custom", HeaderValue::from_static("yes"));
        let out = end_to_end(&h);
        assert_eq!(out.get_all(header::COOKIE).iter().count(), 2);
        assert!(out.contains_key("x-custom"));
        for gone in ["connection", "x-secret", "upgrade", "keep-alive"] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
    }

    #[test]
    fn host_is_never_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, Host"),
        );
        h.insert(header::HOST, HeaderValue::from_static("public.example"));
        assert_eq!(end_to_end(&h)[header::HOST], "public.example");
    }

    #[test]
    fn connection_tokens_are_matched_case_insensitively() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, UPGRADE"),
        );
        assert!(has_token(&h, &header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, &header::CONNECTION, "close"));
    }
}
