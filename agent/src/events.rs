//! Decodes ring-buffer records into typed events. Parsing is by byte offsets
//! into the `#[repr(C)]` layouts of `llmsim-ebpf-common`, so it needs no `unsafe` and
//! rejects short or unknown records instead of misreading them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use llmsim_ebpf_common::{
    ConnectEvent, DataEvent, Direction, EventHeader, EventKind, FreeEvent, SNI_LEN, SniEvent,
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
    },
    /// A traced process freed an `SSL *`: its connection is over.
    Free {
        /// Who.
        tgid: u32,
        /// The connection.
        ssl: u64,
        /// Monotonic ns of the call.
        at_ns: u64,
    },
    /// A traced thread connected a socket.
    Connect {
        /// Who.
        tgid: u32,
        /// The socket.
        fd: i32,
        /// Where to.
        peer: SocketAddr,
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
            let direction_raw = u32_at(record, offset_of!(DataEvent, direction));
            let direction =
                Direction::from_u32(direction_raw).ok_or(DecodeError::UnknownDirection {
                    direction: direction_raw,
                })?;
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
        Some(EventKind::Exec) => Ok(Event::Exec { tgid }),
        Some(EventKind::Free) => {
            need(size_of::<FreeEvent>())?;
            Ok(Event::Free {
                tgid,
                ssl: u64_at(record, offset_of!(FreeEvent, ssl)),
                at_ns: u64_at(record, offset_of!(EventHeader, timestamp_ns)),
            })
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
        None => Err(DecodeError::UnknownKind { kind }),
    }
}
