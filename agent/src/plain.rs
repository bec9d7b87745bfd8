//! Which plain (not TLS) TCP destinations capture copies from the socket syscalls.
//! `--host HOST:PORT` selects the addresses HOST resolves to on PORT (`*:PORT`: every
//! address on PORT); `--any-host` selects every destination. A `--host` pattern
//! without a port selects none: it only widens which hosts are recorded. The kernel
//! side (`ebpf/src/probes/plain.rs`) marks the traced sockets connected to a selected
//! destination and copies their reads and writes.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};

use llmsim_ebpf_common::PlainDestination;
use thiserror::Error;

/// `AF_INET` and `AF_INET6`, as the kernel's `sockaddr` spells them.
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// A `--host HOST:PORT` that cannot be used.
#[derive(Debug, Error)]
pub enum PlainError {
    /// HOST did not resolve.
    #[error("--host {pattern}: cannot resolve {host}")]
    Resolve {
        /// The pattern as given.
        pattern: String,
        /// The host part.
        host: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// HOST is a glob other than `*`, which names no address.
    #[error("--host {pattern}: with a port, the host must be a name, an address or `*`")]
    GlobWithPort {
        /// The pattern as given.
        pattern: String,
    },
}

/// A `--host` pattern split into its host glob and, when it names one, its port:
/// `localhost:11434`, `[::1]:8080`, `*:11434`; `*.example.com` and `::1` have none.
pub fn split_port(pattern: &str) -> (&str, Option<u16>) {
    if let Some(rest) = pattern.strip_prefix('[')
        && let Some((host, port)) = rest.split_once("]:")
        && let Ok(port) = port.parse()
    {
        return (host, Some(port));
    }
    match pattern.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (pattern, None),
        },
        _ => (pattern, None),
    }
}

/// The kernel keys for `patterns` (their `HOST:PORT` ones) and `any`: every address
/// each host resolves to, IPv4 ones also in their IPv4-mapped IPv6 form (what a
/// dual-stack socket connects to).
pub fn destinations(patterns: &[String], any: bool) -> Result<Vec<PlainDestination>, PlainError> {
    if any {
        return Ok(vec![PlainDestination::default()]);
    }
    let mut keys = Vec::new();
    for pattern in patterns {
        let (host, Some(port)) = split_port(pattern) else {
            continue;
        };
        if host == "*" {
            keys.push(PlainDestination {
                addr: [0; 16],
                port,
                family: 0,
            });
            continue;
        }
        if host.contains(['*', '?', '[', '{']) {
            return Err(PlainError::GlobWithPort {
                pattern: pattern.clone(),
            });
        }
        let resolved = (host, port)
            .to_socket_addrs()
            .map_err(|source| PlainError::Resolve {
                pattern: pattern.clone(),
                host: host.to_owned(),
                source,
            })?;
        for addr in resolved {
            keys.extend(keys_of(addr));
        }
    }
    keys.sort_by_key(|k| (k.family, k.addr, k.port));
    keys.dedup();
    Ok(keys)
}

/// The keys under which a connect to `addr` is seen.
fn keys_of(addr: SocketAddr) -> Vec<PlainDestination> {
    let port = addr.port();
    match addr.ip() {
        IpAddr::V4(v4) => {
            let mut ip4 = [0; 16];
            ip4[..4].copy_from_slice(&v4.octets());
            vec![
                PlainDestination {
                    addr: ip4,
                    port,
                    family: AF_INET,
                },
                PlainDestination {
                    addr: v4.to_ipv6_mapped().octets(),
                    port,
                    family: AF_INET6,
                },
            ]
        }
        IpAddr::V6(v6) => vec![PlainDestination {
            addr: v6.octets(),
            port,
            family: AF_INET6,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_name_a_port_only_when_they_end_in_one() {
        assert_eq!(split_port("localhost:11434"), ("localhost", Some(11434)));
        assert_eq!(split_port("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_port("*:11434"), ("*", Some(11434)));
        assert_eq!(split_port("*.example.com"), ("*.example.com", None));
        assert_eq!(split_port("::1"), ("::1", None));
        assert_eq!(split_port("host:http"), ("host:http", None));
        assert_eq!(split_port(":80"), (":80", None));
    }

    #[test]
    fn destinations_are_every_address_of_the_host() {
        let keys = destinations(
            &["127.0.0.1:11434".into(), "*.openai.azure.com".into()],
            false,
        )
        .unwrap();
        let mut v4 = [0; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut mapped = [0; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            keys,
            [
                PlainDestination {
                    addr: v4,
                    port: 11434,
                    family: AF_INET
                },
                PlainDestination {
                    addr: mapped,
                    port: 11434,
                    family: AF_INET6
                },
            ]
        );
        let any_address = destinations(&["*:8080".into()], false).unwrap();
        assert_eq!((any_address[0].family, any_address[0].port), (0, 8080));
        assert_eq!(
            destinations(&[], true).unwrap(),
            [PlainDestination::default()]
        );
        assert!(matches!(
            destinations(&["local*:80".into()], false),
            Err(PlainError::GlobWithPort { .. })
        ));
        assert!(matches!(
            destinations(&["no-such-host.invalid:80".into()], false),
            Err(PlainError::Resolve { .. })
        ));
    }
}
