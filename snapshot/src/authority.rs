//! The one parser of an authority (a `Host` header, an HTTP/2 `:authority`, a URL's
//! authority, a TLS server name) into host and port. Every place that needs the host
//! without its port, or the port a client named, goes through it: recording, provider
//! detection, matching and forwarding.

/// The host and port of an authority (a `Host` header, an `:authority`, a URL's authority):
/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address such as `::1`, which has
/// no port (its last group is not one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authority<'a> {
    /// The host as written: a name, an IPv4 address, or an IPv6 address without brackets.
    pub host: &'a str,
    /// The port, when one is given and fits in 16 bits.
    pub port: Option<u16>,
}

impl<'a> Authority<'a> {
    /// Splits `text` (surrounding whitespace ignored) into host and port. A suffix of digits
    /// after the last `:` of a name or IPv4 address is the port, and is dropped from the host
    /// even when it does not fit in 16 bits; anything else after a `:` is part of the host.
    pub fn parse(text: &'a str) -> Self {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return Self { host, port };
        }
        match text.rsplit_once(':') {
            Some((host, port))
                if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Self {
                    host,
                    port: port.parse().ok(),
                }
            }
            _ => Self {
                host: text,
                port: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        for (text, host, port) in [
            ("api.openai.com", "api.openai.com", None),
            ("api.openai.com:443", "api.openai.com", Some(443)),
            (" localhost:11434 ", "localhost", Some(11434)),
            ("127.0.0.1:8080", "127.0.0.1", Some(8080)),
            ("[::1]", "::1", None),
            ("[::1]:8080", "::1", Some(8080)),
            ("::1", "::1", None),
            ("fe80::1:2", "fe80::1:2", None),
            ("host:", "host", None),
            ("host:99999", "host", None),
            ("host:http", "host:http", None),
            ("", "", None),
        ] {
            assert_eq!(Authority::parse(text), Authority { host, port }, "{text:?}");
        }
    }
}
