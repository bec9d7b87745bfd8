//! Capture's coverage report: the TLS connections of the target processes whose
//! plaintext no probe delivered. The kernel sends the first bytes of every TCP
//! connection whose first write is a TLS handshake record (`EventKind::TlsHello`);
//! [`Coverage`] keeps each one (process, socket, peer, the `ClientHello`'s server
//! name) until plaintext of that process and socket arrives, and at the end lists
//! those that never produced any, each with a [`Reason`] decided from what the
//! process maps and its executable holds when the connection is seen (the
//! process may be gone by the end), and a hint on what the user can do.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use llmsim_snapshot::model::ProcessInfo;
use object::{Object as _, ObjectSymbol as _};
use serde::{Serialize, Serializer};

use crate::clienthello::{self, ClientHelloError};

/// Why a TLS connection was not decrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The JVM maps `libjvm.so`: its TLS is JSSE, Java code inside the JVM.
    Jvm,
    /// A Go executable whose `crypto/tls` is not probed.
    GoNotProbed,
    /// The executable links rustls and has no symbol table to find its functions by
    /// (stripped): found by rustls's own strings, its panic locations and error text.
    Rustls,
    /// The executable's symbol table names rustls, yet its connection produced no
    /// plaintext: the probed functions are missing (an optimised build inlined them),
    /// or the plaintext could not be attributed to the socket.
    RustlsNotProbed,
    /// An executable with `BoringSSL` linked in whose `SSL_read` and `SSL_write` it does not
    /// name (Bun): found by `BoringSSL`'s own strings; no probe is guessed.
    BoringSslWithoutSymbols,
    /// A static executable (it maps no shared TLS library) with no symbols to find its TLS by.
    StaticWithoutSymbols,
    /// Anything else: the process maps no TLS library the probes know.
    NoProbeableLibrary,
}

impl Reason {
    /// One line on what the user can do about it.
    pub const fn hint(self) -> &'static str {
        match self {
            Self::Jvm | Self::NoProbeableLibrary | Self::BoringSslWithoutSymbols => {
                "record it through replayd: `replayd --on-miss record -- CMD`"
            }
            Self::GoNotProbed => {
                "Go 1.17 to 1.22 on amd64 is probed; see the capture's warning on this executable, or record it through replayd: `replayd --on-miss record -- CMD`"
            }
            Self::Rustls => {
                "build the program with its symbols kept, or record it through replayd: `replayd --on-miss record -- CMD`"
            }
            Self::RustlsNotProbed => {
                "rustls is read at `Writer::write` and `Reader::read`: see the capture's warning on this executable (an optimised build may inline them) and the limits in docs/capture.md, or record it through replayd: `replayd --on-miss record -- CMD`"
            }
            Self::StaticWithoutSymbols => {
                "link the TLS library dynamically or keep its symbols, or record it through replayd: `replayd --on-miss record -- CMD`"
            }
        }
    }

    /// What the process is, from its memory mappings (`/proc/PID/maps`) and its
    /// executable's contents.
    pub fn classify(maps: &str, executable: Option<&[u8]>) -> Self {
        let mapped: Vec<&Path> = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .map(Path::new)
            .collect();
        let jvm = mapped.iter().any(|path| {
            path.file_name()
                .is_some_and(|name| name.as_encoded_bytes().starts_with(b"libjvm.so"))
        });
        if jvm {
            return Self::Jvm;
        }
        let object = executable.and_then(|bytes| object::File::parse(bytes).ok());
        if let Some(object) = &object {
            if object.section_by_name(".gopclntab").is_some() {
                return Self::GoNotProbed;
            }
            if object.symbols().any(|symbol| {
                symbol
                    .name_bytes()
                    .is_ok_and(|name| contains(name, b"rustls"))
            }) {
                return Self::RustlsNotProbed;
            }
        }
        let holds = |strings: &[&[u8]]| {
            executable.is_some_and(|bytes| strings.iter().any(|s| contains(bytes, s)))
        };
        let names_ssl_functions = object.as_ref().is_some_and(|object| {
            object
                .dynamic_symbols()
                .chain(object.symbols())
                .any(|symbol| {
                    symbol
                        .name_bytes()
                        .is_ok_and(|name| name == b"SSL_read" || name == b"SSL_write")
                })
        });
        if !names_ssl_functions && holds(&BORINGSSL_STRINGS) {
            return Self::BoringSslWithoutSymbols;
        }
        if holds(&RUSTLS_STRINGS) {
            return Self::Rustls;
        }
        if object
            .as_ref()
            .is_some_and(|object| object.section_by_name(".interp").is_none())
        {
            return Self::StaticWithoutSymbols;
        }
        Self::NoProbeableLibrary
    }
}

/// Strings every rustls build carries, symbols or not: the path of its sources in
/// panic locations (`.../rustls-0.23.46/src/...`), and the text of the error a
/// connection closed without `close_notify` reads as.
const RUSTLS_STRINGS: [&[u8]; 2] = [
    b"/rustls-0.",
    b"peer closed connection without sending TLS close_notify",
];

/// Strings a `BoringSSL` build carries, symbols or not: the path of its sources in
/// assertions, and its error string format (`BoringSSL` names every function
/// `OPENSSL_internal`).
const BORINGSSL_STRINGS: [&[u8]; 2] = [b"/boringssl/ssl/", b":OPENSSL_internal:"];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Jvm => "JVM (JSSE): TLS inside the JVM",
            Self::GoNotProbed => "Go crypto/tls that was not probed",
            Self::Rustls => "rustls",
            Self::RustlsNotProbed => "rustls with symbols, not decrypted",
            Self::BoringSslWithoutSymbols => {
                "BoringSSL linked in without symbols: SSL_read and SSL_write cannot be located"
            }
            Self::StaticWithoutSymbols => "static TLS without symbols",
            Self::NoProbeableLibrary => "no TLS library llmsim can probe",
        })
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One TLS connection no probe decrypted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotDecrypted {
    /// The process.
    pub pid: u32,
    /// Its command name.
    pub command: String,
    /// Its executable, when `/proc` named it.
    pub exe: Option<String>,
    /// The socket fd.
    pub fd: i32,
    /// Where it connected, when its connect was seen.
    pub peer: Option<SocketAddr>,
    /// The `ClientHello`'s server name, when its first bytes held one.
    pub sni: Option<String>,
    /// Why it was not decrypted.
    pub reason: Reason,
    /// What the user can do.
    pub hint: &'static str,
}

impl fmt::Display for NotDecrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} ({}, {}) to {} (SNI {}): {}",
            self.pid,
            self.command,
            self.exe.as_deref().unwrap_or("executable unknown"),
            self.peer
                .map_or_else(|| "an unknown peer".to_owned(), |peer| peer.to_string()),
            self.sni.as_deref().unwrap_or("none"),
            self.reason,
        )
    }
}

/// What `llmsim-agent coverage` reports on live processes: what was decrypted (the
/// probes placed, the HTTP exchanges read) and what was not, with why.
#[derive(Debug, Serialize)]
pub struct LiveReport<'a> {
    /// The processes watched.
    pub pids: &'a [u32],
    /// HTTP exchanges whose plaintext was read.
    pub exchanges_decrypted: u64,
    /// Where the probes went in each TLS object.
    pub probes: &'a [crate::probes::PlacedObject],
    /// TLS connections of which no plaintext was read.
    pub not_decrypted: &'a [NotDecrypted],
}

/// The TLS connections seen and whether each produced plaintext.
#[derive(Debug, Default)]
pub struct Coverage {
    /// Connections without plaintext so far, by (tgid, fd).
    open: HashMap<(u32, i32), NotDecrypted>,
    /// Connections that ended (their fd was reused) without plaintext.
    ended: Vec<NotDecrypted>,
    /// The reason of each process seen, with the executable it was decided for.
    reasons: HashMap<u32, (Option<PathBuf>, Reason)>,
}

impl Coverage {
    /// A traced process's socket `fd`, connected to `peer` when that is known, began with `first_bytes`,
    /// a TLS handshake record. Bytes that are no `ClientHello` (a UDP datagram that
    /// happens to start with `0x16`) are ignored.
    pub fn on_hello(
        &mut self,
        process: &ProcessInfo,
        fd: i32,
        peer: Option<SocketAddr>,
        first_bytes: &[u8],
    ) {
        let sni = match clienthello::server_name(first_bytes) {
            Ok(name) => name,
            Err(ClientHelloError::NotClientHello { .. }) => return,
            Err(_) => None,
        };
        let reason = self.reason_of(process);
        // An IPv4-mapped IPv6 peer (a dual-stack socket, as the JVM's) is shown as IPv4.
        let peer = peer.map(|peer| SocketAddr::new(peer.ip().to_canonical(), peer.port()));
        let connection = NotDecrypted {
            pid: process.pid,
            command: process.comm.clone(),
            exe: process.exe.clone(),
            fd,
            peer,
            sni,
            reason,
            hint: reason.hint(),
        };
        if let Some(old) = self.open.insert((process.pid, fd), connection) {
            self.ended.push(old);
        }
    }

    /// Plaintext of process `tgid` arrived on socket `fd`; with no fd (a TLS
    /// library writing to memory, not to the socket), every open connection of
    /// the process counts as decrypted.
    pub fn on_plaintext(&mut self, tgid: u32, fd: Option<i32>) {
        match fd {
            Some(fd) => {
                self.open.remove(&(tgid, fd));
            }
            None => self.open.retain(|&(pid, _), _| pid != tgid),
        }
    }

    /// The connections that never produced plaintext, by pid and fd.
    pub fn finish(&mut self) -> Vec<NotDecrypted> {
        let mut all: Vec<NotDecrypted> = std::mem::take(&mut self.ended);
        all.extend(self.open.drain().map(|(_, connection)| connection));
        all.sort_by_key(|connection| (connection.pid, connection.fd));
        all
    }

    /// The reason for `process`, decided once per executable it runs. A process that
    /// exited before its connection was looked at is judged by the executable it was
    /// first seen running, read by path.
    fn reason_of(&mut self, process: &ProcessInfo) -> Reason {
        let pid = process.pid;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .or_else(|| process.exe.as_ref().map(PathBuf::from));
        if let Some((seen, reason)) = self.reasons.get(&pid)
            && *seen == exe
        {
            return *reason;
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let executable = std::fs::read(format!("/proc/{pid}/exe"))
            .ok()
            .or_else(|| exe.as_ref().and_then(|path| std::fs::read(path).ok()));
        if executable.is_none() {
            tracing::debug!(pid, "coverage: the executable cannot be read");
        }
        let reason = Reason::classify(&maps, executable.as_deref());
        self.reasons.insert(pid, (exe, reason));
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JVM_MAPS: &str = "7f0000000000-7f0000100000 r-xp 00000000 08:01 1234 /usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so\n";

    #[test]
    fn a_jvm_is_named_by_libjvm() {
        assert_eq!(Reason::classify(JVM_MAPS, None), Reason::Jvm);
        assert_eq!(Reason::Jvm.to_string(), "JVM (JSSE): TLS inside the JVM");
        assert_eq!(
            Reason::Jvm.hint(),
            "record it through replayd: `replayd --on-miss record -- CMD`"
        );
    }

    #[test]
    fn this_test_binary_is_neither_jvm_nor_go() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let reason = Reason::classify(&maps, Some(&exe));
        assert!(
            matches!(
                reason,
                Reason::Rustls | Reason::RustlsNotProbed | Reason::NoProbeableLibrary
            ),
            "{reason:?}"
        );
    }

    #[test]
    fn stripped_rustls_and_boringssl_are_named_by_their_strings() {
        let rustls = b"\0/root/.cargo/registry/src/x/rustls-0.23.46/src/conn.rs\0";
        assert_eq!(Reason::classify("", Some(rustls)), Reason::Rustls);
        let boringssl = b"\0error:%08x:%s:OPENSSL_internal:%s\0";
        assert_eq!(
            Reason::classify("", Some(boringssl)),
            Reason::BoringSslWithoutSymbols
        );
        assert_eq!(
            Reason::classify("", Some(b"\0nothing known\0")),
            Reason::NoProbeableLibrary
        );
    }

    fn process(pid: u32) -> ProcessInfo {
        ProcessInfo {
            pid,
            comm: "java".to_owned(),
            exe: Some("/usr/bin/java".to_owned()),
        }
    }

    #[test]
    fn a_connection_with_plaintext_is_not_listed_and_one_without_is() {
        let hello = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/clienthello-python.bin"
        ))
        .unwrap();
        let peer = Some("127.0.0.1:443".parse().unwrap());
        let mut coverage = Coverage::default();
        let me = std::process::id();
        coverage.on_hello(&process(me), 5, peer, &hello);
        coverage.on_hello(
            &process(me),
            6,
            Some("[::ffff:127.0.0.1]:443".parse().unwrap()),
            &hello,
        );
        coverage.on_hello(&process(me), 7, peer, b"\x16\x00\x00 not TLS");
        coverage.on_plaintext(me, Some(5));
        let listed = coverage.finish();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].fd, 6);
        assert_eq!(listed[0].peer, peer);
        assert_eq!(
            listed[0].sni.as_deref(),
            clienthello::server_name(&hello).unwrap().as_deref()
        );
        assert_eq!(coverage.finish(), Vec::new());
    }
}
