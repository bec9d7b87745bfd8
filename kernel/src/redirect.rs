//! The replay redirect: attaches the cgroup socket hooks of the eBPF object to
//! one cgroup, so that the cgroup's TCP connects to recorded hosts and to recorded
//! plain-HTTP destinations (loopback ones included) reach replayd's listener and its DNS (to IPv4 and IPv6 nameservers) reaches
//! replayd's responder, and reports each redirected connection's original
//! destination; the kernel forgets it when the connection closes, whether it
//! was asked for or not. The hooks are `bpf_link` attachments owned by [`Redirect`]:
//! when it is dropped, or its process dies, the kernel removes them and the
//! cgroup's traffic flows normally again.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr, SockOps},
};
use llmsim_ebpf_common::{
    OriginalDestination, PlainDestination, REDIRECT_FLAG_ALL_HOSTS, RedirectConfig,
};
use thiserror::Error;

use crate::object::{Object, ObjectError, Purpose, map_error, program_error};

/// The cgroup socket-address programs in the object.
const SOCK_ADDR_PROGRAMS: [&str; 8] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
];

/// Failures attaching the redirect.
#[derive(Debug, Error)]
pub enum RedirectError {
    /// The object could not be loaded, or a program or map in it used.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The cgroup directory could not be opened.
    #[error("opening cgroup {} failed", path.display())]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where redirected traffic goes.
#[derive(Clone, Debug)]
pub struct RedirectSettings {
    /// replayd's IPv4 listener for HTTP and TLS.
    pub listener_v4: SocketAddrV4,
    /// replayd's IPv6 listener, for IPv6 destinations under `all_hosts`.
    pub listener_v6: Option<SocketAddrV6>,
    /// replayd's DNS responder (UDP and TCP).
    pub dns: SocketAddrV4,
    /// replayd's IPv6 DNS responder, for IPv6 nameservers; without it their
    /// queries go to the IPv4-mapped form of `dns`, which sockets with
    /// `IPV6_V6ONLY` cannot reach.
    pub dns_v6: Option<SocketAddrV6>,
    /// Destinations whose TCP connects are redirected: the addresses replayd's
    /// DNS answers for recorded hosts.
    pub hosts: Vec<Ipv4Addr>,
    /// Redirect every non-loopback TCP destination.
    pub all_hosts: bool,
}

/// The attached hooks. Dropping it detaches them.
pub struct Redirect {
    object: Object,
}

impl Redirect {
    /// Attaches the hooks to the cgroup v2 directory `cgroup` (the cgroup2
    /// mount itself for the whole host) and configures them.
    pub fn attach(cgroup: &Path, settings: &RedirectSettings) -> Result<Self, RedirectError> {
        let mut redirect = Self {
            object: Object::load(Purpose::Redirect)?,
        };
        redirect.configure(settings)?;
        // `bpf_link` attachments always coexist with other programs on the
        // cgroup; the kernel rejects any attach flag on them, so `Single`
        // (no flag) is the only mode that works here.
        let cgroup_fd = File::open(cgroup).map_err(|source| RedirectError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = redirect.object.program_mut(name)?;
            program.load().map_err(program_error(name))?;
            program
                .attach(&cgroup_fd, CgroupAttachMode::Single)
                .map_err(program_error(name))?;
        }
        let name = "sock_ops";
        let program: &mut SockOps = redirect.object.program_mut(name)?;
        program.load().map_err(program_error(name))?;
        program
            .attach(&cgroup_fd, CgroupAttachMode::Single)
            .map_err(program_error(name))?;
        Ok(redirect)
    }

    fn configure(&mut self, settings: &RedirectSettings) -> Result<(), ObjectError> {
        let mut hosts: HashMap<&mut MapData, u32, u8> = self.object.map_mut("REDIRECT_V4")?;
        for ip in &settings.hosts {
            hosts
                .insert(&u32::from_ne_bytes(ip.octets()), &1, 0)
                .map_err(map_error("REDIRECT_V4"))?;
        }
        let listener_v6 =
            settings
                .listener_v6
                .unwrap_or(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0));
        let dns_v6 = settings
            .dns_v6
            .unwrap_or(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0));
        let config = RedirectConfig {
            listener_ip4: u32::from_ne_bytes(settings.listener_v4.ip().octets()),
            listener_port: wire_port(settings.listener_v4.port()),
            listener_ip6: ip6_words(*listener_v6.ip()),
            listener6_port: wire_port(listener_v6.port()),
            dns_ip4: u32::from_ne_bytes(settings.dns.ip().octets()),
            dns_port: wire_port(settings.dns.port()),
            flags: if settings.all_hosts {
                REDIRECT_FLAG_ALL_HOSTS
            } else {
                0
            },
            exempt_tgid: std::process::id(),
            dns_ip6: ip6_words(*dns_v6.ip()),
            dns6_port: wire_port(dns_v6.port()),
        };
        let mut array: Array<&mut MapData, RedirectConfig> = self.object.map_mut("REDIRECT")?;
        array.set(0, &config, 0).map_err(map_error("REDIRECT"))
    }

    /// Also redirects the cgroup's TCP connects to each of `destinations` (recorded
    /// plain-HTTP servers, loopback ones included), whatever the DNS said. An IPv4
    /// destination also covers its IPv4-mapped IPv6 form.
    pub fn redirect_plain(&mut self, destinations: &[SocketAddr]) -> Result<(), ObjectError> {
        let mut map: HashMap<&mut MapData, PlainDestination, u8> =
            self.object.map_mut("REDIRECT_PLAIN")?;
        for destination in destinations {
            let mut addr = [0; 16];
            let family = match destination.ip() {
                IpAddr::V4(v4) => {
                    addr[..4].copy_from_slice(&v4.octets());
                    AF_INET
                }
                IpAddr::V6(v6) => {
                    addr = v6.octets();
                    AF_INET6
                }
            };
            let key = PlainDestination {
                addr,
                port: destination.port(),
                family,
            };
            map.insert(&key, &1, 0)
                .map_err(map_error("REDIRECT_PLAIN"))?;
        }
        Ok(())
    }

    /// The destination the app asked for, for a redirected connection accepted
    /// from `client` (a loopback address whose port identifies the connection),
    /// open or, among the last to close, closed. Each entry is handed out once.
    pub fn original_destination(&mut self, client: SocketAddr) -> Option<SocketAddr> {
        let key = u32::from(client.port());
        ["ORIGINAL_BY_PORT", "ORIGINAL_OF_CLOSED"]
            .into_iter()
            .find_map(|name| {
                let mut map: HashMap<&mut MapData, u32, OriginalDestination> =
                    self.object.map_mut(name).ok()?;
                let original = map.get(&key, 0).ok()?;
                let _ = map.remove(&key);
                Some(original)
            })
            .and_then(|original| decode(&original))
    }

    /// How many open connections' original destinations the kernel holds for
    /// replayd (those not asked for yet); closed ones go to a small LRU map.
    pub fn original_destinations_held(&mut self) -> Result<usize, ObjectError> {
        let map: HashMap<&mut MapData, u32, OriginalDestination> =
            self.object.map_mut("ORIGINAL_BY_PORT")?;
        map.keys()
            .try_fold(0, |held, key| key.map(|_| held + 1))
            .map_err(map_error("ORIGINAL_BY_PORT"))
    }
}

/// `AF_INET` and `AF_INET6`.
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// A port as `bpf_sock_addr` holds it: network order in the low 16 bits.
fn wire_port(port: u16) -> u32 {
    u32::from(u16::from_ne_bytes(port.to_be_bytes()))
}

fn ip6_words(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

fn decode(original: &OriginalDestination) -> Option<SocketAddr> {
    let port = u16::from_be_bytes(u16::try_from(original.port).ok()?.to_ne_bytes());
    let ip = match original.family {
        f if f == u32::from(AF_INET) => IpAddr::V4(Ipv4Addr::from(original.addr[0].to_ne_bytes())),
        f if f == u32::from(AF_INET6) => {
            let mut octets = [0u8; 16];
            for (i, word) in original.addr.iter().enumerate() {
                octets[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_destinations_decode_from_kernel_byte_order() {
        let v4 = OriginalDestination {
            family: 2,
            port: wire_port(443),
            addr: [u32::from_ne_bytes([127, 77, 0, 1]), 0, 0, 0],
        };
        assert_eq!(decode(&v4), Some("127.77.0.1:443".parse().unwrap()));
        let v6 = OriginalDestination {
            family: 10,
            port: wire_port(8443),
            addr: ip6_words("2001:db8::5".parse().unwrap()),
        };
        assert_eq!(decode(&v6), Some("[2001:db8::5]:8443".parse().unwrap()));
        assert_eq!(decode(&OriginalDestination::default()), None);
    }
}
