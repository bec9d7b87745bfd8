//! Decodes ring-buffer records into typed events. Parsing is by byte offsets
//! into the `#[repr(C)]` layouts of `llmsim-ebpf-common`, so it needs no `unsafe` and
//! rejects short or unknown records instead of misreading them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use llmsim_ebpf_common::{
    AcceptEvent, ConnectEvent, DataEvent, Direction, DropReason, EventHeader, EventKind, ExecEvent,
    ForkEvent, FreeEvent, LossEvent, SNI_LEN, SkippedConn, SniEvent, TLS_HELLO_LEN, TlsHelloEvent,
};
use std::mem::{offset_of, size_of};
use thiserror::Error;

/// A record that cannot be decoded: a kernel/userspace build mismatch.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its kind's layout.
    #[error("ring-buffer record of kind {kind} is {len} bytes, shorter than its layout")]
    Short {
        /// The kind field.
        kind: u32,
        /// Bytes received.
        len: usize,
    },
    /// A kind this build does not know.
    #[error("unknown ring-buffer record kind {kind}")]
    UnknownKind {
        /// The kind field.
        kind: u32,
    },
    /// A direction value this build does not know.
    #[error("unknown data direction {direction}")]
    UnknownDirection {
        /// The direction field.
        direction: u32,
    },
    /// A drop reason this build does not know.
    #[error("unknown drop reason {reason}")]
    UnknownReason {
        /// The reason field.
        reason: u32,
    },
}

/// One decoded record.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A chunk of plaintext.
    Data(Data<'a>),
    /// A client set the SNI on an `SSL *`.
    Sni {
        /// Who.
        tgid: u32,
        /// The connection.
        ssl: u64,
        /// The host name.
        name: String,
    },
    /// A traced process called execve.
    Exec {
        /// Who.
        tgid: u32,
        /// Stopped before its new program runs, to be continued (`SIGCONT`).
        held: bool,
    },
    /// A traced process started a new process.
    Fork {
        /// The new process.
        tgid: u32,
        /// Stopped before its first instruction, to be continued (`SIGCONT`).
        held: bool,
    },
    /// A traced process freed an `SSL *`: its connection is over.
    Free {
        /// Who.
        tgid: u32,
        /// The connection.
        ssl: u64,
        /// Monotonic ns of the call.
        at_ns: u64,
        /// How each direction's sequence ended, writes first.
        ends: [SequenceEnd; 2],
        /// The connection's skipped-calls entry, if it had one.
        skipped: SkippedConn,
    },
    /// Some of one call's plaintext could not be delivered.
    Loss(Loss),
    /// A traced thread connected a socket.
    Connect {
        /// Who.
        tgid: u32,
        /// The socket.
        fd: i32,
        /// Where to.
        peer: SocketAddr,
    },
    /// A traced thread accepted a connection on an app port (`--app-port`).
    Accept {
        /// Who.
        tgid: u32,
        /// The accepted socket.
        fd: i32,
    },
    /// A socket a traced process connected began with a TLS handshake record.
    TlsHello {
        /// Who.
        tgid: u32,
        /// The socket.
        fd: i32,
        /// The start of its first write.
        bytes: &'a [u8],
    },
}

/// A chunk of one `SSL_*` call's plaintext.
#[derive(Debug, PartialEq, Eq)]
pub struct Data<'a> {
    /// Thread group id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// The connection.
    pub ssl: u64,
    /// Write or read.
    pub direction: Direction,
    /// Monotonic ns at call entry.
    pub start_ns: u64,
    /// Monotonic ns at call return.
    pub end_ns: u64,
    /// Bytes the whole call moved.
    pub call_len: u64,
    /// Offset of this chunk in the call.
    pub offset: u64,
    /// The socket fd, when a nested syscall revealed it.
    pub fd: Option<i32>,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// Where a chunk's call stands in its connection's direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// The call's sequence number; a number skipped is a call lost whole.
    pub seq: u64,
    /// [`DropReason`] bits of losses on this direction not reported otherwise.
    pub lost: u32,
}

/// How one direction of a freed connection ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SequenceEnd {
    /// The number the next call would have had: calls lost at the end show as a gap.
    pub next_seq: u64,
    /// [`DropReason`] bits of losses not reported otherwise.
    pub lost: u32,
    /// Bytes the kernel could not deliver in this direction.
    pub lost_bytes: u64,
}

/// Some of one call's plaintext could not be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loss {
    /// Thread group id.
    pub tgid: u32,
    /// The connection.
    pub ssl: u64,
    /// Write or read.
    pub direction: Direction,
    /// The call's sequence number.
    pub seq: u64,
    /// Bytes of the call delivered, from its start.
    pub delivered: u64,
    /// Bytes of the call lost.
    pub lost_bytes: u64,
    /// Why.
    pub reason: DropReason,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(v)
}

/// The [`Sequence`] of a data record (`None` for other records), read apart
/// from [`decode`] so that [`Data`] stays what one chunk of bytes is.
pub fn data_sequence(record: &[u8]) -> Option<Sequence> {
    if record.len() < offset_of!(DataEvent, data)
        || EventKind::from_u32(u32_at(record, offset_of!(EventHeader, kind)))
            != Some(EventKind::Data)
    {
        return None;
    }
    Some(Sequence {
        seq: u64_at(record, offset_of!(DataEvent, seq)),
        lost: u32_at(record, offset_of!(DataEvent, lost)),
    })
}

fn direction(raw: u32) -> Result<Direction, DecodeError> {
    Direction::from_u32(raw).ok_or(DecodeError::UnknownDirection { direction: raw })
}

/// Decodes one record.
pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    if record.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short {
            kind: 0,
            len: record.len(),
        });
    }
    let kind = u32_at(record, offset_of!(EventHeader, kind));
    let tgid = u32_at(record, offset_of!(EventHeader, tgid));
    let need = |size: usize| {
        if record.len() < size {
            Err(DecodeError::Short {
                kind,
                len: record.len(),
            })
        } else {
            Ok(())
        }
    };
    match EventKind::from_u32(kind) {
        Some(EventKind::Data) => {
            let data_at = offset_of!(DataEvent, data);
            need(data_at)?;
            let len = u32_at(record, offset_of!(DataEvent, len)) as usize;
            need(data_at + len)?;
            let direction = direction(u32_at(record, offset_of!(DataEvent, direction)))?;
            let fd = u32_at(record, offset_of!(DataEvent, fd)).cast_signed();
            Ok(Event::Data(Data {
                tgid,
                tid: u32_at(record, offset_of!(EventHeader, tid)),
                ssl: u64_at(record, offset_of!(DataEvent, ssl)),
                direction,
                start_ns: u64_at(record, offset_of!(DataEvent, start_ns)),
                end_ns: u64_at(record, offset_of!(EventHeader, timestamp_ns)),
                call_len: u64_at(record, offset_of!(DataEvent, call_len)),
                offset: u64_at(record, offset_of!(DataEvent, offset)),
                fd: (fd >= 0).then_some(fd),
                bytes: &record[data_at..data_at + len],
            }))
        }
        Some(EventKind::Sni) => {
            need(size_of::<SniEvent>())?;
            let at = offset_of!(SniEvent, name);
            let raw = &record[at..at + SNI_LEN];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(SNI_LEN);
            Ok(Event::Sni {
                tgid,
                ssl: u64_at(record, offset_of!(SniEvent, ssl)),
                name: String::from_utf8_lossy(&raw[..end]).into_owned(),
            })
        }
        Some(kind @ (EventKind::Exec | EventKind::Fork)) => {
            need(size_of::<ExecEvent>())?;
            Ok(decode_process(record, tgid, kind))
        }
        Some(EventKind::Free) => {
            need(size_of::<FreeEvent>())?;
            Ok(decode_free(record, tgid))
        }
        Some(EventKind::Loss) => {
            need(size_of::<LossEvent>())?;
            decode_loss(record, tgid)
        }
        Some(EventKind::Connect) => {
            need(size_of::<ConnectEvent>())?;
            let family = u16_at(record, offset_of!(ConnectEvent, family));
            let port = u16_at(record, offset_of!(ConnectEvent, port));
            let at = offset_of!(ConnectEvent, addr);
            let mut raw = [0u8; 16];
            raw.copy_from_slice(&record[at..at + 16]);
            let ip = if i32::from(family) == libc::AF_INET6 {
                IpAddr::V6(Ipv6Addr::from(raw))
            } else {
                IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
            };
            Ok(Event::Connect {
                tgid,
                fd: u32_at(record, offset_of!(ConnectEvent, fd)).cast_signed(),
                peer: SocketAddr::new(ip, port),
            })
        }
        Some(EventKind::Accept) => {
            need(size_of::<AcceptEvent>())?;
            Ok(Event::Accept {
                tgid,
                fd: u32_at(record, offset_of!(AcceptEvent, fd)).cast_signed(),
            })
        }
        Some(EventKind::TlsHello) => {
            need(size_of::<TlsHelloEvent>())?;
            let len = (u32_at(record, offset_of!(TlsHelloEvent, len)) as usize).min(TLS_HELLO_LEN);
            let at = offset_of!(TlsHelloEvent, data);
            Ok(Event::TlsHello {
                tgid,
                fd: u32_at(record, offset_of!(TlsHelloEvent, fd)).cast_signed(),
                bytes: &record[at..at + len],
            })
        }
        None => Err(DecodeError::UnknownKind { kind }),
    }
}

/// An [`ExecEvent`] or a [`ForkEvent`] (the same layout), whole.
fn decode_process(record: &[u8], tgid: u32, kind: EventKind) -> Event<'static> {
    const _: () = assert!(offset_of!(ExecEvent, held) == offset_of!(ForkEvent, held));
    const _: () = assert!(size_of::<ExecEvent>() == size_of::<ForkEvent>());
    let held = u32_at(record, offset_of!(ExecEvent, held)) != 0;
    if kind == EventKind::Fork {
        Event::Fork { tgid, held }
    } else {
        Event::Exec { tgid, held }
    }
}

/// A [`FreeEvent`] of at least its size.
fn decode_free(record: &[u8], tgid: u32) -> Event<'_> {
    let end = |i: usize| SequenceEnd {
        next_seq: u64_at(record, offset_of!(FreeEvent, next_seq) + 8 * i),
        lost: u32_at(record, offset_of!(FreeEvent, lost) + 4 * i),
        lost_bytes: u64_at(record, offset_of!(FreeEvent, lost_bytes) + 8 * i),
    };
    let skipped_at = offset_of!(FreeEvent, skipped);
    let skipped = |field: usize| u32_at(record, skipped_at + field);
    Event::Free {
        tgid,
        ssl: u64_at(record, offset_of!(FreeEvent, ssl)),
        at_ns: u64_at(record, offset_of!(EventHeader, timestamp_ns)),
        ends: [end(0), end(1)],
        skipped: SkippedConn {
            present: skipped(offset_of!(SkippedConn, present)),
            first: skipped(offset_of!(SkippedConn, first)),
            last: skipped(offset_of!(SkippedConn, last)),
            requests: skipped(offset_of!(SkippedConn, requests)),
        },
    }
}

/// A [`LossEvent`] of at least its size.
fn decode_loss(record: &[u8], tgid: u32) -> Result<Event<'_>, DecodeError> {
    let raw = u32_at(record, offset_of!(LossEvent, reason));
    let reason = DropReason::ALL
        .into_iter()
        .find(|r| *r as u32 == raw)
        .ok_or(DecodeError::UnknownReason { reason: raw })?;
    Ok(Event::Loss(Loss {
        tgid,
        ssl: u64_at(record, offset_of!(LossEvent, ssl)),
        direction: direction(u32_at(record, offset_of!(LossEvent, direction)))?,
        seq: u64_at(record, offset_of!(LossEvent, seq)),
        delivered: u64_at(record, offset_of!(LossEvent, delivered)),
        lost_bytes: u64_at(record, offset_of!(LossEvent, lost_bytes)),
        reason,
    }))
}
