//! The backend sessions are proxied to: the [`Upstream`] type, parsing `--upstream` URLs,
//! joining its base path with each client's request path, and showing it as a URL.
//!
//! This module owns the URL syntax and what wsbeat can honour in it (`ws`/`http`, and `wss`/`https`
//! for TLS; no user info, query or fragment). It does not resolve or dial the host: `handshake` does that, and the
//! parent module decides whether an upstream is required and whether it points back at wsbeat.

use std::fmt;
use std::net::SocketAddr;

use http::uri::{Authority, Uri};

/// Port assumed when a plain upstream URL names none (ws:// and http:// share it).
const DEFAULT_PLAIN_PORT: u16 = 80;
/// Port assumed when a TLS upstream URL names none (wss:// and https:// share it).
const DEFAULT_TLS_PORT: u16 = 443;

/// Where sessions are proxied to, parsed from `--upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP as written, without brackets for IPv6.
    pub host: String,
    /// TCP port; 80 (443 with TLS) when the URL names none.
    pub port: u16,
    /// Whether the upstream speaks TLS (`wss://` or `https://`).
    pub tls: bool,
    /// Host header value: `host[:port]`, the port omitted when it is the scheme's default.
    pub authority: Authority,
    /// `""` for the root, else `/base` without a trailing slash.
    pub base_path: String,
}

impl Upstream {
    /// Parses `ws://`, `http://`, `wss://` or `https://` followed by `host[:port][/base]`. The
    /// WebSocket and HTTP schemes mean the same here: the upstream gets whatever the client
    /// sent, upgrades and plain requests alike; the `s` means TLS.
    ///
    /// # Errors
    ///
    /// A message without the flag name when the URL has another scheme, user info, a query, a
    /// fragment, no host or port 0.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        if url.contains('#') {
            return Err("a fragment (#...) is not allowed".into());
        }
        let uri = Uri::try_from(url).map_err(|e| format!("not a valid URL: {e}"))?;
        let tls = is_tls_scheme(uri.scheme_str())?;
        if uri.query().is_some() {
            return Err(
                "a query (?...) is not allowed; each client's own query is forwarded".into(),
            );
        }
        let authority = uri.authority().ok_or("missing host")?;
        let host = parse_host(authority)?;
        let default_port = if tls {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_PLAIN_PORT
        };
        let port = parse_port(authority, default_port)?;
        let authority =
            host_authority(host, port, default_port).map_err(|e| format!("invalid host: {e}"))?;
        Ok(Upstream {
            host: host.to_owned(),
            port,
            tls,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The upstream `ws://addr` with no base path.
    pub fn from_addr(addr: SocketAddr) -> Upstream {
        let host = addr.ip().to_string();
        let authority = host_authority(&host, addr.port(), DEFAULT_PLAIN_PORT)
            .expect("an IP address and a port always form a valid authority");
        Upstream {
            host,
            port: addr.port(),
            tls: false,
            authority,
            base_path: String::new(),
        }
    }

    /// Joins the base path and the client's request path+query: base "/app" + "/chat?x=1" →
    /// "/app/chat?x=1"; base "" + "/" → "/".
    ///
    /// A request for the root maps to the base itself (base "/app" + "/?x=1" → "/app?x=1"), so
    /// `--upstream ws://legacy/socket` serves clients that connect to `ws://wsbeat/` without
    /// them knowing the upstream's path.
    pub fn request_path(&self, path_and_query: &str) -> String {
        let (path, query) = match path_and_query.find('?') {
            Some(at) => path_and_query.split_at(at),
            None => (path_and_query, ""),
        };
        let path = match (self.base_path.is_empty(), path) {
            (true, "") => "/",
            (false, "/") => "",
            _ => path,
        };
        let slash = if path.is_empty() || path.starts_with('/') {
            ""
        } else {
            "/"
        };
        format!("{}{slash}{path}{query}", self.base_path)
    }
}

/// Whether the scheme means TLS; refuses schemes other than the four wsbeat speaks.
fn is_tls_scheme(scheme: Option<&str>) -> Result<bool, String> {
    match scheme.map(str::to_ascii_lowercase).as_deref() {
        Some("ws" | "http") => Ok(false),
        Some("wss" | "https") => Ok(true),
        Some(other) => Err(format!(
            "unsupported scheme {other}://; use ws://, http://, wss:// or https://"
        )),
        None => Err("must start with ws://, http://, wss:// or https://".into()),
    }
}

/// The host of the URL's authority without IPv6 brackets; refuses user info and an empty host.
fn parse_host(authority: &Authority) -> Result<&str, String> {
    if authority.as_str().contains('@') {
        return Err("user info (user@host) is not allowed".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err("missing host".into());
    }
    Ok(host)
}

/// The port the URL names, `default` when it names none; refuses port 0.
fn parse_port(authority: &Authority, default: u16) -> Result<u16, String> {
    // `Authority::port_u16` would turn an out-of-range port into "no port", i.e. 80.
    let port = match authority.as_str()[authority.host().len()..].strip_prefix(':') {
        None => default,
        Some("") => return Err("empty port after ':'".into()),
        Some(port) => port.parse().map_err(|_| format!("invalid port {port:?}"))?,
    };
    if port == 0 {
        return Err("port 0 cannot be connected to".into());
    }
    Ok(port)
}

/// `host[:port]` as a Host header value, with brackets around IPv6 and the scheme's default
/// port left out.
fn host_authority(host: &str, port: u16, default: u16) -> Result<Authority, http::uri::InvalidUri> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port == default {
        Authority::try_from(host)
    } else {
        Authority::try_from(format!("{host}:{port}"))
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.base_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_parse() {
        let up = Upstream::parse("ws://legacy.internal:9000/app/").unwrap();
        assert_eq!((up.host.as_str(), up.port), ("legacy.internal", 9000));
        assert_eq!(
            (up.authority.as_str(), up.base_path.as_str()),
            ("legacy.internal:9000", "/app")
        );
        let up = Upstream::parse("http://legacy").unwrap();
        assert_eq!(
            (up.port, up.authority.as_str(), up.base_path.as_str()),
            (80, "legacy", "")
        );
        let up = Upstream::parse("WS://[::1]:80/").unwrap();
        assert_eq!((up.host.as_str(), up.authority.as_str()), ("::1", "[::1]"));
        assert_eq!(up.base_path, "");
        let up = Upstream::parse("ws://[::1]:9000/a/b").unwrap();
        assert_eq!(
            (up.authority.as_str(), up.base_path.as_str()),
            ("[::1]:9000", "/a/b")
        );
        assert_eq!(up.to_string(), "ws://[::1]:9000/a/b");
    }

    #[test]
    fn upstream_urls_reject_what_we_cannot_honour() {
        for (url, why) in [
            ("ftp://legacy", "unsupported scheme"),
            (
                "legacy:9000",
                "must start with ws://, http://, wss:// or https://",
            ),
            ("ws://user:pw@legacy:9000", "user info"),
            ("ws://legacy:9000/?a=1", "query"),
            ("ws://legacy:9000/#top", "fragment"),
            ("ws://", ""),
            ("ws://:9000", ""),
            ("ws://legacy:0", "port 0"),
            ("ws://legacy:/", "empty port"),
            ("ws://legacy:99999", "invalid port"),
            ("not a url", "not a valid URL"),
        ] {
            let err = Upstream::parse(url).expect_err(url);
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn tls_urls_default_to_port_443_and_leave_it_out_of_the_host_header() {
        let up = Upstream::parse("wss://legacy.internal/app").unwrap();
        assert!(up.tls);
        assert_eq!((up.port, up.authority.as_str()), (443, "legacy.internal"));
        let up = Upstream::parse("HTTPS://legacy:8443").unwrap();
        assert!(up.tls);
        assert_eq!((up.port, up.authority.as_str()), (8443, "legacy:8443"));
        assert_eq!(up.to_string(), "wss://legacy:8443");
        let up = Upstream::parse("wss://legacy:80").unwrap();
        assert_eq!(up.authority.as_str(), "legacy:80");
        assert!(!Upstream::parse("ws://legacy").unwrap().tls);
    }

    #[test]
    fn from_addr_builds_a_root_upstream() {
        let up = Upstream::from_addr("127.0.0.1:9000".parse().unwrap());
        assert_eq!(up, Upstream::parse("ws://127.0.0.1:9000").unwrap());
        let up = Upstream::from_addr("[::1]:80".parse().unwrap());
        assert_eq!((up.host.as_str(), up.authority.as_str()), ("::1", "[::1]"));
    }

    #[test]
    fn request_path_joins_base_and_client_path() {
        let root = Upstream::parse("ws://u").unwrap();
        let app = Upstream::parse("ws://u/app").unwrap();
        for (up, path, want) in [
            (&root, "/", "/"),
            (&root, "", "/"),
            (&root, "/chat?x=1", "/chat?x=1"),
            (&root, "?x=1", "/?x=1"),
            (&app, "/chat?x=1", "/app/chat?x=1"),
            (&app, "/chat/", "/app/chat/"),
            (&app, "/", "/app"),
            (&app, "/?x=1", "/app?x=1"),
            (&app, "", "/app"),
            (&app, "chat", "/app/chat"),
        ] {
            assert_eq!(up.request_path(path), want, "{:?} + {path:?}", up.base_path);
        }
    }
}
