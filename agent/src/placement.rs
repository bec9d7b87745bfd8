//! Where the capture probes go in one TLS object, decided by disassembling its
//! `SSL_*` functions when the object is first inspected. A uprobe costs one
//! trap when the kernel can emulate the instruction it replaces, and a second
//! one (a single-step out of line) when it cannot; on x86-64 (Linux 6.18,
//! `arch/x86/kernel/uprobes.c`) only nops, `push reg` (`50`-`57`, `41 50`-`57`),
//! `jmp`, `call rel32` and `jcc` are emulated. `endbr64` is not: a probe on a
//! CET build's first instruction would single-step, so the probe goes on the
//! instruction after it, which is still the function's entry for the
//! arguments and the return address.
//!
//! Three placements, best first:
//! - **worker**: OpenSSL's `SSL_read_ex` passes its arguments unchanged to one
//!   internal worker (`ssl_read_internal(s, buf, num, &readbytes)`), and
//!   `SSL_read` calls the same worker; likewise for writes. Probing the worker
//!   (entry and return) sees every call once, and its first instruction is
//!   usually a `push`.
//! - **wrapper**: the `call` to that worker inside each wrapper (emulated), and
//!   the instruction its call returns to, where the result is still in `rax`.
//! - **entry**: the four public functions' entries and returns, as when the
//!   worker is inlined (node's static OpenSSL).
//!
//! `SSL_ctrl` (the SNI) and `SSL_free` keep their entry probes in every placement.
//!
//! Go's `crypto/tls` has a placement of its own, **go** ([`choose_go`]): Go
//! moves goroutine stacks, so no return probe may be used, and each function's
//! entry probe goes on the `jbe` of its stack-bound check (`cmp 0x10(%r14),%rsp`),
//! which the kernel emulates. `(*Conn).Read`'s result is read on the one
//! `call runtime.memmove` in it (the inlined `copy(b, ...)` of
//! `bytes.(*Reader).Read`, an emulated `call`), and its `ret` instructions that
//! cannot follow that call (the exits that copied nothing) get probes that give
//! the call's sequence number back; they single-step, once per connection at
//! most. Without that call, every `ret` gets a probe that reads the result, and
//! every `Read` single-steps.
//!
//! rustls has one too, **rustls** ([`choose_rustls`]): the entry and return of
//! `Writer::write` and `Reader::read`, both needed (one without the other would
//! record requests without answers).

use std::{
    collections::{HashMap, HashSet},
    fmt,
};

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use serde::Serialize;
use thiserror::Error;

use crate::{gotls, rustls};

/// Environment variable that forces a placement (`worker`, `wrapper` or
/// `entry`) where the object allows it; for tests and measurements.
pub const FORCE_ENV: &str = "LLMSIM_PROBE_PLACEMENT";

/// Most bytes of a function decoded when looking for its calls.
const MAX_FUNCTION_BYTES: u64 = 4096;
/// Most bytes of a Go function decoded whole for its `ret` instructions.
const MAX_GO_FUNCTION_BYTES: u64 = 64 * 1024;

/// Failures choosing a placement, each one a reason a placement does not fit
/// an object; the capture falls back to the next placement.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// `LLMSIM_PROBE_PLACEMENT` names no placement.
    #[error("{FORCE_ENV}={value} names no probe placement (worker, wrapper or entry)")]
    UnknownPlacement {
        /// The value given.
        value: String,
    },
    /// The object is not x86-64 code, whose instructions this module knows.
    #[error("not x86-64 code")]
    NotX86_64,
    /// A function the placement needs is not defined in the object.
    #[error("`{function}` is not defined")]
    Missing {
        /// The function.
        function: &'static str,
    },
    /// A function's code could not be read or decoded.
    #[error("the code of `{function}` cannot be decoded")]
    Undecodable {
        /// The function.
        function: &'static str,
    },
    /// The `_ex` wrapper does something to its arguments before its first
    /// call, so that call's target is not known to take them.
    #[error("`{function}` does not pass its arguments straight to a worker")]
    NoWorker {
        /// The wrapper.
        function: &'static str,
    },
    /// The plain wrapper does not call the `_ex` wrapper's worker.
    #[error("`{function}` does not call the worker at {worker:#x}")]
    OtherWorker {
        /// The wrapper.
        function: &'static str,
        /// The worker's address.
        worker: u64,
    },
    /// The placement fits, but one of its probes would single-step.
    #[error("its probes would single-step")]
    SingleStep,
    /// The wrapper jumps to its worker instead of calling it: there is no
    /// instruction to return to.
    #[error("`{function}` tail-calls its worker")]
    TailCall {
        /// The wrapper.
        function: &'static str,
    },
    /// The go or rustls placement was asked for an OpenSSL object.
    #[error("the {} placement is not for OpenSSL objects", kind.name())]
    NotOpenSsl {
        /// The placement asked for.
        kind: PlacementKind,
    },
    /// A Go function does not open with the stack-bound check whose `jbe`
    /// its entry probe needs (without it, a call that grows the stack would
    /// be seen twice).
    #[error("`{function}` does not start with Go's stack check (`cmp 0x10(%r14)`, `jbe`)")]
    NoStackCheck {
        /// The function.
        function: &'static str,
    },
    /// A Go function is larger than what is decoded to find its returns.
    #[error(
        "`{function}` is {size} bytes, more than the {MAX_GO_FUNCTION_BYTES} decoded for its returns"
    )]
    TooLarge {
        /// The function.
        function: &'static str,
        /// Its size.
        size: u64,
    },
    /// A Go function has no `ret` instruction to read its result at.
    #[error("`{function}` has no `ret` instruction")]
    NoReturn {
        /// The function.
        function: &'static str,
    },
    /// `(*Conn).Read` does not call `runtime.memmove` exactly once, so no one
    /// call is known to copy its result.
    #[error("`{function}` calls `{}` {calls} times, not once", gotls::MEMMOVE)]
    NoSingleCopy {
        /// The function.
        function: &'static str,
        /// How many direct calls to `runtime.memmove` it makes.
        calls: usize,
    },
    /// The copying call can run more than once in one call of the function.
    #[error("`{function}` can reach its copy again after it")]
    CopyInLoop {
        /// The function.
        function: &'static str,
    },
    /// A jump whose target is not in the instruction follows the copy, so the
    /// `ret` instructions that follow it are not known.
    #[error("`{function}` has an indirect jump at {at:#x}")]
    IndirectJump {
        /// The function.
        function: &'static str,
        /// The jump's address.
        at: u64,
    },
}

/// The three ways of probing the data functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementKind {
    /// Entry and return of the internal worker the wrappers call.
    Worker,
    /// The `call` to the worker inside each wrapper, and where it returns to.
    Wrapper,
    /// Entry and return of the public functions.
    Entry,
    /// Go's `crypto/tls`: entries at the stack check, `ret` instructions.
    Go,
    /// rustls: entries and returns of `Writer::write` and `Reader::read`.
    Rustls,
}

impl PlacementKind {
    /// Every placement of an OpenSSL object, best first.
    pub const ALL: [Self; 3] = [Self::Worker, Self::Wrapper, Self::Entry];

    /// The name used in the summary and in [`FORCE_ENV`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Wrapper => "wrapper",
            Self::Entry => "entry",
            Self::Go => "go",
            Self::Rustls => "rustls",
        }
    }

    /// The placement [`FORCE_ENV`] asks for, if it is set and not empty.
    pub fn forced() -> Result<Option<Self>, PlacementError> {
        let value = std::env::var_os(FORCE_ENV).unwrap_or_default();
        let value = value.to_string_lossy();
        if value.is_empty() {
            return Ok(None);
        }
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == value)
            .map(Some)
            .ok_or_else(|| PlacementError::UnknownPlacement {
                value: value.into_owned(),
            })
    }
}

/// What one probe does; the kernel program attached there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeRole {
    /// Entry of a call taking `(SSL *, const void *buf, int num)` that writes.
    WriteEntry,
    /// Entry of a call taking `(SSL *, void *buf, int num)` that reads.
    ReadEntry,
    /// Entry of a write taking `(SSL *, buf, size_t num, size_t *written)`.
    WriteCountedEntry,
    /// Entry of a read taking `(SSL *, buf, size_t num, size_t *readbytes)`.
    ReadCountedEntry,
    /// Return of any of the above (a uretprobe at the same entry).
    Return,
    /// The instruction a call to the worker returns to (a uprobe reading `rax`).
    CallReturn,
    /// `SSL_ctrl` entry.
    Ctrl,
    /// `SSL_free` entry.
    Free,
    /// Go's `(*Conn).Write`, at its stack check's `jbe`.
    GoWrite,
    /// Go's `(*Conn).Read`, at its stack check's `jbe`.
    GoRead,
    /// A `ret` instruction of Go's `(*Conn).Read`.
    GoReadReturn,
    /// The `call runtime.memmove` in Go's `(*Conn).Read` that copies its result.
    GoReadCopy,
    /// Go's `(*Conn).Close`, at its stack check's `jbe`.
    GoClose,
    /// Entry of rustls's `Writer::write`.
    RustlsWrite,
    /// Entry of rustls's `Reader::read`.
    RustlsRead,
    /// Return of either (a uretprobe at the same entry).
    RustlsReturn,
}

impl ProbeRole {
    /// The kernel program for this role.
    pub const fn program(self) -> &'static str {
        match self {
            Self::WriteEntry => "ssl_write",
            Self::ReadEntry => "ssl_read",
            Self::WriteCountedEntry => "ssl_write_ex",
            Self::ReadCountedEntry => "ssl_read_ex",
            Self::Return => "ssl_return",
            Self::CallReturn => "ssl_call_return",
            Self::Ctrl => "ssl_ctrl",
            Self::Free => "ssl_free",
            Self::GoWrite => "go_tls_write",
            Self::GoRead => "go_tls_read",
            Self::GoReadReturn => "go_tls_read_return",
            Self::GoReadCopy => "go_tls_read_copy",
            Self::GoClose => "go_tls_close",
            Self::RustlsWrite => "rustls_write",
            Self::RustlsRead => "rustls_read",
            Self::RustlsReturn => "rustls_return",
        }
    }

    /// The multi-uprobe twin of [`ProbeRole::program`] (kernel >= 6.6).
    pub const fn multi_program(self) -> &'static str {
        match self {
            Self::WriteEntry => "ssl_write_multi",
            Self::ReadEntry => "ssl_read_multi",
            Self::WriteCountedEntry => "ssl_write_ex_multi",
            Self::ReadCountedEntry => "ssl_read_ex_multi",
            Self::Return => "ssl_return_multi",
            Self::CallReturn => "ssl_call_return_multi",
            Self::Ctrl => "ssl_ctrl_multi",
            Self::Free => "ssl_free_multi",
            Self::GoWrite => "go_tls_write_multi",
            Self::GoRead => "go_tls_read_multi",
            Self::GoReadReturn => "go_tls_read_return_multi",
            Self::GoReadCopy => "go_tls_read_copy_multi",
            Self::GoClose => "go_tls_close_multi",
            Self::RustlsWrite => "rustls_write_multi",
            Self::RustlsRead => "rustls_read_multi",
            Self::RustlsReturn => "rustls_return_multi",
        }
    }

    /// Every role.
    pub const ALL: [Self; 16] = [
        Self::WriteEntry,
        Self::WriteCountedEntry,
        Self::ReadEntry,
        Self::ReadCountedEntry,
        Self::Ctrl,
        Self::Free,
        Self::Return,
        Self::CallReturn,
        Self::GoWrite,
        Self::GoRead,
        Self::GoReadReturn,
        Self::GoReadCopy,
        Self::GoClose,
        Self::RustlsWrite,
        Self::RustlsRead,
        Self::RustlsReturn,
    ];
}

/// One probe: where, what it runs, and which function it serves (for errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    /// The function whose call this probe sees.
    pub function: &'static str,
    /// What the probe does.
    pub role: ProbeRole,
    /// The file offset it is attached at.
    pub offset: u64,
}

/// What the probed instructions cost per hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cost {
    /// Every data probe replaces an instruction the kernel emulates; the
    /// instructions' mnemonics, each once.
    Emulated(Vec<&'static str>),
    /// At least one data probe single-steps its instruction out of line.
    SingleStep,
    /// Not analysed (not x86-64 code).
    Unknown,
}

/// The probes chosen for one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Which placement.
    pub kind: PlacementKind,
    /// What its data probes cost.
    pub cost: Cost,
    /// Every probe, return probes first, reads before writes, so a call
    /// entered while they are attached is either fully seen or not at all,
    /// and a connection caught mid-attach never sees an answer without its question.
    pub points: Vec<ProbePoint>,
    /// Why the better placements did not fit, when this one single-steps.
    pub refusals: Vec<(PlacementKind, PlacementError)>,
    /// The placement asked for through [`FORCE_ENV`] that did not fit, and why.
    pub unforced: Option<(PlacementKind, PlacementError)>,
}

impl fmt::Display for Placement {
    /// `worker probes (emulated push)`, `entry probes (single-step, slower)`,
    /// `go probes (entries on emulated jcc + 8 ret probes, single-step)`, `go
    /// probes (entries on emulated jcc + reads on emulated call + 4 error-exit
    /// ret probes, single-step)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} probes", self.kind.name())?;
        if self.kind == PlacementKind::Go {
            let count = |role| self.points.iter().filter(|p| p.role == role).count();
            let returns = count(ProbeRole::GoReadReturn);
            return if count(ProbeRole::GoReadCopy) == 0 {
                write!(
                    f,
                    " (entries on emulated jcc + {returns} ret probes, single-step)"
                )
            } else {
                write!(
                    f,
                    " (entries on emulated jcc + reads on emulated call + {returns} error-exit \
                     ret probes, single-step)"
                )
            };
        }
        match &self.cost {
            Cost::Emulated(mnemonics) => write!(f, " (emulated {})", mnemonics.join(", ")),
            Cost::SingleStep => write!(f, " (single-step, slower)"),
            Cost::Unknown => Ok(()),
        }
    }
}

/// Where the object defines each function: virtual address and size.
#[derive(Clone, Copy, Debug, Default)]
pub struct Definitions {
    /// `SSL_write`.
    pub write: Option<(u64, u64)>,
    /// `SSL_write_ex`.
    pub write_ex: Option<(u64, u64)>,
    /// `SSL_read`.
    pub read: Option<(u64, u64)>,
    /// `SSL_read_ex`.
    pub read_ex: Option<(u64, u64)>,
    /// `SSL_ctrl`.
    pub ctrl: Option<(u64, u64)>,
    /// `SSL_free`.
    pub free: Option<(u64, u64)>,
}

/// What placement needs to know about an object: its code and layout.
pub trait Code {
    /// Whether the object is x86-64 code.
    fn is_x86_64(&self) -> bool;
    /// Up to `len` bytes of code at virtual address `address`, as the file
    /// holds them; None when the address is not in the file.
    fn bytes(&self, address: u64, len: u64) -> Option<Vec<u8>>;
    /// The file offset of a virtual address.
    fn file_offset(&self, address: u64) -> Option<u64>;
}

/// One direction's functions.
struct Pair {
    plain: &'static str,
    counted: &'static str,
    plain_at: Option<(u64, u64)>,
    counted_at: Option<(u64, u64)>,
    plain_role: ProbeRole,
    counted_role: ProbeRole,
}

impl Pair {
    fn of(definitions: &Definitions) -> [Self; 2] {
        [
            Self {
                plain: "SSL_read",
                counted: "SSL_read_ex",
                plain_at: definitions.read,
                counted_at: definitions.read_ex,
                plain_role: ProbeRole::ReadEntry,
                counted_role: ProbeRole::ReadCountedEntry,
            },
            Self {
                plain: "SSL_write",
                counted: "SSL_write_ex",
                plain_at: definitions.write,
                counted_at: definitions.write_ex,
                plain_role: ProbeRole::WriteEntry,
                counted_role: ProbeRole::WriteCountedEntry,
            },
        ]
    }
}

/// The data probes of one candidate placement: (return probes, entry probes)
/// and the instructions they replace.
#[derive(Default)]
struct Candidate {
    returns: Vec<ProbePoint>,
    entries: Vec<ProbePoint>,
    replaced: Vec<Instruction>,
    /// Some probe replaces an instruction that was not decoded.
    undecoded: bool,
}

impl Candidate {
    /// Adds an entry probe at `point` and its return probe; `instruction` is the one the
    /// entry probe replaces, when it was decoded.
    fn add_entry(&mut self, point: ProbePoint, instruction: Option<Instruction>) {
        let role = if matches!(point.role, ProbeRole::RustlsWrite | ProbeRole::RustlsRead) {
            ProbeRole::RustlsReturn
        } else {
            ProbeRole::Return
        };
        self.undecoded |= instruction.is_none();
        self.replaced.extend(instruction);
        self.returns.push(ProbePoint {
            role,
            ..point.clone()
        });
        self.entries.push(point);
    }

    /// What the data probes cost per hit.
    fn cost(&self, code: &dyn Code) -> Cost {
        if !code.is_x86_64() {
            Cost::Unknown
        } else if all_emulated(self) {
            let mut mnemonics: Vec<&'static str> = Vec::new();
            for instruction in &self.replaced {
                let name = mnemonic_name(instruction);
                if !mnemonics.contains(&name) {
                    mnemonics.push(name);
                }
            }
            Cost::Emulated(mnemonics)
        } else {
            Cost::SingleStep
        }
    }
}

/// Chooses the placement for an object: the one [`FORCE_ENV`] names if it
/// fits, else the best one whose probes are all emulated, else the entry
/// probes (which need nothing but the symbols).
pub fn choose(
    code: &dyn Code,
    definitions: &Definitions,
    forced: Option<PlacementKind>,
) -> Placement {
    let mut refusals = Vec::new();
    let mut unforced = None;
    let mut chosen: Option<(PlacementKind, Candidate)> = None;
    if let Some(kind) = forced {
        match candidate(code, definitions, kind) {
            Ok(found) => chosen = Some((kind, found)),
            Err(error) => unforced = Some((kind, error)),
        }
    }
    if chosen.is_none() {
        for kind in PlacementKind::ALL {
            match candidate(code, definitions, kind) {
                Ok(found) if kind == PlacementKind::Entry || all_emulated(&found) => {
                    chosen = Some((kind, found));
                    break;
                }
                Ok(_) => refusals.push((kind, PlacementError::SingleStep)),
                Err(error) => refusals.push((kind, error)),
            }
        }
    }
    // The entry placement always fits: `chosen` is set.
    let (kind, found) =
        chosen.unwrap_or_else(|| (PlacementKind::Entry, entry_candidate(code, definitions)));
    let cost = found.cost(code);
    if cost != Cost::SingleStep {
        refusals.clear();
    }
    refusals.retain(|(refused, _)| *refused != kind);
    let mut points = found.returns;
    points.extend(found.entries);
    for (function, role, at) in [
        ("SSL_ctrl", ProbeRole::Ctrl, definitions.ctrl),
        ("SSL_free", ProbeRole::Free, definitions.free),
    ] {
        if let Some(point) = at.and_then(|at| entry_point(code, function, role, at).map(|(p, _)| p))
        {
            points.push(point);
        }
    }
    Placement {
        kind,
        cost,
        points,
        refusals,
        unforced,
    }
}

/// The placement for a Go binary's `crypto/tls`: an entry probe on the
/// stack check's `jbe` of `(*Conn).Read`, `(*Conn).Write` and, when it has
/// one, `(*Conn).Close`; `(*Conn).Read`'s result read on its copy (see
/// [`go_copy`]) with probes on the `ret` instructions that do not follow it,
/// or, when it has no such copy, a probe on every `ret` (refusal given). An
/// error when a data function is missing or laid out otherwise: such a binary
/// gets no probes rather than probes that could see a call twice or miss its
/// result.
pub fn choose_go(
    code: &dyn Code,
    functions: &gotls::Functions,
) -> Result<Placement, PlacementError> {
    if !code.is_x86_64() {
        return Err(PlacementError::NotX86_64);
    }
    let read = functions.read.ok_or(PlacementError::Missing {
        function: gotls::READ,
    })?;
    let write = functions.write.ok_or(PlacementError::Missing {
        function: gotls::WRITE,
    })?;
    let body = go_function(code, gotls::READ, read)?;
    let returns: Vec<&Instruction> = body
        .iter()
        .filter(|i| i.mnemonic() == Mnemonic::Ret)
        .collect();
    if returns.is_empty() {
        return Err(PlacementError::NoReturn {
            function: gotls::READ,
        });
    }
    let mut points = Vec::new();
    let mut refusals = Vec::new();
    match go_copy(&body, functions) {
        Ok((copy, after)) => {
            for ret in returns.into_iter().filter(|ret| !after.contains(&ret.ip())) {
                points.push(go_point(code, gotls::READ, ProbeRole::GoReadReturn, ret)?);
            }
            points.push(go_point(code, gotls::READ, ProbeRole::GoReadCopy, copy)?);
        }
        Err(why) => {
            refusals.push((PlacementKind::Go, why));
            for ret in returns {
                points.push(go_point(code, gotls::READ, ProbeRole::GoReadReturn, ret)?);
            }
        }
    }
    for (function, role, at) in [
        (gotls::READ, ProbeRole::GoRead, read),
        (gotls::WRITE, ProbeRole::GoWrite, write),
    ] {
        let check = go_stack_check(code, function, at)?;
        points.push(go_point(code, function, role, &check)?);
    }
    // Without it, a connection ends with its process.
    if let Some(at) = functions.close
        && let Ok(check) = go_stack_check(code, gotls::CLOSE, at)
    {
        points.push(go_point(code, gotls::CLOSE, ProbeRole::GoClose, &check)?);
    }
    let cost = if refusals.is_empty() {
        // Every `Read` that returns data hits the entry's `jbe` and the copy's
        // `call`; only the exits that copied nothing single-step.
        Cost::Emulated(vec!["jcc", "call"])
    } else {
        // The entries' `jbe` is emulated; a `ret` never is.
        Cost::SingleStep
    };
    Ok(Placement {
        kind: PlacementKind::Go,
        cost,
        points,
        refusals,
        unforced: None,
    })
}

/// The placement for rustls in a Rust executable: the entry and return of every
/// copy of `Writer::write` and `Reader::read`. An error when the executable is not
/// x86-64 (the kernel programs read its registers) or a function cannot be decoded.
pub fn choose_rustls(
    code: &dyn Code,
    functions: &rustls::Functions,
) -> Result<Placement, PlacementError> {
    if !code.is_x86_64() {
        return Err(PlacementError::NotX86_64);
    }
    for (function, copies) in [
        (rustls::READ, &functions.read),
        (rustls::WRITE, &functions.write),
    ] {
        if copies.is_empty() {
            return Err(PlacementError::Missing { function });
        }
    }
    let mut found = Candidate::default();
    for (function, role, copies) in [
        (rustls::READ, ProbeRole::RustlsRead, &functions.read),
        (rustls::WRITE, ProbeRole::RustlsWrite, &functions.write),
    ] {
        for &at in copies {
            let (point, instruction) = entry_point(code, function, role, at)
                .ok_or(PlacementError::Undecodable { function })?;
            found.add_entry(point, instruction);
        }
    }
    let cost = found.cost(code);
    let mut points = found.returns;
    points.extend(found.entries);
    Ok(Placement {
        kind: PlacementKind::Rustls,
        cost,
        points,
        refusals: Vec::new(),
        unforced: None,
    })
}

/// A probe on `instruction` of a Go function.
fn go_point(
    code: &dyn Code,
    function: &'static str,
    role: ProbeRole,
    instruction: &Instruction,
) -> Result<ProbePoint, PlacementError> {
    Ok(ProbePoint {
        function,
        role,
        offset: code
            .file_offset(instruction.ip())
            .ok_or(PlacementError::Undecodable { function })?,
    })
}

/// The `jbe` of a Go function's stack-bound check: `cmp 0x10(%r14),%rsp`
/// (or, for a large frame, `lea -N(%rsp),%r12; cmp 0x10(%r14),%r12`), then
/// `jbe` to the `morestack` call.
fn go_stack_check(
    code: &dyn Code,
    function: &'static str,
    (start, size): (u64, u64),
) -> Result<Instruction, PlacementError> {
    let instructions = decode(code, function, start, size.min(32))?;
    instructions
        .windows(2)
        .take(2)
        .find_map(|pair| {
            let [cmp, jbe] = pair else { return None };
            let checks_stack_bound = cmp.mnemonic() == Mnemonic::Cmp
                && cmp.op1_kind() == OpKind::Memory
                && cmp.memory_base() == Register::R14
                && cmp.memory_index() == Register::None
                && cmp.memory_displacement64() == 0x10;
            (checks_stack_bound && jbe.mnemonic() == Mnemonic::Jbe).then_some(*jbe)
        })
        .ok_or(PlacementError::NoStackCheck { function })
}

/// Every instruction of a Go function, decoding all of its bytes.
fn go_function(
    code: &dyn Code,
    function: &'static str,
    (start, size): (u64, u64),
) -> Result<Vec<Instruction>, PlacementError> {
    if size > MAX_GO_FUNCTION_BYTES {
        return Err(PlacementError::TooLarge { function, size });
    }
    let bytes = code
        .bytes(start, size)
        .filter(|bytes| bytes.len() as u64 == size)
        .ok_or(PlacementError::Undecodable { function })?;
    let (instructions, whole) = decode_bytes(&bytes, start);
    if !whole {
        return Err(PlacementError::Undecodable { function });
    }
    Ok(instructions)
}

/// The copy of `(*Conn).Read`'s result in its decoded `body`: the one direct
/// `call runtime.memmove` (`bytes.(*Reader).Read` inlined, `copy(b, ...)`),
/// where `memmove(to, from, n)` has `to`, `from` and `n` in `rax`, `rbx` and
/// `rcx` (its register ABI), and the addresses of the instructions that can
/// follow it in the same call. Refused when there is not exactly one such
/// call, when it can run twice in one call, or when an indirect jump follows
/// it (its `ret` instructions would not be known). A call to a function that
/// never returns (a panic) ends its path. The paths that skip the call and
/// reach a `ret` after it (Go's `copy` skips `memmove` when source and
/// destination are one; `bytes.Reader` copies nothing when it is empty) are
/// not taken by `(*Conn).Read`, which reads into the caller's buffer only once
/// its input holds data; were one taken, the call would show as lost (its
/// sequence number unused), not be misread.
fn go_copy<'a>(
    body: &'a [Instruction],
    functions: &gotls::Functions,
) -> Result<(&'a Instruction, HashSet<u64>), PlacementError> {
    let function = gotls::READ;
    let (memmove, _) = functions.memmove.ok_or(PlacementError::Missing {
        function: gotls::MEMMOVE,
    })?;
    let calls: Vec<&Instruction> = body
        .iter()
        .filter(|i| {
            i.mnemonic() == Mnemonic::Call
                && i.op0_kind() == OpKind::NearBranch64
                && i.near_branch_target() == memmove
        })
        .collect();
    let [copy] = calls[..] else {
        return Err(PlacementError::NoSingleCopy {
            function,
            calls: calls.len(),
        });
    };
    let index: HashMap<u64, usize> = body.iter().enumerate().map(|(n, i)| (i.ip(), n)).collect();
    let mut after = HashSet::new();
    let mut pending = vec![copy.next_ip()];
    while let Some(ip) = pending.pop() {
        // A jump out of the function (a tail call) ends the walk there.
        let Some(&n) = index.get(&ip) else { continue };
        if !after.insert(ip) {
            continue;
        }
        let instruction = &body[n];
        if instruction.ip() == copy.ip() {
            return Err(PlacementError::CopyInLoop { function });
        }
        match instruction.mnemonic() {
            Mnemonic::Ret | Mnemonic::Int3 | Mnemonic::Ud2 => {}
            Mnemonic::Call
                if instruction.op0_kind() == OpKind::NearBranch64
                    && functions
                        .never_return
                        .contains(&instruction.near_branch_target()) => {}
            Mnemonic::Jmp if instruction.op0_kind() == OpKind::NearBranch64 => {
                pending.push(instruction.near_branch_target());
            }
            Mnemonic::Jmp => {
                return Err(PlacementError::IndirectJump {
                    function,
                    at: instruction.ip(),
                });
            }
            _ if is_jcc(instruction) => {
                pending.extend([instruction.near_branch_target(), instruction.next_ip()]);
            }
            _ => pending.push(instruction.next_ip()),
        }
    }
    Ok((copy, after))
}

fn all_emulated(candidate: &Candidate) -> bool {
    !candidate.undecoded
        && !candidate.replaced.is_empty()
        && candidate.replaced.iter().all(emulated)
}

fn candidate(
    code: &dyn Code,
    definitions: &Definitions,
    kind: PlacementKind,
) -> Result<Candidate, PlacementError> {
    if kind != PlacementKind::Entry && !code.is_x86_64() {
        return Err(PlacementError::NotX86_64);
    }
    match kind {
        PlacementKind::Worker => worker_candidate(code, definitions),
        PlacementKind::Wrapper => wrapper_candidate(code, definitions),
        PlacementKind::Entry => Ok(entry_candidate(code, definitions)),
        PlacementKind::Go | PlacementKind::Rustls => Err(PlacementError::NotOpenSsl { kind }),
    }
}

/// Today's probes: each public data function's entry and return.
fn entry_candidate(code: &dyn Code, definitions: &Definitions) -> Candidate {
    let mut found = Candidate::default();
    for pair in Pair::of(definitions) {
        for (function, role, at) in [
            (pair.plain, pair.plain_role, pair.plain_at),
            (pair.counted, pair.counted_role, pair.counted_at),
        ] {
            let Some(at) = at else { continue };
            let point = entry_point(code, function, role, at);
            let Some((point, instruction)) = point else {
                continue;
            };
            found.add_entry(point, instruction);
        }
    }
    found
}

/// The worker both wrappers of each direction call, probed at its entry.
fn worker_candidate(
    code: &dyn Code,
    definitions: &Definitions,
) -> Result<Candidate, PlacementError> {
    let mut found = Candidate::default();
    for pair in Pair::of(definitions) {
        let (worker, _) = worker_of(code, &pair)?;
        let (point, instruction) = entry_point(
            code,
            pair.counted,
            pair.counted_role,
            (worker, MAX_FUNCTION_BYTES),
        )
        .ok_or(PlacementError::Undecodable {
            function: pair.counted,
        })?;
        found.add_entry(point, instruction);
    }
    Ok(found)
}

/// The calls to the worker inside each wrapper, and the instructions they return to.
fn wrapper_candidate(
    code: &dyn Code,
    definitions: &Definitions,
) -> Result<Candidate, PlacementError> {
    let mut found = Candidate::default();
    for pair in Pair::of(definitions) {
        let (worker, counted_call) = worker_of(code, &pair)?;
        let plain_call = call_to(code, pair.plain, pair.plain_at, worker)?;
        for (function, call) in [(pair.plain, plain_call), (pair.counted, counted_call)] {
            if call.mnemonic() != Mnemonic::Call {
                return Err(PlacementError::TailCall { function });
            }
            let (back, back_instruction) = return_point(code, function, &call)?;
            let offset = |address| {
                code.file_offset(address)
                    .ok_or(PlacementError::Undecodable { function })
            };
            found.replaced.push(call);
            found.replaced.push(back_instruction);
            found.returns.push(ProbePoint {
                function,
                role: ProbeRole::CallReturn,
                offset: offset(back)?,
            });
            // The worker's arguments, whichever wrapper calls it:
            // `(SSL *, buf, size_t num, size_t *count)`.
            found.entries.push(ProbePoint {
                function,
                role: pair.counted_role,
                offset: offset(call.ip())?,
            });
        }
    }
    Ok(found)
}

/// The worker `pair.counted` passes its arguments to, and that call (or
/// jump): the first transfer of control in the `_ex` wrapper, preceded by
/// nothing but stack-frame set-up. The plain wrapper must call it too.
fn worker_of(code: &dyn Code, pair: &Pair) -> Result<(u64, Instruction), PlacementError> {
    let function = pair.counted;
    let (start, size) = pair
        .counted_at
        .ok_or(PlacementError::Missing { function })?;
    let instructions = decode(code, function, start, size)?;
    for instruction in &instructions {
        if is_direct_transfer(instruction) {
            let target = instruction.near_branch_target();
            let inside = (start..start + size.max(1)).contains(&target);
            if inside {
                break;
            }
            call_to(code, pair.plain, pair.plain_at, target)?;
            return Ok((target, *instruction));
        }
        if !is_frame_setup(instruction) {
            break;
        }
    }
    Err(PlacementError::NoWorker { function })
}

/// The first direct call or jump to `target` in `function`.
fn call_to(
    code: &dyn Code,
    function: &'static str,
    at: Option<(u64, u64)>,
    target: u64,
) -> Result<Instruction, PlacementError> {
    let (start, size) = at.ok_or(PlacementError::Missing { function })?;
    decode(code, function, start, size)?
        .into_iter()
        .find(|i| is_direct_transfer(i) && i.near_branch_target() == target)
        .ok_or(PlacementError::OtherWorker {
            function,
            worker: target,
        })
}

/// Where a probe sees `call`'s result: the instruction it returns to, or a
/// later one the kernel emulates when nothing between them but flag-setting
/// comparisons (which leave `rax` alone) runs first.
fn return_point(
    code: &dyn Code,
    function: &'static str,
    call: &Instruction,
) -> Result<(u64, Instruction), PlacementError> {
    let after = decode(code, function, call.next_ip(), 32)?;
    let first = *after
        .first()
        .ok_or(PlacementError::Undecodable { function })?;
    for instruction in &after {
        if emulated(instruction) {
            return Ok((instruction.ip(), *instruction));
        }
        if !matches!(instruction.mnemonic(), Mnemonic::Test | Mnemonic::Cmp) {
            break;
        }
    }
    Ok((first.ip(), first))
}

/// A function's entry probe, after its `endbr64` if it has one, and the
/// instruction the probe replaces; at the function's first byte, with no
/// instruction, when its code is not x86-64 or cannot be decoded.
fn entry_point(
    code: &dyn Code,
    function: &'static str,
    role: ProbeRole,
    (start, size): (u64, u64),
) -> Option<(ProbePoint, Option<Instruction>)> {
    let decoded = code
        .is_x86_64()
        .then(|| decode(code, function, start, size.clamp(1, 16)).ok())
        .flatten()
        .and_then(|instructions| {
            let first = *instructions.first()?;
            if first.mnemonic() == Mnemonic::Endbr64 {
                instructions.get(1).copied()
            } else {
                Some(first)
            }
        });
    let address = decoded.map_or(start, |instruction| instruction.ip());
    Some((
        ProbePoint {
            function,
            role,
            offset: code.file_offset(address)?,
        },
        decoded,
    ))
}

/// Decodes up to `size` bytes (at most [`MAX_FUNCTION_BYTES`]) at `start`,
/// stopping at the first invalid instruction.
fn decode(
    code: &dyn Code,
    function: &'static str,
    start: u64,
    size: u64,
) -> Result<Vec<Instruction>, PlacementError> {
    let bytes = code
        .bytes(start, size.clamp(1, MAX_FUNCTION_BYTES))
        .ok_or(PlacementError::Undecodable { function })?;
    let (out, _) = decode_bytes(&bytes, start);
    if out.is_empty() {
        return Err(PlacementError::Undecodable { function });
    }
    Ok(out)
}

/// Decodes `bytes` (at address `start`) up to the first invalid instruction;
/// whether every byte was decoded.
fn decode_bytes(bytes: &[u8], start: u64) -> (Vec<Instruction>, bool) {
    let mut decoder = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return (out, false);
        }
        out.push(instruction);
    }
    (out, true)
}

fn is_direct_transfer(instruction: &Instruction) -> bool {
    matches!(instruction.mnemonic(), Mnemonic::Call | Mnemonic::Jmp)
        && instruction.op0_kind() == OpKind::NearBranch64
}

/// Instructions that may precede the worker call without touching the
/// argument registers: `endbr64`, nops, pushes, `mov rbp, rsp`, `sub rsp, imm`.
fn is_frame_setup(instruction: &Instruction) -> bool {
    match instruction.mnemonic() {
        Mnemonic::Endbr64 | Mnemonic::Nop | Mnemonic::Push => true,
        Mnemonic::Mov => {
            instruction.op0_register() == Register::RBP
                && instruction.op1_register() == Register::RSP
        }
        Mnemonic::Sub => {
            instruction.op0_register() == Register::RSP
                && matches!(
                    instruction.op1_kind(),
                    OpKind::Immediate8to64 | OpKind::Immediate32to64
                )
        }
        _ => false,
    }
}

/// Whether Linux (6.18, x86-64) emulates `instruction` when a uprobe hits it,
/// rather than single-stepping it: the rules of `branch_setup_xol_ops` and
/// `push_setup_xol_ops` in `arch/x86/kernel/uprobes.c`.
pub fn emulated(instruction: &Instruction) -> bool {
    match instruction.mnemonic() {
        Mnemonic::Nop => true,
        // `50+r` or `41 50+r`: a 64-bit register, in one byte or two.
        Mnemonic::Push => {
            let register = instruction.op0_register();
            instruction.op0_kind() == OpKind::Register
                && match instruction.len() {
                    1 => matches!(
                        register,
                        Register::RAX
                            | Register::RCX
                            | Register::RDX
                            | Register::RBX
                            | Register::RSP
                            | Register::RBP
                            | Register::RSI
                            | Register::RDI
                    ),
                    2 => matches!(
                        register,
                        Register::R8
                            | Register::R9
                            | Register::R10
                            | Register::R11
                            | Register::R12
                            | Register::R13
                            | Register::R14
                            | Register::R15
                    ),
                    _ => false,
                }
        }
        // A 16-bit operand-size override (`66`) makes the target a
        // `NearBranch16`, which the kernel refuses.
        Mnemonic::Call | Mnemonic::Jmp => instruction.op0_kind() == OpKind::NearBranch64,
        _ => is_jcc(instruction) && instruction.op0_kind() == OpKind::NearBranch64,
    }
}

/// A conditional jump on the flags (`loop` and `jrcxz` are not).
fn is_jcc(instruction: &Instruction) -> bool {
    matches!(
        instruction.mnemonic(),
        Mnemonic::Jo
            | Mnemonic::Jno
            | Mnemonic::Jb
            | Mnemonic::Jae
            | Mnemonic::Je
            | Mnemonic::Jne
            | Mnemonic::Jbe
            | Mnemonic::Ja
            | Mnemonic::Js
            | Mnemonic::Jns
            | Mnemonic::Jp
            | Mnemonic::Jnp
            | Mnemonic::Jl
            | Mnemonic::Jge
            | Mnemonic::Jle
            | Mnemonic::Jg
    )
}

fn mnemonic_name(instruction: &Instruction) -> &'static str {
    match instruction.mnemonic() {
        Mnemonic::Nop => "nop",
        Mnemonic::Push => "push",
        Mnemonic::Call => "call",
        Mnemonic::Jmp => "jmp",
        _ if is_jcc(instruction) => "jcc",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Code at `base`, whose file offsets equal its addresses.
    struct Fake {
        base: u64,
        bytes: Vec<u8>,
    }

    impl Code for Fake {
        fn is_x86_64(&self) -> bool {
            true
        }

        fn bytes(&self, address: u64, len: u64) -> Option<Vec<u8>> {
            let from = usize::try_from(address.checked_sub(self.base)?).ok()?;
            let to = (from + usize::try_from(len).ok()?).min(self.bytes.len());
            (from < to).then(|| self.bytes[from..to].to_vec())
        }

        fn file_offset(&self, address: u64) -> Option<u64> {
            Some(address)
        }
    }

    const BASE: u64 = 0x1000;
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

    /// Places `code` at `at` in `bytes` (at BASE), resolving `call` targets.
    fn put(bytes: &mut Vec<u8>, at: u64, code: &[&[u8]]) {
        let mut offset = usize::try_from(at - BASE).unwrap();
        for piece in code {
            if bytes.len() < offset + piece.len() {
                bytes.resize(offset + piece.len(), 0xcc);
            }
            bytes[offset..offset + piece.len()].copy_from_slice(piece);
            offset += piece.len();
        }
    }

    fn call(from: u64, to: u64) -> [u8; 5] {
        let rel =
            i32::try_from(i64::try_from(to).unwrap() - i64::try_from(from + 5).unwrap()).unwrap();
        let [a, b, c, d] = rel.to_le_bytes();
        [0xe8, a, b, c, d]
    }

    /// A CET build laid out as OpenSSL 3.0's libssl: workers at 0x1000
    /// (read) and 0x1010 (write), `_ex` wrappers passing their arguments
    /// through, plain wrappers with a local count.
    fn cet_libssl(counted_prologue: &[u8]) -> (Fake, Definitions) {
        let mut bytes = Vec::new();
        put(&mut bytes, 0x1000, &[&ENDBR64, &[0x41, 0x55, 0xc3]]);
        put(&mut bytes, 0x1010, &[&ENDBR64, &[0x41, 0x56, 0xc3]]);
        let mut definitions = Definitions::default();
        for (worker, counted, plain, slots) in [
            (
                0x1000,
                0x1020,
                0x1040,
                (&mut definitions.read_ex, &mut definitions.read),
            ),
            (
                0x1010,
                0x1060,
                0x1080,
                (&mut definitions.write_ex, &mut definitions.write),
            ),
        ] {
            let call_at = counted + 4 + counted_prologue.len() as u64;
            put(
                &mut bytes,
                counted,
                &[
                    &ENDBR64,
                    counted_prologue,
                    &call(call_at, worker),
                    &[0x48, 0x83, 0xc4, 0x08, 0xc3],
                ],
            );
            // sub rsp,0x18; mov rcx,rsp; call; test eax,eax; jle +3; mov eax,[rsp]; add rsp,0x18; ret
            let call_at = plain + 4 + 4 + 3;
            put(
                &mut bytes,
                plain,
                &[
                    &ENDBR64,
                    &[0x48, 0x83, 0xec, 0x18, 0x48, 0x89, 0xe1],
                    &call(call_at, worker),
                    &[
                        0x85, 0xc0, 0x7e, 0x03, 0x8b, 0x04, 0x24, 0x48, 0x83, 0xc4, 0x18, 0xc3,
                    ],
                ],
            );
            *slots.0 = Some((counted, 0x20));
            *slots.1 = Some((plain, 0x20));
        }
        (Fake { base: BASE, bytes }, definitions)
    }

    fn at(placement: &Placement, role: ProbeRole) -> Vec<u64> {
        placement
            .points
            .iter()
            .filter(|p| p.role == role)
            .map(|p| p.offset)
            .collect()
    }

    #[test]
    fn the_kernel_emulates_push_call_jmp_jcc_and_nop_only() {
        let decoded = |bytes: &[u8]| Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE).decode();
        for bytes in [
            &[0x55][..],
            &[0x41, 0x55],
            &[0xe8, 0, 0, 0, 0],
            &[0xeb, 0],
            &[0x7e, 3],
            &[0x0f, 0x84, 0, 0, 0, 0],
            &[0x90],
            &[0x0f, 0x1f, 0x44, 0, 0],
        ] {
            assert!(emulated(&decoded(bytes)), "{bytes:02x?}");
        }
        // sub rsp; endbr64; push with REX.W; indirect call; mov
        for bytes in [
            &[0x48, 0x83, 0xec, 0x18][..],
            &ENDBR64,
            &[0x48, 0x50],
            &[0xff, 0x50, 0x38],
            &[0x48, 0x89, 0xe5],
        ] {
            assert!(!emulated(&decoded(bytes)), "{bytes:02x?}");
        }
    }

    #[test]
    fn a_cet_build_gets_worker_probes_after_endbr64() {
        let (code, definitions) = cet_libssl(&[0x48, 0x83, 0xec, 0x08]);
        let placement = choose(&code, &definitions, None);
        assert_eq!(placement.kind, PlacementKind::Worker, "{placement:?}");
        assert_eq!(placement.cost, Cost::Emulated(vec!["push"]));
        assert_eq!(at(&placement, ProbeRole::Return), [0x1004, 0x1014]);
        assert_eq!(at(&placement, ProbeRole::ReadCountedEntry), [0x1004]);
        assert_eq!(at(&placement, ProbeRole::WriteCountedEntry), [0x1014]);
        assert_eq!(placement.to_string(), "worker probes (emulated push)");
    }

    #[test]
    fn forced_placements_probe_the_calls_or_the_entries() {
        let (code, definitions) = cet_libssl(&[0x48, 0x83, 0xec, 0x08]);
        let wrapper = choose(&code, &definitions, Some(PlacementKind::Wrapper));
        assert_eq!(wrapper.kind, PlacementKind::Wrapper, "{wrapper:?}");
        assert!(wrapper.unforced.is_none());
        // The calls; then the plain wrapper's `jle` after `test eax,eax`, and
        // the `_ex` wrapper's `add rsp` (single-stepped).
        assert_eq!(at(&wrapper, ProbeRole::ReadCountedEntry), [0x104b, 0x1028]);
        assert_eq!(
            at(&wrapper, ProbeRole::CallReturn),
            [0x1052, 0x102d, 0x1092, 0x106d]
        );
        assert_eq!(wrapper.cost, Cost::SingleStep);
        let entry = choose(&code, &definitions, Some(PlacementKind::Entry));
        assert_eq!(entry.kind, PlacementKind::Entry);
        assert_eq!(at(&entry, ProbeRole::ReadEntry), [0x1044]);
        assert_eq!(at(&entry, ProbeRole::ReadCountedEntry), [0x1024]);
        assert_eq!(entry.to_string(), "entry probes (single-step, slower)");
        assert_eq!(entry.refusals, []);
    }

    #[test]
    fn a_wrapper_that_changes_its_arguments_gets_entry_probes_and_reasons() {
        // mov rdx, rsi before the call: the target is no worker we know.
        let (code, definitions) = cet_libssl(&[0x48, 0x89, 0xf2, 0x90]);
        let placement = choose(&code, &definitions, Some(PlacementKind::Worker));
        assert_eq!(placement.kind, PlacementKind::Entry);
        assert_eq!(
            placement.unforced,
            Some((
                PlacementKind::Worker,
                PlacementError::NoWorker {
                    function: "SSL_read_ex"
                }
            ))
        );
        let placement = choose(&code, &definitions, None);
        assert_eq!(placement.kind, PlacementKind::Entry);
        assert_eq!(placement.cost, Cost::SingleStep);
        assert_eq!(
            placement.refusals,
            [
                (
                    PlacementKind::Worker,
                    PlacementError::NoWorker {
                        function: "SSL_read_ex"
                    }
                ),
                (
                    PlacementKind::Wrapper,
                    PlacementError::NoWorker {
                        function: "SSL_read_ex"
                    }
                ),
            ]
        );
        assert_eq!(
            PlacementKind::forced().ok(),
            Some(
                std::env::var_os(FORCE_ENV)
                    .and_then(|v| PlacementKind::ALL.into_iter().find(|k| *k.name() == *v))
            )
        );
    }

    /// Go functions as Go 1.17+ lays them out: `(*Conn).Read` at 0x1000 with
    /// a small frame's stack check and two `ret`s, `(*Conn).Write` at 0x1040
    /// with a large frame's, and `(*Conn).Close` at 0x1080 with `close`'s bytes.
    fn go_binary(close: &[u8]) -> (Fake, gotls::Functions) {
        let mut bytes = Vec::new();
        // cmp 0x10(%r14),%rsp; jbe +0x10; sub $0x18,%rsp; ret; int3; add $0x18,%rsp; ret
        let read: &[u8] = &[
            0x49, 0x3b, 0x66, 0x10, 0x76, 0x10, 0x48, 0x83, 0xec, 0x18, 0xc3, 0xcc, 0x48, 0x83,
            0xc4, 0x18, 0xc3,
        ];
        // lea -0x68(%rsp),%r12; cmp 0x10(%r14),%r12; jbe rel32; ret
        let write: &[u8] = &[
            0x4c, 0x8d, 0x64, 0x24, 0x98, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x10, 0, 0, 0, 0xc3,
        ];
        put(&mut bytes, 0x1000, &[read]);
        put(&mut bytes, 0x1040, &[write]);
        put(&mut bytes, 0x1080, &[close]);
        let functions = gotls::Functions {
            read: Some((0x1000, read.len() as u64)),
            write: Some((0x1040, write.len() as u64)),
            close: Some((0x1080, close.len() as u64)),
            ..gotls::Functions::default()
        };
        (Fake { base: BASE, bytes }, functions)
    }

    #[test]
    fn go_gets_entries_on_the_stack_checks_jbe_and_a_probe_on_every_ret() {
        let (code, functions) = go_binary(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x01, 0xc3]);
        let placement = choose_go(&code, &functions).unwrap();
        assert_eq!(placement.kind, PlacementKind::Go);
        assert_eq!(at(&placement, ProbeRole::GoReadReturn), [0x100a, 0x1010]);
        assert_eq!(at(&placement, ProbeRole::GoRead), [0x1004]);
        assert_eq!(at(&placement, ProbeRole::GoWrite), [0x1049]);
        assert_eq!(at(&placement, ProbeRole::GoClose), [0x1084]);
        // Return probes first, then reads before writes.
        let roles: Vec<ProbeRole> = placement.points.iter().map(|p| p.role).collect();
        assert_eq!(
            roles,
            [
                ProbeRole::GoReadReturn,
                ProbeRole::GoReadReturn,
                ProbeRole::GoRead,
                ProbeRole::GoWrite,
                ProbeRole::GoClose
            ]
        );
        assert_eq!(
            placement.to_string(),
            "go probes (entries on emulated jcc + 2 ret probes, single-step)"
        );
    }

    /// `(*Conn).Read` at 0x1000 as Go inlines `bytes.(*Reader).Read` into it:
    /// an exit without copying (0x1024), the one `call runtime.memmove`
    /// (0x100f) and the exit after it (0x101d), and a bounds check whose
    /// `runtime.panicIndex` call is followed by a jump back into the loop.
    fn go_read_with_copy() -> (Fake, gotls::Functions) {
        let (code, functions) = go_binary(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x01, 0xc3]);
        let mut bytes = code.bytes;
        put(
            &mut bytes,
            0x1000,
            &[
                &[0x49, 0x3b, 0x66, 0x10, 0x76, 0x26], // cmp 0x10(%r14),%rsp; jbe 0x102c
                &[0x48, 0x83, 0xec, 0x18],             // sub $0x18,%rsp
                &[0x48, 0x85, 0xc9, 0x74, 0x0f],       // 0x100a: test %rcx,%rcx; je 0x101e
                &call(0x100f, 0x1100),                 // call runtime.memmove
                &[0x48, 0x85, 0xc9, 0x77, 0x0c],       // test %rcx,%rcx; ja 0x1025
                &[0x48, 0x83, 0xc4, 0x18, 0xc3],       // add $0x18,%rsp; ret
                &[0x31, 0xc0, 0x48, 0x83, 0xc4, 0x18, 0xc3], // 0x101e: xor; add; ret
                &call(0x1025, 0x1110),                 // call runtime.panicIndex
                &[0xeb, 0xde],                         // jmp 0x100a
                &call(0x102c, 0x1120),                 // call runtime.morestack_noctxt
                &[0xeb, 0xcd],                         // jmp 0x1000
            ],
        );
        put(&mut bytes, 0x1100, &[&[0xc3]]);
        put(&mut bytes, 0x1110, &[&[0xcc]]);
        put(&mut bytes, 0x1120, &[&[0xc3]]);
        let functions = gotls::Functions {
            read: Some((0x1000, 0x33)),
            memmove: Some((0x1100, 1)),
            never_return: vec![0x1110],
            ..functions
        };
        (Fake { base: BASE, bytes }, functions)
    }

    #[test]
    fn go_reads_its_result_on_the_copy_and_probes_only_the_exits_that_skip_it() {
        let (code, functions) = go_read_with_copy();
        let placement = choose_go(&code, &functions).unwrap();
        assert_eq!(placement.refusals, []);
        assert_eq!(placement.cost, Cost::Emulated(vec!["jcc", "call"]));
        assert_eq!(at(&placement, ProbeRole::GoReadCopy), [0x100f]);
        assert_eq!(at(&placement, ProbeRole::GoReadReturn), [0x1024]);
        assert_eq!(at(&placement, ProbeRole::GoRead), [0x1004]);
        let roles: Vec<ProbeRole> = placement.points.iter().map(|p| p.role).collect();
        assert_eq!(
            roles,
            [
                ProbeRole::GoReadReturn,
                ProbeRole::GoReadCopy,
                ProbeRole::GoRead,
                ProbeRole::GoWrite,
                ProbeRole::GoClose
            ]
        );
        assert_eq!(
            placement.to_string(),
            "go probes (entries on emulated jcc + reads on emulated call + 1 error-exit ret \
             probes, single-step)"
        );
    }

    #[test]
    fn a_go_read_whose_copy_cannot_be_placed_gets_every_ret_and_says_why() {
        let (code, functions) = go_read_with_copy();
        let every_ret = |functions: &gotls::Functions, why: PlacementError| {
            let placement = choose_go(&code, functions).unwrap();
            assert_eq!(placement.refusals, [(PlacementKind::Go, why)]);
            assert_eq!(placement.cost, Cost::SingleStep);
            assert_eq!(at(&placement, ProbeRole::GoReadCopy), Vec::<u64>::new());
            assert_eq!(at(&placement, ProbeRole::GoReadReturn), [0x101d, 0x1024]);
            assert_eq!(
                placement.to_string(),
                "go probes (entries on emulated jcc + 2 ret probes, single-step)"
            );
        };
        // Without knowing that the panic does not return, the copy could run twice.
        let panics_return = gotls::Functions {
            never_return: Vec::new(),
            ..functions.clone()
        };
        every_ret(
            &panics_return,
            PlacementError::CopyInLoop {
                function: gotls::READ,
            },
        );
        let no_memmove = gotls::Functions {
            memmove: None,
            ..functions.clone()
        };
        every_ret(
            &no_memmove,
            PlacementError::Missing {
                function: gotls::MEMMOVE,
            },
        );
        let other_memmove = gotls::Functions {
            memmove: Some((0x1130, 1)),
            ..functions
        };
        every_ret(
            &other_memmove,
            PlacementError::NoSingleCopy {
                function: gotls::READ,
                calls: 0,
            },
        );
    }

    #[test]
    fn a_go_function_without_the_register_abi_stack_check_is_refused() {
        // Go 1.16's stack ABI: the goroutine from %fs, not %r14.
        let (code, mut functions) = go_binary(&[0xc3]);
        let placement = choose_go(&code, &functions).unwrap();
        assert_eq!(
            at(&placement, ProbeRole::GoClose),
            Vec::<u64>::new(),
            "no Close probe, no error"
        );
        let mut bytes = code.bytes.clone();
        // mov %fs:-8,%rcx; cmp 0x10(%rcx),%rsp; jbe
        let old: &[u8] = &[
            0x64, 0x48, 0x8b, 0x0c, 0x25, 0xf8, 0xff, 0xff, 0xff, 0x48, 0x3b, 0x61, 0x10, 0x76,
            0x01, 0xc3,
        ];
        put(&mut bytes, 0x1000, &[old]);
        functions.read = Some((0x1000, old.len() as u64));
        let code = Fake { base: BASE, bytes };
        assert_eq!(
            choose_go(&code, &functions),
            Err(PlacementError::NoStackCheck {
                function: gotls::READ
            })
        );
        functions.read = None;
        assert_eq!(
            choose_go(&code, &functions),
            Err(PlacementError::Missing {
                function: gotls::READ
            })
        );
    }
}
