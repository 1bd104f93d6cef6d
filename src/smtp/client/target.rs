//! Where an upstream session goes and how: host, port, TLS mode, trust
//! roots, EHLO name and timeouts, plus the loopback rule of contract 5.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use crate::config::TlsMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect, per attempt of the resolved addresses together.
    pub connect: Duration,
    /// Each command's reply, the greeting and the TLS handshake.
    pub command: Duration,
    /// Sending the message and waiting for the reply to the final dot.
    pub data: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            // RFC 5321 suggests 5 minutes per command for MTAs; a relay with
            // workers waiting behind a stalled provider is better served by
            // giving up after one and retrying later.
            command: Duration::from_secs(60),
            // RFC 5321 section 4.5.3.2.6: wait 10 minutes after the dot. A
            // client that gives up sooner while the server is still
            // accepting the message causes duplicate deliveries.
            data: Duration::from_secs(600),
        }
    }
}

#[derive(Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub security: TlsMode,
    /// From [`crate::tls::client_config`]: the roots that verify the server.
    pub tls_config: Arc<rustls::ClientConfig>,
    /// The name this host gives in EHLO.
    pub ehlo_name: String,
    pub timeouts: Timeouts,
}

impl UpstreamTarget {
    /// `host:port`, as used in every error and log line.
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host without IPv6 brackets, as resolvers and TLS want it.
    pub(crate) fn bare_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }
}

impl fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("ehlo_name", &self.ehlo_name)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

pub use crate::config::is_loopback_host;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "localhost",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "128.0.0.1",
            "::2",
            "localhost.example.com",
            "smtp.office365.com",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
