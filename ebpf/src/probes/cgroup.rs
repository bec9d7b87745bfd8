//! cgroup socket hooks that send a cgroup's connections to replayd (kernel >=
//! 5.7 for `bpf_link` attachment; 5.8 for `recvmsg`/`getpeername` rewrites).
//! `connect4/6` and `sendmsg4/6` rewrite destinations: TCP connects to recorded
//! hosts, and to recorded plain-HTTP destinations (loopback ones included, such as a
//! local model server's `127.0.0.1:11434` or `[::1]:11434`), go to replayd's listener, DNS (port 53, UDP and TCP) to its responder
//! (for an IPv6 nameserver, its `::1` responder when it has one).
//! `recvmsg4/6` and `getpeername4/6` put the original address back where the
//! app looks; `sock_ops` hands replayd each connection's original destination,
//! and moves it out of the map of open connections when the connection closes,
//! whether replayd read it or not.
//! Everything else passes untouched. Addresses and ports in `bpf_sock_addr`
//! are in network byte order.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE, bpf_sock_addr,
    },
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
};
use llmsim_ebpf_common::{
    OriginalDestination, PlainDestination, REDIRECT_FLAG_ALL_HOSTS, RedirectConfig,
};

use crate::maps::{
    ORIGINAL_BY_COOKIE, ORIGINAL_BY_PORT, ORIGINAL_OF_CLOSED, REDIRECT, REDIRECT_PLAIN, REDIRECT_V4,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// Port 53 as `bpf_sock_addr` holds it: network order in the low 16 bits.
const DNS_PORT: u32 = 53u16.to_be() as u32;
/// The first three words of an IPv4-mapped IPv6 address, `::ffff:0:0/96`.
const V4_MAPPED_PREFIX: [u32; 3] = [0, 0, 0xffffu32.to_be()];
/// cgroup hooks return 1 to let the syscall proceed.
const ALLOW: i32 = 1;

/// `connect(2)` on an IPv4 socket.
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    if let Some(config) = config() {
        // SAFETY: the context pointer the kernel passes, valid for this call.
        let sa = unsafe { &mut *ctx.sock_addr };
        redirect_v4(&ctx, sa, &config);
    }
    ALLOW
}

/// `sendto`/`sendmsg` with an address on an unconnected IPv4 socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    if let Some(config) = config() {
        // SAFETY: as above.
        let sa = unsafe { &mut *ctx.sock_addr };
        if sa.type_ == SOCK_DGRAM && sa.user_port == DNS_PORT {
            remember(&ctx, AF_INET, sa.user_port, [sa.user_ip4, 0, 0, 0]);
            sa.user_ip4 = config.dns_ip4;
            sa.user_port = config.dns_port;
        }
    }
    ALLOW
}

/// `recvmsg`/`recvfrom` on an IPv4 socket: a DNS answer from replayd appears
/// to come from the nameserver the app asked (c-ares checks this).
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    if let Some(config) = config() {
        // SAFETY: as above.
        let sa = unsafe { &mut *ctx.sock_addr };
        if sa.user_ip4 == config.dns_ip4
            && sa.user_port == config.dns_port
            && let Some(original) = original(&ctx)
            && original.family == AF_INET
        {
            sa.user_ip4 = original.addr[0];
            sa.user_port = original.port;
        }
    }
    ALLOW
}

/// `getpeername` on an IPv4 socket: a redirected connection shows its original peer.
#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    if config().is_some()
        && let Some(original) = original(&ctx)
        && original.family == AF_INET
    {
        // SAFETY: as above.
        let sa = unsafe { &mut *ctx.sock_addr };
        sa.user_ip4 = original.addr[0];
        sa.user_port = original.port;
    }
    ALLOW
}

/// `connect(2)` on an IPv6 socket. A dual-stack socket connecting to an
/// IPv4-mapped address lands here, not in `connect4`.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    if let Some(config) = config() {
        // SAFETY: as above.
        let sa = unsafe { &mut *ctx.sock_addr };
        redirect_v6(&ctx, sa, &config);
    }
    ALLOW
}

/// `sendto`/`sendmsg` with an address on an unconnected IPv6 socket.
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    if let Some(config) = config() {
        // SAFETY: as above.
        let sa = unsafe { &mut *ctx.sock_addr };
        if sa.type_ == SOCK_DGRAM && sa.user_port == DNS_PORT {
            let to = ip6(sa);
            remember(&ctx, AF_INET6, sa.user_port, to);
            redirect_dns_v6(sa, &config, to[..3] == V4_MAPPED_PREFIX);
        }
    }
    ALLOW
}

/// `recvmsg`/`recvfrom` on an IPv6 socket (also the reply to a `sendto` of a
/// mapped address, which ran `sendmsg4`): a DNS answer from either of replayd's
/// responders appears to come from the nameserver the app asked.
#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    if let Some(config) = config() {
        // SAFETY: as above.
        let sa = unsafe { &mut *ctx.sock_addr };
        let (from, port) = (ip6(sa), sa.user_port);
        let from_dns =
            (from[..3] == V4_MAPPED_PREFIX && from[3] == config.dns_ip4 && port == config.dns_port)
                || (config.dns6_port != 0 && from == config.dns_ip6 && port == config.dns6_port);
        if from_dns && let Some(original) = original(&ctx) {
            set_original_v6(sa, &original);
        }
    }
    ALLOW
}

/// `getpeername` on an IPv6 socket, including one that connected to an
/// IPv4-mapped address (which is what replayd's AAAA answers are).
#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    if config().is_some()
        && let Some(original) = original(&ctx)
    {
        // SAFETY: as above.
        let sa = unsafe { &mut *ctx.sock_addr };
        set_original_v6(sa, &original);
    }
    ALLOW
}

/// TCP state callbacks: when a redirected client connection is established its
/// local port is known, so its original destination is filed under that port,
/// where replayd finds it after `accept()`, and the connection's state changes
/// are asked for. When it reaches `TCP_CLOSE` (after both sides closed, or a
/// reset) its entries leave the maps of live sockets: one nobody asked for
/// (DNS over TCP, a refused connection) goes to the small LRU map of closed
/// connections instead of staying for ever.
#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB {
        return 0;
    }
    // SAFETY: a sock_ops context is a valid argument for the cookie helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        // SAFETY: the value is copied before use.
        if let Some(original) = unsafe { ORIGINAL_BY_COOKIE.get(&cookie) }.copied() {
            let port = ctx.local_port();
            let _ = ORIGINAL_BY_PORT.insert(&port, &original, 0);
            let _ = ORIGINAL_OF_CLOSED.remove(&port);
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG).cast_signed());
        }
    } else if ctx.arg(1) == BPF_TCP_CLOSE {
        let port = ctx.local_port();
        // SAFETY: the value is copied before the entry is removed.
        if let Some(original) = unsafe { ORIGINAL_BY_PORT.get(&port) }.copied() {
            let _ = ORIGINAL_OF_CLOSED.insert(&port, &original, 0);
            let _ = ORIGINAL_BY_PORT.remove(&port);
        }
        let _ = ORIGINAL_BY_COOKIE.remove(&cookie);
    }
    0
}

/// The configuration, unless replayd has not written it or the caller is
/// replayd itself (its upstream DNS forwarding must not loop back to it).
#[inline(always)]
fn config() -> Option<RedirectConfig> {
    let config = *REDIRECT.get(0)?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    (config.listener_port != 0 && tgid != config.exempt_tgid).then_some(config)
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: a sock_addr context is a valid argument for the cookie helper.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, family: u32, port: u32, addr: [u32; 4]) {
    let original = OriginalDestination { family, port, addr };
    let _ = ORIGINAL_BY_COOKIE.insert(&cookie(ctx), &original, 0);
}

#[inline(always)]
fn original(ctx: &SockAddrContext) -> Option<OriginalDestination> {
    // SAFETY: the value is copied before use.
    unsafe { ORIGINAL_BY_COOKIE.get(&cookie(ctx)) }.copied()
}

/// 127.0.0.0/8, network order.
#[inline(always)]
fn is_loopback_v4(ip: u32) -> bool {
    u32::from_be(ip) >> 24 == 127
}

#[inline(always)]
fn redirect_v4(ctx: &SockAddrContext, sa: &mut bpf_sock_addr, config: &RedirectConfig) {
    let (ip, port) = (sa.user_ip4, sa.user_port);
    let target = if port == DNS_PORT && (sa.type_ == SOCK_DGRAM || sa.type_ == SOCK_STREAM) {
        Some((config.dns_ip4, config.dns_port))
    } else if sa.type_ == SOCK_STREAM && (wanted_v4(ip, config) || wanted_plain_v4(ip, port)) {
        Some((config.listener_ip4, config.listener_port))
    } else {
        None
    };
    if let Some((new_ip, new_port)) = target {
        remember(ctx, AF_INET, port, [ip, 0, 0, 0]);
        sa.user_ip4 = new_ip;
        sa.user_port = new_port;
    }
}

#[inline(always)]
fn wanted_v4(ip: u32, config: &RedirectConfig) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { REDIRECT_V4.get(&ip) }.is_some()
        || (config.flags & REDIRECT_FLAG_ALL_HOSTS != 0 && !is_loopback_v4(ip))
}

/// Whether `ip`:`port` (network order) is a recorded plain-HTTP destination.
#[inline(always)]
fn wanted_plain_v4(ip: u32, port: u32) -> bool {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip.to_ne_bytes());
    wanted_plain(AF_INET, addr, port)
}

/// Whether the address `addr` of `family` on `port` (network order in the low 16
/// bits) is a recorded plain-HTTP destination.
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "address families and ports fit in 16 bits"
)]
fn wanted_plain(family: u32, addr: [u8; 16], port: u32) -> bool {
    let key = PlainDestination {
        addr,
        port: u16::from_be(port as u16),
        family: family as u16,
    };
    // SAFETY: the value is only tested for presence.
    unsafe { REDIRECT_PLAIN.get(&key) }.is_some()
}

#[inline(always)]
fn redirect_v6(ctx: &SockAddrContext, sa: &mut bpf_sock_addr, config: &RedirectConfig) {
    let (ip6, port) = (ip6(sa), sa.user_port);
    let mapped = ip6[..3] == V4_MAPPED_PREFIX;
    if port == DNS_PORT && (sa.type_ == SOCK_DGRAM || sa.type_ == SOCK_STREAM) {
        remember(ctx, AF_INET6, port, ip6);
        redirect_dns_v6(sa, config, mapped);
        return;
    }
    if mapped {
        let ip = ip6[3];
        if sa.type_ == SOCK_STREAM && (wanted_v4(ip, config) || wanted_plain_v4(ip, port)) {
            remember(ctx, AF_INET, port, [ip, 0, 0, 0]);
            set_v4_mapped(sa, config.listener_ip4, config.listener_port);
        }
        return;
    }
    let mut addr = [0u8; 16];
    for (i, word) in ip6.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    if sa.type_ == SOCK_STREAM && wanted_plain(AF_INET6, addr, port) {
        remember(ctx, AF_INET6, port, ip6);
        if config.listener6_port != 0 {
            set_ip6(sa, config.listener_ip6);
            sa.user_port = config.listener6_port;
        } else {
            set_v4_mapped(sa, config.listener_ip4, config.listener_port);
        }
        return;
    }
    let loopback = ip6 == [0, 0, 0, 1u32.to_be()];
    if sa.type_ == SOCK_STREAM
        && !loopback
        && config.flags & REDIRECT_FLAG_ALL_HOSTS != 0
        && config.listener6_port != 0
    {
        remember(ctx, AF_INET6, port, ip6);
        set_ip6(sa, config.listener_ip6);
        sa.user_port = config.listener6_port;
    }
}

/// Sends an IPv6 socket's DNS to replayd. A native IPv6 nameserver is replaced
/// by replayd's `::1` responder, which every IPv6 socket reaches (one with
/// `IPV6_V6ONLY` reaches no IPv4 address); an IPv4-mapped nameserver, or any
/// when replayd has no IPv6 responder, by the mapped form of the IPv4 one,
/// which a dual-stack socket reaches.
#[inline(always)]
fn redirect_dns_v6(sa: &mut bpf_sock_addr, config: &RedirectConfig, mapped: bool) {
    if mapped || config.dns6_port == 0 {
        set_v4_mapped(sa, config.dns_ip4, config.dns_port);
    } else {
        set_ip6(sa, config.dns_ip6);
        sa.user_port = config.dns6_port;
    }
}

/// Puts `original` back into an IPv6 address, IPv4-mapped when it was IPv4.
#[inline(always)]
fn set_original_v6(sa: &mut bpf_sock_addr, original: &OriginalDestination) {
    if original.family == AF_INET {
        set_v4_mapped(sa, original.addr[0], original.port);
    } else {
        set_ip6(sa, original.addr);
        sa.user_port = original.port;
    }
}

#[inline(always)]
fn set_v4_mapped(sa: &mut bpf_sock_addr, ip: u32, port: u32) {
    set_ip6(
        sa,
        [
            V4_MAPPED_PREFIX[0],
            V4_MAPPED_PREFIX[1],
            V4_MAPPED_PREFIX[2],
            ip,
        ],
    );
    sa.user_port = port;
}

/// Reads `user_ip6` one word at a time, for the reason given at [`set_ip6`].
#[inline(always)]
fn ip6(sa: &bpf_sock_addr) -> [u32; 4] {
    let base: *const bpf_sock_addr = sa;
    // SAFETY: `base` is the context pointer; each index is < 4.
    core::array::from_fn(|i| unsafe { (*core::hint::black_box(base)).user_ip6[i] })
}

/// Writes `user_ip6` one word at a time, each through an opaque copy of the
/// context pointer: the verifier only accepts context stores at a constant
/// offset from the context pointer itself, and an array copy would make LLVM
/// store through a derived `ctx + 8` pointer instead.
#[inline(always)]
fn set_ip6(sa: &mut bpf_sock_addr, words: [u32; 4]) {
    let base: *mut bpf_sock_addr = sa;
    for (i, word) in words.into_iter().enumerate() {
        let sa = core::hint::black_box(base);
        // SAFETY: `sa` is the context pointer; `i` < 4.
        unsafe { (*sa).user_ip6[i] = word };
    }
}
