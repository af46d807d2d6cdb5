//! The TLS families: handshake failures per side, certificate reloads, and the expiry of the
//! certificate in use.
//!
//! Owns the label vocabularies ([`TlsFailure`], [`ReloadResult`]) and the handles. It records
//! labels only: deciding which label a rustls error deserves is `crate::tls`'s job.

use prometheus::{Gauge, IntCounter, Registry};

use super::counter_vec;
use crate::Side;

/// Why a TLS handshake failed, for `tls_handshake_errors_total{side,reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The peer did not finish the handshake within the time allowed.
    Timeout,
    /// The peer spoke something other than TLS (plain HTTP to the TLS port, for instance).
    NotTls,
    /// A certificate was refused: ours by the peer, or the peer's by us.
    Certificate,
    /// The peer spoke TLS but broke the protocol, or offered nothing we support.
    Protocol,
    /// The connection failed underneath TLS (reset, early EOF).
    Io,
}

impl TlsFailure {
    /// Every value, in label order.
    pub const ALL: [TlsFailure; 5] = [
        TlsFailure::Timeout,
        TlsFailure::NotTls,
        TlsFailure::Certificate,
        TlsFailure::Protocol,
        TlsFailure::Io,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::Timeout => "timeout",
            TlsFailure::NotTls => "not_tls",
            TlsFailure::Certificate => "certificate",
            TlsFailure::Protocol => "protocol",
            TlsFailure::Io => "io",
        }
    }
}

/// How an attempt to load a changed certificate pair ended, for `tls_reloads_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new pair is in use.
    Ok,
    /// The new pair was unreadable, malformed or mismatched; the old pair stays in use.
    Error,
}

impl ReloadResult {
    /// Every value, in label order.
    pub const ALL: [ReloadResult; 2] = [ReloadResult::Ok, ReloadResult::Error];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Error => "error",
        }
    }
}

/// Handles of the TLS families. Cloning is cheap (the handles are shared), so the certificate
/// reloader keeps a clone of its own.
#[derive(Clone)]
pub struct TlsMetrics {
    handshake_errors: Vec<IntCounter>,
    reloads: [IntCounter; 2],
    /// `notAfter` of the leaf certificate in use, as a Unix timestamp; 0 without TLS.
    pub cert_expiry: Gauge,
}

impl TlsMetrics {
    /// Registers the TLS families in `r`, every label combination at zero.
    ///
    /// # Errors
    /// A registration error, which only a duplicate name can cause.
    pub fn new(r: &Registry) -> Result<TlsMetrics, prometheus::Error> {
        let errors = counter_vec(
            r,
            "tls_handshake_errors_total",
            "Failed TLS handshakes, by the leg they were on and why.",
            &["side", "reason"],
        )?;
        let handshake_errors = Side::ALL
            .iter()
            .flat_map(|s| TlsFailure::ALL.iter().map(move |f| (s, f)))
            .map(|(s, f)| errors.with_label_values(&[s.as_str(), f.as_str()]))
            .collect();
        let reloads = counter_vec(
            r,
            "tls_reloads_total",
            "Attempts to load a changed certificate pair, by result.",
            &["result"],
        )?;
        let reloads = ReloadResult::ALL.map(|x| reloads.with_label_values(&[x.as_str()]));
        let cert_expiry = Gauge::new(
            "tls_cert_expiry_timestamp_seconds",
            "Expiry (notAfter) of the served certificate, as a Unix timestamp; 0 without TLS.",
        )?;
        r.register(Box::new(cert_expiry.clone()))?;
        Ok(TlsMetrics {
            handshake_errors,
            reloads,
            cert_expiry,
        })
    }

    /// Counts one failed TLS handshake.
    pub fn handshake_error(&self, side: Side, failure: TlsFailure) {
        self.handshake_errors[side.index() * TlsFailure::ALL.len() + failure as usize].inc();
    }

    /// Counts one reload attempt.
    pub fn reload(&self, result: ReloadResult) {
        self.reloads[result as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    fn scrape(r: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&r.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn each_count_lands_on_its_own_label_pair() {
        let r = Registry::new();
        let m = TlsMetrics::new(&r).unwrap();
        m.handshake_error(Side::Upstream, TlsFailure::Certificate);
        m.handshake_error(Side::Client, TlsFailure::NotTls);
        m.handshake_error(Side::Client, TlsFailure::NotTls);
        m.reload(ReloadResult::Error);
        let text = scrape(&r);
        for line in [
            r#"tls_handshake_errors_total{reason="certificate",side="upstream"} 1"#,
            r#"tls_handshake_errors_total{reason="not_tls",side="client"} 2"#,
            r#"tls_handshake_errors_total{reason="certificate",side="client"} 0"#,
            r#"tls_handshake_errors_total{reason="io",side="upstream"} 0"#,
            r#"tls_reloads_total{result="error"} 1"#,
            r#"tls_reloads_total{result="ok"} 0"#,
            "tls_cert_expiry_timestamp_seconds 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
