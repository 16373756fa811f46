//! Broker URLs: `mqtt://host[:port]` (plain, default port 1883) and `mqtts://host[:port]`
//! (TLS, default 8883), IPv6 addresses in brackets; no credentials, path or query. Shared by
//! the agent's MQTT mode (`--mqtt`) and the hub's fleet ingest (`--mqtt-fleet`). Pure.

/// A broker URL: `mqtt://host[:port]` (plain, default 1883) or `mqtts://host[:port]` (TLS,
/// default 8883). IPv6 addresses in brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address (no brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
}

/// Why a broker URL cannot be used; one line, starting with the URL as given (the caller puts
/// the flag or settings key in front).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `mqtt://` or `mqtts://`.
    #[error("{url:?}: expected mqtt://host[:port] or mqtts://host[:port]")]
    Scheme {
        /// The URL as given.
        url: String,
    },
    /// `user:password@` in the URL.
    #[error(
        "{url:?}: credentials in the URL are not accepted; use --mqtt-username and --mqtt-password-file"
    )]
    Credentials {
        /// The URL as given.
        url: String,
    },
    /// A path or query after the host.
    #[error("{url:?}: a broker URL has no path or query")]
    PathOrQuery {
        /// The URL as given.
        url: String,
    },
    /// `[` without `]`.
    #[error("{url:?}: unclosed [ in an IPv6 address")]
    UnclosedBracket {
        /// The URL as given.
        url: String,
    },
    /// Something after `[address]` other than `:port`.
    #[error("{url:?}: unexpected {after:?} after the address")]
    AfterAddress {
        /// The URL as given.
        url: String,
        /// What follows the `]`.
        after: String,
    },
    /// No host.
    #[error("{url:?}: no host")]
    NoHost {
        /// The URL as given.
        url: String,
    },
    /// The port is not 1 to 65535.
    #[error("{url:?}: {port:?} is not a port")]
    Port {
        /// The URL as given.
        url: String,
        /// The port text.
        port: String,
    },
}

impl BrokerUrl {
    /// Parses a broker URL.
    pub fn parse(url: &str) -> Result<BrokerUrl, UrlError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(UrlError::Scheme { url: url.to_owned() });
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(UrlError::Credentials { url: url.to_owned() });
        }
        if rest.contains('/') || rest.contains('?') {
            return Err(UrlError::PathOrQuery { url: url.to_owned() });
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::UnclosedBracket { url: url.to_owned() })?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => {
                    return Err(UrlError::AfterAddress {
                        url: url.to_owned(),
                        after: after.to_owned(),
                    })
                }
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost { url: url.to_owned() });
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| UrlError::Port {
                    url: url.to_owned(),
                    port: p.to_owned(),
                })?,
        };
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let ok = |u: &str, host: &str, port: u16, tls: bool| {
            assert_eq!(
                BrokerUrl::parse(u),
                Ok(BrokerUrl {
                    host: host.into(),
                    port,
                    tls
                }),
                "{u}"
            );
        };
        ok("mqtt://localhost", "localhost", 1883, false);
        ok("mqtts://broker.example:8884/", "broker.example", 8884, true);
        ok("mqtt://[::1]:1884", "::1", 1884, false);
        ok("mqtts://[fe80::1]", "fe80::1", 8883, true);
        for bad in [
            "tcp://h",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u:p@h",
            "mqtt://h/x",
            "mqtt://[::1",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            BrokerUrl::parse("mqtt://[::1]:1884").map(|u| u.to_string()),
            Ok("mqtt://[::1]:1884".into())
        );
    }
}
