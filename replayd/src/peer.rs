//! Which process is at the other end of a loopback TCP connection: the connection's
//! socket inode from `/proc/net/tcp` and `/proc/net/tcp6` (the client's local address is
//! the peer replayd sees), then the process among a given set of pids that holds a file
//! descriptor on that socket, with its command name. replayd asks while the client's
//! handshake is still under way, so the socket is still open, and only among the pids of
//! the redirected cgroup, so that the scan stays small.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use serde::Serialize;

/// A client process, as `/proc` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientProcess {
    /// Its pid.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub command: String,
}

/// The socket inode of the TCP socket whose local address is `local`, from the
/// `/proc/net/tcp`-format tables under `net_dir` (`tcp`, then `tcp6`). `None` when no open
/// socket has that address (a closed socket keeps its line with inode 0 for a while).
pub fn socket_inode(net_dir: &Path, local: SocketAddr) -> Option<u64> {
    let wanted = (local.ip().to_canonical(), local.port());
    ["tcp", "tcp6"].into_iter().find_map(|table| {
        let text = fs::read_to_string(net_dir.join(table)).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = parse_address(fields.get(1)?)?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            (address == wanted && inode != 0).then_some(inode)
        })
    })
}

/// Parses a `/proc/net/tcp` address, `0100007F:1F90` or its 32-digit IPv6 form: the
/// address as the kernel's 32-bit words in host order, the port in hex.
fn parse_address(field: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        ip.get(8 * i..8 * i + 8)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some((ip.to_canonical(), port))
}

/// The process among `pids` that holds socket `inode`, looked up under `proc_dir`
/// (`/proc`). Processes that end or cannot be read meanwhile are passed over.
pub fn process_holding(
    proc_dir: &Path,
    inode: u64,
    pids: impl IntoIterator<Item = u32>,
) -> Option<ClientProcess> {
    let target = format!("socket:[{inode}]");
    pids.into_iter().find_map(|pid| {
        let dir = proc_dir.join(pid.to_string());
        let holds = fs::read_dir(dir.join("fd")).ok()?.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
        });
        holds.then(|| ClientProcess {
            pid,
            command: fs::read_to_string(dir.join("comm"))
                .map(|comm| comm.trim_end().to_owned())
                .unwrap_or_default(),
        })
    })
}

/// The pids in the cgroup directory `cgroup` and every cgroup below it.
pub fn cgroup_pids(cgroup: &Path) -> io::Result<Vec<u32>> {
    let mut pids: Vec<u32> = fs::read_to_string(cgroup.join("cgroup.procs"))?
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    for entry in fs::read_dir(cgroup)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(cgroup_pids(&entry.path()).unwrap_or_default());
        }
    }
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_both_families() {
        assert_eq!(
            parse_address("0100007F:1F90"),
            Some(("127.0.0.1".parse().unwrap(), 8080))
        );
        // ::ffff:127.0.0.1 in a tcp6 line is the IPv4 client it stands for.
        assert_eq!(
            parse_address("0000000000000000FFFF00000100007F:01BB"),
            Some(("127.0.0.1".parse().unwrap(), 443))
        );
        assert_eq!(
            parse_address("00000000000000000000000001000000:0050"),
            Some(("::1".parse().unwrap(), 80))
        );
        assert_eq!(parse_address("0100007F"), None);
        assert_eq!(parse_address("01007F:0050"), None);
        assert_eq!(parse_address("ZZ00007F:0050"), None);
    }

    #[test]
    fn a_live_loopback_connection_is_found_in_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        let inode = socket_inode(Path::new("/proc/net"), local).expect("the client's socket");
        let me = std::process::id();
        let found = process_holding(Path::new("/proc"), inode, [me]).expect("this process");
        assert_eq!(found.pid, me);
        assert_ne!(found.command, "");
        assert_eq!(
            process_holding(Path::new("/proc"), inode, [1_u32 << 30]),
            None
        );
    }
}
